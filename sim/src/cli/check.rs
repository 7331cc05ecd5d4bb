//! `dpin-sim check`: re-runs the chaos checker on a history saved by `chaos` (JSONL), prints
//! its counts as JSON and optionally renders the SVG timeline; exits non-zero if an invariant
//! broke. The checker itself is `dpin_sim::checker`.

use std::path::Path;

use dpin_sim::checker::{self, CheckConfig};
use dpin_sim::history::History;
use dpin_sim::svg;

pub(crate) fn check_main(path: &Path, stale_bound_ms: f64, svg_out: Option<&Path>) -> i32 {
    let h = match History::read_jsonl(path) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("dpin-sim: {e}");
            return 2;
        }
    };
    let f = checker::check(
        &h,
        &CheckConfig {
            stale_bound_ms,
            ..CheckConfig::default()
        },
    );
    let out = serde_json::json!({
        "queries": f.queries, "writes": f.writes, "propagation_ms": f.propagation,
        "regressions": f.regressions, "content_mismatches": f.content_mismatches,
        "race": f.race, "heal_convergence_ms": f.heal, "violations": f.examples,
    });
    {
        use std::io::Write;
        // A closed pipe (`| head`) is not an error worth a panic.
        let _ = writeln!(std::io::stdout(), "{out:#}");
    }
    if let Some(svg_path) = svg_out {
        let nodes = h.ops.iter().map(|o| o.node).max().unwrap_or(1);
        let work_end_s = h
            .ops
            .iter()
            .filter(|o| o.kind == dpin_sim::history::OpKind::Read)
            .map(|o| o.end_ms)
            .fold(0.0, f64::max)
            / 1000.0;
        let title = format!("dpin chaos: {}", path.display());
        if let Err(e) = std::fs::write(svg_path, svg::render(&h, &f, nodes, work_end_s, &title)) {
            eprintln!("dpin-sim: cannot write {}: {e}", svg_path.display());
            return 2;
        }
    }
    i32::from(!f.invariants_hold())
}
