//! Upstream failures and their statuses: connect timeout (504), request timeout
//! (504, the route's overriding the cluster's), a response body that stalls (cut
//! off), a refused connection (502). Each is counted in the upstream metrics.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::support::*;

/// An address where TCP connects hang: a listener with a backlog of 0 that never
/// accepts, whose queue is already full, so the kernel drops further SYNs.
struct BlackHole {
    addr: std::net::SocketAddr,
    _listener: TcpListener,
    _queued: Vec<TcpStream>,
}

impl BlackHole {
    async fn start() -> BlackHole {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        for _ in 0..8 {
            match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => queued.push(s),
                Ok(Err(e)) => panic!("connect to the black hole failed: {e}"),
                // The queue is full: connects hang from now on.
                Err(_) => {
                    return BlackHole {
                        addr,
                        _listener: listener,
                        _queued: queued,
                    }
                }
            }
        }
        panic!("cannot fill the accept queue of a listener with backlog 0 here");
    }
}

fn one_cluster(endpoint: impl std::fmt::Display, cluster_extra: &str) -> String {
    main_to_cluster(&[endpoint], cluster_extra)
}

const TIMEOUTS: &str = "weft_upstream_timeouts_total{cluster=\"c\"}";
const CONNECT_ERRORS: &str = "weft_upstream_connect_errors_total{cluster=\"c\"}";

#[tokio::test]
async fn connect_timeout_is_504() {
    let hole = BlackHole::start().await;
    let proxy = Proxy::start(&one_cluster(hole.addr, "connect_timeout = \"200ms\"")).await;
    let started = Instant::now();
    let (status, _, body) = get(&h1(), &proxy.url("/")).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body, "upstream connect timeout\n");
    assert!(
        took >= Duration::from_millis(180) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(proxy.metric(TIMEOUTS).await, 1.0);
    assert_eq!(proxy.metric(CONNECT_ERRORS).await, 1.0);
}

#[tokio::test]
async fn request_timeout_is_504_quickly() {
    let backend = Backend::start("b1").await;
    let proxy = Proxy::start(&one_cluster(backend.addr, "request_timeout = \"200ms\"")).await;
    let started = Instant::now();
    let (status, _, body) = get(&h1(), &proxy.url("/sleep/2000")).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body, "upstream timeout\n");
    assert!(
        took >= Duration::from_millis(180) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    assert_eq!(proxy.metric(TIMEOUTS).await, 1.0);
    // A timeout is not a connect error.
    assert_eq!(proxy.metric(CONNECT_ERRORS).await, 0.0);
    // Quick requests are unaffected.
    assert_eq!(get(&h1(), &proxy.url("/sleep/10")).await.0, 200);
}

/// The requests of a connection take turns with one deadline timer (moved to each
/// one's deadline): on one kept-alive connection, each still gets its own deadline,
/// also after an earlier one timed out or passed while the connection was idle.
#[tokio::test]
async fn each_request_on_a_kept_alive_connection_gets_its_own_deadline() {
    let backend = Backend::start("b1").await;
    let proxy = Proxy::start(&one_cluster(backend.addr, "request_timeout = \"300ms\"")).await;
    let tcp = TcpStream::connect(proxy.addr("main")).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(tcp);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let mut call = async |path: &str| {
        let req = Request::get(path)
            .header("host", "weft.test")
            .body(empty())
            .unwrap();
        let started = Instant::now();
        let resp = sender
            .send_request(req)
            .await
            .expect("the connection stays open");
        let status = resp.status();
        resp.into_body().collect().await.unwrap();
        (status, started.elapsed())
    };
    let timed_out = |(status, took): (StatusCode, Duration)| {
        status == StatusCode::GATEWAY_TIMEOUT
            && took >= Duration::from_millis(280)
            && took < Duration::from_millis(1500)
    };
    assert_eq!(call("/sleep/10").await.0, StatusCode::OK);
    // Its deadline is 300 ms from its own start, not from the first request's.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(call("/sleep/200").await.0, StatusCode::OK);
    let slow = call("/sleep/2000").await;
    assert!(timed_out(slow), "{slow:?}");
    // After a timeout, and after a deadline that passed while the connection was idle.
    assert_eq!(call("/sleep/200").await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(call("/sleep/200").await.0, StatusCode::OK);
    let slow = call("/sleep/2000").await;
    assert!(timed_out(slow), "{slow:?}");
    assert_eq!(proxy.metric(TIMEOUTS).await, 2.0);
}

#[tokio::test]
async fn route_timeout_overrides_the_clusters() {
    let backend = Backend::start("b1").await;
    let proxy = Proxy::start(&format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
cluster = "c"
[[listeners.routes]]
host = "patient.test"
timeout = "3s"
[[listeners.routes]]
host = "hasty.test"
timeout = "100ms"
[[listeners.routes]]
host = "forever.test"
timeout = "0s"

[[clusters]]
name = "c"
endpoints = ["{}"]
request_timeout = "300ms"
"#,
        backend.addr
    ))
    .await;
    let client = h1();
    let status = async |host: &str, path: &str| {
        let mut req = Request::get(proxy.url(path));
        if !host.is_empty() {
            req = req.header("host", host);
        }
        send(&client, req.body(empty()).unwrap()).await.0
    };
    // The cluster's 300ms.
    assert_eq!(status("", "/sleep/600").await, 504);
    assert_eq!(status("", "/sleep/100").await, 200);
    // Longer on one route, shorter on another, none on a third.
    assert_eq!(status("patient.test", "/sleep/600").await, 200);
    assert_eq!(status("hasty.test", "/sleep/200").await, 504);
    assert_eq!(status("forever.test", "/sleep/600").await, 200);
    assert_eq!(proxy.metric(TIMEOUTS).await, 2.0);
}

/// Reads a response body to its end or its first error.
async fn drain(body: hyper::body::Incoming) -> (Vec<Bytes>, Option<String>) {
    let mut body = body;
    let mut data = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => data.extend(f.into_data().ok()),
            Err(e) => return (data, Some(e.to_string())),
        }
    }
    (data, None)
}

#[tokio::test]
async fn stalled_response_body_is_cut_off_by_the_idle_timeout() {
    let backend = Steered::start("s").await;
    let proxy = Proxy::start(&one_cluster(
        backend.addr,
        "idle_timeout = \"200ms\"\nrequest_timeout = \"30s\"",
    ))
    .await;
    // A body that stalls after its first chunk, and one that never sends any.
    for (n, path) in [(1, "/stall/1"), (2, "/stall/0")] {
        let started = Instant::now();
        let resp = h1()
            .request(Request::get(proxy.url(path)).body(empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let (data, error) = tokio::time::timeout(Duration::from_secs(5), drain(resp.into_body()))
            .await
            .unwrap_or_else(|_| panic!("{path}: the stalled body was never cut off"));
        let took = started.elapsed();
        assert!(error.is_some(), "{path}: the body must end in an error");
        assert_eq!(data.concat(), if n == 1 { &b"chunk0;"[..] } else { b"" });
        assert!(
            took >= Duration::from_millis(180) && took < Duration::from_secs(2),
            "{path}: {took:?}"
        );
        assert_eq!(proxy.metric(TIMEOUTS).await, n as f64);
    }
}

#[tokio::test]
async fn request_timeout_covers_a_streaming_body() {
    let backend = Steered::start("s").await;
    let proxy = Proxy::start(&one_cluster(
        backend.addr,
        "idle_timeout = \"0s\"\nrequest_timeout = \"300ms\"",
    ))
    .await;
    let started = Instant::now();
    let resp = h1()
        .request(Request::get(proxy.url("/stall/1")).body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (data, error) = tokio::time::timeout(Duration::from_secs(5), drain(resp.into_body()))
        .await
        .expect("the deadline never cut the body off");
    let took = started.elapsed();
    assert!(error.is_some());
    assert_eq!(data.concat(), b"chunk0;");
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(proxy.metric(TIMEOUTS).await, 1.0);
}

#[tokio::test]
async fn refused_connection_is_502() {
    let mut backend = Steered::start("gone").await;
    backend.kill().await;
    let proxy = Proxy::start(&one_cluster(backend.addr, "")).await;
    let (status, _, body) = get(&h1(), &proxy.url("/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body, "upstream connect error\n");
    assert_eq!(proxy.metric(CONNECT_ERRORS).await, 1.0);
    assert_eq!(proxy.metric(TIMEOUTS).await, 0.0);
    assert_eq!(
        proxy
            .metric("weft_requests_total{listener=\"main\",cluster=\"c\",status_class=\"5xx\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_client_breaking_its_request_body_does_not_eject_the_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start("b1").await;
    // Two failures eject, and nothing stops the only endpoint from going.
    let proxy = Proxy::start(&one_cluster(
        backend.addr,
        r#"request_timeout = "300ms"
outlier = { consecutive_failures = 2, base_ejection = "1m", max_ejection = "1m", max_ejected_percent = 100 }"#,
    ))
    .await;
    // Announces 100 bytes of body and sends 5; then waits, or stops sending.
    for half_close in [false, false, true, true] {
        let mut s = TcpStream::connect(proxy.addr("main")).await.unwrap();
        s.write_all(b"POST /hash HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nhello")
            .await
            .unwrap();
        if half_close {
            s.shutdown().await.unwrap();
        }
        let mut head = [0u8; 12];
        let answered = tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut head)).await;
        if !half_close {
            answered.expect("no answer to a stalled upload").unwrap();
            assert_eq!(&head, b"HTTP/1.1 504");
        }
    }
    // The upstream did nothing wrong: it still takes traffic.
    assert_eq!(
        proxy
            .metric("weft_endpoint_ejections_total{cluster=\"c\"}")
            .await,
        0.0
    );
    assert_eq!(get(&h1(), &proxy.url("/")).await.0, 200);
}

#[tokio::test]
async fn a_stalled_upload_is_cut_off_with_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start("b1").await;
    let proxy = Proxy::start(&format!(
        "[[listeners]]\nname = \"main\"\naddress = \"127.0.0.1:0\"\ncluster = \"b\"\n\n[[clusters]]\nname = \"b\"\nendpoints = [\"{}\"]\nidle_timeout = \"300ms\"\n",
        backend.addr
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr("main"))
        .await
        .unwrap();
    // Announce 100 bytes, send 5, then go quiet (/hash answers after the whole body).
    s.write_all(b"POST /hash HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nhello")
        .await
        .unwrap();
    let mut out = Vec::new();
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(
        read.is_ok(),
        "the proxy did not give up on the stalled upload"
    );
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert_eq!(
        proxy
            .metric(r#"weft_limit_hits_total{listener="main",limit="stream_idle_timeout"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn an_upload_to_an_upstream_that_answered_early_is_not_idle() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start("b1").await;
    let proxy = Proxy::start(&one_cluster(backend.addr, "idle_timeout = \"300ms\"")).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr("main"))
        .await
        .unwrap();
    // The upstream sends its head at once and its body only after the upload, which
    // takes five idle timeouts: the response is silent all along, the upload is not.
    s.write_all(
        b"POST /count-later HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 50\r\n\r\n",
    )
    .await
    .unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        s.write_all(b"12345").await.unwrap();
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the response did not end")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // The whole chunked body: the count, then the last chunk.
    assert!(text.ends_with("\r\n8\r\n50 bytes\r\n0\r\n\r\n"), "{text}");
}
