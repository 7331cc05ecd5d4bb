//! DNS front-end: every peer answers standard DNS (UDP and TCP) for the names it holds.
//!
//! # Names
//!
//! The node is authoritative for `dpin.` and answers only from its own store, through
//! [`crate::answer::answer`] (the health seam): no query ever causes a network round trip.
//! All names are case-insensitive (DNS folds case; zone ids are lowercase base32).
//!
//! | query name                          | answers                                            |
//! |-------------------------------------|----------------------------------------------------|
//! | `LABEL.ZONE.dpin.`                  | `A` / `AAAA` (IP-literal endpoints), `SRV` (all)   |
//! | `LABEL.ALIAS.dpin.`                 | the same, with `ALIAS` from `--alias`/`--aliases`  |
//! | `_tcp.LABEL.ZONE.dpin.`, `_udp....` | `SRV` for the endpoints of that transport          |
//! | `_SVC._tcp.LABEL.ZONE.dpin.`        | the same (RFC 2782 form; `_SVC` is not interpreted)|
//! | `HEX.addr.dpin.`                    | `A`/`AAAA` of an IP-literal SRV target (see below) |
//! | `ZONE.dpin.`, `ALIAS.dpin.`         | NOERROR, no data (empty non-terminal)              |
//! | `dpin.`                             | `SOA`                                              |
//!
//! # Answers and why
//!
//! * `A`/`AAAA` list the IP-literal endpoints (deduplicated; ports are not expressible).
//!   Hostname endpoints are *not* turned into a CNAME: a CNAME cannot coexist with other data
//!   and cannot express a set, so it would be wrong for every multi-endpoint name. A name whose
//!   endpoints are all hostnames therefore has no `A` data (NODATA); clients use `SRV`.
//! * `SRV` gives one record per endpoint: priority 0 for healthy endpoints, 5 for endpoints of
//!   unknown health (not probed), 10 for endpoints served only because every one is unhealthy
//!   (the answer seam fails open), the endpoint's weight and
//!   port, and as target either the endpoint's hostname or, for an IP literal, the synthesized
//!   name `HEX.addr.dpin.` (8 hex digits for IPv4, 32 for IPv6; `7f000001.addr.dpin.` is
//!   127.0.0.1), which every peer answers without any lookup because the name *is* the address.
//!   SRV targets may not be compressed (RFC 2782), so a short target matters: with
//!   `HEX.LABEL.ZONE.dpin.` (zone ids are 52 characters) only about 10 IPv6 SRV records fit
//!   in 1232 bytes, with `HEX.addr.dpin.` 18. The addresses of literal targets ride along in the
//!   additional section (RFC 2782), which saves clients a second query. The label `addr` is
//!   therefore reserved and cannot be an alias.
//! * `ANY` at a name that exists is answered with one synthesized `HINFO "RFC8482" ""` record
//!   (RFC 8482 §4.2): ANY is the classic amplification query, and a name with 64 endpoints would
//!   otherwise answer ~1.2 KB to an ~80-byte question.
//! * NXDOMAIN for names the node does not hold live (unknown, tombstoned, expired, or malformed
//!   labels); NOERROR with no answers (NODATA) when the name exists but not with that type.
//!   Both carry the `dpin.` SOA in the authority section so resolvers cache the negative answer,
//!   but only for [`NEGATIVE_TTL_SECS`]: a freshly published name must show up within seconds.
//! * REFUSED (not authoritative) for anything outside `dpin.` and for classes other than IN
//!   and ANY: this is not a recursive resolver. FORMERR for undecodable questions or a question
//!   count other than one, NOTIMP for opcodes other than QUERY, BADVERS for EDNS versions > 0.
//! * Every answer for a name under `dpin.` has the AA bit set. TTL is the time left until the
//!   record expires, capped at [`MAX_TTL_SECS`] (so a changed endpoint set reaches clients fast)
//!   and at least 1 (a TTL of 0 would make caches hammer the node).
//!
//! # Size, EDNS(0) and truncation
//!
//! UDP responses are limited to 512 bytes without EDNS and to the client's EDNS payload size
//! capped at [`UDP_PAYLOAD_LIMIT`] = 1232 bytes with it (the DNS flag day 2020 value: it fits the
//! IPv6 minimum MTU, so answers are never IP-fragmented). Responses echo an OPT record
//! advertising 1232 when the query had one. When a response does not fit: first the additional
//! section is dropped (it is optional; no TC bit), then answers are cut to what fits and TC is
//! set. The partial answer is deliberate: a client that ignores TC still gets working endpoints
//! instead of an empty answer, and one that honours TC retries over TCP, where up to 64 KiB (all
//! [`dpin_protocol::MAX_ENDPOINTS`] endpoints) always fit.
//!
//! # Serving, robustness and why not `ServerFuture`
//!
//! Queries are parsed with hickory-server's [`MessageRequest`] (which reports a broken body
//! together with its header, so the client still gets a FORMERR with its id) and responses are
//! encoded with hickory-proto's [`emit_message_parts`], straight from borrowed records.
//! hickory-server's `MessageResponseBuilder` is not used because it echoes the question as raw
//! bytes that answer owner names then cannot compress against: with 52-character zone ids
//! that costs ~60 bytes per response. [`Responder::respond`] turns one request packet into at
//! most one response packet, synchronously. The socket loops are our own rather than hickory's
//! `ServerFuture`, because `ServerFuture` (0.25) drops undecodable datagrams without telling
//! anyone (they must be counted here), spawns a task per datagram (slower on one core), has no
//! limit on TCP connections, and retries a failing `accept` (EMFILE) in a busy loop. Instead:
//!
//! * UDP: 2-4 dedicated worker threads share one blocking socket; each receives, answers and
//!   sends in place, so a flood costs CPU but no memory and cannot queue unbounded work. The
//!   threads are outside the async runtime on purpose: answering never waits behind libp2p or
//!   API work on a runtime worker (the runtime has one worker per usable core, i.e. a single
//!   one when the node is pinned to a core), and node work never waits behind a query flood
//!   longer than the OS scheduler allows. The socket asks for a 4 MiB receive buffer so bursts
//!   and scheduling gaps queue instead of being dropped by the kernel. Garbage (shorter than a
//!   header, responses, oversized datagrams) is dropped and counted; a parseable header with a
//!   broken body gets FORMERR.
//! * UDP response rate limiting ([`RrlConfig`], on by default): each source prefix (/24 for
//!   IPv4, /56 for IPv6, so one host cannot dodge it by changing its low address bits) gets a
//!   token bucket of `rate` responses per second (burst: one second's worth). A query over the
//!   limit is dropped, except every `slip`-th one, which gets an empty truncated (TC) answer:
//!   a real client whose address is being spoofed by a flood retries over TCP and is served,
//!   while the flood's victim receives at most `rate` answers per second plus small TC packets
//!   instead of full answers. Counted as `rrl_dropped` and `rrl_slipped`. Queries from
//!   127.0.0.1 and ::1 (the host's own clients, which cannot be spoofed from the network) are
//!   exempt.
//! * TCP (RFC 7766): at most [`MAX_TCP_CONNECTIONS`] connections in total and
//!   [`MAX_TCP_CONNECTIONS_PER_IP`] per client address (further ones are accepted and closed at
//!   once, counted), so one client holding connections cannot block every other client's TCP
//!   fallback. When many addresses together hold every connection, the one that has waited
//!   longest for its next query (at least [`TCP_EVICT_AFTER`]) is closed to admit the new one
//!   (counted as `tcp_evicted`), so slow or idle connections cannot lock out the TCP fallback
//!   that large and slipped answers need; a connection is closed after [`TCP_MAX_LIFETIME`]
//!   however busy (`tcp_lifetime_closed`). Each query must arrive whole (length and message) within [`TCP_IDLE_TIMEOUT`] of
//!   the connection's start or the previous response — one deadline for the whole message, so a
//!   trickle of bytes cannot hold a connection open — and a response must be written within
//!   [`TCP_IO_TIMEOUT`]; queries on one connection are answered in order. A connection that
//!   sends garbage is closed.
//! * Everything is counted in [`stats`] (see [`DnsStats::render`] for Prometheus text).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dpin_protocol::{Host, Transport, ZoneId};
use hickory_proto::op::message::emit_message_parts;
use hickory_proto::op::{Edns, Header, LowerQuery, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, HINFO, SOA, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_proto::ProtoError;
use hickory_server::authority::MessageRequest;
use std::net::UdpSocket;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use tokio::net::{TcpListener, TcpStream};

use crate::answer::Answer;
use crate::health::HealthState;
use crate::node::Node;

/// Largest UDP response with EDNS(0) (DNS flag day 2020: no IP fragmentation).
pub const UDP_PAYLOAD_LIMIT: u16 = 1232;
/// UDP response limit without EDNS (RFC 1035).
pub const UDP_LEGACY_LIMIT: u16 = 512;
/// Cap on answer TTLs, in seconds: a changed endpoint set reaches caches within this time.
pub const MAX_TTL_SECS: u32 = 60;
/// TTL of negative answers (NXDOMAIN / NODATA): a newly published name shows up this fast.
pub const NEGATIVE_TTL_SECS: u32 = 5;
/// Most concurrent TCP connections; more are closed at once.
pub const MAX_TCP_CONNECTIONS: usize = 256;
/// Most concurrent TCP connections from one IP address: a resolver needs a few for its TCP
/// fallback; one client must not take all [`MAX_TCP_CONNECTIONS`].
pub const MAX_TCP_CONNECTIONS_PER_IP: usize = 8;
/// A TCP connection must deliver each whole query (length and message) within this time of its
/// start or of the previous response, else it is closed (RFC 7766 §6.2.3 idle timeout; one
/// deadline per message, so trickled bytes do not extend it).
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// At [`MAX_TCP_CONNECTIONS`], the connection that has waited longest for its next query is
/// closed to make room for a new one, if it has waited at least this long (an honest client
/// sends its query right after connecting and gets its answer within milliseconds).
pub const TCP_EVICT_AFTER: Duration = Duration::from_millis(500);
/// Env var that turns TCP eviction off when `0` (for side-by-side measurements only).
pub const TCP_EVICT_ENV: &str = "DPIN_DNS_TCP_EVICT";
/// Longest a TCP connection stays open, however many queries it sends (RFC 7766 lets a server
/// close any connection; clients reconnect): a query does not extend a connection forever.
pub const TCP_MAX_LIFETIME: Duration = Duration::from_secs(60);
/// Default responses per second per source prefix (`--dns-rrl-rate`): far above what one
/// resolver or host asks of one authoritative server for a handful of names, far below what
/// makes a useful reflector.
pub const DEFAULT_RRL_RATE: u32 = 20;
/// Default slip (`--dns-rrl-slip`): every 2nd limited query gets a TC answer (BIND's default),
/// so a spoofed victim's real queries still get through over TCP.
pub const DEFAULT_RRL_SLIP: u32 = 2;
/// Most source prefixes tracked by RRL: bounds its memory under a flood from spoofed sources.
/// When full, prefixes whose bucket has refilled are forgotten; if none has, new prefixes are
/// limited until some do.
pub const MAX_RRL_PREFIXES: usize = 65_536;
/// Time to finish writing a response (a client that does not read is closed).
pub const TCP_IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest query accepted. Real queries are tens of bytes; EDNS padding stays far below this.
pub const MAX_QUERY_BYTES: usize = 4096;
/// SRV priority of endpoints served although unhealthy (fail open): tried after healthy ones.
pub const UNHEALTHY_SRV_PRIORITY: u16 = 10;
/// SRV priority of endpoints of unknown health (not probed, e.g. refused by the probe policy):
/// after the healthy ones, before the unhealthy ones.
pub const UNKNOWN_SRV_PRIORITY: u16 = 5;
/// Requested UDP receive buffer (bytes).
const UDP_RECV_BUFFER: usize = 4 << 20;
/// How often binding UDP+TCP to one ephemeral port is retried when TCP finds it taken.
const BIND_ATTEMPTS: usize = 10;
/// How long the TCP accept loop pauses after an accept error (e.g. out of file descriptors),
/// instead of spinning on a listener that stays readable.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// DNS configuration.
pub struct DnsConfig {
    /// UDP and TCP address to serve on (port 0 picks one port for both).
    pub addr: SocketAddr,
    /// Alias → zone.
    pub aliases: BTreeMap<String, ZoneId>,
    /// UDP response rate limiting.
    pub rrl: RrlConfig,
}

/// UDP response rate limiting settings (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RrlConfig {
    /// Responses per second per source prefix; 0 turns RRL off.
    pub rate: u32,
    /// Every `slip`-th limited query gets a TC answer; 0 never sends one (all are dropped).
    pub slip: u32,
}

impl Default for RrlConfig {
    fn default() -> Self {
        Self {
            rate: DEFAULT_RRL_RATE,
            slip: DEFAULT_RRL_SLIP,
        }
    }
}

/// What RRL decides for one query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RrlVerdict {
    /// Answer normally.
    Answer,
    /// Answer with an empty TC response (the client should retry over TCP).
    Slip,
    /// Send nothing.
    Drop,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: std::time::Instant,
    limited: u64,
}

/// Per-prefix token buckets (UDP response rate limiting).
#[derive(Debug)]
pub struct Rrl {
    config: RrlConfig,
    buckets: std::sync::Mutex<HashMap<u128, Bucket>>,
}

/// The source prefix a query is accounted to: /24 for IPv4 (mapped IPv6 included), /56 for
/// IPv6.
fn rrl_prefix(ip: std::net::IpAddr) -> u128 {
    match ip {
        std::net::IpAddr::V4(a) => u128::from(u32::from(a) & 0xffff_ff00),
        std::net::IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4) & 0xffff_ff00),
            // Tagged so an IPv6 prefix never equals an IPv4 one.
            None => (u128::from(a) & !((1u128 << 72) - 1)) | 1,
        },
    }
}

/// 127.0.0.1 and ::1: the host's own clients (a local stub resolver forwarding every lookup of
/// the machine, monitoring, benchmarks). They cannot be spoofed from the network, so limiting
/// them protects nobody; other loopback addresses are limited like any source.
fn is_host_itself(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(a) => a == Ipv4Addr::LOCALHOST,
        std::net::IpAddr::V6(a) => {
            a == Ipv6Addr::LOCALHOST || a.to_ipv4_mapped() == Some(Ipv4Addr::LOCALHOST)
        }
    }
}

impl Rrl {
    /// Rate limiter with `config`.
    pub fn new(config: RrlConfig) -> Self {
        Self {
            config,
            buckets: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Decides for one query from `src` at `now`.
    pub fn check(&self, src: std::net::IpAddr, now: std::time::Instant) -> RrlVerdict {
        if self.config.rate == 0 || is_host_itself(src) {
            return RrlVerdict::Answer;
        }
        let rate = f64::from(self.config.rate);
        let mut map = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = rrl_prefix(src);
        if !map.contains_key(&key) && map.len() >= MAX_RRL_PREFIXES {
            // Forget prefixes whose bucket has refilled (idle for a second or more).
            map.retain(|_, b| now.duration_since(b.last) < Duration::from_secs(1));
        }
        let full = map.len() >= MAX_RRL_PREFIXES;
        let b = match map.get_mut(&key) {
            Some(b) => b,
            None if full => return self.limited(None),
            None => map.entry(key).or_insert(Bucket {
                tokens: rate,
                last: now,
                limited: 0,
            }),
        };
        let elapsed = now.duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(rate);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return RrlVerdict::Answer;
        }
        b.limited += 1;
        let n = b.limited;
        self.limited(Some(n))
    }

    fn limited(&self, n: Option<u64>) -> RrlVerdict {
        let slip = u64::from(self.config.slip);
        let st = stats();
        if slip > 0 && n.is_some_and(|n| n % slip == 0) {
            inc(&st.rrl_slipped);
            RrlVerdict::Slip
        } else {
            inc(&st.rrl_dropped);
            RrlVerdict::Drop
        }
    }
}

/// DNS start-up errors.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A socket could not be bound.
    #[error("cannot bind DNS {proto} socket on {addr}: {source}")]
    Bind {
        /// `udp` or `tcp`.
        proto: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The alias file could not be read.
    #[error("cannot read alias file {path}: {source}")]
    AliasFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// An alias definition is malformed or conflicts with another.
    #[error(
        "bad alias {0}; expected NAME=ZONE (or `NAME ZONE` in a file) with NAME one DNS label"
    )]
    BadAlias(String),
}

// ---------------------------------------------------------------------------------------------
// Counters

/// Counters of the DNS front-end. Everything dropped is counted here.
#[derive(Debug)]
pub struct DnsStats {
    /// UDP datagrams received.
    pub udp_queries: AtomicU64,
    /// TCP messages received.
    pub tcp_queries: AtomicU64,
    /// TCP connections accepted and served.
    pub tcp_connections: AtomicU64,
    /// TCP connections closed at once because [`MAX_TCP_CONNECTIONS`] were open.
    pub tcp_rejected: AtomicU64,
    /// TCP connections closed by a timeout (idle, slow read or slow write).
    pub tcp_timeouts: AtomicU64,
    /// Responses with NOERROR (including NODATA).
    pub noerror: AtomicU64,
    /// NOERROR responses without answers (name exists, type does not).
    pub nodata: AtomicU64,
    /// NXDOMAIN responses.
    pub nxdomain: AtomicU64,
    /// REFUSED responses (outside `dpin.`, unsupported class).
    pub refused: AtomicU64,
    /// FORMERR responses (broken body, question count not one).
    pub formerr: AtomicU64,
    /// NOTIMP responses (opcode other than QUERY).
    pub notimp: AtomicU64,
    /// BADVERS responses (EDNS version above 0).
    pub badvers: AtomicU64,
    /// SERVFAIL responses (a response that could not be encoded).
    pub servfail: AtomicU64,
    /// Responses sent with the TC bit.
    pub truncated: AtomicU64,
    /// Packets dropped without answer: shorter than a header or otherwise undecodable.
    pub dropped_malformed: AtomicU64,
    /// Packets dropped because they were responses (QR set): never answer, no reflection.
    pub dropped_responses: AtomicU64,
    /// Packets dropped for exceeding [`MAX_QUERY_BYTES`].
    pub dropped_oversized: AtomicU64,
    /// Socket errors (receive, send, accept).
    pub io_errors: AtomicU64,
    /// UDP queries dropped by response rate limiting.
    pub rrl_dropped: AtomicU64,
    /// UDP queries answered with an empty TC answer by response rate limiting (slip).
    pub rrl_slipped: AtomicU64,
    /// TCP connections closed at once because [`MAX_TCP_CONNECTIONS_PER_IP`] were open from
    /// the same address.
    pub tcp_rejected_per_ip: AtomicU64,
    /// TCP connections closed to make room at [`MAX_TCP_CONNECTIONS`] (waiting longest for a
    /// query, over [`TCP_EVICT_AFTER`]).
    pub tcp_evicted: AtomicU64,
    /// TCP connections closed at [`TCP_MAX_LIFETIME`].
    pub tcp_lifetime_closed: AtomicU64,
}

impl DnsStats {
    const fn new() -> Self {
        DnsStats {
            udp_queries: AtomicU64::new(0),
            tcp_queries: AtomicU64::new(0),
            tcp_connections: AtomicU64::new(0),
            tcp_rejected: AtomicU64::new(0),
            tcp_timeouts: AtomicU64::new(0),
            noerror: AtomicU64::new(0),
            nodata: AtomicU64::new(0),
            nxdomain: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            formerr: AtomicU64::new(0),
            notimp: AtomicU64::new(0),
            badvers: AtomicU64::new(0),
            servfail: AtomicU64::new(0),
            truncated: AtomicU64::new(0),
            dropped_malformed: AtomicU64::new(0),
            dropped_responses: AtomicU64::new(0),
            dropped_oversized: AtomicU64::new(0),
            io_errors: AtomicU64::new(0),
            rrl_dropped: AtomicU64::new(0),
            rrl_slipped: AtomicU64::new(0),
            tcp_rejected_per_ip: AtomicU64::new(0),
            tcp_evicted: AtomicU64::new(0),
            tcp_lifetime_closed: AtomicU64::new(0),
        }
    }

    fn fields(&self) -> [(&'static str, &AtomicU64); 23] {
        [
            ("udp_queries", &self.udp_queries),
            ("tcp_queries", &self.tcp_queries),
            ("tcp_connections", &self.tcp_connections),
            ("tcp_rejected", &self.tcp_rejected),
            ("tcp_timeouts", &self.tcp_timeouts),
            ("noerror", &self.noerror),
            ("nodata", &self.nodata),
            ("nxdomain", &self.nxdomain),
            ("refused", &self.refused),
            ("formerr", &self.formerr),
            ("notimp", &self.notimp),
            ("badvers", &self.badvers),
            ("servfail", &self.servfail),
            ("truncated", &self.truncated),
            ("dropped_malformed", &self.dropped_malformed),
            ("dropped_responses", &self.dropped_responses),
            ("dropped_oversized", &self.dropped_oversized),
            ("io_errors", &self.io_errors),
            ("rrl_dropped", &self.rrl_dropped),
            ("rrl_slipped", &self.rrl_slipped),
            ("tcp_rejected_per_ip", &self.tcp_rejected_per_ip),
            ("tcp_evicted", &self.tcp_evicted),
            ("tcp_lifetime_closed", &self.tcp_lifetime_closed),
        ]
    }

    /// Prometheus text exposition, one `dpin_dns_<field>_total` counter per field.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, v) in self.fields() {
            out.push_str(&format!(
                "# TYPE dpin_dns_{name}_total counter\ndpin_dns_{name}_total {}\n",
                v.load(Ordering::Relaxed)
            ));
        }
        out
    }

    /// Counters as a JSON object keyed by field name.
    pub fn to_json(&self) -> serde_json::Value {
        let map: serde_json::Map<String, serde_json::Value> = self
            .fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.load(Ordering::Relaxed).into()))
            .collect();
        serde_json::Value::Object(map)
    }
}

static STATS: DnsStats = DnsStats::new();

/// The process-wide DNS counters (one DNS front-end per process).
pub fn stats() -> &'static DnsStats {
    &STATS
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

// ---------------------------------------------------------------------------------------------
// Answer source

/// Where answers come from. The node's implementation calls [`crate::answer::answer`] and
/// nothing else, so health filtering applies to DNS exactly as to the HTTP API; tests and fuzz
/// targets can plug in a fixed table.
pub trait Source: Send + Sync + 'static {
    /// The answer for `name` (normalised `label.zone`) at `now_ms`, or `None` if not held live.
    fn answer(&self, name: &str, now_ms: u64) -> Option<Answer>;
}

impl Source for Node {
    fn answer(&self, name: &str, now_ms: u64) -> Option<Answer> {
        crate::answer::answer(self, name, now_ms)
    }
}

// ---------------------------------------------------------------------------------------------
// Responder

/// Builds DNS responses from request packets; shared by the UDP and TCP loops.
pub struct Responder<S> {
    source: S,
    /// Alias label → zone id text (the store's name form).
    aliases: HashMap<Vec<u8>, String>,
    soa: Record,
}

/// Which transport a packet came in on (decides the response size limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// UDP: 512 bytes without EDNS, up to [`UDP_PAYLOAD_LIMIT`] with it.
    Udp,
    /// TCP: up to 65535 bytes.
    Tcp,
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
fn zone_shaped(b: &[u8]) -> bool {
    b.len() == dpin_protocol::keys::ZONE_ID_TEXT_LEN
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || (b'2'..=b'7').contains(c))
}

/// A user label (`a-z0-9-`, 1-63, no leading/trailing `-`): anything else cannot be stored.
fn label_ok(b: &[u8]) -> bool {
    std::str::from_utf8(b).is_ok_and(|s| dpin_protocol::record::validate_label(s).is_ok())
}

/// The label under which synthesized SRV targets live: `HEX.addr.dpin.`.
const ADDR_LABEL: &[u8] = b"addr";

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
    /// A responder answering from `source`, with `aliases` (alias label → zone).
    pub fn new(source: S, aliases: &BTreeMap<String, ZoneId>) -> Self {
        let aliases = aliases
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase().into_bytes(), v.to_string()))
            .collect();
        Responder {
            source,
            aliases,
            soa: soa_record(),
        }
    }

    /// The response to one request packet, or `None` if the packet must be dropped (too short
    /// for a header, a response, oversized). Never panics on any input.
    pub fn respond(&self, packet: &[u8], proto: Proto, now_ms: u64) -> Option<Vec<u8>> {
        let st = stats();
        if packet.len() > MAX_QUERY_BYTES {
            inc(&st.dropped_oversized);
            return None;
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
                    let res = self.resolve(q.name(), q.original().name(), q.query_type(), now_ms);
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
        count_rcode(rcode, false);
        Some(bare_response(header, rcode))
    }

    /// Maps a question to records. `lower` is the question name lowercased (for matching),
    /// `owner` the name as sent (echoed as the owner of answers).
    fn resolve(&self, lower: &Name, owner: &Name, qtype: RecordType, now_ms: u64) -> Resolution {
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
            [label] => self.lookup(owner, zone, label, now_ms, |ans, owner, ttl| {
                name_records(ans, owner, ttl, qtype)
            }),
            [first, label] => match transport_label(first) {
                Some(t) => self.lookup(owner, zone, label, now_ms, srv_only(t)),
                None => Resolution::nxdomain(),
            },
            [svc, proto, label] if svc.first() == Some(&b'_') => match transport_label(proto) {
                Some(t) => self.lookup(owner, zone, label, now_ms, srv_only(t)),
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
        build: impl FnOnce(&Answer, &Name, u32) -> Resolution,
    ) -> Resolution {
        if !label_ok(label) {
            return Resolution::nxdomain();
        }
        let Ok(label) = std::str::from_utf8(label) else {
            return Resolution::nxdomain();
        };
        let key = format!("{label}.{zone}");
        match self.source.answer(&key, now_ms) {
            Some(ans) if !ans.endpoints.is_empty() => {
                let ttl = ttl_secs(ans.record.body.expires_at_ms, now_ms);
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
                count_rcode(res.rcode, res.answers.is_empty());
                if tc {
                    inc(&stats().truncated);
                }
                buf
            }
            _ => {
                inc(&stats().servfail);
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

fn count_rcode(rcode: ResponseCode, no_answers: bool) {
    let st = stats();
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
    let soa = SOA::new(apex.clone(), rname, 1, 60, 60, 86_400, NEGATIVE_TTL_SECS);
    Record::from_rdata(apex, NEGATIVE_TTL_SECS, RData::SOA(soa))
}

// ---------------------------------------------------------------------------------------------
// Sockets

/// Starts serving DNS on UDP and TCP (same port) and returns the bound address.
pub async fn start(node: Node, config: DnsConfig) -> Result<SocketAddr, DnsError> {
    let (udp, tcp) = bind_pair(config.addr).await?;
    let bind_err = |proto, source| DnsError::Bind {
        proto,
        addr: config.addr,
        source,
    };
    let addr = udp.local_addr().map_err(|e| bind_err("udp", e))?;
    let responder = Arc::new(Responder::new(node, &config.aliases));
    let rrl = Arc::new(Rrl::new(config.rrl));
    let workers = udp_workers();
    for i in 0..workers {
        let sock = udp.try_clone().map_err(|e| bind_err("udp", e))?;
        let responder = responder.clone();
        let rrl = rrl.clone();
        std::thread::Builder::new()
            .name(format!("dpin-dns-udp-{i}"))
            .spawn(move || serve_udp(&sock, &responder, &rrl))
            .map_err(|e| bind_err("udp", e))?;
    }
    tokio::spawn(serve_tcp(tcp, responder));
    tracing::info!(%addr, workers, rrl_rate = config.rrl.rate, rrl_slip = config.rrl.slip, "DNS serving on UDP and TCP");
    Ok(addr)
}

/// UDP worker threads: one per core the process may use, at least 2 (so one worker stalled in
/// a send or preempted does not stop reception), at most 4.
fn udp_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4))
}

/// Binds UDP and TCP on one port. With port 0, UDP picks the port and TCP follows; if TCP finds
/// that port taken (another process holds it for TCP only), both are retried.
async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    // UdpSocket here is the blocking std socket the worker threads share.
    let udp_err = |source| DnsError::Bind {
        proto: "udp",
        addr,
        source,
    };
    let mut last = None;
    for _ in 0..BIND_ATTEMPTS {
        let udp = bind_udp(addr).map_err(udp_err)?;
        let bound = udp.local_addr().map_err(udp_err)?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 && e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
            Err(source) => {
                return Err(DnsError::Bind {
                    proto: "tcp",
                    addr: bound,
                    source,
                })
            }
        }
    }
    Err(DnsError::Bind {
        proto: "tcp",
        addr,
        source: last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)),
    })
}

/// A UDP socket with a large receive buffer: a query burst, or a few milliseconds in which the
/// process is not scheduled, then queues in the kernel instead of being dropped there (the
/// default ~200 KiB holds only a few hundred small datagrams; the kernel caps the request at
/// `net.core.rmem_max`).
fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = sock.set_recv_buffer_size(UDP_RECV_BUFFER) {
        tracing::debug!(%e, "cannot enlarge the DNS UDP receive buffer");
    }
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

/// One UDP worker: receive, answer, send, in a loop on a blocking socket. Never returns.
fn serve_udp<S: Source>(sock: &UdpSocket, responder: &Responder<S>, rrl: &Rrl) {
    let st = stats();
    // Room for any datagram, so an oversized one is seen whole and counted, not cut short.
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, src) = match sock.recv_from(&mut buf) {
            Ok(v) => v,
            Err(e) => {
                inc(&st.io_errors);
                tracing::debug!(%e, "DNS UDP receive failed");
                // Errors here are per-datagram (e.g. ICMP feedback); should one persist, do
                // not spin on it.
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        inc(&st.udp_queries);
        if src.port() == 0 {
            // Cannot be answered; probably spoofed.
            inc(&st.dropped_malformed);
            continue;
        }
        let Some(packet) = buf.get(..n) else { continue };
        let resp = match rrl.check(src.ip(), std::time::Instant::now()) {
            RrlVerdict::Answer => responder.respond(packet, Proto::Udp, crate::node::now_ms()),
            RrlVerdict::Slip => responder.slip(packet),
            RrlVerdict::Drop => None,
        };
        if let Some(resp) = resp {
            if let Err(e) = sock.send_to(&resp, src) {
                inc(&st.io_errors);
                tracing::debug!(%e, %src, "DNS UDP send failed");
            }
        }
    }
}

/// What the accept loop and one TCP connection share.
#[derive(Debug, Default)]
struct TcpConnShared {
    /// Milliseconds since the table's epoch, plus one, since the connection has been waiting
    /// for its next query; 0 while a query is being answered.
    waiting_since: AtomicU64,
    /// Set (and notified) when the connection is closed to make room.
    evicted: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
}

impl TcpConnShared {
    fn set_waiting(&self, epoch: std::time::Instant) {
        let ms = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.waiting_since
            .store(ms.saturating_add(1), Ordering::Relaxed);
    }
}

/// Open TCP connections: totals for the caps and who to close to make room.
#[derive(Debug)]
struct TcpTable {
    epoch: std::time::Instant,
    per_ip: HashMap<std::net::IpAddr, usize>,
    conns: HashMap<u64, Arc<TcpConnShared>>,
    next_id: u64,
}

/// Why a new TCP connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TcpRefusal {
    /// [`MAX_TCP_CONNECTIONS`] open and none idle long enough to close.
    TotalCap,
    /// [`MAX_TCP_CONNECTIONS_PER_IP`] open from this address.
    PerIp,
}

impl TcpTable {
    fn new() -> Self {
        Self {
            epoch: std::time::Instant::now(),
            per_ip: HashMap::new(),
            conns: HashMap::new(),
            next_id: 0,
        }
    }

    /// Admits a connection from `ip` (closing the longest-waiting idle one at the total cap,
    /// if it has waited [`TCP_EVICT_AFTER`]) or says why not.
    fn admit(
        &mut self,
        ip: std::net::IpAddr,
        max_total: usize,
        max_per_ip: usize,
        evict: bool,
    ) -> Result<(u64, Arc<TcpConnShared>), TcpRefusal> {
        if self.per_ip.get(&ip).copied().unwrap_or(0) >= max_per_ip {
            return Err(TcpRefusal::PerIp);
        }
        if self.conns.len() >= max_total {
            if !evict {
                return Err(TcpRefusal::TotalCap);
            }
            let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
            let cutoff =
                now.saturating_sub(u64::try_from(TCP_EVICT_AFTER.as_millis()).unwrap_or(0));
            let victim = self
                .conns
                .values()
                .filter(|c| !c.evicted.load(Ordering::Relaxed))
                .map(|c| (c.waiting_since.load(Ordering::Relaxed), c))
                .filter(|(since, _)| *since != 0 && since.saturating_sub(1) <= cutoff)
                .min_by_key(|(since, _)| *since)
                .map(|(_, c)| c.clone());
            let Some(victim) = victim else {
                return Err(TcpRefusal::TotalCap);
            };
            victim.evicted.store(true, Ordering::Relaxed);
            victim.wake.notify_one();
            inc(&stats().tcp_evicted);
            // Its slot is released when its task ends; until then the table may hold one more
            // than the cap (bounded: at most one pending eviction per admitted connection).
        }
        *self.per_ip.entry(ip).or_default() += 1;
        let id = self.next_id;
        self.next_id += 1;
        let shared = Arc::new(TcpConnShared::default());
        shared.set_waiting(self.epoch);
        self.conns.insert(id, shared.clone());
        Ok((id, shared))
    }

    fn release(&mut self, id: u64, ip: std::net::IpAddr) {
        self.conns.remove(&id);
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

async fn serve_tcp<S: Source>(listener: TcpListener, responder: Arc<Responder<S>>) {
    let st = stats();
    let table = Arc::new(std::sync::Mutex::new(TcpTable::new()));
    // Measurement knob: DPIN_DNS_TCP_EVICT=0 turns eviction off (the behaviour before it), to
    // measure the difference side by side. On by default.
    let evict = std::env::var(TCP_EVICT_ENV).map_or(true, |v| v.trim() != "0");
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(v) => v,
            Err(e) => {
                inc(&st.io_errors);
                tracing::warn!(%e, "DNS TCP accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let ip = peer.ip();
        let admitted = table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(ip, MAX_TCP_CONNECTIONS, MAX_TCP_CONNECTIONS_PER_IP, evict);
        let (id, shared) = match admitted {
            Ok(v) => v,
            Err(r) => {
                // Accept-and-close keeps the backlog moving and tells the client at once.
                inc(match r {
                    TcpRefusal::TotalCap => &st.tcp_rejected,
                    TcpRefusal::PerIp => &st.tcp_rejected_per_ip,
                });
                drop(stream);
                continue;
            }
        };
        inc(&st.tcp_connections);
        let responder = responder.clone();
        let table = table.clone();
        tokio::spawn(async move {
            let epoch = table
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .epoch;
            tokio::select! {
                () = serve_tcp_conn(stream, &responder, &shared, epoch) => {}
                () = shared.wake.notified() => {}
            }
            tracing::trace!(%peer, "DNS TCP connection closed");
            table
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .release(id, ip);
        });
    }
}

async fn serve_tcp_conn<S: Source>(
    mut stream: TcpStream,
    responder: &Responder<S>,
    shared: &TcpConnShared,
    epoch: std::time::Instant,
) {
    let st = stats();
    let _ = stream.set_nodelay(true);
    // However busy, a connection ends after TCP_MAX_LIFETIME: queries do not extend it forever.
    let end_of_life = tokio::time::Instant::now() + TCP_MAX_LIFETIME;
    loop {
        shared.set_waiting(epoch);
        // One deadline for the whole next query: trickled bytes cannot extend it.
        let idle = tokio::time::Instant::now() + TCP_IDLE_TIMEOUT;
        let (deadline, counter) = if end_of_life < idle {
            (end_of_life, &st.tcp_lifetime_closed)
        } else {
            (idle, &st.tcp_timeouts)
        };
        let mut len = [0u8; 2];
        match tokio::time::timeout_at(deadline, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return, // closed by the client
            Err(_) => {
                inc(counter);
                return;
            }
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        match tokio::time::timeout_at(deadline, stream.read_exact(&mut msg)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => {
                inc(&st.dropped_malformed);
                return;
            }
            Err(_) => {
                inc(counter);
                return;
            }
        }
        // Answering: not a candidate for eviction.
        shared.waiting_since.store(0, Ordering::Relaxed);
        inc(&st.tcp_queries);
        let Some(resp) = responder.respond(&msg, Proto::Tcp, crate::node::now_ms()) else {
            return; // garbage: close (RFC 7766 §8 allows it)
        };
        let Ok(n) = u16::try_from(resp.len()) else {
            return;
        };
        let mut out = Vec::with_capacity(resp.len() + 2);
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(&resp);
        match tokio::time::timeout(TCP_IO_TIMEOUT, stream.write_all(&out)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                inc(&st.io_errors);
                return;
            }
            Err(_) => {
                inc(&st.tcp_timeouts);
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Aliases

/// Loads aliases from an optional file and `NAME=ZONE` flags.
///
/// File format: one alias per line, `NAME ZONE` or `NAME=ZONE`; blank lines and lines starting
/// with `#` are ignored. NAME is one DNS label (`a-z0-9-`, case-insensitive) and must not look
/// like a zone id; ZONE is a 52-character zone id. Defining one NAME twice with different zones
/// is an error rather than a silent override: an alias pointing somewhere unexpected is exactly
/// the kind of quiet misdirection dpin exists to prevent.
pub fn load_aliases(
    file: Option<&Path>,
    flags: &[String],
) -> Result<BTreeMap<String, ZoneId>, DnsError> {
    let mut out = BTreeMap::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| DnsError::AliasFile {
            path: path.to_owned(),
            source,
        })?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, zone) = line
                .split_once('=')
                .or_else(|| line.split_once(char::is_whitespace))
                .ok_or_else(|| {
                    DnsError::BadAlias(format!("{:?} at {}:{}", line, path.display(), i + 1))
                })?;
            add_alias(
                &mut out,
                name,
                zone,
                &format!("{}:{}", path.display(), i + 1),
            )?;
        }
    }
    for flag in flags {
        let (name, zone) = flag
            .split_once('=')
            .ok_or_else(|| DnsError::BadAlias(format!("{flag:?}")))?;
        add_alias(&mut out, name, zone, "--alias")?;
    }
    Ok(out)
}

fn add_alias(
    out: &mut BTreeMap<String, ZoneId>,
    name: &str,
    zone: &str,
    origin: &str,
) -> Result<(), DnsError> {
    let name = name.trim().to_ascii_lowercase();
    let zone_text = zone.trim();
    let bad = |why: &str| DnsError::BadAlias(format!("{name:?}={zone_text:?} ({origin}): {why}"));
    if !label_ok(name.as_bytes()) {
        return Err(bad("NAME must be one DNS label of a-z, 0-9 and -"));
    }
    if zone_shaped(name.as_bytes()) {
        return Err(bad("NAME must not look like a zone id"));
    }
    if name.as_bytes() == ADDR_LABEL {
        return Err(bad("`addr` is reserved for SRV targets (HEX.addr.dpin.)"));
    }
    let zone: ZoneId = zone_text
        .parse()
        .map_err(|_| bad("ZONE is not a 52-character zone id"))?;
    match out.get(&name) {
        Some(existing) if *existing != zone => Err(bad("NAME already points to another zone")),
        _ => {
            out.insert(name, zone);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
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
        let m =
            Message::from_vec(&r.respond(&cut, Proto::Udp, NOW).expect("formerr")).expect("decode");
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
        let mut ch =
            Message::from_vec(&query("version.bind.", RecordType::TXT, None)).expect("decode");
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
}
