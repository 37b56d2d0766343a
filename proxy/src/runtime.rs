//! What the request path shares: the current snapshot (one `ArcSwap`) and the
//! process-wide handles (metrics, the filter engine) that outlive snapshots.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use crate::chain::ChainBuilder;
use crate::snapshot::Snapshot;
use crate::telemetry::metrics::Metrics;
use crate::workers::PerWorker;

pub struct Runtime {
    snapshot: ArcSwap<Snapshot>,
    pub metrics: Arc<Metrics>,
    pub chains: ChainBuilder,
    request_ids: RequestIds,
    /// Origin of coarse millisecond clocks kept in atomics.
    pub epoch: Instant,
}

impl Runtime {
    pub fn new(first: Snapshot, metrics: Arc<Metrics>, chains: ChainBuilder) -> Self {
        Runtime {
            snapshot: ArcSwap::from_pointee(first),
            metrics,
            chains,
            request_ids: RequestIds::default(),
            epoch: Instant::now(),
        }
    }

    /// The snapshot new requests use.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn publish(&self, next: Snapshot) {
        self.snapshot.store(Arc::new(next));
    }

    pub fn next_request_id(&self) -> u64 {
        self.request_ids.next()
    }

    pub fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// `at` in the runtime's milliseconds (for a caller that has read the clock).
    pub fn ms_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }
}

/// Request ids, unique in the process and small enough to read in a log: worker
/// `i` of `n` numbers its requests `i + 1`, `i + 1 + n`, `i + 1 + 2n`, ... Counted
/// per worker, so that numbering a request writes no cache line that other workers
/// write.
#[derive(Default)]
struct RequestIds(PerWorker<AtomicU64>);

impl RequestIds {
    fn next(&self) -> u64 {
        let (part, count) = self.0.mine_indexed();
        let n = self.0.parts() as u64;
        count.fetch_add(1, Ordering::Relaxed) * n + part as u64 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workers::Workers;
    use std::collections::HashSet;

    #[tokio::test]
    async fn request_ids_of_different_workers_never_collide() {
        let workers = Workers::spawn(1).unwrap();
        let ids = Arc::new(RequestIds::default());
        let here: Vec<u64> = (0..100).map(|_| ids.next()).collect();
        let other = ids.clone();
        let there: Vec<u64> = workers.handles()[0]
            .spawn(async move { (0..100).map(|_| other.next()).collect() })
            .await
            .unwrap();
        let all: HashSet<u64> = here.iter().chain(&there).copied().collect();
        assert_eq!(all.len(), 200);
        assert!(!all.contains(&0), "0 is never an id");
        // Each worker counts its own, in steps of the number of workers.
        let n = ids.0.parts() as u64;
        assert!(n >= 2, "one part per worker: {n}");
        for ids in [&here, &there] {
            assert!(ids.windows(2).all(|w| w[1] == w[0] + n), "{ids:?}");
            assert!(ids[0] <= n, "{ids:?}");
        }
        workers.stop();
    }
}
