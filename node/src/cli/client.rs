//! The client subcommands (`publish`, `sign`, `resolve`, `status`, `offers`, `put`, `get`,
//! `blob`): each asks a node's HTTP API through [`crate::client::Client`], reads the answer
//! through the typed contract ([`crate::contract`]) and prints it, human-readable or as one
//! JSON object with `--json`.

use super::*;
pub(super) fn api_error(a: &Answer) -> anyhow::Error {
    let e = a.error();
    let kind = if e.error.is_empty() {
        "error"
    } else {
        &e.error
    };
    anyhow::anyhow!(
        "{} refused: {kind}: {} (HTTP {})",
        a.addr,
        e.message,
        a.status
    )
}

/// The node's answer as received, plus `answered_by`: what `--json` prints (passed on as
/// JSON, so fields a newer node adds reach scripts too).
pub(super) fn with_answered_by(a: &Answer) -> Value {
    let mut out = a.body.clone();
    out["answered_by"] = json!(a.addr);
    out
}

/// What a writer wants to write, before a seq is chosen.
pub(super) struct Write<'a> {
    pub(super) key: &'a Path,
    pub(super) label: &'a str,
    pub(super) endpoints: &'a [String],
    pub(super) ttl: Option<&'a str>,
    pub(super) tombstone: bool,
}

impl Write<'_> {
    fn key(&self) -> Result<ZoneKey> {
        let text = std::fs::read_to_string(self.key)
            .with_context(|| format!("cannot read key file {}", self.key.display()))?;
        Ok(ZoneKey::from_key_file(&text)?)
    }

    fn content(&self) -> Result<Content> {
        if self.tombstone {
            if !self.endpoints.is_empty() {
                bail!("--tombstone takes no endpoints");
            }
            return Ok(Content::Tombstone);
        }
        if self.endpoints.is_empty() {
            bail!("give at least one ENDPOINT (HOST:PORT), or --tombstone to delete");
        }
        let eps = self
            .endpoints
            .iter()
            .map(|e| {
                e.parse::<Endpoint>()
                    .with_context(|| format!("bad endpoint {e:?}"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Content::Endpoints(eps))
    }

    /// The TTL in ms: given, or 24 h for records and the maximum (30 d) for tombstones, so a
    /// deletion outlives every record it deletes.
    fn ttl_ms(&self) -> Result<u64> {
        match self.ttl {
            Some(t) => Ok(u64::try_from(parse_duration(t)?.as_millis()).unwrap_or(u64::MAX)),
            None if self.tombstone => Ok(dpin_protocol::MAX_TTL_MS),
            None => Ok(24 * 3_600_000),
        }
    }

    fn sign(&self, key: &ZoneKey, seq: u64, now: u64) -> Result<dpin_protocol::SignedRecord> {
        Ok(crate::publish::sign(
            key,
            self.label,
            self.content()?,
            seq,
            self.ttl_ms()?,
            now,
        )?)
    }
}

pub(super) fn print_published(a: &Answer, json_out: bool) -> Result<()> {
    if json_out {
        out!("{}", with_answered_by(a));
    } else {
        let p: PublishAnswer = a.decode().map_err(anyhow::Error::msg)?;
        out!(
            "{} seq {} ({} by {})",
            p.name,
            p.seq,
            p.outcome.as_str(),
            a.addr
        );
    }
    Ok(())
}

/// The compare-and-set preconditions given on the command line.
pub(super) struct Precondition {
    /// `--if-seq`.
    pub(super) seq: Option<u64>,
    /// `--if-hash` (hex, checked before anything is signed).
    pub(super) hash: Option<String>,
}

pub(super) async fn publish(
    client: &Client,
    write: &Write<'_>,
    cas: Precondition,
    seq: Option<u64>,
    json_out: bool,
) -> Result<()> {
    let Precondition {
        seq: if_seq,
        hash: if_hash,
    } = cas;
    if write.tombstone && if_seq.is_none() && if_hash.is_none() && seq.is_none() {
        bail!("deleting needs --if-hash HASH, the record you are deleting (`dpin resolve` prints its hash), or --if-seq N, or a pinned --seq, or a plan from `dpin sign --tombstone`; a bare --tombstone would delete whatever is there, even a newer write");
    }
    let key = write.key()?;
    let name = format!("{}.{}", write.label, key.zone());
    let now = now_ms();
    if let Some(hash) = if_hash {
        let hash = crate::publish::parse_hash(&hash)?;
        let floors = crate::publish::read_floors(client, &name).await?;
        let seq = match (seq, if_seq) {
            (Some(s), _) => s,
            (None, Some(expected)) => crate::publish::next_seq(expected, now)?,
            (None, None) => {
                crate::publish::next_seq(crate::publish::seq_of(&floors, &name, &hash)?, now)?
            }
        };
        let record = write.sign(&key, seq, now)?;
        let answer = crate::publish::enact_if_hash(client, &floors, &record, &hash, if_seq).await?;
        return print_published(&answer, json_out);
    }
    let answer = match (seq, if_seq) {
        // A seq fixed in advance behaves like a plan: the merge rule decides.
        (Some(seq), None) => {
            let record = write.sign(&key, seq, now)?;
            crate::publish::enact_plan(client, &record).await?
        }
        (seq, Some(expected)) => {
            let floors = crate::publish::read_floors(client, &name)
                .await
                .unwrap_or_default();
            let seq = match seq {
                Some(s) => s,
                None => crate::publish::next_seq(expected, now)?,
            };
            let record = write.sign(&key, seq, now)?;
            crate::publish::enact_cas(client, &floors, &record, expected).await?
        }
        // The default: compare-and-set against the highest seq any listed peer holds, so a
        // concurrent or newer write is never silently overwritten.
        (None, None) => {
            let floors = crate::publish::read_floors(client, &name).await?;
            let held = crate::publish::highest(&floors);
            let record = write.sign(&key, crate::publish::next_seq(held, now)?, now)?;
            crate::publish::enact_cas(client, &floors, &record, held).await?
        }
    };
    print_published(&answer, json_out)
}

pub(super) async fn sign_plan(
    api: Vec<String>,
    timeout_ms: u64,
    write: &Write<'_>,
    seq: Option<u64>,
    out: &Path,
    json_out: bool,
) -> Result<()> {
    let key = write.key()?;
    let name = format!("{}.{}", write.label, key.zone());
    let now = now_ms();
    let (seq, planned_over) = match seq {
        Some(s) => (s, 0),
        None => {
            let client = Client::new(api, Duration::from_millis(timeout_ms))?;
            let held = crate::publish::highest(&crate::publish::read_floors(&client, &name).await?);
            (crate::publish::next_seq(held, now)?, held)
        }
    };
    let record = write.sign(&key, seq, now)?;
    let plan = crate::publish::Plan::new(&record, planned_over);
    plan.write(out)?;
    if json_out {
        out!("{}", serde_json::to_string(&plan)?);
    } else {
        out!("{name} seq {seq} planned in {}", out.display());
    }
    Ok(())
}

pub(super) async fn publish_plan(
    client: &Client,
    path: &Path,
    if_hash: Option<&str>,
    json_out: bool,
) -> Result<()> {
    let plan = crate::publish::Plan::read(path)?;
    let record = plan.record()?;
    let answer = match if_hash {
        // A clean-up plan that names the record it deletes: enacted only while that record is
        // the winner (the plan's own seq still decides against anything newer).
        Some(hash) => {
            let hash = crate::publish::parse_hash(hash)?;
            let floors = crate::publish::read_floors(client, &record.name()).await?;
            crate::publish::enact_if_hash(client, &floors, &record, &hash, None).await?
        }
        None => crate::publish::enact_plan(client, &record).await?,
    };
    print_published(&answer, json_out)
}

/// Resolves through the first peer that answers without saying it is cut off from the
/// network; a peer that says so is passed over for the next, and its answer is used only if
/// no other peer answers (never fail closed), with a warning that it may be stale.
///
/// With `wait` = (seq, ms), each peer is asked to hold the answer until it has the name at
/// that seq or later, at most ms (`?wait_seq=`, a blocking read).
pub(super) async fn resolve(
    client: &Client,
    name: &str,
    wait: Option<(u64, u64)>,
    json_out: bool,
) -> Result<()> {
    let query = wait.map_or(String::new(), |(seq, ms)| {
        format!("?wait_seq={seq}&wait_ms={ms}")
    });
    let settled = client
        .first_connected(&format!("/v1/resolve/{name}{query}"))
        .await?;
    let a = &settled.answer;
    if a.status != 200 {
        return Err(api_error(a));
    }
    let mut out = with_answered_by(a);
    if let Some((want, ms)) = wait {
        let held = a.decode::<ResolveAnswer>().map_or(0, |r| r.seq);
        out["wait_reached"] = json!(held >= want);
        if held < want {
            eprintln!(
                "warning: waited {ms} ms; {} holds seq {held}, not yet {want}",
                a.addr
            );
        }
    }
    if !settled.passed_over.is_empty() {
        // Peers whose answers said they were cut off, in the order asked.
        out["passed_over_cut_off"] = json!(settled.passed_over);
    }
    for p in &settled.passed_over {
        eprintln!("note: passed over {p}: it says it is cut off from the network");
    }
    if settled.cut_off {
        eprintln!(
            "warning: {} says it is cut off from the network (it hears too few of its peers);              this answer may be stale, and no other --api peer answered",
            a.addr
        );
    }
    if json_out {
        out!("{out}");
        return Ok(());
    }
    let r: ResolveAnswer = a.decode().map_err(anyhow::Error::msg)?;
    out!(
        "{} seq {} (answered by {}{})",
        r.name,
        r.seq,
        a.addr,
        if settled.cut_off {
            ", which says it is cut off: may be stale"
        } else {
            ""
        }
    );
    // The record's content hash: what a clean-up names to delete exactly this record
    // (`dpin publish --tombstone --if-hash HASH`).
    if let Some(hash) = &r.hash {
        out!("  hash {hash}");
    }
    for e in &r.endpoints {
        let host = if e.host.contains(':') {
            format!("[{}]", e.host)
        } else {
            e.host.clone()
        };
        out!(
            "  {host}:{}/{} weight {}{}",
            e.port,
            e.transport,
            e.weight,
            // Three states: healthy, unknown (not probed, e.g. a private address the probe
            // policy refuses), unhealthy.
            match e.health.as_str() {
                "unhealthy" => " UNHEALTHY",
                "unknown" => " (health unknown)",
                _ => "",
            }
        );
    }
    Ok(())
}

pub(super) async fn status(client: &Client, json_out: bool) -> Result<()> {
    let a = client
        .first("/v1/status", None, |a| a.status == 200)
        .await?;
    if a.status != 200 {
        return Err(api_error(&a));
    }
    if json_out {
        out!("{}", with_answered_by(&a));
        return Ok(());
    }
    let st: StatusAnswer = a.decode().map_err(anyhow::Error::msg)?;
    out!("peer {} (answered by {})", st.peer_id, a.addr);
    out!(
        "records {}  live {}  digest {}",
        st.records,
        st.live_records,
        st.digest
    );
    let now = now_ms();
    for p in &st.peers {
        let state = if p.state.is_empty() {
            "UNKNOWN".to_owned()
        } else {
            p.state.to_uppercase()
        };
        let ago = format!(
            " for {:.1}s",
            now.saturating_sub(p.since_ms) as f64 / 1000.0
        );
        let rtt = p
            .rtt_ms
            .map(|r| format!(", rtt {r:.1} ms"))
            .unwrap_or_default();
        out!("  {} {state}{ago}{rtt}", p.peer_id);
    }
    Ok(())
}

pub(super) async fn offers(
    client: &Client,
    filter: &crate::offers::OfferFilter,
    json_out: bool,
) -> Result<()> {
    let mut query = Vec::new();
    let f = serde_json::to_value(filter)?;
    for (k, v) in f.as_object().into_iter().flatten() {
        match v {
            Value::Null => {}
            Value::String(s) => query.push(format!("{k}={s}")),
            other => query.push(format!("{k}={other}")),
        }
    }
    let path = format!("/v1/offers?{}", query.join("&"));
    let a = client.first(&path, None, |a| a.status == 200).await?;
    if a.status != 200 {
        return Err(api_error(&a));
    }
    if json_out {
        out!("{}", with_answered_by(&a));
        return Ok(());
    }
    let list = a
        .decode::<OffersAnswer>()
        .map_err(anyhow::Error::msg)?
        .offers;
    out!("{} offers (answered by {})", list.len(), a.addr);
    for o in list {
        let price = o.price_milli as f64 / 1000.0;
        let what = if o.kind == "storage" {
            format!(
                "storage {} free of {}",
                human_bytes(o.free_bytes.unwrap_or(0)),
                human_bytes(o.capacity_bytes.unwrap_or(0))
            )
        } else {
            format!(
                "compute {} cores, {} memory, {} GPUs",
                o.cores.unwrap_or(0),
                human_bytes(o.memory_bytes.unwrap_or(0)),
                o.gpus.unwrap_or(0)
            )
        };
        out!("  {:<8.3} {:<12} {} {}", price, o.region, o.peer_id, what);
    }
    Ok(())
}

pub(super) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

pub(super) async fn put(client: &Client, file: &Path, replicas: u8, json_out: bool) -> Result<()> {
    let meta =
        std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", file.display());
    }
    let mut last = None;
    for addr in client.addrs() {
        let f = tokio::fs::File::open(file)
            .await
            .with_context(|| format!("cannot read {}", file.display()))?;
        match client
            .upload(
                addr,
                &format!("/v1/blobs?replicas={replicas}"),
                f,
                meta.len(),
            )
            .await
        {
            Ok(a) if a.status == 200 => {
                if json_out {
                    out!("{}", with_answered_by(&a));
                } else {
                    let put: BlobPutAnswer = a.decode().map_err(anyhow::Error::msg)?;
                    out!("{}", put.hash);
                    eprintln!(
                        "stored {} bytes in {} chunks on {} holders (via {})",
                        put.size,
                        put.chunks,
                        put.holders.len(),
                        a.addr
                    );
                }
                return Ok(());
            }
            Ok(a) if a.status < 500 => return Err(api_error(&a)),
            Ok(a) => last = Some(api_error(&a)),
            Err(e) => last = Some(anyhow::anyhow!("{addr}: {e}")),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no --api address")))
}

pub(super) async fn get(client: &Client, hash: &str, out: &Path) -> Result<()> {
    let root = parse_root(hash)?;
    let info = client
        .first(&format!("/v1/blobs/{hash}/info"), None, |a| a.status == 200)
        .await?;
    if info.status != 200 {
        return Err(api_error(&info));
    }
    let manifest: BlobInfoAnswer = info.decode().map_err(anyhow::Error::msg)?;
    let index = hex::decode(&manifest.index).context("peer sent a malformed index")?;
    if dpin_protocol::blob::root_of(&index) != root {
        bail!("{} sent an index that does not match the hash", info.addr);
    }
    let chunk_size = manifest.chunk_size as usize;
    let size = manifest.size;
    if chunk_size == 0 {
        bail!("{} sent a manifest without a chunk size", info.addr);
    }
    let part = out.with_extension("part");
    let mut errors = Vec::new();
    for addr in client.addrs() {
        let path = format!("/v1/blobs/{hash}");
        match client
            .download(addr, &path, &part, &index, chunk_size, size)
            .await
        {
            Ok(()) => {
                std::fs::rename(&part, out)
                    .with_context(|| format!("cannot write {}", out.display()))?;
                eprintln!("{size} bytes verified against {hash} (from {addr})");
                return Ok(());
            }
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    let _ = std::fs::remove_file(&part);
    bail!("no peer delivered a verified copy: {}", errors.join("; "))
}

pub(super) fn parse_root(hash: &str) -> Result<[u8; 32]> {
    let bytes = hex::decode(hash.trim()).context("the hash must be 64 hex characters")?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("the hash must be 64 hex characters"))
}

pub(super) async fn blob_info(client: &Client, hash: &str, json_out: bool) -> Result<()> {
    parse_root(hash)?;
    let a = client
        .first(&format!("/v1/blobs/{hash}/info"), None, |a| a.status == 200)
        .await?;
    if a.status != 200 {
        return Err(api_error(&a));
    }
    if json_out {
        let mut out = with_answered_by(&a);
        if let Some(o) = out.as_object_mut() {
            o.remove("index");
        }
        out!("{out}");
        return Ok(());
    }
    let info: BlobInfoAnswer = a.decode().map_err(anyhow::Error::msg)?;
    out!(
        "{hash}: {} bytes, {} chunks, {} replicas wanted, {} complete copies (answered by {})",
        info.size,
        info.chunks,
        info.replicas,
        info.complete_copies,
        a.addr
    );
    for h in &info.holders {
        out!("  {} {}/{} chunks", h.peer_id, h.chunks, h.total);
    }
    Ok(())
}
