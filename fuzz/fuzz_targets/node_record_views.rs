//! Fuzzes what the node reads out of replicated records beyond the protocol's own validation
//! — record contents any peer can put on the wire: health observations shared by other
//! probers (`dpin_node::health::parse_observation`, endpoint lists whose weights carry
//! verdicts) and the zone-to-peer binding of offers (`dpin_node::offers::peer_of`, any 32
//! bytes as an ed25519 key). Structure-aware (bodies built from the input, unsigned: neither
//! reader checks signatures, validation does that before). Never panics; an observation
//! yields at most one verdict per endpoint, and a zone that maps to a peer maps to the same
//! peer every time.
#![no_main]

use dpin_node::health::{parse_observation, OBSERVATION_LABEL_PREFIX};
use dpin_node::offers::peer_of;
use dpin_protocol::{Content, Endpoint, Host, RecordBody, SignedRecord, Transport, ZoneId};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fn endpoint(u: &mut Unstructured) -> Result<Endpoint> {
    Ok(Endpoint {
        host: match u.int_in_range(0u8..=2)? {
            0 => Host::V4(u.arbitrary()?),
            1 => Host::V6(u.arbitrary()?),
            _ => Host::Name(u.arbitrary()?),
        },
        port: u.arbitrary()?,
        transport: if u.arbitrary()? {
            Transport::Tcp
        } else {
            Transport::Udp
        },
        // Mostly the verdict weights' neighbourhood, sometimes anything.
        weight: if u.arbitrary()? {
            u.int_in_range(0u16..=4)?
        } else {
            u.arbitrary()?
        },
    })
}

fn record(u: &mut Unstructured) -> Result<SignedRecord> {
    let zone = ZoneId(u.arbitrary()?);
    let label = match u.int_in_range(0u8..=2)? {
        0 => format!("{OBSERVATION_LABEL_PREFIX}{}", u.int_in_range(0u8..=20)?),
        1 => OBSERVATION_LABEL_PREFIX.to_owned(),
        _ => u.arbitrary()?,
    };
    let content = if u.arbitrary()? {
        let n = u.int_in_range(0usize..=80)?;
        let mut eps = Vec::with_capacity(n);
        for _ in 0..n {
            eps.push(endpoint(u)?);
        }
        Content::Endpoints(eps)
    } else {
        Content::Tombstone
    };
    Ok(SignedRecord {
        body: RecordBody {
            zone,
            label,
            seq: u.arbitrary()?,
            expires_at_ms: u.arbitrary()?,
            content,
        },
        signature: [0; 64],
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(r) = record(&mut u) else {
        return;
    };
    if let Some(verdicts) = parse_observation(&r) {
        let n = r.endpoints().map_or(0, <[Endpoint]>::len);
        assert!(verdicts.len() <= n, "more verdicts than endpoints");
    }
    let first = peer_of(&r.body.zone);
    assert_eq!(first, peer_of(&r.body.zone), "peer_of is not a function");
});
