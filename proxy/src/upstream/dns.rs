//! Endpoint addresses: IPs as written, DNS names resolved at start and again every
//! `dns_refresh`. Endpoints whose address survives a refresh keep their state.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};

use super::{Cluster, Endpoint, EndpointSet};
use crate::config::validate::split_host_port;
use crate::config::ClusterConfig;

pub(super) fn has_names(config: &ClusterConfig) -> bool {
    config
        .endpoints
        .iter()
        .any(|e| split_host_port(e.address()).is_ok_and(|(h, _)| h.parse::<IpAddr>().is_err()))
}

/// Every address of every endpoint, with the host it came from. A name that does
/// not resolve contributes nothing (and is logged); the next refresh tries again.
pub(super) async fn resolve_all(config: &ClusterConfig) -> Vec<(SocketAddr, Arc<str>)> {
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
                let host: Arc<str> = Arc::from(host);
                for a in addrs {
                    if !out.iter().any(|(x, _)| *x == a) {
                        out.push((a, host.clone()));
                    }
                }
            }
            Err(e) => {
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
        tokio::time::sleep(period).await;
        let Some(c) = cluster.upgrade() else { return };
        let resolved = resolve_all(&c.config).await;
        let current = c.endpoints.load_full();
        let mut known: HashMap<SocketAddr, Arc<Endpoint>> =
            current.list.iter().map(|e| (e.addr, e.clone())).collect();
        let list: Vec<Arc<Endpoint>> = resolved
            .into_iter()
            .map(|(addr, host)| {
                known
                    .remove(&addr)
                    .unwrap_or_else(|| Arc::new(Endpoint::new(addr, host, c.epoch)))
            })
            .collect();
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
