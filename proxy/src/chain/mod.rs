//! Filter chains: ordered Wasm filters attached to listeners and routes. A chain is
//! immutable; a reload builds new chains off the request path and the snapshot swap
//! publishes them. Requests keep the chain they started with (`run`).

pub mod run;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::{LoadedConfig, Problem, RuntimeConfig};
use crate::telemetry::metrics::Metrics;
use crate::wasm::shared::SharedStore;
use crate::wasm::state::Phase;
use crate::wasm::{Host, LoadedFilter};

/// An immutable, ordered list of filters: requests pass them first to last,
/// responses last to first.
pub struct Chain {
    pub name: Arc<str>,
    pub filters: Vec<Arc<LoadedFilter>>,
}

impl Chain {
    /// Whether any filter may still want to run in `phase`.
    pub fn wants(&self, phase: Phase) -> bool {
        self.filters.iter().any(|f| f.shared.implements(phase))
    }
}

/// Builds chains from config: compiles, links and configures their filters.
pub struct ChainBuilder {
    host: Arc<Host>,
    metrics: Arc<Metrics>,
    /// Shared state by filter name; it outlives chain swaps.
    shared: Mutex<HashMap<String, Arc<SharedStore>>>,
}

impl ChainBuilder {
    pub fn new(metrics: Arc<Metrics>, runtime: &RuntimeConfig) -> anyhow::Result<Self> {
        Ok(ChainBuilder {
            host: Host::new(runtime)?,
            metrics,
            shared: Mutex::new(HashMap::new()),
        })
    }

    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// Loads every filter the config declares and composes the chains. A filter
    /// unchanged since `previous` (same module bytes, config and limits) is loaded
    /// again all the same: its instances must not carry over into the new chain.
    pub async fn build_all(
        &self,
        loaded: &LoadedConfig,
        _previous: Option<&HashMap<String, Arc<Chain>>>,
    ) -> Result<HashMap<String, Arc<Chain>>, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut filters: HashMap<&str, Arc<LoadedFilter>> = HashMap::new();
        // Every declared filter is loaded, even one no chain uses, so `weft check` checks it.
        for (i, f) in loaded.config.filters.iter().enumerate() {
            let shared = self.shared_store(&f.name, f.limits.shared_entries);
            let module = loaded.resolve(&f.module);
            match LoadedFilter::load(&self.host, f, module.clone(), self.metrics.clone(), shared)
                .await
            {
                Ok(lf) => {
                    filters.insert(f.name.as_str(), Arc::new(lf));
                }
                Err(e) => problems.push(Problem {
                    field: format!("filters[{i}]"),
                    reason: format!("{}: {e:#}", module.display()),
                }),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let chains = loaded
            .config
            .chains
            .iter()
            .map(|c| {
                let chain = Chain {
                    name: c.name.as_str().into(),
                    filters: c
                        .filters
                        .iter()
                        .filter_map(|n| filters.get(n.as_str()).cloned())
                        .collect(),
                };
                (c.name.clone(), Arc::new(chain))
            })
            .collect();
        Ok(chains)
    }

    fn shared_store(&self, name: &str, max_entries: usize) -> Arc<SharedStore> {
        let mut stores = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        let store = stores
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(SharedStore::new(max_entries)));
        store.set_max_entries(max_entries);
        store.clone()
    }
}
