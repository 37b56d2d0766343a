//! Metrics that appear in the proxy's `/metrics`.
//!
//! The proxy names them `weft_filter_<name>` and adds a `filter` label with the
//! filter's name. Names are snake_case (`[a-z0-9_]+`), with a unit suffix (`_total`,
//! `_seconds`, `_bytes`); label names are `[A-Za-z0-9_]+`, and `filter` is taken. Define
//! each metric once, in [`Filter::configure`](crate::Filter::configure), keep the handle in
//! the filter, and give label values in the order of the label names.
//!
//! ```
//! use weft_sdk::metrics::{Counter, MetricError};
//!
//! fn define() -> Result<Counter, MetricError> {
//!     Counter::new("requests_total", "Requests seen, by outcome", &["outcome"])
//! }
//! let requests = define()?;
//! requests.inc(&["allowed"]);
//! # Ok::<(), MetricError>(())
//! ```

use std::fmt;

use crate::host::{self, MetricKind};

/// The proxy refused to define a metric (for example a bad name, or a name already
/// defined with another kind or other labels).
///
/// ```
/// use weft_sdk::metrics::{Counter, MetricError};
/// let err = Counter::new("not a name", "", &[]).unwrap_err();
/// assert!(matches!(err, MetricError::Rejected(_)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricError {
    /// The proxy's reason.
    Rejected(String),
}

impl fmt::Display for MetricError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricError::Rejected(reason) => write!(f, "metric rejected by the proxy: {reason}"),
        }
    }
}

impl std::error::Error for MetricError {}

fn define(
    kind: MetricKind,
    name: &str,
    help: &str,
    label_names: &[&str],
    buckets: &[f64],
) -> Result<u32, MetricError> {
    host::metric_define(kind, name, help, label_names, buckets).map_err(MetricError::Rejected)
}

/// A number that only goes up, such as requests served (name it `..._total`).
///
/// ```
/// # use weft_sdk::metrics::{Counter, MetricError};
/// let denied = Counter::new("denied_total", "Requests denied", &["reason"])?;
/// denied.inc(&["bad_key"]);
/// denied.add(&["rate_limited"], 3.0);
/// # Ok::<(), MetricError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    id: u32,
}

impl Counter {
    /// Defines the counter (or finds the one already defined under this name).
    ///
    /// ```
    /// # use weft_sdk::metrics::{Counter, MetricError};
    /// let c = Counter::new("cache_hits_total", "Cache hits", &[])?;
    /// # Ok::<(), MetricError>(())
    /// ```
    pub fn new(name: &str, help: &str, label_names: &[&str]) -> Result<Self, MetricError> {
        define(MetricKind::Counter, name, help, label_names, &[]).map(|id| Self { id })
    }

    /// Adds one.
    ///
    /// ```
    /// # use weft_sdk::metrics::{Counter, MetricError};
    /// # let c = Counter::new("hits_total", "Hits", &["route"])?;
    /// c.inc(&["items"]);
    /// # Ok::<(), MetricError>(())
    /// ```
    pub fn inc(&self, label_values: &[&str]) {
        self.add(label_values, 1.0)
    }

    /// Adds a non-negative amount.
    ///
    /// ```
    /// # use weft_sdk::metrics::{Counter, MetricError};
    /// # let c = Counter::new("bytes_total", "Bytes", &[])?;
    /// c.add(&[], 512.0);
    /// # Ok::<(), MetricError>(())
    /// ```
    pub fn add(&self, label_values: &[&str], value: f64) {
        host::metric_add(self.id, label_values, value)
    }
}

/// A number that goes up and down, such as requests in flight.
///
/// ```
/// # use weft_sdk::metrics::{Gauge, MetricError};
/// let tokens = Gauge::new("bucket_tokens", "Tokens left", &[])?;
/// tokens.set(&[], 10.0);
/// tokens.add(&[], -1.0);
/// # Ok::<(), MetricError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gauge {
    id: u32,
}

impl Gauge {
    /// Defines the gauge (or finds the one already defined under this name).
    ///
    /// ```
    /// # use weft_sdk::metrics::{Gauge, MetricError};
    /// let g = Gauge::new("keys_loaded", "Keys in the JWKS", &["issuer"])?;
    /// # Ok::<(), MetricError>(())
    /// ```
    pub fn new(name: &str, help: &str, label_names: &[&str]) -> Result<Self, MetricError> {
        define(MetricKind::Gauge, name, help, label_names, &[]).map(|id| Self { id })
    }

    /// Sets the value.
    ///
    /// ```
    /// # use weft_sdk::metrics::{Gauge, MetricError};
    /// # let g = Gauge::new("keys_loaded", "Keys", &[])?;
    /// g.set(&[], 4.0);
    /// # Ok::<(), MetricError>(())
    /// ```
    pub fn set(&self, label_values: &[&str], value: f64) {
        host::metric_set(self.id, label_values, value)
    }

    /// Adds to the value (negative to subtract).
    ///
    /// ```
    /// # use weft_sdk::metrics::{Gauge, MetricError};
    /// # let g = Gauge::new("in_flight", "In flight", &[])?;
    /// g.add(&[], 1.0);
    /// # Ok::<(), MetricError>(())
    /// ```
    pub fn add(&self, label_values: &[&str], delta: f64) {
        host::metric_add(self.id, label_values, delta)
    }
}

/// A distribution of observations, such as durations (name it `..._seconds`).
///
/// ```
/// # use weft_sdk::metrics::{Histogram, MetricError};
/// let auth = Histogram::new("auth_call_seconds", "Auth call time", &[], &[0.01, 0.1, 1.0])?;
/// auth.observe(&[], 0.042);
/// # Ok::<(), MetricError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Histogram {
    id: u32,
}

impl Histogram {
    /// Defines the histogram with these bucket upper bounds (or finds the one already
    /// defined under this name).
    ///
    /// ```
    /// # use weft_sdk::metrics::{Histogram, MetricError};
    /// let h = Histogram::new("body_bytes", "Body sizes", &["direction"], &[1e3, 1e4, 1e5, 1e6])?;
    /// # Ok::<(), MetricError>(())
    /// ```
    pub fn new(
        name: &str,
        help: &str,
        label_names: &[&str],
        buckets: &[f64],
    ) -> Result<Self, MetricError> {
        define(MetricKind::Histogram, name, help, label_names, buckets).map(|id| Self { id })
    }

    /// Records an observation.
    ///
    /// ```
    /// # use weft_sdk::metrics::{Histogram, MetricError};
    /// # let h = Histogram::new("body_bytes", "Body sizes", &["direction"], &[1e3, 1e6])?;
    /// h.observe(&["request"], 2048.0);
    /// # Ok::<(), MetricError>(())
    /// ```
    pub fn observe(&self, label_values: &[&str], value: f64) {
        host::metric_observe(self.id, label_values, value)
    }
}
