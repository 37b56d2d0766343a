//! Test fixtures: upstream servers, a proxy started from a config string, clients.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpSocket};
use weft::app::{App, ConfigSource};

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> TestBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A body sent as these chunks, one data frame each (chunked on HTTP/1.1).
pub fn chunks<B: Into<Bytes>>(parts: impl IntoIterator<Item = B>) -> TestBody {
    let frames: Vec<Result<http_body::Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> =
        parts
            .into_iter()
            .map(|p| Ok(http_body::Frame::data(p.into())))
            .collect();
    StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

/// How a test backend speaks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Proto {
    /// HTTP/1.1 and HTTP/2 (prior knowledge) on one port.
    Auto,
    Http1,
    /// HTTP/2 only (h2c).
    Http2,
    /// HTTP/2 only, without extended CONNECT (RFC 8441) on offer.
    Http2NoConnect,
}

/// An upstream server on 127.0.0.1:0 that answers by path:
/// `/info` (JSON about the request), `/echo` (the body back, streaming),
/// `/status/N`, `/sleep/MS`, `/trailers`, `/hash` (sha256 and length of the body),
/// `/bytes/N` (N bytes streamed in 64 KiB chunks).
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub hits: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Self::start_with(name, Proto::Auto, None).await
    }

    pub async fn start_with(
        name: &str,
        proto: Proto,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, name, proto, tls)
    }

    /// Serves on an already bound listener (to restart a backend on the same port).
    pub fn serve(
        listener: TcpListener,
        name: &str,
        proto: Proto,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Backend {
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (h, c, n) = (hits.clone(), connections.clone(), name.to_string());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::Relaxed);
                let (h, n, tls) = (h.clone(), n.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        h.fetch_add(1, Ordering::Relaxed);
                        let n = n.clone();
                        async move { Ok::<_, Infallible>(answer(req, &n).await) }
                    });
                    match tls {
                        Some(cfg) => {
                            if let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await {
                                serve_conn(TokioIo::new(s), svc, proto).await;
                            }
                        }
                        None => serve_conn(TokioIo::new(tcp), svc, proto).await,
                    }
                });
            }
        });
        Backend {
            addr,
            name: name.to_string(),
            hits,
            connections,
            task,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }
}

async fn serve_conn<I, S>(io: TokioIo<I>, svc: S, proto: Proto)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<TestBody>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    match proto {
        Proto::Http1 => {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .with_upgrades()
                .await;
        }
        Proto::Http2 => {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .enable_connect_protocol()
                .serve_connection(io, svc)
                .await;
        }
        Proto::Http2NoConnect => {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, svc)
                .await;
        }
        Proto::Auto => {
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(io, svc)
                .await;
        }
    }
}

async fn answer(req: Request<Incoming>, name: &str) -> Response<TestBody> {
    let path = req.uri().path().to_string();
    // A request may ask for the `Keep-Alive` field a server sends with its idle timeout.
    let keep_alive = req.headers().get("x-reply-keep-alive").cloned();
    let mut resp = match path.as_str() {
        "/info" => {
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into()),
                    )
                })
                .collect();
            let info = serde_json::json!({
                "backend": name,
                "method": req.method().as_str(),
                "uri": req.uri().to_string(),
                "version": format!("{:?}", req.version()),
                "headers": headers,
            });
            Response::new(full(info.to_string()))
        }
        "/echo" => {
            let body = req
                .into_body()
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
                .boxed();
            Response::new(body)
        }
        "/hash" => {
            let mut body = req.into_body();
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            let mut len = 0u64;
            let mut trailers = None;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return status(StatusCode::BAD_REQUEST);
                };
                match frame.into_data() {
                    Ok(d) => {
                        len += d.len() as u64;
                        ctx.update(&d);
                    }
                    Err(f) => trailers = f.into_trailers().ok(),
                }
            }
            let t = trailers.map(|t| format!("{t:?}")).unwrap_or_default();
            Response::new(full(format!("{} {len} {t}", hex(ctx.finish().as_ref()))))
        }
        // The head at once, the body (the request's length) once the upload ended.
        "/count-later" => {
            let body = req.into_body();
            let counted = futures_util::stream::once(async move {
                let n = body.collect().await.map_or(0, |c| c.to_bytes().len());
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(
                    format!("{n} bytes"),
                )))
            });
            Response::new(StreamBody::new(counted).boxed())
        }
        "/trailers" => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            trailers.insert("x-checksum", "abc".parse().unwrap());
            let frames = vec![
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from_static(
                    b"body",
                ))),
                Ok(Frame::trailers(trailers)),
            ];
            Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed())
        }
        p if p.starts_with("/status/") => status(
            StatusCode::from_u16(p[8..].parse().unwrap_or(500))
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        ),
        p if p.starts_with("/sleep/") => {
            tokio::time::sleep(Duration::from_millis(p[7..].parse().unwrap_or(0))).await;
            Response::new(full("slept"))
        }
        p if p.starts_with("/bytes/") => {
            let n: usize = p[7..].parse().unwrap_or(0);
            Response::new(pattern_body(n))
        }
        "/upgrade" => return upgrade_echo(req).await,
        _ => Response::new(full(format!("hello from {name}"))),
    };
    resp.headers_mut()
        .insert("x-backend", name.parse().unwrap());
    if let Some(v) = keep_alive {
        resp.headers_mut().insert("keep-alive", v);
    }
    resp
}

/// Answers an HTTP/1.1 `Upgrade: echo` with 101, or an HTTP/2 extended CONNECT with
/// 200 (naming its `:protocol` and whether a `Sec-WebSocket-Key` came, which has no
/// place there), and echoes the raw bytes back.
async fn upgrade_echo(mut req: Request<Incoming>) -> Response<TestBody> {
    let connect = req
        .extensions()
        .get::<hyper::ext::Protocol>()
        .map(|p| p.as_str().to_string());
    let saw_key = req.headers().contains_key("sec-websocket-key");
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(up) = on.await {
            let mut io = TokioIo::new(up);
            let (mut r, mut w) = tokio::io::split(&mut io);
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    });
    let mut r = Response::new(empty());
    if let Some(protocol) = connect {
        r.headers_mut()
            .insert("x-protocol", protocol.parse().unwrap());
        r.headers_mut()
            .insert("x-saw-key", saw_key.to_string().parse().unwrap());
        return r;
    }
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut().insert("upgrade", "echo".parse().unwrap());
    r.headers_mut()
        .insert("connection", "upgrade".parse().unwrap());
    r
}

fn status(s: StatusCode) -> Response<TestBody> {
    let mut r = Response::new(full(s.as_str().to_string()));
    *r.status_mut() = s;
    r
}

/// `n` deterministic bytes in 64 KiB chunks, produced lazily.
pub fn pattern_body(n: usize) -> TestBody {
    const CHUNK: usize = 64 * 1024;
    let chunks = futures_util::stream::unfold(0usize, move |sent| async move {
        if sent >= n {
            return None;
        }
        let len = CHUNK.min(n - sent);
        let data: Vec<u8> = (sent..sent + len).map(|i| (i % 251) as u8).collect();
        Some((
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(data))),
            sent + len,
        ))
    });
    StreamBody::new(chunks).boxed()
}

pub fn pattern_sha256(n: usize) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    ctx.update(&data);
    hex(ctx.finish().as_ref())
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A proxy started in this process from a config written to a temporary folder.
pub struct Proxy {
    pub app: Arc<App>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

/// The config preamble every test proxy uses: admin on an ephemeral port, no file
/// watching (tests reload explicitly), a private module cache. It ends in the
/// `[runtime]` table (see `Proxy::start_with_runtime`).
pub fn preamble(dir: &std::path::Path) -> String {
    format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n[runtime]\nwatch_config = false\nshutdown_timeout = \"5s\"\nmodule_cache = \"{}\"\n",
        dir.join("cache").display()
    )
}

impl Proxy {
    /// Starts a proxy; `config` follows the preamble (see `preamble`).
    pub async fn start(config: &str) -> Proxy {
        Self::try_start(config)
            .await
            .unwrap_or_else(|e| panic!("proxy did not start: {e:#}"))
    }

    /// Starts a proxy with more `[runtime]` fields, such as `"filter_instances = 2\n"`.
    pub async fn start_with_runtime(runtime: &str, config: &str) -> Proxy {
        // The preamble ends in the `[runtime]` table: these lines extend it.
        Self::start(&format!("{runtime}{config}")).await
    }

    pub async fn try_start(config: &str) -> anyhow::Result<Proxy> {
        Self::try_start_on(weft::workers::Workers::none(), config).await
    }

    /// Starts a proxy served by `extra` worker threads besides the test's runtime.
    pub async fn start_on_workers(extra: usize, config: &str) -> Proxy {
        let workers = weft::workers::Workers::spawn(extra).unwrap();
        Self::try_start_on(workers, config)
            .await
            .unwrap_or_else(|e| panic!("proxy did not start: {e:#}"))
    }

    async fn try_start_on(workers: weft::workers::Workers, config: &str) -> anyhow::Result<Proxy> {
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("weft.toml");
        std::fs::write(&config_path, format!("{}{config}", preamble(dir.path())))?;
        let app = App::start_on(ConfigSource::File(config_path.clone()), workers).await?;
        Ok(Proxy {
            app,
            dir,
            config_path,
        })
    }

    /// Replaces the config file (the preamble is added again).
    pub fn write_config(&self, config: &str) {
        std::fs::write(
            &self.config_path,
            format!("{}{config}", preamble(self.dir.path())),
        )
        .unwrap();
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.app
            .listener_addr(listener)
            .unwrap_or_else(|| panic!("no listener {listener}"))
    }

    /// `http://<listener "main">/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr("main"))
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.app.admin_addr().expect("admin endpoint")
        )
    }

    pub async fn metrics(&self) -> String {
        let (status, _, body) = send(
            &h1(),
            Request::get(self.admin_url("/metrics"))
                .body(empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200);
        String::from_utf8(body.to_vec()).unwrap()
    }

    /// The value of one metric sample, e.g. `weft_limit_hits_total{listener="main",limit="header_size"}`.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    /// Waits until `sample` reads `value` (fails the test after 5 s, showing the
    /// metrics).
    pub async fn until_metric(&self, sample: &str, value: f64) {
        let reached = eventually(Duration::from_secs(5), async || {
            self.metric(sample).await == value
        })
        .await;
        assert!(
            reached,
            "{sample} did not reach {value}: {}",
            self.metrics().await
        );
    }
}

pub type TestClient = Client<HttpConnector, TestBody>;

/// An HTTP/1.1 client.
pub fn h1() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 prior-knowledge client.
pub fn h2() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Sends a request and reads the whole response.
pub async fn send(client: &TestClient, req: Request<TestBody>) -> (StatusCode, HeaderMap, Bytes) {
    let resp = client
        .request(req)
        .await
        .unwrap_or_else(|e| panic!("request failed: {e:?}"));
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    (status, headers, body)
}

pub async fn get(client: &TestClient, url: &str) -> (StatusCode, HeaderMap, Bytes) {
    send(client, Request::get(url).body(empty()).unwrap()).await
}

/// A listener "main" in front of cluster "c" with these endpoints, and extra lines
/// of the cluster's table.
pub fn main_to_cluster(endpoints: &[impl std::fmt::Display], cluster_extra: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
cluster = "c"

[[clusters]]
name = "c"
endpoints = [{}]
{cluster_extra}
"#,
        list.join(", ")
    )
}

/// Reads until the peer closes the connection; panics if it stays open `within`.
/// Returns what was read.
pub async fn closed_within<S>(s: &mut S, within: Duration) -> Vec<u8>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, tokio::io::AsyncReadExt::read(s, &mut chunk)).await
        {
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            Err(_) => panic!(
                "connection still open after {within:?}: {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

/// A port on 127.0.0.1 that refuses connections for as long as this lives: bound but
/// never listening, so the kernel answers a connect with a reset and no other test's
/// listener can be given the port. (A port merely let go can be handed to the next
/// `bind(0)` of a test running alongside, which then answers in the dead one's place.)
pub struct ClosedPort {
    pub addr: SocketAddr,
    _socket: TcpSocket,
}

/// The address, as configs name it.
impl std::fmt::Display for ClosedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        ClosedPort::at("127.0.0.1:0".parse().unwrap())
    }

    /// Holds `addr`, which a listener has just let go of.
    fn at(addr: SocketAddr) -> ClosedPort {
        let socket = TcpSocket::new_v4().unwrap();
        // Connections the listener accepted may linger in TIME_WAIT on the port.
        socket.set_reuseaddr(true).unwrap();
        socket
            .bind(addr)
            .unwrap_or_else(|e| panic!("holding {addr} closed: {e}"));
        let addr = socket.local_addr().unwrap();
        ClosedPort {
            addr,
            _socket: socket,
        }
    }
}

/// Starts `n` GETs of `url` at once, each on its own connection; their statuses come
/// from the handles.
pub fn spawn_gets(url: &str, n: usize) -> Vec<tokio::task::JoinHandle<StatusCode>> {
    (0..n)
        .map(|_| {
            let url = url.to_string();
            tokio::spawn(async move { get(&h1(), &url).await.0 })
        })
        .collect()
}

/// Certificates for TLS tests: a CA and leaves signed by it.
pub struct Pki {
    pub ca: rcgen::Certificate,
    pub ca_params: rcgen::CertificateParams,
    pub ca_key: rcgen::KeyPair,
    pub ca_pem: String,
}

pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: rustls_pki_types::CertificateDer<'static>,
    pub key_der: rustls_pki_types::PrivateKeyDer<'static>,
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "weft test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let ca_pem = ca.pem();
        Pki {
            ca,
            ca_params: params,
            ca_key,
            ca_pem,
        }
    }

    /// A leaf for DNS names and optional URI SANs (SPIFFE IDs).
    pub fn leaf(&self, dns: &[&str], uris: &[&str]) -> Leaf {
        let mut params =
            rcgen::CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        for u in uris {
            params.subject_alt_names.push(rcgen::SanType::URI(
                rcgen::string::Ia5String::try_from(u.to_string()).unwrap(),
            ));
        }
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            dns.first().copied().unwrap_or("leaf"),
        );
        let key = rcgen::KeyPair::generate().unwrap();
        let issuer = rcgen::Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }

    pub fn write(&self, dir: &std::path::Path, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
        let c = dir.join(format!("{name}.crt"));
        let k = dir.join(format!("{name}.key"));
        std::fs::write(&c, &leaf.cert_pem).unwrap();
        std::fs::write(&k, &leaf.key_pem).unwrap();
        (c, k)
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut r = rustls::RootCertStore::empty();
        r.add(self.ca.der().clone()).unwrap();
        r
    }

    /// A server config for a test backend.
    pub fn server_config(&self, leaf: &Leaf, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let mut c = rustls::ServerConfig::builder_with_provider(weft::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der.clone()], leaf.key_der.clone_key())
            .unwrap();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(c)
    }

    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut c = rustls::ClientConfig::builder_with_provider(weft::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots())
            .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(c)
    }
}

/// Polls `check` until it returns true or `within` passes.
pub async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < end {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Path of the `weft` binary cargo built for this test run.
pub fn weft_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

/// The resident set size of a process, in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// The anonymous part of a process's resident memory (heap, stacks): what compiling
/// in-process would leave behind, unlike mapped files.
pub fn rss_anon_kib(pid: u32) -> u64 {
    status_kib(pid, "RssAnon:")
}

pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// How many times the thread of process `pid` named `name` has been switched to
/// (voluntary and involuntary context switches), from /proc; None when there is no
/// such thread.
pub fn thread_wakeups(pid: u32, name: &str) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let task = tasks.flatten().find(|t| {
        std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
    })?;
    let status = std::fs::read_to_string(task.path().join("status")).ok()?;
    let count = |field: &str| -> Option<u64> {
        let line = status.lines().find_map(|l| l.strip_prefix(field))?;
        line.trim().parse().ok()
    };
    Some(count("voluntary_ctxt_switches:")? + count("nonvoluntary_ctxt_switches:")?)
}

/// A `/proc/PID/status` field in KiB (0 when the process or field is gone).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A `weft` child process whose stderr (JSON logs) is watched for its bound addresses.
pub struct Child {
    pub child: tokio::process::Child,
    pub lines: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Child {
    /// Runs `weft --log-format json <args>` and waits until it logs `weft is ready`.
    pub async fn spawn(args: &[&str]) -> Child {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(weft_bin())
            .arg("--log-format")
            .arg("json")
            .args(args)
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn weft");
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut reader = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let l = lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                l.lock().unwrap().push(line);
            }
        });
        let c = Child { child, lines };
        let ready = eventually(Duration::from_secs(30), async || c.logged("weft is ready")).await;
        assert!(
            ready,
            "weft did not become ready: {:?}",
            c.lines.lock().unwrap()
        );
        c
    }

    pub fn logged(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }

    /// The address a listener logged it is bound to.
    pub fn listener_addr(&self, name: &str) -> SocketAddr {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == "listening" && v["listener"] == name)
            .and_then(|v| v["address"].as_str()?.parse().ok())
            .unwrap_or_else(|| panic!("no listening line for {name}: {lines:?}"))
    }

    pub fn admin_addr(&self) -> SocketAddr {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == "admin endpoint listening")
            .and_then(|v| v["address"].as_str()?.parse().ok())
            .unwrap_or_else(|| panic!("no admin line: {lines:?}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.pid() as i32, sig);
        }
    }
}

/// The compiled component of a filter crate of this workspace (`hello_filter`,
/// `probe_filter`), built once per test run if `.ci/build-filters` has not built it.
pub fn filter_wasm(crate_file_name: &str) -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // The test binary lives in <target>/release/deps.
            let exe = std::env::current_exe().expect("test binary path");
            exe.ancestors().nth(3).expect("target dir").to_path_buf()
        });
    let path = target
        .join("wasm32-wasip2/release")
        .join(format!("{crate_file_name}.wasm"));
    if !path.exists() {
        BUILT.call_once(|| {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
            let status = std::process::Command::new(root.join(".ci/build-filters"))
                .env("CARGO_TARGET_DIR", &target)
                .status()
                .expect("run .ci/build-filters");
            assert!(status.success(), "building the test filters failed");
        });
    }
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Config text declaring a filter (a `[[filters]]` table; chains are declared apart).
pub fn filter_decl(name: &str, wasm: &std::path::Path, config_json: &str) -> String {
    format!(
        "[[filters]]\nname = \"{name}\"\nmodule = \"{}\"\nconfig = {}\n",
        wasm.display(),
        json_to_toml_inline(config_json)
    )
}

/// `{"a": 1}` as an inline TOML table (enough for the flat configs tests use).
pub fn json_to_toml_inline(json: &str) -> String {
    fn conv(v: &serde_json::Value) -> String {
        match v {
            serde_json::Value::Object(m) => {
                let parts: Vec<String> = m
                    .iter()
                    .map(|(k, v)| format!("{k} = {}", conv(v)))
                    .collect();
                format!("{{ {} }}", parts.join(", "))
            }
            serde_json::Value::Array(a) => {
                format!("[{}]", a.iter().map(conv).collect::<Vec<_>>().join(", "))
            }
            serde_json::Value::String(s) => format!("{s:?}"),
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Null => "{}".into(),
        }
    }
    conv(&serde_json::from_str(json).expect("valid JSON"))
}

/// What a `Steered` backend does now; tests change it while traffic flows.
pub struct Steering {
    /// Status of every answer except `/health` and `/stall/N`.
    pub status: std::sync::atomic::AtomicU16,
    /// Status of `/health` (what active health checks ask).
    pub health: std::sync::atomic::AtomicU16,
    /// Milliseconds to wait before answering (not `/health`).
    pub delay_ms: std::sync::atomic::AtomicU64,
    /// Requests answered, not counting `/health`.
    pub hits: AtomicUsize,
    pub health_hits: AtomicUsize,
    /// Requests being answered now, and the most there ever were at once.
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
}

/// A backend on 127.0.0.1:0 whose answers a test steers at run time (see
/// `Steering`), and which can be killed: `kill` closes the listener and every
/// connection it accepted, so the port refuses connections from then on.
///
/// Every request (any path) gets `status` after `delay_ms`, with the body
/// `hello from <name>` and an `x-backend` header, except `/health` (the
/// `health` status, at once) and `/stall/N` (200, then N chunks, then a body
/// that never goes on).
pub struct Steered {
    pub addr: SocketAddr,
    pub name: String,
    pub steer: Arc<Steering>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// After `kill`, keeps the address refusing.
    closed: Option<ClosedPort>,
}

impl Drop for Steered {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl Steered {
    pub async fn start(name: &str) -> Steered {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let steer = Arc::new(Steering {
            status: 200.into(),
            health: 200.into(),
            delay_ms: 0.into(),
            hits: 0.into(),
            health_hits: 0.into(),
            in_flight: 0.into(),
            max_in_flight: 0.into(),
        });
        let (s, n) = (steer.clone(), name.to_string());
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every connection.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                while conns.try_join_next().is_some() {}
                let (s, n) = (s.clone(), n.clone());
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        let (s, n) = (s.clone(), n.clone());
                        async move { Ok::<_, Infallible>(steered_answer(req, &s, &n).await) }
                    });
                    serve_conn(TokioIo::new(tcp), svc, Proto::Auto).await;
                });
            }
        });
        Steered {
            addr,
            name: name.to_string(),
            steer,
            task: Some(task),
            closed: None,
        }
    }

    pub fn hits(&self) -> usize {
        self.steer.hits.load(Ordering::Relaxed)
    }

    pub fn health_hits(&self) -> usize {
        self.steer.health_hits.load(Ordering::Relaxed)
    }

    pub fn max_in_flight(&self) -> usize {
        self.steer.max_in_flight.load(Ordering::Relaxed)
    }

    pub fn set_status(&self, status: u16) {
        self.steer.status.store(status, Ordering::Relaxed);
    }

    pub fn set_health(&self, status: u16) {
        self.steer.health.store(status, Ordering::Relaxed);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.steer
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Closes the listener and every open connection; returns once they are closed.
    /// From then on the address refuses connections.
    pub async fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
            self.closed = Some(ClosedPort::at(self.addr));
        }
    }
}

async fn steered_answer(req: Request<Incoming>, s: &Steering, name: &str) -> Response<TestBody> {
    let path = req.uri().path();
    if path == "/health" {
        s.health_hits.fetch_add(1, Ordering::Relaxed);
        return status(StatusCode::from_u16(s.health.load(Ordering::Relaxed)).unwrap());
    }
    s.hits.fetch_add(1, Ordering::Relaxed);
    let now = s.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
    s.max_in_flight.fetch_max(now, Ordering::Relaxed);
    let mut resp = if let Some(n) = path.strip_prefix("/stall/") {
        let chunks = n.parse::<usize>().unwrap_or(0);
        let sent = futures_util::stream::iter((0..chunks).map(|i| {
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(format!(
                "chunk{i};"
            ))))
        }));
        let stalled = futures_util::stream::pending();
        Response::new(StreamBody::new(futures_util::StreamExt::chain(sent, stalled)).boxed())
    } else {
        let delay = s.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let mut r = Response::new(full(format!("hello from {name}")));
        *r.status_mut() = StatusCode::from_u16(s.status.load(Ordering::Relaxed)).unwrap();
        r
    };
    s.in_flight.fetch_sub(1, Ordering::Relaxed);
    resp.headers_mut()
        .insert("x-backend", name.parse().unwrap());
    resp
}

/// The `x-backend` header of an answer, or "" when there is none.
pub fn backend_of(headers: &HeaderMap) -> String {
    headers
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// The admin `/clusters` view: the state of each endpoint of `cluster`, by address.
pub async fn endpoint_states(
    proxy: &Proxy,
    cluster: &str,
) -> std::collections::HashMap<SocketAddr, String> {
    let (status, _, body) = get(&h1(), &proxy.admin_url("/clusters")).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let c = v["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == cluster)
        .unwrap_or_else(|| panic!("no cluster {cluster} in {v}"));
    c["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["address"].as_str().unwrap().parse().unwrap(),
                e["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}
