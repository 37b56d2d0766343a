//! The end-to-end tests' filter: its config says what to do in each phase, so one
//! component exercises every phase and verdict, and every way a filter can fail.

use std::time::Duration;

use serde::Deserialize;
use weft_sdk::http::{HeaderValue, Request, StatusCode};
use weft_sdk::metrics::Counter;
use weft_sdk::{Action, BodyAction, BodyMode, Completion, ConfigError, Context, Filter, Upstream};

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Appended to the response's `x-probe` header, so tests see which filters ran and in what order.
    tag: Option<String>,
    /// Sets this request header.
    set_request_header: Option<(String, String)>,
    /// In the request-headers phase, appends this to the `x-probe` header of the
    /// response to come (whoever makes it).
    early_tag: Option<String>,
    /// In the request-headers phase, removes this header from the response to come.
    early_remove: Option<String>,
    /// Answers requests locally with this status.
    respond: Option<u16>,
    /// Routes requests to this cluster (with `hash_key` if given).
    route: Option<String>,
    hash_key: Option<String>,
    /// "stream" or "buffer": watch the request body, upper-casing it.
    request_body: Option<String>,
    /// In the request-body phase, answers 403 when a chunk holds this text.
    deny_body: Option<String>,
    /// "stream" or "buffer": watch the response body, upper-casing it.
    response_body: Option<String>,
    /// Asks for a retry when the upstream answers with this status.
    retry_on: Option<u16>,
    /// Panics in this phase ("request_headers", "response_headers", ...).
    trap_in: Option<String>,
    /// Spins forever in the request-headers phase.
    spin: bool,
    /// Allocates without bound in the request-headers phase.
    grow: bool,
    /// Writes a request header of this many bytes; the outcome goes to `x-probe-write`.
    write_header_bytes: Option<usize>,
    /// Calls this cluster with the request's own path (twice, concurrently) before going on.
    call: Option<String>,
    /// Counts requests in the metric `probe_paths_total` by their path (a label value
    /// taken from requests, as a metric's label set limit is there for).
    count_paths: bool,
    /// Counts requests in the shared counter "hits" and reports it in `x-probe-hits`.
    count: bool,
    /// Keeps the request path in per-request state and reports it in the response.
    remember_path: bool,
    /// Stores the request path as the request value of this key.
    set_value: Option<String>,
    /// Reports the request value of this key in the response's `x-probe-value`.
    report_value: Option<String>,
    /// Records the completion status in the shared store key "last-status".
    record_completion: bool,
    /// Adds a response trailer `x-probe-trailer` (the response must have trailers).
    trailer: bool,
    /// Replaces the upstream's response with a local one of this status.
    replace_status: Option<u16>,
    /// Answers with the shared store's "last-status" (what `record_completion` wrote).
    report_last_status: bool,
    /// Logs this message (at info, with the request's path) in the request-headers phase.
    log: Option<String>,
}

pub struct Probe {
    cfg: Config,
    requests: Counter,
    paths: Counter,
}

#[derive(Clone)]
struct SeenPath(String);

fn mode(m: &Option<String>) -> Option<BodyMode> {
    match m.as_deref() {
        Some("stream") => Some(BodyMode::Stream),
        Some("buffer") => Some(BodyMode::Buffer),
        _ => None,
    }
}

impl Probe {
    fn maybe_trap(&self, phase: &str) {
        if self.cfg.trap_in.as_deref() == Some(phase) {
            panic!("probe: trapping in {phase} as configured");
        }
    }
}

impl Filter for Probe {
    type Config = Config;

    fn configure(cfg: Config) -> Result<Self, ConfigError> {
        if let Some(m) = &cfg.request_body {
            if mode(&Some(m.clone())).is_none() {
                return Err(ConfigError::invalid(format!(
                    "request_body must be \"stream\" or \"buffer\", not {m:?}"
                )));
            }
        }
        let requests = Counter::new(
            "probe_requests_total",
            "Requests the probe saw, by phase",
            &["phase"],
        )?;
        let paths = Counter::new("probe_paths_total", "Requests by path", &["path"])?;
        Ok(Probe {
            cfg,
            requests,
            paths,
        })
    }

    async fn on_request_headers(&self, ctx: &mut Context) -> Action {
        self.requests.inc(&["request_headers"]);
        self.maybe_trap("request_headers");
        if self.cfg.count_paths {
            let path = ctx.request().path();
            self.paths.inc(&[path.as_str()]);
        }
        if let Some(message) = &self.cfg.log {
            weft_sdk::log::info!("{message} {}", ctx.request().path());
        }
        if self.cfg.spin {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        if self.cfg.grow {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        if let Some((k, v)) = &self.cfg.set_request_header {
            let _ = ctx.request().set_header(k.as_str(), v.as_str());
        }
        if let Some(tag) = &self.cfg.early_tag {
            let _ = ctx.response().append_header("x-probe", tag.as_str());
        }
        if let Some(name) = &self.cfg.early_remove {
            let _ = ctx.response().remove_header(name.as_str());
        }
        if let Some(n) = self.cfg.write_header_bytes {
            let outcome = match ctx
                .request()
                .set_header("x-probe-big", "a".repeat(n).as_str())
            {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("refused: {e}"),
            };
            let _ = ctx.request().set_header("x-probe-write", outcome.as_str());
        }
        if self.cfg.count {
            let hits = weft_sdk::shared::counter_add("hits", 1);
            let _ = ctx
                .request()
                .set_header("x-probe-hits", hits.to_string().as_str());
        }
        if let Some(cluster) = &self.cfg.call {
            let path = ctx.request().path();
            let a = weft_sdk::outbound::send(
                cluster,
                Request::get(path.as_str())
                    .body(Vec::new())
                    .unwrap_or_default(),
            );
            let b = weft_sdk::outbound::send(
                cluster,
                Request::get(path.as_str())
                    .body(Vec::new())
                    .unwrap_or_default(),
            );
            let (a, b) = (a.await, b.await);
            let show = |r: Result<
                weft_sdk::http::Response<Vec<u8>>,
                weft_sdk::outbound::CallError,
            >| match r {
                Ok(r) => r.status().as_u16().to_string(),
                Err(e) => format!("error: {e}"),
            };
            let _ = ctx
                .request()
                .set_header("x-probe-call", format!("{} {}", show(a), show(b)).as_str());
        }
        if let Some(m) = mode(&self.cfg.request_body) {
            let _ = ctx.request().set_body_mode(m);
        }
        if self.cfg.remember_path {
            let path = ctx.request().path();
            ctx.extensions_mut().insert(SeenPath(path));
        }
        if let Some(key) = &self.cfg.set_value {
            let _ = ctx.set_value(key, ctx.request().path());
        }
        if self.cfg.report_last_status {
            let last = weft_sdk::shared::get("last-status").unwrap_or_default();
            return Action::respond(StatusCode::OK).body(last).into();
        }
        if let Some(status) = self.cfg.respond {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::IM_A_TEAPOT);
            return Action::respond(status)
                .header("x-probe", HeaderValue::from_static("local"))
                .body("answered by probe\n")
                .into();
        }
        if let Some(cluster) = &self.cfg.route {
            let mut up = Upstream::new(cluster.as_str());
            if let Some(k) = &self.cfg.hash_key {
                up = up.hash_key(k.as_str());
            }
            return Action::Route(up);
        }
        Action::Continue
    }

    async fn on_request_body(
        &self,
        _ctx: &mut Context,
        chunk: Vec<u8>,
        _end_of_stream: bool,
    ) -> BodyAction {
        self.requests.inc(&["request_body"]);
        self.maybe_trap("request_body");
        if let Some(needle) = self.cfg.deny_body.as_deref().filter(|n| !n.is_empty()) {
            if chunk.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                return Action::respond(StatusCode::FORBIDDEN)
                    .body("denied by probe\n")
                    .into();
            }
        }
        BodyAction::Replace(chunk.to_ascii_uppercase())
    }

    async fn on_response_headers(&self, ctx: &mut Context) -> Action {
        self.requests.inc(&["response_headers"]);
        self.maybe_trap("response_headers");
        let resp = ctx.response();
        if let (Some(on), Some(status)) = (self.cfg.retry_on, resp.status()) {
            if status.as_u16() == on {
                return Action::Retry;
            }
        }
        if let Some(status) = self.cfg.replace_status {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::IM_A_TEAPOT);
            return Action::respond(status).body("replaced by probe\n").into();
        }
        if let Some(tag) = &self.cfg.tag {
            let _ = resp.append_header("x-probe", tag.as_str());
        }
        if let Some(SeenPath(p)) = ctx.extensions().get::<SeenPath>() {
            let _ = ctx.response().set_header("x-probe-path", p.as_str());
        }
        if let Some(key) = &self.cfg.report_value {
            let value = ctx.value(key).unwrap_or_else(|| b"none".to_vec());
            let _ = ctx.response().set_header("x-probe-value", value.as_slice());
        }
        if let Some(m) = mode(&self.cfg.response_body) {
            let _ = ctx.response().set_body_mode(m);
        }
        Action::Continue
    }

    async fn on_response_body(
        &self,
        _ctx: &mut Context,
        chunk: Vec<u8>,
        _end_of_stream: bool,
    ) -> BodyAction {
        self.requests.inc(&["response_body"]);
        BodyAction::Replace(chunk.to_ascii_uppercase())
    }

    async fn on_response_trailers(&self, ctx: &mut Context) -> Action {
        if self.cfg.trailer {
            let _ = ctx
                .response_trailers()
                .set_header("x-probe-trailer", "seen");
        }
        Action::Continue
    }

    async fn on_complete(&self, _ctx: &mut Context, info: &Completion) {
        if self.cfg.record_completion {
            let status = info.status.map_or(0, |s| s.as_u16());
            let _ = weft_sdk::shared::set(
                "last-status",
                status.to_string().as_bytes(),
                Some(Duration::from_secs(60)),
            );
        }
    }
}

weft_sdk::export_filter!(Probe);
