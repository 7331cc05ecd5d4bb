//! The end-to-end tests in one test binary, one module per file beside this one (all but
//! `hostile_peer.rs`, see below).
//!
//! Why one binary: each integration-test file is a crate of its own. Built with the CI
//! profile (optimised), each of them instantiated and optimised the same generic code
//! (tokio, serde, the HTTP and DNS clients) and linked dpin's whole dependency tree again, which
//! cost minutes of CI's 25. As modules of one crate they share that work. Tests keep their
//! file's name as a path: `cargo test -p dpin-tests --test e2e failover::` runs one file,
//! `cargo test -p dpin-tests --test e2e failover::partitioned_node_is_cut_off` one test.
//!
//! `hostile_peer.rs` stays a binary of its own: run among the other files' tests, two of its
//! tests failed in 2 of 2 runs (the attacker found no connection to its target within 15 s;
//! a cluster took over 30 s to connect fully), while alone they pass. The cause is not found
//! yet; until it is, the hostile tests run as before, beside each other only.
//!
//! Modules:
//! - `blob_authority`: fake offers and foreign manifests change no honest blob's placement;
//! - `chaos_checker`: the chaos checker's verdicts on hand-made histories;
//! - `dns`: the DNS front end over UDP and TCP, its limits and its answers;
//! - `failover`: reads that route around dead endpoints, dead peers and cut-off nodes;
//! - `nat`: AutoNAT, relay v2, direct upgrades and mDNS in network namespaces (root; else a
//!   loud SKIP, a failure under `DPIN_REQUIRE_NETNS=1`);
//! - `node_config`: the TOML file, flags and environment;
//! - `node_e2e`: publish, replicate and resolve across a real cluster;
//! - `outside_world`: strangers' records cannot aim probes inward; HTTP errors and slow clients;
//! - `probe_sharing`: endpoint probes shared rather than repeated by every node;
//! - `race_safety`: the seed's race between two automation workers, through every user path;
//! - `storage`: offers, blob puts and gets, repair;
//! - `upgrade`: a data dir written by an older format opens in this binary.

mod blob_authority;
mod chaos_checker;
mod dns;
mod failover;
mod nat;
mod node_config;
mod node_e2e;
mod outside_world;
mod probe_sharing;
mod race_safety;
mod storage;
mod upgrade;
