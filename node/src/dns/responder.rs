//! One request packet in, at most one response packet out: names, answers, sizes and truncation.

use super::*;

/// Builds DNS responses from request packets; shared by the UDP and TCP loops.
pub struct Responder<S> {
    source: S,
    /// Alias label → zone id text (the store's name form).
    aliases: HashMap<Vec<u8>, String>,
    soa: Record,
    /// The [`REACH_RECHECK_MS`] bucket of the last cut-off check, plus one (0: never).
    reach_checked: AtomicU64,
    /// The last answer of [`Source::cut_off`].
    cut_off: std::sync::atomic::AtomicBool,
    /// Whether plain A/AAAA queries take the fast path ([`super::fast`]; [`FAST_PATH_ENV`]).
    fast_path: bool,
    /// Where this responder counts (the node's, or its own in tests).
    stats: Arc<DnsStats>,
    /// Answer latency by transport (handles into `stats.answer_seconds`).
    answer_udp: prometheus_client::metrics::histogram::Histogram,
    answer_tcp: prometheus_client::metrics::histogram::Histogram,
}

/// Which transport a packet came in on (decides the response size limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// UDP: 512 bytes without EDNS, up to [`UDP_PAYLOAD_LIMIT`] with it.
    Udp,
    /// TCP: up to 65535 bytes.
    Tcp,
}

impl Proto {
    /// The `transport` label of `dpin_dns_answer_seconds`.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        }
    }
}

/// Room for a store key (`label.zone`) on the stack: a label is at most 63 bytes and a zone
/// id's text 52 (an alias names a zone id).
pub(super) const KEY_BUF: usize = 128;

/// A lookup the fast path made that found the name not held live (no answer, or one without
/// endpoints), for the full path to answer without asking the source again: the key it asked
/// for.
pub(super) struct Looked<'k> {
    absent: &'k str,
}

/// What a query resolves to, before encoding.
struct Resolution {
    rcode: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    additionals: Vec<Record>,
    /// Put the SOA in the authority section (negative answers).
    soa: bool,
}

impl Resolution {
    fn refused() -> Self {
        Resolution {
            rcode: ResponseCode::Refused,
            authoritative: false,
            answers: Vec::new(),
            additionals: Vec::new(),
            soa: false,
        }
    }

    fn negative(rcode: ResponseCode) -> Self {
        Resolution {
            rcode,
            authoritative: true,
            answers: Vec::new(),
            additionals: Vec::new(),
            soa: true,
        }
    }

    fn nxdomain() -> Self {
        Self::negative(ResponseCode::NXDomain)
    }

    fn nodata() -> Self {
        Self::negative(ResponseCode::NoError)
    }

    /// NOERROR with `answers`, or NODATA if there are none.
    fn answers(answers: Vec<Record>, additionals: Vec<Record>) -> Self {
        if answers.is_empty() {
            return Self::nodata();
        }
        Resolution {
            rcode: ResponseCode::NoError,
            authoritative: true,
            answers,
            additionals,
            soa: false,
        }
    }
}

/// Is `b` the text form of a zone id (52 chars of lowercase base32)? Only the shape is checked:
/// decoding the key would cost a curve-point decompression per query, and a well-shaped text
/// that is not a real key simply matches no stored name.
pub(super) fn zone_shaped(b: &[u8]) -> bool {
    b.len() == dpin_protocol::keys::ZONE_ID_TEXT_LEN
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || (b'2'..=b'7').contains(c))
}

/// A user label (`a-z0-9-`, 1-63, no leading/trailing `-`): anything else cannot be stored.
pub(super) fn label_ok(b: &[u8]) -> bool {
    std::str::from_utf8(b).is_ok_and(|s| dpin_protocol::record::validate_label(s).is_ok())
}

/// The label under which synthesized SRV targets live: `HEX.addr.dpin.`.
pub(super) const ADDR_LABEL: &[u8] = b"addr";

/// The synthesized SRV target of an IP literal: `HEX.addr.dpin.` with 8 hex digits (IPv4) or
/// 32 (IPv6).
fn addr_name(host: &Host) -> Option<Name> {
    let hex = match host {
        Host::V4(a) => hex::encode(a),
        Host::V6(a) => hex::encode(a),
        Host::Name(_) => return None,
    };
    Name::from_labels([hex.as_bytes(), ADDR_LABEL, b"dpin"]).ok()
}

/// The address an [`addr_name`] label stands for.
fn parse_addr_label(b: &[u8]) -> Option<Host> {
    if !b.iter().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    match b.len() {
        8 => hex::decode(b).ok()?.try_into().ok().map(Host::V4),
        32 => hex::decode(b).ok()?.try_into().ok().map(Host::V6),
        _ => None,
    }
}

fn addr_record(owner: &Name, host: &Host, ttl: u32) -> Option<Record> {
    match host {
        Host::V4(a) => Some(Record::from_rdata(
            owner.clone(),
            ttl,
            RData::A(A(Ipv4Addr::from(*a))),
        )),
        Host::V6(a) => Some(Record::from_rdata(
            owner.clone(),
            ttl,
            RData::AAAA(AAAA(Ipv6Addr::from(*a))),
        )),
        Host::Name(_) => None,
    }
}

/// Seconds until `expires_at_ms`, capped at [`MAX_TTL_SECS`], at least 1.
pub fn ttl_secs(expires_at_ms: u64, now_ms: u64) -> u32 {
    let secs = expires_at_ms.saturating_sub(now_ms) / 1000;
    u32::try_from(secs)
        .unwrap_or(MAX_TTL_SECS)
        .clamp(1, MAX_TTL_SECS)
}

impl<S: Source> Responder<S> {
    /// A responder answering from `source`, with `aliases` (alias label → zone), counting in
    /// counters of its own.
    pub fn new(source: S, aliases: &BTreeMap<String, ZoneId>) -> Self {
        Self::with_stats(source, aliases, Arc::new(DnsStats::default()))
    }

    /// A responder counting in `stats` (the node's).
    pub fn with_stats(source: S, aliases: &BTreeMap<String, ZoneId>, stats: Arc<DnsStats>) -> Self {
        let aliases = aliases
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase().into_bytes(), v.to_string()))
            .collect();
        Responder {
            source,
            aliases,
            soa: soa_record(),
            reach_checked: AtomicU64::new(0),
            cut_off: std::sync::atomic::AtomicBool::new(false),
            fast_path: std::env::var(FAST_PATH_ENV).map_or(true, |v| v.trim() != "0"),
            answer_udp: stats.answer_histogram(Proto::Udp),
            answer_tcp: stats.answer_histogram(Proto::Tcp),
            stats,
        }
    }

    /// The source answers come from.
    #[cfg(test)]
    pub(super) fn source_for_tests(&self) -> &S {
        &self.source
    }

    /// The counters this responder (and the sockets serving it) count in.
    pub fn stats(&self) -> &Arc<DnsStats> {
        &self.stats
    }

    /// Whether the node is cut off, asking the source at most once per [`REACH_RECHECK_MS`]
    /// bucket of `now_ms` (a wall clock that steps back just asks again).
    fn cut_off(&self, now_ms: u64) -> bool {
        let bucket = (now_ms / REACH_RECHECK_MS).saturating_add(1);
        if self.reach_checked.swap(bucket, Ordering::Relaxed) != bucket {
            self.cut_off.store(self.source.cut_off(), Ordering::Relaxed);
        }
        self.cut_off.load(Ordering::Relaxed)
    }

    /// The response to one request packet, or `None` if the packet must be dropped (too short
    /// for a header, a response, oversized). Never panics on any input.
    pub fn respond(&self, packet: &[u8], proto: Proto, now_ms: u64) -> Option<Vec<u8>> {
        let started = std::time::Instant::now();
        let out = self.respond_untimed(packet, proto, now_ms);
        self.observe_answer(proto, started.elapsed());
        out
    }

    /// Adds one answer's time to `dpin_dns_answer_seconds`: for callers of
    /// [`Responder::respond_untimed`] that time their answers themselves (the UDP loop reads
    /// the clock once per answer, each answer starting when the one before it ended).
    pub(super) fn observe_answer(&self, proto: Proto, took: Duration) {
        let took = took.as_secs_f64();
        match proto {
            Proto::Udp => self.answer_udp.observe(took),
            Proto::Tcp => self.answer_tcp.observe(took),
        }
    }

    /// [`Responder::respond`] without its fast path ([`super::fast`]): every packet through
    /// hickory's parse and encode. The fast path must answer every packet it takes exactly as
    /// this does; the tests and the `dns_packet` fuzz target compare the two. Not timed.
    pub fn respond_full(&self, packet: &[u8], proto: Proto, now_ms: u64) -> Option<Vec<u8>> {
        self.respond_checked(packet, proto, now_ms, false)
    }

    /// [`Responder::respond`] without adding its time to the histogram
    /// ([`Responder::observe_answer`]).
    pub(super) fn respond_untimed(
        &self,
        packet: &[u8],
        proto: Proto,
        now_ms: u64,
    ) -> Option<Vec<u8>> {
        self.respond_checked(packet, proto, now_ms, self.fast_path)
    }

    fn respond_checked(
        &self,
        packet: &[u8],
        proto: Proto,
        now_ms: u64,
        fast_path: bool,
    ) -> Option<Vec<u8>> {
        let st = &*self.stats;
        if packet.len() > MAX_QUERY_BYTES {
            inc(&st.dropped_oversized);
            return None;
        }
        let mut key_buf = [0u8; KEY_BUF];
        let mut looked = None;
        if fast_path {
            // A name the fast path found not held, the full path answers without a second
            // lookup.
            if let Some(out) = self.respond_fast(packet, proto, now_ms, &mut key_buf, &mut looked) {
                return Some(out);
            }
        }
        let Ok(header) = Header::read(&mut BinDecoder::new(packet)) else {
            inc(&st.dropped_malformed);
            return None;
        };
        if header.message_type() == MessageType::Response {
            // Answering responses would let anyone bounce traffic between two servers.
            inc(&st.dropped_responses);
            return None;
        }
        let request = match MessageRequest::read(&mut BinDecoder::new(packet)) {
            Ok(r) => r,
            Err(_) => return self.error_only(&header, ResponseCode::FormErr),
        };
        if request.op_code() != OpCode::Query {
            return self.error_only(&header, ResponseCode::NotImp);
        }
        let res = match request.queries() {
            [q] => {
                if request.edns().is_some_and(|e| e.version() > 0) {
                    Resolution {
                        rcode: ResponseCode::BADVERS,
                        ..Resolution::refused()
                    }
                } else if !matches!(q.query_class(), DNSClass::IN | DNSClass::ANY) {
                    Resolution::refused()
                } else {
                    let res = self.resolve(
                        q.name(),
                        q.original().name(),
                        q.query_type(),
                        now_ms,
                        looked,
                    );
                    if q.query_type() == RecordType::ANY {
                        minimal_any(res, q.original().name())
                    } else {
                        res
                    }
                }
            }
            _ => Resolution {
                rcode: ResponseCode::FormErr,
                ..Resolution::refused()
            },
        };
        let limit = match proto {
            Proto::Tcp => u16::MAX,
            Proto::Udp if request.edns().is_some() => request
                .max_payload()
                .clamp(UDP_LEGACY_LIMIT, UDP_PAYLOAD_LIMIT),
            Proto::Udp => UDP_LEGACY_LIMIT,
        };
        Some(self.encode(&request, res, limit))
    }

    /// The fast path ([`super::fast`]): the answer to a plain `A`/`AAAA` query — the name's
    /// addresses, NODATA or NXDOMAIN — counted as the full path counts it. `None` leaves the
    /// packet to the full path (any other query or name shape, an answer that does not fit or
    /// that the full path would write another way), which then answers and counts it. If the
    /// fast path found the name not held, it says so in `looked` (the name's key written into
    /// `key_buf`), and the full path answers NXDOMAIN without a second lookup. (A held name
    /// whose answer the fast path cannot write, one that needs truncating, is looked up again
    /// in full.)
    pub(super) fn respond_fast<'k>(
        &self,
        packet: &[u8],
        proto: Proto,
        now_ms: u64,
        key_buf: &'k mut [u8; KEY_BUF],
        looked: &mut Option<Looked<'k>>,
    ) -> Option<Vec<u8>> {
        let (q, key) = self.fast_key(packet, proto, key_buf)?;
        let literals = self.source.literals(key, now_ms);
        let out = self.fast_answer(&q, literals.as_ref(), now_ms);
        if out.is_none() && literals.is_none() {
            *looked = Some(Looked { absent: key });
        }
        out
    }

    /// The fast path's query and the store key of its name (`label.zone`, lowercase, written
    /// into `key_buf`), or `None` if the packet is not of the fast path's shape or the name
    /// cannot be held (the full path then answers it without a lookup).
    fn fast_key<'p, 'k>(
        &self,
        packet: &'p [u8],
        proto: Proto,
        key_buf: &'k mut [u8; KEY_BUF],
    ) -> Option<(fast::FastQuery<'p>, &'k str)> {
        let q = fast::parse(packet, proto)?;
        // The store's name form: the label and the zone id text, lowercase (DNS folds case).
        let mut zone_buf = [0u8; 63];
        let zone_label = zone_buf.get_mut(..q.zone.len())?;
        zone_label.copy_from_slice(q.zone);
        zone_label.make_ascii_lowercase();
        let zone = match self.aliases.get(&*zone_label) {
            Some(z) => z.as_str(),
            None if zone_shaped(zone_label) => std::str::from_utf8(zone_label).ok()?,
            None => return None,
        };
        let key_len = q.label.len() + 1 + zone.len();
        let key = key_buf.get_mut(..key_len)?;
        let (label, rest) = key.split_at_mut(q.label.len());
        label.copy_from_slice(q.label);
        label.make_ascii_lowercase();
        if !label_ok(label) {
            return None;
        }
        let (dot, zone_text) = rest.split_first_mut()?;
        *dot = b'.';
        zone_text.copy_from_slice(zone.as_bytes());
        Some((q, std::str::from_utf8(key).ok()?))
    }

    /// The fast path's answer to `q` from the source's `literals`, counted as the full path
    /// counts it: the addresses, NODATA if there are none of the asked family, NXDOMAIN if the
    /// name is not held live. `None` if the answer does not fit or would be written another
    /// way (nothing counted then).
    fn fast_answer(
        &self,
        q: &fast::FastQuery<'_>,
        literals: Option<&Literals>,
        now_ms: u64,
    ) -> Option<Vec<u8>> {
        let Some(lits) = literals else {
            let out = fast::write_negative(q, fast::RCODE_NXDOMAIN)?;
            count_rcode(&self.stats, ResponseCode::NXDomain, true);
            return Some(out);
        };
        // The RRset: the selected endpoints' literals of the asked family, each address once,
        // in the answer's order (as `name_records` builds it).
        let mut picked: [&[u8]; dpin_protocol::MAX_ENDPOINTS] = [&[]; dpin_protocol::MAX_ENDPOINTS];
        let mut n = 0;
        for lit in &lits.addrs {
            let addr: &[u8] = match (lit, q.qtype) {
                (Literal::V4(a), fast::AddrType::V4) => a,
                (Literal::V6(a), fast::AddrType::V6) => a,
                _ => continue,
            };
            if !picked[..n].contains(&addr) {
                *picked.get_mut(n)? = addr;
                n += 1;
            }
        }
        let cut_off = self.cut_off(now_ms);
        let mut ttl = ttl_secs(lits.expires_at_ms, now_ms);
        if cut_off {
            ttl = ttl.min(dpin_protocol::reach::CUT_OFF_DNS_TTL_SECS);
        }
        let out = if n == 0 {
            fast::write_negative(q, fast::RCODE_NOERROR)?
        } else {
            fast::write_answer(q, ttl, picked[..n].iter().copied())?
        };
        if cut_off {
            inc(&self.stats.cut_off_answers);
        }
        count_rcode(&self.stats, ResponseCode::NoError, n == 0);
        Some(out)
    }

    /// The slip answer to a rate-limited query: its question, no records, TC set, so a real
    /// client retries over TCP. `None` for packets that get no answer at all.
    pub fn slip(&self, packet: &[u8]) -> Option<Vec<u8>> {
        if packet.len() > MAX_QUERY_BYTES {
            return None;
        }
        let request = MessageRequest::read(&mut BinDecoder::new(packet)).ok()?;
        if request.message_type() == MessageType::Response {
            return None;
        }
        let mut h = Header::response_from_request(request.header());
        h.set_truncated(true);
        let mut buf = Vec::with_capacity(64);
        let none: [Record; 0] = [];
        emit_message_parts(
            &h,
            &mut request.queries().iter().map(LowerQuery::original),
            &mut none.iter(),
            &mut none.iter(),
            &mut none.iter(),
            None,
            &[],
            &mut BinEncoder::new(&mut buf),
        )
        .ok()?;
        Some(buf)
    }

    /// A bare error response (header only, no question) for a request whose body is unusable.
    fn error_only(&self, header: &Header, rcode: ResponseCode) -> Option<Vec<u8>> {
        count_rcode(&self.stats, rcode, false);
        Some(bare_response(header, rcode))
    }

    /// Maps a question to records. `lower` is the question name lowercased (for matching),
    /// `owner` the name as sent (echoed as the owner of answers).
    ///
    /// `looked` names a key the fast path found not held: it is answered NXDOMAIN without
    /// asking the source again.
    fn resolve(
        &self,
        lower: &Name,
        owner: &Name,
        qtype: RecordType,
        now_ms: u64,
        looked: Option<Looked<'_>>,
    ) -> Resolution {
        // Labels, leftmost first. A DNS name has at most 127 labels.
        let labels: Vec<&[u8]> = lower.iter().collect();
        let Some((&last, rest)) = labels.split_last() else {
            return Resolution::refused();
        };
        if last != b"dpin" {
            return Resolution::refused();
        }
        let Some((&zone_label, below)) = rest.split_last() else {
            return match qtype {
                RecordType::SOA | RecordType::ANY => {
                    Resolution::answers(vec![self.soa.clone()], Vec::new())
                }
                _ => Resolution::nodata(),
            };
        };
        if zone_label == ADDR_LABEL {
            return match below {
                [] => Resolution::nodata(),
                [hex] => match parse_addr_label(hex) {
                    Some(host) => addr_name_records(owner, qtype, &host),
                    None => Resolution::nxdomain(),
                },
                _ => Resolution::nxdomain(),
            };
        }
        let zone = match self.aliases.get(zone_label) {
            Some(z) => z.as_str(),
            None if zone_shaped(zone_label) => match std::str::from_utf8(zone_label) {
                Ok(z) => z,
                Err(_) => return Resolution::nxdomain(),
            },
            None => return Resolution::nxdomain(),
        };
        let srv_only = |t: Transport| {
            move |ans: &Answer, owner: &Name, ttl: u32| match qtype {
                RecordType::SRV | RecordType::ANY => srv_records(ans, owner, ttl, Some(t)),
                _ => Resolution::nodata(),
            }
        };
        match below {
            // An empty non-terminal: NXDOMAIN here would stop QNAME-minimising resolvers.
            [] => Resolution::nodata(),
            [label] => self.lookup(owner, zone, label, now_ms, looked, |ans, owner, ttl| {
                name_records(ans, owner, ttl, qtype)
            }),
            [first, label] => match transport_label(first) {
                Some(t) => self.lookup(owner, zone, label, now_ms, looked, srv_only(t)),
                None => Resolution::nxdomain(),
            },
            [svc, proto, label] if svc.first() == Some(&b'_') => match transport_label(proto) {
                Some(t) => self.lookup(owner, zone, label, now_ms, looked, srv_only(t)),
                None => Resolution::nxdomain(),
            },
            _ => Resolution::nxdomain(),
        }
    }

    /// Looks `label.zone` up through the answer seam; NXDOMAIN if not held live.
    fn lookup(
        &self,
        owner: &Name,
        zone: &str,
        label: &[u8],
        now_ms: u64,
        looked: Option<Looked<'_>>,
        build: impl FnOnce(&Answer, &Name, u32) -> Resolution,
    ) -> Resolution {
        if !label_ok(label) {
            return Resolution::nxdomain();
        }
        let Ok(label) = std::str::from_utf8(label) else {
            return Resolution::nxdomain();
        };
        let key = format!("{label}.{zone}");
        let ans = match looked {
            Some(l) if l.absent == key => None,
            _ => self.source.answer(&key, now_ms),
        };
        match ans {
            Some(ans) if !ans.endpoints.is_empty() => {
                let mut ttl = ttl_secs(ans.record.body.expires_at_ms, now_ms);
                if self.cut_off(now_ms) {
                    // Still answered (never fail closed), but resolvers should ask again
                    // soon: another server may by then know better.
                    ttl = ttl.min(dpin_protocol::reach::CUT_OFF_DNS_TTL_SECS);
                    inc(&self.stats.cut_off_answers);
                }
                build(&ans, owner, ttl)
            }
            _ => Resolution::nxdomain(),
        }
    }

    /// Encodes `res` as the response to `request`, fitting it into `limit` bytes.
    fn encode(&self, request: &MessageRequest, res: Resolution, limit: u16) -> Vec<u8> {
        let mut header = Header::response_from_request(request.header());
        header.set_authoritative(res.authoritative);
        header.set_response_code(res.rcode);
        let edns = request.edns().map(|_| {
            let mut e = Edns::new();
            e.set_max_payload(UDP_PAYLOAD_LIMIT).set_version(0);
            e
        });
        let soa: &[Record] = if res.soa {
            std::slice::from_ref(&self.soa)
        } else {
            &[]
        };
        let emit = |answers: &[Record], additionals: &[Record], tc: bool| {
            let mut h = header;
            h.set_truncated(tc);
            let mut buf = Vec::with_capacity(512);
            // Encoded without a size limit; the caller decides what fits. The question is
            // re-encoded from the parsed query (case preserved) so that answer owner names
            // compress against it.
            emit_message_parts(
                &h,
                &mut request.queries().iter().map(LowerQuery::original),
                &mut answers.iter(),
                &mut soa.iter(),
                &mut additionals.iter(),
                edns.as_ref(),
                &[],
                &mut BinEncoder::new(&mut buf),
            )
            .map(|_| buf)
        };
        let limit = usize::from(limit);
        let fits = |r: &Result<Vec<u8>, ProtoError>| r.as_ref().is_ok_and(|b| b.len() <= limit);
        let mut out = emit(&res.answers, &res.additionals, false);
        let mut tc = false;
        if !fits(&out) && !res.additionals.is_empty() {
            // The additional section is optional: drop it before truncating answers.
            out = emit(&res.answers, &[], false);
        }
        if !fits(&out) {
            // Largest number of answers that fits, by bisection (answers are ≤ 64 records).
            let (mut lo, mut hi) = (0usize, res.answers.len());
            while lo < hi {
                let mid = (lo + hi).div_ceil(2);
                if fits(&emit(&res.answers[..mid], &[], true)) {
                    lo = mid;
                } else {
                    hi = mid - 1;
                }
            }
            out = emit(&res.answers[..lo], &[], true);
            tc = true;
        }
        match out {
            Ok(buf) if buf.len() <= limit => {
                count_rcode(&self.stats, res.rcode, res.answers.is_empty());
                if tc {
                    inc(&self.stats.truncated);
                }
                buf
            }
            _ => {
                inc(&self.stats.servfail);
                bare_response(request.header(), ResponseCode::ServFail)
            }
        }
    }
}

/// RFC 8482 §4.2: an ANY query at a name with data gets one synthesized HINFO record
/// instead of everything (see the module docs); negative answers are unchanged.
fn minimal_any(res: Resolution, owner: &Name) -> Resolution {
    let Some(ttl) = res.answers.first().map(Record::ttl) else {
        return res;
    };
    let hinfo = Record::from_rdata(
        owner.clone(),
        ttl,
        RData::HINFO(HINFO::new("RFC8482".to_owned(), String::new())),
    );
    Resolution {
        answers: vec![hinfo],
        additionals: Vec::new(),
        ..res
    }
}

/// A header-only response: the smallest valid answer, which cannot fail to encode.
fn bare_response(req: &Header, rcode: ResponseCode) -> Vec<u8> {
    let mut h = Header::response_from_request(req);
    h.set_response_code(rcode);
    let mut buf = Vec::with_capacity(12);
    // Encoding 12 fixed bytes into a Vec cannot fail.
    let _ = h.emit(&mut BinEncoder::new(&mut buf));
    buf
}

fn count_rcode(st: &DnsStats, rcode: ResponseCode, no_answers: bool) {
    match rcode {
        ResponseCode::NoError => {
            inc(&st.noerror);
            if no_answers {
                inc(&st.nodata);
            }
        }
        ResponseCode::NXDomain => inc(&st.nxdomain),
        ResponseCode::Refused => inc(&st.refused),
        ResponseCode::FormErr => inc(&st.formerr),
        ResponseCode::NotImp => inc(&st.notimp),
        ResponseCode::BADVERS => inc(&st.badvers),
        _ => inc(&st.servfail),
    }
}

fn transport_label(b: &[u8]) -> Option<Transport> {
    match b {
        b"_tcp" => Some(Transport::Tcp),
        b"_udp" => Some(Transport::Udp),
        _ => None,
    }
}

/// Records at `LABEL.ZONE.dpin.` for `qtype`.
fn name_records(ans: &Answer, owner: &Name, ttl: u32, qtype: RecordType) -> Resolution {
    let want_v4 = matches!(qtype, RecordType::A | RecordType::ANY);
    let want_v6 = matches!(qtype, RecordType::AAAA | RecordType::ANY);
    match qtype {
        RecordType::SRV => srv_records(ans, owner, ttl, None),
        RecordType::A | RecordType::AAAA | RecordType::ANY => {
            let mut seen: Vec<&Host> = Vec::new();
            let mut out = Vec::new();
            for (ep, _) in &ans.endpoints {
                let wanted = match ep.host {
                    Host::V4(_) => want_v4,
                    Host::V6(_) => want_v6,
                    Host::Name(_) => false,
                };
                // An RRset is a set: two endpoints on one address give one A record.
                if wanted && !seen.contains(&&ep.host) {
                    seen.push(&ep.host);
                    out.extend(addr_record(owner, &ep.host, ttl));
                }
            }
            Resolution::answers(out, Vec::new())
        }
        _ => Resolution::nodata(),
    }
}

/// One SRV per endpoint (optionally of one transport), literal targets' addresses as
/// additional records.
fn srv_records(ans: &Answer, owner: &Name, ttl: u32, only: Option<Transport>) -> Resolution {
    let mut answers = Vec::new();
    let mut additionals = Vec::new();
    for (ep, health) in &ans.endpoints {
        if only.is_some_and(|t| t != ep.transport) {
            continue;
        }
        let target = match &ep.host {
            Host::Name(h) => Name::from_ascii(format!("{h}.")).ok(),
            literal => addr_name(literal),
        };
        let Some(target) = target else { continue };
        if let Some(r) = addr_record(&target, &ep.host, ttl) {
            if !additionals.contains(&r) {
                additionals.push(r);
            }
        }
        let priority = match health {
            HealthState::Healthy => 0,
            HealthState::Unknown => UNKNOWN_SRV_PRIORITY,
            HealthState::Unhealthy => UNHEALTHY_SRV_PRIORITY,
        };
        answers.push(Record::from_rdata(
            owner.clone(),
            ttl,
            RData::SRV(SRV::new(priority, ep.weight, ep.port, target)),
        ));
    }
    Resolution::answers(answers, additionals)
}

/// `HEX.addr.dpin.`: the address spelled by the name.
fn addr_name_records(owner: &Name, qtype: RecordType, host: &Host) -> Resolution {
    let matches = match host {
        Host::V4(_) => matches!(qtype, RecordType::A | RecordType::ANY),
        Host::V6(_) => matches!(qtype, RecordType::AAAA | RecordType::ANY),
        Host::Name(_) => false,
    };
    if matches {
        Resolution::answers(
            addr_record(owner, host, MAX_TTL_SECS).into_iter().collect(),
            Vec::new(),
        )
    } else {
        Resolution::nodata()
    }
}

fn soa_record() -> Record {
    let apex = Name::from_labels(["dpin"]).unwrap_or_default();
    let rname = Name::from_labels(["hostmaster", "dpin"]).unwrap_or_default();
    // dpin has no zone transfers, so serial/refresh/retry/expire are nominal; `minimum` is the
    // negative-caching TTL (RFC 2308), kept short so new names appear quickly.
    let soa = SOA::new(
        apex.clone(),
        rname,
        fast::SOA_SERIAL,
        fast::SOA_REFRESH,
        fast::SOA_RETRY,
        fast::SOA_EXPIRE,
        NEGATIVE_TTL_SECS,
    );
    Record::from_rdata(apex, NEGATIVE_TTL_SECS, RData::SOA(soa))
}
