//! `dpin-sim chaos`'s options ([`ChaosArgs`], the network layout choice [`NetChoice`]) and
//! the exact command that replays a run with them ([`replay_command`]), kept together so a
//! new option is added to both in one place.

use std::path::PathBuf;

use clap::ValueEnum;
use dpin_sim::checker;
use dpin_sim::history::FaultKind;
use dpin_sim::race::RacePaths;
use dpin_sim::workload;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum NetChoice {
    /// Namespaces if partitions are requested and possible, else loopback.
    Auto,
    /// Everything on 127.0.0.1; no partitions.
    Loopback,
    /// One network namespace per node (root + iproute2).
    Netns,
}

#[derive(clap::Args, Clone, Debug)]
pub(crate) struct ChaosArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 5)]
    pub(crate) nodes: usize,
    /// Workload duration: seconds, or with a unit (90s, 5m).
    #[arg(long, default_value = "60")]
    pub(crate) duration: String,
    /// Seed of the workload and fault schedule (default: random, printed).
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Report file (SPEC §5 JSON).
    #[arg(long, default_value = "chaos-report.json")]
    pub(crate) report: PathBuf,
    /// Fault kinds, comma-separated: kill, pause, partition (one node cut off), split
    /// (split-brain halves), oneway (some nodes cannot hear the rest), skew (needs
    /// libfaketime); or rolling-restart alone (every node restarted cleanly, one at a time).
    /// `none` runs the workload with no fault at all (what the replay command prints for such
    /// a run), e.g. to measure propagation over WAN links alone.
    #[arg(long, default_value = "kill,pause,partition", value_parser = parse_faults)]
    pub(crate) faults: FaultList,
    /// One-way delay of every node-to-node path, ms (emulated by the harness's WAN switch;
    /// needs the namespace layout).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) link_delay_ms: f64,
    /// Jitter of every path, ms: each packet's delay is uniform in delay ± jitter.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) jitter_ms: f64,
    /// Packets lost on every path, percent per direction.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) loss_pct: f64,
    /// How far a skewed node's wall clock is off, ms (ahead or behind, drawn per fault).
    #[arg(long, default_value_t = 600_000)]
    pub(crate) skew_ms: u64,
    /// The libfaketime library for skew faults (default: the Debian `faketime` package's).
    #[arg(long)]
    pub(crate) libfaketime: Option<PathBuf>,
    /// Lifetime of every record the workload writes, ms: short, so records expire and are
    /// compacted during the run; live names are refreshed well within it.
    #[arg(long, default_value_t = workload::DEFAULT_RECORD_TTL_MS)]
    pub(crate) record_ttl_ms: u64,
    /// The nodes' `--compaction-horizon-ms` (how long after expiry a body is kept); must
    /// exceed the record TTL. Default: the TTL plus 5 s.
    #[arg(long)]
    pub(crate) compaction_horizon_ms: Option<u64>,
    /// Write paths of the race's enactors: plans only, one-step only, or both (drawn per round).
    #[arg(long, value_enum, default_value_t = RacePaths::Both)]
    pub(crate) race_paths: RacePaths,
    /// Most nodes faulted at once.
    #[arg(long, default_value_t = 1)]
    pub(crate) max_down: usize,
    /// SVG timeline file.
    #[arg(long, default_value = "chaos-timeline.svg")]
    pub(crate) svg: PathBuf,
    /// Staleness bound, ms: an answer may lag the newest acknowledged write by this long.
    #[arg(long, default_value_t = checker::DEFAULT_STALE_BOUND_MS)]
    pub(crate) stale_bound_ms: f64,
    /// Writes per second (all writers together).
    #[arg(long, default_value_t = 20.0)]
    pub(crate) write_rate: f64,
    /// Read rounds per second per protocol (each round reads one name from every node).
    #[arg(long, default_value_t = 20.0)]
    pub(crate) read_rate: f64,
    /// Network layout.
    #[arg(long, value_enum, default_value_t = NetChoice::Auto)]
    pub(crate) net: NetChoice,
    /// Do not serve or query DNS.
    #[arg(long)]
    pub(crate) no_dns: bool,
    /// Folder for the nodes' data dirs and logs (default: a new folder under /tmp).
    #[arg(long)]
    pub(crate) base_dir: Option<PathBuf>,
    /// The dpin binary (default: `dpin` next to this executable, else the node built into dpin-sim).
    #[arg(long)]
    pub(crate) dpin: Option<PathBuf>,
}

pub(crate) fn replay_command(args: &ChaosArgs, seed: u64, faults: &[FaultKind]) -> String {
    let exe = std::env::args()
        .next()
        .unwrap_or_else(|| "dpin-sim".to_owned());
    let faults: Vec<&str> = faults.iter().map(|f| f.as_str()).collect();
    let mut cmd = format!(
        "{exe} chaos --nodes {} --duration {} --seed {seed} --faults {} --max-down {} --stale-bound-ms {} --write-rate {} --read-rate {} --report {} --svg {}",
        args.nodes,
        args.duration,
        if faults.is_empty() { "none".to_owned() } else { faults.join(",") },
        args.max_down,
        args.stale_bound_ms,
        args.write_rate,
        args.read_rate,
        args.report.display(),
        args.svg.display()
    );
    cmd.push_str(&format!(
        " --record-ttl-ms {} --race-paths {}",
        args.record_ttl_ms,
        args.race_paths.as_str()
    ));
    if let Some(h) = args.compaction_horizon_ms {
        cmd.push_str(&format!(" --compaction-horizon-ms {h}"));
    }
    if faults.contains(&"skew") {
        cmd.push_str(&format!(" --skew-ms {}", args.skew_ms));
        if let Some(l) = &args.libfaketime {
            cmd.push_str(&format!(" --libfaketime {}", l.display()));
        }
    }
    if args.link_delay_ms > 0.0 || args.jitter_ms > 0.0 || args.loss_pct > 0.0 {
        cmd.push_str(&format!(
            " --link-delay-ms {} --jitter-ms {} --loss-pct {}",
            args.link_delay_ms, args.jitter_ms, args.loss_pct
        ));
    }
    if args.net != NetChoice::Auto {
        cmd.push_str(&format!(" --net {:?}", args.net).to_lowercase());
    }
    if args.no_dns {
        cmd.push_str(" --no-dns");
    }
    if let Some(d) = &args.dpin {
        cmd.push_str(&format!(" --dpin {}", d.display()));
    }
    cmd
}

/// The `--faults` list (a newtype so that clap parses the whole list at once: `none` is the
/// empty list).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FaultList(pub(crate) Vec<FaultKind>);

impl std::ops::Deref for FaultList {
    type Target = Vec<FaultKind>;
    fn deref(&self) -> &Vec<FaultKind> {
        &self.0
    }
}

impl std::ops::DerefMut for FaultList {
    fn deref_mut(&mut self) -> &mut Vec<FaultKind> {
        &mut self.0
    }
}

/// Parses `kill,pause,...` or `none`.
fn parse_faults(s: &str) -> Result<FaultList, String> {
    if s.trim() == "none" {
        return Ok(FaultList::default());
    }
    s.split(',')
        .map(str::parse)
        .collect::<Result<Vec<FaultKind>, String>>()
        .map(FaultList)
}

#[cfg(test)]
mod fault_list_tests {
    use super::*;

    #[test]
    fn faults_none_parses_as_no_fault_as_the_replay_command_prints_it() {
        assert_eq!(parse_faults("none"), Ok(FaultList::default()));
        assert_eq!(
            parse_faults("kill,oneway"),
            Ok(FaultList(vec![FaultKind::Kill, FaultKind::OneWay]))
        );
        assert!(parse_faults("kill,bogus").is_err());
    }
}
