//! Filter chains: ordered Wasm filters attached to listeners and routes.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{LoadedConfig, Problem};

/// An immutable, ordered list of filters.
pub struct Chain {
    pub name: Arc<str>,
}

/// Builds chains from config (compiling and configuring their filters).
pub struct ChainBuilder {}

impl ChainBuilder {
    pub fn new(
        _metrics: std::sync::Arc<crate::telemetry::metrics::Metrics>,
        _runtime: &crate::config::RuntimeConfig,
    ) -> anyhow::Result<Self> {
        Ok(ChainBuilder {})
    }

    pub async fn build_all(
        &self,
        loaded: &LoadedConfig,
        _previous: Option<&HashMap<String, Arc<Chain>>>,
    ) -> Result<HashMap<String, Arc<Chain>>, Vec<Problem>> {
        if !loaded.config.filters.is_empty() {
            return Err(vec![Problem {
                field: "filters".into(),
                reason: "filters are not supported yet".into(),
            }]);
        }
        Ok(loaded
            .config
            .chains
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    Arc::new(Chain {
                        name: c.name.as_str().into(),
                    }),
                )
            })
            .collect())
    }
}
