//! Which endpoints take traffic: passive outlier ejection (consecutive failures
//! eject an endpoint for a back-off, after which it gets traffic again), its
//! `max_ejected_percent` guard, and active HTTP health checks.

use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use crate::support::*;

fn config(endpoints: &[&Steered], cluster_extra: &str) -> String {
    let addrs: Vec<_> = endpoints.iter().map(|b| b.addr).collect();
    main_to_cluster(&addrs, cluster_extra)
}

const EJECTIONS: &str = "weft_endpoint_ejections_total{cluster=\"c\"}";

#[tokio::test]
async fn failing_endpoint_is_ejected_then_gets_traffic_again() {
    let (good, bad) = (Steered::start("good").await, Steered::start("bad").await);
    bad.set_status(500);
    let proxy = Proxy::start(&config(
        &[&good, &bad],
        r#"outlier = { consecutive_failures = 3, base_ejection = "1s", max_ejection = "10s" }"#,
    ))
    .await;
    let client = h1();
    // Round robin alternates: the third 500 from "bad" comes with the sixth request.
    for _ in 0..6 {
        get(&client, &proxy.url("/")).await;
    }
    let ejected_at = Instant::now();
    assert_eq!(bad.hits(), 3);
    assert_eq!(proxy.metric(EJECTIONS).await, 1.0);
    let states = endpoint_states(&proxy, "c").await;
    assert_eq!(states[&bad.addr], "ejected", "{states:?}");
    assert_eq!(states[&good.addr], "healthy", "{states:?}");

    // While ejected, everything goes to the healthy endpoint.
    bad.set_status(200);
    for _ in 0..8 {
        let (status, headers, _) = get(&client, &proxy.url("/")).await;
        assert_eq!(
            (status, backend_of(&headers).as_str()),
            (StatusCode::OK, "good")
        );
    }
    assert!(
        ejected_at.elapsed() < Duration::from_secs(1),
        "too slow to observe the ejection: {:?}",
        ejected_at.elapsed()
    );
    assert_eq!(bad.hits(), 3);

    // After the back-off it takes traffic again.
    let back = eventually(Duration::from_secs(5), async || {
        get(&client, &proxy.url("/")).await;
        bad.hits() > 3
    })
    .await;
    assert!(back, "the ejected endpoint never got traffic again");
    let waited = ejected_at.elapsed();
    assert!(
        waited >= Duration::from_millis(950),
        "back before its ejection ended: {waited:?}"
    );
    assert_eq!(endpoint_states(&proxy, "c").await[&bad.addr], "healthy");
    assert_eq!(proxy.metric(EJECTIONS).await, 1.0);
}

#[tokio::test]
async fn max_ejected_percent_keeps_the_last_endpoints() {
    // Both endpoints fail; at most half of them may be ejected, so one always serves.
    let (a, b) = (Steered::start("a").await, Steered::start("b").await);
    a.set_status(500);
    b.set_status(500);
    let proxy = Proxy::start(&config(
        &[&a, &b],
        r#"outlier = { consecutive_failures = 3, base_ejection = "1m", max_ejection = "1m", max_ejected_percent = 50 }"#,
    ))
    .await;
    let client = h1();
    for _ in 0..20 {
        // Never "no healthy endpoint": the last endpoint is kept, failing or not.
        assert_eq!(
            get(&client, &proxy.url("/")).await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    assert_eq!(proxy.metric(EJECTIONS).await, 1.0);
    let states = endpoint_states(&proxy, "c").await;
    let ejected = states.values().filter(|s| *s == "ejected").count();
    assert_eq!(ejected, 1, "{states:?}");

    // A cluster of one is never emptied either.
    let only = Steered::start("only").await;
    only.set_status(500);
    let proxy = Proxy::start(&config(
        &[&only],
        r#"outlier = { consecutive_failures = 1, base_ejection = "1m", max_ejection = "1m" }"#,
    ))
    .await;
    for _ in 0..5 {
        assert_eq!(get(&client, &proxy.url("/")).await.0, 500);
    }
    assert_eq!(only.hits(), 5);
    assert_eq!(proxy.metric(EJECTIONS).await, 0.0);
}

#[tokio::test]
async fn refused_connections_eject_a_dead_endpoint() {
    const RETRIES: &str = "weft_upstream_connect_retries_total{cluster=\"c\"}";
    let good = Steered::start("good").await;
    let mut dead = Steered::start("dead").await;
    dead.kill().await;
    let outlier =
        r#"outlier = { consecutive_failures = 2, base_ejection = "1m", max_ejection = "1m" }"#;
    let client = h1();
    let statuses = async |proxy: &Proxy| {
        let mut statuses = Vec::new();
        for _ in 0..12 {
            statuses.push(get(&client, &proxy.url("/")).await.0.as_u16());
        }
        statuses
    };

    // Without retries: two refused connections (502), then only the live endpoint
    // answers.
    let proxy = Proxy::start(&config(
        &[&good, &dead],
        &format!("connect_retries = 0\n{outlier}"),
    ))
    .await;
    let seen = statuses(&proxy).await;
    assert_eq!(seen.iter().filter(|s| **s == 502).count(), 2, "{seen:?}");
    assert!(seen[4..].iter().all(|s| *s == 200), "{seen:?}");
    assert_eq!(proxy.metric(EJECTIONS).await, 1.0);
    assert_eq!(endpoint_states(&proxy, "c").await[&dead.addr], "ejected");
    assert_eq!(proxy.metric(RETRIES).await, 0.0);

    // By default a request that could not connect goes on to another endpoint: no
    // client sees the dead one, which is ejected all the same.
    let hits = good.hits();
    let proxy = Proxy::start(&config(&[&good, &dead], outlier)).await;
    let seen = statuses(&proxy).await;
    assert!(seen.iter().all(|s| *s == 200), "{seen:?}");
    assert_eq!(good.hits() - hits, 12);
    assert_eq!(proxy.metric(RETRIES).await, 2.0);
    assert_eq!(proxy.metric(EJECTIONS).await, 1.0);
    assert_eq!(endpoint_states(&proxy, "c").await[&dead.addr], "ejected");
}

#[tokio::test]
async fn health_checks_mark_endpoints_down_and_up() {
    let (a, b) = (Steered::start("a").await, Steered::start("b").await);
    let proxy = Proxy::start(&config(
        &[&a, &b],
        r#"health_check = { path = "/health", interval = "100ms", timeout = "500ms", unhealthy_threshold = 2, healthy_threshold = 2 }"#,
    ))
    .await;
    let client = h1();
    let states = async || endpoint_states(&proxy, "c").await;
    // The checks run on their own, against the configured path.
    assert!(eventually(Duration::from_secs(3), async || a.health_hits() >= 2).await);
    assert_eq!(states().await[&a.addr], "healthy");

    b.set_health(503);
    assert!(
        eventually(Duration::from_secs(3), async || states().await[&b.addr]
            == "down")
        .await,
        "b never went down"
    );
    let before = b.hits();
    for _ in 0..6 {
        let (status, headers, _) = get(&client, &proxy.url("/")).await;
        assert_eq!(
            (status, backend_of(&headers).as_str()),
            (StatusCode::OK, "a")
        );
    }
    assert_eq!(b.hits(), before);

    // Everything down: 503 without trying any endpoint.
    a.set_health(503);
    assert!(
        eventually(Duration::from_secs(3), async || states().await[&a.addr]
            == "down")
        .await
    );
    let (status, _, body) = get(&client, &proxy.url("/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "no healthy endpoint\n");
    assert_eq!(
        proxy
            .metric("weft_requests_total{listener=\"main\",cluster=\"c\",status_class=\"5xx\"}")
            .await,
        1.0
    );
    assert_eq!(proxy.metric(EJECTIONS).await, 2.0);

    // Healthy answers bring them back.
    a.set_health(200);
    b.set_health(200);
    assert!(
        eventually(Duration::from_secs(3), async || {
            let s = states().await;
            s[&a.addr] == "healthy" && s[&b.addr] == "healthy"
        })
        .await
    );
    let before = (a.hits(), b.hits());
    for _ in 0..4 {
        assert_eq!(get(&client, &proxy.url("/")).await.0, 200);
    }
    assert_eq!((a.hits() - before.0, b.hits() - before.1), (2, 2));
}

#[tokio::test]
async fn tcp_health_checks_open_a_connection_and_ask_nothing() {
    let live = Backend::start("live").await;
    let dead = ClosedPort::new();
    let proxy = Proxy::start(&format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
protocol = "tcp"
cluster = "c"

[[clusters]]
name = "c"
endpoints = ["{}", "{}"]
health_check = {{ protocol = "tcp", interval = "100ms", unhealthy_threshold = 1, healthy_threshold = 1 }}
"#,
        live.addr, dead.addr
    ))
    .await;
    let marked = eventually(Duration::from_secs(3), async || {
        let s = endpoint_states(&proxy, "c").await;
        s[&dead.addr] == "down" && s[&live.addr] == "healthy"
    })
    .await;
    assert!(marked, "{:?}", endpoint_states(&proxy, "c").await);
    // The live endpoint saw connections and no request.
    assert!(
        eventually(Duration::from_secs(3), async || {
            live.connections.load(std::sync::atomic::Ordering::Relaxed) >= 2
        })
        .await
    );
    assert_eq!(live.hits(), 0);
    // Every connection through the listener goes to the live one.
    for _ in 0..4 {
        let (status, headers, _) = get(&h1(), &proxy.url("/")).await;
        assert_eq!(
            (status, backend_of(&headers).as_str()),
            (StatusCode::OK, "live")
        );
    }
}

#[tokio::test]
async fn health_check_on_a_failing_path_leaves_no_healthy_endpoint() {
    let backend = Backend::start("b1").await;
    let proxy = Proxy::start(&main_to_cluster(
        &[backend.addr],
        r#"health_check = { path = "/status/503", interval = "100ms", unhealthy_threshold = 2 }"#,
    ))
    .await;
    let client = h1();
    let gone = eventually(Duration::from_secs(3), async || {
        get(&client, &proxy.url("/")).await.0 == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert!(gone, "the endpoint was never marked down");
    let (_, _, body) = get(&client, &proxy.url("/")).await;
    assert_eq!(body, "no healthy endpoint\n");
    assert_eq!(proxy.metric(EJECTIONS).await, 1.0);
}

#[tokio::test]
async fn a_request_that_cannot_connect_tries_connect_retries_other_endpoints_at_most() {
    let closed: Vec<_> = (0..4).map(|_| ClosedPort::new()).collect();
    let dead: Vec<_> = closed.iter().map(|c| c.addr).collect();
    let cluster = |endpoints: &[std::net::SocketAddr]| {
        main_to_cluster(
            endpoints,
            "connect_retries = 2\noutlier = { consecutive_failures = 0 }",
        )
    };
    let counts = async |proxy: &Proxy| {
        (
            proxy
                .metric("weft_upstream_connect_errors_total{cluster=\"c\"}")
                .await,
            proxy
                .metric("weft_upstream_connect_retries_total{cluster=\"c\"}")
                .await,
        )
    };
    // Four dead endpoints: the one chosen and two more are tried, then the client
    // hears why.
    let proxy = Proxy::start(&cluster(&dead)).await;
    let (status, _, body) = get(&h1(), &proxy.url("/")).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::BAD_GATEWAY, &b"upstream connect error\n"[..])
    );
    assert_eq!(counts(&proxy).await, (3.0, 2.0));
    // One endpoint: nothing else to try.
    let proxy = Proxy::start(&cluster(&dead[..1])).await;
    assert_eq!(get(&h1(), &proxy.url("/")).await.0, StatusCode::BAD_GATEWAY);
    assert_eq!(counts(&proxy).await, (1.0, 0.0));
}
