//! Thin typed client for the node's HTTP API (`node/src/api.rs`), with a timeout on every call.
//!
//! The harness talks to nodes that may be SIGSTOPped (their sockets accept but never answer)
//! or SIGKILLed, so every request carries its own short timeout and every answer is mapped to
//! an [`OpOutcome`] instead of an error: "no answer" is data for the checker, not a bug in the
//! harness.
//!
//! A resolve answer's `cut_off` (the node hears too few of its peers, `dpin_protocol::reach`)
//! is kept in [`ReadResult::cut_off`]: the readers fail over on it.
//!
//! Bodies are the node's API contract (`dpin_node::contract`): the same serde types the
//! server writes and the CLI reads.

use std::net::SocketAddr;
use std::time::Duration;

use dpin_node::contract::{
    EndpointJson, ErrorBody, GossipStatus, PublishAnswer, PublishOutcome, PublishRefusal,
    PublishRequest, ResolveAnswer, StatusAnswer,
};
use dpin_protocol::SignedRecord;
use serde::Deserialize;
use serde_json::Value;

use crate::history::OpOutcome;

/// HTTP client shared by all tasks (connection pooling), with short connect timeouts.
#[derive(Clone, Debug)]
pub struct Api {
    http: reqwest::Client,
}

/// What a read returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadResult {
    /// Found / NotFound / Timeout / Error.
    pub outcome: OpOutcome,
    /// Seq of the record seen.
    pub seq: Option<u64>,
    /// Endpoints in the answer.
    pub endpoints: Option<usize>,
    /// The endpoints seen, as [`crate::history::content_of`] text.
    pub content: Option<String>,
    /// Error text.
    pub detail: Option<String>,
    /// Whether the answer said the node is cut off from the network (`None`: it did not say).
    pub cut_off: Option<bool>,
}

impl ReadResult {
    /// A read without an answer (or with one that could not be used).
    pub fn failure(outcome: OpOutcome, detail: String) -> Self {
        Self {
            outcome,
            seq: None,
            endpoints: None,
            content: None,
            detail: Some(detail),
            cut_off: None,
        }
    }

    /// An answer (with or without a record) that says its node is cut off: a reader should
    /// ask another node, and keep this answer only if none answers better.
    pub fn says_cut_off(&self) -> bool {
        self.outcome.is_answer() && self.cut_off == Some(true)
    }
}

/// The content text of a resolve answer's endpoints (`host:port` items).
fn endpoints_content(eps: &[EndpointJson]) -> String {
    crate::history::content_of(eps.iter().map(|e| (e.host.as_str(), e.port)))
}

/// What a publish returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteResult {
    /// Applied / Duplicate / ConflictWon / Stale / Conflict / Rejected / Timeout / Error.
    pub outcome: OpOutcome,
    /// Error kind or text.
    pub detail: Option<String>,
}

/// The parts of `/v1/status` the harness uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// Store digest (hex).
    pub digest: String,
    /// Peers with a live connection.
    pub peers_alive: usize,
    /// Records held.
    pub records: u64,
}

fn classify(e: &reqwest::Error) -> OpOutcome {
    if e.is_timeout() {
        OpOutcome::Timeout
    } else {
        OpOutcome::Error
    }
}

/// The sample lines of a `/metrics` text (`name{labels} value`; comments and unparsable lines
/// skipped) as name with labels → value: an unlabelled sample's key is its bare name.
pub fn parse_metrics(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

impl Api {
    /// A client; fails only if the TLS-less HTTP stack cannot be initialised.
    pub fn new() -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(300))
            .pool_idle_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(8)
            .no_proxy()
            .build()?;
        Ok(Self { http })
    }

    /// `GET /v1/resolve/{name}`.
    pub async fn resolve(&self, addr: SocketAddr, name: &str, timeout: Duration) -> ReadResult {
        self.read(format!("http://{addr}/v1/resolve/{name}"), timeout)
            .await
    }

    /// `GET /v1/resolve/{name}?wait_seq=SEQ&wait_ms=WAIT`, a blocking read: answered at once
    /// when the node holds `seq` or later, else when the wait runs out (with what it holds
    /// then).
    pub async fn resolve_wait(
        &self,
        addr: SocketAddr,
        name: &str,
        seq: u64,
        wait: Duration,
    ) -> ReadResult {
        let url = format!(
            "http://{addr}/v1/resolve/{name}?wait_seq={seq}&wait_ms={}",
            wait.as_millis()
        );
        self.read(url, wait + Duration::from_secs(2)).await
    }

    async fn read(&self, url: String, timeout: Duration) -> ReadResult {
        let resp = match self.http.get(&url).timeout(timeout).send().await {
            Ok(r) => r,
            Err(e) => return ReadResult::failure(classify(&e), e.to_string()),
        };
        let status = resp.status();
        let body: Value = match resp.json().await {
            Ok(v) => v,
            Err(e) => return ReadResult::failure(classify(&e), e.to_string()),
        };
        match status.as_u16() {
            200 => match ResolveAnswer::deserialize(&body) {
                Ok(r) => ReadResult {
                    outcome: OpOutcome::Found,
                    seq: Some(r.seq),
                    endpoints: Some(r.endpoints.len()),
                    content: Some(endpoints_content(&r.endpoints)),
                    detail: None,
                    cut_off: r.cut_off,
                },
                Err(e) => ReadResult::failure(
                    OpOutcome::Error,
                    format!("HTTP 200, unreadable answer ({e}): {body}"),
                ),
            },
            404 => {
                let e = ErrorBody::deserialize(&body).unwrap_or_default();
                ReadResult {
                    outcome: OpOutcome::NotFound,
                    seq: None,
                    endpoints: Some(0),
                    content: None,
                    detail: (!e.error.is_empty()).then_some(e.error),
                    // A 404 says nothing about reach (the error body has no `cut_off`).
                    cut_off: None,
                }
            }
            s => ReadResult::failure(OpOutcome::Error, format!("HTTP {s}: {body}")),
        }
    }

    /// `POST /v1/publish` of a signed record.
    pub async fn publish(
        &self,
        addr: SocketAddr,
        record: &SignedRecord,
        timeout: Duration,
    ) -> WriteResult {
        let url = format!("http://{addr}/v1/publish");
        let req = PublishRequest::new(record);
        let resp = match self
            .http
            .post(&url)
            .json(&req)
            .timeout(timeout)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                return WriteResult {
                    outcome: classify(&e),
                    detail: Some(e.to_string()),
                }
            }
        };
        let status = resp.status().as_u16();
        let body: Value = match resp.json().await {
            Ok(v) => v,
            Err(e) => {
                return WriteResult {
                    outcome: classify(&e),
                    detail: Some(format!("HTTP {status}: {e}")),
                }
            }
        };
        if status == 200 {
            let taken = PublishAnswer::deserialize(&body).ok();
            let outcome = match taken.as_ref().map(|a| a.outcome) {
                Some(PublishOutcome::Applied) => OpOutcome::Applied,
                Some(PublishOutcome::Duplicate) => OpOutcome::Duplicate,
                Some(PublishOutcome::ConflictWon) => OpOutcome::ConflictWon,
                // `restored`, a word from a newer node, or an unreadable answer: not counted
                // as an acknowledgement (as before the contract existed).
                Some(PublishOutcome::Restored | PublishOutcome::Other) | None => OpOutcome::Error,
            };
            let detail = match (outcome, taken) {
                // What the node says about spreading it: sent / no_peers / duplicate / none.
                (OpOutcome::Error, _) | (_, None) => format!("HTTP {status}: "),
                (_, Some(a)) => format!("gossip {}", gossip_word(a.gossip, &body)),
            };
            return WriteResult {
                outcome,
                detail: Some(detail),
            };
        }
        let error = ErrorBody::deserialize(&body).unwrap_or_default();
        let outcome = match (status, error.refusal()) {
            (409, Some(PublishRefusal::Stale)) => OpOutcome::Stale,
            (409, _) => OpOutcome::Conflict,
            (400..=499, _) => OpOutcome::Rejected,
            _ => OpOutcome::Error,
        };
        WriteResult {
            outcome,
            detail: Some(format!("HTTP {status}: {}", error.error)),
        }
    }

    /// `GET /metrics`: every sample line (`name{labels} value`, comments skipped) as name
    /// with labels → value; `None` if the node did not answer.
    pub async fn metrics(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Option<std::collections::BTreeMap<String, f64>> {
        let url = format!("http://{addr}/metrics");
        let resp = self.http.get(&url).timeout(timeout).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        Some(parse_metrics(&resp.text().await.ok()?))
    }

    /// `GET /v1/seq/{name}?wait_seq=SEQ&wait_ms=WAIT`, a blocking read: the seq the node
    /// holds when it answers (at once when it holds `seq` or later, else when the wait runs
    /// out) and, if the name changed during the wait, when it did on the host's monotonic
    /// clock in µs (`changed_at_us`); `None` if it did not answer.
    pub async fn wait_seq(
        &self,
        addr: SocketAddr,
        name: &str,
        seq: u64,
        wait: Duration,
    ) -> Option<(u64, Option<u64>)> {
        let url = format!(
            "http://{addr}/v1/seq/{name}?wait_seq={seq}&wait_ms={}",
            wait.as_millis()
        );
        let resp = self
            .http
            .get(&url)
            .timeout(wait + Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let body: Value = resp.json().await.ok()?;
        let held = body.get("seq").and_then(Value::as_u64)?;
        Some((held, body.get("changed_at_us").and_then(Value::as_u64)))
    }

    /// The peer ids `GET /v1/status` lists as connected now; `None` if it did not answer.
    pub async fn connected_peers(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Option<Vec<String>> {
        let url = format!("http://{addr}/v1/status");
        let resp = self.http.get(&url).timeout(timeout).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let body: StatusAnswer = resp.json().await.ok()?;
        Some(
            body.peers
                .into_iter()
                .filter(|p| p.connected)
                .map(|p| p.peer_id)
                .collect(),
        )
    }

    /// `GET /v1/status`.
    pub async fn status(&self, addr: SocketAddr, timeout: Duration) -> Option<Status> {
        let url = format!("http://{addr}/v1/status");
        let resp = self.http.get(&url).timeout(timeout).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let body: StatusAnswer = resp.json().await.ok()?;
        if body.digest.is_empty() {
            return None;
        }
        Some(Status {
            peers_alive: body.peers.iter().filter(|p| p.alive).count(),
            digest: body.digest,
            records: body.records,
        })
    }
}

/// The gossip word of a taken publish, as the node sent it (a word this build does not know
/// is shown as sent, not as `other`).
fn gossip_word(g: GossipStatus, body: &Value) -> String {
    match g {
        GossipStatus::Other => body
            .get("gossip")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        known => known.as_str().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_text_parses_labelled_and_bare_samples_and_skips_comments() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\na_total 3\n\
                    b{reason=\"queue full\"} 2.5\nbroken line\n# EOF\n";
        let m = parse_metrics(text);
        assert_eq!(m.get("a_total"), Some(&3.0));
        assert_eq!(m.get("b{reason=\"queue full\"}"), Some(&2.5));
        assert_eq!(m.len(), 2);
    }
}
