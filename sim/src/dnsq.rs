//! A minimal DNS client: one A query over UDP, answer parsed by hand.
//!
//! The readers resolve names over DNS as well as HTTP because DNS is how most software would
//! meet dpin, and an empty DNS answer is exactly the seed's outage. A full resolver library
//! would add retries, caching and search lists that hide what one node answered; this sends
//! one packet to one node and reports exactly what came back — except that a truncated (TC)
//! answer is retried over TCP at the same node, as every real stub resolver does: a TC answer
//! says "ask again over TCP" (large answers, or a node's response rate limiting slipping one
//! through), not "this name has no address". Every loop over the packet is bounded by the
//! packet length, and malformed answers are errors, never panics.
//!
//! [`query`] also hands back the lowest TTL of the answer's A records: a node that judges
//! itself cut off from the network answers with a TTL of at most
//! [`dpin_protocol::reach::CUT_OFF_DNS_TTL_SECS`] ([`DnsReply::says_cut_off`]), and the
//! harness's DNS reader fails over on that, as a resolver asking again soon would reach
//! another server.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, UdpSocket};

/// What one A query returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsAnswer {
    /// NOERROR with these A records (possibly none).
    Addrs(Vec<Ipv4Addr>),
    /// NXDOMAIN.
    NxDomain,
    /// Another response code (SERVFAIL, REFUSED, ...).
    Rcode(u8),
    /// The TC bit was set: the answer must be asked for again over TCP.
    Truncated,
}

/// An answer with the lowest TTL among its A records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsReply {
    /// What the answer said.
    pub answer: DnsAnswer,
    /// Lowest TTL (seconds) of the A records; `None` without any.
    pub min_ttl: Option<u32>,
}

impl DnsReply {
    /// Whether the answer carries addresses with a TTL short enough to be a cut-off node's
    /// (at most [`dpin_protocol::reach::CUT_OFF_DNS_TTL_SECS`]). A record in its last second
    /// before expiry has such a TTL too; taking that for a cut-off node costs one failover.
    pub fn says_cut_off(&self) -> bool {
        matches!(&self.answer, DnsAnswer::Addrs(a) if !a.is_empty())
            && self
                .min_ttl
                .is_some_and(|t| t <= dpin_protocol::reach::CUT_OFF_DNS_TTL_SECS)
    }
}

/// Why a query got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// Socket error.
    #[error("dns socket: {0}")]
    Io(#[from] std::io::Error),
    /// No answer in time.
    #[error("dns timeout")]
    Timeout,
    /// The answer could not be parsed.
    #[error("malformed dns answer: {0}")]
    Malformed(&'static str),
    /// The name cannot be put in a query.
    #[error("bad query name")]
    BadName,
}

/// Builds the query packet for `name` (A, IN, recursion desired).
pub fn build_query(id: u16, name: &str) -> Result<Vec<u8>, DnsError> {
    let mut p = Vec::with_capacity(name.len() + 18);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(DnsError::BadName);
        }
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.push(0);
    p.extend_from_slice(&[0, 1, 0, 1]);
    if p.len() > 512 {
        return Err(DnsError::BadName);
    }
    Ok(p)
}

/// Skips a (possibly compressed) name starting at `pos`; returns the position after it.
fn skip_name(p: &[u8], mut pos: usize) -> Result<usize, DnsError> {
    // A name is at most 255 bytes: at most 128 labels.
    for _ in 0..128 {
        let len = *p.get(pos).ok_or(DnsError::Malformed("name past end"))?;
        match len {
            0 => return Ok(pos + 1),
            l if l & 0xC0 == 0xC0 => return Ok(pos + 2),
            l if l & 0xC0 == 0 => pos += 1 + usize::from(l),
            _ => return Err(DnsError::Malformed("bad label type")),
        }
    }
    Err(DnsError::Malformed("name too long"))
}

fn u16_at(p: &[u8], pos: usize) -> Result<u16, DnsError> {
    match p.get(pos..pos + 2) {
        Some(&[a, b]) => Ok(u16::from_be_bytes([a, b])),
        _ => Err(DnsError::Malformed("truncated")),
    }
}

/// Parses the answer to query `id`.
pub fn parse_answer(id: u16, p: &[u8]) -> Result<DnsAnswer, DnsError> {
    parse_reply(id, p).map(|r| r.answer)
}

fn u32_at(p: &[u8], pos: usize) -> Result<u32, DnsError> {
    match p.get(pos..pos + 4) {
        Some(&[a, b, c, d]) => Ok(u32::from_be_bytes([a, b, c, d])),
        _ => Err(DnsError::Malformed("truncated")),
    }
}

/// Parses the answer to query `id`, with the lowest TTL of its A records.
pub fn parse_reply(id: u16, p: &[u8]) -> Result<DnsReply, DnsError> {
    let bare = |answer| {
        Ok(DnsReply {
            answer,
            min_ttl: None,
        })
    };
    if p.len() < 12 {
        return Err(DnsError::Malformed("short header"));
    }
    if u16_at(p, 0)? != id {
        return Err(DnsError::Malformed("id mismatch"));
    }
    let flags = u16_at(p, 2)?;
    if flags & 0x8000 == 0 {
        return Err(DnsError::Malformed("not a response"));
    }
    if flags & 0x0200 != 0 {
        return bare(DnsAnswer::Truncated);
    }
    let rcode = (flags & 0x000F) as u8;
    match rcode {
        0 => {}
        3 => return bare(DnsAnswer::NxDomain),
        other => return bare(DnsAnswer::Rcode(other)),
    }
    let qd = u16_at(p, 4)?;
    let an = u16_at(p, 6)?;
    let mut pos = 12;
    for _ in 0..qd {
        pos = skip_name(p, pos)? + 4;
    }
    let mut addrs = Vec::new();
    let mut min_ttl: Option<u32> = None;
    for _ in 0..an {
        pos = skip_name(p, pos)?;
        let rtype = u16_at(p, pos)?;
        let ttl = u32_at(p, pos + 4)?;
        let rdlen = usize::from(u16_at(p, pos + 8)?);
        let rdata = p
            .get(pos + 10..pos + 10 + rdlen)
            .ok_or(DnsError::Malformed("rdata past end"))?;
        if rtype == 1 {
            if let &[a, b, c, d] = rdata {
                addrs.push(Ipv4Addr::new(a, b, c, d));
                min_ttl = Some(min_ttl.map_or(ttl, |m| m.min(ttl)));
            }
        }
        pos += 10 + rdlen;
    }
    Ok(DnsReply {
        answer: DnsAnswer::Addrs(addrs),
        min_ttl,
    })
}

/// Sends one A query for `name` to `server` and waits up to `timeout` for the answer.
pub async fn query_a(
    bind: SocketAddr,
    server: SocketAddr,
    name: &str,
    id: u16,
    timeout: Duration,
) -> Result<DnsAnswer, DnsError> {
    query(bind, server, name, id, timeout)
        .await
        .map(|r| r.answer)
}

/// Like [`query_a`], with the lowest TTL of the answer's A records.
pub async fn query(
    bind: SocketAddr,
    server: SocketAddr,
    name: &str,
    id: u16,
    timeout: Duration,
) -> Result<DnsReply, DnsError> {
    let packet = build_query(id, name)?;
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(server).await?;
    sock.send(&packet).await?;
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    // Skip stray packets (e.g. a late answer to someone else); bounded by the deadline.
    loop {
        let n = match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => return Err(DnsError::Timeout),
        };
        match parse_reply(id, &buf[..n]) {
            Err(DnsError::Malformed("id mismatch")) => continue,
            Ok(DnsReply {
                answer: DnsAnswer::Truncated,
                ..
            }) => break,
            other => return other,
        }
    }
    // Truncated: ask the same node over TCP within what is left of the deadline.
    match tokio::time::timeout_at(deadline, query_tcp(bind, server, &packet, id)).await {
        Ok(answer) => answer,
        Err(_) => Err(DnsError::Timeout),
    }
}

/// One query over TCP (two-byte length prefix, RFC 1035 §4.2.2), from the same source address
/// as the UDP query.
async fn query_tcp(
    bind: SocketAddr,
    server: SocketAddr,
    packet: &[u8],
    id: u16,
) -> Result<DnsReply, DnsError> {
    let socket = if bind.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(bind)?;
    let mut stream = socket.connect(server).await?;
    let len = u16::try_from(packet.len()).map_err(|_| DnsError::BadName)?;
    let mut framed = Vec::with_capacity(packet.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(packet);
    stream.write_all(&framed).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await?;
    let reply = parse_reply(id, &buf)?;
    match reply.answer {
        // A TCP answer is never truncated; one that says so is broken.
        DnsAnswer::Truncated => Err(DnsError::Malformed("truncated answer over TCP")),
        _ => Ok(reply),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_answer_round_trip() -> Result<(), DnsError> {
        let q = build_query(7, "api.zone.dpin.")?;
        // Make an answer: copy the query, set QR, one A record with a compression pointer.
        let mut a = q.clone();
        a[2] = 0x81;
        a[3] = 0x80;
        a[7] = 1;
        a.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 127, 0, 1, 2]);
        assert_eq!(
            parse_answer(7, &a)?,
            DnsAnswer::Addrs(vec![Ipv4Addr::new(127, 0, 1, 2)])
        );
        let mut nx = q;
        nx[2] = 0x81;
        nx[3] = 0x83;
        assert_eq!(parse_answer(7, &nx)?, DnsAnswer::NxDomain);
        assert!(parse_answer(8, &nx).is_err());
        let mut tc = nx.clone();
        tc[2] = 0x83;
        tc[3] = 0x80;
        assert_eq!(parse_answer(7, &tc)?, DnsAnswer::Truncated);
        assert!(parse_answer(7, &nx[..5]).is_err());
        Ok(())
    }

    /// An answer of `ttls.len()` A records with these TTLs.
    fn answer_with_ttls(ttls: &[u32]) -> Result<Vec<u8>, DnsError> {
        let mut a = build_query(9, "api.zone.dpin.")?;
        a[2] = 0x81;
        a[3] = 0x80;
        a[7] = ttls.len() as u8;
        for (i, ttl) in ttls.iter().enumerate() {
            a.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
            a.extend_from_slice(&ttl.to_be_bytes());
            a.extend_from_slice(&[0, 4, 127, 0, 1, i as u8 + 1]);
        }
        Ok(a)
    }

    #[test]
    fn a_one_second_ttl_says_cut_off_and_a_longer_one_does_not() -> Result<(), DnsError> {
        let cut = parse_reply(9, &answer_with_ttls(&[12, 1])?)?;
        assert_eq!(cut.min_ttl, Some(1));
        assert!(cut.says_cut_off());
        let fine = parse_reply(9, &answer_with_ttls(&[12, 30])?)?;
        assert_eq!(fine.min_ttl, Some(12));
        assert!(!fine.says_cut_off());
        // An answer without addresses says nothing about the node.
        let none = parse_reply(9, &answer_with_ttls(&[])?)?;
        assert_eq!((none.min_ttl, none.says_cut_off()), (None, false));
        Ok(())
    }
}
