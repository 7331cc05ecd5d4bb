//! HTTP client used by the CLI: tries each `--api` address in order and moves on when a peer is
//! down, hung or failing, so one dead peer never fails a command while another lives.

use std::time::Duration;

use serde_json::Value;

/// What one peer said.
#[derive(Debug)]
pub struct Answer {
    /// The `--api` address that answered.
    pub addr: String,
    /// HTTP status.
    pub status: u16,
    /// JSON body (or `{"error":"bad_body"}` if the body was not JSON).
    pub body: Value,
}

/// Client over several peers.
pub struct Client {
    addrs: Vec<String>,
    http: reqwest::Client,
}

/// Why no peer gave a usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No `--api` address given.
    #[error("no --api address given")]
    NoAddress,
    /// Every peer failed at the transport level or with a server error.
    #[error(
        "no peer answered ({0}); check that at least one --api address is a running dpin node"
    )]
    AllFailed(String),
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Build(String),
}

impl Client {
    /// A client over `addrs` (`HOST:PORT` or `http://HOST:PORT`), with `timeout` per peer.
    pub fn new(addrs: Vec<String>, timeout: Duration) -> Result<Self, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::NoAddress);
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| ClientError::Build(e.to_string()))?;
        Ok(Self { addrs, http })
    }

    /// The addresses, in the order they are tried.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    fn url(addr: &str, path: &str) -> String {
        if addr.starts_with("http://") || addr.starts_with("https://") {
            format!("{}{}", addr.trim_end_matches('/'), path)
        } else {
            format!("http://{addr}{path}")
        }
    }

    /// Sends to each peer in order until `accept` likes an answer. Transport errors and 5xx
    /// always move on. Returns the accepted answer, or the last definitive one if none was
    /// accepted, or an error listing why each peer failed.
    pub async fn first(
        &self,
        path: &str,
        body: Option<&Value>,
        accept: impl Fn(&Answer) -> bool,
    ) -> Result<Answer, ClientError> {
        let mut failures = Vec::new();
        let mut last_definitive = None;
        for addr in &self.addrs {
            let url = Self::url(addr, path);
            let req = match body {
                Some(b) => self.http.post(&url).json(b),
                None => self.http.get(&url),
            };
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    let why = if e.is_timeout() {
                        "timed out".to_owned()
                    } else {
                        e.to_string()
                    };
                    failures.push(format!("{addr}: {why}"));
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let body = match resp.json::<Value>().await {
                Ok(v) => v,
                Err(e) => {
                    failures.push(format!("{addr}: unreadable answer: {e}"));
                    continue;
                }
            };
            let answer = Answer {
                addr: addr.clone(),
                status,
                body,
            };
            if status >= 500 {
                failures.push(format!("{addr}: HTTP {status}"));
                continue;
            }
            if accept(&answer) {
                return Ok(answer);
            }
            last_definitive = Some(answer);
        }
        last_definitive.ok_or_else(|| ClientError::AllFailed(failures.join("; ")))
    }
}
