//! Log lines from the libraries under the node, bounded: a rate limit per call site and a
//! length limit per line.
//!
//! **Why.** A peer can make a library log. libp2p-gossipsub, for one, logs a WARN for every
//! message it cannot forward to a slow peer ("Send Queue full"), with the whole message in
//! `Debug` form, and more for every message over a peer's limits or with a bad signature. A
//! hand session of `dpin-bench gossip-load`, whose peers stop reading when starved, wrote
//! 2,889 such lines. A hostile peer could do it on purpose: fill the operator's disk and
//! spend the node's CPU on formatting. dpin's own call sites are not limited: they are
//! written to log once per decision and count what they drop on `/metrics` already (the
//! chaos harness also counts the nodes' ban lines, so each must be there). Nor are a
//! library's debug and trace lines, which show only when an operator asks for them.
//!
//! * [`SiteLimit`]: a token bucket per call site (a call site is one `tracing` macro in the
//!   code, so the map is bounded by the binary, not by peers): [`BURST`] lines at once, then
//!   one per [`REFILL_EVERY`]. What is dropped is counted by level
//!   (`dpin_log_lines_suppressed_total`) and by call site, and [`run_reporter`] writes one
//!   line a minute naming the sites that were cut.
//! * [`LimitLayer`]: the `tracing` layer that asks the limit before a library's event is
//!   formatted (a dropped event costs a map lookup, not its `Debug` output).
//! * [`Truncating`]: the writer that cuts a library's line at [`MAX_LINE_BYTES`] (at a
//!   character boundary) and marks the cut.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};

/// Lines a library call site may write at once.
pub const BURST: u32 = 10;
/// After the burst, one line per this long per call site (6 a minute).
pub const REFILL_EVERY: Duration = Duration::from_secs(10);
/// A library's log line is cut here (gossipsub's dumps of whole messages run to hundreds of
/// KB; a useful warning fits in far less).
pub const MAX_LINE_BYTES: usize = 4096;
/// How often [`run_reporter`] sums up what was suppressed.
pub const REPORT_EVERY: Duration = Duration::from_secs(60);
/// Call sites named in one report line (the most suppressed first).
const REPORT_SITES: usize = 5;

/// Levels in the order of [`SiteLimit::suppressed_by_level`].
const LEVELS: [(Level, &str); 5] = [
    (Level::ERROR, "error"),
    (Level::WARN, "warn"),
    (Level::INFO, "info"),
    (Level::DEBUG, "debug"),
    (Level::TRACE, "trace"),
];

/// Whether an event's lines are limited: a library's, at a level the node logs by default
/// (info and above). dpin's own are not (see the module docs), nor debug and trace lines,
/// which an operator turns on (`RUST_LOG`) to see everything a library says.
pub fn limited(meta: &Metadata<'_>) -> bool {
    !meta.target().starts_with("dpin") && *meta.level() <= Level::INFO
}

/// One call site's bucket.
struct Bucket {
    meta: &'static Metadata<'static>,
    tokens: u32,
    /// When the last token was added (or the bucket made).
    refilled: Instant,
    /// Dropped since the last report.
    suppressed: u64,
}

/// Token buckets per call site, and the counts of what they dropped.
pub struct SiteLimit {
    /// Keyed by the call site's metadata address (one `'static` per macro).
    sites: Mutex<BTreeMap<usize, Bucket>>,
    suppressed: [AtomicU64; LEVELS.len()],
}

impl Default for SiteLimit {
    fn default() -> Self {
        Self::new()
    }
}

impl SiteLimit {
    /// An empty limit (`const`, so the process's one is a plain `static`).
    pub const fn new() -> Self {
        Self {
            sites: Mutex::new(BTreeMap::new()),
            suppressed: [const { AtomicU64::new(0) }; LEVELS.len()],
        }
    }

    /// Whether the call site `meta` may write a line at `now`; counts it if not.
    pub fn admit(&self, meta: &'static Metadata<'static>, now: Instant) -> bool {
        let mut sites = self.sites.lock().unwrap_or_else(PoisonError::into_inner);
        let b = sites
            .entry(std::ptr::from_ref(meta) as usize)
            .or_insert(Bucket {
                meta,
                tokens: BURST,
                refilled: now,
                suppressed: 0,
            });
        let since = now.saturating_duration_since(b.refilled);
        let steps = since.as_nanos() / REFILL_EVERY.as_nanos().max(1);
        if steps > 0 {
            let add = u32::try_from(steps).unwrap_or(u32::MAX);
            b.tokens = b.tokens.saturating_add(add).min(BURST);
            // A full bucket does not bank time; a partial one keeps the remainder.
            b.refilled = if b.tokens == BURST {
                now
            } else {
                b.refilled + REFILL_EVERY * add
            };
        }
        if b.tokens > 0 {
            b.tokens -= 1;
            return true;
        }
        b.suppressed += 1;
        drop(sites);
        let i = LEVELS
            .iter()
            .position(|(l, _)| l == meta.level())
            .unwrap_or(LEVELS.len() - 1);
        if let Some(c) = self.suppressed.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        false
    }

    /// Lines dropped since start, by level name.
    pub fn suppressed_by_level(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        LEVELS
            .iter()
            .zip(&self.suppressed)
            .map(|((_, name), c)| (*name, c.load(Ordering::Relaxed)))
    }

    /// The call sites that dropped lines since the last call, most first (`target file:line`,
    /// count), and the total; resets the per-site counts.
    pub fn take_report(&self) -> (u64, Vec<(String, u64)>) {
        let mut sites = self.sites.lock().unwrap_or_else(PoisonError::into_inner);
        let mut cut: Vec<(String, u64)> = sites
            .values_mut()
            .filter(|b| b.suppressed > 0)
            .map(|b| {
                let n = std::mem::take(&mut b.suppressed);
                let m = b.meta;
                let site = format!(
                    "{} {}:{}",
                    m.target(),
                    m.file().unwrap_or("?"),
                    m.line().unwrap_or(0)
                );
                (site, n)
            })
            .collect();
        drop(sites);
        cut.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let total = cut.iter().map(|(_, n)| n).sum();
        cut.truncate(REPORT_SITES);
        (total, cut)
    }

    /// `dpin_log_lines_suppressed_total{level}`.
    pub fn encode(
        &self,
        e: &mut prometheus_client::encoding::DescriptorEncoder,
    ) -> std::fmt::Result {
        crate::metrics::counter_family(
            e,
            "dpin_log_lines_suppressed_total",
            "Library log lines dropped by the per-call-site rate limit (a peer can make a library log).",
            self.suppressed_by_level().map(|(l, n)| ([("level", l)], n)),
        )
    }
}

/// The process's one limit (one log output per process).
static LIMIT: SiteLimit = SiteLimit::new();

/// The process-wide limit [`LimitLayer::global`] applies and `/metrics` reads.
pub fn limit() -> &'static SiteLimit {
    &LIMIT
}

/// The layer that drops a library's event over its call site's budget before it is formatted.
pub struct LimitLayer {
    limit: &'static SiteLimit,
}

impl LimitLayer {
    /// Over the process-wide [`limit`].
    pub fn global() -> Self {
        Self { limit: limit() }
    }

    /// Over `limit` (tests).
    pub fn new(limit: &'static SiteLimit) -> Self {
        Self { limit }
    }
}

impl<S: Subscriber> Layer<S> for LimitLayer {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let meta = event.metadata();
        !limited(meta) || self.limit.admit(meta, Instant::now())
    }
}

/// Writes one line a [`REPORT_EVERY`] naming what the limit dropped, forever (spawn it on the
/// node's runtime). Its own line is dpin's, so it is never dropped.
pub async fn run_reporter() {
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let (total, sites) = limit().take_report();
        if total > 0 {
            tracing::warn!(
                suppressed = total,
                sites = ?sites,
                "library log lines dropped by the per-call-site limit ({BURST} at once, then one per {}s); see dpin_log_lines_suppressed_total",
                REFILL_EVERY.as_secs()
            );
        }
    }
}

/// A [`MakeWriter`] that cuts [`limited`] lines at [`MAX_LINE_BYTES`] (the others pass whole).
pub struct Truncating<M> {
    inner: M,
    max: usize,
}

impl<M> Truncating<M> {
    /// Cuts at [`MAX_LINE_BYTES`].
    pub fn new(inner: M) -> Self {
        Self::with_max(inner, MAX_LINE_BYTES)
    }

    /// Cuts at `max` bytes (tests).
    pub fn with_max(inner: M, max: usize) -> Self {
        Self { inner, max }
    }
}

/// One event's writer: `fmt` writes a formatted line through one of these.
pub struct CutWriter<W> {
    inner: W,
    /// Bytes still allowed; `None` for a line that is not cut.
    left: Option<usize>,
    cut: bool,
}

/// What ends a cut line.
const CUT_MARK: &[u8] = " …[cut]\n".as_bytes();

impl<W: Write> Write for CutWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(left) = self.left else {
            return self.inner.write(buf);
        };
        if self.cut {
            return Ok(buf.len());
        }
        if buf.len() <= left {
            self.inner.write_all(buf)?;
            self.left = Some(left - buf.len());
            return Ok(buf.len());
        }
        // Back off to a character boundary, so the file stays UTF-8.
        let mut end = left;
        while end > 0 && buf.get(end).is_some_and(|b| b & 0xC0 == 0x80) {
            end -= 1;
        }
        self.inner.write_all(buf.get(..end).unwrap_or_default())?;
        self.inner.write_all(CUT_MARK)?;
        self.cut = true;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Truncating<M> {
    type Writer = CutWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        CutWriter {
            inner: self.inner.make_writer(),
            left: None,
            cut: false,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        CutWriter {
            inner: self.inner.make_writer_for(meta),
            left: limited(meta).then_some(self.max),
            cut: false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tracing_subscriber::layer::SubscriberExt;

    /// The metadata of a few real call sites: two of a library's, one of dpin's.
    fn sites() -> Vec<&'static Metadata<'static>> {
        struct Grab(Arc<Mutex<Vec<&'static Metadata<'static>>>>);
        impl<S: Subscriber> Layer<S> for Grab {
            fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
                self.0.lock().unwrap().push(event.metadata());
            }
        }
        let got = Arc::new(Mutex::new(Vec::new()));
        let sub = tracing_subscriber::registry().with(Grab(got.clone()));
        tracing::subscriber::with_default(sub, || {
            tracing::warn!(target: "libp2p_gossipsub::behaviour", "one");
            tracing::debug!(target: "libp2p_swarm", "two");
            tracing::warn!("dpin's own");
        });
        let v = got.lock().unwrap().clone();
        v
    }

    #[test]
    fn a_call_site_writes_its_burst_then_one_line_per_refill_and_counts_the_rest() {
        let [a, b, _] = sites()[..] else {
            panic!("three call sites")
        };
        let limit = SiteLimit::new();
        let t0 = Instant::now();
        let passed = (0..100).filter(|_| limit.admit(a, t0)).count();
        assert_eq!(passed, BURST as usize);
        // Another call site has its own bucket.
        assert!(limit.admit(b, t0));
        // Just before a refill: still nothing; at it, one line; then nothing again.
        assert!(!limit.admit(a, t0 + REFILL_EVERY - Duration::from_millis(1)));
        assert!(limit.admit(a, t0 + REFILL_EVERY));
        assert!(!limit.admit(a, t0 + REFILL_EVERY));
        // A long quiet spell refills at most the burst.
        let later = t0 + REFILL_EVERY * 1000;
        assert_eq!(
            (0..100).filter(|_| limit.admit(a, later)).count(),
            BURST as usize
        );
        let by_level: BTreeMap<_, _> = limit.suppressed_by_level().collect();
        assert_eq!(by_level["warn"], 90 + 2 + 90);
        assert_eq!(by_level["debug"], 0);
        let (total, cut) = limit.take_report();
        assert_eq!(total, 182);
        assert_eq!(cut.len(), 1);
        assert!(
            cut[0]
                .0
                .starts_with("libp2p_gossipsub::behaviour node/src/logs.rs:"),
            "{cut:?}"
        );
        // The report resets the per-site counts, not the metric.
        assert_eq!(limit.take_report(), (0, Vec::new()));
        assert_eq!(
            limit.suppressed_by_level().map(|(_, n)| n).sum::<u64>(),
            182
        );
    }

    /// Lines written through [`Truncating`], by a subscriber like the node's.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl<'a> MakeWriter<'a> for Sink {
        type Writer = Sink;
        fn make_writer(&'a self) -> Sink {
            self.clone()
        }
    }

    #[test]
    fn a_flood_from_a_library_is_cut_to_its_burst_and_dpins_own_lines_all_pass() {
        let limit: &'static SiteLimit = Box::leak(Box::new(SiteLimit::new()));
        let sink = Sink::default();
        let sub = tracing_subscriber::fmt()
            .with_writer(Truncating::new(sink.clone()))
            .with_ansi(false)
            .with_max_level(Level::DEBUG)
            .finish()
            .with(LimitLayer::new(limit));
        tracing::subscriber::with_default(sub, || {
            for i in 0..500 {
                tracing::warn!(target: "libp2p_gossipsub::behaviour", i, "Send Queue full");
                tracing::warn!(i, "dpin decision");
                tracing::debug!(target: "libp2p_gossipsub::behaviour", i, "asked-for detail");
            }
        });
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches("Send Queue full").count(), BURST as usize);
        assert_eq!(text.matches("dpin decision").count(), 500);
        assert_eq!(text.matches("asked-for detail").count(), 500);
        let by_level: BTreeMap<_, _> = limit.suppressed_by_level().collect();
        assert_eq!(by_level["warn"], 500 - u64::from(BURST));
    }

    #[test]
    fn a_long_library_line_is_cut_at_a_character_boundary_and_marked() {
        let sink = Sink::default();
        let sub = tracing_subscriber::fmt()
            .with_writer(Truncating::with_max(sink.clone(), 200))
            .with_ansi(false)
            .finish();
        let long = "é".repeat(1000);
        tracing::subscriber::with_default(sub, || {
            tracing::warn!(target: "libp2p_gossipsub::behaviour", "dump {long}");
            tracing::warn!("ours {long}");
        });
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).expect("still UTF-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].len() <= 200 + CUT_MARK.len(), "{}", lines[0].len());
        assert!(lines[0].ends_with(" …[cut]"), "{}", lines[0]);
        assert!(lines[1].ends_with(&long), "dpin's own line is whole");
    }
}
