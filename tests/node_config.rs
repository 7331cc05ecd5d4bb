//! `dpin node --config FILE`: settings from TOML, with flags and DPIN_* variables overriding
//! them, and clear errors for keys that are not settings.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::Result;
use dpin_tests::http;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dpin-e2e"))
}

/// Starts `dpin node` with `args` and `env`, reads its `api` line, and returns the child and
/// that address.
fn start(args: &[&str], env: &[(&str, &str)]) -> Result<(std::process::Child, String)> {
    use std::io::BufRead;
    let mut child = Command::new(bin())
        .arg("node")
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let out = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("api ") {
                let _ = tx.send(a.to_owned());
            }
        }
    });
    match rx.recv_timeout(std::time::Duration::from_secs(20)) {
        Ok(api) => Ok((child, api)),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("node did not print its API address")
        }
    }
}

#[test]
fn a_config_file_sets_the_node_and_flags_and_environment_override_it() -> Result<()> {
    let tmp = dpin_tests::test_dir()?;
    let data = tmp.path().join("data");
    let file = tmp.path().join("dpin.toml");
    std::fs::write(
        &file,
        format!(
            "data-dir = {:?}\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\napi = \"127.0.0.1:1\"\nno-probe = true\nexpected_nodes = 3\n",
            data.display().to_string()
        ),
    )?;
    let cfg = file.to_string_lossy().into_owned();
    // The file's api (port 1) is overridden by the environment, the environment's by nothing.
    let (mut child, api) = start(&["--config", &cfg], &[("DPIN_API", "127.0.0.1:0")])?;
    let (code, status) = http(&api, "GET", "/v1/status", None)?;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(code, 200, "{status}");
    assert!(
        data.join("FORMAT").exists(),
        "the data dir came from the file"
    );
    // A flag beats the environment.
    let (mut child, api2) = start(
        &["--config", &cfg, "--api", "127.0.0.1:0"],
        &[("DPIN_API", "127.0.0.1:1")],
    )?;
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        api2.starts_with("127.0.0.1:") && !api2.ends_with(":1"),
        "{api2}"
    );
    Ok(())
}

#[test]
fn an_unknown_key_is_refused_with_its_name() -> Result<()> {
    let tmp = dpin_tests::test_dir()?;
    let file = tmp.path().join("dpin.toml");
    std::fs::write(
        &file,
        "data-dir = \"/tmp/x\"\nlisten-on = \"/ip4/0.0.0.0/tcp/1\"\n",
    )?;
    let out = Command::new(bin())
        .args(["node", "--config"])
        .arg(&file)
        .stdin(Stdio::null())
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown key \"listen-on\""), "{err}");
    Ok(())
}
