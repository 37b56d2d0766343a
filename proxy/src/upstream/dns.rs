//! Endpoint addresses: IPs as written, DNS names resolved at start and again every
//! `dns_refresh` (never again when it is zero). Endpoints whose address survives a
//! refresh keep their state.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};

use super::{Cluster, Endpoint, EndpointSet};
use crate::config::validate::split_host_port;
use crate::config::ClusterConfig;
use crate::telemetry::metrics::{ClusterStats, DnsOutcome};

/// Whether the cluster's endpoints are to be resolved again periodically.
pub(super) fn refreshes(config: &ClusterConfig) -> bool {
    has_names(config) && !config.dns_refresh.0.is_zero()
}

fn has_names(config: &ClusterConfig) -> bool {
    config
        .endpoints
        .iter()
        .any(|e| split_host_port(e.address()).is_ok_and(|(h, _)| h.parse::<IpAddr>().is_err()))
}

/// Every address of every endpoint, with the host it came from. A name that does
/// not resolve contributes nothing (and is logged); the next refresh tries again.
pub(super) async fn resolve_all(
    config: &ClusterConfig,
    stats: &ClusterStats,
) -> Vec<(SocketAddr, Arc<str>)> {
    let mut out = Vec::new();
    for e in &config.endpoints {
        let Ok((host, port)) = split_host_port(e.address()) else {
            continue;
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            out.push((SocketAddr::new(ip, port), Arc::from(host)));
            continue;
        }
        match tokio::net::lookup_host((host, port)).await {
            Ok(addrs) => {
                stats.dns_lookup(&config.name, DnsOutcome::resolved);
                let host: Arc<str> = Arc::from(host);
                for a in addrs {
                    if !out.iter().any(|(x, _)| *x == a) {
                        out.push((a, host.clone()));
                    }
                }
            }
            Err(e) => {
                stats.dns_lookup(&config.name, DnsOutcome::failed);
                tracing::warn!(cluster = %config.name, host, error = %e, "cannot resolve endpoint")
            }
        }
    }
    out
}

pub(super) async fn refresh(cluster: Weak<Cluster>) {
    loop {
        let Some(period) = cluster.upgrade().map(|c| c.config.dns_refresh.0) else {
            return;
        };
        // Zero means "resolve once"; looping on it would resolve without pause.
        if period.is_zero() {
            return;
        }
        tokio::time::sleep(period).await;
        let Some(c) = cluster.upgrade() else { return };
        let resolved = resolve_all(&c.config, &c.stats).await;
        let current = c.endpoints.load_full();
        let list = carry_over(&current.list, resolved, c.epoch);
        if list
            .iter()
            .map(|e| e.addr)
            .eq(current.list.iter().map(|e| e.addr))
        {
            continue;
        }
        tracing::info!(cluster = %c.name, endpoints = list.len(), "endpoints changed after DNS refresh");
        let ring = c.balancer.ring_for(&list);
        c.endpoints.store(Arc::new(EndpointSet { list, ring }));
    }
}

/// The endpoints for freshly resolved addresses: those already known keep their
/// `Endpoint` (pool, health, latency), the others are new.
fn carry_over(
    current: &[Arc<Endpoint>],
    resolved: Vec<(SocketAddr, Arc<str>)>,
    epoch: tokio::time::Instant,
) -> Vec<Arc<Endpoint>> {
    let mut known: HashMap<SocketAddr, Arc<Endpoint>> =
        current.iter().map(|e| (e.addr, e.clone())).collect();
    resolved
        .into_iter()
        .map(|(addr, host)| {
            known
                .remove(&addr)
                .unwrap_or_else(|| Arc::new(Endpoint::new(addr, host, epoch)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshed_addresses_keep_their_endpoints() {
        let epoch = tokio::time::Instant::now();
        let host: Arc<str> = Arc::from("backend.internal");
        let addr = |last: u8| SocketAddr::from(([10, 0, 0, last], 80));
        let before = carry_over(
            &[],
            vec![(addr(1), host.clone()), (addr(2), host.clone())],
            epoch,
        );
        let after = carry_over(
            &before,
            vec![(addr(2), host.clone()), (addr(3), host.clone())],
            epoch,
        );
        let addrs: Vec<SocketAddr> = after.iter().map(|e| e.addr).collect();
        assert_eq!(
            addrs,
            [addr(2), addr(3)],
            "gone addresses leave, new ones come"
        );
        assert!(
            Arc::ptr_eq(&after[0], &before[1]),
            "a surviving address keeps its state"
        );
    }
}
