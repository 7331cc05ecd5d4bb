//! The October-2025 race in miniature (shared/FIELD-NOTES.md, "The seed's failure").
//!
//! Several automation workers hold the one zone key; a planner hands them numbered plans (the
//! record `seq`). A seeded random scheduler interleaves: workers enacting their (possibly
//! stale) plan through their home replica, in-flight copies to the other replicas delivered
//! arbitrarily late, replays of any old record, time passing (expiry), clean-up
//! (`Store::compact`, beyond the stores' body retention), tombstones, attempted empty endpoint
//! sets, and anti-entropy rounds, across 3 replicas. After EVERY step, on every replica and
//! for every name:
//!
//! * the rank equals the max `(seq, live, hash)` the replica accepted, and never goes down;
//! * a live name never lacks a winner: once a non-tombstone record is the replica's winner,
//!   `resolve` returns it until its own expiry or until a higher rank replaces it;
//! * a resolved record never has an empty endpoint set, and an empty set is refused at sign
//!   and at validate on every replica;
//! * clean-up only ever drops bodies of records expired for longer than the grace period.
//!
//! At the end, after anti-entropy, every replica holds the same floor and answers the same.
//! The assumptions: anti-entropy runs at least every 12 hours, and the replicas keep bodies
//! [`RETENTION_MS`] past expiry — shortened from the production default so that clean-up
//! happens within the model, but longer than every TTL the model uses (the documented
//! precondition of a shortened retention, `store::DEFAULT_BODY_RETENTION_MS`).
//!
//! Seed-deterministic: set `PROPTEST_RNG_SEED` / `PROPTEST_CASES` to explore further.

mod common;

use std::collections::BTreeMap;

use common::*;
use dpin_protocol::merge::Rank;
use dpin_protocol::store::DEFAULT_BODY_RETENTION_MS;
use dpin_protocol::{
    Content, Freshness, MemStore, Outcome, SignedRecord, Store, ValidationError, ZoneKey,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

const REPLICAS: usize = 3;
const WRITERS: usize = 3;
const LABELS: [&str; 2] = ["dynamodb", "api"];
/// How long past expiry the model's replicas keep bodies: the longest TTL the model signs
/// (24 h) plus a day.
const RETENTION_MS: u64 = 48 * HOUR_MS;
/// The scheduler's assumption: anti-entropy runs at least this often.
const SYNC_EVERY_MS: u64 = 12 * HOUR_MS;

#[derive(Clone, Debug)]
enum What {
    Endpoints(u8),
    Tombstone,
    /// An empty endpoint set: must be refused at sign, and a forged one on every replica.
    Empty,
}

#[derive(Clone, Debug)]
enum Op {
    /// The planner hands `writer` the next plan number; it enacts that seq from now on.
    NewPlan { writer: usize },
    /// `writer` enacts its current plan for a name through its home replica; copies to the
    /// other replicas go in flight.
    Enact {
        writer: usize,
        label: usize,
        what: What,
        ttl_ms: u64,
    },
    /// One in-flight copy arrives, however late.
    Deliver { msg: Index },
    /// Any record ever written is replayed to a replica.
    Replay { msg: Index, replica: usize },
    /// Time passes.
    Advance { ms: u64 },
    /// A replica's clean-up job.
    Compact { replica: usize },
    /// One anti-entropy round from `a` to `b`.
    Sync { a: usize, b: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let what = prop_oneof![
        6 => (1u8..4).prop_map(What::Endpoints),
        1 => Just(What::Tombstone),
        1 => Just(What::Empty),
    ];
    let ttl = prop::sample::select(vec![30_000u64, HOUR_MS, 24 * HOUR_MS]);
    let advance = prop::sample::select(vec![1_000u64, 600_000, 3 * HOUR_MS, 25 * HOUR_MS]);
    prop_oneof![
        2 => (0..WRITERS).prop_map(|writer| Op::NewPlan { writer }),
        4 => (0..WRITERS, 0..LABELS.len(), what, ttl)
            .prop_map(|(writer, label, what, ttl_ms)| Op::Enact { writer, label, what, ttl_ms }),
        5 => any::<Index>().prop_map(|msg| Op::Deliver { msg }),
        1 => (any::<Index>(), 0..REPLICAS).prop_map(|(msg, replica)| Op::Replay { msg, replica }),
        2 => advance.prop_map(|ms| Op::Advance { ms }),
        1 => (0..REPLICAS).prop_map(|replica| Op::Compact { replica }),
        1 => (0..REPLICAS, 1..REPLICAS).prop_map(|(a, d)| Op::Sync { a, b: (a + d) % REPLICAS }),
    ]
}

struct World {
    key: ZoneKey,
    now: u64,
    planner: u64,
    plans: [u64; WRITERS],
    replicas: Vec<MemStore>,
    /// Model: per replica, the max-ranked valid record it accepted, per name.
    accepted: Vec<BTreeMap<String, SignedRecord>>,
    /// Copies on their way: (target replica, record).
    in_flight: Vec<(usize, SignedRecord)>,
    /// Every valid record ever signed.
    history: Vec<SignedRecord>,
    /// Ranks after the previous step, per replica.
    prev_floors: Vec<BTreeMap<String, Rank>>,
    last_sync: u64,
    /// Outcomes seen, by kind, to make sure the schedule exercises every path.
    kinds: BTreeMap<&'static str, usize>,
}

impl World {
    fn new() -> Self {
        World {
            key: zone_key(7),
            now: T0,
            planner: WRITERS as u64,
            plans: std::array::from_fn(|w| w as u64 + 1),
            replicas: vec![MemStore::new().with_retention(RETENTION_MS); REPLICAS],
            accepted: vec![BTreeMap::new(); REPLICAS],
            in_flight: Vec::new(),
            history: Vec::new(),
            prev_floors: vec![BTreeMap::new(); REPLICAS],
            last_sync: T0,
            kinds: BTreeMap::new(),
        }
    }

    fn names(&self) -> Vec<String> {
        LABELS
            .iter()
            .map(|l| format!("{l}.{}", self.key.zone()))
            .collect()
    }

    /// Offers a record to replica `r` and checks the outcome against the model.
    fn offer(&mut self, r: usize, rec: &SignedRecord, freshness: Freshness) {
        let outcome = ok(self.replicas[r].apply(rec, self.now, freshness, None));
        *self.kinds.entry(outcome.kind()).or_default() += 1;
        if rec.endpoints().is_some_and(<[_]>::is_empty) {
            assert_eq!(
                outcome,
                Outcome::Invalid(ValidationError::EmptyEndpoints),
                "replica {r} must refuse an empty endpoint set"
            );
            return;
        }
        let name = rec.name();
        let want = expected_outcome(self.accepted[r].get(&name), rec);
        assert_eq!(outcome, want, "replica {r}, seq {} of {name}", rec.body.seq);
        if outcome.changed_store() {
            self.accepted[r].insert(name, rec.clone());
        }
    }

    fn enact(&mut self, writer: usize, label: usize, what: &What, ttl_ms: u64) {
        let seq = self.plans[writer];
        let expires = self.now + ttl_ms;
        let label = LABELS[label];
        let content = match what {
            What::Endpoints(v) => {
                let mut eps = vec![v4(writer as u8, *v, 443)];
                if *v > 1 {
                    eps.push(v4(writer as u8, *v + 10, 443));
                }
                Content::Endpoints(eps)
            }
            What::Tombstone => Content::Tombstone,
            What::Empty => Content::Endpoints(Vec::new()),
        };
        let unsigned = body(&self.key, label, seq, expires, content);
        let rec = match what {
            What::Empty => {
                assert_eq!(
                    unsigned.clone().sign(&self.key).err(),
                    Some(ValidationError::EmptyEndpoints),
                    "an empty endpoint set must not sign"
                );
                forge(&self.key, unsigned)
            }
            _ => {
                let rec = unsigned.sign(&self.key).expect("a valid plan signs");
                self.history.push(rec.clone());
                rec
            }
        };
        let home = writer % REPLICAS;
        self.offer(home, &rec, Freshness::Publish);
        for r in (0..REPLICAS).filter(|&r| r != home) {
            self.in_flight.push((r, rec.clone()));
        }
    }

    /// One anti-entropy round; the records it moved must be the peer's winners.
    fn sync(&mut self, a: usize, b: usize) {
        let (x, y) = pair(&mut self.replicas, a, b);
        sync_once(x, y, self.now);
        for (me, peer) in [(a, b), (b, a)] {
            for name in self.names() {
                let Some(entry) = self.replicas[me].entry(&name) else {
                    continue;
                };
                let model = self.accepted[me].get(&name);
                if model.map(rank) == Some(entry.rank()) {
                    continue;
                }
                let got = entry.record().expect("a record learnt by sync has a body");
                assert!(
                    model.is_none_or(|m| rank(&got) > rank(m)),
                    "sync lowered replica {me}'s winner for {name}"
                );
                assert_eq!(
                    self.accepted[peer].get(&name),
                    Some(&got),
                    "replica {me} learnt a record that is not replica {peer}'s winner"
                );
                assert!(self.history.contains(&got), "sync invented a record");
                self.accepted[me].insert(name, got);
            }
        }
    }

    fn sync_all(&mut self) {
        for _pass in 0..4 {
            let before: Vec<_> = self.replicas.iter().map(snapshot).collect();
            for a in 0..REPLICAS {
                for b in 0..REPLICAS {
                    if a != b {
                        self.sync(a, b);
                    }
                }
            }
            let after: Vec<_> = self.replicas.iter().map(snapshot).collect();
            if before == after {
                break;
            }
        }
        self.last_sync = self.now;
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::NewPlan { writer } => {
                self.planner += 1;
                self.plans[*writer] = self.planner;
            }
            Op::Enact {
                writer,
                label,
                what,
                ttl_ms,
            } => self.enact(*writer, *label, what, *ttl_ms),
            Op::Deliver { msg } => {
                if !self.in_flight.is_empty() {
                    let (r, rec) = self.in_flight.remove(msg.index(self.in_flight.len()));
                    self.offer(r, &rec, Freshness::Replicate);
                }
            }
            Op::Replay { msg, replica } => {
                if !self.history.is_empty() {
                    let rec = self.history[msg.index(self.history.len())].clone();
                    self.offer(*replica, &rec, Freshness::Replicate);
                }
            }
            Op::Advance { ms } => {
                if self.now + ms - self.last_sync > SYNC_EVERY_MS {
                    self.sync_all();
                }
                self.now += ms;
            }
            Op::Compact { replica } => {
                let before = snapshot(&self.replicas[*replica]);
                let dropped = ok(self.replicas[*replica].compact(self.now));
                let after = snapshot(&self.replicas[*replica]);
                let lost = before
                    .iter()
                    .zip(&after)
                    .filter(|((_, b), (_, a))| b.bytes.is_some() && a.bytes.is_none())
                    .count();
                assert_eq!(dropped, lost, "compact reports what it dropped");
            }
            Op::Sync { a, b } => self.sync(*a, *b),
        }
    }

    /// The invariants, on every replica, for every name.
    fn check(&mut self, after: &Op) {
        for r in 0..REPLICAS {
            let store = &self.replicas[r];
            for name in self.names() {
                let model = self.accepted[r].get(&name);
                let entry = store.entry(&name);
                assert_eq!(
                    entry.map(|e| e.rank()),
                    model.map(rank),
                    "replica {r} {name}: floor is not the max accepted (after {after:?})"
                );
                if let Some(e) = entry {
                    if let Some(prev) = self.prev_floors[r].get(&name) {
                        assert!(
                            e.rank() >= *prev,
                            "replica {r} {name}: floor went down after {after:?}"
                        );
                    }
                    self.prev_floors[r].insert(name.clone(), e.rank());
                    if e.bytes.is_none() {
                        assert!(
                            e.expires_at_ms + RETENTION_MS <= self.now,
                            "replica {r} {name}: clean-up dropped a body within the grace period"
                        );
                    }
                }
                let served = store.resolve(&name, self.now);
                let live = model.filter(|m| !m.is_tombstone() && m.body.expires_at_ms > self.now);
                assert_eq!(
                    served.as_ref(),
                    live,
                    "replica {r} {name}: a live name must resolve to its winner, nothing else \
                     (now {}, after {after:?})",
                    self.now
                );
                if let Some(rec) = served {
                    assert!(
                        rec.endpoints().is_some_and(|e| !e.is_empty()),
                        "replica {r} {name}: resolved to an empty endpoint set"
                    );
                }
            }
        }
    }

    /// After a last anti-entropy pass and clean-up, every replica holds the max record ever
    /// written per name and they all answer alike.
    fn check_converged(&mut self) {
        self.sync_all();
        for r in 0..REPLICAS {
            ok(self.replicas[r].compact(self.now));
        }
        let global = model_winners(&self.history);
        for name in self.names() {
            let want = global.get(&name);
            for r in 0..REPLICAS {
                let entry = self.replicas[r].entry(&name);
                assert_eq!(
                    entry.map(|e| e.rank()),
                    want.map(rank),
                    "replica {r} {name}: did not converge on the max record written"
                );
                assert_eq!(
                    self.replicas[r].resolve(&name, self.now),
                    self.replicas[0].resolve(&name, self.now),
                    "replicas {r} and 0 answer {name} differently"
                );
            }
        }
        let digest = self.replicas[0].digest();
        for r in 1..REPLICAS {
            assert_eq!(
                self.replicas[r].digest(),
                digest,
                "replica {r} digest differs"
            );
        }
    }
}

proptest! {
    #![proptest_config(proptest_config(256))]

    #[test]
    fn interleaved_writers_late_deliveries_expiry_and_cleanup_never_empty_a_live_name(
        ops in vec(op(), 1..80)
    ) {
        let mut world = World::new();
        for op in &ops {
            world.step(op);
            world.check(op);
        }
        world.check_converged();
    }
}

/// The schedule above must actually reach every outcome the invariants are about, otherwise
/// the property would pass vacuously.
#[test]
fn the_race_schedule_exercises_stale_conflict_and_compaction() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::new(proptest_config(1));
    let mut kinds: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut compacted = 0;
    for _ in 0..48 {
        let ops = vec(op(), 40..60)
            .new_tree(&mut runner)
            .expect("strategy builds")
            .current();
        let mut world = World::new();
        for op in &ops {
            world.step(op);
            world.check(op);
        }
        compacted += world
            .replicas
            .iter()
            .flat_map(|s| s.iter().map(|(_, e)| e.bytes.is_none()))
            .filter(|&c| c)
            .count();
        for (k, n) in world.kinds {
            *kinds.entry(k).or_default() += n;
        }
    }
    for kind in ["applied", "duplicate", "stale", "conflict", "invalid"] {
        assert!(
            kinds.get(kind).is_some_and(|&n| n > 0),
            "no {kind} outcome in {kinds:?}"
        );
    }
    assert!(compacted > 0, "no schedule compacted anything");
}

/// The outage, replayed exactly: enactor A checks once that its plan is newer, stalls;
/// enactor B applies a newer plan and runs clean-up; A applies its stale plan; clean-up would
/// delete "old" plans; the automation would publish an empty record. In dpin every step that
/// caused the outage is refused at apply time on every replica, and a replica that A reached
/// first repairs itself through anti-entropy.
#[test]
fn stale_plan_after_cleanup_is_rejected_on_every_replica() {
    let key = zone_key(7); // one zone key, held by every enactor
    let mut replicas = vec![MemStore::new(); 3]; // one per availability zone
    let mut now = T0;
    let week = 7 * 24 * HOUR_MS;
    let name = format!("dynamodb.{}", key.zone());

    // The planner's plans; A holds the older one.
    let plan_a = signed(
        &key,
        "dynamodb",
        100,
        now + week,
        vec![v4(1, 1, 443), v4(1, 2, 443)],
    );
    let plan_b = signed(
        &key,
        "dynamodb",
        102,
        now + week,
        vec![v4(2, 1, 443), v4(2, 2, 443)],
    );

    // A checks once that its plan is newer than what is live — true at this moment — and stalls.
    assert!(replicas.iter().all(|r| r.entry(&name).is_none()));
    let a_saw_seq = 0;

    // B applies the newer plan on replicas 0 and 1 (replica 2 is slow to hear of it).
    for r in &mut replicas[..2] {
        assert_eq!(
            ok(r.apply(&plan_b, now, Freshness::Publish, None)),
            Outcome::Applied { previous_seq: None }
        );
    }
    // B's clean-up runs right away: nothing live may be touched.
    now += 10 * 60_000;
    for r in &mut replicas {
        assert_eq!(
            ok(r.compact(now)),
            0,
            "clean-up must not drop a live winner"
        );
    }

    // A wakes up and applies its stale plan everywhere. Every replica compares at apply time.
    now += 5 * 60_000;
    for r in &mut replicas[..2] {
        assert_eq!(
            ok(r.apply(&plan_a, now, Freshness::Publish, None)),
            Outcome::Stale {
                have: 102,
                got: 100
            },
            "the stale plan must be refused where the newer one is held"
        );
        assert_eq!(
            ok(r.apply(&plan_a, now, Freshness::Publish, Some(a_saw_seq))),
            Outcome::CasMismatch {
                expected: 0,
                actual: 102
            },
            "A's compare-and-set on what it checked earlier must fail"
        );
    }
    // Replica 2 had not heard of plan 102 yet: it takes plan 100, the best it has seen.
    assert!(ok(replicas[2].apply(&plan_a, now, Freshness::Publish, None)).changed_store());

    // Clean-up "deletes old plans": in dpin a deletion is a signed tombstone, and one for an
    // old plan number is stale wherever the newer plan is held.
    let delete_old = tombstone(&key, "dynamodb", 101, now + week);
    for r in &mut replicas[..2] {
        assert_eq!(
            ok(r.apply(&delete_old, now, Freshness::Publish, None)),
            Outcome::Stale {
                have: 102,
                got: 101
            }
        );
    }
    // The automation's broken repair, an empty endpoint set: refused at sign and everywhere.
    let empty = body(
        &key,
        "dynamodb",
        103,
        now + week,
        Content::Endpoints(vec![]),
    );
    assert_eq!(
        empty.clone().sign(&key).err(),
        Some(ValidationError::EmptyEndpoints)
    );
    let forged_empty = forge(&key, empty);
    for r in &mut replicas {
        assert_eq!(
            ok(r.apply(&forged_empty, now, Freshness::Replicate, None)),
            Outcome::Invalid(ValidationError::EmptyEndpoints)
        );
    }

    // Anti-entropy repairs replica 2 by itself, and the late tombstone cannot undo it.
    let passes = sync_until_quiet(&mut replicas, now, 4);
    assert!(passes <= 2, "anti-entropy took {passes} passes");
    for r in &mut replicas {
        assert!(!ok(r.apply(&delete_old, now, Freshness::Replicate, None)).changed_store());
        let served = r
            .resolve(&name, now)
            .expect("the regional endpoint resolves");
        assert_eq!(served, plan_b);
        assert_eq!(served.endpoints().map(<[_]>::len), Some(2));
    }

    // Long after plan 102 expired and clean-up dropped its body, the floor still refuses the
    // stale plan: an old record can never be replayed back in.
    now = plan_b.body.expires_at_ms + DEFAULT_BODY_RETENTION_MS;
    for r in &mut replicas {
        assert_eq!(
            r.resolve(&name, now),
            None,
            "the record lapsed at its own expiry"
        );
        assert_eq!(ok(r.compact(now)), 1);
        assert_eq!(
            ok(r.apply(&plan_a, now, Freshness::Replicate, None)),
            Outcome::Stale {
                have: 102,
                got: 100
            }
        );
        assert_eq!(r.entry(&name).map(|e| e.floor.seq), Some(102));
        // A restart that rebuilds the index from persisted entries keeps the floor too.
        let mut restarted = MemStore::new();
        for (n, e) in r.iter() {
            restarted.insert(&n, e.clone());
        }
        assert_eq!(restarted.digest(), r.digest());
        assert!(matches!(
            ok(restarted.apply(&plan_a, now, Freshness::Replicate, None)),
            Outcome::Stale { .. }
        ));
    }
    // The repaired pipeline publishes plan 104 and it wins everywhere.
    let plan_next = signed(&key, "dynamodb", 104, now + week, vec![v4(3, 1, 443)]);
    for r in &mut replicas {
        assert!(ok(r.apply(&plan_next, now, Freshness::Publish, Some(102))).changed_store());
        assert_eq!(r.resolve(&name, now).as_ref(), Some(&plan_next));
    }
}
