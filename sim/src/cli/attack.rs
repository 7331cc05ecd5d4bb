//! `dpin-sim attack`: its options, turned into an [`dpin_sim::attack::AttackConfig`] and run
//! on the async runtime; the report is printed as JSON. The attack itself (a hostile peer on
//! the node's own libp2p stack) is `dpin_sim::attack`.

use anyhow::{anyhow, Context};

use super::{parse_duration, run_async};

#[derive(clap::Args, Clone, Debug)]
pub(crate) struct AttackArgs {
    /// The target node's peer multiaddr, with `/p2p/PEER_ID` (as `dpin node` prints it).
    #[arg(long)]
    target: String,
    /// What to send: KIND or KIND:RATE (messages per second), repeatable. Kinds:
    /// invalid-signature, oversized, sync-bomb, whole-store-sync, blob-flood, fake-offers,
    /// foreign-manifests, junk-zones.
    #[arg(long, required = true)]
    kind: Vec<dpin_sim::attack::Stream>,
    /// Rate of kinds given without one: N or N/s.
    #[arg(long, default_value = "100/s", value_parser = dpin_sim::attack::parse_rate)]
    rate: f64,
    /// How long: seconds, or with a unit (30s, 2m).
    #[arg(long, default_value = "10s")]
    duration: String,
    /// A new peer id (keypair and connection) every K messages.
    #[arg(long)]
    rotate_every: Option<u64>,
    /// Root (hex) of an honest blob, for foreign-manifests.
    #[arg(long)]
    blob_root: Option<String>,
    /// Seed of the junk.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub(crate) fn attack_main(args: AttackArgs) -> i32 {
    run_async(async move {
        let blob_root = match &args.blob_root {
            Some(h) => Some(
                hex::decode(h)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| anyhow!("--blob-root must be 64 hex digits"))?,
            ),
            None => None,
        };
        let config = dpin_sim::attack::AttackConfig {
            target: args
                .target
                .parse()
                .with_context(|| format!("bad --target {:?}", args.target))?,
            streams: args.kind.clone(),
            default_rate_per_s: args.rate,
            duration: parse_duration(&args.duration)?,
            rotate_every: args.rotate_every,
            blob_root,
            seed: args.seed,
        };
        let report = dpin_sim::attack::run(config).await?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        Ok(())
    })
}
