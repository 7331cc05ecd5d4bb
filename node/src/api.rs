//! HTTP API (axum). JSON in, JSON out; errors are `{"error": kind, "message": text}` with the
//! status codes of SPEC §5. Routes:
//!
//! | method | path | what |
//! |---|---|---|
//! | POST | `/v1/publish` | body `{"record": HEX, "if_seq": N?}`: apply a signed record, then gossip it |
//! | GET | `/v1/resolve/{name}` | the live record for `label.zone` (also `label.zone.dpin`) |
//! | GET | `/v1/seq/{name}` | highest seq held for a name (0 if unknown) — writers pick the next seq from it |
//! | GET | `/v1/offers` | live offers, cheapest first; query filters `kind`, `region`, `min_free`, `min_cores`, `min_memory`, `min_gpus`, `max_price` |
//! | POST | `/v1/blobs?replicas=K` | raw body: store a file on K storage nodes → `{"hash","size","chunks","holders"}` |
//! | GET | `/v1/blobs/{hash}` | the file's bytes, every chunk verified, fetched from any live holder |
//! | GET | `/v1/blobs/{hash}/info` | manifest, chunk index (hex) and which nodes hold how many chunks |
//! | GET | `/v1/status` | peer id, listen addresses, peers with liveness, record count, store digest |
//! | GET | `/metrics` | counters in Prometheus text format |
//!
//! Bodies over [`MAX_BODY_BYTES`] get 413 before they are read in full.

use std::net::SocketAddr;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dpin_protocol::store::Store;
use dpin_protocol::{Endpoint, Outcome, SignedRecord};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::health::HealthState;
use crate::liveness::PeerStatus;
use crate::net::PublishStatus;
use crate::node::{now_ms, Node};

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

    fn held(mut self, seq: u64) -> Self {
        self.held_seq = Some(seq);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.kind, "message": self.message});
        if let Some(seq) = self.held_seq {
            body["held_seq"] = json!(seq);
        }
        (self.status, Json(body)).into_response()
    }
}

/// Publish request body.
#[derive(Debug, Deserialize, Serialize)]
pub struct PublishBody {
    /// The signed record's wire bytes, hex.
    pub record: String,
    /// Compare-and-set: apply only if the held seq equals this (0 = name unknown).
    #[serde(default)]
    pub if_seq: Option<u64>,
}

/// One endpoint in a resolve answer.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
pub struct EndpointJson {
    /// IP literal or hostname.
    pub host: String,
    /// Port.
    pub port: u16,
    /// `tcp` or `udp`.
    pub transport: String,
    /// Selection weight.
    pub weight: u16,
    /// Whether a probe from this node reached the endpoint recently (SPEC §5). `false` covers
    /// both unhealthy and unknown; `health` tells them apart.
    pub healthy: bool,
    /// `healthy`, `unknown` (not probed: new, or refused by the probe policy) or `unhealthy`.
    #[serde(default)]
    pub health: String,
}

impl EndpointJson {
    /// JSON form of a record endpoint.
    pub fn from_endpoint(e: &Endpoint, health: HealthState) -> Self {
        Self {
            host: e.host.to_string(),
            port: e.port,
            transport: e.transport.as_str().to_owned(),
            weight: e.weight,
            healthy: health == HealthState::Healthy,
            health: health.as_str().to_owned(),
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

/// The router, with state.
pub fn router(node: Node) -> Router {
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
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(node)
}

/// Serves the API on `addr` until the process ends.
pub async fn serve(node: Node, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    axum::serve(listener, router(node)).await
}

/// Binds the API listener (separately, so bind errors are reported at start-up).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

async fn publish(
    State(node): State<Node>,
    body: Result<Json<PublishBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
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
    let name = record.name();
    let seq = record.body.seq;
    let result = node
        .publish(record, body.if_seq)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()))?;
    let gossip = match result.gossip {
        Some(PublishStatus::Sent) => "sent",
        Some(PublishStatus::NoPeers) => "no_peers",
        Some(PublishStatus::Duplicate) => "duplicate",
        None => "none",
    };
    match result.outcome {
        Outcome::Applied { previous_seq } => Ok(Json(json!({
            "name": name, "seq": seq, "outcome": "applied",
            "previous_seq": previous_seq, "gossip": gossip,
        }))),
        Outcome::Duplicate => Ok(Json(json!({
            "name": name, "seq": seq, "outcome": "duplicate", "gossip": gossip,
        }))),
        Outcome::Restored => Ok(Json(json!({
            "name": name, "seq": seq, "outcome": "restored", "gossip": gossip,
        }))),
        Outcome::Conflict { applied: true, .. } => Ok(Json(json!({
            "name": name, "seq": seq, "outcome": "conflict_won", "gossip": gossip,
        }))),
        Outcome::Conflict { applied: false, .. } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("{name} already holds a different record at seq {seq} that wins the tie-break; publish with a higher seq"),
        )
        .held(seq)),
        Outcome::Stale { have, got } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "stale",
            format!("{name} is at seq {have}; seq {got} is stale, publish with seq > {have}"),
        )
        .held(have)),
        Outcome::CasMismatch { expected, actual } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "cas_mismatch",
            format!("{name} is at seq {actual}, not the expected {expected}"),
        )
        .held(actual)),
        Outcome::Invalid(e) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            e.to_string(),
        )),
    }
}

async fn resolve(
    State(node): State<Node>,
    Path(raw): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let name = normalize_name(&raw)?;
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
    Ok(Json(json!({
        "name": name,
        "seq": record.body.seq,
        "expires_at_ms": record.body.expires_at_ms,
        "endpoints": endpoints,
        "peer_id": node.0.net.local_peer_id().to_string(),
    })))
}

async fn seq(
    State(node): State<Node>,
    Path(raw): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let name = normalize_name(&raw)?;
    let floor = node.read_store(|s| s.entry(&name).map(|e| e.floor));
    let seq = floor.map_or(0, |f| f.seq);
    let hash = floor.map(|f| hex::encode(f.hash));
    Ok(Json(json!({"name": name, "seq": seq, "hash": hash})))
}

async fn status(State(node): State<Node>) -> Json<serde_json::Value> {
    let now = now_ms();
    let (records, live, digest, corrupt) = node.read_store(|s| {
        (
            s.len(),
            s.mem().live_count(now),
            s.digest().root_hex(),
            s.corrupt_on_load(),
        )
    });
    let mono = node.mono_ms();
    let peers: Vec<serde_json::Value> = node
        .peers()
        .into_iter()
        .map(|(id, st)| {
            json!({
                "peer_id": id.to_string(),
                "alive": st.status != PeerStatus::Down,
                "state": st.status.as_str(),
                "connected": st.connected,
                // Wall-clock time of the last change, from the detector's monotonic clock.
                "since_ms": now.saturating_sub(mono.saturating_sub(st.since_ms)),
                "rtt_ms": st.rtt.map(|d| d.as_secs_f64() * 1000.0),
            })
        })
        .collect();
    let listen: Vec<String> = node
        .0
        .listen_addrs
        .lock()
        .map(|a| a.iter().map(ToString::to_string).collect())
        .unwrap_or_default();
    Json(json!({
        "peer_id": node.0.net.local_peer_id().to_string(),
        "listen_addrs": listen,
        "peers": peers,
        "records": records,
        "live_records": live,
        "digest": digest,
        "uptime_s": node.0.started.elapsed().as_secs_f64(),
        "corrupt_entries": corrupt,
        "counters": node.0.metrics.to_json(),
        "endpoints": node.0.health.to_json(),
        "dns": crate::dns::stats().to_json(),
    }))
}

async fn metrics(State(node): State<Node>) -> String {
    let mut out = node.0.metrics.render();
    out.push_str(&node.0.health.render());
    out.push_str(&crate::dns::stats().render());
    out
}

async fn offers(
    State(node): State<Node>,
    query: Result<
        axum::extract::Query<crate::offers::OfferFilter>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<Json<serde_json::Value>, ApiError> {
    let axum::extract::Query(filter) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let list = crate::offers::list(&node, &filter, now_ms());
    Ok(Json(json!({"offers": list})))
}

#[derive(Debug, Deserialize)]
struct PutQuery {
    replicas: Option<u8>,
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

fn parse_hash(raw: &str) -> Result<[u8; 32], ApiError> {
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

async fn put_blob(
    State(node): State<Node>,
    axum::extract::Query(q): axum::extract::Query<PutQuery>,
    body: axum::body::Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    let replicas = q.replicas.unwrap_or(3);
    if replicas == 0 || replicas > dpin_protocol::record::MAX_REPLICAS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_replicas",
            format!("replicas must be 1-{}", dpin_protocol::record::MAX_REPLICAS),
        ));
    }
    let key = node.0.node_key.get().cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting",
            "node key not ready",
        )
    })?;
    let tmp_dir = node.0.data_dir.join("tmp");
    let io =
        |e: std::io::Error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "io", e.to_string());
    tokio::fs::create_dir_all(&tmp_dir).await.map_err(io)?;
    let path = tmp_dir.join(format!("upload-{}", rand::random::<u64>()));
    let result = async {
        let mut f = tokio::fs::File::create(&path).await.map_err(io)?;
        let mut stream = body.into_data_stream();
        let mut total = 0u64;
        while let Some(chunk) = stream.next().await {
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
        crate::blobs::put(&node, &key, &path, usize::from(replicas))
            .await
            .map_err(blob_error)
    }
    .await;
    let _ = tokio::fs::remove_file(&path).await;
    let r = result?;
    Ok(Json(json!(r)))
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
    Ok((root, m, index))
}

async fn get_blob(
    State(node): State<Node>,
    Path(raw): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    let (root, _, index) = blob_lookup(&node, &raw).await?;
    // A producer fetches (and verifies) chunks two ahead of the client; a chunk no holder can
    // provide ends the body early, which the client sees as a short, failed download.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(2);
    let candidates: Vec<_> = crate::blobs::placement(&node, &root, index.size)
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    tokio::spawn(async move {
        for i in 0..index.chunks() {
            let r = crate::blobs::fetch_chunk(&node, &root, &index, i, &candidates)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()));
            let failed = r.is_err();
            if tx.send(r).await.is_err() || failed {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
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
) -> Result<Json<serde_json::Value>, ApiError> {
    let (root, m, index) = blob_lookup(&node, &raw).await?;
    let holders = crate::blobs::holders(&node, &root, m.size).await;
    let complete = holders.iter().filter(|(_, c, t)| c == t && *t > 0).count();
    let list: Vec<serde_json::Value> = holders
        .iter()
        .map(|(p, c, t)| json!({"peer_id": p.to_string(), "chunks": c, "total": t}))
        .collect();
    Ok(Json(json!({
        "hash": raw.to_ascii_lowercase(),
        "size": m.size,
        "chunk_size": m.chunk_size,
        "chunks": m.chunks,
        "replicas": m.replicas,
        "complete_copies": complete,
        "holders": list,
        "index": hex::encode(&index.hashes),
    })))
}
