//! Protections against bad clients: request heads too large or with too many
//! headers (431), request bodies too large (413), slowloris (heads that never finish, silent connections),
//! `max_connections`, idle keep-alive connections, HTTP/2 stream limits, and
//! garbage on the wire. Each limit is counted in `weft_limit_hits_total`.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::*;

fn config(backend: SocketAddr, limits: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
cluster = "c"
[listeners.limits]
{limits}

[[clusters]]
name = "c"
endpoints = ["{backend}"]
"#
    )
}

fn limit_hits(limit: &str) -> String {
    format!("weft_limit_hits_total{{listener=\"main\",limit=\"{limit}\"}}")
}

/// Writes one HTTP/1.1 request and reads its response (head and a
/// `content-length` body); "" if the connection closed first.
async fn exchange(s: &mut TcpStream, request: &[u8]) -> String {
    if s.write_all(request).await.is_err() {
        return String::new();
    }
    read_response(s).await
}

async fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return text;
            }
        }
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&buf).to_string(),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no response in 5s: {:?}", String::from_utf8_lossy(&buf)),
        }
    }
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";

#[tokio::test]
async fn oversized_request_head_is_431() {
    let backend = Backend::start("b1").await;
    let proxy = Proxy::start(&config(backend.addr, "max_header_bytes = \"16KiB\"")).await;
    let head = |size: usize| {
        format!(
            "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
            "a".repeat(size)
        )
    };
    let mut s = TcpStream::connect(proxy.addr("main")).await.unwrap();
    let ok = exchange(&mut s, head(8 * 1024).as_bytes()).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let mut s = TcpStream::connect(proxy.addr("main")).await.unwrap();
    let refused = exchange(&mut s, head(20 * 1024).as_bytes()).await;
    assert!(
        refused.starts_with("HTTP/1.1 431"),
        "{}",
        &refused[..refused.len().min(200)]
    );
    closed_within(&mut s, Duration::from_secs(2)).await;
    assert_eq!(proxy.metric(&limit_hits("header_size")).await, 1.0);

    // HTTP/2 has the same limit on its header list, and its refusals count too.
    let req = Request::get(proxy.url("/"))
        .header("x-big", "a".repeat(20 * 1024))
        .body(empty())
        .unwrap();
    match h2().request(req).await {
        Ok(resp) => assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(e) => panic!("HTTP/2 request with an oversized header failed: {e:?}"),
    }
    assert_eq!(proxy.metric(&limit_hits("header_size")).await, 2.0);
    let req = Request::get(proxy.url("/"))
        .header("x-big", "a".repeat(12 * 1024))
        .body(empty())
        .unwrap();
    let resp = h2()
        .request(req)
        .await
        .expect("HTTP/2 request under the limit");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(backend.hits(), 2);
}

#[tokio::test]
async fn too_many_headers_is_431() {
    let backend = Backend::start("b1").await;
    let proxy = Proxy::start(&config(backend.addr, "max_headers = 10")).await;
    let head = |n: usize| {
        let extra: String = (0..n).map(|i| format!("x-h{i}: v\r\n")).collect();
        format!("GET / HTTP/1.1\r\nhost: x\r\n{extra}\r\n")
    };
    let mut s = TcpStream::connect(proxy.addr("main")).await.unwrap();
    let ok = exchange(&mut s, head(9).as_bytes()).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let mut s = TcpStream::connect(proxy.addr("main")).await.unwrap();
    let refused = exchange(&mut s, head(20).as_bytes()).await;
    assert!(refused.starts_with("HTTP/1.1 431"), "{refused}");
    assert_eq!(proxy.metric(&limit_hits("header_size")).await, 1.0);
    assert_eq!(backend.hits(), 1);
}

#[tokio::test]
async fn request_bodies_past_max_request_body_are_413() {
    let backend = Backend::start("b1").await;
    let proxy = Proxy::start(&config(backend.addr, "max_request_body = \"1KiB\"")).await;
    let url = proxy.url("/hash");
    let post = |body: TestBody| Request::post(&url).body(body).unwrap();
    for (name, client) in [("HTTP/1.1", h1()), ("HTTP/2", h2())] {
        // Declared too long: refused at once, the upstream never asked.
        let hits = backend.hits();
        let (status, _, body) = send(&client, post(full(vec![b'a'; 1025]))).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{name}: {body:?}");
        assert_eq!(backend.hits(), hits, "{name}");
        // Of unknown length (chunked; HTTP/2 without content-length): cut off where it
        // passes the limit, on its way upstream.
        let (status, _, body) =
            send(&client, post(chunks([vec![b'a'; 600], vec![b'b'; 600]]))).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{name}: {body:?}");
        // Up to the limit, declared or not: through whole.
        let (status, _, body) = send(&client, post(full(vec![b'a'; 1024]))).await;
        assert_eq!(status, StatusCode::OK, "{name}");
        assert!(
            String::from_utf8_lossy(&body).contains(" 1024 "),
            "{name}: {body:?}"
        );
        let (status, _, body) =
            send(&client, post(chunks([vec![b'a'; 512], vec![b'b'; 512]]))).await;
        assert_eq!(status, StatusCode::OK, "{name}");
        assert!(
            String::from_utf8_lossy(&body).contains(" 1024 "),
            "{name}: {body:?}"
        );
    }
    assert_eq!(proxy.metric(&limit_hits("body_size")).await, 4.0);
}

#[tokio::test]
async fn connections_past_max_connection_duration_close_gracefully() {
    let backend = Backend::start("b1").await;
    let proxy = Proxy::start(&config(backend.addr, "max_connection_duration = \"300ms\"")).await;
    let addr = proxy.addr("main");
    // HTTP/1.1: a request in flight as the connection comes of age is answered, with
    // `Connection: close`, and the connection closes after it.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let resp = exchange(&mut s, b"GET /sleep/600 HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("connection: close"),
        "{resp}"
    );
    closed_within(&mut s, Duration::from_secs(2)).await;
    // An idle keep-alive connection is closed once it comes of age.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let resp = exchange(&mut s, GET).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let started = Instant::now();
    closed_within(&mut s, Duration::from_secs(2)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "closed too soon"
    );
    // HTTP/2: GOAWAY, after which the client's connection ends.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::get(format!("http://{addr}/"))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let ended = tokio::time::timeout(Duration::from_secs(2), conn).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
    proxy
        .until_metric(&limit_hits("max_connection_duration"), 3.0)
        .await;
}

#[tokio::test]
async fn slow_and_silent_clients_are_disconnected() {
    let backend = Backend::start("b1").await;
    let proxy = Proxy::start(&config(
        backend.addr,
        "header_read_timeout = \"300ms\"\nidle_timeout = \"30s\"",
    ))
    .await;
    let addr = proxy.addr("main");
    let started = Instant::now();
    // Sends part of a head and stops.
    let partial = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ")
            .await
            .unwrap();
        closed_within(&mut s, Duration::from_secs(3)).await;
        started.elapsed()
    });
    // Connects and sends nothing.
    let silent = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        closed_within(&mut s, Duration::from_secs(3)).await;
        started.elapsed()
    });
    // Sends the start of the HTTP/2 preface (the proxy waits for the rest to tell
    // the protocol) and stops.
    let preface = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        closed_within(&mut s, Duration::from_secs(3)).await;
        started.elapsed()
    });
    // Sends a byte of an endless header every 50ms: busy, but never done.
    let dribble = tokio::spawn(async move {
        let s = TcpStream::connect(addr).await.unwrap();
        let (mut r, mut w) = s.into_split();
        let writer = tokio::spawn(async move {
            let _ = w.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-drip: ").await;
            while w.write_all(b"a").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let mut sink = [0u8; 1024];
        let closed = tokio::time::timeout(Duration::from_secs(3), async {
            while matches!(r.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
        writer.abort();
        assert!(closed.is_ok(), "the dribbling client was never cut off");
        started.elapsed()
    });
    for (what, task) in [
        ("partial", partial),
        ("silent", silent),
        ("preface", preface),
        ("dribble", dribble),
    ] {
        let took = task.await.unwrap();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(2),
            "{what}: closed after {took:?}"
        );
    }
    assert_eq!(proxy.metric(&limit_hits("header_read_timeout")).await, 4.0);
    // A normal client is served meanwhile.
    assert_eq!(get(&h1(), &proxy.url("/")).await.0, 200);
}

#[tokio::test]
async fn max_connections_turns_extra_connections_away() {
    let backend = Backend::start("b1").await;
    let proxy = Proxy::start(&config(backend.addr, "max_connections = 2")).await;
    let addr = proxy.addr("main");
    let mut first = TcpStream::connect(addr).await.unwrap();
    let mut second = TcpStream::connect(addr).await.unwrap();
    for s in [&mut first, &mut second] {
        assert!(exchange(s, GET).await.starts_with("HTTP/1.1 200"));
    }
    // The third is accepted by the kernel and closed by the proxy at once.
    let mut third = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let _ = third.write_all(GET).await;
    let got = closed_within(&mut third, Duration::from_secs(2)).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(proxy.metric(&limit_hits("max_connections")).await, 1.0);
    // The first two still work.
    for s in [&mut first, &mut second] {
        assert!(exchange(s, GET).await.starts_with("HTTP/1.1 200"));
    }
    // Once one of them goes, a new connection is let in.
    drop(first);
    let admitted = eventually(Duration::from_secs(3), async || {
        let mut s = TcpStream::connect(addr).await.unwrap();
        exchange(&mut s, GET).await.starts_with("HTTP/1.1 200")
    })
    .await;
    assert!(admitted);
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed() {
    let backend = Backend::start("b1").await;
    let proxy = Proxy::start(&config(
        backend.addr,
        "idle_timeout = \"300ms\"\nheader_read_timeout = \"5s\"",
    ))
    .await;
    let mut s = TcpStream::connect(proxy.addr("main")).await.unwrap();
    assert!(exchange(&mut s, GET).await.starts_with("HTTP/1.1 200"));
    let idle_from = Instant::now();
    closed_within(&mut s, Duration::from_secs(3)).await;
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_millis(250),
        "closed too soon: {idle:?}"
    );
    assert_eq!(proxy.metric(&limit_hits("idle_timeout")).await, 1.0);
    assert_eq!(proxy.metric(&limit_hits("header_read_timeout")).await, 0.0);
}

#[tokio::test]
async fn keep_alive_outlives_the_header_read_timeout() {
    // The header read timeout bounds receiving a request head; between requests
    // the (longer) idle timeout applies.
    let backend = Backend::start("b1").await;
    let proxy = Proxy::start(&config(
        backend.addr,
        "idle_timeout = \"2s\"\nheader_read_timeout = \"200ms\"",
    ))
    .await;
    let mut s = TcpStream::connect(proxy.addr("main")).await.unwrap();
    assert!(exchange(&mut s, GET).await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let again = exchange(&mut s, GET).await;
    assert!(
        again.starts_with("HTTP/1.1 200"),
        "keep-alive connection closed while idle for less than idle_timeout: {again:?}"
    );
    assert_eq!(proxy.metric(&limit_hits("header_read_timeout")).await, 0.0);
    // A head that starts arriving but never ends still gets only the header time.
    let started = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .unwrap();
    closed_within(&mut s, Duration::from_secs(2)).await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(proxy.metric(&limit_hits("header_read_timeout")).await, 1.0);
}

const H2_PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Writes `bytes` in two pieces, split at `at`, with a pause between them.
async fn write_in_two(s: &mut TcpStream, bytes: &[u8], at: usize) {
    s.write_all(&bytes[..at]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(&bytes[at..]).await.unwrap();
}

/// The settings an HTTP/2 server sends first, as (identifier, value) pairs.
async fn server_settings(addr: SocketAddr) -> Vec<(u16, u32)> {
    settings_after_preface_split_at(addr, H2_PREFACE_AND_SETTINGS.len()).await
}

/// The settings an HTTP/2 server sends first, the preface having been written in
/// two pieces split at `at`.
async fn settings_after_preface_split_at(addr: SocketAddr, at: usize) -> Vec<(u16, u32)> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    write_in_two(&mut s, H2_PREFACE_AND_SETTINGS, at).await;
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await.unwrap();
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    assert_eq!(head[3], 0x4, "first frame is SETTINGS");
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    payload
        .chunks_exact(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect()
}

/// The proxy tells HTTP/2 (prior knowledge) from HTTP/1 by the first bytes of a
/// cleartext connection, however the client's writes split them.
#[tokio::test]
async fn protocol_is_told_from_first_bytes_in_pieces() {
    let backend = Backend::start("b1").await;
    let proxy = Proxy::start(&config(backend.addr, "max_concurrent_streams = 7")).await;
    let addr = proxy.addr("main");
    for at in [1, 3, 12, 23] {
        let settings = settings_after_preface_split_at(addr, at).await;
        assert!(settings.contains(&(0x3, 7)), "split at {at}: {settings:?}");
    }
    // HTTP/1 methods that share a first letter (or two) with the preface's PRI.
    for (request, at) in [
        (
            &b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"[..],
            1,
        ),
        (b"PUT / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n", 2),
        (b"PROPFIND / HTTP/1.1\r\nhost: x\r\n\r\n", 2),
        (b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", 1),
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        write_in_two(&mut s, request, at).await;
        let response = read_response(&mut s).await;
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "{:?}: {response:?}",
            String::from_utf8_lossy(request)
        );
    }
}

#[tokio::test]
async fn http2_max_concurrent_streams_is_advertised_and_enforced() {
    const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    let backend = Steered::start("s").await;
    backend.set_delay(Duration::from_millis(200));
    let proxy = Proxy::start(&config(backend.addr, "max_concurrent_streams = 3")).await;
    let settings = server_settings(proxy.addr("main")).await;
    assert!(
        settings.contains(&(MAX_CONCURRENT_STREAMS, 3)),
        "{settings:?}"
    );
    // Once the client has the settings (after a first request), eight requests at
    // once on its connection all succeed, three at a time. (Streams opened before
    // the settings arrive, beyond the limit, are refused: REFUSED_STREAM.)
    let client = h2();
    assert_eq!(get(&client, &proxy.url("/")).await.0, 200);
    let requests = (0..8).map(|_| {
        let (client, url) = (client.clone(), proxy.url("/"));
        tokio::spawn(async move { get(&client, &url).await.0 })
    });
    for status in futures_util::future::join_all(requests).await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(backend.hits(), 9);
    assert_eq!(backend.max_in_flight(), 3);
    // The settings probe and the client's one connection.
    assert_eq!(
        proxy
            .metric("weft_downstream_connections_total{listener=\"main\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn tls_handshake_timeout_is_counted() {
    let backend = Backend::start("b1").await;
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.write(dir.path(), "proxy", &pki.leaf(&["localhost"], &[]));
    let proxy = Proxy::start(&format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
cluster = "c"
limits = {{ tls_handshake_timeout = "300ms" }}
[listeners.tls]
certificates = [{{ cert = "{}", key = "{}" }}]

[[clusters]]
name = "c"
endpoints = ["{}"]
"#,
        cert.display(),
        key.display(),
        backend.addr
    ))
    .await;
    let started = Instant::now();
    let mut s = TcpStream::connect(proxy.addr("main")).await.unwrap();
    closed_within(&mut s, Duration::from_secs(3)).await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(proxy.metric(&limit_hits("tls_handshake")).await, 1.0);
}

/// Malformed and hostile inputs, one connection each.
fn garbage() -> Vec<Vec<u8>> {
    let mut inputs: Vec<Vec<u8>> = [
        &b"\x00\x01\x02\x03garbage\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"\r\n\r\n\r\n",
        b"GET / HTTP/9.9\r\nhost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: x\r\nno colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: x\r\nx-ctl: \x01\x7f\xff\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: x\r\n bad-fold: y\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\nhost: x\r\n\r\n",
        b"GET http://[::1 HTTP/1.1\r\nhost: x\r\n\r\n",
        b"GET http://user@/ HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: \r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: \xff\xfe\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: x\r\nx-forwarded-for: \xff\r\nforwarded: \x80\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close, host, te, content-length, \xff\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: x\r\nte: \xff, trailers\r\n\r\n",
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 99999999999999999999999\r\n\r\n",
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\nzz\r\n",
        b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nZZZ\r\nabc\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nshort",
        b"GET / HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
        b"GET / HTTP/1.0\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n",
        b"CONNECT nowhere HTTP/1.1\r\n\r\n",
        b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nhost: 127.0.0.1:1\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nhost: x\r\n\r\n",
        b"BREW /pot HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 1\r\n\r\n",
        // TLS ClientHello on the clear-text port.
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\x00\x01\x02\x03",
        // HTTP/2: garbage after the preface, a frame claiming 16 MiB, bad HPACK,
        // a frame on stream 0 that must not be there, a truncated preface.
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xde\xad\xbe\xef\xde\xad\xbe\xef\xde\xad",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00\xff\xff\xff\x00\x00\x00\x00\x00\x01",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x04\x01\x05\x00\x00\x00\x01\xff\xff\xff\xff",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00",
        b"PRI * HTTP/2.0\r\n\r\nSM",
    ]
    .iter()
    .map(|b| b.to_vec())
    .collect();
    inputs.push(format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70_000)).into_bytes());
    inputs.push(b"GET / HTTP/1.1\r\n".repeat(500));
    // Random bytes, from a fixed seed so a failure can be replayed.
    let mut rng = fastrand::Rng::with_seed(0x7765_6674);
    for _ in 0..40 {
        let len = rng.usize(1..2048);
        inputs.push((0..len).map(|_| rng.u8(..)).collect());
    }
    // Random bytes after a valid request line.
    for _ in 0..20 {
        let mut b = b"GET / HTTP/1.1\r\n".to_vec();
        b.extend((0..rng.usize(1..512)).map(|_| rng.u8(..)));
        inputs.push(b);
    }
    inputs
}

#[tokio::test]
async fn garbage_never_breaks_the_proxy() {
    let backend = Backend::start("b1").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("weft.toml");
    // Short timeouts, so that inputs the proxy waits on (a body that never comes,
    // a connection left open, a CONNECT tunnel to the cluster) end soon.
    let limits = "header_read_timeout = \"500ms\"\nidle_timeout = \"500ms\"";
    let text = config(backend.addr, limits) + "request_timeout = \"1s\"\nidle_timeout = \"1s\"\n";
    std::fs::write(&cfg, format!("{}{text}", preamble(dir.path()))).unwrap();
    // The binary, so that a panic anywhere shows on its stderr.
    let mut child = Child::spawn(&["run", "--config", cfg.to_str().unwrap()]).await;
    let addr = child.listener_addr("main");
    let inputs = garbage();
    let runs = inputs.into_iter().map(|input| async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(&input).await;
        let mut sink = [0u8; 4096];
        // Whatever the answer, the connection must end (or at least not hang the proxy).
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    });
    futures_util::future::join_all(runs).await;

    let url = format!("http://{addr}/");
    let (status, _, body) = get(&h1(), &url).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello from b1"[..]));
    assert_eq!(get(&h2(), &url).await.0, 200);
    assert!(
        child.child.try_wait().unwrap().is_none(),
        "the proxy exited"
    );
    let lines = child.lines.lock().unwrap().clone();
    assert!(
        !lines.iter().any(|l| l.contains("panicked")),
        "{}",
        lines.join("\n")
    );
}
