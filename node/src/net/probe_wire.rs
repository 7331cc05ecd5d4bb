//! The `/dpin/probe/1` wire format: the failure detector's probes as request-response, for
//! ping-req (an indirect probe: "probe this peer for me"), goodbyes, and direct probes to
//! peers without the probe stream ([`super::probe_stream`]).
//!
//! Requests: `[0, nonce(8)]` (ping; the nonce's [`WATCH_BIT`] says the sender's detector
//! watches us), `[1, nonce(8), target peer id]` (ping-req) or `[2, 0(8)]` (goodbye: the sender
//! is closing this connection to keep its degree; not evidence of life, and an older node that
//! does not know it drops the request, which the sender takes as its cue to close). Answers:
//! `[0]` (ack) or `[1]` (nack: the target did not answer the helper).
//!
//! Any peer can send any bytes here: [`decode_probe`] reads at most [`MAX_PROBE_BYTES`] (the
//! request-response codec refuses longer messages before this runs), never panics, and
//! refuses unknown tags, short messages and peer ids that do not parse (the `net_probe` fuzz
//! target checks it).

use libp2p::PeerId;

use super::probe_stream::WATCH_BIT;

/// Largest probe message (a tag, a nonce and a peer id fit in far less).
pub const MAX_PROBE_BYTES: usize = 128;

/// Tag of a direct probe.
pub const PROBE_PING: u8 = 0;
/// Tag of an indirect probe request.
pub const PROBE_PING_REQ: u8 = 1;
/// Tag of a goodbye.
pub const PROBE_GOODBYE: u8 = 2;
/// Answer: the probe (or the relayed probe) was answered.
pub const PROBE_ACK: u8 = 0;
/// Answer: the relayed probe's target did not answer.
pub const PROBE_NACK: u8 = 1;

/// A direct probe with `nonce` (carrying [`WATCH_BIT`] when the sender watches the peer).
pub fn probe_ping(nonce: u64) -> Vec<u8> {
    let mut v = vec![PROBE_PING];
    v.extend_from_slice(&nonce.to_be_bytes());
    v
}

/// A request to probe `target` on the sender's behalf.
pub fn probe_ping_req(nonce: u64, target: &PeerId) -> Vec<u8> {
    let mut v = vec![PROBE_PING_REQ];
    v.extend_from_slice(&nonce.to_be_bytes());
    v.extend_from_slice(&target.to_bytes());
    v
}

/// A goodbye: the sender is about to close the connection.
pub fn probe_goodbye() -> Vec<u8> {
    let mut v = vec![PROBE_GOODBYE];
    v.extend_from_slice(&0u64.to_be_bytes());
    v
}

/// A decoded probe request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeRequest {
    /// A direct probe.
    Ping {
        /// The nonce carries [`WATCH_BIT`]: the sender's detector watches us.
        watch: bool,
    },
    /// Probe `target` and answer whether it answered.
    PingReq {
        /// The asker's nonce for this round.
        nonce: u64,
        /// The peer to probe.
        target: PeerId,
    },
    /// The sender is closing this connection.
    Goodbye,
}

/// Decodes a probe request; `None` for anything that is not one. Bytes after a ping's or a
/// goodbye's nonce are ignored (older and newer senders may append; the codec bounds the
/// total); a ping-req's target is everything after its nonce and must parse as a peer id.
pub fn decode_probe(data: &[u8]) -> Option<ProbeRequest> {
    let (&tag, rest) = data.split_first()?;
    let nonce = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    match tag {
        PROBE_PING => Some(ProbeRequest::Ping {
            watch: nonce & WATCH_BIT != 0,
        }),
        PROBE_PING_REQ => Some(ProbeRequest::PingReq {
            nonce,
            target: PeerId::from_bytes(rest.get(8..)?).ok()?,
        }),
        PROBE_GOODBYE => Some(ProbeRequest::Goodbye),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goodbye_decodes_and_is_not_a_ping() {
        assert_eq!(decode_probe(&probe_goodbye()), Some(ProbeRequest::Goodbye));
    }

    #[test]
    fn probe_wire_round_trips_and_garbage_is_refused() {
        assert_eq!(
            decode_probe(&probe_ping(7)),
            Some(ProbeRequest::Ping { watch: false })
        );
        assert_eq!(
            decode_probe(&probe_ping(7 | WATCH_BIT)),
            Some(ProbeRequest::Ping { watch: true })
        );
        let target = PeerId::random();
        assert_eq!(
            decode_probe(&probe_ping_req(9, &target)),
            Some(ProbeRequest::PingReq { nonce: 9, target })
        );
        for bad in [
            &[][..],
            &[0, 1, 2][..],
            &[7, 0, 0, 0, 0, 0, 0, 0, 1][..],
            &[1; 12][..],
        ] {
            assert!(decode_probe(bad).is_none(), "{bad:?}");
        }
        assert!(probe_ping_req(u64::MAX, &target).len() <= MAX_PROBE_BYTES);
    }

    #[test]
    fn a_ping_req_with_bytes_after_the_peer_id_is_refused() {
        let mut bytes = probe_ping_req(3, &PeerId::random());
        bytes.push(0);
        assert_eq!(decode_probe(&bytes), None);
    }
}
