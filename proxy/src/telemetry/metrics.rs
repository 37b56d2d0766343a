//! The proxy's metrics, exposed on the admin `/metrics` in the Prometheus text format
//! or, to scrapers that ask for it, in OpenMetrics.
//!
//! Label sets are typed structs. The request path never builds a label set: the
//! handles it needs (`RouteStats`) are resolved when a config snapshot is built.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{
    CounterValueEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, EncodeLabelValue,
    GaugeValueEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use super::per_worker::{WorkerCounter, WorkerGauge, WorkerHistogram};

/// The request path's histograms: recorded per worker, without a lock.
type HistogramFamily<L> = Family<L, WorkerHistogram, fn() -> WorkerHistogram>;

fn latency_histogram() -> WorkerHistogram {
    // 0.5 ms .. ~16 s
    WorkerHistogram::new(exponential_buckets(0.0005, 2.0, 16))
}

fn filter_histogram() -> WorkerHistogram {
    // 1 µs .. ~98 ms in steps of 1, 1.5, 2, 3, 4, 6 ... µs: a filter call is meant to
    // take a few microseconds, and a quantile read from doubling buckets cannot tell
    // 2 µs from 3. (Integer microseconds over 1e6 print as short decimals.)
    WorkerHistogram::new((0..17).flat_map(|k| [2, 3].map(|m| f64::from(m << k) / 2e6)))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub listener: String,
    pub cluster: String,
    pub status_class: &'static str,
}

/// `none`: the client went away before any response was sent (the exchange has no status).
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

fn status_class_index(status: u16) -> usize {
    if status < 100 {
        return 5;
    }
    usize::from(status / 100).clamp(1, 5) - 1
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub listener: String,
    pub cluster: String,
    /// The gRPC status name (`OK`, `UNAVAILABLE`, ...), or `none`.
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub listener: String,
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    pub cluster: String,
    pub outcome: DnsOutcome,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DnsOutcome {
    resolved,
    failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

/// Which protection turned a client away.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Limit {
    max_connections,
    header_size,
    header_read_timeout,
    idle_timeout,
    tls_handshake,
    body_size,
    stream_idle_timeout,
    proxy_protocol,
    max_connection_duration,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub listener: String,
    pub limit: Limit,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: Outcome,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    applied,
    refused,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FilterPhaseLabels {
    pub filter: String,
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FilterLabels {
    pub filter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FilterFailureLabels {
    pub filter: String,
    pub reason: &'static str,
}

/// Every metric of one proxy process.
pub struct Metrics {
    registry: Mutex<Registry>,
    pub requests: Family<RequestLabels, WorkerCounter>,
    pub request_duration: HistogramFamily<RouteLabels>,
    pub grpc_calls: Family<GrpcLabels, Counter>,
    pub upstream_connect_errors: Family<ClusterLabels, Counter>,
    pub upstream_timeouts: Family<ClusterLabels, Counter>,
    pub upstream_pending: Family<ClusterLabels, Gauge>,
    pub upstream_active: Family<ClusterLabels, Gauge>,
    pub upstream_overflows: Family<ClusterLabels, Counter>,
    pub upstream_connect_retries: Family<ClusterLabels, Counter>,
    pub endpoint_ejections: Family<ClusterLabels, Counter>,
    pub endpoints_healthy: Family<ClusterLabels, Gauge>,
    pub dns_lookups: Family<DnsLabels, Counter>,
    pub connections_open: Family<ListenerLabels, Gauge>,
    pub connections: Family<ListenerLabels, Counter>,
    pub limit_hits: Family<LimitLabels, Counter>,
    pub reloads: Family<OutcomeLabels, Counter>,
    pub filter_duration: HistogramFamily<FilterPhaseLabels>,
    pub filter_failures: Family<FilterFailureLabels, Counter>,
    pub filter_instances_created: Family<FilterLabels, Counter>,
    pub filter_instances_idle: Family<FilterLabels, WorkerGauge>,
    pub filter_metric_series_dropped: Family<FilterLabels, Counter>,
    guest: Mutex<HashMap<String, GuestFamily>>,
}

/// A number a filter gave a metric: an `f64`, as the WIT passes it, exposed as an
/// integer when it is one, so that a count of requests reads `2` and not `2.0`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GuestNumber(pub f64);

impl GuestNumber {
    /// The integer it is, if it is one that an `f64` holds exactly.
    fn integer(self) -> Option<i64> {
        const EXACT: f64 = (1u64 << 53) as f64;
        (self.0.fract() == 0.0 && self.0.abs() <= EXACT).then_some(self.0 as i64)
    }
}

impl EncodeCounterValue for GuestNumber {
    fn encode(&self, encoder: &mut CounterValueEncoder) -> std::fmt::Result {
        match self.integer() {
            Some(n) if n >= 0 => EncodeCounterValue::encode(&(n as u64), encoder),
            _ => EncodeCounterValue::encode(&self.0, encoder),
        }
    }
}

impl EncodeGaugeValue for GuestNumber {
    fn encode(&self, encoder: &mut GaugeValueEncoder) -> std::fmt::Result {
        match self.integer() {
            Some(n) => EncodeGaugeValue::encode(&n, encoder),
            None => EncodeGaugeValue::encode(&self.0, encoder),
        }
    }
}

/// Where a filter's counter or gauge keeps its `GuestNumber`: the bits of an `f64`.
#[derive(Debug, Default)]
pub struct GuestValue(AtomicU64);

impl GuestValue {
    /// Applies `f`, returning the value before.
    fn update(&self, f: impl Fn(f64) -> f64) -> GuestNumber {
        let old = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some(f(f64::from_bits(bits)).to_bits())
            })
            .unwrap_or_else(|bits| bits);
        GuestNumber(f64::from_bits(old))
    }

    fn load(&self) -> GuestNumber {
        GuestNumber(f64::from_bits(self.0.load(Ordering::Relaxed)))
    }
}

impl prometheus_client::metrics::counter::Atomic<GuestNumber> for GuestValue {
    fn inc(&self) -> GuestNumber {
        self.update(|v| v + 1.0)
    }
    fn inc_by(&self, by: GuestNumber) -> GuestNumber {
        self.update(|v| v + by.0)
    }
    fn get(&self) -> GuestNumber {
        self.load()
    }
}

impl prometheus_client::metrics::gauge::Atomic<GuestNumber> for GuestValue {
    fn inc(&self) -> GuestNumber {
        self.update(|v| v + 1.0)
    }
    fn inc_by(&self, by: GuestNumber) -> GuestNumber {
        self.update(|v| v + by.0)
    }
    fn dec(&self) -> GuestNumber {
        self.update(|v| v - 1.0)
    }
    fn dec_by(&self, by: GuestNumber) -> GuestNumber {
        self.update(|v| v - by.0)
    }
    fn set(&self, to: GuestNumber) -> GuestNumber {
        self.update(|_| to.0)
    }
    fn get(&self) -> GuestNumber {
        self.load()
    }
}

/// A metric a filter declared. Label names are fixed at declaration.
#[derive(Clone)]
pub enum GuestFamily {
    Counter(
        Family<Vec<(String, String)>, Counter<GuestNumber, GuestValue>>,
        GuestLabels,
    ),
    Gauge(
        Family<Vec<(String, String)>, Gauge<GuestNumber, GuestValue>>,
        GuestLabels,
    ),
    Histogram(
        Family<Vec<(String, String)>, Histogram, Buckets>,
        GuestLabels,
    ),
}

/// A guest metric's label names, and how many label sets it has made (shared by the
/// filters and reloads that declare it, as its family is).
#[derive(Clone)]
pub struct GuestLabels {
    names: Vec<String>,
    sets: Arc<AtomicUsize>,
}

impl GuestFamily {
    pub fn label_names(&self) -> &[String] {
        &self.labels().names
    }

    fn labels(&self) -> &GuestLabels {
        match self {
            GuestFamily::Counter(_, l)
            | GuestFamily::Gauge(_, l)
            | GuestFamily::Histogram(_, l) => l,
        }
    }

    /// Whether an update with `labels` fits under `max` label sets: a set the metric
    /// has, or a new one while there is room (then counted; two updates making the
    /// same new set at once count it twice, erring on the safe side).
    pub fn admits(&self, labels: &Vec<(String, String)>, max: usize) -> bool {
        let has = match self {
            GuestFamily::Counter(f, _) => f.get(labels).is_some(),
            GuestFamily::Gauge(f, _) => f.get(labels).is_some(),
            GuestFamily::Histogram(f, _) => f.get(labels).is_some(),
        };
        has || self
            .labels()
            .sets
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }
}

/// Makes histograms with a filter's bucket bounds.
#[derive(Clone)]
pub struct Buckets(Arc<[f64]>);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

/// What a guest asked to declare.
pub enum GuestKind {
    Counter,
    Gauge,
    Histogram(Vec<f64>),
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("weft");
        let requests = Family::default();
        r.register(
            "requests",
            "Requests by listener, cluster and status class (none: the client left before a response)",
            requests.clone(),
        );
        let grpc_calls = Family::default();
        r.register(
            "grpc_calls",
            "gRPC calls by listener, cluster and the status their client read (CANCELLED: the client went away first; none: the call ended without one)",
            grpc_calls.clone(),
        );
        let request_duration: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(latency_histogram);
        r.register_with_unit(
            "request_duration",
            "Time from the request's arrival to the last byte of the response",
            Unit::Seconds,
            request_duration.clone(),
        );
        let upstream_connect_errors = Family::default();
        r.register(
            "upstream_connect_errors",
            "Failed connection attempts to upstream endpoints",
            upstream_connect_errors.clone(),
        );
        let upstream_timeouts = Family::default();
        r.register(
            "upstream_timeouts",
            "Requests that hit a connect, request or idle timeout upstream",
            upstream_timeouts.clone(),
        );
        let upstream_pending = Family::default();
        r.register(
            "upstream_pending_requests",
            "Requests waiting at an endpoint's connection limit for a connection to come free",
            upstream_pending.clone(),
        );
        let upstream_active = Family::default();
        r.register(
            "upstream_active_requests",
            "Requests in flight to a cluster with max_requests",
            upstream_active.clone(),
        );
        let upstream_overflows = Family::default();
        r.register(
            "upstream_overflows",
            "Requests refused because their cluster had max_requests in flight",
            upstream_overflows.clone(),
        );
        let upstream_connect_retries = Family::default();
        r.register(
            "upstream_connect_retries",
            "Requests sent again because the upstream did not process them (no connection, a connection lost before taking them, a stream refused)",
            upstream_connect_retries.clone(),
        );
        let endpoint_ejections = Family::default();
        r.register(
            "endpoint_ejections",
            "Endpoints ejected by outlier detection or marked down by health checks",
            endpoint_ejections.clone(),
        );
        let endpoints_healthy = Family::default();
        r.register(
            "endpoints_healthy",
            "Endpoints currently eligible for traffic",
            endpoints_healthy.clone(),
        );
        let dns_lookups = Family::default();
        r.register(
            "dns_lookups",
            "Lookups of endpoint host names, at start and every dns_refresh",
            dns_lookups.clone(),
        );
        let connections_open = Family::default();
        r.register(
            "downstream_connections_open",
            "Open downstream connections",
            connections_open.clone(),
        );
        let connections = Family::default();
        r.register(
            "downstream_connections",
            "Downstream connections accepted",
            connections.clone(),
        );
        let limit_hits = Family::default();
        r.register(
            "limit_hits",
            "Clients turned away or cut off by a protection limit",
            limit_hits.clone(),
        );
        let reloads = Family::default();
        r.register(
            "config_reloads",
            "Config reloads, applied or refused",
            reloads.clone(),
        );
        let filter_duration: HistogramFamily<FilterPhaseLabels> =
            Family::new_with_constructor(filter_histogram);
        r.register_with_unit(
            "filter_duration",
            "Time spent inside each filter, per phase",
            Unit::Seconds,
            filter_duration.clone(),
        );
        let filter_failures = Family::default();
        r.register(
            "filter_failures",
            "Filter calls that trapped, ran out of time or memory, or answered invalidly",
            filter_failures.clone(),
        );
        let filter_instances_created = Family::default();
        r.register(
            "filter_instances_created",
            "Filter instances made (the first, replacements for worn-out or trapped ones, and extras under concurrency)",
            filter_instances_created.clone(),
        );
        let filter_instances_idle = Family::default();
        r.register(
            "filter_instances_idle",
            "Filter instances kept for reuse (given back after 10 s without use)",
            filter_instances_idle.clone(),
        );
        let filter_metric_series_dropped = Family::default();
        r.register(
            "filter_metric_series_dropped",
            "Updates of a filter's metrics dropped because they would have made a label set past limits.metric_series",
            filter_metric_series_dropped.clone(),
        );
        Metrics {
            registry: Mutex::new(r),
            requests,
            request_duration,
            grpc_calls,
            upstream_connect_errors,
            upstream_timeouts,
            upstream_pending,
            upstream_active,
            upstream_overflows,
            upstream_connect_retries,
            endpoint_ejections,
            endpoints_healthy,
            dns_lookups,
            connections_open,
            connections,
            limit_hits,
            reloads,
            filter_duration,
            filter_failures,
            filter_instances_created,
            filter_instances_idle,
            filter_metric_series_dropped,
            guest: Mutex::new(HashMap::new()),
        }
    }

    /// The OpenMetrics text exposition (what scrapers that ask for it get).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    /// The Prometheus text exposition (format 0.0.4), for clients that do not ask for
    /// OpenMetrics: curl, `promtool check metrics`, older scrapers.
    pub fn encode_prometheus(&self) -> String {
        openmetrics_to_prometheus(&self.encode())
    }

    pub fn limit_hit(&self, listener: &str, limit: Limit) {
        self.limit_hits
            .get_or_create(&LimitLabels {
                listener: listener.to_string(),
                limit,
            })
            .inc();
    }

    /// What makes a listener's per-cluster request series when they are first used.
    pub fn route_stats_source(&self) -> RouteStatsSource {
        RouteStatsSource {
            requests: self.requests.clone(),
            request_duration: self.request_duration.clone(),
            grpc_calls: self.grpc_calls.clone(),
        }
    }

    /// `limited`: whether the cluster has a `max_requests`, whose requests in flight
    /// are counted (no series otherwise, rather than one that always reads 0).
    pub fn cluster_stats(&self, cluster: &str, limited: bool) -> ClusterStats {
        let l = ClusterLabels {
            cluster: cluster.to_string(),
        };
        ClusterStats {
            connect_errors: self.upstream_connect_errors.get_or_create(&l).clone(),
            timeouts: self.upstream_timeouts.get_or_create(&l).clone(),
            pending: self.upstream_pending.get_or_create(&l).clone(),
            active: limited.then(|| self.upstream_active.get_or_create(&l).clone()),
            overflows: self.upstream_overflows.get_or_create(&l).clone(),
            connect_retries: self.upstream_connect_retries.get_or_create(&l).clone(),
            ejections: self.endpoint_ejections.get_or_create(&l).clone(),
            healthy: self.endpoints_healthy.get_or_create(&l).clone(),
            dns_lookups: self.dns_lookups.clone(),
        }
    }

    /// Declares (or finds) a metric of a filter. The exposed name is
    /// `weft_filter_<name>`; the filter's name becomes the `filter` label.
    pub fn guest_metric(
        &self,
        name: &str,
        help: &str,
        kind: GuestKind,
        labels: Vec<String>,
    ) -> Result<GuestFamily, String> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(format!(
                "metric name {name:?} must be snake_case ([a-z0-9_]+)"
            ));
        }
        if let Some(bad) = labels
            .iter()
            .find(|l| l.is_empty() || !l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            return Err(format!("label name {bad:?} must be [A-Za-z0-9_]+"));
        }
        if labels.iter().any(|l| l == "filter") {
            return Err("the label \"filter\" is set by the proxy".into());
        }
        // The exposition adds `_total` to counters itself.
        let name = match kind {
            GuestKind::Counter => name.strip_suffix("_total").unwrap_or(name),
            _ => name,
        };
        let mut guest = self.guest.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = guest.get(name) {
            let same_kind = matches!(
                (existing, &kind),
                (GuestFamily::Counter(..), GuestKind::Counter)
                    | (GuestFamily::Gauge(..), GuestKind::Gauge)
                    | (GuestFamily::Histogram(..), GuestKind::Histogram(_))
            );
            if !same_kind || existing.label_names()[1..] != labels[..] {
                return Err(format!(
                    "metric {name:?} is already declared with another kind or other labels"
                ));
            }
            return Ok(existing.clone());
        }
        let mut names = vec!["filter".to_string()];
        names.extend(labels);
        let all_labels = GuestLabels {
            names,
            sets: Default::default(),
        };
        let full = format!("filter_{name}");
        let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let family = match kind {
            GuestKind::Counter => {
                let f = Family::default();
                registry.register(full, help, f.clone());
                GuestFamily::Counter(f, all_labels)
            }
            GuestKind::Gauge => {
                let f = Family::default();
                registry.register(full, help, f.clone());
                GuestFamily::Gauge(f, all_labels)
            }
            GuestKind::Histogram(buckets) => {
                let buckets: Vec<f64> = if buckets.is_empty() {
                    exponential_buckets(0.001, 2.0, 14).collect()
                } else {
                    buckets
                };
                if buckets.windows(2).any(|w| w[0] >= w[1])
                    || buckets.iter().any(|b| !b.is_finite())
                {
                    return Err("histogram buckets must be finite and increasing".into());
                }
                let f = Family::new_with_constructor(Buckets(buckets.into()));
                registry.register(full, help, f.clone());
                GuestFamily::Histogram(f, all_labels)
            }
        };
        guest.insert(name.to_string(), family.clone());
        Ok(family)
    }
}

/// Rewrites OpenMetrics text as Prometheus text. The two differ, for what we expose,
/// in that OpenMetrics names a counter family without the `_total` its samples carry
/// (a Prometheus parser then sees samples of an untyped, undocumented family), and
/// has `# UNIT` and `# EOF` lines.
fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len() + 16 * counters.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let counter_comment = ["# HELP ", "# TYPE "].into_iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters.contains(name).then_some((prefix, name, tail))
        });
        match counter_comment {
            Some((prefix, name, tail)) => {
                out.push_str(prefix);
                out.push_str(name);
                out.push_str("_total ");
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The families a listener's per-cluster request series live in (see
/// `ListenerRuntime::stats`, which makes a pair's series on its first request).
#[derive(Clone)]
pub struct RouteStatsSource {
    requests: Family<RequestLabels, WorkerCounter>,
    request_duration: HistogramFamily<RouteLabels>,
    grpc_calls: Family<GrpcLabels, Counter>,
}

impl RouteStatsSource {
    pub fn make(&self, listener: &str, cluster: &str) -> RouteStats {
        let by_class = STATUS_CLASSES.map(|status_class| {
            self.requests
                .get_or_create(&RequestLabels {
                    listener: listener.to_string(),
                    cluster: cluster.to_string(),
                    status_class,
                })
                .clone()
        });
        let duration = self
            .request_duration
            .get_or_create(&RouteLabels {
                listener: listener.to_string(),
                cluster: cluster.to_string(),
            })
            .clone();
        RouteStats {
            by_class,
            duration,
            grpc: Arc::new(GrpcSeries {
                family: self.grpc_calls.clone(),
                listener: listener.to_string(),
                cluster: cluster.to_string(),
                by_code: Default::default(),
            }),
        }
    }
}

/// A listener and cluster pair's gRPC call counters, made on first use of each code
/// (a pair that carries no gRPC shows none).
struct GrpcSeries {
    family: Family<GrpcLabels, Counter>,
    listener: String,
    cluster: String,
    /// Codes 0 to 16, then `none`.
    by_code: [std::sync::OnceLock<Counter>; 18],
}

/// Metric handles of one listener and cluster pair.
#[derive(Clone)]
pub struct RouteStats {
    by_class: [WorkerCounter; 6],
    duration: WorkerHistogram,
    grpc: Arc<GrpcSeries>,
}

impl RouteStats {
    pub fn record(&self, status: u16, seconds: f64) {
        self.by_class[status_class_index(status)].inc();
        self.duration.observe(seconds);
    }

    /// Counts a gRPC call that ended with `code` (`None`: with no status).
    pub fn record_grpc(&self, code: Option<u8>) {
        let g = &*self.grpc;
        let i = code.map_or(17, |c| usize::from(c.min(16)));
        g.by_code[i]
            .get_or_init(|| {
                g.family
                    .get_or_create(&GrpcLabels {
                        listener: g.listener.clone(),
                        cluster: g.cluster.clone(),
                        code: code.map_or("none", crate::proxy::grpc::code_name),
                    })
                    .clone()
            })
            .inc();
    }
}

#[derive(Clone)]
pub struct ClusterStats {
    pub connect_errors: Counter,
    pub timeouts: Counter,
    /// Requests waiting at a connection limit now (`upstream::pool`).
    pub pending: Gauge,
    /// Requests in flight, for a cluster with `max_requests` (`Cluster::admit`).
    pub active: Option<Gauge>,
    pub overflows: Counter,
    pub connect_retries: Counter,
    pub ejections: Counter,
    pub healthy: Gauge,
    /// Resolved per lookup (off the request path), so that clusters of IP addresses
    /// show no DNS series at all.
    dns_lookups: Family<DnsLabels, Counter>,
}

impl ClusterStats {
    /// Counts one lookup of a host name of `cluster`'s endpoints.
    pub fn dns_lookup(&self, cluster: &str, outcome: DnsOutcome) {
        self.dns_lookups
            .get_or_create(&DnsLabels {
                cluster: cluster.to_string(),
                outcome,
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family, once it has a series, is named in docs/metrics.md. The pattern
    /// names every field, so a new family fails to build here until it is touched.
    #[test]
    fn docs_name_every_metric() {
        let m = Metrics::new();
        let Metrics {
            registry: _,
            requests,
            request_duration,
            grpc_calls,
            upstream_connect_errors,
            upstream_timeouts,
            upstream_pending,
            upstream_active,
            upstream_overflows,
            upstream_connect_retries,
            endpoint_ejections,
            endpoints_healthy,
            dns_lookups,
            connections_open,
            connections,
            limit_hits,
            reloads,
            filter_duration,
            filter_failures,
            filter_instances_created,
            filter_instances_idle,
            filter_metric_series_dropped,
            guest: _,
        } = &m;
        let (l, c, f) = (
            ListenerLabels {
                listener: "l".into(),
            },
            ClusterLabels {
                cluster: "c".into(),
            },
            FilterLabels { filter: "f".into() },
        );
        let route = RouteLabels {
            listener: "l".into(),
            cluster: "c".into(),
        };
        let _ = requests.get_or_create(&RequestLabels {
            listener: "l".into(),
            cluster: "c".into(),
            status_class: "2xx",
        });
        let _ = request_duration.get_or_create(&route);
        let _ = grpc_calls.get_or_create(&GrpcLabels {
            listener: "l".into(),
            cluster: "c".into(),
            code: "OK",
        });
        let _ = upstream_connect_errors.get_or_create(&c);
        let _ = upstream_timeouts.get_or_create(&c);
        let _ = upstream_pending.get_or_create(&c);
        let _ = upstream_active.get_or_create(&c);
        let _ = upstream_overflows.get_or_create(&c);
        let _ = upstream_connect_retries.get_or_create(&c);
        let _ = endpoint_ejections.get_or_create(&c);
        let _ = endpoints_healthy.get_or_create(&c);
        let _ = dns_lookups.get_or_create(&DnsLabels {
            cluster: "c".into(),
            outcome: DnsOutcome::resolved,
        });
        let _ = connections_open.get_or_create(&l);
        let _ = connections.get_or_create(&l);
        let _ = limit_hits.get_or_create(&LimitLabels {
            listener: "l".into(),
            limit: Limit::header_size,
        });
        let _ = reloads.get_or_create(&OutcomeLabels {
            outcome: Outcome::applied,
        });
        let _ = filter_duration.get_or_create(&FilterPhaseLabels {
            filter: "f".into(),
            phase: "request_headers",
        });
        let _ = filter_failures.get_or_create(&FilterFailureLabels {
            filter: "f".into(),
            reason: "trap",
        });
        let _ = filter_instances_created.get_or_create(&f);
        let _ = filter_instances_idle.get_or_create(&f);
        let _ = filter_metric_series_dropped.get_or_create(&f);

        let docs = include_str!("../../../docs/metrics.md");
        let text = m.encode_prometheus();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE ")?.split(' ').next())
            .collect();
        assert_eq!(names.len(), 21, "{text}");
        let missing: Vec<&&str> = names
            .iter()
            .filter(|n| !docs.contains(&format!("`{n}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "docs/metrics.md does not name these metrics: {missing:?}"
        );
    }

    #[test]
    fn filters_numbers_print_as_integers_when_they_are() {
        let m = Metrics::new();
        let labels = vec![("filter".to_string(), "f".to_string())];
        let Ok(GuestFamily::Counter(c, _)) =
            m.guest_metric("hits", "h", GuestKind::Counter, vec![])
        else {
            panic!("a counter");
        };
        let Ok(GuestFamily::Gauge(g, _)) = m.guest_metric("level", "l", GuestKind::Gauge, vec![])
        else {
            panic!("a gauge");
        };
        let Ok(GuestFamily::Counter(bytes, _)) =
            m.guest_metric("bytes", "b", GuestKind::Counter, vec![])
        else {
            panic!("a counter");
        };
        let _ = c.get_or_create(&labels).inc_by(GuestNumber(1.0));
        let _ = c.get_or_create(&labels).inc();
        let _ = g.get_or_create(&labels).set(GuestNumber(5.0));
        let _ = g.get_or_create(&labels).dec_by(GuestNumber(7.0));
        let _ = bytes.get_or_create(&labels).inc_by(GuestNumber(0.25));
        let text = m.encode_prometheus();
        for line in [
            "weft_filter_hits_total{filter=\"f\"} 2\n",
            "weft_filter_level{filter=\"f\"} -2\n",
            "weft_filter_bytes_total{filter=\"f\"} 0.25\n",
        ] {
            assert!(text.contains(line), "{line}in:\n{text}");
        }
    }

    #[test]
    fn route_stats_show_in_exposition() {
        let m = Metrics::new();
        let s = m.route_stats_source().make("edge", "api");
        s.record(204, 0.003);
        s.record(503, 0.1);
        let text = m.encode();
        assert!(
            text.contains(
                r#"weft_requests_total{listener="edge",cluster="api",status_class="2xx"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"weft_requests_total{listener="edge",cluster="api",status_class="5xx"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "weft_request_duration_seconds_count{listener=\"edge\",cluster=\"api\"} 2"
            ),
            "{text}"
        );
    }

    #[test]
    fn filter_calls_are_bucketed_finely_around_microseconds() {
        let m = Metrics::new();
        let h = m.filter_duration.get_or_create(&FilterPhaseLabels {
            filter: "f".into(),
            phase: "request_headers",
        });
        for seconds in [1.8e-6, 2.5e-6, 2.9e-6, 0.5] {
            h.observe(seconds);
        }
        let text = m.encode_prometheus();
        let bucket = |le: &str| {
            format!("weft_filter_duration_seconds_bucket{{le=\"{le}\",filter=\"f\",phase=\"request_headers\"}} ")
        };
        for (le, count) in [
            ("0.000001", 0),
            ("0.0000015", 0),
            ("0.000002", 1),
            ("0.000003", 3),
            ("0.098304", 3),
            ("+Inf", 4),
        ] {
            assert!(
                text.contains(&format!("{}{count}\n", bucket(le))),
                "no {} {count} in\n{text}",
                bucket(le)
            );
        }
    }

    #[test]
    fn statuses_fall_in_their_class_and_no_status_in_none() {
        let classes =
            [0, 101, 200, 302, 404, 503, 999].map(|s| STATUS_CLASSES[status_class_index(s)]);
        assert_eq!(classes, ["none", "1xx", "2xx", "3xx", "4xx", "5xx", "5xx"]);
    }

    #[test]
    fn prometheus_text_names_counters_with_their_suffix() {
        let m = Metrics::new();
        m.route_stats_source().make("edge", "api").record(200, 0.01);
        m.reloads
            .get_or_create(&OutcomeLabels {
                outcome: Outcome::applied,
            })
            .inc();
        let om = m.encode();
        assert!(om.contains("# TYPE weft_requests counter\n"), "{om}");
        assert!(om.ends_with("# EOF\n"), "{om}");
        let text = m.encode_prometheus();
        for expected in [
            "# HELP weft_requests_total Requests by listener, cluster and status class (none: the client left before a response).\n",
            "# TYPE weft_requests_total counter\n",
            "weft_requests_total{listener=\"edge\",cluster=\"api\",status_class=\"2xx\"} 1\n",
            "# TYPE weft_config_reloads_total counter\n",
            "weft_config_reloads_total{outcome=\"applied\"} 1\n",
            "# TYPE weft_request_duration_seconds histogram\n",
        ] {
            assert!(text.contains(expected), "no {expected:?} in\n{text}");
        }
        assert!(!text.contains("# EOF"), "{text}");
        assert!(!text.contains("# UNIT"), "{text}");
        assert!(!text.contains("# TYPE weft_requests counter"), "{text}");
    }

    #[test]
    fn guest_metric_redeclaration_must_match() {
        let m = Metrics::new();
        assert!(m
            .guest_metric("hits", "h", GuestKind::Counter, vec!["outcome".into()])
            .is_ok());
        assert!(m
            .guest_metric("hits", "h", GuestKind::Counter, vec!["outcome".into()])
            .is_ok());
        assert!(m
            .guest_metric("hits", "h", GuestKind::Gauge, vec!["outcome".into()])
            .is_err());
        assert!(m
            .guest_metric("Bad-Name", "h", GuestKind::Counter, vec![])
            .is_err());
    }
}
