//! The seed's race (SPEC §1, FIELD-NOTES "The seed's failure, precisely"), run through the real
//! `dpin` command line against lagging and partitioned nodes.
//!
//! October 2025: a planner produced numbered plans; enactor A checked once that its plan was
//! newer, then stalled; enactor B applied a newer plan and ran clean-up, which deleted plans
//! much older than the one it had just applied; A then applied its stale plan, clean-up
//! deleted it, and the name was left empty. Here every step is a `dpin` child process — the
//! paths a user takes — and every invocation is an operation in the history:
//!
//! 1. **Planner** — `dpin sign --api ALL LABEL EP... --out a.plan`: plan A, its seq `sA` fixed
//!    now (highest seq any node holds + 1).
//! 2. **Enactor B, the newer write**, through one of two paths (drawn per round):
//!    * plan: the planner signs plan B at `sA + 3` (`dpin sign --seq`; plans are numbered with
//!      room for the writes a lagging node may take in between) and B enacts it with
//!      `dpin publish --record b.plan --api MAJORITY`;
//!    * one-step: three `dpin publish --api MAJORITY LABEL EP...` in a row (the CLI's default
//!      path: read the highest seq H, publish H + 1 with compare-and-set against H).
//! 3. **Enactor A, the delayed one**, against node X only: `dpin publish --record a.plan
//!    --api X` (plan) or a one-step `dpin publish --api X ...` from X's view (default path).
//!    X is a node the nemesis has partitioned right now if there is one (it cannot have heard
//!    of B's write), else any node, racing B's write through propagation.
//! 4. **Order** (drawn per round): A before B, A concurrently with B, or A after B plus a stall
//!    (the seed's order).
//! 5. **Clean-up**, once B's newer write was acknowledged: delete the old plan, naming it by its
//!    content hash — `dpin publish --tombstone --if-hash HASH(A)` or a tombstone plan
//!    (`dpin sign --tombstone --seq sA+1`, then `dpin publish --record --if-hash HASH(A)`) —
//!    sent to X or to the majority (drawn). A seq names a position, not a record: with
//!    `--if-seq sA` a clean-up deleted B's write when B's one-step write had taken seq `sA`
//!    too and won the tie (seen in 25-node runs), so the clean-up names the record.
//!
//! What must happen: a node that holds B's write refuses A's plan and the clean-up (stale,
//! conflict or compare-and-set mismatch); a partitioned X may take them (AP: it cannot know),
//! but after the heal B's write wins everywhere — the stale plan never holds, the name is never
//! empty, and no node's answers go backwards. The checker judges that from the history
//! ([`crate::checker`], `race` counts).
//!
//! `--race-paths plans|one-step|both` (default both) restricts the enactors to plans (the
//! seed's story exactly) or to the one-step path, or mixes them per round.
//!
//! Each round's name is the race name written longest ago if it is due for a refresh (the
//! newer write keeps it live under short TTLs), else a random one. Randomness comes from the
//! run's seed (stream 200).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use crate::history::{FaultKind, Op, OpKind, OpOutcome, Proto, TOMBSTONE};
use crate::workload::{Ctx, NameSpec, Owner, Plan, Target, REFRESH_FRACTION};

/// Longest a single `dpin` invocation may take before it is killed (it asks a few peers with
/// [`CLI_PEER_TIMEOUT_MS`] each).
pub const CLI_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-peer timeout passed to the CLI (`--timeout-ms`).
pub const CLI_PEER_TIMEOUT_MS: u64 = 1000;
/// Plan B's seq is plan A's plus this: room for A's one-step write and the clean-up tombstone
/// that a lagging node may take (each at most one above what that node holds), so anything
/// enacted from a stale view stays below B's plan.
pub const PLAN_GAP: u64 = 3;
/// Port tags of the race's records (see [`crate::workload::Plan::fresh`]).
pub const TAG_A: u16 = 10;
/// Port tag of enactor B's records.
pub const TAG_B: u16 = 20;

/// Which write paths the race's enactors use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RacePaths {
    /// Each enactor draws plan or one-step per round (mixed paths included).
    Both,
    /// Plans only (`dpin sign` + `dpin publish --record`): the seed's story exactly.
    Plans,
    /// One-step publishes only (the CLI's default path); the clean-up uses `--if-seq`.
    OneStep,
}

impl RacePaths {
    /// Lowercase name, as on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            RacePaths::Both => "both",
            RacePaths::Plans => "plans",
            RacePaths::OneStep => "one-step",
        }
    }
}

/// Race settings.
#[derive(Clone, Debug)]
pub struct RaceConfig {
    /// The `dpin` command line (or dpin-sim, which runs the same CLI).
    pub dpin: PathBuf,
    /// The zone key file the CLI signs with (written by [`write_key_file`]).
    pub key_file: PathBuf,
    /// Folder for plan files.
    pub plan_dir: PathBuf,
    /// Mean time between rounds.
    pub period: Duration,
    /// Seed.
    pub seed: u64,
    /// Which paths the enactors use.
    pub paths: RacePaths,
}

/// Writes the workload's zone key where the CLI can read it (mode 0600).
pub fn write_key_file(path: &Path, plan: &Plan) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(plan.key.to_key_file().as_bytes())
}

/// A TTL as a CLI duration.
pub fn ttl_arg(ms: u64) -> String {
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// What one `dpin` invocation said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CliResult {
    /// Outcome, as the history records it.
    pub outcome: OpOutcome,
    /// Seq of the record signed or published.
    pub seq: Option<u64>,
    /// `--api` address that answered a publish.
    pub answered_by: Option<String>,
    /// Expiry of a signed plan (Unix ms).
    pub expires_at_ms: Option<u64>,
    /// The error line, or what the node said about gossip.
    pub detail: Option<String>,
}

/// Maps a `dpin` exit status and output to an outcome. `stdout` is the `--json` object;
/// `stderr` the one-line error.
pub fn classify(success: bool, stdout: &str, stderr: &str) -> CliResult {
    let json: Option<Value> = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok());
    let field = |k: &str| json.as_ref().and_then(|v| v.get(k).cloned());
    let seq = field("seq").and_then(|v| v.as_u64());
    if success {
        let outcome = match field("outcome").as_ref().and_then(Value::as_str) {
            Some("duplicate") => OpOutcome::Duplicate,
            Some("conflict_won") => OpOutcome::ConflictWon,
            Some(_) => OpOutcome::Applied,
            // `dpin sign` prints the plan (it has `dpin_plan`, no outcome).
            None if field("dpin_plan").is_some() => OpOutcome::Planned,
            None => OpOutcome::Applied,
        };
        return CliResult {
            outcome,
            seq,
            answered_by: field("answered_by").and_then(|v| v.as_str().map(str::to_owned)),
            expires_at_ms: field("expires_at_ms").and_then(|v| v.as_u64()),
            detail: field("gossip").and_then(|v| v.as_str().map(|g| format!("gossip {g}"))),
        };
    }
    let line = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_owned();
    let msg = line.strip_prefix("dpin: ").unwrap_or(&line);
    let lower = msg.to_ascii_lowercase();
    let outcome = if lower.starts_with("stale") || lower.contains("refused: stale") {
        OpOutcome::Stale
    } else if lower.starts_with("raced")
        || lower.starts_with("replaced")
        || lower.starts_with("conflict")
        || lower.contains("cas_mismatch")
        || lower.contains("refused: conflict")
    {
        OpOutcome::Conflict
    } else if lower.starts_with("no peer answered") || lower.contains("timed out") {
        OpOutcome::Timeout
    } else if lower.is_empty() {
        OpOutcome::Error
    } else {
        OpOutcome::Rejected
    };
    CliResult {
        outcome,
        seq,
        answered_by: None,
        expires_at_ms: None,
        detail: Some(if msg.is_empty() {
            "no error line".to_owned()
        } else {
            msg.to_owned()
        }),
    }
}

/// Runs `dpin ARGS...` and classifies the result; never fails (a spawn error or a timeout is
/// an [`OpOutcome::Error`] / [`OpOutcome::Timeout`] with the reason).
pub async fn run_cli(dpin: &Path, args: &[String]) -> CliResult {
    let failed = |outcome, detail: String| CliResult {
        outcome,
        seq: None,
        answered_by: None,
        expires_at_ms: None,
        detail: Some(detail),
    };
    let child = tokio::process::Command::new(dpin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("NO_COLOR", "1")
        .env_remove("LD_PRELOAD")
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            return failed(
                OpOutcome::Error,
                format!("cannot run {}: {e}", dpin.display()),
            )
        }
    };
    match tokio::time::timeout(CLI_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) => classify(
            out.status.success(),
            &String::from_utf8_lossy(&out.stdout),
            &String::from_utf8_lossy(&out.stderr),
        ),
        Ok(Err(e)) => failed(OpOutcome::Error, format!("waiting for dpin: {e}")),
        Err(_) => failed(
            OpOutcome::Timeout,
            format!("dpin ran longer than {CLI_TIMEOUT:?}"),
        ),
    }
}

fn api_list(targets: &[&Target]) -> String {
    targets
        .iter()
        .map(|t| t.api.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// One CLI operation to run and record.
struct Step<'a> {
    kind: OpKind,
    process: &'static str,
    name: &'a NameSpec,
    targets: Vec<&'a Target>,
    args: Vec<String>,
    content: String,
    /// Seq known before running (a plan's), if any.
    seq: Option<u64>,
    note: &'static str,
}

struct Round<'a> {
    ctx: &'a Ctx,
    cfg: &'a RaceConfig,
    id: u64,
    /// Record TTL, ms.
    ttl: u64,
}

impl Round<'_> {
    async fn run(&self, s: Step<'_>) -> CliResult {
        let start = self.ctx.rec.now_ms();
        let r = run_cli(&self.cfg.dpin, &s.args).await;
        let end = self.ctx.rec.now_ms();
        let by = r
            .answered_by
            .as_deref()
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .and_then(|a| s.targets.iter().find(|t| t.api == a))
            .or(s.targets.first());
        let ttl = self.ttl;
        let expires_ms = match r.expires_at_ms {
            Some(e) => Some(self.ctx.rec.run_ms(e)),
            // The CLI signs after it starts: start + TTL is a lower bound.
            None => (s.kind != OpKind::Sign).then_some(start + ttl as f64),
        };
        let detail = match &r.detail {
            Some(d) => format!("{}; {d}", s.note),
            None => s.note.to_owned(),
        };
        self.ctx.rec.op(Op {
            kind: s.kind,
            proto: Proto::Cli,
            process: s.process.to_owned(),
            node: by.map_or(0, |t| t.node),
            name: s.name.full.clone(),
            start_ms: start,
            end_ms: end,
            outcome: r.outcome,
            seq: r.seq.or(s.seq),
            detail: Some(detail),
            content: Some(s.content),
            expires_ms,
            race: Some(self.id),
            ..Op::default()
        });
        r
    }
}

/// The race task: one round every `cfg.period` (jittered) until the deadline.
pub async fn race(ctx: Ctx, plan: Arc<Plan>, cfg: RaceConfig) {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    rng.set_stream(200);
    let shared: Vec<&NameSpec> = plan
        .names
        .iter()
        .filter(|n| n.owner == Owner::Race)
        .collect();
    if shared.is_empty() {
        return;
    }
    if let Err(e) = std::fs::create_dir_all(&cfg.plan_dir) {
        eprintln!(
            "dpin-sim: race: cannot create {}: {e}; no race",
            cfg.plan_dir.display()
        );
        return;
    }
    let refresh_after = Duration::from_millis(plan.ttl_ms).mul_f64(REFRESH_FRACTION);
    let started = Instant::now();
    let mut last_newer: Vec<Instant> = vec![started; shared.len()];
    let mut id = 0u64;
    while ctx.running() {
        let jitter: f64 = rng.gen_range(0.5..1.5);
        let until = (Instant::now() + cfg.period.mul_f64(jitter)).min(ctx.deadline);
        tokio::time::sleep_until(until.into()).await;
        if !ctx.running() {
            break;
        }
        let due = (0..shared.len())
            .filter(|&i| last_newer[i].elapsed() >= refresh_after)
            .min_by_key(|&i| last_newer[i]);
        let i = due.unwrap_or_else(|| rng.gen_range(0..shared.len()));
        id += 1;
        if round(&ctx, &plan, &cfg, &mut rng, shared[i], id).await {
            last_newer[i] = Instant::now();
        }
    }
}

/// One round of the race on `name`. Returns whether B's newer write was acknowledged.
async fn round(
    ctx: &Ctx,
    plan: &Plan,
    cfg: &RaceConfig,
    rng: &mut ChaCha8Rng,
    name: &NameSpec,
    id: u64,
) -> bool {
    // Who is reachable: killed, paused and restarting nodes answer no client; a partitioned
    // node does.
    let active = ctx
        .rec
        .active
        .lock()
        .map(|a| a.clone())
        .unwrap_or_else(|p| p.into_inner().clone());
    let down = |node: usize| {
        active.iter().any(|f| {
            f.node == node
                && matches!(
                    f.kind,
                    FaultKind::Kill | FaultKind::Pause | FaultKind::Restart
                )
        })
    };
    let partitioned: Vec<&Target> = ctx
        .targets
        .iter()
        .filter(|t| {
            !down(t.node)
                && active.iter().any(|f| {
                    // Alone, or on the smaller (or deaf) side of a group partition.
                    f.node == t.node
                        && (f.kind == FaultKind::Partition
                            || (matches!(f.kind, FaultKind::Split | FaultKind::OneWay)
                                && f.group == Some(0)))
                })
        })
        .collect();
    let live: Vec<&Target> = ctx.targets.iter().filter(|t| !down(t.node)).collect();
    let (x, lag) = match partitioned.choose(rng) {
        Some(x) => (*x, "A at a partitioned node"),
        None => match live.choose(rng) {
            Some(x) => (*x, "A at a connected node"),
            None => return false,
        },
    };
    let mut majority: Vec<&Target> = live
        .iter()
        .copied()
        .filter(|t| t.node != x.node && !partitioned.iter().any(|p| p.node == t.node))
        .collect();
    if majority.is_empty() {
        return false;
    }
    majority.shuffle(rng);
    let mut all = majority.clone();
    all.push(x);

    // Draw every choice in every mode, so a seed's other decisions do not shift.
    let (b_plan, a_plan, order, cleanup_plan) = (
        rng.gen::<bool>(),
        rng.gen::<bool>(),
        rng.gen_range(0..3u8),
        rng.gen::<bool>(),
    );
    let (b_plan, a_plan, cleanup_plan) = match cfg.paths {
        RacePaths::Both => (b_plan, a_plan, cleanup_plan),
        RacePaths::Plans => (true, true, true),
        RacePaths::OneStep => (false, false, false),
    };
    let cleanup_at_x: bool = rng.gen();
    let stall = Duration::from_millis(rng.gen_range(20..400));

    let r = Round {
        ctx,
        cfg,
        id,
        ttl: plan.ttl_ms,
    };
    let key = cfg.key_file.display().to_string();
    let ttl = ttl_arg(plan.ttl_ms);
    let plan_file = |tag: &str| {
        cfg.plan_dir
            .join(format!("round-{id}-{tag}.plan"))
            .display()
            .to_string()
    };
    let common = |v: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = v.iter().map(|s| (*s).to_owned()).collect();
        a.extend([
            "--json".to_owned(),
            "--timeout-ms".to_owned(),
            CLI_PEER_TIMEOUT_MS.to_string(),
        ]);
        a
    };

    // 1. The planner: plan A, seq fixed now.
    let a = plan.fresh(TAG_A);
    let a_file = plan_file("a");
    let mut args = common(&["sign", "--key", &key, "--api", &api_list(&all), &name.label]);
    args.extend(a.args.iter().cloned());
    args.extend([
        "--ttl".to_owned(),
        ttl.clone(),
        "--out".to_owned(),
        a_file.clone(),
    ]);
    let signed = r
        .run(Step {
            kind: OpKind::Sign,
            process: "planner",
            name,
            targets: all.clone(),
            args,
            content: a.content.clone(),
            seq: None,
            note: "plan A",
        })
        .await;
    let Some(sa) = signed.seq.filter(|_| signed.outcome == OpOutcome::Planned) else {
        return false;
    };
    let Some(a_hash) = plan_hash(Path::new(&a_file)) else {
        return false;
    };

    // 2. Enactor B's newer write (plan B is signed now, by the planner, if B uses a plan).
    let b_plan_file = plan_file("b");
    let mut b_plan_content = None;
    if b_plan {
        let b = plan.fresh(TAG_B);
        let mut args = common(&[
            "sign",
            "--key",
            &key,
            "--seq",
            &(sa + PLAN_GAP).to_string(),
            &name.label,
        ]);
        args.extend(b.args.iter().cloned());
        args.extend([
            "--ttl".to_owned(),
            ttl.clone(),
            "--out".to_owned(),
            b_plan_file.clone(),
        ]);
        let s = r
            .run(Step {
                kind: OpKind::Sign,
                process: "planner",
                name,
                targets: Vec::new(),
                args,
                content: b.content.clone(),
                seq: Some(sa + PLAN_GAP),
                note: "plan B",
            })
            .await;
        if s.outcome != OpOutcome::Planned {
            return false;
        }
        b_plan_content = Some(b.content);
    }
    let enact_b = async {
        let mut newest: Option<u64> = None;
        if let Some(content) = &b_plan_content {
            let args = common(&[
                "publish",
                "--record",
                &b_plan_file,
                "--api",
                &api_list(&majority),
            ]);
            let res = r
                .run(Step {
                    kind: OpKind::Write,
                    process: "race-b",
                    name,
                    targets: majority.clone(),
                    args,
                    content: content.clone(),
                    seq: Some(sa + PLAN_GAP),
                    note: "plan B enacted",
                })
                .await;
            if res.outcome.is_ack() {
                newest = res.seq.or(Some(sa + PLAN_GAP));
            }
        } else {
            for _ in 0..3 {
                let b = plan.fresh(TAG_B);
                let mut args = common(&[
                    "publish",
                    "--key",
                    &key,
                    "--api",
                    &api_list(&majority),
                    &name.label,
                ]);
                args.extend(b.args.iter().cloned());
                args.extend(["--ttl".to_owned(), ttl.clone()]);
                let res = r
                    .run(Step {
                        kind: OpKind::Write,
                        process: "race-b",
                        name,
                        targets: majority.clone(),
                        args,
                        content: b.content,
                        seq: None,
                        note: "one-step publish",
                    })
                    .await;
                if res.outcome.is_ack() {
                    newest = newest.max(res.seq);
                }
            }
        }
        newest
    };

    // 3. Enactor A, at X only.
    let enact_a = |delay: Duration| {
        let a_file = a_file.clone();
        let a_content = a.content.clone();
        let key = key.clone();
        let ttl = ttl.clone();
        let common = &common;
        let r = &r;
        async move {
            tokio::time::sleep(delay).await;
            let xs = vec![x];
            if a_plan {
                let args = common(&["publish", "--record", &a_file, "--api", &x.api.to_string()]);
                r.run(Step {
                    kind: OpKind::StalePlan,
                    process: "race-a",
                    name,
                    targets: xs,
                    args,
                    content: a_content,
                    seq: Some(sa),
                    note: lag_note(lag, "plan A enacted"),
                })
                .await;
            } else {
                let a2 = plan.fresh(TAG_A);
                let mut args = common(&[
                    "publish",
                    "--key",
                    &key,
                    "--api",
                    &x.api.to_string(),
                    &name.label,
                ]);
                args.extend(a2.args.iter().cloned());
                args.extend(["--ttl".to_owned(), ttl]);
                r.run(Step {
                    kind: OpKind::StalePlan,
                    process: "race-a",
                    name,
                    targets: xs,
                    args,
                    content: a2.content,
                    seq: None,
                    note: lag_note(lag, "one-step publish"),
                })
                .await;
            }
        }
    };
    let newest = match order {
        0 => {
            enact_a(Duration::ZERO).await;
            enact_b.await
        }
        1 => {
            let (_, n) = tokio::join!(
                enact_a(Duration::from_millis(rng.gen_range(0..30))),
                enact_b
            );
            n
        }
        _ => {
            let n = enact_b.await;
            enact_a(stall).await;
            n
        }
    };
    if newest.is_none() {
        return false;
    }

    // 5. Clean-up: delete the old plan A once B's newer write is acknowledged, as in the seed.
    if ctx.running() {
        let targets: Vec<&Target> = if cleanup_at_x {
            vec![x]
        } else {
            majority.clone()
        };
        let apis = api_list(&targets);
        if cleanup_plan {
            let c_file = plan_file("cleanup");
            let seq = (sa + 1).to_string();
            let args = common(&[
                "sign",
                "--key",
                &key,
                "--seq",
                &seq,
                "--tombstone",
                &name.label,
                "--ttl",
                &ttl,
                "--out",
                &c_file,
            ]);
            let s = r
                .run(Step {
                    kind: OpKind::Sign,
                    process: "cleanup",
                    name,
                    targets: Vec::new(),
                    args,
                    content: TOMBSTONE.to_owned(),
                    seq: Some(sa + 1),
                    note: "tombstone plan for plan A",
                })
                .await;
            if s.outcome == OpOutcome::Planned {
                let args = common(&[
                    "publish",
                    "--record",
                    &c_file,
                    "--api",
                    &apis,
                    "--if-hash",
                    &a_hash,
                ]);
                r.run(Step {
                    kind: OpKind::Cleanup,
                    process: "cleanup",
                    name,
                    targets,
                    args,
                    content: TOMBSTONE.to_owned(),
                    seq: Some(sa + 1),
                    note: if cleanup_at_x {
                        "tombstone plan at A's node"
                    } else {
                        "tombstone plan at the majority"
                    },
                })
                .await;
            }
        } else {
            let args = common(&[
                "publish",
                "--key",
                &key,
                "--api",
                &apis,
                &name.label,
                "--tombstone",
                "--if-hash",
                &a_hash,
                "--ttl",
                &ttl,
            ]);
            r.run(Step {
                kind: OpKind::Cleanup,
                process: "cleanup",
                name,
                targets,
                args,
                content: TOMBSTONE.to_owned(),
                seq: None,
                note: if cleanup_at_x {
                    "--tombstone --if-hash at A's node"
                } else {
                    "--tombstone --if-hash at the majority"
                },
            })
            .await;
        }
    }
    for tag in ["a", "b", "cleanup"] {
        let _ = std::fs::remove_file(plan_file(tag));
    }
    true
}

/// The content hash (hex) of the record in a plan file: what a clean-up names to delete
/// exactly that plan (`--if-hash`). `None` if the file is not a readable plan.
pub fn plan_hash(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let bytes = hex::decode(v.get("record")?.as_str()?.trim()).ok()?;
    let rec = dpin_protocol::SignedRecord::decode(&bytes).ok()?;
    Some(hex::encode(rec.content_hash()))
}

fn lag_note(lag: &'static str, what: &'static str) -> &'static str {
    match (lag, what) {
        ("A at a partitioned node", "plan A enacted") => "plan A enacted at a partitioned node",
        ("A at a partitioned node", _) => "one-step publish at a partitioned node",
        (_, "plan A enacted") => "plan A enacted at a connected node",
        _ => "one-step publish at a connected node",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_answers_map_to_outcomes() {
        let ok = classify(
            true,
            r#"{"name":"a.z","seq":7,"outcome":"applied","gossip":"sent","answered_by":"127.0.0.1:1"}"#,
            "",
        );
        assert_eq!(ok.outcome, OpOutcome::Applied);
        assert_eq!(ok.seq, Some(7));
        assert_eq!(ok.answered_by.as_deref(), Some("127.0.0.1:1"));
        let dup = classify(true, r#"{"seq":7,"outcome":"duplicate"}"#, "");
        assert_eq!(dup.outcome, OpOutcome::Duplicate);
        let plan = classify(
            true,
            r#"{"dpin_plan":1,"name":"a.z","seq":4,"planned_over":3,"tombstone":false,"expires_at_ms":9,"record":"00"}"#,
            "",
        );
        assert_eq!(plan.outcome, OpOutcome::Planned);
        assert_eq!((plan.seq, plan.expires_at_ms), (Some(4), Some(9)));
        for (line, want) in [
            ("dpin: stale: 127.0.0.1:1 holds seq 9 of a.z, newer than this record's seq 4; ...", OpOutcome::Stale),
            ("dpin: raced: a.z moved from seq 3 to seq 4 at 127.0.0.1:1 ...", OpOutcome::Conflict),
            ("dpin: replaced: a.z's winner is no longer the record aa (held at 127.0.0.1:1: seq 4) ...", OpOutcome::Conflict),
            ("dpin: 127.0.0.1:1 refused: cas_mismatch: a.z is at seq 5, not the expected 4 (HTTP 409)", OpOutcome::Conflict),
            ("dpin: conflict: 127.0.0.1:1 already holds a different record", OpOutcome::Conflict),
            ("dpin: no peer answered (connection refused); check ...", OpOutcome::Timeout),
            ("dpin: every reachable peer lags behind seq 4 of a.z", OpOutcome::Rejected),
        ] {
            assert_eq!(classify(false, r#"{"error":"x"}"#, line).outcome, want, "{line}");
        }
        assert_eq!(classify(false, "", "").outcome, OpOutcome::Error);
    }

    #[test]
    fn ttls_are_cli_durations() {
        assert_eq!(ttl_arg(15_000), "15s");
        assert_eq!(ttl_arg(1_500), "1500ms");
    }
}
