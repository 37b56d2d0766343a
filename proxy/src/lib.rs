//! Weft: a service-mesh proxy programmed with sandboxed WebAssembly filters.
//!
//! The path of a request: `server` (accept, TLS, hyper) → `proxy` (route, filter
//! chain, upstream call, response) → `upstream` (balance, pool, connect). `config`
//! is parsed and validated into a `snapshot`, swapped whole by `app` on reload.
//! See docs/ARCHITECTURE.md.

pub mod admin;
pub mod app;
pub mod chain;
pub mod cli;
pub mod config;
pub mod error;
pub mod gate;
pub mod proxy;
pub mod route;
pub mod runtime;
pub mod server;
pub mod snapshot;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod wasm;
pub mod workers;
