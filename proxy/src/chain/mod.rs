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
    /// Made when a config first declares a filter: a proxy without filters does not
    /// pay for the Wasm engine (its code and tables are megabytes of resident memory).
    host: Mutex<Option<Arc<Host>>>,
    runtime: RuntimeConfig,
    metrics: Arc<Metrics>,
    /// Shared state by filter name; it outlives chain swaps.
    shared: Mutex<HashMap<String, Arc<SharedStore>>>,
}

impl ChainBuilder {
    pub fn new(metrics: Arc<Metrics>, runtime: &RuntimeConfig) -> anyhow::Result<Self> {
        Ok(ChainBuilder {
            host: Mutex::new(None),
            runtime: runtime.clone(),
            metrics,
            shared: Mutex::new(HashMap::new()),
        })
    }

    /// The Wasm engine, made on first use with the runtime settings the process started with.
    pub fn host(&self) -> anyhow::Result<Arc<Host>> {
        let mut host = self.host.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = host.as_ref() {
            return Ok(h.clone());
        }
        let made = Host::new(&self.runtime)?;
        *host = Some(made.clone());
        Ok(made)
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
        let host = if loaded.config.filters.is_empty() {
            None
        } else {
            match self.host() {
                Ok(h) => Some(h),
                Err(e) => {
                    return Err(vec![Problem {
                        field: "filters".into(),
                        reason: format!("cannot start the Wasm engine: {e:#}"),
                    }])
                }
            }
        };
        // Every declared filter is loaded, even one no chain uses, so `weft check` checks it.
        for (i, f) in loaded.config.filters.iter().enumerate() {
            let shared = self.shared_store(&f.name, f.limits.shared_entries);
            let module = loaded.resolve(&f.module);
            let Some(host) = &host else { break };
            match LoadedFilter::load(host, f, module.clone(), self.metrics.clone(), shared).await {
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
