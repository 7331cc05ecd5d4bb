//! The DNS front-end's tests: responses built from a fixed table of answers, and the sockets.

use super::*;
use dpin_protocol::{Content, Endpoint, RecordBody, ZoneKey};
use hickory_proto::op::{Message, Query};
use rand::{Rng, SeedableRng};
use std::str::FromStr;

const NOW: u64 = 1_700_000_000_000;

/// A fixed table of answers standing in for the node.
struct Table(HashMap<String, Answer>);

impl Source for Table {
    fn answer(&self, name: &str, now_ms: u64) -> Option<Answer> {
        self.0
            .get(name)
            .filter(|a| a.record.body.expires_at_ms > now_ms)
            .cloned()
    }
}

fn key() -> ZoneKey {
    ZoneKey::from_seed([7; 32])
}

fn answer(label: &str, eps: &[&str], health: &[bool], expires_at_ms: u64) -> Answer {
    let eps: Vec<Endpoint> = eps.iter().map(|e| e.parse().expect("endpoint")).collect();
    let record = RecordBody {
        zone: key().zone(),
        label: label.to_owned(),
        seq: 1,
        expires_at_ms,
        content: Content::Endpoints(eps.clone()),
    }
    .sign(&key())
    .expect("sign");
    let endpoints = eps
        .into_iter()
        .zip(
            health
                .iter()
                .map(|h| {
                    if *h {
                        HealthState::Healthy
                    } else {
                        HealthState::Unhealthy
                    }
                })
                .chain(std::iter::repeat(HealthState::Healthy)),
        )
        .collect();
    Answer { record, endpoints }
}

fn responder(answers: Vec<Answer>) -> Responder<Table> {
    let table = answers.into_iter().map(|a| (a.record.name(), a)).collect();
    let mut aliases = BTreeMap::new();
    aliases.insert("shop".to_owned(), key().zone());
    Responder::new(Table(table), &aliases)
}

fn zone() -> String {
    key().zone().to_string()
}

fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(4242).set_recursion_desired(true);
    m.add_query(Query::query(Name::from_str(name).expect("name"), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().expect("encode query")
}

fn ask(r: &Responder<Table>, name: &str, qtype: RecordType, proto: Proto) -> Message {
    let edns = (proto == Proto::Udp).then_some(4096);
    let bytes = r
        .respond(&query(name, qtype, edns), proto, NOW)
        .expect("a response");
    Message::from_vec(&bytes).expect("decodable response")
}

fn web() -> Answer {
    answer(
        "web",
        &[
            "127.0.0.1:80",
            "127.0.0.2:8080@5",
            "[::1]:443",
            "db.example.org:5432",
            "127.0.0.1:81/udp",
        ],
        &[],
        NOW + 3_600_000,
    )
}

#[test]
fn a_aaaa_and_srv_with_glue() {
    let r = responder(vec![web()]);
    let name = format!("web.{}.dpin.", zone());
    let m = ask(&r, &name, RecordType::A, Proto::Udp);
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(m.authoritative());
    let a: Vec<String> = m.answers().iter().map(|r| r.data().to_string()).collect();
    assert_eq!(
        a,
        vec!["127.0.0.1", "127.0.0.2"],
        "deduplicated v4 literals"
    );
    assert!(m.answers().iter().all(|r| r.ttl() == MAX_TTL_SECS));
    assert!(m.extensions().is_some(), "EDNS echoed");

    let m = ask(&r, &name, RecordType::AAAA, Proto::Udp);
    let a: Vec<String> = m.answers().iter().map(|r| r.data().to_string()).collect();
    assert_eq!(a, vec!["::1"]);

    let m = ask(&r, &name, RecordType::SRV, Proto::Udp);
    assert_eq!(m.answers().len(), 5);
    let srv: Vec<&SRV> = m
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::SRV(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(srv[1].weight(), 5);
    assert_eq!(srv[1].port(), 8080);
    assert_eq!(srv[0].priority(), 0);
    assert_eq!(srv[0].target().to_ascii(), "7f000001.addr.dpin.");
    assert_eq!(srv[3].target().to_ascii(), "db.example.org.");
    // Glue for the three distinct literals (127.0.0.1 twice → once).
    assert_eq!(m.additionals().len(), 3);

    // The synthesized targets resolve to the address they spell.
    let m = ask(&r, "7f000002.addr.dpin.", RecordType::A, Proto::Udp);
    assert_eq!(m.answers()[0].data().to_string(), "127.0.0.2");
    let v6 = format!("{}1.ADDR.dpin.", "0".repeat(31));
    let m = ask(&r, &v6, RecordType::AAAA, Proto::Udp);
    assert_eq!(m.answers()[0].data().to_string(), "::1");
    let m = ask(&r, &v6, RecordType::A, Proto::Udp);
    assert_eq!(
        (m.response_code(), m.answers().len()),
        (ResponseCode::NoError, 0)
    );
    for nx in [
        "7f00001.addr.dpin.",
        "7f00000g.addr.dpin.",
        "x.7f000001.addr.dpin.",
    ] {
        let m = ask(&r, nx, RecordType::A, Proto::Udp);
        assert_eq!(m.response_code(), ResponseCode::NXDomain, "{nx}");
    }
}

#[test]
fn transport_scoped_srv() {
    let r = responder(vec![web()]);
    let m = ask(
        &r,
        &format!("_udp.web.{}.dpin.", zone()),
        RecordType::SRV,
        Proto::Udp,
    );
    assert_eq!(m.answers().len(), 1);
    let m = ask(
        &r,
        &format!("_http._tcp.web.{}.dpin.", zone()),
        RecordType::SRV,
        Proto::Udp,
    );
    assert_eq!(m.answers().len(), 4);
    // Targets are the synthesized address names, whatever the question's prefix.
    let RData::SRV(s) = m.answers()[0].data() else {
        panic!("not SRV")
    };
    assert_eq!(s.target().to_ascii(), "7f000001.addr.dpin.");
}

#[test]
fn case_insensitive_and_aliases() {
    let r = responder(vec![web()]);
    // hickory's Name lowercases what it parses, so mix the case on the wire by hand.
    let mut q = query(&format!("web.{}.dpin.", zone()), RecordType::A, None);
    for b in q.iter_mut().skip(12).step_by(2) {
        b.make_ascii_uppercase();
    }
    let upper = q.clone();
    let raw = r.respond(&q, Proto::Udp, NOW).expect("response");
    let m = Message::from_vec(&raw).expect("decode");
    assert_eq!(m.answers().len(), 2);
    // The question is echoed byte for byte (0x20 case randomisation keeps working).
    assert_eq!(raw.get(12..upper.len()), upper.get(12..));
    let m = ask(&r, "web.SHOP.dpin.", RecordType::A, Proto::Udp);
    assert_eq!(m.answers().len(), 2);
}

#[test]
fn negative_answers_and_refusals() {
    let r = responder(vec![web()]);
    let z = zone();
    let m = ask(&r, &format!("nope.{z}.dpin."), RecordType::A, Proto::Udp);
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
    assert!(m.authoritative());
    assert_eq!(m.name_servers()[0].record_type(), RecordType::SOA);
    assert_eq!(m.name_servers()[0].ttl(), NEGATIVE_TTL_SECS);

    let m = ask(&r, &format!("web.{z}.dpin."), RecordType::TXT, Proto::Udp);
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(m.answers().is_empty());
    assert_eq!(m.name_servers().len(), 1);

    for ent in [format!("{z}.dpin."), "shop.dpin.".to_owned()] {
        let m = ask(&r, &ent, RecordType::A, Proto::Udp);
        assert_eq!(m.response_code(), ResponseCode::NoError, "{ent}");
    }
    for nx in [
        "web.notazone.dpin.".to_owned(),
        format!("x.y.web.{z}.dpin."),
        format!("_offer-storage.{z}.dpin."),
        format!("Bad_Label.{z}.dpin."),
    ] {
        let m = ask(&r, &nx, RecordType::A, Proto::Udp);
        assert_eq!(m.response_code(), ResponseCode::NXDomain, "{nx}");
    }
    let m = ask(&r, "dpin.", RecordType::SOA, Proto::Udp);
    assert_eq!(m.answers()[0].record_type(), RecordType::SOA);

    for out in ["example.com.", "dpin.example.com.", "."] {
        let m = ask(&r, out, RecordType::A, Proto::Udp);
        assert_eq!(m.response_code(), ResponseCode::Refused, "{out}");
        assert!(!m.authoritative());
    }
}

#[test]
fn ttl_follows_expiry() {
    assert_eq!(ttl_secs(NOW + 3_600_000, NOW), MAX_TTL_SECS);
    assert_eq!(ttl_secs(NOW + 12_500, NOW), 12);
    assert_eq!(ttl_secs(NOW + 300, NOW), 1);
    assert_eq!(ttl_secs(NOW, NOW), 1);
    let soon = answer("soon", &["127.0.0.1:1"], &[], NOW + 7_900);
    let gone = answer("gone", &["127.0.0.1:1"], &[], NOW - 1);
    let r = responder(vec![soon, gone]);
    let m = ask(
        &r,
        &format!("soon.{}.dpin.", zone()),
        RecordType::A,
        Proto::Udp,
    );
    assert_eq!(m.answers()[0].ttl(), 7);
    let m = ask(
        &r,
        &format!("gone.{}.dpin.", zone()),
        RecordType::A,
        Proto::Udp,
    );
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
}

#[test]
fn unhealthy_endpoints_get_a_lower_srv_priority() {
    let a = answer(
        "sick",
        &["127.0.0.1:1", "127.0.0.2:1"],
        &[false, false],
        NOW + 60_000,
    );
    let r = responder(vec![a]);
    let m = ask(
        &r,
        &format!("sick.{}.dpin.", zone()),
        RecordType::SRV,
        Proto::Udp,
    );
    for rec in m.answers() {
        let RData::SRV(s) = rec.data() else {
            panic!("not SRV")
        };
        assert_eq!(s.priority(), UNHEALTHY_SRV_PRIORITY);
    }
    assert_eq!(m.answers().len(), 2, "fail open: still answered");
}

fn big() -> Answer {
    let eps: Vec<String> = (1..=60)
        .map(|i| format!("[2001:db8::{i:x}]:{}", 1000 + i))
        .collect();
    let refs: Vec<&str> = eps.iter().map(String::as_str).collect();
    answer("big", &refs, &[], NOW + 3_600_000)
}

#[test]
fn large_answers_truncate_on_udp_and_fit_on_tcp() {
    let r = responder(vec![big()]);
    let name = format!("big.{}.dpin.", zone());
    for (edns, limit) in [
        (None, 512),
        (Some(4096), 1232),
        (Some(100), 512),
        (Some(900), 900),
    ] {
        let bytes = r
            .respond(&query(&name, RecordType::AAAA, edns), Proto::Udp, NOW)
            .expect("response");
        assert!(bytes.len() <= limit, "{} > {limit}", bytes.len());
        let m = Message::from_vec(&bytes).expect("decode");
        assert!(m.truncated(), "TC for edns {edns:?}");
        assert!(!m.answers().is_empty(), "partial answer, never empty");
        assert!(m.answers().len() < 60);
        assert_eq!(m.extensions().is_some(), edns.is_some());
    }
    let m = ask(&r, &name, RecordType::AAAA, Proto::Tcp);
    assert!(!m.truncated());
    assert_eq!(m.answers().len(), 60);
    let m = ask(&r, &name, RecordType::SRV, Proto::Tcp);
    assert_eq!(
        (m.answers().len(), m.additionals().len()),
        (60, 60),
        "all glue"
    );
    let m = ask(&r, &name, RecordType::SRV, Proto::Udp);
    assert!(m.truncated());
    assert!(m.additionals().is_empty(), "glue dropped first");
    assert_eq!(
        m.answers().len(),
        18,
        "18 IPv6 SRV records fit in 1232 bytes"
    );
    assert!(m.extensions().is_some(), "OPT kept");
}

#[test]
fn glue_is_dropped_before_answers_without_tc() {
    // 16 IPv6 SRV answers fit in 1232 bytes but not together with their 16 AAAA glue.
    let eps: Vec<String> = (1..=16).map(|i| format!("[2001:db8::{i:x}]:{i}")).collect();
    let refs: Vec<&str> = eps.iter().map(String::as_str).collect();
    let r = responder(vec![answer("mid", &refs, &[], NOW + 60_000)]);
    let name = format!("mid.{}.dpin.", zone());
    let bytes = r
        .respond(&query(&name, RecordType::SRV, Some(1232)), Proto::Udp, NOW)
        .expect("response");
    let m = Message::from_vec(&bytes).expect("decode");
    assert!(
        !m.truncated(),
        "{} bytes, {} answers",
        bytes.len(),
        m.answers().len()
    );
    assert_eq!(m.answers().len(), 16);
    assert!(m.additionals().is_empty(), "glue dropped");
    assert!(m.extensions().is_some(), "OPT kept");
}

#[test]
fn malformed_and_unsupported_requests() {
    let r = responder(vec![web()]);
    // Shorter than a header: dropped.
    assert!(r.respond(&[1, 2, 3], Proto::Udp, NOW).is_none());
    assert!(r.respond(&[], Proto::Udp, NOW).is_none());
    // Oversized: dropped.
    assert!(r
        .respond(&[0; MAX_QUERY_BYTES + 1], Proto::Udp, NOW)
        .is_none());
    // A response (QR=1): dropped, no reflection.
    let mut resp = query("example.com.", RecordType::A, None);
    resp[2] |= 0x80;
    assert!(r.respond(&resp, Proto::Udp, NOW).is_none());
    // Header claims a question that is not there: FORMERR with the id.
    let mut cut = query("web.example.", RecordType::A, None);
    cut.truncate(15);
    let m = Message::from_vec(&r.respond(&cut, Proto::Udp, NOW).expect("formerr")).expect("decode");
    assert_eq!((m.id(), m.response_code()), (4242, ResponseCode::FormErr));
    // No question at all: FORMERR.
    let mut none = Message::new();
    none.set_id(9);
    let m = Message::from_vec(
        &r.respond(&none.to_vec().expect("enc"), Proto::Udp, NOW)
            .expect("formerr"),
    )
    .expect("decode");
    assert_eq!(m.response_code(), ResponseCode::FormErr);
    // UPDATE: NOTIMP.
    let mut upd = Message::new();
    upd.set_id(10).set_op_code(OpCode::Update);
    let m = Message::from_vec(
        &r.respond(&upd.to_vec().expect("enc"), Proto::Udp, NOW)
            .expect("notimp"),
    )
    .expect("decode");
    assert_eq!(m.response_code(), ResponseCode::NotImp);
    // EDNS version 1: BADVERS.
    let mut q =
        Message::from_vec(&query("web.shop.dpin.", RecordType::A, Some(1232))).expect("decode");
    if let Some(e) = q.extensions_mut() {
        e.set_version(1);
    }
    let m = Message::from_vec(
        &r.respond(&q.to_vec().expect("enc"), Proto::Udp, NOW)
            .expect("badvers"),
    )
    .expect("decode");
    // BADVERS shares code 16 with BADSIG; hickory decodes it as the latter.
    assert_eq!(u16::from(m.response_code()), 16);
    // CHAOS class: REFUSED.
    let mut ch = Message::from_vec(&query("version.bind.", RecordType::TXT, None)).expect("decode");
    let mut q0 = ch.queries()[0].clone();
    q0.set_query_class(DNSClass::CH);
    ch.queries_mut()[0] = q0;
    let m = Message::from_vec(
        &r.respond(&ch.to_vec().expect("enc"), Proto::Udp, NOW)
            .expect("refused"),
    )
    .expect("decode");
    assert_eq!(m.response_code(), ResponseCode::Refused);
}

#[test]
fn random_and_mutated_packets_never_panic() {
    let r = responder(vec![web(), big()]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let valid = [
        query(
            &format!("web.{}.dpin.", zone()),
            RecordType::SRV,
            Some(1232),
        ),
        query(&format!("big.{}.dpin.", zone()), RecordType::AAAA, None),
    ];
    for i in 0..20_000 {
        let packet: Vec<u8> = if i % 2 == 0 {
            let len = rng.gen_range(0..600);
            (0..len).map(|_| rng.gen()).collect()
        } else {
            let mut p = valid[i % 4 / 2].clone();
            for _ in 0..rng.gen_range(1..6) {
                let at = rng.gen_range(0..p.len());
                p[at] = rng.gen();
            }
            p.truncate(rng.gen_range(0..=p.len()));
            p
        };
        for proto in [Proto::Udp, Proto::Tcp] {
            if let Some(resp) = r.respond(&packet, proto, NOW) {
                assert!(resp.len() >= 12);
                if proto == Proto::Udp {
                    assert!(resp.len() <= usize::from(UDP_PAYLOAD_LIMIT));
                }
            }
        }
    }
}

/// Names the fast-path tests ask for: held ones (A and AAAA, one family only, hostnames only,
/// more addresses than fit in 512 bytes), through an alias, and names of every other shape.
fn fast_path_names() -> (Responder<Table>, Vec<String>) {
    let v6_only = answer("six", &["[2001:db8::1]:443"], &[], NOW + 3_600_000);
    let names_only = answer("named", &["db.example.org:5432"], &[], NOW + 3_600_000);
    let expired = answer("old", &["127.0.0.9:80"], &[], NOW - 1);
    let r = responder(vec![web(), big(), v6_only, names_only, expired]);
    let z = zone();
    let names = [
        format!("web.{z}.dpin."),
        format!("WeB.{}.DPIN.", z.to_ascii_uppercase()),
        "web.shop.dpin.".to_owned(),
        "Web.SHOP.dpin.".to_owned(),
        format!("big.{z}.dpin."),
        format!("six.{z}.dpin."),
        format!("named.{z}.dpin."),
        format!("old.{z}.dpin."),
        format!("absent.{z}.dpin."),
        format!("-web.{z}.dpin."),
        format!("web.{z}.dpin.example."),
        format!("_tcp.web.{z}.dpin."),
        format!("{z}.dpin."),
        "7f000001.addr.dpin.".to_owned(),
        "web.nosuchalias.dpin.".to_owned(),
        "dpin.".to_owned(),
        "web.example.com.".to_owned(),
    ];
    (r, names.into())
}

/// The fast path's answer to `packet`, if it takes it.
fn fast<S: Source>(r: &Responder<S>, packet: &[u8], proto: Proto) -> Option<Vec<u8>> {
    r.respond_fast(packet, proto, NOW, &mut [0u8; KEY_BUF], &mut None)
}

/// A table that counts how often it is asked.
struct Counting(Table, AtomicU64);

impl Source for Counting {
    fn answer(&self, name: &str, now_ms: u64) -> Option<Answer> {
        self.1.fetch_add(1, Ordering::Relaxed);
        self.0.answer(name, now_ms)
    }
}

/// A name the fast path finds not held is looked up once, also when the full path answers
/// it (a query that spelled the apex in capitals); a held name's answer the fast path cannot
/// write (one that needs truncating) is looked up again in full.
#[test]
fn the_full_path_answers_from_the_fast_paths_lookup() {
    let table = Table(
        [web(), big()]
            .into_iter()
            .map(|a| (a.record.name(), a))
            .collect(),
    );
    let r = Responder::new(Counting(table, AtomicU64::new(0)), &BTreeMap::new());
    let z = zone();
    let capitals = |name: &str, qtype| {
        let mut q = query(name, qtype, None);
        let apex_at = q.len() - 4 - 5;
        q[apex_at..apex_at + 4].copy_from_slice(b"DPIN");
        q
    };
    for (q, rcode, truncated, lookups) in [
        (
            query(&format!("web.{z}.dpin."), RecordType::A, None),
            ResponseCode::NoError,
            false,
            1,
        ),
        (
            query(&format!("absent.{z}.dpin."), RecordType::A, None),
            ResponseCode::NXDomain,
            false,
            1,
        ),
        (
            capitals(&format!("absent.{z}.dpin."), RecordType::A),
            ResponseCode::NXDomain,
            false,
            1,
        ),
        (
            query(&format!("big.{z}.dpin."), RecordType::AAAA, None),
            ResponseCode::NoError,
            true,
            2,
        ),
    ] {
        let before = r.source_for_tests().1.load(Ordering::Relaxed);
        let m = Message::from_vec(&r.respond(&q, Proto::Udp, NOW).expect("answered"))
            .expect("decodable");
        assert_eq!(
            (m.response_code(), m.truncated()),
            (rcode, truncated),
            "{q:02x?}"
        );
        let asked = r.source_for_tests().1.load(Ordering::Relaxed) - before;
        assert_eq!(asked, lookups, "{q:02x?} was looked up {asked} times");
    }
}

/// A query built byte by byte with every field the fast path reads drawn from values it takes
/// and values it must leave to the full path: flags, section counts, the name's case and
/// shape (a compression pointer too), type, class, an OPT record plain, with flags, a version,
/// an option or a non-root owner, another record instead, trailing bytes.
fn random_query(rng: &mut rand::rngs::StdRng, names: &[String]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&rng.gen::<u16>().to_be_bytes());
    p.push(if rng.gen_bool(0.8) {
        rng.gen::<u8>() & 0x07
    } else {
        rng.gen()
    });
    p.push(rng.gen());
    let additional = rng.gen_range(0..8u8);
    let mut count = |usual: u16| -> u16 {
        if rng.gen_bool(0.9) {
            usual
        } else {
            rng.gen_range(0..3)
        }
    };
    let (qd, an, ns) = (count(1), count(0), count(0));
    let ar = count(u16::from(additional >= 2));
    for c in [qd, an, ns, ar] {
        p.extend_from_slice(&c.to_be_bytes());
    }
    // The first four names are held and answered fast (see `fast_path_names`).
    let among = if rng.gen_bool(0.5) { 4 } else { names.len() };
    let name = &names[rng.gen_range(0..among)];
    let labels: Vec<&str> = name.split('.').filter(|l| !l.is_empty()).collect();
    let pointer_at = rng.gen_bool(0.05).then(|| rng.gen_range(0..=labels.len()));
    for (i, l) in labels.iter().enumerate() {
        if pointer_at == Some(i) {
            break;
        }
        p.push(l.len() as u8);
        p.extend(l.bytes().map(|b| {
            if rng.gen_bool(0.1) {
                b.to_ascii_uppercase()
            } else {
                b
            }
        }));
    }
    if pointer_at.is_some() {
        p.extend_from_slice(&[0xC0, 12]);
    } else {
        p.push(0);
    }
    let qtype: u16 = if rng.gen_bool(0.7) {
        *[1, 28].get(rng.gen_range(0..2)).unwrap_or(&1)
    } else {
        *[33, 255, 16, 15, rng.gen()]
            .get(rng.gen_range(0..5))
            .unwrap_or(&1)
    };
    let qclass: u16 = if rng.gen_bool(0.8) {
        1
    } else {
        *[3, 254, 255, rng.gen()]
            .get(rng.gen_range(0..4))
            .unwrap_or(&1)
    };
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&qclass.to_be_bytes());
    let payload: u16 = *[0, 100, 512, 600, 1232, 4096, 65535, rng.gen()]
        .get(rng.gen_range(0..8))
        .unwrap_or(&1232);
    let opt = |ttl: [u8; 4], rdata: &[u8], owner: &[u8]| {
        let mut o = owner.to_vec();
        o.extend_from_slice(&41u16.to_be_bytes());
        o.extend_from_slice(&payload.to_be_bytes());
        o.extend_from_slice(&ttl);
        o.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        o.extend_from_slice(rdata);
        o
    };
    match additional {
        2 | 3 => p.extend(opt([0; 4], &[], &[0])),
        4 => p.extend(opt([0, 0, 0x80, 0], &[], &[0])),
        5 => p.extend(opt(rng.gen(), &[], &[0])),
        6 => p.extend(opt([0; 4], &[0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8], &[0])),
        7 => {
            if rng.gen_bool(0.5) {
                p.extend(opt([0; 4], &[], &[1, b'x', 0]));
            } else {
                // An A record where an OPT would be.
                p.extend_from_slice(&[0, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 1]);
            }
        }
        _ => {}
    }
    if rng.gen_bool(0.05) {
        let extra = rng.gen_range(1..8);
        p.extend((0..extra).map(|_| rng.gen::<u8>()));
    }
    p
}

/// The fast path's answers are the full path's, byte for byte, for every query it takes, and
/// it takes the plain ones: A and AAAA of a held name, with and without EDNS, any case, by
/// zone id or alias, over UDP and TCP.
#[test]
fn fast_path_answers_plain_queries_byte_for_byte_as_the_full_path() {
    let (r, _) = fast_path_names();
    let z = zone();
    for name in [
        format!("web.{z}.dpin."),
        format!("WEB.{}.Dpin.", z.to_ascii_uppercase()),
        "web.shop.dpin.".to_owned(),
        "web.SHOP.dpin.".to_owned(),
    ] {
        for qtype in [RecordType::A, RecordType::AAAA] {
            for edns in [None, Some(512), Some(1232), Some(4096)] {
                for proto in [Proto::Udp, Proto::Tcp] {
                    let q = query(&name, qtype, edns);
                    let fast = fast(&r, &q, proto);
                    assert!(
                        fast.is_some(),
                        "{name} {qtype} {edns:?} {proto:?} not taken"
                    );
                    assert_eq!(
                        fast,
                        r.respond_full(&q, proto, NOW),
                        "{name} {qtype} {edns:?} {proto:?}"
                    );
                }
            }
        }
    }
    // Negative answers too: a name not held or expired (NXDOMAIN), a family the name has no
    // address of (NODATA), each with the SOA.
    for (name, qtype, rcode) in [
        (
            format!("absent.{z}.dpin."),
            RecordType::A,
            ResponseCode::NXDomain,
        ),
        (
            "absent.shop.dpin.".to_owned(),
            RecordType::AAAA,
            ResponseCode::NXDomain,
        ),
        (
            format!("old.{z}.dpin."),
            RecordType::A,
            ResponseCode::NXDomain,
        ),
        (
            format!("six.{z}.dpin."),
            RecordType::A,
            ResponseCode::NoError,
        ),
        (
            format!("named.{z}.dpin."),
            RecordType::AAAA,
            ResponseCode::NoError,
        ),
    ] {
        for edns in [None, Some(1232)] {
            let q = query(&name, qtype, edns);
            let got = fast(&r, &q, Proto::Udp);
            assert_eq!(got, r.respond_full(&q, Proto::Udp, NOW), "{name} {qtype}");
            let m = Message::from_vec(&got.expect("taken")).expect("decodable");
            assert_eq!(m.response_code(), rcode, "{name} {qtype}");
            assert_eq!(m.name_servers().len(), 1, "{name} {qtype}: the SOA");
        }
    }
    // Left to the full path: another type, a name of another shape, an answer larger than 512
    // bytes without EDNS (the full path truncates), a negative answer to a query that spelled
    // the apex in capitals (the full path's encoder then writes the SOA's owner in full).
    let mut capital_apex = query(&format!("absent.{z}.dpin."), RecordType::A, None);
    let apex_at = 12 + 1 + "absent".len() + 1 + z.len() + 1;
    capital_apex[apex_at..apex_at + 4].copy_from_slice(b"DPIN");
    for q in [
        query(&format!("web.{z}.dpin."), RecordType::SRV, None),
        query(&format!("big.{z}.dpin."), RecordType::AAAA, None),
        query(&format!("_tcp.web.{z}.dpin."), RecordType::A, None),
        capital_apex,
    ] {
        assert_eq!(fast(&r, &q, Proto::Udp), None, "{q:02x?}");
        assert!(r.respond(&q, Proto::Udp, NOW).is_some(), "{q:02x?}");
    }
    // What it takes is counted as the full path counts it.
    let before = r.stats().noerror.load(Ordering::Relaxed);
    let q = query(&format!("web.{z}.dpin."), RecordType::A, None);
    assert!(r.respond(&q, Proto::Udp, NOW).is_some());
    assert_eq!(r.stats().noerror.load(Ordering::Relaxed), before + 1);
}

/// Random queries of every shape around the fast path's (see [`random_query`]): wherever the
/// fast path answers, the full path answers the same bytes; and the fast path does answer a
/// good share of them, so the comparison is not empty.
#[test]
fn fast_path_equals_the_full_path_on_random_queries() {
    let (r, names) = fast_path_names();
    let seed = 54;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut taken, mut total) = (0, 0);
    for i in 0..40_000 {
        let p = random_query(&mut rng, &names);
        for proto in [Proto::Udp, Proto::Tcp] {
            total += 1;
            if let Some(fast) = fast(&r, &p, proto) {
                taken += 1;
                assert_eq!(
                    Some(fast),
                    r.respond_full(&p, proto, NOW),
                    "seed {seed}, query {i} over {proto:?}: {p:02x?}"
                );
            }
        }
    }
    assert!(
        taken * 20 > total,
        "the fast path took only {taken} of {total} queries"
    );
}

#[test]
fn alias_parsing() {
    let z = zone();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("aliases");
    std::fs::write(&file, format!("# comment\n\nshop {z}\nBlog={z}\n")).expect("write");
    let got = load_aliases(Some(&file), &[format!("api={z}")]).expect("aliases");
    assert_eq!(got.keys().collect::<Vec<_>>(), ["api", "blog", "shop"]);
    assert!(load_aliases(None, &[format!("shop={z}")]).is_ok());
    for bad in [
        "shop".to_owned(),
        format!("bad_name={z}"),
        "shop=notazone".to_owned(),
        format!("{z}={z}"),
        format!("addr={z}"),
    ] {
        assert!(
            load_aliases(None, std::slice::from_ref(&bad)).is_err(),
            "{bad}"
        );
    }
    let other = ZoneKey::from_seed([8; 32]).zone();
    assert!(load_aliases(None, &[format!("shop={z}"), format!("shop={other}")]).is_err());
    assert!(load_aliases(Some(&dir.path().join("missing")), &[]).is_err());
}

#[test]
fn any_is_answered_with_one_small_hinfo_record() {
    let r = responder(vec![web()]);
    let m = ask(
        &r,
        &format!("web.{}.dpin.", zone()),
        RecordType::ANY,
        Proto::Udp,
    );
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert_eq!(m.answers().len(), 1);
    assert!(matches!(m.answers()[0].data(), RData::HINFO(_)));
    assert!(m.additionals().is_empty());
    let m = ask(
        &r,
        &format!("nope.{}.dpin.", zone()),
        RecordType::ANY,
        Proto::Udp,
    );
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
}

#[test]
fn slip_answers_echo_the_question_with_tc_and_no_records() {
    let r = responder(vec![web()]);
    let name = format!("web.{}.dpin.", zone());
    let bytes = r
        .slip(&query(&name, RecordType::A, None))
        .expect("a slip answer");
    let m = Message::from_vec(&bytes).expect("decodable");
    assert!(m.truncated());
    assert_eq!(m.id(), 4242);
    assert_eq!(m.queries().len(), 1);
    assert!(m.answers().is_empty());
    assert!(r.slip(&[0u8; 5]).is_none(), "garbage gets nothing");
}

#[test]
fn rrl_limits_one_prefix_slips_every_nth_and_leaves_other_prefixes_alone() {
    let rrl = Rrl::new(RrlConfig { rate: 5, slip: 2 });
    let now = std::time::Instant::now();
    let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("ip");
    let verdicts: Vec<RrlVerdict> = (0..11).map(|_| rrl.check(ip("192.0.2.7"), now)).collect();
    assert!(verdicts[..5].iter().all(|v| *v == RrlVerdict::Answer));
    assert_eq!(
        verdicts[5..],
        [
            RrlVerdict::Drop,
            RrlVerdict::Slip,
            RrlVerdict::Drop,
            RrlVerdict::Slip,
            RrlVerdict::Drop,
            RrlVerdict::Slip
        ]
    );
    // Same /24: limited too. Another /24 and another /56: unaffected.
    assert_ne!(rrl.check(ip("192.0.2.200"), now), RrlVerdict::Answer);
    assert_eq!(rrl.check(ip("192.0.3.7"), now), RrlVerdict::Answer);
    assert_eq!(rrl.check(ip("2001:db8:0:100::1"), now), RrlVerdict::Answer);
    for _ in 0..5 {
        rrl.check(ip("2001:db8:0:1::1"), now);
    }
    assert_ne!(
        rrl.check(ip("2001:db8:0:ff::2"), now),
        RrlVerdict::Answer,
        "same /56"
    );
    // Tokens come back with time.
    let later = now + Duration::from_secs(1);
    assert_eq!(rrl.check(ip("192.0.2.7"), later), RrlVerdict::Answer);
    // The host itself is exempt.
    assert!((0..100).all(|_| rrl.check(ip("127.0.0.1"), now) == RrlVerdict::Answer));
    // Rate 0 is off.
    let off = Rrl::new(RrlConfig { rate: 0, slip: 2 });
    assert!((0..100).all(|_| off.check(ip("192.0.2.7"), now) == RrlVerdict::Answer));
}

#[test]
fn at_the_tcp_cap_the_longest_waiting_connection_makes_room() {
    let ip = |n: u8| std::net::IpAddr::from([127, 0, 9, n]);
    let mut t = TcpTable::new();
    // Backdate the epoch so the first connections have waited past TCP_EVICT_AFTER.
    t.epoch = std::time::Instant::now()
        .checked_sub(Duration::from_secs(5))
        .expect("clock");
    let (first, first_shared) = t.admit(ip(1), 3, 2, true).expect("room");
    first_shared.waiting_since.store(1, Ordering::Relaxed); // waiting since the epoch
    let (_, busy) = t.admit(ip(2), 3, 2, true).expect("room");
    busy.waiting_since.store(0, Ordering::Relaxed); // answering: never evicted
    let (_, recent) = t.admit(ip(3), 3, 2, true).expect("room");
    let _ = recent; // waiting since just now: too recent to evict
    assert_eq!(t.admit(ip(1), 3, 1, true).err(), Some(TcpRefusal::PerIp));
    assert_eq!(
        t.admit(ip(4), 3, 2, false).err(),
        Some(TcpRefusal::TotalCap)
    );
    // At the cap: the connection waiting since the epoch is closed for the newcomer.
    let (_, _new) = t.admit(ip(4), 3, 2, true).expect("evicts");
    assert!(first_shared.evicted.load(Ordering::Relaxed));
    assert!(!busy.evicted.load(Ordering::Relaxed));
    t.release(first, ip(1));
    // Nothing else has waited long enough: the next one is refused.
    assert_eq!(t.admit(ip(5), 3, 2, true).err(), Some(TcpRefusal::TotalCap));
}

/// The fixed table, from a node that judges itself cut off while `flag` is set.
struct CutOffTable(Table, Arc<std::sync::atomic::AtomicBool>);

impl Source for CutOffTable {
    fn answer(&self, name: &str, now_ms: u64) -> Option<Answer> {
        self.0.answer(name, now_ms)
    }
    fn cut_off(&self) -> bool {
        self.1.load(Ordering::Relaxed)
    }
}

#[test]
fn a_cut_off_node_still_answers_but_with_a_one_second_ttl() {
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let a = web();
    let table = Table([(a.record.name(), a)].into_iter().collect());
    let r = Responder::new(CutOffTable(table, flag.clone()), &BTreeMap::new());
    let name = format!("web.{}.dpin.", zone());
    let ask_at = |now: u64| {
        let bytes = r
            .respond(&query(&name, RecordType::A, Some(4096)), Proto::Udp, now)
            .expect("a response");
        Message::from_vec(&bytes).expect("decodable response")
    };
    let before = r.stats().cut_off_answers.load(Ordering::Relaxed);
    let m = ask_at(NOW);
    assert_eq!(
        m.response_code(),
        ResponseCode::NoError,
        "never fail closed"
    );
    assert_eq!(m.answers().len(), 2);
    assert!(m
        .answers()
        .iter()
        .all(|r| r.ttl() == dpin_protocol::reach::CUT_OFF_DNS_TTL_SECS));
    assert!(r.stats().cut_off_answers.load(Ordering::Relaxed) > before);

    // Reconnected: within one recheck period the normal TTL is back.
    flag.store(false, Ordering::Relaxed);
    let m = ask_at(NOW + REACH_RECHECK_MS);
    assert!(m.answers().iter().all(|r| r.ttl() == MAX_TTL_SECS));
}

/// The UDP workers answer in batches (`recvmmsg`/`sendmmsg`): a burst larger than a batch, from
/// several clients at once, gets every answer, each at the client that asked, for its own
/// question; an oversized datagram in the burst is counted and answered with nothing, and the
/// queries after it are still answered.
#[test]
fn a_udp_burst_from_several_clients_gets_each_answer_at_its_own_client() {
    const CLIENTS: usize = 4;
    // 80 queries: three batches of UDP_BATCH, and well within a default socket buffer (they
    // are all queued before the worker reads; the kernel charges about 1 KiB per datagram).
    const PER_CLIENT: u16 = 20;
    let live = answer(
        "web",
        &["127.0.0.1:80"],
        &[],
        crate::node::now_ms() + 3_600_000,
    );
    let r = Arc::new(responder(vec![live]));
    let stats = r.stats().clone();
    let server = bind_udp("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = server.local_addr().expect("local addr");
    let rrl = Rrl::new(RrlConfig { rate: 0, slip: 0 });
    let clients: Vec<std::net::UdpSocket> = (0..CLIENTS)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("client"))
        .collect();
    // Every query is queued at the server before its worker starts, the clients taking turns,
    // so each batch the worker receives holds queries of every client: an answer sent to the
    // wrong sender of its batch fails below. The queries: web (answered) and a name nobody
    // holds (NXDOMAIN), alternating, with ids that say which client asked what.
    for i in 0..PER_CLIENT {
        for (c, sock) in clients.iter().enumerate() {
            let label = if i % 2 == 0 { "web" } else { "nobody" };
            let mut q = Message::from_vec(&query(
                &format!("{label}.{}.dpin.", zone()),
                RecordType::A,
                Some(1232),
            ))
            .expect("query");
            q.set_id(c as u16 * 1000 + i);
            sock.send_to(&q.to_vec().expect("encode"), addr)
                .expect("send");
            if c == 1 && i == 5 {
                sock.send_to(&vec![0u8; MAX_QUERY_BYTES + 500], addr)
                    .expect("send oversized");
            }
        }
    }
    {
        let r = r.clone();
        std::thread::spawn(move || serve_udp(&server, &r, &rrl));
    }
    for (c, sock) in clients.iter().enumerate() {
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut seen = std::collections::BTreeSet::new();
        let mut buf = [0u8; 4096];
        for _ in 0..PER_CLIENT {
            let n = sock.recv(&mut buf).expect("every query is answered");
            let m = Message::from_vec(&buf[..n]).expect("decodable answer");
            let (owner, i) = (m.id() / 1000, m.id() % 1000);
            assert_eq!(owner as usize, c, "answer {} reached client {c}", m.id());
            let name = m.queries()[0].name().to_string();
            if i % 2 == 0 {
                assert!(name.starts_with("web."), "{name}");
                assert_eq!(m.response_code(), ResponseCode::NoError);
                assert_eq!(m.answers().len(), 1);
            } else {
                assert!(name.starts_with("nobody."), "{name}");
                assert_eq!(m.response_code(), ResponseCode::NXDomain);
            }
            assert!(seen.insert(i), "answer {i} twice at client {c}");
        }
        assert_eq!(seen.len(), usize::from(PER_CLIENT));
    }
    assert_eq!(stats.dropped_oversized.load(Ordering::Relaxed), 1);
    assert_eq!(
        stats.udp_queries.load(Ordering::Relaxed),
        CLIENTS as u64 * u64::from(PER_CLIENT) + 1
    );
}

/// One series' value in `text`.
fn series(text: &str, name: &str) -> f64 {
    crate::metrics::tests::value(text, name).unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// `dpin_dns_udp_sojourn_seconds` measures from the kernel's receipt of a query, so the time
/// a query waits in the socket queue while no answer thread reads it is in it (it is most of
/// a loaded server's latency, and invisible to `dpin_dns_answer_seconds`, which starts when a
/// thread has the packet). Queries queued while no worker runs are each recorded as having
/// waited at least until the worker started; none goes unstamped, none is recorded twice.
#[test]
fn udp_sojourn_includes_the_wait_in_the_socket_queue() {
    const QUERIES: u16 = 40;
    const QUEUED_FOR: Duration = Duration::from_millis(60);
    let r = Arc::new(responder(vec![web()]));
    let stats = r.stats().clone();
    let server = bind_udp("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = server.local_addr().expect("local addr");
    let rrl = Rrl::new(RrlConfig { rate: 0, slip: 0 });
    // Stamps on before anything is queued (the worker asks again; that is harmless).
    assert!(enable_receive_timestamps(&server));
    let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("client");
    let q = query(&format!("web.{}.dpin.", zone()), RecordType::A, Some(1232));
    for _ in 0..QUERIES {
        client.send_to(&q, addr).expect("send");
    }
    std::thread::sleep(QUEUED_FOR);
    {
        let r = r.clone();
        std::thread::spawn(move || serve_udp(&server, &r, &rrl));
    }
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 4096];
    for _ in 0..QUERIES {
        client.recv(&mut buf).expect("every query is answered");
    }
    // The worker records a batch after sending it; the last answer may arrive first.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = crate::metrics::tests::histogram_text(&stats.udp_sojourn_seconds);
        if series(&text, "h_count") >= f64::from(QUERIES) || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(
        series(&text, "h_count"),
        f64::from(QUERIES),
        "every answered query is recorded once: {text}"
    );
    assert_eq!(
        series(&text, "h_bucket{le=\"0.025\"}"),
        0.0,
        "each waited at least {QUEUED_FOR:?} in the queue: {text}"
    );
    assert!(series(&text, "h_sum") >= QUEUED_FOR.as_secs_f64() * f64::from(QUERIES));
    assert_eq!(stats.udp_unstamped.load(Ordering::Relaxed), 0);
    // The answers' own times (one clock read per answer, each from the end of the one
    // before): every answer once, and none of the wait in the queue.
    let answers = crate::metrics::tests::histogram_text(&stats.answer_histogram(Proto::Udp));
    assert_eq!(
        series(&answers, "h_count"),
        f64::from(QUERIES),
        "every answer is timed once: {answers}"
    );
    assert!(
        series(&answers, "h_sum") < QUEUED_FOR.as_secs_f64(),
        "the answers' times leave out their wait in the queue: {answers}"
    );
}

/// A process held to one core (`taskset -c 0`, a container's cpuset) still gets two UDP
/// answer threads, so one preempted by the background leaves the other to take the socket
/// (`serve::udp_workers`). A thread count given with `--dns-udp-threads` is taken as given.
#[test]
fn two_udp_answer_threads_even_on_one_core_unless_asked() -> anyhow::Result<()> {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    assert_eq!(serve::udp_workers(1), 1);
    assert_eq!(serve::udp_workers(3), 3);
    // On a thread of its own: affinity is per thread, and this one ends with the test.
    std::thread::spawn(|| -> anyhow::Result<()> {
        let allowed = sched_getaffinity(Pid::from_raw(0))?;
        let Some(cpu) = (0..CpuSet::count()).find(|&c| allowed.is_set(c).unwrap_or(false)) else {
            anyhow::bail!("no CPU in this thread's affinity mask");
        };
        let mut one = CpuSet::new();
        one.set(cpu)?;
        sched_setaffinity(Pid::from_raw(0), &one)?;
        assert_eq!(serve::udp_workers(0), 2, "one core allowed (CPU {cpu})");
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the pinned thread panicked"))??;
    let cores = std::thread::available_parallelism()?.get();
    assert_eq!(serve::udp_workers(0), cores.clamp(2, 4));
    Ok(())
}

/// An answer thread asks for `--dns-slice-us` and runs in it (on a kernel with per-thread
/// slices, Linux 6.12+), so a query wakes it onto a core a background thread holds at once;
/// 0 leaves the kernel's own slice.
#[test]
fn an_answer_thread_runs_in_the_slice_it_asked_for() -> anyhow::Result<()> {
    use crate::priority::tests::{kernel_takes_slices, own_slice_ns};
    let (default, asked, kept) = std::thread::spawn(|| {
        let default = own_slice_ns();
        serve::answer_thread_slice(1, 0);
        let kept = own_slice_ns();
        serve::answer_thread_slice(1, crate::dns::DEFAULT_UDP_SLICE_US);
        (default, own_slice_ns(), kept)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the answer thread panicked"))?;
    assert_eq!(kept, default, "0 keeps the kernel's slice");
    if kernel_takes_slices() {
        assert_eq!(
            asked,
            Some(u64::from(crate::dns::DEFAULT_UDP_SLICE_US) * 1_000)
        );
        assert_ne!(
            default, asked,
            "the default slice is not already that short"
        );
    }
    Ok(())
}
