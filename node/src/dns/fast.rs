//! The common query, read and answered on its wire bytes: one question for the `A` or `AAAA`
//! records of `LABEL.ZONE.dpin.` (or `LABEL.ALIAS.dpin.`), class IN, with or without a bare
//! EDNS(0) OPT record, as resolvers and load generators send almost every query. Its answer
//! is the name's addresses, or NXDOMAIN or NODATA with the zone's SOA.
//!
//! Why: hickory's parse and encode (a `MessageRequest` with its lowercased copy of the name
//! and a copy of the question, `Record`s that each own a copy of the owner name, a compression
//! table) cost more than the store lookup itself — about half of what an answer took on the
//! answer threads at 10⁶ names (issue 14, stop 54). This module does only what such a query
//! needs: check its shape, hand back the pieces to look up, and write the answer in place.
//!
//! It is a fast path, not a second server: [`parse`] returns `None` for anything it does not
//! fully understand (another type or class, more than one record in any section, EDNS options
//! or a version above 0, compression pointers in the question, trailing bytes, a name of
//! another shape), and [`write_answer`] and [`write_negative`] return `None` when the answer
//! would not fit or would be written another way. The caller then answers through the full
//! path, which handles everything. For every packet the fast path answers, its answer is byte
//! for byte what the full path would send: the tests (`fast_path_*` in `dns/tests.rs`) and
//! the `dns_packet` fuzz target check exactly that.

use super::Proto;
use super::{NEGATIVE_TTL_SECS, UDP_LEGACY_LIMIT, UDP_PAYLOAD_LIMIT};

/// DNS header length.
const HEADER: usize = 12;
/// Record types answered here.
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const TYPE_SOA: u16 = 6;
/// The SOA's RNAME is `hostmaster.dpin.`; its nominal timers (dpin has no zone transfers).
const HOSTMASTER: &[u8] = b"hostmaster";
pub(super) const SOA_SERIAL: u32 = 1;
pub(super) const SOA_REFRESH: i32 = 60;
pub(super) const SOA_RETRY: i32 = 60;
pub(super) const SOA_EXPIRE: i32 = 86_400;
const CLASS_IN: u16 = 1;
/// A compression pointer to the question's name, which always starts right after the header.
const NAME_AT_QUESTION: [u8; 2] = [0xC0, HEADER as u8];

/// Which address records a query asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AddrType {
    /// `A`: IPv4 literals.
    V4,
    /// `AAAA`: IPv6 literals.
    V6,
}

/// A query of the shape this module answers, borrowed from its packet.
#[derive(Debug)]
pub(super) struct FastQuery<'p> {
    /// The query's id and flag bytes (header bytes 0..4).
    header: [u8; 4],
    /// The question as sent (name, type, class): echoed as is, case preserved.
    question: &'p [u8],
    /// The first label (the record's label), as sent.
    pub(super) label: &'p [u8],
    /// The second label (zone id text or alias), as sent.
    pub(super) zone: &'p [u8],
    /// `A` or `AAAA`.
    pub(super) qtype: AddrType,
    /// Whether the query carried an OPT record (the answer then carries one too).
    edns: bool,
    /// Whether the apex label was sent as `dpin` in lowercase: a negative answer's SOA then
    /// points at it, as the full path's encoder (which matches names case-sensitively) does.
    apex_lowercase: bool,
    /// Largest response the transport and the client allow, bytes.
    limit: usize,
}

/// Big-endian u16 at `at`, if in bounds.
fn u16_at(p: &[u8], at: usize) -> Option<u16> {
    let b = p.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

/// Reads one uncompressed label at `at`: its bytes and the offset after it. `None` for the
/// root label, a compression pointer or an extended label type.
fn label_at(p: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let len = usize::from(*p.get(at)?);
    if len == 0 || len > 63 {
        return None;
    }
    let start = at + 1;
    Some((p.get(start..start + len)?, start + len))
}

/// The query in `packet` if it is of the shape this module answers (see the module docs),
/// else `None`. Never panics.
pub(super) fn parse(packet: &[u8], proto: Proto) -> Option<FastQuery<'_>> {
    let header: [u8; 4] = packet.get(..4)?.try_into().ok()?;
    // QR = 0 (a query) and OPCODE = 0 (QUERY); the other flag bits are echoed or ignored as
    // the full path does.
    if header[2] & 0xF8 != 0 {
        return None;
    }
    let counts = (
        u16_at(packet, 4)?,
        u16_at(packet, 6)?,
        u16_at(packet, 8)?,
        u16_at(packet, 10)?,
    );
    let edns = match counts {
        (1, 0, 0, 0) => false,
        (1, 0, 0, 1) => true,
        _ => return None,
    };
    // LABEL.ZONE.dpin. with no compression.
    let (label, at) = label_at(packet, HEADER)?;
    let (zone, at) = label_at(packet, at)?;
    let (apex, at) = label_at(packet, at)?;
    if !apex.eq_ignore_ascii_case(b"dpin") || *packet.get(at)? != 0 {
        return None;
    }
    let qtype = match u16_at(packet, at + 1)? {
        TYPE_A => AddrType::V4,
        TYPE_AAAA => AddrType::V6,
        _ => return None,
    };
    if u16_at(packet, at + 3)? != CLASS_IN {
        return None;
    }
    let end = at + 5;
    let question = packet.get(HEADER..end)?;
    let mut payload = None;
    let rest = packet.get(end..)?;
    if edns {
        // A bare OPT: root owner, no options, extended RCODE 0 and version 0 (any flags: the
        // answer's OPT sets none, as the full path's does).
        let [0, t0, t1, c0, c1, 0, 0, _, _, 0, 0] = *rest else {
            return None;
        };
        if u16::from_be_bytes([t0, t1]) != TYPE_OPT {
            return None;
        }
        payload = Some(u16::from_be_bytes([c0, c1]));
    } else if !rest.is_empty() {
        return None;
    }
    let limit = match (proto, payload) {
        (Proto::Tcp, _) => u16::MAX,
        (Proto::Udp, Some(p)) => p.clamp(UDP_LEGACY_LIMIT, UDP_PAYLOAD_LIMIT),
        (Proto::Udp, None) => UDP_LEGACY_LIMIT,
    };
    Some(FastQuery {
        header,
        question,
        label,
        zone,
        qtype,
        edns,
        apex_lowercase: apex == b"dpin",
        limit: usize::from(limit),
    })
}

/// The answer to `q`: `addrs` (each 4 bytes for `A`, 16 for `AAAA`; at least one) with `ttl`,
/// authoritative, NOERROR. `None` if it would exceed the query's size limit (the full path
/// then truncates) or `addrs` is empty or of the wrong length.
pub(super) fn write_answer<'a>(
    q: &FastQuery<'_>,
    ttl: u32,
    addrs: impl ExactSizeIterator<Item = &'a [u8]>,
) -> Option<Vec<u8>> {
    let (rtype, rdlen) = match q.qtype {
        AddrType::V4 => (TYPE_A, 4usize),
        AddrType::V6 => (TYPE_AAAA, 16),
    };
    let count = addrs.len();
    if count == 0 {
        return None;
    }
    let opt_len = if q.edns { 11 } else { 0 };
    let len = HEADER + q.question.len() + count * (12 + rdlen) + opt_len;
    if len > q.limit {
        return None;
    }
    let mut out = Vec::with_capacity(len);
    write_header(&mut out, q, RCODE_NOERROR, u16::try_from(count).ok()?, 0);
    for addr in addrs {
        if addr.len() != rdlen {
            return None;
        }
        out.extend_from_slice(&NAME_AT_QUESTION);
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&(rdlen as u16).to_be_bytes());
        out.extend_from_slice(addr);
    }
    write_opt(&mut out, q);
    Some(out)
}

/// NXDOMAIN, as [`write_negative`] takes it.
pub(super) const RCODE_NXDOMAIN: u8 = 3;
/// NOERROR: an answer, or with [`write_negative`] NODATA.
pub(super) const RCODE_NOERROR: u8 = 0;

/// The negative answer to `q` (NXDOMAIN, or NODATA with [`RCODE_NOERROR`]): authoritative, no
/// answers, the `dpin.` SOA in the authority section so that resolvers cache it for
/// [`NEGATIVE_TTL_SECS`] (the full path's `soa_record`). `None` if the query spelled the apex
/// in another case (the full path then writes the SOA's owner in full) or it would not fit.
pub(super) fn write_negative(q: &FastQuery<'_>, rcode: u8) -> Option<Vec<u8>> {
    if !q.apex_lowercase {
        return None;
    }
    // The apex label's offset in the packet: after the header and the first two labels.
    let apex_at = HEADER + 1 + q.label.len() + 1 + q.zone.len();
    let apex = [0xC0, u8::try_from(apex_at).ok()?];
    let opt_len = if q.edns { 11 } else { 0 };
    // SOA: owner pointer, type, class, TTL, RDLENGTH, then MNAME (a pointer), RNAME
    // (`hostmaster` and a pointer) and five 32-bit fields.
    let rdata_len = 2 + 1 + HOSTMASTER.len() + 2 + 20;
    let len = HEADER + q.question.len() + 12 + rdata_len + opt_len;
    if len > q.limit {
        return None;
    }
    let mut out = Vec::with_capacity(len);
    write_header(&mut out, q, rcode, 0, 1);
    out.extend_from_slice(&apex);
    out.extend_from_slice(&TYPE_SOA.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&NEGATIVE_TTL_SECS.to_be_bytes());
    out.extend_from_slice(&u16::try_from(rdata_len).ok()?.to_be_bytes());
    out.extend_from_slice(&apex);
    out.push(HOSTMASTER.len() as u8);
    out.extend_from_slice(HOSTMASTER);
    out.extend_from_slice(&apex);
    out.extend_from_slice(&SOA_SERIAL.to_be_bytes());
    for timer in [SOA_REFRESH, SOA_RETRY, SOA_EXPIRE] {
        out.extend_from_slice(&timer.to_be_bytes());
    }
    out.extend_from_slice(&NEGATIVE_TTL_SECS.to_be_bytes());
    write_opt(&mut out, q);
    Some(out)
}

/// The response header (id, QR, AA, the query's RD and CD, `rcode`; one question, `answers`
/// and `authority` records, an OPT if the query had one) and the question as sent.
fn write_header(out: &mut Vec<u8>, q: &FastQuery<'_>, rcode: u8, answers: u16, authority: u16) {
    out.extend_from_slice(&q.header[..2]);
    out.push(0x80 | 0x04 | (q.header[2] & 0x01));
    out.push((q.header[3] & 0x10) | rcode);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&answers.to_be_bytes());
    out.extend_from_slice(&authority.to_be_bytes());
    out.extend_from_slice(&u16::from(q.edns).to_be_bytes());
    out.extend_from_slice(q.question);
}

/// The OPT record, if the query had one: root owner, our payload size, extended RCODE 0,
/// version 0, no flags, no options.
fn write_opt(out: &mut Vec<u8>, q: &FastQuery<'_>) {
    if q.edns {
        out.push(0);
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&UDP_PAYLOAD_LIMIT.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
}
