//! Config reload: under load, with requests in flight, refused configs, SIGHUP, file
//! watching, listeners added and removed, and cluster state kept across reloads.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft::app::{App, ConfigSource};
use weft::telemetry::metrics::{Outcome, OutcomeLabels};

use crate::ops_support::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_loses_no_request() {
    // The route moves between two clusters that both stay.
    under_load(two_clusters).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_replacing_the_cluster_loses_no_request() {
    // The one cluster is rebuilt with the other endpoint: every reload drops a
    // cluster (and its pool) that requests in flight may still be using.
    under_load(|target, a, b| one_cluster(if target == "a" { a } else { b })).await;
}

/// Reloads 50 times, moving traffic between backends "a" and "b" with
/// `config(target, a, b)`, while HTTP/1.1 and HTTP/2 clients send requests
/// without a pause; none may fail, and each reload must move new requests.
async fn under_load(config: impl Fn(&str, SocketAddr, SocketAddr) -> String) {
    const RELOADS: usize = 50;
    const WORKERS: usize = 8;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&config("a", a.addr, b.addr)).await;
    let url = proxy.url("/");

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let workers: Vec<_> = (0..WORKERS)
        .map(|i| {
            // Half keep one HTTP/1.1 connection alive, half multiplex over HTTP/2.
            let client = if i % 2 == 0 { h1() } else { h2() };
            let (stop, answered, failures, url) = (
                stop.clone(),
                answered.clone(),
                failures.clone(),
                url.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match answering_backend(&client, &url).await {
                        Ok(b) if b == "a" || b == "b" => {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(other) => failures
                            .lock()
                            .unwrap()
                            .push(format!("unknown backend {other:?}")),
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                }
            })
        })
        .collect();

    // Connections opened before the first reload, kept across all of them.
    let (check_h1, check_h2) = (h1(), h2());
    for i in 0..RELOADS {
        let target = if i % 2 == 0 { "b" } else { "a" };
        proxy.write_config(&config(target, a.addr, b.addr));
        let before = answered.load(Ordering::Relaxed);
        let (status, body) = reload(&proxy).await;
        assert_eq!(status, StatusCode::OK, "reload {i}: {body}");
        for c in [&check_h1, &check_h2] {
            assert_eq!(
                answering_backend(c, &url).await.as_deref(),
                Ok(target),
                "a request after reload {i} used an old config"
            );
        }
        // Keep the load running across every reload.
        let moved_on = eventually(Duration::from_secs(10), async || {
            answered.load(Ordering::Relaxed) >= before + 2 * WORKERS
        })
        .await;
        assert!(moved_on, "the load stalled after reload {i}");
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let failures = std::mem::take(&mut *failures.lock().unwrap());
    assert!(
        failures.is_empty(),
        "{} failed requests, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(answered.load(Ordering::Relaxed) >= RELOADS * 2 * WORKERS);
    assert!(
        a.hits() > RELOADS && b.hits() > RELOADS,
        "a {} b {}",
        a.hits(),
        b.hits()
    );
    assert_eq!(
        proxy
            .metric("weft_config_reloads_total{outcome=\"applied\"}")
            .await,
        RELOADS as f64
    );
}

#[tokio::test]
async fn in_flight_requests_finish_on_the_old_config() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    // The cluster keeps its name but gets another endpoint: the old cluster object
    // leaves the snapshot while requests still use it.
    let proxy = Proxy::start(&one_cluster(a.addr)).await;
    let slow_url = proxy.url("/sleep/1000");
    let slow_h1 = spawn_get(h1(), slow_url.clone());
    let slow_h2 = spawn_get(h2(), slow_url);
    assert!(eventually(Duration::from_secs(5), async || a.hits() == 2).await);

    proxy.write_config(&one_cluster(b.addr));
    let (status, body) = reload(&proxy).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        !slow_h1.is_finished() && !slow_h2.is_finished(),
        "the reload waited for the requests in flight"
    );
    for c in [h1(), h2()] {
        assert_eq!(
            answering_backend(&c, &proxy.url("/")).await.as_deref(),
            Ok("b")
        );
    }
    for slow in [slow_h1, slow_h2] {
        let (status, backend, body) = slow.await.unwrap().expect("the slow request failed");
        assert_eq!(
            (status, backend.as_str(), body.as_str()),
            (StatusCode::OK, "a", "slept")
        );
    }
    assert_eq!(a.hits(), 2, "nothing new reached the old endpoint");
}

#[tokio::test]
async fn refused_config_names_its_fault_and_the_old_one_keeps_serving() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let good = two_clusters("a", a.addr, b.addr);
    let proxy = Proxy::start(&good).await;
    let file = proxy.config_path.display().to_string();
    let bad_tls = good.replace(
        "cluster = \"a\"\n",
        "cluster = \"b\"\n[listeners.tls]\ncertificates = [{ cert = \"missing.crt\", key = \"missing.key\" }]\n",
    );
    let cases = [
        (
            two_clusters("nope", a.addr, b.addr),
            "listeners[0].cluster",
            "unknown cluster \"nope\" (defined: a, b)",
        ),
        (
            format!("{good}bogus = 1\n"),
            "clusters[1]",
            "unknown field `bogus`",
        ),
        (
            good.replace("127.0.0.1:0", "nonsense"),
            "listeners[0].address",
            "invalid socket address",
        ),
        (bad_tls, "listeners[0].tls.certificates[0]", "missing.crt"),
    ];
    for (n, (config, field, reason)) in cases.iter().enumerate() {
        proxy.write_config(config);
        let (status, body) = reload(&proxy).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body.starts_with("reload refused: "), "{body}");
        assert!(
            body.contains(&format!("{file}: {field}")),
            "no {file}: {field} in {body}"
        );
        assert!(body.contains(reason), "no {reason:?} in {body}");
        assert_eq!(
            answering_backend(&h1(), &proxy.url("/")).await.as_deref(),
            Ok("a")
        );
        assert_eq!(
            proxy
                .metric("weft_config_reloads_total{outcome=\"refused\"}")
                .await,
            (n + 1) as f64
        );
    }
    assert_eq!(
        proxy
            .metric("weft_config_reloads_total{outcome=\"applied\"}")
            .await,
        0.0
    );
    let (_, _, config) = get(&h1(), &proxy.admin_url("/config")).await;
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(config["generation"], 1);
    // A good config is taken again after refused ones.
    proxy.write_config(&two_clusters("b", a.addr, b.addr));
    assert_eq!(reload(&proxy).await.0, StatusCode::OK);
    assert_eq!(
        answering_backend(&h1(), &proxy.url("/")).await.as_deref(),
        Ok("b")
    );
}

#[tokio::test]
async fn sighup_reloads_the_binary() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let write = |target: &str| {
        write_file(
            dir.path(),
            "weft.toml",
            &format!(
                "{}{}",
                preamble(dir.path()),
                two_clusters(target, a.addr, b.addr)
            ),
        )
    };
    let cfg = write("a");
    let child = Child::spawn(&["run", "--config", cfg.to_str().unwrap()]).await;
    let url = format!("http://{}/", child.listener_addr("main"));
    let client = h1();
    assert_eq!(answering_backend(&client, &url).await.as_deref(), Ok("a"));
    write("b");
    // The preamble turns file watching off: nothing changes until the signal.
    assert_eq!(answering_backend(&client, &url).await.as_deref(), Ok("a"));
    child.signal(libc::SIGHUP);
    let moved = eventually(Duration::from_secs(10), async || {
        answering_backend(&client, &url).await.as_deref() == Ok("b")
    })
    .await;
    assert!(
        moved,
        "SIGHUP did not reload: {:?}",
        child.lines.lock().unwrap()
    );
    assert!(
        eventually(Duration::from_secs(5), async || child
            .logged("config reloaded"))
        .await
    );
}

#[tokio::test]
async fn changed_file_is_reloaded_when_watched() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let text = |target: &str| {
        format!(
            "{}{}",
            preamble_with(dir.path(), true, "5s"),
            two_clusters(target, a.addr, b.addr)
        )
    };
    let cfg = write_file(dir.path(), "weft.toml", &text("a"));
    let app = App::start(ConfigSource::File(cfg.clone())).await.unwrap();
    // Written in place, at once: a change made as soon as the proxy is ready counts.
    std::fs::write(&cfg, text("b")).unwrap();
    let url = format!("http://{}/", app.listener_addr("main").unwrap());
    let client = h1();
    let moved = eventually(Duration::from_secs(10), async || {
        answering_backend(&client, &url).await.as_deref() == Ok("b")
    })
    .await;
    assert!(moved, "an edited config file was not reloaded");

    // Replaced by a rename, as editors and deploy tools do.
    let tmp = write_file(dir.path(), ".weft.toml.new", &text("a"));
    std::fs::rename(&tmp, &cfg).unwrap();
    let moved = eventually(Duration::from_secs(10), async || {
        answering_backend(&client, &url).await.as_deref() == Ok("a")
    })
    .await;
    assert!(moved, "a config file replaced by rename was not reloaded");
    let reloads = |outcome| {
        app.runtime
            .metrics
            .reloads
            .get_or_create(&OutcomeLabels { outcome })
            .get()
    };
    // A burst of events may make more than one reload, but never of a half-written file.
    assert!(reloads(Outcome::applied) >= 2);
    assert_eq!(reloads(Outcome::refused), 0);
}

#[tokio::test]
async fn a_config_mounted_from_a_kubernetes_volume_is_reloaded_when_the_volume_is_updated() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("config");
    std::fs::create_dir(&volume).unwrap();
    let text = |target: &str| {
        format!(
            "{}{}",
            preamble_with(dir.path(), true, "5s"),
            two_clusters(target, a.addr, b.addr)
        )
    };
    kubernetes_volume_update(&volume, "2026_11_28_1", &[("weft.toml", &text("a"))]);
    let app = App::start(ConfigSource::File(volume.join("weft.toml")))
        .await
        .unwrap();
    let url = format!("http://{}/", app.listener_addr("main").unwrap());
    let client = h1();
    assert_eq!(answering_backend(&client, &url).await.as_deref(), Ok("a"));

    kubernetes_volume_update(&volume, "2026_11_28_2", &[("weft.toml", &text("b"))]);
    let moved = eventually(Duration::from_secs(10), async || {
        answering_backend(&client, &url).await.as_deref() == Ok("b")
    })
    .await;
    assert!(
        moved,
        "a config updated through the volume's ..data link was not reloaded"
    );

    // A file written next to the config that the config does not name changes nothing.
    let applied = || {
        app.runtime
            .metrics
            .reloads
            .get_or_create(&OutcomeLabels {
                outcome: Outcome::applied,
            })
            .get()
    };
    let before = applied();
    std::fs::write(volume.join("notes.txt"), "not the config").unwrap();
    tokio::time::sleep(weft::app::RELOAD_DEBOUNCE * 3).await;
    assert_eq!(
        applied(),
        before,
        "a file the config does not name caused a reload"
    );
    assert_eq!(answering_backend(&client, &url).await.as_deref(), Ok("b"));
}

#[tokio::test]
async fn a_reload_can_turn_file_watching_on() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    // Started with watch_config = false (the preamble).
    let proxy = Proxy::start(&two_clusters("a", a.addr, b.addr)).await;
    let watched = |target: &str| {
        std::fs::write(
            &proxy.config_path,
            format!(
                "{}{}",
                preamble_with(proxy.dir.path(), true, "5s"),
                two_clusters(target, a.addr, b.addr)
            ),
        )
        .unwrap()
    };
    watched("b");
    assert_eq!(reload(&proxy).await.0, StatusCode::OK);
    let client = h1();
    let url = proxy.url("/");
    assert_eq!(answering_backend(&client, &url).await.as_deref(), Ok("b"));
    watched("a");
    let moved = eventually(Duration::from_secs(10), async || {
        answering_backend(&client, &url).await.as_deref() == Ok("a")
    })
    .await;
    assert!(
        moved,
        "watch_config = true, applied by a reload, was ignored"
    );
}

fn listeners(backend: SocketAddr, extra: &[(&str, String)]) -> String {
    let mut text = format!(
        "[[clusters]]\nname = \"a\"\nendpoints = [\"{backend}\"]\n\n[[listeners]]\nname = \"main\"\naddress = \"127.0.0.1:0\"\ncluster = \"a\"\n"
    );
    for (name, address) in extra {
        text.push_str(&format!(
            "\n[[listeners]]\nname = \"{name}\"\naddress = \"{address}\"\ncluster = \"a\"\n"
        ));
    }
    text
}

#[tokio::test]
async fn listeners_are_bound_and_released_by_reload() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&listeners(a.addr, &[])).await;

    // Added: bound and serving.
    proxy.write_config(&listeners(a.addr, &[("extra", "127.0.0.1:0".into())]));
    let (status, body) = reload(&proxy).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let extra = proxy.addr("extra");
    assert_eq!(
        answering_backend(&h1(), &format!("http://{extra}/"))
            .await
            .as_deref(),
        Ok("a")
    );

    // A keep-alive connection with a request in flight when the listener goes.
    let mut conn = tokio::net::TcpStream::connect(extra).await.unwrap();
    conn.write_all(b"GET /sleep/800 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let hits = a.hits();
    assert!(eventually(Duration::from_secs(5), async || a.hits() > hits).await);

    // Removed: stops accepting; the request in flight is answered and the
    // connection then closed, so the client does not keep using a removed listener.
    proxy.write_config(&listeners(a.addr, &[]));
    let (status, body) = reload(&proxy).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(proxy.app.listener_addr("extra").is_none());
    assert!(
        eventually(Duration::from_secs(5), async || refuses_connections(extra)
            .await)
        .await,
        "a removed listener still accepts connections"
    );
    let mut answer = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_string(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the connection of a removed listener stayed open: {answer:?}"
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("slept"), "{answer}");

    // A listener that cannot bind refuses the whole config, other new listeners included.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    proxy.write_config(&listeners(
        a.addr,
        &[
            ("fresh", "127.0.0.1:0".into()),
            ("taken", taken_addr.to_string()),
        ],
    ));
    let (status, body) = reload(&proxy).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body.contains(&format!("listeners: cannot bind \"taken\" to {taken_addr}")),
        "{body}"
    );
    assert!(proxy.app.listener_addr("fresh").is_none());
    assert!(proxy.app.listener_addr("taken").is_none());
    let (_, _, config) = get(&h1(), &proxy.admin_url("/config")).await;
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(config["generation"], 3, "the refused config was published");
    assert_eq!(config["config"]["listeners"].as_array().unwrap().len(), 1);
    assert_eq!(
        answering_backend(&h1(), &proxy.url("/")).await.as_deref(),
        Ok("a")
    );
}

/// Two listeners, each at its address and sending to its own backend.
fn named_listeners(listeners: &[(&str, String, &str)], a: &Backend, b: &Backend) -> String {
    let mut text = format!(
        "[[clusters]]\nname = \"a\"\nendpoints = [\"{}\"]\n\n[[clusters]]\nname = \"b\"\nendpoints = [\"{}\"]\n",
        a.addr, b.addr
    );
    for (name, address, cluster) in listeners {
        text.push_str(&format!(
            "\n[[listeners]]\nname = \"{name}\"\naddress = \"{address}\"\ncluster = \"{cluster}\"\n"
        ));
    }
    text
}

/// Writes `named_listeners(listeners, a, b)` and reloads it, which must be accepted.
async fn apply_listeners(
    proxy: &Proxy,
    listeners: &[(&str, String, &str)],
    a: &Backend,
    b: &Backend,
) {
    proxy.write_config(&named_listeners(listeners, a, b));
    let (status, body) = reload(proxy).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// One request on a connection of its own, reporting the backend that answered.
async fn fresh_get(addr: SocketAddr) -> Result<String, String> {
    answering_backend(&h1(), &format!("http://{addr}/")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_trade_addresses_and_take_over_renamed_ones_in_one_reload() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let any = "127.0.0.1:0".to_string();
    let proxy = Proxy::start(&named_listeners(
        &[("one", any.clone(), "a"), ("two", any, "b")],
        &a,
        &b,
    ))
    .await;
    let (p1, p2) = (proxy.addr("one"), proxy.addr("two"));
    assert_eq!(fresh_get(p1).await.as_deref(), Ok("a"));
    assert_eq!(fresh_get(p2).await.as_deref(), Ok("b"));

    // An idle keep-alive connection of "one", which is about to move.
    let mut idle = tokio::net::TcpStream::connect(p1).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    idle.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");

    // Clients open a connection per request to both addresses throughout: each
    // socket stays open across the reloads, so none may be refused or fail.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let load: Vec<_> = [p1, p2, p1, p2]
        .into_iter()
        .map(|addr| {
            let (stop, failures) = (stop.clone(), failures.clone());
            tokio::spawn(async move {
                let mut sent = 0;
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = fresh_get(addr).await {
                        failures.lock().unwrap().push(format!("{addr}: {e}"));
                    }
                    sent += 1;
                }
                sent
            })
        })
        .collect();

    // The two listeners trade addresses: binding either anew would fail while the
    // other holds it, so each takes over the other's socket.
    apply_listeners(
        &proxy,
        &[("one", p2.to_string(), "a"), ("two", p1.to_string(), "b")],
        &a,
        &b,
    )
    .await;
    assert_eq!(proxy.app.listener_addr("one"), Some(p2));
    assert_eq!(proxy.app.listener_addr("two"), Some(p1));
    assert_eq!(fresh_get(p1).await.as_deref(), Ok("b"));
    assert_eq!(fresh_get(p2).await.as_deref(), Ok("a"));

    // The connection "one" accepted at its old address belongs to a binding that is
    // gone: it is closed rather than served by whichever listener owns it now.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the moved listener's idle connection stayed open"
    );

    // A rename: "three" takes the socket "two" lets go of.
    apply_listeners(
        &proxy,
        &[("one", p2.to_string(), "a"), ("three", p1.to_string(), "a")],
        &a,
        &b,
    )
    .await;
    assert_eq!(proxy.app.listener_addr("three"), Some(p1));
    assert!(proxy.app.listener_addr("two").is_none());
    assert_eq!(fresh_get(p1).await.as_deref(), Ok("a"));

    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for l in load {
        sent += l.await.unwrap();
    }
    let failures = std::mem::take(&mut *failures.lock().unwrap());
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(sent > 10, "the load barely ran: {sent} requests");

    // A removed listener's socket closes, also after a handover.
    apply_listeners(&proxy, &[("one", p2.to_string(), "a")], &a, &b).await;
    assert!(
        eventually(Duration::from_secs(5), async || refuses_connections(p1)
            .await)
        .await,
        "the socket nobody owns still accepts connections"
    );
    assert_eq!(fresh_get(p2).await.as_deref(), Ok("a"));
}

/// Listening TCP sockets on 127.0.0.1:`port` (from `/proc/net/tcp`).
fn listening_sockets(port: u16) -> usize {
    let local = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A")
        })
        .count()
}

/// `n` requests at once, each on a connection of its own: the backends that answered.
async fn fresh_gets(addr: SocketAddr, n: usize) -> Vec<Result<String, String>> {
    let gets = futures_util::future::join_all((0..n).map(|_| fresh_get(addr)));
    tokio::time::timeout(Duration::from_secs(10), gets)
        .await
        .unwrap_or_else(|_| vec![Err("some connections were never answered".into())])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_accepts_on_its_own_socket_of_every_address() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let any = "127.0.0.1:0".to_string();
    let proxy = Proxy::start_on_workers(
        1,
        &named_listeners(&[("one", any.clone(), "a"), ("two", any, "b")], &a, &b),
    )
    .await;
    let (p1, p2) = (proxy.addr("one"), proxy.addr("two"));
    // One socket per worker (SO_REUSEPORT): the kernel spreads new connections over
    // them, so every connection below lands on one of the two accept queues, and a
    // worker that did not accept would leave some unanswered.
    assert_eq!(listening_sockets(p1.port()), 2);
    assert_eq!(listening_sockets(p2.port()), 2);
    let answers = fresh_gets(p1, 100).await;
    assert!(
        answers.iter().all(|r| r.as_deref() == Ok("a")),
        "{answers:?}"
    );

    // Trading addresses hands both sockets of each address over.
    apply_listeners(
        &proxy,
        &[("one", p2.to_string(), "a"), ("two", p1.to_string(), "b")],
        &a,
        &b,
    )
    .await;
    assert_eq!(listening_sockets(p1.port()), 2);
    let answers = fresh_gets(p1, 100).await;
    assert!(
        answers.iter().all(|r| r.as_deref() == Ok("b")),
        "{answers:?}"
    );
    let answers = fresh_gets(p2, 100).await;
    assert!(
        answers.iter().all(|r| r.as_deref() == Ok("a")),
        "{answers:?}"
    );

    // A removed listener closes every worker's socket.
    apply_listeners(&proxy, &[("one", p2.to_string(), "a")], &a, &b).await;
    assert!(
        eventually(Duration::from_secs(5), async || listening_sockets(
            p1.port()
        ) == 0)
        .await,
        "a worker's socket of the removed listener is still open"
    );
}

#[tokio::test]
async fn unchanged_clusters_keep_their_connections() {
    let a = Backend::start_with("a", Proto::Http1, None).await;
    let b = Backend::start("b").await;
    let config = |via: usize, connect_timeout: &str| {
        format!(
            r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
cluster = "a"
[listeners.forwarding]
via = "hop{via}"

[[clusters]]
name = "a"
endpoints = ["{}"]
connect_timeout = "{connect_timeout}"

[[clusters]]
name = "b"
endpoints = ["{}"]
connect_timeout = "{via}s"
"#,
            a.addr, b.addr
        )
    };
    let proxy = Proxy::start(&config(1, "2s")).await;
    let client = h1();
    assert_eq!(
        answering_backend(&client, &proxy.url("/")).await.as_deref(),
        Ok("a")
    );
    let connections = || a.connections.load(Ordering::Relaxed);
    assert_eq!(connections(), 1);

    // The listener and the other cluster change every time; cluster "a" does not.
    for i in 2..22 {
        proxy.write_config(&config(i, "2s"));
        assert_eq!(reload(&proxy).await.0, StatusCode::OK);
        let (status, headers, _) = get(&client, &proxy.url("/")).await;
        assert_eq!(status, 200);
        assert_eq!(
            headers["via"],
            format!("1.1 hop{i}"),
            "reload {i} not applied"
        );
    }
    assert_eq!(
        connections(),
        1,
        "an unchanged cluster lost its pooled connection on reload"
    );
    let (_, _, clusters) = get(&h1(), &proxy.admin_url("/clusters")).await;
    let clusters: serde_json::Value = serde_json::from_slice(&clusters).unwrap();
    assert_eq!(clusters["clusters"][0]["name"], "a");
    assert_eq!(
        clusters["clusters"][0]["endpoints"][0]["open_connections"],
        1
    );

    // A changed definition is a new cluster with a new pool (which shows that the
    // count above could have grown).
    proxy.write_config(&config(22, "3s"));
    assert_eq!(reload(&proxy).await.0, StatusCode::OK);
    assert_eq!(
        answering_backend(&client, &proxy.url("/")).await.as_deref(),
        Ok("a")
    );
    assert_eq!(connections(), 2);
}

#[tokio::test]
async fn reload_is_refused_with_503_while_draining() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&two_clusters("a", a.addr, b.addr)).await;
    let slow_url = proxy.url("/sleep/2000");
    let slow = tokio::spawn(async move { get(&h1(), &slow_url).await.0 });
    assert!(eventually(Duration::from_secs(5), async || a.hits() == 1).await);

    let app = proxy.app.clone();
    let shutdown = tokio::spawn(async move { app.shutdown().await });
    assert!(eventually(Duration::from_secs(5), async || proxy.app.is_draining()).await);
    proxy.write_config(&two_clusters("b", a.addr, b.addr));
    let (status, body) = reload(&proxy).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body, "reload refused: the proxy is shutting down\n");
    assert!(
        !slow.is_finished(),
        "the reload was not sent during the drain"
    );
    assert_eq!(
        proxy.app.runtime.snapshot().generation,
        1,
        "nothing reloaded"
    );
    // Not a config problem, so not counted as a refused config.
    assert_eq!(
        proxy
            .metric("weft_config_reloads_total{outcome=\"refused\"}")
            .await,
        0.0
    );

    assert_eq!(slow.await.unwrap(), StatusCode::OK);
    assert!(shutdown.await.unwrap(), "the drain did not finish cleanly");
}

#[tokio::test]
async fn start_only_settings_changed_by_a_reload_are_reported_and_logged() {
    let backend = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let cache = |name: &str| dir.path().join(name).display().to_string();
    let write = |workers: usize, cache: &str, instances: u32| {
        write_file(
            dir.path(),
            "weft.toml",
            &format!(
                "[admin]\naddress = \"127.0.0.1:0\"\n[runtime]\nwatch_config = false\nworkers = {workers}\nmodule_cache = \"{cache}\"\nfilter_instances = {instances}\n{}",
                one_cluster(backend.addr)
            ),
        )
    };
    let cfg = write(2, &cache("a"), 20);
    let child = Child::spawn(&["run", "--config", cfg.to_str().unwrap()]).await;
    let reload_url = format!("http://{}/reload", child.admin_addr());

    let (status, body) = admin_post(&reload_url).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "reloaded: generation 2\n")
    );

    write(3, &cache("b"), 50);
    let changed = "reloaded: generation 3\n\
        not applied: runtime.workers is read only at start; restart to apply it\n\
        not applied: runtime.module_cache is read only at start; restart to apply it\n\
        not applied: runtime.filter_instances is read only at start; restart to apply it\n";
    let (status, body) = admin_post(&reload_url).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, changed));
    for field in [
        "runtime.workers",
        "runtime.module_cache",
        "runtime.filter_instances",
    ] {
        let warned = eventually(Duration::from_secs(5), async || {
            child.lines.lock().unwrap().iter().any(|l| {
                l.contains("\"WARN\"")
                    && l.contains(&format!(
                        "{field} changed, but it is read only at start: the new value applies after a restart"
                    ))
            })
        })
        .await;
        assert!(
            warned,
            "no warning for {field}: {:?}",
            child.lines.lock().unwrap()
        );
    }
    // Compared with what the process started with, not with the last reload: the
    // new values are still not in force.
    let (_, body) = admin_post(&reload_url).await;
    assert!(
        body.starts_with("reloaded: generation 4\nnot applied: runtime.workers"),
        "{body}"
    );
    write(2, &cache("a"), 20);
    let (_, body) = admin_post(&reload_url).await;
    assert_eq!(body, "reloaded: generation 5\n");
}
