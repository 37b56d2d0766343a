//! Connections kept to each endpoint: idle HTTP/1.1 connections (one request at a
//! time each) and one shared HTTP/2 connection.
//!
//! Built directly on hyper's connection API rather than hyper-util's pooled client:
//! that client spawns a task per request to hand the connection back, which showed
//! up in profiles. Here an HTTP/1.1 connection has no task of its own either: the
//! request holding it polls it ([`H1Conn`]), and its response body ([`H1Body`])
//! gives it back to the pool once read whole.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;

use super::connect::Io;
use super::{Cluster, Endpoint, Want};
use crate::error::{BoxError, ProxyError};
use crate::proxy::body::{Body, RequestBody, Tally};

type H1Sender = http1::SendRequest<RequestBody>;
type H2Sender = http2::SendRequest<RequestBody>;

#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    h2: ArcSwapOption<H2Sender>,
    h2_connect: tokio::sync::Mutex<()>,
    /// Connections open to this endpoint, pooled or in use.
    open: Arc<AtomicUsize>,
}

struct Idle {
    conn: H1Conn,
    since: Instant,
}

impl Pool {
    /// Drops idle connections older than `max_idle` or closed by the upstream.
    pub(super) fn sweep(&self, max_idle: Duration) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Nothing polls an idle connection: polling it once here is what notices
        // that the upstream closed it (and releases the socket).
        let mut cx = Context::from_waker(Waker::noop());
        idle.retain_mut(|i| {
            i.conn.drive(&mut cx);
            i.since.elapsed() < max_idle && !i.conn.is_closed()
        });
    }

    fn take_idle(&self, max_idle: Duration) -> Option<H1Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(i) = idle.pop() {
            if i.since.elapsed() < max_idle && !i.conn.is_closed() {
                return Some(i.conn);
            }
        }
        None
    }

    /// Returns a connection whose exchange finished cleanly, idle from `now`.
    fn put(&self, conn: H1Conn, max_idle_conns: usize, now: Instant) {
        if conn.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < max_idle_conns {
            idle.push(Idle { conn, since: now });
        }
    }

    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn idle_connections(&self) -> usize {
        self.idle.lock().map(|i| i.len()).unwrap_or(0)
    }
}

/// An HTTP/1.1 connection and hyper's future that runs it (reads, writes, parses).
///
/// The future is polled by the task of the request holding the connection (first
/// by [`H1Conn::send`], then by the response body), not by a task of its own: the
/// client's connection, the request and the upstream connection then run in one
/// task, as in an event loop, instead of two tasks waking each other for the
/// request, the response head and every body chunk.
pub struct H1Conn(Box<Running>);

/// Boxed once per connection, so a lease and a response body carry one pointer.
struct Running {
    sender: H1Sender,
    /// `None` once the connection ended.
    conn: Option<H1Connection>,
    addr: SocketAddr,
    _open: OpenGuard,
}

type H1Connection = http1::Connection<TokioIo<Io>, RequestBody>;

impl H1Conn {
    /// Lets the connection make whatever progress it can: write the request and its
    /// body, read the response, notice a close.
    fn drive(&mut self, cx: &mut Context<'_>) {
        let this = &mut *self.0;
        if let Some(conn) = &mut this.conn {
            if let Poll::Ready(r) = Pin::new(conn).poll(cx) {
                this.conn = None;
                if let Err(e) = r {
                    tracing::debug!(endpoint = %this.addr, error = %e, "upstream connection ended with an error");
                }
            }
        }
    }

    fn is_closed(&self) -> bool {
        self.0.conn.is_none() || self.0.sender.is_closed()
    }

    /// Ready for a request: its last exchange is fully done.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        self.drive(cx);
        self.0.sender.poll_ready(cx)
    }

    /// Whether it is ready without waiting. A pooled connection turns ready once
    /// its last exchange is done, which most are by the time they are leased again.
    fn ready_now(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        matches!(self.poll_ready(&mut cx), Poll::Ready(Ok(())))
    }

    async fn send(
        &mut self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<RequestBody>>> {
        let mut response = std::pin::pin!(self.0.sender.try_send_request(req));
        poll_fn(|cx| {
            self.drive(cx);
            response.as_mut().poll(cx)
        })
        .await
    }
}

/// A response body read from an [`H1Conn`]: polls the connection before the body,
/// and puts the connection back in its endpoint's pool as soon as the body has
/// been read whole, if the request went out whole too. Dropped earlier (the client
/// left, a filter retried or answered), it closes the connection.
pub struct H1Body {
    incoming: Incoming,
    conn: Option<H1Conn>,
    endpoint: Arc<Endpoint>,
    max_idle_conns: usize,
    tally: Arc<Tally>,
}

impl H1Body {
    fn release(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            if self.tally.request_done.load(Ordering::Relaxed) {
                // Hyper's dispatcher goes idle on its next poll.
                conn.drive(&mut Context::from_waker(Waker::noop()));
                self.endpoint
                    .pool
                    .put(conn, self.max_idle_conns, Instant::now());
            }
        }
    }
}

impl http_body::Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(conn) = &mut this.conn {
            conn.drive(cx);
        }
        let frame = Pin::new(&mut this.incoming).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.incoming.is_end_stream() => this.release(),
            _ => {}
        }
        frame.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

/// A connection checked out for one request.
pub enum Lease {
    /// `reused` connections may have been closed by the upstream meanwhile; a
    /// request that fails on one before being written is sent again on a new one.
    H1 {
        conn: H1Conn,
        reused: bool,
    },
    /// A new HTTP/1.1 connection for an upgrade, run by its own task: after the
    /// switch it outlives the exchange, as one side of a tunnel.
    Upgrade(H1Sender),
    H2(H2Sender),
}

impl Lease {
    pub fn is_h2(&self) -> bool {
        matches!(self, Lease::H2(_))
    }

    /// The body of the response this lease's request got. An HTTP/1.1 connection
    /// goes with it, to be driven while it is read and pooled after.
    pub fn response_body(
        self,
        incoming: Incoming,
        endpoint: &Arc<Endpoint>,
        cluster: &Cluster,
        tally: &Arc<Tally>,
    ) -> Body {
        let Lease::H1 { conn, .. } = self else {
            return Body::Incoming(incoming);
        };
        let mut body = H1Body {
            incoming,
            conn: Some(conn),
            endpoint: endpoint.clone(),
            max_idle_conns: cluster.config.pool.max_idle_per_endpoint,
            tally: tally.clone(),
        };
        // A body that is over before it starts (HEAD, 204, 304, empty) may never be
        // polled.
        if http_body::Body::is_end_stream(&body.incoming) {
            body.release();
        }
        Body::Upstream(body)
    }
}

/// Counts a connection as open until dropped.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Cluster {
    /// A connection to `ep` fit for `want`.
    pub(crate) async fn checkout(
        &self,
        ep: &Arc<Endpoint>,
        want: Want,
    ) -> Result<Lease, ProxyError> {
        let max_idle = self.config.pool.idle_timeout.0;
        match self.use_h2(ep, want).await {
            Some(true) => self.h2_sender(ep, None).await.map(Lease::H2),
            Some(false) if want == Want::Upgrade => self.connect_upgrade(ep).await,
            Some(false) => match ep.pool.take_idle(max_idle) {
                Some(conn) => Ok(Lease::H1 { conn, reused: true }),
                None => self.connect_h1(ep).await,
            },
            // TLS with ALPN: use what the endpoint chose before, else connect and see.
            None => {
                if let Some(s) = ep.pool.h2.load().as_deref().filter(|s| !s.is_closed()) {
                    return Ok(Lease::H2(s.clone()));
                }
                if let Some(conn) = ep.pool.take_idle(max_idle) {
                    return Ok(Lease::H1 { conn, reused: true });
                }
                let guard = self.reserve(ep)?;
                let (io, h2) = self.connect_counted(ep, false).await?;
                if h2 {
                    self.h2_sender(ep, Some((io, guard))).await.map(Lease::H2)
                } else {
                    self.handshake_h1(ep, io, guard).await
                }
            }
        }
    }

    /// Reserves a connection slot under the endpoint's limit.
    fn reserve(&self, ep: &Endpoint) -> Result<OpenGuard, ProxyError> {
        let max = self.config.pool.max_connections_per_endpoint;
        let open = ep.pool.open.fetch_add(1, Ordering::Relaxed);
        let guard = OpenGuard(ep.pool.open.clone());
        if max != 0 && open >= max {
            return Err(ProxyError::PoolExhausted(ep.addr));
        }
        Ok(guard)
    }

    async fn connect_counted(
        &self,
        ep: &Endpoint,
        http1_only: bool,
    ) -> Result<(Io, bool), ProxyError> {
        let r = self.connector.connect(ep.addr, &ep.host, http1_only).await;
        if let Err(e) = &r {
            self.stats.connect_errors.inc();
            if matches!(e, ProxyError::ConnectTimeout(_)) {
                self.stats.timeouts.inc();
            }
        }
        r
    }

    async fn connect_h1(&self, ep: &Arc<Endpoint>) -> Result<Lease, ProxyError> {
        let guard = self.reserve(ep)?;
        let (io, _) = self.connect_counted(ep, true).await?;
        self.handshake_h1(ep, io, guard).await
    }

    async fn handshake_h1(
        &self,
        ep: &Endpoint,
        io: Io,
        guard: OpenGuard,
    ) -> Result<Lease, ProxyError> {
        let (sender, conn) = handshake(ep, io).await?;
        let conn = H1Conn(Box::new(Running {
            sender,
            conn: Some(conn),
            addr: ep.addr,
            _open: guard,
        }));
        Ok(Lease::H1 {
            conn,
            reused: false,
        })
    }

    /// A new connection for an upgrade, run by a task of its own.
    async fn connect_upgrade(&self, ep: &Arc<Endpoint>) -> Result<Lease, ProxyError> {
        let guard = self.reserve(ep)?;
        let (io, _) = self.connect_counted(ep, true).await?;
        let (sender, conn) = handshake(ep, io).await?;
        let addr = ep.addr;
        tokio::spawn(async move {
            let _open = guard;
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(endpoint = %addr, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(Lease::Upgrade(sender))
    }

    /// The endpoint's shared HTTP/2 connection, made on first use (once, however
    /// many requests wait for it). `made` is a connection already opened by ALPN.
    async fn h2_sender(
        &self,
        ep: &Endpoint,
        made: Option<(Io, OpenGuard)>,
    ) -> Result<H2Sender, ProxyError> {
        if made.is_none() {
            if let Some(s) = ep.pool.h2.load().as_deref().filter(|s| !s.is_closed()) {
                return Ok(s.clone());
            }
        }
        let _one_at_a_time = ep.pool.h2_connect.lock().await;
        if let Some(s) = ep.pool.h2.load().as_deref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        let (io, guard) = match made {
            Some(m) => m,
            None => {
                let guard = self.reserve(ep)?;
                (self.connect_counted(ep, false).await?.0, guard)
            }
        };
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| ProxyError::Handshake {
                addr: ep.addr,
                source,
            })?;
        let addr = ep.addr;
        tokio::spawn(async move {
            let _open = guard;
            if let Err(e) = conn.await {
                tracing::debug!(endpoint = %addr, error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        ep.pool.h2.store(Some(Arc::new(sender.clone())));
        Ok(sender)
    }

    /// Sends `req` on a leased connection. A request that a reused HTTP/1.1
    /// connection failed to write (the upstream closed it while idle) goes again on
    /// a new connection, once.
    pub(crate) async fn send(
        &self,
        ep: &Arc<Endpoint>,
        lease: &mut Lease,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let addr = ep.addr;
        let upstream = |source| ProxyError::Upstream { addr, source };
        match lease {
            Lease::H2(sender) => sender.send_request(req).await.map_err(upstream),
            Lease::Upgrade(sender) => sender.send_request(req).await.map_err(upstream),
            Lease::H1 { conn, reused } => {
                // Only a connection not ready at once waits, under a timer (making
                // one reads the clock).
                if *reused && !conn.ready_now() {
                    let ready = tokio::time::timeout(
                        self.connector.connect_timeout,
                        poll_fn(|cx| conn.poll_ready(cx)),
                    )
                    .await;
                    if !matches!(ready, Ok(Ok(()))) {
                        *lease = self.connect_h1(ep).await?;
                        return Box::pin(self.send(ep, lease, req)).await;
                    }
                }
                match conn.send(req).await {
                    Ok(r) => Ok(r),
                    Err(mut e) => match (e.take_message(), *reused) {
                        (Some(req), true) => {
                            tracing::debug!(endpoint = %addr, error = %e.error(), "pooled connection was closed; sending on a new one");
                            *lease = self.connect_h1(ep).await?;
                            Box::pin(self.send(ep, lease, req)).await
                        }
                        _ => Err(upstream(e.into_error())),
                    },
                }
            }
        }
    }
}

async fn handshake(ep: &Endpoint, io: Io) -> Result<(H1Sender, H1Connection), ProxyError> {
    http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|source| ProxyError::Handshake {
            addr: ep.addr,
            source,
        })
}
