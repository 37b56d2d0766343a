//! The `weft` command line: `--version`, `check`, `run` and `proxy`.

use std::time::Duration;

use http::{Request, StatusCode};

use crate::ops_support::*;
use crate::support::*;

const GOOD: &str = r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
cluster = "b"

[[clusters]]
name = "b"
endpoints = ["127.0.0.1:9"]
"#;

#[tokio::test]
async fn version_is_printed() {
    let (status, out, _) = run_weft(&["--version"]).await;
    assert!(status.success());
    assert_eq!(out.trim(), format!("weft {}", env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn check_accepts_a_good_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_file(
        dir.path(),
        "good.toml",
        &format!("{}{GOOD}", preamble(dir.path())),
    );
    let (status, out, err) = run_weft(&["check", "--config", cfg.to_str().unwrap()]).await;
    assert!(status.success(), "{err}");
    assert_eq!(
        out.trim(),
        format!(
            "{}: ok (1 listeners, 1 clusters, 0 filters, 0 chains)",
            cfg.display()
        )
    );
}

#[tokio::test]
async fn check_refuses_bad_configs_naming_file_field_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "unknown-field.toml",
            GOOD.replace("cluster = \"b\"", "cluster = \"b\"\nbogus = true"),
            "listeners[0]",
            "unknown field `bogus`",
        ),
        (
            "unknown-cluster.toml",
            GOOD.replace("cluster = \"b\"", "cluster = \"c\""),
            "listeners[0].cluster",
            "unknown cluster \"c\" (defined: b)",
        ),
        (
            "bad-listen.toml",
            GOOD.replace("127.0.0.1:0", "127.0.0.1"),
            "listeners[0].address",
            "invalid socket address",
        ),
        (
            "bad-endpoint.toml",
            GOOD.replace("127.0.0.1:9", "127.0.0.1"),
            "clusters[0].endpoints[0]",
            "\"127.0.0.1\" needs a port",
        ),
        (
            "missing-cert.toml",
            GOOD.replace(
                "cluster = \"b\"",
                "cluster = \"b\"\n[listeners.tls]\ncertificates = [{ cert = \"nowhere.crt\", key = \"nowhere.key\" }]",
            ),
            "listeners[0].tls.certificates[0]",
            &format!(
                "cannot read {}: I/O error: No such file or directory",
                dir.path().join("nowhere.crt").display()
            ),
        ),
    ];
    for (name, text, field, reason) in cases {
        let cfg = write_file(dir.path(), name, &format!("{}{text}", preamble(dir.path())));
        let (status, out, err) = run_weft(&["check", "--config", cfg.to_str().unwrap()]).await;
        assert!(!status.success(), "{name} passed the check: {out}");
        let expected = format!("{}: {field}", cfg.display());
        assert!(err.contains(&expected), "{name}: no {expected:?} in {err}");
        assert!(err.contains(reason), "{name}: no {reason:?} in {err}");
        assert!(!out.contains("ok"), "{name}: {out}");
    }
}

#[tokio::test]
async fn run_with_a_missing_config_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let (status, _, err) = run_weft(&["run", "--config", missing.to_str().unwrap()]).await;
    assert!(!status.success());
    assert!(
        err.contains(&format!(
            "{}: cannot read the file: No such file or directory",
            missing.display()
        )),
        "{err}"
    );
}

#[tokio::test]
async fn proxy_forwards_http1_and_http2_clients() {
    let backend = Backend::start("b1").await;
    let to = format!("http://{}", backend.addr);
    let child = Child::spawn(&[
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
    for c in [h1(), h2()] {
        assert_eq!(answering_backend(&c, &url).await.as_deref(), Ok("b1"));
    }
    // The quickstart's curl lines.
    for (flag, version) in [("--http1.1", "1.1"), ("--http2-prior-knowledge", "2")] {
        let out = tokio::process::Command::new("curl")
            .args(["-s", flag, "-w", "\n%{http_version} %{http_code}", &url])
            .output()
            .await
            .expect("curl");
        let out = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out, format!("hello from b1\n{version} 200"));
    }
    let admin = child.admin_addr();
    let (status, _, body) = get(&h1(), &format!("http://{admin}/ready")).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ready\n"[..]));
}

#[tokio::test]
async fn proxy_terminates_tls_with_a_certificate_from_flags() {
    let backend = Backend::start("b1").await;
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.write(dir.path(), "edge", &pki.leaf(&["edge.test"], &[]));
    let ca = write_file(dir.path(), "ca.pem", &pki.ca_pem);
    let to = format!("http://{}", backend.addr);
    let child = Child::spawn(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &to,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
    .await;
    let addr = child.listener_addr("proxy");
    let resolve = format!("edge.test:{}:127.0.0.1", addr.port());
    let url = format!("https://edge.test:{}/", addr.port());
    // curl verifies the certificate against the CA, and picks the protocol by ALPN.
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let out = tokio::process::Command::new("curl")
            .args([
                "-s",
                flag,
                "--cacert",
                ca.to_str().unwrap(),
                "--resolve",
                &resolve,
            ])
            .args(["-w", "\n%{http_version} %{http_code}", &url])
            .output()
            .await
            .expect("curl");
        let out = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out, format!("hello from b1\n{version} 200"));
    }
    // One flag without the other is refused before anything starts.
    let (status, _, err) = run_weft(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &to,
        "--tls-cert",
        "c.pem",
    ])
    .await;
    assert!(!status.success());
    assert!(err.contains("--tls-key"), "{err}");
}

#[tokio::test]
async fn proxy_balances_across_every_target() {
    let b1 = Backend::start("b1").await;
    let b2 = Backend::start("b2").await;
    let (to1, to2) = (format!("http://{}", b1.addr), format!("http://{}", b2.addr));
    let child = Child::spawn(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &to1,
        "--to",
        &to2,
    ])
    .await;
    let url = format!("http://{}/", child.listener_addr("proxy"));
    let client = h1();
    for _ in 0..10 {
        assert!(answering_backend(&client, &url).await.is_ok());
    }
    assert_eq!(
        (b1.hits(), b2.hits()),
        (5, 5),
        "round robin over two targets"
    );
}

#[tokio::test]
async fn proxy_behind_a_load_balancer_takes_its_proxy_protocol_header() {
    let b1 = Backend::start("b1").await;
    let to = format!("http://{}", b1.addr);
    let child = Child::spawn(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &to,
        "--proxy-protocol",
    ])
    .await;
    let url = format!("http://{}/info", child.listener_addr("proxy"));
    let curl = async |extra: &[&str]| {
        let out = tokio::process::Command::new("curl")
            .args(["-s", "--interface", "127.0.0.3"])
            .args(extra)
            .arg(&url)
            .output()
            .await
            .expect("curl");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, body) = curl(&["--haproxy-protocol"]).await;
    assert_eq!(code, Some(0), "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.3", "{v}");
    // Without the header the connection is closed unanswered.
    let (code, body) = curl(&[]).await;
    assert!(matches!(code, Some(52 | 56)), "{code:?}: {body}");
    assert_eq!(b1.hits(), 1);
}

#[tokio::test]
async fn proxy_can_send_the_upstream_its_own_host() {
    let backend = Backend::start("b1").await;
    let to = format!("http://{}", backend.addr);
    let host_seen = async |extra: &[&str]| {
        let child =
            Child::spawn(&[&["proxy", "--listen", "127.0.0.1:0", "--to", &to], extra].concat())
                .await;
        let url = format!("http://{}/info", child.listener_addr("proxy"));
        let req = Request::get(url)
            .header("host", "app.example")
            .body(empty())
            .unwrap();
        let (status, _, body) = send(&h1(), req).await;
        assert_eq!(status, StatusCode::OK, "{body:?}");
        let info: serde_json::Value = serde_json::from_slice(&body).unwrap();
        (
            info["headers"]["host"].clone(),
            info["headers"]["x-forwarded-host"].clone(),
        )
    };
    assert_eq!(
        host_seen(&[]).await,
        ("app.example".into(), serde_json::Value::Null)
    );
    assert_eq!(
        host_seen(&["--change-host-header"]).await,
        (backend.addr.to_string().into(), "app.example".into())
    );
}

#[tokio::test]
async fn proxy_speaks_h2c_to_an_http2_only_upstream() {
    let backend = Backend::start_with("b1", Proto::Http2, None).await;
    let to = format!("h2c://{}", backend.addr);
    let child = Child::spawn(&["proxy", "--listen", "127.0.0.1:0", "--to", &to]).await;
    let url = format!("http://{}/info", child.listener_addr("proxy"));
    for c in [h1(), h2()] {
        let (status, _, body) = get(&c, &url).await;
        assert_eq!(status, StatusCode::OK, "{body:?}");
        let info: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(info["version"], "HTTP/2.0");
    }
}

#[tokio::test]
async fn proxy_refuses_mixed_schemes() {
    let (status, _, err) = run_weft(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--to",
        "http://127.0.0.1:9",
        "--to",
        "h2c://127.0.0.1:10",
    ])
    .await;
    assert!(!status.success());
    assert!(
        err.contains("every --to must use the same scheme (\"h2c://127.0.0.1:10\" differs)"),
        "{err}"
    );
    let (status, _, err) =
        run_weft(&["proxy", "--listen", "127.0.0.1:0", "--to", "ftp://x:21"]).await;
    assert!(!status.success());
    assert!(
        err.contains("the scheme must be http, h2c or https"),
        "{err}"
    );
}

#[tokio::test]
async fn proxy_exits_cleanly_on_sigterm() {
    let backend = Backend::start("b1").await;
    let to = format!("http://{}", backend.addr);
    let mut child = Child::spawn(&["proxy", "--listen", "127.0.0.1:0", "--to", &to]).await;
    child.signal(libc::SIGTERM);
    let status = exits_within(&mut child.child, Duration::from_secs(10))
        .await
        .expect("weft proxy did not exit");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn a_second_proxy_on_a_taken_address_exits_instead_of_sharing_it() {
    let backend = Backend::start("b1").await;
    let to = format!("http://{}", backend.addr);
    let first = Child::spawn(&[
        "proxy",
        "--workers",
        "2",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &to,
    ])
    .await;
    let addr = first.listener_addr("proxy").to_string();
    // With several workers each binds the address with SO_REUSEPORT, which would let
    // another process with the same option join and take some of the connections.
    let (status, _, err) =
        run_weft(&["proxy", "--workers", "2", "--listen", &addr, "--to", &to]).await;
    assert!(!status.success());
    assert!(
        err.contains(&format!("cannot bind \"proxy\" to {addr}")),
        "{err}"
    );
    assert!(err.contains("Address already in use"), "{err}");
    let url = format!("http://{addr}/");
    for _ in 0..20 {
        assert_eq!(answering_backend(&h1(), &url).await.as_deref(), Ok("b1"));
    }
}
