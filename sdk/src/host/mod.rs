//! The one place that knows where a host call goes.
//!
//! In a Wasm build every function here is a thin wrapper over the `weft:filter` imports
//! (`wasm.rs`, the only user of the generated bindings besides the export glue). In a
//! native build (`cargo test`) the same functions act on the thread-local fake host of
//! [`crate::testing`] (`fake.rs`). Nothing else in the SDK knows which one it talks to.
//!
//! The functions speak plain Rust and the SDK's own enums; parsing into `http` types
//! happens above this layer, so it is the same code, and tested, on both backends.

#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod fake;
#[cfg(not(target_arch = "wasm32"))]
pub(crate) use fake::*;

#[cfg(target_arch = "wasm32")]
mod wasm;
#[cfg(target_arch = "wasm32")]
pub(crate) use wasm::*;

/// Which header map an operation addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Message {
    Request,
    RequestTrailers,
    Response,
    ResponseTrailers,
}

/// The kind of a metric being defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// The downstream connection as the host describes it (addresses unparsed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RawConnection {
    pub(crate) remote_address: String,
    pub(crate) local_address: String,
    pub(crate) listener: String,
    pub(crate) tls: Option<RawTls>,
}

/// TLS facts of the downstream connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RawTls {
    pub(crate) sni: Option<String>,
    pub(crate) alpn: Option<String>,
    pub(crate) peer_identity: Option<String>,
}

/// An outbound request, borrowed from the author's `http::Request`.
#[derive(Debug)]
pub(crate) struct OutboundRequest<'a> {
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) headers: Vec<(&'a str, &'a [u8])>,
    pub(crate) body: &'a [u8],
    pub(crate) timeout_ms: Option<u32>,
}

/// An outbound response as the host returns it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RawResponse {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) body: Vec<u8>,
}
