//! `/metrics`: one [prometheus-client] [`Registry`] per node, rendered by its one text encoder.
//!
//! # Where each number comes from
//!
//! * **Counters and gauges the node already keeps** (the atomics in [`crate::node::Metrics`],
//!   the failure detector, [`crate::net::NetStats`], [`crate::health::Health`],
//!   [`crate::api::HttpStats`], [`crate::dns::DnsStats`], [`crate::blobs::BlobStats`],
//!   [`crate::offers::OfferStats`]) are read at scrape time by one [`Collector`] that holds the
//!   node weakly ([`Node::encode_metrics`]). Each subsystem writes its own families next to its
//!   atomics with the helpers here ([`counter`], [`gauge`], [`counter_family`],
//!   [`gauge_family`]); status JSON reads the same atomics, so `/metrics` and `/v1/status`
//!   cannot disagree.
//! * **What only `/metrics` needs** is recorded straight into the registry ([`Recorders`]):
//!   records by path and outcome, and the histograms (apply latency, sync bytes per session,
//!   DNS answer latency, which [`crate::dns::DnsStats`] owns per node).
//! * **libp2p's own metrics** (`libp2p_swarm_*`, `libp2p_gossipsub_*`, `libp2p_kad_*`,
//!   `libp2p_identify_*`, `libp2p_ping_*`) come from `libp2p-metrics`: the network layer's
//!   event loop hands every swarm event to [`crate::net::swarm_metrics::SwarmMetrics`].
//!
//! # Names and format
//!
//! Names are the ones operators, the tests and `dpin-bench` already read; counters keep their
//! `_total` suffix. prometheus-client appends `_total` to a counter itself, so the helpers take
//! the full name (grep finds it) and strip the suffix before encoding. The text is OpenMetrics
//! (`# TYPE` lines name the family without `_total`, the body ends with `# EOF`), served with
//! the OpenMetrics content type ([`CONTENT_TYPE`]); it is also valid Prometheus text, and every
//! reader in this repository skips `#` lines. Counter and gauge values are integers.
//!
//! # Bounds
//!
//! No label value comes from a peer: every dpin label is one of a fixed set of `&'static str`
//! (paths, outcomes, reasons, states, statuses, transports). libp2p-metrics labels connection
//! families by the address's *protocol stack* (`/ip4/tcp/p2p`, never the address), which for
//! connections our transports made is one of a handful; addresses peers report to us (identify
//! listen and observed addresses, external-address candidates) are first reduced to the stacks
//! this node can speak, anything else becomes `other`
//! ([`crate::net::swarm_metrics::SwarmMetrics`]).
//!
//! [prometheus-client]: https://docs.rs/prometheus-client

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use dpin_protocol::Outcome;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::node::{Node, Shared};

/// Content type of `/metrics` (OpenMetrics 1.0 text, which ends with `# EOF`).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A label set of one pair; every value is a `&'static str` from a fixed list.
pub type Label1 = [(&'static str, &'static str); 1];
/// A label set of two pairs.
pub type Label2 = [(&'static str, &'static str); 2];
/// A histogram family whose buckets are fixed by a plain function.
pub type HistogramFamily = Family<Label1, Histogram, fn() -> Histogram>;

/// Where a record entered the node, for [`Recorders::record`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordPath {
    /// A writer's publish through the API.
    Publish,
    /// Gossip from a peer.
    Gossip,
    /// Anti-entropy (fetched by us or pushed to us).
    Sync,
}

impl RecordPath {
    /// Every path, in rendering order.
    pub const ALL: [RecordPath; 3] = [RecordPath::Publish, RecordPath::Gossip, RecordPath::Sync];

    /// The `path` label.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordPath::Publish => "publish",
            RecordPath::Gossip => "gossip",
            RecordPath::Sync => "sync",
        }
    }
}

/// Values of the `outcome` label of `dpin_records_total`: the merge outcomes
/// ([`Outcome::kind`]) plus `dropped` (not looked at: over budget, banned, or the validation
/// queue full). Undecodable records count as `invalid`.
pub const RECORD_OUTCOMES: [&str; 8] = [
    "applied",
    "duplicate",
    "restored",
    "stale",
    "conflict",
    "invalid",
    "cas_mismatch",
    "dropped",
];

/// Buckets of `dpin_apply_seconds`, in seconds. A gossip or sync apply is a signature check
/// (~37 µs) plus an in-memory merge, so the low buckets start at 100 µs; a publish waits for
/// its fsync, typically 1–20 ms; the 100 ms publish-to-visible target and its 5× margin sit
/// in the middle, and 10 s is past every timeout the apply path has (a stalled disk shows up
/// in `+Inf`). Roughly 2.5× steps keep the quantile error under that factor with 15 buckets.
pub const APPLY_SECONDS_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// Buckets of `dpin_sync_session_bytes` (request and response bytes of one anti-entropy
/// session this node started). A session between nodes already in sync is one digest
/// exchange, a few hundred bytes; each bucket is 4× the last up to the 4 MiB request cap
/// ([`crate::net::NetConfig::max_request_bytes`]) times 16, i.e. a catch-up of many chunks.
pub const SYNC_BYTES_BUCKETS: [f64; 11] = [
    64.0,
    256.0,
    1024.0,
    4096.0,
    16_384.0,
    65_536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];

/// Buckets of `dpin_dns_answer_seconds` (one query packet in, one response packet out, from
/// the store in memory, without the socket). An answer takes a few microseconds, so the
/// buckets start at 5 µs; Knot answers in 0.35 ms on average on this machine kind
/// (FIELD-NOTES), so everything past 1 ms is worth seeing, and past 100 ms something is badly
/// wrong (the lock held by a stalled writer).
pub const DNS_ANSWER_SECONDS_BUCKETS: [f64; 12] = [
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.025, 0.1,
];

/// Buckets of `dpin_dns_udp_sojourn_seconds` (from the kernel's receipt of a UDP query to its
/// response handed back to the kernel: the socket queue plus the answer). Finer around 1 ms,
/// the p99 target under load (issue 14): the share of answers in `le="0.001"` is the share
/// within it.
pub const DNS_SOJOURN_SECONDS_BUCKETS: [f64; 13] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0,
];

/// Buckets of `dpin_dns_store_lock_wait_seconds` (an answer's wait for the store's read lock,
/// when a writer held it): from a merge's few µs to a preempted holder's scheduler slices.
pub const STORE_LOCK_WAIT_SECONDS_BUCKETS: [f64; 10] = [
    0.00001, 0.00003, 0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 1.0,
];

fn apply_histogram() -> Histogram {
    Histogram::new(APPLY_SECONDS_BUCKETS)
}

/// A DNS answer-latency histogram ([`DNS_ANSWER_SECONDS_BUCKETS`]).
pub fn dns_answer_histogram() -> Histogram {
    Histogram::new(DNS_ANSWER_SECONDS_BUCKETS)
}

/// The families the node records into directly. Cheap to clone (shared handles).
#[derive(Clone, Debug)]
pub struct Recorders {
    records: Family<Label2, Counter>,
    apply_seconds: HistogramFamily,
    sync_session_bytes: Histogram,
}

impl Recorders {
    fn register(registry: &mut Registry) -> Self {
        let records = Family::<Label2, Counter>::default();
        for path in RecordPath::ALL {
            for outcome in RECORD_OUTCOMES {
                // Every series exists from the start (0), so rates and dashboards see it.
                let _ = records.get_or_create(&[("path", path.as_str()), ("outcome", outcome)]);
            }
        }
        registry.register(
            "dpin_records",
            "Records by the path they came in on and what the merge rule made of them \
             (dropped: not looked at)",
            records.clone(),
        );
        let apply_seconds: HistogramFamily = Family::new_with_constructor(apply_histogram);
        for path in RecordPath::ALL {
            let _ = apply_seconds.get_or_create(&[("path", path.as_str())]);
        }
        registry.register(
            "dpin_apply_seconds",
            "Time to apply a record: publish from arrival to durable and handed to gossip; \
             gossip from dequeue to verdict; sync per batch, durable for pushes, applied for fetches",
            apply_seconds.clone(),
        );
        let sync_session_bytes = Histogram::new(SYNC_BYTES_BUCKETS);
        registry.register(
            "dpin_sync_session_bytes",
            "Bytes sent and received in one anti-entropy session this node started",
            sync_session_bytes.clone(),
        );
        Self {
            records,
            apply_seconds,
            sync_session_bytes,
        }
    }

    /// Counts one record that came in through `path` with merge `outcome`.
    pub fn record(&self, path: RecordPath, outcome: &Outcome) {
        self.records
            .get_or_create(&[("path", path.as_str()), ("outcome", outcome.kind())])
            .inc();
    }

    /// Counts `n` records of `path` that could not be decoded (as `invalid`).
    pub fn undecodable(&self, path: RecordPath, n: u64) {
        if n > 0 {
            self.records
                .get_or_create(&[("path", path.as_str()), ("outcome", "invalid")])
                .inc_by(n);
        }
    }

    /// Counts one record of `path` dropped before it was looked at.
    pub fn dropped(&self, path: RecordPath) {
        self.records
            .get_or_create(&[("path", path.as_str()), ("outcome", "dropped")])
            .inc();
    }

    /// Observes the time one apply on `path` took.
    pub fn apply_latency(&self, path: RecordPath, took: Duration) {
        self.apply_seconds
            .get_or_create(&[("path", path.as_str())])
            .observe(took.as_secs_f64());
    }

    /// Observes the bytes one anti-entropy session moved.
    pub fn sync_session(&self, bytes: u64) {
        self.sync_session_bytes.observe(bytes as f64);
    }
}

/// The registry while it is being filled: dpin's own families first, then libp2p's (before the
/// network starts), then the node's collector ([`Builder::finish`], from [`Node::new`]).
#[derive(Debug)]
pub struct Builder {
    registry: Registry,
    recorders: Recorders,
    dns: Arc<crate::dns::DnsStats>,
    libp2p: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// A registry with dpin's recorded families (records, apply latency, sync bytes, DNS
    /// answer latency) registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let recorders = Recorders::register(&mut registry);
        let dns = Arc::new(crate::dns::DnsStats::default());
        registry.register(
            "dpin_dns_answer_seconds",
            "Time to turn one DNS query packet into its response, by transport",
            dns.answer_seconds.clone(),
        );
        registry.register(
            "dpin_dns_udp_sojourn_seconds",
            "Time from the kernel's receipt of a UDP query to its response handed back to the \
             kernel: the wait in the socket queue plus the answer",
            dns.udp_sojourn_seconds.clone(),
        );
        registry.register(
            "dpin_dns_store_lock_wait_seconds",
            "How long a DNS answer waited for the store's read lock, counted only when a \
             writer held it",
            dns.store_lock_wait_seconds.clone(),
        );
        Self {
            registry,
            recorders,
            dns,
            libp2p: false,
        }
    }

    /// Registers libp2p's metrics (`libp2p_*`) and returns the recorder the network layer
    /// feeds ([`crate::net::NetConfig::metrics`]). Call at most once: a second call returns a
    /// recorder that is not registered.
    pub fn libp2p(&mut self) -> crate::net::swarm_metrics::SwarmMetrics {
        if self.libp2p {
            return crate::net::swarm_metrics::SwarmMetrics::new(&mut Registry::default());
        }
        self.libp2p = true;
        crate::net::swarm_metrics::SwarmMetrics::new(&mut self.registry)
    }

    /// Adds the node's collector (held weakly: the registry lives inside the node) and
    /// freezes the registry.
    pub(crate) fn finish(mut self, node: Weak<Shared>) -> Telemetry {
        self.registry
            .register_collector(Box::new(NodeCollector(node)));
        Telemetry {
            registry: self.registry,
            recorders: self.recorders,
            dns: self.dns,
        }
    }
}

/// The node's finished registry and the handles it records through.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    /// Records by outcome, apply latency, sync bytes.
    pub recorders: Recorders,
    /// This node's DNS front-end counters and answer-latency histograms.
    pub dns: Arc<crate::dns::DnsStats>,
}

impl Telemetry {
    /// The whole exposition (OpenMetrics text, ending with `# EOF`).
    pub fn render(&self) -> Result<String, fmt::Error> {
        let mut out = String::with_capacity(32 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Reads the node's atomics at scrape time.
struct NodeCollector(Weak<Shared>);

impl fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeCollector")
    }
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        // Gone only while the node is being dropped: nothing left to report.
        match self.0.upgrade() {
            Some(shared) => Node(shared).encode_metrics(&mut encoder),
            None => Ok(()),
        }
    }
}

/// The family name prometheus-client wants for a counter: without `_total`, which it appends.
fn counter_family_name(name: &str) -> &str {
    debug_assert!(
        name.ends_with("_total"),
        "counter {name} must end in _total"
    );
    name.strip_suffix("_total").unwrap_or(name)
}

/// One unlabelled counter; `name` is the exposed name, `_total` included.
pub fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let m = e.encode_descriptor(counter_family_name(name), help, None, MetricType::Counter)?;
    ConstCounter::new(v).encode(m)
}

/// One unlabelled gauge.
pub fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> fmt::Result {
    let m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

/// A labelled counter family; `name` is the exposed name, `_total` included.
pub fn counter_family<const N: usize>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = ([(&'static str, &'static str); N], u64)>,
) -> fmt::Result {
    let mut fam =
        e.encode_descriptor(counter_family_name(name), help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(fam.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A labelled gauge family.
pub fn gauge_family<const N: usize>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = ([(&'static str, &'static str); N], i64)>,
) -> fmt::Result {
    let mut fam = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(v).encode(fam.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A count as a gauge value (counts never reach `i64::MAX`; saturate if one did).
pub fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Discovery and NAT (`dpin_nat_*`, `dpin_relay_*`, `dpin_holepunch_*`, `dpin_mdns_*`), from a
/// [`crate::net::NatStats`] snapshot.
pub fn encode_nat(e: &mut DescriptorEncoder, s: &crate::net::NatStats) -> fmt::Result {
    use crate::net::NatStatus;
    gauge_family(
        e,
        "dpin_nat_status",
        "AutoNAT's verdict on this node's reachability: 1 for the current status.",
        NatStatus::ALL.map(|st| ([("status", st.as_str())], i64::from(st == s.status))),
    )?;
    gauge(
        e,
        "dpin_nat_confidence",
        "AutoNAT's confidence in its verdict (0 to 3).",
        to_i64(s.confidence),
    )?;
    counter_family(
        e,
        "dpin_nat_probes_total",
        "Our AutoNAT probes: answered by a server, or failed (no server, timeout).",
        [
            ([("result", "answered")], s.autonat_probes_ok),
            ([("result", "failed")], s.autonat_probes_failed),
        ],
    )?;
    counter(
        e,
        "dpin_nat_dialbacks_served_total",
        "AutoNAT dial-backs this node made for other nodes.",
        s.autonat_served,
    )?;
    gauge(
        e,
        "dpin_relay_reservations_held",
        "Relay reservations this node holds now (--relay).",
        to_i64(s.reservations_held),
    )?;
    counter_family(
        e,
        "dpin_relay_reservations_total",
        "Relay reservations for this node: accepted (renewals not counted) or lost/refused.",
        [
            ([("result", "accepted")], s.reservations_made),
            ([("result", "lost")], s.reservations_lost),
        ],
    )?;
    counter_family(
        e,
        "dpin_relay_circuits_total",
        "Relayed connections of this node: inbound (a peer reached us through our relay) or outbound.",
        [
            ([("direction", "inbound")], s.circuits_in),
            ([("direction", "outbound")], s.circuits_out),
        ],
    )?;
    gauge(
        e,
        "dpin_relay_server_reservations",
        "As a relay server (--relay-server): reservations other nodes hold now.",
        to_i64(s.server_reservations),
    )?;
    counter_family(
        e,
        "dpin_relay_server_reservation_requests_total",
        "As a relay server: reservation requests accepted (renewals included) or denied.",
        [
            ([("result", "accepted")], s.server_reservations_accepted),
            ([("result", "denied")], s.server_reservations_denied),
        ],
    )?;
    gauge(
        e,
        "dpin_relay_server_circuits",
        "As a relay server: circuits open now.",
        to_i64(s.server_circuits),
    )?;
    counter_family(
        e,
        "dpin_relay_server_circuit_requests_total",
        "As a relay server: circuit requests accepted or denied.",
        [
            ([("result", "accepted")], s.server_circuits_accepted),
            ([("result", "denied")], s.server_circuits_denied),
        ],
    )?;
    counter_family(
        e,
        "dpin_holepunch_total",
        "DCUtR: relayed connections upgraded to direct ones, or upgrades that failed.",
        [
            ([("result", "direct")], s.holepunch_ok),
            ([("result", "failed")], s.holepunch_failed),
        ],
    )?;
    counter(
        e,
        "dpin_nat_direct_dials_total",
        "Direct dials to peers reached only through a relay.",
        s.direct_dials,
    )?;
    counter(
        e,
        "dpin_nat_direct_upgrades_total",
        "Relayed connections replaced by a direct one (direct dial or hole punch).",
        s.direct_upgrades,
    )?;
    gauge(
        e,
        "dpin_relayed_connections",
        "Connections running over a relay circuit now.",
        to_i64(s.relayed_connections),
    )?;
    counter(
        e,
        "dpin_nat_dialbacks_closed_total",
        "AutoNAT dial-back connections closed once the probe was answered.",
        s.dialbacks_closed,
    )?;
    counter(
        e,
        "dpin_mdns_discovered_total",
        "Peers announced on the LAN by mDNS (--mdns), each announcement counted.",
        s.mdns_discovered,
    )
}

/// The network layer's counters (`dpin_net_*`), from a [`crate::net::NetStats`] snapshot.
pub fn encode_net(e: &mut DescriptorEncoder, s: &crate::net::NetStats) -> fmt::Result {
    use crate::net::BanReason;
    for (name, help, v) in [
        (
            "dpin_net_dropped_gossip_total",
            "Gossip messages dropped: the node did not keep up.",
            s.dropped_gossip,
        ),
        (
            "dpin_net_dropped_events_total",
            "Network events dropped: channel full or closed.",
            s.dropped_events,
        ),
        (
            "dpin_net_dropped_probes_total",
            "Liveness probes not sent: too many in flight or queue full.",
            s.dropped_probes,
        ),
        (
            "dpin_net_probe_floods_total",
            "Probe streams closed: the peer probed faster than the per-second bound.",
            s.probe_floods,
        ),
        (
            "dpin_net_probes_on_stream_total",
            "Direct liveness probes sent on a long-lived probe stream.",
            s.probes_on_stream,
        ),
        (
            "dpin_net_probes_as_requests_total",
            "Direct liveness probes sent as /dpin/probe/1 requests (older peers).",
            s.probes_as_requests,
        ),
        (
            "dpin_net_trimmed_total",
            "Connections closed to keep the target degree.",
            s.trimmed,
        ),
        (
            "dpin_net_released_by_peer_total",
            "Connections a peer closed to keep its own target degree.",
            s.released_by_peer,
        ),
        (
            "dpin_net_connected_total",
            "Peers connected (first connection), i.e. connection churn.",
            s.connected,
        ),
        (
            "dpin_net_dials_skipped_released_total",
            "Dials not made because the peer was trimmed by or from us recently.",
            s.dials_skipped_released,
        ),
        (
            "dpin_net_unsubscribed_resets_total",
            "Peers reconnected afresh because gossipsub never heard their subscription (lost with a refused or half-open connection): at their first gossip, or after a grace.",
            s.unsubscribed_resets,
        ),
        (
            "dpin_net_half_open_resets_total",
            "Peers reconnected afresh because they re-dialled us while we held an older connection (half-open after a cut).",
            s.half_open_resets,
        ),
        (
            "dpin_net_bans_evicted_total",
            "Bans dropped early to stay within the bound on bans.",
            s.bans_evicted,
        ),
        (
            "dpin_net_ban_refused_connections_total",
            "Connections refused because the peer is banned.",
            s.ban_refused,
        ),
        (
            "dpin_net_dropped_bans_total",
            "Ban commands not delivered: command queue full.",
            s.dropped_bans,
        ),
    ] {
        counter(e, name, help, v)?;
    }
    gauge(
        e,
        "dpin_net_banned_peers",
        "Peers banned right now.",
        to_i64(s.banned_now),
    )?;
    gauge(
        e,
        "dpin_net_inbound_buffered_bytes",
        "Bytes of inbound requests read and not yet answered.",
        to_i64(s.inbound_buffered_bytes),
    )?;
    counter_family(
        e,
        "dpin_net_bans_total",
        "Peers banned, by reason.",
        BanReason::ALL.map(|r| ([("reason", r.as_str())], s.bans_for(r))),
    )?;
    counter_family(
        e,
        "dpin_net_graylist_decisions_total",
        "Peers found at gossipsub's graylist, by decision: banned (our validation rejected their messages recently) or left to gossipsub's own decaying graylist (no rejections, e.g. broken IWANT promises behind a one-way cut).",
        [
            (
                [("decision", "banned")],
                s.bans_for(BanReason::Graylisted),
            ),
            (
                [("decision", "not_banned_no_rejections")],
                s.graylisted_not_banned,
            ),
        ],
    )?;
    counter_family(
        e,
        "dpin_net_inbound_refused_total",
        "Inbound requests refused by the buffering bounds, by reason.",
        [
            (
                [("reason", "per_connection")],
                s.inbound_over_connection_limit,
            ),
            ([("reason", "byte_budget")], s.inbound_over_byte_budget),
        ],
    )?;
    counter_family(
        e,
        "dpin_net_gossip_undelivered_total",
        "Gossip messages not sent to a peer that stopped reading, by reason (anti-entropy repairs them).",
        [
            ([("reason", "queue_full")], s.gossip_queue_full),
            ([("reason", "timeout")], s.gossip_timed_out),
        ],
    )?;
    counter_family(
        e,
        "dpin_net_tcp_backoff_cap_total",
        "TCP connections by whether their retransmission backoff could be capped at 1 s (TCP_RTO_MAX_MS, Linux 6.15+): set, or unsupported (the system's backoff applies).",
        [
            ([("result", "set")], s.tcp_backoff_capped),
            ([("result", "unsupported")], s.tcp_backoff_uncapped),
        ],
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use dpin_protocol::{Content, ZoneKey};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Series (the text before the value) that the e2e tests, the chaos harness, dpin-bench and
    /// deploy/hostile-bench.py read from `/metrics`: each must still be exposed, under the same
    /// name and labels.
    const READ_BY_TOOLS: &[&str] = &[
        "dpin_publish_applied_total",
        "dpin_publish_refused_total",
        "dpin_gossip_accepted_total",
        "dpin_gossip_ignored_total",
        "dpin_gossip_rejected_total",
        "dpin_gossip_rate_limited_total",
        "dpin_conflicts_total",
        "dpin_sync_applied_total",
        "dpin_sync_failures_total",
        "dpin_sync_bad_requests_total",
        "dpin_sync_invalid_total",
        "dpin_records_ahead_of_clock_total",
        "dpin_bodies_restored_total",
        "dpin_bodies_compacted_total",
        "dpin_ingest_dropped_total{path=\"gossip\",reason=\"over_budget\"}",
        "dpin_ingest_offences_total{path=\"gossip\"}",
        "dpin_peer_bans_total",
        "dpin_detector_probes_total",
        "dpin_detector_downs_by_silence_total",
        "dpin_detector_suspected_total",
        "dpin_detector_indirect_rounds_total",
        "dpin_detector_late_ticks_total",
        "dpin_detector_local_health",
        "dpin_cut_off",
        "dpin_peers{state=\"alive\"}",
        "dpin_peers{state=\"suspect\"}",
        "dpin_peers{state=\"down\"}",
        "dpin_net_dropped_gossip_total",
        "dpin_net_dropped_events_total",
        "dpin_net_dropped_probes_total",
        "dpin_net_probe_floods_total",
        "dpin_net_probes_on_stream_total",
        "dpin_net_probes_as_requests_total",
        "dpin_net_trimmed_total",
        "dpin_net_released_by_peer_total",
        "dpin_net_connected_total",
        "dpin_net_dials_skipped_released_total",
        "dpin_net_unsubscribed_resets_total",
        "dpin_net_half_open_resets_total",
        "dpin_net_banned_peers",
        "dpin_net_bans_evicted_total",
        "dpin_net_ban_refused_connections_total",
        "dpin_net_dropped_bans_total",
        "dpin_net_inbound_buffered_bytes",
        "dpin_net_bans_total{reason=\"graylisted\"}",
        "dpin_net_inbound_refused_total{reason=\"byte_budget\"}",
        "dpin_net_gossip_undelivered_total{reason=\"queue_full\"}",
        "dpin_net_gossip_undelivered_total{reason=\"timeout\"}",
        "dpin_probes_total",
        "dpin_probe_failures_total",
        "dpin_probe_refused_total{reason=\"private\"}",
        "dpin_probe_tracked",
        "dpin_probe_observations_accepted_total",
        "dpin_http_connections_total",
        "dpin_http_rejected_total{reason=\"per_ip_cap\"}",
        "dpin_http_head_timeouts_total",
        "dpin_http_evicted_total",
        "dpin_http_uploads_refused_total{reason=\"not_loopback\"}",
        "dpin_http_handler_timeouts_total",
        "dpin_http_refused_total{reason=\"rate\"}",
        "dpin_http_refused_total{reason=\"concurrency\"}",
        "dpin_http_refused_total{reason=\"unauthorized\"}",
        "dpin_http_write_stalls_total",
        "dpin_http_clients_tracked",
        "dpin_http_errors_total{status=\"429\"}",
        "dpin_dns_rrl_dropped_total",
        "dpin_dns_rrl_slipped_total",
        "dpin_dns_tcp_evicted_total",
        "dpin_dns_udp_queries_total",
        "dpin_dns_cut_off_answers_total",
        "dpin_blob_refused_total{reason=\"no_offer\"}",
        "dpin_blob_bad_index_total",
        "dpin_blob_repairs_on_leave_total",
        "dpin_blob_replication{state=\"full\"}",
        "dpin_blob_replication{state=\"under\"}",
        "dpin_blob_replication_missing_copies",
        "dpin_offers_counted",
        "dpin_offers_ignored{reason=\"expired\"}",
    ];

    /// A real node (store, network, health, blobs) in this process, with its API on loopback
    /// (also the API's wire tests' node).
    pub(crate) async fn node(dir: &std::path::Path) -> (Node, std::net::SocketAddr) {
        let (node, api, _events) = node_with_events(dir).await;
        (node, api)
    }

    /// [`node`] with its network events, for a test that runs the node's event loop
    /// (`crate::node::run_events`: it then answers peers and syncs on connect).
    pub(crate) async fn node_with_events(
        dir: &std::path::Path,
    ) -> (
        Node,
        std::net::SocketAddr,
        tokio::sync::mpsc::Receiver<crate::net::NetEvent>,
    ) {
        node_with_events_probing(dir, false).await
    }

    /// [`node`] with endpoint health on or off (on: nothing probes, but answers go through
    /// the health states, which a test may set).
    pub(crate) async fn node_with_probing(
        dir: &std::path::Path,
        probing: bool,
    ) -> (Node, std::net::SocketAddr) {
        let (node, api, _events) = node_with_events_probing(dir, probing).await;
        (node, api)
    }

    async fn node_with_events_probing(
        dir: &std::path::Path,
        probing: bool,
    ) -> (
        Node,
        std::net::SocketAddr,
        tokio::sync::mpsc::Receiver<crate::net::NetEvent>,
    ) {
        let store = crate::store::DurableStore::open(&dir.join("store.redb")).unwrap();
        let mut telemetry = Builder::new();
        let mut config = crate::net::NetConfig::new(
            libp2p::identity::Keypair::generate_ed25519(),
            vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            vec![],
        );
        config.metrics = Some(telemetry.libp2p());
        let (net, events) = crate::net::spawn(config).await.unwrap();
        let health = crate::health::Health::new(crate::health::HealthConfig {
            enabled: probing,
            ..crate::health::HealthConfig::default()
        });
        let blobs = Arc::new(crate::blobs::BlobStore::open(dir.join("blobs")).unwrap());
        let node = Node::new(store, net, dir.to_owned(), health, blobs, telemetry);
        let listener = crate::api::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let api = listener.local_addr().unwrap();
        tokio::spawn(crate::api::serve(node.clone(), listener));
        (node, api, events)
    }

    /// `GET /metrics`: (content type, body).
    pub(crate) async fn scrape(api: std::net::SocketAddr) -> (String, String) {
        let mut s = tokio::net::TcpStream::connect(api).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let ctype = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-type:")
                    .map(|v| v.trim().to_owned())
            })
            .unwrap_or_default();
        (ctype, body.to_owned())
    }

    /// One histogram rendered alone as the family `h` (its series `h_bucket`, `h_count`,
    /// `h_sum`).
    pub(crate) fn histogram_text(h: &Histogram) -> String {
        let mut registry = Registry::default();
        registry.register("h", "test", h.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        text
    }

    /// A histogram's count and sum.
    pub(crate) fn histogram_count_sum(h: &Histogram) -> (u64, f64) {
        let text = histogram_text(h);
        let count = value(&text, "h_count").unwrap_or(0.0);
        (count as u64, value(&text, "h_sum").unwrap_or(0.0))
    }

    /// The value of `series` (exact name and labels), as the tests' readers parse it.
    pub(crate) fn value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(series)?;
            rest.starts_with(' ').then(|| rest.trim().parse().ok())?
        })
    }

    #[tokio::test]
    async fn metrics_renders_one_registry_with_dpin_and_libp2p_families() {
        let dir = tempfile::tempdir().unwrap();
        let (node, api) = node(dir.path()).await;
        let key = ZoneKey::generate(&mut rand::rngs::OsRng);
        let eps = || Content::Endpoints(vec!["127.0.0.1:80".parse().unwrap()]);
        let now = crate::node::now_ms();
        let r2 = crate::publish::sign(&key, "web", eps(), 2, 60_000, now).unwrap();
        let r1 = crate::publish::sign(&key, "web", eps(), 1, 60_000, now).unwrap();
        assert!(node.publish(r2, None).await.unwrap().outcome.is_winner());
        assert!(!node.publish(r1, None).await.unwrap().outcome.is_winner());

        let (ctype, text) = scrape(api).await;
        assert_eq!(ctype, CONTENT_TYPE);
        assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
        // Every sample line is `series value`, the value a number; counters and gauges are
        // integers (the e2e readers parse them as u64).
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, v) = l.rsplit_once(' ').unwrap();
            let v: f64 = v.parse().unwrap_or_else(|_| panic!("bad value in {l:?}"));
            assert!(
                series.starts_with("dpin_") || series.starts_with("libp2p_"),
                "{l}"
            );
            if !series.contains("_seconds") && !series.contains("_bytes_sum") {
                assert_eq!(v.fract(), 0.0, "{l}");
            }
        }
        for series in READ_BY_TOOLS {
            assert!(value(&text, series).is_some(), "{series} missing:\n{text}");
        }
        // Operators' view of the detector's watch ring and of the ingest budget's peer table
        // (issues 16 and 12): present, and the one node here tracks no peer yet.
        for series in [
            "dpin_detector_watched_peers",
            "dpin_detector_unwatched_probes_total",
            "dpin_detector_sweeps_total",
            "dpin_ingest_peers_banned",
        ] {
            assert!(value(&text, series).is_some(), "{series} missing:\n{text}");
        }
        assert!(
            value(&text, "dpin_ingest_peers_tracked").is_some_and(|v| {
                v <= dpin_protocol::ingest::BudgetConfig::default().max_peers as f64
            }),
            "dpin_ingest_peers_tracked missing or beyond its bound:\n{text}"
        );
        // A counter is declared once, without `_total`, and exposed with it.
        assert!(text.contains("# TYPE dpin_publish_applied counter\n"));
        assert_eq!(text.matches("# TYPE dpin_records counter\n").count(), 1);

        // The labelled reason counter: one applied, one stale publish.
        let rec = |o: &str| {
            value(
                &text,
                &format!("dpin_records_total{{path=\"publish\",outcome=\"{o}\"}}"),
            )
        };
        assert_eq!(rec("applied"), Some(1.0));
        assert_eq!(rec("stale"), Some(1.0));
        assert_eq!(rec("conflict"), Some(0.0));
        assert_eq!(
            value(
                &text,
                "dpin_records_total{path=\"gossip\",outcome=\"dropped\"}"
            ),
            Some(0.0)
        );
        assert_eq!(value(&text, "dpin_publish_applied_total"), Some(1.0));
        assert_eq!(value(&text, "dpin_publish_refused_total"), Some(1.0));

        // A histogram with its buckets: two publishes timed, the +Inf bucket holds both.
        assert!(text.contains("# TYPE dpin_apply_seconds histogram\n"));
        assert_eq!(
            value(&text, "dpin_apply_seconds_count{path=\"publish\"}"),
            Some(2.0)
        );
        assert_eq!(
            value(
                &text,
                "dpin_apply_seconds_bucket{le=\"+Inf\",path=\"publish\"}"
            ),
            Some(2.0),
            "{text}"
        );
        let buckets = text
            .lines()
            .filter(|l| {
                l.starts_with("dpin_apply_seconds_bucket{") && l.contains("path=\"publish\"")
            })
            .count();
        assert_eq!(
            buckets,
            APPLY_SECONDS_BUCKETS.len() + 1,
            "every bound and +Inf"
        );
        assert!(text.contains("# TYPE dpin_dns_answer_seconds histogram\n"));
        assert!(text.contains("# TYPE dpin_dns_udp_sojourn_seconds histogram\n"));
        assert!(text.contains("# TYPE dpin_sync_session_bytes histogram\n"));
        // Gauges: peers by every state, endpoints by health.
        assert_eq!(value(&text, "dpin_peers{state=\"alive\"}"), Some(0.0));
        assert_eq!(
            value(&text, "dpin_endpoints{state=\"unhealthy\"}"),
            Some(0.0)
        );

        // libp2p's own families, in the same registry: the listener we opened was recorded.
        assert!(
            value(
                &text,
                "libp2p_swarm_new_listen_addr_total{protocols=\"/ip4/tcp\"}"
            )
            .is_some_and(|v| v >= 1.0),
            "{text}"
        );
        for family in [
            "# TYPE libp2p_gossipsub_messages counter",
            "# TYPE libp2p_kad_inbound_requests counter",
            "# TYPE libp2p_identify_received counter",
            "# TYPE libp2p_ping_rtt_seconds histogram",
        ] {
            assert!(text.contains(family), "{family} missing");
        }
        // Bounded: no peer id is ever a label value.
        assert!(!text.contains("12D3Koo"));
    }

    #[test]
    fn dns_counters_belong_to_their_node() {
        let a = Builder::new();
        let b = Builder::new();
        a.dns
            .udp_queries
            .fetch_add(3, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            b.dns.udp_queries.load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }

    /// A source that holds no name.
    struct Empty;

    impl crate::dns::Source for Empty {
        fn answer(&self, _: &str, _: u64) -> Option<crate::answer::Answer> {
            None
        }
    }

    #[test]
    fn every_dns_packet_is_timed_in_its_nodes_histogram_by_transport() {
        let builder = Builder::new();
        let responder = crate::dns::Responder::with_stats(
            Empty,
            &std::collections::BTreeMap::new(),
            builder.dns.clone(),
        );
        // Garbage too: a dropped packet costs time as well.
        assert!(responder
            .respond(&[0u8; 5], crate::dns::Proto::Udp, 0)
            .is_none());
        let text = builder.finish(Weak::new()).render().unwrap();
        assert_eq!(
            value(&text, "dpin_dns_answer_seconds_count{transport=\"udp\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "dpin_dns_answer_seconds_count{transport=\"tcp\"}"),
            Some(0.0)
        );
    }

    #[test]
    fn bucket_bounds_increase() {
        for b in [
            &APPLY_SECONDS_BUCKETS[..],
            &SYNC_BYTES_BUCKETS[..],
            &DNS_ANSWER_SECONDS_BUCKETS[..],
        ] {
            assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?}");
        }
    }

    /// Every family `deploy/grafana-dpin.json` queries is one a node declares: a renamed or
    /// removed metric breaks this test, not a panel on an operator's screen.
    #[tokio::test]
    async fn the_grafana_dashboard_queries_only_families_a_node_declares() {
        let dir = tempfile::tempdir().unwrap();
        let (_node, api) = node(dir.path()).await;
        let (_, text) = scrape(api).await;
        let declared: std::collections::BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../deploy/grafana-dpin.json")).unwrap();
        let mut queried = std::collections::BTreeSet::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap();
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if word.starts_with("dpin_") || word.starts_with("libp2p_") {
                        queried.insert(word.to_owned());
                    }
                }
            }
        }
        assert!(queried.len() > 30, "the dashboard's queries: {queried:?}");
        for name in &queried {
            // A sample's name is its family's, plus `_total` for counters and `_bucket`,
            // `_count`, `_sum` for histograms.
            let family = ["_total", "_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| declared.contains(f)))
                .unwrap_or(name);
            assert!(
                declared.contains(family),
                "the dashboard queries {name}, which no node declares:\n{text}"
            );
        }
    }
}
