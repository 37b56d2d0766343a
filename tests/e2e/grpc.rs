//! gRPC through the proxy between real grpcio peers (tests/e2e/peers/): unary and
//! interleaved bidirectional streaming calls, statuses and metadata carried in
//! trailers, with the upstream cluster set to HTTP/2 by config or by
//! `weft proxy --to h2c://...`, and under TLS on both sides.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use http::{Request, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use weft::app::{App, ConfigSource};
use weft::cli::{proxy_config, ProxyArgs};

use crate::support::*;

/// The Python interpreter of the venv `.ci/setup` makes, with grpcio.
fn python() -> PathBuf {
    let venv = std::env::var_os("WEFT_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/weft-venv")
        });
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "no Python venv at {} (run .ci/setup, or set WEFT_VENV)",
        venv.display()
    );
    python
}

fn peer(script: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/e2e/peers")
        .join(script)
}

/// `msg` as one uncompressed gRPC message (a flag byte, its length, the message).
fn framed(msg: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8];
    b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    b.extend_from_slice(msg);
    b
}

/// grpc_server.py, running until dropped.
struct GrpcServer {
    addr: SocketAddr,
    _child: Child,
}

impl GrpcServer {
    /// In clear text, or under TLS with `tls` (certificate chain and key files).
    async fn start(tls: Option<(&Path, &Path)>) -> GrpcServer {
        let mut cmd = Command::new(python());
        cmd.arg(peer("grpc_server.py"));
        if let Some((cert, key)) = tls {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        let mut child = cmd
            // The server runs until its stdin closes, that is until this handle drops.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start grpc_server.py");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("grpc_server.py did not print its port")
            .unwrap()
            .expect("grpc_server.py exited");
        let port: u16 = port.trim().parse().expect("a port number");
        GrpcServer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _child: child,
        }
    }
}

/// Where grpc_client.py calls: an address, in clear text or under TLS trusting a
/// CA file and asking for a name.
struct Target {
    addr: SocketAddr,
    tls: Option<(PathBuf, String)>,
}

impl Target {
    fn clear(addr: SocketAddr) -> Target {
        Target { addr, tls: None }
    }
}

/// Runs grpc_client.py against `target` and returns what it printed.
async fn call(target: &Target, mode: &str, messages: &[&str]) -> Value {
    call_within(target, 10.0, mode, messages).await
}

/// `call` with a deadline of `deadline` seconds (sent as `grpc-timeout`).
async fn call_within(target: &Target, deadline: f64, mode: &str, messages: &[&str]) -> Value {
    let mut cmd = Command::new(python());
    cmd.arg(peer("grpc_client.py"))
        .arg("--deadline")
        .arg(deadline.to_string());
    if let Some((ca, name)) = &target.tls {
        cmd.arg("--ca").arg(ca).arg("--name").arg(name);
    }
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        cmd.arg(target.addr.to_string())
            .arg(mode)
            .args(messages)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("grpc_client.py timed out")
    .expect("run grpc_client.py");
    assert!(
        out.status.success(),
        "grpc_client.py {mode} {messages:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "grpc_client.py printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The calls every proxy setup must carry the same way a direct connection does.
async fn check_calls(target: &Target) {
    let v = call(target, "unary", &["hi"]).await;
    assert_eq!(v["code"], "OK", "{v}");
    assert_eq!(v["reply"], "echo:hi");
    // Custom trailing metadata travels in the HTTP/2 trailers with grpc-status.
    assert_eq!(v["trailing"]["x-echo-trailer"], "t-hi", "{v}");
    assert_eq!(v["initial"]["x-seen-forwarded-for"], "127.0.0.1", "{v}");

    // A status with no message: the upstream answers with trailers only (one
    // HEADERS frame ending the stream), and so must the proxy. The `date` the
    // proxy adds to every response then shows up as trailing metadata.
    let mut v = call(target, "unary", &["abort:NOT_FOUND:no such thing: ü/%"]).await;
    v["trailing"].as_object_mut().unwrap().remove("date");
    assert_eq!(
        v,
        json!({"code": "NOT_FOUND", "details": "no such thing: ü/%", "trailing": {}})
    );

    // Each message is sent only once the previous answer is back.
    let msgs = ["one", "two", "three", "four", "five"];
    let v = call(target, "bidi", &msgs).await;
    assert_eq!(
        v,
        json!({"code": "OK", "replies": msgs.map(|m| format!("echo:{m}"))}),
    );

    // A status after streamed messages: real trailers, after data.
    let v = call(
        target,
        "bidi",
        &["a", "b", "abort:RESOURCE_EXHAUSTED:too many"],
    )
    .await;
    assert_eq!(
        v,
        json!({"code": "RESOURCE_EXHAUSTED", "details": "too many", "replies": ["echo:a", "echo:b"]}),
    );
}

#[tokio::test]
async fn grpc_through_a_cluster_with_protocol_http2() {
    let server = GrpcServer::start(None).await;
    let proxy = Proxy::start(&format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
cluster = "grpc"

[[clusters]]
name = "grpc"
endpoints = ["{}"]
protocol = "http2"
"#,
        server.addr
    ))
    .await;
    check_calls(&Target::clear(proxy.addr("main"))).await;
    // The status the client saw is what the proxy counted: HTTP 200 every time.
    assert_eq!(
        proxy
            .metric("weft_requests_total{listener=\"main\",cluster=\"grpc\",status_class=\"2xx\"}")
            .await,
        4.0
    );
}

#[tokio::test]
async fn grpc_through_weft_proxy_to_h2c() {
    let server = GrpcServer::start(None).await;
    // What `weft proxy --listen 127.0.0.1:0 --to h2c://ADDR` runs, in process.
    let args = ProxyArgs {
        listen: "127.0.0.1:0".parse().unwrap(),
        to: vec![format!("h2c://{}", server.addr)],
        admin: None,
        filters: Vec::new(),
        workers: 0,
        proxy_protocol: false,
        change_host_header: false,
        tls_cert: None,
        tls_key: None,
    };
    let loaded = proxy_config(&args).unwrap();
    assert_eq!(
        loaded.config.clusters[0].protocol,
        weft::config::UpstreamProtocol::Http2
    );
    let app = App::start(ConfigSource::Fixed(Box::new(loaded)))
        .await
        .unwrap();
    check_calls(&Target::clear(app.listener_addr("proxy").unwrap())).await;
    app.shutdown().await;
}

#[tokio::test]
async fn the_access_log_names_the_status_a_call_ended_with() {
    let server = GrpcServer::start(None).await;
    let to = format!("h2c://{}", server.addr);
    let child =
        crate::support::Child::spawn(&["proxy", "--listen", "127.0.0.1:0", "--to", &to]).await;
    let target = Target::clear(child.listener_addr("proxy"));
    assert_eq!(call(&target, "unary", &["hi"]).await["code"], "OK");
    let v = call(&target, "unary", &["abort:NOT_FOUND:gone"]).await;
    assert_eq!(v["code"], "NOT_FOUND");
    // A call its client gives up on: its stream reset (CANCEL) before the answer.
    let req = Request::post(format!("http://{}/weft.test.Echo/Unary", target.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(framed(b"sleep:1000")))
        .unwrap();
    let gave_up = tokio::time::timeout(Duration::from_millis(300), h2().request(req)).await;
    assert!(gave_up.is_err(), "answered before the client gave up");
    let access = |code: &str, status: u16| {
        let needles = [
            format!(r#""grpc_status":"{code}""#),
            format!(r#""status":{status},"#),
        ];
        child.lines.lock().unwrap().iter().any(|l| {
            l.contains("\"weft::access\"") && needles.iter().all(|n| l.contains(n.as_str()))
        })
    };
    // The abandoned call got no response at all (status 0).
    let logged = eventually(Duration::from_secs(5), async || {
        access("OK", 200) && access("NOT_FOUND", 200) && access("CANCELLED", 0)
    })
    .await;
    assert!(logged, "{:#?}", child.lines.lock().unwrap());
}

#[tokio::test]
async fn grpc_over_tls_on_both_sides() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let (edge_cert, edge_key) = pki.write(dir.path(), "edge", &pki.leaf(&["grpc.test"], &[]));
    let (up_cert, up_key) = pki.write(dir.path(), "up", &pki.leaf(&["backend.test"], &[]));
    let server = GrpcServer::start(Some((&up_cert, &up_key))).await;
    let proxy = Proxy::start(&format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
cluster = "grpc"
[listeners.tls]
certificates = [{{ cert = "{}", key = "{}" }}]

[[clusters]]
name = "grpc"
endpoints = ["{}"]
protocol = "http2"
[clusters.tls]
ca = "{}"
server_name = "backend.test"
"#,
        edge_cert.display(),
        edge_key.display(),
        server.addr,
        ca.display()
    ))
    .await;
    check_calls(&Target {
        addr: proxy.addr("main"),
        tls: Some((ca.clone(), "grpc.test".into())),
    })
    .await;
}

#[tokio::test]
async fn calls_the_proxy_fails_end_with_a_grpc_status() {
    // A gRPC client reads the outcome from grpc-status: the proxy's own failures
    // come as gRPC statuses with the reason, not as bare HTTP errors.
    let server = GrpcServer::start(None).await;
    let closed = ClosedPort::new();
    let proxy = Proxy::start(&format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
[[listeners.routes]]
path_prefix = "/weft.test.Echo/"
cluster = "grpc"
timeout = "300ms"

[[listeners]]
name = "unrouted"
address = "127.0.0.1:0"
[[listeners.routes]]
path_prefix = "/elsewhere/"
cluster = "grpc"

[[listeners]]
name = "down"
address = "127.0.0.1:0"
cluster = "gone"

[[listeners]]
name = "guarded"
address = "127.0.0.1:0"
cluster = "grpc"
chain = "hello"

[[listeners]]
name = "quiet"
address = "127.0.0.1:0"
cluster = "quiet"

{hello}
[[chains]]
name = "hello"
filters = ["hello"]

[[clusters]]
name = "grpc"
endpoints = ["{}"]
protocol = "http2"

[[clusters]]
name = "gone"
endpoints = ["{closed}"]
protocol = "http2"

[[clusters]]
name = "quiet"
endpoints = ["{0}"]
protocol = "http2"
idle_timeout = "300ms"
"#,
        server.addr,
        hello = filter_decl(
            "hello",
            &filter_wasm("hello_filter"),
            r#"{"key": "s3cret"}"#
        ),
    ))
    .await;
    let at = |listener: &str| Target::clear(proxy.addr(listener));
    let outcome = |v: &Value| (v["code"].clone(), v["details"].clone());

    assert_eq!(call(&at("main"), "unary", &["hi"]).await["code"], "OK");
    let v = call(&at("main"), "unary", &["sleep:3000"]).await;
    assert_eq!(
        outcome(&v),
        (json!("DEADLINE_EXCEEDED"), json!("upstream timeout"))
    );
    // Past the deadline with the response under way: the call still ends with a
    // status (trailers), not a reset that the client would read as INTERNAL.
    let v = call(&at("main"), "bidi", &["a", "sleep:3000"]).await;
    assert_eq!(
        outcome(&v),
        (
            json!("DEADLINE_EXCEEDED"),
            json!("request timeout while streaming the response")
        )
    );
    assert_eq!(v["replies"], json!(["echo:a"]));
    // A client that only listens, for longer than the idle timeout, to a response
    // that keeps moving: the stream is not idle.
    let v = call(&at("quiet"), "bidi", &["ticks:5:150"]).await;
    assert_eq!(v["code"], "OK", "{v}");
    assert_eq!(
        v["replies"],
        json!(["tick:1", "tick:2", "tick:3", "tick:4", "tick:5"])
    );
    // An upstream gone silent mid-stream: UNAVAILABLE, which clients may retry.
    let v = call(&at("quiet"), "bidi", &["a", "sleep:1500"]).await;
    assert_eq!(
        outcome(&v),
        (json!("UNAVAILABLE"), json!("response body idle timeout"))
    );
    assert_eq!(v["replies"], json!(["echo:a"]));
    let v = call(&at("unrouted"), "unary", &["hi"]).await;
    assert_eq!(outcome(&v), (json!("UNIMPLEMENTED"), json!("no route")));
    let v = call(&at("down"), "unary", &["hi"]).await;
    assert_eq!(
        outcome(&v),
        (json!("UNAVAILABLE"), json!("upstream connect error"))
    );
    let v = call(&at("down"), "bidi", &["a", "b"]).await;
    assert_eq!(
        outcome(&v),
        (json!("UNAVAILABLE"), json!("upstream connect error"))
    );
    // A filter's answer too: its 401 is UNAUTHENTICATED, its body the message.
    let v = call(&at("guarded"), "unary", &["hi"]).await;
    assert_eq!(
        outcome(&v),
        (
            json!("UNAUTHENTICATED"),
            json!("missing or wrong x-api-key")
        )
    );
    // Counted as the failures they are, though the wire says 200.
    let failed = |listener: &str, cluster: &str, class: &str| {
        format!("weft_requests_total{{listener=\"{listener}\",cluster=\"{cluster}\",status_class=\"{class}\"}}")
    };
    assert_eq!(proxy.metric(&failed("main", "grpc", "5xx")).await, 1.0);
    assert_eq!(proxy.metric(&failed("down", "gone", "5xx")).await, 2.0);
    assert_eq!(proxy.metric(&failed("guarded", "grpc", "4xx")).await, 1.0);

    // The server's own statuses: trailers-only, and after a reply.
    let v = call(&at("main"), "unary", &["abort:NOT_FOUND:no such thing"]).await;
    assert_eq!(v["code"], "NOT_FOUND", "{v}");
    let v = call(&at("main"), "bidi", &["a", "abort:ABORTED:stop"]).await;
    assert_eq!(v["code"], "ABORTED", "{v}");
    // Every call is counted by the status its client read, whoever set it; the
    // HTTP status classes above count the server's own as 2xx.
    let calls = |listener: &str, cluster: &str, code: &str| {
        format!("weft_grpc_calls_total{{listener=\"{listener}\",cluster=\"{cluster}\",code=\"{code}\"}}")
    };
    let metrics = proxy.metrics().await;
    let mut counted: Vec<_> = metrics
        .lines()
        .filter(|l| l.starts_with("weft_grpc_calls_total{"))
        .collect();
    counted.sort_unstable();
    let mut want = vec![
        format!("{} 1", calls("main", "grpc", "OK")),
        format!("{} 2", calls("main", "grpc", "DEADLINE_EXCEEDED")),
        format!("{} 1", calls("main", "grpc", "NOT_FOUND")),
        format!("{} 1", calls("main", "grpc", "ABORTED")),
        format!("{} 1", calls("quiet", "quiet", "OK")),
        format!("{} 1", calls("quiet", "quiet", "UNAVAILABLE")),
        format!("{} 1", calls("unrouted", "-", "UNIMPLEMENTED")),
        format!("{} 2", calls("down", "gone", "UNAVAILABLE")),
        format!("{} 1", calls("guarded", "grpc", "UNAUTHENTICATED")),
    ];
    want.sort_unstable();
    assert_eq!(counted, want);
}

#[tokio::test]
async fn a_call_whose_upstream_fails_mid_response_ends_with_the_status_a_direct_client_would_read()
{
    // The server crashes after its first reply: a client of the server itself reads
    // UNAVAILABLE (and may retry), not the INTERNAL a reset of its stream would say.
    let server = GrpcServer::start(None).await;
    let proxy = Proxy::start(&main_to_cluster(&[server.addr], "protocol = \"http2\"")).await;
    let v = call(
        &Target::clear(proxy.addr("main")),
        "bidi",
        &["a", "exit:300"],
    )
    .await;
    assert_eq!(
        (&v["code"], &v["details"]),
        (&json!("UNAVAILABLE"), &json!("upstream connection lost")),
        "{v}"
    );
    assert_eq!(v["replies"], json!(["echo:a"]));
    assert_eq!(
        proxy
            .metric("weft_grpc_calls_total{listener=\"main\",cluster=\"c\",code=\"UNAVAILABLE\"}")
            .await,
        1.0
    );

    // An upstream that resets the stream: its error code, as gRPC maps them.
    let upstream = ResettingServer::start().await;
    let proxy = Proxy::start(&main_to_cluster(&[upstream.addr], "protocol = \"http2\"")).await;
    for (reason, code) in [
        (h2::Reason::CANCEL, "1"),
        (h2::Reason::REFUSED_STREAM, "14"),
        (h2::Reason::ENHANCE_YOUR_CALM, "8"),
        (h2::Reason::INTERNAL_ERROR, "13"),
    ] {
        let req = Request::post(proxy.url("/weft.test.Echo/Bidi"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("x-reset", u32::from(reason))
            .body(empty())
            .unwrap();
        let resp = h2().request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap_or_else(|e| panic!("{reason:?}: the stream was reset: {e:?}"));
        let trailers = body.trailers().cloned().unwrap_or_default();
        assert_eq!(body.to_bytes(), ResettingServer::MESSAGE, "{reason:?}");
        assert_eq!(trailers["grpc-status"], code, "{reason:?}");
        assert_eq!(
            trailers["grpc-message"], "upstream reset the stream",
            "{reason:?}"
        );
    }
}

/// An HTTP/2 server that answers every request with one gRPC message and then
/// resets the stream with the error code in the request's `x-reset`.
struct ResettingServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ResettingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ResettingServer {
    /// The message: uncompressed, 5 bytes long.
    const MESSAGE: &[u8] = b"\0\0\0\0\x05hello";

    async fn start() -> ResettingServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                conns.spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(tcp).await else {
                        return;
                    };
                    // Accepting drives the connection; each stream answers on its own.
                    let mut streams = tokio::task::JoinSet::new();
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        let reason = req.headers()["x-reset"]
                            .to_str()
                            .ok()
                            .and_then(|v| v.parse::<u32>().ok())
                            .map_or(h2::Reason::INTERNAL_ERROR, h2::Reason::from);
                        streams.spawn(async move {
                            let head = http::Response::builder()
                                .header("content-type", "application/grpc")
                                .body(())
                                .unwrap();
                            let mut send = respond.send_response(head, false).unwrap();
                            send.send_data(ResettingServer::MESSAGE.into(), false)
                                .unwrap();
                            // Time for the message to reach the client before the reset.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            send.send_reset(reason);
                        });
                    }
                });
            }
        });
        ResettingServer { addr, task }
    }
}

#[tokio::test]
async fn grpc_calls_keep_their_own_deadlines_where_the_cluster_honours_them() {
    let server = GrpcServer::start(None).await;
    let proxy = Proxy::start(&format!(
        r#"
[[listeners]]
name = "honoured"
address = "127.0.0.1:0"
cluster = "honoured"

[[listeners]]
name = "capped"
address = "127.0.0.1:0"
cluster = "capped"

[[listeners]]
name = "ignored"
address = "127.0.0.1:0"
cluster = "ignored"

[[listeners]]
name = "offset"
address = "127.0.0.1:0"
cluster = "offset"

[[clusters]]
name = "honoured"
endpoints = ["{addr}"]
protocol = "http2"
request_timeout = "200ms"
grpc_timeout_max = "0s"
[clusters.outlier]
consecutive_failures = 1
max_ejected_percent = 100

[[clusters]]
name = "capped"
endpoints = ["{addr}"]
protocol = "http2"
request_timeout = "30s"
grpc_timeout_max = "400ms"
[clusters.outlier]
consecutive_failures = 1
max_ejected_percent = 100

[[clusters]]
name = "ignored"
endpoints = ["{addr}"]
protocol = "http2"
request_timeout = "200ms"

[[clusters]]
name = "offset"
endpoints = ["{addr}"]
protocol = "http2"
request_timeout = "30s"
grpc_timeout_max = "0s"
grpc_timeout_offset = "1s"
"#,
        addr = server.addr,
    ))
    .await;
    let at = |listener: &str| Target::clear(proxy.addr(listener));
    let outcome = |v: &Value| (v["code"].clone(), v["details"].clone());
    let proxy_timeout = (json!("DEADLINE_EXCEEDED"), json!("upstream timeout"));

    // The client's 20 s replace the cluster's 200 ms.
    let v = call_within(&at("honoured"), 20.0, "unary", &["sleep:600"]).await;
    assert_eq!(v["code"], "OK", "{v}");
    // Without grpc_timeout_max the header is not the proxy's business.
    let v = call_within(&at("ignored"), 20.0, "unary", &["sleep:600"]).await;
    assert_eq!(outcome(&v), proxy_timeout);

    // Capped: the upstream is told the cap, and the proxy enforces it.
    let v = call_within(&at("capped"), 20.0, "unary", &["hi"]).await;
    assert_eq!(v["code"], "OK", "{v}");
    let left: f64 = v["initial"]["x-seen-time-remaining"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("the upstream saw no deadline: {v}"));
    assert!(left > 0.0 && left <= 0.4, "the upstream saw {left} s left");
    until_the_proxy_times_out(&at("capped"), 20.0, "sleep:1500").await;
    // The operator's cap counts against the endpoint (one failure ejects here)...
    let ejections = r#"weft_endpoint_ejections_total{cluster="capped"}"#;
    assert_eq!(proxy.metric(ejections).await, 1.0);

    // ... the client's own short deadline does not: the endpoint was fine. (A
    // client that waits past its deadline, so that the proxy's expiry is seen.)
    let req = Request::post(format!(
        "http://{}/weft.test.Echo/Unary",
        proxy.addr("honoured")
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header("grpc-timeout", "300m")
    .body(full(framed(b"sleep:1500")))
    .unwrap();
    let (status, headers, _) = send(&h2(), req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["grpc-status"], "4", "{headers:?}");
    let timeouts = r#"weft_upstream_timeouts_total{cluster="honoured"}"#;
    assert_eq!(proxy.metric(timeouts).await, 1.0);
    let ejections = r#"weft_endpoint_ejections_total{cluster="honoured"}"#;
    assert_eq!(proxy.metric(ejections).await, 0.0);
    let v = call_within(&at("honoured"), 20.0, "unary", &["hi"]).await;
    assert_eq!(v["code"], "OK", "{v}");

    // With an offset, the proxy and the upstream give up a second before the client
    // would: the client hears the proxy's DEADLINE_EXCEEDED, which is counted as such
    // rather than as a call the client abandoned.
    let v = call_within(&at("offset"), 3.0, "unary", &["hi"]).await;
    assert_eq!(v["code"], "OK", "{v}");
    let left: f64 = v["initial"]["x-seen-time-remaining"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("the upstream saw no deadline: {v}"));
    assert!(left > 1.0 && left < 2.1, "the upstream saw {left} s left");
    let tries = until_the_proxy_times_out(&at("offset"), 1.5, "sleep:1200").await;
    let counted =
        r#"weft_grpc_calls_total{listener="offset",cluster="offset",code="DEADLINE_EXCEEDED"}"#;
    assert_eq!(proxy.metric(counted).await, tries as f64);
}

/// Makes a unary call that outlives its deadline until the client hears the proxy's
/// DEADLINE_EXCEEDED, and says how many calls that took. The upstream is told the same
/// deadline and enforces it too, from a moment later: on a busy machine its own
/// DEADLINE_EXCEEDED can come first (`Deadline Exceeded`), so up to 5 calls are made.
async fn until_the_proxy_times_out(target: &Target, deadline: f64, message: &str) -> usize {
    let mut seen = Vec::new();
    for tries in 1..=5 {
        let v = call_within(target, deadline, "unary", &[message]).await;
        let outcome = (v["code"].clone(), v["details"].clone());
        if outcome == (json!("DEADLINE_EXCEEDED"), json!("upstream timeout")) {
            return tries;
        }
        assert_eq!(
            outcome,
            (json!("DEADLINE_EXCEEDED"), json!("Deadline Exceeded")),
            "{v}"
        );
        seen.push(v);
    }
    panic!("the proxy's deadline never came first: {seen:?}");
}
