//! HTTP calls from a filter to a cluster of the proxy's config.
//!
//! [`send`] starts the call at once and returns a future; awaiting it suspends the
//! filter (not a proxy thread) until the response arrives. Start several calls before
//! awaiting any to run them concurrently.
//!
//! ```
//! use weft_sdk::http::{Request, StatusCode};
//! use weft_sdk::outbound::{self, CallError};
//!
//! async fn allowed(user: &str) -> Result<bool, CallError> {
//!     let check = Request::get(format!("/allow?user={user}"))
//!         .body(Vec::new())
//!         .map_err(|e| CallError::InvalidRequest(e.to_string()))?;
//!     let response = outbound::send("authz", check).await?;
//!     Ok(response.status() == StatusCode::OK)
//! }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Response, StatusCode};

use crate::host::{self, OutboundRequest, RawResponse};
use crate::view::header_map;

/// Why an outbound call failed.
///
/// ```
/// use weft_sdk::outbound::CallError;
/// let e = CallError::Timeout;
/// assert!(e.is_retryable());
/// assert_eq!(e.to_string(), "outbound call timed out");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallError {
    /// No cluster of that name in the proxy's config.
    UnknownCluster(String),
    /// The request was malformed (bad method, path or header).
    InvalidRequest(String),
    /// The call did not complete in time.
    Timeout,
    /// The upstream could not be reached or answered badly.
    Upstream(String),
    /// Too many calls in flight for this request, or the response was too large.
    Limit(String),
    /// No call with this id is pending (the future was polled after it completed).
    UnknownCall,
}

impl CallError {
    /// Whether trying the same call again later may succeed (a timeout or an upstream
    /// failure), as opposed to a mistake in the request or the config.
    ///
    /// ```
    /// use weft_sdk::outbound::CallError;
    /// assert!(!CallError::UnknownCluster("authz".into()).is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        matches!(self, CallError::Timeout | CallError::Upstream(_))
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::UnknownCluster(c) => write!(f, "no cluster named `{c}`"),
            CallError::InvalidRequest(why) => write!(f, "invalid outbound request: {why}"),
            CallError::Timeout => f.write_str("outbound call timed out"),
            CallError::Upstream(why) => write!(f, "upstream failed: {why}"),
            CallError::Limit(why) => write!(f, "outbound limit reached: {why}"),
            CallError::UnknownCall => f.write_str("no such outbound call is pending"),
        }
    }
}

impl std::error::Error for CallError {}

/// A whole-call timeout, put in the request's extensions; without it the cluster's
/// timeout applies. Rounded up to a millisecond.
///
/// ```
/// use std::time::Duration;
/// use weft_sdk::{http::Request, outbound::Timeout};
///
/// let mut req = Request::get("/token").body(Vec::<u8>::new()).unwrap();
/// req.extensions_mut().insert(Timeout(Duration::from_millis(250)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout(pub Duration);

impl Timeout {
    fn as_millis(self) -> u32 {
        let d = self.0;
        let ms = d.as_millis() + u128::from(d.subsec_nanos() % 1_000_000 != 0);
        u32::try_from(ms).unwrap_or(u32::MAX)
    }
}

/// Sends `request` to `cluster` and returns a future of the response.
///
/// The call starts now; the future waits for it when first polled. Only the path and
/// query of the request's URI are used (the cluster decides where the call goes; set a
/// `host` header to choose the authority). A [`Timeout`] extension bounds the call.
///
/// ```
/// use weft_sdk::http::Request;
/// use weft_sdk::outbound::{self, CallError};
///
/// async fn both() -> Result<(Vec<u8>, Vec<u8>), CallError> {
///     // Both calls are in flight before either is awaited.
///     let a = outbound::send("users", Request::get("/users/7").body(Vec::new()).unwrap());
///     let b = outbound::send("plans", Request::get("/plans/7").body(Vec::new()).unwrap());
///     Ok((a.await?.into_body(), b.await?.into_body()))
/// }
/// ```
pub fn send<B: AsRef<[u8]>>(cluster: &str, request: http::Request<B>) -> ResponseFuture {
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let wire = OutboundRequest {
        method: request.method().as_str(),
        path,
        headers: request
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
            .collect(),
        body: request.body().as_ref(),
        timeout_ms: request.extensions().get::<Timeout>().map(|t| t.as_millis()),
    };
    ResponseFuture {
        call: Some(host::outbound_send(cluster, &wire)),
    }
}

/// The response to an outbound call; see [`send`].
///
/// ```
/// use weft_sdk::{http::Request, outbound};
/// let pending: outbound::ResponseFuture = outbound::send("api", Request::get("/").body(b"").unwrap());
/// # drop(pending);
/// ```
#[derive(Debug)]
#[must_use = "the call runs anyway, but its response is lost unless the future is awaited"]
pub struct ResponseFuture {
    /// The call id, or why it could not start; `None` once the response was taken.
    call: Option<Result<u32, CallError>>,
}

impl Future for ResponseFuture {
    type Output = Result<Response<Vec<u8>>, CallError>;

    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        // `wait` blocks in the host (which suspends this Wasm instance), so the
        // response is always ready here.
        Poll::Ready(match self.call.take() {
            Some(Ok(id)) => host::outbound_wait(id).and_then(response),
            Some(Err(e)) => Err(e),
            None => Err(CallError::UnknownCall),
        })
    }
}

/// Parses the host's response; headers that are not valid HTTP are dropped.
fn response(raw: RawResponse) -> Result<Response<Vec<u8>>, CallError> {
    let status = StatusCode::from_u16(raw.status)
        .map_err(|_| CallError::Upstream(format!("invalid status {}", raw.status)))?;
    let mut response = Response::new(raw.body);
    *response.status_mut() = status;
    *response.headers_mut() = header_map(raw.headers);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_rounds_up_and_saturates() {
        assert_eq!(Timeout(Duration::from_micros(1)).as_millis(), 1);
        assert_eq!(Timeout(Duration::from_millis(250)).as_millis(), 250);
        assert_eq!(Timeout(Duration::MAX).as_millis(), u32::MAX);
    }

    #[test]
    fn bad_status_and_headers_from_the_host_do_not_panic() {
        let raw = RawResponse {
            status: 1000,
            headers: vec![],
            body: vec![],
        };
        assert!(matches!(response(raw), Err(CallError::Upstream(_))));
        let raw = RawResponse {
            status: 200,
            headers: vec![
                ("bad name".into(), b"x".to_vec()),
                ("x-ok".into(), b"1".to_vec()),
                ("x-bad".into(), b"a\nb".to_vec()),
            ],
            body: b"hi".to_vec(),
        };
        let ok = response(raw).unwrap();
        assert_eq!(ok.headers().len(), 1);
        assert_eq!(ok.headers()["x-ok"], "1");
    }
}
