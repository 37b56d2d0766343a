//! Responses the proxy writes itself: errors with the status their cause calls for,
//! and answers filters give.

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};

use super::body::Body;
use super::exchange::{BodyTimeouts, Exchange, ResponseBody};
use super::grpc;
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
                ProxyError::NoHealthyEndpoint(_)
                    | ProxyError::PoolExhausted(_)
                    | ProxyError::Overflow(_)
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
        let code = grpc::code_for_error(&e, status);
        ex.grpc_status = Some(code);
        let mut resp = Response::new(ResponseBody::new(Body::Empty, ex, BodyTimeouts::default()));
        *resp.status_mut() = status;
        grpc::fail(&mut resp, code, e.kind());
        return resp;
    }
    text(status, e.kind(), ex)
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
