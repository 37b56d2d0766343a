//! The SDK seen from a filter author's side: filters run natively against the fake host.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::json;
use weft_sdk::crypto::{self, HashAlgorithm, PublicKey, SignatureAlgorithm};
use weft_sdk::http::{HeaderMap, Request, Response, StatusCode};
use weft_sdk::log::Level;
use weft_sdk::metrics::{Gauge, Histogram};
use weft_sdk::outbound::{self, CallError, Timeout};
use weft_sdk::testing::{Phase, TestHost};
use weft_sdk::{
    shared, Action, BodyAction, BodyMode, Completion, ConfigError, Connection, Context, Filter,
    HeaderError, TlsInfo,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

// ---- per-request state ----

#[derive(Clone)]
struct Seen(String);

struct Remember;

impl Filter for Remember {
    type Config = ();

    fn configure(_: ()) -> Result<Self, ConfigError> {
        Ok(Remember)
    }

    async fn on_request_headers(&self, ctx: &mut Context) -> Action {
        let earlier = ctx.extensions().get::<Seen>().map(|s| s.0.clone());
        let path = ctx.request().path();
        ctx.extensions_mut().insert(Seen(path));
        match earlier {
            // Must never happen: each request starts with empty extensions.
            Some(leaked) => Action::respond(StatusCode::INTERNAL_SERVER_ERROR)
                .body(leaked)
                .into(),
            None => Action::Continue,
        }
    }

    async fn on_response_headers(&self, ctx: &mut Context) -> Action {
        let seen = ctx
            .extensions()
            .get::<Seen>()
            .map_or("none".into(), |s| s.0.clone());
        let _ = ctx.response().set_header("x-seen", seen);
        Action::Continue
    }

    async fn on_complete(&self, ctx: &mut Context, info: &Completion) {
        weft_sdk::log::info!(
            "done {} with {:?} and {}",
            ctx.request_id(),
            info.status,
            ctx.extensions().get::<Seen>().is_some()
        );
    }
}

#[test]
fn every_request_gets_a_fresh_context() -> TestResult {
    let mut t = TestHost::<Remember>::new(())?;
    for path in ["/a", "/b"] {
        let action = t.request(Request::get(path).body(())?).on_request_headers();
        assert_eq!(action, Action::Continue);
        t.on_response_headers();
        let response = t.current_response().ok_or("no response")?;
        assert_eq!(response.headers()["x-seen"], path);
    }
    Ok(())
}

#[test]
fn extensions_keep_the_instance_for_their_request_only() -> TestResult {
    let mut t = TestHost::<Remember>::new(())?;
    t.request(Request::get("/a").body(())?);
    assert!(!t.keeps_instance());
    t.on_request_headers();
    assert!(t.keeps_instance(), "stored an extension");
    t.request(Request::get("/b").body(())?);
    assert!(!t.keeps_instance(), "a new request starts unkept");
    Ok(())
}

/// Carries the request path to the response phase in a request value.
struct Carry;

impl Filter for Carry {
    type Config = ();

    fn configure(_: ()) -> Result<Self, ConfigError> {
        Ok(Carry)
    }

    async fn on_request_headers(&self, ctx: &mut Context) -> Action {
        match ctx.set_value("carry.path", ctx.request().path()) {
            Ok(()) => Action::Continue,
            Err(e) => Action::respond(StatusCode::INTERNAL_SERVER_ERROR)
                .body(e.to_string())
                .into(),
        }
    }

    async fn on_response_headers(&self, ctx: &mut Context) -> Action {
        let path = ctx.value("carry.path").unwrap_or_default();
        let _ = ctx.response().set_header("x-path", path.as_slice());
        Action::Continue
    }
}

#[test]
fn request_values_cross_phases_within_a_budget() -> TestResult {
    let mut t = TestHost::<Carry>::new(())?;
    t.request(Request::get("/a").body(())?).on_request_headers();
    assert_eq!(t.request_value("carry.path").as_deref(), Some(&b"/a"[..]));
    t.response(Response::builder().status(200).body(())?);
    t.on_response_headers();
    assert_eq!(
        t.current_response().ok_or("no response")?.headers()["x-path"],
        "/a"
    );
    assert!(
        !t.keeps_instance(),
        "request values do not keep the instance"
    );

    // A new request starts without the old one's values.
    t.request(Request::get("/b").body(())?);
    assert_eq!(t.request_value("carry.path"), None);

    // 16 KiB of keys and values per request, as in the proxy ("/b" is the value).
    let exact = 16 * 1024 - "other".len() - "carry.path".len() - "/b".len();
    t.set_request_value("other", vec![0u8; exact]);
    assert_eq!(t.on_request_headers(), Action::Continue, "fits exactly");
    t.request(Request::get("/b").body(())?);
    t.set_request_value("other", vec![0u8; exact + 1]);
    assert_ne!(t.on_request_headers(), Action::Continue, "one byte over");
    assert_eq!(t.request_value("carry.path"), None);
    Ok(())
}

#[test]
fn the_context_is_dropped_after_completion() -> TestResult {
    let mut t = TestHost::<Remember>::new(())?;
    t.request(Request::get("/a").body(())?).on_request_headers();
    let id = t.request_id();
    t.on_complete(Completion {
        status: Some(StatusCode::OK),
        ..Completion::default()
    });
    // A phase of the same request after completion sees a new, empty context.
    t.on_response_headers();
    let response = t.current_response().ok_or("no response")?;
    assert_eq!(response.headers()["x-seen"], "none");
    assert_eq!(
        t.logs()[0].message,
        format!("done {id} with Some(200) and true")
    );
    assert!(t.skipped().is_empty());
    Ok(())
}

// ---- headers, pseudo-headers and phases ----

struct Rewrite;

impl Filter for Rewrite {
    type Config = ();

    fn configure(_: ()) -> Result<Self, ConfigError> {
        Ok(Rewrite)
    }

    async fn on_request_headers(&self, ctx: &mut Context) -> Action {
        let req = ctx.request();
        assert_eq!(req.method(), "POST");
        assert_eq!(req.scheme(), weft_sdk::http::uri::Scheme::HTTPS);
        assert_eq!(
            req.authority().map(|a| a.to_string()).as_deref(),
            Some("api.example.com")
        );
        assert_eq!(req.path(), "/items");
        assert_eq!(req.query().as_deref(), Some("id=3"));
        assert_eq!(req.header_all("accept").len(), 2);
        assert_eq!(req.headers().len(), 3);
        assert_eq!(
            req.set_header("bad name", "x"),
            Err(HeaderError::InvalidName)
        );
        assert_eq!(
            req.set_header("x-ok", "a\nb"),
            Err(HeaderError::InvalidValue)
        );
        assert_eq!(req.set_path("no-slash"), Err(HeaderError::InvalidValue));
        // No response yet: writes to it are kept for the response to come.
        assert_eq!(ctx.response().status(), None);
        assert_eq!(ctx.response().set_header("x-a", "b"), Ok(()));
        assert_eq!(ctx.response().append_header("x-a", "c"), Ok(()));
        assert_eq!(ctx.response().remove_header("server"), Ok(()));
        assert_eq!(ctx.response().header("x-a"), None);

        let writes = [
            req.set_path("/v2/items?id=3"),
            req.set_authority("backend.internal"),
            req.set_method(weft_sdk::http::Method::PUT),
            req.append_header("accept", "text/plain"),
            req.remove_header("x-drop"),
            req.set_body_mode(BodyMode::Buffer),
        ];
        if writes.iter().any(Result::is_err) {
            return Action::respond(StatusCode::INTERNAL_SERVER_ERROR).into();
        }
        Action::route("backend")
    }

    async fn on_request_body(&self, ctx: &mut Context, body: Vec<u8>, end: bool) -> BodyAction {
        // Buffered: the headers are still held, so they can change.
        assert!(end);
        let _ = ctx
            .request()
            .set_header("content-length", body.len().to_string());
        BodyAction::Replace(body.to_ascii_uppercase())
    }

    async fn on_response_headers(&self, ctx: &mut Context) -> Action {
        // The request is gone upstream: it cannot change any more.
        assert_eq!(
            ctx.request().set_header("x-late", "1"),
            Err(HeaderError::Immutable)
        );
        assert_eq!(
            ctx.request().set_body_mode(BodyMode::Stream),
            Err(HeaderError::Immutable)
        );
        if ctx.response().status() == Some(StatusCode::SERVICE_UNAVAILABLE) {
            return Action::Retry;
        }
        let _ = ctx.response().set_status(StatusCode::CREATED);
        let _ = ctx.response().set_body_mode(BodyMode::Stream);
        Action::Continue
    }

    async fn on_response_body(&self, ctx: &mut Context, chunk: Vec<u8>, _: bool) -> BodyAction {
        // Streaming: the response headers have been sent.
        assert_eq!(
            ctx.response().set_header("x-late", "1"),
            Err(HeaderError::Immutable)
        );
        BodyAction::Replace(chunk.into_iter().rev().collect())
    }

    async fn on_response_trailers(&self, ctx: &mut Context) -> Action {
        let status = ctx.response_trailers().header("grpc-status");
        let _ = ctx
            .response_trailers()
            .set_header("x-grpc-seen", if status.is_some() { "yes" } else { "no" });
        Action::Continue
    }
}

#[test]
fn a_filter_reads_and_rewrites_the_request_and_response() -> TestResult {
    let mut t = TestHost::<Rewrite>::new(())?;
    let req = Request::post("https://api.example.com/items?id=3")
        .header("accept", "application/json")
        .header("accept", "text/html")
        .header("x-drop", "1")
        .body(())?;
    assert_eq!(
        t.request(req).on_request_headers(),
        Action::route("backend")
    );
    assert_eq!(t.request_body_mode(), BodyMode::Buffer);
    assert_eq!(
        t.on_request_body("hello", true),
        BodyAction::Replace(b"HELLO".to_vec())
    );

    let sent = t.current_request();
    assert_eq!(sent.method(), "PUT");
    assert_eq!(sent.uri(), "https://backend.internal/v2/items?id=3");
    assert_eq!(sent.headers().get_all("accept").iter().count(), 3);
    assert!(sent.headers().get("x-drop").is_none());
    assert_eq!(sent.headers()["content-length"], "5");

    t.response(
        Response::builder()
            .status(200)
            .header("server", "upstream")
            .header("x-a", "upstream")
            .body(())?,
    );
    // The request phase's writes were made on the response as it arrived.
    let arrived = t.current_response().ok_or("no response")?;
    let x_a: Vec<_> = arrived.headers().get_all("x-a").iter().collect();
    assert_eq!(x_a, ["b", "c"]);
    assert!(arrived.headers().get("server").is_none());
    assert_eq!(t.on_response_headers(), Action::Continue);
    assert_eq!(t.response_body_mode(), BodyMode::Stream);
    assert_eq!(
        t.on_response_body("abc", false),
        BodyAction::Replace(b"cba".to_vec())
    );
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse()?);
    assert_eq!(
        t.response_trailers(trailers).on_response_trailers(),
        Action::Continue
    );
    assert_eq!(t.current_response_trailers()["x-grpc-seen"], "yes");
    assert_eq!(
        t.current_response().map(|r| r.status()),
        Some(StatusCode::CREATED)
    );

    t.response(Response::builder().status(503).body(())?);
    assert_eq!(t.on_response_headers(), Action::Retry);
    assert!(t.skipped().is_empty());
    Ok(())
}

#[test]
fn unimplemented_phases_are_skipped_in_order() -> TestResult {
    let mut t = TestHost::<Remember>::new(())?;
    t.on_request_body("x", true);
    t.on_request_trailers();
    t.on_request_body("y", true);
    t.on_response_body("z", true);
    assert_eq!(
        t.skipped(),
        [
            Phase::RequestBody,
            Phase::RequestTrailers,
            Phase::ResponseBody
        ]
    );
    Ok(())
}

// ---- the connection, the clock, randomness, logs ----

struct Env;

impl Filter for Env {
    type Config = ();

    fn configure(_: ()) -> Result<Self, ConfigError> {
        Ok(Env)
    }

    async fn on_request_headers(&self, ctx: &mut Context) -> Action {
        let conn = ctx.connection();
        let identity = conn.tls().and_then(|t| t.peer_identity()).unwrap_or("-");
        weft_sdk::log::debug!("debug {}", conn.listener());
        weft_sdk::log::warn!(
            "{} {} {identity} {}",
            conn.remote_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            weft_sdk::time::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
            weft_sdk::filter_name()
        );
        Action::Continue
    }
}

#[test]
fn connection_clock_and_logs_come_from_the_test_host() -> TestResult {
    let mut t = TestHost::<Env>::unconfigured();
    t.set_filter_name("env")
        .set_log_level(Level::Warn)
        .set_time(UNIX_EPOCH + Duration::from_secs(1_000))
        .connection(
            Connection::new(([10, 1, 2, 3], 4567).into(), ([10, 0, 0, 1], 443).into())
                .with_listener("public")
                .with_tls(TlsInfo::new().with_peer_identity("spiffe://mesh/web")),
        )
        .configure(())?;
    t.advance(Duration::from_secs(5)).on_request_headers();
    let logs = t.logs();
    assert_eq!(logs.len(), 1, "debug is below the level: {logs:?}");
    assert_eq!(logs[0].level, Level::Warn);
    assert_eq!(logs[0].message, "10.1.2.3:4567 1005 spiffe://mesh/web env");
    Ok(())
}

struct Nonce;

impl Filter for Nonce {
    type Config = ();

    fn configure(_: ()) -> Result<Self, ConfigError> {
        Ok(Nonce)
    }

    async fn on_request_headers(&self, ctx: &mut Context) -> Action {
        let nonce: String = weft_sdk::random::bytes(12)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let _ = ctx.request().set_header("x-nonce", nonce);
        Action::Continue
    }
}

#[test]
fn randomness_is_repeatable_in_tests() -> TestResult {
    let mut a = TestHost::<Nonce>::new(())?;
    let mut b = TestHost::<Nonce>::new(())?;
    let nonce = |t: &mut TestHost<Nonce>| {
        t.on_request_headers();
        t.current_request().headers()["x-nonce"].clone()
    };
    let first = nonce(&mut a);
    assert_eq!(first.len(), 24);
    assert_eq!(first, nonce(&mut b), "same seed, same bytes");
    assert_ne!(first, nonce(&mut a), "but not the same bytes twice");
    Ok(())
}

// ---- metrics ----

struct Metered {
    gauge: Gauge,
    hist: Histogram,
}

impl Filter for Metered {
    type Config = ();

    fn configure(_: ()) -> Result<Self, ConfigError> {
        Ok(Metered {
            gauge: Gauge::new("in_flight", "In flight", &["route"])?,
            hist: Histogram::new("size_bytes", "Sizes", &[], &[10.0, 100.0])?,
        })
    }

    async fn on_request_headers(&self, _ctx: &mut Context) -> Action {
        self.gauge.set(&["a"], 5.0);
        self.gauge.add(&["a"], -2.0);
        self.hist.observe(&[], 42.0);
        self.hist.observe(&[], 7.0);
        Action::Continue
    }
}

#[test]
fn metrics_are_recorded() -> TestResult {
    let mut t = TestHost::<Metered>::new(())?;
    t.on_request_headers();
    assert_eq!(t.metric("in_flight", &["a"]), Some(3.0));
    assert_eq!(t.metric("in_flight", &["b"]), None);
    assert_eq!(t.observations("size_bytes", &[]), [42.0, 7.0]);
    assert_eq!(t.metric("size_bytes", &[]), None);
    Ok(())
}

struct Clash;

impl Filter for Clash {
    type Config = ();

    fn configure(_: ()) -> Result<Self, ConfigError> {
        Gauge::new("thing", "A gauge", &[])?;
        Histogram::new("thing", "Now a histogram", &[], &[1.0])?;
        Ok(Clash)
    }
}

#[test]
fn a_metric_the_proxy_refuses_fails_configure() {
    let err = TestHost::<Clash>::new(()).err();
    assert!(matches!(err, Some(ConfigError::Metric(_))), "{err:?}");
    let message = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(message.starts_with("cannot define metric"), "{message}");
}

// ---- shared state ----

#[test]
fn shared_state_expires_on_the_fake_clock() -> TestResult {
    let mut t = TestHost::<Env>::new(())?;
    t.shared_set("token", "abc", Some(Duration::from_secs(10)))
        .set_counter("hits", 41);
    t.advance(Duration::from_secs(9));
    assert_eq!(t.shared_get("token").as_deref(), Some(&b"abc"[..]));
    t.advance(Duration::from_secs(1));
    assert_eq!(t.shared_get("token"), None);
    assert_eq!(t.counter("hits"), 41);
    Ok(())
}

struct Leader;

impl Filter for Leader {
    type Config = ();

    fn configure(_: ()) -> Result<Self, ConfigError> {
        Ok(Leader)
    }

    async fn on_request_headers(&self, _ctx: &mut Context) -> Action {
        shared::counter_add("requests", 1);
        let lock = shared::compare_and_swap("lock", None, b"me", Some(Duration::from_secs(1)));
        match lock {
            Ok(()) => Action::Continue,
            Err(shared::StoreError::Conflict) => Action::respond(StatusCode::CONFLICT).into(),
            Err(_) => Action::respond(StatusCode::INTERNAL_SERVER_ERROR).into(),
        }
    }
}

#[test]
fn compare_and_swap_and_counters() -> TestResult {
    let mut t = TestHost::<Leader>::new(())?;
    assert_eq!(t.on_request_headers(), Action::Continue);
    assert!(matches!(t.on_request_headers(), Action::Respond(r) if r.status() == 409));
    t.advance(Duration::from_secs(1));
    assert_eq!(t.on_request_headers(), Action::Continue);
    assert_eq!(t.counter("requests"), 3);
    assert_eq!(t.shared_get("lock").as_deref(), Some(&b"me"[..]));
    Ok(())
}

// ---- outbound calls ----

struct Fanout;

impl Filter for Fanout {
    type Config = ();

    fn configure(_: ()) -> Result<Self, ConfigError> {
        Ok(Fanout)
    }

    async fn on_request_headers(&self, ctx: &mut Context) -> Action {
        let mut check = Request::get("/allow?user=ada")
            .header("x-trace", ctx.request_id().to_string())
            .body(b"{}".to_vec())
            .unwrap_or_default();
        check
            .extensions_mut()
            .insert(Timeout(Duration::from_micros(1500)));
        // Both calls are sent before either is awaited.
        let allow = outbound::send("authz", check);
        let quota = outbound::send(
            "quota",
            Request::get("/left")
                .body(Vec::<u8>::new())
                .unwrap_or_default(),
        );
        let missing = outbound::send("nowhere", Request::new(Vec::<u8>::new()));

        let allowed =
            matches!(allow.await, Ok(r) if r.status() == StatusCode::OK && r.body() == b"yes");
        let quota = quota.await;
        let missing = missing.await;
        if !matches!(missing, Err(CallError::UnknownCluster(ref c)) if c == "nowhere") {
            return Action::respond(StatusCode::INTERNAL_SERVER_ERROR)
                .body(format!("{missing:?}"))
                .into();
        }
        match (allowed, quota) {
            (true, Ok(left)) => {
                let left = left.headers().get("x-left").cloned();
                if let Some(left) = left {
                    let _ = ctx.request().set_header("x-quota-left", left);
                }
                Action::Continue
            }
            (_, Err(e)) if e.is_retryable() => {
                Action::respond(StatusCode::SERVICE_UNAVAILABLE).into()
            }
            _ => Action::respond(StatusCode::FORBIDDEN).into(),
        }
    }
}

#[test]
fn outbound_calls_get_canned_or_computed_answers() -> TestResult {
    let mut t = TestHost::<Fanout>::new(())?;
    let quota_calls = Rc::new(Cell::new(0));
    let counted = quota_calls.clone();
    t.outbound_response(
        "authz",
        Response::builder().status(200).body(b"yes".to_vec())?,
    )
    .on_outbound("quota", move |req| {
        counted.set(counted.get() + 1);
        assert_eq!(req.uri(), "/left");
        Ok(Response::builder()
            .header("x-left", "9")
            .body(Vec::new())
            .unwrap_or_default())
    });

    assert_eq!(t.on_request_headers(), Action::Continue);
    assert_eq!(t.current_request().headers()["x-quota-left"], "9");
    assert_eq!(quota_calls.get(), 1);

    let calls = t.outbound_calls();
    assert_eq!(calls.len(), 2, "the call to an unknown cluster never left");
    assert_eq!(calls[0].cluster, "authz");
    assert_eq!(calls[0].request.uri(), "/allow?user=ada");
    assert_eq!(calls[0].request.body(), b"{}");
    assert_eq!(
        calls[0].request.headers()["x-trace"],
        t.request_id().to_string().as_str()
    );
    assert_eq!(
        calls[0].request.extensions().get::<Timeout>(),
        Some(&Timeout(Duration::from_millis(2)))
    );

    t.on_outbound("quota", |_| Err(CallError::Timeout));
    assert!(matches!(t.on_request_headers(), Action::Respond(r) if r.status() == 503));
    Ok(())
}

// ---- crypto, for real ----

#[test]
fn crypto_matches_known_answers() {
    let digest = crypto::digest(HashAlgorithm::Sha256, b"abc");
    assert_eq!(
        digest[..8],
        [0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea]
    );
    // RFC 4231, test case 2.
    let tag = crypto::hmac(
        HashAlgorithm::Sha256,
        b"Jefe",
        b"what do ya want for nothing?",
    );
    assert_eq!(tag[..4], [0x5b, 0xdc, 0xc1, 0x46]);
    assert!(crypto::hmac_verify(
        HashAlgorithm::Sha256,
        b"Jefe",
        b"what do ya want for nothing?",
        &tag
    ));
    assert!(!crypto::hmac_verify(
        HashAlgorithm::Sha256,
        b"Jeff",
        b"what do ya want for nothing?",
        &tag
    ));
}

#[test]
fn signatures_verify_with_raw_and_spki_keys() -> TestResult {
    use ring::rand::SystemRandom;
    use ring::signature::{self as sig, KeyPair};
    let rng = SystemRandom::new();

    let pkcs8 = sig::Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| "keygen")?;
    let ed = sig::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| "key")?;
    let signature = ed.sign(b"message");
    let raw = PublicKey::Raw(ed.public_key().as_ref().to_vec());
    let mut spki = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    spki.extend_from_slice(ed.public_key().as_ref());
    for key in [raw, PublicKey::SpkiDer(spki)] {
        assert_eq!(
            crypto::verify(
                SignatureAlgorithm::Ed25519,
                &key,
                b"message",
                signature.as_ref()
            ),
            Ok(true)
        );
        assert_eq!(
            crypto::verify(
                SignatureAlgorithm::Ed25519,
                &key,
                b"massage",
                signature.as_ref()
            ),
            Ok(false)
        );
    }

    let alg = &sig::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = sig::EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(|_| "keygen")?;
    let ec = sig::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).map_err(|_| "key")?;
    let signature = ec.sign(&rng, b"message").map_err(|_| "sign")?;
    let point = ec.public_key().as_ref().to_vec();
    let mut spki = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    spki.extend_from_slice(&point);
    for key in [PublicKey::Raw(point), PublicKey::SpkiDer(spki)] {
        assert_eq!(
            crypto::verify(
                SignatureAlgorithm::Es256,
                &key,
                b"message",
                signature.as_ref()
            ),
            Ok(true)
        );
    }

    let rsa = PublicKey::Rsa {
        n: vec![0xc3; 256],
        e: vec![1, 0, 1],
    };
    assert_eq!(
        crypto::verify(SignatureAlgorithm::Rs256, &rsa, b"m", &[0; 256]),
        Ok(false)
    );
    assert!(crypto::verify(SignatureAlgorithm::Es256, &rsa, b"m", b"s").is_err());
    assert!(crypto::verify(
        SignatureAlgorithm::Es256,
        &PublicKey::SpkiDer(vec![1, 2]),
        b"m",
        b"s"
    )
    .is_err());
    Ok(())
}

// ---- a phase that waits for something that is not a host call ----

struct Stuck;

impl Filter for Stuck {
    type Config = ();

    fn configure(_: ()) -> Result<Self, ConfigError> {
        Ok(Stuck)
    }

    async fn on_request_headers(&self, _ctx: &mut Context) -> Action {
        std::future::pending::<()>().await;
        Action::Continue
    }
}

#[test]
#[should_panic(expected = "the on-request-headers phase awaited a future that can never complete")]
fn a_stuck_phase_fails_clearly() {
    if let Ok(mut t) = TestHost::<Stuck>::new(()) {
        t.on_request_headers();
    }
}

// ---- config shapes ----

#[derive(serde::Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Optional {
    limit: u32,
}

struct WithDefaults(u32);

impl Filter for WithDefaults {
    type Config = Optional;

    fn configure(config: Optional) -> Result<Self, ConfigError> {
        Ok(WithDefaults(config.limit))
    }
}

#[test]
fn all_default_configs_accept_nothing_null_and_empty_objects() -> TestResult {
    for raw in ["", "null", "{}"] {
        assert_eq!(
            TestHost::<WithDefaults>::with_raw_config(raw)?.filter().0,
            0
        );
    }
    assert_eq!(
        TestHost::<WithDefaults>::new(json!({"limit": 4}))?
            .filter()
            .0,
        4
    );
    let err = TestHost::<WithDefaults>::new(json!({"limit": "x"})).err();
    assert!(
        matches!(&err, Some(ConfigError::Mismatch { path: Some(p), .. }) if p == "limit"),
        "{err:?}"
    );
    Ok(())
}
