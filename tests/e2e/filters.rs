//! Wasm filters through the real proxy: every phase and verdict, bodies, shared
//! state, outbound calls, failures and their policies, hot swaps.

use std::time::Duration;

use http::{Request, StatusCode};

use crate::support::*;

/// A listener whose chain is the given probe filters, in front of `backend`. `extra`
/// follows the last filter's declaration: fields of that filter, then anything else.
fn config(backend: &Backend, filters: &[(&str, &str)], extra: &str) -> String {
    let probe = filter_wasm("probe_filter");
    let mut text = format!(
        "[[listeners]]\nname = \"main\"\naddress = \"127.0.0.1:0\"\ncluster = \"b\"\nchain = \"c\"\n\n[[clusters]]\nname = \"b\"\nendpoints = [\"{}\"]\n",
        backend.addr
    );
    for (name, json) in filters {
        text.push_str(&filter_decl(name, &probe, json));
    }
    // Right after the last filter, so `extra` may set its fields or add clusters.
    text.push_str(extra);
    let names: Vec<String> = filters.iter().map(|(n, _)| format!("\"{n}\"")).collect();
    text.push_str(&format!(
        "[[chains]]\nname = \"c\"\nfilters = [{}]\n",
        names.join(", ")
    ));
    text
}

/// `weft proxy` in front of `backend` with one filter of this workspace (its crate's
/// file name) given `config` on the command line, as a child process.
async fn weft_proxy_with(backend: &Backend, filter: &str, config: &str) -> Child {
    let to = format!("http://{}", backend.addr);
    let filter = format!("{}={config}", filter_wasm(filter).display());
    Child::spawn(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &to,
        "--filter",
        &filter,
    ])
    .await
}

/// A cluster named `name` whose one endpoint is `backend`, for a filter to call or route to.
fn cluster_decl(name: &str, backend: &Backend) -> String {
    format!(
        "[[clusters]]\nname = \"{name}\"\nendpoints = [\"{}\"]\n",
        backend.addr
    )
}

#[tokio::test]
async fn hello_filter_checks_the_key_and_tags_responses() {
    let backend = Backend::start("b1").await;
    let hello = filter_wasm("hello_filter");
    let proxy = Proxy::start(&format!(
        "[[listeners]]\nname = \"main\"\naddress = \"127.0.0.1:0\"\ncluster = \"b\"\nchain = \"c\"\n\n[[clusters]]\nname = \"b\"\nendpoints = [\"{}\"]\n{}[[chains]]\nname = \"c\"\nfilters = [\"hello\"]\n",
        backend.addr,
        filter_decl("hello", &hello, r#"{"key": "s3cret"}"#)
    ))
    .await;
    let (status, headers, _) = get(&h1(), &proxy.url("/")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.get("x-filtered-by").is_none());
    let req = Request::get(proxy.url("/"))
        .header("x-api-key", "s3cret")
        .body(empty())
        .unwrap();
    let (status, headers, body) = send(&h2(), req).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-filtered-by"], "hello-filter");
    assert_eq!(body, "hello from b1");
    assert_eq!(
        backend.hits(),
        1,
        "the denied request never reached the upstream"
    );
    let m = proxy.metrics().await;
    assert!(
        m.contains("weft_filter_hello_requests_total{filter=\"hello\",outcome=\"denied\"} 1\n"),
        "{m}"
    );
    assert!(
        m.contains("weft_filter_hello_requests_total{filter=\"hello\",outcome=\"allowed\"} 1\n"),
        "{m}"
    );
    assert!(
        m.contains(
            r#"weft_filter_duration_seconds_count{filter="hello",phase="request_headers"} 2"#
        ),
        "{m}"
    );
}

/// Sends `n` GETs to `url` and returns their statuses.
async fn statuses(client: &TestClient, url: &str, n: usize) -> Vec<StatusCode> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get(client, url).await.0);
    }
    out
}

async fn info(proxy: &Proxy, path: &str) -> (StatusCode, http::HeaderMap, serde_json::Value) {
    let (status, headers, body) = get(&h1(), &proxy.url(path)).await;
    let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, headers, v)
}

#[tokio::test]
async fn request_verdicts_continue_respond_and_route() {
    let b1 = Backend::start("b1").await;
    let b2 = Backend::start("b2").await;
    let other = cluster_decl("other", &b2);
    // continue, with a header set on the way
    let proxy = Proxy::start(&config(
        &b1,
        &[("p", r#"{"set_request_header": ["x-added", "yes"]}"#)],
        &other,
    ))
    .await;
    let (status, _, v) = info(&proxy, "/info").await;
    assert_eq!(status, 200);
    assert_eq!(v["headers"]["x-added"], "yes");
    // respond: the upstream never sees it
    let proxy = Proxy::start(&config(&b1, &[("p", r#"{"respond": 418}"#)], &other)).await;
    let (status, headers, body) = get(&h1(), &proxy.url("/x")).await;
    assert_eq!(
        (status, &headers["x-probe"], &body[..]),
        (
            StatusCode::IM_A_TEAPOT,
            &"local".parse::<http::HeaderValue>().unwrap(),
            &b"answered by probe\n"[..]
        )
    );
    // route to another cluster
    let hits = b1.hits();
    let proxy = Proxy::start(&config(&b1, &[("p", r#"{"route": "other"}"#)], &other)).await;
    let (status, headers, _) = get(&h1(), &proxy.url("/x")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-backend"], "b2");
    assert_eq!(b1.hits(), hits);
    // route to a cluster that does not exist: 503
    let proxy = Proxy::start(&config(&b1, &[("p", r#"{"route": "nowhere"}"#)], &other)).await;
    assert_eq!(
        get(&h1(), &proxy.url("/x")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn chain_order_is_forward_for_requests_and_reverse_for_responses() {
    let b1 = Backend::start("b1").await;
    let proxy = Proxy::start(&config(
        &b1,
        &[
            ("first", r#"{"tag": "first"}"#),
            ("second", r#"{"tag": "second"}"#),
        ],
        "",
    ))
    .await;
    let (status, headers, _) = get(&h1(), &proxy.url("/")).await;
    assert_eq!(status, 200);
    let tags: Vec<_> = headers
        .get_all("x-probe")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(tags, ["second", "first"]);
}

#[tokio::test]
async fn response_verdicts_replace_and_retry() {
    let b1 = Backend::start("b1").await;
    let proxy = Proxy::start(&config(&b1, &[("p", r#"{"replace_status": 299}"#)], "")).await;
    let (status, _, body) = get(&h1(), &proxy.url("/")).await;
    assert_eq!(
        (status.as_u16(), &body[..]),
        (299, &b"replaced by probe\n"[..])
    );

    // Retry: the first endpoint always answers 503, the second is healthy; the
    // POST body is replayed to the second.
    let failing = status_server(503).await;
    let cluster = flaky_cluster(failing.0, &b1);
    let cfg = config(
        &b1,
        &[("p", r#"{"retry_on": 503, "route": "flaky"}"#)],
        &cluster,
    );
    let proxy = Proxy::start(&cfg).await;
    for _ in 0..4 {
        let req = Request::post(proxy.url("/echo"))
            .body(full("replay me"))
            .unwrap();
        let (status, headers, body) = send(&h1(), req).await;
        assert_eq!(status, 200);
        assert_eq!(headers["x-backend"], "b1");
        assert_eq!(body, "replay me");
    }
    assert!(
        failing.1.load(std::sync::atomic::Ordering::Relaxed) >= 2,
        "the failing endpoint was tried"
    );
}

fn probe_tags(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all("x-probe")
        .iter()
        .map(|v| v.to_str().unwrap_or("?").to_string())
        .collect()
}

#[tokio::test]
async fn response_headers_written_in_the_request_phase_reach_every_response() {
    let b1 = Backend::start("b1").await;
    let early = (
        "early",
        r#"{"early_tag": "early", "early_remove": "x-backend"}"#,
    );
    // The upstream's response gets them before the response phases run: the later
    // filter's response-phase tag comes after, and the removed header is gone.
    let proxy = Proxy::start(&config(&b1, &[early, ("late", r#"{"tag": "late"}"#)], "")).await;
    let (status, headers, _) = get(&h1(), &proxy.url("/")).await;
    assert_eq!(status, 200);
    assert_eq!(probe_tags(&headers), ["early", "late"]);
    assert!(headers.get("x-backend").is_none(), "{headers:?}");

    // A later filter's local response gets them too.
    let proxy = Proxy::start(&config(&b1, &[early, ("deny", r#"{"respond": 403}"#)], "")).await;
    let (status, headers, _) = get(&h1(), &proxy.url("/")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(probe_tags(&headers), ["local", "early"]);

    // So does the proxy's own error when the upstream cannot be reached.
    let dead = ClosedPort::new();
    let cfg = config(&b1, &[early], "").replace(&b1.addr.to_string(), &dead.addr.to_string());
    let proxy = Proxy::start(&cfg).await;
    let (status, headers, _) = get(&h1(), &proxy.url("/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(probe_tags(&headers), ["early"]);

    // A retried request's final response has them once.
    let failing = status_server(503).await;
    let cluster = flaky_cluster(failing.0, &b1);
    let cfg = config(
        &b1,
        &[(
            "p",
            r#"{"early_tag": "early", "retry_on": 503, "route": "flaky"}"#,
        )],
        &cluster,
    );
    let proxy = Proxy::start(&cfg).await;
    for _ in 0..4 {
        let (status, headers, _) = get(&h1(), &proxy.url("/")).await;
        assert_eq!(status, 200);
        assert_eq!(probe_tags(&headers), ["early"]);
    }
    assert!(failing.1.load(std::sync::atomic::Ordering::Relaxed) >= 2);
}

/// A cluster "flaky" of `failing` then `healthy`, with outlier ejection off, so that a
/// retry of a request the first endpoint failed reaches the second.
fn flaky_cluster(failing: std::net::SocketAddr, healthy: &Backend) -> String {
    format!(
        "[[clusters]]\nname = \"flaky\"\nendpoints = [\"{failing}\", \"{}\"]\n[clusters.outlier]\nconsecutive_failures = 0\n",
        healthy.addr
    )
}

/// A server that answers every request with `status`; returns its address and a hit counter.
async fn status_server(
    status: u16,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let h = h.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<hyper::body::Incoming>| {
                    h.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    async move {
                        let mut r = http::Response::new(full("nope"));
                        *r.status_mut() = StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, hits, task)
}

#[tokio::test]
async fn bodies_stream_or_buffer_through_filters() {
    let b1 = Backend::start("b1").await;
    for mode in ["stream", "buffer"] {
        let cfg = format!(r#"{{"request_body": "{mode}"}}"#);
        let proxy = Proxy::start(&config(&b1, &[("p", &cfg)], "")).await;
        let body = chunks((0..5).map(|i| format!("part{i}-")));
        let (status, _, echoed) =
            send(&h1(), Request::post(proxy.url("/echo")).body(body).unwrap()).await;
        assert_eq!(status, 200, "{mode}");
        assert_eq!(echoed, "PART0-PART1-PART2-PART3-PART4-", "{mode}");

        let cfg = format!(r#"{{"response_body": "{mode}"}}"#);
        let proxy = Proxy::start(&config(&b1, &[("p", &cfg)], "")).await;
        let (status, _, body) = get(&h2(), &proxy.url("/")).await;
        assert_eq!(
            (status, &body[..]),
            (StatusCode::OK, &b"HELLO FROM B1"[..]),
            "{mode}"
        );
    }
}

#[tokio::test]
async fn a_filter_answers_from_the_request_body_phase() {
    let b1 = Backend::start("b1").await;
    for mode in ["stream", "buffer"] {
        let cfg = format!(r#"{{"request_body": "{mode}", "deny_body": "forbidden"}}"#);
        let proxy = Proxy::start(&config(&b1, &[("p", &cfg)], "")).await;
        // The verdict comes with the third chunk, after two went on (when streaming).
        let body = chunks(["fine-", "still fine-", "forbidden-", "never seen"]);
        let (status, _, answer) =
            send(&h1(), Request::post(proxy.url("/echo")).body(body).unwrap()).await;
        assert_eq!(
            (status, &answer[..]),
            (StatusCode::FORBIDDEN, &b"denied by probe\n"[..]),
            "{mode}"
        );
        // Counted as the filter's answer, not as an upstream failure.
        assert_eq!(
            proxy
                .metric(r#"weft_requests_total{listener="main",cluster="b",status_class="4xx"}"#)
                .await,
            1.0,
            "{mode}"
        );
        let (status, _, echoed) = send(
            &h1(),
            Request::post(proxy.url("/echo"))
                .body(full("all fine"))
                .unwrap(),
        )
        .await;
        assert_eq!((status, &echoed[..]), (StatusCode::OK, &b"ALL FINE"[..]));
    }
}

#[tokio::test]
async fn a_filters_metric_has_a_bounded_number_of_label_sets() {
    let b1 = Backend::start("b1").await;
    let proxy = Proxy::start(&config(
        &b1,
        &[("p", r#"{"count_paths": true}"#)],
        "[filters.limits]\nmetric_series = 3\n",
    ))
    .await;
    for path in ["/a", "/b", "/c", "/d", "/e", "/a"] {
        assert_eq!(get(&h1(), &proxy.url(path)).await.0, StatusCode::OK);
    }
    let metrics = proxy.metrics().await;
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("weft_filter_probe_paths_total{"))
        .collect();
    assert_eq!(series.len(), 3, "{series:?}");
    // Sets it has still count; new ones past the limit are dropped, and counted.
    assert_eq!(
        proxy
            .metric(r#"weft_filter_probe_paths_total{filter="p",path="/a"}"#)
            .await,
        2.0
    );
    assert_eq!(
        proxy
            .metric(r#"weft_filter_metric_series_dropped_total{filter="p"}"#)
            .await,
        2.0
    );
}

#[tokio::test]
async fn a_buffered_body_over_the_limit_is_413() {
    let b1 = Backend::start("b1").await;
    let cfg = config(
        &b1,
        &[("p", r#"{"request_body": "buffer"}"#)],
        "[filters.limits]\nbody_bytes = \"1KiB\"\n",
    );
    let proxy = Proxy::start(&cfg).await;
    let (status, _, _) = send(
        &h1(),
        Request::post(proxy.url("/echo"))
            .body(full(vec![b'x'; 4096]))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _, body) = send(
        &h1(),
        Request::post(proxy.url("/echo"))
            .body(full("small"))
            .unwrap(),
    )
    .await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"SMALL"[..]));
    assert_eq!(
        proxy
            .metric(r#"weft_limit_hits_total{listener="main",limit="body_size"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn the_listeners_body_limit_stops_a_body_a_filter_collects() {
    let b1 = Backend::start("b1").await;
    let cfg = config(
        &b1,
        &[("p", r#"{"request_body": "buffer"}"#)],
        "[filters.limits]\nbody_bytes = \"1MiB\"\n",
    )
    .replacen(
        "cluster = ",
        "limits = { max_request_body = \"1KiB\" }\ncluster = ",
        1,
    );
    let proxy = Proxy::start(&cfg).await;
    // Of unknown length, so the listener's limit finds it while the filter collects.
    let (status, _, _) = send(
        &h1(),
        Request::post(proxy.url("/echo"))
            .body(chunks([vec![b'x'; 1000], vec![b'y'; 1000]]))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(b1.hits(), 0);
    assert_eq!(
        proxy
            .metric(r#"weft_limit_hits_total{listener="main",limit="body_size"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn response_trailers_phase_runs() {
    let b1 = Backend::start_with("b1", Proto::Http2, None).await;
    let cfg = config(
        &b1,
        &[("p", r#"{"response_body": "stream", "trailer": true}"#)],
        "",
    )
    .replace("endpoints = [", "protocol = \"http2\"\nendpoints = [");
    let proxy = Proxy::start(&cfg).await;
    let resp = h2()
        .request(Request::get(proxy.url("/trailers")).body(empty()).unwrap())
        .await
        .unwrap();
    let collected = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["x-probe-trailer"], "seen");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), "BODY");
}

#[tokio::test]
async fn completion_hook_sees_the_final_status() {
    let b1 = Backend::start("b1").await;
    let probe = filter_wasm("probe_filter");
    let text = format!(
        "[[listeners]]\nname = \"main\"\naddress = \"127.0.0.1:0\"\ncluster = \"b\"\nchain = \"rec\"\n\
         [[listeners.routes]]\npath_prefix = \"/status/\"\nchain = \"rec\"\n\n\
         [[clusters]]\nname = \"b\"\nendpoints = [\"{}\"]\n{}[[chains]]\nname = \"rec\"\nfilters = [\"rec\"]\n",
        b1.addr,
        filter_decl("rec", &probe, r#"{"record_completion": true}"#)
    );
    let proxy = Proxy::start(&text).await;
    assert_eq!(
        get(&h1(), &proxy.url("/status/404")).await.0,
        StatusCode::NOT_FOUND
    );
    // Completion runs after the response; the shared store is read back by a reload
    // into a reporting config of the same filter name (shared state survives swaps).
    let report = text.replace(
        r#"config = { record_completion = true }"#,
        r#"config = { report_last_status = true }"#,
    );
    let mut last = String::new();
    let ok = eventually(Duration::from_secs(5), async || {
        proxy.write_config(&report);
        proxy.app.reload().await.unwrap();
        let (_, _, body) = get(&h1(), &proxy.url("/x")).await;
        last = String::from_utf8_lossy(&body).into_owned();
        let done = last == "404";
        if !done {
            proxy.write_config(&text);
            proxy.app.reload().await.unwrap();
        }
        done
    })
    .await;
    assert!(ok, "last status seen by the completion hook: {last:?}");
}

#[tokio::test]
async fn outbound_calls_reach_another_cluster() {
    let b1 = Backend::start("b1").await;
    let b2 = Backend::start("b2").await;
    let other = cluster_decl("other", &b2);
    let proxy = Proxy::start(&config(&b1, &[("p", r#"{"call": "other"}"#)], &other)).await;
    let (status, _, v) = info(&proxy, "/info").await;
    assert_eq!(status, 200);
    assert_eq!(v["headers"]["x-probe-call"], "200 200");
    assert_eq!(b2.hits(), 2);
    // A call that cannot connect goes to another endpoint, as requests do: round robin
    // sends one of the two to the dead endpoint first.
    let dead = ClosedPort::new();
    let other = format!(
        "[[clusters]]\nname = \"other\"\nendpoints = [\"{dead}\", \"{}\"]\noutlier = {{ consecutive_failures = 0 }}\n",
        b2.addr
    );
    let proxy = Proxy::start(&config(&b1, &[("p", r#"{"call": "other"}"#)], &other)).await;
    for _ in 0..2 {
        let (_, _, v) = info(&proxy, "/info").await;
        assert_eq!(v["headers"]["x-probe-call"], "200 200");
    }
    assert_eq!(b2.hits(), 6);
    // Each request's two calls run at once, so one or both met the dead endpoint
    // first, as the tasks happened to be scheduled.
    let retries = proxy
        .metric("weft_upstream_connect_retries_total{cluster=\"other\"}")
        .await;
    assert!((2.0..=4.0).contains(&retries), "{retries}");
    let proxy = Proxy::start(&config(&b1, &[("p", r#"{"call": "missing"}"#)], "")).await;
    let (_, _, v) = info(&proxy, "/info").await;
    assert!(
        v["headers"]["x-probe-call"]
            .as_str()
            .unwrap()
            .contains("missing"),
        "{v}"
    );
}

#[tokio::test]
async fn a_request_that_goes_away_mid_call_does_not_spoil_the_instance() {
    // The first request's filter is suspended in an outbound call that takes 30 s
    // when its client goes away. wasmtime will not enter that instance again: the
    // completion phase got "cannot enter component instance" (counted as a trap),
    // and a filter without that phase put the instance back in the pool, where it
    // failed the next request with 500.
    let b1 = Backend::start("b1").await;
    let b2 = Backend::start("b2").await;
    let other = cluster_decl("other", &b2);
    let proxy = Proxy::start(&config(&b1, &[("p", r#"{"call": "other"}"#)], &other)).await;
    let mut conn = tokio::net::TcpStream::connect(proxy.addr("main"))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut conn, b"GET /sleep/30000 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let open = r#"weft_downstream_connections_open{listener="main"} "#;
    assert!(
        eventually(Duration::from_secs(5), async || b2.hits() == 2).await,
        "the filter's calls never reached the other cluster"
    );
    drop(conn);
    assert!(
        eventually(Duration::from_secs(5), async || proxy.metric(open).await
            == 0.0)
        .await,
        "the proxy kept the abandoned connection"
    );
    for i in 0..3 {
        let (status, _, v) = info(&proxy, "/info").await;
        assert_eq!(status, 200, "request {i} after the abandoned one: {v}");
        assert_eq!(v["headers"]["x-probe-call"], "200 200");
    }
    // The client went away: not the filter's failure. Its completion phase cannot
    // run on the abandoned instance and is skipped, not counted as a trap.
    let failed = r#"weft_filter_failures_total{filter="p",reason="trap"} "#;
    assert_eq!(proxy.metric(failed).await, 0.0);
}

#[tokio::test]
async fn an_abandoned_call_never_puts_its_instance_back_in_the_pool() {
    // The test above goes through the completion phase; a filter without one (the
    // benchmark's) gives its instance back straight from the request's end. Driven
    // through the host here: a call to a spinning probe is dropped once it has
    // yielded at an epoch tick, as a request's future is when its client leaves.
    use std::sync::Arc;
    use weft::config::{FilterConfig, RuntimeConfig};
    use weft::telemetry::metrics::Metrics;
    use weft::wasm::shared::SharedStore;
    use weft::wasm::{Host, LoadedFilter};

    let runtime = RuntimeConfig {
        module_cache: None,
        filter_instances: 4,
        ..RuntimeConfig::default()
    };
    let host = Host::new(&runtime).unwrap();
    let module = filter_wasm("probe_filter");
    let cfg: FilterConfig = toml::from_str(&format!(
        "name = \"p\"\nmodule = {:?}\nconfig = {{ spin = true }}\n[limits]\ncpu_time = \"60s\"\n",
        module.display().to_string()
    ))
    .unwrap();
    let filter = LoadedFilter::load(
        &host,
        &cfg,
        module,
        Arc::new(Metrics::new()),
        Arc::new(SharedStore::new(16)),
    )
    .await
    .unwrap();
    let mut inst = filter.instance(1, filter.new_part()).await.unwrap();
    inst.begin_call();
    let call = inst
        .bindings
        .weft_filter_handler()
        .call_on_request_headers(&mut inst.store, 1);
    let gave_up = tokio::time::timeout(Duration::from_millis(100), call).await;
    assert!(gave_up.is_err(), "the spinning call returned");
    filter.release(inst);

    // The next request must get a working instance, not the abandoned one (which
    // fails every call with "cannot enter component instance").
    let mut next = filter.instance(2, filter.new_part()).await.unwrap();
    next.begin_call();
    let answered = next
        .bindings
        .weft_filter_handler()
        .call_on_response_headers(&mut next.store, 2)
        .await;
    next.end_call();
    assert!(answered.is_ok(), "{:#}", answered.err().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_counters_are_atomic_across_concurrent_requests() {
    let b1 = Backend::start("b1").await;
    let proxy = Proxy::start(&config(&b1, &[("p", r#"{"count": true}"#)], "")).await;
    let url = proxy.url("/info");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let c = h1();
                let mut seen = Vec::new();
                for _ in 0..25 {
                    let (_, _, body) = get(&c, &url).await;
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    seen.push(
                        v["headers"]["x-probe-hits"]
                            .as_str()
                            .unwrap()
                            .parse::<i64>()
                            .unwrap(),
                    );
                }
                seen
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=200).collect::<Vec<i64>>());
}

#[tokio::test]
async fn per_request_state_does_not_leak_between_requests() {
    let b1 = Backend::start("b1").await;
    let proxy = Proxy::start(&config(&b1, &[("p", r#"{"remember_path": true}"#)], "")).await;
    for i in 0..20 {
        let path = format!("/item/{i}");
        let (_, headers, _) = get(&h1(), &proxy.url(&path)).await;
        assert_eq!(headers["x-probe-path"], path.as_str());
    }
    // A filter that keeps no state for a request never reports an old one.
    let proxy = Proxy::start(&config(
        &b1,
        &[("p", r#"{"remember_path": true}"#)],
        "[filters.limits]\ninstance_reuse = 1\n",
    ))
    .await;
    let (_, headers, _) = get(&h1(), &proxy.url("/fresh")).await;
    assert_eq!(headers["x-probe-path"], "/fresh");
}

#[tokio::test]
async fn instances_are_kept_for_reuse_through_bursts_of_requests() {
    // Three bursts of 40 concurrent requests: each holds an instance for its length.
    // The idle pool keeps all 40 between bursts, so no burst makes new ones (a fixed
    // cap on idle instances destroyed the excess after each burst and remade it).
    let b1 = Backend::start("b1").await;
    let proxy = Proxy::start(&config(&b1, &[("p", r#"{"remember_path": true}"#)], "")).await;
    let url = proxy.url("/sleep/100");
    for burst in 0..3 {
        for t in spawn_gets(&url, 40) {
            assert_eq!(t.await.unwrap(), 200, "burst {burst}");
        }
    }
    let m = proxy.metrics().await;
    let created: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix(r#"weft_filter_instances_created_total{filter="p"} "#))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no instance counter in {m}"));
    assert!(
        (2..=41).contains(&created),
        "{created} instances made for 3 bursts of 40 requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_reuses_its_own_instances() {
    // Idle instances are kept per worker, so a request finds one that its core's
    // caches hold. 100 requests one after the other, each on a connection of its
    // own (the kernel spreads them over both workers), need one instance per worker,
    // reused by all of that worker's requests.
    let b1 = Backend::start("b1").await;
    let proxy = Proxy::start_on_workers(1, &config(&b1, &[("p", "{}")], "")).await;
    for i in 0..100 {
        assert_eq!(get(&h1(), &proxy.url("/")).await.0, 200, "request {i}");
    }
    let created = proxy
        .metric(r#"weft_filter_instances_created_total{filter="p"} "#)
        .await;
    assert_eq!(created, 2.0, "instances made for 100 requests on 2 workers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_make_an_instance_takes_another_workers_idle_one() {
    // One instance in the whole process (`filter_instances = 1`), kept idle by the
    // worker that made it: the other worker's requests take it rather than fail.
    let b1 = Backend::start("b1").await;
    let config = config(&b1, &[("p", r#"{"tag": "t"}"#)], "");
    let proxy = Proxy::start_on_workers(1, &format!("filter_instances = 1\n{config}")).await;
    let idle = r#"weft_filter_instances_idle{filter="p"} "#;
    for i in 0..40 {
        let (status, headers, body) = get(&h1(), &proxy.url("/")).await;
        assert_eq!(status, 200, "request {i}: {body:?}");
        assert_eq!(headers["x-probe"], "t", "request {i}");
        // The completion phase runs after the response: wait until the instance
        // is idle again, on whichever worker.
        let back = eventually(Duration::from_secs(5), async || {
            proxy.metric(idle).await == 1.0
        });
        assert!(back.await, "request {i}: the instance did not come back");
    }
    let created = proxy
        .metric(r#"weft_filter_instances_created_total{filter="p"} "#)
        .await;
    assert_eq!(created, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_values_carry_facts_across_phases_without_holding_instances() {
    // "a" stores each request's path as a request value, "b" reports it in the
    // response, "c" keeps the path in its own per-request state (extensions). 40
    // slow requests overlap: every response must carry its own path from both.
    // "a" and "b" hold nothing between calls, so their instances serve the other
    // requests meanwhile; "c" keeps one instance per request in flight.
    let b1 = Backend::start("b1").await;
    let proxy = Proxy::start(&config(
        &b1,
        &[
            ("a", r#"{"set_value": "probe.path"}"#),
            ("b", r#"{"report_value": "probe.path"}"#),
            ("c", r#"{"remember_path": true}"#),
        ],
        "",
    ))
    .await;
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let url = proxy.url(&format!("/sleep/{}", 300 + i));
            tokio::spawn(async move {
                let (status, headers, _) = get(&h1(), &url).await;
                (i, status, headers)
            })
        })
        .collect();
    for t in tasks {
        let (i, status, headers) = t.await.unwrap();
        let path = format!("/sleep/{}", 300 + i);
        assert_eq!(status, 200);
        assert_eq!(headers["x-probe-value"], path.as_str(), "request value");
        assert_eq!(headers["x-probe-path"], path.as_str(), "extension");
    }
    let created = async |f: &str| {
        proxy
            .metric(&format!(
                "weft_filter_instances_created_total{{filter=\"{f}\"}} "
            ))
            .await
    };
    let (a, b, c) = (created("a").await, created("b").await, created("c").await);
    assert!(a < 20.0 && b < 20.0, "a made {a} instances, b {b}");
    assert!(
        c >= 20.0,
        "c keeps an instance per request in flight; made {c}"
    );
}

#[tokio::test]
async fn idle_instances_are_given_back_once_traffic_stops() {
    // A burst leaves its instances idle in the pool. The periodic sweep trims it
    // (taking and giving back never do): within two trim periods (10 s each) and the
    // sweep's own period of the last use, every idle instance is destroyed. The filter keeps per-request state, so
    // each request of the burst holds an instance of its own.
    let b1 = Backend::start("b1").await;
    let proxy = Proxy::start(&config(&b1, &[("p", r#"{"remember_path": true}"#)], "")).await;
    for t in spawn_gets(&proxy.url("/sleep/100"), 20) {
        assert_eq!(t.await.unwrap(), 200);
    }
    let idle = r#"weft_filter_instances_idle{filter="p"} "#;
    let kept = proxy.metric(idle).await;
    assert!(kept >= 2.0, "{kept} idle instances after a burst of 20");
    let deadline = std::time::Instant::now() + Duration::from_secs(35);
    loop {
        let now_idle = proxy.metric(idle).await;
        if now_idle == 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{now_idle} of {kept} idle instances still kept 35 s after the last request"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn a_trap_fails_only_its_request_by_policy() {
    let b1 = Backend::start("b1").await;
    let closed = Proxy::start(&config(
        &b1,
        &[("p", r#"{"trap_in": "request_headers"}"#)],
        "",
    ))
    .await;
    assert_eq!(
        statuses(&h1(), &closed.url("/"), 3).await,
        [StatusCode::INTERNAL_SERVER_ERROR; 3]
    );
    assert_eq!(
        closed
            .metric(r#"weft_filter_failures_total{filter="p",reason="trap"}"#)
            .await,
        3.0
    );
    let open = Proxy::start(&config(
        &b1,
        &[("p", r#"{"trap_in": "request_headers"}"#)],
        "failure = \"open\"\n",
    ))
    .await;
    let (status, _, body) = get(&h1(), &open.url("/")).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello from b1"[..]));
    // A trap in the response phase, fail-closed.
    let late = Proxy::start(&config(
        &b1,
        &[("p", r#"{"trap_in": "response_headers"}"#)],
        "",
    ))
    .await;
    assert_eq!(
        get(&h1(), &late.url("/")).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
}

#[tokio::test]
async fn a_filter_that_spins_is_stopped_while_others_are_served() {
    let b1 = Backend::start("b1").await;
    let probe = filter_wasm("probe_filter");
    // One listener, two routes: /spin runs the spinning filter, the rest a harmless one.
    let text = format!(
        "[[listeners]]\nname = \"main\"\naddress = \"127.0.0.1:0\"\ncluster = \"b\"\nchain = \"calm\"\n\
         [[listeners.routes]]\npath_prefix = \"/spin\"\nchain = \"spin\"\n\n\
         [[clusters]]\nname = \"b\"\nendpoints = [\"{}\"]\n\
         {}[filters.limits]\ncpu_time = \"3s\"\n{}\
         [[chains]]\nname = \"spin\"\nfilters = [\"spin\"]\n[[chains]]\nname = \"calm\"\nfilters = [\"calm\"]\n",
        b1.addr,
        filter_decl("spin", &probe, r#"{"spin": true}"#),
        filter_decl("calm", &probe, r#"{"tag": "calm"}"#),
    );
    let proxy = Proxy::start(&text).await;
    let url = proxy.url("/spin");
    // This test runs on one thread: the calm requests complete while the spinning
    // filter still runs only if it yields to them.
    let spinning = tokio::spawn(async move { get(&h1(), &url).await.0 });
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..5 {
        let (status, headers, _) = get(&h1(), &proxy.url("/")).await;
        assert_eq!(
            (status, &headers["x-probe"]),
            (
                StatusCode::OK,
                &"calm".parse::<http::HeaderValue>().unwrap()
            )
        );
    }
    assert!(
        !spinning.is_finished(),
        "the calm requests should not have waited for the spinning filter's end"
    );
    assert_eq!(spinning.await.unwrap(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        proxy
            .metric(r#"weft_filter_failures_total{filter="spin",reason="cpu_time"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn an_idle_proxy_parks_its_epoch_ticker_and_a_call_wakes_it() {
    let b1 = Backend::start("b1").await;
    let child = weft_proxy_with(&b1, "probe_filter", r#"{"spin":true}"#).await;
    let pid = child.pid();
    let wakeups = || thread_wakeups(pid, "weft-epoch").expect("the epoch ticker's thread");
    // Ticking, the thread would wake 750 times in 1.5 s; idle, it sleeps once no
    // filter has been called for 100 ms, looking up once a second.
    let quiet = async || {
        let before = wakeups();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        wakeups() - before <= 5
    };
    assert!(
        eventually(Duration::from_secs(10), quiet).await,
        "the idle proxy's epoch ticker kept waking"
    );
    // A spinning call must wake it, or nothing would stop the call (50 ms of CPU).
    let url = format!("http://{}/", child.listener_addr("proxy"));
    let stopped = tokio::time::timeout(Duration::from_secs(20), get(&h1(), &url)).await;
    assert_eq!(
        stopped.expect("the spinning call was not stopped").0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let logged = async || child.logged("CPU time limit of 50ms exceeded");
    assert!(
        eventually(Duration::from_secs(10), logged).await,
        "{:?}",
        child.lines
    );
    assert!(
        eventually(Duration::from_secs(10), quiet).await,
        "the ticker did not sleep again"
    );
}

#[tokio::test]
async fn a_filter_that_hoards_memory_is_stopped_by_its_cap() {
    let b1 = Backend::start("b1").await;
    let proxy = Proxy::start(&config(
        &b1,
        &[("p", r#"{"grow": true}"#)],
        "[filters.limits]\nmemory = \"8MiB\"\n",
    ))
    .await;
    assert_eq!(
        get(&h1(), &proxy.url("/")).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        proxy
            .metric(r#"weft_filter_failures_total{filter="p",reason="memory"}"#)
            .await,
        1.0
    );
    // The proxy is fine: the next filter instance starts clean and fails the same way.
    assert_eq!(
        get(&h1(), &proxy.url("/")).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
}

#[tokio::test]
async fn an_oversized_header_write_is_refused() {
    let b1 = Backend::start("b1").await;
    let proxy = Proxy::start(&config(
        &b1,
        &[("p", r#"{"write_header_bytes": 100000}"#)],
        "[filters.limits]\nheader_bytes = \"8KiB\"\n",
    ))
    .await;
    let (status, _, v) = info(&proxy, "/info").await;
    assert_eq!(status, 200);
    assert!(v["headers"].get("x-probe-big").is_none(), "{v}");
    assert!(
        v["headers"]["x-probe-write"]
            .as_str()
            .unwrap()
            .starts_with("refused"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swaps_under_load_fail_no_request() {
    let b1 = Backend::start("b1").await;
    let v1 = config(&b1, &[("p", r#"{"tag": "v1"}"#)], "");
    let v2 = config(&b1, &[("p", r#"{"tag": "v2"}"#)], "");
    let proxy = std::sync::Arc::new(Proxy::start(&v1).await);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (url, stop) = (proxy.url("/"), stop.clone());
            tokio::spawn(async move {
                let c = if i % 2 == 0 { h1() } else { h2() };
                let (mut ok, mut failed, mut tags) = (0, 0, std::collections::BTreeSet::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match c.request(Request::get(&url).body(empty()).unwrap()).await {
                        Ok(r) if r.status() == 200 => {
                            ok += 1;
                            tags.insert(r.headers()["x-probe"].to_str().unwrap().to_string());
                        }
                        _ => failed += 1,
                    }
                }
                (ok, failed, tags)
            })
        })
        .collect();
    for i in 0..100 {
        proxy.write_config(if i % 2 == 0 { &v2 } else { &v1 });
        proxy.app.reload().await.expect("reload");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut tags = std::collections::BTreeSet::new();
    for c in clients {
        let (ok, failed, t) = c.await.unwrap();
        assert_eq!(failed, 0);
        assert!(ok > 0);
        tags.extend(t);
    }
    assert_eq!(tags.into_iter().collect::<Vec<_>>(), ["v1", "v2"]);
}

#[tokio::test]
async fn a_broken_module_is_refused_while_the_old_chain_serves() {
    let b1 = Backend::start("b1").await;
    let proxy = Proxy::start(&config(&b1, &[("p", r#"{"tag": "old"}"#)], "")).await;
    let broken = proxy.dir.path().join("broken.wasm");
    std::fs::write(&broken, b"\0asm not really").unwrap();
    let probe = filter_wasm("probe_filter");
    proxy.write_config(
        &config(&b1, &[("p", r#"{"tag": "new"}"#)], "")
            .replace(&probe.display().to_string(), &broken.display().to_string()),
    );
    let err = proxy
        .app
        .reload()
        .await
        .expect_err("a broken module is refused")
        .to_string();
    assert!(
        err.contains("filters[0]") && err.contains("broken.wasm"),
        "{err}"
    );
    // A config the filter rejects is refused too, with the filter's own words.
    proxy.write_config(&config(
        &b1,
        &[("p", r#"{"request_body": "sideways"}"#)],
        "",
    ));
    let err = proxy
        .app
        .reload()
        .await
        .expect_err("a rejected config is refused")
        .to_string();
    assert!(
        err.contains("refused its config") && err.contains("sideways"),
        "{err}"
    );
    let (status, headers, _) = get(&h1(), &proxy.url("/")).await;
    assert_eq!(
        (status, &headers["x-probe"]),
        (StatusCode::OK, &"old".parse::<http::HeaderValue>().unwrap())
    );
}

#[tokio::test]
async fn weft_proxy_takes_filters_on_the_command_line() {
    let b1 = Backend::start("b1").await;
    let child = weft_proxy_with(&b1, "hello_filter", r#"{"key":"k1"}"#).await;
    let url = format!("http://{}/", child.listener_addr("proxy"));
    assert_eq!(get(&h1(), &url).await.0, StatusCode::UNAUTHORIZED);
    let (status, headers, _) = send(
        &h1(),
        Request::get(&url)
            .header("x-api-key", "k1")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, &headers["x-filtered-by"]),
        (
            StatusCode::OK,
            &"hello-filter".parse::<http::HeaderValue>().unwrap()
        )
    );
}

#[tokio::test]
async fn weft_check_loads_modules_and_their_config() {
    let b1 = Backend::start("b1").await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!(
            "{}{}",
            preamble(dir.path()),
            config(&b1, &[("p", r#"{"tag": "x"}"#)], "")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(weft_bin())
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "{}{}",
            preamble(dir.path()),
            config(&b1, &[("p", r#"{"nonsense": 1}"#)], "")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(weft_bin())
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("filters[0]") && err.contains("nonsense"),
        "{err}"
    );
}

#[tokio::test]
async fn the_binary_compiles_new_modules_in_a_child_process() {
    // With an empty module cache the proxy compiles its filters in a child process
    // that writes the cache and exits: the compiler's working memory (several MiB)
    // never enters the serving process, which ends up as it would from a warm cache.
    let b1 = Backend::start("b1").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("weft.toml");
    let text = format!(
        "{}{}",
        preamble(dir.path()),
        config(&b1, &[("p", r#"{"tag": "x"}"#)], "")
    );
    std::fs::write(&cfg, &text).unwrap();
    let cfg_arg = cfg.to_str().unwrap();
    let cached = || {
        std::fs::read_dir(dir.path().join("cache"))
            .map(|d| d.filter_map(Result::ok).count())
            .unwrap_or(0)
    };
    assert_eq!(cached(), 0);
    let cold = Child::spawn(&["run", "--config", cfg_arg]).await;
    assert_eq!(cached(), 1, "the compiled module was not cached");
    let url = format!("http://{}/", cold.listener_addr("main"));
    let (status, headers, _) = get(&h1(), &url).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-probe"], "x");
    let cold_anon = rss_anon_kib(cold.pid());
    drop(cold);

    let warm = Child::spawn(&["run", "--config", cfg_arg]).await;
    let warm_anon = rss_anon_kib(warm.pid());
    assert!(
        cold_anon < warm_anon + 2048,
        "compiling left {} KiB more in the proxy than loading the cache ({cold_anon} against {warm_anon})",
        cold_anon.saturating_sub(warm_anon)
    );
    drop(warm);

    // A module that does not compile: the child's reason reaches the operator.
    let broken = dir.path().join("broken.wasm");
    std::fs::write(&broken, b"\0asm not really").unwrap();
    let probe = filter_wasm("probe_filter").display().to_string();
    std::fs::write(&cfg, text.replace(&probe, &broken.display().to_string())).unwrap();
    let (status, _, err) = crate::ops_support::run_weft(&["check", "--config", cfg_arg]).await;
    assert!(!status.success());
    assert!(
        err.contains("filters[0]") && err.contains("broken.wasm is not a valid component"),
        "{err}"
    );
}

#[tokio::test]
async fn a_thousand_reloads_leave_memory_flat() {
    let b1 = Backend::start("b1").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("weft.toml");
    let hello = filter_wasm("hello_filter");
    let text = format!(
        "{}{}{}[[chains]]\nname = \"c\"\nfilters = [\"hello\", \"p\"]\n",
        preamble(dir.path()),
        config(&b1, &[("p", r#"{"tag": "x"}"#)], "")
            .split("[[chains]]")
            .next()
            .unwrap(),
        filter_decl("hello", &hello, r#"{"key": "k"}"#),
    );
    std::fs::write(&cfg, &text).unwrap();
    let child = Child::spawn(&["run", "--config", cfg.to_str().unwrap()]).await;
    let admin = format!("http://{}/reload", child.admin_addr());
    let url = format!("http://{}/", child.listener_addr("main"));
    let client = h1();
    let mut rss = Vec::new();
    for i in 1..=1000 {
        let (status, _, body) = send(&client, Request::post(&admin).body(empty()).unwrap()).await;
        assert_eq!(status, 200, "reload {i}: {body:?}");
        if i % 100 == 0 {
            // Traffic between reloads, so old chains' instances are used and released.
            let req = Request::get(&url)
                .header("x-api-key", "k")
                .body(empty())
                .unwrap();
            assert_eq!(send(&client, req).await.0, 200);
            rss.push(rss_kib(child.pid()));
        }
    }
    let (after_100, after_1000) = (rss[0], rss[9]);
    eprintln!("RSS after reloads (KiB, every 100): {rss:?}");
    assert!(
        after_1000 <= after_100 + 4 * 1024,
        "RSS grew from {after_100} KiB after 100 reloads to {after_1000} KiB after 1000"
    );
}

#[tokio::test]
async fn a_filter_without_a_free_instance_is_unavailable_503_when_fail_closed() {
    let b1 = Backend::start("b1").await;
    for (policy, busy_status) in [
        ("closed", StatusCode::SERVICE_UNAVAILABLE),
        ("open", StatusCode::OK),
    ] {
        // One filter instance in the whole process: while a request holds it (the
        // filter keeps per-request state), the next cannot get one (the pooling
        // allocator is full).
        let proxy = Proxy::start_with_runtime(
            "filter_instances = 1\n",
            &config(
                &b1,
                &[("p", r#"{"tag": "t", "remember_path": true}"#)],
                &format!("failure = \"{policy}\"\n"),
            ),
        )
        .await;
        let hits = b1.hits();
        let slow_url = proxy.url("/sleep/1500");
        let slow = tokio::spawn(async move { get(&h1(), &slow_url).await });
        assert!(eventually(Duration::from_secs(5), async || b1.hits() == hits + 1).await);

        let (status, headers, body) = get(&h1(), &proxy.url("/")).await;
        assert!(
            !slow.is_finished(),
            "{policy}: the slow request no longer holds the instance"
        );
        assert_eq!(status, busy_status, "{policy}: {body:?}");
        if policy == "closed" {
            assert_eq!(body, "filter failure\n");
        } else {
            assert!(headers.get("x-probe").is_none(), "the filter was skipped");
        }
        assert_eq!(
            proxy
                .metric(r#"weft_filter_failures_total{filter="p",reason="unavailable"}"#)
                .await,
            1.0,
            "{policy}"
        );
        let (status, headers, _) = slow.await.unwrap();
        assert_eq!(
            (status, &headers["x-probe"]),
            (StatusCode::OK, &"t".parse::<http::HeaderValue>().unwrap())
        );
        // The instance goes back once its request has settled (the completion
        // phase runs after the response is sent).
        let url = proxy.url("/");
        let back = eventually(Duration::from_secs(5), async || {
            get(&h1(), &url)
                .await
                .1
                .get("x-probe")
                .is_some_and(|v| v == "t")
        })
        .await;
        assert!(back, "{policy}: the instance did not come back");
    }
}

#[tokio::test]
async fn a_restart_loads_the_compiled_module_from_the_disk_cache() {
    use std::time::SystemTime;
    use weft::app::{App, ConfigSource};

    let b1 = Backend::start("b1").await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("modules");
    let path = dir.path().join("weft.toml");
    std::fs::write(
        &path,
        format!(
            "[admin]\nenabled = false\n[runtime]\nwatch_config = false\nmodule_cache = \"{}\"\n{}",
            cache.display(),
            config(&b1, &[("p", r#"{"tag": "cached"}"#)], "")
        ),
    )
    .unwrap();
    let serves = async |app: &App| {
        let url = format!("http://{}/", app.listener_addr("main").unwrap());
        let (status, headers, _) = get(&h1(), &url).await;
        status == StatusCode::OK && headers["x-probe"] == "cached"
    };
    let cached = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&cache)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    };

    let first = App::start(ConfigSource::File(path.clone())).await.unwrap();
    assert!(serves(&first).await);
    let files = cached();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].extension().and_then(|e| e.to_str()), Some("cwasm"));
    assert!(first.shutdown().await);
    // A compilation would write the entry again (a new file renamed over it): mark it.
    let marked = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    std::fs::File::options()
        .write(true)
        .open(&files[0])
        .unwrap()
        .set_modified(marked)
        .unwrap();

    let second = App::start(ConfigSource::File(path.clone())).await.unwrap();
    assert!(serves(&second).await);
    assert_eq!(cached(), files);
    assert_eq!(
        std::fs::metadata(&files[0]).unwrap().modified().unwrap(),
        marked,
        "the second start compiled the module again instead of loading the cached one"
    );
    assert!(second.shutdown().await);
}

#[tokio::test]
async fn each_request_logs_one_access_event_whose_id_the_filters_lines_carry() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start("b1").await;
    let child = weft_proxy_with(&backend, "probe_filter", r#"{"log":"probe saw"}"#).await;
    let addr = child.listener_addr("proxy");
    let url = format!("http://{addr}");
    let one = Request::get(format!("{url}/one?token=secret"))
        .header("x-request-id", "trace-1")
        .header("user-agent", "weft-test/1.0")
        .body(empty())
        .unwrap();
    let (status, _, _) = send(&h1(), one).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = get(&h2(), &format!("{url}/two")).await;
    assert_eq!(status, StatusCode::OK);
    // Refused before any filter runs.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /three HTTP/1.1\r\nhost: a\r\nhost: b\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 400 "));

    let events = |target: &str| -> Vec<serde_json::Value> {
        let lines = child.lines.lock().unwrap();
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == target)
            .collect()
    };
    let logged = eventually(Duration::from_secs(5), async || {
        events("weft::access").len() >= 3
    })
    .await;
    assert!(logged, "{:?}", child.lines.lock().unwrap());
    let access = events("weft::access");
    assert_eq!(access.len(), 3, "one event per request: {access:#?}");
    let by_path = |path: &str| {
        access
            .iter()
            .find(|v| v["path"] == path)
            .unwrap_or_else(|| panic!("no access event for {path}: {access:#?}"))
    };
    let (one, two, three) = (by_path("/one"), by_path("/two"), by_path("/three"));
    for (event, version) in [(one, "HTTP/1.1"), (two, "HTTP/2.0")] {
        assert_eq!(event["status"], 200, "{event}");
        assert_eq!(event["method"], "GET");
        assert_eq!(event["version"], version);
        assert_eq!(event["authority"], addr.to_string());
        assert_eq!(event["listener"], "proxy");
        assert_eq!(event["upstream"], backend.addr.to_string());
        assert_eq!(event["error"], "-");
    }
    assert_eq!(one["x_request_id"], "trace-1");
    assert_eq!(two["x_request_id"], "-");
    assert_eq!(one["user_agent"], "weft-test/1.0");
    assert_eq!(two["user_agent"], "-");
    // The upstream's part of the time, within the whole; none without an upstream.
    for event in [one, two] {
        let (upstream, whole) = (event["upstream_ms"].as_f64(), event["duration_ms"].as_f64());
        assert!(
            matches!((upstream, whole), (Some(u), Some(w)) if u > 0.0 && u <= w),
            "{event}"
        );
    }
    assert!(three.get("upstream_ms").is_none(), "{three}");
    assert_eq!(three["status"], 400);
    assert_eq!(three["error"], "more than one Host header");
    assert_eq!(three["authority"], "a");
    assert!(
        !child.logged("secret"),
        "the query string must not be logged"
    );

    // The filter's own lines name the request as the access log does.
    let ids: Vec<u64> = [one, two, three]
        .iter()
        .map(|e| e["request_id"].as_u64().expect("request_id"))
        .collect();
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "{ids:?}"
    );
    let filter_lines = events("weft::filter");
    for (event, path) in [(one, "/one"), (two, "/two")] {
        let line = filter_lines
            .iter()
            .find(|l| l["message"] == format!("probe saw {path}"))
            .unwrap_or_else(|| panic!("no filter line for {path}: {filter_lines:#?}"));
        assert_eq!(line["request"], event["request_id"], "{line}");
        assert_eq!(line["filter"], "probe_filter");
    }
}
