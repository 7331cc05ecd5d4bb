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
//!   and at least 1 (a TTL of 0 would make caches hammer the node). A node that judges itself
//!   cut off from the network ([`dpin_protocol::reach`]) still answers (never fail closed),
//!   with a TTL of at most 1 s, so resolvers ask again soon (and, with several servers
//!   configured, possibly elsewhere); counted as `cut_off_answers`.
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
//! The common query — one question for the `A` or `AAAA` records of `LABEL.ZONE.dpin.` or
//! `LABEL.ALIAS.dpin.`, class IN, with or without a bare OPT record — is read and answered on
//! its wire bytes (`fast.rs`): its addresses, or NXDOMAIN / NODATA with the SOA, written in
//! place, from the record's expiry and endpoints read in place too ([`Source::literals`]).
//! At 10⁶ names hickory's parse and encode and the record's decode had cost more than the
//! store lookup; without them a core answers about 265k queries a second instead of 195k
//! (issue 14, stop 54). The fast path answers only what it fully understands, byte for byte
//! as the full path would (the tests and the `dns_packet` fuzz target compare the two);
//! anything else goes the full way (without a second lookup when the fast path found the
//! name not held). `DPIN_DNS_FAST_PATH=0` turns it off, for side-by-side measurements. In the
//! full path, queries are parsed with hickory-server's [`MessageRequest`] (which reports a
//! broken body together with its header, so the client still gets a FORMERR with its id) and
//! responses are
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
//!   sends in place, so a flood costs CPU but no memory and cannot queue unbounded work. On
//!   Linux a worker takes up to `serve::UDP_BATCH` (32) queued datagrams per `recvmmsg` (it
//!   returns as soon as one is there, so a lone query never waits for company) and sends
//!   their answers with one `sendmmsg`: at a million names the per-datagram system calls were
//!   about 60 % of a worker's time, and batching raised the loopback rate about 1.4×. The
//!   threads are outside the async runtime on purpose: answering never waits behind libp2p or
//!   API work on a runtime worker (the runtime has one worker per usable core, i.e. a single
//!   one when the node is pinned to a core), and node work never waits behind a query flood
//!   longer than the OS scheduler allows. They also run at the process's priority while the runtime's threads
//!   run `--background-nice` steps below it ([`crate::priority`]), so on a busy core a query does not
//!   wait out a gossip apply's time slice. The socket asks for a 4 MiB receive buffer so bursts
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
//! * Everything is counted in the node's [`DnsStats`] (rendered by the node's registry,
//!   [`crate::metrics`]), the time each answer takes in `dpin_dns_answer_seconds`, and, for
//!   UDP, the time from the kernel's receipt of a query to its response handed back in
//!   `dpin_dns_udp_sojourn_seconds` (`SO_TIMESTAMPNS`). The second includes the wait in the
//!   socket queue, which under load is most of the latency a client sees and which the first
//!   cannot show; it is measured at the server, so a benchmark's own client delays are not in
//!   it (`deploy/dns-bench.sh` reports its p99 beside dnsperf's). Answers read the store under
//!   its read lock, beside each other; one that found a writer holding it adds its wait to
//!   `dpin_dns_store_lock_wait_seconds`.
//!
//! # Files
//!
//! * `mod.rs` — these docs, the limits, [`DnsConfig`], [`DnsError`] and the [`Source`] seam.
//! * `responder.rs` — [`Responder`]: one request packet in, at most one response out.
//! * `fast.rs` — the common query (`A`/`AAAA` of a held name) read and answered on its wire
//!   bytes, byte for byte as the full path would answer it; everything else goes the full way.
//! * `serve.rs` — [`start`]: binding, the UDP worker threads, the bounded TCP accept loop.
//! * `rrl.rs` — [`Rrl`], UDP response rate limiting.
//! * `stats.rs` — [`DnsStats`], the counters.
//! * `aliases.rs` — [`load_aliases`].

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

use crate::answer::{Answer, Literal, Literals};
use crate::health::HealthState;
use crate::node::Node;

mod aliases;
mod fast;
mod responder;
mod rrl;
mod serve;
mod stats;
#[cfg(test)]
mod tests;

pub use aliases::load_aliases;
pub use responder::{ttl_secs, Proto, Responder};
pub use rrl::{Rrl, RrlConfig, RrlVerdict};
pub use serve::start;
pub use stats::DnsStats;
// The submodules share this module's imports and each other's items through `use super::*`.
#[allow(unused_imports)]
use {aliases::*, responder::*, rrl::*, serve::*, stats::*};

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
/// Env var that turns the answer threads' fast path ([`fast`]) off when `0`, so that every
/// query goes through hickory's parse and encode (for side-by-side measurements only: the
/// answers are the same bytes either way).
pub const FAST_PATH_ENV: &str = "DPIN_DNS_FAST_PATH";
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

/// How often (wall-clock milliseconds, bucketed) the responder asks its source whether the
/// node is cut off: often enough to follow a partition within a fraction of the detector's
/// ~1.5 s, rarely enough that a query flood does not take the detector's lock per packet.
pub const REACH_RECHECK_MS: u64 = 250;

/// `--dns-slice-us`' default: the shortest slice Linux takes. See [`DnsConfig::udp_slice_us`]
/// and `serve::answer_thread_slice`.
pub const DEFAULT_UDP_SLICE_US: u32 = 100;

/// DNS configuration.
pub struct DnsConfig {
    /// UDP and TCP address to serve on (port 0 picks one port for both).
    pub addr: SocketAddr,
    /// Alias → zone.
    pub aliases: BTreeMap<String, ZoneId>,
    /// UDP response rate limiting.
    pub rrl: RrlConfig,
    /// UDP answer threads; 0 picks the default: one per core the process may use
    /// (its CPU affinity), at least 2, at most 4.
    pub udp_threads: usize,
    /// The scheduling slice the UDP answer threads ask the kernel for, µs
    /// ([`crate::priority::request_slice`]); 0 leaves the kernel's default.
    pub udp_slice_us: u32,
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
// Answer source

/// Where answers come from. The node's implementation calls [`crate::answer::dns_answer`]
/// ([`crate::answer::answer`] with its wait for the store's lock measured) and nothing else,
/// so health filtering applies to DNS exactly as to the HTTP API; tests and fuzz targets can
/// plug in a fixed table.
pub trait Source: Send + Sync + 'static {
    /// The answer for `name` (normalised `label.zone`) at `now_ms`, or `None` if not held live.
    fn answer(&self, name: &str, now_ms: u64) -> Option<Answer>;

    /// [`Source::answer`] as an `A`/`AAAA` answer needs it (the fast path, `fast.rs`): `None`
    /// where `answer` gives no answer or one without endpoints, else the record's expiry and
    /// the IP literals of the answer's endpoints in its order. The default builds it from
    /// `answer`; the node reads it in place ([`crate::answer::dns_literals`]).
    fn literals(&self, name: &str, now_ms: u64) -> Option<Literals> {
        self.answer(name, now_ms)
            .filter(|a| !a.endpoints.is_empty())
            .map(|a| Literals::of_answer(&a))
    }

    /// Whether the node judges itself cut off from the network
    /// ([`dpin_protocol::reach`]): its answers may be stale, so they get a short TTL.
    /// Asked at most once per [`REACH_RECHECK_MS`]; a fixed table is never cut off.
    fn cut_off(&self) -> bool {
        false
    }
}

impl Source for Node {
    fn answer(&self, name: &str, now_ms: u64) -> Option<Answer> {
        crate::answer::dns_answer(self, name, now_ms)
    }

    fn literals(&self, name: &str, now_ms: u64) -> Option<Literals> {
        crate::answer::dns_literals(self, name, now_ms)
    }

    fn cut_off(&self) -> bool {
        self.reach().cut_off
    }
}
