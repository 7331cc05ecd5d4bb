//! `dpin node --config FILE`: the node's settings from a TOML file, with the command line and
//! the environment overriding it.
//!
//! Operators keep a daemon's settings in a file under version control; containers and
//! one-off runs override a few of them. So every long flag of `dpin node` is also a key of the
//! config file (same name; `_` may stand for `-`) and an environment variable `DPIN_<FLAG>`
//! (upper case, `-` as `_`; e.g. `DPIN_DATA_DIR`, `DPIN_DNS_RRL_RATE`). Precedence, highest
//! first: command line, environment, config file, built-in default. `deploy/dpin.example.toml`
//! lists every key with its default and why one would change it.
//!
//! How: the file is read and checked (unknown keys, tables and wrong value types are errors
//! naming the key), then each key that the command line and the environment leave unset is
//! appended to the arguments as `--key value` before clap parses them. So the file can set
//! nothing clap would not accept on the command line, and every value goes through the same
//! parser and the same error messages. Lists become repeated flags (`bootstrap = ["a", "b"]`),
//! `true` turns a switch on (`no-probe = true`), `false` leaves it off.
//!
//! Bounds: the file may be at most [`MAX_CONFIG_BYTES`]; lists at most [`MAX_LIST`] items.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::ArgAction;

/// Largest config file read: settings, not data.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Most items of one list key.
pub const MAX_LIST: usize = 1024;
/// The flag that names the config file, and its environment variable.
pub const CONFIG_FLAG: &str = "config";
/// Environment variable prefix of node flags.
pub const ENV_PREFIX: &str = "DPIN_";

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading the file failed.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Too big to be a config file.
    #[error("config file {path} is {size} bytes; at most {MAX_CONFIG_BYTES} are read")]
    TooBig {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// Not TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A key that is no flag of `dpin node`.
    #[error("config file {path}: unknown key {key:?}; the keys are the long flags of `dpin node` (see `dpin node --help` and deploy/dpin.example.toml)")]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A value of the wrong shape for its key.
    #[error("config file {path}: key {key:?}: {message}")]
    BadValue {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The environment variable of node flag `long` (`data-dir` → `DPIN_DATA_DIR`).
pub fn env_name(long: &str) -> String {
    format!("{ENV_PREFIX}{}", long.replace('-', "_").to_uppercase())
}

/// Gives every argument of the `node` subcommand (but `--config` itself and help) its
/// `DPIN_<FLAG>` environment variable.
pub fn with_env(node: clap::Command) -> clap::Command {
    node.mut_args(|a| match a.get_long().map(str::to_owned) {
        Some(long) if long != "help" && a.get_env().is_none() => {
            // clap keeps `&'static str` names (without its `string` feature); the command is
            // built once per process, so these few dozen bytes live as long as it anyway.
            let name: &'static str = Box::leak(env_name(&long).into_boxed_str());
            a.env(name)
        }
        _ => a,
    })
}

/// Whether `argv` (after the subcommand) gives flag `--long`.
fn on_command_line(args: &[OsString], long: &str) -> bool {
    let flag = format!("--{long}");
    let with_value = format!("--{long}=");
    args.iter().any(|a| {
        a.to_str()
            .is_some_and(|s| s == flag || s.starts_with(&with_value))
    })
}

/// The config file named by `--config FILE` / `--config=FILE` in `args`, else by
/// `DPIN_CONFIG`.
pub fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let flag = format!("--{CONFIG_FLAG}");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == flag.as_str() {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.to_str().and_then(|s| s.strip_prefix(&format!("{flag}="))) {
            return Some(PathBuf::from(v));
        }
    }
    std::env::var_os(env_name(CONFIG_FLAG)).map(PathBuf::from)
}

/// Reads and parses a config file.
pub fn read(path: &Path) -> Result<toml::Table, ConfigError> {
    let io = |source| ConfigError::Io {
        path: path.to_owned(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooBig {
            path: path.to_owned(),
            size,
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    toml::from_str::<toml::Table>(&text).map_err(|e| ConfigError::Syntax {
        path: path.to_owned(),
        message: e.to_string().replace('\n', " "),
    })
}

/// The arguments `table` adds for the `node` subcommand `node` (whose given arguments are
/// `given`): every key not already on the command line or in the environment (`env`), as
/// `--key value`, checked against the subcommand's flags.
pub fn args_from_table(
    path: &Path,
    table: &toml::Table,
    node: &clap::Command,
    given: &[OsString],
    env: impl Fn(&str) -> bool,
) -> Result<Vec<OsString>, ConfigError> {
    let mut out = Vec::new();
    for (raw_key, value) in table {
        let key = raw_key.replace('_', "-");
        let bad = |message: String| ConfigError::BadValue {
            path: path.to_owned(),
            key: raw_key.clone(),
            message,
        };
        let arg = node
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()))
            .filter(|_| key != CONFIG_FLAG && key != "help")
            .ok_or_else(|| ConfigError::UnknownKey {
                path: path.to_owned(),
                key: raw_key.clone(),
            })?;
        if on_command_line(given, &key) || env(&env_name(&key)) {
            continue; // overridden
        }
        let flag = OsString::from(format!("--{key}"));
        let switch = matches!(arg.get_action(), ArgAction::SetTrue);
        let many = matches!(arg.get_action(), ArgAction::Append);
        let scalar = |v: &toml::Value| -> Result<String, ConfigError> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                other => Err(bad(format!(
                    "expected a string or a number, found {}",
                    other.type_str()
                ))),
            }
        };
        match value {
            toml::Value::Boolean(b) if switch => {
                if *b {
                    out.push(flag);
                }
            }
            _ if switch => return Err(bad("expected true or false".to_owned())),
            toml::Value::Array(items) if many => {
                if items.len() > MAX_LIST {
                    return Err(bad(format!("more than {MAX_LIST} items")));
                }
                for v in items {
                    out.push(flag.clone());
                    out.push(scalar(v)?.into());
                }
            }
            toml::Value::Array(_) => {
                return Err(bad("takes one value, not a list".to_owned()));
            }
            v => {
                out.push(flag);
                out.push(scalar(v)?.into());
            }
        }
    }
    Ok(out)
}

/// For `dpin node ... --config FILE` (or `DPIN_CONFIG`): `argv` with the file's settings
/// appended (see the module docs); any other command's `argv` unchanged. `cli` is the whole
/// command (with [`with_env`] applied to `node`).
pub fn expand(argv: Vec<OsString>, cli: &clap::Command) -> Result<Vec<OsString>, ConfigError> {
    if argv.get(1).is_none_or(|a| a != "node") {
        return Ok(argv);
    }
    let given = &argv[2..];
    let Some(path) = config_path(given) else {
        return Ok(argv);
    };
    let Some(node) = cli.find_subcommand("node") else {
        return Ok(argv);
    };
    let table = read(&path)?;
    let extra = args_from_table(&path, &table, node, given, |v| {
        std::env::var_os(v).is_some()
    })?;
    let mut out = argv;
    out.extend(extra);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> clap::Command {
        with_env(
            clap::Command::new("node")
                .arg(clap::Arg::new("data_dir").long("data-dir"))
                .arg(
                    clap::Arg::new("bootstrap")
                        .long("bootstrap")
                        .action(ArgAction::Append),
                )
                .arg(
                    clap::Arg::new("no_probe")
                        .long("no-probe")
                        .action(ArgAction::SetTrue),
                )
                .arg(clap::Arg::new("rate").long("dns-rrl-rate"))
                .arg(clap::Arg::new("config").long("config")),
        )
    }

    fn table(s: &str) -> toml::Table {
        toml::from_str(s).expect("test TOML")
    }

    fn strs(v: Vec<OsString>) -> Vec<String> {
        v.into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn keys_become_flags_unless_overridden() -> Result<(), ConfigError> {
        let t = table(
            "data-dir = \"/var/lib/dpin\"\nbootstrap = [\"/a\", \"/b\"]\nno_probe = true\ndns-rrl-rate = 20\n",
        );
        let p = Path::new("f.toml");
        let all = strs(args_from_table(p, &t, &node(), &[], |_| false)?);
        assert_eq!(
            all,
            [
                "--bootstrap",
                "/a",
                "--bootstrap",
                "/b",
                "--data-dir",
                "/var/lib/dpin",
                "--dns-rrl-rate",
                "20",
                "--no-probe"
            ]
        );
        // The command line and the environment win.
        let given = vec![OsString::from("--data-dir=/tmp/x")];
        let some = strs(args_from_table(p, &t, &node(), &given, |v| {
            v == "DPIN_DNS_RRL_RATE"
        })?);
        assert!(!some
            .iter()
            .any(|a| a == "--data-dir" || a == "--dns-rrl-rate"));
        assert!(some.iter().any(|a| a == "--no-probe"));
        Ok(())
    }

    #[test]
    fn bad_keys_and_values_are_named() {
        let p = Path::new("f.toml");
        let err = |s: &str| args_from_table(p, &table(s), &node(), &[], |_| false);
        assert!(
            matches!(err("nope = 1"), Err(ConfigError::UnknownKey { key, .. }) if key == "nope")
        );
        assert!(matches!(
            err("config = \"x\""),
            Err(ConfigError::UnknownKey { .. })
        ));
        assert!(matches!(
            err("no-probe = \"yes\""),
            Err(ConfigError::BadValue { .. })
        ));
        assert!(matches!(
            err("data-dir = [\"a\"]"),
            Err(ConfigError::BadValue { .. })
        ));
        assert!(matches!(
            err("data-dir = { a = 1 }"),
            Err(ConfigError::BadValue { .. })
        ));
        assert_eq!(err("no-probe = false").map(strs).ok(), Some(Vec::new()));
    }

    #[test]
    fn the_config_file_is_found_on_the_command_line() {
        let a = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            config_path(&a(&["--api", "x", "--config", "/etc/dpin.toml"])),
            Some(PathBuf::from("/etc/dpin.toml"))
        );
        assert_eq!(
            config_path(&a(&["--config=/etc/d.toml"])),
            Some(PathBuf::from("/etc/d.toml"))
        );
        assert_eq!(env_name("data-dir"), "DPIN_DATA_DIR");
        let n = node();
        let env = n
            .get_arguments()
            .find(|a| a.get_long() == Some("dns-rrl-rate"))
            .and_then(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned());
        assert_eq!(env.as_deref(), Some("DPIN_DNS_RRL_RATE"));
    }

    #[test]
    fn syntax_errors_say_where() {
        let t = tempfile::tempdir().expect("temp dir");
        let p = t.path().join("bad.toml");
        std::fs::write(&p, "data-dir = \n").expect("write");
        let e = read(&p).expect_err("bad TOML");
        assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");
    }
}
