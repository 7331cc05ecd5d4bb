//! The node's libp2p identity, kept in the data dir so a restarted node keeps its peer id,
//! and the one helper that writes secret files with mode 0600.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use libp2p::identity::Keypair;

/// Identity file problems.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing the file failed.
    #[error("identity file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file exists but does not hold a key.
    #[error("identity file {0} is damaged; move it away to create a new identity (the peer id will change)")]
    Damaged(String),
}

/// Writes `bytes` to `path` with mode 0600, replacing it atomically.
pub fn write_secret_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Largest identity file read: an ed25519 keypair's protobuf encoding is 68 bytes, so anything
/// much larger is not an identity (and is not read into memory whole).
pub const MAX_IDENTITY_FILE_BYTES: u64 = 4096;

/// Decodes the bytes of an identity file (libp2p's protobuf keypair encoding); `path` names
/// the file in the error. The one decoder of this file format (fuzzed: `fuzz/`, target
/// `node_identity`).
pub fn decode_identity(bytes: &[u8], path: &Path) -> Result<Keypair, IdentityError> {
    if bytes.len() as u64 > MAX_IDENTITY_FILE_BYTES {
        return Err(IdentityError::Damaged(path.display().to_string()));
    }
    Keypair::from_protobuf_encoding(bytes)
        .map_err(|_| IdentityError::Damaged(path.display().to_string()))
}

fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_IDENTITY_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Loads the identity at `path`, creating a new ed25519 identity if the file is missing.
pub fn load_or_create(path: &Path) -> Result<Keypair, IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.display().to_string(),
        source,
    };
    match read_capped(path) {
        Ok(bytes) => decode_identity(&bytes, path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let kp = Keypair::generate_ed25519();
            let bytes = kp
                .to_protobuf_encoding()
                .map_err(|_| IdentityError::Damaged(path.display().to_string()))?;
            write_secret_file(path, &bytes).map_err(io)?;
            Ok(kp)
        }
        Err(e) => Err(io(e)),
    }
}
