//! `weft:filter/metrics`: metrics a filter declares, exposed in `/metrics` as
//! `weft_filter_<name>` with the filter's name as the `filter` label.

use crate::telemetry::metrics::{FilterLabels, GuestFamily, GuestKind, GuestNumber};
use crate::wasm::bindings::weft::filter::metrics::{Host, MetricId, MetricKind};
use crate::wasm::state::HostState;

type R<T> = wasmtime::Result<T>;

/// Metrics one filter may declare.
const MAX_METRICS: usize = 64;

/// A metric a filter declared.
pub struct DeclaredMetric {
    name: String,
    family: GuestFamily,
    /// An update was dropped for `limits.metric_series` (logged once).
    overflowed: bool,
}

impl Host for HostState {
    fn define(
        &mut self,
        kind: MetricKind,
        name: String,
        help: String,
        label_names: Vec<String>,
        buckets: Vec<f64>,
    ) -> R<Result<MetricId, String>> {
        let mut declared = self
            .filter
            .guest_metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(i) = declared.iter().position(|m| m.name == name) {
            return Ok(Ok(i as MetricId));
        }
        if declared.len() >= MAX_METRICS {
            return Ok(Err(format!(
                "a filter may declare at most {MAX_METRICS} metrics"
            )));
        }
        let kind = match kind {
            MetricKind::Counter => GuestKind::Counter,
            MetricKind::Gauge => GuestKind::Gauge,
            MetricKind::Histogram => GuestKind::Histogram(buckets),
        };
        match self
            .filter
            .metrics
            .guest_metric(&name, &help, kind, label_names)
        {
            Ok(family) => {
                declared.push(DeclaredMetric {
                    name,
                    family,
                    overflowed: false,
                });
                Ok(Ok((declared.len() - 1) as MetricId))
            }
            Err(e) => Ok(Err(e)),
        }
    }

    fn add(&mut self, id: MetricId, label_values: Vec<String>, value: f64) -> R<()> {
        self.record(id, label_values, |f, labels| match f {
            GuestFamily::Counter(c, _) if value >= 0.0 => {
                c.get_or_create(&labels).inc_by(GuestNumber(value));
            }
            GuestFamily::Gauge(g, _) => {
                g.get_or_create(&labels).inc_by(GuestNumber(value));
            }
            _ => {}
        });
        Ok(())
    }

    fn set(&mut self, id: MetricId, label_values: Vec<String>, value: f64) -> R<()> {
        self.record(id, label_values, |f, labels| {
            if let GuestFamily::Gauge(g, _) = f {
                g.get_or_create(&labels).set(GuestNumber(value));
            }
        });
        Ok(())
    }

    fn observe(&mut self, id: MetricId, label_values: Vec<String>, value: f64) -> R<()> {
        self.record(id, label_values, |f, labels| {
            if let GuestFamily::Histogram(h, _) = f {
                h.get_or_create(&labels).observe(value);
            }
        });
        Ok(())
    }
}

impl HostState {
    /// Pairs label values with the declared names (a wrong count is ignored, as a
    /// metric with misaligned labels would mislead). A label set past the metric's
    /// `limits.metric_series` is dropped and counted: label values taken from requests
    /// (a path, a user) would otherwise grow the proxy's memory and `/metrics` without
    /// bound.
    fn record(
        &self,
        id: MetricId,
        values: Vec<String>,
        f: impl FnOnce(&GuestFamily, Vec<(String, String)>),
    ) {
        let mut declared = self
            .filter
            .guest_metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some(metric) = declared.get_mut(id as usize) else {
            return;
        };
        let names = metric.family.label_names();
        if names.len() != values.len() + 1 {
            return;
        }
        let mut labels = Vec::with_capacity(names.len());
        labels.push((names[0].clone(), self.filter.name.to_string()));
        labels.extend(names[1..].iter().cloned().zip(values));
        let max = self.filter.limits.metric_series;
        // Labelled by the filter's name alone, a metric has one set per filter.
        if names.len() > 1 && !metric.family.admits(&labels, max) {
            self.filter
                .metrics
                .filter_metric_series_dropped
                .get_or_create(&FilterLabels {
                    filter: self.filter.name.to_string(),
                })
                .inc();
            if !std::mem::replace(&mut metric.overflowed, true) {
                tracing::warn!(
                    filter = %self.filter.name, metric = %metric.name, limit = max,
                    "a filter's metric reached its limit of label sets; updates that would add more are dropped"
                );
            }
            return;
        }
        f(&metric.family, labels);
    }
}
