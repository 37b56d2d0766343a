//! Upstream clusters: their endpoints (static or resolved from DNS), how one is
//! chosen (`balance`), the connections kept to each (`pool`), how connections are
//! opened (`connect`), and which endpoints are fit for traffic (`health`).
//!
//! A cluster outlives config reloads that leave its definition unchanged, so its
//! pools, latency estimates and ejections carry over.

pub mod balance;
pub mod connect;
mod dns;
pub mod health;
pub mod pool;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{BalancePolicy, ClusterConfig, UpstreamProtocol};
use crate::error::ProxyError;
use crate::telemetry::metrics::ClusterStats;
use balance::{Balancer, Ewma};
use connect::Connector;
use pool::Pool;

/// One address of a cluster, with its connections and health.
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The host as configured (a DNS name or an IP), for SNI and health checks.
    pub host: Arc<str>,
    /// Its share of the traffic relative to the cluster's other endpoints.
    pub weight: u32,
    pub(crate) pool: Pool,
    /// Requests sent and not yet answered.
    pub(crate) pending: AtomicU32,
    pub(crate) ewma: Mutex<Ewma>,
    pub(crate) health: health::EndpointHealth,
    /// Whether it speaks HTTP/2 in clear text: 0 unknown, 1 yes, 2 no.
    h2c: AtomicU8,
}

impl Endpoint {
    fn new(found: dns::Found, now: Instant) -> Self {
        let dns::Found { addr, host, weight } = found;
        Endpoint {
            addr,
            host,
            weight,
            pool: Pool::default(),
            pending: AtomicU32::new(0),
            ewma: Mutex::new(Ewma::new(now)),
            health: health::EndpointHealth::default(),
            h2c: AtomicU8::new(0),
        }
    }
}

/// The endpoints of a cluster at one moment, with what the balancer precomputes.
pub struct EndpointSet {
    pub list: Vec<Arc<Endpoint>>,
    pub(crate) ring: Vec<(u64, u32)>,
    /// Round robin's order when the endpoints' weights differ.
    pub(crate) turns: Option<balance::Turns>,
}

impl EndpointSet {
    pub(crate) fn new(balancer: &Balancer, list: Vec<Arc<Endpoint>>) -> Self {
        EndpointSet {
            ring: balancer.ring_for(&list),
            turns: balance::Turns::new(&list),
            list,
        }
    }
}

/// A named group of endpoints and the policy that spreads requests over them.
pub struct Cluster {
    pub name: Arc<str>,
    pub config: ClusterConfig,
    pub(crate) endpoints: ArcSwap<EndpointSet>,
    pub(crate) connector: Connector,
    /// Digest of the TLS files (CA, certificate, key) the connector was built from.
    tls_files: Option<Vec<u8>>,
    pub(crate) balancer: Balancer,
    pub stats: ClusterStats,
    /// Origin of the millisecond clocks kept in atomics (ejections).
    pub(crate) epoch: Instant,
    rr: AtomicU64,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in self
            .tasks
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

/// How a request wants to reach the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// An ordinary request; `downstream_h2` says whether the client spoke HTTP/2.
    Request { downstream_h2: bool },
    /// An upgrade (WebSocket): a dedicated HTTP/1.1 connection, or for an HTTP/2-only
    /// cluster an extended CONNECT (RFC 8441) stream on its shared connection.
    Upgrade,
}

/// A request counted against its cluster's `max_requests`, until dropped.
pub struct Admitted(prometheus_client::metrics::gauge::Gauge);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A clear-text endpoint not yet probed for HTTP/2 (`Cluster::use_h2_known`).
pub(crate) struct Unprobed;

impl Cluster {
    /// Counts a request in flight against `max_requests`, or refuses it at the limit
    /// (nothing to count without one).
    pub fn admit(&self) -> Result<Option<Admitted>, ProxyError> {
        let Some(active) = &self.stats.active else {
            return Ok(None);
        };
        // The gauge is the count: one atomic add, shared by the cluster's versions
        // across reloads (the series is per cluster name).
        if active.inc() >= self.config.max_requests as i64 {
            active.dec();
            self.stats.overflows.inc();
            return Err(ProxyError::Overflow(self.name.clone()));
        }
        Ok(Some(Admitted(active.clone())))
    }

    /// Builds a cluster and starts its background work (DNS, health checks,
    /// housekeeping). `resolve` maps paths in the config to files.
    pub async fn build(
        config: &ClusterConfig,
        stats: ClusterStats,
        resolve: impl Fn(&Path) -> PathBuf,
    ) -> Result<Arc<Cluster>, String> {
        // Read before the files are loaded: a file replaced in between then shows as
        // changed at the next reload, rather than as unchanged with stale contents.
        let tls_files = tls_files_digest(config, &resolve);
        let tls = config
            .tls
            .as_ref()
            .map(|t| connect::UpstreamTls::new(t, config.protocol, &resolve))
            .transpose()?;
        let connector = Connector {
            tls,
            connect_timeout: config.connect_timeout.0,
            proxy_protocol: config.proxy_protocol,
        };
        let epoch = Instant::now();
        let initial = dns::resolve_all(config, &stats).await;
        let list: Vec<Arc<Endpoint>> = initial
            .addrs
            .into_iter()
            .map(|found| Arc::new(Endpoint::new(found, epoch)))
            .collect();
        let balancer = Balancer::new(&config.balance);
        stats.healthy.set(list.len() as i64);
        let endpoints = EndpointSet::new(&balancer, list);
        let cluster = Arc::new(Cluster {
            name: config.name.as_str().into(),
            config: config.clone(),
            endpoints: ArcSwap::from_pointee(endpoints),
            connector,
            tls_files,
            balancer,
            stats,
            epoch,
            rr: AtomicU64::new(0),
            tasks: Mutex::new(Vec::new()),
        });
        let mut tasks = vec![tokio::spawn(housekeeping(Arc::downgrade(&cluster)))];
        if dns::refreshes(config) {
            tasks.push(tokio::spawn(dns::refresh(Arc::downgrade(&cluster))));
        }
        if let Some(hc) = &config.health_check {
            tasks.push(tokio::spawn(health::active_checks(
                Arc::downgrade(&cluster),
                hc.clone(),
            )));
        }
        *cluster.tasks.lock().unwrap_or_else(|p| p.into_inner()) = tasks;
        Ok(cluster)
    }

    /// Whether the TLS files this cluster was built from still hold what they held
    /// then (always true without TLS). A reload reuses a cluster only if so, so that
    /// rotated certificates and CAs are picked up.
    pub fn tls_files_unchanged(&self, resolve: impl Fn(&Path) -> PathBuf) -> bool {
        match (&self.tls_files, tls_files_digest(&self.config, resolve)) {
            (None, None) => self.config.tls.is_none(),
            (Some(then), Some(now)) => *then == now,
            _ => false,
        }
    }

    /// The endpoints as they are now.
    pub fn endpoints(&self) -> arc_swap::Guard<Arc<EndpointSet>> {
        self.endpoints.load()
    }

    /// Chooses a healthy endpoint; `hash_key` feeds consistent hashing.
    pub fn pick(&self, hash_key: Option<&[u8]>) -> Result<Arc<Endpoint>, ProxyError> {
        self.pick_where(hash_key, |_| true)
            .ok_or_else(|| ProxyError::NoHealthyEndpoint(self.name.to_string()))
    }

    /// A byte tunnel's connection (`CONNECT`, a TCP listener) for `client` (its
    /// address and the one it connected to, for a PROXY header): to an endpoint
    /// `pick` chooses or, when connecting fails, to up to `connect_retries` others,
    /// each result recorded for outlier detection. The endpoint used comes with it;
    /// the last failure when none could be reached.
    pub async fn connect_tunnel(
        &self,
        client: (SocketAddr, SocketAddr),
    ) -> Result<(Arc<Endpoint>, connect::Io), ProxyError> {
        let mut ep = self.pick(None)?;
        let mut tried = Vec::new();
        loop {
            let start = Instant::now();
            match self
                .connector
                .connect(ep.addr, &ep.host, true, Some(client))
                .await
            {
                Ok((io, _)) => {
                    // A success ends a streak of failures, as requests' successes do.
                    self.record(&ep, Ok(start.elapsed()));
                    return Ok((ep, io));
                }
                Err(e) => {
                    self.stats.connect_errors.inc();
                    self.record(&ep, Err(()));
                    tried.push(ep.clone());
                    let next = (tried.len() <= self.config.connect_retries as usize)
                        .then(|| self.pick_avoiding(None, &tried))
                        .flatten();
                    let Some(next) = next else {
                        tracing::warn!(cluster = %self.name, endpoint = %ep.addr, error = %e, "tunnel connect failed");
                        return Err(e);
                    };
                    tracing::debug!(cluster = %self.name, endpoint = %ep.addr, next = %next.addr, error = %e, "tunnel connect failed, trying another endpoint");
                    self.stats.connect_retries.inc();
                    ep = next;
                }
            }
        }
    }

    /// An endpoint as `pick` chooses, other than those `tried`; none if no other is
    /// available. (With a hash key, the next one on the ring.)
    pub fn pick_avoiding(
        &self,
        hash_key: Option<&[u8]>,
        tried: &[Arc<Endpoint>],
    ) -> Option<Arc<Endpoint>> {
        self.pick_where(hash_key, |e| !tried.iter().any(|t| std::ptr::eq(&**t, e)))
    }

    #[inline]
    fn pick_where(
        &self,
        hash_key: Option<&[u8]>,
        also: impl Fn(&Endpoint) -> bool,
    ) -> Option<Arc<Endpoint>> {
        let set = self.endpoints.load();
        // The clock is read only if some endpoint has ever been ejected.
        let read = std::cell::OnceCell::new();
        let now_ms = || *read.get_or_init(|| self.now_ms());
        let n = self.rr.fetch_add(1, Ordering::Relaxed);
        self.balancer
            .pick(&set, hash_key, n, |e| {
                e.health.is_available_at(now_ms) && also(e)
            })
            .cloned()
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    fn ms_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Whether upgrades reach this cluster as extended CONNECTs over HTTP/2 (it speaks
    /// nothing else) rather than as HTTP/1.1 upgrades, which WebSocket servers expect.
    pub fn upgrades_over_h2(&self) -> bool {
        self.config.protocol == UpstreamProtocol::Http2
    }

    /// Whether this request should go over HTTP/2 to `ep`, deciding for clear-text
    /// `auto` clusters by probing the endpoint once.
    pub(crate) async fn use_h2(&self, ep: &Endpoint, want: Want) -> Option<bool> {
        match self.use_h2_known(ep, want) {
            Ok(known) => known,
            Err(Unprobed) => {
                let prelude = self
                    .connector
                    .proxy_protocol
                    .map(|v| connect::proxy_header(v, None))
                    .unwrap_or_default();
                let yes =
                    connect::probe_h2c(ep.addr, self.connector.connect_timeout, &prelude).await;
                ep.h2c.store(if yes { 1 } else { 2 }, Ordering::Relaxed);
                tracing::debug!(cluster = %self.name, endpoint = %ep.addr, h2c = yes, "probed for clear-text HTTP/2");
                Some(yes)
            }
        }
    }

    /// `use_h2` when it is known without probing, as it is on every request but an
    /// endpoint's first (a plain call: the request path need not poll a future).
    pub(crate) fn use_h2_known(&self, ep: &Endpoint, want: Want) -> Result<Option<bool>, Unprobed> {
        let downstream_h2 = match want {
            Want::Upgrade => return Ok(Some(self.upgrades_over_h2())),
            Want::Request { downstream_h2 } => downstream_h2,
        };
        Ok(match (self.config.protocol, self.connector.tls.is_some()) {
            (UpstreamProtocol::Http1, _) => Some(false),
            (UpstreamProtocol::Http2, _) => Some(true),
            // Under TLS, ALPN decides when the connection is made.
            (UpstreamProtocol::Auto, true) => None,
            (UpstreamProtocol::Auto, false) if !downstream_h2 => Some(false),
            (UpstreamProtocol::Auto, false) => match ep.h2c.load(Ordering::Relaxed) {
                1 => Some(true),
                2 => Some(false),
                _ => return Err(Unprobed),
            },
        })
    }

    /// Records how a request to `ep` went, for balancing and outlier detection.
    pub fn record(&self, ep: &Endpoint, outcome: Result<Duration, ()>) {
        self.record_at(ep, outcome, Instant::now())
    }

    /// As `record`, for an outcome known at `now` (a clock read the caller made).
    pub fn record_at(&self, ep: &Endpoint, outcome: Result<Duration, ()>, now: Instant) {
        match outcome {
            Ok(latency) => {
                // Only least-request reads the estimate (a policy change rebuilds
                // the cluster, estimates included).
                if self.config.balance.policy == BalancePolicy::LeastRequest {
                    ep.ewma.lock().unwrap_or_else(|p| p.into_inner()).observe(
                        latency,
                        self.config.balance.ewma_decay.0,
                        now,
                    );
                }
                ep.health.success(self.ms_at(now), &self.config.outlier);
            }
            Err(()) => health::failure(self, ep),
        }
    }
}

/// The digest of the cluster's TLS files; `None` without TLS or when one cannot be read.
fn tls_files_digest(config: &ClusterConfig, resolve: impl Fn(&Path) -> PathBuf) -> Option<Vec<u8>> {
    let t = config.tls.as_ref()?;
    let files: Vec<PathBuf> = [&t.ca, &t.cert, &t.key]
        .into_iter()
        .flatten()
        .map(|p| resolve(p))
        .collect();
    crate::tls::files_digest(&files)
}

/// Closes idle connections past their time and keeps the healthy gauge true.
async fn housekeeping(cluster: std::sync::Weak<Cluster>) {
    let period = Duration::from_secs(1);
    loop {
        tokio::time::sleep(period).await;
        let Some(c) = cluster.upgrade() else { return };
        let idle = c.config.pool.idle_timeout.0;
        let now_ms = c.now_ms();
        let set = c.endpoints.load();
        let mut healthy = 0;
        for ep in &set.list {
            ep.pool.sweep(idle);
            if ep.health.is_available(now_ms) {
                healthy += 1;
            }
        }
        c.stats.healthy.set(healthy);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::Metrics;

    /// Four endpoints (never connected to) balanced by `balance`.
    async fn cluster(balance: &str) -> Arc<Cluster> {
        let text = format!(
            "name = \"c\"\nendpoints = [\"127.0.0.1:1001\", \"127.0.0.1:1002\", \
             \"127.0.0.1:1003\", \"127.0.0.1:1004\"]\nbalance = {{ {balance} }}"
        );
        let config: ClusterConfig = toml::from_str(&text).unwrap();
        Cluster::build(&config, Metrics::new().cluster_stats("c", false), |p| {
            p.to_path_buf()
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn another_endpoint_is_never_one_already_tried() {
        for balance in [
            r#"policy = "round_robin""#,
            r#"policy = "least_request""#,
            r#"policy = "consistent_hash", hash_header = "x-user""#,
        ] {
            let c = cluster(balance).await;
            let key = Some(&b"alice"[..]);
            let mut tried = vec![c.pick(key).unwrap()];
            while let Some(next) = c.pick_avoiding(key, &tried) {
                assert!(
                    !tried.iter().any(|t| Arc::ptr_eq(t, &next)),
                    "{balance}: {} again",
                    next.addr
                );
                tried.push(next);
            }
            assert_eq!(tried.len(), 4, "{balance}: every endpoint, once");
        }
        // With a hash key the second choice is stable too: the next on the ring.
        let c = cluster(r#"policy = "consistent_hash", hash_header = "x-user""#).await;
        let key = Some(&b"bob"[..]);
        let first = [c.pick(key).unwrap()];
        let second = c.pick_avoiding(key, &first).unwrap();
        for _ in 0..10 {
            assert!(Arc::ptr_eq(&c.pick(key).unwrap(), &first[0]));
            assert!(Arc::ptr_eq(&c.pick_avoiding(key, &first).unwrap(), &second));
        }
    }
}
