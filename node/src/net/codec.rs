//! The request-response codec of anti-entropy and probes ([`SyncCodec`]), with the bounds on
//! inbound buffering (issue 12): requests are read in chunks under a shared byte budget
//! ([`InboundBudget`]) held until the node answers ([`InboundGuard`]), and at most
//! `MAX_INBOUND_PER_CONNECTION` are in progress per connection ([`InboundLimits`]). Kept
//! apart because it is the one place that reads untrusted bytes off a stream.

use super::*;
/// The inbound buffering bounds shared by every connection's sync codec, and their counters.
#[derive(Debug)]
pub(super) struct InboundBudget {
    pub(super) max_bytes: usize,
    /// Bytes of inbound requests held now (read, not yet answered or dropped).
    pub(super) buffered: AtomicUsize,
    pub(super) over_connection_limit: AtomicU64,
    pub(super) over_byte_budget: AtomicU64,
}

impl InboundBudget {
    pub(super) fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            buffered: AtomicUsize::new(0),
            over_connection_limit: AtomicU64::new(0),
            over_byte_budget: AtomicU64::new(0),
        }
    }

    /// Takes `n` bytes of the budget, or returns false (taking nothing).
    pub(super) fn take(&self, n: usize) -> bool {
        self.buffered
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                b.checked_add(n).filter(|t| *t <= self.max_bytes)
            })
            .is_ok()
    }

    pub(super) fn give_back(&self, n: usize) {
        let _ = self
            .buffered
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some(b.saturating_sub(n))
            });
    }
}

/// One inbound request's hold on the buffering bounds: its bytes in the shared budget and its
/// slot on its connection. Released when dropped (with the [`ResponseChannel`], after the
/// answer is handed to libp2p, or on any failure).
#[derive(Debug)]
pub(super) struct InboundGuard {
    pub(super) budget: Arc<InboundBudget>,
    pub(super) connection: Arc<AtomicUsize>,
    pub(super) bytes: usize,
}

impl Drop for InboundGuard {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
        self.connection.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The bounds a codec enforces on inbound requests. `connection` is `None` in the template
/// codec given to the behaviour; see [`SyncCodec`]'s `Clone`.
#[derive(Debug)]
pub(super) struct InboundLimits {
    pub(super) budget: Arc<InboundBudget>,
    pub(super) per_connection: usize,
    pub(super) connection: Option<Arc<AtomicUsize>>,
}

/// A request as carried through request-response: the bytes, and for an inbound request on a
/// bounded protocol its hold on the buffering bounds.
#[derive(Debug)]
pub(super) struct Payload {
    pub(super) data: Vec<u8>,
    pub(super) guard: Option<InboundGuard>,
}

impl Payload {
    pub(super) fn outbound(data: Vec<u8>) -> Self {
        Self { data, guard: None }
    }
}

/// Reads one inbound request (everything up to EOF, at most `max` bytes) under the bounds:
/// refused at once if the connection already has `per_connection` requests in progress;
/// refused midway if the shared budget has no room for the next chunk. Both refusals are
/// counted; the stream is then dropped, which the requester sees as a failed request.
pub(super) async fn read_bounded<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    max: usize,
    budget: Arc<InboundBudget>,
    connection: Arc<AtomicUsize>,
    per_connection: usize,
) -> io::Result<Payload> {
    if connection.fetch_add(1, Ordering::AcqRel) >= per_connection {
        connection.fetch_sub(1, Ordering::AcqRel);
        budget.over_connection_limit.fetch_add(1, Ordering::Relaxed);
        return Err(io::Error::other(format!(
            "more than {per_connection} inbound requests on one connection"
        )));
    }
    let mut guard = InboundGuard {
        budget: budget.clone(),
        connection,
        bytes: 0,
    };
    // `buf` is zeroed once, [`READ_CHUNK`] at a time, and read into up to `filled`. Zeroing a
    // whole chunk for every read and truncating after it zeroed bytes again on every read
    // that returned less than a chunk: a read from a yamux stream returns what it has
    // buffered, as little as one frame (16 KiB), and a holder reads 1 MiB blob chunks.
    let mut buf = Vec::new();
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            // One byte beyond the cap detects an oversize payload without buffering it.
            let want = READ_CHUNK.min(max + 1 - filled);
            if !budget.take(want) {
                budget.over_byte_budget.fetch_add(1, Ordering::Relaxed);
                return Err(io::Error::other(format!(
                    "inbound request buffers are full ({} bytes)",
                    budget.max_bytes
                )));
            }
            // Held (and given back with the guard) from here on.
            guard.bytes += want;
            buf.resize(filled + want, 0);
        }
        let n = io.read(&mut buf[filled..]).await?;
        filled += n;
        if filled > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("payload exceeds {max} bytes"),
            ));
        }
        if n == 0 {
            // The room taken beyond the payload goes back now; the payload's stays held
            // until the node answers.
            budget.give_back(guard.bytes - filled);
            guard.bytes = filled;
            buf.truncate(filled);
            return Ok(Payload {
                data: buf,
                guard: Some(guard),
            });
        }
    }
}

/// Length-capped codec for opaque request/response bytes. Each side writes its payload and
/// closes its write half (request-response does so), so the payload is simply everything up
/// to EOF; reading one byte more than the cap detects oversize payloads without buffering
/// them. Hand-written instead of cbor because cbor+serde encodes `Vec<u8>` as an integer
/// array (up to 2x bigger) and the trait is implemented without `async-trait` to avoid a
/// dependency (this is what `#[async_trait]` expands to).
///
/// With `inbound` set it also enforces the inbound buffering bounds ([`read_bounded`]).
/// request-response clones the codec given to the behaviour once per connection (into the
/// connection's handler) and that one once per stream, so `Clone` gives a clone of the
/// template a fresh per-connection counter and clones of a connection's codec share it: that
/// is how the codec knows which requests share a connection.
#[derive(Debug)]
pub(super) struct SyncCodec {
    pub(super) max_bytes: usize,
    pub(super) inbound: Option<InboundLimits>,
}

impl Clone for SyncCodec {
    fn clone(&self) -> Self {
        Self {
            max_bytes: self.max_bytes,
            inbound: self.inbound.as_ref().map(|l| InboundLimits {
                budget: l.budget.clone(),
                per_connection: l.per_connection,
                connection: Some(
                    l.connection
                        .clone()
                        .unwrap_or_else(|| Arc::new(AtomicUsize::new(0))),
                ),
            }),
        }
    }
}

pub(super) async fn read_capped<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    max: usize,
) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(max as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("payload exceeds {max} bytes"),
        ));
    }
    Ok(buf)
}

impl request_response::Codec for SyncCodec {
    type Protocol = StreamProtocol;
    type Request = Payload;
    type Response = Vec<u8>;

    fn read_request<'a, 'b, 'c, 'f, T>(
        &'a mut self,
        _: &'b StreamProtocol,
        io: &'c mut T,
    ) -> BoxFuture<'f, io::Result<Payload>>
    where
        T: AsyncRead + Unpin + Send + 'f,
        'a: 'f,
        'b: 'f,
        'c: 'f,
        Self: 'f,
    {
        let max = self.max_bytes;
        match &self.inbound {
            Some(limits) => {
                let budget = limits.budget.clone();
                let per_connection = limits.per_connection;
                // Only the template lacks a counter, and libp2p never reads with it.
                let connection = limits
                    .connection
                    .clone()
                    .unwrap_or_else(|| Arc::new(AtomicUsize::new(0)));
                Box::pin(read_bounded(io, max, budget, connection, per_connection))
            }
            None => Box::pin(async move { read_capped(io, max).await.map(Payload::outbound) }),
        }
    }

    fn read_response<'a, 'b, 'c, 'f, T>(
        &'a mut self,
        _: &'b StreamProtocol,
        io: &'c mut T,
    ) -> BoxFuture<'f, io::Result<Vec<u8>>>
    where
        T: AsyncRead + Unpin + Send + 'f,
        'a: 'f,
        'b: 'f,
        'c: 'f,
        Self: 'f,
    {
        Box::pin(read_capped(io, self.max_bytes))
    }

    fn write_request<'a, 'b, 'c, 'f, T>(
        &'a mut self,
        _: &'b StreamProtocol,
        io: &'c mut T,
        req: Payload,
    ) -> BoxFuture<'f, io::Result<()>>
    where
        T: AsyncWrite + Unpin + Send + 'f,
        'a: 'f,
        'b: 'f,
        'c: 'f,
        Self: 'f,
    {
        Box::pin(async move { io.write_all(&req.data).await })
    }

    fn write_response<'a, 'b, 'c, 'f, T>(
        &'a mut self,
        _: &'b StreamProtocol,
        io: &'c mut T,
        res: Vec<u8>,
    ) -> BoxFuture<'f, io::Result<()>>
    where
        T: AsyncWrite + Unpin + Send + 'f,
        'a: 'f,
        'b: 'f,
        'c: 'f,
        Self: 'f,
    {
        Box::pin(async move { io.write_all(&res).await })
    }
}
