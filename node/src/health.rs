//! Endpoint health: probe the endpoints of the names this node holds, so answers can route
//! around dead services.
//!
//! * TCP endpoints: a TCP connect within the probe timeout means healthy.
//! * UDP endpoints: there is no generic UDP handshake. With [`UdpProbe::Icmp`] a datagram is
//!   sent on a connected socket and an ICMP "port unreachable" (seen as `ECONNREFUSED`) means
//!   unhealthy, silence means healthy; with [`UdpProbe::Off`] UDP endpoints are always healthy.
//! * Hostname endpoints are resolved by the system resolver at probe time.
//!
//! A large store must not become a probe storm: the endpoint set is refreshed from the store
//! once per interval (and capped at [`HealthConfig::max_endpoints`]); each endpoint is due once
//! per interval with ±20 % jitter so probes spread out; failing endpoints back off to at most
//! twice the interval (so a recovered service is noticed within two intervals); at most
//! [`HealthConfig::max_concurrent`] probes run at once and at most
//! [`HealthConfig::max_probes_per_tick`] start per 100 ms tick.
//!
//! Endpoints never probed yet count as healthy, so a fresh record is served at once. Failing
//! open when nothing is healthy happens in [`crate::answer`], not here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dpin_protocol::{Endpoint, Host, Transport};
use rand::Rng;

/// How UDP endpoints are probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UdpProbe {
    /// Never probed; always healthy.
    Off,
    /// Unhealthy on ICMP port unreachable.
    Icmp,
}

/// Prober settings.
#[derive(Clone, Debug)]
pub struct HealthConfig {
    /// Whether probing runs at all (off: every endpoint is healthy).
    pub enabled: bool,
    /// Target time between probes of one endpoint.
    pub interval: Duration,
    /// Probe timeout.
    pub timeout: Duration,
    /// Probes in flight at once.
    pub max_concurrent: usize,
    /// Probes started per 100 ms tick.
    pub max_probes_per_tick: usize,
    /// Most endpoints tracked.
    pub max_endpoints: usize,
    /// UDP probing mode.
    pub udp: UdpProbe,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(2),
            timeout: Duration::from_millis(1000),
            max_concurrent: 64,
            max_probes_per_tick: 128,
            max_endpoints: 100_000,
            udp: UdpProbe::Icmp,
        }
    }
}

/// Identity of a probe target (weight does not matter for reachability).
pub type Target = (Host, u16, Transport);

fn target(e: &Endpoint) -> Target {
    (e.host.clone(), e.port, e.transport)
}

#[derive(Clone, Debug)]
struct State {
    healthy: bool,
    probed: bool,
    failures: u32,
    next_due: Instant,
    in_flight: bool,
}

/// Shared health table plus counters.
#[derive(Debug)]
pub struct Health {
    config: HealthConfig,
    table: Mutex<BTreeMap<Target, State>>,
    /// Probes run.
    pub probes: AtomicU64,
    /// Probes that failed.
    pub probe_failures: AtomicU64,
}

impl Health {
    /// A table with `config`.
    pub fn new(config: HealthConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            table: Mutex::new(BTreeMap::new()),
            probes: AtomicU64::new(0),
            probe_failures: AtomicU64::new(0),
        })
    }

    /// The settings.
    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Target, State>> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `e` is believed reachable (unknown endpoints are).
    pub fn is_healthy(&self, e: &Endpoint) -> bool {
        if !self.config.enabled {
            return true;
        }
        self.lock().get(&target(e)).is_none_or(|s| s.healthy)
    }

    /// Replaces the tracked set with `endpoints` (keeping known state), bounded.
    pub fn track(&self, endpoints: BTreeSet<Target>, now: Instant) {
        let mut table = self.lock();
        table.retain(|t, _| endpoints.contains(t));
        let mut rng = rand::thread_rng();
        for t in endpoints {
            if table.len() >= self.config.max_endpoints {
                break;
            }
            table.entry(t).or_insert_with(|| State {
                healthy: true,
                probed: false,
                failures: 0,
                // Spread first probes over one interval.
                next_due: now + self.config.interval.mul_f64(rng.gen_range(0.0..0.5)),
                in_flight: false,
            });
        }
    }

    fn due(&self, now: Instant, limit: usize) -> Vec<Target> {
        let mut table = self.lock();
        let mut out = Vec::new();
        for (t, s) in table.iter_mut() {
            if out.len() >= limit {
                break;
            }
            if !s.in_flight && s.next_due <= now {
                s.in_flight = true;
                out.push(t.clone());
            }
        }
        out
    }

    fn record(&self, t: &Target, ok: bool, now: Instant) {
        self.probes.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.probe_failures.fetch_add(1, Ordering::Relaxed);
        }
        let interval = self.config.interval;
        let mut table = self.lock();
        let Some(s) = table.get_mut(t) else {
            return;
        };
        s.in_flight = false;
        s.probed = true;
        s.healthy = ok;
        s.failures = if ok { 0 } else { s.failures.saturating_add(1) };
        // Back off failing endpoints, but never past 2× the interval.
        let backoff = if ok {
            1.0
        } else {
            (1.0 + f64::from(s.failures.min(4)) * 0.25).min(2.0)
        };
        let jitter = rand::thread_rng().gen_range(0.8..1.2);
        s.next_due = now + interval.mul_f64((backoff * jitter).min(2.0));
    }

    /// Number of tracked endpoints and how many are unhealthy.
    pub fn summary(&self) -> (usize, usize) {
        let table = self.lock();
        (table.len(), table.values().filter(|s| !s.healthy).count())
    }
}

/// Probes one endpoint once.
pub async fn probe(t: &Target, timeout: Duration, udp: UdpProbe) -> bool {
    let (host, port, transport) = t;
    let addrs: Vec<SocketAddr> = match host {
        Host::V4(a) => vec![SocketAddr::from((*a, *port))],
        Host::V6(a) => vec![SocketAddr::from((*a, *port))],
        Host::Name(n) => {
            match tokio::time::timeout(timeout, tokio::net::lookup_host((n.as_str(), *port))).await
            {
                Ok(Ok(it)) => it.take(4).collect(),
                _ => return false,
            }
        }
    };
    for addr in addrs {
        let ok = match transport {
            Transport::Tcp => matches!(
                tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
                Ok(Ok(_))
            ),
            Transport::Udp => match udp {
                UdpProbe::Off => true,
                UdpProbe::Icmp => udp_probe(addr, timeout).await,
            },
        };
        if ok {
            return true;
        }
    }
    false
}

async fn udp_probe(addr: SocketAddr, timeout: Duration) -> bool {
    let bind: SocketAddr = if addr.is_ipv4() {
        ([0u8; 4], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let Ok(sock) = tokio::net::UdpSocket::bind(bind).await else {
        return false;
    };
    if sock.connect(addr).await.is_err() || sock.send(&[]).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    match tokio::time::timeout(timeout, sock.recv(&mut buf)).await {
        // ICMP port unreachable surfaces as ConnectionRefused on a connected socket.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => false,
        _ => true,
    }
}

/// Runs the prober forever: `targets` returns the endpoints to track (called once per interval).
pub async fn run(health: Arc<Health>, targets: impl Fn() -> BTreeSet<Target> + Send + 'static) {
    if !health.config.enabled {
        return;
    }
    let cfg = health.config.clone();
    let slots = Arc::new(tokio::sync::Semaphore::new(cfg.max_concurrent));
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_refresh: Option<Instant> = None;
    loop {
        tick.tick().await;
        let now = Instant::now();
        if last_refresh.is_none_or(|t| now.duration_since(t) >= cfg.interval) {
            health.track(targets(), now);
            last_refresh = Some(now);
        }
        let budget = cfg.max_probes_per_tick.min(slots.available_permits());
        for t in health.due(now, budget) {
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                // Put it back to be picked up next tick.
                health.lock().entry(t).and_modify(|s| s.in_flight = false);
                continue;
            };
            let h = health.clone();
            tokio::spawn(async move {
                let ok = probe(&t, cfg.timeout, cfg.udp).await;
                h.record(&t, ok, Instant::now());
                drop(permit);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(port: u16) -> Target {
        (Host::V4([127, 0, 0, 1]), port, Transport::Tcp)
    }

    #[tokio::test]
    async fn tcp_probe_sees_a_listener_and_its_absence() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        assert!(probe(&t(port), Duration::from_millis(500), UdpProbe::Icmp).await);
        drop(l);
        assert!(!probe(&t(port), Duration::from_millis(500), UdpProbe::Icmp).await);
    }

    #[tokio::test]
    async fn udp_probe_detects_port_unreachable() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = s.local_addr().expect("addr").port();
        let target = (Host::V4([127, 0, 0, 1]), port, Transport::Udp);
        assert!(probe(&target, Duration::from_millis(300), UdpProbe::Icmp).await);
        drop(s);
        assert!(!probe(&target, Duration::from_millis(300), UdpProbe::Icmp).await);
    }

    #[test]
    fn failing_endpoints_back_off_but_never_past_twice_the_interval() {
        let h = Health::new(HealthConfig::default());
        let now = Instant::now();
        h.track([t(1)].into_iter().collect(), now);
        for _ in 0..10 {
            h.record(&t(1), false, now);
        }
        let due = h.lock().get(&t(1)).map(|s| s.next_due).expect("tracked");
        assert!(due <= now + h.config.interval * 2);
        assert!(due >= now + h.config.interval);
        assert!(!h.is_healthy(&"127.0.0.1:1".parse().expect("ep")));
    }

    #[test]
    fn tracked_endpoints_are_bounded_and_follow_the_store() {
        let h = Health::new(HealthConfig {
            max_endpoints: 3,
            ..HealthConfig::default()
        });
        let now = Instant::now();
        h.track((1..10).map(t).collect(), now);
        assert_eq!(h.summary().0, 3);
        h.track([t(1)].into_iter().collect(), now);
        assert_eq!(h.summary().0, 1);
    }
}
