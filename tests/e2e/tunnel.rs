//! Byte tunnels: `CONNECT host:port` on an HTTP listener, routed by authority to a
//! cluster, and listeners with `protocol = "tcp"`; both close when idle too long.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, Request, StatusCode};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// A TCP server on 127.0.0.1:0 that writes back what it reads, counting the
/// connections it accepted and those that have ended.
struct TcpEcho {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TcpEcho {
    async fn start() -> TcpEcho {
        Self::serve(TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    /// Serves on a bound listener (to bring an echo back on the same port).
    fn serve(listener: TcpListener) -> TcpEcho {
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let (a, e) = (accepted.clone(), ended.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let e = e.clone();
                tokio::spawn(async move {
                    let (mut r, mut w) = tcp.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                    e.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        TcpEcho {
            addr,
            accepted,
            ended,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn ended(&self) -> usize {
        self.ended.load(Ordering::SeqCst)
    }
}

/// Writes `data` and reads the same number of bytes back, concurrently (so data
/// larger than the socket buffers cannot deadlock).
async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, data: &[u8]) -> Vec<u8> {
    let (mut r, mut w) = tokio::io::split(s);
    let write = async {
        w.write_all(data).await.unwrap();
        w.flush().await.unwrap();
    };
    let read = async {
        let mut back = vec![0u8; data.len()];
        r.read_exact(&mut back).await.unwrap();
        back
    };
    let ((), back) =
        tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(write, read) })
            .await
            .expect("echo timed out");
    back
}

/// Reads an HTTP/1.1 response head (through the blank line) from a raw stream.
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
            .await
            .expect("response head timed out")
            .unwrap();
        assert!(
            n > 0,
            "closed before the head ended: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

fn connect_config(echo: &TcpEcho, dead: &ClosedPort, idle: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
[[listeners.routes]]
host = "echo.test"
cluster = "echo"
[[listeners.routes]]
host = "dead.test"
cluster = "dead"

[[clusters]]
name = "echo"
endpoints = ["{}"]
idle_timeout = "{idle}"
[[clusters]]
name = "dead"
endpoints = ["{dead}"]
"#,
        echo.addr
    )
}

#[tokio::test]
async fn connect_tunnels_raw_bytes_to_the_routed_cluster() {
    let echo = TcpEcho::start().await;
    let dead = ClosedPort::new();
    let proxy = Proxy::start(&connect_config(&echo, &dead, "60s")).await;

    let mut s = TcpStream::connect(proxy.addr("main")).await.unwrap();
    s.write_all(b"CONNECT echo.test:443 HTTP/1.1\r\nhost: echo.test:443\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(echo.accepted(), 1);

    // Not HTTP: bytes, including some that would confuse a parser.
    let odd = b"GET / HTTP/1.1\r\n\r\n\x00\xff binary \r\n";
    assert_eq!(round_trip(&mut s, odd).await, odd);
    let big = pattern(1 << 20);
    assert_eq!(round_trip(&mut s, &big).await, big);

    // Half-close: the upstream sees the end, closes, and the client sees that.
    s.shutdown().await.unwrap();
    let rest = closed_within(&mut s, Duration::from_secs(5)).await;
    assert!(rest.is_empty(), "{rest:?}");
    assert!(eventually(Duration::from_secs(5), async || echo.ended() == 1).await);
    assert_eq!(echo.accepted(), 1);
}

#[tokio::test]
async fn connect_with_hyper_clients_over_http1_and_http2() {
    let echo = TcpEcho::start().await;
    let dead = ClosedPort::new();
    let proxy = Proxy::start(&connect_config(&echo, &dead, "60s")).await;
    let connect = || {
        Request::builder()
            .method(Method::CONNECT)
            .uri("echo.test:8443")
            .body(empty())
            .unwrap()
    };

    // HTTP/1.1
    let tcp = TcpStream::connect(proxy.addr("main")).await.unwrap();
    let (mut sender, conn) = http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn.with_upgrades());
    let resp = sender.send_request(connect()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut up = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    assert_eq!(
        round_trip(&mut up, b"over http/1.1").await,
        b"over http/1.1"
    );

    // HTTP/2 (prior knowledge): the tunnel is one stream of the connection.
    let tcp = TcpStream::connect(proxy.addr("main")).await.unwrap();
    let (mut sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(connect()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut up = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    let big = pattern(256 * 1024);
    assert_eq!(round_trip(&mut up, &big).await, big);
    // A second tunnel on the same HTTP/2 connection.
    let resp = sender.send_request(connect()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut second = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    assert_eq!(round_trip(&mut second, b"second").await, b"second");
    assert_eq!(round_trip(&mut up, b"first again").await, b"first again");
    assert_eq!(echo.accepted(), 3);
}

#[tokio::test]
async fn connect_to_an_unrouted_or_dead_target_fails_with_a_status() {
    let echo = TcpEcho::start().await;
    let dead = ClosedPort::new();
    let proxy = Proxy::start(&connect_config(&echo, &dead, "60s")).await;
    for (target, want) in [
        ("nowhere.test:443", StatusCode::NOT_FOUND),
        ("dead.test:443", StatusCode::BAD_GATEWAY),
    ] {
        let mut s = TcpStream::connect(proxy.addr("main")).await.unwrap();
        s.write_all(format!("CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let head = read_head(&mut s).await;
        assert!(
            head.starts_with(&format!("HTTP/1.1 {}", want.as_u16())),
            "{target}: {head}"
        );
    }
    assert_eq!(echo.accepted(), 0);
}

#[tokio::test]
async fn connect_tunnel_closes_when_idle() {
    let echo = TcpEcho::start().await;
    let dead = ClosedPort::new();
    let proxy = Proxy::start(&connect_config(&echo, &dead, "300ms")).await;
    let mut s = TcpStream::connect(proxy.addr("main")).await.unwrap();
    s.write_all(b"CONNECT echo.test:443 HTTP/1.1\r\nhost: echo.test:443\r\n\r\n")
        .await
        .unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 200"));
    assert_eq!(round_trip(&mut s, b"ping").await, b"ping");
    let idle_from = Instant::now();
    closed_within(&mut s, Duration::from_secs(5)).await;
    let idled = idle_from.elapsed();
    assert!(
        idled >= Duration::from_millis(250),
        "closed after {idled:?}"
    );
    assert!(eventually(Duration::from_secs(5), async || echo.ended() == 1).await);
}

fn tcp_config(echo: SocketAddr, idle: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "tcp"
address = "127.0.0.1:0"
protocol = "tcp"
cluster = "echo"
[listeners.limits]
idle_timeout = "{idle}"

[[clusters]]
name = "echo"
endpoints = ["{echo}"]
"#
    )
}

#[tokio::test]
async fn tcp_listener_forwards_bytes_and_closes_when_idle() {
    let echo = TcpEcho::start().await;
    let proxy = Proxy::start(&tcp_config(echo.addr, "500ms")).await;
    let mut s = TcpStream::connect(proxy.addr("tcp")).await.unwrap();
    // The first bytes are an HTTP request: a TCP listener must not parse them.
    let req = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
    assert_eq!(round_trip(&mut s, req).await, req);
    let big = pattern(1 << 20);
    assert_eq!(round_trip(&mut s, &big).await, big);

    // Traffic every 100ms keeps the tunnel open for twice the idle timeout.
    let busy_from = Instant::now();
    for i in 0..10u8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(round_trip(&mut s, &[i]).await, [i], "closed while busy");
    }
    assert!(busy_from.elapsed() >= Duration::from_millis(1000));

    // Then silence: the proxy closes both sides.
    let idle_from = Instant::now();
    let rest = closed_within(&mut s, Duration::from_secs(5)).await;
    let idled = idle_from.elapsed();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        idled >= Duration::from_millis(450),
        "closed after {idled:?}"
    );
    assert!(
        eventually(Duration::from_secs(5), async || echo.ended() == 1).await,
        "the upstream side stayed open"
    );
    assert_eq!(echo.accepted(), 1);
}

#[tokio::test]
async fn tcp_listener_balances_connections_and_closes_on_a_dead_upstream() {
    let (e1, e2) = (TcpEcho::start().await, TcpEcho::start().await);
    let dead = ClosedPort::new();
    let proxy = Proxy::start(&format!(
        r#"
[[listeners]]
name = "tcp"
address = "127.0.0.1:0"
protocol = "tcp"
cluster = "echo"
[[listeners]]
name = "dead"
address = "127.0.0.1:0"
protocol = "tcp"
cluster = "dead"

[[clusters]]
name = "echo"
endpoints = ["{}", "{}"]
[[clusters]]
name = "dead"
endpoints = ["{}"]
"#,
        e1.addr, e2.addr, dead
    ))
    .await;
    for i in 0..4u8 {
        let mut s = TcpStream::connect(proxy.addr("tcp")).await.unwrap();
        assert_eq!(round_trip(&mut s, &[i; 3]).await, [i; 3]);
    }
    assert_eq!((e1.accepted(), e2.accepted()), (2, 2));

    let mut s = TcpStream::connect(proxy.addr("dead")).await.unwrap();
    closed_within(&mut s, Duration::from_secs(5)).await;
    assert!(
        proxy
            .metric("weft_upstream_connect_errors_total{cluster=\"dead\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn tcp_listener_with_tls_terminates_it() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let leaf = pki.leaf(&["tcp.test"], &[]);
    let (cert, key) = pki.write(dir.path(), "tcp", &leaf);
    let echo = TcpEcho::start().await;
    let proxy = Proxy::start(&format!(
        r#"
[[listeners]]
name = "tcp"
address = "127.0.0.1:0"
protocol = "tcp"
cluster = "echo"
[listeners.tls]
certificates = [{{ cert = "{}", key = "{}" }}]

[[clusters]]
name = "echo"
endpoints = ["{}"]
"#,
        cert.display(),
        key.display(),
        echo.addr
    ))
    .await;
    let tcp = TcpStream::connect(proxy.addr("tcp")).await.unwrap();
    let mut tls = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(pki.client_config(&[])).connect(
            rustls::pki_types::ServerName::try_from("tcp.test").unwrap(),
            tcp,
        ),
    )
    .await
    .expect("TLS handshake timed out")
    .expect("the listener's certificate, not the upstream's bytes");
    assert_eq!(
        tls.get_ref().1.peer_certificates().unwrap()[0],
        leaf.der,
        "wrong certificate"
    );
    // The upstream gets the plain bytes.
    assert_eq!(
        round_trip(&mut tls, b"in the clear upstream").await,
        b"in the clear upstream"
    );
    let big = pattern(256 * 1024);
    assert_eq!(round_trip(&mut tls, &big).await, big);
    assert_eq!(echo.accepted(), 1);

    // A client that does not speak TLS never reaches the upstream.
    let mut plain = TcpStream::connect(proxy.addr("tcp")).await.unwrap();
    plain.write_all(b"hello?\r\n").await.unwrap();
    closed_within(&mut plain, Duration::from_secs(5)).await;
    assert_eq!(echo.accepted(), 1);
    assert_eq!(
        proxy
            .metric("weft_limit_hits_total{listener=\"tcp\",limit=\"tls_handshake\"}")
            .await,
        1.0
    );
}

/// Sends `CONNECT target` on a fresh connection and returns the status line.
async fn connect_status(proxy: &Proxy, target: &str) -> String {
    let mut s = TcpStream::connect(proxy.addr("main")).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_head(&mut s).await.lines().next().unwrap().to_string()
}

#[tokio::test]
async fn connect_tunnels_count_as_successes_for_outlier_detection() {
    // One endpoint that may be ejected, after two failures in a row.
    let echo = TcpEcho::start().await;
    let addr = echo.addr;
    let proxy = Proxy::start(&format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
cluster = "echo"

[[clusters]]
name = "echo"
endpoints = ["{addr}"]
[clusters.outlier]
consecutive_failures = 2
max_ejected_percent = 100
"#
    ))
    .await;
    assert!(connect_status(&proxy, "echo.test:1")
        .await
        .contains(" 200 "));
    drop(echo);
    assert!(connect_status(&proxy, "echo.test:1")
        .await
        .contains(" 502 "));
    let echo = TcpEcho::serve(TcpListener::bind(addr).await.unwrap());
    assert!(connect_status(&proxy, "echo.test:1")
        .await
        .contains(" 200 "));
    drop(echo);
    assert!(connect_status(&proxy, "echo.test:1")
        .await
        .contains(" 502 "));
    let echo = TcpEcho::serve(TcpListener::bind(addr).await.unwrap());
    // Failure, success, failure: never two failures in a row, so no ejection.
    let status = connect_status(&proxy, "echo.test:1").await;
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(echo.accepted(), 1);
    assert_eq!(
        proxy
            .metric("weft_endpoint_ejections_total{cluster=\"echo\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn connect_tunnels_outlive_the_listener_idle_timeout() {
    // Tunnels idle out by the cluster's idle timeout (60s here), not by the
    // listener's, which is for HTTP connections between requests.
    let echo = TcpEcho::start().await;
    let dead = ClosedPort::new();
    let cfg = connect_config(&echo, &dead, "60s").replace(
        "name = \"main\"\naddress = \"127.0.0.1:0\"\n",
        "name = \"main\"\naddress = \"127.0.0.1:0\"\nlimits = { idle_timeout = \"200ms\" }\n",
    );
    assert!(cfg.contains("200ms"), "{cfg}");
    let proxy = Proxy::start(&cfg).await;
    let connect = || {
        Request::builder()
            .method(Method::CONNECT)
            .uri("echo.test:443")
            .body(empty())
            .unwrap()
    };
    let mut h1_tunnel = TcpStream::connect(proxy.addr("main")).await.unwrap();
    h1_tunnel
        .write_all(b"CONNECT echo.test:443 HTTP/1.1\r\nhost: echo.test:443\r\n\r\n")
        .await
        .unwrap();
    assert!(read_head(&mut h1_tunnel).await.starts_with("HTTP/1.1 200"));
    let tcp = TcpStream::connect(proxy.addr("main")).await.unwrap();
    let (mut sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(connect()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut h2_tunnel = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());

    // Silence for three times the listener's idle timeout.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        round_trip(&mut h1_tunnel, b"h1 still open").await,
        b"h1 still open"
    );
    assert_eq!(
        round_trip(&mut h2_tunnel, b"h2 still open").await,
        b"h2 still open"
    );
}

#[tokio::test]
async fn connect_to_a_tls_cluster_wraps_the_tunnel_in_tls() {
    // An upstream that echoes under TLS, with a certificate the cluster must verify.
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let acceptor =
        tokio_rustls::TlsAcceptor::from(pki.server_config(&pki.leaf(&["echo.test"], &[]), &[]));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut buf = [0u8; 1024];
        // One message echoed, in upper case: proof it went through this server.
        let n = tls.read(&mut buf).await.unwrap();
        tls.write_all(&buf[..n].to_ascii_uppercase()).await.unwrap();
        tls.shutdown().await.unwrap();
    });
    let proxy = Proxy::start(&format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
cluster = "secure"

[[clusters]]
name = "secure"
endpoints = ["{upstream}"]
[clusters.tls]
ca = "{}"
server_name = "echo.test"
"#,
        ca.display()
    ))
    .await;
    let mut s = TcpStream::connect(proxy.addr("main")).await.unwrap();
    s.write_all(b"CONNECT echo.test:443 HTTP/1.1\r\nhost: echo.test:443\r\n\r\n")
        .await
        .unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 200"));
    s.write_all(b"plain text in").await.unwrap();
    let back = closed_within(&mut s, Duration::from_secs(5)).await;
    assert_eq!(back, b"PLAIN TEXT IN");
    server.await.unwrap();
}

#[tokio::test]
async fn a_connect_tunnel_counts_against_max_requests_while_it_is_open() {
    let echo = TcpEcho::start().await;
    let dead = ClosedPort::new();
    let config = connect_config(&echo, &dead, "60s")
        .replace("name = \"echo\"\n", "name = \"echo\"\nmax_requests = 1\n");
    assert!(config.contains("max_requests = 1"));
    let proxy = Proxy::start(&config).await;

    let mut open = TcpStream::connect(proxy.addr("main")).await.unwrap();
    open.write_all(b"CONNECT echo.test:443 HTTP/1.1\r\nhost: echo.test:443\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut open).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(round_trip(&mut open, b"ping").await, b"ping");

    // The open tunnel is the cluster's one request in flight.
    let refused = connect_status(&proxy, "echo.test:443").await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert_eq!(echo.accepted(), 1);

    // Closed, it frees its place.
    drop(open);
    let active = "weft_upstream_active_requests{cluster=\"echo\"}";
    proxy.until_metric(active, 0.0).await;
    let again = connect_status(&proxy, "echo.test:443").await;
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
}

#[tokio::test]
async fn tunnels_that_cannot_connect_go_to_another_endpoint() {
    let echo = TcpEcho::start().await;
    let dead = ClosedPort::new();
    let proxy = Proxy::start(&format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
cluster = "echo"
[[listeners]]
name = "tcp"
address = "127.0.0.1:0"
protocol = "tcp"
cluster = "echo"

[[clusters]]
name = "echo"
endpoints = ["{dead}", "{}"]
outlier = {{ consecutive_failures = 0 }}
"#,
        echo.addr
    ))
    .await;
    // Round robin sends every other tunnel to the dead endpoint first; each still
    // reaches the echo.
    for i in 0..4u8 {
        let mut s = TcpStream::connect(proxy.addr("tcp")).await.unwrap();
        assert_eq!(round_trip(&mut s, &[i; 3]).await, [i; 3]);
        let mut s = TcpStream::connect(proxy.addr("main")).await.unwrap();
        s.write_all(b"CONNECT echo.test:443 HTTP/1.1\r\nhost: echo.test:443\r\n\r\n")
            .await
            .unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(round_trip(&mut s, &[i; 5]).await, [i; 5]);
    }
    assert_eq!(echo.accepted(), 8);
    let errors = proxy
        .metric("weft_upstream_connect_errors_total{cluster=\"echo\"}")
        .await;
    let retries = proxy
        .metric("weft_upstream_connect_retries_total{cluster=\"echo\"}")
        .await;
    assert!(errors >= 4.0, "{errors} connect errors");
    assert_eq!(retries, errors);
}

/// A TLS echo server for `config`, until the test's runtime ends.
async fn tls_echo(config: Arc<rustls::ServerConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let (mut r, mut w) = tokio::io::split(tls);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    addr
}

/// A TLS session to `addr` asking for `name`, and the certificate the server showed.
async fn tls_to(
    pki: &Pki,
    addr: SocketAddr,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(pki.client_config(&[])).connect(
            rustls::pki_types::ServerName::try_from(name.to_string()).unwrap(),
            tcp,
        ),
    )
    .await
    .expect("TLS handshake timed out")
}

#[tokio::test]
async fn tcp_listeners_route_tls_passed_through_by_its_server_name() {
    let pki = Pki::new();
    let (leaf_a, leaf_b) = (pki.leaf(&["a.test"], &[]), pki.leaf(&["x.b.test"], &[]));
    let a = tls_echo(pki.server_config(&leaf_a, &[])).await;
    let b = tls_echo(pki.server_config(&leaf_b, &[])).await;
    let plain = TcpEcho::start().await;
    let proxy = Proxy::start(&format!(
        r#"
[[listeners]]
name = "sni"
address = "127.0.0.1:0"
protocol = "tcp"
cluster = "plain"
[[listeners.routes]]
host = "a.test"
cluster = "a"
[[listeners.routes]]
host = "*.b.test"
cluster = "b"

[[listeners]]
name = "strict"
address = "127.0.0.1:0"
protocol = "tcp"
[[listeners.routes]]
host = "a.test"
cluster = "a"

[[clusters]]
name = "a"
endpoints = ["{a}"]
[[clusters]]
name = "b"
endpoints = ["{b}"]
[[clusters]]
name = "plain"
endpoints = ["{}"]
"#,
        plain.addr
    ))
    .await;
    // TLS end to end: the proxy holds no certificate, the client verifies the
    // upstream's, and the bytes come back through it.
    let mut tls = tls_to(&pki, proxy.addr("sni"), "a.test").await.unwrap();
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], leaf_a.der);
    assert_eq!(round_trip(&mut tls, b"to a").await, b"to a");
    let big = pattern(256 * 1024);
    assert_eq!(round_trip(&mut tls, &big).await, big);
    // A wildcard route.
    let mut tls = tls_to(&pki, proxy.addr("sni"), "x.b.test").await.unwrap();
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], leaf_b.der);
    assert_eq!(round_trip(&mut tls, b"to b").await, b"to b");
    // b.test itself is not under *.b.test: the listener's cluster gets the hello
    // (an echo, which no TLS client accepts as an answer).
    assert!(tls_to(&pki, proxy.addr("sni"), "b.test").await.is_err());
    assert_eq!(plain.accepted(), 1);

    // Not TLS at all: the listener's own cluster, with every byte sent.
    let mut s = TcpStream::connect(proxy.addr("sni")).await.unwrap();
    let hello = b"GET / HTTP/1.0\r\nhost: plain\r\n\r\n";
    assert_eq!(round_trip(&mut s, hello).await, hello);
    assert_eq!(plain.accepted(), 2);

    // No route for the name and no cluster of the listener's own: closed.
    assert!(tls_to(&pki, proxy.addr("strict"), "c.test").await.is_err());
    let mut tls = tls_to(&pki, proxy.addr("strict"), "a.test").await.unwrap();
    assert_eq!(round_trip(&mut tls, b"still a").await, b"still a");
}

#[tokio::test]
async fn tcp_listeners_with_tls_route_by_the_server_name_of_the_handshake() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cb) = (
        pki.write(dir.path(), "a", &pki.leaf(&["a.test"], &[])),
        pki.write(dir.path(), "b", &pki.leaf(&["b.test"], &[])),
    );
    let (ea, eb) = (TcpEcho::start().await, TcpEcho::start().await);
    let proxy = Proxy::start(&format!(
        r#"
[[listeners]]
name = "tcp"
address = "127.0.0.1:0"
protocol = "tcp"
[[listeners.routes]]
host = "a.test"
cluster = "a"
[[listeners.routes]]
host = "b.test"
cluster = "b"
[listeners.tls]
certificates = [
  {{ cert = "{}", key = "{}", server_names = ["a.test"] }},
  {{ cert = "{}", key = "{}", server_names = ["b.test"] }},
]

[[clusters]]
name = "a"
endpoints = ["{}"]
[[clusters]]
name = "b"
endpoints = ["{}"]
"#,
        ca.0.display(),
        ca.1.display(),
        cb.0.display(),
        cb.1.display(),
        ea.addr,
        eb.addr
    ))
    .await;
    for (name, n) in [("a.test", 1), ("b.test", 1), ("b.test", 2)] {
        let mut tls = tls_to(&pki, proxy.addr("tcp"), name).await.unwrap();
        assert_eq!(round_trip(&mut tls, name.as_bytes()).await, name.as_bytes());
        let echo = if name == "a.test" { &ea } else { &eb };
        assert_eq!(echo.accepted(), n, "{name}");
    }
}

#[tokio::test]
async fn a_tcp_listeners_connections_count_against_max_requests() {
    let echo = TcpEcho::start().await;
    let proxy = Proxy::start(&format!(
        r#"
[[listeners]]
name = "tcp"
address = "127.0.0.1:0"
protocol = "tcp"
cluster = "echo"

[[clusters]]
name = "echo"
endpoints = ["{}"]
max_requests = 1
"#,
        echo.addr
    ))
    .await;
    let mut first = TcpStream::connect(proxy.addr("tcp")).await.unwrap();
    assert_eq!(round_trip(&mut first, b"one").await, b"one");
    // The second is closed unforwarded while the first is open.
    let mut second = TcpStream::connect(proxy.addr("tcp")).await.unwrap();
    closed_within(&mut second, Duration::from_secs(5)).await;
    assert_eq!(echo.accepted(), 1);
    let overflows = "weft_upstream_overflows_total{cluster=\"echo\"}";
    assert_eq!(proxy.metric(overflows).await, 1.0);
    drop(first);
    let active = "weft_upstream_active_requests{cluster=\"echo\"}";
    proxy.until_metric(active, 0.0).await;
    let mut third = TcpStream::connect(proxy.addr("tcp")).await.unwrap();
    assert_eq!(round_trip(&mut third, b"three").await, b"three");
}

#[tokio::test]
async fn every_tcp_connection_writes_an_access_line_forwarded_or_not() {
    let pki = Pki::new();
    let a = tls_echo(pki.server_config(&pki.leaf(&["a.test"], &[]), &[])).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = crate::ops_support::write_file(
        dir.path(),
        "weft.toml",
        &format!(
            r#"{}
[[listeners]]
name = "tcp"
address = "127.0.0.1:0"
protocol = "tcp"
[[listeners.routes]]
host = "a.test"
cluster = "a"

[[clusters]]
name = "a"
endpoints = ["{a}"]
"#,
            preamble(dir.path())
        ),
    );
    let child = Child::spawn(&["run", "--config", cfg.to_str().unwrap()]).await;
    let addr = child.listener_addr("tcp");
    let access = |needles: &[&str]| {
        child
            .lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("\"weft::access\"") && needles.iter().all(|n| l.contains(n)))
    };
    let mut tls = tls_to(&pki, addr, "a.test").await.unwrap();
    assert_eq!(round_trip(&mut tls, b"four").await, b"four");
    drop(tls);
    assert!(tls_to(&pki, addr, "c.test").await.is_err());
    let logged = eventually(Duration::from_secs(5), async || {
        access(&[
            r#""server_name":"a.test""#,
            r#""cluster":"a""#,
            &format!(r#""upstream":"{a}""#),
            r#""error":"-""#,
        ]) && access(&[
            r#""server_name":"c.test""#,
            r#""cluster":"-""#,
            r#""error":"no route for the server name""#,
        ])
    })
    .await;
    assert!(logged, "{:#?}", child.lines.lock().unwrap());
}
