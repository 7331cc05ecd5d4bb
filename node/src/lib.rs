//! # dpin-node — a dpin peer
//!
//! Module map:
//! * [`net`] — the libp2p swarm (gossipsub, Kademlia, identify, request-response, the
//!   liveness probes on a long-lived stream per connection (`net::probe_stream`) with
//!   `/dpin/probe/1` requests (`net::probe_wire`) for indirect probes and older peers, connection limits, a target connection degree, re-dials
//!   of peers found down) in one event loop, driven through a cloneable handle.
//!   `net::nat`: discovery and NAT — opt-in mDNS, AutoNAT v1, relay v2 client and server,
//!   DCUtR, direct upgrades of relayed connections, and their counters.
//! * [`store`] — the durable store: redb as the truth, the protocol's `MemStore` as the index,
//!   with the reserved-name index and the change feed (instead of whole-store scans).
//!   [`replica_log`]: gossiped records' entries appended the moment they apply (kept across
//!   a SIGKILL) and folded into redb 4 at a time or a second after, instead of a commit per
//!   record. [`store_writer`]: the thread, at the DNS answers' priority, that takes the store's
//!   write lock for every applied record.
//! * [`watch`] — blocking reads: waiters on a name, woken by the store's changes
//!   (`?wait_seq=N`, `dpin resolve --wait-seq`).
//! * [`node`] — glue: gossip validation through the merge rule, anti-entropy sessions, publish.
//!   [`sync_slot`]: the slots those sessions hold while they work (a session waiting long on
//!   a silent peer hands its slot on).
//! * [`liveness`] — the SWIM-style peer failure detector, from the protocol core (re-exported).
//! * [`health`] — endpoint probing: a probe policy (no private targets unless allowed), each
//!   endpoint probed by k live nodes chosen by rendezvous hashing, their verdicts shared as
//!   signed observation records, per-zone budgets, bounded concurrency, jitter and backoff.
//! * [`offers`] — this node's storage/compute offers (signed records, refreshed, lapsing) and
//!   the network-wide offer listing; it reads the node through `offers::OfferHost`.
//! * [`blobs`] — replicated, verified, self-repairing blob storage behind the storage offers;
//!   it reads the node through `blobs::BlobHost`. The node implements both traits, so neither
//!   module imports [`node`] (no import circle).
//! * [`answer`] — the one answer builder (healthy endpoints first, never empty), and its form
//!   for DNS address answers read in place ([`answer::dns_literals`]).
//! * [`api`] — the HTTP API (axum): connection caps, deadlines, JSON errors, optional token.
//! * [`contract`] — the API's one contract: a serde type for every request and answer body,
//!   and the one mapping from a merge outcome to a publish's answer; the server, the CLI
//!   client and the chaos harness (`dpin-sim`) all use it.
//! * [`dns`] — the DNS front-end (UDP and TCP) answering from the local store: `responder`
//!   (packet in, packet out), `serve` (sockets), `rrl`, `stats`, `aliases`.
//! * [`logs`] — libraries' log lines bounded: a rate limit per call site, a length limit per
//!   line (a peer can make a library log), and what was dropped counted.
//! * [`metrics`] — `/metrics`: one prometheus-client registry (dpin's counters, gauges and
//!   histograms, and libp2p's own metrics) and its text encoder.
//! * [`client`] — the failover HTTP client the CLI uses (bodies: [`contract`]).
//! * [`clock`] — the wall clock (`now_ms`), read in one place.
//! * [`publish`] — safe client-side writes: plans (`dpin sign`, `publish --record`),
//!   compare-and-set one-step publishing, named deletions.
//! * [`identity`] — the node's persistent libp2p identity and secret-file writing.
//! * [`datadir`] — the data dir's format version: open an older dir, refuse a newer one.
//! * [`benchdata`] — synthetic signed records for the data-scale benches (not used by the node).
//! * [`alloc`] — glibc allocator settings so memory follows what the node holds now.
//! * [`priority`] — thread priorities: the node's runtime threads run `--background-nice`
//!   steps below the DNS answer threads, so a query never waits out a gossip apply's slice.
//! * [`config`] — `dpin node --config FILE` (TOML), overridden by DPIN_* and flags.
//! * [`cli`] — the command line (`keygen`, `node`, `publish`, `sign`, `resolve`, `status`,
//!   `offers`, `put`, `get`, `blob`); `src/main.rs`
//!   only calls [`cli::main`].

pub mod alloc;
pub mod answer;
pub mod api;
pub mod benchdata;
pub mod blobs;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod contract;
pub mod datadir;
pub mod dns;
pub mod health;
pub mod identity;
/// The failure detector lives in the protocol core; re-exported where the node's modules look.
pub use dpin_protocol::liveness;
pub mod logs;
pub mod metrics;
pub mod net;
pub mod node;
pub mod offers;
pub mod priority;
pub mod publish;
pub mod replica_log;
pub mod store;
pub mod store_writer;
pub mod sync_slot;
pub mod watch;
