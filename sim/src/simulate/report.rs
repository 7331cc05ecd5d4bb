//! The figures of one run, printed as text or as one JSON object (`--json`).

use super::world::{Mesh, Stats, World};

/// The figures of one run. Scenario-specific fields are absent when they do not apply.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Nodes at start.
    pub nodes: usize,
    /// Live nodes at the end.
    pub live_nodes: usize,
    /// Seed.
    pub seed: u64,
    /// Events processed.
    pub events: u64,
    /// blake3 of the event log (hex): equal for equal seeds on one commit.
    pub event_log_digest: String,
    /// Mesh degrees used.
    pub mesh: Mesh,
    /// Mean connections per live node.
    pub mean_degree: f64,
    /// Mean mesh size per live node at the end.
    pub mean_mesh: f64,
    /// Simulated time at the end, ms.
    pub sim_time_ms: u64,
    /// Wall-clock time of the run, ms (filled by the caller).
    pub wall_ms: f64,
    /// "ok", or the violation.
    pub invariants: String,
    /// Counters.
    pub stats: Stats,
    /// Updates written (convergence).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updates: Option<usize>,
    /// Median hops of first deliveries by gossip.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hops_p50: Option<u16>,
    /// Most hops of any first delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hops_max: Option<u16>,
    /// Mean hops of first deliveries by gossip.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hops_mean: Option<f64>,
    /// Hops of the node each update reached last (max over updates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hops_last: Option<u16>,
    /// `2 × log_{D−1}(N)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hops_bound: Option<f64>,
    /// Full-message sends per node per update, over the whole run (IWANT answers included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sends_per_node_per_update: Option<f64>,
    /// The same, counted when the last node got the last update.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sends_per_node_per_update_at_delivery: Option<f64>,
    /// Duplicate copies per node per update.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicates_per_delivery: Option<f64>,
    /// First deliveries that came by anti-entropy rather than gossip.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_by_sync: Option<u64>,
    /// Virtual time when every node had every update.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at_ms: Option<u64>,
    /// Messages per live node per second while idle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_messages_per_node_per_s: Option<f64>,
    /// Of which the failure detector's probes, ping-reqs and answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_probe_messages_per_node_per_s: Option<f64>,
    /// Of which gossip's IHAVE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_ihave_per_node_per_s: Option<f64>,
    /// Peers each node's failure detector watches at the end of the idle window, mean.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_watched: Option<f64>,
    /// Peers marked down while up and reachable, by the end of the idle window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_false_downs: Option<u64>,
    /// Median time for a paused node's peers to mark it down, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detect_ms_p50: Option<u64>,
    /// Slowest peer to mark the paused node down, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detect_ms_max: Option<u64>,
    /// Peers that marked the paused node down, of its peers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detected_by: Option<(usize, usize)>,
    /// Slowest of the peers that *watched* the paused node when it stopped (chose it, or
    /// were chosen by it) to mark it down, ms: the 2 s target's measure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detect_watchers_ms_max: Option<u64>,
    /// The paused node's watchers that marked it down, of its watchers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detected_by_watchers: Option<(usize, usize)>,
    /// Time to converge: from the write to the last node (convergence), from the heal or the
    /// last fault to identical digests (the others), ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub converge_ms: Option<u64>,
    /// Records that differed (partition-heal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records: Option<usize>,
    /// All bytes sent after the heal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_after_heal: Option<u64>,
    /// Anti-entropy bytes sent after the heal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_bytes_after_heal: Option<u64>,
    /// Encoded size of the differing records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub differing_records_bytes: Option<u64>,
    /// Encoded size of what each node lacked, summed over nodes (= the differing records'
    /// size with 2 nodes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub needed_bytes: Option<u64>,
    /// `bytes_after_heal / needed_bytes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_ratio: Option<f64>,
    /// The command that replays this run.
    pub replay: String,
}

impl Report {
    /// A report with the world's common figures.
    pub fn new(w: &World) -> Self {
        Report {
            scenario: String::new(),
            nodes: w.cfg.nodes,
            live_nodes: w.live(),
            seed: w.cfg.seed,
            events: w.stats.events,
            event_log_digest: w.log_digest(),
            mesh: w.cfg.mesh,
            mean_degree: w.mean_degree(),
            mean_mesh: w.mean_mesh(),
            sim_time_ms: w.now(),
            wall_ms: 0.0,
            invariants: "ok".into(),
            stats: w.stats.clone(),
            updates: None,
            hops_p50: None,
            hops_max: None,
            hops_mean: None,
            hops_last: None,
            hops_bound: None,
            sends_per_node_per_update: None,
            sends_per_node_per_update_at_delivery: None,
            duplicates_per_delivery: None,
            delivered_by_sync: None,
            delivered_at_ms: None,
            idle_messages_per_node_per_s: None,
            idle_probe_messages_per_node_per_s: None,
            idle_ihave_per_node_per_s: None,
            mean_watched: None,
            idle_false_downs: None,
            detect_ms_p50: None,
            detect_ms_max: None,
            detected_by: None,
            detect_watchers_ms_max: None,
            detected_by_watchers: None,
            converge_ms: None,
            records: None,
            bytes_after_heal: None,
            sync_bytes_after_heal: None,
            differing_records_bytes: None,
            needed_bytes: None,
            bytes_ratio: None,
            replay: String::new(),
        }
    }

    /// Refreshes the common figures at the end of the run (`end_ms` virtual).
    pub fn finish(&mut self, w: &World, end_ms: u64) {
        self.live_nodes = w.live();
        self.events = w.stats.events;
        self.event_log_digest = w.log_digest();
        self.mean_degree = w.mean_degree();
        self.mean_mesh = w.mean_mesh();
        self.sim_time_ms = end_ms;
        self.stats = w.stats.clone();
        self.stats.verifications = w.verifications();
        self.stats.acked_missed_compacted = w.acked_missed_compacted();
    }

    /// Human-readable lines.
    pub fn text(&self) -> String {
        let mut s = format!(
            "scenario {} nodes {} (live {}) seed {}: invariants {}\n  events {}  sim {} ms  wall {:.0} ms  digest {}\n  mesh D={} D_lo={} D_hi={} lazy={}  mean degree {:.1}  mean mesh {:.1}\n  messages {}  bytes {}  full sends {}  duplicates {}  ihave {}  iwant {}  sync sessions {} (failed {})\n",
            self.scenario, self.nodes, self.live_nodes, self.seed, self.invariants,
            self.events, self.sim_time_ms, self.wall_ms, self.event_log_digest,
            self.mesh.n, self.mesh.n_low, self.mesh.n_high, self.mesh.lazy, self.mean_degree, self.mean_mesh,
            self.stats.messages, self.stats.bytes, self.stats.full_sends, self.stats.duplicates,
            self.stats.ihave, self.stats.iwant, self.stats.sync_sessions, self.stats.sync_failures,
        );
        let st = &self.stats;
        s += &format!(
            "  writes {} acked {} refused {} unacked-by-crash {} conflicts {} compacted {} acked-missed-before-compaction {} crashes {} restarts {} joins {} leaves {} partitions {} lost {} cut {} verifications {}\n",
            st.writes, st.acked, st.refused, st.unacked_crash, st.conflicts, st.compacted, st.acked_missed_compacted,
            st.crashes, st.restarts, st.joins, st.leaves, st.partitions, st.lost, st.cut, st.verifications
        );
        if let (Some(p50), Some(max), Some(bound)) = (self.hops_p50, self.hops_max, self.hops_bound)
        {
            s += &format!(
                "  hops p50 {} max {} (last node {}) bound 2·log_(D-1)(N) = {:.1}\n",
                p50,
                max,
                self.hops_last.unwrap_or(0),
                bound
            );
        }
        if let Some(x) = self.sends_per_node_per_update {
            s += &format!(
                "  full-message sends per node per update {:.2} ({:.2} at delivery), duplicates per node per update {:.2}, by sync {}\n",
                x,
                self.sends_per_node_per_update_at_delivery.unwrap_or(0.0),
                self.duplicates_per_delivery.unwrap_or(0.0),
                self.delivered_by_sync.unwrap_or(0)
            );
        }
        if let Some(x) = self.idle_messages_per_node_per_s {
            s += &format!("  idle messages per node per second {x:.3}");
            if let (Some(p), Some(i)) = (
                self.idle_probe_messages_per_node_per_s,
                self.idle_ihave_per_node_per_s,
            ) {
                s += &format!(" (probes {p:.3}, IHAVE {i:.3}, the rest {:.3})", x - p - i);
            }
            if let Some(m) = self.mean_watched {
                s += &format!("; each node watches {m:.2} peers");
            }
            s += "\n";
        }
        if let Some(x) = self.idle_false_downs {
            s += &format!("  false downs while idle {x}\n");
        }
        if let (Some(p50), Some(max), Some((by, of))) =
            (self.detect_ms_p50, self.detect_ms_max, self.detected_by)
        {
            s += &format!(
                "  paused node marked down by {by} of {of} peers: p50 {p50} ms, max {max} ms\n"
            );
        }
        if let (Some(max), Some((by, of))) =
            (self.detect_watchers_ms_max, self.detected_by_watchers)
        {
            s += &format!("  by {by} of its {of} watchers: max {max} ms\n");
        }
        if let (Some(b), Some(need)) = (self.bytes_after_heal, self.needed_bytes) {
            s += &format!(
                "  after heal: {} bytes ({} sync) for {} bytes needed ({} differing): ratio {:.2}\n",
                b,
                self.sync_bytes_after_heal.unwrap_or(0),
                need,
                self.differing_records_bytes.unwrap_or(0),
                self.bytes_ratio.unwrap_or(0.0)
            );
        }
        if let Some(c) = self.converge_ms {
            s += &format!("  converged in {c} ms (simulated)\n");
        }
        s += &format!("  replay: {}\n", self.replay);
        s
    }
}
