//! Endpoint health: probe the endpoints of the names this node holds, so answers can route
//! around dead services — without turning the node into a scanner for whoever signs a record.
//!
//! # Three states
//!
//! [`HealthState::Healthy`] (a probe succeeded), [`HealthState::Unhealthy`] (a probe failed) and
//! [`HealthState::Unknown`] (never probed, not probed because the policy forbids it, probing
//! off, or UDP probing off). Unknown is *not* healthy: the HTTP API reports `"healthy": false`
//! with `"health": "unknown"`, and [`crate::answer`] orders healthy, then unknown, then
//! unhealthy endpoints (and fails open when none is healthy or unknown).
//!
//! # Probe policy: who may be probed
//!
//! Records are signed by strangers, so the endpoints they name steer this node's probes. By
//! default [`ProbePolicy`] refuses every address that is not globally routable unicast:
//! loopback, link-local, private (RFC 1918, ULA `fc00::/7`, site-local), multicast,
//! unspecified, CGNAT `100.64.0.0/10`, benchmarking `198.18.0.0/15`, the documentation ranges,
//! `192.0.0.0/24`, reserved `240.0.0.0/4` and broadcast, IPv6 outside `2000::/3`, and the
//! IPv4 embedded in IPv4-mapped (`::ffff:0:0/96`), NAT64 (`64:ff9b::/96`) and 6to4 addresses.
//! An operator allows ranges with `--probe-allow CIDR` (repeatable), e.g. `127.0.0.0/8` for a
//! loopback test cluster or `10.0.0.0/8` inside a private network. Otherwise the node would
//! scan its own loopback and internal network on behalf of anyone who publishes a record, and
//! report the result.
//!
//! Hostname endpoints are resolved by the system resolver at probe time and every address is
//! checked against the policy *after* resolution; the connection goes to the checked address
//! (never a second lookup), so DNS rebinding cannot slip a forbidden target in. A hostname whose
//! addresses are all forbidden is refused (unknown), like an IP literal.
//!
//! Refused probes are counted by reason (`dpin_probe_refused_total{reason=...}` on `/metrics`).
//!
//! # Probes
//!
//! * TCP endpoints: a TCP connect within the probe timeout means healthy.
//! * UDP endpoints: there is no generic UDP handshake. With [`UdpProbe::Icmp`] a datagram is
//!   sent on a connected socket and an ICMP "port unreachable" (seen as `ECONNREFUSED`) means
//!   unhealthy, silence means healthy; with [`UdpProbe::Off`] UDP endpoints stay unknown.
//!
//! # Bounds and fairness between zones
//!
//! A large store must not become a probe storm, and one zone must not starve the others:
//!
//! * The endpoint set is refreshed once per interval from [`ProbeIndex`], which follows the
//!   store's change feed (only records that changed are decoded, off the store lock); this
//!   node's share of it ([`Selection`], a mark on the index's entries rather than a second
//!   copy of them) is updated from the endpoints that changed, so an idle refresh costs
//!   nothing however many records the store holds. The set is capped at
//!   [`HealthConfig::max_endpoints`]. The cap is filled round-robin over zones (one endpoint
//!   per zone per round), in an order keyed by a per-process random hash, so a zone with many
//!   endpoints (or one whose key sorts first) cannot push the others out.
//! * Each endpoint is due once per prober period (the interval, or `interval × k/2` when `k`
//!   nodes share it, see below) with ±20 % jitter; failing endpoints back off to at most twice
//!   the period (a recovered service is noticed within two periods).
//! * At most [`HealthConfig::max_concurrent`] probes run at once, at most
//!   [`HealthConfig::max_probes_per_tick`] start per 100 ms tick, and at most
//!   [`HealthConfig::max_in_flight_per_zone`] belong to one zone. Due probes are started
//!   round-robin over zones, so a black-holed zone (every probe waits the full timeout) holds
//!   only its own budget of slots and the others keep being probed.
//!
//!
//! # Who probes: a few nodes per endpoint, chosen by rendezvous hashing
//!
//! Every node holds every record, so if every node probed every endpoint the probes an
//! endpoint receives would grow with the network (100 nodes at one probe per 2 s: 50 probes
//! a second at one service). Instead each endpoint is probed by [`HealthConfig::probers`]
//! (default [`DEFAULT_PROBERS`] = 3) live nodes: the first `k` of the live membership (this
//! node plus the peers the failure detector does not hold down) ordered by
//! `blake3(target || peer id)` ([`probers_of`]). Every node computes the same order from the
//! same membership, a node joining or leaving moves only the endpoints it wins or held, and no
//! one chooses which endpoints it probes. Each node applies a membership change as such
//! ([`Selection`]): a member joining is ranked against this node only on the endpoints this
//! node probes, one leaving only on the others, so a change costs far less than ranking every
//! member on every endpoint again (at 10⁶ records that took each node 12–13 s per join).
//! A prober probes each of its endpoints every
//! `interval × max(1, k/2)`, so an endpoint receives at most two probes per interval in total
//! (one a second at the default 2 s), whatever the size of the network ([`endpoint_probe_rate`];
//! the figures are in the tests).
//!
//! # Sharing verdicts: signed, expiring observations
//!
//! A prober publishes what it saw as ordinary signed records in its own zone (the node's zone
//! key is its libp2p identity, like offers in [`crate::offers`]): labels
//! [`OBSERVATION_LABEL_PREFIX`]`N`, each an endpoint list whose weight carries the verdict
//! ([`OBS_HEALTHY`], [`OBS_UNHEALTHY`]). They gossip, sync and persist like any record, expire
//! after three refreshes ([`Health::observation_refresh`]) and are republished at once when a
//! verdict changes. Endpoints in observation records are never probed themselves.
//!
//! Another node's word is taken with Lifeguard-style caution:
//!
//! * Only observations by a node that is live *and* one of the endpoint's probers in this
//!   node's view count; others are ignored and counted
//!   (`dpin_probe_observations_ignored_total{reason="not_prober"}`), as are observations that
//!   claim a lifetime over [`MAX_OBSERVATION_LIFETIME_MS`] (`reason="too_long"`). Expired ones
//!   are not live records any more. A prober's latest record wins over its older ones.
//! * Suspicion needs confirmation: an endpoint is unhealthy only when at least
//!   `min(2, probers)` probers (this node's own verdict included) say so and none says
//!   healthy. One node with a broken network, or one lying node, cannot take an endpoint out
//!   of answers; a single healthy verdict keeps it in ([`combine`]).
//! * Never fail closed: without a trusted verdict an endpoint is unknown, and unknown
//!   endpoints are served (after healthy ones).
//!
//! `probers = 0` (env `DPIN_PROBERS=0`) restores the old rule, every node probes every
//! endpoint, for measuring the difference side by side.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dpin_protocol::store::Store;
use dpin_protocol::{
    Content, Endpoint, Host, RecordBody, SignedRecord, Transport, ZoneId, ZoneKey,
};
use libp2p::PeerId;
use prometheus_client::encoding::DescriptorEncoder;
use rand::Rng;

use crate::liveness::PeerStatus;
use crate::node::{now_ms, Node};

/// Probes in flight at once, over all zones: bounds sockets and file descriptors.
pub const MAX_CONCURRENT_PROBES: usize = 64;
/// Probes in flight at once for one zone: a zone whose endpoints black-hole every probe holds
/// at most this many of the [`MAX_CONCURRENT_PROBES`] slots for the timeout.
pub const MAX_IN_FLIGHT_PER_ZONE: usize = 4;
/// Most endpoints tracked: bounds the table's memory and the work of one refresh.
pub const MAX_TRACKED_ENDPOINTS: usize = 100_000;
/// Addresses of one resolved hostname tried per probe: a name resolving to hundreds of
/// addresses must not turn one probe into hundreds of connections.
pub const MAX_ADDRS_PER_HOSTNAME: usize = 4;

/// Live nodes that probe each endpoint (rendezvous hashing over the live membership).
pub const DEFAULT_PROBERS: usize = 3;
/// Env var overriding [`HealthConfig::probers`] (`0`: every node probes every endpoint).
pub const PROBERS_ENV: &str = "DPIN_PROBERS";
/// Label prefix of a node's probe observation records (in its own zone), `…0`, `…1`, ...
pub const OBSERVATION_LABEL_PREFIX: &str = "dpin-probe-obs-";
/// Weight that marks an endpoint seen healthy in an observation record.
pub const OBS_HEALTHY: u16 = 1;
/// Weight that marks an endpoint seen unhealthy in an observation record.
pub const OBS_UNHEALTHY: u16 = 2;
/// Most observation records one node publishes (each holds at most
/// [`dpin_protocol::MAX_ENDPOINTS`] endpoints): bounds what one prober adds to every store.
pub const MAX_OBSERVATION_RECORDS: usize = 256;
/// Observations claiming to stay valid longer than this are ignored: a verdict must be
/// refreshed, so a prober that stops publishing stops counting.
pub const MAX_OBSERVATION_LIFETIME_MS: u64 = 5 * 60 * 1000;
/// Estimated encoded bytes of endpoints per observation record (records are at most
/// [`dpin_protocol::MAX_RECORD_BYTES`]; the rest is signature, zone, label and framing).
const OBS_RECORD_BUDGET: usize = 3_400;

/// How UDP endpoints are probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UdpProbe {
    /// Never probed; UDP endpoints stay unknown.
    Off,
    /// Unhealthy on ICMP port unreachable.
    Icmp,
}

/// What this node believes about an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HealthState {
    /// The last probe succeeded.
    Healthy,
    /// Not probed (yet, or not allowed by the policy, or probing off).
    Unknown,
    /// The last probe failed.
    Unhealthy,
}

impl HealthState {
    /// Wire name (`/v1/resolve`'s `health` field).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Unknown => "unknown",
            Self::Unhealthy => "unhealthy",
        }
    }
}

/// Why the policy refuses to probe an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// RFC 1918, ULA `fc00::/7`, site-local `fec0::/10`.
    Private,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `0.0.0.0/8`, `::`.
    Unspecified,
    /// Any other range that is not globally routable unicast (CGNAT, benchmarking,
    /// documentation, reserved, broadcast, IPv6 outside `2000::/3`, ...).
    SpecialPurpose,
}

impl Refusal {
    /// Every reason, in `/metrics` order.
    pub const ALL: [Refusal; 6] = [
        Refusal::Loopback,
        Refusal::LinkLocal,
        Refusal::Private,
        Refusal::Multicast,
        Refusal::Unspecified,
        Refusal::SpecialPurpose,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::LinkLocal => "link_local",
            Self::Private => "private",
            Self::Multicast => "multicast",
            Self::Unspecified => "unspecified",
            Self::SpecialPurpose => "special_purpose",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// An address range, `ADDR/PREFIX` (`--probe-allow`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

/// A `--probe-allow` value that is not `ADDR/PREFIX`.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a CIDR range like 127.0.0.0/8 or fd00::/8")]
pub struct BadCidr(String);

impl std::str::FromStr for Cidr {
    type Err = BadCidr;
    fn from_str(s: &str) -> Result<Self, BadCidr> {
        let bad = || BadCidr(s.to_owned());
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let net: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { net, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

fn prefix_match(a: u128, b: u128, prefix: u8, bits: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = u32::from(bits - prefix);
    (a >> shift) == (b >> shift)
}

impl Cidr {
    /// Whether `ip` lies in the range (an IPv4-mapped IPv6 address matches its IPv4 range).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_match(
                u128::from(u32::from(n)),
                u128::from(u32::from(a)),
                self.prefix,
                32,
            ),
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                prefix_match(u128::from(n), u128::from(a), self.prefix, 128)
            }
            (IpAddr::V6(n), IpAddr::V4(a)) => prefix_match(
                u128::from(n),
                u128::from(a.to_ipv6_mapped()),
                self.prefix,
                128,
            ),
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses are the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_v4(a: Ipv4Addr, net: [u8; 4], prefix: u8) -> bool {
    prefix_match(
        u128::from(u32::from(a)),
        u128::from(u32::from(Ipv4Addr::from(net))),
        prefix,
        32,
    )
}

fn classify_v4(a: Ipv4Addr) -> Option<Refusal> {
    use Refusal as R;
    const RANGES: [([u8; 4], u8, Refusal); 17] = [
        ([0, 0, 0, 0], 8, R::Unspecified),
        ([127, 0, 0, 0], 8, R::Loopback),
        ([169, 254, 0, 0], 16, R::LinkLocal),
        ([10, 0, 0, 0], 8, R::Private),
        ([172, 16, 0, 0], 12, R::Private),
        ([192, 168, 0, 0], 16, R::Private),
        ([224, 0, 0, 0], 4, R::Multicast),
        ([100, 64, 0, 0], 10, R::SpecialPurpose), // CGNAT (RFC 6598)
        ([192, 0, 0, 0], 24, R::SpecialPurpose),  // IETF protocol assignments
        ([192, 0, 2, 0], 24, R::SpecialPurpose),  // TEST-NET-1
        ([198, 51, 100, 0], 24, R::SpecialPurpose), // TEST-NET-2
        ([203, 0, 113, 0], 24, R::SpecialPurpose), // TEST-NET-3
        ([198, 18, 0, 0], 15, R::SpecialPurpose), // benchmarking (RFC 2544)
        ([192, 88, 99, 0], 24, R::SpecialPurpose), // 6to4 relay anycast
        ([192, 31, 196, 0], 24, R::SpecialPurpose), // AS112
        ([192, 175, 48, 0], 24, R::SpecialPurpose), // AS112
        ([240, 0, 0, 0], 4, R::SpecialPurpose),   // reserved, broadcast
    ];
    RANGES
        .iter()
        .find(|(net, p, _)| in_v4(a, *net, *p))
        .map(|(_, _, r)| *r)
}

fn classify_v6(a: Ipv6Addr) -> Option<Refusal> {
    let bits = u128::from(a);
    let in6 = |net: u128, p: u8| prefix_match(bits, net, p, 128);
    let embedded_v4 = || Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    if a.is_unspecified() {
        return Some(Refusal::Unspecified);
    }
    if a.is_loopback() {
        return Some(Refusal::Loopback);
    }
    if let Some(v4) = a.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    // NAT64 well-known prefix: the target is really the embedded IPv4 address.
    if in6(0x0064_ff9b_u128 << 96, 96) {
        return classify_v4(embedded_v4());
    }
    // 6to4: 2002:V4ADDR::/48 carries an IPv4 address in bits 16..48.
    if in6(0x2002_u128 << 112, 16) {
        let v4 = Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32);
        return classify_v4(v4).or(Some(Refusal::SpecialPurpose));
    }
    if in6(0xfe80_u128 << 112, 10) {
        return Some(Refusal::LinkLocal);
    }
    if in6(0xfc00_u128 << 112, 7) || in6(0xfec0_u128 << 112, 10) {
        return Some(Refusal::Private);
    }
    if in6(0xff00_u128 << 112, 8) {
        return Some(Refusal::Multicast);
    }
    // Documentation, IETF protocol assignments (Teredo, ORCHID, ...), and anything outside
    // global unicast 2000::/3.
    if in6(0x2001_0db8_u128 << 96, 32) || in6(0x2001_u128 << 112, 23) || !in6(0x2_u128 << 124, 3) {
        return Some(Refusal::SpecialPurpose);
    }
    None
}

/// Why `ip` is not a globally routable unicast address, if it is not.
pub fn classify(ip: IpAddr) -> Option<Refusal> {
    match ip {
        IpAddr::V4(a) => classify_v4(a),
        IpAddr::V6(a) => classify_v6(a),
    }
}

/// Which addresses this node may probe.
#[derive(Clone, Debug, Default)]
pub struct ProbePolicy {
    /// Ranges the operator allows although they are not global unicast (`--probe-allow`).
    pub allow: Vec<Cidr>,
}

impl ProbePolicy {
    /// `Ok` if `ip` may be probed, else why not.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        match classify(ip) {
            None => Ok(()),
            Some(_) if self.allow.iter().any(|c| c.contains(ip)) => Ok(()),
            Some(r) => Err(r),
        }
    }
}

/// Prober settings.
#[derive(Clone, Debug)]
pub struct HealthConfig {
    /// Whether probing runs at all (off: every endpoint is unknown).
    pub enabled: bool,
    /// Target time between probes of one endpoint.
    pub interval: Duration,
    /// Probe timeout.
    pub timeout: Duration,
    /// Probes in flight at once.
    pub max_concurrent: usize,
    /// Probes in flight at once for one zone.
    pub max_in_flight_per_zone: usize,
    /// Probes started per 100 ms tick.
    pub max_probes_per_tick: usize,
    /// Most endpoints tracked.
    pub max_endpoints: usize,
    /// UDP probing mode.
    pub udp: UdpProbe,
    /// Which addresses may be probed.
    pub policy: ProbePolicy,
    /// Live nodes that probe each endpoint (rendezvous hashing); 0 means every node probes
    /// every endpoint (the behaviour before issue 13, kept for side-by-side measurement).
    pub probers: usize,
    /// Longest a joining node holds its target refreshes back ([`Pace::joining`]).
    pub joining_defer: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(2),
            timeout: Duration::from_millis(1000),
            max_concurrent: MAX_CONCURRENT_PROBES,
            max_in_flight_per_zone: MAX_IN_FLIGHT_PER_ZONE,
            max_probes_per_tick: 128,
            max_endpoints: MAX_TRACKED_ENDPOINTS,
            udp: UdpProbe::Icmp,
            policy: ProbePolicy::default(),
            probers: std::env::var(PROBERS_ENV)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(DEFAULT_PROBERS),
            joining_defer: JOINING_DEFER,
        }
    }
}

/// Identity of a probe target (weight does not matter for reachability).
pub type Target = (Host, u16, Transport);

fn target(e: &Endpoint) -> Target {
    (e.host.clone(), e.port, e.transport)
}

/// The result of one probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// Reachable.
    Up,
    /// Not reachable (or the hostname did not resolve).
    Down,
    /// Not probed: the policy forbids every address.
    Refused(Refusal),
    /// Not probed: no way to tell (UDP probing off).
    NotProbed,
}

#[derive(Clone, Debug)]
struct State {
    health: HealthState,
    failures: u32,
    next_due: Instant,
    in_flight: bool,
    /// The zone whose budget this endpoint's probes count against (the first zone, in fair
    /// order, that names it).
    zone: ZoneId,
}

/// Which tracked endpoints are due when, and which are being probed, so a tick (every
/// 100 ms) reads the endpoints due now instead of the whole table: with the table at its cap
/// ([`MAX_TRACKED_ENDPOINTS`]) the scan cost most of an idle node's CPU and held the table's
/// lock, which answers read, for milliseconds each tick.
#[derive(Debug, Default)]
struct Schedule {
    /// (due at, endpoint), earliest first. An entry counts only while the table still tracks
    /// the endpoint, due at that time and not in flight; stale ones are dropped when they
    /// surface, and the heap is rebuilt from the table if they pile up.
    queue: BinaryHeap<Reverse<(Instant, Target)>>,
    /// Endpoints being probed, with their zones (at most [`HealthConfig::max_concurrent`]).
    in_flight: BTreeMap<Target, ZoneId>,
}

/// Shared health table plus counters.
#[derive(Debug)]
pub struct Health {
    config: HealthConfig,
    table: Mutex<BTreeMap<Target, State>>,
    /// When each tracked endpoint is due, and which are being probed (locked after `table`).
    schedule: Mutex<Schedule>,
    /// Per-process random key for the zone order, so no zone key sorts first on purpose.
    zone_order: std::collections::hash_map::RandomState,
    /// Rotates which zone starts each round of due probes.
    rotation: AtomicU64,
    /// Probes run.
    pub probes: AtomicU64,
    /// Probes that failed.
    pub probe_failures: AtomicU64,
    /// Probes refused by the policy, indexed by [`Refusal::index`].
    refused: [AtomicU64; 6],
    /// Other probers' verdicts, as of the last refresh.
    shared: Mutex<SharedView>,
    /// This prober's period for each of its endpoints, in thousandths of the interval.
    period_milli: AtomicU64,
    /// What this node last published per observation label, and when.
    published: Mutex<BTreeMap<String, (Vec<Endpoint>, Instant)>>,
    /// An observation publish is running (never two at once).
    publishing: std::sync::atomic::AtomicBool,
    /// The endpoints this node probes, kept from the index's changes.
    selection: Mutex<Selection>,
    /// Observation counters.
    pub observations: ObservationStats,
    /// The endpoint set and observations held, kept from the store's change feed.
    index: Mutex<ProbeIndex>,
}

/// What the prober reads from the store each refresh — the endpoints of the records held and
/// other probers' observations — kept from the store's change feed
/// ([`crate::store::DurableStore::take_changes`]) instead of decoding every live record each
/// interval under the store lock (issue 14): a refresh decodes only the records that changed
/// since the last one, off the store lock. The whole store is read only after a load or a
/// feed overflow ([`crate::store::Changes::Rebuild`]), one bucket per lock hold.
///
/// Liveness moves with the clock, not with changes, so the index keeps every record with a
/// body that is not a tombstone, each with its expiry, and the refresh filters on expiry as
/// the scan did. Each target keeps the (name hash, expiry) of every record naming it, so
/// replaying a change the rebuild already saw changes nothing (a rebuild runs while the
/// feed records). Two names with one 64-bit name hash naming the same target would share one
/// reference; at 10⁶ names the chance is about 10⁻⁸.
///
/// The index also says what changed for the [`Selection`] that follows it: the (zone, target)
/// pairs whose records changed since the last [`ProbeIndex::take_touched`], whether it was
/// rebuilt, and the earliest expiry among live targets, so the selection is brought up to date
/// in work proportional to the changes, not to the store. And it holds the selection itself:
/// each target's `Slot` carries the mark "this node probes it", so the targets are held once
/// (issue 14: at 10⁶ records, 2M targets, a second copy in the selection cost 105 MB).
///
/// Memory: one entry per (zone, target). Almost every target is an IPv4 one named by one
/// record, held as a 24-byte [`Packed`] entry in a sorted vector per zone ([`ZoneTargets`]);
/// the rest, and what changed since the zone was last packed, sit in a small B-tree beside
/// it. About 24 bytes a target after a rebuild, against 43 for the B-tree of 16-byte `Key`s
/// and 24-byte `Slot`s it replaces (85 MB at 10⁶ records, 2M targets) and 76 before that;
/// the test `the_selection_keeps_no_copy_of_the_targets_and_an_index_entry_is_compact` holds
/// it there.
#[derive(Debug, Default)]
pub struct ProbeIndex {
    /// Targets of endpoint records (not observations), by zone: the records naming each
    /// target, and whether this node probes it.
    endpoints: BTreeMap<ZoneId, ZoneTargets>,
    /// Observation records, by (bucket, name): the store's order, which the scan read them in.
    observations: BTreeMap<(u8, Box<str>), IndexedObservation>,
    /// (zone, target) pairs whose references changed since the last take (bounded by the
    /// store's feed: past it the store asks for a rebuild, which sets `rebuilt` instead).
    touched: BTreeSet<(ZoneId, Key)>,
    /// Rebuilt from the whole store since the last take.
    rebuilt: bool,
}

/// A probe target as the index keys it: an IPv4 target (the common case: every record of the
/// 10⁶-record bench) inline in 8 bytes, the others boxed, so a key is 16 bytes where a
/// [`Target`] is 32 (its host can hold a `String`). Orders like [`Target`] (the derived order
/// compares the variant first, and an IPv4 host sorts before IPv6 and names; then address,
/// port, transport), so the index reads targets in the order it always did, and the fair
/// fill of a capped selection ([`Health::choose`]) picks the same ones.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    /// An IPv4 target: address, port, transport.
    V4([u8; 4], u16, Transport),
    /// Any other target (never an IPv4 one, or the order above breaks).
    Other(Box<Target>),
}

const _: () = assert!(std::mem::size_of::<Key>() <= 16, "a key is half a Target");

impl Key {
    fn of(e: &Endpoint) -> Self {
        match e.host {
            Host::V4(a) => Key::V4(a, e.port, e.transport),
            _ => Key::Other(Box::new(target(e))),
        }
    }

    fn target(&self) -> std::borrow::Cow<'_, Target> {
        match self {
            Key::V4(a, port, transport) => {
                std::borrow::Cow::Owned((Host::V4(*a), *port, *transport))
            }
            Key::Other(t) => std::borrow::Cow::Borrowed(t),
        }
    }
}

/// One target's entry in one zone's B-tree (see [`ZoneTargets`]; most targets are
/// [`Packed`] instead): the (name hash, expiry) of each record naming it, and whether this
/// node probes it (the [`Selection`]'s mark, set and cleared only by it). The case of one
/// record is held inline: at 10⁶ records a `Vec` per target cost a heap block each (about
/// 64 MB over 2M targets). The mark shares the word of the variant's tag, so an entry is 24
/// bytes.
///
/// A marked entry whose last record went stays, with no references, until the selection has
/// seen the change and cleared the mark (the target was touched, so that is the next
/// [`Selection::update`]): the selection's count of marked entries stays true, and a record
/// rewritten with the same targets (taken out, put back) keeps its mark, so it is no change.
/// (A packed entry left so moves to the B-tree as such a `Slot`.)
#[derive(Clone, Debug, PartialEq, Eq)]
enum Slot {
    One { r: (u64, u64), mine: bool },
    Many { refs: Box<[(u64, u64)]>, mine: bool },
}

const _: () = assert!(
    std::mem::size_of::<Slot>() <= 24,
    "a slot stays as small as a Vec"
);

impl Slot {
    fn new(h: u64, expires_at_ms: u64) -> Self {
        Slot::One {
            r: (h, expires_at_ms),
            mine: false,
        }
    }

    fn from_refs(refs: Vec<(u64, u64)>, mine: bool) -> Self {
        match refs[..] {
            [r] => Slot::One { r, mine },
            _ => Slot::Many {
                refs: refs.into_boxed_slice(),
                mine,
            },
        }
    }

    fn as_slice(&self) -> &[(u64, u64)] {
        match self {
            Slot::One { r, .. } => std::slice::from_ref(r),
            Slot::Many { refs, .. } => refs,
        }
    }

    /// Until when the target is live: the latest expiry of the records naming it.
    fn live_until(&self) -> Option<u64> {
        self.as_slice().iter().map(|(_, exp)| *exp).max()
    }

    /// No record names the target (a marked entry waiting for the selection).
    fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    /// Whether this node probes the target.
    fn mine(&self) -> bool {
        match self {
            Slot::One { mine, .. } | Slot::Many { mine, .. } => *mine,
        }
    }

    fn set_mine(&mut self, to: bool) {
        match self {
            Slot::One { mine, .. } | Slot::Many { mine, .. } => *mine = to,
        }
    }

    /// Sets the expiry of name `h`'s reference, adding it if it is not there.
    fn upsert(&mut self, h: u64, expires_at_ms: u64) {
        if let Slot::One { r, .. } = self {
            if r.0 == h {
                r.1 = expires_at_ms;
                return;
            }
        }
        let mut refs = self.as_slice().to_vec();
        match refs.iter_mut().find(|(n, _)| *n == h) {
            Some(slot) => slot.1 = expires_at_ms,
            None => refs.push((h, expires_at_ms)),
        }
        *self = Slot::from_refs(refs, self.mine());
    }

    /// Drops name `h`'s reference; returns whether none is left.
    fn remove(&mut self, h: u64) -> bool {
        if self.as_slice().iter().any(|(n, _)| *n == h) {
            let refs: Vec<(u64, u64)> = self
                .as_slice()
                .iter()
                .filter(|(n, _)| *n != h)
                .copied()
                .collect();
            *self = Slot::from_refs(refs, self.mine());
        }
        self.is_empty()
    }
}

/// An IPv4 target named by exactly one record, as a [`ZoneTargets`] packs it: the (name hash,
/// expiry) of that record, the target, and two flags (this node probes it; the entry was
/// taken out since the zone was packed). 24 bytes, where the B-tree entry it replaces took a
/// 16-byte [`Key`], a 24-byte [`Slot`] and the tree's own overhead (43 bytes in all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Packed {
    r: (u64, u64),
    addr: [u8; 4],
    port: u16,
    transport: Transport,
    flags: u8,
}

const _: () = assert!(
    std::mem::size_of::<Packed>() <= 24,
    "a packed entry is a reference and a target"
);

impl Packed {
    /// This node probes the target (the [`Selection`]'s mark).
    const MINE: u8 = 1;
    /// Taken out: skipped by every read, reused if the target comes back before the next
    /// pack, dropped by it.
    const GONE: u8 = 2;

    /// The order of [`Key::V4`] (address, port, transport), which is the order of [`Key`]
    /// among IPv4 targets.
    fn order(&self) -> ([u8; 4], u16, Transport) {
        (self.addr, self.port, self.transport)
    }

    fn key(&self) -> Key {
        Key::V4(self.addr, self.port, self.transport)
    }

    fn live(&self) -> bool {
        self.flags & Packed::GONE == 0
    }

    fn mine(&self) -> bool {
        self.flags & Packed::MINE != 0
    }
}

/// Changes to a zone (entries added to its B-tree, packed entries taken out) tolerated
/// before it is packed again on top of a quarter of its size: packing costs a pass over the
/// zone, so this many changes pay for it, and a zone that changes keeps most of its entries
/// packed.
const REPACK_SLACK: usize = 64;

/// One zone's targets: the [`Packed`] ones in a vector sorted by target, and the others in a
/// B-tree (`delta`): targets that are not IPv4, targets several records name, a marked entry
/// left with no record (see [`Slot`]), and targets added since the zone was last packed. A
/// target is in at most one of the two (a packed entry marked gone does not count). Read in
/// target order, the two merged: the order the B-tree alone gave, so the fair fill of a capped
/// selection picks the same targets as before.
///
/// A sorted vector cannot take an insertion in the middle cheaply (a zone may hold 10⁶
/// targets), so changes go to the B-tree, and taken-out packed entries are only marked; the
/// zone is packed again (the B-tree's packable entries merged into a new vector) by
/// [`ZoneTargets::tidy`] once the changes since the last pack pass a quarter of its size plus
/// [`REPACK_SLACK`], so the work per change stays constant on average. (A rebuild of the
/// index does not tidy as it goes: it packs every zone once at the end.)
#[derive(Debug, Default)]
struct ZoneTargets {
    packed: Vec<Packed>,
    /// Packed entries marked gone.
    gone: usize,
    delta: BTreeMap<Key, Slot>,
    /// Changes since the last pack.
    loose: usize,
}

/// The items of two sorted iterators in one sorted sequence: `a`'s next item comes first when
/// `a_first` says it sorts strictly before `b`'s, so on a tie `b`'s goes first.
fn merge_sorted<T>(
    a: impl Iterator<Item = T>,
    b: impl Iterator<Item = T>,
    a_first: impl Fn(&T, &T) -> bool,
) -> impl Iterator<Item = T> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => a_first(x, y),
            (x, _) => x.is_some(),
        };
        if take_a {
            a.next()
        } else {
            b.next()
        }
    })
}

/// Where `k` would be in `packed` (only IPv4 keys are ever packed).
fn find_packed(packed: &[Packed], k: &Key) -> Option<usize> {
    let Key::V4(a, port, transport) = k else {
        return None;
    };
    packed
        .binary_search_by(|e| e.order().cmp(&(*a, *port, *transport)))
        .ok()
}

/// One target's entry in a [`ZoneTargets`], to read and mark in place.
enum SlotMut<'a> {
    Packed(&'a mut Packed),
    Delta(&'a mut Slot),
}

impl SlotMut<'_> {
    fn live_until(&self) -> Option<u64> {
        match self {
            SlotMut::Packed(p) => Some(p.r.1),
            SlotMut::Delta(s) => s.live_until(),
        }
    }

    fn mine(&self) -> bool {
        match self {
            SlotMut::Packed(p) => p.mine(),
            SlotMut::Delta(s) => s.mine(),
        }
    }

    fn set_mine(&mut self, to: bool) {
        match self {
            SlotMut::Packed(p) if to => p.flags |= Packed::MINE,
            SlotMut::Packed(p) => p.flags &= !Packed::MINE,
            SlotMut::Delta(s) => s.set_mine(to),
        }
    }

    /// No record names the target (only ever a B-tree entry: see [`ZoneTargets`]).
    fn is_empty(&self) -> bool {
        match self {
            SlotMut::Packed(_) => false,
            SlotMut::Delta(s) => s.is_empty(),
        }
    }
}

/// One target's entry, read in place (see [`ZoneTargets::iter`]).
#[derive(Clone, Copy)]
enum At<'a> {
    Packed(&'a Packed),
    Delta(&'a Key, &'a Slot),
}

impl At<'_> {
    /// The target's key (built for a packed entry: an IPv4 key holds no heap data).
    fn key(&self) -> std::borrow::Cow<'_, Key> {
        match self {
            At::Packed(p) => std::borrow::Cow::Owned(p.key()),
            At::Delta(k, _) => std::borrow::Cow::Borrowed(*k),
        }
    }

    fn target(&self) -> Target {
        match self {
            At::Packed(p) => (Host::V4(p.addr), p.port, p.transport),
            At::Delta(k, _) => k.target().into_owned(),
        }
    }

    fn mine(&self) -> bool {
        match self {
            At::Packed(p) => p.mine(),
            At::Delta(_, s) => s.mine(),
        }
    }

    #[cfg(test)]
    fn live_until(&self) -> Option<u64> {
        match self {
            At::Packed(p) => Some(p.r.1),
            At::Delta(_, s) => s.live_until(),
        }
    }
}

impl ZoneTargets {
    /// Targets held (marked entries no record names included).
    fn len(&self) -> usize {
        self.packed.len() - self.gone + self.delta.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get_mut(&mut self, k: &Key) -> Option<SlotMut<'_>> {
        if let Some(s) = self.delta.get_mut(k) {
            return Some(SlotMut::Delta(s));
        }
        let i = find_packed(&self.packed, k)?;
        let p = &mut self.packed[i];
        p.live().then_some(SlotMut::Packed(p))
    }

    /// Sets the expiry of name `h`'s reference to `k`, adding it (and the target) if it is
    /// not there.
    fn upsert(&mut self, k: &Key, h: u64, expires_at_ms: u64) {
        if let Some(s) = self.delta.get_mut(k) {
            s.upsert(h, expires_at_ms);
            return;
        }
        if let Some(i) = find_packed(&self.packed, k) {
            let p = &mut self.packed[i];
            if !p.live() {
                // Back before the next pack: the entry is reused.
                *p = Packed {
                    r: (h, expires_at_ms),
                    flags: 0,
                    ..*p
                };
                self.gone -= 1;
                return;
            }
            if p.r.0 == h {
                p.r.1 = expires_at_ms;
                return;
            }
            // A second record names it: it moves to the B-tree, mark and all.
            let slot = Slot::from_refs(vec![p.r, (h, expires_at_ms)], p.mine());
            p.flags |= Packed::GONE;
            self.gone += 1;
            self.delta.insert(k.clone(), slot);
        } else {
            self.delta.insert(k.clone(), Slot::new(h, expires_at_ms));
        }
        self.loosen();
    }

    /// Drops name `h`'s reference to `k`; the target goes with its last reference, unless
    /// it is marked (it stays, with none, for the selection to see: see [`Slot`]).
    fn remove_ref(&mut self, k: &Key, h: u64) {
        if let Some(s) = self.delta.get_mut(k) {
            if s.remove(h) && !s.mine() {
                self.delta.remove(k);
                self.loosen();
            }
            return;
        }
        let Some(i) = find_packed(&self.packed, k) else {
            return;
        };
        let p = &mut self.packed[i];
        if !p.live() || p.r.0 != h {
            return;
        }
        p.flags |= Packed::GONE;
        self.gone += 1;
        if p.mine() {
            self.delta
                .insert(k.clone(), Slot::from_refs(Vec::new(), true));
        }
        self.loosen();
    }

    /// Takes the target `k` out, whatever names it.
    fn remove(&mut self, k: &Key) {
        if self.delta.remove(k).is_none() {
            let Some(i) = find_packed(&self.packed, k) else {
                return;
            };
            let p = &mut self.packed[i];
            if !p.live() {
                return;
            }
            p.flags |= Packed::GONE;
            self.gone += 1;
        }
        self.loosen();
    }

    /// Calls `f` on every target's entry (in no particular order) and takes out those it
    /// returns `false` for.
    fn retain(&mut self, mut f: impl FnMut(&Key, SlotMut<'_>) -> bool) {
        let mut taken = 0;
        for p in self.packed.iter_mut().filter(|p| p.live()) {
            let k = p.key();
            if !f(&k, SlotMut::Packed(&mut *p)) {
                p.flags |= Packed::GONE;
                taken += 1;
            }
        }
        let before = self.delta.len();
        self.delta.retain(|k, s| f(k, SlotMut::Delta(s)));
        self.gone += taken;
        self.loose += taken + (before - self.delta.len());
    }

    /// Every target's entry, in target order.
    fn iter(&self) -> impl Iterator<Item = At<'_>> + '_ {
        merge_sorted(
            self.packed.iter().filter(|p| p.live()).map(At::Packed),
            self.delta.iter().map(|(k, s)| At::Delta(k, s)),
            |a, b| a.key() < b.key(),
        )
    }

    fn loosen(&mut self) {
        self.loose += 1;
    }

    /// Packs the zone if enough changed since the last pack (see [`ZoneTargets`]).
    fn tidy(&mut self) {
        if self.loose > self.len() / 4 + REPACK_SLACK {
            self.pack();
        }
    }

    /// Packs the zone: every IPv4 target named by one record into one sorted vector of
    /// exactly its size (gone entries dropped), the rest into a B-tree built from sorted
    /// entries (whose nodes are full). One zone's entries at a time are in flight.
    fn pack(&mut self) {
        let old = std::mem::take(&mut self.packed);
        let mut moved = Vec::new();
        let mut stay = Vec::new();
        for (k, s) in std::mem::take(&mut self.delta) {
            match (&k, &s) {
                (Key::V4(addr, port, transport), Slot::One { r, mine }) => moved.push(Packed {
                    r: *r,
                    addr: *addr,
                    port: *port,
                    transport: *transport,
                    flags: if *mine { Packed::MINE } else { 0 },
                }),
                _ => stay.push((k, s)),
            }
        }
        let mut packed = Vec::with_capacity(old.len() - self.gone + moved.len());
        packed.extend(merge_sorted(
            old.into_iter().filter(Packed::live),
            moved.into_iter(),
            |a, b| a.order() < b.order(),
        ));
        self.packed = packed;
        self.gone = 0;
        self.delta = stay.into_iter().collect();
        self.loose = 0;
    }
}

/// One observation record, decoded once.
#[derive(Clone, Debug)]
struct IndexedObservation {
    zone: ZoneId,
    seq: u64,
    expires_at_ms: u64,
    verdicts: Vec<(Target, HealthState)>,
}

fn obs_key(name: &str) -> (u8, Box<str>) {
    (dpin_protocol::digest::bucket_of(name), name.into())
}

/// A stable 64-bit hash of a name (blake3, so equal on every run and platform).
fn name_hash(name: &str) -> u64 {
    let h = blake3::hash(name.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b)
}

impl ProbeIndex {
    /// Takes `name`'s entry out of the index (what an `old` entry contributed).
    fn remove(&mut self, name: &str, entry: &dpin_protocol::Entry) {
        if self.observations.remove(&obs_key(name)).is_some() {
            return;
        }
        let Some(r) = entry.record() else { return };
        let Some(eps) = r.endpoints() else { return };
        let zone_id = r.body.zone;
        let Some(zone) = self.endpoints.get_mut(&zone_id) else {
            return;
        };
        let h = name_hash(name);
        let keys: Vec<Key> = eps.iter().map(Key::of).collect();
        for k in &keys {
            zone.remove_ref(k, h);
        }
        if !self.rebuilt {
            zone.tidy();
        }
        if zone.is_empty() {
            self.endpoints.remove(&zone_id);
        }
        for k in keys {
            self.touch(zone_id, k);
        }
    }

    /// Puts `name`'s entry into the index, replacing what the same name put there before
    /// for the same targets (so a replay is harmless).
    fn insert(&mut self, name: &str, entry: &dpin_protocol::Entry) {
        if entry.bytes.is_none() || entry.tombstone {
            self.observations.remove(&obs_key(name));
            return;
        }
        let Some(r) = entry.record() else { return };
        if let Some(verdicts) = parse_observation(&r) {
            self.observations.insert(
                obs_key(name),
                IndexedObservation {
                    zone: r.body.zone,
                    seq: r.body.seq,
                    expires_at_ms: r.body.expires_at_ms,
                    verdicts,
                },
            );
            return;
        }
        let Some(eps) = r.endpoints() else { return };
        let h = name_hash(name);
        let exp = r.body.expires_at_ms;
        let keys: Vec<Key> = eps.iter().map(Key::of).collect();
        let zone = self.endpoints.entry(r.body.zone).or_default();
        for k in &keys {
            zone.upsert(k, h, exp);
        }
        if !self.rebuilt {
            zone.tidy();
        }
        for k in keys {
            self.touch(r.body.zone, k);
        }
    }

    /// Records that `k` changed in `zone` (not after a rebuild: the whole selection is
    /// recomputed then, and recording every pair would only cost memory).
    fn touch(&mut self, zone: ZoneId, k: Key) {
        if !self.rebuilt {
            self.touched.insert((zone, k));
        }
    }

    /// The (zone, target) pairs touched since the last call, and whether the index was
    /// rebuilt meanwhile (then the pairs say nothing: everything may have changed).
    fn take_touched(&mut self) -> (bool, BTreeSet<(ZoneId, Key)>) {
        (
            std::mem::take(&mut self.rebuilt),
            std::mem::take(&mut self.touched),
        )
    }

    /// The targets this node probes (marked by the [`Selection`]), by zone, each zone's in
    /// target order: read in place, never copied whole (see [`Health::capped`]). Zones
    /// without one are listed with an empty iterator.
    fn mine(&self) -> impl Iterator<Item = (ZoneId, impl Iterator<Item = Target> + '_)> + '_ {
        self.endpoints.iter().map(|(zone, targets)| {
            let marked = targets.iter().filter(At::mine).map(|at| at.target());
            (*zone, marked)
        })
    }

    /// A copy of [`ProbeIndex::mine`], zones without a target left out (what is handed to
    /// the prober when it fits under its cap).
    fn mine_by_zone(&self) -> BTreeMap<ZoneId, BTreeSet<Target>> {
        self.mine()
            .filter_map(|(zone, targets)| {
                let set: BTreeSet<Target> = targets.collect();
                (!set.is_empty()).then_some((zone, set))
            })
            .collect()
    }

    /// Applies one change of the store (old winner out, new winner in).
    pub fn apply(&mut self, change: &crate::store::Change) {
        if let Some(old) = &change.old {
            if old.bytes.is_some() && !old.tombstone && old.bytes != change.new.bytes {
                self.remove(&change.name, old);
            }
        }
        self.insert(&change.name, &change.new);
    }

    /// Brings the index up to date with `node`'s store: the changes since the last call, or
    /// a rebuild from the whole store (one bucket per store-lock hold; changes made meanwhile
    /// are recorded by the feed and applied after).
    pub fn refresh(&mut self, node: &Node) {
        self.refresh_from(node.shared_store());
    }

    /// [`ProbeIndex::refresh`] from the store behind `store`.
    pub fn refresh_from(&mut self, store: &crate::store::SharedStore) {
        let changes = crate::store::write(store).take_changes();
        let changes = match changes {
            crate::store::Changes::Since(c) => c,
            crate::store::Changes::Rebuild => {
                *self = ProbeIndex {
                    rebuilt: true,
                    ..ProbeIndex::default()
                };
                for bucket in 0..=u8::MAX {
                    let entries: Vec<(Box<str>, dpin_protocol::Entry)> = crate::store::read(store)
                        .bucket_entries(bucket)
                        .into_iter()
                        .filter(|(_, e)| e.bytes.is_some() && !e.tombstone)
                        .map(|(n, e)| (n.into(), e.clone()))
                        .collect();
                    for (name, e) in entries {
                        self.insert(&name, &e);
                    }
                }
                self.pack();
                match crate::store::write(store).take_changes() {
                    crate::store::Changes::Since(c) => c,
                    // Past the feed's bound while rebuilding: the next refresh rebuilds.
                    crate::store::Changes::Rebuild => Vec::new(),
                }
            }
        };
        for c in &changes {
            self.apply(c);
        }
    }

    /// Packs every zone ([`ZoneTargets::pack`]) after a rebuild, which put what it read into
    /// the zones' B-trees (packed along the way only as they grew).
    fn pack(&mut self) {
        for targets in self.endpoints.values_mut() {
            targets.pack();
        }
    }

    /// Endpoints of the records live at `now`, by zone (what the scan of every live record
    /// gave; the tests' reference for the index and the selection).
    #[cfg(test)]
    fn live_endpoints(&self, now: u64) -> BTreeMap<ZoneId, BTreeSet<Target>> {
        let mut by_zone: BTreeMap<ZoneId, BTreeSet<Target>> = BTreeMap::new();
        for (zone, targets) in &self.endpoints {
            let live: BTreeSet<Target> = targets
                .iter()
                .filter(|at| at.live_until().is_some_and(|u| u > now))
                .map(|at| at.target())
                .collect();
            if !live.is_empty() {
                by_zone.insert(*zone, live);
            }
        }
        by_zone
    }
}

/// After how many probe intervals an endpoint the probe policy refused (an IP literal: the
/// verdict cannot change while the process runs) is looked at again, to count it again on
/// `/metrics` (20 s at the default interval).
pub const REFUSED_RECHECK_INTERVALS: u32 = 10;

/// How often, at most, the selection is recomputed from the whole index because a live
/// endpoint's records expired (expiry moves with the clock, not with changes). Until then an
/// expired endpoint may stay probed: probing a name's old endpoint a minute longer is
/// harmless, and answers never use expired records whatever the prober does.
pub const EXPIRY_RECHECK_MS: u64 = 60_000;

/// How often, at most, a changed selection larger than [`HealthConfig::max_endpoints`] is
/// handed to the prober again: filling the capped set fairly reads the whole selection, so
/// under a steady stream of changes it is not redone every interval. A selection within the
/// cap is handed over at every change.
pub const RETRACK_OVER_CAP_MS: u64 = 30_000;

/// The endpoints this node probes (rendezvous over the live membership, see the module docs),
/// kept up to date from the [`ProbeIndex`]'s changes: a refresh costs the targets that changed,
/// and the whole index is read only when the membership changes, after an index rebuild, or
/// when a live endpoint's records expire (at most every [`EXPIRY_RECHECK_MS`]). Before, every
/// refresh (each probe interval) listed, hashed and copied every endpoint the store held: at
/// 10⁶ records, two thirds of a core with nothing happening.
///
/// The selection is a mark on the index's entries, not a set of its own: this node probes
/// every target when it is alone or `k` covers the membership, and a second copy of 2M targets
/// cost 105 MB at 10⁶ records (issue 14). What it keeps is the count of marked entries and
/// when the marks last changed. Handing them over ([`Selection::hand_over`]) reads the index:
/// only when they changed, at most once per probe interval (every [`RETRACK_OVER_CAP_MS`] over
/// the cap), and over the cap only as far as the capped part reaches.
#[derive(Debug, Default)]
pub struct Selection {
    /// The membership it was computed under (sorted), as ids and as bytes.
    members: Vec<PeerId>,
    member_bytes: Vec<Vec<u8>>,
    /// Probers per endpoint (`k`, 0: every member).
    k: usize,
    /// This node's id as bytes.
    me: Vec<u8>,
    /// Entries of the index marked this node's.
    mine_len: usize,
    /// Bumped whenever the marks change.
    version: u64,
    /// The earliest time a selected-live endpoint stops being live, and when the whole index
    /// was last read.
    next_expiry: u64,
    last_full: u64,
    /// The version last handed to the prober, and when (Unix ms).
    handed: Option<(u64, u64)>,
    /// Probers of the endpoints other nodes sent verdicts on, under `members` (only those:
    /// bounded by the observations held).
    observed_probers: HashMap<Target, Vec<PeerId>>,
    /// Endpoints examined (rendezvous-hashed) by refreshes so far: what a refresh costs.
    examined: u64,
}

impl Selection {
    /// Brings the selection (the marks in `index`) up to date with `index` at `now`, for the
    /// sorted `members`, this node `me` (one of them) and `k` probers per endpoint. Returns
    /// whether the marks changed.
    pub fn update(
        &mut self,
        index: &mut ProbeIndex,
        members: &[PeerId],
        me: PeerId,
        k: usize,
        now: u64,
    ) -> bool {
        let (rebuilt, touched) = index.take_touched();
        let me = me.to_bytes();
        let same_rule = self.k == k && self.me == me;
        let same_members = self.members == members && same_rule;
        // A membership change under the same rule is applied as a change (who joined, who
        // left), not by ranking every member for every endpoint again.
        let mut delta = None;
        if !same_members {
            let new: Vec<Vec<u8>> = members.iter().map(|p| p.to_bytes()).collect();
            if same_rule && self.last_full != 0 {
                let old: BTreeSet<&[u8]> = self.member_bytes.iter().map(Vec::as_slice).collect();
                let new_set: BTreeSet<&[u8]> = new.iter().map(Vec::as_slice).collect();
                let moved = |a: &BTreeSet<&[u8]>, b: &BTreeSet<&[u8]>| -> Vec<Vec<u8>> {
                    a.difference(b).map(|m| m.to_vec()).collect()
                };
                delta = Some((moved(&new_set, &old), moved(&old, &new_set)));
            }
            self.members = members.to_vec();
            self.member_bytes = new;
            self.k = k;
            self.me = me;
            self.observed_probers.clear();
        }
        let expired =
            now >= self.next_expiry && now.saturating_sub(self.last_full) >= EXPIRY_RECHECK_MS;
        if rebuilt || expired || self.last_full == 0 || (!same_members && delta.is_none()) {
            let started = std::time::Instant::now();
            self.recompute(index, now);
            tracing::debug!(
                rebuilt,
                members_changed = !same_members,
                expired,
                members = members.len(),
                marked = self.mine_len,
                ms = started.elapsed().as_millis() as u64,
                "prober selection recomputed"
            );
            return true;
        }
        if let Some((joined, left)) = delta {
            let started = std::time::Instant::now();
            let changed = self.reselect(index, &joined, &left, now);
            tracing::debug!(
                joined = joined.len(),
                left = left.len(),
                members = members.len(),
                marked = self.mine_len,
                changed,
                ms = started.elapsed().as_millis() as u64,
                "prober selection moved with the membership"
            );
            // The touched entries are examined below all the same (cheap, and they may
            // have changed their expiry).
        }
        let mut changed = false;
        for (zone, key) in touched {
            self.examined += 1;
            // Gone from the index: it was not marked (a marked entry stays until seen here).
            let Some(targets) = index.endpoints.get_mut(&zone) else {
                continue;
            };
            let Some(mut slot) = targets.get_mut(&key) else {
                continue;
            };
            let until = slot.live_until().filter(|u| *u > now);
            if let Some(u) = until {
                self.next_expiry = self.next_expiry.min(u);
            }
            let probe = until.is_some() && self.probes(&key.target());
            if probe != slot.mine() {
                slot.set_mine(probe);
                if probe {
                    self.mine_len += 1;
                } else {
                    self.mine_len -= 1;
                }
                changed = true;
            }
            if slot.is_empty() {
                targets.remove(&key);
                targets.tidy();
                if targets.is_empty() {
                    index.endpoints.remove(&zone);
                }
            }
        }
        if changed {
            self.version += 1;
        }
        changed
    }

    /// Whether this node is one of `t`'s probers.
    fn probes(&self, t: &Target) -> bool {
        self.probes_key(&target_key(t))
    }

    /// Whether this node is one of the probers of the target whose [`target_key`] is `key`:
    /// exactly `probers_of(..).contains(me)`, without ranking the whole membership. It counts
    /// the members that outrank this node and stops at `k` of them.
    fn probes_key(&self, key: &[u8; 32]) -> bool {
        if self.k == 0 {
            return self.member_bytes.contains(&self.me);
        }
        self.probes_ranked(key, &dpin_protocol::blob::weight(key, &self.me), &[])
    }

    /// [`Selection::probes_key`] with this node's weight for `key` (`mine`) and some members'
    /// (`known`) already computed, so they are not hashed again.
    fn probes_ranked(&self, key: &[u8; 32], mine: &[u8; 32], known: &[(&[u8], [u8; 32])]) -> bool {
        if self.k == 0 {
            return self.member_bytes.contains(&self.me);
        }
        let mut above = 0;
        let mut member = false;
        for m in &self.member_bytes {
            if *m == self.me {
                member = true;
                continue;
            }
            let w = match known.iter().find(|(k, _)| *k == m.as_slice()) {
                Some((_, w)) => *w,
                None => dpin_protocol::blob::weight(key, m),
            };
            if w > *mine {
                above += 1;
                if above >= self.k {
                    return false;
                }
            }
        }
        member
    }

    /// Moves the marks with a membership change (`joined`, `left`; `self` already holds the
    /// new membership), ranking only what the change can move. Rendezvous order is per pair
    /// (endpoint, member), so a member that joins can only take an endpoint from this node
    /// if it outranks this node there, and one that leaves can only hand it one if it
    /// outranked this node there: an endpoint this node probes is examined only against the
    /// members that joined, one it does not only against those that left, and it is ranked
    /// in full only when one of them outranks this node. A node joining a network of N
    /// members therefore costs each node about k/N of its endpoints, not all of them times
    /// N + 1 hashes (at 10⁶ records and 6 members, one join held each node's prober for
    /// 12-13 s). Returns whether the marks changed.
    fn reselect(
        &mut self,
        index: &mut ProbeIndex,
        joined: &[Vec<u8>],
        left: &[Vec<u8>],
        now: u64,
    ) -> bool {
        let mut changed = false;
        let mut len = self.mine_len;
        let mut examined = 0;
        // The movers' weights, computed once per endpoint and reused by the full ranking.
        let mut weights: Vec<(&[u8], [u8; 32])> = Vec::new();
        for targets in index.endpoints.values_mut() {
            targets.retain(|key, mut slot| {
                let live = slot.live_until().is_some_and(|u| u > now);
                let was = slot.mine();
                let movers = if was { joined } else { left };
                let probe = live
                    && if movers.is_empty() || self.k == 0 {
                        was || self.k == 0
                    } else {
                        examined += 1;
                        let tk = target_key(&key.target());
                        let mine = dpin_protocol::blob::weight(&tk, &self.me);
                        weights.clear();
                        weights.extend(
                            movers
                                .iter()
                                .map(|m| (m.as_slice(), dpin_protocol::blob::weight(&tk, m))),
                        );
                        if weights.iter().any(|(_, w)| *w > mine) {
                            self.probes_ranked(&tk, &mine, &weights)
                        } else {
                            was
                        }
                    };
                if probe != was {
                    slot.set_mine(probe);
                    changed = true;
                    if probe {
                        len += 1;
                    } else {
                        len -= 1;
                    }
                }
                !slot.is_empty()
            });
            targets.tidy();
        }
        index.endpoints.retain(|_, targets| !targets.is_empty());
        self.mine_len = len;
        self.examined += examined;
        if changed {
            self.version += 1;
        }
        changed
    }

    /// Reads the whole index and marks it again (dropping entries no record names).
    fn recompute(&mut self, index: &mut ProbeIndex, now: u64) {
        let mut next_expiry = u64::MAX;
        let mut len = 0;
        let mut examined = 0;
        for targets in index.endpoints.values_mut() {
            targets.retain(|key, mut slot| {
                let until = slot.live_until().unwrap_or(0);
                let probe = until > now && {
                    next_expiry = next_expiry.min(until);
                    examined += 1;
                    self.probes(&key.target())
                };
                slot.set_mine(probe);
                len += usize::from(probe);
                !slot.is_empty()
            });
            targets.tidy();
        }
        index.endpoints.retain(|_, targets| !targets.is_empty());
        self.mine_len = len;
        self.examined += examined;
        self.next_expiry = next_expiry;
        self.last_full = now.max(1);
        self.version += 1;
    }

    /// The endpoints this node probes (marked in `index`), by zone, if they changed since
    /// they were last handed over and may be handed over now (see [`RETRACK_OVER_CAP_MS`]).
    /// Over the cap, `capped` picks the part the prober keeps (see [`Health::capped`]).
    fn hand_over(
        &mut self,
        index: &ProbeIndex,
        cap: usize,
        now: u64,
        capped: impl FnOnce(&ProbeIndex) -> BTreeMap<ZoneId, BTreeSet<Target>>,
    ) -> Option<BTreeMap<ZoneId, BTreeSet<Target>>> {
        let due = match self.handed {
            None => true,
            Some((v, _)) if v == self.version => false,
            Some((_, at)) => self.mine_len <= cap || now.saturating_sub(at) >= RETRACK_OVER_CAP_MS,
        };
        if !due {
            return None;
        }
        self.handed = Some((self.version, now));
        Some(if self.mine_len <= cap {
            index.mine_by_zone()
        } else {
            capped(index)
        })
    }

    /// Probers of each endpoint in `observed` (cached while the membership stays; the cache
    /// keeps only the endpoints observed this time).
    fn probers_of_observed(&mut self, observed: &[Observed]) -> HashMap<Target, Vec<PeerId>> {
        let mut out: HashMap<Target, Vec<PeerId>> = HashMap::new();
        for t in observed
            .iter()
            .flat_map(|o| o.verdicts.iter().map(|(t, _)| t))
        {
            if out.contains_key(t) {
                continue;
            }
            let probers = match self.observed_probers.get(t) {
                Some(p) => p.clone(),
                None => probers_of(t, &self.member_bytes, self.k)
                    .into_iter()
                    .filter_map(|b| PeerId::from_bytes(b).ok())
                    .collect(),
            };
            out.insert(t.clone(), probers);
        }
        self.observed_probers.clone_from(&out);
        out
    }
}

/// Other probers' verdicts per endpoint (see [`combine`]).
#[derive(Debug, Default)]
struct SharedView {
    /// Remote (healthy, unhealthy) verdicts of trusted probers.
    votes: HashMap<Target, (u8, u8)>,
    /// Unhealthy verdicts needed: `min(2, probers)` in this node's view, the same for every
    /// endpoint (every endpoint has `min(k, members)` probers); 0 before the first refresh,
    /// which [`combine`] reads as 1.
    quorum: u8,
}

/// Counters of shared observations (`/metrics`). Verdicts are read from the store once per
/// refresh (probe interval), so the accepted and ignored counts grow by the verdicts held at
/// each refresh.
#[derive(Debug, Default)]
pub struct ObservationStats {
    /// Verdicts taken from other probers' observation records (per refresh).
    pub accepted: AtomicU64,
    /// Verdicts ignored: the author is not live or not a prober of that endpoint (per refresh).
    pub ignored_not_prober: AtomicU64,
    /// Verdicts ignored: the record claims to live over [`MAX_OBSERVATION_LIFETIME_MS`].
    pub ignored_too_long: AtomicU64,
    /// Observation records this node published.
    pub published: AtomicU64,
    /// Observation records this node could not sign or publish.
    pub publish_failures: AtomicU64,
    /// Verdicts this node had but could not publish ([`MAX_OBSERVATION_RECORDS`] full).
    pub unpublished: AtomicU64,
}

impl Health {
    /// A table with `config`.
    pub fn new(config: HealthConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            table: Mutex::new(BTreeMap::new()),
            schedule: Mutex::new(Schedule::default()),
            zone_order: std::collections::hash_map::RandomState::new(),
            rotation: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            probe_failures: AtomicU64::new(0),
            refused: Default::default(),
            shared: Mutex::new(SharedView::default()),
            period_milli: AtomicU64::new(1000),
            published: Mutex::new(BTreeMap::new()),
            publishing: std::sync::atomic::AtomicBool::new(false),
            selection: Mutex::new(Selection::default()),
            observations: ObservationStats::default(),
            index: Mutex::new(ProbeIndex::default()),
        })
    }

    /// How often unchanged observations are republished: five probe intervals, at least 1 s
    /// (10 s at the default 2 s). They expire after three refreshes.
    pub fn observation_refresh(&self) -> Duration {
        (self.config.interval * 5).max(Duration::from_secs(1))
    }

    /// The settings.
    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Target, State>> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What this node believes about `e` (untracked endpoints are unknown).
    pub fn state(&self, e: &Endpoint) -> HealthState {
        if !self.config.enabled {
            return HealthState::Unknown;
        }
        let t = target(e);
        let own = self.lock().get(&t).map(|s| s.health);
        let shared = self
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (healthy, unhealthy) = shared.votes.get(&t).copied().unwrap_or((0, 0));
        combine(own, healthy, unhealthy, shared.quorum)
    }

    /// Sets the verdicts other probers shared (healthy, unhealthy votes per endpoint) and
    /// the quorum, as a probe round's tally would.
    #[cfg(test)]
    pub(crate) fn set_shared_votes_for_tests<'a>(
        &self,
        votes: impl IntoIterator<Item = (&'a Endpoint, (u8, u8))>,
        quorum: u8,
    ) {
        *self
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = SharedView {
            votes: votes.into_iter().map(|(e, v)| (target(e), v)).collect(),
            quorum,
        };
    }

    /// Whether the last probe of `e` succeeded.
    pub fn is_healthy(&self, e: &Endpoint) -> bool {
        self.state(e) == HealthState::Healthy
    }

    fn count_refusal(&self, r: Refusal) {
        self.refused[r.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Probes refused for `r` so far.
    pub fn refused(&self, r: Refusal) -> u64 {
        self.refused[r.index()].load(Ordering::Relaxed)
    }

    /// Zones in this process's fair order (keyed random hash, not key order).
    fn fair_zone_order<T>(&self, zones: impl IntoIterator<Item = (ZoneId, T)>) -> Vec<(ZoneId, T)> {
        let mut v: Vec<(u64, ZoneId, T)> = zones
            .into_iter()
            .map(|(z, t)| (self.zone_order.hash_one(z), z, t))
            .collect();
        v.sort_by_key(|a| (a.0, a.1));
        v.into_iter().map(|(_, z, t)| (z, t)).collect()
    }

    /// Up to [`HealthConfig::max_endpoints`] of `by_zone`'s targets, one per zone per round in
    /// the fair zone order (a target two zones name goes to the first that reaches it).
    fn choose<I: Iterator<Item = Target>>(
        &self,
        by_zone: impl IntoIterator<Item = (ZoneId, I)>,
    ) -> BTreeMap<Target, ZoneId> {
        let mut queues = self.fair_zone_order(by_zone);
        let mut chosen: BTreeMap<Target, ZoneId> = BTreeMap::new();
        while chosen.len() < self.config.max_endpoints && !queues.is_empty() {
            queues.retain_mut(|(zone, q)| {
                if chosen.len() >= self.config.max_endpoints {
                    return true;
                }
                // Skip endpoints another zone already claimed, so each round adds one per zone.
                for t in q.by_ref() {
                    if let std::collections::btree_map::Entry::Vacant(v) = chosen.entry(t) {
                        v.insert(*zone);
                        return true;
                    }
                }
                false
            });
        }
        chosen
    }

    /// The part of `by_zone` (this node's targets, by zone) that [`Health::track`] would keep,
    /// grouped by the zone each target goes to, read in place: a selection over the cap (2M
    /// endpoints at 10⁶ records) is not copied whole to be handed over (that was a transient
    /// copy of about 115 MB), and only as far as the capped part reaches.
    pub fn capped<I: Iterator<Item = Target>>(
        &self,
        by_zone: impl IntoIterator<Item = (ZoneId, I)>,
    ) -> BTreeMap<ZoneId, BTreeSet<Target>> {
        let mut out: BTreeMap<ZoneId, BTreeSet<Target>> = BTreeMap::new();
        for (t, zone) in self.choose(by_zone) {
            out.entry(zone).or_default().insert(t);
        }
        out
    }

    /// Replaces the tracked set with the endpoints of `by_zone` (keeping known state), bounded
    /// by [`HealthConfig::max_endpoints`] and filled round-robin over zones.
    ///
    /// The table is built anew from the chosen endpoints in order, each taking its old state
    /// if it had one (both are sorted: one merge pass): a B-tree built from sorted entries has
    /// full nodes, where inserting them one by one in order left the nodes about half full
    /// (at the cap, 100k endpoints, about 7 MB more).
    pub fn track(&self, by_zone: BTreeMap<ZoneId, BTreeSet<Target>>, now: Instant) {
        let chosen = self.choose(by_zone.into_iter().map(|(z, set)| (z, set.into_iter())));
        let mut table = self.lock();
        let mut sched = self.schedule();
        let mut rng = rand::thread_rng();
        let mut old = std::mem::take(&mut *table).into_iter().peekable();
        *table = chosen
            .into_iter()
            .map(|(t, zone)| {
                while old.next_if(|(o, _)| *o < t).is_some() {}
                let state = match old.next_if(|(o, _)| *o == t) {
                    Some((_, state)) => State { zone, ..state },
                    None => {
                        // Spread first probes over half an interval.
                        let next_due = now + self.config.interval.mul_f64(rng.gen_range(0.0..0.5));
                        sched.queue.push(Reverse((next_due, t.clone())));
                        State {
                            health: HealthState::Unknown,
                            failures: 0,
                            next_due,
                            in_flight: false,
                            zone,
                        }
                    }
                };
                (t, state)
            })
            .collect();
        drop(old);
        // Entries of endpoints no longer tracked are stale: rebuild once they dominate.
        if sched.queue.len() > 2 * table.len() + 1024 {
            sched.queue = table
                .iter()
                .filter(|(_, s)| !s.in_flight)
                .map(|(t, s)| Reverse((s.next_due, t.clone())))
                .collect();
        }
    }

    fn schedule(&self) -> std::sync::MutexGuard<'_, Schedule> {
        self.schedule
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hands `t`, taken by [`Health::due`] but not started, back to be due again.
    fn put_back(&self, t: &Target) {
        let mut table = self.lock();
        let mut sched = self.schedule();
        sched.in_flight.remove(t);
        if let Some(s) = table.get_mut(t) {
            s.in_flight = false;
            sched.queue.push(Reverse((s.next_due, t.clone())));
        }
    }

    /// Marks up to `limit` due targets in flight and returns them, round-robin over zones and
    /// within each zone's in-flight budget. IP literals the policy forbids are not returned:
    /// they are counted, stay unknown and are due again [`REFUSED_RECHECK_INTERVALS`] later (the
    /// policy does not change while the process runs; re-checking them every interval kept
    /// a full table of refused endpoints cycling through the schedule).
    fn due(&self, now: Instant, limit: usize) -> Vec<Target> {
        let mut table = self.lock();
        let mut sched = self.schedule();
        let mut in_flight: HashMap<ZoneId, usize> = HashMap::new();
        for zone in sched.in_flight.values() {
            *in_flight.entry(*zone).or_default() += 1;
        }
        let mut due: HashMap<ZoneId, Vec<Target>> = HashMap::new();
        // Due now, in due order: (due at, endpoint), each once.
        let mut popped: Vec<(Instant, Target)> = Vec::new();
        let mut seen: HashSet<Target> = HashSet::new();
        while sched
            .queue
            .peek()
            .is_some_and(|Reverse((at, _))| *at <= now)
        {
            let Some(Reverse((at, t))) = sched.queue.pop() else {
                break;
            };
            let Some(s) = table.get_mut(&t) else { continue };
            if s.in_flight || s.next_due != at || !seen.insert(t.clone()) {
                continue;
            }
            let literal = match t.0 {
                Host::V4(a) => Some(IpAddr::from(a)),
                Host::V6(a) => Some(IpAddr::from(a)),
                Host::Name(_) => None,
            };
            if let Some(Err(r)) = literal.map(|ip| self.config.policy.check(ip)) {
                self.count_refusal(r);
                s.health = HealthState::Unknown;
                s.next_due = now + self.config.interval * REFUSED_RECHECK_INTERVALS;
                sched.queue.push(Reverse((s.next_due, t)));
                continue;
            }
            due.entry(s.zone).or_default().push(t.clone());
            popped.push((at, t));
        }
        let mut zones = self.fair_zone_order(due);
        if !zones.is_empty() {
            let start = self.rotation.fetch_add(1, Ordering::Relaxed) as usize % zones.len();
            zones.rotate_left(start);
        }
        let mut queues: Vec<(ZoneId, std::vec::IntoIter<Target>)> =
            zones.into_iter().map(|(z, v)| (z, v.into_iter())).collect();
        let mut out = Vec::new();
        while out.len() < limit && !queues.is_empty() {
            queues.retain_mut(|(zone, q)| {
                if out.len() >= limit {
                    return true;
                }
                let busy = in_flight.entry(*zone).or_default();
                if *busy >= self.config.max_in_flight_per_zone {
                    return false;
                }
                let Some(t) = q.next() else { return false };
                *busy += 1;
                out.push(t);
                true
            });
        }
        for t in &out {
            if let Some(s) = table.get_mut(t) {
                s.in_flight = true;
                sched.in_flight.insert(t.clone(), s.zone);
            }
        }
        // Due but not started (the tick's budget, a zone's in-flight budget): due still.
        let started: HashSet<&Target> = out.iter().collect();
        for (at, t) in popped {
            if !started.contains(&t) {
                sched.queue.push(Reverse((at, t)));
            }
        }
        out
    }

    fn record(&self, t: &Target, outcome: ProbeOutcome, now: Instant) {
        match outcome {
            ProbeOutcome::Up => {
                self.probes.fetch_add(1, Ordering::Relaxed);
            }
            ProbeOutcome::Down => {
                self.probes.fetch_add(1, Ordering::Relaxed);
                self.probe_failures.fetch_add(1, Ordering::Relaxed);
            }
            ProbeOutcome::Refused(r) => self.count_refusal(r),
            ProbeOutcome::NotProbed => {}
        }
        let interval = self.config.interval;
        let mut table = self.lock();
        let mut sched = self.schedule();
        sched.in_flight.remove(t);
        let Some(s) = table.get_mut(t) else {
            return;
        };
        s.in_flight = false;
        let ok = outcome != ProbeOutcome::Down;
        s.health = match outcome {
            ProbeOutcome::Up => HealthState::Healthy,
            ProbeOutcome::Down => HealthState::Unhealthy,
            ProbeOutcome::Refused(_) | ProbeOutcome::NotProbed => HealthState::Unknown,
        };
        s.failures = if ok { 0 } else { s.failures.saturating_add(1) };
        // Back off failing endpoints, but never past 2× the interval.
        let backoff = if ok {
            1.0
        } else {
            (1.0 + f64::from(s.failures.min(4)) * 0.25).min(2.0)
        };
        let jitter = rand::thread_rng().gen_range(0.8..1.2);
        // A prober shares each endpoint with up to k-1 others: it probes every
        // interval × max(1, k/2), so the endpoint gets at most two probes per interval in all.
        let period = interval.mul_f64(self.period_milli.load(Ordering::Relaxed) as f64 / 1000.0);
        s.next_due = now + period.mul_f64((backoff * jitter).min(2.0));
        sched.queue.push(Reverse((s.next_due, t.clone())));
    }

    /// Number of tracked endpoints and how many are unhealthy.
    pub fn summary(&self) -> (usize, usize) {
        let table = self.lock();
        (
            table.len(),
            table
                .values()
                .filter(|s| s.health == HealthState::Unhealthy)
                .count(),
        )
    }

    /// Tracked endpoints by state, as JSON (`/v1/status`).
    pub fn to_json(&self) -> serde_json::Value {
        let table = self.lock();
        let n = |h: HealthState| table.values().filter(|s| s.health == h).count();
        let o = &self.observations;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "tracked": table.len(),
            "healthy": n(HealthState::Healthy),
            "unknown": n(HealthState::Unknown),
            "unhealthy": n(HealthState::Unhealthy),
            "probers_per_endpoint": self.config.probers,
            "observations": {
                "accepted": load(&o.accepted),
                "ignored_not_prober": load(&o.ignored_not_prober),
                "ignored_too_long": load(&o.ignored_too_long),
                "published": load(&o.published),
                "publish_failures": load(&o.publish_failures),
                "unpublished": load(&o.unpublished),
            },
        })
    }

    /// For `/metrics`: probes run, failed, and refused by reason; shared observations; and
    /// tracked endpoints by health state.
    pub fn encode(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        use crate::metrics::{counter, counter_family, gauge, gauge_family, to_i64};
        counter(
            e,
            "dpin_probes_total",
            "Endpoint probes run.",
            self.probes.load(Ordering::Relaxed),
        )?;
        counter(
            e,
            "dpin_probe_failures_total",
            "Endpoint probes that found the endpoint down.",
            self.probe_failures.load(Ordering::Relaxed),
        )?;
        counter_family(
            e,
            "dpin_probe_refused_total",
            "Endpoint probes refused by the probe policy or budget, by reason.",
            Refusal::ALL.map(|r| ([("reason", r.as_str())], self.refused(r))),
        )?;
        let (tracked, by_state) = {
            let table = self.lock();
            let n = |h: HealthState| table.values().filter(|s| s.health == h).count() as u64;
            (
                table.len() as u64,
                [
                    ("healthy", n(HealthState::Healthy)),
                    ("unknown", n(HealthState::Unknown)),
                    ("unhealthy", n(HealthState::Unhealthy)),
                ],
            )
        };
        gauge(
            e,
            "dpin_probe_tracked",
            "Endpoints this node tracks.",
            to_i64(tracked),
        )?;
        gauge_family(
            e,
            "dpin_endpoints",
            "Tracked endpoints by health state (this node's view, other probers' verdicts included).",
            by_state.map(|(state, v)| ([("state", state)], to_i64(v))),
        )?;
        let o = &self.observations;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counter(
            e,
            "dpin_probe_observations_accepted_total",
            "Other probers' verdicts taken into account.",
            load(&o.accepted),
        )?;
        counter_family(
            e,
            "dpin_probe_observations_ignored_total",
            "Other probers' verdicts ignored, by reason.",
            [
                ([("reason", "not_prober")], load(&o.ignored_not_prober)),
                ([("reason", "too_long")], load(&o.ignored_too_long)),
            ],
        )?;
        counter(
            e,
            "dpin_probe_observations_published_total",
            "Observation records this node published.",
            load(&o.published),
        )?;
        counter_family(
            e,
            "dpin_probe_observations_unpublished_total",
            "Observation records not published, by reason.",
            [
                ([("reason", "publish_failed")], load(&o.publish_failures)),
                ([("reason", "record_cap")], load(&o.unpublished)),
            ],
        )
    }
}

/// Combines this node's own verdict (if it probes the endpoint) with other probers' verdicts:
/// healthy if anyone saw it healthy; unhealthy if at least `quorum` (at least 1) saw it
/// unhealthy; unknown otherwise. One healthy verdict outweighs any number of unhealthy ones
/// (fail open: a lying or cut-off prober can keep a dead endpoint in answers, never take a
/// live one out).
pub fn combine(own: Option<HealthState>, healthy: u8, unhealthy: u8, quorum: u8) -> HealthState {
    let healthy = u32::from(healthy) + u32::from(own == Some(HealthState::Healthy));
    let unhealthy = u32::from(unhealthy) + u32::from(own == Some(HealthState::Unhealthy));
    if healthy > 0 {
        HealthState::Healthy
    } else if unhealthy >= u32::from(quorum.max(1)) {
        HealthState::Unhealthy
    } else {
        HealthState::Unknown
    }
}

/// The rendezvous key of a probe target: blake3 of `dpin/probe/v1\0`, the host's text (the
/// same bytes as `host.to_string()`), the port (big-endian) and the transport's name.
fn target_key(t: &Target) -> [u8; 32] {
    use std::io::Write as _;
    let (host, port, transport) = t;
    // The host's text written into a buffer on the stack, then hashed in one update: this
    // runs for every endpoint a membership change examines, and the formatter writes an
    // address in pieces (seven for IPv4), each an update of its own when streamed into the
    // hasher (170 against 125 ns a key). A validated host always fits; one that would not
    // (the cursor refuses to write past the buffer) is streamed as before.
    let mut buf = [0u8; HOST_TEXT_MAX];
    let mut text = std::io::Cursor::new(&mut buf[..]);
    let mut h = blake3::Hasher::new();
    h.update(b"dpin/probe/v1\0");
    if write!(text, "{host}").is_ok() {
        let len = usize::try_from(text.position()).unwrap_or(HOST_TEXT_MAX);
        h.update(&buf[..len]);
    } else {
        // Writing to a hasher cannot fail.
        let _ = write!(h, "{host}");
    }
    h.update(&port.to_be_bytes());
    h.update(transport.as_str().as_bytes());
    *h.finalize().as_bytes()
}

/// Room for any validated host's text (a hostname is at most
/// [`dpin_protocol::MAX_HOSTNAME_LEN`] bytes, an IPv6 address 45).
const HOST_TEXT_MAX: usize = 256;

/// The `k` members (ids as bytes) that probe `t`: the first `k` by `blake3(key(t) || id)`,
/// highest first (all of them if `k` is 0 or at least the membership). Every node computes
/// the same set from the same membership.
pub fn probers_of<'a, M: AsRef<[u8]>>(t: &Target, members: &'a [M], k: usize) -> Vec<&'a M> {
    let ordered = dpin_protocol::blob::rendezvous(&target_key(t), members);
    if k == 0 {
        return ordered;
    }
    ordered.into_iter().take(k).collect()
}

/// Probes one endpoint receives per second from the whole network of `members` live nodes,
/// with `k` probers per endpoint (0: every node) and probe interval `interval`.
pub fn endpoint_probe_rate(members: usize, k: usize, interval: Duration) -> f64 {
    let probers = if k == 0 { members } else { k.min(members) };
    probers as f64 / (interval.as_secs_f64() * period_factor(probers, k))
}

/// A prober's period as a multiple of the interval: `max(1, probers/2)` (1 when every node
/// probes, the old rule).
fn period_factor(probers: usize, k: usize) -> f64 {
    if k == 0 {
        1.0
    } else {
        (probers as f64 / 2.0).max(1.0)
    }
}

/// One prober's verdicts in an observation record, if it is one.
pub fn parse_observation(r: &SignedRecord) -> Option<Vec<(Target, HealthState)>> {
    if !r.body.label.starts_with(OBSERVATION_LABEL_PREFIX) {
        return None;
    }
    let eps = r.endpoints()?;
    Some(
        eps.iter()
            .filter_map(|e| {
                let h = match e.weight {
                    OBS_HEALTHY => HealthState::Healthy,
                    OBS_UNHEALTHY => HealthState::Unhealthy,
                    _ => return None,
                };
                Some((target(e), h))
            })
            .collect(),
    )
}

/// Splits verdicts into observation record contents (labels `prefix0`, `prefix1`, ...), each
/// within [`dpin_protocol::MAX_ENDPOINTS`] and the record size. At most
/// [`MAX_OBSERVATION_RECORDS`]; returns how many verdicts did not fit.
pub fn observation_chunks(verdicts: &BTreeMap<Target, HealthState>) -> (Vec<Vec<Endpoint>>, usize) {
    let mut chunks: Vec<Vec<Endpoint>> = Vec::new();
    let mut cur: Vec<Endpoint> = Vec::new();
    let mut bytes = 0;
    let mut left_out = 0;
    for ((host, port, transport), h) in verdicts {
        let weight = match h {
            HealthState::Healthy => OBS_HEALTHY,
            HealthState::Unhealthy => OBS_UNHEALTHY,
            HealthState::Unknown => continue,
        };
        let size = match host {
            Host::Name(n) => n.len() + 16,
            _ => 28,
        };
        if cur.len() >= dpin_protocol::MAX_ENDPOINTS || bytes + size > OBS_RECORD_BUDGET {
            chunks.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        if chunks.len() >= MAX_OBSERVATION_RECORDS {
            left_out += 1;
            continue;
        }
        bytes += size;
        cur.push(Endpoint {
            host: host.clone(),
            port: *port,
            transport: *transport,
            weight,
        });
    }
    if !cur.is_empty() {
        chunks.push(cur);
    }
    (chunks, left_out)
}

/// Signs one observation record (an empty list signs a tombstone: the label is no longer
/// used). `floor` is the seq the store holds for the name (see [`crate::offers::own_seq`]).
pub fn sign_observation(
    key: &ZoneKey,
    label: &str,
    eps: &[Endpoint],
    now: u64,
    lifetime: Duration,
    floor: Option<u64>,
) -> Result<SignedRecord, dpin_protocol::ValidationError> {
    let lifetime = u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX);
    let body = RecordBody {
        zone: key.zone(),
        label: label.to_owned(),
        seq: crate::offers::own_seq(now, floor),
        expires_at_ms: now.saturating_add(lifetime),
        content: if eps.is_empty() {
            Content::Tombstone
        } else {
            Content::Endpoints(eps.to_vec())
        },
    };
    body.sign(key)
}

/// One prober's verdicts read from one observation record.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The node that signed them (its zone is its peer id).
    pub author: PeerId,
    /// The record's seq: a prober's later record wins over its earlier ones.
    pub seq: u64,
    /// What it saw.
    pub verdicts: Vec<(Target, HealthState)>,
}

/// Counts other probers' verdicts per endpoint: only those by one of the endpoint's probers
/// (`probers`, this node's view) count, the latest record of each prober wins, and each prober
/// counts once per endpoint. Returns (healthy, unhealthy) per endpoint.
pub fn tally(
    observed: Vec<Observed>,
    probers: &HashMap<Target, Vec<PeerId>>,
    stats: &ObservationStats,
) -> HashMap<Target, (u8, u8)> {
    let mut latest: HashMap<(PeerId, Target), (u64, HealthState)> = HashMap::new();
    for o in observed {
        for (t, h) in o.verdicts {
            let trusted = probers.get(&t).is_some_and(|p| p.contains(&o.author));
            if !trusted {
                stats.ignored_not_prober.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let slot = latest.entry((o.author, t)).or_insert((o.seq, h));
            if o.seq > slot.0 {
                *slot = (o.seq, h);
            }
        }
    }
    let mut votes: HashMap<Target, (u8, u8)> = HashMap::new();
    for ((_, t), (_, h)) in latest {
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let v = votes.entry(t).or_default();
        match h {
            HealthState::Healthy => v.0 = v.0.saturating_add(1),
            HealthState::Unhealthy => v.1 = v.1.saturating_add(1),
            HealthState::Unknown => {}
        }
    }
    votes
}

/// The per-interval hook the prober calls ([`run`]'s `targets`): brings the index and this
/// node's [`Selection`] up to date (work in proportion to what changed), takes the other
/// probers' observations into the shared view, publishes this node's own observations when
/// they changed or are due, and returns this node's endpoints grouped by zone when they
/// changed since the last call (`None`: keep probing what it has).
pub fn probe_targets(node: &Node) -> Option<BTreeMap<ZoneId, BTreeSet<Target>>> {
    let health = node.health().clone();
    let k = health.config.probers;
    let now = now_ms();
    let me = node.local_peer_id();
    let mut members: Vec<PeerId> = node
        .peers()
        .into_iter()
        .filter(|(_, p)| p.status != PeerStatus::Down)
        .map(|(p, _)| p)
        .collect();
    members.push(me);
    members.sort();
    members.dedup();
    let member_set: BTreeSet<PeerId> = members.iter().copied().collect();
    let mut selection = health
        .selection
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (observed, mine) = {
        let mut index = health
            .index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        index.refresh(node);
        selection.update(&mut index, &members, me, k, now);
        let mut observed: Vec<Observed> = Vec::new();
        for o in index
            .observations
            .values()
            .filter(|o| o.expires_at_ms > now)
        {
            // Reported endpoints, not services: never probed on anyone's word.
            let author = crate::offers::peer_of(&o.zone);
            match author {
                Some(a) if a != me && member_set.contains(&a) => {
                    if o.expires_at_ms > now.saturating_add(MAX_OBSERVATION_LIFETIME_MS) {
                        health
                            .observations
                            .ignored_too_long
                            .fetch_add(o.verdicts.len() as u64, Ordering::Relaxed);
                        continue;
                    }
                    observed.push(Observed {
                        author: a,
                        seq: o.seq,
                        verdicts: o.verdicts.clone(),
                    });
                }
                Some(a) if a == me => {}
                _ => {
                    health
                        .observations
                        .ignored_not_prober
                        .fetch_add(o.verdicts.len() as u64, Ordering::Relaxed);
                }
            }
        }
        let mine = selection.hand_over(&index, health.config.max_endpoints, now, |i| {
            health.capped(i.mine())
        });
        (observed, mine)
    };
    let probers = selection.probers_of_observed(&observed);
    drop(selection);
    let votes = tally(observed, &probers, &health.observations);
    let effective = if k == 0 {
        members.len()
    } else {
        k.min(members.len())
    };
    let factor = period_factor(effective, k);
    health
        .period_milli
        .store((factor * 1000.0) as u64, Ordering::Relaxed);
    {
        let mut shared = health
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *shared = SharedView {
            votes,
            quorum: u8::try_from(effective.min(2)).unwrap_or(2),
        };
    }
    publish_observations(node, &health, now);
    mine
}

/// Publishes this node's verdicts (in the background; never two runs at once): records whose
/// content changed or that are older than [`Health::observation_refresh`], and a tombstone for
/// each label no longer needed.
fn publish_observations(node: &Node, health: &Arc<Health>, now: u64) {
    let Some(key) = node.node_key() else {
        return;
    };
    if health.publishing.swap(true, Ordering::AcqRel) {
        return;
    }
    let verdicts: BTreeMap<Target, HealthState> = health
        .lock()
        .iter()
        .filter(|(_, s)| s.health != HealthState::Unknown)
        .map(|(t, s)| (t.clone(), s.health))
        .collect();
    let (chunks, left_out) = observation_chunks(&verdicts);
    health
        .observations
        .unpublished
        .fetch_add(left_out as u64, Ordering::Relaxed);
    let n_chunks = chunks.len();
    let refresh = health.observation_refresh();
    let at = Instant::now();
    let mut todo: Vec<(String, Vec<Endpoint>)> = Vec::new();
    {
        let mut published = health
            .published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (i, eps) in chunks.into_iter().enumerate() {
            let label = format!("{OBSERVATION_LABEL_PREFIX}{i}");
            let due = published
                .get(&label)
                .is_none_or(|(old, when)| *old != eps || at.duration_since(*when) >= refresh);
            if due {
                published.insert(label.clone(), (eps.clone(), at));
                todo.push((label, eps));
            }
        }
        // Labels past the current number of records: a tombstone each, once.
        let unused: Vec<String> = published
            .keys()
            .filter(|l| {
                l.strip_prefix(OBSERVATION_LABEL_PREFIX)
                    .and_then(|n| n.parse::<usize>().ok())
                    .is_some_and(|n| n >= n_chunks)
            })
            .cloned()
            .collect();
        for label in unused {
            published.remove(&label);
            todo.push((label, Vec::new()));
        }
    }
    if todo.is_empty() {
        health.publishing.store(false, Ordering::Release);
        return;
    }
    let node = node.clone();
    let health = health.clone();
    let lifetime = refresh * 3;
    tokio::spawn(async move {
        for (label, eps) in todo {
            let name = format!("{label}.{}", key.zone());
            let floor = crate::offers::held_floor(&node, &name);
            let ok = match sign_observation(&key, &label, &eps, now, lifetime, floor) {
                Ok(r) => matches!(node.publish(r, None).await, Ok(p) if p.outcome.is_winner()),
                Err(e) => {
                    tracing::warn!(%e, "cannot sign a probe observation");
                    false
                }
            };
            let c = if ok {
                &health.observations.published
            } else {
                &health.observations.publish_failures
            };
            c.fetch_add(1, Ordering::Relaxed);
        }
        health.publishing.store(false, Ordering::Release);
    });
}

/// Probes one endpoint once, within `policy`.
pub async fn probe(
    t: &Target,
    timeout: Duration,
    udp: UdpProbe,
    policy: &ProbePolicy,
) -> ProbeOutcome {
    let (host, port, transport) = t;
    if *transport == Transport::Udp && udp == UdpProbe::Off {
        return ProbeOutcome::NotProbed;
    }
    let resolved: Vec<SocketAddr> = match host {
        Host::V4(a) => vec![SocketAddr::from((*a, *port))],
        Host::V6(a) => vec![SocketAddr::from((*a, *port))],
        Host::Name(n) => {
            match tokio::time::timeout(timeout, tokio::net::lookup_host((n.as_str(), *port))).await
            {
                Ok(Ok(it)) => it.take(MAX_ADDRS_PER_HOSTNAME).collect(),
                _ => return ProbeOutcome::Down,
            }
        }
    };
    // The policy is checked on the resolved addresses, and those very addresses are probed.
    let mut refusal = None;
    let addrs: Vec<SocketAddr> = resolved
        .into_iter()
        .filter(|a| match policy.check(a.ip()) {
            Ok(()) => true,
            Err(r) => {
                refusal.get_or_insert(r);
                false
            }
        })
        .collect();
    if addrs.is_empty() {
        return refusal.map_or(ProbeOutcome::Down, ProbeOutcome::Refused);
    }
    for addr in addrs {
        let ok = match transport {
            Transport::Tcp => matches!(
                tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
                Ok(Ok(_))
            ),
            Transport::Udp => udp_probe(addr, timeout).await,
        };
        if ok {
            return ProbeOutcome::Up;
        }
    }
    ProbeOutcome::Down
}

async fn udp_probe(addr: SocketAddr, timeout: Duration) -> bool {
    let bind: SocketAddr = if addr.is_ipv4() {
        ([0u8; 4], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let Ok(sock) = tokio::net::UdpSocket::bind(bind).await else {
        return false;
    };
    if sock.connect(addr).await.is_err() || sock.send(&[]).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    match tokio::time::timeout(timeout, sock.recv(&mut buf)).await {
        // ICMP port unreachable surfaces as ConnectionRefused on a connected socket.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => false,
        _ => true,
    }
}

/// What sets the pace of the prober's refreshes besides its interval ([`run`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pace {
    /// The store's change feed is filling up, or overflowed
    /// ([`crate::store::DurableStore::feed_backlog`]): refresh now. A node catching up
    /// writes tens of thousands of records a second, and a feed that passes its bound makes
    /// the next refresh rebuild the index from the whole store (about 2 s of CPU at 10⁶
    /// records).
    pub backlog: bool,
    /// The node is joining ([`crate::node::Node::joining`]). With a backlog too, its store
    /// is arriving in bulk, so after the first refresh none is made while both hold, for at
    /// most [`HealthConfig::joining_defer`] ([`JOINING_DEFER`]). Its feed overflows meanwhile
    /// (and stops recording), and the first refresh after rebuilds the index once. A joining
    /// node without a backlog (its peers do not answer, and a few writes come through its
    /// API) refreshes at the interval as usual. Indexing each change as it came cost about
    /// three times a rebuild per record (a `perf` of a joiner taking 10⁶ records from five
    /// peers: 14 % of its CPU in the prober's refreshes; one rebuild at 10⁶ is about 2 s).
    /// The joiner probes nothing new for that long, while the nodes that held the records
    /// before it keep probing them.
    pub joining: bool,
}

/// Longest a joining node holds its probe-target refreshes back ([`Pace::joining`]): past
/// it, the prober refreshes as if the node had caught up (a node whose peers never answer
/// is still probing after this long).
pub const JOINING_DEFER: Duration = Duration::from_secs(120);

/// Runs the prober forever: `targets` returns the endpoints to track by zone, called once per
/// interval, sooner when `pace` says the store's change feed has a backlog, and not while it
/// says the node is joining with one, for a bounded time ([`Pace`]).
///
/// `targets` runs on a blocking thread, not on the runtime: it takes the store's write lock
/// for the change feed (a writer may wait for readers, [`crate::store::write`]) and, when the
/// feed overflowed or at the first call, rebuilds the index from the whole store, about 2 s
/// at 10⁶ records. On a runtime worker that held every task queued behind it (gossip, the
/// API, the event loop's handles) for as long.
pub async fn run(
    health: Arc<Health>,
    targets: impl Fn() -> Option<BTreeMap<ZoneId, BTreeSet<Target>>> + Send + Sync + 'static,
    pace: impl Fn() -> Pace + Send + 'static,
) {
    if !health.config.enabled {
        return;
    }
    let cfg = health.config.clone();
    let policy = Arc::new(cfg.policy.clone());
    let slots = Arc::new(tokio::sync::Semaphore::new(cfg.max_concurrent));
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_refresh: Option<Instant> = None;
    let started = Instant::now();
    let targets = Arc::new(targets);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let due = last_refresh.is_none_or(|t| now.duration_since(t) >= cfg.interval);
        let refresh = match last_refresh.map(|_| pace()) {
            // The first refresh is always made (it reads what the store held at start).
            None => true,
            Some(p)
                if p.joining && p.backlog && now.duration_since(started) < cfg.joining_defer =>
            {
                false
            }
            Some(p) => due || p.backlog,
        };
        if refresh {
            let refresh_targets = targets.clone();
            match tokio::task::spawn_blocking(move || refresh_targets()).await {
                Ok(Some(mine)) => health.track(mine, now),
                Ok(None) => {}
                // A panic in the refresh (a bug): keep probing what is tracked, try again at
                // the next interval.
                Err(e) => tracing::error!(%e, "the prober's target refresh failed"),
            }
            if last_refresh.is_none() {
                // The first refresh built the index from the whole store and chose from all
                // of it: at 10⁶ records tens of MB of copies freed just now, handed back to
                // the system at once instead of at the trimmer's next run. Measured at 10⁶
                // records (scalebench, one round each): 463.7 MB resident without this
                // trim, 355.6 MB with it.
                crate::alloc::trim_off_runtime().await;
            }
            last_refresh = Some(now);
        }
        let budget = cfg.max_probes_per_tick.min(slots.available_permits());
        for t in health.due(now, budget) {
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                // Put it back to be picked up next tick.
                health.put_back(&t);
                continue;
            };
            let h = health.clone();
            let policy = policy.clone();
            tokio::spawn(async move {
                let outcome = probe(&t, cfg.timeout, cfg.udp, &policy).await;
                h.record(&t, outcome, Instant::now());
                drop(permit);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(port: u16) -> Target {
        (Host::V4([127, 0, 0, 1]), port, Transport::Tcp)
    }

    fn zone(n: u8) -> ZoneId {
        dpin_protocol::ZoneKey::from_seed([n; 32]).zone()
    }

    fn loopback_allowed() -> ProbePolicy {
        ProbePolicy {
            allow: vec!["127.0.0.0/8".parse().expect("cidr")],
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[tokio::test]
    async fn tcp_probe_sees_a_listener_and_its_absence() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let p = loopback_allowed();
        let d = Duration::from_millis(500);
        assert_eq!(
            probe(&t(port), d, UdpProbe::Icmp, &p).await,
            ProbeOutcome::Up
        );
        drop(l);
        assert_eq!(
            probe(&t(port), d, UdpProbe::Icmp, &p).await,
            ProbeOutcome::Down
        );
    }

    #[tokio::test]
    async fn loopback_is_refused_without_connecting_unless_allowed() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let d = Duration::from_millis(500);
        let got = probe(&t(port), d, UdpProbe::Icmp, &ProbePolicy::default()).await;
        assert_eq!(got, ProbeOutcome::Refused(Refusal::Loopback));
        // The refused probe never connected: the first accept is the allowed probe's.
        let allowed = probe(&t(port), d, UdpProbe::Icmp, &loopback_allowed()).await;
        assert_eq!(allowed, ProbeOutcome::Up);
        let (_, from) = l.accept().await.expect("accept");
        assert!(from.ip().is_loopback());
        assert!(
            tokio::time::timeout(Duration::from_millis(100), l.accept())
                .await
                .is_err(),
            "exactly one connection"
        );
    }

    #[tokio::test]
    async fn hostnames_are_checked_after_resolution() {
        let target = (Host::Name("localhost".to_owned()), 9, Transport::Tcp);
        let got = probe(
            &target,
            Duration::from_millis(500),
            UdpProbe::Icmp,
            &ProbePolicy::default(),
        )
        .await;
        // localhost resolves to loopback (or not at all in a bare sandbox): never probed.
        assert!(
            matches!(
                got,
                ProbeOutcome::Refused(Refusal::Loopback) | ProbeOutcome::Down
            ),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn udp_probe_detects_port_unreachable() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = s.local_addr().expect("addr").port();
        let target = (Host::V4([127, 0, 0, 1]), port, Transport::Udp);
        let p = loopback_allowed();
        let d = Duration::from_millis(300);
        assert_eq!(
            probe(&target, d, UdpProbe::Icmp, &p).await,
            ProbeOutcome::Up
        );
        drop(s);
        assert_eq!(
            probe(&target, d, UdpProbe::Icmp, &p).await,
            ProbeOutcome::Down
        );
        assert_eq!(
            probe(&target, d, UdpProbe::Off, &p).await,
            ProbeOutcome::NotProbed
        );
    }

    #[test]
    fn special_purpose_ranges_are_refused_and_global_unicast_is_not() {
        let cases = [
            ("127.0.0.1", Some(Refusal::Loopback)),
            ("::1", Some(Refusal::Loopback)),
            ("169.254.1.1", Some(Refusal::LinkLocal)),
            ("fe80::1", Some(Refusal::LinkLocal)),
            ("10.1.2.3", Some(Refusal::Private)),
            ("172.31.0.1", Some(Refusal::Private)),
            ("192.168.1.1", Some(Refusal::Private)),
            ("fd00::1", Some(Refusal::Private)),
            ("224.0.0.1", Some(Refusal::Multicast)),
            ("ff02::1", Some(Refusal::Multicast)),
            ("0.0.0.0", Some(Refusal::Unspecified)),
            ("::", Some(Refusal::Unspecified)),
            ("100.64.0.1", Some(Refusal::SpecialPurpose)),
            ("198.19.255.1", Some(Refusal::SpecialPurpose)),
            ("192.0.2.1", Some(Refusal::SpecialPurpose)),
            ("203.0.113.9", Some(Refusal::SpecialPurpose)),
            ("255.255.255.255", Some(Refusal::SpecialPurpose)),
            ("2001:db8::1", Some(Refusal::SpecialPurpose)),
            ("::ffff:127.0.0.1", Some(Refusal::Loopback)),
            ("::ffff:10.0.0.1", Some(Refusal::Private)),
            ("64:ff9b::a00:1", Some(Refusal::Private)),
            ("2002:7f00:1::1", Some(Refusal::Loopback)),
            ("8.8.8.8", None),
            ("172.32.0.1", None),
            ("2606:4700::1111", None),
            ("::ffff:8.8.8.8", None),
        ];
        for (addr, want) in cases {
            assert_eq!(classify(ip(addr)), want, "{addr}");
        }
    }

    #[test]
    fn an_allowed_range_overrides_the_refusal_and_nothing_else() {
        let p = loopback_allowed();
        assert_eq!(p.check(ip("127.0.0.5")), Ok(()));
        assert_eq!(p.check(ip("::ffff:127.0.0.5")), Ok(()));
        assert_eq!(p.check(ip("::1")), Err(Refusal::Loopback));
        assert_eq!(p.check(ip("10.0.0.1")), Err(Refusal::Private));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0.0".parse::<Cidr>().is_err());
        assert!("::/0"
            .parse::<Cidr>()
            .is_ok_and(|c| c.contains(ip("fd00::1"))));
    }

    #[test]
    fn failing_endpoints_back_off_but_never_past_twice_the_interval() {
        let h = Health::new(HealthConfig::default());
        let now = Instant::now();
        h.track([(zone(1), [t(1)].into())].into(), now);
        for _ in 0..10 {
            h.record(&t(1), ProbeOutcome::Down, now);
        }
        let due = h.lock().get(&t(1)).map(|s| s.next_due).expect("tracked");
        assert!(due <= now + h.config.interval * 2);
        assert!(due >= now + h.config.interval);
        let ep: Endpoint = "127.0.0.1:1".parse().expect("ep");
        assert_eq!(h.state(&ep), HealthState::Unhealthy);
    }

    #[test]
    fn each_due_endpoint_is_handed_out_once_until_probed_or_put_back() {
        let h = Health::new(HealthConfig {
            policy: loopback_allowed(),
            max_in_flight_per_zone: 16,
            ..HealthConfig::default()
        });
        let now = Instant::now();
        h.track([(zone(1), (1..=5).map(t).collect())].into(), now);
        let later = now + h.config.interval;
        let first = h.due(later, 3);
        assert_eq!(first.len(), 3, "the tick's budget");
        let rest = h.due(later, 10);
        let mut all: BTreeSet<Target> = first.iter().cloned().collect();
        all.extend(rest.iter().cloned());
        assert_eq!(all.len(), 5, "each endpoint once: {first:?} {rest:?}");
        assert!(h.due(later, 10).is_empty(), "all five are in flight");
        // Put back: due again at once. Probed: due again one period later.
        h.put_back(&first[0]);
        assert_eq!(h.due(later, 10), vec![first[0].clone()]);
        h.record(&first[1], ProbeOutcome::Up, later);
        assert!(h.due(later, 10).is_empty());
        assert!(h.due(later + h.config.interval * 3, 10).contains(&first[1]));
        // An endpoint no longer tracked is never handed out again, even from a stale entry.
        h.track([(zone(1), [t(1)].into())].into(), later);
        for e in h.due(later + h.config.interval * 9, 10) {
            assert_eq!(e, t(1));
        }
    }

    #[test]
    fn unprobed_and_refused_endpoints_are_unknown_not_healthy() {
        let h = Health::new(HealthConfig::default());
        let now = Instant::now();
        let ep: Endpoint = "127.0.0.1:1".parse().expect("ep");
        assert_eq!(h.state(&ep), HealthState::Unknown, "untracked");
        h.track([(zone(1), [t(1)].into())].into(), now);
        assert_eq!(h.state(&ep), HealthState::Unknown, "never probed");
        let later = now + h.config.interval;
        assert!(h.due(later, 10).is_empty(), "loopback is never handed out");
        assert_eq!(h.refused(Refusal::Loopback), 1);
        assert_eq!(h.state(&ep), HealthState::Unknown, "refused");
    }

    #[test]
    fn tracked_endpoints_are_bounded_and_follow_the_store() {
        let h = Health::new(HealthConfig {
            max_endpoints: 3,
            ..HealthConfig::default()
        });
        let now = Instant::now();
        h.track([(zone(1), (1..10).map(t).collect())].into(), now);
        assert_eq!(h.summary().0, 3);
        h.track([(zone(1), [t(1)].into())].into(), now);
        assert_eq!(h.summary().0, 1);
    }

    #[test]
    fn a_zone_with_many_endpoints_cannot_push_the_others_out_of_the_cap() {
        let h = Health::new(HealthConfig {
            max_endpoints: 100,
            ..HealthConfig::default()
        });
        let attacker: BTreeSet<Target> = (1..=1000).map(t).collect();
        let honest: Vec<(ZoneId, BTreeSet<Target>)> = (2..=5)
            .map(|z| (zone(z), [t(10_000 + u16::from(z))].into()))
            .collect();
        let mut by_zone: BTreeMap<ZoneId, BTreeSet<Target>> = honest.iter().cloned().collect();
        by_zone.insert(zone(1), attacker);
        h.track(by_zone, Instant::now());
        let table = h.lock();
        assert_eq!(table.len(), 100);
        for (_, set) in &honest {
            assert!(
                set.iter().all(|t| table.contains_key(t)),
                "honest zone kept"
            );
        }
    }

    #[test]
    fn tracking_the_capped_part_of_a_selection_keeps_what_tracking_all_of_it_keeps() {
        let h = Health::new(HealthConfig {
            max_endpoints: 50,
            ..HealthConfig::default()
        });
        // Five zones of different sizes, some endpoints named by two zones.
        let mut mine: BTreeMap<ZoneId, BTreeSet<Target>> = BTreeMap::new();
        for z in 1..=5u8 {
            let n = u16::from(z) * 15;
            mine.insert(zone(z), (0..n).map(|i| t(u16::from(z) * 100 + i)).collect());
        }
        mine.get_mut(&zone(2))
            .expect("zone 2")
            .extend((100..110).map(t));
        let handed = h.capped(mine.iter().map(|(z, set)| (*z, set.iter().cloned())));
        assert_eq!(handed.values().map(BTreeSet::len).sum::<usize>(), 50);
        let tracked = |h: &Health| {
            h.lock()
                .iter()
                .map(|(t, s)| (t.clone(), s.zone))
                .collect::<Vec<_>>()
        };
        let now = Instant::now();
        h.track(mine, now);
        let from_whole = tracked(&h);
        h.track(BTreeMap::new(), now);
        assert!(tracked(&h).is_empty());
        h.track(handed, now);
        assert_eq!(tracked(&h), from_whole);
    }

    #[test]
    fn a_slot_holds_one_reference_inline_and_more_in_a_list_and_keeps_its_mark() {
        let one = |r, mine| Slot::One { r, mine };
        let mut r = Slot::new(1, 10);
        r.upsert(1, 20);
        assert_eq!(r, one((1, 20), false), "the same name moves its expiry");
        r.set_mine(true);
        r.upsert(2, 30);
        assert_eq!(r.as_slice(), &[(1, 20), (2, 30)]);
        assert!(r.mine(), "a second reference keeps the mark");
        assert!(!r.remove(1));
        assert_eq!(r, one((2, 30), true), "back inline at one reference");
        assert!(!r.remove(7), "another name's removal leaves it");
        assert!(r.remove(2), "the last reference gone");
        assert!(
            r.is_empty() && r.mine(),
            "the mark stays for the selection to clear"
        );
        r.upsert(3, 40);
        assert_eq!(
            r,
            one((3, 40), true),
            "a record naming it again finds it marked"
        );
    }

    /// A zone's packed entries and B-tree together behave as the B-tree of [`Slot`]s alone
    /// did: the same targets, in the same order, with the same references and marks, after
    /// every step of a seeded random run of the index's and the selection's operations
    /// (targets named by one record and by several, taken out and put back, marked, IPv4 and
    /// not, packs forced and due).
    #[test]
    fn a_packed_zone_reads_as_the_b_tree_it_replaces() {
        use rand::{Rng, SeedableRng};
        let seed: u64 = std::env::var("DPIN_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20261203);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let keys: Vec<Key> = (0..40u16)
            .map(|i| match i % 8 {
                7 => Key::Other(Box::new((Host::V6([i as u8; 16]), 53, Transport::Udp))),
                _ => Key::V4([198, 51, 100, (i % 5) as u8], 1000 + i, Transport::Tcp),
            })
            .collect();
        let mut zone = ZoneTargets::default();
        let mut model: BTreeMap<Key, Slot> = BTreeMap::new();
        let as_slots = |z: &ZoneTargets| -> Vec<(Key, Slot)> {
            z.iter()
                .map(|at| match at {
                    At::Packed(p) => (
                        p.key(),
                        Slot::One {
                            r: p.r,
                            mine: p.mine(),
                        },
                    ),
                    At::Delta(k, s) => (k.clone(), s.clone()),
                })
                .collect()
        };
        for step in 0..5_000 {
            let k = &keys[rng.gen_range(0..keys.len())];
            let h = rng.gen_range(1..4u64);
            match rng.gen_range(0..21) {
                0..=7 => {
                    let exp = rng.gen_range(1..1_000u64);
                    zone.upsert(k, h, exp);
                    match model.get_mut(k) {
                        Some(slot) => slot.upsert(h, exp),
                        None => {
                            model.insert(k.clone(), Slot::new(h, exp));
                        }
                    }
                }
                8..=13 => {
                    zone.remove_ref(k, h);
                    if model
                        .get_mut(k)
                        .is_some_and(|slot| slot.remove(h) && !slot.mine())
                    {
                        model.remove(k);
                    }
                }
                // What the selection does with a touched target.
                14..=17 => {
                    let to = rng.gen_bool(0.5);
                    let empty = zone.get_mut(k).map(|mut slot| {
                        slot.set_mine(to);
                        slot.is_empty()
                    });
                    let model_empty = model.get_mut(k).map(|slot| {
                        slot.set_mine(to);
                        slot.is_empty()
                    });
                    assert_eq!(empty, model_empty, "seed {seed}, step {step}");
                    if empty == Some(true) {
                        zone.remove(k);
                        model.remove(k);
                    }
                }
                18 => {
                    let cut = rng.gen_range(0..1_000u64);
                    zone.retain(|_, slot| slot.live_until().unwrap_or(0) > cut);
                    model.retain(|_, slot| slot.live_until().unwrap_or(0) > cut);
                }
                19 => zone.tidy(),
                _ => zone.pack(),
            }
            assert_eq!(
                as_slots(&zone),
                model
                    .iter()
                    .map(|(k, s)| (k.clone(), s.clone()))
                    .collect::<Vec<_>>(),
                "seed {seed}, step {step} (DPIN_TEST_SEED={seed} replays it)"
            );
            assert_eq!(zone.len(), model.len());
            assert!(zone
                .delta
                .keys()
                .all(|k| find_packed(&zone.packed, k).is_none_or(|i| !zone.packed[i].live())));
        }
    }

    #[test]
    fn a_black_holed_zone_holds_only_its_budget_of_probe_slots() {
        let h = Health::new(HealthConfig {
            policy: loopback_allowed(),
            ..HealthConfig::default()
        });
        let now = Instant::now();
        let attacker: BTreeSet<Target> = (1..=500).map(t).collect();
        let honest: BTreeSet<Target> = (1001..=1008).map(t).collect();
        h.track(
            [(zone(1), attacker.clone()), (zone(2), honest.clone())].into(),
            now,
        );
        let later = now + h.config.interval;
        // Tick after tick, the attacker's probes never return (black hole).
        let mut honest_probed = BTreeSet::new();
        for _ in 0..10 {
            for t in h.due(later, 64) {
                if honest.contains(&t) {
                    h.record(&t, ProbeOutcome::Up, later);
                    honest_probed.insert(t);
                }
            }
        }
        let attacker_in_flight = h
            .lock()
            .iter()
            .filter(|(t, s)| s.in_flight && attacker.contains(*t))
            .count();
        assert_eq!(attacker_in_flight, MAX_IN_FLIGHT_PER_ZONE);
        assert_eq!(honest_probed, honest, "every honest endpoint was probed");
    }

    fn peer(n: u64) -> PeerId {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&n.to_le_bytes());
        let kp = libp2p::identity::Keypair::ed25519_from_bytes(seed).expect("seed");
        kp.public().to_peer_id()
    }

    fn endpoints(n: u32) -> Vec<Target> {
        (0..n)
            .map(|i| {
                let b = i.to_be_bytes();
                (Host::V4([8, b[1], b[2], b[3]]), 443, Transport::Tcp)
            })
            .collect()
    }

    /// The issue-13 figure, as a model of the selection rule (every node holds every record):
    /// probes one endpoint receives per second, and probers per endpoint, at N = 3 and larger
    /// N, with rendezvous selection (k = 3) and with every node probing (k = 0, the old rule).
    /// `cargo test -p dpin-node --lib probe_load -- --nocapture` prints the table.
    #[test]
    fn probe_load_per_endpoint_does_not_grow_with_the_network() {
        let interval = HealthConfig::default().interval;
        let eps = endpoints(1000);
        for n in [3usize, 10, 100, 1000] {
            let members: Vec<Vec<u8>> = (0..n as u64).map(|i| peer(i).to_bytes()).collect();
            let mut load: HashMap<&Vec<u8>, usize> = HashMap::new();
            for t in &eps {
                let chosen = probers_of(t, &members, DEFAULT_PROBERS);
                assert_eq!(chosen.len(), DEFAULT_PROBERS.min(n), "probers per endpoint");
                for m in chosen {
                    *load.entry(m).or_default() += 1;
                }
            }
            let with = endpoint_probe_rate(n, DEFAULT_PROBERS, interval);
            let without = endpoint_probe_rate(n, 0, interval);
            let max_load = load.values().copied().max().unwrap_or(0);
            let mean_load = eps.len() * DEFAULT_PROBERS.min(n) / n;
            println!(
                "N={n:5}: probes/endpoint/s {with:.2} (every node probing: {without:.2}); \
                 endpoints per node mean {mean_load}, max {max_load}"
            );
            assert!(
                with <= 1.0 + 1e-9,
                "at most one probe a second per endpoint"
            );
            assert!((with - endpoint_probe_rate(3, DEFAULT_PROBERS, interval)).abs() < 1e-9);
            // Spread: no node probes more than twice its share (deterministic ids; checked
            // where the share is large enough for the hash to even out).
            if mean_load >= 30 {
                assert!(
                    max_load <= 2 * mean_load,
                    "N={n}: {max_load} vs {mean_load}"
                );
            }
        }
        assert!(endpoint_probe_rate(100, 0, interval) >= 50.0 - 1e-9);
    }

    /// The rendezvous key is defined on the host's text: the buffered form hashes exactly
    /// those bytes, for every kind of host up to the longest hostname (every node must pick
    /// the same probers, whatever its release).
    #[test]
    fn the_target_key_hashes_the_hosts_text() {
        let longest = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        assert_eq!(longest.len(), dpin_protocol::MAX_HOSTNAME_LEN);
        let hosts = [
            Host::V4([198, 51, 100, 7]),
            Host::V4([0, 0, 0, 0]),
            Host::V6([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            Host::V6([0xfe, 0x80, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]),
            Host::Name("api.example.com".into()),
            Host::Name(longest),
            // Longer than any validated host: streamed instead.
            Host::Name("x".repeat(HOST_TEXT_MAX + 1)),
        ];
        for host in hosts {
            for transport in [Transport::Tcp, Transport::Udp] {
                let t: Target = (host.clone(), 8443, transport);
                let mut h = blake3::Hasher::new();
                h.update(b"dpin/probe/v1\0");
                h.update(host.to_string().as_bytes());
                h.update(&8443u16.to_be_bytes());
                h.update(transport.as_str().as_bytes());
                assert_eq!(target_key(&t), *h.finalize().as_bytes(), "{host}");
            }
        }
    }

    #[test]
    fn a_node_leaving_moves_only_the_endpoints_it_probed() {
        let members: Vec<Vec<u8>> = (0..20u64).map(|i| peer(i).to_bytes()).collect();
        let gone = members[7].clone();
        let rest: Vec<Vec<u8>> = members.iter().filter(|m| **m != gone).cloned().collect();
        for t in endpoints(300) {
            let before: Vec<Vec<u8>> = probers_of(&t, &members, 3).into_iter().cloned().collect();
            let after: Vec<Vec<u8>> = probers_of(&t, &rest, 3).into_iter().cloned().collect();
            if before.contains(&gone) {
                let kept: Vec<&Vec<u8>> = before.iter().filter(|m| **m != gone).collect();
                assert!(
                    kept.iter().all(|m| after.contains(m)),
                    "survivors keep probing"
                );
            } else {
                assert_eq!(before, after, "unaffected endpoints keep their probers");
            }
        }
    }

    #[test]
    fn suspicion_needs_confirmation_and_one_healthy_verdict_keeps_an_endpoint() {
        use HealthState::{Healthy, Unhealthy, Unknown};
        assert_eq!(
            combine(None, 0, 0, 2),
            Unknown,
            "no verdict: unknown, served"
        );
        assert_eq!(
            combine(Some(Unhealthy), 0, 0, 2),
            Unknown,
            "one suspicion alone"
        );
        assert_eq!(combine(Some(Unhealthy), 0, 1, 2), Unhealthy, "confirmed");
        assert_eq!(combine(None, 0, 2, 2), Unhealthy);
        assert_eq!(
            combine(Some(Unhealthy), 1, 2, 2),
            Healthy,
            "a healthy verdict wins"
        );
        assert_eq!(combine(None, 1, 0, 2), Healthy);
        assert_eq!(combine(Some(Unhealthy), 0, 0, 1), Unhealthy, "sole prober");
        assert_eq!(combine(Some(Unknown), 0, 0, 0), Unknown);
    }

    #[test]
    fn only_the_probers_latest_verdicts_count() {
        let stats = ObservationStats::default();
        let ep = (Host::V4([8, 8, 8, 8]), 53, Transport::Tcp);
        let probers: HashMap<Target, Vec<PeerId>> = [(ep.clone(), vec![peer(1), peer(2)])].into();
        let obs = |author, seq, h| Observed {
            author,
            seq,
            verdicts: vec![(ep.clone(), h)],
        };
        let votes = tally(
            vec![
                obs(peer(1), 5, HealthState::Healthy),
                obs(peer(1), 9, HealthState::Unhealthy), // later record of the same prober
                obs(peer(2), 3, HealthState::Unhealthy),
                obs(peer(3), 7, HealthState::Healthy), // not a prober of ep
            ],
            &probers,
            &stats,
        );
        assert_eq!(votes.get(&ep), Some(&(0, 2)));
        assert_eq!(stats.ignored_not_prober.load(Ordering::Relaxed), 1);
        assert_eq!(stats.accepted.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn shared_verdicts_decide_for_endpoints_this_node_does_not_probe() {
        let h = Health::new(HealthConfig::default());
        let ep: Endpoint = "8.8.8.8:53".parse().expect("ep");
        let t = target(&ep);
        assert_eq!(h.state(&ep), HealthState::Unknown);
        let set = |votes: (u8, u8)| {
            *h.shared.lock().expect("lock") = SharedView {
                votes: [(t.clone(), votes)].into(),
                quorum: 2,
            };
        };
        set((1, 0));
        assert_eq!(h.state(&ep), HealthState::Healthy);
        set((0, 1));
        assert_eq!(h.state(&ep), HealthState::Unknown, "one prober's suspicion");
        set((0, 2));
        assert_eq!(h.state(&ep), HealthState::Unhealthy);
    }

    #[test]
    fn observations_fit_in_records_and_read_back() {
        let key = dpin_protocol::ZoneKey::from_seed([7; 32]);
        let mut verdicts: BTreeMap<Target, HealthState> = BTreeMap::new();
        for (i, t) in endpoints(150).into_iter().enumerate() {
            let h = if i % 3 == 0 {
                HealthState::Unhealthy
            } else {
                HealthState::Healthy
            };
            verdicts.insert(t, h);
        }
        for i in 0..40u8 {
            let long = "a".repeat(60);
            let name = format!("{long}.{long}.{long}.h{i}.example.org");
            verdicts.insert(
                (Host::Name(name), 443, Transport::Udp),
                HealthState::Healthy,
            );
        }
        verdicts.insert(t(9), HealthState::Unknown); // never published
        let (chunks, left_out) = observation_chunks(&verdicts);
        assert_eq!(left_out, 0);
        let now = 1_700_000_000_000;
        let mut back: BTreeMap<Target, HealthState> = BTreeMap::new();
        for (i, eps) in chunks.iter().enumerate() {
            let label = format!("{OBSERVATION_LABEL_PREFIX}{i}");
            let r = sign_observation(&key, &label, eps, now, Duration::from_secs(30), None)
                .expect("sign");
            assert_eq!(r.validate(now, dpin_protocol::Freshness::Publish), Ok(()));
            back.extend(parse_observation(&r).expect("observation"));
        }
        verdicts.remove(&t(9));
        assert_eq!(back, verdicts);
        let tomb = sign_observation(
            &key,
            "dpin-probe-obs-3",
            &[],
            now,
            Duration::from_secs(30),
            None,
        )
        .expect("tombstone");
        assert_eq!(
            tomb.validate(now, dpin_protocol::Freshness::Publish),
            Ok(())
        );
    }

    /// Endpoints by zone, and observation records (name, seq).
    type Scanned = (BTreeMap<ZoneId, BTreeSet<Target>>, Vec<(String, u64)>);

    /// The whole-store scan the index replaced: every live record's endpoints by zone,
    /// observation records apart (and their verdicts, by name).
    fn scan(s: &crate::store::DurableStore, now: u64) -> Scanned {
        let mut by_zone: BTreeMap<ZoneId, BTreeSet<Target>> = BTreeMap::new();
        let mut observed = Vec::new();
        for (name, e) in s.mem().iter().filter(|(_, e)| e.is_live(now)) {
            let Some(r) = e.record() else { continue };
            if parse_observation(&r).is_some() {
                observed.push((name.to_owned(), r.body.seq));
                continue;
            }
            let set: BTreeSet<Target> = r.endpoints().unwrap_or(&[]).iter().map(target).collect();
            if !set.is_empty() {
                by_zone.entry(r.body.zone).or_default().extend(set);
            }
        }
        (by_zone, observed)
    }

    fn indexed(index: &ProbeIndex, now: u64) -> Scanned {
        let observed = index
            .observations
            .iter()
            .filter(|(_, o)| o.expires_at_ms > now)
            .map(|((_, n), o)| (n.to_string(), o.seq))
            .collect();
        (index.live_endpoints(now), observed)
    }

    #[test]
    fn the_probe_index_follows_applies_deletions_expiry_and_a_restart(
    ) -> Result<(), Box<dyn std::error::Error>> {
        use dpin_protocol::{Freshness, Store};
        const NOW: u64 = 1_800_000_000_000;
        let ep = |port: u16| Endpoint {
            host: Host::V4([198, 51, 100, 7]),
            port,
            transport: Transport::Tcp,
            weight: 1,
        };
        let rec = |key: &ZoneKey, label: &str, seq: u64, ttl: u64, ports: &[u16]| {
            RecordBody {
                zone: key.zone(),
                label: label.into(),
                seq,
                expires_at_ms: NOW + ttl,
                content: if ports.is_empty() {
                    Content::Tombstone
                } else {
                    Content::Endpoints(ports.iter().map(|p| ep(*p)).collect())
                },
            }
            .sign(key)
        };
        let (a, b, c) = (
            ZoneKey::from_seed([1; 32]),
            ZoneKey::from_seed([2; 32]),
            ZoneKey::from_seed([3; 32]),
        );
        let hour = 3_600_000;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("store.redb");
        let store = std::sync::RwLock::new(crate::store::DurableStore::open(&path)?);
        let persister = store.write().map_err(|e| e.to_string())?.persister();
        let apply = |r: SignedRecord| -> Result<(), Box<dyn std::error::Error>> {
            let mut s = store.write().map_err(|e| e.to_string())?;
            assert!(s.apply(&r, NOW, Freshness::Publish, None)?.is_winner());
            Ok(())
        };
        apply(rec(&a, "web", 1, hour, &[1, 2])?)?;
        apply(rec(&a, "api", 1, 2 * hour, &[2, 3])?)?;
        apply(rec(&b, "web", 1, hour / 2, &[4])?)?;
        let obs = vec![Endpoint {
            weight: OBS_HEALTHY,
            ..ep(9)
        }];
        apply(sign_observation(
            &c,
            &format!("{OBSERVATION_LABEL_PREFIX}0"),
            &obs,
            NOW,
            Duration::from_secs(60),
            None,
        )?)?;
        let mut index = ProbeIndex::default();
        // First refresh: rebuilt from the loaded store.
        index.refresh_from(&store);
        let check = |index: &ProbeIndex, now: u64| -> Result<(), Box<dyn std::error::Error>> {
            let s = store.write().map_err(|e| e.to_string())?;
            assert_eq!(indexed(index, now), scan(&s, now));
            Ok(())
        };
        check(&index, NOW)?;
        assert_eq!(
            index
                .live_endpoints(NOW)
                .values()
                .map(BTreeSet::len)
                .sum::<usize>(),
            4
        );
        // Updates and a deletion reach the index through the feed: port 2 stays (web still
        // names it), 1 and 3 go with the records that named them.
        apply(rec(&a, "web", 2, hour, &[2, 5])?)?;
        apply(rec(&a, "api", 2, hour, &[])?)?;
        index.refresh_from(&store);
        check(&index, NOW)?;
        // Expiry moves with the clock: b's record and the observation lapse.
        check(&index, NOW + hour / 2)?;
        assert_eq!(index.live_endpoints(NOW + hour / 2).len(), 1);
        // After a restart the index is rebuilt from disk.
        let generation = store.write().map_err(|e| e.to_string())?.generation();
        persister.flush(&store, generation)?;
        drop(persister);
        drop(store);
        let expected = indexed(&index, NOW);
        let reopened = std::sync::RwLock::new(crate::store::DurableStore::open(&path)?);
        let mut fresh = ProbeIndex::default();
        fresh.refresh_from(&reopened);
        assert_eq!(indexed(&fresh, NOW), expected);
        Ok(())
    }

    /// What a full read of the index gives: the live endpoints this node probes, by zone.
    fn selected_from_scratch(
        index: &ProbeIndex,
        members: &[PeerId],
        me: PeerId,
        k: usize,
        now: u64,
    ) -> BTreeMap<ZoneId, BTreeSet<Target>> {
        let bytes: Vec<Vec<u8>> = members.iter().map(|p| p.to_bytes()).collect();
        let me = me.to_bytes();
        index
            .live_endpoints(now)
            .into_iter()
            .filter_map(|(zone, ts)| {
                let mine: BTreeSet<Target> = ts
                    .into_iter()
                    .filter(|t| probers_of(t, &bytes, k).into_iter().any(|b| *b == me))
                    .collect();
                (!mine.is_empty()).then_some((zone, mine))
            })
            .collect()
    }

    /// A prober over `config` whose target refreshes are counted, paced by `pace`.
    fn counting_prober(
        config: HealthConfig,
        pace: impl Fn() -> Pace + Send + 'static,
    ) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let task = tokio::spawn(run(
            Health::new(config),
            move || {
                c.fetch_add(1, Ordering::SeqCst);
                None
            },
            pace,
        ));
        (calls, task)
    }

    /// Waits (at most 30 s) until `calls` reaches `n`.
    async fn wait_for_refreshes(calls: &AtomicU64, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while calls.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "only {} refreshes",
                calls.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The prober takes the store's changes before the interval when the change feed fills
    /// (`backlog`), so a fast catch-up does not overflow it into a whole-store rebuild; with
    /// no backlog nothing is refreshed before the interval.
    #[tokio::test]
    async fn a_filling_change_feed_refreshes_the_targets_before_the_interval() {
        use std::sync::atomic::AtomicBool;
        let backlog = Arc::new(AtomicBool::new(false));
        let b = backlog.clone();
        let config = HealthConfig {
            enabled: true,
            interval: Duration::from_secs(60),
            ..HealthConfig::default()
        };
        let (calls, task) = counting_prober(config, move || Pace {
            backlog: b.load(Ordering::SeqCst),
            joining: false,
        });
        wait_for_refreshes(&calls, 1).await;
        // Ten ticks with nothing pending: the next refresh is a minute away.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        backlog.store(true, Ordering::SeqCst);
        wait_for_refreshes(&calls, 3).await;
        task.abort();
    }

    /// A joining node with a feed backlog (records arriving in bulk) refreshes its targets
    /// once at start, then not at all while it joins (it will rebuild once), and as usual once
    /// it has caught up; it stops holding back after `joining_defer` even if it never catches
    /// up; and one without a backlog refreshes at the interval all along.
    #[tokio::test]
    async fn a_joining_node_refreshes_its_targets_once_it_has_caught_up_or_waited_long_enough() {
        use std::sync::atomic::AtomicBool;
        let prober = |defer: Duration, backlog: bool| {
            let joining = Arc::new(AtomicBool::new(true));
            let j = joining.clone();
            let config = HealthConfig {
                enabled: true,
                interval: Duration::from_millis(200),
                joining_defer: defer,
                ..HealthConfig::default()
            };
            let (calls, task) = counting_prober(config, move || Pace {
                backlog,
                joining: j.load(Ordering::SeqCst),
            });
            (calls, joining, task)
        };
        // The feed fills all along: joining holds that back.
        let (calls, joining, task) = prober(Duration::from_secs(3600), true);
        wait_for_refreshes(&calls, 1).await;
        // Five intervals while joining: nothing more.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "refreshed while joining");
        // Caught up (and the feed filling): refreshed at every tick again.
        joining.store(false, Ordering::SeqCst);
        wait_for_refreshes(&calls, 3).await;
        task.abort();

        // Never caught up: held back only for the bound (checked well inside it, so a slow
        // scheduler cannot make the check land after it).
        let (calls, _joining, task) = prober(Duration::from_millis(2_000), true);
        wait_for_refreshes(&calls, 1).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "refreshed before the bound"
        );
        wait_for_refreshes(&calls, 3).await;
        task.abort();

        // Joining, but nothing arriving in bulk: the interval (200 ms) as usual.
        let (calls, _joining, task) = prober(Duration::from_secs(3600), false);
        wait_for_refreshes(&calls, 3).await;
        task.abort();
    }

    /// A target refresh can take seconds (a rebuild of the index from 10⁶ records is about
    /// 2 s), so it runs off the runtime: on a runtime of one thread, another task still runs
    /// while a refresh is in progress. The refresh here waits (at most 5 s) for the test's
    /// task to release it; run on the runtime's only thread, it would wait the whole 5 s with
    /// that task unable to run, and say it was never released.
    #[tokio::test(flavor = "current_thread")]
    async fn a_slow_target_refresh_does_not_hold_the_runtime() {
        use std::sync::atomic::AtomicBool;
        use std::sync::mpsc;
        let started = Arc::new(AtomicBool::new(false));
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = std::sync::Mutex::new(release_rx);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<bool>();
        let done_tx = std::sync::Mutex::new(Some(done_tx));
        let s = started.clone();
        let config = HealthConfig {
            enabled: true,
            interval: Duration::from_secs(3600),
            ..HealthConfig::default()
        };
        let task = tokio::spawn(run(
            Health::new(config),
            move || {
                s.store(true, Ordering::SeqCst);
                let released = release_rx
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .recv_timeout(Duration::from_secs(5))
                    .is_ok();
                if let Some(tx) = done_tx
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take()
                {
                    let _ = tx.send(released);
                }
                None
            },
            || Pace {
                backlog: false,
                joining: false,
            },
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !started.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the first refresh never started");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let _ = release_tx.send(());
        let released = done_rx.await.expect("the refresh reports");
        assert!(
            released,
            "the refresh held the runtime's only thread: the task meant to release it never ran"
        );
        task.abort();
    }

    /// The selection kept from the index's changes equals a full read of the index after every
    /// step of a seeded random run: writes, rewrites, tombstones, endpoints shared by zones and
    /// names, records expiring, members joining and leaving. The clock moves by 0 or by at least
    /// [`EXPIRY_RECHECK_MS`], so an expiry is always due to be seen.
    #[test]
    fn the_incremental_selection_equals_a_full_read_after_every_change(
    ) -> Result<(), Box<dyn std::error::Error>> {
        use dpin_protocol::{Freshness, Store};
        use rand::{Rng, SeedableRng};
        const NOW: u64 = 1_800_000_000_000;
        let seed: u64 = std::env::var("DPIN_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20261203);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let zones: Vec<ZoneKey> = (1..=4u8).map(|z| ZoneKey::from_seed([z; 32])).collect();
        let everyone: Vec<PeerId> = (1..=6).map(peer).collect();
        let me = everyone[0];
        let dir = tempfile::tempdir()?;
        let store = std::sync::RwLock::new(crate::store::DurableStore::open(
            &dir.path().join("s.redb"),
        )?);
        let mut index = ProbeIndex::default();
        let mut selection = Selection::default();
        let mut members: Vec<PeerId> = everyone[..3].to_vec();
        let mut now = NOW;
        let mut seqs: BTreeMap<(usize, u8), u64> = BTreeMap::new();
        for step in 0..400 {
            match rng.gen_range(0..10) {
                // Members join or leave (never this node): one, or up to three at once, so
                // a change can hold joins and leaves together.
                0 => {
                    for _ in 0..rng.gen_range(1..4) {
                        let p = everyone[rng.gen_range(1..everyone.len())];
                        match members.iter().position(|m| *m == p) {
                            Some(i) => {
                                members.remove(i);
                            }
                            None => members.push(p),
                        }
                    }
                    members.sort();
                    members.dedup();
                }
                // The clock moves past some expiries.
                1 => now += EXPIRY_RECHECK_MS * rng.gen_range(1..4),
                // A write: endpoints from a small pool, so zones and names share targets.
                _ => {
                    let z = rng.gen_range(0..zones.len());
                    let label = rng.gen_range(0..6u8);
                    let seq = seqs.entry((z, label)).or_insert(0);
                    *seq += 1;
                    let content = if rng.gen_bool(0.15) {
                        Content::Tombstone
                    } else {
                        let n = rng.gen_range(1..4);
                        // Distinct endpoints (a record may not name one twice).
                        let picked: BTreeSet<(u8, u16)> = (0..n)
                            .map(|_| (rng.gen_range(1..4), rng.gen_range(1..6)))
                            .collect();
                        Content::Endpoints(
                            picked
                                .into_iter()
                                .map(|(host, port)| Endpoint {
                                    host: Host::V4([198, 51, 100, host]),
                                    port,
                                    transport: Transport::Tcp,
                                    weight: 1,
                                })
                                .collect(),
                        )
                    };
                    let ttl = EXPIRY_RECHECK_MS * rng.gen_range(1..6);
                    let r = RecordBody {
                        zone: zones[z].zone(),
                        label: format!("l{label}"),
                        seq: *seq,
                        expires_at_ms: now + ttl,
                        content,
                    }
                    .sign(&zones[z])?;
                    let mut s = store.write().map_err(|e| e.to_string())?;
                    s.apply(&r, now, Freshness::Publish, None)?;
                }
            }
            index.refresh_from(&store);
            selection.update(&mut index, &members, me, 2, now);
            let expected = selected_from_scratch(&index, &members, me, 2, now);
            assert_eq!(
                index.mine_by_zone(),
                expected,
                "seed {seed}, step {step} (DPIN_TEST_SEED={seed} replays it)"
            );
            assert_eq!(
                selection.mine_len,
                expected.values().map(BTreeSet::len).sum::<usize>()
            );
        }
        Ok(())
    }

    /// A refresh costs what changed: nothing examined when nothing changed, the record's
    /// targets for one write, and the whole index only when the membership changes.
    #[test]
    fn a_refresh_examines_only_the_endpoints_that_changed() -> Result<(), Box<dyn std::error::Error>>
    {
        use dpin_protocol::{Freshness, Store};
        const NOW: u64 = 1_800_000_000_000;
        let key = ZoneKey::from_seed([9; 32]);
        let dir = tempfile::tempdir()?;
        let store = std::sync::RwLock::new(crate::store::DurableStore::open(
            &dir.path().join("s.redb"),
        )?);
        let write = |label: &str, seq: u64, port: u16| -> Result<(), Box<dyn std::error::Error>> {
            let r = RecordBody {
                zone: key.zone(),
                label: label.into(),
                seq,
                expires_at_ms: NOW + 3_600_000,
                content: Content::Endpoints(vec![Endpoint {
                    host: Host::V4([198, 51, 100, 7]),
                    port,
                    transport: Transport::Tcp,
                    weight: 1,
                }]),
            }
            .sign(&key)?;
            let mut s = store.write().map_err(|e| e.to_string())?;
            assert!(s.apply(&r, NOW, Freshness::Publish, None)?.is_winner());
            Ok(())
        };
        for i in 0..200u16 {
            write(&format!("svc{i}"), 1, 1000 + i)?;
        }
        let (me, other) = (peer(1), peer(2));
        let mut index = ProbeIndex::default();
        let mut sel = Selection::default();
        index.refresh_from(&store);
        assert!(sel.update(&mut index, &[me], me, 3, NOW));
        assert_eq!(sel.examined, 200, "the first refresh reads everything");
        assert_eq!(sel.mine_len, 200, "alone, this node probes every endpoint");
        assert!(sel
            .hand_over(&index, 1000, NOW, ProbeIndex::mine_by_zone)
            .is_some());
        // Nothing changed: nothing examined, nothing handed over.
        index.refresh_from(&store);
        assert!(!sel.update(&mut index, &[me], me, 3, NOW + 2_000));
        assert_eq!(sel.examined, 200);
        assert!(sel
            .hand_over(&index, 1000, NOW + 2_000, ProbeIndex::mine_by_zone)
            .is_none());
        // One record moves to another port: its old and new endpoint are examined.
        write("svc0", 2, 5000)?;
        index.refresh_from(&store);
        assert!(sel.update(&mut index, &[me], me, 3, NOW + 4_000));
        assert_eq!(sel.examined, 202);
        assert_eq!(sel.mine_len, 200);
        assert!(sel
            .hand_over(&index, 1000, NOW + 4_000, ProbeIndex::mine_by_zone)
            .is_some());
        // A selection over the prober's cap is handed over again only every
        // RETRACK_OVER_CAP_MS, however often it changes.
        write("svc1", 2, 5001)?;
        index.refresh_from(&store);
        assert!(sel.update(&mut index, &[me], me, 3, NOW + 6_000));
        assert!(sel
            .hand_over(&index, 10, NOW + 6_000, ProbeIndex::mine_by_zone)
            .is_none());
        let handed = sel
            .hand_over(&index, 10, NOW + 4_000 + RETRACK_OVER_CAP_MS, |i| {
                i.mine()
                    .take(1)
                    .map(|(z, set)| (z, set.take(10).collect()))
                    .collect()
            })
            .expect("due again");
        assert_eq!(
            handed.values().map(BTreeSet::len).sum::<usize>(),
            10,
            "over the cap, only the capped part is handed over"
        );
        // A member joins as the rule changes (k 3 -> 1): the whole index is read again, once.
        let mut two = vec![me, other];
        two.sort();
        index.refresh_from(&store);
        sel.update(&mut index, &two, me, 1, NOW + 8_000);
        assert_eq!(sel.examined, 404);
        assert!(sel.mine_len < 200, "the other member probes its share");
        // Under the same rule a member joining can only take endpoints this node probes, so
        // only those are examined (against the newcomer); one leaving can only hand over
        // endpoints it outranked this node on, so only the others are.
        let third = peer(3);
        let mut three = vec![me, other, third];
        three.sort();
        let (examined, mine) = (sel.examined, sel.mine_len as u64);
        sel.update(&mut index, &three, me, 1, NOW + 10_000);
        assert_eq!(
            sel.examined - examined,
            mine,
            "a join examines this node's endpoints"
        );
        assert!((sel.mine_len as u64) < mine, "the newcomer took some");
        let (examined, mine) = (sel.examined, sel.mine_len as u64);
        sel.update(&mut index, &two, me, 1, NOW + 12_000);
        assert_eq!(
            sel.examined - examined,
            200 - mine,
            "a leave examines the endpoints this node does not probe"
        );
        assert_eq!(
            index.mine_by_zone(),
            selected_from_scratch(&index, &two, me, 1, NOW + 12_000)
        );
        Ok(())
    }

    /// Memory per stored record (issue 14): the index holds each target once, in a compact
    /// entry, and the selection keeps no copy of the targets this node probes. At 10⁶ records
    /// (2M targets, every one probed by this node) the selection's copy cost 105 MB, the
    /// index 152 MB (76 bytes a target) and then 85 MB in a B-tree (43 bytes); packed it is
    /// 24 bytes a target, and at most twice that while changes wait for the next pack.
    /// Measured as the bytes each structure frees when dropped (the test binary's allocator
    /// counts them per thread).
    #[test]
    fn the_selection_keeps_no_copy_of_the_targets_and_an_index_entry_is_compact(
    ) -> Result<(), Box<dyn std::error::Error>> {
        use crate::alloc::counting::live_bytes;
        use dpin_protocol::{Freshness, Store};
        const NOW: u64 = 1_800_000_000_000;
        const RECORDS: u16 = 2_000;
        const PER_RECORD: u16 = 5;
        let keys: Vec<ZoneKey> = (1..=10u8).map(|z| ZoneKey::from_seed([z; 32])).collect();
        let dir = tempfile::tempdir()?;
        let store = std::sync::RwLock::new(crate::store::DurableStore::open(
            &dir.path().join("s.redb"),
        )?);
        // Record `i` at `seq`, its endpoints on `net`.x.
        let publish = |i: u16, seq: u64, net: [u8; 3]| -> Result<(), Box<dyn std::error::Error>> {
            let key = &keys[usize::from(i) % keys.len()];
            let r = RecordBody {
                zone: key.zone(),
                label: format!("svc{i}"),
                seq,
                expires_at_ms: NOW + 3_600_000,
                content: Content::Endpoints(
                    (0..PER_RECORD)
                        .map(|j| Endpoint {
                            host: Host::V4([net[0], net[1], net[2], (i % 200) as u8]),
                            port: 1 + i * PER_RECORD + j,
                            transport: Transport::Tcp,
                            weight: 1,
                        })
                        .collect(),
                ),
            }
            .sign(key)?;
            let mut s = store.write().map_err(|e| e.to_string())?;
            assert!(s.apply(&r, NOW, Freshness::Publish, None)?.is_winner());
            Ok(())
        };
        for i in 0..RECORDS {
            publish(i, 1, [198, 51, 100])?;
        }
        let targets = usize::from(RECORDS * PER_RECORD);
        let me = peer(1);
        let mut index = ProbeIndex::default();
        let mut selection = Selection::default();
        index.refresh_from(&store);
        selection.update(&mut index, &[me], me, 3, NOW);
        assert_eq!(
            selection.mine_len, targets,
            "alone, this node probes every target"
        );
        let held = live_bytes();
        drop(selection);
        let selection_bytes = held - live_bytes();
        let held = live_bytes();
        drop(index);
        let index_bytes = held - live_bytes();
        assert!(
            selection_bytes < 4_096,
            "the selection holds {selection_bytes} bytes for {targets} targets: a copy"
        );
        let per_target = index_bytes / targets as isize;
        assert!(
            per_target <= 25,
            "the index holds {per_target} bytes a target ({index_bytes} for {targets})"
        );
        // Every fifth record moves to other ports: the changes reach the index as changes
        // (into the zones' B-trees, packed entries marked gone), not as a rebuild.
        let mut index = ProbeIndex::default();
        index.refresh_from(&store);
        let _ = index.take_touched();
        for i in (0..RECORDS).step_by(5) {
            publish(i, 2, [203, 0, 113])?;
        }
        index.refresh_from(&store);
        // What the selection takes at each update.
        let (rebuilt, touched) = index.take_touched();
        assert!(
            !rebuilt && !touched.is_empty(),
            "the changes came from the feed"
        );
        drop(touched);
        let held = live_bytes();
        drop(index);
        let per_target = (held - live_bytes()) / targets as isize;
        assert!(
            per_target <= 48,
            "after changes the index holds {per_target} bytes a target"
        );
        Ok(())
    }
}
