//! Fuzzes the `/dpin/probe/1` request decoder (`dpin_node::net::probe_wire::decode_probe`),
//! which reads whatever bytes any connected peer sends as a probe, a ping-req or a goodbye:
//! never panics on input up to the codec's `MAX_PROBE_BYTES`; what decodes encodes back to
//! the input's meaning (a ping keeps its watch mark, a ping-req its nonce and exactly the
//! target bytes it carried, a goodbye is a goodbye); unknown tags and short input decode to
//! nothing.
#![no_main]

use dpin_node::net::probe_wire::{
    decode_probe, probe_goodbye, probe_ping, probe_ping_req, ProbeRequest, MAX_PROBE_BYTES,
    PROBE_GOODBYE, PROBE_PING, PROBE_PING_REQ,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_PROBE_BYTES {
        // The request-response codec refuses these before the decoder sees them.
        return;
    }
    let decoded = decode_probe(data);
    let tag_known = matches!(
        data.first(),
        Some(&PROBE_PING) | Some(&PROBE_PING_REQ) | Some(&PROBE_GOODBYE)
    );
    if data.len() < 9 || !tag_known {
        assert_eq!(decoded, None, "{data:?}");
        return;
    }
    let nonce = u64::from_be_bytes(data[1..9].try_into().expect("8 bytes"));
    match decoded {
        Some(ProbeRequest::Ping { watch }) => {
            assert_eq!(data[0], PROBE_PING);
            assert_eq!(
                decode_probe(&probe_ping(nonce)),
                Some(ProbeRequest::Ping { watch })
            );
        }
        Some(ProbeRequest::PingReq { nonce: n, target }) => {
            assert_eq!(data[0], PROBE_PING_REQ);
            assert_eq!(n, nonce);
            // The target is exactly the bytes after the nonce: nothing trails a peer id.
            assert_eq!(probe_ping_req(n, &target), data);
        }
        Some(ProbeRequest::Goodbye) => {
            assert_eq!(data[0], PROBE_GOODBYE);
            assert_eq!(decode_probe(&probe_goodbye()), Some(ProbeRequest::Goodbye));
        }
        None => assert_eq!(
            data[0], PROBE_PING_REQ,
            "only a bad peer id fails: {data:?}"
        ),
    }
});
