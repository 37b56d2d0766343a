//! The admin endpoints: /live, /ready, /metrics, /config, /clusters, /logging, and
//! what they answer to unknown paths and wrong methods. POST /reload is covered in `reload`.

use std::time::Duration;

use http::header::{ACCEPT, ALLOW, CONTENT_TYPE};
use http::{Request, StatusCode};

use crate::ops_support::*;
use crate::support::*;

#[tokio::test]
async fn live_ready_unknown_path_and_wrong_method() {
    let backend = Backend::start("b1").await;
    let proxy = Proxy::start(&one_cluster(backend.addr)).await;
    let c = h1();
    let (status, _, body) = get(&c, &proxy.admin_url("/live")).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"live\n"[..]));
    let (status, _, body) = get(&c, &proxy.admin_url("/ready")).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ready\n"[..]));

    let (status, _, body) = get(&c, &proxy.admin_url("/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        String::from_utf8_lossy(&body).contains("/metrics"),
        "{body:?}"
    );

    for (method, path, allow) in [
        ("POST", "/live", "GET"),
        ("DELETE", "/metrics", "GET"),
        ("GET", "/reload", "POST"),
    ] {
        let req = Request::builder()
            .method(method)
            .uri(proxy.admin_url(path))
            .body(empty())
            .unwrap();
        let (status, headers, _) = send(&c, req).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        // RFC 9110 15.5.6: a 405 lists the methods the resource supports.
        assert_eq!(
            headers.get(ALLOW).map(|v| v.to_str().unwrap()),
            Some(allow),
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn ready_turns_503_while_draining() {
    let backend = Backend::start("b1").await;
    let proxy = Proxy::start(&one_cluster(backend.addr)).await;
    let slow_url = proxy.url("/sleep/1500");
    let slow = tokio::spawn(async move { get(&h1(), &slow_url).await.0 });
    assert!(eventually(Duration::from_secs(5), async || backend.hits() == 1).await);

    let app = proxy.app.clone();
    let shutdown = tokio::spawn(async move { app.shutdown().await });
    let ready_url = proxy.admin_url("/ready");
    let draining = eventually(Duration::from_secs(5), async || {
        get(&h1(), &ready_url).await.0 == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert!(draining, "/ready did not turn 503 during the drain");
    // Still observable while the slow request is in flight, over a new connection,
    // and /live stays 200: the process is draining, not dead.
    assert!(!slow.is_finished());
    assert_eq!(get(&h1(), &proxy.admin_url("/live")).await.0, 200);

    assert_eq!(slow.await.unwrap(), StatusCode::OK);
    assert!(shutdown.await.unwrap(), "the drain did not finish cleanly");
    let admin = proxy.app.admin_addr().unwrap();
    assert!(
        eventually(Duration::from_secs(5), async || refuses_connections(admin)
            .await)
        .await,
        "the admin endpoint outlived the drain"
    );
}

#[tokio::test]
async fn metrics_pass_promtool_and_count_requests() {
    let backend = Backend::start("b1").await;
    let proxy = Proxy::start(&one_cluster(backend.addr)).await;
    for (path, n) in [("/", 3), ("/status/404", 2), ("/status/503", 1)] {
        for c in [h1(), h2()].iter().cycle().take(n) {
            get(c, &proxy.url(path)).await;
        }
    }

    // Without an Accept header (curl, promtool's users): the Prometheus text format.
    let (status, headers, body) = get(&h1(), &proxy.admin_url("/metrics")).await;
    assert_eq!(status, 200);
    assert_eq!(
        headers[CONTENT_TYPE],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = String::from_utf8(body.to_vec()).unwrap();
    let (ok, said) = promtool_check(&text).await;
    assert!(ok, "promtool check metrics: {said}\n{text}");
    let main_up = "listener=\"main\",cluster=\"up\"";
    for expected in [
        "# TYPE weft_requests_total counter".to_string(),
        format!("weft_requests_total{{{main_up},status_class=\"2xx\"}} 3"),
        format!("weft_requests_total{{{main_up},status_class=\"4xx\"}} 2"),
        format!("weft_requests_total{{{main_up},status_class=\"5xx\"}} 1"),
        "# TYPE weft_request_duration_seconds histogram".to_string(),
        format!("weft_request_duration_seconds_count{{{main_up}}} 6"),
        format!("weft_request_duration_seconds_bucket{{le=\"+Inf\",{main_up}}} 6"),
        "weft_downstream_connections_total{listener=\"main\"}".to_string(),
        "weft_endpoints_healthy{cluster=\"up\"} 1".to_string(),
    ] {
        assert!(text.contains(&expected), "no {expected:?} in\n{text}");
    }

    // A scraper that asks for OpenMetrics gets it.
    let req = Request::get(proxy.admin_url("/metrics"))
        .header(
            ACCEPT,
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .body(empty())
        .unwrap();
    let (status, headers, body) = send(&h1(), req).await;
    assert_eq!(status, 200);
    assert_eq!(
        headers[CONTENT_TYPE],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let om = String::from_utf8(body.to_vec()).unwrap();
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE weft_requests counter"), "{om}");
    assert!(
        om.contains(&format!(
            "weft_requests_total{{{main_up},status_class=\"2xx\"}} 3"
        )),
        "{om}"
    );
}

#[tokio::test]
async fn config_shows_defaults_and_no_key_material() {
    let backend = Backend::start("b1").await;
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.write(dir.path(), "proxy", &pki.leaf(&["localhost"], &[]));
    let proxy = Proxy::start(&format!(
        "{}[[listeners]]\nname = \"tls\"\naddress = \"127.0.0.1:0\"\ncluster = \"up\"\n[listeners.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
        one_cluster(backend.addr),
        cert.display(),
        key.display()
    ))
    .await;
    let (status, headers, body) = get(&h1(), &proxy.admin_url("/config")).await;
    assert_eq!(status, 200);
    assert_eq!(headers[CONTENT_TYPE], "application/json");
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        !text.contains("PRIVATE KEY"),
        "key material in /config: {text}"
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["source"], proxy.config_path.display().to_string());
    assert_eq!(v["generation"], 1);
    let c = &v["config"];
    // Set by the preamble.
    assert_eq!(c["runtime"]["shutdown_timeout"], "5s");
    assert_eq!(c["runtime"]["watch_config"], false);
    // Defaults, filled in, as docs/config.md gives them.
    let cluster = &c["clusters"][0];
    assert_eq!(cluster["name"], "up");
    assert_eq!(cluster["protocol"], "auto");
    assert_eq!(cluster["connect_timeout"], "2s");
    assert_eq!(cluster["request_timeout"], "15s");
    assert_eq!(cluster["idle_timeout"], "5m");
    assert_eq!(cluster["balance"]["policy"], "round_robin");
    assert_eq!(cluster["balance"]["ewma_decay"], "10s");
    assert_eq!(cluster["pool"]["max_idle_per_endpoint"], 128);
    assert_eq!(cluster["outlier"]["consecutive_failures"], 5);
    let listener = &c["listeners"][0];
    assert_eq!(listener["protocol"], "http");
    assert_eq!(listener["limits"]["max_connections"], 10000);
    assert_eq!(listener["limits"]["header_read_timeout"], "10s");
    assert_eq!(listener["forwarding"]["x_forwarded_for"], "append");
    let tls = &c["listeners"][1]["tls"];
    assert_eq!(tls["alpn"], serde_json::json!(["h2", "http/1.1"]));
    assert_eq!(
        tls["certificates"][0]["key"],
        key.display().to_string(),
        "the key's path is shown, not its contents"
    );
    assert_eq!(c["filters"], serde_json::json!([]));

    // A reload shows at once.
    proxy.write_config(&one_cluster(backend.addr));
    assert_eq!(reload(&proxy).await.0, StatusCode::OK);
    let (_, _, body) = get(&h1(), &proxy.admin_url("/config")).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["generation"], 2);
    assert_eq!(v["config"]["listeners"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn clusters_list_endpoints_with_their_state() {
    let live = Backend::start("live").await;
    let sick = Backend::start("sick").await;
    let dead = ClosedPort::new();
    let proxy = Proxy::start(&format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
cluster = "b"

[[clusters]]
name = "b"
endpoints = ["{}", {{ address = "{dead}", weight = 2 }}]
[clusters.outlier]
consecutive_failures = 1
max_ejected_percent = 50

[[clusters]]
name = "checked"
endpoints = ["{}"]
[clusters.health_check]
path = "/status/500"
interval = "50ms"
unhealthy_threshold = 1
"#,
        live.addr, sick.addr
    ))
    .await;
    let clusters = async || -> serde_json::Value {
        let (status, _, body) = get(&h1(), &proxy.admin_url("/clusters")).await;
        assert_eq!(status, 200);
        serde_json::from_slice(&body).unwrap()
    };
    let v = clusters().await;
    assert_eq!(v["clusters"][0]["name"], "b");
    assert_eq!(v["clusters"][0]["policy"], "round_robin");
    assert_eq!(v["clusters"][1]["name"], "checked");
    let b = &v["clusters"][0]["endpoints"];
    assert_eq!(b[0]["address"], live.addr.to_string());
    assert_eq!(b[0]["host"], "127.0.0.1");
    assert_eq!(b[0]["weight"], 1);
    assert_eq!(b[0]["state"], "healthy");
    assert_eq!(b[1]["address"], dead.to_string());
    assert_eq!(b[1]["weight"], 2);
    assert_eq!(b[1]["state"], "healthy");

    // Round robin reaches the dead endpoint within two requests (which then goes on to
    // the live one); its one failure ejects it.
    let client = h1();
    for _ in 0..2 {
        assert_eq!(get(&client, &proxy.url("/")).await.0, StatusCode::OK);
    }
    let v = clusters().await;
    let b = &v["clusters"][0]["endpoints"];
    assert_eq!(b[0]["state"], "healthy");
    assert_eq!(b[0]["open_connections"], 1);
    assert_eq!(b[0]["idle_connections"], 1);
    assert_eq!(b[0]["pending"], 0);
    assert_eq!(b[1]["state"], "ejected");

    // Active health checks mark the endpoint that answers 500 down.
    let down = eventually(Duration::from_secs(5), async || {
        clusters().await["clusters"][1]["endpoints"][0]["state"] == "down"
    })
    .await;
    assert!(down, "{}", clusters().await);
}

#[tokio::test]
async fn request_series_appear_for_the_pairs_that_served_requests_only() {
    // Two listeners and two clusters: each listener could reach either (a filter may
    // route by name), but only `a` -> `one` and `b` -> `two` serve requests.
    let (one, two) = (Backend::start("one").await, Backend::start("two").await);
    let config = format!(
        r#"
[[listeners]]
name = "a"
address = "127.0.0.1:0"
cluster = "one"

[[listeners]]
name = "b"
address = "127.0.0.1:0"
cluster = "two"

[[clusters]]
name = "one"
endpoints = ["{}"]

[[clusters]]
name = "two"
endpoints = ["{}"]
"#,
        one.addr, two.addr
    );
    let proxy = Proxy::start(&config).await;
    let before = proxy.metrics().await;
    assert!(!before.contains("weft_requests_total{"), "{before}");
    get(&h1(), &format!("http://{}/", proxy.addr("a"))).await;
    get(&h1(), &format!("http://{}/", proxy.addr("b"))).await;
    let m = proxy.metrics().await;
    for (l, c) in [("a", "one"), ("b", "two")] {
        for (class, n) in [("2xx", 1), ("5xx", 0)] {
            let sample = format!(
                "weft_requests_total{{listener=\"{l}\",cluster=\"{c}\",status_class=\"{class}\"}} {n}"
            );
            assert!(m.contains(&sample), "no {sample:?} in\n{m}");
        }
    }
    for idle in [
        r#"listener="a",cluster="two""#,
        r#"listener="b",cluster="one""#,
    ] {
        assert!(!m.contains(idle), "{idle} in\n{m}");
    }
    let (ok, said) = promtool_check(&m).await;
    assert!(ok, "promtool check metrics: {said}\n{m}");
}

#[tokio::test]
async fn a_client_that_leaves_before_the_response_counts_as_none_not_1xx() {
    use tokio::io::AsyncWriteExt;
    let backend = Backend::start("b1").await;
    let proxy = Proxy::start(&one_cluster(backend.addr)).await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr("main"))
        .await
        .unwrap();
    tcp.write_all(b"GET /sleep/2000 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // Gone once the request reached the upstream, long before its answer.
    assert!(eventually(Duration::from_secs(5), async || backend.hits() == 1).await);
    drop(tcp);
    let none = r#"weft_requests_total{listener="main",cluster="up",status_class="none"} 1"#;
    assert!(
        eventually(Duration::from_secs(5), async || proxy
            .metrics()
            .await
            .contains(none))
        .await,
        "{}",
        proxy.metrics().await
    );
    let m = proxy.metrics().await;
    assert!(
        m.contains(r#"weft_requests_total{listener="main",cluster="up",status_class="1xx"} 0"#),
        "{m}"
    );
}

#[tokio::test]
async fn the_log_filter_changes_while_the_proxy_runs() {
    let backend = Backend::start("b1").await;
    let to = format!("http://{}", backend.addr);
    let child = Child::spawn(&[
        "--log",
        "info,weft::access=off",
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &to,
        "--admin",
        "127.0.0.1:0",
    ])
    .await;
    let url = format!("http://{}/", child.listener_addr("proxy"));
    let admin = format!("http://{}/logging", child.admin_addr());
    let access_lines = || {
        let lines = child.lines.lock().unwrap();
        lines
            .iter()
            .filter(|l| l.contains("\"weft::access\""))
            .count()
    };
    let post = async |filter: &str| {
        let req = Request::post(&admin)
            .body(full(filter.to_string()))
            .unwrap();
        let (status, _, body) = send(&h1(), req).await;
        (status, String::from_utf8_lossy(&body).into_owned())
    };

    assert_eq!(get(&h1(), &url).await.0, StatusCode::OK);
    let (status, _, body) = get(&h1(), &admin).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::OK, &b"weft::access=off,info\n"[..])
    );

    // Turned on: each request logs its access line from now on.
    assert_eq!(
        post("info").await,
        (StatusCode::OK, "logging: info\n".into())
    );
    assert_eq!(get(&h1(), &url).await.0, StatusCode::OK);
    assert!(eventually(Duration::from_secs(5), async || access_lines() == 1).await);
    assert!(child.logged("log filter changed"));

    // A filter that does not parse is refused, and the one in force stays.
    let (status, body) = post("info,weft=notalevel").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body.starts_with("invalid log filter \"info,weft=notalevel\": "),
        "{body}"
    );
    let (_, _, body) = get(&h1(), &admin).await;
    assert_eq!(&body[..], b"info\n");

    // And off again.
    assert_eq!(post("info,weft::access=off").await.0, StatusCode::OK);
    assert_eq!(get(&h1(), &url).await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(access_lines(), 1);

    let (status, headers, _) = send(&h1(), Request::delete(&admin).body(empty()).unwrap()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers[ALLOW], "GET, POST");
}
