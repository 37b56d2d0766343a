//! One immutable view of the whole config, built off the request path and published
//! with one swap. Requests hold the snapshot they started with until they end.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::chain::{Chain, ChainBuilder};
use crate::config::{ConfigError, ListenerConfig, LoadedConfig, Problem};
use crate::route::{HostMatch, Route, RouteTable, Target};
use crate::server::sockets::SocketOwner;
use crate::telemetry::metrics::{ListenerLabels, Metrics, RouteStats, RouteStatsSource};
use crate::tls;
use crate::upstream::Cluster;

/// A map by config name, looked up on every request: names are the operator's, not
/// a client's, so a fast hasher is safe here (SipHash cost ~170 instructions a lookup).
pub type NameMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

pub struct Snapshot {
    pub config: Arc<LoadedConfig>,
    pub listeners: NameMap<Arc<ListenerRuntime>>,
    pub clusters: NameMap<Arc<Cluster>>,
    pub chains: HashMap<String, Arc<Chain>>,
    /// Counts snapshots published by this process (1 for the first).
    pub generation: u64,
    /// The listener each bound socket serves; filled in by `App` once the
    /// listeners are bound, before the snapshot is published.
    pub sockets: HashMap<SocketAddr, SocketOwner>,
}

/// What a listener needs per connection and per request.
pub struct ListenerRuntime {
    pub name: Arc<str>,
    pub config: ListenerConfig,
    pub routes: RouteTable,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Requests must name the host their TLS session was made for (`strict_sni_host`).
    pub strict_sni_host: bool,
    /// How its connections are served, by protocol (`server::serve_http` tells
    /// which a connection speaks before it starts).
    pub http1: http1::Builder,
    pub http2: http2::Builder<TokioExecutor>,
    /// Connections accepted, and open now.
    pub connections: Counter,
    pub connections_open: Gauge,
    /// Per cluster of the config (a filter may route to any), made on the pair's first
    /// request: /metrics then carries no zero series for the pairs no request reaches,
    /// which would be listeners x clusters of them.
    stats: NameMap<OnceLock<RouteStats>>,
    no_cluster_stats: OnceLock<RouteStats>,
    stats_source: RouteStatsSource,
}

impl ListenerRuntime {
    /// Metric handles for requests of this listener served by `cluster`.
    pub fn stats(&self, cluster: Option<&str>) -> &RouteStats {
        match cluster.and_then(|c| self.stats.get_key_value(c)) {
            Some((name, slot)) => slot.get_or_init(|| self.stats_source.make(&self.name, name)),
            None => self
                .no_cluster_stats
                .get_or_init(|| self.stats_source.make(&self.name, "-")),
        }
    }
}

impl Snapshot {
    /// Builds a snapshot: clusters (reusing those of `previous` whose definition and
    /// TLS files are unchanged), TLS material, filter chains. Every error names its field.
    pub async fn build(
        loaded: LoadedConfig,
        previous: Option<&Snapshot>,
        metrics: &Metrics,
        chains: &ChainBuilder,
    ) -> Result<Snapshot, ConfigError> {
        let file = loaded.source.clone();
        let mut problems = Vec::new();
        let resolve = |p: &std::path::Path| loaded.resolve(p);

        let mut clusters = NameMap::default();
        for (i, c) in loaded.config.clusters.iter().enumerate() {
            let reused = previous
                .and_then(|p| p.clusters.get(&c.name))
                .filter(|old| old.config == *c && old.tls_files_unchanged(resolve));
            let cluster = match reused {
                Some(old) => old.clone(),
                None => match Cluster::build(
                    c,
                    metrics.cluster_stats(&c.name, c.max_requests > 0),
                    resolve,
                )
                .await
                {
                    Ok(c) => c,
                    Err(reason) => {
                        problems.push(Problem {
                            field: format!("clusters[{i}].tls"),
                            reason,
                        });
                        continue;
                    }
                },
            };
            clusters.insert(c.name.clone(), cluster);
        }

        let built_chains = match chains.build_all(&loaded, previous.map(|p| &p.chains)).await {
            Ok(c) => c,
            Err(mut p) => {
                problems.append(&mut p);
                HashMap::new()
            }
        };

        let mut listeners = NameMap::default();
        for (i, l) in loaded.config.listeners.iter().enumerate() {
            match build_listener(i, l, &loaded, &clusters, &built_chains, metrics) {
                Ok(rt) => {
                    listeners.insert(l.name.clone(), Arc::new(rt));
                }
                Err(mut p) => problems.append(&mut p),
            }
        }

        if !problems.is_empty() {
            return Err(ConfigError { file, problems });
        }
        let generation = previous.map_or(1, |p| p.generation + 1);
        Ok(Snapshot {
            config: Arc::new(loaded),
            listeners,
            clusters,
            chains: built_chains,
            generation,
            sockets: HashMap::new(),
        })
    }
}

fn build_listener(
    i: usize,
    l: &ListenerConfig,
    loaded: &LoadedConfig,
    clusters: &NameMap<Arc<Cluster>>,
    chains: &HashMap<String, Arc<Chain>>,
    metrics: &Metrics,
) -> Result<ListenerRuntime, Vec<Problem>> {
    let at = format!("listeners[{i}]");
    let mut problems = Vec::new();
    let target = |cluster: Option<&String>, chain: Option<&String>, timeout| Target {
        cluster: cluster.and_then(|c| clusters.get(c)).cloned(),
        chain: chain.and_then(|c| chains.get(c)).cloned(),
        timeout,
    };
    let fallback = (l.cluster.is_some() || l.chain.is_some())
        .then(|| target(l.cluster.as_ref(), l.chain.as_ref(), None));
    let routes = l
        .routes
        .iter()
        .map(|r| Route {
            host: r.host.as_deref().map(HostMatch::parse),
            path_prefix: r.path_prefix.clone(),
            target: target(
                r.cluster.as_ref().or(l.cluster.as_ref()),
                r.chain.as_ref(),
                r.timeout.map(|d| d.0),
            ),
        })
        .collect();

    let tls = match &l.tls {
        None => None,
        Some(t) => {
            let mut certs = Vec::new();
            for (j, c) in t.certificates.iter().enumerate() {
                match tls::ServerCert::load(
                    &loaded.resolve(&c.cert),
                    &loaded.resolve(&c.key),
                    &c.server_names,
                ) {
                    Ok(cert) => certs.push(cert),
                    Err(reason) => problems.push(Problem {
                        field: format!("{at}.tls.certificates[{j}]"),
                        reason,
                    }),
                }
            }
            let client_ca = match t
                .client_ca
                .as_deref()
                .map(|p| tls::load_roots(&loaded.resolve(p)))
                .transpose()
            {
                Ok(ca) => ca,
                Err(reason) => {
                    problems.push(Problem {
                        field: format!("{at}.tls.client_ca"),
                        reason,
                    });
                    None
                }
            };
            if !problems.is_empty() {
                return Err(problems);
            }
            match tls::server_config(certs, &t.alpn, client_ca) {
                Ok(c) => Some(Arc::new(c)),
                Err(reason) => {
                    return Err(vec![Problem {
                        field: format!("{at}.tls"),
                        reason,
                    }])
                }
            }
        }
    };
    if !problems.is_empty() {
        return Err(problems);
    }

    let lim = &l.limits;
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        // `server::serve` times request heads itself (hyper's timer would also run
        // while a keep-alive connection waits between requests).
        .header_read_timeout(None)
        .max_buf_size(lim.max_header_bytes.as_usize().max(8192))
        .max_headers(lim.max_headers)
        .keep_alive(true);
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(lim.max_concurrent_streams)
        // WebSockets over HTTP/2 (RFC 8441): `proxy::tunnel::ExtendedConnect`.
        .enable_connect_protocol()
        // h2 refuses a header list over this while decoding it, telling neither hyper
        // nor us; so it gets twice the limit, and `proxy::forward` answers 431 (and
        // counts it in `limit_hits`) for lists between the limit and the ceiling.
        .max_header_list_size(
            u32::try_from(lim.max_header_bytes.0.saturating_mul(2)).unwrap_or(u32::MAX),
        );

    let labels = ListenerLabels {
        listener: l.name.clone(),
    };
    let stats = clusters
        .keys()
        .map(|c| (c.clone(), OnceLock::new()))
        .collect();
    Ok(ListenerRuntime {
        name: l.name.as_str().into(),
        config: l.clone(),
        routes: RouteTable { routes, fallback },
        strict_sni_host: l.tls.as_ref().is_some_and(|t| t.strict_sni_host()),
        tls,
        http1,
        http2,
        connections: metrics.connections.get_or_create(&labels).clone(),
        connections_open: metrics.connections_open.get_or_create(&labels).clone(),
        stats,
        no_cluster_stats: OnceLock::new(),
        stats_source: metrics.route_stats_source(),
    })
}
