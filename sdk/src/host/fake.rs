//! The fake host behind native builds: a thread-local stand-in for the proxy.
//!
//! `testing::TestHost` owns one `FakeHost` and installs it as the current one while it
//! runs the filter; code that makes host calls outside a `TestHost` (doctests, unit
//! tests of helpers) gets a default fake of its own thread.
//!
//! The fake is strict where the proxy may be: writes to a message outside the phases
//! where the proxy accepts them fail with `Immutable`, and misused metrics panic with
//! a message, so mistakes show up in tests.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use http::header::{HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, Method, StatusCode};

use super::{Message, MetricKind, OutboundRequest, RawConnection, RawResponse};
use crate::crypto::{CryptoError, HashAlgorithm, PublicKey, SignatureAlgorithm};
use crate::log::Level;
use crate::outbound::{CallError, Timeout};
use crate::shared::StoreError;
use crate::testing::{LogRecord, OutboundCall, Phase};
use crate::{BodyMode, HeaderError};

/// Answers outbound calls to one cluster.
pub(crate) type Handler =
    Box<dyn FnMut(&http::Request<Vec<u8>>) -> Result<http::Response<Vec<u8>>, CallError>>;

/// 2026-01-01T00:00:00Z: a fixed, recognisable start for the fake wall clock.
const START_WALL_NS: u64 = 1_767_225_600 * 1_000_000_000;

pub(crate) struct MetricDef {
    pub(crate) kind: MetricKind,
    pub(crate) name: String,
    pub(crate) label_names: Vec<String>,
    pub(crate) values: HashMap<Vec<String>, f64>,
    pub(crate) observations: HashMap<Vec<String>, Vec<f64>>,
}

/// A response-header write of the request-headers phase, made when the response arrives.
enum ResponseEdit {
    Set(HeaderName, HeaderValue),
    Append(HeaderName, HeaderValue),
    Remove(HeaderName),
}

/// Everything the fake proxy knows.
pub(crate) struct FakeHost {
    /// The phase being run, if any; `None` allows every write (setup, doctests).
    pub(crate) phase: Option<Phase>,
    pub(crate) request_id: u64,
    pub(crate) method: String,
    pub(crate) scheme: String,
    pub(crate) authority: Option<String>,
    pub(crate) path: String,
    pub(crate) status: Option<u16>,
    /// Indexed by `slot(Message)`.
    pub(crate) maps: [HeaderMap; 4],
    pub(crate) request_body_mode: BodyMode,
    pub(crate) response_body_mode: BodyMode,
    pub(crate) filter_name: String,
    pub(crate) log_level: Level,
    pub(crate) logs: Vec<LogRecord>,
    pub(crate) connection: RawConnection,
    pub(crate) wall_ns: u64,
    pub(crate) monotonic_ns: u64,
    rng: u64,
    pub(crate) skipped: Vec<Phase>,
    /// Whether the filter asked to keep its instance for the current request.
    pub(crate) kept: bool,
    /// The current request's values, as the proxy keeps them.
    pub(crate) values: HashMap<String, Vec<u8>>,
    pub(crate) metrics: Vec<MetricDef>,
    pub(crate) counters: HashMap<String, i64>,
    /// Value and expiry (on the monotonic clock, in ns).
    pub(crate) store: HashMap<String, (Vec<u8>, Option<u64>)>,
    pub(crate) handlers: HashMap<String, Handler>,
    /// Response headers written in the request-headers phase, made on the response
    /// when it arrives (as the proxy does).
    response_edits: Vec<ResponseEdit>,
    pending: HashMap<u32, Result<RawResponse, CallError>>,
    next_call: u32,
    pub(crate) calls: Vec<OutboundCall>,
}

impl Default for FakeHost {
    fn default() -> Self {
        Self {
            phase: None,
            request_id: 1,
            method: "GET".into(),
            scheme: "http".into(),
            authority: None,
            path: "/".into(),
            status: None,
            maps: Default::default(),
            request_body_mode: BodyMode::Skip,
            response_body_mode: BodyMode::Skip,
            filter_name: "test".into(),
            log_level: Level::Trace,
            logs: Vec::new(),
            connection: RawConnection {
                remote_address: "127.0.0.1:50000".into(),
                local_address: "127.0.0.1:8080".into(),
                listener: "default".into(),
                tls: None,
            },
            wall_ns: START_WALL_NS,
            monotonic_ns: 1_000_000_000,
            rng: 0x853c_49e6_748f_ea9b,
            skipped: Vec::new(),
            kept: false,
            values: HashMap::new(),
            metrics: Vec::new(),
            counters: HashMap::new(),
            store: HashMap::new(),
            handlers: HashMap::new(),
            response_edits: Vec::new(),
            pending: HashMap::new(),
            next_call: 1,
            calls: Vec::new(),
        }
    }
}

pub(crate) fn slot(msg: Message) -> usize {
    match msg {
        Message::Request => 0,
        Message::RequestTrailers => 1,
        Message::Response => 2,
        Message::ResponseTrailers => 3,
    }
}

impl FakeHost {
    /// Starts a new request: a new id, and nothing left of the previous one.
    pub(crate) fn start_request(&mut self) {
        self.request_id += 1;
        self.method = "GET".into();
        self.scheme = "http".into();
        self.authority = None;
        self.path = "/".into();
        self.status = None;
        self.maps = Default::default();
        self.request_body_mode = BodyMode::Skip;
        self.response_body_mode = BodyMode::Skip;
        self.kept = false;
        self.values.clear();
        self.response_edits.clear();
    }

    /// A response arrived: it gets the edits the request-headers phase asked for.
    pub(crate) fn receive_response(&mut self) {
        let headers = &mut self.maps[slot(Message::Response)];
        for edit in &self.response_edits {
            match edit {
                ResponseEdit::Set(n, v) => {
                    headers.insert(n.clone(), v.clone());
                }
                ResponseEdit::Append(n, v) => {
                    headers.append(n.clone(), v.clone());
                }
                ResponseEdit::Remove(n) => {
                    headers.remove(n);
                }
            }
        }
    }

    /// Whether a write to `msg` is kept for the response to come, as the proxy keeps
    /// response headers written in the request-headers phase.
    fn for_the_response(&self, msg: Message) -> bool {
        matches!(msg, Message::Response) && self.phase == Some(Phase::RequestHeaders)
    }

    /// Whether the running phase may change this message, as the proxy would allow.
    fn writable(&self, msg: Message) -> Result<(), HeaderError> {
        if matches!(msg, Message::Response) && self.status.is_none() {
            return Err(HeaderError::Immutable);
        }
        let Some(phase) = self.phase else {
            return Ok(());
        };
        let ok = match msg {
            Message::Request => {
                phase == Phase::RequestHeaders
                    || (phase == Phase::RequestBody && self.request_body_mode == BodyMode::Buffer)
            }
            Message::RequestTrailers => phase == Phase::RequestTrailers,
            Message::Response => {
                phase == Phase::ResponseHeaders
                    || (phase == Phase::ResponseBody && self.response_body_mode == BodyMode::Buffer)
            }
            Message::ResponseTrailers => phase == Phase::ResponseTrailers,
        };
        if ok {
            Ok(())
        } else {
            Err(HeaderError::Immutable)
        }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: deterministic, so tests repeat.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn live_entry(&mut self, key: &str) -> Option<&Vec<u8>> {
        let now = self.monotonic_ns;
        if self
            .store
            .get(key)
            .is_some_and(|(_, expiry)| expiry.is_some_and(|e| e <= now))
        {
            self.store.remove(key);
        }
        self.store.get(key).map(|(value, _)| value)
    }

    fn expiry(&self, ttl_ms: Option<u64>) -> Option<u64> {
        ttl_ms.map(|ms| {
            self.monotonic_ns
                .saturating_add(ms.saturating_mul(1_000_000))
        })
    }

    fn metric(
        &mut self,
        id: u32,
        label_values: &[&str],
        op: &str,
    ) -> (&mut MetricDef, Vec<String>) {
        let index = usize::try_from(id).unwrap_or(usize::MAX);
        let Some(def) = self.metrics.get_mut(index) else {
            panic!("fake host: metric id {id} was never defined");
        };
        assert_eq!(
            def.label_names.len(),
            label_values.len(),
            "fake host: metric `{}` has labels {:?} but `{op}` was given values {:?}",
            def.name,
            def.label_names,
            label_values
        );
        let key = label_values.iter().map(|v| (*v).to_owned()).collect();
        (def, key)
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<RefCell<FakeHost>>>> = const { RefCell::new(None) };
    static DEFAULT: Rc<RefCell<FakeHost>> = Rc::new(RefCell::new(FakeHost::default()));
}

/// Makes `host` the current fake until the guard drops.
pub(crate) fn install(host: Rc<RefCell<FakeHost>>) -> Installed {
    Installed {
        previous: CURRENT.replace(Some(host)),
    }
}

pub(crate) struct Installed {
    previous: Option<Rc<RefCell<FakeHost>>>,
}

impl Drop for Installed {
    fn drop(&mut self) {
        CURRENT.set(self.previous.take());
    }
}

fn with<R>(f: impl FnOnce(&mut FakeHost) -> R) -> R {
    let host = CURRENT
        .with_borrow(|current| current.clone())
        .unwrap_or_else(|| DEFAULT.with(Rc::clone));
    let mut host = host.borrow_mut();
    f(&mut host)
}

fn valid_name(name: &str) -> Result<HeaderName, HeaderError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| HeaderError::InvalidName)
}

fn valid_value(value: &[u8]) -> Result<HeaderValue, HeaderError> {
    HeaderValue::from_bytes(value).map_err(|_| HeaderError::InvalidValue)
}

// ---- http ----

pub(crate) fn method() -> String {
    with(|h| h.method.clone())
}
pub(crate) fn set_method(method: &str) -> Result<(), HeaderError> {
    Method::from_bytes(method.as_bytes()).map_err(|_| HeaderError::InvalidValue)?;
    with(|h| {
        h.writable(Message::Request)?;
        h.method = method.to_owned();
        Ok(())
    })
}
pub(crate) fn scheme() -> String {
    with(|h| h.scheme.clone())
}
pub(crate) fn authority() -> Option<String> {
    with(|h| h.authority.clone())
}
pub(crate) fn set_authority(authority: &str) -> Result<(), HeaderError> {
    Authority::try_from(authority).map_err(|_| HeaderError::InvalidValue)?;
    with(|h| {
        h.writable(Message::Request)?;
        h.authority = Some(authority.to_owned());
        Ok(())
    })
}
pub(crate) fn path() -> String {
    with(|h| h.path.clone())
}
pub(crate) fn set_path(path: &str) -> Result<(), HeaderError> {
    if !path.starts_with('/') || PathAndQuery::try_from(path).is_err() {
        return Err(HeaderError::InvalidValue);
    }
    with(|h| {
        h.writable(Message::Request)?;
        h.path = path.to_owned();
        Ok(())
    })
}
pub(crate) fn status() -> Option<u16> {
    with(|h| h.status)
}
pub(crate) fn set_status(status: u16) -> Result<(), HeaderError> {
    StatusCode::from_u16(status).map_err(|_| HeaderError::InvalidValue)?;
    with(|h| {
        h.writable(Message::Response)?;
        h.status = Some(status);
        Ok(())
    })
}
pub(crate) fn header(msg: Message, name: &str) -> Option<Vec<u8>> {
    with(|h| h.maps[slot(msg)].get(name).map(|v| v.as_bytes().to_vec()))
}
pub(crate) fn header_all(msg: Message, name: &str) -> Vec<Vec<u8>> {
    with(|h| {
        h.maps[slot(msg)]
            .get_all(name)
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect()
    })
}
pub(crate) fn headers(msg: Message) -> Vec<(String, Vec<u8>)> {
    with(|h| {
        h.maps[slot(msg)]
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect()
    })
}
pub(crate) fn set_header(msg: Message, name: &str, value: &[u8]) -> Result<(), HeaderError> {
    let (name, value) = (valid_name(name)?, valid_value(value)?);
    with(|h| {
        if h.for_the_response(msg) {
            h.response_edits.push(ResponseEdit::Set(name, value));
            return Ok(());
        }
        h.writable(msg)?;
        h.maps[slot(msg)].insert(name, value);
        Ok(())
    })
}
pub(crate) fn append_header(msg: Message, name: &str, value: &[u8]) -> Result<(), HeaderError> {
    let (name, value) = (valid_name(name)?, valid_value(value)?);
    with(|h| {
        if h.for_the_response(msg) {
            h.response_edits.push(ResponseEdit::Append(name, value));
            return Ok(());
        }
        h.writable(msg)?;
        h.maps[slot(msg)].append(name, value);
        Ok(())
    })
}
pub(crate) fn remove_header(msg: Message, name: &str) -> Result<(), HeaderError> {
    let name = valid_name(name)?;
    with(|h| {
        if h.for_the_response(msg) {
            h.response_edits.push(ResponseEdit::Remove(name));
            return Ok(());
        }
        h.writable(msg)?;
        h.maps[slot(msg)].remove(name);
        Ok(())
    })
}
pub(crate) fn set_body_mode(msg: Message, mode: BodyMode) -> Result<(), HeaderError> {
    with(|h| {
        let (headers_phase, target) = match msg {
            Message::Request => (Phase::RequestHeaders, &mut h.request_body_mode),
            Message::Response => (Phase::ResponseHeaders, &mut h.response_body_mode),
            Message::RequestTrailers | Message::ResponseTrailers => {
                return Err(HeaderError::Immutable)
            }
        };
        if h.phase.is_some_and(|p| p != headers_phase) {
            return Err(HeaderError::Immutable);
        }
        *target = mode;
        Ok(())
    })
}

// ---- context ----

pub(crate) fn filter_name() -> String {
    with(|h| h.filter_name.clone())
}
pub(crate) fn log(level: Level, message: &str) {
    with(|h| {
        h.logs.push(LogRecord {
            level,
            message: message.to_owned(),
        })
    })
}
pub(crate) fn log_enabled(level: Level) -> bool {
    with(|h| level >= h.log_level)
}
pub(crate) fn connection() -> RawConnection {
    with(|h| h.connection.clone())
}
pub(crate) fn now_ns() -> u64 {
    with(|h| h.wall_ns)
}
pub(crate) fn monotonic_ns() -> u64 {
    with(|h| h.monotonic_ns)
}
pub(crate) fn random_bytes(len: u32) -> Vec<u8> {
    with(|h| {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let word = h.next_random().to_le_bytes();
            let n = word.len().min(len - out.len());
            out.extend_from_slice(&word[..n]);
        }
        out
    })
}
pub(crate) fn keep_instance() {
    with(|h| h.kept = true)
}
/// The proxy's budget for one request's values (keys and values together).
const MAX_REQUEST_VALUE_BYTES: usize = 16 * 1024;
pub(crate) fn request_value(key: &str) -> Option<Vec<u8>> {
    with(|h| h.values.get(key).cloned())
}
pub(crate) fn set_request_value(key: &str, value: &[u8]) -> Result<(), StoreError> {
    with(|h| {
        let others: usize = h
            .values
            .iter()
            .filter(|(k, _)| *k != key)
            .map(|(k, v)| k.len() + v.len())
            .sum();
        if others + key.len() + value.len() > MAX_REQUEST_VALUE_BYTES {
            return Err(StoreError::TooLarge);
        }
        h.values.insert(key.to_owned(), value.to_vec());
        Ok(())
    })
}
pub(crate) fn skip_phase() {
    with(|h| {
        if let Some(phase) = h.phase {
            if !h.skipped.contains(&phase) {
                h.skipped.push(phase);
            }
        }
    })
}

// ---- metrics ----

/// The proxy's rules: metric names in snake_case, label names alphanumeric.
fn valid_metric_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn valid_label_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

pub(crate) fn metric_define(
    kind: MetricKind,
    name: &str,
    _help: &str,
    label_names: &[&str],
    buckets: &[f64],
) -> Result<u32, String> {
    if !valid_metric_name(name) {
        return Err(format!(
            "metric name {name:?} must be snake_case ([a-z0-9_]+)"
        ));
    }
    if let Some(bad) = label_names.iter().find(|l| !valid_label_name(l)) {
        return Err(format!("label name {bad:?} must be [A-Za-z0-9_]+"));
    }
    if label_names.contains(&"filter") {
        return Err("the `filter` label is added by the proxy".into());
    }
    if kind == MetricKind::Histogram
        && (buckets.iter().any(|b| !b.is_finite()) || buckets.windows(2).any(|w| w[0] >= w[1]))
    {
        return Err(format!(
            "histogram `{name}` needs finite buckets in increasing order"
        ));
    }
    with(|h| {
        if let Some((index, def)) = h.metrics.iter().enumerate().find(|(_, d)| d.name == name) {
            if def.kind != kind || def.label_names != label_names {
                return Err(format!(
                    "metric `{name}` is already defined as a {:?} with labels {:?}",
                    def.kind, def.label_names
                ));
            }
            return u32::try_from(index).map_err(|_| "too many metrics".to_owned());
        }
        h.metrics.push(MetricDef {
            kind,
            name: name.to_owned(),
            label_names: label_names.iter().map(|l| (*l).to_owned()).collect(),
            values: HashMap::new(),
            observations: HashMap::new(),
        });
        u32::try_from(h.metrics.len() - 1).map_err(|_| "too many metrics".to_owned())
    })
}
pub(crate) fn metric_add(id: u32, label_values: &[&str], value: f64) {
    with(|h| {
        let (def, key) = h.metric(id, label_values, "add");
        assert!(
            def.kind != MetricKind::Histogram,
            "fake host: `add` on histogram `{}`",
            def.name
        );
        assert!(
            def.kind != MetricKind::Counter || value >= 0.0,
            "fake host: counter `{}` cannot go down (add {value})",
            def.name
        );
        *def.values.entry(key).or_insert(0.0) += value;
    })
}
pub(crate) fn metric_set(id: u32, label_values: &[&str], value: f64) {
    with(|h| {
        let (def, key) = h.metric(id, label_values, "set");
        assert!(
            def.kind == MetricKind::Gauge,
            "fake host: `set` on {:?} `{}`",
            def.kind,
            def.name
        );
        def.values.insert(key, value);
    })
}
pub(crate) fn metric_observe(id: u32, label_values: &[&str], value: f64) {
    with(|h| {
        let (def, key) = h.metric(id, label_values, "observe");
        assert!(
            def.kind == MetricKind::Histogram,
            "fake host: `observe` on {:?} `{}`",
            def.kind,
            def.name
        );
        def.observations.entry(key).or_default().push(value);
    })
}

// ---- shared ----

pub(crate) fn counter_add(key: &str, delta: i64) -> i64 {
    with(|h| {
        let counter = h.counters.entry(key.to_owned()).or_insert(0);
        *counter = counter.saturating_add(delta);
        *counter
    })
}
pub(crate) fn counter_get(key: &str) -> i64 {
    with(|h| h.counters.get(key).copied().unwrap_or(0))
}
pub(crate) fn shared_get(key: &str) -> Option<Vec<u8>> {
    with(|h| h.live_entry(key).cloned())
}
pub(crate) fn shared_set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), StoreError> {
    with(|h| {
        let expiry = h.expiry(ttl_ms);
        h.store.insert(key.to_owned(), (value.to_vec(), expiry));
        Ok(())
    })
}
pub(crate) fn shared_compare_and_swap(
    key: &str,
    expected: Option<&[u8]>,
    value: &[u8],
    ttl_ms: Option<u64>,
) -> Result<(), StoreError> {
    with(|h| {
        if h.live_entry(key).map(Vec::as_slice) != expected {
            return Err(StoreError::Conflict);
        }
        let expiry = h.expiry(ttl_ms);
        h.store.insert(key.to_owned(), (value.to_vec(), expiry));
        Ok(())
    })
}
pub(crate) fn shared_delete(key: &str) {
    with(|h| {
        h.store.remove(key);
    })
}

// ---- outbound ----

/// Builds the request the proxy would send, refusing what it would refuse.
fn outbound_request(req: &OutboundRequest<'_>) -> Result<http::Request<Vec<u8>>, CallError> {
    let invalid = |what: &str| CallError::InvalidRequest(what.to_owned());
    let method = Method::from_bytes(req.method.as_bytes()).map_err(|_| invalid("bad method"))?;
    if !req.path.starts_with('/') {
        return Err(invalid("the path must start with `/`"));
    }
    let uri: http::Uri = req.path.parse().map_err(|_| invalid("bad path"))?;
    let mut request = http::Request::new(req.body.to_vec());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    for (name, value) in &req.headers {
        let name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid("bad header name"))?;
        let value = HeaderValue::from_bytes(value).map_err(|_| invalid("bad header value"))?;
        request.headers_mut().append(name, value);
    }
    if let Some(ms) = req.timeout_ms {
        request
            .extensions_mut()
            .insert(Timeout(std::time::Duration::from_millis(ms.into())));
    }
    Ok(request)
}

pub(crate) fn outbound_send(cluster: &str, req: &OutboundRequest<'_>) -> Result<u32, CallError> {
    let request = outbound_request(req)?;
    let Some(mut handler) = with(|h| h.handlers.remove(cluster)) else {
        return Err(CallError::UnknownCluster(cluster.to_owned()));
    };
    // The handler is test code: run it without holding the fake's borrow.
    let result = handler(&request).map(|response| RawResponse {
        status: response.status().as_u16(),
        headers: response
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect(),
        body: response.into_body(),
    });
    with(|h| {
        h.handlers.entry(cluster.to_owned()).or_insert(handler);
        h.calls.push(OutboundCall {
            cluster: cluster.to_owned(),
            request,
        });
        let id = h.next_call;
        h.next_call = h.next_call.wrapping_add(1);
        h.pending.insert(id, result);
        Ok(id)
    })
}
pub(crate) fn outbound_wait(id: u32) -> Result<RawResponse, CallError> {
    with(|h| h.pending.remove(&id).unwrap_or(Err(CallError::UnknownCall)))
}

// ---- crypto, done for real with ring ----

pub(crate) fn verify(
    alg: SignatureAlgorithm,
    key: &PublicKey,
    message: &[u8],
    signature: &[u8],
) -> Result<bool, CryptoError> {
    use ring::signature as sig;
    use SignatureAlgorithm as A;

    let rsa: Option<&'static sig::RsaParameters> = match alg {
        A::Rs256 => Some(&sig::RSA_PKCS1_2048_8192_SHA256),
        A::Rs384 => Some(&sig::RSA_PKCS1_2048_8192_SHA384),
        A::Rs512 => Some(&sig::RSA_PKCS1_2048_8192_SHA512),
        A::Ps256 => Some(&sig::RSA_PSS_2048_8192_SHA256),
        A::Ps384 => Some(&sig::RSA_PSS_2048_8192_SHA384),
        A::Ps512 => Some(&sig::RSA_PSS_2048_8192_SHA512),
        A::Es256 | A::Es384 | A::Ed25519 => None,
    };
    let invalid = |why: String| Err(CryptoError::InvalidKey(why));
    match (key, rsa) {
        (PublicKey::Rsa { n, e }, Some(params)) => {
            let key = sig::RsaPublicKeyComponents { n, e };
            Ok(key.verify(params, message, signature).is_ok())
        }
        (PublicKey::Rsa { .. }, None) => invalid(format!("an RSA key cannot verify {alg:?}")),
        (PublicKey::Raw(_), Some(_)) => invalid(format!("{alg:?} needs an RSA or SPKI key")),
        (PublicKey::Raw(raw), None) => {
            let (expected_len, algorithm): (usize, &dyn sig::VerificationAlgorithm) = match alg {
                A::Es256 => (65, &sig::ECDSA_P256_SHA256_FIXED),
                A::Es384 => (97, &sig::ECDSA_P384_SHA384_FIXED),
                _ => (32, &sig::ED25519),
            };
            if raw.len() != expected_len || (alg != A::Ed25519 && raw.first() != Some(&4)) {
                return invalid(format!("not a raw {alg:?} public key"));
            }
            Ok(sig::UnparsedPublicKey::new(algorithm, raw)
                .verify(message, signature)
                .is_ok())
        }
        (PublicKey::SpkiDer(der), rsa) => {
            let Some(bits) = spki_public_key(der) else {
                return invalid("not a DER SubjectPublicKeyInfo".into());
            };
            let algorithm: &dyn sig::VerificationAlgorithm = match (alg, rsa) {
                (_, Some(params)) => params,
                (A::Es256, None) => &sig::ECDSA_P256_SHA256_FIXED,
                (A::Es384, None) => &sig::ECDSA_P384_SHA384_FIXED,
                _ => &sig::ED25519,
            };
            Ok(sig::UnparsedPublicKey::new(algorithm, bits)
                .verify(message, signature)
                .is_ok())
        }
    }
}

/// Reads one DER element with `tag`, returning its contents and what follows.
fn der(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (&len0, mut rest) = rest.split_first()?;
    let len = if len0 < 0x80 {
        usize::from(len0)
    } else {
        let count = usize::from(len0 & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, tail) = rest.split_at(count);
        rest = tail;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// The subjectPublicKey bits of a SubjectPublicKeyInfo: what ring takes as the key
/// (an RSAPublicKey for RSA, the point for EC, the raw key for Ed25519).
fn spki_public_key(spki: &[u8]) -> Option<&[u8]> {
    let (body, _) = der(spki, 0x30)?;
    let (_algorithm, rest) = der(body, 0x30)?;
    let (bits, _) = der(rest, 0x03)?;
    let (&unused, key) = bits.split_first()?;
    (unused == 0).then_some(key)
}

fn hmac_algorithm(alg: HashAlgorithm) -> ring::hmac::Algorithm {
    match alg {
        HashAlgorithm::Sha256 => ring::hmac::HMAC_SHA256,
        HashAlgorithm::Sha384 => ring::hmac::HMAC_SHA384,
        HashAlgorithm::Sha512 => ring::hmac::HMAC_SHA512,
    }
}

pub(crate) fn hmac(alg: HashAlgorithm, key: &[u8], message: &[u8]) -> Vec<u8> {
    let key = ring::hmac::Key::new(hmac_algorithm(alg), key);
    ring::hmac::sign(&key, message).as_ref().to_vec()
}
pub(crate) fn hmac_verify(alg: HashAlgorithm, key: &[u8], message: &[u8], tag: &[u8]) -> bool {
    let key = ring::hmac::Key::new(hmac_algorithm(alg), key);
    ring::hmac::verify(&key, message, tag).is_ok()
}
pub(crate) fn digest(alg: HashAlgorithm, data: &[u8]) -> Vec<u8> {
    let alg = match alg {
        HashAlgorithm::Sha256 => &ring::digest::SHA256,
        HashAlgorithm::Sha384 => &ring::digest::SHA384,
        HashAlgorithm::Sha512 => &ring::digest::SHA512,
    };
    ring::digest::digest(alg, data).as_ref().to_vec()
}
