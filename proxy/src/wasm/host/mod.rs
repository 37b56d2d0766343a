//! Implementations of the host interfaces of `weft:filter`, one file each.

mod context;
mod crypto;
mod http;
mod metrics;
mod outbound;
mod shared;

pub use metrics::DeclaredMetric;

impl super::bindings::weft::filter::types::Host for super::state::HostState {}
