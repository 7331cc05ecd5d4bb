//! Runs the propagation bench ([`dpin_sim::propbench`]) until `dpin-bench propagation` wires it:
//! `cargo build --release -p dpin-node -p dpin-sim && cargo run --release -p dpin-sim --example
//! propbench -- --dpin target/release/dpin [--nodes 3,5,20] [--messages 200]`.

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: dpin_sim::propbench::PropagationArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    dpin_sim::propbench::run(&cli.args).await.map(|_| ())
}
