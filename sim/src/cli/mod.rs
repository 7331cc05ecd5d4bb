//! The front-ends of `dpin-sim`'s subcommands, one module each, and what they share.
//!
//! `main.rs` parses the command line and dispatches; each module here turns one subcommand's
//! options into a run of the library (`dpin_sim`) and an exit code. They were one 1,300-line
//! file; split so that each subcommand can be read (and changed) on its own.
//!
//! Shared here: the async runtime the network subcommands run on ([`runtime`],
//! [`run_async`]), the duration syntax of `--duration` ([`parse_duration`]), Ctrl-C
//! ([`terminated`]) and the default folder of a run ([`new_base_dir`]).

pub(crate) mod attack;
pub(crate) mod chaos;
pub(crate) mod check;
pub(crate) mod cluster;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub(crate) fn run_async(fut: impl std::future::Future<Output = Result<()>>) -> i32 {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dpin-sim: {e:#}");
            return 2;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("dpin-sim: {e:#}");
            1
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn terminated() {
    dpin_node::cli::shutdown_signal().await;
}

pub(crate) fn new_base_dir(kind: &str) -> PathBuf {
    std::env::temp_dir().join(format!("dpin-{kind}-{}", std::process::id()))
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let n: f64 = num
        .parse()
        .with_context(|| format!("bad duration {s:?}; use e.g. 30, 90s, 5m"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => bail!("bad duration unit in {s:?}; use s, m or h"),
    };
    if !(secs.is_finite() && secs > 0.0 && secs <= 24.0 * 3600.0) {
        bail!("duration {s:?} out of range (0 < d <= 24h)");
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() -> Result<()> {
        assert_eq!(parse_duration("30")?, Duration::from_secs(30));
        assert_eq!(parse_duration("90s")?, Duration::from_secs(90));
        assert_eq!(parse_duration("5m")?, Duration::from_secs(300));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("5x").is_err());
        Ok(())
    }
}
