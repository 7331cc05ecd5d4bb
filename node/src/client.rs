//! HTTP client used by the CLI: tries each `--api` address in order and moves on when a peer is
//! down, hung or failing, so one dead peer never fails a command while another lives.
//!
//! Reads also move on from a peer whose answer says it is cut off from the network (`cut_off`,
//! [`dpin_protocol::reach`]): its answer may be stale, and another peer may know better
//! ([`Client::first_connected`]). When no other peer answers without saying so, the flagged
//! answer is still used: a partition must not turn into a failed lookup (never fail closed).
//!
//! Writes (POSTs: publish, blob upload) carry `Authorization: Bearer TOKEN` when the
//! [`crate::api::API_TOKEN_ENV`] environment variable is set, for nodes whose API asks for a
//! token ([`crate::api`], "Who may call what").
//!
//! Bodies are the API contract's types ([`crate::contract`]): a request is a
//! [`PublishRequest`], and an answer is read with [`Answer::decode`] (or [`Answer::error`]).
//! The raw JSON stays in [`Answer::body`] too, so `--json` output passes on fields a newer
//! node sends that this build does not know.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::contract::{ErrorBody, PublishRequest, ReadFlags};

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

impl Answer {
    /// The body as the contract's answer type `T` (fields `T` does not know are skipped).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, String> {
        T::deserialize(&self.body).map_err(|e| format!("{}: unreadable answer: {e}", self.addr))
    }

    /// The body as an error answer; fields it lacks are empty.
    pub fn error(&self) -> ErrorBody {
        self.decode().unwrap_or_default()
    }
}

/// Client over several peers.
pub struct Client {
    addrs: Vec<String>,
    http: reqwest::Client,
    /// Sent with every write when set ([`crate::api::API_TOKEN_ENV`]).
    token: Option<String>,
}

/// What a read across the peers settled on ([`Client::first_connected`]).
#[derive(Debug)]
pub struct Settled {
    /// The answer used.
    pub answer: Answer,
    /// Peers that answered 200 but said they were cut off, passed over for a later one, in
    /// the order asked (the answer's own peer is not among them).
    pub passed_over: Vec<String>,
    /// The answer used says its peer is cut off: no peer answered 200 without saying so.
    pub cut_off: bool,
}

/// Whether a 200 answer says its peer is cut off from the network.
pub fn says_cut_off(a: &Answer) -> bool {
    a.status == 200
        && a.decode::<ReadFlags>()
            .is_ok_and(|f| f.cut_off == Some(true))
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
        Ok(Self {
            addrs,
            http,
            token: crate::api::token_from_env(),
        })
    }

    /// Sets (or clears) the API token sent with writes.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    fn authorize(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
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

    /// Sends one request to one peer. Transport failures, unreadable bodies and 5xx answers
    /// are errors (the text says why); 2xx-4xx answers are returned.
    pub async fn ask(
        &self,
        addr: &str,
        path: &str,
        body: Option<&PublishRequest>,
    ) -> Result<Answer, String> {
        let url = Self::url(addr, path);
        let req = match body {
            Some(b) => self.authorize(self.http.post(&url).json(b)),
            None => self.http.get(&url),
        };
        let resp = req.send().await.map_err(|e| {
            let why = if e.is_timeout() {
                "timed out".to_owned()
            } else {
                e.to_string()
            };
            format!("{addr}: {why}")
        })?;
        let status = resp.status().as_u16();
        let body = resp
            .json::<Value>()
            .await
            .map_err(|e| format!("{addr}: unreadable answer: {e}"))?;
        if status >= 500 {
            return Err(format!("{addr}: HTTP {status}"));
        }
        Ok(Answer {
            addr: addr.to_owned(),
            status,
            body,
        })
    }

    /// Sends the same GET to every peer at once; answers in `--api` order.
    pub async fn ask_all(&self, path: &str) -> Vec<Result<Answer, String>> {
        futures::future::join_all(self.addrs.iter().map(|a| self.ask(a, path, None))).await
    }

    /// Sends to each peer in order until `accept` likes an answer. Transport errors and 5xx
    /// always move on. Returns the accepted answer, or the last definitive one if none was
    /// accepted, or an error listing why each peer failed.
    pub async fn first(
        &self,
        path: &str,
        body: Option<&PublishRequest>,
        accept: impl Fn(&Answer) -> bool,
    ) -> Result<Answer, ClientError> {
        let mut failures = Vec::new();
        let mut last_definitive = None;
        for addr in &self.addrs {
            match self.ask(addr, path, body).await {
                Ok(answer) if accept(&answer) => return Ok(answer),
                Ok(answer) => last_definitive = Some(answer),
                Err(why) => failures.push(why),
            }
        }
        last_definitive.ok_or_else(|| ClientError::AllFailed(failures.join("; ")))
    }

    /// A GET answered by the first peer that answers 200 without saying it is cut off. Peers
    /// that answer 200 but say they are cut off are passed over; if no later peer answers
    /// 200 without the flag, the first flagged answer is used (a possibly stale answer beats
    /// none). Otherwise like [`Client::first`]: the last definitive (non-200) answer, or an
    /// error listing why each peer failed. Asks each `--api` peer at most once.
    pub async fn first_connected(&self, path: &str) -> Result<Settled, ClientError> {
        let mut failures = Vec::new();
        let mut last_definitive = None;
        let mut flagged: Option<Answer> = None;
        let mut passed_over = Vec::new();
        for addr in &self.addrs {
            match self.ask(addr, path, None).await {
                Ok(answer) if says_cut_off(&answer) => {
                    passed_over.push(answer.addr.clone());
                    flagged.get_or_insert(answer);
                }
                Ok(answer) if answer.status == 200 => {
                    return Ok(Settled {
                        answer,
                        passed_over,
                        cut_off: false,
                    })
                }
                Ok(answer) => last_definitive = Some(answer),
                Err(why) => failures.push(why),
            }
        }
        if let Some(answer) = flagged {
            passed_over.retain(|a| *a != answer.addr);
            return Ok(Settled {
                answer,
                passed_over,
                cut_off: true,
            });
        }
        last_definitive
            .map(|answer| Settled {
                answer,
                passed_over: Vec::new(),
                cut_off: false,
            })
            .ok_or_else(|| ClientError::AllFailed(failures.join("; ")))
    }
}

impl Client {
    /// Streams `file` (of `len` bytes) as the body of a POST to one peer.
    pub async fn upload(
        &self,
        addr: &str,
        path: &str,
        file: tokio::fs::File,
        len: u64,
    ) -> Result<Answer, reqwest::Error> {
        let resp = self
            .authorize(self.http.post(Self::url(addr, path)))
            .header(reqwest::header::CONTENT_LENGTH, len)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(read_in_chunks(file)))
            .send()
            .await?;
        let status = resp.status().as_u16();
        let body = resp
            .json::<Value>()
            .await
            .unwrap_or_else(|_| serde_json::json!({"error": "bad_body"}));
        Ok(Answer {
            addr: addr.to_owned(),
            status,
            body,
        })
    }

    /// Downloads a blob from one peer into `part`, checking every chunk against `index` as it
    /// arrives; fails on the first mismatch, short read or extra byte.
    pub async fn download(
        &self,
        addr: &str,
        path: &str,
        part: &std::path::Path,
        index: &[u8],
        chunk_size: usize,
        size: u64,
    ) -> Result<(), String> {
        use tokio::io::AsyncWriteExt;
        let mut resp = self
            .http
            .get(Self::url(addr, path))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status().as_u16()));
        }
        let mut out = tokio::fs::File::create(part)
            .await
            .map_err(|e| e.to_string())?;
        let mut buf: Vec<u8> = Vec::with_capacity(chunk_size);
        let mut i = 0u32;
        let mut written = 0u64;
        let check = |data: &[u8], i: u32| -> Result<(), String> {
            let want = dpin_protocol::blob::index_entry(index, i)
                .ok_or_else(|| format!("more data than the index lists (chunk {i})"))?;
            if dpin_protocol::blob::chunk_hash(data) != want {
                return Err(format!("chunk {i} does not match its hash"));
            }
            Ok(())
        };
        while let Some(bytes) = resp.chunk().await.map_err(|e| e.to_string())? {
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let take = (chunk_size - buf.len()).min(rest.len());
                buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if buf.len() == chunk_size {
                    check(&buf, i)?;
                    out.write_all(&buf).await.map_err(|e| e.to_string())?;
                    written += buf.len() as u64;
                    buf.clear();
                    i += 1;
                }
            }
        }
        if !buf.is_empty() {
            check(&buf, i)?;
            out.write_all(&buf).await.map_err(|e| e.to_string())?;
            written += buf.len() as u64;
        }
        if written != size {
            return Err(format!("got {written} bytes, expected {size}"));
        }
        out.sync_all().await.map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// How much of an upload is read from its file at a time.
const UPLOAD_READ_BYTES: usize = 1 << 20;

/// The file as a stream of reads of up to [`UPLOAD_READ_BYTES`]. `reqwest::Body::from(File)`
/// reads 8 KiB at a time, each read a hop to tokio's blocking pool and back: 8,192 hops for
/// 64 MiB, which made the CLI about a quarter of all the CPU a local `dpin put` used
/// (`perf record -a` of `deploy/blob-bench.sh`'s put).
fn read_in_chunks(
    file: tokio::fs::File,
) -> impl futures::Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static {
    futures::stream::try_unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::with_capacity(UPLOAD_READ_BYTES);
        // `read_buf` fills spare capacity without zeroing it first; loop until the buffer is
        // full or the file ends, so every item but the last is a whole read.
        while buf.len() < UPLOAD_READ_BYTES {
            if file.read_buf(&mut buf).await? == 0 {
                break;
            }
        }
        Ok(if buf.is_empty() {
            None
        } else {
            Some((buf, file))
        })
    })
}

#[cfg(test)]
mod upload_tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn an_upload_is_read_in_whole_mebibytes_and_arrives_unchanged() {
        let dir = std::env::temp_dir().join(format!("dpin-upload-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("file");
        let len = 2 * UPLOAD_READ_BYTES + UPLOAD_READ_BYTES / 2 + 3;
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &bytes).expect("write");
        let file = tokio::fs::File::open(&path).await.expect("open");
        let items: Vec<Vec<u8>> = read_in_chunks(file)
            .map(|r| r.expect("read"))
            .collect()
            .await;
        let _ = std::fs::remove_dir_all(&dir);
        let sizes: Vec<usize> = items.iter().map(Vec::len).collect();
        assert_eq!(
            sizes,
            [
                UPLOAD_READ_BYTES,
                UPLOAD_READ_BYTES,
                UPLOAD_READ_BYTES / 2 + 3
            ]
        );
        assert_eq!(items.concat(), bytes);
    }
}
