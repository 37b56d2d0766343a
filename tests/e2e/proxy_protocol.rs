//! The PROXY protocol both ways, with HAProxy as the peer. In front: HAProxy in TCP
//! mode sending v1 (`send-proxy`) or v2 (`send-proxy-v2`) to a listener that expects
//! it. Behind: a cluster that sends the header to HAProxy (`accept-proxy`), which
//! adds the client it names to `X-Forwarded-For`. curl is the client, bound to
//! 127.0.0.2 so that the address a header carries differs from the proxies' (127.0.0.1).

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::process::Stdio;

use crate::support::*;

/// HAProxy running `config` (after timeouts), whose `{bind}` is its listening
/// socket: bound here (port 0) and handed over as a file descriptor (`bind fd@N`),
/// so no port is fixed.
struct Haproxy {
    addr: SocketAddr,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// In TCP mode, forwarding every connection to `to` with `send` (`send-proxy`,
    /// `send-proxy-v2`) on its server line.
    fn sending(to: SocketAddr, send: &str) -> Haproxy {
        Self::start(&format!(
            "listen front\n  mode tcp\n  bind {{bind}}\n  server weft {to} {send}\n"
        ))
    }

    /// In HTTP mode, taking a PROXY header on every connection (`accept-proxy`) and
    /// adding the client it names to `X-Forwarded-For` on requests to `to`.
    fn accepting(to: SocketAddr) -> Haproxy {
        Self::start(&format!(
            "listen back\n  mode http\n  option forwardfor\n  bind {{bind}} accept-proxy\n  server b {to}\n"
        ))
    }

    fn start(config: &str) -> Haproxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let fd = listener.as_raw_fd();
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "defaults\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n{}",
                config.replace("{bind}", &format!("fd@{fd}"))
            ),
        )
        .unwrap();
        let mut cmd = tokio::process::Command::new("haproxy");
        cmd.arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        // SAFETY: runs in the forked child before exec; fcntl is async-signal-safe.
        // The socket is inherited by HAProxy alone, not by other tests' children.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .expect("run haproxy (.ci/setup installs it: apt-get install haproxy)");
        // HAProxy holds its own copy now; connections wait in the backlog until it accepts.
        drop(listener);
        Haproxy {
            addr,
            _child: child,
            _dir: dir,
        }
    }
}

/// curl's output (the body) and exit code for `args`, from 127.0.0.2.
async fn curl(args: &[&str]) -> (String, i32) {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "--max-time", "10", "--interface", "127.0.0.2"])
        .args(args)
        .output()
        .await
        .expect("run curl");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

fn info(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"))
}

/// Listener "main" (`proxy_protocol = true`, then `listener_extra`) in front of
/// cluster "c", the backend.
fn config(backend: SocketAddr, listener_extra: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
cluster = "c"
proxy_protocol = true
{listener_extra}

[[clusters]]
name = "c"
endpoints = ["{backend}"]
"#
    )
}

#[tokio::test]
async fn the_client_address_comes_from_the_balancers_header_v1_and_v2() {
    let backend = Backend::start("b1").await;
    let proxy = Proxy::start(&config(backend.addr, "")).await;
    for send in ["send-proxy", "send-proxy-v2"] {
        let front = Haproxy::sending(proxy.addr("main"), send);
        let (body, code) = curl(&[&format!("http://{}/info", front.addr)]).await;
        assert_eq!(code, 0, "{send}: {body}");
        // The balancer connects from 127.0.0.1; the client it speaks for is 127.0.0.2.
        let v = info(&body);
        assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.2", "{send}: {v}");
    }
    // curl's own v1 header, straight to the listener.
    let (body, code) = curl(&["--haproxy-protocol", &proxy.url("/info")]).await;
    assert_eq!(code, 0, "{body}");
    assert_eq!(info(&body)["headers"]["x-forwarded-for"], "127.0.0.2");
    assert_eq!(backend.hits(), 3);
}

#[tokio::test]
async fn the_header_comes_before_tls_and_before_a_tcp_listeners_bytes() {
    let backend = Backend::start("b1").await;
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.write(dir.path(), "a", &pki.leaf(&["a.test"], &[]));
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let tls = Proxy::start(&config(
        backend.addr,
        &format!(
            "[[listeners.tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    ))
    .await;
    let front = Haproxy::sending(tls.addr("main"), "send-proxy-v2");
    let port = front.addr.port();
    let (body, code) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &format!("a.test:{port}:127.0.0.1"),
        &format!("https://a.test:{port}/info"),
    ])
    .await;
    assert_eq!(code, 0, "{body}");
    let v = info(&body);
    assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.2", "{v}");
    assert_eq!(v["headers"]["x-forwarded-proto"], "https", "{v}");

    // A TCP listener passes on what follows the header, byte for byte.
    let tcp = Proxy::start(&config(backend.addr, "protocol = \"tcp\"")).await;
    let front = Haproxy::sending(tcp.addr("main"), "send-proxy-v2");
    let (body, code) = curl(&[&format!("http://{}/info", front.addr)]).await;
    assert_eq!(code, 0, "{body}");
    assert_eq!(info(&body)["backend"], "b1");
    assert_eq!(backend.hits(), 2);
}

#[tokio::test]
async fn a_connection_without_a_header_in_time_is_closed_and_counted() {
    let backend = Backend::start("b1").await;
    let proxy = Proxy::start(&config(
        backend.addr,
        "limits = { header_read_timeout = \"300ms\" }",
    ))
    .await;
    // A plain request: not a PROXY header, closed at once, unanswered (curl: an empty
    // reply, or a reset since the request went unread).
    let (body, code) = curl(&[&proxy.url("/info")]).await;
    assert!(code == 52 || code == 56, "curl exit {code}: {body}");
    // A client that sends nothing: closed once the header read timeout passes.
    let mut silent = tokio::net::TcpStream::connect(proxy.addr("main"))
        .await
        .unwrap();
    let said = closed_within(&mut silent, std::time::Duration::from_secs(5)).await;
    assert!(said.is_empty(), "{said:?}");
    proxy
        .until_metric(
            "weft_limit_hits_total{listener=\"main\",limit=\"proxy_protocol\"}",
            2.0,
        )
        .await;
    assert_eq!(backend.hits(), 0);
}

#[tokio::test]
async fn a_cluster_sends_the_client_on_in_its_own_header_v1_and_v2() {
    let backend = Backend::start("b1").await;
    let back = Haproxy::accepting(backend.addr);
    for version in ["v1", "v2"] {
        // A tcp listener's connection: the header names its client.
        let proxy = Proxy::start(&format!(
            r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
protocol = "tcp"
cluster = "c"

[[listeners]]
name = "web"
address = "127.0.0.1:0"
cluster = "c"
forwarding = {{ x_forwarded_for = "off" }}

[[clusters]]
name = "c"
endpoints = ["{}"]
proxy_protocol = "{version}"
health_check = {{ path = "/", interval = "50ms", unhealthy_threshold = 1 }}
"#,
            back.addr
        ))
        .await;
        let (body, code) = curl(&[&proxy.url("/info")]).await;
        assert_eq!(code, 0, "{version}: {body}");
        let v = info(&body);
        assert_eq!(
            v["headers"]["x-forwarded-for"], "127.0.0.2",
            "{version}: {v}"
        );

        // HTTP requests share the connections: the header names no one (v1 UNKNOWN,
        // v2 LOCAL), so HAProxy takes the connection's own address, the proxy's (the
        // listener adds no X-Forwarded-For of its own here).
        let web = format!("http://{}/info", proxy.addr("web"));
        let (body, code) = curl(&[&web]).await;
        assert_eq!(code, 0, "{version}: {body}");
        let v = info(&body);
        assert_eq!(
            v["headers"]["x-forwarded-for"], "127.0.0.1",
            "{version}: {v}"
        );

        // Health checks open connections of their own, with a header naming no one:
        // HAProxy, which closes any connection without one, passes them on.
        let before = backend.hits();
        let checked = eventually(std::time::Duration::from_secs(5), async || {
            backend.hits() >= before + 3
        })
        .await;
        assert!(checked, "{version}: no health check got through");
        let states = endpoint_states(&proxy, "c").await;
        assert_eq!(states[&back.addr], "healthy", "{version}");
    }
}
