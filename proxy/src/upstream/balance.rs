//! Choosing an endpoint: round robin, least request by power of two choices over a
//! peak-EWMA latency estimate (as Linkerd does), or a ring hash on a key.

use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Endpoint, EndpointSet};
use crate::config::{BalanceConfig, BalancePolicy};

/// Points per endpoint on the hash ring: enough for an even spread of a few dozen endpoints.
const RING_POINTS: u32 = 160;

pub struct Balancer {
    policy: BalancePolicy,
    /// For consistent hashing: the header whose value is the key.
    pub hash_header: Option<http::HeaderName>,
}

impl Balancer {
    pub fn new(cfg: &BalanceConfig) -> Self {
        Balancer {
            policy: cfg.policy,
            hash_header: cfg
                .hash_header
                .as_deref()
                .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok()),
        }
    }

    pub fn policy(&self) -> BalancePolicy {
        self.policy
    }

    /// The hash ring for these endpoints (empty unless the policy hashes).
    pub fn ring_for(&self, list: &[Arc<Endpoint>]) -> Vec<(u64, u32)> {
        if self.policy != BalancePolicy::ConsistentHash {
            return Vec::new();
        }
        let mut ring = Vec::with_capacity(list.len() * RING_POINTS as usize);
        for (i, ep) in list.iter().enumerate() {
            for point in 0..RING_POINTS {
                ring.push((hash_of(&(ep.addr, point)), i as u32));
            }
        }
        ring.sort_unstable();
        ring
    }

    /// Picks an endpoint among those `available` says yes to. `n` is a counter that
    /// advances with every pick (round robin's position, and randomness for p2c).
    pub fn pick<'a>(
        &self,
        set: &'a EndpointSet,
        key: Option<&[u8]>,
        n: u64,
        available: impl Fn(&Endpoint) -> bool,
    ) -> Option<&'a Arc<Endpoint>> {
        let list = &set.list;
        if list.is_empty() {
            return None;
        }
        match self.policy {
            BalancePolicy::RoundRobin => round_robin(list, n, &available),
            BalancePolicy::LeastRequest => p2c(list, &available),
            BalancePolicy::ConsistentHash => match key {
                Some(k) => ring_lookup(set, hash_of(&k), &available),
                None => round_robin(list, n, &available),
            },
        }
    }
}

fn round_robin<'a>(
    list: &'a [Arc<Endpoint>],
    n: u64,
    available: &impl Fn(&Endpoint) -> bool,
) -> Option<&'a Arc<Endpoint>> {
    let len = list.len();
    let start = (n % len as u64) as usize;
    (0..len)
        .map(|i| &list[(start + i) % len])
        .find(|e| available(e))
}

/// Power of two choices: of two random available endpoints, the one with the lower
/// cost, where cost = latency estimate × (outstanding requests + 1).
fn p2c<'a>(
    list: &'a [Arc<Endpoint>],
    available: &impl Fn(&Endpoint) -> bool,
) -> Option<&'a Arc<Endpoint>> {
    let len = list.len();
    if len == 1 {
        return list.first().filter(|e| available(e));
    }
    let a = fastrand::usize(..len);
    let mut b = fastrand::usize(..len - 1);
    if b >= a {
        b += 1;
    }
    let (ea, eb) = (&list[a], &list[b]);
    match (available(ea), available(eb)) {
        (true, true) => Some(if cost(ea) <= cost(eb) { ea } else { eb }),
        (true, false) => Some(ea),
        (false, true) => Some(eb),
        // Both unavailable: fall back to the cheapest available one, if any.
        (false, false) => list
            .iter()
            .filter(|e| available(e))
            .min_by(|x, y| cost(x).total_cmp(&cost(y))),
    }
}

fn cost(e: &Endpoint) -> f64 {
    let pending = e.pending.load(Ordering::Relaxed) as f64;
    let rtt = e
        .ewma
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .estimate_ns();
    rtt * (pending + 1.0)
}

fn ring_lookup<'a>(
    set: &'a EndpointSet,
    h: u64,
    available: &impl Fn(&Endpoint) -> bool,
) -> Option<&'a Arc<Endpoint>> {
    let ring = &set.ring;
    if ring.is_empty() {
        return None;
    }
    let start = ring.partition_point(|(p, _)| *p < h);
    // Walk clockwise past unavailable endpoints.
    (0..ring.len())
        .map(|i| &set.list[ring[(start + i) % ring.len()].1 as usize])
        .find(|e| available(e))
}

/// A hash stable for the life of the binary, so every process of the same build
/// maps a key to the same endpoint.
fn hash_of<T: Hash + ?Sized>(v: &T) -> u64 {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x7765_6674, 0x6b65_7973);
    v.hash(&mut h);
    h.finish()
}

/// Peak-sensitive exponentially weighted moving average of response latency:
/// a slower response raises the estimate at once, faster ones lower it gradually.
pub struct Ewma {
    estimate_ns: f64,
    stamp: Instant,
}

/// What an endpoint is assumed to cost before it has answered anything.
const DEFAULT_RTT: Duration = Duration::from_millis(30);

impl Ewma {
    pub fn new(now: Instant) -> Self {
        Ewma {
            estimate_ns: nanos(DEFAULT_RTT),
            stamp: now,
        }
    }

    pub fn estimate_ns(&self) -> f64 {
        self.estimate_ns
    }

    pub fn observe(&mut self, rtt: Duration, decay: Duration, now: Instant) {
        let rtt = nanos(rtt);
        let elapsed = nanos(now.saturating_duration_since(self.stamp));
        self.stamp = now;
        if rtt > self.estimate_ns {
            self.estimate_ns = rtt;
        } else {
            let w = (-elapsed / nanos(decay).max(1.0)).exp();
            self.estimate_ns = self.estimate_ns * w + rtt * (1.0 - w);
        }
    }
}

/// A duration in nanoseconds, as a float. Through `u64` (584 years), since a `u128`
/// to float conversion is a library call, and this runs on every response.
fn nanos(d: Duration) -> f64 {
    d.as_nanos() as u64 as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BalanceConfig;
    use std::collections::HashMap;

    fn set(n: u16, balancer: &Balancer) -> EndpointSet {
        let now = Instant::now();
        let list: Vec<_> = (0..n)
            .map(|i| {
                Arc::new(Endpoint::new(
                    std::net::SocketAddr::from(([127, 0, 0, 1], 1000 + i)),
                    "h".into(),
                    now,
                ))
            })
            .collect();
        let ring = balancer.ring_for(&list);
        EndpointSet { list, ring }
    }

    fn balancer(policy: BalancePolicy) -> Balancer {
        Balancer::new(&BalanceConfig {
            policy,
            ..BalanceConfig::default()
        })
    }

    #[test]
    fn round_robin_cycles_and_skips_unavailable() {
        let b = balancer(BalancePolicy::RoundRobin);
        let s = set(3, &b);
        let picks: Vec<u16> = (0..6)
            .map(|n| b.pick(&s, None, n, |_| true).unwrap().addr.port())
            .collect();
        assert_eq!(picks, [1000, 1001, 1002, 1000, 1001, 1002]);
        let picks: Vec<u16> = (0..4)
            .map(|n| {
                b.pick(&s, None, n, |e| e.addr.port() != 1001)
                    .unwrap()
                    .addr
                    .port()
            })
            .collect();
        assert_eq!(picks, [1000, 1002, 1002, 1000]);
        assert!(b.pick(&s, None, 0, |_| false).is_none());
    }

    #[test]
    fn consistent_hash_is_sticky_and_spreads() {
        let b = balancer(BalancePolicy::ConsistentHash);
        let s = set(4, &b);
        let mut counts = HashMap::new();
        for k in 0..4000 {
            let key = format!("user-{k}");
            let first = b.pick(&s, Some(key.as_bytes()), k, |_| true).unwrap().addr;
            let again = b
                .pick(&s, Some(key.as_bytes()), k + 7, |_| true)
                .unwrap()
                .addr;
            assert_eq!(first, again);
            *counts.entry(first).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 4);
        assert!(counts.values().all(|&c| c > 600), "{counts:?}");
    }

    #[test]
    fn consistent_hash_moves_only_the_keys_of_a_lost_endpoint() {
        let b = balancer(BalancePolicy::ConsistentHash);
        let s = set(4, &b);
        let lost = s.list[2].addr;
        for k in 0..1000 {
            let key = format!("k{k}");
            let before = b.pick(&s, Some(key.as_bytes()), 0, |_| true).unwrap().addr;
            let after = b
                .pick(&s, Some(key.as_bytes()), 0, |e| e.addr != lost)
                .unwrap()
                .addr;
            if before != lost {
                assert_eq!(before, after);
            }
        }
    }

    #[test]
    fn p2c_prefers_the_faster_endpoint() {
        let b = balancer(BalancePolicy::LeastRequest);
        let s = set(2, &b);
        let now = Instant::now();
        s.list[0].ewma.lock().unwrap().observe(
            Duration::from_millis(200),
            Duration::from_secs(10),
            now,
        );
        s.list[1].ewma.lock().unwrap().observe(
            Duration::from_millis(1),
            Duration::from_secs(10),
            now + Duration::from_secs(60),
        );
        let fast = (0..100)
            .filter(|&n| b.pick(&s, None, n, |_| true).unwrap().addr.port() == 1001)
            .count();
        assert_eq!(fast, 100);
    }

    #[test]
    fn p2c_prefers_fewer_outstanding_requests() {
        let b = balancer(BalancePolicy::LeastRequest);
        let s = set(2, &b);
        s.list[0].pending.store(10, Ordering::Relaxed);
        let idle = (0..100)
            .filter(|&n| b.pick(&s, None, n, |_| true).unwrap().addr.port() == 1001)
            .count();
        assert_eq!(idle, 100);
    }

    #[test]
    fn ewma_jumps_up_and_decays_down() {
        let t0 = Instant::now();
        let mut e = Ewma::new(t0);
        e.observe(Duration::from_millis(100), Duration::from_secs(10), t0);
        assert_eq!(e.estimate_ns(), 100e6);
        e.observe(
            Duration::from_millis(10),
            Duration::from_secs(10),
            t0 + Duration::from_secs(10),
        );
        let est = e.estimate_ns() / 1e6;
        assert!(est > 10.0 && est < 100.0, "{est}");
    }
}
