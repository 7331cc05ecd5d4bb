//! The data dir's format version: what lets a newer `dpin` open an older node's data, or refuse
//! it clearly instead of misreading it.
//!
//! A node's data dir holds its identity key (`identity.key`), its store (`store.redb`) and its
//! blobs (`blobs/`). Their layout will change; a binary that opens a layout it does not know
//! could lose the one thing dpin promises to keep (the highest seq of every name). So the dir
//! carries a file, [`FORMAT_FILE`], with one line: the format number. [`prepare`] runs at
//! node start, before the store opens, and:
//!
//! * a new or empty dir gets the current format written;
//! * a dir from before the format file existed (it holds a store or an identity but no
//!   format file) is format 1 — the layout of every release so far — and gets the file;
//! * an older format is upgraded step by step ([`MIGRATIONS`]), and the file is rewritten
//!   after each step succeeded (a dir from before the format file is upgraded from format 1
//!   the same way);
//! * a newer format than this binary knows is refused with an error that says which binary is
//!   needed: a downgrade is never attempted.
//!
//! The file is replaced atomically (write a temporary file, fsync, rename, fsync the dir), so a
//! crash leaves either the old or the new number, never a torn one.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The format file's name inside the data dir.
pub const FORMAT_FILE: &str = "FORMAT";
/// The format this binary writes.
///
/// * 1: every release up to 2026-12-04: the store's entries keyed by name.
/// * 2: the store's entries keyed by digest bucket, then name (`crate::store`, `ENTRIES`):
///   the order anti-entropy fetches in, so a catching-up node's commits touch a few
///   neighbouring pages per chunk instead of one per record. A format-1 binary would read a
///   format-2 store as empty (and so forget every name's floor): the format number is what
///   makes it refuse the dir instead.
/// * 3: the replica log (`crate::replica_log`, files `store.redb.replicas-N` beside the
///   store): a gossiped record a node applied, and may have served, can be only there until a
///   fold commits it. A format-2 binary does not know those files and would open a dir a
///   SIGKILL left with some as if they were not there, serving older seqs than the node
///   served before the kill (the promise is that a node never goes back on a seq it
///   served). The store itself is unchanged, so the step from 2 has nothing to move.
pub const CURRENT_FORMAT: u32 = 3;
/// The oldest format this binary can upgrade from.
pub const OLDEST_FORMAT: u32 = 1;
/// Longest format file accepted (one number and a newline; more is not ours).
const MAX_FORMAT_FILE: u64 = 64;
/// Files whose presence marks a data dir written before the format file existed.
const PRE_FORMAT_MARKERS: [&str; 3] = ["store.redb", "identity.key", "blobs"];

/// One upgrade step: from format `from` to `from + 1`, in place.
pub type Migration = fn(&Path) -> Result<(), DataDirError>;

/// Upgrade steps, by the format they start from.
pub const MIGRATIONS: &[(u32, Migration)] = &[
    (1, store_in_bucket_order),
    (2, replica_logs_beside_the_store),
];

/// Format 1 to 2: the store's entries move to the bucket-ordered table in one transaction
/// (`crate::store::upgrade_file`; a crash leaves the old table whole and the step is run
/// again). A dir without a store has nothing to move.
fn store_in_bucket_order(dir: &Path) -> Result<(), DataDirError> {
    let path = dir.join("store.redb");
    let moved = crate::store::upgrade_file(&path).map_err(|e| DataDirError::Store {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    tracing::info!(path = %path.display(), moved, "store entries moved to bucket order (data format 2)");
    Ok(())
}

/// Format 2 to 3: nothing to move (format 3 only adds the replica log's files, which the
/// store's open replays); the new number is what keeps a format-2 binary away from them.
fn replica_logs_beside_the_store(dir: &Path) -> Result<(), DataDirError> {
    tracing::info!(dir = %dir.display(), "data format 3: gossiped records may wait in replica log files beside the store");
    Ok(())
}

/// Why a data dir cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Reading or writing the dir failed.
    #[error("data dir {path}: {source}")]
    Io {
        /// The file or dir.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The format file holds something other than a format number.
    #[error(
        "{path} does not hold a dpin data format number ({found:?}); is this a dpin data dir?"
    )]
    Unreadable {
        /// The format file.
        path: PathBuf,
        /// What it holds (cut short).
        found: String,
    },
    /// Written by a newer dpin.
    #[error(
        "data dir {dir} has format {found}, newer than this dpin reads (up to {supported}); run the dpin release that wrote it (or a newer one), or restore a backup made by this release"
    )]
    TooNew {
        /// The data dir.
        dir: PathBuf,
        /// Its format.
        found: u32,
        /// The newest this binary reads.
        supported: u32,
    },
    /// Older than any format this binary can upgrade.
    #[error(
        "data dir {dir} has format {found}; this dpin upgrades formats {oldest} to {supported} only: upgrade through an intermediate dpin release first"
    )]
    TooOld {
        /// The data dir.
        dir: PathBuf,
        /// Its format.
        found: u32,
        /// The oldest this binary upgrades.
        oldest: u32,
        /// The current format.
        supported: u32,
    },
    /// A migration step is missing (a bug of this binary).
    #[error("no upgrade step from data format {0}")]
    NoMigration(u32),
    /// A migration step could not upgrade the store.
    #[error("cannot upgrade the store {path}: {reason}")]
    Store {
        /// The store file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// What [`prepare`] found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prepared {
    /// A new or empty dir: the current format was written.
    Created,
    /// The dir already had the current format.
    Current,
    /// A dir from before the format file: recognised as format 1 and marked.
    Adopted,
    /// Upgraded from an older format.
    Upgraded {
        /// The format found.
        from: u32,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The format recorded in `dir`, or `None` if it has no format file.
pub fn read_format(dir: &Path) -> Result<Option<u32>, DataDirError> {
    let path = dir.join(FORMAT_FILE);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    };
    if meta.len() > MAX_FORMAT_FILE {
        return Err(DataDirError::Unreadable {
            path,
            found: format!("{} bytes", meta.len()),
        });
    }
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    text.trim()
        .parse::<u32>()
        .map(Some)
        .map_err(|_| DataDirError::Unreadable {
            path,
            found: text.chars().take(32).collect(),
        })
}

/// Writes `format` to `dir`'s format file atomically.
pub fn write_format(dir: &Path, format: u32) -> Result<(), DataDirError> {
    let path = dir.join(FORMAT_FILE);
    let tmp = dir.join(format!("{FORMAT_FILE}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(format!("{format}\n").as_bytes())
            .map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Creates `dir` if needed and brings it to [`CURRENT_FORMAT`], or refuses it (see the module
/// docs). Call before anything else in the dir is opened.
pub fn prepare(dir: &Path) -> Result<Prepared, DataDirError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let found = match read_format(dir)? {
        Some(f) => f,
        None => {
            let used = PRE_FORMAT_MARKERS.iter().any(|m| dir.join(m).exists());
            if !used {
                write_format(dir, CURRENT_FORMAT)?;
                return Ok(Prepared::Created);
            }
            // Written before the format file existed: format 1, upgraded like any other.
            write_format(dir, 1)?;
            upgrade(dir, 1)?;
            return Ok(Prepared::Adopted);
        }
    };
    if found == CURRENT_FORMAT {
        return Ok(Prepared::Current);
    }
    if found > CURRENT_FORMAT {
        return Err(DataDirError::TooNew {
            dir: dir.to_owned(),
            found,
            supported: CURRENT_FORMAT,
        });
    }
    if found < OLDEST_FORMAT {
        return Err(DataDirError::TooOld {
            dir: dir.to_owned(),
            found,
            oldest: OLDEST_FORMAT,
            supported: CURRENT_FORMAT,
        });
    }
    upgrade(dir, found)?;
    Ok(Prepared::Upgraded { from: found })
}

/// Runs every step from format `found` to [`CURRENT_FORMAT`].
fn upgrade(dir: &Path, found: u32) -> Result<(), DataDirError> {
    for from in found..CURRENT_FORMAT {
        let step = MIGRATIONS
            .iter()
            .find(|(f, _)| *f == from)
            .map(|(_, m)| *m)
            .ok_or(DataDirError::NoMigration(from))?;
        step(dir)?;
        // Each finished step is recorded, so a crash repeats at most the step under way.
        write_format(dir, from + 1)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().expect("temp dir")
    }

    #[test]
    fn a_new_dir_gets_the_current_format() -> Result<(), DataDirError> {
        let t = tmp();
        let dir = t.path().join("data");
        assert_eq!(prepare(&dir)?, Prepared::Created);
        assert_eq!(read_format(&dir)?, Some(CURRENT_FORMAT));
        assert_eq!(prepare(&dir)?, Prepared::Current);
        Ok(())
    }

    #[test]
    fn a_dir_from_before_the_format_file_is_format_1_and_is_upgraded() -> Result<(), DataDirError> {
        let t = tmp();
        std::fs::write(t.path().join("identity.key"), b"k").map_err(io(t.path()))?;
        assert_eq!(prepare(t.path())?, Prepared::Adopted);
        assert_eq!(read_format(t.path())?, Some(CURRENT_FORMAT));
        assert!(
            !t.path().join("store.redb").exists(),
            "no store to move, none made"
        );
        Ok(())
    }

    #[test]
    fn a_format_1_dir_is_upgraded_step_by_step() -> Result<(), DataDirError> {
        let t = tmp();
        write_format(t.path(), 1)?;
        assert_eq!(prepare(t.path())?, Prepared::Upgraded { from: 1 });
        assert_eq!(read_format(t.path())?, Some(CURRENT_FORMAT));
        assert_eq!(prepare(t.path())?, Prepared::Current);
        Ok(())
    }

    /// A format-2 dir (its store already in bucket order) becomes format 3 without its store
    /// being touched: format 3 only adds the replica log's files, and its number is what a
    /// format-2 binary refuses.
    #[test]
    fn a_format_2_dir_becomes_format_3_with_its_store_untouched() -> Result<(), DataDirError> {
        let t = tmp();
        write_format(t.path(), 2)?;
        let store = t.path().join("store.redb");
        std::fs::write(&store, b"not a store: a step that opened it would fail")
            .map_err(io(&store))?;
        assert_eq!(prepare(t.path())?, Prepared::Upgraded { from: 2 });
        assert_eq!(read_format(t.path())?, Some(3));
        assert_eq!(
            std::fs::read(&store).map_err(io(&store))?,
            b"not a store: a step that opened it would fail"
        );
        Ok(())
    }

    #[test]
    fn a_newer_format_is_refused_and_left_alone() -> Result<(), DataDirError> {
        let t = tmp();
        write_format(t.path(), CURRENT_FORMAT + 1)?;
        let err = prepare(t.path()).expect_err("must refuse");
        assert!(matches!(err, DataDirError::TooNew { found, .. } if found == CURRENT_FORMAT + 1));
        assert!(err.to_string().contains("newer than this dpin reads"));
        assert_eq!(read_format(t.path())?, Some(CURRENT_FORMAT + 1));
        Ok(())
    }

    #[test]
    fn an_older_unknown_format_is_refused() -> Result<(), DataDirError> {
        let t = tmp();
        write_format(t.path(), 0)?;
        assert!(matches!(
            prepare(t.path()),
            Err(DataDirError::TooOld { found: 0, .. })
        ));
        Ok(())
    }

    #[test]
    fn garbage_in_the_format_file_is_a_clear_error() {
        let t = tmp();
        std::fs::write(t.path().join(FORMAT_FILE), b"two\n").expect("write");
        assert!(matches!(
            prepare(t.path()),
            Err(DataDirError::Unreadable { .. })
        ));
        std::fs::write(t.path().join(FORMAT_FILE), vec![b'1'; 100]).expect("write");
        assert!(matches!(
            read_format(t.path()),
            Err(DataDirError::Unreadable { .. })
        ));
    }
}
