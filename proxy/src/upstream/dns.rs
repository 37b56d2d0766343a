//! Endpoint addresses: IPs as written, DNS names resolved at start and again every
//! `dns_refresh` (never again when it is zero). Endpoints whose address survives a
//! refresh keep their state; a name that fails to resolve on a refresh keeps the
//! addresses it had (as Envoy does), since a DNS outage says nothing about the
//! endpoints themselves.

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

/// An address found for an endpoint entry.
pub(super) struct Found {
    pub addr: SocketAddr,
    /// The host it came from, as written.
    pub host: Arc<str>,
    /// The entry's weight, which every address of a name shares.
    pub weight: u32,
}

/// The outcome of resolving a cluster's endpoints.
#[derive(Default)]
pub(super) struct Resolved {
    /// Every address found, in configured order.
    pub addrs: Vec<Found>,
    /// Names that did not resolve (logged and counted); the next refresh tries again.
    pub failed: Vec<String>,
}

/// Resolves every endpoint of the cluster.
pub(super) async fn resolve_all(config: &ClusterConfig, stats: &ClusterStats) -> Resolved {
    let mut out = Resolved::default();
    for e in &config.endpoints {
        let Ok((host, port)) = split_host_port(e.address()) else {
            continue;
        };
        let weight = e.weight();
        if let Ok(ip) = host.parse::<IpAddr>() {
            out.addrs.push(Found {
                addr: SocketAddr::new(ip, port),
                host: Arc::from(host),
                weight,
            });
            continue;
        }
        match tokio::net::lookup_host((host, port)).await {
            Ok(addrs) => {
                stats.dns_lookup(&config.name, DnsOutcome::resolved);
                let host: Arc<str> = Arc::from(host);
                for addr in addrs {
                    if !out.addrs.iter().any(|f| f.addr == addr) {
                        out.addrs.push(Found {
                            addr,
                            host: host.clone(),
                            weight,
                        });
                    }
                }
            }
            Err(e) => {
                stats.dns_lookup(&config.name, DnsOutcome::failed);
                tracing::warn!(cluster = %config.name, host, error = %e, "cannot resolve endpoint");
                out.failed.push(host.to_string());
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
        c.endpoints
            .store(Arc::new(EndpointSet::new(&c.balancer, list)));
    }
}

/// The endpoints for freshly resolved addresses: those already known keep their
/// `Endpoint` (pool, health, latency), the others are new, and the names that
/// failed to resolve keep the endpoints they had.
fn carry_over(
    current: &[Arc<Endpoint>],
    resolved: Resolved,
    epoch: tokio::time::Instant,
) -> Vec<Arc<Endpoint>> {
    let mut known: HashMap<SocketAddr, Arc<Endpoint>> =
        current.iter().map(|e| (e.addr, e.clone())).collect();
    let mut list: Vec<Arc<Endpoint>> = resolved
        .addrs
        .into_iter()
        .map(|found| {
            known
                .remove(&found.addr)
                .unwrap_or_else(|| Arc::new(Endpoint::new(found, epoch)))
        })
        .collect();
    // In configured order, after the fresh ones: what a failed name had before.
    list.extend(
        current
            .iter()
            .filter(|e| resolved.failed.iter().any(|h| **h == *e.host))
            .filter(|e| known.remove(&e.addr).is_some())
            .cloned(),
    );
    list
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
            resolved(vec![(addr(1), host.clone()), (addr(2), host.clone())]),
            epoch,
        );
        let after = carry_over(
            &before,
            resolved(vec![(addr(2), host.clone()), (addr(3), host.clone())]),
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

    fn found(addrs: Vec<(SocketAddr, Arc<str>)>) -> Vec<Found> {
        addrs
            .into_iter()
            .map(|(addr, host)| Found {
                addr,
                host,
                weight: 1,
            })
            .collect()
    }

    fn resolved(addrs: Vec<(SocketAddr, Arc<str>)>) -> Resolved {
        Resolved {
            addrs: found(addrs),
            failed: Vec::new(),
        }
    }

    #[test]
    fn a_name_that_fails_to_resolve_keeps_its_endpoints() {
        let epoch = tokio::time::Instant::now();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a.internal"), Arc::from("b.internal"));
        let addr = |last: u8| SocketAddr::from(([10, 0, 0, last], 80));
        let before = carry_over(
            &[],
            resolved(vec![(addr(1), a.clone()), (addr(2), b.clone())]),
            epoch,
        );
        // `a` moved to a new address while the lookup of `b` failed.
        let after = carry_over(
            &before,
            Resolved {
                addrs: found(vec![(addr(3), a.clone())]),
                failed: vec!["b.internal".into()],
            },
            epoch,
        );
        let addrs: Vec<SocketAddr> = after.iter().map(|e| e.addr).collect();
        assert_eq!(addrs, [addr(3), addr(2)]);
        assert!(
            Arc::ptr_eq(&after[1], &before[1]),
            "b keeps its endpoint and state"
        );
        // Once `b` resolves again, its answer replaces what it had.
        let healed = carry_over(&after, resolved(vec![(addr(3), a), (addr(4), b)]), epoch);
        let addrs: Vec<SocketAddr> = healed.iter().map(|e| e.addr).collect();
        assert_eq!(addrs, [addr(3), addr(4)]);
    }
}
