//! Host calls through the `weft:filter` imports.

use super::{Message, MetricKind, OutboundRequest, RawConnection, RawResponse, RawTls};
use crate::bindings::weft::filter::{
    context, crypto as wc, http, metrics, outbound, shared, types,
};
use crate::crypto::{CryptoError, HashAlgorithm, PublicKey, SignatureAlgorithm};
use crate::log::Level;
use crate::outbound::CallError;
use crate::shared::StoreError;
use crate::{BodyMode, HeaderError};

fn message(msg: Message) -> types::Message {
    match msg {
        Message::Request => types::Message::Request,
        Message::RequestTrailers => types::Message::RequestTrailers,
        Message::Response => types::Message::Response,
        Message::ResponseTrailers => types::Message::ResponseTrailers,
    }
}

fn header_result(result: Result<(), types::HeaderError>) -> Result<(), HeaderError> {
    result.map_err(|e| match e {
        types::HeaderError::InvalidName => HeaderError::InvalidName,
        types::HeaderError::InvalidValue => HeaderError::InvalidValue,
        types::HeaderError::Immutable => HeaderError::Immutable,
        types::HeaderError::TooLarge => HeaderError::TooLarge,
    })
}

fn level(level: Level) -> types::Level {
    match level {
        Level::Trace => types::Level::Trace,
        Level::Debug => types::Level::Debug,
        Level::Info => types::Level::Info,
        Level::Warn => types::Level::Warn,
        Level::Error => types::Level::Error,
    }
}

// ---- http ----

pub(crate) fn method() -> String {
    http::method()
}
pub(crate) fn set_method(method: &str) -> Result<(), HeaderError> {
    header_result(http::set_method(method))
}
pub(crate) fn scheme() -> String {
    http::scheme()
}
pub(crate) fn authority() -> Option<String> {
    http::authority()
}
pub(crate) fn set_authority(authority: &str) -> Result<(), HeaderError> {
    header_result(http::set_authority(authority))
}
pub(crate) fn path() -> String {
    http::path()
}
pub(crate) fn set_path(path: &str) -> Result<(), HeaderError> {
    header_result(http::set_path(path))
}
pub(crate) fn status() -> Option<u16> {
    http::status()
}
pub(crate) fn set_status(status: u16) -> Result<(), HeaderError> {
    header_result(http::set_status(status))
}
pub(crate) fn header(msg: Message, name: &str) -> Option<Vec<u8>> {
    http::header(message(msg), name)
}
pub(crate) fn header_all(msg: Message, name: &str) -> Vec<Vec<u8>> {
    http::header_all(message(msg), name)
}
pub(crate) fn headers(msg: Message) -> Vec<(String, Vec<u8>)> {
    http::headers(message(msg))
}
pub(crate) fn set_header(msg: Message, name: &str, value: &[u8]) -> Result<(), HeaderError> {
    header_result(http::set_header(message(msg), name, value))
}
pub(crate) fn append_header(msg: Message, name: &str, value: &[u8]) -> Result<(), HeaderError> {
    header_result(http::append_header(message(msg), name, value))
}
pub(crate) fn remove_header(msg: Message, name: &str) -> Result<(), HeaderError> {
    header_result(http::remove_header(message(msg), name))
}
pub(crate) fn set_body_mode(msg: Message, mode: BodyMode) -> Result<(), HeaderError> {
    let mode = match mode {
        BodyMode::Skip => types::BodyMode::Skip,
        BodyMode::Stream => types::BodyMode::Stream,
        BodyMode::Buffer => types::BodyMode::Buffer,
    };
    header_result(http::set_body_mode(message(msg), mode))
}

// ---- context ----

pub(crate) fn filter_name() -> String {
    context::filter_name()
}
pub(crate) fn log(lvl: Level, message: &str) {
    context::log(level(lvl), message)
}
pub(crate) fn log_enabled(lvl: Level) -> bool {
    context::log_enabled(level(lvl))
}
pub(crate) fn connection() -> RawConnection {
    let c = context::connection();
    RawConnection {
        remote_address: c.remote_address,
        local_address: c.local_address,
        listener: c.listener,
        tls: c.tls.map(|t| RawTls {
            sni: t.sni,
            alpn: t.alpn,
            peer_identity: t.peer_identity,
        }),
    }
}
pub(crate) fn now_ns() -> u64 {
    context::now_ns()
}
pub(crate) fn monotonic_ns() -> u64 {
    context::monotonic_ns()
}
pub(crate) fn random_bytes(len: u32) -> Vec<u8> {
    context::random_bytes(len)
}
pub(crate) fn skip_phase() {
    context::skip_phase()
}
pub(crate) fn keep_instance() {
    context::keep_instance()
}
pub(crate) fn request_value(key: &str) -> Option<Vec<u8>> {
    context::request_value(key)
}
pub(crate) fn set_request_value(key: &str, value: &[u8]) -> Result<(), StoreError> {
    store_result(context::set_request_value(key, value))
}

// ---- metrics ----

pub(crate) fn metric_define(
    kind: MetricKind,
    name: &str,
    help: &str,
    label_names: &[&str],
    buckets: &[f64],
) -> Result<u32, String> {
    let kind = match kind {
        MetricKind::Counter => metrics::MetricKind::Counter,
        MetricKind::Gauge => metrics::MetricKind::Gauge,
        MetricKind::Histogram => metrics::MetricKind::Histogram,
    };
    metrics::define(kind, name, help, label_names, buckets)
}
pub(crate) fn metric_add(id: u32, label_values: &[&str], value: f64) {
    metrics::add(id, label_values, value)
}
pub(crate) fn metric_set(id: u32, label_values: &[&str], value: f64) {
    metrics::set(id, label_values, value)
}
pub(crate) fn metric_observe(id: u32, label_values: &[&str], value: f64) {
    metrics::observe(id, label_values, value)
}

// ---- shared ----

fn store_result(result: Result<(), shared::StoreError>) -> Result<(), StoreError> {
    result.map_err(|e| match e {
        shared::StoreError::Full => StoreError::Full,
        shared::StoreError::TooLarge => StoreError::TooLarge,
        shared::StoreError::Conflict => StoreError::Conflict,
    })
}
pub(crate) fn counter_add(key: &str, delta: i64) -> i64 {
    shared::counter_add(key, delta)
}
pub(crate) fn counter_get(key: &str) -> i64 {
    shared::counter_get(key)
}
pub(crate) fn shared_get(key: &str) -> Option<Vec<u8>> {
    shared::get(key)
}
pub(crate) fn shared_set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), StoreError> {
    store_result(shared::set(key, value, ttl_ms))
}
pub(crate) fn shared_compare_and_swap(
    key: &str,
    expected: Option<&[u8]>,
    value: &[u8],
    ttl_ms: Option<u64>,
) -> Result<(), StoreError> {
    store_result(shared::compare_and_swap(key, expected, value, ttl_ms))
}
pub(crate) fn shared_delete(key: &str) {
    shared::delete(key)
}

// ---- outbound ----

fn call_error(e: outbound::CallError) -> CallError {
    match e {
        outbound::CallError::UnknownCluster(s) => CallError::UnknownCluster(s),
        outbound::CallError::InvalidRequest(s) => CallError::InvalidRequest(s),
        outbound::CallError::Timeout => CallError::Timeout,
        outbound::CallError::Upstream(s) => CallError::Upstream(s),
        outbound::CallError::Limit(s) => CallError::Limit(s),
        outbound::CallError::UnknownCall => CallError::UnknownCall,
    }
}
pub(crate) fn outbound_send(cluster: &str, req: &OutboundRequest<'_>) -> Result<u32, CallError> {
    let wire = outbound::Request {
        method: req.method,
        path: req.path,
        headers: &req.headers,
        body: req.body,
        timeout_ms: req.timeout_ms,
    };
    outbound::send(cluster, wire).map_err(call_error)
}
pub(crate) fn outbound_wait(id: u32) -> Result<RawResponse, CallError> {
    outbound::wait(id)
        .map(|r| RawResponse {
            status: r.status,
            headers: r.headers,
            body: r.body,
        })
        .map_err(call_error)
}

// ---- crypto ----

fn hash(alg: HashAlgorithm) -> wc::HashAlgorithm {
    match alg {
        HashAlgorithm::Sha256 => wc::HashAlgorithm::Sha256,
        HashAlgorithm::Sha384 => wc::HashAlgorithm::Sha384,
        HashAlgorithm::Sha512 => wc::HashAlgorithm::Sha512,
    }
}
pub(crate) fn verify(
    alg: SignatureAlgorithm,
    key: &PublicKey,
    message: &[u8],
    signature: &[u8],
) -> Result<bool, CryptoError> {
    let alg = match alg {
        SignatureAlgorithm::Rs256 => wc::SignatureAlgorithm::Rs256,
        SignatureAlgorithm::Rs384 => wc::SignatureAlgorithm::Rs384,
        SignatureAlgorithm::Rs512 => wc::SignatureAlgorithm::Rs512,
        SignatureAlgorithm::Ps256 => wc::SignatureAlgorithm::Ps256,
        SignatureAlgorithm::Ps384 => wc::SignatureAlgorithm::Ps384,
        SignatureAlgorithm::Ps512 => wc::SignatureAlgorithm::Ps512,
        SignatureAlgorithm::Es256 => wc::SignatureAlgorithm::Es256,
        SignatureAlgorithm::Es384 => wc::SignatureAlgorithm::Es384,
        SignatureAlgorithm::Ed25519 => wc::SignatureAlgorithm::Ed25519,
    };
    let key = match key {
        PublicKey::Rsa { n, e } => wc::PublicKey::Rsa((n.as_slice(), e.as_slice())),
        PublicKey::Raw(raw) => wc::PublicKey::Raw(raw),
        PublicKey::SpkiDer(der) => wc::PublicKey::SpkiDer(der),
    };
    wc::verify(alg, key, message, signature).map_err(|e| match e {
        wc::CryptoError::InvalidKey(s) => CryptoError::InvalidKey(s),
    })
}
pub(crate) fn hmac(alg: HashAlgorithm, key: &[u8], message: &[u8]) -> Vec<u8> {
    wc::hmac(hash(alg), key, message)
}
pub(crate) fn hmac_verify(alg: HashAlgorithm, key: &[u8], message: &[u8], tag: &[u8]) -> bool {
    wc::hmac_verify(hash(alg), key, message, tag)
}
pub(crate) fn digest(alg: HashAlgorithm, data: &[u8]) -> Vec<u8> {
    wc::digest(hash(alg), data)
}
