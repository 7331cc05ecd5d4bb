//! UDP response rate limiting: a token bucket per source prefix (see the module docs of [`super`]).

use super::*;

/// UDP response rate limiting settings (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RrlConfig {
    /// Responses per second per source prefix; 0 turns RRL off.
    pub rate: u32,
    /// Every `slip`-th limited query gets a TC answer; 0 never sends one (all are dropped).
    pub slip: u32,
}

impl Default for RrlConfig {
    fn default() -> Self {
        Self {
            rate: DEFAULT_RRL_RATE,
            slip: DEFAULT_RRL_SLIP,
        }
    }
}

/// What RRL decides for one query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RrlVerdict {
    /// Answer normally.
    Answer,
    /// Answer with an empty TC response (the client should retry over TCP).
    Slip,
    /// Send nothing.
    Drop,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: std::time::Instant,
    limited: u64,
}

/// Per-prefix token buckets (UDP response rate limiting).
#[derive(Debug)]
pub struct Rrl {
    config: RrlConfig,
    buckets: std::sync::Mutex<HashMap<u128, Bucket>>,
}

/// The source prefix a query is accounted to: /24 for IPv4 (mapped IPv6 included), /56 for
/// IPv6.
fn rrl_prefix(ip: std::net::IpAddr) -> u128 {
    match ip {
        std::net::IpAddr::V4(a) => u128::from(u32::from(a) & 0xffff_ff00),
        std::net::IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4) & 0xffff_ff00),
            // Tagged so an IPv6 prefix never equals an IPv4 one.
            None => (u128::from(a) & !((1u128 << 72) - 1)) | 1,
        },
    }
}

/// 127.0.0.1 and ::1: the host's own clients (a local stub resolver forwarding every lookup of
/// the machine, monitoring, benchmarks). They cannot be spoofed from the network, so limiting
/// them protects nobody; other loopback addresses are limited like any source.
fn is_host_itself(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(a) => a == Ipv4Addr::LOCALHOST,
        std::net::IpAddr::V6(a) => {
            a == Ipv6Addr::LOCALHOST || a.to_ipv4_mapped() == Some(Ipv4Addr::LOCALHOST)
        }
    }
}

impl Rrl {
    /// Rate limiter with `config`.
    pub fn new(config: RrlConfig) -> Self {
        Self {
            config,
            buckets: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Decides for one query from `src` at `now`.
    pub fn check(&self, src: std::net::IpAddr, now: std::time::Instant) -> RrlVerdict {
        if self.config.rate == 0 || is_host_itself(src) {
            return RrlVerdict::Answer;
        }
        let rate = f64::from(self.config.rate);
        let mut map = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = rrl_prefix(src);
        if !map.contains_key(&key) && map.len() >= MAX_RRL_PREFIXES {
            // Forget prefixes whose bucket has refilled (idle for a second or more).
            map.retain(|_, b| now.duration_since(b.last) < Duration::from_secs(1));
        }
        let full = map.len() >= MAX_RRL_PREFIXES;
        let b = match map.get_mut(&key) {
            Some(b) => b,
            None if full => return self.limited(None),
            None => map.entry(key).or_insert(Bucket {
                tokens: rate,
                last: now,
                limited: 0,
            }),
        };
        let elapsed = now.duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(rate);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return RrlVerdict::Answer;
        }
        b.limited += 1;
        let n = b.limited;
        self.limited(Some(n))
    }

    /// Slip or drop (the caller counts which, in its node's DNS counters).
    fn limited(&self, n: Option<u64>) -> RrlVerdict {
        let slip = u64::from(self.config.slip);
        if slip > 0 && n.is_some_and(|n| n % slip == 0) {
            RrlVerdict::Slip
        } else {
            RrlVerdict::Drop
        }
    }
}
