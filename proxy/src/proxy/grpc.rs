//! gRPC calls the proxy answers itself. A gRPC client reads a call's outcome from
//! `grpc-status`, not from the HTTP status, so a failure the proxy or a filter
//! answers goes as a gRPC server would send it: trailers-only (`200`, and the status
//! and its message in the one HEADERS frame that ends the stream), as Envoy answers.

use http::header::HeaderName;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use std::borrow::Cow;
use std::time::Duration;

use super::body::Body;
use crate::error::ProxyError;

/// The HTTP status a gRPC failure answered with `200` stands for, for metrics and
/// the access log (a response extension).
#[derive(Clone, Copy)]
pub struct StandsFor(pub StatusCode);

pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Whether a request is a gRPC call: `application/grpc`, or with a message format
/// (`application/grpc+proto`) or parameters. Not gRPC-Web (`application/grpc-web`),
/// whose clients read statuses from the body.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    headers.get(CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= GRPC.len()
            && v[..GRPC.len()].eq_ignore_ascii_case(GRPC)
            && matches!(v.get(GRPC.len()), None | Some(b'+' | b';'))
    })
}

/// Makes `resp`, whose body must be empty, the trailers-only failure of a gRPC call
/// with `code` and `msg`, remembering the HTTP status it had.
pub fn fail<B>(resp: &mut Response<B>, code: u8, msg: &str) {
    let was = std::mem::replace(resp.status_mut(), StatusCode::OK);
    resp.extensions_mut().insert(StandsFor(was));
    let headers = resp.headers_mut();
    headers.remove(http::header::CONTENT_LENGTH);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    set_status(headers, code, msg);
}

/// The trailers that end a call whose response was under way when its deadline
/// passed (DEADLINE_EXCEEDED, as the server would have ended it) or when the upstream
/// went silent for the idle timeout (UNAVAILABLE, which clients may retry), where a
/// reset of the stream would reach the client as INTERNAL.
pub fn timeout_trailers(deadline: bool, msg: &str) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    let code = if deadline {
        DEADLINE_EXCEEDED
    } else {
        UNAVAILABLE
    };
    set_status(&mut trailers, code, msg);
    trailers
}

/// The trailers that end a call whose response body failed once under way, with
/// the status a client connected straight to the server would have read, where
/// hyper's reset of the client's stream (INTERNAL_ERROR) would reach it as INTERNAL
/// whatever happened: a lost upstream connection is UNAVAILABLE (which clients may
/// retry), an upstream's reset of the stream is mapped by its error code as gRPC maps
/// them (PROTOCOL-HTTP2.md, "Errors"), and a filter's failure is what it would have
/// been before the response began.
pub fn failure_trailers(e: &(dyn std::error::Error + 'static)) -> HeaderMap {
    let (code, msg): (u8, Cow<'_, str>) = if let Some(p) = e.downcast_ref::<ProxyError>() {
        (code_for_error(p, p.status()), p.kind().into())
    } else if let Some(reset) = upstream_reset(e) {
        (code_for_reset(reset), "upstream reset the stream".into())
    } else if e.is::<hyper::Error>() {
        (UNAVAILABLE, "upstream connection lost".into())
    } else {
        (INTERNAL, e.to_string().into())
    };
    let mut trailers = HeaderMap::new();
    set_status(&mut trailers, code, &msg);
    trailers
}

/// The error code of the upstream's `RST_STREAM` behind `e`, if that is what it is.
fn upstream_reset(e: &(dyn std::error::Error + 'static)) -> Option<h2::Reason> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(h2) = c.downcast_ref::<h2::Error>() {
            return h2.is_reset().then(|| h2.reason()).flatten();
        }
        cause = c.source();
    }
    None
}

fn code_for_reset(reason: h2::Reason) -> u8 {
    match reason {
        h2::Reason::REFUSED_STREAM => UNAVAILABLE,
        h2::Reason::CANCEL => CANCELLED,
        h2::Reason::ENHANCE_YOUR_CALM => RESOURCE_EXHAUSTED,
        h2::Reason::INADEQUATE_SECURITY => PERMISSION_DENIED,
        _ => INTERNAL,
    }
}

fn set_status(headers: &mut HeaderMap, code: u8, msg: &str) {
    headers.insert("grpc-status", HeaderValue::from(u16::from(code)));
    if let Ok(v) = HeaderValue::try_from(message(msg)) {
        headers.insert("grpc-message", v);
    }
}

/// A filter's answer to a gRPC call (a whole body, not the upstream's stream) that is
/// not one already (no `grpc-status`): made one, with its body's text as the
/// message.
pub fn answer_local(resp: &mut Response<Body>) {
    let status = resp.status();
    if status == StatusCode::OK || resp.headers().contains_key("grpc-status") {
        return;
    }
    let text = match resp.body() {
        Body::Full(Some(b)) => String::from_utf8_lossy(&b[..b.len().min(1024)])
            .trim()
            .to_string(),
        Body::Empty | Body::Full(None) => status.canonical_reason().unwrap_or("").to_string(),
        Body::Incoming(_) | Body::Boxed(_) => return,
    };
    *resp.body_mut() = Body::Empty;
    fail(resp, code_for(status), &text);
}

pub const CANCELLED: u8 = 1;
const UNKNOWN: u8 = 2;
const DEADLINE_EXCEEDED: u8 = 4;
const PERMISSION_DENIED: u8 = 7;
const RESOURCE_EXHAUSTED: u8 = 8;
const UNIMPLEMENTED: u8 = 12;
const INTERNAL: u8 = 13;
const UNAVAILABLE: u8 = 14;
const UNAUTHENTICATED: u8 = 16;

/// The status a call ended with, from its trailers (or, trailers-only, its headers):
/// `grpc-status`, a code outside 0–16 read as UNKNOWN, as clients read it.
pub fn status_of(headers: &HeaderMap) -> Option<u8> {
    let v = headers.get("grpc-status")?;
    let code = std::str::from_utf8(v.as_bytes()).ok()?.parse::<u32>().ok();
    Some(code.filter(|c| *c <= 16).map_or(UNKNOWN, |c| c as u8))
}

/// A status code's name, as gRPC spells it.
pub fn code_name(code: u8) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(usize::from(code)).copied().unwrap_or("UNKNOWN")
}

/// The gRPC status code for the proxy's own failure: by its cause where that tells
/// more (the request's deadline, a size limit), else by its HTTP status.
pub fn code_for_error(e: &ProxyError, status: StatusCode) -> u8 {
    match e {
        ProxyError::Timeout(_) => DEADLINE_EXCEEDED,
        ProxyError::BodyTooLarge(_)
        | ProxyError::HeadersTooLarge { .. }
        | ProxyError::ResponseTooLarge(_) => RESOURCE_EXHAUSTED,
        _ => code_for(status),
    }
}

/// The gRPC status code for an HTTP status, as gRPC maps them
/// (grpc/doc/http-grpc-status-mapping.md), with `500` as INTERNAL: an answer the
/// proxy or a filter gave, not a server's unknown failure.
pub fn code_for(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 | 500 => INTERNAL,
        401 => UNAUTHENTICATED,
        403 => PERMISSION_DENIED,
        404 => UNIMPLEMENTED,
        413 | 431 => RESOURCE_EXHAUSTED,
        429 | 502 | 503 | 504 => UNAVAILABLE,
        _ => UNKNOWN,
    }
}

/// The deadline a gRPC client sent (`grpc-timeout`: at most 8 digits and a unit,
/// gRPC's PROTOCOL-HTTP2.md); `None` when absent or malformed, as if not sent.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(GRPC_TIMEOUT)?.as_bytes();
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `d` as a `grpc-timeout` value: in the finest unit whose count fits the 8 digits
/// allowed, rounded up so that the upstream never gets less than `d`.
pub fn timeout_value(d: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let ns = d.as_nanos();
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    let (n, unit) = units
        .iter()
        .map(|&(per, unit)| (ns.div_ceil(per), unit))
        .find(|&(n, _)| n <= MAX)
        .unwrap_or((MAX, 'H'));
    HeaderValue::from_str(&format!("{n}{unit}")).unwrap_or(HeaderValue::from_static("99999999H"))
}

/// `grpc-message` is percent-encoded: every byte outside printable ASCII, and `%`.
pub fn message(msg: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_calls_status_is_read_as_clients_read_it() {
        let of = |v: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(v) = v {
                h.insert("grpc-status", HeaderValue::from_str(v).unwrap());
            }
            status_of(&h).map(code_name)
        };
        assert_eq!(of(Some("0")), Some("OK"));
        assert_eq!(of(Some("14")), Some("UNAVAILABLE"));
        assert_eq!(of(Some("16")), Some("UNAUTHENTICATED"));
        // Codes gRPC does not define, and garbage, are UNKNOWN to a client.
        assert_eq!(of(Some("17")), Some("UNKNOWN"));
        assert_eq!(of(Some("-1")), Some("UNKNOWN"));
        assert_eq!(of(Some("ok")), Some("UNKNOWN"));
        assert_eq!(of(None), None);
    }

    #[test]
    fn a_failed_response_body_ends_with_the_status_of_its_cause() {
        let ends = |e: &(dyn std::error::Error + 'static)| {
            let t = failure_trailers(e);
            let text = |name: &str| t[name].to_str().unwrap().to_string();
            (text("grpc-status"), text("grpc-message"))
        };
        // A fail-closed filter that failed on the response body: as it would have
        // failed before the response began.
        let filter = ProxyError::Filter {
            filter: "f".into(),
            reason: "trapped".into(),
            status: StatusCode::INTERNAL_SERVER_ERROR,
        };
        assert_eq!(ends(&filter), ("13".into(), "filter failure".into()));
        let size = ProxyError::ResponseTooLarge(10);
        assert_eq!(ends(&size).0, "8");
        // Anything else is the proxy's own failure, with its reason.
        let other: crate::error::BoxError =
            "a filter asked to answer after the response headers were sent".into();
        assert_eq!(
            ends(&*other),
            (
                "13".into(),
                "a filter asked to answer after the response headers were sent".into()
            )
        );
        // Upstream resets and lost connections: tests/e2e/grpc.rs.
    }

    #[test]
    fn grpc_calls_are_told_by_their_content_type() {
        let with = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            is_grpc(&h)
        };
        assert!(with("application/grpc"));
        assert!(with("application/grpc+proto"));
        assert!(with("Application/GRPC;charset=utf-8"));
        assert!(!with("application/grpc-web"));
        assert!(!with("application/grpcx"));
        assert!(!with("application/json"));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn grpc_timeouts_are_read_in_every_unit_and_malformed_ones_ignored() {
        let read = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(GRPC_TIMEOUT, HeaderValue::from_str(v).unwrap());
            timeout(&h)
        };
        assert_eq!(read("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(read("3M"), Some(Duration::from_secs(180)));
        assert_eq!(read("10S"), Some(Duration::from_secs(10)));
        assert_eq!(read("250m"), Some(Duration::from_millis(250)));
        assert_eq!(read("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(read("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "m", "10", "10s", "123456789m", "-1S", "1.5S", "10 S"] {
            assert_eq!(read(bad), None, "{bad:?}");
        }
        assert_eq!(timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn grpc_timeouts_are_written_finely_and_never_shorter() {
        let write = |d: Duration| timeout_value(d).to_str().unwrap().to_string();
        assert_eq!(write(Duration::from_millis(300)), "300000u");
        assert_eq!(write(Duration::from_nanos(1)), "1n");
        assert_eq!(write(Duration::from_secs(90)), "90000000u");
        assert_eq!(write(Duration::from_secs(3600)), "3600000m");
        assert_eq!(write(Duration::from_nanos(100_000_001)), "100001u");
        assert_eq!(write(Duration::from_secs(400 * 24 * 3600)), "34560000S");
        assert_eq!(write(Duration::MAX), "99999999H");
    }

    #[test]
    fn grpc_messages_are_percent_encoded_where_they_must_be() {
        assert_eq!(message("no route"), "no route");
        assert_eq!(message("100% ü\n"), "100%25 %C3%BC%0A");
    }

    #[test]
    fn the_proxys_failures_map_to_the_grpc_codes_clients_expect() {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        let code = |e: ProxyError| code_for_error(&e, e.status());
        assert_eq!(code(ProxyError::NoRoute), UNIMPLEMENTED);
        assert_eq!(code(ProxyError::PoolExhausted(addr)), UNAVAILABLE);
        assert_eq!(code(ProxyError::ConnectTimeout(addr)), UNAVAILABLE);
        let deadline = std::time::Duration::from_secs(1);
        assert_eq!(code(ProxyError::Timeout(deadline)), DEADLINE_EXCEEDED);
        assert_eq!(code(ProxyError::BodyTooLarge(10)), RESOURCE_EXHAUSTED);
        assert_eq!(code(ProxyError::Misdirected), UNKNOWN);
        assert_eq!(code(ProxyError::BadRequest("x".into())), INTERNAL);
        assert_eq!(code_for(StatusCode::UNAUTHORIZED), UNAUTHENTICATED);
        assert_eq!(code_for(StatusCode::FORBIDDEN), PERMISSION_DENIED);
        assert_eq!(code_for(StatusCode::TOO_MANY_REQUESTS), UNAVAILABLE);
    }

    #[test]
    fn a_failure_keeps_the_status_it_stands_for() {
        let mut resp = Response::new(());
        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        fail(&mut resp, UNAVAILABLE, "no healthy endpoint");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(resp.headers()["grpc-message"], "no healthy endpoint");
        let was = resp.extensions().get::<StandsFor>().map(|s| s.0);
        assert_eq!(was, Some(StatusCode::SERVICE_UNAVAILABLE));
    }
}
