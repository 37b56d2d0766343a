//! Which endpoints may take traffic: passive outlier ejection (consecutive failures
//! eject an endpoint for a back-off that doubles with each ejection) and optional
//! active HTTP health checks.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use http::Request;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;

use super::{Cluster, Endpoint};
use crate::config::{HealthCheckConfig, OutlierConfig, UpstreamProtocol};

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
        !self.down.load(Ordering::Relaxed)
            && self.ejected_until_ms.load(Ordering::Relaxed) <= now_ms
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

/// One GET on a fresh connection; 2xx and 3xx are healthy.
async fn check_once(
    c: &Arc<Cluster>,
    ep: &Endpoint,
    cfg: &HealthCheckConfig,
) -> Result<(), String> {
    let attempt = async {
        let (io, alpn_h2) = c
            .connector
            .connect(ep.addr, &ep.host, false)
            .await
            .map_err(|e| e.to_string())?;
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
            let uri = format!("{scheme}://{}{}", ep.host_port(), cfg.path);
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
            let req = Request::get(&cfg.path)
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
