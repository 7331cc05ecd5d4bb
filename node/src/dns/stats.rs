//! The DNS front-end's counters and answer-latency histograms, one set per node (the node's
//! registry renders them, [`crate::metrics`]), and as JSON for status.

use super::*;

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
    /// Answers with data sent while the node judged itself cut off (TTL shortened to
    /// [`dpin_protocol::reach::CUT_OFF_DNS_TTL_SECS`]).
    pub cut_off_answers: AtomicU64,
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
    /// Time to answer one query, by transport (`udp`, `tcp`), registered in the node's registry
    /// as `dpin_dns_answer_seconds`.
    pub answer_seconds: crate::metrics::HistogramFamily,
    /// Time from the kernel's receipt of a UDP query (its `SO_TIMESTAMPNS` stamp) to its
    /// response handed back to the kernel, registered as `dpin_dns_udp_sojourn_seconds`.
    /// Unlike `answer_seconds` it includes the wait in the socket queue: the time the answer
    /// threads were busy or not scheduled, which is most of a loaded server's latency and is
    /// not visible from inside the answer. It is measured at the server, so a client's own
    /// delays (a benchmark's, on a shared machine) are not in it. It ends when the answer's
    /// whole batch (at most `UDP_BATCH` answers) was handed back, so an answer also counts
    /// the rest of its batch (tens of µs).
    pub udp_sojourn_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Answered UDP queries without a receive timestamp (the kernel gave none): not in
    /// `udp_sojourn_seconds`.
    pub udp_unstamped: AtomicU64,
    /// How long an answer waited for the store's read lock when a writer held it
    /// (`dpin_dns_store_lock_wait_seconds`; an answer that found it free, or held only by
    /// readers, is not counted): a gossip merge, a flush's take of its dirty names, a
    /// compaction step. Other answer threads, resolves and a flush's encoding read beside
    /// it (with a mutex, stop 49, the other answer thread was about 90 % of the waiting).
    pub store_lock_wait_seconds: prometheus_client::metrics::histogram::Histogram,
}

impl Default for DnsStats {
    fn default() -> Self {
        Self::new()
    }
}

impl DnsStats {
    fn new() -> Self {
        let answer_seconds: crate::metrics::HistogramFamily =
            prometheus_client::metrics::family::Family::new_with_constructor(
                crate::metrics::dns_answer_histogram,
            );
        for proto in [Proto::Udp, Proto::Tcp] {
            let _ = answer_seconds.get_or_create(&[("transport", proto.as_str())]);
        }
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
            cut_off_answers: AtomicU64::new(0),
            dropped_malformed: AtomicU64::new(0),
            dropped_responses: AtomicU64::new(0),
            dropped_oversized: AtomicU64::new(0),
            io_errors: AtomicU64::new(0),
            rrl_dropped: AtomicU64::new(0),
            rrl_slipped: AtomicU64::new(0),
            tcp_rejected_per_ip: AtomicU64::new(0),
            tcp_evicted: AtomicU64::new(0),
            tcp_lifetime_closed: AtomicU64::new(0),
            answer_seconds,
            udp_sojourn_seconds: prometheus_client::metrics::histogram::Histogram::new(
                crate::metrics::DNS_SOJOURN_SECONDS_BUCKETS,
            ),
            udp_unstamped: AtomicU64::new(0),
            store_lock_wait_seconds: prometheus_client::metrics::histogram::Histogram::new(
                crate::metrics::STORE_LOCK_WAIT_SECONDS_BUCKETS,
            ),
        }
    }

    fn fields(&self) -> [(&'static str, &AtomicU64); 25] {
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
            ("cut_off_answers", &self.cut_off_answers),
            ("dropped_malformed", &self.dropped_malformed),
            ("dropped_responses", &self.dropped_responses),
            ("dropped_oversized", &self.dropped_oversized),
            ("io_errors", &self.io_errors),
            ("rrl_dropped", &self.rrl_dropped),
            ("rrl_slipped", &self.rrl_slipped),
            ("tcp_rejected_per_ip", &self.tcp_rejected_per_ip),
            ("tcp_evicted", &self.tcp_evicted),
            ("tcp_lifetime_closed", &self.tcp_lifetime_closed),
            ("udp_unstamped", &self.udp_unstamped),
        ]
    }

    /// The answer-latency histogram of one transport (a shared handle: observing it updates
    /// the registered family).
    pub fn answer_histogram(
        &self,
        proto: Proto,
    ) -> prometheus_client::metrics::histogram::Histogram {
        self.answer_seconds
            .get_or_create(&[("transport", proto.as_str())])
            .clone()
    }

    /// For `/metrics`: one `dpin_dns_<field>_total` counter per field.
    pub fn encode(
        &self,
        e: &mut prometheus_client::encoding::DescriptorEncoder,
    ) -> std::fmt::Result {
        for (name, v) in self.fields() {
            let full = format!("dpin_dns_{name}_total");
            crate::metrics::counter(e, &full, help(name), v.load(Ordering::Relaxed))?;
        }
        Ok(())
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

pub(super) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// `# HELP` text of each field (the field docs above, shortened).
fn help(field: &str) -> &'static str {
    match field {
        "udp_queries" => "UDP datagrams received.",
        "tcp_queries" => "TCP messages received.",
        "tcp_connections" => "TCP connections accepted and served.",
        "tcp_rejected" => "TCP connections closed at once: the total cap was reached.",
        "tcp_timeouts" => "TCP connections closed by a timeout (idle, slow read or write).",
        "noerror" => "NOERROR responses (including NODATA).",
        "nodata" => "NOERROR responses without answers.",
        "nxdomain" => "NXDOMAIN responses.",
        "refused" => "REFUSED responses (outside dpin., unsupported class).",
        "formerr" => "FORMERR responses.",
        "notimp" => "NOTIMP responses.",
        "badvers" => "BADVERS responses.",
        "servfail" => "SERVFAIL responses.",
        "truncated" => "Responses sent with the TC bit.",
        "cut_off_answers" => "Answers sent with a short TTL while the node judged itself cut off.",
        "dropped_malformed" => "Packets dropped unanswered: too short or undecodable.",
        "dropped_responses" => "Packets dropped unanswered: they were responses.",
        "dropped_oversized" => "Packets dropped unanswered: over the query size limit.",
        "io_errors" => "Socket errors (receive, send, accept).",
        "rrl_dropped" => "UDP queries dropped by response rate limiting.",
        "rrl_slipped" => "UDP queries answered with an empty TC answer by rate limiting.",
        "tcp_rejected_per_ip" => "TCP connections closed at once: the per-address cap was reached.",
        "tcp_evicted" => "TCP connections closed to make room at the total cap.",
        "tcp_lifetime_closed" => "TCP connections closed at their maximum lifetime.",
        "udp_unstamped" => "Answered UDP queries without a kernel receive timestamp.",
        _ => "DNS front-end counter.",
    }
}
