//! Byte tunnels: HTTP/1.1 upgrades (WebSocket) once the upstream switched
//! protocols, WebSockets over HTTP/2 (RFC 8441's extended `CONNECT`, carried to the
//! upstream as an HTTP/1.1 upgrade, or as an extended `CONNECT` to a cluster that
//! speaks only HTTP/2), and `CONNECT` to a routed cluster (TCP listeners, in
//! `tcp.rs`, use the same pipe). Each tunnel ends when either side closes or no
//! byte moves for the idle timeout.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::ext::Protocol;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::body::Body;
use super::exchange::{BodyTimeouts, Exchange};
use crate::error::ProxyError;
use crate::snapshot::ListenerRuntime;
use crate::upstream::pool::Lease;

/// An HTTP/2 client's extended CONNECT (RFC 8441), turned into the HTTP/1.1
/// upgrade it stands for: upgrades reach upstreams over HTTP/1.1, where WebSocket
/// servers expect their handshake. Filters and the upstream see `GET` with
/// `Upgrade: <protocol>`; the client gets `200` once the upstream answers `101`.
pub struct ExtendedConnect {
    /// The `Sec-WebSocket-Key` the proxy sent, for a WebSocket.
    key: Option<HeaderValue>,
}

impl ExtendedConnect {
    /// Whether `req` is an extended CONNECT.
    pub fn is(req: &Request<Incoming>) -> bool {
        req.method() == Method::CONNECT
            && req.version() == Version::HTTP_2
            && req.extensions().get::<Protocol>().is_some()
    }

    /// Rewrites the head of an extended CONNECT (`is` said so) as an HTTP/1.1 upgrade
    /// request.
    pub fn rewrite(head: &mut Request<()>) -> Result<ExtendedConnect, ProxyError> {
        let protocol = head
            .extensions_mut()
            .remove::<Protocol>()
            .ok_or_else(|| ProxyError::BadRequest("CONNECT without :protocol".into()))?;
        let upgrade = HeaderValue::from_str(protocol.as_str()).map_err(|_| {
            ProxyError::BadRequest(format!("bad :protocol {:?}", protocol.as_str()))
        })?;
        *head.method_mut() = Method::GET;
        let headers = head.headers_mut();
        headers.insert(UPGRADE, upgrade);
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        // HTTP/2 WebSockets have no key (RFC 8441 §5): the proxy makes the one the
        // HTTP/1.1 handshake needs, and checks the upstream's answer to it.
        let key = protocol
            .as_str()
            .eq_ignore_ascii_case("websocket")
            .then(|| {
                let nonce: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
                base64::engine::general_purpose::STANDARD.encode(nonce)
            })
            .and_then(|key| HeaderValue::from_str(&key).ok());
        match &key {
            Some(k) => headers.insert(SEC_WEBSOCKET_KEY, k.clone()),
            None => headers.remove(SEC_WEBSOCKET_KEY),
        };
        Ok(ExtendedConnect { key })
    }

    /// Checks the upstream's `101` against the handshake sent, and makes it the
    /// client's `200` (RFC 8441 §5: success is any 2xx; HTTP/1.1's handshake headers
    /// stay on their hop).
    fn answer(&self, parts: &mut http::response::Parts) -> Result<(), ProxyError> {
        if let Some(key) = &self.key {
            let expected = websocket_accept(key.as_bytes());
            if parts
                .headers
                .get(SEC_WEBSOCKET_ACCEPT)
                .map(HeaderValue::as_bytes)
                != Some(expected.as_bytes())
            {
                return Err(ProxyError::BadUpgrade(
                    "Sec-WebSocket-Accept does not match the key sent",
                ));
            }
        }
        parts.status = StatusCode::OK;
        for name in [SEC_WEBSOCKET_ACCEPT, UPGRADE, CONNECTION] {
            parts.headers.remove(name);
        }
        Ok(())
    }
}

/// An upgrade sent to a cluster that speaks only HTTP/2: the upgrade request (as
/// filters saw it, `GET` with `Upgrade`) goes as an extended CONNECT (RFC 8441), and
/// an HTTP/1.1 client gets the `101` its handshake expects once the upstream's 2xx
/// opens the stream.
pub struct UpgradeOverH2 {
    protocol: HeaderValue,
    /// The `Sec-WebSocket-Accept` an HTTP/1.1 WebSocket client expects.
    accept: Option<HeaderValue>,
}

impl UpgradeOverH2 {
    /// Rewrites an upgrade request's head as an extended CONNECT.
    pub fn rewrite(head: &mut Request<()>) -> Result<UpgradeOverH2, ProxyError> {
        let headers = head.headers_mut();
        let upgrade = headers
            .remove(UPGRADE)
            .ok_or_else(|| ProxyError::BadRequest("upgrade without Upgrade".into()))?;
        // RFC 9110 §7.8: the protocols are listed in order of preference; a stream
        // carries one.
        let first = upgrade
            .to_str()
            .ok()
            .and_then(|v| v.split(',').map(str::trim).find(|t| !t.is_empty()))
            .ok_or_else(|| ProxyError::BadRequest(format!("bad Upgrade {upgrade:?}")))?;
        let protocol = HeaderValue::from_str(first)
            .map_err(|_| ProxyError::BadRequest(format!("bad Upgrade {upgrade:?}")))?;
        let key = headers.remove(SEC_WEBSOCKET_KEY);
        headers.remove(CONNECTION);
        let accept = key
            .filter(|_| first.eq_ignore_ascii_case("websocket"))
            .and_then(|k| HeaderValue::from_str(&websocket_accept(k.as_bytes())).ok());
        head.extensions_mut().insert(Protocol::from(first));
        *head.method_mut() = Method::CONNECT;
        Ok(UpgradeOverH2 { protocol, accept })
    }

    /// Makes the upstream's 2xx the HTTP/1.1 client's `101`.
    fn answer_http1(&self, parts: &mut http::response::Parts) {
        parts.status = StatusCode::SWITCHING_PROTOCOLS;
        parts.headers.insert(UPGRADE, self.protocol.clone());
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(accept) = &self.accept {
            parts.headers.insert(SEC_WEBSOCKET_ACCEPT, accept.clone());
        }
    }
}

/// RFC 6455 §4.2.2: base64(SHA-1(key + the WebSocket GUID)).
fn websocket_accept(key: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

/// Joins the client's and the upstream's upgraded connections once both are ready,
/// and returns the response for the client: a `101` for an HTTP/1.1 client (the
/// upstream's own, if it spoke HTTP/1.1), a `200` for an HTTP/2 client's extended
/// CONNECT. The upstream connection's `lease` is kept while the tunnel lasts (on
/// HTTP/2, the tunnel is one of its streams).
pub fn splice_upgrade(
    downstream: OnUpgrade,
    (mut resp, lease): (Response<Incoming>, Lease),
    extended: Option<&ExtendedConnect>,
    over_h2: Option<&UpgradeOverH2>,
    ex: &mut Exchange,
) -> Result<Response<Body>, ProxyError> {
    let upstream = hyper::upgrade::on(&mut resp);
    let (mut parts, _) = resp.into_parts();
    match (extended, over_h2) {
        (Some(x), None) => x.answer(&mut parts)?,
        // Extended CONNECT on both sides: the upstream's 2xx is the answer.
        (Some(_), Some(_)) => {}
        (None, Some(h2)) => h2.answer_http1(&mut parts),
        (None, None) => {}
    }
    let idle = ex
        .cluster
        .as_ref()
        .and_then(|c| c.config.idle_timeout.non_zero());
    let listener = ex.conn.listener.clone();
    // The tunnel is the request in flight now, for the cluster's `max_requests`.
    let admitted = ex.admitted.take();
    tokio::spawn(async move {
        let _stream = lease;
        let _admitted = admitted;
        match tokio::try_join!(downstream, upstream) {
            Ok((d, u)) => {
                if let Err(e) = pipe(TokioIo::new(d), TokioIo::new(u), idle).await {
                    tracing::debug!(%listener, error = %e, "upgraded tunnel ended with an error");
                }
            }
            Err(e) => tracing::debug!(%listener, error = %e, "upgrade did not complete"),
        }
    });
    Ok(Response::from_parts(parts, Body::Empty))
}

/// `CONNECT host:port`: routed like any request (by authority), then a TCP (or TLS,
/// if the cluster says so) connection to the chosen endpoint carries the bytes.
pub async fn connect(
    mut req: Request<Incoming>,
    lr: &ListenerRuntime,
    ex: &mut Exchange,
) -> Result<(Response<Body>, BodyTimeouts), ProxyError> {
    let authority = req.uri().authority().map(|a| a.as_str().to_string());
    let target = lr
        .routes
        .find(|| authority.as_deref(), "/")
        .ok_or(ProxyError::NoRoute)?;
    let cluster = target.cluster.clone().ok_or(ProxyError::NoCluster)?;
    ex.cluster = Some(cluster.clone());
    ex.admitted = cluster.admit()?;
    let (ep, io) = cluster
        .connect_tunnel((ex.conn.remote, ex.conn.local))
        .await?;
    ex.set_endpoint(ep);
    let downstream = hyper::upgrade::on(&mut req);
    let idle = cluster.config.idle_timeout.non_zero();
    let admitted = ex.admitted.take();
    tokio::spawn(async move {
        let _admitted = admitted;
        match downstream.await {
            Ok(d) => {
                if let Err(e) = pipe(TokioIo::new(d), io, idle).await {
                    tracing::debug!(error = %e, "CONNECT tunnel ended with an error");
                }
            }
            Err(e) => tracing::debug!(error = %e, "CONNECT upgrade did not complete"),
        }
    });
    Ok((Response::new(Body::Empty), BodyTimeouts::default()))
}

/// Copies both ways until both sides are done, or until no byte has moved for `idle`.
/// Returns the bytes sent from `a` to `b` and from `b` to `a`.
pub(super) async fn pipe<A, B>(a: A, b: B, idle: Option<Duration>) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let Some(idle) = idle else {
        let (mut a, mut b) = (a, b);
        return tokio::io::copy_bidirectional(&mut a, &mut b).await;
    };
    let epoch = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut a = Watched {
        inner: a,
        last: last.clone(),
        epoch,
    };
    let mut b = Watched {
        inner: b,
        last: last.clone(),
        epoch,
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    loop {
        let due = epoch + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
        tokio::select! {
            r = &mut copy => return r,
            () = tokio::time::sleep_until(due) => {
                let since = epoch + Duration::from_millis(last.load(Ordering::Relaxed));
                if Instant::now().saturating_duration_since(since) >= idle {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "tunnel idle timeout"));
                }
            }
        }
    }
}

/// Records when bytes last moved through a stream.
struct Watched<T> {
    inner: T,
    last: Arc<AtomicU64>,
    epoch: Instant,
}

impl<T> Watched<T> {
    fn touch(&self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        r
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
