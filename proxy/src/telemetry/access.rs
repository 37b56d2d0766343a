//! The access log: one event per request, target `weft::access`, written when the
//! response's last byte has gone (or the request failed).

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, Uri, Version};

/// What one finished request looked like.
pub struct AccessRecord<'a> {
    /// The number filters' log lines carry as `request`.
    pub request_id: u64,
    pub listener: &'a str,
    pub remote: SocketAddr,
    pub method: &'a Method,
    pub uri: &'a Uri,
    /// `:authority`, or the `Host` header, as the client sent it.
    pub authority: Option<&'a str>,
    /// The request's `X-Request-ID`: the client's, or the one the proxy made.
    pub x_request_id: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub version: Version,
    pub status: u16,
    /// A gRPC call's status, by name (none for other requests).
    pub grpc_status: Option<&'static str>,
    pub cluster: Option<&'a str>,
    pub upstream: Option<SocketAddr>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// From sending the request upstream to its response's head (the last attempt's).
    pub upstream_duration: Option<Duration>,
    pub duration: Duration,
    pub retries: u32,
    pub error: Option<&'a str>,
}

/// Whether access-log events are written at all: what only the log needs is not
/// gathered otherwise.
pub fn enabled() -> bool {
    tracing::enabled!(target: "weft::access", tracing::Level::INFO)
}

/// Whole microseconds: `0.321`, not `0.32133900000000004`.
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

pub fn log(r: &AccessRecord<'_>) {
    // The query string may carry secrets; log the path only.
    tracing::info!(
        target: "weft::access",
        request_id = r.request_id,
        listener = r.listener,
        remote = %r.remote,
        method = %r.method,
        authority = r.authority.unwrap_or("-"),
        path = r.uri.path(),
        x_request_id = r.x_request_id.unwrap_or("-"),
        user_agent = r.user_agent.unwrap_or("-"),
        version = ?r.version,
        status = r.status,
        // Left out (not `-`) for requests that are not gRPC calls.
        grpc_status = r.grpc_status,
        cluster = r.cluster.unwrap_or("-"),
        upstream = %r.upstream.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
        request_bytes = r.request_bytes,
        response_bytes = r.response_bytes,
        duration_ms = millis(r.duration),
        // Left out for requests that got no response head from an upstream.
        upstream_ms = r.upstream_duration.map(millis),
        retries = r.retries,
        error = r.error.unwrap_or("-"),
    );
}
