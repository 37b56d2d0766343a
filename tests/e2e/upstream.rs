//! Endpoints and their connections: host names among the endpoints (resolved at
//! start and again every `dns_refresh`), the per-endpoint connection limit, pooled
//! connections the upstream closes, and HTTP/1.1 connections reused whatever the
//! response and whichever worker uses them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::*;

/// Reads a request head (the requests of these tests have no body): its bytes, or
/// none at the end of the stream or an error.
async fn read_head(tcp: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let (mut chunk, mut head) = ([0u8; 4096], Vec::new());
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    Some(head)
}

/// A raw upstream on a loopback port that runs `serve` on each connection it accepts,
/// told the connection's number (0 first); how many it accepted, counted.
async fn raw_upstream<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(tokio::net::TcpStream, usize) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve(tcp, count.fetch_add(1, Ordering::SeqCst)));
        }
    });
    (addr, accepted)
}

/// A listener "main" in front of cluster "c" with one endpoint and extra cluster lines.
fn config(endpoint: &str, cluster_extra: &str) -> String {
    main_to_cluster(&[endpoint], cluster_extra)
}

/// The requests of cluster "c" waiting at an endpoint's connection limit.
const PENDING: &str = "weft_upstream_pending_requests{cluster=\"c\"}";

/// Waits until `n` requests wait at the connection limit (fails the test after 5 s,
/// showing the metrics).
async fn until_pending(proxy: &Proxy, n: u32) {
    proxy.until_metric(PENDING, f64::from(n)).await;
}

fn lookups(cluster: &str) -> String {
    format!("weft_dns_lookups_total{{cluster=\"{cluster}\",outcome=\"resolved\"}}")
}

// Which addresses a name resolves to cannot be changed from here (that needs the
// hosts file or a DNS server), so what is shown is that names are used, looked up
// again on time, and that a refresh keeps endpoints whose address did not change.
#[tokio::test]
async fn host_names_are_resolved_again_every_dns_refresh_and_zero_means_once() {
    let backend = Backend::start_with("b1", Proto::Http1, None).await;
    let port = backend.addr.port();
    let once = format!(
        "\n[[clusters]]\nname = \"once\"\nendpoints = [\"localhost:{port}\"]\ndns_refresh = \"0s\"\n"
    );
    let proxy = Proxy::start(&format!(
        "{}{once}",
        config(&format!("localhost:{port}"), "dns_refresh = \"100ms\"")
    ))
    .await;

    let (status, headers, _) = get(&h1(), &proxy.url("/")).await;
    assert_eq!(
        (status, backend_of(&headers).as_str()),
        (StatusCode::OK, "b1")
    );
    let (_, _, clusters) = get(&h1(), &proxy.admin_url("/clusters")).await;
    let clusters: serde_json::Value = serde_json::from_slice(&clusters).unwrap();
    let endpoint = &clusters["clusters"][0]["endpoints"][0];
    assert_eq!(endpoint["host"], "localhost");
    assert_eq!(endpoint["address"], format!("127.0.0.1:{port}"));

    let again = eventually(Duration::from_secs(10), async || {
        proxy.metric(&lookups("c")).await >= 4.0
    })
    .await;
    assert!(
        again,
        "not resolved again: {}",
        proxy.metric(&lookups("c")).await
    );
    // Meanwhile the "0s" cluster was resolved once, when it was built.
    assert_eq!(proxy.metric(&lookups("once")).await, 1.0);
    // Refreshes that find the same address keep the endpoint, with its pool.
    assert_eq!(get(&h1(), &proxy.url("/")).await.0, StatusCode::OK);
    assert_eq!(backend.connections.load(Ordering::Relaxed), 1);
    // IP endpoints are not looked up at all.
    let ip_only = Proxy::start(&config(
        &backend.addr.to_string(),
        "dns_refresh = \"100ms\"",
    ))
    .await;
    assert!(!ip_only.metrics().await.contains("weft_dns_lookups_total{"));
}

#[tokio::test]
async fn max_connections_per_endpoint_turns_requests_away_at_the_limit() {
    let backend = Backend::start_with("b1", Proto::Http1, None).await;
    let proxy = Proxy::start(&config(
        &backend.addr.to_string(),
        "[clusters.pool]\nmax_connections_per_endpoint = 2\nmax_pending_per_endpoint = 0",
    ))
    .await;
    let slow = spawn_gets(&proxy.url("/sleep/2000"), 2);
    assert!(eventually(Duration::from_secs(5), async || backend.hits() == 2).await);

    // Both connections are busy, and no request may wait: further ones are answered 503.
    for _ in 0..3 {
        let (status, _, body) = get(&h1(), &proxy.url("/")).await;
        assert_eq!(
            (status, &body[..]),
            (StatusCode::SERVICE_UNAVAILABLE, &b"connection limit\n"[..])
        );
    }
    assert!(
        slow.iter().all(|s| !s.is_finished()),
        "the limit was not reached while the slow requests were in flight"
    );
    assert_eq!(backend.hits(), 2);
    for s in slow {
        assert_eq!(s.await.unwrap(), StatusCode::OK);
    }

    // Back in the pool, the two connections serve what follows.
    let url = proxy.url("/");
    let served = eventually(Duration::from_secs(5), async || {
        get(&h1(), &url).await.0 == StatusCode::OK
    })
    .await;
    assert!(served, "the connections did not come back to the pool");
    for _ in 0..4 {
        assert_eq!(get(&h1(), &url).await.0, StatusCode::OK);
    }
    assert_eq!(backend.connections.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn at_the_connection_limit_requests_wait_for_a_connection_to_come_free() {
    let backend = Backend::start_with("b1", Proto::Http1, None).await;
    let proxy = Proxy::start(&config(
        &backend.addr.to_string(),
        "[clusters.pool]\nmax_connections_per_endpoint = 1\nmax_pending_per_endpoint = 2",
    ))
    .await;
    let slow = spawn_gets(&proxy.url("/sleep/1000"), 1);
    assert!(eventually(Duration::from_secs(5), async || backend.hits() == 1).await);
    // Two may wait for the one connection...
    let waiting = spawn_gets(&proxy.url("/"), 2);
    until_pending(&proxy, 2).await;
    // ...a third may not: the queue is full, and it is answered at once.
    let (status, _, body) = get(&h1(), &proxy.url("/")).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::SERVICE_UNAVAILABLE, &b"connection limit\n"[..])
    );
    assert!(!slow[0].is_finished(), "the slow request ended too soon");
    // As the connection comes back, each waiting request gets it in turn.
    for w in slow.into_iter().chain(waiting) {
        assert_eq!(w.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(backend.hits(), 3);
    assert_eq!(backend.connections.load(Ordering::Relaxed), 1);
    assert_eq!(proxy.metric(PENDING).await, 0.0);

    // A request waits no longer than the connect timeout.
    let impatient = Proxy::start(&config(
        &backend.addr.to_string(),
        "connect_timeout = \"200ms\"\n[clusters.pool]\nmax_connections_per_endpoint = 1",
    ))
    .await;
    let slow = spawn_gets(&impatient.url("/sleep/3000"), 1);
    assert!(eventually(Duration::from_secs(5), async || backend.hits() == 4).await);
    let (status, _, _) = get(&h1(), &impatient.url("/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!slow[0].is_finished(), "the slow request ended too soon");
}

#[tokio::test]
async fn requests_waiting_at_the_connection_limit_are_served_in_the_order_they_came() {
    let backend = Backend::start_with("b1", Proto::Http1, None).await;
    let proxy = Proxy::start(&config(
        &backend.addr.to_string(),
        "[clusters.pool]\nmax_connections_per_endpoint = 1",
    ))
    .await;
    let slow = spawn_gets(&proxy.url("/sleep/500"), 1);
    assert!(eventually(Duration::from_secs(5), async || backend.hits() == 1).await);
    // Each joins the queue before the next is sent; they finish in turn on the one
    // connection, so the order they finish in is the order they were served in.
    let done = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waiting = Vec::new();
    for i in 0..4 {
        let (url, done) = (proxy.url("/sleep/20"), done.clone());
        waiting.push(tokio::spawn(async move {
            let status = get(&h1(), &url).await.0;
            done.lock().unwrap().push(i);
            status
        }));
        until_pending(&proxy, i + 1).await;
    }
    for w in slow.into_iter().chain(waiting) {
        assert_eq!(w.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(*done.lock().unwrap(), [0, 1, 2, 3]);
    assert_eq!(backend.connections.load(Ordering::Relaxed), 1);
}

/// An HTTP/2 server that reads each request whole, then turns its stream away with
/// REFUSED_STREAM while `refuse` is above zero (counting it down), and otherwise
/// answers with the request's body (or `ok` for none). A request with `x-at-once`
/// is turned away as soon as its head arrives, before its body.
struct RefusingServer {
    addr: SocketAddr,
    refuse: Arc<AtomicUsize>,
    /// Streams turned away, and streams answered.
    refused: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RefusingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Takes one refusal from the count, if any is left.
fn refuse_now(refuse: &AtomicUsize) -> bool {
    refuse
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

impl RefusingServer {
    async fn start() -> RefusingServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (refuse, refused, answered) = (
            Arc::<AtomicUsize>::default(),
            Arc::<AtomicUsize>::default(),
            Arc::<AtomicUsize>::default(),
        );
        let counts = (refuse.clone(), refused.clone(), answered.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let (refuse, refused, answered) = counts.clone();
                conns.spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(tcp).await else {
                        return;
                    };
                    let mut streams = tokio::task::JoinSet::new();
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        let (refuse, refused, answered) =
                            (refuse.clone(), refused.clone(), answered.clone());
                        if req.headers().contains_key("x-at-once") && refuse_now(&refuse) {
                            refused.fetch_add(1, Ordering::SeqCst);
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            continue;
                        }
                        streams.spawn(async move {
                            let mut body = req.into_body();
                            let mut got = Vec::new();
                            while let Some(Ok(chunk)) = body.data().await {
                                let _ = body.flow_control().release_capacity(chunk.len());
                                got.extend_from_slice(&chunk);
                            }
                            if refuse_now(&refuse) {
                                refused.fetch_add(1, Ordering::SeqCst);
                                respond.send_reset(h2::Reason::REFUSED_STREAM);
                                return;
                            }
                            answered.fetch_add(1, Ordering::SeqCst);
                            let answer = if got.is_empty() { b"ok".to_vec() } else { got };
                            let mut send = respond
                                .send_response(http::Response::new(()), false)
                                .unwrap();
                            let _ = send.send_data(answer.into(), true);
                        });
                    }
                });
            }
        });
        RefusingServer {
            addr,
            refuse,
            refused,
            answered,
            task,
        }
    }
}

#[tokio::test]
async fn streams_an_http2_upstream_refuses_go_again_with_their_bodies() {
    let server = RefusingServer::start().await;
    // One failure charged to the endpoint would eject it.
    let proxy = Proxy::start(&main_to_cluster(
        &[server.addr],
        "protocol = \"http2\"\noutlier = { consecutive_failures = 1, max_ejected_percent = 100 }",
    ))
    .await;
    let client = h1();
    let retries = "weft_upstream_connect_retries_total{cluster=\"c\"}";

    // Turned away once, each goes again: a GET, and a POST whose body comes back whole.
    server.refuse.store(1, Ordering::SeqCst);
    let (status, _, body) = get(&client, &proxy.url("/")).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    server.refuse.store(1, Ordering::SeqCst);
    let payload = "a gRPC-sized message ".repeat(100);
    let req = Request::post(proxy.url("/"))
        .body(full(payload.clone()))
        .unwrap();
    let (status, _, body) = send(&client, req).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, payload.as_bytes()));
    assert_eq!(server.refused.load(Ordering::SeqCst), 2);
    assert_eq!(server.answered.load(Ordering::SeqCst), 2);
    assert_eq!(proxy.metric(retries).await, 2.0);

    // Turned away while its body is still on its way: sent again with what was read
    // of it, then the rest as the client sends it.
    server.refuse.store(1, Ordering::SeqCst);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let frames = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .map(|b| Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http_body::Frame::data(b)));
    let req = Request::post(proxy.url("/"))
        .header("x-at-once", "1")
        .body(http_body_util::BodyExt::boxed(
            http_body_util::StreamBody::new(frames),
        ))
        .unwrap();
    let call = tokio::spawn({
        let client = client.clone();
        async move { send(&client, req).await }
    });
    tx.send(Bytes::from_static(b"first, ")).await.unwrap();
    // The upstream has turned the first stream away before the rest is sent.
    while server.refused.load(Ordering::SeqCst) < 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tx.send(Bytes::from_static(b"then the rest")).await.unwrap();
    drop(tx);
    let (status, _, body) = call.await.unwrap();
    assert_eq!(
        (status, &body[..]),
        (StatusCode::OK, &b"first, then the rest"[..])
    );
    assert_eq!(proxy.metric(retries).await, 3.0);

    // A body beyond what is kept to send again: its client hears the refusal.
    server.refuse.store(1, Ordering::SeqCst);
    let big = vec![b'x'; 100 * 1024];
    let (status, _, body) = send(
        &client,
        Request::post(proxy.url("/")).body(full(big)).unwrap(),
    )
    .await;
    assert_eq!(
        (status, &body[..]),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            &b"upstream refused the request\n"[..]
        )
    );

    // Turned away every time: sent `connect_retries` (2) more times, then refused.
    server.refuse.store(10, Ordering::SeqCst);
    let (status, _, _) = get(&client, &proxy.url("/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(server.refuse.load(Ordering::SeqCst), 10 - 3);
    assert_eq!(server.answered.load(Ordering::SeqCst), 3);
    assert_eq!(proxy.metric(retries).await, 5.0);
    // Never the endpoint's fault: it was not ejected.
    server.refuse.store(0, Ordering::SeqCst);
    assert_eq!(get(&client, &proxy.url("/")).await.0, StatusCode::OK);
}

/// An HTTP/1.1 upstream that answers the first request of each connection and closes
/// the connection `linger` later without having said so (no `Connection: close`), as
/// a server whose keep-alive timeout is shorter than the proxy's pool idle time does.
/// Counts the connections it accepts.
async fn closing_upstream(linger: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    raw_upstream(move |mut s, _| async move {
        if read_head(&mut s).await.is_none() {
            return;
        }
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await;
        tokio::time::sleep(linger).await;
    })
    .await
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_replaced_without_failing_a_request() {
    // Closed while idle in the pool, and closed right after its response. (A request
    // written to a connection that closes at that moment is not covered: whether it
    // is sent again depends on whether the close is seen before the request goes.)
    for linger in [Duration::from_millis(50), Duration::ZERO] {
        let (addr, accepted) = closing_upstream(linger).await;
        let proxy = Proxy::start(&config(&addr.to_string(), "")).await;
        for i in 1..=3 {
            let (status, _, body) = get(&h1(), &proxy.url("/")).await;
            assert_eq!(
                (status, &body[..]),
                (StatusCode::OK, &b"ok"[..]),
                "request {i}, upstream closing {linger:?} after a response"
            );
            tokio::time::sleep(linger * 4).await;
        }
        assert_eq!(accepted.load(Ordering::Relaxed), 3, "linger {linger:?}");
    }
}

/// The endpoint's pooled connections as `/clusters` reports them: (open, idle).
async fn pooled(proxy: &Proxy) -> (u64, u64) {
    let (_, _, body) = get(&h1(), &proxy.admin_url("/clusters")).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let ep = &v["clusters"][0]["endpoints"][0];
    (
        ep["open_connections"].as_u64().unwrap(),
        ep["idle_connections"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_let_go_by_the_pool() {
    // The connection's task sees the close and ends (the socket is released); the
    // pool's once-a-second sweep drops its entry.
    let (addr, _) = closing_upstream(Duration::ZERO).await;
    let proxy = Proxy::start(&config(&addr.to_string(), "")).await;
    assert_eq!(get(&h1(), &proxy.url("/")).await.0, StatusCode::OK);
    assert!(
        eventually(Duration::from_secs(5), async || pooled(&proxy).await
            == (0, 0))
        .await,
        "still pooled: {:?}",
        pooled(&proxy).await
    );
}

#[tokio::test]
async fn a_connection_is_reused_after_responses_without_a_body() {
    // HEAD, 204 and 304 responses end with their head: their bodies are never read
    // by the client's side, and the connection must go back to the pool all the same.
    let backend = Backend::start_with("a", Proto::Http1, None).await;
    let proxy = Proxy::start(&config(&backend.addr.to_string(), "")).await;
    for round in 0..3 {
        let head = Request::head(proxy.url("/info")).body(empty()).unwrap();
        assert_eq!(send(&h1(), head).await.0, StatusCode::OK, "round {round}");
        for code in [204, 304] {
            let (status, _, body) = get(&h1(), &proxy.url(&format!("/status/{code}"))).await;
            assert_eq!((status.as_u16(), body.len()), (code, 0), "round {round}");
        }
    }
    assert_eq!(backend.hits.load(Ordering::Relaxed), 9);
    assert_eq!(backend.connections.load(Ordering::Relaxed), 1);
    assert_eq!(pooled(&proxy).await, (1, 1));
}

#[tokio::test]
async fn a_connection_is_not_reused_past_the_idle_timeout_its_server_announced() {
    // A server that closes connections idle for its keep-alive timeout (Node's 5 s)
    // may do so just as a request is written on one, which then fails unanswered: a
    // POST cannot go again. Servers that announce the timeout (`Keep-Alive:
    // timeout=2`) get no request on a connection idle past it, less a margin (1 s).
    let backend = Backend::start_with("a", Proto::Http1, None).await;
    let proxy = Proxy::start(&config(&backend.addr.to_string(), "")).await;
    let connections = || backend.connections.load(Ordering::Relaxed);
    let post = async |announce: Option<&str>| {
        let mut req = Request::post(proxy.url("/echo"));
        if let Some(v) = announce {
            req = req.header("x-reply-keep-alive", v);
        }
        let (status, headers, body) = send(&h1(), req.body(full("payload")).unwrap()).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"payload"[..]));
        assert!(
            !headers.contains_key("keep-alive"),
            "a hop-by-hop field passed"
        );
    };
    post(Some("timeout=2, max=100")).await;
    assert_eq!(connections(), 1);
    // Within the window (2 s less the margin) the connection is reused.
    post(Some("timeout=2")).await;
    assert_eq!(connections(), 1);
    // Past it, a new one is opened (the idle one is let go).
    tokio::time::sleep(Duration::from_millis(1300)).await;
    post(None).await;
    assert_eq!(connections(), 2, "reused past the announced idle timeout");
    // A server that announces nothing has its connection reused up to the pool's
    // own idle_timeout.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    post(None).await;
    assert_eq!(connections(), 2);
    // One that announces no idle time at all is not reused.
    post(Some("timeout=0")).await;
    post(None).await;
    assert_eq!(connections(), 3);
}

#[tokio::test]
async fn a_connection_is_closed_after_carrying_max_requests_per_connection() {
    // Behind a virtual IP that balances connections (a Kubernetes Service), a pooled
    // connection sticks to one replica: recycling it spreads the load again.
    for (proto, protocol) in [(Proto::Http1, "http1"), (Proto::Http2, "http2")] {
        let backend = Backend::start_with("a", proto, None).await;
        let extra = format!(
            "protocol = \"{protocol}\"\n[clusters.pool]\nmax_requests_per_connection = 3\n"
        );
        let proxy = Proxy::start(&config(&backend.addr.to_string(), &extra)).await;
        for i in 0..7 {
            let (status, _, _) = get(&h1(), &proxy.url("/info")).await;
            assert_eq!(status, StatusCode::OK, "{protocol}: request {i}");
        }
        // 3 + 3 + 1: the first two connections closed after their third request.
        assert_eq!(backend.connections.load(Ordering::Relaxed), 3, "{protocol}");
        let closed = eventually(Duration::from_secs(5), async || pooled(&proxy).await.0 == 1).await;
        assert!(
            closed,
            "{protocol}: {:?} open and idle",
            pooled(&proxy).await
        );
    }
}

/// Requests one after the other, each on a client connection of its own (so both
/// workers of a 2-worker proxy serve some), to a cluster allowed one connection.
async fn one_connection_for_two_workers(proto: Proto, protocol: &str) {
    let backend = Backend::start_with("a", proto, None).await;
    let proxy = Proxy::start_on_workers(
        1,
        &config(
            &backend.addr.to_string(),
            &format!(
                "protocol = \"{protocol}\"\n[clusters.pool]\nmax_connections_per_endpoint = 1"
            ),
        ),
    )
    .await;
    for i in 0..40 {
        let (status, _, body) = get(&h1(), &proxy.url("/")).await;
        assert_eq!(status, StatusCode::OK, "request {i}: {body:?}");
    }
    assert_eq!(backend.connections.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_connection_limit_a_worker_borrows_another_workers_idle_connection() {
    // Pools are per worker, but the limit is the endpoint's: a worker that may not
    // open a connection takes one another worker left idle rather than answering 503.
    one_connection_for_two_workers(Proto::Http1, "http1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_both_workers_wait_in_turn_for_one_connection() {
    // Concurrent requests on client connections of their own (so both workers serve
    // some) to a cluster allowed one connection: the ones that find it busy wait, and
    // whichever worker holds it, each is served in turn.
    let backend = Backend::start_with("a", Proto::Http1, None).await;
    let proxy = Proxy::start_on_workers(
        1,
        &config(
            &backend.addr.to_string(),
            "[clusters.pool]\nmax_connections_per_endpoint = 1",
        ),
    )
    .await;
    let requests = spawn_gets(&proxy.url("/sleep/20"), 12);
    for (i, r) in requests.into_iter().enumerate() {
        assert_eq!(r.await.unwrap(), StatusCode::OK, "request {i}");
    }
    assert_eq!(backend.hits(), 12);
    assert_eq!(backend.connections.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_connection_limit_workers_share_one_http2_connection() {
    one_connection_for_two_workers(Proto::Http2, "http2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_reuses_the_upstream_connections_it_opened() {
    // A connection's task runs on the worker that opened it: another worker's requests
    // would cross threads twice each, so every worker keeps its own part of the pool.
    let backend = Backend::start_with("a", Proto::Http1, None).await;
    let proxy = Proxy::start_on_workers(1, &config(&backend.addr.to_string(), "")).await;
    // Each request on a client connection of its own, so both workers serve some.
    for i in 0..100 {
        let (status, _, body) = get(&h1(), &proxy.url(&format!("/bytes/{}", 100_000 + i))).await;
        assert_eq!(
            (status, body.len()),
            (StatusCode::OK, 100_000 + i),
            "request {i}"
        );
    }
    // One connection per worker (the kernel spreads 100 client connections over both
    // workers' sockets), each reused for all of that worker's requests.
    assert_eq!(backend.connections.load(Ordering::Relaxed), 2);
    // The last response's connection goes back to its pool once that exchange ends.
    let idle = async || pooled(&proxy).await == (2, 2);
    assert!(
        eventually(Duration::from_secs(5), idle).await,
        "{:?}",
        pooled(&proxy).await
    );
}

#[tokio::test]
async fn a_response_framed_two_ways_loses_its_length_and_its_connection() {
    // The upstream frames its first response by both Transfer-Encoding and
    // Content-Length, then (as a response splitting attack would have it) sends
    // a second response nobody asked for, and answers what comes next "fine".
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut first = true;
                loop {
                    let Some(head) = read_head(&mut s).await else {
                        return;
                    };
                    if std::mem::take(&mut first) && head.starts_with(b"GET /split ") {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n")
                            .await;
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled")
                            .await;
                    } else {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nfine")
                            .await;
                    }
                }
            });
        }
    });
    let proxy = Proxy::start(&config(&addr.to_string(), "")).await;
    let (status, headers, body) = get(&h1(), &proxy.url("/split")).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b""[..]));
    assert!(!headers.contains_key("content-length"), "{headers:?}");
    // Sent while the smuggled response is still on its way: on the same connection,
    // it would get that response.
    let (status, _, body) = get(&h1(), &proxy.url("/next")).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"fine"[..]));
}

/// An HTTP/2 upstream allowing `streams` concurrent streams per connection (its
/// `SETTINGS_MAX_CONCURRENT_STREAMS`) that holds every request until `release` is
/// set. Counts connections and the requests it holds.
struct GatedH2 {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    held: Arc<AtomicUsize>,
    release: tokio::sync::watch::Sender<bool>,
}

impl GatedH2 {
    async fn start(streams: u32) -> GatedH2 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connections, held) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (release, gate) = tokio::sync::watch::channel(false);
        let (c, h) = (connections.clone(), held.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::Relaxed);
                let (h, gate) = (h.clone(), gate.clone());
                let svc = hyper::service::service_fn(move |_req| {
                    let (h, mut gate) = (h.clone(), gate.clone());
                    async move {
                        h.fetch_add(1, Ordering::Relaxed);
                        let _ = gate.wait_for(|open| *open).await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(full("ok")))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .max_concurrent_streams(streams)
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc),
                );
            }
        });
        GatedH2 {
            addr,
            connections,
            held,
            release,
        }
    }

    fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Waits until `n` requests are held at once (fails the test after 5 s).
    async fn until_held(&self, n: usize) {
        let held = eventually(Duration::from_secs(5), async || self.held() == n).await;
        assert!(held, "{} of {n} requests reached the upstream", self.held());
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

#[tokio::test]
async fn requests_beyond_an_http2_connections_streams_go_on_another_connection() {
    // The upstream allows two streams per connection, and the cluster says so: five
    // requests at once are all at the upstream together, over three connections.
    let upstream = GatedH2::start(2).await;
    let proxy = Proxy::start(&config(
        &upstream.addr.to_string(),
        "protocol = \"http2\"\n[clusters.pool]\nmax_streams_per_connection = 2",
    ))
    .await;
    let requests = spawn_gets(&proxy.url("/"), 5);
    upstream.until_held(5).await;
    assert_eq!(upstream.connections(), 3);
    assert_eq!(pooled(&proxy).await.0, 3, "open connections");
    let (_, _, body) = get(&h1(), &proxy.admin_url("/clusters")).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let ep = &v["clusters"][0]["endpoints"][0];
    assert_eq!(
        (&ep["http2_connections"], &ep["http2_streams"]),
        (&3.into(), &5.into())
    );
    upstream.release.send_replace(true);
    for (i, r) in requests.into_iter().enumerate() {
        assert_eq!(r.await.unwrap(), StatusCode::OK, "request {i}");
    }
    // Streams that ended make room again: later requests reuse the connections.
    for _ in 0..6 {
        assert_eq!(get(&h1(), &proxy.url("/")).await.0, StatusCode::OK);
    }
    let _ = futures_util::future::join_all(spawn_gets(&proxy.url("/"), 4)).await;
    assert_eq!(upstream.connections(), 3);
}

#[tokio::test]
async fn http2_connections_a_burst_opened_close_once_idle() {
    let upstream = GatedH2::start(2).await;
    let proxy = Proxy::start(&config(
        &upstream.addr.to_string(),
        "protocol = \"http2\"\n[clusters.pool]\nmax_streams_per_connection = 2\nidle_timeout = \"1s\"",
    ))
    .await;
    let burst = spawn_gets(&proxy.url("/"), 5);
    upstream.until_held(5).await;
    upstream.release.send_replace(true);
    for r in burst {
        assert_eq!(r.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(upstream.connections(), 3);
    // Steady traffic, one request at a time, keeps the first connection; the others
    // close after a second unused (the sweep runs once a second).
    let opened = upstream.connections();
    let steady = async || {
        assert_eq!(get(&h1(), &proxy.url("/")).await.0, StatusCode::OK);
        pooled(&proxy).await.0 == 1
    };
    assert!(
        eventually(Duration::from_secs(8), steady).await,
        "open: {}",
        pooled(&proxy).await.0
    );
    assert_eq!(
        upstream.connections(),
        opened,
        "the connection in use was replaced"
    );
}

#[tokio::test]
async fn at_the_connection_limit_busy_http2_connections_take_requests_in_turn() {
    // Two connections of two streams: four requests are at the upstream, the fifth
    // waits in the endpoint's queue (bounded, not inside a connection) for a stream
    // to end, and a sixth finds the queue full.
    let upstream = GatedH2::start(2).await;
    let proxy = Proxy::start(&config(
        &upstream.addr.to_string(),
        "protocol = \"http2\"\nconnect_timeout = \"5s\"\n[clusters.pool]\nmax_streams_per_connection = 2\nmax_connections_per_endpoint = 2\nmax_pending_per_endpoint = 1",
    ))
    .await;
    let requests = spawn_gets(&proxy.url("/"), 4);
    upstream.until_held(4).await;
    let waiting = spawn_gets(&proxy.url("/"), 1);
    until_pending(&proxy, 1).await;
    let (status, _, body) = get(&h1(), &proxy.url("/")).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::SERVICE_UNAVAILABLE, &b"connection limit\n"[..])
    );
    assert_eq!(upstream.held(), 4, "a stream past the upstream's limit");
    upstream.release.send_replace(true);
    for (i, r) in requests.into_iter().chain(waiting).enumerate() {
        assert_eq!(r.await.unwrap(), StatusCode::OK, "request {i}");
    }
    assert_eq!(upstream.held(), 5);
    assert_eq!(upstream.connections(), 2);
    assert_eq!(proxy.metric(PENDING).await, 0.0);
}

/// An HTTP/2 upstream that, as servers with a maximum of requests or age per
/// connection do (nginx's `keepalive_requests`, gRPC's `MaxConnectionAge`), shuts each
/// connection down gracefully (GOAWAY) after `per_connection` requests, and answers
/// the requests it has taken after `delay`. Counts connections.
async fn goaway_upstream(per_connection: usize, delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let (taken, enough) = (
                    Arc::new(AtomicUsize::new(0)),
                    Arc::new(tokio::sync::Notify::new()),
                );
                let (t, e) = (taken.clone(), enough.clone());
                let svc = hyper::service::service_fn(move |_req| {
                    if t.fetch_add(1, Ordering::Relaxed) + 1 == per_connection {
                        e.notify_one();
                    }
                    async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(full("ok")))
                    }
                });
                let conn =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc);
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => return,
                    () = enough.notified() => conn.as_mut().graceful_shutdown(),
                }
                let _ = conn.await;
            });
        }
    });
    (addr, connections)
}

#[tokio::test]
async fn requests_racing_an_upstreams_goaway_are_not_lost() {
    let (addr, connections) = goaway_upstream(3, Duration::ZERO).await;
    let proxy = Proxy::start(&config(&addr.to_string(), "protocol = \"http2\"")).await;
    let url = proxy.url("/");
    let mut failed = Vec::new();
    for round in 0..50 {
        let statuses = futures_util::future::join_all(spawn_gets(&url, 16)).await;
        for s in statuses {
            let s = s.unwrap();
            if s != StatusCode::OK {
                failed.push((round, s));
            }
        }
    }
    let n = connections.load(Ordering::Relaxed);
    assert!(
        failed.is_empty(),
        "failed over {n} connections: {} {failed:?}",
        failed.len()
    );
    assert!(n >= 30, "{n} connections");
}

#[tokio::test]
async fn max_requests_caps_a_clusters_requests_in_flight_over_all_its_endpoints() {
    let (b1, b2) = (
        Backend::start_with("b1", Proto::Http1, None).await,
        Backend::start_with("b2", Proto::Http1, None).await,
    );
    let limited =
        |extra: &str| main_to_cluster(&[b1.addr, b2.addr], &format!("max_requests = 3\n{extra}"));
    let proxy = Proxy::start(&limited("")).await;
    const ACTIVE: &str = "weft_upstream_active_requests{cluster=\"c\"}";
    const OVERFLOWS: &str = "weft_upstream_overflows_total{cluster=\"c\"}";
    let slow = spawn_gets(&proxy.url("/sleep/2000"), 3);
    assert!(eventually(Duration::from_secs(5), async || b1.hits() + b2.hits() == 3).await);
    assert!(
        b1.hits() > 0 && b2.hits() > 0,
        "both endpoints should be in use"
    );
    assert_eq!(proxy.metric(ACTIVE).await, 3.0);

    // A fourth is refused at once, though each endpoint could take more.
    for _ in 0..2 {
        let (status, _, body) = get(&h1(), &proxy.url("/")).await;
        assert_eq!(
            (status, &body[..]),
            (StatusCode::SERVICE_UNAVAILABLE, &b"upstream overflow\n"[..])
        );
    }
    assert!(
        slow.iter().all(|s| !s.is_finished()),
        "the slow requests ended too soon"
    );
    assert_eq!(b1.hits() + b2.hits(), 3);
    assert_eq!(proxy.metric(OVERFLOWS).await, 2.0);
    // A reload that rebuilds the cluster keeps counting the old one's requests.
    proxy.write_config(&limited("connect_timeout = \"3s\""));
    let (status, body) = crate::ops_support::reload(&proxy).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        get(&h1(), &proxy.url("/")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(proxy.metric(OVERFLOWS).await, 3.0);

    for s in slow {
        assert_eq!(s.await.unwrap(), StatusCode::OK);
    }
    // Counted until each response ended: all places are free again.
    proxy.until_metric(ACTIVE, 0.0).await;
    for s in spawn_gets(&proxy.url("/"), 3) {
        assert_eq!(s.await.unwrap(), StatusCode::OK);
    }
    // Clusters without the limit have no such gauge.
    let unlimited = Proxy::start(&config(&b1.addr.to_string(), "")).await;
    assert_eq!(get(&h1(), &unlimited.url("/")).await.0, StatusCode::OK);
    assert!(!unlimited
        .metrics()
        .await
        .contains("weft_upstream_active_requests{"));
}

/// An HTTP/2 server that can be restarted the way a zero-downtime deploy restarts
/// one: the new server takes over the listening socket (connections queue in its
/// backlog meanwhile) while the old one's connections shut down gracefully (GOAWAY,
/// then the streams in flight finish).
struct Restartable {
    addr: SocketAddr,
    running: Option<(
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<TcpListener>,
    )>,
    served: Arc<AtomicUsize>,
}

impl Restartable {
    async fn start() -> Restartable {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut r = Restartable {
            addr: listener.local_addr().unwrap(),
            running: None,
            served: Arc::default(),
        };
        r.serve(listener);
        r
    }

    fn serve(&mut self, listener: TcpListener) {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let served = self.served.clone();
        let task = tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    r = listener.accept() => match r { Ok((tcp, _)) => tcp, Err(_) => continue },
                    _ = stopped.changed() => return listener,
                };
                let (served, mut stopped) = (served.clone(), stopped.clone());
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            served.fetch_add(1, Ordering::Relaxed);
                            async move {
                                tokio::time::sleep(Duration::from_millis(2)).await;
                                // A request's body comes back; one without says ok.
                                let body = http_body_util::BodyExt::collect(req.into_body())
                                    .await?
                                    .to_bytes();
                                let answer = if body.is_empty() {
                                    full("ok")
                                } else {
                                    full(body)
                                };
                                Ok::<_, hyper::Error>(http::Response::new(answer))
                            }
                        });
                    // HTTP/1.1 or HTTP/2, as the client speaks.
                    let builder = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(tcp), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = stopped.changed() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
        });
        self.running = Some((stop, task));
    }

    /// Starts a new server on the listening socket (`handover`), or on a new one
    /// bound a moment after the old one closed (connections are refused meanwhile,
    /// and those in the old one's backlog reset); the old server's connections shut
    /// down gracefully.
    async fn restart(&mut self, handover: bool) {
        let (stop, task) = self.running.take().expect("running");
        let _ = stop.send(true);
        let mut listener = task.await.unwrap();
        if !handover {
            drop(listener);
            tokio::time::sleep(Duration::from_millis(5)).await;
            listener = TcpListener::bind(self.addr).await.unwrap();
        }
        self.serve(listener);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restarts_of_http2_upstreams_lose_no_request() {
    rolling_restarts("http2", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restarts_that_close_the_listener_lose_no_request_either() {
    rolling_restarts("http2", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restarts_of_http1_upstreams_resend_idempotent_requests() {
    rolling_restarts("http1", true).await;
}

async fn rolling_restarts(protocol: &str, handover: bool) {
    // Each restart closes the server's connections gracefully (GOAWAY): requests
    // waiting for a closing connection go on another, and so do streams opened just
    // as a GOAWAY was on its way, which the server turns away unprocessed: GETs and
    // POSTs alike, the latter with their bodies. Without a hand-over, connections
    // refused while no one listens, or reset in the closed listener's backlog before
    // the server said a word, go to the other endpoint. (HTTP/1.1 has no GOAWAY: its
    // idle connections are closed.)
    let mut servers = [Restartable::start().await, Restartable::start().await];
    let addrs: Vec<_> = servers.iter().map(|s| s.addr).collect();
    let proxy = Proxy::start(&main_to_cluster(
        &addrs,
        &format!("protocol = \"{protocol}\"\noutlier = {{ consecutive_failures = 0 }}"),
    ))
    .await;
    let url = proxy.url("/");
    let load: Vec<_> = (0..8)
        .map(|c| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = h1();
                let mut failed = Vec::new();
                for i in 0..300 {
                    // Half the clients post a body, which must come back whole.
                    let (want, (status, _, body)) = if c % 2 == 0 {
                        ("ok".to_string(), get(&client, &url).await)
                    } else {
                        let payload = format!("client {c}, request {i}");
                        let req = Request::post(&url).body(full(payload.clone())).unwrap();
                        (payload, send(&client, req).await)
                    };
                    if (status, &body[..]) != (StatusCode::OK, want.as_bytes()) {
                        failed.push((
                            if c % 2 == 0 { "GET" } else { "POST" },
                            status.as_u16(),
                            String::from_utf8_lossy(&body).into_owned(),
                        ));
                    }
                }
                failed
            })
        })
        .collect();
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        servers[i % 2].restart(handover).await;
    }
    let mut failed = Vec::new();
    for l in load {
        failed.extend(l.await.unwrap());
    }
    let served: usize = servers
        .iter()
        .map(|s| s.served.load(Ordering::Relaxed))
        .sum();
    // No request was served twice, and none that failed was served.
    assert_eq!(served + failed.len(), 2400, "{failed:?}");
    if protocol == "http2" {
        assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
        // Requests did wait for connections that closed, and went again.
        let again = proxy
            .metric("weft_upstream_connect_retries_total{cluster=\"c\"}")
            .await;
        assert!(again > 0.0);
    } else {
        // Over HTTP/1.1 a request written as its server closes the idle connection
        // is lost with it; GETs go again (the endpoint's connections are closing:
        // `LastClose`), a POST may not be sent twice.
        assert!(
            failed
                .iter()
                .all(|f| (f.1, f.2.as_str()) == (502, "upstream error\n")),
            "{failed:?}"
        );
        // Except a GET written on the very connection whose close is the first the
        // proxy hears of a restart (no close noted yet, so no copy kept): seen once in
        // a run, in about one run of eight with three suites sharing the 2 cores.
        let gets = failed.iter().filter(|f| f.0 == "GET").count();
        assert!(gets <= 1, "{gets} GETs lost: {failed:?}");
    }
}

/// An HTTP/1.1 upstream that answers the first request of each connection and closes
/// the connection, unanswered, on the second: what a server whose keep-alive timeout
/// fires as a request arrives does.
async fn closes_on_second_request() -> (SocketAddr, Arc<AtomicUsize>) {
    raw_upstream(|mut tcp, _| async move {
        for n in 0..2 {
            if read_head(&mut tcp).await.is_none() {
                return;
            }
            if n == 0 {
                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                if tcp.write_all(ok).await.is_err() {
                    return;
                }
            }
        }
        // Second request: closed unanswered.
    })
    .await
}

#[tokio::test]
async fn a_request_on_a_connection_its_upstream_closed_as_it_arrived_goes_again_if_it_may() {
    let (addr, accepted) = closes_on_second_request().await;
    let proxy = Proxy::start(&main_to_cluster(&[addr], "")).await;
    let client = h1();
    assert_eq!(get(&client, &proxy.url("/")).await.0, StatusCode::OK);
    // Idle long enough for the pooled connection to count as one its upstream may
    // have closed: the GET the upstream drops goes again on a new connection.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, body) = get(&client, &proxy.url("/")).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    assert_eq!(accepted.load(Ordering::Relaxed), 2);
    assert_eq!(
        proxy
            .metric("weft_upstream_connect_retries_total{cluster=\"c\"}")
            .await,
        1.0
    );
    // A POST may not be sent twice: its client hears the failure.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let req = Request::post(proxy.url("/"))
        .header("content-type", "text/plain")
        .body(full("once"))
        .unwrap();
    let (status, _, body) = send(&client, req).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::BAD_GATEWAY, &b"upstream error\n"[..])
    );
    assert_eq!(accepted.load(Ordering::Relaxed), 2);
}

/// A server whose first connection is reset (RST) as soon as its first request's head
/// has arrived, unanswered: what a listener closing with connections in its backlog
/// does to them. Later connections are answered, HTTP/1.1 or HTTP/2 (`ok`).
async fn resets_first_connection(h2: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    raw_upstream(move |mut tcp, n| async move {
        if n == 0 {
            tcp.set_zero_linger().unwrap();
            if h2 {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                // Dropped with the connection once the request is in: reset.
                let _request = conn.accept().await;
            } else {
                read_head(&mut tcp).await;
            }
            return;
        }
        let svc = hyper::service::service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(full("ok")))
        });
        let io = hyper_util::rt::TokioIo::new(tcp);
        if h2 {
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(io, svc)
                .await;
        } else {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        }
    })
    .await
}

#[tokio::test]
async fn a_request_whose_new_connection_is_reset_unanswered_goes_again_if_it_may() {
    for (h2, protocol) in [(false, "http1"), (true, "http2")] {
        // A GET goes again on a new connection.
        let (addr, accepted) = resets_first_connection(h2).await;
        let proxy = Proxy::start(&main_to_cluster(
            &[addr],
            &format!("protocol = \"{protocol}\""),
        ))
        .await;
        let (status, _, body) = get(&h1(), &proxy.url("/")).await;
        assert_eq!(
            (status, &body[..]),
            (StatusCode::OK, &b"ok"[..]),
            "{protocol}"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "{protocol}");
        let retries = "weft_upstream_connect_retries_total{cluster=\"c\"}";
        assert_eq!(proxy.metric(retries).await, 1.0, "{protocol}");

        // A POST may not be sent twice: its client hears the failure.
        let (addr, accepted) = resets_first_connection(h2).await;
        let proxy = Proxy::start(&main_to_cluster(
            &[addr],
            &format!("protocol = \"{protocol}\""),
        ))
        .await;
        let req = Request::post(proxy.url("/")).body(full("once")).unwrap();
        let (status, _, body) = send(&h1(), req).await;
        assert_eq!(
            (status, &body[..]),
            (StatusCode::BAD_GATEWAY, &b"upstream error\n"[..]),
            "{protocol}"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "{protocol}");
    }
}

#[tokio::test]
async fn a_request_on_an_http2_connection_reset_before_the_servers_preface_goes_elsewhere() {
    // Every connection to the first endpoint is reset once the request is in, before
    // the server has sent a byte (its HTTP/2 preface): a closing listener's backlog.
    // Not a request was processed there, so each goes to the other endpoint, POSTs
    // with their bodies too.
    let (resetting, resets) = raw_upstream(|mut tcp, _| async move {
        tcp.set_zero_linger().unwrap();
        // The client's preface and the request's first frames.
        let mut buf = [0u8; 1024];
        let _ = tcp.read(&mut buf).await;
    })
    .await;
    let backend = Backend::start_with("b", Proto::Http2, None).await;
    let proxy = Proxy::start(&main_to_cluster(
        &[resetting, backend.addr],
        "protocol = \"http2\"\noutlier = { consecutive_failures = 0 }",
    ))
    .await;
    let client = h1();
    for i in 0..4 {
        let payload = format!("payload {i}");
        let req = Request::post(proxy.url("/echo"))
            .body(full(payload.clone()))
            .unwrap();
        let (status, headers, body) = send(&client, req).await;
        assert_eq!(
            (status, backend_of(&headers).as_str(), &body[..]),
            (StatusCode::OK, "b", payload.as_bytes()),
            "request {i}"
        );
    }
    assert!(
        resets.load(Ordering::SeqCst) >= 2,
        "round robin tried the first endpoint"
    );
    assert!(
        proxy
            .metric("weft_upstream_connect_retries_total{cluster=\"c\"}")
            .await
            >= 2.0
    );
}
