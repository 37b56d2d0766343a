//! Downstream: listeners accept connections, enforce connection-level limits, do the
//! TLS handshake and hand the connection to hyper, whose requests go to
//! `proxy::handle`. TCP listeners hand the bytes to `proxy::tunnel` instead.

pub mod drain;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::config::ListenerProtocol;
use crate::runtime::Runtime;
use crate::snapshot::ListenerRuntime;
use crate::telemetry::metrics::{Limit, ListenerLabels};
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
    pub tls: Option<TlsInfo>,
    pub state: ConnState,
}

/// Whether a connection has requests in flight, and since when it has been idle.
#[derive(Default)]
pub struct ConnState {
    in_flight: AtomicU32,
    /// Runtime milliseconds when the last request ended; 0 before any request.
    idle_since_ms: AtomicU64,
    requests: AtomicU64,
}

impl ConnState {
    pub fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn end(&self, now_ms: u64) {
        self.idle_since_ms.store(now_ms.max(1), Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections until the listener is removed from the config or shutdown begins.
pub async fn accept_loop(
    listener: TcpListener,
    name: Arc<str>,
    rt: Arc<Runtime>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    drain: Drain,
) {
    let labels = ListenerLabels {
        listener: name.to_string(),
    };
    let open = rt.metrics.connections_open.get_or_create(&labels).clone();
    let accepted = rt.metrics.connections.get_or_create(&labels).clone();
    let mut shutdown = drain.clone();
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
            _ = shutdown.signaled() => break,
        };
        let snap = rt.snapshot();
        let Some(lr) = snap.listeners.get(&*name).cloned() else {
            break;
        };
        accepted.inc();
        if open.get() >= lr.config.limits.max_connections as i64 {
            rt.metrics.limit_hit(&name, Limit::max_connections);
            tracing::debug!(listener = %name, %remote, "connection refused: max_connections reached");
            drop(tcp);
            continue;
        }
        let local = tcp
            .local_addr()
            .unwrap_or_else(|_| listener.local_addr().unwrap_or(remote));
        let open = open.clone();
        open.inc();
        let rt = rt.clone();
        let drain = drain.clone();
        let name = name.clone();
        let removed = stop.clone();
        tokio::spawn(async move {
            match lr.config.protocol {
                ListenerProtocol::Http => {
                    serve_http(tcp, remote, local, lr, rt, name, drain, removed).await
                }
                ListenerProtocol::Tcp => {
                    crate::proxy::tunnel::serve_tcp(tcp, remote, lr, drain).await
                }
            }
            open.dec();
        });
    }
    tracing::info!(listener = %name, "listener stopped accepting");
}

/// Resolves when the listener is told to stop (the guard `wait_for` returns is not
/// `Send`, so it must not live in the accept loop's state).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// `removed` turns true when a reload drops (or moves) the listener.
#[allow(clippy::too_many_arguments)]
async fn serve_http(
    tcp: TcpStream,
    remote: SocketAddr,
    local: SocketAddr,
    lr: Arc<ListenerRuntime>,
    rt: Arc<Runtime>,
    name: Arc<str>,
    drain: Drain,
    removed: tokio::sync::watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let Some(tls) = &lr.tls else {
        let info = ConnInfo {
            runtime: rt,
            listener: name,
            remote,
            local,
            tls: None,
            state: ConnState::default(),
        };
        return serve(TokioIo::new(tcp), Arc::new(info), &lr, drain, removed).await;
    };
    let limit = lr.config.limits.tls_handshake_timeout.0;
    let stream = match tokio::time::timeout(limit, TlsAcceptor::from(tls.clone()).accept(tcp)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(listener = %name, %remote, error = %e, "TLS handshake failed");
            rt.metrics.limit_hit(&name, Limit::tls_handshake);
            return;
        }
        Err(_) => {
            tracing::debug!(listener = %name, %remote, "TLS handshake timed out");
            rt.metrics.limit_hit(&name, Limit::tls_handshake);
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
    let info = ConnInfo {
        runtime: rt,
        listener: name,
        remote,
        local,
        tls: Some(info),
        state: ConnState::default(),
    };
    serve(TokioIo::new(stream), Arc::new(info), &lr, drain, removed).await
}

/// Runs hyper on one connection, closing it when idle too long, at shutdown, or
/// when its listener is removed (requests in flight finish; then the client, told
/// by `Connection: close` or GOAWAY, goes elsewhere instead of getting 503s).
async fn serve<I>(
    io: TokioIo<I>,
    info: Arc<ConnInfo>,
    lr: &ListenerRuntime,
    mut drain: Drain,
    mut removed: tokio::sync::watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc_info = info.clone();
    let svc = service_fn(move |req| {
        let info = svc_info.clone();
        async move { Ok::<_, Infallible>(crate::proxy::handle(req, info).await) }
    });
    let mut conn = pin!(lr.http.serve_connection_with_upgrades(io, svc));
    let limits = &lr.config.limits;
    // Until the first request, a silent client gets only the header-read time.
    let first_request = limits.header_read_timeout.non_zero();
    let idle = limits.idle_timeout.non_zero();
    let rt = &info.runtime;
    let started_ms = rt.now_ms();
    let mut closing = false;
    let check_every = [first_request, idle].into_iter().flatten().min();
    let mut timer = pin!(tokio::time::sleep(
        check_every.unwrap_or(Duration::from_secs(3600))
    ));
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    note_connection_error(&info, &*e);
                }
                return;
            }
            () = timer.as_mut(), if check_every.is_some() && !closing => {
                let now = rt.now_ms();
                let st = &info.state;
                let busy = st.in_flight.load(Ordering::Relaxed) > 0;
                let never_used = st.requests.load(Ordering::Relaxed) == 0;
                let (since, limit, which) = if never_used {
                    (started_ms, first_request, Limit::header_read_timeout)
                } else {
                    (st.idle_since_ms.load(Ordering::Relaxed), idle, Limit::idle_timeout)
                };
                match limit {
                    Some(limit) if !busy && now.saturating_sub(since) >= limit.as_millis() as u64 => {
                        rt.metrics.limit_hit(&info.listener, which);
                        tracing::debug!(listener = %info.listener, remote = %info.remote, limit = ?which, "closing connection");
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    _ => {
                        let wait = match limit {
                            Some(limit) if !busy => limit.saturating_sub(Duration::from_millis(now.saturating_sub(since))),
                            _ => check_every.unwrap_or(Duration::from_secs(1)),
                        };
                        timer.as_mut().reset(tokio::time::Instant::now() + wait.max(Duration::from_millis(10)));
                    }
                }
            }
            _ = drain.signaled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            () = stopped(&mut removed), if !closing => {
                tracing::debug!(listener = %info.listener, remote = %info.remote, "closing connection: listener removed");
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

fn note_connection_error(info: &ConnInfo, e: &(dyn std::error::Error + 'static)) {
    let m = &info.runtime.metrics;
    if let Some(h) = e.downcast_ref::<hyper::Error>() {
        if h.is_parse_too_large() {
            m.limit_hit(&info.listener, Limit::header_size);
        } else if h.is_timeout() {
            m.limit_hit(&info.listener, Limit::header_read_timeout);
        }
    }
    tracing::debug!(listener = %info.listener, remote = %info.remote, error = %e, "downstream connection ended with an error");
}
