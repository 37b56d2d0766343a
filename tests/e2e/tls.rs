//! TLS: certificates chosen by SNI, ALPN choosing HTTP/2 or HTTP/1.1 on a TLS
//! listener, client certificates (mTLS), and HTTPS upstreams whose certificates the
//! proxy verifies.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::support::*;

/// A client config trusting `pki`, offering `alpn`, sending SNI or not, and
/// presenting `cert` when given.
fn client_config(pki: &Pki, alpn: &[&[u8]], sni: bool, cert: Option<&Leaf>) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(weft::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(pki.roots());
    let mut c = match cert {
        Some(l) => builder
            .with_client_auth_cert(vec![l.der.clone()], l.key_der.clone_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    c.enable_sni = sni;
    Arc::new(c)
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    config: Arc<ClientConfig>,
    name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config)
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await
}

/// The leaf certificate the server presented.
fn peer_leaf(s: &TlsStream<TcpStream>) -> Vec<u8> {
    s.get_ref()
        .1
        .peer_certificates()
        .expect("server certificate")[0]
        .to_vec()
}

fn negotiated_alpn(s: &TlsStream<TcpStream>) -> Option<String> {
    s.get_ref()
        .1
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned())
}

/// Sends `GET path` on an established connection, over HTTP/2 when ALPN chose it.
/// Returns the response's version, status and body.
async fn get_over(
    io: TlsStream<TcpStream>,
    authority: &str,
    path: &str,
) -> anyhow::Result<(Version, StatusCode, Bytes)> {
    let h2 = negotiated_alpn(&io).as_deref() == Some("h2");
    let resp = if h2 {
        let (mut sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
        tokio::spawn(conn);
        let req = Request::get(format!("https://{authority}{path}")).body(empty())?;
        sender.send_request(req).await?
    } else {
        let (mut sender, conn) = http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(conn);
        let req = Request::get(path).header("host", authority).body(empty())?;
        sender.send_request(req).await?
    };
    let (version, status) = (resp.version(), resp.status());
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((version, status, body))
}

fn toml_path(p: &Path) -> String {
    p.display().to_string()
}

/// A TLS listener "main" in front of `backend` serving `certs` (cert, key, server_names).
fn tls_listener(backend: &Backend, certs: &[(&Path, &Path, &[&str])], extra: &str) -> String {
    let mut cfg = format!(
        "[[listeners]]\nname = \"main\"\naddress = \"127.0.0.1:0\"\ncluster = \"b\"\n[listeners.tls]\n{extra}\n"
    );
    for (cert, key, names) in certs {
        cfg += &format!(
            "[[listeners.tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\nserver_names = {names:?}\n",
            toml_path(cert),
            toml_path(key)
        );
    }
    cfg += &format!(
        "\n[[clusters]]\nname = \"b\"\nendpoints = [\"{}\"]\n",
        backend.addr
    );
    cfg
}

#[tokio::test]
async fn sni_chooses_the_certificate_and_alpn_the_protocol() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let a = pki.leaf(&["a.test"], &[]);
    let b = pki.leaf(&["b.test"], &[]);
    let wild = pki.leaf(&["*.wild.test"], &[]);
    let (ac, ak) = pki.write(dir.path(), "a", &a);
    let (bc, bk) = pki.write(dir.path(), "b", &b);
    let (wc, wk) = pki.write(dir.path(), "wild", &wild);
    let backend = Backend::start("b1").await;
    // `a` and `wild` serve the names in their certificates; `b` names its own.
    let proxy = Proxy::start(&tls_listener(
        &backend,
        &[(&ac, &ak, &[]), (&bc, &bk, &["B.test"]), (&wc, &wk, &[])],
        "",
    ))
    .await;
    let addr = proxy.addr("main");

    let cases = [("a.test", &a), ("b.test", &b), ("api.wild.test", &wild)];
    for (name, leaf) in cases {
        for (alpn, version, upstream_version) in [
            ("h2", Version::HTTP_2, "HTTP/2.0"),
            ("http/1.1", Version::HTTP_11, "HTTP/1.1"),
        ] {
            let what = format!("SNI {name}, ALPN {alpn}");
            let config = client_config(&pki, &[alpn.as_bytes()], true, None);
            let tls = tls_connect(addr, config, name)
                .await
                .unwrap_or_else(|e| panic!("{what}: handshake failed: {e}"));
            assert_eq!(
                peer_leaf(&tls),
                leaf.der.to_vec(),
                "{what}: wrong certificate"
            );
            assert_eq!(negotiated_alpn(&tls).as_deref(), Some(alpn), "{what}");
            let (got_version, status, body) = get_over(tls, name, "/info").await.unwrap();
            assert_eq!(status, 200, "{what}: {body:?}");
            assert_eq!(got_version, version, "{what}");
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["backend"], "b1");
            // An auto cluster follows the client: HTTP/2 to an upstream that speaks it.
            assert_eq!(v["version"], upstream_version, "{what}");
            assert_eq!(v["headers"]["x-forwarded-proto"], "https", "{what}");
        }
    }

    // No SNI at all: the first certificate. (The client still verifies it as a.test,
    // so any other certificate would fail the handshake.)
    let config = client_config(&pki, &[b"h2", b"http/1.1"], false, None);
    let tls = tls_connect(addr, config, "a.test").await.unwrap();
    assert_eq!(peer_leaf(&tls), a.der.to_vec());
    // Offered both, the client gets the listener's first preference.
    assert_eq!(negotiated_alpn(&tls).as_deref(), Some("h2"));
    let (version, status, _) = get_over(tls, "a.test", "/").await.unwrap();
    assert_eq!((version, status), (Version::HTTP_2, StatusCode::OK));
    assert_eq!(backend.hits(), 7);
}

#[tokio::test]
async fn listener_alpn_list_limits_the_protocols() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let a = pki.leaf(&["a.test"], &[]);
    let (ac, ak) = pki.write(dir.path(), "a", &a);
    let backend = Backend::start("b1").await;
    let proxy = Proxy::start(&tls_listener(
        &backend,
        &[(&ac, &ak, &[])],
        "alpn = [\"http/1.1\"]",
    ))
    .await;
    let config = client_config(&pki, &[b"h2", b"http/1.1"], true, None);
    let tls = tls_connect(proxy.addr("main"), config, "a.test")
        .await
        .unwrap();
    assert_eq!(negotiated_alpn(&tls).as_deref(), Some("http/1.1"));
    let (version, status, body) = get_over(tls, "a.test", "/").await.unwrap();
    assert_eq!((version, status), (Version::HTTP_11, StatusCode::OK));
    assert_eq!(body, "hello from b1");
}

#[tokio::test]
async fn client_ca_requires_a_client_certificate_from_that_ca() {
    let pki = Pki::new();
    let stranger = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let server = pki.leaf(&["a.test"], &[]);
    let (sc, sk) = pki.write(dir.path(), "server", &server);
    let ca = dir.path().join("clients-ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let backend = Backend::start("b1").await;
    let proxy = Proxy::start(&tls_listener(
        &backend,
        &[(&sc, &sk, &[])],
        &format!("client_ca = \"{}\"", toml_path(&ca)),
    ))
    .await;
    let addr = proxy.addr("main");

    // Under TLS 1.3 the client finishes its side of the handshake before the server
    // judges its certificate, so the refusal may only show on the first request.
    let attempt = async |cert: Option<&Leaf>| {
        let config = client_config(&pki, &[b"http/1.1"], true, cert);
        let tls = tls_connect(addr, config, "a.test").await?;
        get_over(tls, "a.test", "/info").await
    };

    let refused = attempt(None).await;
    assert!(refused.is_err(), "no client certificate: {refused:?}");
    let foreign = stranger.leaf(&["client.test"], &[]);
    let refused = attempt(Some(&foreign)).await;
    assert!(refused.is_err(), "certificate of another CA: {refused:?}");
    assert_eq!(backend.hits(), 0, "a refused client reached the upstream");
    let handshakes_failed = eventually(std::time::Duration::from_secs(5), async || {
        proxy
            .metric("weft_limit_hits_total{listener=\"main\",limit=\"tls_handshake\"}")
            .await
            >= 2.0
    })
    .await;
    assert!(handshakes_failed, "{}", proxy.metrics().await);

    let client = pki.leaf(
        &["client.test"],
        &["spiffe://weft.test/ns/default/sa/client"],
    );
    let (version, status, body) = attempt(Some(&client)).await.unwrap();
    assert_eq!(
        (version, status),
        (Version::HTTP_11, StatusCode::OK),
        "{body:?}"
    );
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["headers"]["x-forwarded-proto"], "https");
    assert_eq!(backend.hits(), 1);

    // Verified for a.test, the client may not name another host (`strict_sni_host`
    // is on with client certificates unless the listener turns it off).
    let config = client_config(&pki, &[b"http/1.1"], true, Some(&client));
    let tls = tls_connect(addr, config, "a.test").await.unwrap();
    let (_, status, _) = get_over(tls, "b.test", "/info").await.unwrap();
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(backend.hits(), 1);
}

#[tokio::test]
async fn strict_sni_host_answers_421_to_a_host_other_than_the_sni() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    // One certificate for both names: a client may reuse a connection made for one
    // to ask for the other (as browsers coalesce HTTP/2 connections).
    let both = pki.leaf(&["a.test", "b.test"], &[]);
    let (c, k) = pki.write(dir.path(), "both", &both);
    let backend = Backend::start("b1").await;
    let ask = async |proxy: &Proxy, sni: &str, authority: &str, alpn: &str| {
        let config = client_config(&pki, &[alpn.as_bytes()], true, None);
        let tls = tls_connect(proxy.addr("main"), config, sni).await.unwrap();
        let (_, status, body) = get_over(tls, authority, "/").await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    };

    let strict = Proxy::start(&tls_listener(
        &backend,
        &[(&c, &k, &[])],
        "strict_sni_host = true",
    ))
    .await;
    for alpn in ["h2", "http/1.1"] {
        for authority in ["a.test", "A.Test:443", "a.test."] {
            let (status, _) = ask(&strict, "a.test", authority, alpn).await;
            assert_eq!(status, StatusCode::OK, "{authority} over {alpn}");
        }
        let (status, body) = ask(&strict, "a.test", "b.test", alpn).await;
        assert_eq!(
            (status, &body[..]),
            (
                StatusCode::MISDIRECTED_REQUEST,
                "host does not match the TLS server name\n"
            ),
            "over {alpn}"
        );
    }
    assert_eq!(backend.hits(), 6);
    // A CONNECT names where its tunnel goes, not a host of the listener: not checked.
    let config = client_config(&pki, &[b"http/1.1"], true, None);
    let mut tls = tls_connect(strict.addr("main"), config, "a.test")
        .await
        .unwrap();
    tls.write_all(b"CONNECT b.test:443 HTTP/1.1\r\nhost: b.test:443\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    tls.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");

    // Off (the default without client certificates), the Host routes as it is.
    let lenient = Proxy::start(&tls_listener(&backend, &[(&c, &k, &[])], "")).await;
    let (status, _) = ask(&lenient, "a.test", "b.test", "h2").await;
    assert_eq!(status, StatusCode::OK);
}

/// A TLS backend whose certificate comes from `pki` for `names`, offering `alpn`.
async fn tls_backend(pki: &Pki, name: &str, names: &[&str], alpn: &[&[u8]]) -> Backend {
    let leaf = pki.leaf(names, &[]);
    Backend::start_with(name, Proto::Auto, Some(pki.server_config(&leaf, alpn))).await
}

#[tokio::test]
async fn https_upstreams_are_verified_and_alpn_picks_http2() {
    let pki = Pki::new();
    let rogue_ca = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();

    let both = tls_backend(&pki, "both", &["upstream.test"], &[b"h2", b"http/1.1"]).await;
    let h1_only = tls_backend(&pki, "h1only", &["upstream.test"], &[b"http/1.1"]).await;
    let rogue = tls_backend(&rogue_ca, "rogue", &["upstream.test"], &[b"h2"]).await;
    let misnamed = tls_backend(&pki, "misnamed", &["other.test"], &[b"h2"]).await;
    // Named by IP: the endpoint's host is what the certificate must match.
    let by_ip = tls_backend(&pki, "by-ip", &["127.0.0.1"], &[b"h2", b"http/1.1"]).await;

    let mut cfg = String::new();
    for (name, backend, server_name) in [
        ("both", &both, Some("upstream.test")),
        ("h1only", &h1_only, Some("upstream.test")),
        ("rogue", &rogue, Some("upstream.test")),
        ("misnamed", &misnamed, Some("upstream.test")),
        ("byip", &by_ip, None),
    ] {
        let server_name = server_name
            .map(|n| format!("server_name = \"{n}\"\n"))
            .unwrap_or_default();
        cfg += &format!(
            r#"
[[listeners]]
name = "{name}"
address = "127.0.0.1:0"
cluster = "{name}"

[[clusters]]
name = "{name}"
endpoints = ["{}"]
[clusters.tls]
ca = "{}"
{server_name}"#,
            backend.addr,
            toml_path(&ca)
        );
    }
    let proxy = Proxy::start(&cfg).await;
    let url = |l: &str, path: &str| format!("http://{}{path}", proxy.addr(l));

    // The same HTTP/1.1 client each time: HTTP/2 upstream is ALPN's doing alone.
    for (listener, upstream_version) in [
        ("both", "HTTP/2.0"),
        ("h1only", "HTTP/1.1"),
        ("byip", "HTTP/2.0"),
    ] {
        let (status, headers, body) = get(&h1(), &url(listener, "/info")).await;
        assert_eq!(status, 200, "{listener}: {body:?}");
        assert_eq!(headers["x-backend"], listener.replace("byip", "by-ip"));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["version"], upstream_version, "{listener}");
    }
    // A second request reuses the HTTP/2 connection ALPN chose.
    let (status, _, _) = get(&h1(), &url("both", "/info")).await;
    assert_eq!(status, 200);
    assert_eq!(
        both.connections.load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    for (listener, backend) in [("rogue", &rogue), ("misnamed", &misnamed)] {
        let (status, _, body) = get(&h1(), &url(listener, "/info")).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{listener}: {body:?}");
        assert_eq!(body, "upstream tls error\n", "{listener}");
        assert_eq!(backend.hits(), 0, "{listener}: the request went through");
        assert!(
            proxy
                .metric(&format!(
                    "weft_upstream_connect_errors_total{{cluster=\"{listener}\"}}"
                ))
                .await
                >= 1.0
        );
    }
}

#[tokio::test]
async fn upstream_mtls_presents_the_cluster_certificate() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let client = pki.leaf(&["proxy.test"], &[]);
    let (cc, ck) = pki.write(dir.path(), "client", &client);

    // A backend that accepts only clients with a certificate from the test CA.
    let server = pki.leaf(&["upstream.test"], &[]);
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(pki.roots()),
        weft::tls::provider(),
    )
    .build()
    .unwrap();
    let mut sc = rustls::ServerConfig::builder_with_provider(weft::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server.der.clone()], server.key_der.clone_key())
        .unwrap();
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let backend = Backend::start_with("strict", Proto::Auto, Some(Arc::new(sc))).await;

    let cluster = |name: &str, with_cert: bool| {
        let cert = if with_cert {
            format!(
                "cert = \"{}\"\nkey = \"{}\"\n",
                toml_path(&cc),
                toml_path(&ck)
            )
        } else {
            String::new()
        };
        format!(
            "[[clusters]]\nname = \"{name}\"\nendpoints = [\"{}\"]\n[clusters.tls]\nserver_name = \"upstream.test\"\nca = \"{}\"\n{cert}\n",
            backend.addr,
            toml_path(&ca)
        )
    };
    let proxy = Proxy::start(&format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
[[listeners.routes]]
path_prefix = "/anonymous"
cluster = "anonymous"
[[listeners.routes]]
cluster = "identified"

{}
{}"#,
        cluster("identified", true),
        cluster("anonymous", false)
    ))
    .await;

    let (status, _, body) = get(&h1(), &proxy.url("/hello")).await;
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(body, "hello from strict");
    let (status, _, _) = get(&h1(), &proxy.url("/anonymous")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(backend.hits(), 1);
}

#[tokio::test]
async fn a_reload_picks_up_a_rotated_upstream_ca_of_an_unchanged_cluster() {
    let pki = Pki::new();
    let old_ca = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    // The upstream's certificate is already signed by the new CA; the proxy still
    // trusts the old one.
    std::fs::write(&ca, &old_ca.ca_pem).unwrap();
    let backend = tls_backend(&pki, "b1", &["upstream.test"], &[b"http/1.1"]).await;
    let config = format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
cluster = "up"

[[clusters]]
name = "up"
endpoints = ["{}"]
[clusters.tls]
server_name = "upstream.test"
ca = "{}"
"#,
        backend.addr,
        toml_path(&ca)
    );
    let proxy = Proxy::start(&config).await;
    let client = h1();
    let (status, _, body) = get(&client, &proxy.url("/")).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::BAD_GATEWAY, &b"upstream tls error\n"[..])
    );

    // The CA file is rotated; the config file is the same.
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let (status, body) = crate::ops_support::reload(&proxy).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, headers, _) = get(&client, &proxy.url("/")).await;
    assert_eq!(status, 200, "the rotated CA was not picked up");
    assert_eq!(headers["x-backend"], "b1");

    // With the files as they were, the cluster is kept, with its pooled connection.
    let connections = || {
        backend
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = connections();
    let (status, body) = crate::ops_support::reload(&proxy).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(get(&client, &proxy.url("/")).await.0, 200);
    assert_eq!(connections(), before, "an unchanged cluster was rebuilt");
}

#[tokio::test]
async fn a_renewed_listener_certificate_is_served_without_a_reload_signal() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let old = pki.leaf(&["a.test"], &[]);
    let new = pki.leaf(&["a.test"], &[]);
    let (cert, key) = pki.write(dir.path(), "a", &old);
    let backend = Backend::start("b1").await;
    // Watching on (the test preamble turns it off).
    let config = format!(
        "{}{}",
        crate::ops_support::preamble_with(dir.path(), true, "5s"),
        tls_listener(&backend, &[(&cert, &key, &[])], "")
    );
    let path = crate::ops_support::write_file(dir.path(), "weft.toml", &config);
    let app = weft::app::App::start(weft::app::ConfigSource::File(path))
        .await
        .unwrap();
    let addr = app.listener_addr("main").unwrap();
    let served = async || {
        let config = client_config(&pki, &[b"http/1.1"], true, None);
        let tls = tls_connect(addr, config, "a.test")
            .await
            .unwrap_or_else(|e| panic!("a handshake failed: {e}"));
        peer_leaf(&tls)
    };
    assert_eq!(served().await, old.der.to_vec());

    // Renewed as renewal tools do it: each file written aside and renamed over it,
    // the certificate first. (A look at the files between the two renames reloads a
    // certificate with the old key: that reload is refused and the old pair serves.)
    for (name, text) in [("a.crt", &new.cert_pem), ("a.key", &new.key_pem)] {
        let tmp = crate::ops_support::write_file(dir.path(), &format!(".{name}.new"), text);
        std::fs::rename(tmp, dir.path().join(name)).unwrap();
    }
    // Every handshake meanwhile succeeds, with the old certificate or the new one.
    let renewed = eventually(std::time::Duration::from_secs(10), async || {
        let leaf = served().await;
        assert!(leaf == old.der.to_vec() || leaf == new.der.to_vec());
        leaf == new.der.to_vec()
    })
    .await;
    assert!(renewed, "the renewed certificate was not picked up");
    let tls = tls_connect(addr, client_config(&pki, &[b"h2"], true, None), "a.test")
        .await
        .unwrap();
    let (_, status, _) = get_over(tls, "a.test", "/").await.unwrap();
    assert_eq!(status, StatusCode::OK);
}
