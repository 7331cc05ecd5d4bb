//! Drives the DNS handler (`dpin_node::dns::Responder::respond`, the pure function both the
//! UDP and TCP loops call with each packet) and the rate-limit slip answer with arbitrary
//! packets, over UDP and TCP limits, against a source that holds one name (so name lookups,
//! aliases, SRV/A/AAAA answers and truncation are reached). Never panics; an answer is never
//! larger than the transport allows; and what `respond` sends (its fast path for plain A/AAAA
//! queries, else hickory's parse and encode) is byte for byte what the full path alone
//! (`Responder::respond_full`) sends.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use dpin_node::answer::Answer;
use dpin_node::dns::{Proto, Responder, Source, UDP_PAYLOAD_LIMIT};
use dpin_node::health::HealthState;
use dpin_protocol::{Content, Endpoint, Host, RecordBody, SignedRecord, Transport, ZoneKey};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_760_832_000_000;

struct One {
    name: String,
    record: SignedRecord,
}

impl Source for One {
    fn answer(&self, name: &str, _now_ms: u64) -> Option<Answer> {
        if name != self.name {
            return None;
        }
        let eps = self.record.endpoints()?.to_vec();
        Some(Answer {
            record: self.record.clone(),
            endpoints: eps.into_iter().map(|e| (e, HealthState::Healthy)).collect(),
        })
    }
}

fn responder() -> &'static Responder<One> {
    static R: OnceLock<Responder<One>> = OnceLock::new();
    R.get_or_init(|| {
        let key = ZoneKey::from_seed([5; 32]);
        let eps = (0..40u8)
            .map(|i| Endpoint {
                host: match i % 3 {
                    0 => Host::V4([10, 0, 0, i]),
                    1 => Host::V6([i; 16]),
                    _ => Host::Name(format!("h{i}.example.com")),
                },
                port: 80 + u16::from(i),
                transport: if i % 2 == 0 {
                    Transport::Tcp
                } else {
                    Transport::Udp
                },
                weight: 1,
            })
            .collect();
        let record = RecordBody {
            zone: key.zone(),
            label: "api".into(),
            seq: 1,
            expires_at_ms: NOW + 3_600_000,
            content: Content::Endpoints(eps),
        }
        .sign(&key)
        .expect("valid record");
        let mut aliases = BTreeMap::new();
        aliases.insert("shop".to_owned(), key.zone());
        Responder::new(
            One {
                name: record.name(),
                record,
            },
            &aliases,
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let r = responder();
    for proto in [Proto::Udp, Proto::Tcp] {
        assert_eq!(
            r.respond(data, proto, NOW),
            r.respond_full(data, proto, NOW),
            "the fast path answered differently over {proto:?}"
        );
    }
    if let Some(out) = r.respond(data, Proto::Udp, NOW) {
        assert!(
            out.len() <= usize::from(UDP_PAYLOAD_LIMIT),
            "UDP answer of {} bytes",
            out.len()
        );
    }
    if let Some(out) = r.respond(data, Proto::Tcp, NOW) {
        assert!(out.len() <= usize::from(u16::MAX));
    }
    let _ = r.slip(data);
});
