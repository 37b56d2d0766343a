//! Choosing an endpoint: round robin, least request by power of two choices over a
//! peak-EWMA latency estimate (as Linkerd does), or a ring hash on a key; each
//! honouring the endpoints' weights.

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

    /// The hash ring for these endpoints (empty unless the policy hashes): 160 points
    /// per endpoint on average, shared out by weight (at least one each).
    pub fn ring_for(&self, list: &[Arc<Endpoint>]) -> Vec<(u64, u32)> {
        if self.policy != BalancePolicy::ConsistentHash {
            return Vec::new();
        }
        let total: u64 = list.iter().map(|e| u64::from(e.weight)).sum();
        let points_of = |e: &Endpoint| {
            let share = u64::from(RING_POINTS) * list.len() as u64 * u64::from(e.weight);
            (share.div_ceil(total.max(1)) as u32).max(1)
        };
        let mut ring = Vec::with_capacity(list.len() * RING_POINTS as usize);
        for (i, ep) in list.iter().enumerate() {
            for point in 0..points_of(ep) {
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
        let turns = || match &set.turns {
            Some(t) => weighted_round_robin(list, t, n, &available),
            None => round_robin(list, n, &available),
        };
        match self.policy {
            BalancePolicy::RoundRobin => turns(),
            BalancePolicy::LeastRequest => p2c(list, &available),
            BalancePolicy::ConsistentHash => match key {
                Some(k) => ring_lookup(set, hash_of(&k), &available),
                None => turns(),
            },
        }
    }
}

/// Round robin's order when weights differ, without a stored schedule (which could be
/// as long as the weights' sum). Over every `total` picks, pick `n` lands on position
/// `n × stride mod total`: a permutation of the positions, the stride being coprime
/// with the total, and a well-spread one, the stride being near the golden section
/// of the total. The endpoint whose share holds the position is chosen. So each gets
/// exactly its weight's share of every `total` picks, interleaved with the others
/// rather than in a burst (`a a a b`, not `a a a` then `b`), as nginx's smooth
/// weighted round robin spreads them.
pub struct Turns {
    /// Running sums of the weights: endpoint `i` holds positions `ends[i-1]..ends[i]`.
    ends: Vec<u64>,
    stride: u64,
}

impl Turns {
    /// None when every endpoint weighs the same: plain round robin is that order.
    pub fn new(list: &[Arc<Endpoint>]) -> Option<Turns> {
        let first = list.first()?.weight;
        if list.iter().all(|e| e.weight == first) {
            return None;
        }
        let ends: Vec<u64> = list
            .iter()
            .scan(0u64, |sum, e| {
                *sum += u64::from(e.weight);
                Some(*sum)
            })
            .collect();
        let total = *ends.last()?;
        // Keeps `position × stride` within u64 (weights are at most 1000 each).
        if total > u64::from(u32::MAX) {
            return None;
        }
        let mut stride = ((total as f64 * 0.618_033_988_75).round() as u64).max(1);
        while gcd(stride, total) != 1 {
            stride += 1;
        }
        Some(Turns { ends, stride })
    }

    /// The endpoint whose turn pick `n` is.
    fn at(&self, n: u64) -> usize {
        let total = self.ends[self.ends.len() - 1];
        let position = (n % total) * self.stride % total;
        self.ends.partition_point(|&end| end <= position)
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Weighted turns, passing over unavailable endpoints: the next few turns, then, so
/// that a heavy endpoint that is down costs at most one pass, the plain order.
fn weighted_round_robin<'a>(
    list: &'a [Arc<Endpoint>],
    turns: &Turns,
    n: u64,
    available: &impl Fn(&Endpoint) -> bool,
) -> Option<&'a Arc<Endpoint>> {
    (0..list.len() as u64)
        .map(|k| &list[turns.at(n.wrapping_add(k))])
        .find(|e| available(e))
        .or_else(|| round_robin(list, n, available))
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
/// cost, where cost = latency estimate × (outstanding requests + 1) ÷ weight: a
/// weight is a capacity, so an endpoint twice as heavy is as loaded with twice the
/// requests outstanding.
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
    rtt * (pending + 1.0) / f64::from(e.weight)
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
        weighted(&vec![1; n as usize], balancer)
    }

    /// Endpoints on ports 1000, 1001, ... weighing `weights`.
    fn weighted(weights: &[u32], balancer: &Balancer) -> EndpointSet {
        let now = Instant::now();
        let list: Vec<_> = (1000..)
            .zip(weights)
            .map(|(port, &weight)| {
                let found = super::super::dns::Found {
                    addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                    host: "h".into(),
                    weight,
                };
                Arc::new(Endpoint::new(found, now))
            })
            .collect();
        EndpointSet::new(balancer, list)
    }

    /// How many of `picks` picks went to each port.
    fn shares(
        b: &Balancer,
        s: &EndpointSet,
        picks: u64,
        key: impl Fn(u64) -> Option<String>,
    ) -> HashMap<u16, u64> {
        let mut counts = HashMap::new();
        for n in 0..picks {
            let k = key(n);
            let ep = b
                .pick(s, k.as_deref().map(str::as_bytes), n, |_| true)
                .unwrap();
            *counts.entry(ep.addr.port()).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn weighted_round_robin_gives_each_its_share_interleaved() {
        let b = balancer(BalancePolicy::RoundRobin);
        let s = weighted(&[3, 1], &b);
        let order: String = (0..8)
            .map(
                |n| match b.pick(&s, None, n, |_| true).unwrap().addr.port() {
                    1000 => 'a',
                    _ => 'b',
                },
            )
            .collect();
        // Exactly 3:1 in every four picks, and never `b` twice running.
        assert_eq!(order.matches('a').count(), 6, "{order}");
        assert_eq!(order[..4].matches('b').count(), 1, "{order}");
        assert!(!order.contains("bb"), "{order}");
        // Uneven weights over more endpoints: exact over every cycle of the total.
        let s = weighted(&[5, 1, 3, 1], &b);
        let counts = shares(&b, &s, 1000, |_| None);
        assert_eq!(counts[&1000], 500);
        assert_eq!(counts[&1001], 100);
        assert_eq!(counts[&1002], 300);
        assert_eq!(counts[&1003], 100);
        // The longest run of one endpoint is short: the turns are spread.
        let ports: Vec<u16> = (0..100)
            .map(|n| b.pick(&s, None, n, |_| true).unwrap().addr.port())
            .collect();
        let longest = ports
            .chunk_by(|a, b| a == b)
            .map(<[u16]>::len)
            .max()
            .unwrap_or(0);
        assert!(longest <= 3, "{ports:?}");
    }

    #[test]
    fn weighted_round_robin_passes_over_unavailable_endpoints() {
        let b = balancer(BalancePolicy::RoundRobin);
        let s = weighted(&[1000, 1, 1], &b);
        // The heavy one down: the two light ones share everything, evenly.
        let mut counts = HashMap::new();
        for n in 0..1000 {
            let ep = b.pick(&s, None, n, |e| e.addr.port() != 1000).unwrap();
            *counts.entry(ep.addr.port()).or_insert(0u32) += 1;
        }
        assert_eq!(counts.len(), 2, "{counts:?}");
        assert!(counts.values().all(|&c| c > 300), "{counts:?}");
        assert!(b.pick(&s, None, 0, |_| false).is_none());
    }

    #[test]
    fn equal_weights_keep_plain_round_robin() {
        let b = balancer(BalancePolicy::RoundRobin);
        assert!(weighted(&[7, 7, 7], &b).turns.is_none());
        assert!(weighted(&[1, 2], &b).turns.is_some());
    }

    #[test]
    fn consistent_hash_shares_keys_by_weight() {
        let b = balancer(BalancePolicy::ConsistentHash);
        let s = weighted(&[1, 3], &b);
        let counts = shares(&b, &s, 8000, |n| Some(format!("user-{n}")));
        let heavy = counts[&1001] as f64 / 8000.0;
        assert!((0.65..0.85).contains(&heavy), "{counts:?}");
        // Without the key, requests take weighted turns.
        let counts = shares(&b, &s, 400, |_| None);
        assert_eq!((counts[&1000], counts[&1001]), (100, 300));
    }

    #[test]
    fn p2c_counts_a_heavier_endpoint_as_more_capacity() {
        let b = balancer(BalancePolicy::LeastRequest);
        let s = weighted(&[1, 4], &b);
        // Three requests outstanding on the heavy one weigh less than one on the light.
        s.list[0].pending.store(1, Ordering::Relaxed);
        s.list[1].pending.store(3, Ordering::Relaxed);
        let heavy = (0..100)
            .filter(|&n| b.pick(&s, None, n, |_| true).unwrap().addr.port() == 1001)
            .count();
        assert_eq!(heavy, 100);
        // Eight outstanding on the heavy one weigh more than one on the light.
        s.list[1].pending.store(8, Ordering::Relaxed);
        let heavy = (0..100)
            .filter(|&n| b.pick(&s, None, n, |_| true).unwrap().addr.port() == 1001)
            .count();
        assert_eq!(heavy, 0);
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
