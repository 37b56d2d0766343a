//! Write Weft proxy filters in Rust.
//!
//! A Weft filter is a WebAssembly component the proxy calls at each phase of each
//! request. This crate is everything a filter author needs: the [`Filter`] trait, typed
//! access to the request and response through the [`http`] crate's types, the proxy's
//! services ([`log`], [`metrics`], [`shared`] state, [`outbound`] HTTP, [`crypto`],
//! [`time`], [`random`]), the [`export_filter!`] macro that turns a `Filter` into the
//! component's exports, and (natively) [`testing`], which runs a filter under
//! `cargo test` against a fake proxy.
//!
//! # A complete filter
//!
//! ```
//! use serde::Deserialize;
//! use weft_sdk::http::StatusCode;
//! use weft_sdk::metrics::Counter;
//! use weft_sdk::{Action, ConfigError, Context, Filter};
//!
//! /// The operator's config: `{"key": "..."}`.
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     key: String,
//! }
//!
//! struct ApiKey {
//!     key: String,
//!     requests: Counter,
//! }
//!
//! impl Filter for ApiKey {
//!     type Config = Config;
//!
//!     fn configure(config: Config) -> Result<Self, ConfigError> {
//!         let requests = Counter::new("requests_total", "Requests by outcome", &["outcome"])?;
//!         Ok(ApiKey { key: config.key, requests })
//!     }
//!
//!     async fn on_request_headers(&self, ctx: &mut Context) -> Action {
//!         match ctx.request().header("x-api-key") {
//!             Some(key) if key == self.key.as_str() => {
//!                 self.requests.inc(&["allowed"]);
//!                 Action::Continue
//!             }
//!             _ => {
//!                 self.requests.inc(&["denied"]);
//!                 Action::respond(StatusCode::UNAUTHORIZED).body("bad api key\n").into()
//!             }
//!         }
//!     }
//!
//!     async fn on_response_headers(&self, ctx: &mut Context) -> Action {
//!         let _ = ctx.response().set_header("x-filtered-by", "api-key");
//!         Action::Continue
//!     }
//! }
//!
//! weft_sdk::export_filter!(ApiKey);
//!
//! // And its test, natively:
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use weft_sdk::testing::TestHost;
//! let mut t = TestHost::<ApiKey>::new(serde_json::json!({"key": "s3cret"}))?;
//! let req = weft_sdk::http::Request::get("/").header("x-api-key", "s3cret").body(())?;
//! assert_eq!(t.request(req).on_request_headers(), Action::Continue);
//! assert_eq!(t.metric("requests_total", &["allowed"]), Some(1.0));
//! # Ok(())
//! # }
//! ```
//!
//! Build it as a component with `crate-type = ["cdylib", "rlib"]` in its `Cargo.toml` and
//! `cargo build --release --target wasm32-wasip2`: the `.wasm` in
//! `target/wasm32-wasip2/release/` exports `weft:filter/handler@0.3.0`.
//!
//! # How a filter runs
//!
//! * [`Filter::configure`] runs once per instance, with the operator's JSON config
//!   deserialized into [`Filter::Config`]; a bad config is a [`ConfigError`] shown to
//!   the operator, never a panic.
//! * Each phase gets `&self` (the long-lived filter) and a [`Context`] that the SDK
//!   creates fresh for every request. What a phase learns for a later one goes in a
//!   request value ([`Context::set_value`], kept by the proxy, visible to the chain's
//!   other filters) or in the context's [`http::Extensions`] (any Rust value; the
//!   instance then stays with the request until it ends). The proxy shares an instance
//!   that holds neither with other requests between a request's phases, so per-request
//!   state never belongs in the filter's own struct.
//! * A phase that is not implemented tells the proxy to stop calling it.
//! * Phases are `async fn`s; awaiting an [`outbound::send`] suspends the filter in the
//!   proxy without holding a thread. Only the SDK's own futures can be awaited.
//! * Reading and writing goes through host calls, one per method call, so a filter pays
//!   only for what it touches.
//!
//! # Native builds
//!
//! On targets other than `wasm32`, every host call goes to the fake host of
//! [`testing`] (outside a `TestHost`, to a default fake of the current thread), so
//! filters, their unit tests and these docs' examples run under plain `cargo test`.

#![warn(missing_docs)]

mod action;
mod context;
mod filter;
mod host;
mod runtime;
mod view;

#[cfg(target_arch = "wasm32")]
mod bindings;
#[cfg(target_arch = "wasm32")]
mod export;

pub mod crypto;
pub mod log;
pub mod metrics;
pub mod outbound;
pub mod random;
pub mod shared;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
pub mod time;

/// The `http` crate, re-exported so filters use the same version as the SDK.
pub use http;

pub use action::{Action, BodyAction, LocalResponse, Upstream};
pub use context::{filter_name, Completion, Connection, Context, TlsInfo};
pub use filter::{ConfigError, Filter};
pub use view::{
    BodyMode, HeaderError, IntoHeaderName, IntoHeaderValue, RequestView, ResponseView, TrailersView,
};

/// The generated bindings, for `export_filter!` only. Not part of the API.
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod __bindings {
    pub use crate::bindings::*;
}

/// Items `export_filter!` expands to. Not part of the API.
#[doc(hidden)]
pub mod __private {
    #[cfg(target_arch = "wasm32")]
    pub use crate::export::Adapter;

    /// Fails to compile unless `F` is a `Filter`.
    pub const fn assert_filter<F: crate::Filter>() {}
}

/// Exports a [`Filter`] as the component's `weft:filter/handler@0.3.0`.
///
/// Use it once, at the top level of the filter's crate. In a Wasm build it defines the
/// component's exports; in a native build it only checks that the type is a `Filter`
/// (tests use [`testing`] instead).
///
/// ```
/// use weft_sdk::{ConfigError, Filter};
///
/// struct PassThrough;
///
/// impl Filter for PassThrough {
///     type Config = ();
///     fn configure(_: ()) -> Result<Self, ConfigError> {
///         Ok(PassThrough)
///     }
/// }
///
/// weft_sdk::export_filter!(PassThrough);
/// ```
#[macro_export]
macro_rules! export_filter {
    ($filter:ty) => {
        const _: () = $crate::__private::assert_filter::<$filter>();

        #[cfg(target_arch = "wasm32")]
        const _: () = {
            // The generated export macro takes an identifier, not a path with generics.
            type __WeftFilterExport = $crate::__private::Adapter<$filter>;
            $crate::__bindings::__export_weft_filter!(
                __WeftFilterExport with_types_in $crate::__bindings
            );
        };
    };
}
