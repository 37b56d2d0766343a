//! Responses the proxy writes itself: errors with the status their cause calls for,
//! and answers filters give.

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};

use super::body::Body;
use super::exchange::{BodyTimeouts, Exchange, ResponseBody};
use crate::error::{Blame, ProxyError};

/// The response for a failed request, logged with its reason.
pub fn error(e: ProxyError, mut ex: Box<Exchange>) -> Response<ResponseBody> {
    let status = e.status();
    match e.blame() {
        Blame::Downstream => {
            tracing::debug!(listener = %ex.conn.listener, remote = %ex.conn.remote, %status, error = %e, "bad request")
        }
        // Upstream failures were logged where they happened, with the endpoint.
        Blame::Upstream
            if matches!(
                e,
                ProxyError::NoHealthyEndpoint(_) | ProxyError::PoolExhausted(_)
            ) =>
        {
            tracing::warn!(listener = %ex.conn.listener, %status, error = %e, "request failed")
        }
        Blame::Upstream => {}
        Blame::Internal => {
            tracing::warn!(listener = %ex.conn.listener, path = ex.uri.path(), %status, error = %e, "request failed")
        }
    }
    ex.status = status.as_u16();
    ex.error = Some(e.kind());
    if ex.grpc {
        return grpc(grpc_code(&e, status), e.kind(), ex);
    }
    text(status, e.kind(), ex)
}

/// A gRPC client reads a call's outcome from `grpc-status`, not from the HTTP
/// status: the proxy fails a gRPC call with a trailers-only response (`200`, the
/// status and its message in the one HEADERS frame that ends the stream), as a gRPC
/// server would, and as Envoy answers.
fn grpc(code: u8, msg: &str, ex: Box<Exchange>) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::new(Body::Empty, ex, BodyTimeouts::default()));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(u16::from(code)));
    if let Ok(v) = HeaderValue::try_from(grpc_message(msg)) {
        headers.insert("grpc-message", v);
    }
    resp
}

/// The gRPC status code for a failure: by its cause where that tells more (the
/// request's deadline, a size limit), else as gRPC maps HTTP statuses
/// (grpc/doc/http-grpc-status-mapping.md), with the proxy's own `500` as INTERNAL.
fn grpc_code(e: &ProxyError, status: StatusCode) -> u8 {
    const UNKNOWN: u8 = 2;
    const DEADLINE_EXCEEDED: u8 = 4;
    const PERMISSION_DENIED: u8 = 7;
    const RESOURCE_EXHAUSTED: u8 = 8;
    const UNIMPLEMENTED: u8 = 12;
    const INTERNAL: u8 = 13;
    const UNAVAILABLE: u8 = 14;
    const UNAUTHENTICATED: u8 = 16;
    match e {
        ProxyError::Timeout(_) => return DEADLINE_EXCEEDED,
        ProxyError::BodyTooLarge(_)
        | ProxyError::HeadersTooLarge { .. }
        | ProxyError::ResponseTooLarge(_) => return RESOURCE_EXHAUSTED,
        _ => {}
    }
    match status.as_u16() {
        400 | 500 => INTERNAL,
        401 => UNAUTHENTICATED,
        403 => PERMISSION_DENIED,
        404 => UNIMPLEMENTED,
        429 | 502 | 503 | 504 => UNAVAILABLE,
        _ => UNKNOWN,
    }
}

/// `grpc-message` is percent-encoded: every byte outside printable ASCII, and `%`.
fn grpc_message(msg: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(msg.len());
    for b in msg.bytes() {
        match b {
            b' '..=b'~' if b != b'%' => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// A short plain-text answer, settled as an exchange.
pub fn text(status: StatusCode, msg: &str, ex: Box<Exchange>) -> Response<ResponseBody> {
    let body = format!("{msg}\n");
    let len = body.len();
    let mut resp = Response::new(ResponseBody::new(
        Body::full(body),
        ex,
        BodyTimeouts::default(),
    ));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

/// An answer for a request the proxy could not even start to handle.
pub fn bare(status: StatusCode, msg: &str) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::plain(Body::full(format!("{msg}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_messages_are_percent_encoded_where_they_must_be() {
        assert_eq!(grpc_message("no route"), "no route");
        assert_eq!(grpc_message("100% ü\n"), "100%25 %C3%BC%0A");
    }

    #[test]
    fn the_proxys_failures_map_to_the_grpc_codes_clients_expect() {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        let code = |e: ProxyError| grpc_code(&e, e.status());
        assert_eq!(code(ProxyError::NoRoute), 12);
        assert_eq!(code(ProxyError::PoolExhausted(addr)), 14);
        assert_eq!(code(ProxyError::ConnectTimeout(addr)), 14);
        assert_eq!(
            code(ProxyError::Timeout(std::time::Duration::from_secs(1))),
            4
        );
        assert_eq!(code(ProxyError::BodyTooLarge(10)), 8);
        assert_eq!(code(ProxyError::Misdirected), 2);
        assert_eq!(code(ProxyError::BadRequest("x".into())), 13);
    }
}
