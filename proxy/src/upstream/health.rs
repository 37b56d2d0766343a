//! Which endpoints may take traffic: passive outlier ejection (consecutive failures
//! eject an endpoint for a back-off that doubles with each ejection) and optional
//! active HTTP health checks.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use http::Request;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;

use super::{Cluster, Endpoint};
use crate::config::{HealthCheckConfig, HealthCheckProtocol, OutlierConfig, UpstreamProtocol};

#[derive(Default)]
pub struct EndpointHealth {
    consecutive_failures: AtomicU32,
    /// Milliseconds since the cluster's epoch until which the endpoint is ejected (0: never ejected).
    ejected_until_ms: AtomicU64,
    /// How many times in a row it was ejected, for the back-off.
    ejections: AtomicU32,
    /// Marked down by active health checks.
    down: AtomicBool,
}

impl EndpointHealth {
    pub fn is_available(&self, now_ms: u64) -> bool {
        self.is_available_at(|| now_ms)
    }

    /// As `is_available`, reading the time only for an endpoint ever ejected.
    pub fn is_available_at(&self, now_ms: impl FnOnce() -> u64) -> bool {
        if self.down.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until == 0 || until <= now_ms()
    }

    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    pub(super) fn success(&self, now_ms: u64, cfg: &OutlierConfig) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        // Forget past ejections once the endpoint has behaved for a long while.
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        if until != 0
            && now_ms > until + cfg.max_ejection.0.as_millis() as u64
            && self.ejections.load(Ordering::Relaxed) != 0
        {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }
}

/// Charges `ep` with a failure, ejecting it when it reaches the threshold.
pub(super) fn failure(cluster: &Cluster, ep: &Endpoint) {
    let cfg = &cluster.config.outlier;
    let failures = ep
        .health
        .consecutive_failures
        .fetch_add(1, Ordering::Relaxed)
        + 1;
    if cfg.consecutive_failures == 0 || failures < cfg.consecutive_failures {
        return;
    }
    let now_ms = cluster.now_ms();
    if ep.health.is_ejected(now_ms) {
        return;
    }
    let set = cluster.endpoints.load();
    let ejected = set
        .list
        .iter()
        .filter(|e| e.health.is_ejected(now_ms))
        .count();
    if (ejected + 1) * 100 > usize::from(cfg.max_ejected_percent) * set.list.len() {
        tracing::warn!(cluster = %cluster.name, endpoint = %ep.addr, failures, "endpoint failing but not ejected: max_ejected_percent reached");
        return;
    }
    let n = ep.health.ejections.fetch_add(1, Ordering::Relaxed);
    let backoff = cfg
        .base_ejection
        .0
        .saturating_mul(1u32 << n.min(16))
        .min(cfg.max_ejection.0);
    ep.health
        .ejected_until_ms
        .store(now_ms + backoff.as_millis() as u64, Ordering::Relaxed);
    ep.health.consecutive_failures.store(0, Ordering::Relaxed);
    cluster.stats.ejections.inc();
    tracing::warn!(cluster = %cluster.name, endpoint = %ep.addr, failures, ejection_secs = backoff.as_secs_f64(), "endpoint ejected after consecutive failures");
}

/// Checks every endpoint each interval; thresholds turn streaks into up or down.
pub(super) async fn active_checks(cluster: Weak<Cluster>, cfg: HealthCheckConfig) {
    // Streaks per endpoint address: positive = successes, negative = failures.
    let mut streaks: std::collections::HashMap<std::net::SocketAddr, i64> = Default::default();
    let mut tick = tokio::time::interval(cfg.interval.0);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(c) = cluster.upgrade() else { return };
        let set = c.endpoints.load_full();
        let checks = set.list.iter().map(|ep| {
            let c = c.clone();
            let ep = ep.clone();
            let cfg = cfg.clone();
            async move { (ep.clone(), check_once(&c, &ep, &cfg).await) }
        });
        let results = futures_util::future::join_all(checks).await;
        for (ep, result) in results {
            let s = streaks.entry(ep.addr).or_insert(0);
            *s = match (&result, *s) {
                (Ok(()), s) if s > 0 => s + 1,
                (Ok(()), _) => 1,
                (Err(_), s) if s < 0 => s - 1,
                (Err(_), _) => -1,
            };
            let down = ep.health.is_down();
            if !down && *s <= -(cfg.unhealthy_threshold as i64) {
                ep.health.down.store(true, Ordering::Relaxed);
                c.stats.ejections.inc();
                let reason = result.err().unwrap_or_default();
                tracing::warn!(cluster = %c.name, endpoint = %ep.addr, %reason, "health check: endpoint down");
            } else if down && *s >= cfg.healthy_threshold as i64 {
                ep.health.down.store(false, Ordering::Relaxed);
                tracing::info!(cluster = %c.name, endpoint = %ep.addr, "health check: endpoint up");
            }
        }
        streaks.retain(|addr, _| set.list.iter().any(|e| e.addr == *addr));
    }
}

/// One check on a fresh connection: for HTTP a GET, 2xx and 3xx healthy; for TCP
/// the connection itself (TLS included, when the cluster has it).
async fn check_once(
    c: &Arc<Cluster>,
    ep: &Endpoint,
    cfg: &HealthCheckConfig,
) -> Result<(), String> {
    let attempt = async {
        let (io, alpn_h2) = c
            .connector
            .connect(ep.addr, &ep.host, false, None)
            .await
            .map_err(|e| e.to_string())?;
        let path = match (cfg.protocol, cfg.path.as_deref()) {
            (HealthCheckProtocol::Tcp, _) => return Ok(()),
            (HealthCheckProtocol::Http, path) => path.unwrap_or("/"),
        };
        let h2 = alpn_h2 || c.config.protocol == UpstreamProtocol::Http2;
        let scheme = if c.connector.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let status = if h2 {
            let (mut send, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                TokioIo::new(io),
            )
            .await
            .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let uri = format!("{scheme}://{}{path}", ep.host_port());
            let req = Request::get(uri)
                .body(Empty::<bytes::Bytes>::new())
                .map_err(|e| e.to_string())?;
            send.send_request(req)
                .await
                .map_err(|e| e.to_string())?
                .status()
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let req = Request::get(path)
                .header(http::header::HOST, ep.host_port())
                .header(http::header::USER_AGENT, "weft-health-check")
                .body(Empty::<bytes::Bytes>::new())
                .map_err(|e| e.to_string())?;
            send.send_request(req)
                .await
                .map_err(|e| e.to_string())?
                .status()
        };
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(format!("status {status}"))
        }
    };
    match tokio::time::timeout(cfg.timeout.0, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer in {:?}", cfg.timeout.0)),
    }
}

impl Endpoint {
    /// `host:port` as a Host header value.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.addr.port())
        } else {
            format!("{}:{}", self.host, self.addr.port())
        }
    }

    /// The endpoint as a request names it (`host_header = "endpoint"`): its host, and
    /// its port unless it is the scheme's default (80, or 443 with `tls`), as clients
    /// write a URL's authority and as servers that check it expect.
    pub fn authority(&self, tls: bool) -> String {
        let default = if tls { 443 } else { 80 };
        match self.addr.port() == default {
            true if self.host.contains(':') => format!("[{}]", self.host),
            true => self.host.to_string(),
            false => self.host_port(),
        }
    }
}

/// The state shown by the admin `/clusters` view.
pub fn describe(ep: &Endpoint, now_ms: u64) -> &'static str {
    if ep.health.is_down() {
        "down"
    } else if ep.health.is_ejected(now_ms) {
        "ejected"
    } else {
        "healthy"
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::ClusterConfig;
    use crate::telemetry::metrics::Metrics;

    /// A cluster of `n` endpoints (never connected to) with this `outlier` table.
    async fn cluster(n: u16, outlier: &str) -> Arc<Cluster> {
        let endpoints: Vec<String> = (0..n)
            .map(|i| format!("\"127.0.0.1:{}\"", 1000 + i))
            .collect();
        let text = format!(
            "name = \"c\"\nendpoints = [{}]\noutlier = {{ {outlier} }}",
            endpoints.join(", ")
        );
        let config: ClusterConfig = toml::from_str(&text).unwrap();
        Cluster::build(&config, Metrics::new().cluster_stats("c", false), |p| {
            p.to_path_buf()
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn an_endpoint_names_its_port_unless_it_is_the_schemes_default() {
        let text = r#"name = "c"
endpoints = ["127.0.0.1:80", "127.0.0.1:443", "127.0.0.1:8080", "[::1]:80", "[::1]:8443"]"#;
        let config: ClusterConfig = toml::from_str(text).unwrap();
        let c = Cluster::build(&config, Metrics::new().cluster_stats("c", false), |p| {
            p.to_path_buf()
        })
        .await
        .unwrap();
        let names = |tls| -> Vec<String> {
            c.endpoints()
                .list
                .iter()
                .map(|ep| ep.authority(tls))
                .collect()
        };
        assert_eq!(
            names(false),
            [
                "127.0.0.1",
                "127.0.0.1:443",
                "127.0.0.1:8080",
                "[::1]",
                "[::1]:8443"
            ]
        );
        assert_eq!(
            names(true),
            [
                "127.0.0.1:80",
                "127.0.0.1",
                "127.0.0.1:8080",
                "[::1]:80",
                "[::1]:8443"
            ]
        );
    }

    fn ejected(c: &Cluster, i: usize) -> bool {
        c.endpoints().list[i].health.is_ejected(c.now_ms())
    }

    /// Fails endpoint `i` `times` times.
    fn fail(c: &Cluster, i: usize, times: u32) {
        let ep = c.endpoints().list[i].clone();
        for _ in 0..times {
            failure(c, &ep);
        }
    }

    /// How long endpoint `i` stays ejected, in whole milliseconds of paused time.
    async fn ejection_ms(c: &Cluster, i: usize) -> u64 {
        let start = c.now_ms();
        while ejected(c, i) {
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        c.now_ms() - start
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_back_off_doubles_up_to_its_cap() {
        let c = cluster(
            2,
            r#"consecutive_failures = 2, base_ejection = "1s", max_ejection = "5s""#,
        )
        .await;
        fail(&c, 0, 1);
        assert!(!ejected(&c, 0), "one failure is not enough");
        let mut seen = Vec::new();
        for _ in 0..5 {
            fail(&c, 0, 2);
            assert!(ejected(&c, 0));
            assert!(!c.endpoints().list[0].health.is_available(c.now_ms()));
            seen.push(ejection_ms(&c, 0).await);
            assert!(c.endpoints().list[0].health.is_available(c.now_ms()));
        }
        assert_eq!(seen, [1000, 2000, 4000, 5000, 5000]);
        assert_eq!(c.stats.ejections.get(), 5);
        assert!(!ejected(&c, 1), "the other endpoint is untouched");
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_breaks_the_streak() {
        let c = cluster(2, r#"consecutive_failures = 3"#).await;
        let ep = c.endpoints().list[0].clone();
        fail(&c, 0, 2);
        c.record(&ep, Ok(Duration::from_millis(1)));
        fail(&c, 0, 2);
        assert!(!ejected(&c, 0));
        fail(&c, 0, 1);
        assert!(ejected(&c, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn back_off_starts_over_after_behaving_for_max_ejection() {
        let c = cluster(
            2,
            r#"consecutive_failures = 1, base_ejection = "1s", max_ejection = "4s""#,
        )
        .await;
        let ep = c.endpoints().list[0].clone();
        fail(&c, 0, 1);
        assert_eq!(ejection_ms(&c, 0).await, 1000);
        fail(&c, 0, 1);
        assert_eq!(ejection_ms(&c, 0).await, 2000);
        // Good for longer than max_ejection after the ejection ended: forgiven.
        tokio::time::advance(Duration::from_millis(4001)).await;
        c.record(&ep, Ok(Duration::from_millis(1)));
        fail(&c, 0, 1);
        assert_eq!(ejection_ms(&c, 0).await, 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn max_ejected_percent_is_respected() {
        let c = cluster(
            4,
            r#"consecutive_failures = 1, base_ejection = "10s", max_ejection = "10s", max_ejected_percent = 50"#,
        )
        .await;
        for i in 0..4 {
            fail(&c, i, 3);
        }
        let out: Vec<bool> = (0..4).map(|i| ejected(&c, i)).collect();
        assert_eq!(out, [true, true, false, false]);
        assert_eq!(c.stats.ejections.get(), 2);
        // When one comes back, another may go.
        tokio::time::advance(Duration::from_secs(10)).await;
        fail(&c, 2, 1);
        assert!(ejected(&c, 2));

        let none = cluster(1, r#"consecutive_failures = 1, max_ejected_percent = 0"#).await;
        fail(&none, 0, 5);
        assert!(!ejected(&none, 0));
        assert_eq!(none.stats.ejections.get(), 0);
    }
}
