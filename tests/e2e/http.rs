//! Forwarding: HTTP/1.1 and HTTP/2 on both sides, streaming bodies, trailers,
//! hop-by-hop and forwarding headers, keep-alive and pipelining.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

fn config(backend: &Backend, protocol: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
cluster = "b"

[[clusters]]
name = "b"
endpoints = ["{}"]
protocol = "{protocol}"
"#,
        backend.addr
    )
}

async fn info(client: &TestClient, url: &str) -> serde_json::Value {
    let (status, headers, body) = get(client, url).await;
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(headers["x-backend"], "b1");
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn every_protocol_pair_forwards() {
    // (client, upstream protocol setting, backend speaks, version the backend sees)
    let cases = [
        ("h1", "auto", Proto::Http1, "HTTP/1.1"),
        ("h2", "auto", Proto::Http1, "HTTP/1.1"),
        ("h2", "auto", Proto::Auto, "HTTP/2.0"),
        ("h1", "http2", Proto::Http2, "HTTP/2.0"),
        ("h2", "http2", Proto::Http2, "HTTP/2.0"),
        ("h2", "http1", Proto::Auto, "HTTP/1.1"),
    ];
    for (client, protocol, speaks, seen) in cases {
        let backend = Backend::start_with("b1", speaks, None).await;
        let proxy = Proxy::start(&config(&backend, protocol)).await;
        let c = if client == "h1" { h1() } else { h2() };
        let v = info(&c, &proxy.url("/info?q=1")).await;
        assert_eq!(
            v["version"], seen,
            "client {client}, protocol {protocol}, backend {speaks:?}"
        );
        assert!(v["uri"].as_str().unwrap().ends_with("/info?q=1"), "{v}");
        assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.1");
        assert_eq!(v["headers"]["x-forwarded-proto"], "http");
        let host = v["headers"]
            .get("host")
            .or(v["headers"].get(":authority"))
            .cloned();
        if seen == "HTTP/1.1" {
            assert_eq!(
                host.unwrap(),
                proxy.addr("main").to_string(),
                "the client's authority reaches the upstream"
            );
        }
    }
}

#[tokio::test]
async fn hop_by_hop_headers_stay_on_their_hop() {
    let backend = Backend::start("b1").await;
    let proxy = Proxy::start(&config(&backend, "auto")).await;
    let req = Request::get(proxy.url("/info"))
        .header("connection", "keep-alive, x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("x-public", "ok")
        .header("x-forwarded-for", "203.0.113.9")
        .body(empty())
        .unwrap();
    let (status, _, body) = send(&h1(), req).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let h = &v["headers"];
    assert!(h.get("x-private").is_none(), "{h}");
    assert!(h.get("keep-alive").is_none(), "{h}");
    assert_eq!(h["te"], "trailers");
    assert_eq!(h["x-public"], "ok");
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
}

#[tokio::test]
async fn forwarding_headers_are_configurable() {
    let backend = Backend::start("b1").await;
    let proxy = Proxy::start(&format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
cluster = "b"
[listeners.forwarding]
x_forwarded_for = "replace"
forwarded = "append"
via = "edge"

[[clusters]]
name = "b"
endpoints = ["{}"]
"#,
        backend.addr
    ))
    .await;
    let req = Request::get(proxy.url("/info"))
        .header("x-forwarded-for", "6.6.6.6")
        .body(empty())
        .unwrap();
    let (_, headers, body) = send(&h1(), req).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(v["headers"]["forwarded"], "for=127.0.0.1;proto=http");
    assert_eq!(v["headers"]["via"], "1.1 edge");
    assert_eq!(headers["via"], "1.1 edge");
}

#[tokio::test]
async fn a_cluster_can_name_its_endpoint_as_the_host_and_pass_the_clients_on() {
    let h1_backend = Backend::start("b1").await;
    let h2_backend = Backend::start_with("b2", Proto::Http2, None).await;
    // Listener per forwarding mode, all to the HTTP/1.1 cluster; "h2" to the HTTP/2 one.
    let mut cfg = String::new();
    for (name, mode, cluster) in [
        ("append", "append", "one"),
        ("replace", "replace", "one"),
        ("off", "off", "one"),
        ("h2", "append", "two"),
    ] {
        cfg += &format!(
            "[[listeners]]\nname = \"{name}\"\naddress = \"127.0.0.1:0\"\ncluster = \"{cluster}\"\n\
             [listeners.forwarding]\nx_forwarded_for = \"{mode}\"\n"
        );
    }
    cfg += &format!(
        "[[clusters]]\nname = \"one\"\nendpoints = [\"{}\"]\nhost_header = \"endpoint\"\n\
         [[clusters]]\nname = \"two\"\nendpoints = [\"{}\"]\nprotocol = \"http2\"\nhost_header = \"endpoint\"\n",
        h1_backend.addr, h2_backend.addr
    );
    let proxy = Proxy::start(&cfg).await;
    // What the upstream saw: its Host (HTTP/1.1) or URI (HTTP/2), and X-Forwarded-Host.
    let seen = async |client: &TestClient, listener: &str, forwarded_host: Option<&str>| {
        let mut req = Request::get(format!("http://{}/info", proxy.addr(listener)));
        if listener != "h2" {
            req = req.header("host", "app.example");
        }
        if let Some(h) = forwarded_host {
            req = req.header("x-forwarded-host", h);
        }
        let (status, _, body) = send(client, req.body(empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{body:?}");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let header = |name: &str| v["headers"][name].as_str().map(str::to_string);
        (
            header("host"),
            v["uri"].as_str().unwrap().to_string(),
            header("x-forwarded-host"),
        )
    };
    let endpoint = h1_backend.addr.to_string();

    let (host, _, xfh) = seen(&h1(), "append", None).await;
    assert_eq!(host.as_deref(), Some(endpoint.as_str()));
    assert_eq!(xfh.as_deref(), Some("app.example"));
    // Trusted under append, dropped under replace, untouched under off.
    let (host, _, xfh) = seen(&h1(), "append", Some("first.example")).await;
    assert_eq!(
        (host.as_deref(), xfh.as_deref()),
        (Some(endpoint.as_str()), Some("first.example"))
    );
    let (_, _, xfh) = seen(&h1(), "replace", Some("spoofed.example")).await;
    assert_eq!(xfh.as_deref(), Some("app.example"));
    let (host, _, xfh) = seen(&h1(), "off", None).await;
    assert_eq!((host.as_deref(), xfh), (Some(endpoint.as_str()), None));
    // An HTTP/2 client names its host in :authority (here the proxy's address); an
    // HTTP/2 upstream gets the endpoint's there.
    let (_, uri, xfh) = seen(&h2(), "h2", None).await;
    assert_eq!(uri, format!("http://{}/info", h2_backend.addr));
    assert_eq!(xfh, Some(proxy.addr("h2").to_string()));
}

#[tokio::test]
async fn request_ids_are_added_kept_or_replaced_as_the_listener_says() {
    let backend = Backend::start("b1").await;
    let mut cfg = String::new();
    for mode in ["off", "generate", "replace"] {
        cfg += &format!(
            "[[listeners]]\nname = \"{mode}\"\naddress = \"127.0.0.1:0\"\ncluster = \"b\"\n\
             [listeners.forwarding]\nrequest_id = \"{mode}\"\n"
        );
    }
    cfg += &format!(
        "[[clusters]]\nname = \"b\"\nendpoints = [\"{}\"]\n",
        backend.addr
    );
    let proxy = Proxy::start(&cfg).await;
    // The upstream's view of X-Request-ID, for a client that sent `sent`.
    let seen = async |listener: &str, sent: Option<&str>| {
        let mut req = Request::get(format!("http://{}/info", proxy.addr(listener)));
        if let Some(id) = sent {
            req = req.header("x-request-id", id);
        }
        let (_, _, body) = send(&h1(), req.body(empty()).unwrap()).await;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["headers"]["x-request-id"].as_str().map(str::to_string)
    };
    let is_uuid = |id: &str| {
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        groups == [8, 4, 4, 4, 12]
            && id.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
            && id.as_bytes()[14] == b'4'
    };

    assert_eq!(seen("off", None).await, None);
    assert_eq!(seen("off", Some("abc")).await.as_deref(), Some("abc"));
    // Made when missing, different each time; the client's kept.
    let (a, b) = (
        seen("generate", None).await.unwrap(),
        seen("generate", None).await.unwrap(),
    );
    assert!(is_uuid(&a) && is_uuid(&b) && a != b, "{a} {b}");
    assert_eq!(seen("generate", Some("abc")).await.as_deref(), Some("abc"));
    // At an edge, never the client's.
    let c = seen("replace", Some("abc")).await.unwrap();
    assert!(is_uuid(&c), "{c}");
}

#[tokio::test]
async fn responses_carry_the_request_id_back_when_the_listener_says() {
    let backend = Backend::start("b1").await;
    let mut cfg = String::new();
    for (name, mode, back) in [
        ("generate", "generate", true),
        ("replace", "replace", true),
        ("off", "off", true),
        ("silent", "generate", false),
    ] {
        cfg += &format!(
            "[[listeners]]\nname = \"{name}\"\naddress = \"127.0.0.1:0\"\ncluster = \"b\"\n\
             escaped_slashes = \"reject\"\n\
             [listeners.forwarding]\nrequest_id = \"{mode}\"\nrequest_id_in_response = {back}\n"
        );
    }
    cfg += &format!(
        "[[clusters]]\nname = \"b\"\nendpoints = [\"{}\"]\n",
        backend.addr
    );
    let proxy = Proxy::start(&cfg).await;
    // (the upstream's X-Request-ID, the response's), for a client that sent `sent`.
    let ids = async |listener: &str, path: &str, sent: Option<&str>| {
        let mut req = Request::get(format!("http://{}{path}", proxy.addr(listener)));
        if let Some(id) = sent {
            req = req.header("x-request-id", id);
        }
        let (status, headers, body) = send(&h1(), req.body(empty()).unwrap()).await;
        let upstream = match status {
            StatusCode::OK => {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                v["headers"]["x-request-id"].as_str().map(str::to_string)
            }
            _ => None,
        };
        let back = headers
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_string());
        (upstream, back)
    };

    let (upstream, back) = ids("generate", "/info", None).await;
    assert!(
        upstream.is_some() && upstream == back,
        "{upstream:?} {back:?}"
    );
    let abc = Some("abc".to_string());
    assert_eq!(
        ids("generate", "/info", Some("abc")).await,
        (abc.clone(), abc.clone())
    );
    let (upstream, back) = ids("replace", "/info", Some("abc")).await;
    assert!(upstream != abc && upstream == back, "{upstream:?} {back:?}");
    assert_eq!(ids("off", "/info", None).await, (None, None));
    assert_eq!(
        ids("off", "/info", Some("abc")).await,
        (abc.clone(), abc.clone())
    );
    assert_eq!(
        ids("silent", "/info", Some("abc")).await,
        (abc.clone(), None)
    );
    // Refused before it was forwarded (400, an encoded slash): the response still
    // names the request, by the client's id or a new one.
    let (_, back) = ids("generate", "/a%2Fb", None).await;
    assert_eq!(back.map(|id| id.len()), Some(36));
    assert_eq!(ids("generate", "/a%2Fb", Some("abc")).await.1, abc);
    let (_, back) = ids("replace", "/a%2Fb", Some("abc")).await;
    assert!(back.is_some() && back != abc, "{back:?}");
}

#[tokio::test]
async fn via_names_the_version_each_message_was_received_with() {
    // (client, upstream protocol setting, backend speaks, version the backend sees)
    let cases = [
        ("h1", "http2", Proto::Http2, "HTTP/2.0"),
        ("h2", "http1", Proto::Http1, "HTTP/1.1"),
        ("h2", "auto", Proto::Auto, "HTTP/2.0"),
    ];
    for (client, protocol, speaks, seen) in cases {
        let backend = Backend::start_with("b1", speaks, None).await;
        let proxy = Proxy::start(&format!(
            r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
cluster = "b"
[listeners.forwarding]
via = "edge"

[[clusters]]
name = "b"
endpoints = ["{}"]
protocol = "{protocol}"
"#,
            backend.addr
        ))
        .await;
        let (c, hop) = if client == "h1" {
            (h1(), "1.1 edge")
        } else {
            (h2(), "2 edge")
        };
        let upstream_hop = if seen == "HTTP/2.0" {
            "2 edge"
        } else {
            "1.1 edge"
        };
        let (status, headers, body) = get(&c, &proxy.url("/info")).await;
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let case = format!("client {client}, upstream {seen}");
        assert_eq!(v["version"], seen, "{case}");
        // RFC 9110 §7.6.3: the request as the client sent it, the response as the
        // upstream sent it.
        assert_eq!(v["headers"]["via"], hop, "request, {case}");
        assert_eq!(headers["via"], upstream_hop, "response, {case}");
    }
}

#[tokio::test]
async fn large_bodies_stream_both_ways_with_bounded_memory() {
    const SIZE: usize = 50 * 1024 * 1024;
    let backend = Backend::start("b1").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("weft.toml");
    std::fs::write(
        &cfg,
        format!("{}{}", preamble(dir.path()), config(&backend, "auto")),
    )
    .unwrap();
    let child = Child::spawn(&["run", "--config", cfg.to_str().unwrap()]).await;
    let url = format!("http://{}", child.listener_addr("main"));
    let rss_before = rss_kib(child.pid());
    for client in [h1(), h2()] {
        // Upload: the backend hashes what it receives.
        let req = Request::post(format!("{url}/hash"))
            .body(pattern_body(SIZE))
            .unwrap();
        let (status, _, body) = send(&client, req).await;
        assert_eq!(status, 200);
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            body.starts_with(&format!("{} {SIZE}", pattern_sha256(SIZE))),
            "{body}"
        );
        // Download, hashed as it arrives.
        let resp = client
            .request(
                Request::get(format!("{url}/bytes/{SIZE}"))
                    .body(empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let mut body = resp.into_body();
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut len = 0;
        while let Some(f) = body.frame().await {
            if let Ok(d) = f.unwrap().into_data() {
                len += d.len();
                ctx.update(&d);
            }
        }
        assert_eq!(len, SIZE);
        assert_eq!(hex(ctx.finish().as_ref()), pattern_sha256(SIZE));
    }
    let peak = peak_rss_kib(child.pid());
    // 100 MiB went through each way per client; the proxy must not have held it.
    assert!(
        peak < rss_before + 16 * 1024,
        "peak RSS {peak} KiB (started at {rss_before} KiB)"
    );
}

#[tokio::test]
async fn chunked_upload_and_echo() {
    let backend = Backend::start("b1").await;
    let proxy = Proxy::start(&config(&backend, "auto")).await;
    let body = chunks((0..10).map(|i| format!("chunk{i};")));
    let (status, _, echoed) =
        send(&h1(), Request::post(proxy.url("/echo")).body(body).unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(
        echoed,
        (0..10).map(|i| format!("chunk{i};")).collect::<String>()
    );
}

#[tokio::test]
async fn trailers_pass_through_http2_and_http1() {
    let backend = Backend::start_with("b1", Proto::Http2, None).await;
    let proxy = Proxy::start(&config(&backend, "http2")).await;
    // Response trailers over HTTP/2 end to end.
    let resp = h2()
        .request(Request::get(proxy.url("/trailers")).body(empty()).unwrap())
        .await
        .unwrap();
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), "body");

    // Request trailers from an HTTP/1.1 chunked upload reach an HTTP/2 upstream.
    let mut t = http::HeaderMap::new();
    t.insert("x-upload-trailer", "42".parse().unwrap());
    let frames: Vec<Result<http_body::Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> = vec![
        Ok(http_body::Frame::data(Bytes::from_static(b"abc"))),
        Ok(http_body::Frame::trailers(t)),
    ];
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed();
    // HTTP/1.1 sends only the trailer fields its `Trailer` header announces.
    let req = Request::post(proxy.url("/hash"))
        .header("trailer", "x-upload-trailer")
        .body(body)
        .unwrap();
    let (status, _, out) = send(&h1(), req).await;
    assert_eq!(status, 200);
    assert!(
        String::from_utf8_lossy(&out).contains("x-upload-trailer"),
        "{out:?}"
    );
}

#[tokio::test]
async fn keep_alive_and_pipelining() {
    let backend = Backend::start("b1").await;
    let proxy = Proxy::start(&config(&backend, "auto")).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr("main"))
        .await
        .unwrap();
    // Three requests written at once on one connection.
    let one = |p: &str| format!("GET /{p} HTTP/1.1\r\nhost: x\r\n\r\n");
    s.write_all(format!("{}{}{}", one("a"), one("b"), one("c")).as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while buf
        .windows(b"HTTP/1.1 200".len())
        .filter(|w| w == b"HTTP/1.1 200")
        .count()
        < 3
    {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "connection closed early: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    assert_eq!(text.matches("hello from b1").count(), 3, "{text}");
    // The upstream side reused its connection rather than opening one per request.
    assert!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
            <= 2
    );
}

#[tokio::test]
async fn unknown_route_is_404_and_dead_upstream_is_502() {
    let backend = Backend::start("b1").await;
    let dead = ClosedPort::new();
    let proxy = Proxy::start(&format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
[[listeners.routes]]
path_prefix = "/live"
cluster = "b"
[[listeners.routes]]
path_prefix = "/dead"
cluster = "dead"

[[clusters]]
name = "b"
endpoints = ["{}"]
[[clusters]]
name = "dead"
endpoints = ["{dead}"]
"#,
        backend.addr
    ))
    .await;
    assert_eq!(get(&h1(), &proxy.url("/live")).await.0, 200);
    let (status, _, body) = get(&h1(), &proxy.url("/nowhere")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body:?}");
    let (status, _, body) = get(&h1(), &proxy.url("/dead")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body, "upstream connect error\n");
    assert!(
        proxy
            .metric("weft_upstream_connect_errors_total{cluster=\"dead\"}")
            .await
            >= 1.0
    );
    assert_eq!(
        proxy
            .metric("weft_requests_total{listener=\"main\",cluster=\"dead\",status_class=\"5xx\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn http10_client_gets_http10_response() {
    let backend = Backend::start("b1").await;
    let proxy = Proxy::start(&config(&backend, "auto")).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr("main"))
        .await
        .unwrap();
    s.write_all(b"GET /x HTTP/1.0\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.0 200"), "{out}");
    assert!(out.ends_with("hello from b1"), "{out}");
}

/// Writes `request` on a new connection and reads until the proxy closes it.
async fn raw(proxy: &Proxy, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(proxy.addr("main"))
        .await
        .unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("the proxy did not close the connection")
        .unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn host_is_checked_and_made_to_agree_with_the_target() {
    let backend = Backend::start("b1").await;
    let proxy = Proxy::start(&config(&backend, "auto")).await;
    // Requests an upstream could read as naming another host than the proxy routed by.
    let refused = [
        "GET /info HTTP/1.1\r\nhost: a.example\r\nhost: b.example\r\nconnection: close\r\n\r\n",
        "GET /info HTTP/1.1\r\nconnection: close\r\n\r\n",
        "GET /info HTTP/1.1\r\nhost: a b@c\r\nconnection: close\r\n\r\n",
        "GET /info HTTP/1.1\r\nhost: a.example:x\r\nconnection: close\r\n\r\n",
        "GET http://u@t.example/info HTTP/1.1\r\nhost: t.example\r\nconnection: close\r\n\r\n",
    ];
    let reasons = [
        "more than one Host header",
        "missing Host header",
        "invalid Host header",
        "invalid Host header",
        "invalid authority in the request target",
    ];
    for (request, reason) in refused.into_iter().zip(reasons) {
        let answer = raw(&proxy, request).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 ") && answer.ends_with(&format!("\r\n\r\n{reason}\n")),
            "{request:?} got {answer}"
        );
    }
    assert_eq!(backend.hits(), 0, "a refused request reached the upstream");

    // The absolute form's authority replaces Host (RFC 9112 §3.2.2).
    let answer = raw(
        &proxy,
        "GET http://t.example/info HTTP/1.1\r\nhost: a.example\r\nconnection: close\r\n\r\n",
    )
    .await;
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let info: serde_json::Value = serde_json::from_str(body).expect(&answer);
    assert_eq!(info["headers"]["host"], "t.example", "{answer}");
    assert_eq!(info["uri"], "/info");
    // HTTP/1.0 needs no Host.
    let answer = raw(&proxy, "GET /info HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200 "), "{answer}");

    // HTTP/2: a Host that names another authority than :authority.
    let (status, _, _) = send(
        &h2(),
        Request::get(proxy.url("/info"))
            .header("host", "elsewhere.example")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let agreeing = format!("{}", proxy.addr("main"));
    let (status, _, _) = send(
        &h2(),
        Request::get(proxy.url("/info"))
            .header("host", agreeing)
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_malformed_request_body_is_the_clients_fault() {
    let backend = Backend::start("b1").await;
    let cfg = format!(
        "{}[clusters.outlier]\nconsecutive_failures = 1\n",
        config(&backend, "auto")
    );
    let proxy = Proxy::start(&cfg).await;
    // A chunk size that overflows: the body breaks after the head went upstream.
    for _ in 0..2 {
        let answer = raw(
            &proxy,
            "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF1\r\nx\r\n0\r\n\r\n",
        )
        .await;
        assert!(
            answer.starts_with("HTTP/1.1 400 ") && answer.ends_with("request body error\n"),
            "{answer}"
        );
    }
    // Not charged to the endpoint: one failure would have ejected it.
    let (status, _, body) = get(&h1(), &proxy.url("/")).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello from b1"[..]));
}

#[tokio::test]
async fn requests_are_routed_and_forwarded_by_their_normalized_path() {
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    let cfg = |normalize: bool, merge: bool, escaped: &str| {
        format!(
            "[[listeners]]\nname = \"main\"\naddress = \"127.0.0.1:0\"\ncluster = \"private\"\n\
             normalize_path = {normalize}\nmerge_slashes = {merge}\nescaped_slashes = \"{escaped}\"\n\
             [[listeners.routes]]\npath_prefix = \"/public\"\ncluster = \"public\"\n\
             [[clusters]]\nname = \"private\"\nendpoints = [\"{}\"]\n\
             [[clusters]]\nname = \"public\"\nendpoints = [\"{}\"]\n",
            b1.addr, b2.addr
        )
    };
    // Which backend answered, and the path it saw when that was `/info` (which answers
    // with what it received).
    let ask = async |proxy: &Proxy, path: &str| {
        let (status, headers, body) = get(&h1(), &proxy.url(path)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        let uri = serde_json::from_slice::<serde_json::Value>(&body)
            .map(|v| v["uri"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default();
        (headers["x-backend"].to_str().unwrap().to_string(), uri)
    };
    let proxy = Proxy::start(&cfg(true, false, "keep")).await;
    // A `/public` route cannot be used to reach past it, and encodings do not hide it.
    assert_eq!(
        ask(&proxy, "/public/../info?q=/../x").await,
        ("b1".into(), "/info?q=/../x".into())
    );
    assert_eq!(
        ask(&proxy, "/public/%2e%2E/info").await,
        ("b1".into(), "/info".into())
    );
    assert_eq!(ask(&proxy, "/%70ublic/./x").await.0, "b2");
    // Repeated slashes are empty segments unless the listener merges them.
    assert_eq!(ask(&proxy, "//public/x").await.0, "b1");
    let merging = Proxy::start(&cfg(true, true, "keep")).await;
    assert_eq!(ask(&merging, "//public//x").await.0, "b2");
    assert_eq!(
        ask(&merging, "//info?q=//").await,
        ("b1".into(), "/info?q=//".into())
    );

    // Encoded slashes are not delimiters: kept, the route sees `/public` (and the
    // upstream gets them as they came, for it to read as it will).
    assert_eq!(
        ask(&proxy, "/public%2F..%2Finfo").await,
        ("b2".into(), String::new())
    );
    // Refused, for upstreams that would decode them before resolving the path...
    let rejecting = Proxy::start(&cfg(true, false, "reject")).await;
    let (status, _, body) = get(&h1(), &rejecting.url("/public%2f..%2Finfo")).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::BAD_REQUEST, &b"encoded slash in the path\n"[..])
    );
    assert_eq!(ask(&rejecting, "/public/x?next=%2Fadmin").await.0, "b2");
    // So is a raw backslash, a slash to upstreams that read paths as browsers do.
    let answer = raw(
        &rejecting,
        "GET /public\\..\\info HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.ends_with("backslash in the path\n"),
        "{answer}"
    );
    let answer = raw(
        &proxy,
        "GET /public\\..\\info HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "kept: {answer}");
    // ...or decoded, so that the dot segments they hid are removed before routing.
    let decoding = Proxy::start(&cfg(true, false, "decode")).await;
    assert_eq!(
        ask(&decoding, "/public%2F..%2Finfo").await,
        ("b1".into(), "/info".into())
    );

    // Turned off, the path goes as it came (for upstreams that give dots a meaning).
    let raw_proxy = Proxy::start(&cfg(false, true, "keep")).await;
    assert_eq!(ask(&raw_proxy, "/public/../info").await.0, "b2");
    assert_eq!(ask(&raw_proxy, "/%70ublic/./x").await.0, "b1");
}
