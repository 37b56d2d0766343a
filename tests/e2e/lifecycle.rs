//! Graceful shutdown of the `weft` binary on SIGTERM and SIGINT: requests in flight
//! finish, new connections are refused, and the process exits 0 by its deadline.

use std::time::{Duration, Instant};

use http::StatusCode;

use crate::ops_support::*;
use crate::support::*;

async fn drains_then_exits_on(signal: i32) {
    let backend = Backend::start("b1").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_file(
        dir.path(),
        "weft.toml",
        &format!("{}{}", preamble(dir.path()), one_cluster(backend.addr)),
    );
    let mut child = Child::spawn(&["run", "--config", cfg.to_str().unwrap()]).await;
    let addr = child.listener_addr("main");
    let admin = child.admin_addr();
    let slow: Vec<_> = [h1(), h2()]
        .into_iter()
        .map(|c| spawn_get(c, format!("http://{addr}/sleep/1500")))
        .collect();
    assert!(eventually(Duration::from_secs(5), async || backend.hits() == 2).await);

    let signaled = Instant::now();
    child.signal(signal);
    assert!(
        eventually(Duration::from_secs(5), async || refuses_connections(addr)
            .await)
        .await,
        "still accepting connections after the signal"
    );
    let (status, _, _) = get(&h1(), &format!("http://{admin}/ready")).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "ready while draining"
    );
    assert!(
        slow.iter().all(|t| !t.is_finished()),
        "the requests in flight ended before the listener closed"
    );

    for t in slow {
        assert_eq!(
            t.await.unwrap(),
            Ok((StatusCode::OK, "b1".to_string(), "slept".to_string())),
            "a request in flight at the signal did not complete"
        );
    }
    let status = exits_within(&mut child.child, Duration::from_secs(10))
        .await
        .expect("weft did not exit after draining");
    assert!(status.success(), "exit status {status:?}");
    // The preamble's shutdown_timeout is 5s; draining took about the slow requests' time.
    assert!(
        signaled.elapsed() < Duration::from_secs(5),
        "exited after {:?}",
        signaled.elapsed()
    );
    // The log reader may still be catching up with the exited process.
    assert!(
        eventually(Duration::from_secs(5), async || child
            .logged("all connections drained"))
        .await,
        "{:?}",
        child.lines.lock().unwrap()
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_0() {
    drains_then_exits_on(libc::SIGTERM).await;
}

#[tokio::test]
async fn sigint_drains_in_flight_requests_then_exits_0() {
    drains_then_exits_on(libc::SIGINT).await;
}

/// A `weft run` in front of one backend, with this shutdown deadline.
async fn proxy_with_deadline(shutdown_timeout: &str) -> (Backend, tempfile::TempDir, Child) {
    proxy_with_runtime(shutdown_timeout, "").await
}

/// A `weft run` in front of one backend, with this shutdown deadline and more
/// `[runtime]` lines.
async fn proxy_with_runtime(
    shutdown_timeout: &str,
    runtime: &str,
) -> (Backend, tempfile::TempDir, Child) {
    let backend = Backend::start("b1").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_file(
        dir.path(),
        "weft.toml",
        &format!(
            "{}{runtime}{}",
            preamble_with(dir.path(), false, shutdown_timeout),
            one_cluster(backend.addr)
        ),
    );
    let child = Child::spawn(&["run", "--config", cfg.to_str().unwrap()]).await;
    (backend, dir, child)
}

#[tokio::test]
async fn shutdown_deadline_cuts_off_slow_requests() {
    let (backend, _dir, mut child) = proxy_with_deadline("300ms").await;
    let addr = child.listener_addr("main");
    let slow = spawn_get(h1(), format!("http://{addr}/sleep/5000"));
    assert!(eventually(Duration::from_secs(5), async || backend.hits() == 1).await);

    let signaled = Instant::now();
    child.signal(libc::SIGTERM);
    let status = exits_within(&mut child.child, Duration::from_secs(4))
        .await
        .expect("weft waited for the slow request past its shutdown deadline");
    let took = signaled.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "exited {took:?} after the signal"
    );
    // The log reader may still be catching up with the exited process.
    assert!(
        eventually(Duration::from_secs(5), async || child
            .logged("shutdown deadline reached"))
        .await,
        "{:?}",
        child.lines.lock().unwrap()
    );
    let cut = slow.await.unwrap();
    assert!(
        !matches!(cut, Ok((StatusCode::OK, ..))),
        "the slow request cannot have completed: {cut:?}"
    );
}

/// A keep-alive connection with nothing in flight is closed as soon as shutdown
/// begins (its task is told, not left to notice at its next request or timeout),
/// and the process exits without waiting for its deadline.
#[tokio::test]
async fn shutdown_closes_idle_connections_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (_backend, _dir, mut child) = proxy_with_deadline("20s").await;
    let addr = child.listener_addr("main");
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nhost: idle\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.ends_with(b"b1") {
        let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
            .await
            .expect("no response")
            .unwrap();
        assert!(n > 0, "closed before the response: {seen:?}");
        seen.extend_from_slice(&buf[..n]);
    }
    // Let the connection settle into waiting for its next request.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let signaled = Instant::now();
    child.signal(libc::SIGTERM);
    let n = tokio::time::timeout(Duration::from_secs(3), idle.read(&mut buf))
        .await
        .expect("the idle connection was not closed at shutdown")
        .unwrap_or(0);
    assert_eq!(n, 0, "expected the connection closed, got {:?}", &buf[..n]);
    let status = exits_within(&mut child.child, Duration::from_secs(5))
        .await
        .expect("weft did not exit after closing its idle connection");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        signaled.elapsed() < Duration::from_secs(3),
        "exited {:?} after the signal",
        signaled.elapsed()
    );
}

/// A `weft run` in front of one backend, with `shutdown_delay = delay`.
async fn proxy_with_delay(delay: &str) -> (Backend, tempfile::TempDir, Child) {
    proxy_with_runtime("5s", &format!("shutdown_delay = \"{delay}\"\n")).await
}

/// Whether the admin endpoint's `/ready` turns 503 within two seconds.
async fn turns_unready(admin: std::net::SocketAddr) -> bool {
    eventually(Duration::from_secs(2), async || {
        get(&h1(), &format!("http://{admin}/ready")).await.0 == StatusCode::SERVICE_UNAVAILABLE
    })
    .await
}

/// Writes one HTTP/1.1 request for `/` on `conn` and reads until `until` is read
/// or the connection closes; what was read.
async fn exchange(conn: &mut tokio::net::TcpStream, until: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(b"GET / HTTP/1.1\r\nhost: leaving\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.ends_with(until) {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("no response")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    seen
}

/// With `shutdown_delay`, SIGTERM first makes the proxy unready while it goes on
/// accepting and serving, each connection closing once it has answered (so clients
/// move elsewhere while the orchestrator stops sending them); only then do the
/// listeners stop and the usual drain begin.
#[tokio::test]
async fn a_shutdown_delay_keeps_serving_while_it_sends_clients_away() {
    let (_backend, _dir, mut child) = proxy_with_delay("3s").await;
    let (addr, admin) = (child.listener_addr("main"), child.admin_addr());
    let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
    let first = exchange(&mut kept, b"b1").await;
    assert!(first.starts_with(b"HTTP/1.1 200"), "{first:?}");
    // Let it settle into waiting for its next request.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let signaled = Instant::now();
    child.signal(libc::SIGTERM);
    assert!(turns_unready(admin).await, "still ready after the signal");
    // The kept-alive connection, idle, is closed.
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), async {
        use tokio::io::AsyncReadExt;
        kept.read(&mut buf).await.unwrap_or(0)
    })
    .await
    .expect("an idle connection was kept open in the shutdown delay");
    assert_eq!(n, 0);
    // A new connection is still accepted and answered, told to close, and closed.
    let mut late = tokio::net::TcpStream::connect(addr).await.unwrap();
    let answer = String::from_utf8_lossy(&exchange(&mut late, b"\0").await).to_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(
        answer.ends_with("hello from b1"),
        "not closed after its answer: {answer}"
    );
    assert!(
        signaled.elapsed() < Duration::from_secs(3),
        "the checks above took the whole delay"
    );

    // After the delay, the listener stops and the process exits.
    assert!(
        eventually(Duration::from_secs(10), async || refuses_connections(addr)
            .await)
        .await,
        "still accepting connections long after the delay"
    );
    let status = exits_within(&mut child.child, Duration::from_secs(10))
        .await
        .expect("weft did not exit after its delay");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        signaled.elapsed() >= Duration::from_secs(3),
        "exited {:?} after the signal, before its delay",
        signaled.elapsed()
    );
}

#[tokio::test]
async fn a_second_signal_cuts_the_shutdown_delay_short() {
    let (_backend, _dir, mut child) = proxy_with_delay("60s").await;
    let admin = child.admin_addr();
    child.signal(libc::SIGTERM);
    assert!(turns_unready(admin).await, "still ready after the signal");
    child.signal(libc::SIGINT);
    let status = exits_within(&mut child.child, Duration::from_secs(10))
        .await
        .expect("weft waited out its delay after a second signal");
    assert!(status.success(), "exit status {status:?}");
}

/// Access lines are held for up to a tenth of a second before they are written;
/// those held when the process is told to stop are written before it exits.
#[tokio::test]
async fn access_lines_held_at_shutdown_are_written_before_exit() {
    let (_backend, _dir, mut child) = proxy_with_deadline("5s").await;
    let addr = child.listener_addr("main");
    let client = h1();
    for _ in 0..20 {
        assert_eq!(
            get(&client, &format!("http://{addr}/")).await.0,
            StatusCode::OK
        );
    }
    child.signal(libc::SIGTERM);
    let status = exits_within(&mut child.child, Duration::from_secs(10))
        .await
        .expect("weft did not exit");
    assert!(status.success(), "exit status {status:?}");
    let access_lines = || {
        let lines = child.lines.lock().unwrap();
        lines
            .iter()
            .filter(|l| l.contains("\"target\":\"weft::access\""))
            .count()
    };
    // The log reader may still be catching up with the exited process.
    let all = eventually(Duration::from_secs(5), async || access_lines() == 20).await;
    assert!(all, "{} access lines of 20", access_lines());
}

/// The thread that writes access lines out wakes only when lines are held: an idle
/// proxy's does not wake (ten times a second it would, polling).
#[tokio::test]
async fn the_access_log_writer_sleeps_while_the_proxy_is_idle() {
    let (_backend, _dir, child) = proxy_with_deadline("5s").await;
    let url = format!("http://{}/", child.listener_addr("main"));
    assert_eq!(get(&h1(), &url).await.0, StatusCode::OK);
    let pid = child.pid();
    let wakeups = || thread_wakeups(pid, "weft-log");
    // Started by the first line, which it writes out.
    let written = eventually(Duration::from_secs(5), async || {
        wakeups().is_some() && child.logged("\"target\":\"weft::access\"")
    })
    .await;
    assert!(written, "the first access line was not written");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = wakeups().unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        wakeups().unwrap() - before <= 1,
        "the idle proxy's log writer kept waking"
    );
    // A new line wakes it again.
    assert_eq!(get(&h1(), &url).await.0, StatusCode::OK);
    let lines = || {
        let lines = child.lines.lock().unwrap();
        lines
            .iter()
            .filter(|l| l.contains("\"target\":\"weft::access\""))
            .count()
    };
    assert!(eventually(Duration::from_secs(5), async || lines() == 2).await);
}
