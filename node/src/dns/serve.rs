//! Sockets: binding, the UDP worker threads and the bounded TCP accept loop (RFC 7766).

use super::*;

/// Starts serving DNS on UDP and TCP (same port) and returns the bound address.
pub async fn start(node: Node, config: DnsConfig) -> Result<SocketAddr, DnsError> {
    let (udp, tcp) = bind_pair(config.addr).await?;
    let bind_err = |proto, source| DnsError::Bind {
        proto,
        addr: config.addr,
        source,
    };
    let addr = udp.local_addr().map_err(|e| bind_err("udp", e))?;
    let stats = node.dns_stats().clone();
    let responder = Arc::new(Responder::with_stats(node, &config.aliases, stats));
    let rrl = Arc::new(Rrl::new(config.rrl));
    let workers = udp_workers(config.udp_threads);
    let slice_us = config.udp_slice_us;
    for i in 0..workers {
        let sock = udp.try_clone().map_err(|e| bind_err("udp", e))?;
        let responder = responder.clone();
        let rrl = rrl.clone();
        // At the process's priority, above the runtime's threads (crate::priority).
        crate::priority::spawn_at_base(format!("dpin-dns-udp-{i}"), move || {
            answer_thread_slice(i, slice_us);
            serve_udp(&sock, &responder, &rrl)
        })
        .map_err(|e| bind_err("udp", e))?;
    }
    tokio::spawn(serve_tcp(tcp, responder));
    tracing::info!(%addr, workers, rrl_rate = config.rrl.rate, rrl_slip = config.rrl.slip, "DNS serving on UDP and TCP");
    Ok(addr)
}

/// UDP worker threads: `asked` if not 0, else one per core the process may use (its CPU
/// affinity and quota, [`std::thread::available_parallelism`]), at least 2, at most 4.
///
/// Why at least 2, even on one core: a worker preempted by the node's background threads
/// (gossip, folds) holds no one else up only if another worker can wake on the next datagram
/// and take the socket. One worker per core was tried on one core under 1,000 gossiped updates
/// a second (issue 14, stop 47): it avoids two workers preempting each other mid-batch, and
/// won 10 of 14 alternating hand rounds, but the full `deploy/dns-bench.sh` on the same day
/// gave it a p99 of 1.41, 2.02, 1.73 and 5.20 ms in four runs against 1.23 and 1.40 ms for
/// two (the worst with runs whose median answer waited 0.6 ms behind the background), and it
/// answered a few per cent less at saturation. One is there for whoever measures otherwise
/// (`--dns-udp-threads 1`).
pub(super) fn udp_workers(asked: usize) -> usize {
    if asked > 0 {
        return asked;
    }
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4))
}

/// Asks for a short scheduling slice for the calling answer thread (`--dns-slice-us`, 0:
/// none), and says in the log (the first thread) what the kernel made of it.
///
/// Why: the answer threads run at nice 0 and the background at nice 10 ([`crate::priority`]),
/// but under Linux's EEVDF a thread that already holds the core keeps it until its slice
/// (0.75–3 ms by default) or its virtual deadline runs out, so a query arriving then waits for
/// it. A thread asking for a shorter slice than the running one's preempts it on waking.
///
/// Measured on a node on one core under 1,000 gossiped updates a second (stop 48):
/// - by hand at 90,000 queries a second, a 100 µs slice gave the lower server-side p99 in 8
///   of 8 alternating pairs of three 5 s rounds (medians 1.36–4.25 ms against 1.87–4.61);
/// - `deploy/dns-bench.sh` at a fixed 90,000 a second (`LAT_QPS`, five runs each, back to
///   back): p99 1.135 ms (server-side 1.141) against 1.344 (1.405) with the kernel's 1.4 ms;
/// - at half the max rate, two pairs: 1.083 and 1.078 ms against 1.120 and 1.285.
///
/// The cost: more preemptions at saturation, where the max rate fell from 171–184k to
/// 159–170k queries a second (still 1.3× Knot's or more in the same runs).
pub(super) fn answer_thread_slice(thread: usize, us: u32) {
    if us == 0 {
        return;
    }
    match crate::priority::request_slice(us) {
        Ok(got) if thread == 0 => {
            tracing::info!(
                asked_us = us,
                got_us = got,
                "DNS answer threads' scheduling slice (0: the kernel keeps its own)"
            );
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(%e, asked_us = us, "could not set the DNS answer threads' scheduling slice")
        }
    }
}

/// Binds UDP and TCP on one port. With port 0, UDP picks the port and TCP follows; if TCP finds
/// that port taken (another process holds it for TCP only), both are retried.
async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    // UdpSocket here is the blocking std socket the worker threads share.
    let udp_err = |source| DnsError::Bind {
        proto: "udp",
        addr,
        source,
    };
    let mut last = None;
    for _ in 0..BIND_ATTEMPTS {
        let udp = bind_udp(addr).map_err(udp_err)?;
        let bound = udp.local_addr().map_err(udp_err)?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 && e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
            Err(source) => {
                return Err(DnsError::Bind {
                    proto: "tcp",
                    addr: bound,
                    source,
                })
            }
        }
    }
    Err(DnsError::Bind {
        proto: "tcp",
        addr,
        source: last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)),
    })
}

/// A UDP socket with a large receive buffer: a query burst, or a few milliseconds in which the
/// process is not scheduled, then queues in the kernel instead of being dropped there (the
/// default ~200 KiB holds only a few hundred small datagrams; the kernel caps the request at
/// `net.core.rmem_max`).
pub(super) fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = sock.set_recv_buffer_size(UDP_RECV_BUFFER) {
        tracing::debug!(%e, "cannot enlarge the DNS UDP receive buffer");
    }
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

/// Datagrams one UDP worker receives, and answers, per system call (`recvmmsg`/`sendmmsg`).
/// Under load a call returns as many as are queued, up to this; at low rates it returns one
/// (`MSG_WAITFORONE`), so no query waits for others. At 1M names a worker spent about 60 % of
/// its time in the kernel with one `recvfrom` and one `sendto` per query; batching shares the
/// entry, the socket lookup and the wake-ups among the queries of a batch.
pub(super) const UDP_BATCH: usize = 32;

/// Bytes each receive slot holds: one more than the largest query we answer, so a longer
/// datagram arrives truncated to more than [`MAX_QUERY_BYTES`] and the responder counts it as
/// oversized, as it would the whole datagram.
const UDP_SLOT_BYTES: usize = MAX_QUERY_BYTES + 1;

/// The answer to one datagram from `src` (after the rate limiter), or `None` to send nothing.
/// `now` and `now_ms` are the time (monotonic, and wall-clock Unix ms) the caller read for
/// it: the UDP loop reads the clock once per answer, not at every step of one. An answer the
/// responder built adds its time (from `now`) to `dpin_dns_answer_seconds`; the returned
/// instant is when it ended, the next answer's `now`.
fn answer_datagram<S: Source>(
    packet: &[u8],
    src: SocketAddr,
    responder: &Responder<S>,
    rrl: &Rrl,
    st: &DnsStats,
    now: std::time::Instant,
    now_ms: u64,
) -> (Option<Vec<u8>>, std::time::Instant) {
    inc(&st.udp_queries);
    if src.port() == 0 {
        // Cannot be answered; probably spoofed.
        inc(&st.dropped_malformed);
        return (None, now);
    }
    let out = match rrl.check(src.ip(), now) {
        RrlVerdict::Answer => responder.respond_untimed(packet, Proto::Udp, now_ms),
        RrlVerdict::Slip => {
            // Not an answer: not in the answers' histogram.
            inc(&st.rrl_slipped);
            return (responder.slip(packet), std::time::Instant::now());
        }
        RrlVerdict::Drop => {
            inc(&st.rrl_dropped);
            return (None, now);
        }
    };
    let done = std::time::Instant::now();
    responder.observe_answer(Proto::Udp, done.saturating_duration_since(now));
    (out, done)
}

/// A receive that failed: counted, logged at debug, and, should it persist, not spun on.
fn udp_receive_error(st: &DnsStats, e: &dyn std::fmt::Display) {
    inc(&st.io_errors);
    tracing::debug!(%e, "DNS UDP receive failed");
    // Errors here are per-datagram (e.g. ICMP feedback); should one persist, do not spin.
    std::thread::sleep(Duration::from_millis(1));
}

/// A send that failed: counted and logged at debug. No pause: the next answer goes elsewhere.
fn udp_send_error(st: &DnsStats, e: &dyn std::fmt::Display) {
    inc(&st.io_errors);
    tracing::debug!(%e, "DNS UDP send failed");
}

/// One UDP worker: receive a batch, answer each, send the answers, in a loop on a blocking
/// socket. Never returns.
#[cfg(target_os = "linux")]
pub(super) fn serve_udp<S: Source>(sock: &UdpSocket, responder: &Responder<S>, rrl: &Rrl) {
    use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
    use std::io::{IoSlice, IoSliceMut};
    use std::os::fd::AsRawFd;

    let st = responder.stats();
    let fd = sock.as_raw_fd();
    let stamped = enable_receive_timestamps(sock);
    let mut slots = vec![[0u8; UDP_SLOT_BYTES]; UDP_BATCH];
    let mut recv_headers = receive_headers(stamped);
    let mut send_headers = MultiHeaders::<SockaddrStorage>::preallocate(UDP_BATCH, None);
    // (datagram length, sender, kernel receive time) of the batch just received.
    let mut received: Vec<(usize, Option<SockaddrStorage>, Option<Duration>)> =
        Vec::with_capacity(UDP_BATCH);
    let mut answers: Vec<Vec<u8>> = Vec::with_capacity(UDP_BATCH);
    let mut to: Vec<Option<SockaddrStorage>> = Vec::with_capacity(UDP_BATCH);
    // Receive times of the answered datagrams, for the sojourn histogram.
    let mut answered_at: Vec<Option<Duration>> = Vec::with_capacity(UDP_BATCH);
    loop {
        received.clear();
        {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
                slots.iter_mut().map(|s| [IoSliceMut::new(s)]).collect();
            match recvmmsg(
                fd,
                &mut recv_headers,
                iovs.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(msgs) => {
                    received.extend(msgs.map(|m| (m.bytes, m.address, receive_time(&m))));
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    udp_receive_error(st, &e);
                    continue;
                }
            }
        }
        if stamped && received.iter().any(|r| r.2.is_none()) {
            // The kernel shrinks a header's control length to what it wrote, and nix does not
            // restore it: a datagram that came without a stamp would leave its slot unable to
            // carry one from then on. Fresh headers restore every slot's room.
            recv_headers = receive_headers(stamped);
        }
        answers.clear();
        to.clear();
        answered_at.clear();
        // One clock read per answer (`answer_datagram`), and one wall-clock read per batch.
        let mut now = std::time::Instant::now();
        let now_ms = crate::node::now_ms();
        for (slot, &(n, addr, at)) in slots.iter().zip(&received) {
            let src = addr.as_ref().and_then(|a| {
                a.as_sockaddr_in()
                    .map(|v4| SocketAddr::V4((*v4).into()))
                    .or_else(|| a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into())))
            });
            let (Some(src), Some(packet)) = (src, slot.get(..n)) else {
                // Not from an IP socket address: nothing to answer to.
                inc(&st.udp_queries);
                inc(&st.dropped_malformed);
                continue;
            };
            let (resp, done) = answer_datagram(packet, src, responder, rrl, st, now, now_ms);
            now = done;
            if let Some(resp) = resp {
                answers.push(resp);
                to.push(addr);
                answered_at.push(at);
            }
        }
        // Send them all; after a failed datagram (counted), go on with the next one.
        let mut start = 0;
        while start < answers.len() {
            let iovs: Vec<[IoSlice<'_>; 1]> =
                answers[start..].iter().map(|a| [IoSlice::new(a)]).collect();
            match sendmmsg(
                fd,
                &mut send_headers,
                &iovs,
                &to[start..],
                [],
                MsgFlags::empty(),
            ) {
                Ok(sent) => {
                    let n = sent.count();
                    if n == 0 {
                        udp_send_error(st, &"sendmmsg sent nothing");
                        start += 1;
                    } else {
                        start += n;
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    udp_send_error(st, &e);
                    start += 1;
                }
            }
        }
        if stamped {
            observe_sojourn(st, &answered_at, crate::clock::since_epoch());
        }
    }
}

/// Asks the kernel to stamp every datagram with its receive time (`SO_TIMESTAMPNS`, the
/// realtime clock), for `dpin_dns_udp_sojourn_seconds`. Answering never depends on it: a
/// socket that refuses answers unmeasured.
#[cfg(target_os = "linux")]
pub(super) fn enable_receive_timestamps(sock: &UdpSocket) -> bool {
    match nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::ReceiveTimestampns, &true) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(%e, "no receive timestamps on the DNS UDP socket; the sojourn histogram stays empty");
            false
        }
    }
}

/// Receive headers for one batch, each with room for a timestamp when `stamped`.
#[cfg(target_os = "linux")]
fn receive_headers(
    stamped: bool,
) -> nix::sys::socket::MultiHeaders<nix::sys::socket::SockaddrStorage> {
    let cmsg = stamped.then(|| nix::cmsg_space!(nix::sys::time::TimeSpec));
    nix::sys::socket::MultiHeaders::preallocate(UDP_BATCH, cmsg)
}

/// The kernel's receive time of one datagram (since the Unix epoch), if it carries one.
#[cfg(target_os = "linux")]
fn receive_time<S>(m: &nix::sys::socket::RecvMsg<'_, '_, S>) -> Option<Duration> {
    use nix::sys::socket::ControlMessageOwned;
    m.cmsgs().ok()?.find_map(|c| match c {
        ControlMessageOwned::ScmTimestampns(ts) => {
            let secs = u64::try_from(ts.tv_sec()).ok()?;
            let nanos = u32::try_from(ts.tv_nsec()).ok()?;
            Some(Duration::new(secs, nanos))
        }
        _ => None,
    })
}

/// Records how long each answered datagram of a batch spent in the server: from its kernel
/// receive time to `now`, after the batch's responses were handed back to the kernel. A stamp
/// after `now` (the realtime clock stepped back) counts as zero; answers without a stamp are
/// counted apart.
#[cfg(target_os = "linux")]
fn observe_sojourn(st: &DnsStats, received_at: &[Option<Duration>], now: Duration) {
    for at in received_at {
        match at {
            Some(at) => st
                .udp_sojourn_seconds
                .observe(now.saturating_sub(*at).as_secs_f64()),
            None => inc(&st.udp_unstamped),
        }
    }
}

/// One UDP worker: receive, answer, send, one datagram at a time on a blocking socket (systems
/// without `recvmmsg`). Never returns.
#[cfg(not(target_os = "linux"))]
pub(super) fn serve_udp<S: Source>(sock: &UdpSocket, responder: &Responder<S>, rrl: &Rrl) {
    let st = responder.stats();
    let mut buf = vec![0u8; UDP_SLOT_BYTES];
    loop {
        let (n, src) = match sock.recv_from(&mut buf) {
            Ok(v) => v,
            Err(e) => {
                udp_receive_error(st, &e);
                continue;
            }
        };
        let Some(packet) = buf.get(..n) else { continue };
        let now = std::time::Instant::now();
        let (resp, _) =
            answer_datagram(packet, src, responder, rrl, st, now, crate::node::now_ms());
        if let Some(resp) = resp {
            if let Err(e) = sock.send_to(&resp, src) {
                udp_send_error(st, &e);
            }
        }
    }
}

/// What the accept loop and one TCP connection share.
#[derive(Debug, Default)]
pub(super) struct TcpConnShared {
    /// Milliseconds since the table's epoch, plus one, since the connection has been waiting
    /// for its next query; 0 while a query is being answered.
    pub(super) waiting_since: AtomicU64,
    /// Set (and notified) when the connection is closed to make room.
    pub(super) evicted: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
}

impl TcpConnShared {
    fn set_waiting(&self, epoch: std::time::Instant) {
        let ms = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.waiting_since
            .store(ms.saturating_add(1), Ordering::Relaxed);
    }
}

/// Open TCP connections: totals for the caps and who to close to make room.
#[derive(Debug)]
pub(super) struct TcpTable {
    pub(super) epoch: std::time::Instant,
    per_ip: HashMap<std::net::IpAddr, usize>,
    conns: HashMap<u64, Arc<TcpConnShared>>,
    next_id: u64,
    /// Where evictions are counted.
    stats: Arc<DnsStats>,
}

/// Why a new TCP connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TcpRefusal {
    /// [`MAX_TCP_CONNECTIONS`] open and none idle long enough to close.
    TotalCap,
    /// [`MAX_TCP_CONNECTIONS_PER_IP`] open from this address.
    PerIp,
}

impl TcpTable {
    /// A table counting in counters of its own (tests).
    #[cfg(test)]
    pub(super) fn new() -> Self {
        Self::with_stats(Arc::new(DnsStats::default()))
    }

    fn with_stats(stats: Arc<DnsStats>) -> Self {
        Self {
            epoch: std::time::Instant::now(),
            per_ip: HashMap::new(),
            conns: HashMap::new(),
            next_id: 0,
            stats,
        }
    }

    /// Admits a connection from `ip` (closing the longest-waiting idle one at the total cap,
    /// if it has waited [`TCP_EVICT_AFTER`]) or says why not.
    pub(super) fn admit(
        &mut self,
        ip: std::net::IpAddr,
        max_total: usize,
        max_per_ip: usize,
        evict: bool,
    ) -> Result<(u64, Arc<TcpConnShared>), TcpRefusal> {
        if self.per_ip.get(&ip).copied().unwrap_or(0) >= max_per_ip {
            return Err(TcpRefusal::PerIp);
        }
        if self.conns.len() >= max_total {
            if !evict {
                return Err(TcpRefusal::TotalCap);
            }
            let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
            let cutoff =
                now.saturating_sub(u64::try_from(TCP_EVICT_AFTER.as_millis()).unwrap_or(0));
            let victim = self
                .conns
                .values()
                .filter(|c| !c.evicted.load(Ordering::Relaxed))
                .map(|c| (c.waiting_since.load(Ordering::Relaxed), c))
                .filter(|(since, _)| *since != 0 && since.saturating_sub(1) <= cutoff)
                .min_by_key(|(since, _)| *since)
                .map(|(_, c)| c.clone());
            let Some(victim) = victim else {
                return Err(TcpRefusal::TotalCap);
            };
            victim.evicted.store(true, Ordering::Relaxed);
            victim.wake.notify_one();
            inc(&self.stats.tcp_evicted);
            // Its slot is released when its task ends; until then the table may hold one more
            // than the cap (bounded: at most one pending eviction per admitted connection).
        }
        *self.per_ip.entry(ip).or_default() += 1;
        let id = self.next_id;
        self.next_id += 1;
        let shared = Arc::new(TcpConnShared::default());
        shared.set_waiting(self.epoch);
        self.conns.insert(id, shared.clone());
        Ok((id, shared))
    }

    pub(super) fn release(&mut self, id: u64, ip: std::net::IpAddr) {
        self.conns.remove(&id);
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

async fn serve_tcp<S: Source>(listener: TcpListener, responder: Arc<Responder<S>>) {
    let st = responder.stats().clone();
    let table = Arc::new(std::sync::Mutex::new(TcpTable::with_stats(st.clone())));
    // Measurement knob: DPIN_DNS_TCP_EVICT=0 turns eviction off (the behaviour before it), to
    // measure the difference side by side. On by default.
    let evict = std::env::var(TCP_EVICT_ENV).map_or(true, |v| v.trim() != "0");
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(v) => v,
            Err(e) => {
                inc(&st.io_errors);
                tracing::warn!(%e, "DNS TCP accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let ip = peer.ip();
        let admitted = table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(ip, MAX_TCP_CONNECTIONS, MAX_TCP_CONNECTIONS_PER_IP, evict);
        let (id, shared) = match admitted {
            Ok(v) => v,
            Err(r) => {
                // Accept-and-close keeps the backlog moving and tells the client at once.
                inc(match r {
                    TcpRefusal::TotalCap => &st.tcp_rejected,
                    TcpRefusal::PerIp => &st.tcp_rejected_per_ip,
                });
                drop(stream);
                continue;
            }
        };
        inc(&st.tcp_connections);
        let responder = responder.clone();
        let table = table.clone();
        tokio::spawn(async move {
            let epoch = table
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .epoch;
            tokio::select! {
                () = serve_tcp_conn(stream, &responder, &shared, epoch) => {}
                () = shared.wake.notified() => {}
            }
            tracing::trace!(%peer, "DNS TCP connection closed");
            table
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .release(id, ip);
        });
    }
}

async fn serve_tcp_conn<S: Source>(
    mut stream: TcpStream,
    responder: &Responder<S>,
    shared: &TcpConnShared,
    epoch: std::time::Instant,
) {
    let st = responder.stats();
    let _ = stream.set_nodelay(true);
    // However busy, a connection ends after TCP_MAX_LIFETIME: queries do not extend it forever.
    let end_of_life = tokio::time::Instant::now() + TCP_MAX_LIFETIME;
    loop {
        shared.set_waiting(epoch);
        // One deadline for the whole next query: trickled bytes cannot extend it.
        let idle = tokio::time::Instant::now() + TCP_IDLE_TIMEOUT;
        let (deadline, counter) = if end_of_life < idle {
            (end_of_life, &st.tcp_lifetime_closed)
        } else {
            (idle, &st.tcp_timeouts)
        };
        let mut len = [0u8; 2];
        match tokio::time::timeout_at(deadline, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return, // closed by the client
            Err(_) => {
                inc(counter);
                return;
            }
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        match tokio::time::timeout_at(deadline, stream.read_exact(&mut msg)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => {
                inc(&st.dropped_malformed);
                return;
            }
            Err(_) => {
                inc(counter);
                return;
            }
        }
        // Answering: not a candidate for eviction.
        shared.waiting_since.store(0, Ordering::Relaxed);
        inc(&st.tcp_queries);
        let Some(resp) = responder.respond(&msg, Proto::Tcp, crate::node::now_ms()) else {
            return; // garbage: close (RFC 7766 §8 allows it)
        };
        let Ok(n) = u16::try_from(resp.len()) else {
            return;
        };
        let mut out = Vec::with_capacity(resp.len() + 2);
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(&resp);
        match tokio::time::timeout(TCP_IO_TIMEOUT, stream.write_all(&out)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                inc(&st.io_errors);
                return;
            }
            Err(_) => {
                inc(&st.tcp_timeouts);
                return;
            }
        }
    }
}
