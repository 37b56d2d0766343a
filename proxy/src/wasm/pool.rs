//! The idle instances of one filter, sized by demand.
//!
//! A fixed cap on idle instances makes a pool churn as soon as concurrency swings
//! past it: under bursty load, instances returned above the cap are destroyed and
//! made again moments later (measured: 4 in 10 requests paid for an instantiation
//! with a cap of 32 at 50 connections). Instead the pool keeps every instance it is
//! given back and, once per trim period, destroys only those that were not needed
//! during the whole period (the low-water mark of the idle count), so it follows
//! the recent peak of concurrency and shrinks when load falls. The trim runs from a
//! periodic sweep (`app::sweep_idle_instances`), so a take or a give, twice per
//! filter call, reads no clock.
//!
//! Instances are reused last-in first-out: the most recently used one is the most
//! likely to still be in the CPU's caches, and the ones at the bottom are the ones
//! a quiet period gives back.

use std::time::{Duration, Instant};

/// How long an idle instance may go unneeded before it is destroyed (at most twice
/// this, with the sweep's period on top).
pub const TRIM_PERIOD: Duration = Duration::from_secs(10);

pub struct IdlePool<T> {
    stack: Vec<T>,
    /// The fewest idle instances seen since `since`: that many went unused.
    low: usize,
    since: Instant,
}

impl<T> IdlePool<T> {
    pub fn new(now: Instant) -> Self {
        IdlePool {
            stack: Vec::new(),
            low: 0,
            since: now,
        }
    }

    /// The most recently returned instance, if any.
    pub fn take(&mut self) -> Option<T> {
        let got = self.stack.pop();
        self.low = self.low.min(self.stack.len());
        got
    }

    /// Returns an instance.
    pub fn give(&mut self, item: T) {
        self.stack.push(item);
    }

    pub fn count(&self) -> usize {
        self.stack.len()
    }

    /// Once a period is over, removes the instances that sat idle through all of it,
    /// returning them to be dropped by the caller (outside any lock).
    pub fn trim(&mut self, now: Instant) -> Vec<T> {
        if now.saturating_duration_since(self.since) < TRIM_PERIOD {
            return Vec::new();
        }
        let unused = self.low.min(self.stack.len());
        let removed = self.stack.drain(..unused).collect();
        self.low = self.stack.len();
        self.since = now;
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_what_the_peak_needed_and_gives_back_the_rest() {
        let t0 = Instant::now();
        let mut pool = IdlePool::new(t0);
        // A burst of 50 concurrent requests returns 50 instances.
        for i in 0..50 {
            pool.give(i);
        }
        // The sweep starts a period, in which at most 20 are needed at once.
        let t1 = t0 + TRIM_PERIOD + Duration::from_millis(1);
        assert!(pool.trim(t1).is_empty());
        let mut held: Vec<_> = (0..20).filter_map(|_| pool.take()).collect();
        assert_eq!(pool.count(), 30);
        for i in held.drain(..) {
            pool.give(i);
        }
        pool.give(99);
        // After a full period in which 30 were never needed, they go.
        let removed = pool.trim(t1 + TRIM_PERIOD);
        assert_eq!(removed.len(), 30);
        assert_eq!(pool.count(), 21);
    }

    #[test]
    fn a_busy_pool_is_never_trimmed() {
        let t0 = Instant::now();
        let mut pool = IdlePool::new(t0);
        let mut now = t0;
        for round in 0..10 {
            now += TRIM_PERIOD / 2;
            // Every instance is taken at some point of each period.
            let a = pool.take();
            let b = pool.take();
            pool.give(a.unwrap_or(round * 2));
            pool.give(b.unwrap_or(round * 2 + 1));
            assert!(pool.trim(now).is_empty(), "round {round}");
        }
        assert_eq!(pool.count(), 2);
    }

    #[test]
    fn without_traffic_the_sweep_gives_everything_back() {
        let t0 = Instant::now();
        let mut pool = IdlePool::new(t0);
        for i in 0..8 {
            pool.give(i);
        }
        // The first sweep starts a period; the next one finds all 8 unused through it.
        assert!(pool.trim(t0 + TRIM_PERIOD).is_empty());
        assert_eq!(pool.trim(t0 + TRIM_PERIOD * 2).len(), 8);
        assert_eq!(pool.count(), 0);
    }

    #[test]
    fn a_trim_gives_back_the_least_recently_used() {
        let t0 = Instant::now();
        let mut pool = IdlePool::new(t0);
        for i in 0..3 {
            pool.give(i);
        }
        // The first trim starts a period: nothing has sat idle through a whole one yet.
        assert!(pool.trim(t0 + TRIM_PERIOD).is_empty());
        // One is needed during the period: the newest, which goes back on top.
        let got = pool.take();
        assert_eq!(got, Some(2));
        pool.give(2);
        // The two at the bottom sat idle through the whole period.
        assert_eq!(pool.trim(t0 + TRIM_PERIOD * 2), vec![0, 1]);
        assert_eq!(pool.count(), 1);
    }

    #[test]
    fn most_recently_returned_is_reused_first() {
        let t0 = Instant::now();
        let mut pool = IdlePool::new(t0);
        pool.give("cold");
        pool.give("hot");
        assert_eq!(pool.take(), Some("hot"));
    }
}
