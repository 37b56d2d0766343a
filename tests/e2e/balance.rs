//! Load balancing over real backends: round robin, least request (peak EWMA with
//! power of two choices) and consistent hashing on a header.

use std::collections::HashMap;
use std::time::Duration;

use http::Request;

use crate::support::*;

/// A listener "main" in front of cluster "c" with `endpoints` and extra cluster lines.
fn config(endpoints: &[&Steered], cluster_extra: &str) -> String {
    let addrs: Vec<_> = endpoints.iter().map(|b| b.addr).collect();
    main_to_cluster(&addrs, cluster_extra)
}

#[tokio::test]
async fn round_robin_spreads_evenly() {
    let (a, b, c) = (
        Steered::start("a").await,
        Steered::start("b").await,
        Steered::start("c").await,
    );
    let proxy = Proxy::start(&config(&[&a, &b, &c], "")).await;
    let client = h1();
    let mut order = Vec::new();
    for _ in 0..30 {
        let (status, headers, _) = get(&client, &proxy.url("/")).await;
        assert_eq!(status, 200);
        order.push(backend_of(&headers));
    }
    assert_eq!((a.hits(), b.hits(), c.hits()), (10, 10, 10));
    // Strict rotation: each window of three requests visits every backend once.
    for w in order.chunks(3) {
        let mut w = w.to_vec();
        w.sort();
        assert_eq!(w, ["a", "b", "c"], "{order:?}");
    }
}

/// A listener "main" in front of cluster "c" whose endpoints weigh `weights`.
fn weighted(endpoints: &[(&Steered, u32)], cluster_extra: &str) -> String {
    let list: Vec<String> = endpoints
        .iter()
        .map(|(b, w)| format!("{{ address = \"{}\", weight = {w} }}", b.addr))
        .collect();
    format!(
        "[[listeners]]\nname = \"main\"\naddress = \"127.0.0.1:0\"\ncluster = \"c\"\n\n\
         [[clusters]]\nname = \"c\"\nendpoints = [{}]\n{cluster_extra}\n",
        list.join(", ")
    )
}

#[tokio::test]
async fn weighted_round_robin_gives_each_endpoint_its_share_interleaved() {
    let (mut a, b, c) = (
        Steered::start("a").await,
        Steered::start("b").await,
        Steered::start("c").await,
    );
    let proxy = Proxy::start(&weighted(&[(&a, 5), (&b, 2), (&c, 1)], "")).await;
    let client = h1();
    let mut order = Vec::new();
    for _ in 0..80 {
        let (status, headers, _) = get(&client, &proxy.url("/")).await;
        assert_eq!(status, 200);
        order.push(backend_of(&headers));
    }
    assert_eq!((a.hits(), b.hits(), c.hits()), (50, 20, 10));
    // Every eight requests in turn hold each endpoint's exact share, and the heavy
    // one never gets more than two in a row.
    for w in order.chunks(8) {
        let count = |name: &str| w.iter().filter(|b| *b == name).count();
        assert_eq!((count("a"), count("b"), count("c")), (5, 2, 1), "{order:?}");
    }
    let longest = order.chunk_by(|x, y| x == y).map(<[_]>::len).max();
    assert!(longest <= Some(2), "{order:?}");

    // The heavy one gone, the others share what is left by their weights.
    a.kill().await;
    for _ in 0..40 {
        // The first request to find it dead gets a 502 that ejects it.
        get(&client, &proxy.url("/")).await;
    }
    let (b_hits, c_hits) = (b.hits() - 20, c.hits() - 10);
    assert!(b_hits + c_hits >= 39, "b {b_hits}, c {c_hits}");
    assert!(b_hits > c_hits, "b {b_hits}, c {c_hits}");
}

#[tokio::test]
async fn consistent_hash_gives_a_heavier_endpoint_more_keys() {
    let (a, b) = (Steered::start("a").await, Steered::start("b").await);
    let proxy = Proxy::start(&weighted(
        &[(&a, 1), (&b, 4)],
        r#"balance = { policy = "consistent_hash", hash_header = "x-user" }"#,
    ))
    .await;
    let client = h1();
    for i in 0..200 {
        let req = Request::get(proxy.url("/"))
            .header("x-user", format!("user-{i}"))
            .body(empty())
            .unwrap();
        assert_eq!(send(&client, req).await.0, 200);
    }
    // 4/5 of the ring's points are b's (the addresses, and so the points, change
    // with every run's ports).
    let share = b.hits() as f64 / 200.0;
    assert!(
        (0.65..0.92).contains(&share),
        "a {}, b {}",
        a.hits(),
        b.hits()
    );
}

#[tokio::test]
async fn least_request_prefers_the_fast_backend() {
    let (fast, slow) = (Steered::start("fast").await, Steered::start("slow").await);
    slow.set_delay(Duration::from_millis(100));
    let proxy = Proxy::start(&config(
        &[&fast, &slow],
        "balance = { policy = \"least_request\", ewma_decay = \"100ms\" }",
    ))
    .await;
    let client = h1();
    // Eight clients at once, ten requests each.
    let workers = (0..8).map(|_| {
        let (client, url) = (client.clone(), proxy.url("/"));
        tokio::spawn(async move {
            for _ in 0..10 {
                assert_eq!(get(&client, &url).await.0, 200);
            }
        })
    });
    for w in futures_util::future::join_all(workers).await {
        w.unwrap();
    }
    let (f, s) = (fast.hits(), slow.hits());
    assert_eq!(f + s, 80);
    // Round robin would give the slow one 40; it may only get what the first
    // burst sends before any latency is known, and a few probes.
    assert!(f >= 4 * s, "fast {f}, slow {s}");
}

#[tokio::test]
async fn consistent_hash_is_sticky_and_moves_only_the_keys_of_a_dead_backend() {
    let mut backends = [
        Steered::start("a").await,
        Steered::start("b").await,
        Steered::start("c").await,
    ];
    let refs: Vec<&Steered> = backends.iter().collect();
    // One failure ejects for long enough that the dead backend stays out.
    let proxy = Proxy::start(&config(
        &refs,
        r#"balance = { policy = "consistent_hash", hash_header = "x-user" }
outlier = { consecutive_failures = 1, base_ejection = "1m", max_ejection = "1m" }"#,
    ))
    .await;
    let client = h1();
    let ask = async |key: &str| {
        let req = Request::get(proxy.url("/"))
            .header("x-user", key)
            .body(empty())
            .unwrap();
        let (status, headers, _) = send(&client, req).await;
        (status, backend_of(&headers))
    };
    let keys: Vec<String> = (0..60).map(|i| format!("user-{i}")).collect();
    let mut owner = HashMap::new();
    for key in &keys {
        let (status, first) = ask(key).await;
        assert_eq!(status, 200);
        for _ in 0..3 {
            assert_eq!(
                ask(key).await,
                (http::StatusCode::OK, first.clone()),
                "{key}"
            );
        }
        owner.insert(key.clone(), first);
    }
    let mut per_backend: HashMap<&str, usize> = HashMap::new();
    for b in owner.values() {
        *per_backend.entry(b.as_str()).or_default() += 1;
    }
    assert_eq!(
        per_backend.len(),
        3,
        "keys spread over every backend: {per_backend:?}"
    );

    // Kill the backend of the first key.
    let dead = owner["user-0"].clone();
    backends
        .iter_mut()
        .find(|b| b.name == dead)
        .unwrap()
        .kill()
        .await;
    for key in &keys {
        let (mut status, mut now) = ask(key).await;
        if owner[key] == dead {
            // The first request after the death may still be sent there (502),
            // which ejects it; after that the key lives elsewhere.
            if status != 200 {
                assert_eq!(status, 502, "{key}");
                (status, now) = ask(key).await;
            }
            assert_eq!(status, 200, "{key}");
            assert_ne!(now, dead, "{key} moved off the dead backend");
            // And stays where it moved.
            assert_eq!(ask(key).await, (http::StatusCode::OK, now.clone()), "{key}");
        } else {
            assert_eq!(
                (status, now),
                (http::StatusCode::OK, owner[key].clone()),
                "{key} was not on the dead backend and must not move"
            );
        }
    }
    assert_eq!(
        proxy
            .metric("weft_endpoint_ejections_total{cluster=\"c\"}")
            .await,
        1.0
    );
}
