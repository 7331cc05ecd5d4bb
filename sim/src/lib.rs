//! # dpin-sim — the local cluster launcher and Jepsen-style chaos harness of dpin
//!
//! dpin exists so that no single failure can erase a name or take it offline (SPEC §1). This
//! crate is where that claim is tested against real processes, and where a newcomer starts one
//! with a single command:
//!
//! * `dpin-sim cluster` ([`cluster`]) starts N real `dpin node` processes on loopback and prints
//!   how to talk to them; Ctrl-C or `dpin-sim stop` leaves no process behind.
//! * `dpin-sim chaos` runs a workload ([`workload`]) of writers and readers over HTTP and DNS
//!   with short TTLs (records expire and are compacted during the run), and the seed's race
//!   through the real `dpin` CLI ([`race`]: planner, two enactors — one delayed, at a
//!   partitioned or racing node — and the clean-up, in every order), while a nemesis
//!   ([`nemesis`]) kills, pauses and partitions nodes (alone, in halves, one way), skews one
//!   node's clock ([`clock`]) or restarts every node in turn;
//!   every operation is recorded in a history ([`history`]); after healing, a pure checker
//!   ([`checker`]) judges the history — including per-node monotonic reads and content — and
//!   produces the SPEC §5 report ([`report`]) and an SVG timeline ([`svg`]).
//!
//! * `dpin-sim attack` ([`attack`]) is a hostile peer speaking the real protocol against one
//!   node (floods, sync bombs, blob chunks, fake offers, junk zones, rotating ids).
//!
//! * `dpin-sim simulate` ([`simulate`]) runs N nodes of the same protocol core in one process
//!   and one thread, in virtual time, from a seed: convergence, partition-heal, the seed's race
//!   and churn, with invariants checked after every event and a replayable event-log digest.
//!
//! * [`propbench`] measures propagation of dpin's real processes against raw in-process
//!   gossipsub at the same cluster sizes, side by side in one run (`dpin-bench propagation`).
//!   [`dnsbench`] holds what `deploy/dns-bench.sh` runs at data scale: a million-name data dir
//!   with the same names as a reference zone file (`dpin-bench dns-fill`), and a steady
//!   load of updates that reach a node by gossip while its DNS is measured (`dpin-bench
//!   gossip-load` from peers in the bench's process, `dpin-bench publish-load` over HTTP to
//!   other nodes).
//!   [`scrapebench`] measures what scraping `/metrics` costs a node (`dpin-bench scrape`).
//!
//! The `dpin-sim` binary is a thin front-end over these modules: `src/main.rs` holds the
//! command line and the dispatch, `src/cli/` one module per subcommand (`cluster`, `chaos` with
//! its options and its run, `check`, `attack`) and what they share; `simulate`'s front-end is
//! [`simulate::run`], here in the library.
//!
//! ## Partitions and WAN links
//! A real partition needs packets to vanish between nodes. When partitions or WAN links
//! (`--link-delay-ms`, `--jitter-ms`, `--loss-pct`) are requested and the harness runs as root
//! with iproute2, each node runs in its own network namespace ([`netns`]): API/DNS on
//! 198.19.0.K behind a bridge, peer traffic on 198.18.0.K through a TUN device into the
//! harness's userspace WAN switch ([`wan`]: this kernel has no `sch_netem`), which delays,
//! loses and cuts packets — one node isolated, split-brain halves, one-way cuts. Everything
//! lives in namespaces the run creates and deletes. Otherwise partitions are not scheduled at
//! all (there is no safe way to drop loopback traffic of a single process without touching the
//! host's firewall) and the report's `partition_method` says so. Kill, pause, skew and
//! rolling-restart runs stay on 127.0.0.1.

pub mod attack;
pub mod checker;
pub mod clock;
pub mod cluster;
pub mod dnsbench;
pub mod dnsq;
pub mod history;
pub mod nemesis;
pub mod netns;
pub mod nodeapi;
pub mod propbench;
pub mod race;
pub mod report;
pub mod scrapebench;
pub mod simulate;
pub mod svg;
pub mod wan;
pub mod workload;
