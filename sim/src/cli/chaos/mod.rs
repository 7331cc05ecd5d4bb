//! `dpin-sim chaos`: the checks and choices made before the async runtime starts — option
//! sanity, the network layout (namespaces must be entered while the process has one thread),
//! the WAN switch, libfaketime for clock skew — then the run ([`run`]) and the exit code.
//!
//! * [`args`] — the options and the replay command;
//! * [`run`] — the run itself: cluster, nemesis, workload, the seed's race, checker, report.

pub(crate) mod args;
pub(crate) mod run;

use std::path::{Path, PathBuf};

use dpin_sim::clock;
use dpin_sim::history::FaultKind;
use dpin_sim::netns::{self, Netns};
use dpin_sim::report::ClockSkew;
use dpin_sim::wan::{LinkModel, Wan};

use super::{parse_duration, runtime};
use args::{replay_command, ChaosArgs, NetChoice};
use run::run_chaos;

pub(crate) fn chaos_main(mut args: ChaosArgs) -> i32 {
    let seed = args.seed.unwrap_or_else(rand::random);
    eprintln!("dpin-sim chaos: seed {seed}");
    let duration = match parse_duration(&args.duration) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("dpin-sim: {e:#}");
            return 2;
        }
    };
    if args.nodes < 2 {
        eprintln!("dpin-sim: chaos needs at least 2 nodes");
        return 2;
    }
    args.faults.sort();
    args.faults.dedup();
    let requested = args.faults.to_vec();
    if args.record_ttl_ms < 2000 {
        eprintln!("dpin-sim: --record-ttl-ms must be at least 2000 (names are refreshed every third of it)");
        return 2;
    }
    if args.skew_ms > i64::MAX as u64 / 2 {
        eprintln!("dpin-sim: --skew-ms is too large");
        return 2;
    }
    let horizon = args
        .compaction_horizon_ms
        .unwrap_or(args.record_ttl_ms.saturating_add(5000));
    if horizon <= args.record_ttl_ms {
        eprintln!(
            "dpin-sim: --compaction-horizon-ms ({horizon}) must exceed --record-ttl-ms ({}): a body may only be compacted once every record it beat has expired",
            args.record_ttl_ms
        );
        return 2;
    }
    if requested.contains(&FaultKind::Restart) && requested.len() > 1 {
        eprintln!("dpin-sim: rolling-restart is a mode of its own; give it alone (--faults rolling-restart)");
        return 2;
    }
    let model = LinkModel {
        delay_ms: args.link_delay_ms,
        jitter_ms: args.jitter_ms,
        loss_pct: args.loss_pct,
    };
    if let Err(e) = model.validate() {
        eprintln!("dpin-sim: {e}");
        return 2;
    }
    let cut_kinds = [FaultKind::Partition, FaultKind::Split, FaultKind::OneWay];
    let want_partition = requested.iter().any(|f| cut_kinds.contains(f));
    let want_wan = want_partition || !model.is_ideal();
    // Choose the layout on the main thread: entering a namespace must happen before any other
    // thread exists.
    let use_netns = match args.net {
        NetChoice::Loopback => false,
        NetChoice::Netns => true,
        NetChoice::Auto => want_wan && netns::available(),
    };
    let mut ns = None;
    let mut wan = None;
    let mut netns_error = None;
    if use_netns {
        netns::remove_stale();
        let built = Netns::create_for_wan(args.nodes)
            .and_then(|n| n.enter_hub().map(|()| n))
            .map_err(anyhow::Error::from)
            .and_then(|n| {
                // The switch's threads start here, in the hub (before the runtime's threads).
                let w = Wan::start(args.nodes, |k| n.node_ns(k), model, seed)?;
                Ok((n, w))
            });
        match built {
            Ok((n, w)) => {
                ns = Some(n);
                wan = Some(w);
            }
            Err(e) if args.net == NetChoice::Netns => {
                eprintln!("dpin-sim: cannot build network namespaces: {e}");
                return 2;
            }
            Err(e) => {
                eprintln!(
                    "dpin-sim: warning: cannot build network namespaces ({e}); using loopback"
                );
                netns_error = Some(e.to_string());
            }
        }
    }
    let partition_method = if let Some(n) = &ns {
        format!(
            "netns: each node in its own network namespace ({p}-nK), peer traffic on \
             198.18.0.K through a TUN device dtK to the harness's WAN switch in {p}-hub \
             (links: {link}), API/DNS on 198.19.0.K via bridge dpm; a partition makes the \
             switch drop packets between the groups it cuts (one node and the rest; two \
             halves; one way only), while clients still reach every node; nothing outside \
             these namespaces is touched and they are deleted at the end",
            p = n.hub().trim_end_matches("-hub"),
            link = model.describe()
        )
    } else if want_partition {
        args.faults.retain(|f| !cut_kinds.contains(f));
        let why = match (&netns_error, args.net) {
            (Some(e), _) => format!("building them failed: {e}"),
            (None, NetChoice::Loopback) => "--net loopback was given".to_owned(),
            _ => "needs root and iproute2".to_owned(),
        };
        let m = format!(
            "none: partitions need network namespaces ({why}); not scheduled. Loopback \
             traffic of one process cannot be cut safely without the host firewall"
        );
        eprintln!("dpin-sim: warning: {m}");
        m
    } else {
        "none: partitions not requested".to_owned()
    };
    let (faketime, clock_skew) = if requested.contains(&FaultKind::Skew) {
        match clock::find_libfaketime(args.libfaketime.as_deref()) {
            Some(lib) => {
                let note = format!(
                    "every node runs under LD_PRELOAD={} with its own FAKETIME_TIMESTAMP_FILE \
                     (re-read at most once a second) and FAKETIME_DONT_FAKE_MONOTONIC=1; a \
                     skew rewrites one node's file to ±{} s while it runs, and back to +0 at \
                     the heal",
                    lib.display(),
                    args.skew_ms / 1000
                );
                (
                    Some(lib.clone()),
                    ClockSkew {
                        mechanism: "libfaketime".to_owned(),
                        skew_ms: args.skew_ms,
                        library: Some(lib.display().to_string()),
                        note,
                    },
                )
            }
            None => {
                args.faults.retain(|f| *f != FaultKind::Skew);
                let where_ = match &args.libfaketime {
                    Some(p) => format!("{} does not exist", p.display()),
                    None => format!("none of {}", clock::LIBFAKETIME_PATHS.join(", ")),
                };
                let m = format!(
                    "clock skew NOT tested: libfaketime is missing ({where_}); install the Debian \
                     package `faketime` (apt-get install faketime) or pass --libfaketime PATH"
                );
                eprintln!("dpin-sim: warning: {m}");
                (
                    None,
                    ClockSkew {
                        mechanism: "none".to_owned(),
                        skew_ms: args.skew_ms,
                        library: None,
                        note: m,
                    },
                )
            }
        }
    } else {
        (
            None,
            ClockSkew {
                mechanism: "none".to_owned(),
                skew_ms: 0,
                library: None,
                note: "skew not requested".to_owned(),
            },
        )
    };
    if ns.is_none() && !model.is_ideal() {
        eprintln!(
            "dpin-sim: warning: the link model ({}) needs the namespace layout; links are NOT emulated",
            model.describe()
        );
    }
    let replay = replay_command(&args, seed, &requested);
    let setup = RunSetup {
        partition_method,
        replay: replay.clone(),
        horizon_ms: horizon,
        faketime,
        clock_skew,
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dpin-sim: {e:#}");
            return 2;
        }
    };
    let result = rt.block_on(run_chaos(
        &args,
        seed,
        duration,
        ns.as_ref(),
        wan.as_ref(),
        setup,
    ));
    drop(rt);
    drop(ns); // deletes the namespaces (the nodes are gone by now), and the switch's devices
    match result {
        Ok(report) => {
            println!("{}", report.summary());
            if report.pass {
                0
            } else {
                eprintln!("dpin-sim: chaos run FAILED (seed {seed}); replay with:\n  {replay}");
                1
            }
        }
        Err(e) => {
            eprintln!("dpin-sim: {e:#}");
            eprintln!("dpin-sim: seed {seed}; replay with:\n  {replay}");
            2
        }
    }
}

pub(crate) fn sibling(path: &Path, ext: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map_or_else(|| "chaos".into(), |s| s.to_string_lossy().into_owned());
    path.with_file_name(format!("{stem}.{ext}"))
}

/// What `chaos_main` decided before the async runtime started.
pub(crate) struct RunSetup {
    partition_method: String,
    replay: String,
    horizon_ms: u64,
    faketime: Option<PathBuf>,
    clock_skew: ClockSkew,
}

/// Whether `dpin node` accepts `flag` (older builds lack `--compaction-horizon-ms`).
pub(crate) fn node_supports(dpin: &Path, flag: &str) -> bool {
    std::process::Command::new(dpin)
        .args(["node", "--help"])
        .env_remove("LD_PRELOAD")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpin_sim::history::OpOutcome;

    #[test]
    fn report_file_siblings() {
        assert_eq!(
            sibling(Path::new("/tmp/r/chaos-report.json"), "history.jsonl"),
            PathBuf::from("/tmp/r/chaos-report.history.jsonl")
        );
    }

    #[test]
    fn outcome_helpers() {
        assert!(OpOutcome::Applied.is_ack());
        assert!(!OpOutcome::Stale.is_ack());
    }
}
