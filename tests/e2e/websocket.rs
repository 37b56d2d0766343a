//! Upgrades: WebSocket between tokio-tungstenite peers through the proxy, and the
//! generic HTTP/1.1 `Upgrade` path with raw bytes after the 101.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Request};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::ops_support::answering_backend;
use crate::support::*;

/// What the WebSocket echo server saw.
#[derive(Default)]
struct Seen {
    /// The handshake request of every connection: path and headers.
    handshakes: Vec<(String, HeaderMap)>,
    /// The close frame of every connection the client closed.
    closes: Vec<Option<CloseFrame>>,
}

/// A WebSocket server on 127.0.0.1:0 that echoes text and binary messages.
struct WsEcho {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    /// TCP connections accepted, handshakes or not.
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WsEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsEcho {
    async fn start() -> WsEcho {
        Self::start_with(None).await
    }

    /// In clear text, or under TLS with `tls`.
    async fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> WsEcho {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (s, a) = (seen.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let (s, tls) = (s.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => echo_ws(tcp, s).await,
                        Some(cfg) => {
                            if let Ok(t) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await {
                                echo_ws(t, s).await
                            }
                        }
                    }
                });
            }
        });
        WsEcho {
            addr,
            seen,
            accepted,
            task,
        }
    }
}

/// One WebSocket connection of `WsEcho`: the handshake, then echoes until closed.
async fn echo_ws<S>(io: S, seen: Arc<Mutex<Seen>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // The callback's signature is tungstenite's, large error type included.
    #[allow(clippy::result_large_err)]
    let record = |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
        seen.lock()
            .unwrap()
            .handshakes
            .push((req.uri().path().to_string(), req.headers().clone()));
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(io, record).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        let sent = match msg {
            Message::Text(_) | Message::Binary(_) => ws.send(msg).await,
            // tungstenite answers the close itself on the next read.
            Message::Close(frame) => {
                seen.lock().unwrap().closes.push(frame);
                Ok(())
            }
            _ => Ok(()),
        };
        if sent.is_err() {
            return;
        }
    }
}

fn config(upstream: SocketAddr, cluster_idle: &str) -> String {
    config_with_listener_idle(upstream, cluster_idle, "300s")
}

fn config_with_listener_idle(upstream: SocketAddr, cluster_idle: &str, idle: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
cluster = "ws"
[listeners.limits]
idle_timeout = "{idle}"

[[clusters]]
name = "ws"
endpoints = ["{upstream}"]
idle_timeout = "{cluster_idle}"
"#
    )
}

#[tokio::test]
async fn websocket_messages_are_echoed_through_the_proxy() {
    let server = WsEcho::start().await;
    let proxy = Proxy::start(&config(server.addr, "60s")).await;
    let (mut ws, resp) =
        tokio_tungstenite::connect_async(format!("ws://{}/chat?room=1", proxy.addr("main")))
            .await
            .expect("WebSocket handshake through the proxy");
    assert_eq!(resp.status(), 101);
    assert!(resp.headers()["sec-websocket-accept"].len() > 10);

    // Several messages in flight at once, both kinds, then their echoes in order.
    let big: Vec<u8> = (0..300_000).map(|i| (i % 251) as u8).collect();
    let sent = vec![
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::text("ü and 🦀"),
        Message::binary(big),
    ];
    for m in &sent {
        ws.feed(m.clone()).await.unwrap();
    }
    ws.flush().await.unwrap();
    for want in &sent {
        let got = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("echo timed out")
            .expect("stream ended")
            .unwrap();
        assert_eq!(&got, want);
    }

    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    // The server's answering close comes back, then the stream ends.
    let mut rest = Vec::new();
    while let Some(m) = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("close did not complete")
    {
        match m {
            Ok(m) => rest.push(m),
            Err(e) => panic!("after close: {e}"),
        }
    }
    assert!(
        matches!(rest.as_slice(), [Message::Close(Some(f))] if f.code == CloseCode::Normal),
        "{rest:?}"
    );

    let seen = server.seen.lock().unwrap();
    assert_eq!(seen.handshakes.len(), 1);
    let (path, h) = &seen.handshakes[0];
    assert_eq!(path, "/chat");
    assert!(h["upgrade"]
        .to_str()
        .unwrap()
        .eq_ignore_ascii_case("websocket"));
    assert!(h["connection"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase()
        .contains("upgrade"));
    assert_eq!(h["sec-websocket-version"], "13");
    assert!(h.contains_key("sec-websocket-key"));
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "not through the proxy?");
    assert!(
        matches!(seen.closes.as_slice(), [Some(f)] if f.reason == "bye"),
        "the upstream did not see the client's close"
    );
}

#[tokio::test]
async fn websocket_refused_by_the_upstream_is_an_ordinary_response() {
    // A plain HTTP backend answers the upgrade request without switching protocols.
    let backend = Backend::start("plain").await;
    let proxy = Proxy::start(&config(backend.addr, "60s")).await;
    let err = tokio_tungstenite::connect_async(format!("ws://{}/status/403", proxy.addr("main")))
        .await
        .expect_err("no WebSocket without a 101");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 403),
        e => panic!("unexpected error: {e}"),
    }
}

/// A raw HTTP/1.1 request for the backend's raw echo upgrade.
const ECHO_UPGRADE: &[u8] =
    b"GET /upgrade HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: echo\r\n\r\n";

/// Sends `request` on a new raw connection: the connection and the response head.
async fn raw_request(proxy: &Proxy, request: &[u8]) -> (TcpStream, String) {
    let mut s = TcpStream::connect(proxy.addr("main")).await.unwrap();
    s.write_all(request).await.unwrap();
    let head = response_head(&mut s).await;
    (s, head)
}

/// Sends an `Upgrade: echo` request on a raw connection and checks the 101.
async fn upgrade_echo(proxy: &Proxy) -> TcpStream {
    let (s, head) = raw_request(proxy, ECHO_UPGRADE).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    s
}

async fn echo_once(s: &mut TcpStream, data: &[u8]) {
    s.write_all(data).await.unwrap();
    let mut back = vec![0u8; data.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .expect("echo timed out")
        .unwrap();
    assert_eq!(back, data);
}

#[tokio::test]
async fn generic_upgrade_carries_raw_bytes_both_ways() {
    let backend = Backend::start_with("b1", Proto::Http1, None).await;
    let proxy = Proxy::start(&config(backend.addr, "60s")).await;
    let mut s = upgrade_echo(&proxy).await;
    echo_once(&mut s, b"not http at all \x00\x01\x02").await;
    echo_once(&mut s, &[7u8; 100_000]).await;
    // The client's end of stream reaches the upstream, whose close comes back.
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("the tunnel did not close");
    assert!(matches!(n, Ok(0)), "{n:?} {rest:?}");
}

#[tokio::test]
async fn upgraded_connection_closes_after_the_cluster_idle_timeout() {
    let backend = Backend::start_with("b1", Proto::Http1, None).await;
    let proxy = Proxy::start(&config(backend.addr, "500ms")).await;
    let mut s = upgrade_echo(&proxy).await;
    // Activity every 100ms keeps it open for twice the timeout...
    let busy_from = Instant::now();
    for i in 0..10u8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        echo_once(&mut s, &[i]).await;
    }
    assert!(busy_from.elapsed() >= Duration::from_millis(1000));
    // ...silence closes it.
    let idle_from = Instant::now();
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("still open after 5s of silence");
    assert!(rest.is_empty(), "{r:?} {rest:?}");
    let idled = idle_from.elapsed();
    assert!(
        idled >= Duration::from_millis(450),
        "closed after {idled:?}"
    );
}

/// A proxy whose listener sends `/plain...` to `plain` and the rest to `ws`.
async fn ws_and_plain(ws: SocketAddr, plain: SocketAddr) -> Proxy {
    // A body limit well under what the tests' WebSockets carry: a tunnel is no body.
    Proxy::start(&format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
cluster = "ws"
limits = {{ max_request_body = "64KiB" }}
[[listeners.routes]]
path_prefix = "/plain"
cluster = "plain"

[[clusters]]
name = "ws"
endpoints = ["{ws}"]
[[clusters]]
name = "plain"
endpoints = ["{plain}"]
"#
    ))
    .await
}

/// An HTTP/2 connection to `addr` that has seen the proxy's SETTINGS (extended
/// CONNECT may only be sent once the server has offered it).
async fn h2_session(addr: SocketAddr) -> http2::SendRequest<TestBody> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let ok = sender
        .send_request(
            Request::get(format!("http://{addr}/plain"))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    sender
}

/// An extended CONNECT (RFC 8441) for `uri` speaking `protocol`.
fn extended_connect(uri: &str, protocol: &'static str) -> Request<TestBody> {
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(uri)
        .header("sec-websocket-version", "13")
        .header("sec-websocket-protocol", "chat")
        .body(empty())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static(protocol));
    req
}

/// The client side of a WebSocket on the stream an extended CONNECT opened.
async fn websocket_on(
    resp: http::Response<hyper::body::Incoming>,
) -> tokio_tungstenite::WebSocketStream<TokioIo<hyper::upgrade::Upgraded>> {
    let upgraded = hyper::upgrade::on(resp).await.unwrap();
    tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await
}

/// A TLS connection to `addr` for `ws.test`, offering `alpn`.
async fn tls_to(
    pki: &Pki,
    addr: SocketAddr,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(pki.client_config(alpn))
        .connect(
            rustls::pki_types::ServerName::try_from("ws.test").unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn websocket_over_http2_reaches_an_http1_upstream() {
    // RFC 8441 puts a WebSocket on an HTTP/2 stream with an extended CONNECT. The
    // upstream speaks WebSocket over HTTP/1.1 and expects its handshake first: the
    // proxy makes it, checks the answer, and gives the client its 200.
    let server = WsEcho::start().await;
    let plain = Backend::start("plain").await;
    let proxy = ws_and_plain(server.addr, plain.addr).await;
    let addr = proxy.addr("main");
    let mut sender = h2_session(addr).await;

    let resp = sender
        .send_request(extended_connect(
            &format!("http://{addr}/chat?room=1"),
            "websocket",
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for hop in ["sec-websocket-accept", "upgrade", "connection"] {
        assert!(
            resp.headers().get(hop).is_none(),
            "{hop} reached the HTTP/2 client"
        );
    }
    let mut ws = websocket_on(resp).await;
    ws.send(Message::text("over h2")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("over h2"));
    let big = vec![7u8; 200_000];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));

    // The same HTTP/2 connection goes on carrying ordinary requests beside the tunnel.
    let ok = sender
        .send_request(
            Request::get(format!("http://{addr}/plain"))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    let closed = eventually(Duration::from_secs(5), async || {
        !server.seen.lock().unwrap().closes.is_empty()
    })
    .await;
    assert!(closed, "the close frame did not reach the upstream");
    let seen = server.seen.lock().unwrap();
    assert_eq!(
        seen.closes[0].as_ref().map(|f| f.reason.as_str()),
        Some("bye")
    );
    let (path, headers) = &seen.handshakes[0];
    assert_eq!(path, "/chat");
    assert_eq!(headers["upgrade"], "websocket");
    assert_eq!(headers["sec-websocket-protocol"], "chat");
    assert!(headers.contains_key("sec-websocket-key"));
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn websocket_over_http2_refuses_an_upstream_that_skips_the_handshake() {
    // An upstream that switches protocols without answering the WebSocket key is not
    // a WebSocket server: the HTTP/2 client gets 502, not a tunnel to it.
    let plain = Backend::start("plain").await;
    let proxy = ws_and_plain(plain.addr, plain.addr).await;
    let addr = proxy.addr("main");
    let mut sender = h2_session(addr).await;
    // `/upgrade` is the backend's raw echo, which answers any upgrade with 101.
    let resp = sender
        .send_request(extended_connect(
            &format!("http://{addr}/upgrade"),
            "websocket",
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);

    // Any other protocol has no handshake to check: the raw echo carries its bytes.
    let resp = sender
        .send_request(extended_connect(&format!("http://{addr}/upgrade"), "echo"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    io.write_all(b"ping over a stream").await.unwrap();
    let mut back = [0u8; 18];
    io.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping over a stream");
}

#[tokio::test]
async fn websocket_outlives_the_listener_idle_timeout() {
    // The listener's idle timeout is for HTTP connections between requests; once
    // upgraded, only the cluster's idle timeout (60s here) applies.
    let server = WsEcho::start().await;
    let proxy = Proxy::start(&config_with_listener_idle(server.addr, "60s", "200ms")).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/", proxy.addr("main")))
        .await
        .unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));
    // Silence for three times the listener's idle timeout.
    tokio::time::sleep(Duration::from_millis(600)).await;
    ws.send(Message::text("after")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("no echo");
    assert!(
        matches!(&echoed, Some(Ok(m)) if *m == Message::text("after")),
        "{echoed:?}"
    );
}

/// A TLS listener (certificate for `ws.test`) in front of a TLS WebSocket upstream
/// (`backend.test`) that prefers h2.
async fn tls_websocket_proxy(pki: &Pki, dir: &std::path::Path) -> (Proxy, WsEcho) {
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let edge = pki.leaf(&["ws.test"], &[]);
    let (cert, key) = pki.write(dir, "edge", &edge);
    // The upstream prefers h2: only an HTTP/1.1-only ALPN offer from the proxy
    // gets a connection a WebSocket handshake can use.
    let upstream = pki.leaf(&["backend.test"], &[]);
    let server =
        WsEcho::start_with(Some(pki.server_config(&upstream, &[b"h2", b"http/1.1"]))).await;
    let proxy = Proxy::start(&format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
cluster = "ws"
[listeners.tls]
certificates = [{{ cert = "{}", key = "{}" }}]

[[clusters]]
name = "ws"
endpoints = ["{}"]
[clusters.tls]
ca = "{}"
server_name = "backend.test"
"#,
        cert.display(),
        key.display(),
        server.addr,
        ca.display()
    ))
    .await;
    (proxy, server)
}

#[tokio::test]
async fn websocket_over_http2_and_tls_as_browsers_open_it() {
    // A browser's wss:// on an HTTP/2 connection: ALPN h2, then an extended CONNECT.
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (proxy, server) = tls_websocket_proxy(&pki, dir.path()).await;
    let tls = tls_to(&pki, proxy.addr("main"), &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    // Any answer will do: it means the proxy's SETTINGS, which offer extended
    // CONNECT, have arrived.
    let _ = sender
        .send_request(Request::get("https://ws.test/").body(empty()).unwrap())
        .await;
    let resp = sender
        .send_request(extended_connect("https://ws.test/secure-h2", "websocket"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut ws = websocket_on(resp).await;
    ws.send(Message::text("wss over h2")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("wss over h2")
    );
    ws.close(None).await.unwrap();
    let seen = server.seen.lock().unwrap();
    let (path, h) = seen.handshakes.last().unwrap();
    assert_eq!(path, "/secure-h2");
    assert_eq!(h["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn secure_websocket_through_a_tls_listener_to_a_tls_upstream() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (proxy, server) = tls_websocket_proxy(&pki, dir.path()).await;
    let tls = tls_to(&pki, proxy.addr("main"), &[b"http/1.1"]).await;
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://ws.test/secure", tls)
        .await
        .expect("WebSocket handshake over TLS through the proxy");
    assert_eq!(resp.status(), 101);
    ws.send(Message::binary(vec![42u8; 70_000])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![42u8; 70_000])
    );
    ws.close(None).await.unwrap();
    let seen = server.seen.lock().unwrap();
    assert_eq!(seen.handshakes.len(), 1);
    let (path, h) = &seen.handshakes[0];
    assert_eq!(path, "/secure");
    assert_eq!(h["x-forwarded-proto"], "https");
}

/// A proxy whose listener sends everything to `upstream` over HTTP/2 only (h2c);
/// `more` is added to the cluster's table.
async fn http2_only(upstream: SocketAddr, more: &str) -> Proxy {
    Proxy::start(&format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
cluster = "h2"

[[clusters]]
name = "h2"
endpoints = ["{upstream}"]
protocol = "http2"
{more}
"#
    ))
    .await
}

/// Reads an HTTP/1.1 response head off `s`, in lower case.
async fn response_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
            .await
            .expect("no response head")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap().to_ascii_lowercase()
}

#[tokio::test]
async fn an_upgrade_reaches_an_http2_only_upstream_as_an_extended_connect() {
    let backend = Backend::start_with("h2", Proto::Http2, None).await;
    let proxy = http2_only(backend.addr, "").await;

    // An HTTP/1.1 client's upgrade: the upstream gets an extended CONNECT, the client
    // the 101 its handshake expects, then the bytes flow.
    let (mut s, head) = raw_request(&proxy, ECHO_UPGRADE).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    assert!(head.contains("x-protocol: echo"), "{head}");
    echo_once(&mut s, b"through an HTTP/2 stream").await;
    echo_once(&mut s, &[9u8; 100_000]).await;

    // A WebSocket handshake: the key stays on the client's hop (RFC 8441 has none),
    // and the proxy answers it (the RFC 6455 example key and its accept value).
    let (mut s, head) = raw_request(
        &proxy,
        b"GET /upgrade HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
          sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    assert!(head.contains("x-protocol: websocket"), "{head}");
    assert!(head.contains("x-saw-key: false"), "{head}");
    echo_once(&mut s, b"raw after the handshake").await;

    // An HTTP/2 client's extended CONNECT goes on as one.
    let addr = proxy.addr("main");
    let mut sender = h2_session(addr).await;
    let resp = sender
        .send_request(extended_connect(&format!("http://{addr}/upgrade"), "echo"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-protocol"], "echo");
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    io.write_all(b"h2 on both sides").await.unwrap();
    let mut back = [0u8; 16];
    io.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"h2 on both sides");

    // A request that is no upgrade still goes as one.
    assert_eq!(
        answering_backend(&h1(), &proxy.url("/")).await.as_deref(),
        Ok("h2")
    );
}

#[tokio::test]
async fn an_http2_upstream_without_extended_connect_refuses_upgrades_without_being_ejected() {
    let backend = Backend::start_with("h2", Proto::Http2NoConnect, None).await;
    let proxy = http2_only(
        backend.addr,
        "[clusters.outlier]\nmax_ejected_percent = 100",
    )
    .await;
    // More refusals than the consecutive failures that eject an endpoint (5).
    for _ in 0..7 {
        let (_, head) = raw_request(&proxy, ECHO_UPGRADE).await;
        assert!(head.starts_with("http/1.1 502"), "{head}");
    }
    // A config mismatch, not a failing endpoint: ordinary requests still reach it.
    assert_eq!(
        answering_backend(&h1(), &proxy.url("/")).await.as_deref(),
        Ok("h2")
    );
}

#[tokio::test]
async fn an_upgraded_connection_counts_against_max_requests_while_it_is_open() {
    let backend = Backend::start_with("b1", Proto::Http1, None).await;
    let config =
        config(backend.addr, "60s").replace("name = \"ws\"\n", "name = \"ws\"\nmax_requests = 1\n");
    assert!(config.contains("max_requests = 1"));
    let proxy = Proxy::start(&config).await;
    let mut open = upgrade_echo(&proxy).await;
    echo_once(&mut open, b"ping").await;

    // The tunnel outlived its 101: it is still the cluster's request in flight.
    let (_, refused) = raw_request(&proxy, ECHO_UPGRADE).await;
    assert!(refused.starts_with("http/1.1 503"), "{refused}");

    drop(open);
    let active = "weft_upstream_active_requests{cluster=\"ws\"}";
    proxy.until_metric(active, 0.0).await;
    let mut again = upgrade_echo(&proxy).await;
    echo_once(&mut again, b"pong").await;
}
