//! A hand-written SVG timeline of a chaos run, readable at a glance:
//!
//! * one lane per node at the top, with each fault interval as a coloured bar (kill, pause,
//!   partition, clock skew with its offset), and the same intervals as light bands behind the
//!   main chart;
//! * per second, stacked bars of reads answered with endpoints (green), answers without a
//!   record (grey: an expired name, or one not there yet — the checker decides which are
//!   empty), empty answers as judged by the checker (red) and reads that got no answer (amber:
//!   a faulted node) — left axis; failed rounds (nobody answered), empty answers and reads that
//!   went backwards as red marks on the axis, since any of them is a failure;
//! * propagation latency per second (median, and max as a thin line) — right axis;
//! * stale answers (older than the newest write acknowledged more than the bound before) as
//!   ticks along the top of the chart — violet when some answer of that second did not say
//!   its node was cut off, lavender when every one did (readers fail over from those), pale
//!   when a partition explains them all — and as dots on the answering node's lane (filled:
//!   did not say cut off; hollow: said so);
//! * group partitions (split, one-way cut) on every lane they cut, labelled with the node's
//!   side (A: the smaller half, or the side that cannot hear; B: the rest); the link model and
//!   anything else the caller puts on the title's second line under the title.
//!
//! No plotting library: the picture is simple, and plain SVG text diffs and renders anywhere.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::checker::Findings;
use crate::history::{FaultKind, History, OpKind, OpOutcome};

const W: f64 = 1100.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 80.0;
const TOP: f64 = 50.0;
const LANE_H: f64 = 14.0;
const PLOT_H: f64 = 300.0;
const BOTTOM: f64 = 90.0;

fn color(kind: FaultKind) -> &'static str {
    match kind {
        FaultKind::Kill => "#8c564b",
        FaultKind::Pause => "#9467bd",
        FaultKind::Partition => "#17becf",
        FaultKind::Skew => "#bcbd22",
        FaultKind::Split => "#e377c2",
        FaultKind::OneWay => "#7f7f7f",
        FaultKind::Restart => "#ff7f0e",
    }
}

/// Which side of a group partition node `f.node` was on: "A" or "B".
fn side(f: &crate::history::FaultSpan) -> Option<&'static str> {
    let g = f.groups.as_deref()?;
    if g.first().is_some_and(|a| a.contains(&f.node)) {
        Some("A")
    } else {
        Some("B")
    }
}

fn fault_label(f: &crate::history::FaultSpan) -> String {
    match (f.offset_ms, side(f)) {
        (Some(o), _) => format!("{} {:+.0} s", f.kind.as_str(), o as f64 / 1000.0),
        (None, Some(side)) => {
            let sizes: Vec<String> = f
                .groups
                .iter()
                .flatten()
                .map(|g| g.len().to_string())
                .collect();
            format!("{} {side} ({})", f.kind.as_str(), sizes.join("|"))
        }
        (None, None) => f.kind.as_str().to_owned(),
    }
}

#[derive(Default, Clone, Copy)]
struct Second {
    ok: u64,
    unanswered: u64,
    no_record: u64,
    empty: u64,
    failed: u64,
    regressions: u64,
    stale: u64,
    stale_partitioned: u64,
    stale_cut_off: u64,
}

/// Tick colour of stale answers none of which said their node was cut off.
const STALE: &str = "#6a3d9a";
/// Tick colour of stale answers that all said their node was cut off.
const STALE_FLAGGED: &str = "#b39ddb";

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

/// Renders the timeline. `workload_end_s` marks where the workload stopped and healing began.
pub fn render(
    history: &History,
    findings: &Findings,
    nodes: usize,
    workload_end_s: f64,
    title: &str,
) -> String {
    let end_s = (history.end_ms() / 1000.0)
        .max(workload_end_s)
        .max(1.0)
        .ceil();
    let secs = end_s as usize;
    let mut per: Vec<Second> = vec![Second::default(); secs + 1];
    let mut rounds: BTreeMap<u64, (bool, f64)> = BTreeMap::new();
    for op in history.ops.iter().filter(|o| o.kind == OpKind::Read) {
        let s = ((op.start_ms / 1000.0).floor() as usize).min(secs);
        if !op.outcome.is_answer() {
            per[s].unanswered += 1;
        } else if op.outcome == OpOutcome::Found && op.endpoints.unwrap_or(0) > 0 {
            per[s].ok += 1;
        } else {
            per[s].no_record += 1;
        }
        if let Some(r) = op.round {
            let e = rounds.entry(r).or_insert((false, op.start_ms));
            e.0 |= op.outcome.is_answer();
        }
    }
    for (answered, start) in rounds.values() {
        if !answered {
            let s = ((start / 1000.0).floor() as usize).min(secs);
            per[s].failed += 1;
        }
    }
    // The checker decides which answers without a record are empty (the name was live).
    for &(_, t) in &findings.empty_marks {
        let s = ((t / 1000.0).floor() as usize).min(secs);
        per[s].empty += 1;
        per[s].no_record = per[s].no_record.saturating_sub(1);
    }
    // (node, second) -> (stale answers that did not say cut off, that did).
    let mut stale_lanes: BTreeMap<(usize, usize), (u64, u64)> = BTreeMap::new();
    for m in &findings.stale_marks {
        let s = ((m.t_ms / 1000.0).floor() as usize).min(secs);
        per[s].stale += 1;
        per[s].stale_partitioned += u64::from(m.across_partition);
        per[s].stale_cut_off += u64::from(m.cut_off);
        let e = stale_lanes.entry((m.node, s)).or_default();
        if m.cut_off {
            e.1 += 1;
        } else {
            e.0 += 1;
        }
    }
    for &(_, t) in &findings.regression_marks {
        let s = ((t / 1000.0).floor() as usize).min(secs);
        per[s].regressions += 1;
    }
    // Propagation per second: median and max.
    let mut prop: Vec<Vec<f64>> = vec![Vec::new(); secs + 1];
    for &(t, lat) in &findings.propagation_samples {
        let s = ((t / 1000.0).floor() as usize).min(secs);
        prop[s].push(lat);
    }
    let prop_pts: Vec<(usize, f64, f64)> = prop
        .iter_mut()
        .enumerate()
        .filter(|(_, v)| !v.is_empty())
        .map(|(s, v)| {
            v.sort_by(f64::total_cmp);
            (s, v[v.len() / 2], v[v.len() - 1])
        })
        .collect();

    let lanes_h = nodes as f64 * LANE_H;
    let plot_top = TOP + lanes_h + 20.0;
    let h = plot_top + PLOT_H + BOTTOM;
    let pw = W - LEFT - RIGHT;
    let x = |s: f64| LEFT + pw * (s / end_s);
    let qmax = nice_max(
        per.iter()
            .map(|p| (p.ok + p.unanswered + p.no_record + p.empty) as f64)
            .fold(0.0, f64::max),
    );
    // Propagation on a log scale (0.1 ms up to the decade above the max): the median of a few
    // ms and a recovery outlier of seconds must both be readable.
    let pmax_raw = prop_pts.iter().map(|p| p.2).fold(0.0, f64::max).max(1.0);
    let decades = pmax_raw.log10().ceil().max(1.0) + 1.0; // from 0.1 ms
    let yq = |v: f64| plot_top + PLOT_H - PLOT_H * (v / qmax);
    let yp = |v: f64| {
        let frac = ((v.max(0.1) * 10.0).log10() / decades).clamp(0.0, 1.0);
        plot_top + PLOT_H - PLOT_H * frac
    };

    let mut o = String::new();
    let _ = writeln!(
        o,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h:.0}" viewBox="0 0 {W} {h:.0}" font-family="sans-serif" font-size="11">"##
    );
    let _ = writeln!(o, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let mut title_lines = title.lines();
    let _ = writeln!(
        o,
        r##"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}</text>"##,
        escape(title_lines.next().unwrap_or_default())
    );
    if let Some(sub) = title_lines.next() {
        let _ = writeln!(
            o,
            r##"<text x="{LEFT}" y="38" font-size="11" fill="#444">{}</text>"##,
            escape(sub)
        );
    }
    // Fault lanes.
    for k in 1..=nodes {
        let y = TOP + (k - 1) as f64 * LANE_H;
        let _ = writeln!(
            o,
            "<rect x=\"{LEFT}\" y=\"{y:.1}\" width=\"{pw:.1}\" height=\"{:.1}\" fill=\"{}\"/>",
            LANE_H - 2.0,
            if k % 2 == 0 { "#f4f4f4" } else { "#fafafa" }
        );
        let _ = writeln!(
            o,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end">node {k}</text>"##,
            LEFT - 6.0,
            y + LANE_H - 4.0
        );
    }
    for f in &history.faults {
        let (x0, x1) = (x(f.start_ms / 1000.0), x(f.end_ms / 1000.0));
        let wdt = (x1 - x0).max(1.5);
        let y = TOP + (f.node.saturating_sub(1)) as f64 * LANE_H;
        let groups = f
            .groups
            .as_ref()
            .map(|g| format!(" groups {g:?}"))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            r##"<rect x="{x0:.1}" y="{y:.1}" width="{wdt:.1}" height="{:.1}" fill="{}" fill-opacity="{}"><title>{} node {} {:.1}-{:.1} s{groups}</title></rect>"##,
            LANE_H - 2.0,
            color(f.kind),
            if side(f) == Some("B") { "0.55" } else { "1" },
            fault_label(f),
            f.node,
            f.start_ms / 1000.0,
            f.end_ms / 1000.0
        );
        if wdt > 40.0 {
            let _ = writeln!(
                o,
                r##"<text x="{:.1}" y="{:.1}" fill="white" font-size="10">{}</text>"##,
                x0 + 3.0,
                y + LANE_H - 5.0,
                fault_label(f)
            );
        }
    }
    // Axes and grid.
    for i in 0..=4 {
        let v = qmax * f64::from(i) / 4.0;
        let y = yq(v);
        let _ = writeln!(
            o,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>",
            LEFT + pw
        );
        let _ = writeln!(
            o,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{v:.0}</text>"##,
            LEFT - 6.0,
            y + 4.0
        );
    }
    for d in 0..=(decades as i32) {
        let pv = 10f64.powi(d - 1);
        let _ = writeln!(
            o,
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#1f77b4\">{}</text>",
            LEFT + pw + 6.0,
            yp(pv) + 4.0,
            if pv < 1.0 {
                format!("{pv:.1}")
            } else {
                format!("{pv:.0}")
            }
        );
    }
    let step = nice_max(end_s / 12.0).max(1.0);
    let mut t = 0.0;
    while t <= end_s {
        let _ = writeln!(
            o,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{t:.0}</text>"##,
            x(t),
            plot_top + PLOT_H + 15.0
        );
        t += step;
    }
    // Bars.
    let bw = (pw / end_s * 0.8).max(0.8);
    for (s, p) in per.iter().enumerate() {
        let x0 = x(s as f64) + (pw / end_s - bw) / 2.0;
        let mut base = 0.0;
        for (v, fill) in [
            (p.ok as f64, "#2ca02c"),
            (p.no_record as f64, "#bbbbbb"),
            (p.unanswered as f64, "#f0ad4e"),
            (p.empty as f64, "#d62728"),
        ] {
            if v > 0.0 {
                let y1 = yq(base + v);
                let _ = writeln!(
                    o,
                    r##"<rect x="{x0:.1}" y="{y1:.1}" width="{bw:.1}" height="{:.1}" fill="{fill}"/>"##,
                    yq(base) - y1
                );
                base += v;
            }
        }
        if p.failed > 0 || p.empty > 0 || p.regressions > 0 {
            let _ = writeln!(
                o,
                r##"<path d="M{:.1},{:.1} l-5,-9 h10 z" fill="#d62728"><title>{} s: {} failed rounds, {} empty answers, {} reads went backwards</title></path>"##,
                x0 + bw / 2.0,
                plot_top + PLOT_H + 2.0,
                s,
                p.failed,
                p.empty,
                p.regressions
            );
        }
    }
    // Stale answers: ticks along the top of the chart.
    for (s, p) in per.iter().enumerate() {
        if p.stale > 0 {
            let _ = writeln!(
                o,
                r##"<path d="M{:.1},{:.1} l-4,-8 h8 z" fill="{}" fill-opacity="{}"><title>{} s: {} stale answers, {} of them across a partition, {} from nodes that said they were cut off</title></path>"##,
                x(s as f64 + 0.5),
                plot_top - 1.0,
                if p.stale == p.stale_cut_off {
                    STALE_FLAGGED
                } else {
                    STALE
                },
                if p.stale == p.stale_partitioned {
                    "0.4"
                } else {
                    "1"
                },
                s,
                p.stale,
                p.stale_partitioned,
                p.stale_cut_off
            );
        }
    }
    // Stale answers on the answering node's lane: filled when the node did not say it was cut
    // off, hollow when it did.
    for (&(node, s), &(plain, flagged)) in &stale_lanes {
        let cx = x(s as f64 + 0.5);
        let cy = TOP + (node.saturating_sub(1)) as f64 * LANE_H + (LANE_H - 2.0) / 2.0;
        let (fill, stroke) = if plain > 0 {
            (STALE, STALE)
        } else {
            ("white", STALE_FLAGGED)
        };
        let _ = writeln!(
            o,
            r##"<circle cx="{cx:.1}" cy="{cy:.1}" r="3" fill="{fill}" stroke="{stroke}" stroke-width="1.5"><title>node {node}, {s} s: {} stale answers; {plain} did not say cut off, {flagged} did</title></circle>"##,
            plain + flagged
        );
    }
    // Fault bands over the bars, so they show through (a group partition once, not per node).
    let mut banded = std::collections::BTreeSet::new();
    for f in &history.faults {
        if f.groups.is_some() && !banded.insert((f.kind, f.start_ms.to_bits(), f.end_ms.to_bits()))
        {
            continue;
        }
        let (x0, x1) = (x(f.start_ms / 1000.0), x(f.end_ms / 1000.0));
        let wdt = (x1 - x0).max(1.5);
        let _ = writeln!(
            o,
            r##"<rect x="{x0:.1}" y="{plot_top:.1}" width="{wdt:.1}" height="{PLOT_H}" fill="{}" fill-opacity="0.22"/>"##,
            color(f.kind)
        );
    }
    // Propagation lines.
    for (idx, color, width) in [(2usize, "#9ecae1", 1.0), (1usize, "#1f77b4", 2.0)] {
        let pts: Vec<String> = prop_pts
            .iter()
            .map(|p| {
                let v = if idx == 1 { p.1 } else { p.2 };
                format!("{:.1},{:.1}", x(p.0 as f64 + 0.5), yp(v))
            })
            .collect();
        if pts.len() > 1 {
            let _ = writeln!(
                o,
                r##"<polyline points="{}" fill="none" stroke="{color}" stroke-width="{width}"/>"##,
                pts.join(" ")
            );
        }
    }
    // Heal marker.
    if workload_end_s > 0.0 && workload_end_s < end_s {
        let xe = x(workload_end_s);
        let _ = writeln!(
            o,
            "<line x1=\"{xe:.1}\" y1=\"{:.1}\" x2=\"{xe:.1}\" y2=\"{:.1}\" stroke=\"#555\" stroke-dasharray=\"4,3\"/>",
            TOP,
            plot_top + PLOT_H
        );
        let _ = writeln!(
            o,
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#555\" text-anchor=\"end\">heal, converge, final reads</text>",
            xe - 3.0,
            TOP - 6.0
        );
    }
    let _ = writeln!(
        o,
        "<rect x=\"{LEFT}\" y=\"{plot_top:.1}\" width=\"{pw:.1}\" height=\"{PLOT_H}\" fill=\"none\" stroke=\"#888\"/>"
    );
    // Axis titles and legend.
    let _ = writeln!(
        o,
        r##"<text transform="translate(16,{:.1}) rotate(-90)" text-anchor="middle">reads per second</text>"##,
        plot_top + PLOT_H / 2.0
    );
    let _ = writeln!(
        o,
        "<text transform=\"translate({:.1},{:.1}) rotate(90)\" text-anchor=\"middle\" fill=\"#1f77b4\">propagation ms (log scale)</text>",
        W - 14.0,
        plot_top + PLOT_H / 2.0
    );
    let ly = plot_top + PLOT_H + 35.0;
    let _ = writeln!(
        o,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds since start</text>"##,
        LEFT + pw / 2.0,
        plot_top + PLOT_H + 28.0
    );
    let legend: [(&str, &str); 15] = [
        ("#2ca02c", "answered"),
        ("#bbbbbb", "no record (expired)"),
        ("#f0ad4e", "no answer (faulted node)"),
        ("#d62728", "empty / failed / backwards (must be 0)"),
        ("#1f77b4", "propagation p50"),
        ("#9ecae1", "propagation max"),
        (color(FaultKind::Kill), "kill"),
        (color(FaultKind::Pause), "pause"),
        (color(FaultKind::Partition), "partition"),
        (color(FaultKind::Skew), "clock skew"),
        (color(FaultKind::Split), "split (A | B)"),
        (color(FaultKind::OneWay), "one-way cut (A deaf to B)"),
        (color(FaultKind::Restart), "clean restart"),
        (
            STALE,
            "stale answers, node did not say cut off (pale: across a partition)",
        ),
        (
            STALE_FLAGGED,
            "stale answers, node said cut off (readers fail over)",
        ),
    ];
    let mut lx = LEFT;
    let mut ly = ly;
    for (c, label) in legend {
        let item_w = 22.0 + label.len() as f64 * 6.2;
        if lx + item_w > W - RIGHT {
            lx = LEFT;
            ly += 18.0;
        }
        let _ = writeln!(
            o,
            r##"<rect x="{lx:.1}" y="{:.1}" width="12" height="12" fill="{c}"/><text x="{:.1}" y="{:.1}">{label}</text>"##,
            ly + 8.0,
            lx + 16.0,
            ly + 18.0
        );
        lx += item_w;
    }
    let _ = writeln!(o, "</svg>");
    o
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{FaultSpan, Op, Proto};

    #[test]
    fn renders_well_formed_svg_with_faults_and_bars() {
        let h = History {
            ops: vec![Op {
                kind: OpKind::Read,
                proto: Proto::Http,
                process: "r".into(),
                node: 1,
                name: "a.b".into(),
                round: Some(1),
                start_ms: 1500.0,
                end_ms: 1510.0,
                outcome: OpOutcome::Found,
                seq: Some(1),
                endpoints: Some(2),
                ..Op::default()
            }],
            faults: vec![
                FaultSpan {
                    kind: FaultKind::Pause,
                    node: 2,
                    start_ms: 500.0,
                    end_ms: 2500.0,
                    offset_ms: None,
                    groups: None,
                    peers: None,
                },
                FaultSpan {
                    kind: FaultKind::Skew,
                    node: 3,
                    start_ms: 100.0,
                    end_ms: 1900.0,
                    offset_ms: Some(-600_000),
                    groups: None,
                    peers: None,
                },
            ],
        };
        let findings = Findings {
            stale_marks: vec![
                crate::checker::StaleMark {
                    node: 2,
                    t_ms: 1200.0,
                    across_partition: true,
                    cut_off: true,
                },
                crate::checker::StaleMark {
                    node: 3,
                    t_ms: 1700.0,
                    across_partition: false,
                    cut_off: false,
                },
            ],
            ..Findings::default()
        };
        let svg = render(&h, &findings, 3, 2.0, "t <1>");
        assert!(svg.contains("node 2, 1 s: 1 stale answers; 0 did not say cut off, 1 did"));
        assert!(svg.contains("node 3, 1 s: 1 stale answers; 1 did not say cut off, 0 did"));
        assert!(svg.contains("2 stale answers, 1 of them across a partition, 1 from nodes"));
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t &lt;1&gt;"));
        assert!(svg.contains("pause node 2"));
        assert!(svg.contains("skew -600 s node 3"));
    }
}
