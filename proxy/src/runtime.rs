//! What the request path shares: the current snapshot (one `ArcSwap`) and the
//! process-wide handles (metrics, the filter engine) that outlive snapshots.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use crate::chain::ChainBuilder;
use crate::snapshot::Snapshot;
use crate::telemetry::metrics::Metrics;

pub struct Runtime {
    snapshot: ArcSwap<Snapshot>,
    pub metrics: Arc<Metrics>,
    pub chains: ChainBuilder,
    request_ids: AtomicU64,
    /// Origin of coarse millisecond clocks kept in atomics.
    pub epoch: Instant,
}

impl Runtime {
    pub fn new(first: Snapshot, metrics: Arc<Metrics>, chains: ChainBuilder) -> Self {
        Runtime {
            snapshot: ArcSwap::from_pointee(first),
            metrics,
            chains,
            request_ids: AtomicU64::new(1),
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
        self.request_ids.fetch_add(1, Ordering::Relaxed)
    }

    pub fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// `at` in the runtime's milliseconds (for a caller that has read the clock).
    pub fn ms_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }
}
