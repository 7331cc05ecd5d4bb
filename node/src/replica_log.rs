//! The replica log: where a gossiped record's new entry is written the moment it is applied,
//! so that a killed process keeps it, without a redb commit per record.
//!
//! Why. A record that arrives by gossip is served as soon as it is applied, so a node killed
//! right after must not come back serving the older seq (the chaos checker holds every node to
//! the highest seq it served across a SIGKILL). Until this log, that meant a redb commit with
//! its `fdatasync` for almost every gossiped record: one commit rewrites the B-tree path of
//! every name it touches, and at 1,000 records a second on an otherwise idle node the commits
//! were half of the node's CPU per record (0.28–0.35 ms against 0.135–0.16 ms without them,
//! `dpin-bench gossip-load` at 1,000/s against a 1M-name node) and five times its context
//! switches. Appending the entry here is one `write` into the page cache, which a SIGKILL
//! cannot take back; [`crate::store::Persister::fold`] then commits the logged names to redb
//! in one transaction, once [`FOLD_AT_ENTRIES`] are logged or [`FOLD_INTERVAL`] (the node's
//! `--replica-fold-ms`) after the first, and deletes the sealed files. A power loss can lose
//! what is not folded yet, at most that interval of replicas (the log is not fsynced): they
//! are never acknowledged to anyone, and
//! anti-entropy fetches them again. Writers' own records and pushes a node acknowledges still
//! wait for a redb commit, as before.
//!
//! Format: files `<store file>.replicas-<n>` beside the store, appended to in order and
//! numbered upward; a fold seals the current file (later appends go to the next number) and
//! deletes it once the commit covering it is done. Each frame is
//! `len: u32 LE | name_len: u16 LE | name | entry | check: [u8; 8]`, where `len` counts the
//! name length, name and entry, the entry is the store's own encoding (`crate::store`, the
//! same bytes a redb commit writes) and `check` is the start of the blake3 hash of what `len`
//! counts. Replay ([`read_frames`], [`decode_frames`]) stops at the first frame that is
//! short, too long or fails its check: a torn tail from a crash mid-write.
//!
//! Replay is idempotent and order-free: [`crate::store::DurableStore::open`] takes a logged
//! entry only if it outranks what the store holds (the merge rule's rank), so an old frame can
//! never replace a newer record a commit put on disk after it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long after a record is logged the fold that commits it to redb runs, unless
/// [`FOLD_AT_ENTRIES`] come first: the longest a record lives only in the log, so the window a
/// power loss can take back. The default of the node's `--replica-fold-ms`.
pub const FOLD_INTERVAL: Duration = Duration::from_secs(1);

/// A file holding this many entries asks for a fold at once, so a commit rewrites the pages of
/// at most about this many names. Why so few: the commit's `fdatasync` writes those pages back
/// in one system call that this kernel (PREEMPT_NONE) does not preempt, and the DNS answer
/// threads of a node on one core wait behind it. At 90,000 queries a second under 1,000
/// gossiped records a second (node on one core, `dpin-bench gossip-load`, 2026-12-05) the
/// server-side p99 was 2.9–4.7 ms with a fold a second (1.4–2.4 ms with a commit per record
/// in alternating rounds), 1.5–1.7 ms with folds of 8 (1.1–1.5) and 1.1–1.9 ms with folds of 4
/// (1.0–4.5). Folds of 4 still cut a gossiped record's CPU by 40 % (0.30 → 0.18 ms). A node
/// receiving gossip slowly folds after [`FOLD_INTERVAL`].
pub const FOLD_AT_ENTRIES: u64 = 4;

/// A log file past this size asks for a fold at once (entries can be up to the record size
/// limit, so a few large ones count too).
pub const FOLD_AT_BYTES: u64 = 1 << 20;

/// Longest frame read back (name and entry): far above any entry the store accepts (the
/// record size limit is a few KiB), so only a damaged length reaches it.
pub const MAX_FRAME: usize = 1 << 20;

/// Most bytes replay reads from one file; a file past it is damaged or not ours.
pub const MAX_FILE_BYTES: u64 = 256 << 20;

const CHECK_LEN: usize = 8;

/// Appends frames to the current file; seals it on [`ReplicaLog::seal`].
#[derive(Debug)]
pub struct ReplicaLog {
    /// The store file the log files sit beside and are named after.
    store_path: PathBuf,
    /// The file being appended to, opened at the first append after a seal.
    current: Option<File>,
    /// Its number.
    number: u64,
    /// Bytes appended to it.
    bytes: u64,
    /// Entries appended to it.
    entries: u64,
}

/// What one append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Bytes written.
    pub bytes: u64,
    /// The current file reached [`FOLD_AT_ENTRIES`] or [`FOLD_AT_BYTES`]: fold now rather than
    /// in [`FOLD_INTERVAL`].
    pub fold_now: bool,
}

impl ReplicaLog {
    /// A log beside `store_path` whose next file is number `next` (one past every file
    /// replay found).
    pub fn new(store_path: &Path, next: u64) -> Self {
        Self {
            store_path: store_path.to_owned(),
            current: None,
            number: next,
            bytes: 0,
            entries: 0,
        }
    }

    /// Appends one frame per `(name, entry)` with one `write`. Not fsynced: see the module.
    pub fn append(&mut self, entries: &[(String, Vec<u8>)]) -> std::io::Result<Appended> {
        let buf = encode_frames(entries)?;
        let file = match &mut self.current {
            Some(f) => f,
            None => self.current.insert(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(file_path(&self.store_path, self.number))?,
            ),
        };
        file.write_all(&buf)?;
        self.bytes += buf.len() as u64;
        self.entries += entries.len() as u64;
        Ok(Appended {
            bytes: buf.len() as u64,
            fold_now: self.bytes >= FOLD_AT_BYTES || self.entries >= FOLD_AT_ENTRIES,
        })
    }

    /// Seals the current file: later appends go to the next number. Returns the sealed
    /// file's path, or `None` if nothing was appended since the last seal.
    pub fn seal(&mut self) -> Option<PathBuf> {
        // Closed here: later appends open the next number.
        self.current.take()?;
        let sealed = file_path(&self.store_path, self.number);
        self.number += 1;
        self.bytes = 0;
        self.entries = 0;
        Some(sealed)
    }

    /// Whether anything was appended since the last seal.
    pub fn is_empty(&self) -> bool {
        self.current.is_none()
    }
}

/// The path of log file `number` beside `store_path`.
pub fn file_path(store_path: &Path, number: u64) -> PathBuf {
    let mut name = store_path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".replicas-{number}"));
    store_path.with_file_name(name)
}

/// The log files beside `store_path`, oldest first, with their numbers.
pub fn files(store_path: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let Some(dir) = store_path.parent() else {
        return Ok(Vec::new());
    };
    let Some(stem) = store_path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{stem}.replicas-");
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let mut found = Vec::new();
    for item in std::fs::read_dir(dir)? {
        let item = item?;
        let name = item.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((number, item.path()));
    }
    found.sort();
    Ok(found)
}

/// The frames of `entries`, in order (what [`ReplicaLog::append`] writes).
pub fn encode_frames(entries: &[(String, Vec<u8>)]) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    for (name, entry) in entries {
        encode_frame(name, entry, &mut buf)?;
    }
    Ok(buf)
}

/// One frame's bytes into `out`.
fn encode_frame(name: &str, entry: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    let name_len = u16::try_from(name.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "name too long"))?;
    let len = 2 + name.len() + entry.len();
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "entry too large for the replica log",
        ));
    }
    let start = out.len();
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&name_len.to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(entry);
    let check = blake3::hash(&out[start + 4..]);
    out.extend_from_slice(&check.as_bytes()[..CHECK_LEN]);
    Ok(())
}

/// The frames of one file that read back whole, in order, and whether the file had more
/// after them (a torn or damaged tail, or more than [`MAX_FILE_BYTES`]).
pub struct Frames {
    /// `(name, entry)` per whole frame.
    pub entries: Vec<(String, Vec<u8>)>,
    /// Bytes after the last whole frame were ignored.
    pub torn: bool,
}

/// Reads the whole frames of the file at `path` (see the module for the format), at most
/// [`MAX_FILE_BYTES`] of it.
pub fn read_frames(path: &Path) -> std::io::Result<Frames> {
    let mut bytes = Vec::new();
    File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    let over = bytes.len() as u64 > MAX_FILE_BYTES;
    bytes.truncate(usize::try_from(MAX_FILE_BYTES).unwrap_or(usize::MAX));
    let mut frames = decode_frames(&bytes);
    frames.torn |= over;
    Ok(frames)
}

/// The whole frames at the start of `bytes`, in order; `torn` if bytes follow the last one
/// (a frame cut short, damaged or over [`MAX_FRAME`]). Never panics, whatever the bytes.
pub fn decode_frames(bytes: &[u8]) -> Frames {
    let mut entries = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some((name, entry, used)) = decode_frame(rest) else {
            return Frames {
                entries,
                torn: true,
            };
        };
        entries.push((name, entry));
        rest = &rest[used..];
    }
    Frames {
        entries,
        torn: false,
    }
}

/// One frame from the start of `b`: name, entry and the bytes it took; `None` if it is not
/// whole and intact.
fn decode_frame(b: &[u8]) -> Option<(String, Vec<u8>, usize)> {
    let len = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    if !(2..=MAX_FRAME).contains(&len) {
        return None;
    }
    let body = b.get(4..4 + len)?;
    let check = b.get(4 + len..4 + len + CHECK_LEN)?;
    if blake3::hash(body).as_bytes()[..CHECK_LEN] != *check {
        return None;
    }
    let name_len = u16::from_le_bytes(body.get(..2)?.try_into().ok()?) as usize;
    let name = std::str::from_utf8(body.get(2..2 + name_len)?).ok()?;
    let entry = body.get(2 + name_len..)?;
    Some((name.to_owned(), entry.to_vec(), 4 + len + CHECK_LEN))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: usize) -> Vec<(String, Vec<u8>)> {
        (0..n)
            .map(|i| (format!("n{i}.zone"), vec![i as u8; 60 + i]))
            .collect()
    }

    #[test]
    fn appended_frames_read_back_in_order_across_appends() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = dir.path().join("store.redb");
        let mut log = ReplicaLog::new(&store, 3);
        let all = entries(5);
        log.append(&all[..2])?;
        log.append(&all[2..])?;
        let files = files(&store)?;
        assert_eq!(files, vec![(3, file_path(&store, 3))]);
        let read = read_frames(&files[0].1)?;
        assert_eq!(read.entries, all);
        assert!(!read.torn);
        Ok(())
    }

    #[test]
    fn a_torn_or_damaged_tail_is_ignored_and_reported() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = dir.path().join("store.redb");
        let mut log = ReplicaLog::new(&store, 0);
        let all = entries(3);
        log.append(&all)?;
        let path = file_path(&store, 0);
        let whole = std::fs::read(&path)?;
        // Cut inside the last frame: the first two read back, the tail is reported.
        std::fs::write(&path, &whole[..whole.len() - 5])?;
        let read = read_frames(&path)?;
        assert_eq!(read.entries, all[..2].to_vec());
        assert!(read.torn);
        // One flipped byte inside the second frame's entry: only the first survives.
        let mut damaged = whole.clone();
        let second = 4 + 2 + all[0].0.len() + all[0].1.len() + CHECK_LEN;
        damaged[second + 12] ^= 0x40;
        std::fs::write(&path, &damaged)?;
        let read = read_frames(&path)?;
        assert_eq!(read.entries, all[..1].to_vec());
        assert!(read.torn);
        // A length past the bound is not trusted either.
        let mut huge = whole;
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&path, &huge)?;
        let read = read_frames(&path)?;
        assert!(read.entries.is_empty());
        assert!(read.torn);
        Ok(())
    }

    #[test]
    fn sealing_moves_appends_to_the_next_file_and_files_list_oldest_first() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = dir.path().join("store.redb");
        let mut log = ReplicaLog::new(&store, 9);
        assert!(log.is_empty());
        assert_eq!(log.seal(), None, "nothing appended, nothing sealed");
        let all = entries(2);
        log.append(&all[..1])?;
        assert_eq!(log.seal(), Some(file_path(&store, 9)));
        log.append(&all[1..])?;
        assert!(!log.is_empty());
        // Not ours: other files beside the store are never listed.
        std::fs::write(dir.path().join("store.redb.replicas-x"), b"")?;
        std::fs::write(dir.path().join("other.replicas-1"), b"")?;
        let listed = files(&store)?;
        assert_eq!(
            listed,
            vec![(9, file_path(&store, 9)), (10, file_path(&store, 10))],
            "numbered upward; 10 after 9, not before it"
        );
        assert_eq!(read_frames(&listed[1].1)?.entries, all[1..].to_vec());
        Ok(())
    }

    #[test]
    fn a_file_asks_for_a_fold_at_the_entry_bound() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = dir.path().join("store.redb");
        let mut log = ReplicaLog::new(&store, 0);
        let one = entries(1);
        for _ in 1..FOLD_AT_ENTRIES {
            assert!(!log.append(&one)?.fold_now);
        }
        assert!(log.append(&one)?.fold_now);
        log.seal();
        assert!(!log.append(&one)?.fold_now, "a fresh file starts empty");
        Ok(())
    }

    #[test]
    fn a_file_asks_for_a_fold_once_it_passes_the_bound() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = dir.path().join("store.redb");
        let mut log = ReplicaLog::new(&store, 0);
        let big = vec![("n.zone".to_string(), vec![7u8; 300 << 10])];
        let mut appended = 0u64;
        let mut asked = false;
        while appended < FOLD_AT_BYTES + (300 << 10) {
            let a = log.append(&big)?;
            appended += a.bytes;
            if a.fold_now {
                asked = true;
                break;
            }
        }
        assert!(asked);
        assert!(appended >= FOLD_AT_BYTES);
        log.seal();
        assert!(!log.append(&big)?.fold_now, "a fresh file starts empty");
        Ok(())
    }
}
