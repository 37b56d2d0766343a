//! Downstream: listeners accept connections, enforce connection-level limits, read a
//! load balancer's PROXY protocol header where asked to (`proxy_protocol`), do the
//! TLS handshake, tell HTTP/2 from HTTP/1 (ALPN, or the HTTP/2 preface peeked from a
//! cleartext socket) and hand the connection to hyper's server for that protocol,
//! whose requests go to `proxy::handle`. TCP listeners hand the connection to
//! `proxy::tunnel` instead (which does their TLS handshake too).

pub mod drain;
mod proxy_protocol;
pub mod sockets;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::config::ListenerProtocol;
use crate::gate::{FiredTimer, TimerSlot, WhenChanged};
use crate::proxy::headers::ClientIp;
use crate::runtime::Runtime;
use crate::snapshot::ListenerRuntime;
use crate::telemetry::metrics::Limit;
use drain::Drain;

/// What the TLS handshake of a connection established.
#[derive(Clone, Debug, Default)]
pub struct TlsInfo {
    pub sni: Option<String>,
    pub alpn: Option<String>,
    /// The verified client certificate's SPIFFE URI or DNS name.
    pub peer_identity: Option<String>,
}

/// One downstream connection, shared by its requests.
pub struct ConnInfo {
    pub runtime: Arc<Runtime>,
    pub listener: Arc<str>,
    pub remote: SocketAddr,
    pub local: SocketAddr,
    /// The listening socket that accepted the connection (its bound address).
    pub socket: SocketAddr,
    pub tls: Option<TlsInfo>,
    pub state: ConnState,
    /// `remote`'s address, formatted for the forwarding headers.
    pub client_ip: ClientIp,
    /// The timer of its requests' deadlines.
    pub deadline_timer: TimerSlot,
}

/// Whether a connection has requests in flight, and since when it has been idle.
pub struct ConnState {
    in_flight: AtomicU32,
    /// Runtime milliseconds when the last request ended; 0 before any request.
    idle_since_ms: AtomicU64,
    requests: AtomicU64,
    /// Runtime milliseconds when the bytes of a new request head began to arrive on
    /// an idle HTTP/1 connection; 0 when none is arriving.
    head_since_ms: AtomicU64,
    /// The connection speaks HTTP/2: bytes between requests are frames, not heads.
    h2: bool,
    /// Its listener binding was retired (a reload dropped it, or shutdown's delay
    /// began): HTTP/1.1 answers say `Connection: close`, and it closes after them.
    retiring: AtomicBool,
}

impl ConnState {
    fn new(h2: bool) -> Self {
        ConnState {
            in_flight: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            head_since_ms: AtomicU64::new(0),
            h2,
            retiring: AtomicBool::new(false),
        }
    }

    /// Whether this HTTP/1 connection should tell its client it closes after the
    /// answer (see `retiring`).
    pub fn closes_after_answer(&self) -> bool {
        !self.h2 && self.retiring.load(Ordering::Relaxed)
    }

    pub fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.head_since_ms.store(0, Ordering::Relaxed);
    }

    /// Bytes came in: on an idle HTTP/1 connection they start the next request head.
    fn received(&self, now_ms: impl FnOnce() -> u64) {
        if self.head_since_ms.load(Ordering::Relaxed) == 0
            && self.in_flight.load(Ordering::Relaxed) == 0
            && !self.h2
        {
            self.head_since_ms.store(now_ms().max(1), Ordering::Relaxed);
        }
    }

    pub fn end(&self, now_ms: u64) {
        self.idle_since_ms.store(now_ms.max(1), Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections on the socket bound to `local` until no listener uses it
/// any more or shutdown begins. Each connection is served by the listener the
/// current snapshot gives the socket to.
pub async fn accept_loop(
    listener: TcpListener,
    local: SocketAddr,
    rt: Arc<Runtime>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    drain: Drain,
) {
    let mut shutdown = drain.clone();
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(address = %local, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
            _ = shutdown.signaled() => break,
        };
        let snap = rt.snapshot();
        // None: the socket is on its way out (its stop signal follows); the
        // connection is closed, as one still in its backlog would be.
        let Some(owner) = snap.sockets.get(&local) else {
            continue;
        };
        let lr = owner.listener.clone();
        let removed = owner.retired.clone();
        drop(snap);
        lr.connections.inc();
        if lr.connections_open.get() >= lr.config.limits.max_connections as i64 {
            rt.metrics.limit_hit(&lr.name, Limit::max_connections);
            tracing::debug!(listener = %lr.name, %remote, "connection refused: max_connections reached");
            drop(tcp);
            continue;
        }
        let open = lr.connections_open.clone();
        open.inc();
        let rt = rt.clone();
        let drain = drain.clone();
        tokio::spawn(async move {
            let mut tcp = tcp;
            let client = match lr.config.proxy_protocol {
                false => Some(remote),
                true => proxy_protocol::client_of(&mut tcp, &lr, &rt, remote).await,
            };
            match (client, lr.config.protocol) {
                (None, _) => {}
                (Some(remote), ListenerProtocol::Http) => {
                    serve_http(tcp, remote, local, lr, rt, drain, removed).await
                }
                (Some(remote), ListenerProtocol::Tcp) => {
                    crate::proxy::tcp::serve_tcp(tcp, remote, lr, rt, drain).await
                }
            }
            open.dec();
        });
    }
    tracing::info!(address = %local, "socket stopped accepting");
}

/// Resolves when the listener is told to stop (the guard `wait_for` returns is not
/// `Send`, so it must not live in the accept loop's state).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// `removed` turns true when a reload drops (or moves) the listener.
async fn serve_http(
    tcp: TcpStream,
    remote: SocketAddr,
    socket: SocketAddr,
    lr: Arc<ListenerRuntime>,
    rt: Arc<Runtime>,
    mut drain: Drain,
    removed: tokio::sync::watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().unwrap_or(socket);
    let Some(tls) = &lr.tls else {
        let started_ms = rt.now_ms();
        let Some(h2) = sniff(&tcp, &lr, &rt, &mut drain, remote).await else {
            return;
        };
        let info = ConnInfo {
            runtime: rt,
            listener: lr.name.clone(),
            remote,
            local,
            socket,
            tls: None,
            state: ConnState::new(h2),
            client_ip: ClientIp::new(remote),
            deadline_timer: TimerSlot::default(),
        };
        return serve(tcp, Arc::new(info), &lr, drain, removed, started_ms).await;
    };
    let limit = lr.config.limits.tls_handshake_timeout.0;
    let stream = match tokio::time::timeout(limit, TlsAcceptor::from(tls.clone()).accept(tcp)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(listener = %lr.name, %remote, error = %e, "TLS handshake failed");
            rt.metrics.limit_hit(&lr.name, Limit::tls_handshake);
            return;
        }
        Err(_) => {
            tracing::debug!(listener = %lr.name, %remote, "TLS handshake timed out");
            rt.metrics.limit_hit(&lr.name, Limit::tls_handshake);
            return;
        }
    };
    let session = stream.get_ref().1;
    let info = TlsInfo {
        sni: session.server_name().map(str::to_string),
        alpn: session
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        peer_identity: session
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(crate::tls::peer_identity),
    };
    // HTTP/2 over TLS is negotiated with ALPN (RFC 9113 §3.2), never assumed.
    let h2 = info.alpn.as_deref() == Some("h2");
    let started_ms = rt.now_ms();
    let info = ConnInfo {
        runtime: rt,
        listener: lr.name.clone(),
        remote,
        local,
        socket,
        tls: Some(info),
        state: ConnState::new(h2),
        client_ip: ClientIp::new(remote),
        deadline_timer: TimerSlot::default(),
    };
    serve(stream, Arc::new(info), &lr, drain, removed, started_ms).await
}

/// What a client opening an HTTP/2 connection with prior knowledge sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a cleartext connection speaks HTTP/2, told from its first bytes, peeked
/// so that hyper reads them itself (no replaying wrapper on every read). None when
/// the client closed, timed out before sending a request or shutdown began.
async fn sniff(
    tcp: &TcpStream,
    lr: &ListenerRuntime,
    rt: &Runtime,
    drain: &mut Drain,
    remote: SocketAddr,
) -> Option<bool> {
    let peek = async {
        let mut buf = [0u8; H2_PREFACE.len()];
        loop {
            let n = tcp.peek(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(None);
            }
            if buf[..n] != H2_PREFACE[..n] {
                return Ok(Some(false));
            }
            if n == buf.len() {
                return Ok(Some(true));
            }
            // Part of the preface, the rest on its way: peeking again at once would
            // spin (the socket stays readable), so wait a moment first.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let header_time = lr.config.limits.header_read_timeout.non_zero();
    let limit = async {
        match header_time {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        _ = drain.signaled() => None,
        r = peek => r.ok().flatten(),
        () = limit => {
            rt.metrics.limit_hit(&lr.name, Limit::header_read_timeout);
            tracing::debug!(listener = %lr.name, %remote, "closing connection: no request before the header read timeout");
            None
        }
    }
}

/// How long a connection retired before its first request waits for that request.
const RETIRE_FIRST_REQUEST_WAIT_MS: u64 = 1000;

/// Serves one connection with hyper's server for its protocol.
async fn serve<I>(
    io: I,
    info: Arc<ConnInfo>,
    lr: &ListenerRuntime,
    drain: Drain,
    removed: tokio::sync::watch::Receiver<bool>,
    started_ms: u64,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc_info = info.clone();
    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let info = svc_info.clone();
        async move { Ok::<_, Infallible>(crate::proxy::handle(req, info).await) }
    });
    let io = TokioIo::new(Watched {
        io,
        info: info.clone(),
    });
    if info.state.h2 {
        // Boxed: HTTP/2's connection state is large, and HTTP/1 connections, the
        // many, should not carry its size in their tasks.
        let mut conn = Box::pin(lr.http2.serve_connection(io, svc));
        let shutdown = http2::Connection::graceful_shutdown;
        drive(
            conn.as_mut(),
            shutdown,
            info,
            lr,
            drain,
            removed,
            started_ms,
        )
        .await
    } else {
        let conn = pin!(lr.http1.serve_connection(io, svc).with_upgrades());
        let shutdown = http1::UpgradeableConnection::graceful_shutdown;
        drive(conn, shutdown, info, lr, drain, removed, started_ms).await
    }
}

/// Runs a hyper connection, closing it when idle too long, at shutdown, or when its
/// listener is removed (requests in flight finish; then the client, told by
/// `Connection: close` or GOAWAY, goes elsewhere instead of getting 503s).
async fn drive<C>(
    mut conn: Pin<&mut C>,
    graceful_shutdown: impl Fn(Pin<&mut C>),
    info: Arc<ConnInfo>,
    lr: &ListenerRuntime,
    mut drain: Drain,
    mut removed: tokio::sync::watch::Receiver<bool>,
    started_ms: u64,
) where
    C: Future<Output = hyper::Result<()>>,
{
    let limits = &lr.config.limits;
    // The header read time runs from the connection's start until its first request,
    // and from the first byte of each later request head; between requests (and on
    // HTTP/2) the idle timeout applies. Hyper's own header timer is off: it would run
    // through the idle time between requests too.
    let header_time = limits.header_read_timeout.non_zero();
    let idle = limits.idle_timeout.non_zero();
    let max_age = limits.max_connection_duration.non_zero();
    let rt = &info.runtime;
    let mut closing = false;
    // Set when a reload retired the connection's listener binding.
    let mut retiring = false;
    // Set when a header timeout asked the connection to close: it is cut then.
    let mut cutting = false;
    let check_every = [header_time, idle, max_age].into_iter().flatten().min();
    let sleep = pin!(tokio::time::sleep(
        check_every.unwrap_or(Duration::from_secs(3600))
    ));
    let mut timer = FiredTimer::new(sleep);
    // The shutdown and listener-removed futures are polled only when their channel
    // has changed (after a first poll that registers them): the connection's task
    // is woken several times per request, and polling a registered watch future
    // takes the channel's lock, one shared by every connection on every worker.
    let (drain_probe, removed_probe) = (drain.probe(), removed.clone());
    let (drained, unbound) = (pin!(drain.signaled()), pin!(stopped(&mut removed)));
    let mut drained = WhenChanged::new(drained, drain_probe);
    let mut unbound = WhenChanged::new(unbound, removed_probe);
    loop {
        tokio::select! {
            // In this order, so the first poll registers the control futures
            // before anything else can end it.
            biased;
            () = &mut drained, if !closing => {
                graceful_shutdown(conn.as_mut());
                closing = true;
            }
            () = &mut unbound, if !closing && !retiring => {
                // A connection accepted just before the reload may have its first
                // request on the way: closing it now would reset that request, so it
                // is answered first (with `Connection: close`).
                retiring = true;
                info.state.retiring.store(true, Ordering::Relaxed);
                timer.reset(tokio::time::Instant::now());
            }
            r = conn.as_mut() => {
                if let Err(e) = r {
                    note_connection_error(&info, &e);
                }
                return;
            }
            () = &mut timer, if (check_every.is_some() || retiring) && (!closing || cutting) => {
                if cutting {
                    return;
                }
                if retiring {
                    if info.state.requests.load(Ordering::Relaxed) > 0
                        || info.state.h2
                        || rt.now_ms().saturating_sub(started_ms) >= RETIRE_FIRST_REQUEST_WAIT_MS
                    {
                        tracing::debug!(listener = %info.listener, remote = %info.remote, "closing connection: listener removed");
                        graceful_shutdown(conn.as_mut());
                        closing = true;
                    } else {
                        timer.reset(tokio::time::Instant::now() + Duration::from_millis(5));
                    }
                    continue;
                }
                let now = rt.now_ms();
                let age = Duration::from_millis(now.saturating_sub(started_ms));
                if max_age.is_some_and(|max| age >= max) {
                    rt.metrics.limit_hit(&info.listener, Limit::max_connection_duration);
                    tracing::debug!(listener = %info.listener, remote = %info.remote, "closing connection: max_connection_duration");
                    // Requests in flight finish; HTTP/1.1 closes after its response.
                    graceful_shutdown(conn.as_mut());
                    closing = true;
                    continue;
                }
                let st = &info.state;
                let busy = st.in_flight.load(Ordering::Relaxed) > 0;
                let never_used = st.requests.load(Ordering::Relaxed) == 0;
                let head_since = st.head_since_ms.load(Ordering::Relaxed);
                let (since, limit, which) = if never_used {
                    (started_ms, header_time, Limit::header_read_timeout)
                } else if head_since != 0 {
                    (head_since, header_time, Limit::header_read_timeout)
                } else {
                    (st.idle_since_ms.load(Ordering::Relaxed), idle, Limit::idle_timeout)
                };
                match limit {
                    Some(limit) if !busy && now.saturating_sub(since) >= limit.as_millis() as u64 => {
                        rt.metrics.limit_hit(&info.listener, which);
                        tracing::debug!(listener = %info.listener, remote = %info.remote, limit = ?which, "closing connection");
                        graceful_shutdown(conn.as_mut());
                        closing = true;
                        if which == Limit::header_read_timeout {
                            // HTTP/1 goes on reading a head that never ends, shutdown
                            // or not (HTTP/2 has sent GOAWAY): cut it after a moment.
                            cutting = true;
                            let grace = limit.min(Duration::from_secs(1));
                            timer.reset(tokio::time::Instant::now() + grace);
                        }
                    }
                    _ => {
                        let mut wait = match limit {
                            Some(limit) if !busy => limit.saturating_sub(Duration::from_millis(now.saturating_sub(since))),
                            _ => check_every.unwrap_or(Duration::from_secs(1)),
                        };
                        if which == Limit::idle_timeout {
                            // Look for a request head starting at least every header time.
                            wait = wait.min(header_time.unwrap_or(wait));
                        }
                        if let Some(max) = max_age {
                            wait = wait.min(max.saturating_sub(age));
                        }
                        timer.reset(tokio::time::Instant::now() + wait.max(Duration::from_millis(10)));
                    }
                }
            }
        }
    }
}

/// A client's byte stream that tells the connection's state when bytes arrive.
struct Watched<I> {
    io: I,
    info: Arc<ConnInfo>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let info = &self.info;
            info.state.received(|| info.runtime.now_ms());
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

fn note_connection_error(info: &ConnInfo, e: &hyper::Error) {
    let m = &info.runtime.metrics;
    if e.is_parse_too_large() {
        m.limit_hit(&info.listener, Limit::header_size);
    } else if e.is_timeout() {
        m.limit_hit(&info.listener, Limit::header_read_timeout);
    }
    tracing::debug!(listener = %info.listener, remote = %info.remote, error = %e, "downstream connection ended with an error");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_head_starts_only_on_an_idle_http1_connection() {
        let st = ConnState::new(false);
        st.begin();
        st.received(|| 5);
        assert_eq!(st.head_since_ms.load(Ordering::Relaxed), 0, "in flight");
        st.end(6);
        st.received(|| 7);
        st.received(|| 9);
        assert_eq!(
            st.head_since_ms.load(Ordering::Relaxed),
            7,
            "first byte counts"
        );
        st.begin();
        assert_eq!(st.head_since_ms.load(Ordering::Relaxed), 0, "head done");
        let st = ConnState::new(true);
        st.received(|| 11);
        assert_eq!(st.head_since_ms.load(Ordering::Relaxed), 0, "HTTP/2 frames");
    }
}
