//! TCP listeners: each connection's bytes go, unparsed, to an endpoint of a cluster.
//! Which cluster: the listener's routes matched on the TLS server name (SNI) when it
//! has routes, else the listener's own `cluster`. The name comes from the handshake
//! the proxy terminates (`tls`), or, when TLS passes through to the upstream, from
//! the client's first flight: rustls' `Acceptor` parses the ClientHello as it is
//! read, and the bytes read go on to the upstream unchanged (as Envoy's TLS
//! inspector and nginx's `ssl_preread` do).

use std::borrow::Cow;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::tunnel::pipe;
use crate::runtime::Runtime;
use crate::server::drain::Drain;
use crate::snapshot::ListenerRuntime;
use crate::telemetry::metrics::Limit;

/// The most of a client's first bytes read for its ClientHello (a hello is at most
/// a few KiB; with post-quantum key shares, under 16).
const MAX_HELLO: usize = 64 * 1024;

/// A TCP listener's connection. The drain token is held so shutdown waits for the
/// tunnel, up to its deadline; bytes cannot be cut short gracefully, so the tunnel
/// does not watch the signal.
pub async fn serve_tcp(
    tcp: TcpStream,
    remote: SocketAddr,
    lr: Arc<ListenerRuntime>,
    rt: Arc<Runtime>,
    _drain: Drain,
) {
    let _ = tcp.set_nodelay(true);
    // The client's address and the one it reached, for a PROXY header upstream.
    let client = (remote, tcp.local_addr().unwrap_or(remote));
    let limit = lr.config.limits.tls_handshake_timeout.0;
    let Some(tls) = &lr.tls else {
        if lr.routes.routes.is_empty() {
            return relay(tcp, &[], None, client, &lr).await;
        }
        // Passed through: the name is read from the client's hello, which goes on.
        let mut tcp = tcp;
        let mut seen = Vec::new();
        let sni = match tokio::time::timeout(limit, read_server_name(&mut tcp, &mut seen)).await {
            Ok(Ok(sni)) => sni,
            Ok(Err(e)) => {
                tracing::debug!(listener = %lr.name, %remote, error = %e, "connection failed before its TLS hello");
                return;
            }
            // A client that waits for the server to speak first: no name.
            Err(_) => None,
        };
        return relay(tcp, &seen, sni.as_deref(), client, &lr).await;
    };
    match tokio::time::timeout(limit, TlsAcceptor::from(tls.clone()).accept(tcp)).await {
        Ok(Ok(stream)) => {
            let sni = stream.get_ref().1.server_name().map(str::to_owned);
            relay(stream, &[], sni.as_deref(), client, &lr).await
        }
        Ok(Err(e)) => {
            tracing::debug!(listener = %lr.name, %remote, error = %e, "TLS handshake failed");
            rt.metrics.limit_hit(&lr.name, Limit::tls_handshake);
        }
        Err(_) => {
            tracing::debug!(listener = %lr.name, %remote, "TLS handshake timed out");
            rt.metrics.limit_hit(&lr.name, Limit::tls_handshake);
        }
    }
}

/// Reads the client's first bytes into `seen` until they hold a whole ClientHello,
/// and returns the server name it asks for: none when it names none, or when the
/// bytes are not TLS (or not a hello within `MAX_HELLO`), or the client closed first.
async fn read_server_name(tcp: &mut TcpStream, seen: &mut Vec<u8>) -> io::Result<Option<String>> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut buf = [0u8; 4096];
    loop {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        seen.extend_from_slice(&buf[..n]);
        let mut fresh = &buf[..n];
        while !fresh.is_empty() {
            if acceptor.read_tls(&mut fresh).is_err() {
                return Ok(None);
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                return Ok(accepted.client_hello().server_name().map(str::to_owned));
            }
            Ok(None) if seen.len() < MAX_HELLO => {}
            Ok(None) | Err(_) => return Ok(None),
        }
    }
}

/// Bytes both ways between the client and an endpoint of the cluster the listener
/// routes `sni` to, after `first` (what was read of the client already); one
/// access-log line when the connection ends, forwarded or not.
async fn relay<S>(
    downstream: S,
    first: &[u8],
    sni: Option<&str>,
    client: (SocketAddr, SocketAddr),
    lr: &ListenerRuntime,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let remote = client.0;
    let mut seen = Relayed::default();
    let outcome = forward(downstream, first, sni, client, lr, &mut seen).await;
    tracing::info!(
        target: "weft::access",
        listener = %lr.name,
        %remote,
        server_name = sni.unwrap_or("-"),
        cluster = seen.cluster.as_deref().unwrap_or("-"),
        upstream = %seen.upstream.map_or_else(|| "-".to_string(), |a| a.to_string()),
        request_bytes = seen.sent,
        response_bytes = seen.received,
        duration_ms = start.elapsed().as_secs_f64() * 1000.0,
        error = outcome.as_ref().err().map_or("-", |e| &**e),
    );
}

/// What an access-log line says of a TCP connection.
#[derive(Default)]
struct Relayed {
    cluster: Option<Arc<str>>,
    upstream: Option<SocketAddr>,
    sent: u64,
    received: u64,
}

async fn forward<S>(
    downstream: S,
    first: &[u8],
    sni: Option<&str>,
    client: (SocketAddr, SocketAddr),
    lr: &ListenerRuntime,
    seen: &mut Relayed,
) -> Result<(), Cow<'static, str>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let cluster = lr
        .routes
        .find(|| sni, "/")
        .and_then(|t| t.cluster.clone())
        .ok_or("no route for the server name")?;
    seen.cluster = Some(cluster.name.clone());
    // A connection is the cluster's request in flight while it lasts.
    let _admitted = cluster.admit().map_err(|e| e.kind())?;
    // Each failed attempt was logged with its endpoint.
    let (ep, mut upstream) = cluster.connect_tunnel(client).await.map_err(|e| e.kind())?;
    seen.upstream = Some(ep.addr);
    upstream.write_all(first).await.map_err(|e| e.to_string())?;
    seen.sent = first.len() as u64;
    let idle = lr.config.limits.idle_timeout.non_zero();
    let (sent, received) = pipe(downstream, upstream, idle)
        .await
        .map_err(|e| e.to_string())?;
    seen.sent += sent;
    seen.received = received;
    Ok(())
}
