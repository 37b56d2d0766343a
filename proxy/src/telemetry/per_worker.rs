//! The metrics the request path records into, every request: each worker has its
//! own counts, kept with atomics, and a scrape adds the workers' counts up.
//!
//! prometheus-client's `Histogram` takes a mutex for each observation, one mutex
//! per series, and its `Counter` is one atomic per series: every worker's requests
//! of one listener and cluster (and every call of one filter) would write the same
//! cache line, moving it from core to core on every request. Here a worker writes
//! only cache lines of its own, as Envoy's per-worker stats do; the exposition is
//! still prometheus-client's. (The open-connections gauge stays prometheus-client's:
//! the proxy reads it to enforce its limit, and it changes per connection.)

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

use crate::workers::PerWorker;

/// A classic Prometheus histogram with fixed bucket bounds. Clones share the counts.
#[derive(Clone)]
pub struct WorkerHistogram(Arc<Inner>);

struct Inner {
    /// Finite upper bounds, ascending; `+Inf` follows.
    bounds: Box<[f64]>,
    parts: PerWorker<Counts>,
}

struct Counts {
    /// Observations per bucket (not cumulative), the last one for `+Inf`.
    buckets: Box<[AtomicU64]>,
    /// The sum of the observations, as `f64` bits.
    sum: AtomicU64,
}

impl WorkerHistogram {
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Box<[f64]> = bounds.into_iter().filter(|b| b.is_finite()).collect();
        let parts = PerWorker::new(|| Counts {
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        });
        WorkerHistogram(Arc::new(Inner { bounds, parts }))
    }

    pub fn observe(&self, v: f64) {
        let Inner { bounds, parts } = &*self.0;
        // The first bucket whose bound is at least `v`; NaN counts in `+Inf`, as
        // prometheus-client's histogram does.
        let i = match v.is_nan() {
            true => bounds.len(),
            false => bounds.partition_point(|b| *b < v),
        };
        let counts = parts.mine();
        counts.buckets[i].fetch_add(1, Ordering::Relaxed);
        // Uncontended: only threads that are not workers share a part with one.
        let _ = counts
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
    }

    /// Sum, count and (upper bound, count) per bucket, over all workers.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let Inner { bounds, parts } = &*self.0;
        let mut buckets: Vec<(f64, u64)> = bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .map(|b| (b, 0))
            .collect();
        let mut sum = 0.0;
        for counts in parts.iter() {
            for (total, n) in buckets.iter_mut().zip(&*counts.buckets) {
                total.1 += n.load(Ordering::Relaxed);
            }
            sum += f64::from_bits(counts.sum.load(Ordering::Relaxed));
        }
        let count = buckets.iter().map(|b| b.1).sum();
        (sum, count, buckets)
    }
}

impl std::fmt::Debug for WorkerHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (sum, count, _) = self.snapshot();
        write!(f, "WorkerHistogram {{ sum: {sum}, count: {count} }}")
    }
}

impl TypedMetric for WorkerHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for WorkerHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A monotonic counter. Clones share the count.
#[derive(Clone, Default)]
pub struct WorkerCounter(Arc<PerWorker<AtomicU64>>);

impl WorkerCounter {
    pub fn inc(&self) {
        self.0.mine().fetch_add(1, Ordering::Relaxed);
    }

    /// The count over all workers.
    pub fn get(&self) -> u64 {
        self.0.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }
}

impl std::fmt::Debug for WorkerCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WorkerCounter({})", self.get())
    }
}

impl TypedMetric for WorkerCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for WorkerCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A gauge moved by increments: each worker adds to its own part (a part may go
/// negative when another thread takes away what a worker added), and a scrape adds
/// the parts up.
#[derive(Clone, Default)]
pub struct WorkerGauge(Arc<PerWorker<AtomicI64>>);

impl WorkerGauge {
    pub fn inc_by(&self, v: i64) {
        self.0.mine().fetch_add(v, Ordering::Relaxed);
    }

    pub fn dec_by(&self, v: i64) {
        self.0.mine().fetch_sub(v, Ordering::Relaxed);
    }

    /// The value over all workers.
    pub fn get(&self) -> i64 {
        self.0.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }
}

impl std::fmt::Debug for WorkerGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WorkerGauge({})", self.get())
    }
}

impl TypedMetric for WorkerGauge {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for WorkerGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.get())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::registry::Registry;

    fn text(metric: impl EncodeMetric + Send + Sync + std::fmt::Debug + 'static) -> String {
        let mut registry = Registry::default();
        registry.register("h", "A histogram", metric);
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn exposes_what_prometheus_clients_histogram_exposes_for_the_same_values() {
        let bounds = [0.001, 0.0025, 0.01, 1.0];
        let ours = WorkerHistogram::new(bounds);
        let theirs = Histogram::new(bounds);
        // On bounds, between them, past the last, and NaN.
        for v in [0.0, 0.001, 0.002, 0.0025, 0.5, 1.0, 7.0, f64::NAN, 0.003] {
            ours.observe(v);
            theirs.observe(v);
        }
        // NaN makes both sums NaN (and NaN != NaN): compare the texts with it masked.
        let (a, b) = (text(ours.clone()), text(theirs));
        assert_eq!(a.replace("NaN", "x"), b.replace("NaN", "x"));
        assert!(a.contains("h_count 9"), "{a}");
        assert!(a.contains(r#"h_bucket{le="0.0025"} 4"#), "{a}");
        assert!(a.contains(r#"h_bucket{le="+Inf"} 9"#), "{a}");
    }

    #[test]
    fn a_counter_is_exposed_as_prometheus_clients() {
        let (ours, theirs) = (WorkerCounter::default(), Counter::<u64>::default());
        for _ in 0..3 {
            ours.inc();
            theirs.inc();
        }
        assert_eq!(text(ours.clone()), text(theirs));
        assert_eq!(ours.get(), 3);
    }

    #[test]
    fn a_gauge_is_exposed_as_prometheus_clients() {
        let (ours, theirs) = (WorkerGauge::default(), Gauge::<i64>::default());
        ours.inc_by(5);
        ours.dec_by(2);
        theirs.inc_by(5);
        theirs.dec_by(2);
        assert_eq!(text(ours.clone()), text(theirs));
        assert_eq!(ours.get(), 3);
    }

    #[tokio::test]
    async fn adds_up_what_every_worker_recorded() {
        let workers = crate::workers::Workers::spawn(1).unwrap();
        let h = WorkerHistogram::new([1.0, 2.0]);
        h.observe(0.5);
        let c = WorkerCounter::default();
        c.inc();
        let g = WorkerGauge::default();
        g.inc_by(4);
        let (on_worker_1, c1, g1) = (h.clone(), c.clone(), g.clone());
        workers.handles()[0]
            .spawn(async move {
                on_worker_1.observe(1.5);
                on_worker_1.observe(3.0);
                c1.inc();
                c1.inc();
                g1.dec_by(1);
            })
            .await
            .unwrap();
        let (sum, count, buckets) = h.snapshot();
        assert_eq!((sum, count), (5.0, 3));
        assert_eq!(buckets, vec![(1.0, 1), (2.0, 1), (f64::INFINITY, 1)]);
        // Each worker wrote its own part.
        let parts: Vec<u64> =
            h.0.parts
                .iter()
                .map(|c| c.buckets.iter().map(|n| n.load(Ordering::Relaxed)).sum())
                .collect();
        assert_eq!(&parts[..2], &[1, 2]);
        assert_eq!(c.get(), 3);
        let counts: Vec<u64> = c.0.iter().map(|n| n.load(Ordering::Relaxed)).collect();
        assert_eq!(&counts[..2], &[1, 2]);
        // Taken away on another worker than the one that added it: the sum is right.
        assert_eq!(g.get(), 3);
        workers.stop();
    }
}
