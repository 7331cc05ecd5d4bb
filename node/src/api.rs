//! HTTP API (axum). JSON in, JSON out; errors are `{"error": kind, "message": text}` with the
//! status codes of SPEC §5. Every body is a type of [`crate::contract`] (the CLI's client and
//! the chaos harness read the same types), and a publish's answer comes from its one mapping
//! of merge outcomes, [`crate::contract::publish_verdict`]. Routes:
//!
//! | method | path | what |
//! |---|---|---|
//! | POST | `/v1/publish` | body `{"record": HEX, "if_seq": N?, "if_hash": HEX?}`: apply a signed record (only over the held seq / held winner named), then gossip it |
//! | GET | `/v1/resolve/{name}` | the live record for `label.zone` (also `label.zone.dpin`); `?wait_seq=N&wait_ms=T` first waits until the node holds seq N or later (a blocking read, [`crate::watch`]) |
//! | GET | `/v1/seq/{name}` | highest seq held for a name (0 if unknown) — writers pick the next seq from it; takes the same wait, and a wait the name's change ended says when (`changed_at_us`, host monotonic µs) |
//! | GET | `/v1/offers` | live offers, cheapest first; query filters `kind`, `region`, `min_free`, `min_cores`, `min_memory`, `min_gpus`, `max_price` |
//! | POST | `/v1/blobs?replicas=K` | raw body: store a file on K storage nodes → `{"hash","size","chunks","holders"}` |
//! | GET | `/v1/blobs/{hash}` | the file's bytes, every chunk verified, fetched from any live holder |
//! | GET | `/v1/blobs/{hash}/info` | manifest, chunk index (hex) and which nodes hold how many chunks |
//! | GET | `/v1/status` | peer id, listen addresses, peers with liveness, record count, store digest, each module's counters |
//! | GET | `/metrics` | one registry in OpenMetrics text (see [`crate::metrics`]): node, liveness, probes, HTTP, DNS, blobs, offers, histograms, libp2p |
//!
//! Bodies over [`MAX_BODY_BYTES`] get 413 before they are read in full. Every error, including
//! an unknown path (404), a wrong method (405) and a rejected query string or body, has the JSON
//! body (a response layer rewrites any error that is not JSON yet).
//!
//! # Who may call what
//!
//! * A publish carries a record signed by the zone's key: the signature is the authorisation,
//!   so anyone who can reach the API may publish (the node verifies, never signs).
//! * Reads (resolve, seq, offers, status, metrics, blob downloads) are public: the data is
//!   public and replicated to every peer anyway.
//! * A blob upload is signed by the *node's* key (the manifest), so it is an action of the node:
//!   without a token it is accepted only from loopback clients (403 otherwise). Run `dpin put`
//!   on the node's machine (or container); an API bound beyond loopback still serves everything
//!   else.
//! * Optional API token ([`API_TOKEN_ENV`] = `DPIN_API_TOKEN` in the node's environment): when
//!   set, every write (`POST /v1/publish`, `POST /v1/blobs`) must carry
//!   `Authorization: Bearer TOKEN` (401 otherwise), and with it blob uploads are accepted from
//!   any address. The CLI sends the same variable ([`crate::client`]). Reads stay public.
//!
//! # Serving limits (slow clients and floods)
//!
//! [`BoundedListener`] caps connections ([`MAX_HTTP_CONNECTIONS`] in total,
//! [`MAX_HTTP_CONNECTIONS_PER_IP`] per client address; at the total cap, the connection that
//! has waited longest, and over [`EVICT_AFTER`], for its request head is closed to make room,
//! else the new one is closed at accept), and every
//! connection must deliver a complete request head within [`REQUEST_HEAD_TIMEOUT`] of its start
//! or of its previous response — a deadline for the whole head, so a trickle of bytes cannot
//! hold a connection (slow loris), and idle keep-alive connections are closed too. A response
//! the client stops reading is abandoned after [`WRITE_STALL_TIMEOUT`]. Every handler but the
//! upload runs within [`HANDLER_TIMEOUT`] (503 `timeout`); an upload body must keep arriving
//! (no gap over [`UPLOAD_IDLE_TIMEOUT`], and on average [`UPLOAD_MIN_RATE`] bytes a second
//! after the first [`UPLOAD_GRACE`]: 408 `too_slow`), so a client trickling a body byte by byte
//! cannot hold an upload slot, and storing it runs within [`UPLOAD_STORE_TIMEOUT`]. At most
//! [`MAX_CONCURRENT_UPLOADS`] blob uploads run at once (503 beyond).
//!
//! Per client — an IPv4 address or an IPv6 /64 ([`ClientKey`]) — [`ClientLimiter`] bounds the
//! requests in handlers at once ([`MAX_IN_FLIGHT_PER_CLIENT`]; HTTP/2 would otherwise multiplex
//! any number over one connection) and the request rate (a token bucket,
//! [`DEFAULT_CLIENT_RATE`] a second with bursts of [`DEFAULT_CLIENT_BURST`]; a publish costs
//! [`PUBLISH_COST`]). Over either, the answer is 429 with `Retry-After` and error
//! `rate_limited` or `too_many_in_flight`, before any work is done, so a flooding client
//! costs the node little more than the refusal and honest clients keep their latency. Loopback
//! clients (the operator's own tools) and callers with the API token are exempt from the rate,
//! not from the concurrency bound; [`API_RATE_ENV`] and [`API_LIMIT_LOOPBACK_ENV`] change
//! that. The table of clients is bounded ([`MAX_TRACKED_CLIENTS`]; past it, new clients share
//! one bucket). Counters: `dpin_http_*`, every error response by status
//! (`dpin_http_errors_total{status=...}`) and every refusal by reason
//! (`dpin_http_refused_total{reason=...}`: `unauthorized`, `rate`, `concurrency`).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dpin_protocol::{Outcome, SignedRecord};
use serde::Deserialize;

use crate::contract::{
    publish_verdict, BlobInfoAnswer, ErrorBody, GossipStatus, HolderJson, OffersAnswer, PeerJson,
    PublishAnswer, PublishOutcome, PublishRefusal, PublishVerdict, ResolveAnswer, SeqAnswer,
    StatusAnswer,
};
use crate::liveness::PeerStatus;
use crate::node::{now_ms, Node};

pub use crate::contract::EndpointJson;
/// The publish request body ([`crate::contract::PublishRequest`]; this name is the fuzz
/// target's).
pub use crate::contract::PublishRequest as PublishBody;

/// Largest request body accepted: a hex-encoded 4 KiB record plus JSON framing.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// A JSON error with its HTTP status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    /// For refused publishes: the seq this node holds for the name, so a client can tell a
    /// lost race (held above what it read) from a lagging node (held below).
    held_seq: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            held_seq: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.kind.to_owned(),
            message: self.message,
            held_seq: self.held_seq,
        };
        (self.status, Json(body)).into_response()
    }
}

// Conversions from the node's own types into the contract's (kept here so that
// `crate::contract` depends on the protocol crate only).

impl EndpointJson {
    /// JSON form of a record endpoint.
    pub fn from_endpoint(e: &dpin_protocol::Endpoint, health: crate::health::HealthState) -> Self {
        Self {
            host: e.host.to_string(),
            port: e.port,
            transport: e.transport.as_str().to_owned(),
            weight: e.weight,
            healthy: health == crate::health::HealthState::Healthy,
            health: health.as_str().to_owned(),
        }
    }
}

impl From<Option<crate::net::PublishStatus>> for GossipStatus {
    fn from(s: Option<crate::net::PublishStatus>) -> Self {
        match s {
            Some(crate::net::PublishStatus::Sent) => Self::Sent,
            Some(crate::net::PublishStatus::NoPeers) => Self::NoPeers,
            Some(crate::net::PublishStatus::Duplicate) => Self::Duplicate,
            None => Self::None,
        }
    }
}

/// Normalises a user-supplied name: lowercase, no trailing dot, optional `.dpin` suffix.
pub fn normalize_name(raw: &str) -> Result<String, ApiError> {
    let n = raw.trim_end_matches('.').to_ascii_lowercase();
    let n = n.strip_suffix(".dpin").unwrap_or(&n).to_owned();
    let Some((label, zone)) = n.split_once('.') else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_name",
            format!("{raw:?} is not LABEL.ZONE"),
        ));
    };
    if label.is_empty() || zone.parse::<dpin_protocol::ZoneId>().is_err() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_name",
            format!("{raw:?} is not LABEL.ZONE with a 52-character zone id"),
        ));
    }
    Ok(n)
}

/// Env var holding the optional API token for writes (see "Who may call what").
pub const API_TOKEN_ENV: &str = "DPIN_API_TOKEN";

/// The API token from [`API_TOKEN_ENV`], if set and not blank.
pub fn token_from_env() -> Option<String> {
    std::env::var(API_TOKEN_ENV)
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// API settings.
#[derive(Clone, Debug, Default)]
pub struct ApiConfig {
    /// When set, writes need `Authorization: Bearer TOKEN`, and uploads may then come from
    /// any address.
    pub token: Option<String>,
    /// Per-client request rate and concurrency ([`ClientLimits`]).
    pub limits: ClientLimits,
}

impl ApiConfig {
    /// Settings from the environment ([`API_TOKEN_ENV`], [`API_RATE_ENV`],
    /// [`API_LIMIT_LOOPBACK_ENV`]).
    pub fn from_env() -> Self {
        Self {
            token: token_from_env(),
            limits: ClientLimits::from_env(),
        }
    }
}

/// What the guard layer keeps: the settings, the per-client limiter and its clock.
#[derive(Debug)]
struct GuardState {
    config: ApiConfig,
    limiter: ClientLimiter,
    epoch: std::time::Instant,
}

impl GuardState {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// The 429 answer for a refused request, counted by reason.
fn too_many(refusal: Refusal) -> Response {
    match refusal {
        Refusal::Rate { retry_after_s } => {
            HTTP_STATS.rate_limited.fetch_add(1, Ordering::Relaxed);
            let mut resp = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many requests from this client; retry in {retry_after_s} s"),
            )
            .into_response();
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(retry_after_s),
            );
            resp
        }
        Refusal::Concurrency => {
            HTTP_STATS
                .concurrency_limited
                .fetch_add(1, Ordering::Relaxed);
            let mut resp = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_in_flight",
                "this client has too many requests in progress; wait for an answer before \
                 sending more",
            )
            .into_response();
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(1u64),
            );
            resp
        }
    }
}

/// Marks a request whose `Authorization` carried the configured token.
#[derive(Clone, Copy, Debug)]
struct TokenOk;

/// Compares without an early exit on the first differing byte.
fn same_token(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Token check for writes, the per-client limits ([`ClientLimiter`]: 429 over them) and the
/// handler deadline for every route but the upload (whose body and store phases have their own
/// deadlines).
async fn guard(
    State(state): State<Arc<GuardState>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let config = &state.config;
    let is_write = req.method() == axum::http::Method::POST;
    if let Some(token) = &config.token {
        let given = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(g) if same_token(g.as_bytes(), token.as_bytes()) => {
                req.extensions_mut().insert(TokenOk);
            }
            _ if is_write => {
                HTTP_STATS.unauthorized.fetch_add(1, Ordering::Relaxed);
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    format!("this node asks for its API token on writes (set {API_TOKEN_ENV})"),
                )
                .into_response();
            }
            _ => {}
        }
    }
    // Per-client limits. Requests without a client address (a router driven in-process) have
    // no client to count against.
    let client = req
        .extensions()
        .get::<axum::extract::ConnectInfo<Peer>>()
        .map(|c| c.0 .0.ip());
    let _in_flight = match client {
        Some(ip) => {
            let exempt = req.extensions().get::<TokenOk>().is_some()
                || (!config.limits.limit_loopback && is_loopback(ip));
            let cost = if is_write && req.uri().path() == "/v1/publish" {
                PUBLISH_COST
            } else {
                1
            };
            let admitted = state.limiter.admit(ip, cost, exempt, state.now_ms());
            HTTP_STATS.clients_tracked.store(
                u64::try_from(state.limiter.tracked()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            match admitted {
                Ok(slot) => Some(slot),
                Err(refusal) => return too_many(refusal),
            }
        }
        None => None,
    };
    let is_upload = is_write && req.uri().path() == "/v1/blobs";
    if is_upload {
        return next.run(req).await;
    }
    match tokio::time::timeout(HANDLER_TIMEOUT, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            HTTP_STATS.handler_timeouts.fetch_add(1, Ordering::Relaxed);
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!("not answered within {} s", HANDLER_TIMEOUT.as_secs()),
            )
            .into_response()
        }
    }
}

/// Counts every error response by status (outermost layer: sees every response).
async fn count_errors(resp: Response) -> Response {
    let status = resp.status();
    if status.is_client_error() || status.is_server_error() {
        HTTP_STATS.count_status(status);
    }
    resp
}

/// The router, with state and default settings (no token).
pub fn router(node: Node) -> Router {
    router_with(node, ApiConfig::default())
}

/// The router, with state and `config`.
pub fn router_with(node: Node, config: ApiConfig) -> Router {
    let state = Arc::new(GuardState {
        limiter: ClientLimiter::new(config.limits),
        config,
        epoch: std::time::Instant::now(),
    });
    Router::new()
        .route("/v1/publish", post(publish))
        .route("/v1/resolve/{name}", get(resolve))
        .route("/v1/seq/{name}", get(seq))
        .route("/v1/status", get(status))
        .route("/v1/offers", get(offers))
        .route(
            "/v1/blobs",
            post(put_blob).layer(DefaultBodyLimit::max(crate::blobs::MAX_BLOB_BYTES as usize)),
        )
        .route("/v1/blobs/{hash}", get(get_blob))
        .route("/v1/blobs/{hash}/info", get(blob_info))
        .route("/metrics", get(metrics))
        .fallback(unknown_path)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(json_errors))
        .layer(axum::middleware::from_fn_with_state(state, guard))
        .layer(axum::middleware::map_response(count_errors))
        .with_state(node)
}

/// Serves the API on `listener` until the process ends, within the connection caps and the
/// request-head deadline ([`BoundedListener`]).
pub async fn serve(node: Node, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    serve_with(node, listener, ApiConfig::from_env()).await
}

/// Like [`serve`], with explicit settings (e.g. a token from a command-line flag).
pub async fn serve_with(
    node: Node,
    listener: tokio::net::TcpListener,
    config: ApiConfig,
) -> std::io::Result<()> {
    if config.token.is_some() {
        tracing::info!("API writes need the token from {API_TOKEN_ENV}");
    }
    axum::serve(
        BoundedListener::new(listener),
        router_with(node, config).into_make_service_with_connect_info::<Peer>(),
    )
    .await
}

/// Binds the API listener (separately, so bind errors are reported at start-up).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

async fn publish(
    State(node): State<Node>,
    body: Result<Json<PublishBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<PublishAnswer>, ApiError> {
    let Json(body) = body.map_err(|e| {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "too_large",
                format!("body over {MAX_BODY_BYTES} bytes"),
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_json", e.body_text())
        }
    })?;
    let bytes = hex::decode(body.record.trim())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_hex", e.to_string()))?;
    let record = SignedRecord::decode(&bytes).map_err(|e| match e {
        dpin_protocol::DecodeError::TooLarge { .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
        }
        _ => ApiError::new(StatusCode::BAD_REQUEST, "bad_record", e.to_string()),
    })?;
    let if_hash = match body.if_hash.as_deref() {
        None => None,
        Some(h) => Some(
            hex::decode(h.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    ApiError::new(StatusCode::BAD_REQUEST, "bad_if_hash", "if_hash must be 64 hex characters: the content hash of the record to replace, as /v1/seq shows it")
                })?,
        ),
    };
    let name = record.name();
    let seq = record.body.seq;
    let cas = dpin_protocol::store::Cas {
        seq: body.if_seq,
        hash: if_hash,
    };
    let result = node
        .publish_if(record, cas)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()))?;
    let gossip = GossipStatus::from(result.gossip);
    let refusal = match publish_verdict(&result.outcome) {
        PublishVerdict::Taken(outcome) => {
            // `previous_seq` only for `applied`: null for a new name (the pinned wire form).
            let previous_seq = match (outcome, &result.outcome) {
                (PublishOutcome::Applied, Outcome::Applied { previous_seq }) => Some(*previous_seq),
                _ => None,
            };
            return Ok(Json(PublishAnswer {
                name,
                seq,
                outcome,
                previous_seq,
                gossip,
            }));
        }
        // The record is valid; this node has no room for a new name (its admission quota).
        // Nothing held is ever evicted for it; another node may have room.
        PublishVerdict::NoRoom(reason) => {
            let why = match &result.outcome {
                Outcome::Invalid(dpin_protocol::error::ValidationError::Admission(a)) => {
                    a.to_string()
                }
                other => other.kind().to_owned(),
            };
            return Err(ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                reason,
                format!("{why}; no live name is evicted to make room"),
            ));
        }
        PublishVerdict::Refused(r) => r,
    };
    let (message, held) = match result.outcome {
        Outcome::Conflict { .. } => (
            format!("{name} already holds a different record at seq {seq} that wins the tie-break; publish with a higher seq"),
            Some(seq),
        ),
        Outcome::Stale { have, got } => (
            format!("{name} is at seq {have}; seq {got} is stale, publish with seq > {have}"),
            Some(have),
        ),
        Outcome::CasMismatch { actual, .. } if if_hash.is_some() => {
            let held = node.floor_of(&name).map(|f| hex::encode(f.hash));
            (
                format!("{name}'s winner is not the record this write names (held: seq {actual}, hash {}); it was replaced after it was read, so nothing was changed", held.as_deref().unwrap_or("none")),
                Some(actual),
            )
        }
        Outcome::CasMismatch { expected, actual } => (
            format!("{name} is at seq {actual}, not the expected {expected}"),
            Some(actual),
        ),
        // Refused only because of this node's clock: say so, so a client tries another peer
        // instead of giving up on a write that a node with a right clock would take.
        Outcome::Invalid(e) if refusal == PublishRefusal::Clock => (
            format!("{e} (by this node's clock; another node may accept it)"),
            None,
        ),
        Outcome::Invalid(e) => (e.to_string(), None),
        other => (other.kind().to_owned(), None),
    };
    let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
    let mut err = ApiError::new(status, refusal.as_str(), message);
    err.held_seq = held;
    Err(err)
}

/// Query string of a blocking read (`GET /v1/resolve/{name}` and `GET /v1/seq/{name}`): wait
/// until the node holds the name at `wait_seq` or later, at most `wait_ms` (see
/// [`crate::watch`]); public for the fuzz target `api_query`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// The seq to wait for; no wait when absent.
    pub wait_seq: Option<u64>,
    /// How long to wait at most, ms (default [`crate::watch::DEFAULT_WAIT_MS`], at most
    /// [`crate::watch::MAX_WAIT_MS`]).
    pub wait_ms: Option<u64>,
}

impl WaitQuery {
    /// The wait asked for: `None` for an ordinary read; 400 `bad_query` for a wait over
    /// [`crate::watch::MAX_WAIT_MS`] or a `wait_ms` without a `wait_seq`.
    pub fn wait(&self) -> Result<Option<(u64, Duration)>, ApiError> {
        let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", m);
        match (self.wait_seq, self.wait_ms) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(bad("wait_ms needs wait_seq, the seq to wait for".into())),
            (Some(_), Some(ms)) if ms > crate::watch::MAX_WAIT_MS => Err(bad(format!(
                "wait_ms is at most {}",
                crate::watch::MAX_WAIT_MS
            ))),
            (Some(seq), ms) => Ok(Some((
                seq,
                Duration::from_millis(ms.unwrap_or(crate::watch::DEFAULT_WAIT_MS)),
            ))),
        }
    }
}

/// Holds a read until the node has `name` at the query's seq (or the wait runs out; the read
/// then answers what the node holds, like any other). 503 `too_many_waits` when
/// [`crate::watch::MAX_WAITERS`] readers wait already. Returns when the name changed during
/// the wait (host monotonic µs, [`crate::watch::Waited`]), if it did.
async fn wait_if_asked(
    node: &Node,
    name: &str,
    query: Result<axum::extract::Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Option<u64>, ApiError> {
    let axum::extract::Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let Some((seq, wait)) = q.wait()? else {
        return Ok(None);
    };
    let waited = node.wait_for_seq(name, seq, wait).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_waits",
            e.to_string(),
        )
    })?;
    Ok(waited.changed_at_us)
}

async fn resolve(
    State(node): State<Node>,
    Path(raw): Path<String>,
    query: Result<axum::extract::Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ResolveAnswer>, ApiError> {
    let name = normalize_name(&raw)?;
    // When the name changed is in `/v1/seq`'s answer only (the bench reads it there).
    wait_if_asked(&node, &name, query).await?;
    let now = now_ms();
    let crate::answer::Answer { record, endpoints } = crate::answer::answer(&node, &name, now)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no live record for {name}"),
            )
        })?;
    let endpoints: Vec<EndpointJson> = endpoints
        .iter()
        .map(|(e, health)| EndpointJson::from_endpoint(e, *health))
        .collect();
    Ok(Json(ResolveAnswer {
        name,
        seq: record.body.seq,
        hash: Some(hex::encode(record.content_hash())),
        expires_at_ms: record.body.expires_at_ms,
        endpoints,
        peer_id: node.local_peer_id().to_string(),
        // Still answered when cut off (never fail closed), but the reader is told the answer
        // may be stale and can ask another peer.
        cut_off: Some(node.reach().cut_off),
    }))
}

async fn seq(
    State(node): State<Node>,
    Path(raw): Path<String>,
    query: Result<axum::extract::Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SeqAnswer>, ApiError> {
    let name = normalize_name(&raw)?;
    let changed_at_us = wait_if_asked(&node, &name, query).await?;
    let floor = node.floor_of(&name);
    let seq = floor.map_or(0, |f| f.seq);
    let hash = floor.map(|f| hex::encode(f.hash));
    Ok(Json(SeqAnswer {
        name,
        seq,
        hash,
        changed_at_us,
    }))
}

async fn status(State(node): State<Node>) -> Json<StatusAnswer> {
    let now = now_ms();
    let store = node.store_summary(now);
    let mono = node.mono_ms();
    let watched = node.watched_peers();
    let peers: Vec<PeerJson> = node
        .peers()
        .into_iter()
        .map(|(id, st)| PeerJson {
            peer_id: id.to_string(),
            alive: st.status != PeerStatus::Down,
            state: st.status.as_str().to_owned(),
            connected: st.connected,
            // Whether our failure detector watches it (≤ 2 s to see it pause) or checks it in
            // the slow round of the rest.
            watched: watched.contains(&id),
            // Wall-clock time of the last change, from the detector's monotonic clock.
            since_ms: now.saturating_sub(mono.saturating_sub(st.since_ms)),
            rtt_ms: st.rtt.map(|d| d.as_secs_f64() * 1000.0),
        })
        .collect();
    let listen: Vec<String> = node
        .listen_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    Json(StatusAnswer {
        peer_id: node.local_peer_id().to_string(),
        listen_addrs: listen,
        peers,
        reach: node.reach().into(),
        records: store.records,
        live_records: store.live_records,
        digest: store.digest,
        uptime_s: node.uptime().as_secs_f64(),
        corrupt_entries: store.corrupt_on_load,
        counters: node.counters_json(),
        endpoints: node.health().to_json(),
        dns: node.dns_stats().to_json(),
        blobs: node.blobs().stats.to_json(),
        offers: crate::offers::OfferStats::of(&node, now).to_json(),
        nat: node.nat_stats().to_json(),
    })
}

/// The node's one registry, through prometheus-client's text encoder ([`crate::metrics`]).
async fn metrics(State(node): State<Node>) -> Result<impl IntoResponse, ApiError> {
    let text = node.render_metrics().map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics",
            format!("cannot encode metrics: {e}"),
        )
    })?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        text,
    ))
}

async fn offers(
    State(node): State<Node>,
    query: Result<
        axum::extract::Query<crate::offers::OfferFilter>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<Json<OffersAnswer>, ApiError> {
    let axum::extract::Query(filter) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let list = crate::offers::list(&node, &filter, now_ms());
    Ok(Json(OffersAnswer { offers: list }))
}

/// Query string of a blob upload (`?replicas=K`), as axum's `Query` parses it (public for the
/// fuzz target `api_query`).
#[derive(Debug, Deserialize)]
pub struct PutQuery {
    /// Copies wanted; the node's default when absent.
    pub replicas: Option<u8>,
}

fn blob_error(e: crate::blobs::BlobError) -> ApiError {
    use crate::blobs::BlobError as E;
    match e {
        E::InsufficientStorage { .. } => ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient_storage",
            e.to_string(),
        ),
        E::UnknownBlob => ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
        E::Unavailable { .. } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        ),
        _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "blob", e.to_string()),
    }
}

/// A blob hash from a request path: 64 hex characters (400 `bad_hash` otherwise).
pub fn parse_hash(raw: &str) -> Result<[u8; 32], ApiError> {
    hex::decode(raw)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_hash",
                "the hash must be 64 hex characters",
            )
        })
}

/// Blob uploads running now (see [`MAX_CONCURRENT_UPLOADS`]).
static UPLOAD_SLOTS: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(MAX_CONCURRENT_UPLOADS);

/// Whether `addr` is a loopback address (IPv4-mapped IPv6 included).
fn is_loopback(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
        v4 => v4.is_loopback(),
    }
}

/// Bytes of an upload buffered before each write to its scratch file.
const UPLOAD_WRITE_BUFFER: usize = 1 << 20;

async fn put_blob(
    State(node): State<Node>,
    axum::extract::ConnectInfo(Peer(peer, _)): axum::extract::ConnectInfo<Peer>,
    token: Option<axum::Extension<TokenOk>>,
    axum::extract::Query(q): axum::extract::Query<PutQuery>,
    body: axum::body::Body,
) -> Result<Json<crate::blobs::PutResult>, ApiError> {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    // The node signs the blob's manifest with its own key, so an upload is an action of the
    // node, not of the caller: only local clients, or clients with the node's API token, may
    // ask for it (see the README).
    if token.is_none() && !is_loopback(peer.ip()) {
        HTTP_STATS.uploads_forbidden.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "blob uploads are accepted from loopback clients only (the node signs them)",
        ));
    }
    let Ok(_upload) = UPLOAD_SLOTS.try_acquire() else {
        HTTP_STATS.uploads_busy.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!("{MAX_CONCURRENT_UPLOADS} uploads are running; retry later"),
        ));
    };
    let replicas = q.replicas.unwrap_or(3);
    if replicas == 0 || replicas > dpin_protocol::record::MAX_REPLICAS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_replicas",
            format!("replicas must be 1-{}", dpin_protocol::record::MAX_REPLICAS),
        ));
    }
    let key = node.node_key().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting",
            "node key not ready",
        )
    })?;
    let tmp_dir = node.data_dir().join("tmp");
    let io =
        |e: std::io::Error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "io", e.to_string());
    tokio::fs::create_dir_all(&tmp_dir).await.map_err(io)?;
    let path = tmp_dir.join(format!("upload-{}", rand::random::<u64>()));
    let result = async {
        // Body frames are a few KiB each; written one by one, each was a hop to tokio's
        // blocking pool. Buffered, the file gets one write per MiB.
        let mut f = tokio::io::BufWriter::with_capacity(
            UPLOAD_WRITE_BUFFER,
            tokio::fs::File::create(&path).await.map_err(io)?,
        );
        let mut stream = body.into_data_stream();
        let mut total = 0u64;
        let started = tokio::time::Instant::now();
        let too_slow = |why: String| {
            HTTP_STATS.uploads_too_slow.fetch_add(1, Ordering::Relaxed);
            ApiError::new(StatusCode::REQUEST_TIMEOUT, "too_slow", why)
        };
        loop {
            // The body must keep coming: a gap over UPLOAD_IDLE_TIMEOUT, or an average under
            // UPLOAD_MIN_RATE after UPLOAD_GRACE, ends the upload (a trickle cannot hold a slot).
            let chunk = match tokio::time::timeout(UPLOAD_IDLE_TIMEOUT, stream.next()).await {
                Err(_) => {
                    return Err(too_slow(format!(
                        "no body bytes for {} s",
                        UPLOAD_IDLE_TIMEOUT.as_secs()
                    )))
                }
                Ok(None) => break,
                Ok(Some(c)) => c,
            };
            let chunk = chunk.map_err(|e| {
                if e.to_string().contains("length limit") {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        format!(
                            "blobs are limited to {} bytes",
                            crate::blobs::MAX_BLOB_BYTES
                        ),
                    )
                } else {
                    ApiError::new(StatusCode::BAD_REQUEST, "body", e.to_string())
                }
            })?;
            total += chunk.len() as u64;
            f.write_all(&chunk).await.map_err(io)?;
            let late = started.elapsed().saturating_sub(UPLOAD_GRACE);
            if (total as f64) < late.as_secs_f64() * UPLOAD_MIN_RATE as f64 {
                return Err(too_slow(format!(
                    "the body arrives slower than {UPLOAD_MIN_RATE} bytes/s"
                )));
            }
        }
        // No fsync: this is a scratch copy; durability comes from the holders' seals.
        f.flush().await.map_err(io)?;
        drop(f);
        if total == 0 {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "empty",
                "an empty file cannot be stored",
            ));
        }
        tokio::time::timeout(
            UPLOAD_STORE_TIMEOUT,
            crate::blobs::put(&node, &key, &path, usize::from(replicas)),
        )
        .await
        .map_err(|_| {
            HTTP_STATS.handler_timeouts.fetch_add(1, Ordering::Relaxed);
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!(
                    "storing the blob took over {} s",
                    UPLOAD_STORE_TIMEOUT.as_secs()
                ),
            )
        })?
        .map_err(blob_error)
    }
    .await;
    let _ = tokio::fs::remove_file(&path).await;
    let r = result?;
    Ok(Json(r))
}

/// The root, live manifest and verified index of the blob named by a hex hash.
async fn blob_lookup(
    node: &Node,
    raw: &str,
) -> Result<([u8; 32], dpin_protocol::BlobManifest, crate::blobs::Index), ApiError> {
    let root = parse_hash(raw)?;
    let m = crate::blobs::manifest(node, &root)
        .ok_or_else(|| blob_error(crate::blobs::BlobError::UnknownBlob))?;
    let index = crate::blobs::fetch_index(node, &root, m.size)
        .await
        .map_err(blob_error)?;
    // Described by a manifest that fits the verified index, not by whichever came first.
    let m = crate::blobs::manifest_for_index(node, &root, &index).unwrap_or(m);
    Ok((root, m, index))
}

async fn get_blob(
    State(node): State<Node>,
    extensions: axum::http::Extensions,
    Path(raw): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    let (root, m, index) = blob_lookup(&node, &raw).await?;
    // A producer fetches (and verifies) chunks ahead of the client, several at once from the
    // holders, asking again for chunks that timed out (blobs::fetch_chunks); a chunk no holder
    // can provide ends the body early, which the client sees as a short, failed download.
    // Dropping the body (the client went away) closes the channel, which stops the producer.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, crate::blobs::BlobError>>(2);
    let candidates: Vec<_> = crate::blobs::placement(&node, &root, index.size)
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let spread = usize::from(m.replicas);
    tokio::spawn(crate::blobs::fetch_chunks(
        node, root, index, candidates, spread, tx,
    ));
    // The body may pause while chunks are asked for again: the connection must not take that
    // for an idle one (ResponseGate). The guard lives as long as the body.
    let responding = extensions
        .get::<axum::extract::ConnectInfo<Peer>>()
        .and_then(|p| p.0 .1.hold());
    let stream = futures::stream::unfold((rx, responding), |(mut rx, responding)| async move {
        let item = rx.recv().await?;
        Some((
            item.map_err(|e| std::io::Error::other(e.to_string())),
            (rx, responding),
        ))
    });
    let mut resp = axum::body::Body::from_stream(stream).into_response();
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(resp)
}

async fn blob_info(
    State(node): State<Node>,
    Path(raw): Path<String>,
) -> Result<Json<BlobInfoAnswer>, ApiError> {
    let (root, m, index) = blob_lookup(&node, &raw).await?;
    let holders = crate::blobs::holders(&node, &root, m.size).await;
    let complete = holders
        .holding
        .iter()
        .filter(|(_, c, t)| c == t && *t > 0)
        .count();
    let list: Vec<HolderJson> = holders
        .holding
        .iter()
        .map(|(p, c, t)| HolderJson {
            peer_id: p.to_string(),
            chunks: *c,
            total: *t,
        })
        .collect();
    // Storage nodes that did not answer may hold copies: listed apart, never as "holds none".
    let unanswered: Vec<String> = holders.unanswered.iter().map(ToString::to_string).collect();
    Ok(Json(BlobInfoAnswer {
        hash: raw.to_ascii_lowercase(),
        size: m.size,
        chunk_size: m.chunk_size,
        chunks: m.chunks,
        replicas: m.replicas,
        complete_copies: complete as u64,
        holders: list,
        unanswered,
        index: hex::encode(&index.hashes),
    }))
}

// ---------------------------------------------------------------------------------------------
// Serving: bounded connections, request-head deadline, JSON errors

/// Most HTTP connections open at once. Each costs a file descriptor, which the node shares
/// with libp2p, DNS TCP and its store; beyond this, new connections are closed at accept.
pub const MAX_HTTP_CONNECTIONS: usize = 1024;
/// Most HTTP connections open at once from one IP address, so one client cannot take every
/// slot (CLI calls use one connection each; a busy local tool a handful).
pub const MAX_HTTP_CONNECTIONS_PER_IP: usize = 64;
/// Time a connection has to deliver a complete request head (up to the blank line), counted
/// from the connection's start or the end of the previous response. It is a deadline for the
/// whole head, not a per-read timeout, so a client trickling one byte at a time (slow loris)
/// is closed when it runs out; it also closes idle keep-alive connections.
pub const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Blob uploads processed at once. Each buffers up to [`crate::blobs::MAX_BLOB_BYTES`] on disk
/// and hashes and ships it; more are refused with 503 rather than queued.
pub const MAX_CONCURRENT_UPLOADS: usize = 2;
/// Every handler but the blob upload answers within this time (503 `timeout` otherwise), so a
/// stuck store or peer cannot pile up requests.
pub const HANDLER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest gap between two pieces of an upload body.
pub const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time an upload has before [`UPLOAD_MIN_RATE`] applies.
pub const UPLOAD_GRACE: Duration = Duration::from_secs(10);
/// Average bytes per second an upload body must keep up after [`UPLOAD_GRACE`] (a 1 GiB blob
/// may take up to about 68 minutes; a local `dpin put` sends hundreds of MB/s).
pub const UPLOAD_MIN_RATE: u64 = 256 * 1024;
/// Time to place a received blob on its holders.
pub const UPLOAD_STORE_TIMEOUT: Duration = Duration::from_secs(600);
/// A response the client does not read for this long is abandoned (the connection closed).
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest original error text carried into a JSON error body.
const MAX_ERROR_TEXT: usize = 4096;
/// Pause after an accept error (e.g. out of file descriptors) instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// HTTP connection counters (`/metrics`).
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Connections accepted and served.
    pub accepted: AtomicU64,
    /// Connections closed at accept: over [`MAX_HTTP_CONNECTIONS`].
    pub rejected_total_cap: AtomicU64,
    /// Connections closed at accept: over [`MAX_HTTP_CONNECTIONS_PER_IP`].
    pub rejected_per_ip_cap: AtomicU64,
    /// Connections closed by [`REQUEST_HEAD_TIMEOUT`].
    pub head_timeouts: AtomicU64,
    /// Connections still waiting for their request head after [`EVICT_AFTER`], closed to make
    /// room for a new one at the cap.
    pub evicted: AtomicU64,
    /// Blob uploads refused because [`MAX_CONCURRENT_UPLOADS`] were running.
    pub uploads_busy: AtomicU64,
    /// Blob uploads refused because the client was not on loopback (and had no token).
    pub uploads_forbidden: AtomicU64,
    /// Uploads ended because the body came too slowly.
    pub uploads_too_slow: AtomicU64,
    /// Requests answered 503 because the handler ran past its deadline.
    pub handler_timeouts: AtomicU64,
    /// Writes refused for a missing or wrong API token.
    pub unauthorized: AtomicU64,
    /// Connections closed because the client stopped reading a response.
    pub write_stalls: AtomicU64,
    /// Requests answered 429: the client was over its request rate.
    pub rate_limited: AtomicU64,
    /// Requests answered 429: the client had [`MAX_IN_FLIGHT_PER_CLIENT`] requests in handlers.
    pub concurrency_limited: AtomicU64,
    /// Clients the limiter tracks one by one now (a gauge, at most [`MAX_TRACKED_CLIENTS`]).
    pub clients_tracked: AtomicU64,
    /// Error responses by status, indexed like [`ERROR_STATUSES`] (last: any other).
    errors: [AtomicU64; ERROR_STATUSES.len() + 1],
}

/// Error statuses counted one by one (`dpin_http_errors_total{status=...}`).
const ERROR_STATUSES: [u16; 14] = [
    400, 401, 403, 404, 405, 408, 409, 413, 415, 422, 429, 500, 503, 507,
];

static HTTP_STATS: HttpStats = HttpStats {
    accepted: AtomicU64::new(0),
    rejected_total_cap: AtomicU64::new(0),
    rejected_per_ip_cap: AtomicU64::new(0),
    head_timeouts: AtomicU64::new(0),
    evicted: AtomicU64::new(0),
    uploads_busy: AtomicU64::new(0),
    uploads_forbidden: AtomicU64::new(0),
    uploads_too_slow: AtomicU64::new(0),
    handler_timeouts: AtomicU64::new(0),
    unauthorized: AtomicU64::new(0),
    write_stalls: AtomicU64::new(0),
    rate_limited: AtomicU64::new(0),
    concurrency_limited: AtomicU64::new(0),
    clients_tracked: AtomicU64::new(0),
    errors: [const { AtomicU64::new(0) }; ERROR_STATUSES.len() + 1],
};

/// The process-wide HTTP counters (one API per process).
pub fn http_stats() -> &'static HttpStats {
    &HTTP_STATS
}

impl HttpStats {
    fn count_status(&self, status: StatusCode) {
        let i = ERROR_STATUSES
            .iter()
            .position(|s| *s == status.as_u16())
            .unwrap_or(ERROR_STATUSES.len());
        if let Some(c) = self.errors.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Error responses with `status` so far (statuses not listed count as one "other").
    pub fn errors(&self, status: u16) -> u64 {
        let i = ERROR_STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(ERROR_STATUSES.len());
        self.errors.get(i).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// For `/metrics`.
    pub fn encode(
        &self,
        e: &mut prometheus_client::encoding::DescriptorEncoder,
    ) -> std::fmt::Result {
        use crate::metrics::{counter, counter_family, gauge, to_i64};
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counter(
            e,
            "dpin_http_connections_total",
            "HTTP connections accepted and served.",
            l(&self.accepted),
        )?;
        counter_family(
            e,
            "dpin_http_rejected_total",
            "HTTP connections closed at accept, by cap.",
            [
                ([("reason", "total_cap")], l(&self.rejected_total_cap)),
                ([("reason", "per_ip_cap")], l(&self.rejected_per_ip_cap)),
            ],
        )?;
        counter(
            e,
            "dpin_http_head_timeouts_total",
            "HTTP connections closed waiting for their request head.",
            l(&self.head_timeouts),
        )?;
        counter(
            e,
            "dpin_http_evicted_total",
            "HTTP connections still waiting for a request head, closed to make room.",
            l(&self.evicted),
        )?;
        counter_family(
            e,
            "dpin_http_uploads_refused_total",
            "Blob uploads refused, by reason.",
            [
                ([("reason", "busy")], l(&self.uploads_busy)),
                ([("reason", "not_loopback")], l(&self.uploads_forbidden)),
                ([("reason", "too_slow")], l(&self.uploads_too_slow)),
            ],
        )?;
        counter(
            e,
            "dpin_http_handler_timeouts_total",
            "Requests answered 503: the handler ran past its deadline.",
            l(&self.handler_timeouts),
        )?;
        counter_family(
            e,
            "dpin_http_refused_total",
            "Requests refused, by reason.",
            [
                ([("reason", "unauthorized")], l(&self.unauthorized)),
                ([("reason", "rate")], l(&self.rate_limited)),
                ([("reason", "concurrency")], l(&self.concurrency_limited)),
            ],
        )?;
        counter(
            e,
            "dpin_http_write_stalls_total",
            "HTTP connections closed: the client stopped reading a response.",
            l(&self.write_stalls),
        )?;
        gauge(
            e,
            "dpin_http_clients_tracked",
            "Clients the rate limiter tracks one by one now.",
            to_i64(l(&self.clients_tracked)),
        )?;
        counter_family(
            e,
            "dpin_http_errors_total",
            "Error responses by status.",
            self.errors.iter().enumerate().map(|(i, c)| {
                let status = ERROR_STATUS_LABELS.get(i).copied().unwrap_or("other");
                ([("status", status)], l(c))
            }),
        )
    }
}

/// [`ERROR_STATUSES`] as label values (the last counter is `other`).
const ERROR_STATUS_LABELS: [&str; ERROR_STATUSES.len()] = [
    "400", "401", "403", "404", "405", "408", "409", "413", "415", "422", "429", "500", "503",
    "507",
];

/// A connection waiting this long for its request head may be closed to make room when the
/// connection cap is reached (honest clients send a head within milliseconds).
pub const EVICT_AFTER: Duration = Duration::from_secs(1);

/// What the listener and a connection share: whether (since when) it waits for a request head,
/// and the order to close it.
#[derive(Debug, Default)]
struct ConnShared {
    /// Milliseconds since the listener's epoch, plus one, when the connection started waiting
    /// for its current request head; 0 while it is not waiting.
    head_since: AtomicU64,
    /// Response bodies still being sent on the connection ([`Responding`]). While one is, the
    /// connection is not waiting for a head, whatever was written last: a download whose
    /// source stalls (holders paused) writes nothing for a while and must not be closed for it.
    responding: std::sync::atomic::AtomicU32,
    evicted: std::sync::atomic::AtomicBool,
    waker: futures::task::AtomicWaker,
}

#[derive(Debug, Default)]
struct ConnTable {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    conns: HashMap<u64, Arc<ConnShared>>,
    next_id: u64,
}

/// A TCP listener that enforces the connection caps and wraps each connection in
/// [`GuardedIo`].
pub struct BoundedListener {
    inner: tokio::net::TcpListener,
    table: Arc<Mutex<ConnTable>>,
    epoch: std::time::Instant,
}

impl BoundedListener {
    /// Wraps a bound listener.
    pub fn new(inner: tokio::net::TcpListener) -> Self {
        Self {
            inner,
            table: Arc::new(Mutex::new(ConnTable::default())),
            epoch: std::time::Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn admit(&self, ip: IpAddr) -> Option<ConnSlot> {
        let mut t = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if t.total >= MAX_HTTP_CONNECTIONS {
            // Make room by closing the connection that has waited longest for its request
            // head (a slow loris), if one has waited over EVICT_AFTER; else refuse.
            let cutoff = self
                .now_ms()
                .saturating_sub(u64::try_from(EVICT_AFTER.as_millis()).unwrap_or(0));
            let victim = t
                .conns
                .values()
                .filter(|c| !c.evicted.load(Ordering::Relaxed))
                .filter(|c| c.responding.load(Ordering::Relaxed) == 0)
                .map(|c| (c.head_since.load(Ordering::Relaxed), c))
                .filter(|(since, _)| *since != 0 && since.saturating_sub(1) <= cutoff)
                .min_by_key(|(since, _)| *since)
                .map(|(_, c)| c.clone());
            let Some(victim) = victim else {
                HTTP_STATS
                    .rejected_total_cap
                    .fetch_add(1, Ordering::Relaxed);
                return None;
            };
            victim.evicted.store(true, Ordering::Relaxed);
            victim.waker.wake();
            HTTP_STATS.evicted.fetch_add(1, Ordering::Relaxed);
        }
        let n = t.per_ip.entry(ip).or_default();
        if *n >= MAX_HTTP_CONNECTIONS_PER_IP {
            HTTP_STATS
                .rejected_per_ip_cap
                .fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *n += 1;
        t.total += 1;
        let id = t.next_id;
        t.next_id += 1;
        let shared = Arc::new(ConnShared::default());
        shared
            .head_since
            .store(self.now_ms().saturating_add(1), Ordering::Relaxed);
        t.conns.insert(id, shared.clone());
        HTTP_STATS.accepted.fetch_add(1, Ordering::Relaxed);
        Some(ConnSlot {
            table: self.table.clone(),
            ip,
            id,
            shared,
            epoch: self.epoch,
        })
    }
}

/// A connection's place in the caps; released when the connection is dropped.
struct ConnSlot {
    table: Arc<Mutex<ConnTable>>,
    ip: IpAddr,
    id: u64,
    shared: Arc<ConnShared>,
    epoch: std::time::Instant,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut t = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        t.total = t.total.saturating_sub(1);
        t.conns.remove(&self.id);
        if let Some(n) = t.per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                t.per_ip.remove(&self.ip);
            }
        }
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = GuardedIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    // Over a cap: dropping the stream closes it at once.
                    if let Some(slot) = self.admit(addr.ip()) {
                        return (GuardedIo::new(stream, slot), addr);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The client's address, for handlers that depend on where a request comes from, and a
/// handle on its connection ([`ResponseGate`]).
#[derive(Clone, Debug)]
pub struct Peer(pub SocketAddr, pub ResponseGate);

/// Lets a handler whose body is sent over a long time (a blob download) tell its connection
/// so ([`ResponseGate::hold`]): the request-head deadline, which restarts with every write
/// because the connection cannot see where a response ends, then does not close it while the
/// body is still coming. Empty for a router driven in-process.
#[derive(Clone, Debug, Default)]
pub struct ResponseGate(Option<Arc<ConnShared>>);

impl ResponseGate {
    /// Marks a response in progress until the returned guard is dropped (keep it in the body).
    pub fn hold(&self) -> Option<Responding> {
        let shared = self.0.clone()?;
        shared.responding.fetch_add(1, Ordering::Relaxed);
        Some(Responding(shared))
    }
}

/// A response body in progress on a connection ([`ResponseGate::hold`]).
#[derive(Debug)]
pub struct Responding(Arc<ConnShared>);

impl Drop for Responding {
    fn drop(&mut self) {
        self.0.responding.fetch_sub(1, Ordering::Relaxed);
        // The connection may be parked on a deadline that passed during the body: let it look
        // again (it re-arms the deadline from its last write).
        self.0.waker.wake();
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, BoundedListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, BoundedListener>) -> Self {
        Peer(
            *stream.remote_addr(),
            ResponseGate(Some(stream.io().slot.shared.clone())),
        )
    }
}

/// A connection with the request-head deadline (see [`REQUEST_HEAD_TIMEOUT`]).
pub struct GuardedIo {
    stream: tokio::net::TcpStream,
    slot: ConnSlot,
    /// Whether a request head is being waited for (the deadline runs).
    awaiting_head: bool,
    /// The last four bytes of the head read so far, to find its end (`\r\n\r\n`).
    window: u32,
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// Whether a write is waiting for the client to read (the stall deadline runs).
    write_waiting: bool,
    write_deadline: Pin<Box<tokio::time::Sleep>>,
}

impl GuardedIo {
    fn new(stream: tokio::net::TcpStream, slot: ConnSlot) -> Self {
        Self {
            stream,
            slot,
            awaiting_head: true,
            window: 0,
            deadline: Box::pin(tokio::time::sleep(REQUEST_HEAD_TIMEOUT)),
            write_waiting: false,
            write_deadline: Box::pin(tokio::time::sleep(WRITE_STALL_TIMEOUT)),
        }
    }
}

impl tokio::io::AsyncRead for GuardedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        this.slot.shared.waker.register(cx.waker());
        if this.slot.shared.evicted.load(Ordering::Relaxed) {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "closed to make room: request head too slow",
            )));
        }
        if this.awaiting_head && this.deadline.as_mut().poll(cx).is_ready() {
            if this.slot.shared.responding.load(Ordering::Relaxed) > 0 {
                // A body is still being sent (its source stalled): no head is due yet. Look
                // again a deadline later, so a connection left idle after it still closes.
                let at = tokio::time::Instant::now() + REQUEST_HEAD_TIMEOUT;
                this.deadline.as_mut().reset(at);
                let _ = this.deadline.as_mut().poll(cx);
                let r = Pin::new(&mut this.stream).poll_read(cx, buf);
                return r;
            }
            HTTP_STATS.head_timeouts.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request head not complete in time",
            )));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.stream).poll_read(cx, buf);
        if this.awaiting_head {
            for &b in &buf.filled()[before..] {
                this.window = (this.window << 8) | u32::from(b);
                if this.window == u32::from_be_bytes(*b"\r\n\r\n") {
                    // The head is complete; the body is bounded by the handlers' limits.
                    this.awaiting_head = false;
                    this.slot.shared.head_since.store(0, Ordering::Relaxed);
                    break;
                }
            }
        }
        r
    }
}

impl tokio::io::AsyncWrite for GuardedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.stream).poll_write(cx, data);
        if r.is_pending() {
            // The client is not reading: give it WRITE_STALL_TIMEOUT, then give up on it.
            if !this.write_waiting {
                this.write_waiting = true;
                let at = tokio::time::Instant::now() + WRITE_STALL_TIMEOUT;
                this.write_deadline.as_mut().reset(at);
            }
            if this.write_deadline.as_mut().poll(cx).is_ready() {
                HTTP_STATS.write_stalls.fetch_add(1, Ordering::Relaxed);
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client stopped reading the response",
                )));
            }
            return r;
        }
        this.write_waiting = false;
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            // A response is going out: the next request head is due within the timeout of the
            // last byte written (a long download keeps pushing the deadline out).
            this.awaiting_head = true;
            this.window = 0;
            let since = u64::try_from(this.slot.epoch.elapsed().as_millis()).unwrap_or(0);
            this.slot
                .shared
                .head_since
                .store(since.saturating_add(1), Ordering::Relaxed);
            let at = tokio::time::Instant::now() + REQUEST_HEAD_TIMEOUT;
            this.deadline.as_mut().reset(at);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Turns every error response that is not JSON yet (unknown path, wrong method, extractor
/// rejections such as a bad query string) into the `{"error", "message"}` shape of SPEC §5,
/// keeping the status and headers (e.g. `Allow` on 405).
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, MAX_ERROR_TEXT)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let kind = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid",
        s if s.is_client_error() => "bad_request",
        _ => "internal",
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    parts.headers.remove(axum::http::header::CONTENT_TYPE);
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let mut out = ApiError::new(status, kind, message).into_response();
    for (k, v) in &parts.headers {
        out.headers_mut().entry(k).or_insert_with(|| v.clone());
    }
    out
}

async fn unknown_path(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such endpoint: {}", uri.path()),
    )
}

// ---------------------------------------------------------------------------------------------
// Per-client request limits (request floods)

/// Env var setting the per-client request rate: `RATE` or `RATE/BURST` (requests a second, and
/// the most at once after a quiet spell); `0` turns the rate limit off. Default
/// [`DEFAULT_CLIENT_RATE`] / [`DEFAULT_CLIENT_BURST`].
pub const API_RATE_ENV: &str = "DPIN_API_RATE";
/// Env var: `1` applies the per-client rate limit to loopback clients too (by default they are
/// the node's own operator tools, the CLI and local monitors, and are exempt from the rate; the
/// concurrency bound applies to everyone).
pub const API_LIMIT_LOOPBACK_ENV: &str = "DPIN_API_LIMIT_LOOPBACK";
/// Default requests a second one client (one IPv4 address, one IPv6 /64) may make, on average.
/// A resolve costs one request, a publish [`PUBLISH_COST`]. Generous for any honest client (a
/// resolver caches for the record's TTL; the CLI makes a handful), and far below what one
/// client could push through the 2 cores a node is sized for.
pub const DEFAULT_CLIENT_RATE: u32 = 200;
/// Default burst: requests one client may make at once after a quiet spell.
pub const DEFAULT_CLIENT_BURST: u32 = 400;
/// Most requests one client may have in handlers at once, whatever the rate. HTTP/1 is bounded
/// by [`MAX_HTTP_CONNECTIONS_PER_IP`] already; HTTP/2 multiplexes many streams over one
/// connection, and this bounds them too.
pub const MAX_IN_FLIGHT_PER_CLIENT: u32 = 32;
/// Rate tokens a publish costs (it verifies a signature and takes the store lock), against one
/// for a read.
pub const PUBLISH_COST: u32 = 4;
/// Most clients tracked one by one. Past it, idle clients with full buckets are forgotten
/// (they lose nothing: a new client starts with a full bucket); if the table is still full,
/// further new clients share one overflow client's bucket and in-flight bound — so an
/// attacker rotating through many addresses gets one client's share, not one each.
pub const MAX_TRACKED_CLIENTS: usize = 4096;

/// Per-client limits ([`ApiConfig::limits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// Requests a second per client on average; 0 = no rate limit.
    pub rate: u32,
    /// Bucket size: requests at once after a quiet spell.
    pub burst: u32,
    /// Requests per client in handlers at once; 0 = no bound.
    pub max_in_flight: u32,
    /// Whether loopback clients are limited by the rate too.
    pub limit_loopback: bool,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            rate: DEFAULT_CLIENT_RATE,
            burst: DEFAULT_CLIENT_BURST,
            max_in_flight: MAX_IN_FLIGHT_PER_CLIENT,
            limit_loopback: false,
        }
    }
}

impl ClientLimits {
    /// The defaults, overridden by [`API_RATE_ENV`] and [`API_LIMIT_LOOPBACK_ENV`]. A value
    /// that does not parse is reported and ignored.
    pub fn from_env() -> Self {
        let mut l = Self::default();
        if let Ok(v) = std::env::var(API_RATE_ENV) {
            match parse_rate(&v) {
                Some((rate, burst)) => {
                    l.rate = rate;
                    l.burst = burst;
                }
                None => {
                    tracing::warn!(value = %v, "{API_RATE_ENV} is not RATE or RATE/BURST; using the default")
                }
            }
        }
        if let Ok(v) = std::env::var(API_LIMIT_LOOPBACK_ENV) {
            l.limit_loopback = matches!(v.trim(), "1" | "true" | "yes");
        }
        l
    }
}

/// Parses `RATE` or `RATE/BURST` (burst defaults to twice the rate).
pub fn parse_rate(text: &str) -> Option<(u32, u32)> {
    let text = text.trim();
    let (rate, burst) = match text.split_once('/') {
        Some((r, b)) => (r.trim().parse().ok()?, b.trim().parse().ok()?),
        None => {
            let r: u32 = text.parse().ok()?;
            (r, r.saturating_mul(2))
        }
    };
    (rate == 0 || burst > 0).then_some((rate, burst))
}

/// Whom a limit counts against: an IPv4 address, or an IPv6 /64 (one subscriber's usual
/// allocation: counting each of its addresses apart would give it 2^64 buckets).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// One IPv4 address (IPv4-mapped IPv6 included).
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6Prefix([u8; 8]),
}

impl ClientKey {
    /// The key of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => ClientKey::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey::V4(v4.octets()),
                None => {
                    let o = v6.octets();
                    ClientKey::V6Prefix([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]])
                }
            },
        }
    }
}

/// Why a request was refused with 429.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Over the client's request rate.
    Rate {
        /// Whole seconds until the bucket holds the request's cost again (at least 1).
        retry_after_s: u64,
    },
    /// Over the client's requests in handlers at once.
    Concurrency,
}

#[derive(Debug)]
struct ClientState {
    /// Tokens, in thousandths of a request (integer arithmetic: deterministic).
    milli_tokens: u64,
    last_ms: u64,
    in_flight: u32,
}

#[derive(Debug)]
struct LimiterTable {
    clients: HashMap<ClientKey, ClientState>,
    overflow: ClientState,
}

/// Per-client token buckets and in-flight counts (see [`ClientLimits`]). Clock-free: time
/// comes in as milliseconds of a monotonic clock, so tests drive it.
#[derive(Debug)]
pub struct ClientLimiter {
    limits: ClientLimits,
    max_clients: usize,
    table: Arc<Mutex<LimiterTable>>,
}

/// A request's place in its client's in-flight count; released when dropped.
#[derive(Debug)]
pub struct InFlight {
    table: Arc<Mutex<LimiterTable>>,
    key: Option<ClientKey>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut t = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let state = match self.key {
            Some(k) => t.clients.get_mut(&k),
            None => Some(&mut t.overflow),
        };
        if let Some(s) = state {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
    }
}

impl ClientLimiter {
    /// A limiter tracking at most [`MAX_TRACKED_CLIENTS`] clients.
    pub fn new(limits: ClientLimits) -> Self {
        Self::with_capacity(limits, MAX_TRACKED_CLIENTS)
    }

    /// A limiter tracking at most `max_clients` clients one by one (tests use small tables).
    pub fn with_capacity(limits: ClientLimits, max_clients: usize) -> Self {
        let full = u64::from(limits.burst).saturating_mul(1000);
        Self {
            limits,
            max_clients: max_clients.max(1),
            table: Arc::new(Mutex::new(LimiterTable {
                clients: HashMap::new(),
                overflow: ClientState {
                    milli_tokens: full,
                    last_ms: 0,
                    in_flight: 0,
                },
            })),
        }
    }

    /// Clients tracked one by one now (bounded by the table's capacity).
    pub fn tracked(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clients
            .len()
    }

    /// Admits a request of `cost` tokens from `ip` at `now_ms`, or says why not. `rate_exempt`
    /// skips the rate (loopback unless configured otherwise, token holders) but never the
    /// concurrency bound.
    pub fn admit(
        &self,
        ip: IpAddr,
        cost: u32,
        rate_exempt: bool,
        now_ms: u64,
    ) -> Result<InFlight, Refusal> {
        let l = self.limits;
        let full = u64::from(l.burst).saturating_mul(1000);
        let mut guard = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let t = &mut *guard;
        let mut key = Some(ClientKey::of(ip));
        if let Some(k) = key {
            if !t.clients.contains_key(&k) && t.clients.len() >= self.max_clients {
                // Forget clients that carry no state a fresh entry would not have.
                t.clients.retain(|_, s| {
                    let refilled = s.milli_tokens.saturating_add(
                        now_ms
                            .saturating_sub(s.last_ms)
                            .saturating_mul(u64::from(l.rate)),
                    );
                    s.in_flight > 0 || refilled < full
                });
                if t.clients.len() >= self.max_clients {
                    key = None;
                }
            }
        }
        let state = match key {
            Some(k) => t.clients.entry(k).or_insert(ClientState {
                milli_tokens: full,
                last_ms: now_ms,
                in_flight: 0,
            }),
            None => &mut t.overflow,
        };
        if l.max_in_flight > 0 && state.in_flight >= l.max_in_flight {
            return Err(Refusal::Concurrency);
        }
        if l.rate > 0 && !rate_exempt {
            // Refill: rate tokens a second = rate milli-tokens a millisecond.
            let elapsed = now_ms.saturating_sub(state.last_ms);
            state.milli_tokens = state
                .milli_tokens
                .saturating_add(elapsed.saturating_mul(u64::from(l.rate)))
                .min(full);
            state.last_ms = state.last_ms.max(now_ms);
            let need = u64::from(cost).saturating_mul(1000);
            if state.milli_tokens < need {
                let missing = need - state.milli_tokens;
                let ms = missing.div_ceil(u64::from(l.rate));
                return Err(Refusal::Rate {
                    retry_after_s: ms.div_ceil(1000).max(1),
                });
            }
            state.milli_tokens -= need;
        }
        state.in_flight = state.in_flight.saturating_add(1);
        drop(guard);
        Ok(InFlight {
            table: self.table.clone(),
            key,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod limiter_tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn limits(rate: u32, burst: u32, max_in_flight: u32) -> ClientLimits {
        ClientLimits {
            rate,
            burst,
            max_in_flight,
            limit_loopback: true,
        }
    }

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    #[test]
    fn a_client_gets_its_burst_then_429_until_the_bucket_refills() {
        let l = ClientLimiter::new(limits(10, 20, 0));
        for _ in 0..20 {
            drop(l.admit(v4(1), 1, false, 0).expect("within the burst"));
        }
        assert_eq!(
            l.admit(v4(1), 1, false, 0).unwrap_err(),
            Refusal::Rate { retry_after_s: 1 }
        );
        // Another client is not affected.
        assert!(l.admit(v4(2), 1, false, 0).is_ok());
        // 10 a second: after 500 ms, 5 more.
        for _ in 0..5 {
            drop(l.admit(v4(1), 1, false, 500).expect("refilled"));
        }
        assert!(l.admit(v4(1), 1, false, 500).is_err());
    }

    #[test]
    fn a_publish_costs_more_than_a_read_and_retry_after_says_when() {
        let l = ClientLimiter::new(limits(1, 4, 0));
        drop(
            l.admit(v4(1), PUBLISH_COST, false, 0)
                .expect("a full bucket"),
        );
        assert_eq!(
            l.admit(v4(1), PUBLISH_COST, false, 0).unwrap_err(),
            Refusal::Rate { retry_after_s: 4 }
        );
    }

    #[test]
    fn in_flight_requests_are_bounded_per_client_even_when_rate_exempt() {
        let l = ClientLimiter::new(limits(1000, 1000, 3));
        let held: Vec<InFlight> = (0..3)
            .map(|_| l.admit(v4(1), 1, true, 0).expect("under the bound"))
            .collect();
        assert_eq!(
            l.admit(v4(1), 1, true, 0).unwrap_err(),
            Refusal::Concurrency
        );
        assert!(
            l.admit(v4(2), 1, true, 0).is_ok(),
            "other clients unaffected"
        );
        drop(held);
        assert!(l.admit(v4(1), 1, true, 0).is_ok(), "released on drop");
    }

    #[test]
    fn rate_exempt_clients_are_not_rate_limited() {
        let l = ClientLimiter::new(limits(1, 1, 0));
        for _ in 0..100 {
            drop(l.admit(v4(1), 1, true, 0).expect("exempt"));
        }
    }

    #[test]
    fn an_ipv6_slash_64_is_one_client_and_mapped_ipv4_is_its_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1"
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9"
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .unwrap();
        let c: IpAddr = "2001:db8:1:3::1"
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .unwrap();
        assert_eq!(ClientKey::of(a), ClientKey::of(b));
        assert_ne!(ClientKey::of(a), ClientKey::of(c));
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert_eq!(ClientKey::of(mapped), ClientKey::of(v4(1)));

        let l = ClientLimiter::new(limits(1, 2, 0));
        drop(l.admit(a, 1, false, 0).unwrap());
        drop(l.admit(b, 1, false, 0).unwrap());
        assert!(l.admit(a, 1, false, 0).is_err(), "b spent a's bucket");
        assert!(l.admit(c, 1, false, 0).is_ok());
    }

    #[test]
    fn rotating_addresses_past_the_table_share_one_bucket_and_the_table_stays_bounded() {
        let l = ClientLimiter::with_capacity(limits(1, 2, 0), 8);
        let mut refused = 0;
        for i in 0..200u8 {
            // Each address spends its whole bucket, so none can be forgotten.
            for _ in 0..3 {
                if l.admit(v4(i), 1, false, 0).is_err() {
                    refused += 1;
                }
            }
            assert!(l.tracked() <= 8);
        }
        // 8 tracked clients got 2 each, the other 192 shared one bucket of 2.
        assert_eq!(600 - refused, 8 * 2 + 2);
    }

    #[test]
    fn idle_clients_with_full_buckets_are_forgotten_to_make_room() {
        let l = ClientLimiter::with_capacity(limits(10, 10, 0), 4);
        for i in 0..4u8 {
            drop(l.admit(v4(i), 1, false, 0).unwrap());
        }
        // A second later every bucket is full again: a new client evicts them, not the
        // overflow bucket.
        for i in 10..50u8 {
            for _ in 0..10 {
                drop(
                    l.admit(v4(i), 1, false, 1000 * u64::from(i))
                        .expect("own bucket"),
                );
            }
        }
        assert!(l.tracked() <= 4);
    }

    #[test]
    fn rates_parse_as_rate_or_rate_slash_burst() {
        assert_eq!(parse_rate("50"), Some((50, 100)));
        assert_eq!(parse_rate(" 50/70 "), Some((50, 70)));
        assert_eq!(parse_rate("0"), Some((0, 0)));
        assert_eq!(parse_rate("5/0"), None);
        assert_eq!(parse_rate("fast"), None);
    }
}

#[cfg(test)]
mod http_stats_tests {
    use super::*;

    #[test]
    fn error_status_labels_match_the_counted_statuses() {
        for (code, label) in ERROR_STATUSES.iter().zip(ERROR_STATUS_LABELS) {
            assert_eq!(code.to_string(), label);
        }
    }
}

/// The JSON every route sends, pinned against a real node in this process: field names, which
/// optional fields are `null` and which are left out, and each value's JSON type. Older CLIs
/// and harnesses read these bodies from newer nodes, so a change here is a wire change.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod wire_tests {
    use super::*;
    use dpin_protocol::{Content, ZoneKey};
    use serde_json::{json, Value};

    /// A real node in this process with its API on loopback (the metrics tests' helper).
    async fn node(dir: &std::path::Path) -> (Node, String) {
        let (node, api) = crate::metrics::tests::node(dir).await;
        (node, api.to_string())
    }

    /// The body with every leaf replaced by its JSON type (`"str"`, `"u64"`, `"f64"`,
    /// `"bool"`, `null`); arrays keep their items' shapes. Objects listed in `opaque` (a
    /// module's own counters) become `"object"`.
    fn shape(v: &Value, opaque: &[&str]) -> Value {
        match v {
            Value::Null => Value::Null,
            Value::Bool(_) => "bool".into(),
            Value::Number(n) if n.is_u64() => "u64".into(),
            Value::Number(_) => "f64".into(),
            Value::String(_) => "str".into(),
            Value::Array(a) => Value::Array(a.iter().map(|x| shape(x, opaque)).collect()),
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, x)| {
                        let s = if opaque.contains(&k.as_str()) && x.is_object() {
                            "object".into()
                        } else {
                            shape(x, opaque)
                        };
                        (k.clone(), s)
                    })
                    .collect(),
            ),
        }
    }

    fn pinned(body: &Value, opaque: &[&str], golden: &str) {
        let want: Value = serde_json::from_str(golden).unwrap();
        assert_eq!(shape(body, opaque), want, "body: {body}");
    }

    struct Raw {
        status: u16,
        body: Value,
    }

    /// One raw HTTP request to the API at `api`: a POST of `body`, or a GET without one.
    fn raw_request(
        http: &reqwest::Client,
        api: &str,
        path: String,
        body: Option<Value>,
    ) -> impl std::future::Future<Output = Raw> {
        let url = format!("http://{api}{path}");
        let req = match body {
            Some(b) => http.post(url).json(&b),
            None => http.get(url),
        };
        async move {
            let resp = req.send().await.unwrap();
            Raw {
                status: resp.status().as_u16(),
                body: resp.json().await.unwrap(),
            }
        }
    }

    #[tokio::test]
    async fn a_blocking_read_answers_once_the_seq_it_waits_for_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let (node, api) = node(dir.path()).await;
        let http = reqwest::Client::new();
        let key = ZoneKey::from_seed([9; 32]);
        let eps = || Content::Endpoints(vec!["127.0.0.1:80".parse().unwrap()]);
        let sign = |seq| crate::publish::sign(&key, "web", eps(), seq, 60_000, now_ms()).unwrap();
        let name = format!("web.{}", key.zone());
        let get = |path: String| raw_request(&http, &api, path, None);
        node.publish(sign(1), None).await.unwrap();

        // Readers of seq 2 and of the seq endpoint, started while the node holds seq 1; the
        // write lands after they registered (the waiter count says they have).
        let resolve = tokio::spawn(get(format!("/v1/resolve/{name}?wait_seq=2&wait_ms=25000")));
        let seq = tokio::spawn(get(format!("/v1/seq/{name}?wait_seq=2&wait_ms=25000")));
        while node.waiters() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!resolve.is_finished() && !seq.is_finished(), "they wait");
        let before = crate::clock::host_mono_us();
        node.publish(sign(2), None).await.unwrap();
        let after = crate::clock::host_mono_us();
        // Well before their 25 s wait would run out.
        let bound = Duration::from_secs(15);
        let r = tokio::time::timeout(bound, resolve).await.unwrap().unwrap();
        assert_eq!(
            (r.status, r.body["seq"].clone()),
            (200, 2.into()),
            "{}",
            r.body
        );
        let q = tokio::time::timeout(bound, seq).await.unwrap().unwrap();
        assert_eq!(
            (q.status, q.body["seq"].clone()),
            (200, 2.into()),
            "{}",
            q.body
        );
        // The seq answer says when the write was applied here, on the host's monotonic clock.
        let at = q.body["changed_at_us"].as_u64().expect("stamped");
        assert!(
            (before..=after).contains(&at),
            "{before} <= {at} <= {after}"
        );
        assert_eq!(node.waiters(), 0, "no waiter outlives its request");

        // A seq already held answers at once; a wait that runs out answers what is held.
        let a = get(format!("/v1/resolve/{name}?wait_seq=1")).await;
        assert_eq!((a.status, a.body["seq"].clone()), (200, 2.into()));
        let a = get(format!("/v1/resolve/{name}?wait_seq=9&wait_ms=50")).await;
        assert_eq!((a.status, a.body["seq"].clone()), (200, 2.into()));
        let a = get(format!("/v1/seq/api.{}?wait_seq=1&wait_ms=50", key.zone())).await;
        assert_eq!((a.status, a.body["seq"].clone()), (200, 0.into()));
        // Neither a seq held already nor a wait that ran out says when anything changed,
        // though a reader before them saw a change of the name.
        for q in ["wait_seq=2", "wait_seq=9&wait_ms=50"] {
            let a = get(format!("/v1/seq/{name}?{q}")).await;
            assert_eq!(a.body.get("changed_at_us"), None, "{q}: {}", a.body);
        }

        // Waits past the bound, a wait without a seq, and unknown or malformed keys: 400.
        for q in [
            "wait_seq=2&wait_ms=25001",
            "wait_ms=10",
            "wait_seq=2&wiat_ms=10",
            "wait_seq=-1",
            "wait_seq=x",
        ] {
            let a = get(format!("/v1/resolve/{name}?{q}")).await;
            assert_eq!(
                (a.status, a.body["error"].clone()),
                (400, "bad_query".into()),
                "{q}"
            );
        }
    }

    #[tokio::test]
    async fn every_route_answers_the_pinned_json() {
        let dir = tempfile::tempdir().unwrap();
        let (_node, api) = node(dir.path()).await;
        // Raw HTTP, not the CLI's client: the bodies sent are what older clients send
        // (`"if_seq": null` included), and the answers are read as plain JSON.
        let http = reqwest::Client::new();
        let key = ZoneKey::from_seed([7; 32]);
        let eps = || Content::Endpoints(vec!["127.0.0.1:80".parse().unwrap()]);
        let now = now_ms();
        let sign = |seq| crate::publish::sign(&key, "web", eps(), seq, 60_000, now).unwrap();
        let req = |seq: u64, if_seq: Option<u64>| json!({"record": hex::encode(sign(seq).encode()), "if_seq": if_seq});
        let name = format!("web.{}", key.zone());
        let ask = |path: String, body: Option<Value>| raw_request(&http, &api, path, body);

        // Unknown name: seq 0, hash null.
        let a = ask(format!("/v1/seq/{name}"), None).await;
        assert_eq!(a.status, 200);
        pinned(&a.body, &[], r#"{"name":"str","seq":"u64","hash":null}"#);
        assert_eq!(a.body["seq"], 0);

        // Not found: the error body without held_seq.
        let a = ask(format!("/v1/resolve/{name}"), None).await;
        assert_eq!(a.status, 404);
        pinned(&a.body, &[], r#"{"error":"str","message":"str"}"#);
        assert_eq!(a.body["error"], "not_found");

        // Applied: previous_seq null for a new name.
        let a = ask("/v1/publish".into(), Some(req(2, Some(0)))).await;
        assert_eq!(a.status, 200, "{}", a.body);
        pinned(
            &a.body,
            &[],
            r#"{"name":"str","seq":"u64","outcome":"str","previous_seq":null,"gossip":"str"}"#,
        );
        assert_eq!(a.body["outcome"], "applied");
        assert_eq!(a.body["gossip"], "no_peers");

        // Applied over a held seq: previous_seq is a number.
        let a = ask("/v1/publish".into(), Some(req(3, None))).await;
        assert_eq!(a.status, 200, "{}", a.body);
        pinned(
            &a.body,
            &[],
            r#"{"name":"str","seq":"u64","outcome":"str","previous_seq":"u64","gossip":"str"}"#,
        );
        assert_eq!(a.body["previous_seq"], 2);

        // Duplicate: no previous_seq.
        let a = ask("/v1/publish".into(), Some(req(3, None))).await;
        assert_eq!(a.status, 200, "{}", a.body);
        pinned(
            &a.body,
            &[],
            r#"{"name":"str","seq":"u64","outcome":"str","gossip":"str"}"#,
        );
        assert_eq!(a.body["outcome"], "duplicate");
        assert_eq!(a.body["gossip"], "none");

        // Stale, and a compare-and-set mismatch: 409 with held_seq.
        let a = ask("/v1/publish".into(), Some(req(1, None))).await;
        assert_eq!(a.status, 409);
        pinned(
            &a.body,
            &[],
            r#"{"error":"str","message":"str","held_seq":"u64"}"#,
        );
        assert_eq!(
            (a.body["error"].clone(), a.body["held_seq"].clone()),
            ("stale".into(), 3.into())
        );
        let a = ask("/v1/publish".into(), Some(req(4, Some(2)))).await;
        assert_eq!(a.status, 409);
        assert_eq!(a.body["error"], "cas_mismatch");
        assert_eq!(a.body["held_seq"], 3);

        // Bad JSON: 400 without held_seq.
        let a = ask("/v1/publish".into(), Some(json!({"nope": 1}))).await;
        assert_eq!(a.status, 400);
        pinned(&a.body, &[], r#"{"error":"str","message":"str"}"#);
        assert_eq!(a.body["error"], "bad_json");

        let a = ask(format!("/v1/seq/{name}"), None).await;
        pinned(&a.body, &[], r#"{"name":"str","seq":"u64","hash":"str"}"#);
        assert_eq!(a.body["seq"], 3);

        let a = ask(format!("/v1/resolve/{name}.dpin."), None).await;
        assert_eq!(a.status, 200);
        pinned(
            &a.body,
            &[],
            r#"{"name":"str","seq":"u64","hash":"str","expires_at_ms":"u64",
                "endpoints":[{"host":"str","port":"u64","transport":"str","weight":"u64",
                              "healthy":"bool","health":"str"}],
                "peer_id":"str","cut_off":"bool"}"#,
        );
        assert_eq!(a.body["name"], name.as_str());
        assert_eq!(
            a.body["endpoints"][0],
            json!({"host":"127.0.0.1","port":80,"transport":"tcp","weight":1,
                   "healthy":false,"health":"unknown"})
        );

        let a = ask("/v1/status".into(), None).await;
        assert_eq!(a.status, 200);
        pinned(
            &a.body,
            &["counters", "endpoints", "dns", "blobs", "offers", "nat"],
            r#"{"peer_id":"str","listen_addrs":[],"peers":[],
                "reach":{"known":"u64","alive":"u64","cut_off":"bool"},
                "records":"u64","live_records":"u64","digest":"str","uptime_s":"f64",
                "corrupt_entries":"u64","counters":"object","endpoints":"object",
                "dns":"object","blobs":"object","offers":"object","nat":"object"}"#,
        );
        assert_eq!(a.body["records"], 1);
        // (No event loop runs here, so the listen addresses and peers are empty.)

        let a = ask("/v1/offers?kind=storage".into(), None).await;
        assert_eq!(a.status, 200);
        pinned(&a.body, &[], r#"{"offers":[]}"#);

        let a = ask(format!("/v1/blobs/{}/info", "ab".repeat(32)), None).await;
        assert_eq!(a.status, 404);
        pinned(&a.body, &[], r#"{"error":"str","message":"str"}"#);
    }
}
