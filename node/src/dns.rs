//! DNS front-end (being written; replaced by the real hickory-server implementation).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use dpin_protocol::ZoneId;

use crate::node::Node;

/// DNS configuration.
pub struct DnsConfig {
    /// UDP and TCP address to serve on (port 0 picks one port for both).
    pub addr: SocketAddr,
    /// Alias → zone.
    pub aliases: BTreeMap<String, ZoneId>,
}

/// DNS errors.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// Not available yet.
    #[error("DNS front-end not available in this build")]
    Unavailable,
}

/// Starts serving; returns the bound address.
pub async fn start(_node: Node, _config: DnsConfig) -> Result<SocketAddr, DnsError> {
    Err(DnsError::Unavailable)
}

/// Loads aliases from an optional file and `NAME=ZONE` flags.
pub fn load_aliases(
    _file: Option<&Path>,
    _flags: &[String],
) -> Result<BTreeMap<String, ZoneId>, DnsError> {
    Ok(BTreeMap::new())
}
