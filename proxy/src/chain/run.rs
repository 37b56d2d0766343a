//! One request's pass through a chain: which instance each filter uses, the calls
//! of each phase in order, and what the verdicts mean for the request.
//!
//! Each call takes an idle instance of its filter and gives it back when it returns,
//! unless the filter keeps something for the request in it (the SDK's per-request
//! extensions, or an outbound call in flight): then the request holds that instance
//! until its next call returns holding nothing, or until the run is dropped. What
//! the proxy itself keeps per filter per request (header budget, body modes) lives
//! in the slot meanwhile. A filter that fails is dealt with by its failure policy:
//! fail-closed fails the request, fail-open skips the filter for the rest of the
//! request.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use tokio::time::Instant;

use super::Chain;
use crate::config::FailurePolicy;
use crate::error::{BoxError, ProxyError};
use crate::proxy::body::Body;
use crate::server::ConnInfo;
use crate::snapshot::Snapshot;
use crate::wasm::bindings::{Action, BodyAction, BodyMode, Completion, LocalResponse, Upstream};
use crate::wasm::state::{Call, HeaderEdit, Part, Phase, RequestScope};
use crate::wasm::{describe_trap, failure_reason, FilterInstance};

/// How many times filters may send one request again.
pub const MAX_RETRIES: u32 = 5;

// Slots live in a Vec made once per request; boxing the instance would add an
// allocation per filter per request.
#[allow(clippy::large_enum_variant)]
enum Slot {
    Unused,
    /// The request holds this instance until it ends (or until the filter's next
    /// call returns holding nothing).
    Ready(FilterInstance),
    /// The filter took part and holds nothing for the request between calls: its
    /// instance went back to the pool, and its next call takes any instance.
    Parked(Part),
    /// Failed (fail-open) or could not start: skipped for the rest of the request.
    Failed,
}

pub struct ChainRun {
    pub chain: Arc<Chain>,
    request_id: u64,
    /// What the host functions reach of the request, lent to each call.
    scope: Arc<RequestScope>,
    /// Each filter's instance for this request, held across a call's awaits. An
    /// async lock whose uncontended lock and unlock are one atomic each (tokio's
    /// takes its semaphore's inner lock on every release); phases of one request
    /// rarely contend (a streamed request body against the response phases).
    slots: Vec<futures_util::lock::Mutex<Slot>>,
    /// The request as sent upstream, readable (not writable) in response phases.
    request_head: Mutex<Option<Request<()>>>,
    /// A local response a streaming request-body phase asked for.
    local: Mutex<Option<Response<Body>>>,
}

impl Drop for ChainRun {
    fn drop(&mut self) {
        for (slot, filter) in self.slots.iter_mut().zip(&self.chain.filters) {
            if let Slot::Ready(inst) = std::mem::replace(slot.get_mut(), Slot::Unused) {
                filter.release(inst);
            }
        }
    }
}

/// What the request phases decided.
#[derive(Default)]
pub struct RequestDecision {
    /// Answer with this instead of going upstream.
    pub respond: Option<Response<Body>>,
    /// The upstream a filter chose.
    pub route: Option<Upstream>,
    /// Filters that watch the request body, in chain order, and whether any wants it whole.
    pub body: BodyPlan,
}

#[derive(Default, Clone)]
pub struct BodyPlan {
    pub filters: Vec<usize>,
    pub buffer: bool,
    /// The smallest body limit among the filters that watch.
    pub limit: usize,
}

impl BodyPlan {
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }
}

/// What the response-headers phase decided.
pub enum ResponseDecision {
    Continue(BodyPlan),
    Respond(Response<Body>),
    Retry,
}

/// The message heads a call may see, moved into the store for the call.
#[derive(Default)]
struct Heads<'a> {
    request: Option<&'a mut Request<()>>,
    response: Option<&'a mut Response<()>>,
    response_writable: bool,
    request_trailers: Option<&'a mut HeaderMap>,
    response_trailers: Option<&'a mut HeaderMap>,
    /// Request-headers phase: response edits for the response to come.
    response_edits: Option<&'a mut Vec<HeaderEdit>>,
}

impl Heads<'_> {
    /// Between calls the store holds no heads (`move_out` took them, or the
    /// instance was reset), so only the ones this phase lends are written: a phase
    /// lends one or two of the five.
    fn move_in(&mut self, call: &mut Call) {
        if let Some(r) = self.request.as_deref_mut() {
            call.request = Some(std::mem::take(r));
        }
        if let Some(r) = self.response.as_deref_mut() {
            call.response = Some(std::mem::take(r));
        }
        call.response_writable = self.response_writable;
        if let Some(t) = self.request_trailers.as_deref_mut() {
            call.request_trailers = Some(std::mem::take(t));
        }
        if let Some(t) = self.response_trailers.as_deref_mut() {
            call.response_trailers = Some(std::mem::take(t));
        }
        if let Some(e) = self.response_edits.as_deref_mut() {
            call.response_edits = Some(std::mem::take(e));
        }
    }

    fn move_out(&mut self, call: &mut Call) {
        if let Some(r) = self.request.as_deref_mut() {
            *r = call.request.take().unwrap_or_default();
        }
        if let Some(r) = self.response.as_deref_mut() {
            *r = call.response.take().unwrap_or_default();
        }
        if let Some(t) = self.request_trailers.as_deref_mut() {
            *t = call.request_trailers.take().unwrap_or_default();
        }
        if let Some(t) = self.response_trailers.as_deref_mut() {
            *t = call.response_trailers.take().unwrap_or_default();
        }
        if let Some(e) = self.response_edits.as_deref_mut() {
            *e = call.response_edits.take().unwrap_or_default();
        }
    }
}

enum Input {
    Headers,
    Body(Bytes, bool),
    Trailers,
    Complete(Completion),
}

enum Output {
    Action(Action),
    Body(BodyAction),
    Done,
}

/// A call that did not produce a verdict.
struct Failure {
    reason: &'static str,
    detail: String,
    /// The filter could not be run at all (503 rather than 500 when fail-closed).
    unavailable: bool,
}

async fn call_guest(
    inst: &mut FilterInstance,
    phase: Phase,
    input: Input,
) -> wasmtime::Result<Output> {
    let h = inst.bindings.weft_filter_handler();
    let id = inst.store.data().call.request_id;
    let s = &mut inst.store;
    Ok(match (phase, input) {
        (Phase::RequestHeaders, _) => Output::Action(h.call_on_request_headers(s, id).await?),
        (Phase::RequestBody, Input::Body(chunk, eos)) => {
            Output::Body(h.call_on_request_body(s, id, &chunk, eos).await?)
        }
        (Phase::RequestTrailers, _) => Output::Action(h.call_on_request_trailers(s, id).await?),
        (Phase::ResponseHeaders, _) => Output::Action(h.call_on_response_headers(s, id).await?),
        (Phase::ResponseBody, Input::Body(chunk, eos)) => {
            Output::Body(h.call_on_response_body(s, id, &chunk, eos).await?)
        }
        (Phase::ResponseTrailers, _) => Output::Action(h.call_on_response_trailers(s, id).await?),
        (Phase::Complete, Input::Complete(info)) => {
            h.call_on_complete(s, id, &info).await?;
            Output::Done
        }
        _ => Output::Done,
    })
}

impl ChainRun {
    pub fn new(
        chain: Arc<Chain>,
        request_id: u64,
        conn: Arc<ConnInfo>,
        snapshot: Arc<Snapshot>,
    ) -> Self {
        let slots = chain
            .filters
            .iter()
            .map(|_| futures_util::lock::Mutex::new(Slot::Unused))
            .collect();
        ChainRun {
            chain,
            request_id,
            scope: Arc::new(RequestScope {
                conn: Some(conn),
                snapshot: Some(snapshot),
                values: Mutex::default(),
            }),
            slots,
            request_head: Mutex::new(None),
            local: Mutex::new(None),
        }
    }

    /// Calls filter `i` for `phase`: its output, and its part of the request after
    /// the call (the body modes it chose). `Ok(None)`: the filter does not take part
    /// (does not implement the phase, or failed open earlier).
    async fn invoke(
        &self,
        i: usize,
        phase: Phase,
        input: Input,
        heads: &mut Heads<'_>,
    ) -> Result<Option<(Output, Part)>, Failure> {
        let filter = &self.chain.filters[i];
        if !filter.shared.implements(phase) {
            return Ok(None);
        }
        let mut slot = self.slots[i].lock().await;
        let part = match &*slot {
            Slot::Unused => Some(filter.new_part()),
            Slot::Parked(part) => Some(*part),
            Slot::Ready(_) | Slot::Failed => None,
        };
        if let Some(part) = part {
            match filter.instance(self.request_id, part).await {
                Ok(mut inst) => {
                    let call = &mut inst.store.data_mut().call;
                    call.scope = Some(self.scope.clone());
                    *slot = Slot::Ready(inst);
                }
                Err(e) => {
                    *slot = Slot::Failed;
                    return Err(Failure {
                        reason: "unavailable",
                        detail: format!("{e:#}"),
                        unavailable: true,
                    });
                }
            }
        }
        let Slot::Ready(inst) = &mut *slot else {
            return Ok(None);
        };
        if inst.abandoned() {
            // The downstream went away during this filter's last call (only the
            // completion phase comes after that). The guest's state for the request
            // went with the call; the instance cannot be entered again.
            *slot = Slot::Failed;
            return Ok(None);
        }
        let call = &mut inst.store.data_mut().call;
        call.phase = Some(phase);
        call.skipped = false;
        heads.move_in(call);
        inst.begin_call();
        let running = filter.running();
        let started = Instant::now();
        let result = call_guest(inst, phase, input).await;
        drop(running);
        inst.end_call();
        filter.shared.observe(phase, started.elapsed());
        let state = inst.store.data_mut();
        heads.move_out(&mut state.call);
        state.call.phase = None;
        if state.call.skipped {
            filter.shared.note_skipped(phase);
        }
        match result {
            Ok(out) => {
                // Share the instance with other requests until this one's next call,
                // unless the filter keeps something for this request in it.
                let (holds_nothing, part) = (state.call.holds_nothing(), state.call.part);
                if holds_nothing && filter.reusable(inst) {
                    if let Slot::Ready(inst) = std::mem::replace(&mut *slot, Slot::Parked(part)) {
                        filter.release(inst);
                    }
                }
                Ok(Some((out, part)))
            }
            Err(trap) => {
                let failure = Failure {
                    reason: failure_reason(&trap, state),
                    detail: describe_trap(&trap, state),
                    unavailable: false,
                };
                // A trapped instance is never used again.
                *slot = Slot::Failed;
                Err(failure)
            }
        }
    }

    /// Applies filter `i`'s failure policy: fail-closed fails the request.
    fn failed(&self, i: usize, phase: Phase, f: Failure) -> Result<(), ProxyError> {
        let filter = &self.chain.filters[i];
        filter.shared.failed(f.reason);
        tracing::warn!(
            filter = %filter.shared.name, phase = phase.name(), reason = f.reason, detail = %f.detail,
            policy = ?filter.shared.failure, "filter failed"
        );
        match filter.shared.failure {
            FailurePolicy::Open => Ok(()),
            FailurePolicy::Closed => Err(ProxyError::Filter {
                filter: filter.shared.name.to_string(),
                reason: f.detail,
                status: if f.unavailable {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                },
            }),
        }
    }

    fn invalid(&self, i: usize, phase: Phase, what: String) -> Result<(), ProxyError> {
        self.failed(
            i,
            phase,
            Failure {
                reason: "invalid_verdict",
                detail: what,
                unavailable: false,
            },
        )
    }

    /// The request-headers phase, first filter to last. Response headers the
    /// filters write here are added to `response_edits`, for the response to come.
    pub async fn on_request_headers(
        &self,
        head: &mut Request<()>,
        response_edits: &mut Vec<HeaderEdit>,
    ) -> Result<RequestDecision, ProxyError> {
        let mut decision = RequestDecision::default();
        for i in 0..self.chain.filters.len() {
            let phase = Phase::RequestHeaders;
            let mut heads = Heads {
                request: Some(head),
                response_edits: Some(response_edits),
                ..Heads::default()
            };
            let out = self.invoke(i, phase, Input::Headers, &mut heads).await;
            let action = match out {
                Ok(Some((Output::Action(a), part))) => {
                    self.note_body_mode(i, part.request_body, &mut decision.body);
                    a
                }
                Ok(_) => continue,
                Err(f) => {
                    self.failed(i, phase, f)?;
                    continue;
                }
            };
            match action {
                Action::Continue => {}
                Action::Route(up) => decision.route = Some(up),
                Action::Respond(local) => match self.local_response(i, local) {
                    Ok(r) => {
                        decision.respond = Some(r);
                        return Ok(decision);
                    }
                    Err(why) => self.invalid(i, phase, why)?,
                },
                Action::Retry => self.invalid(
                    i,
                    phase,
                    "retry is only valid in the response-headers phase".into(),
                )?,
            }
        }
        Ok(decision)
    }

    /// Adds filter `i` to the body plan if the body mode it chose in its headers
    /// phase asks for the body.
    fn note_body_mode(&self, i: usize, mode: BodyMode, plan: &mut BodyPlan) {
        if mode != BodyMode::Skip {
            let limit = self.chain.filters[i].shared.limits.body_bytes.as_usize();
            plan.limit = if plan.filters.is_empty() {
                limit
            } else {
                plan.limit.min(limit)
            };
            plan.filters.push(i);
            plan.buffer |= mode == BodyMode::Buffer;
        }
    }

    /// Keeps the request as sent upstream for the response phases to read. Only a
    /// filter that runs in the response-headers phase can ask for the response body
    /// (its body mode is chosen there), so that phase alone decides.
    pub fn keep_request_head(&self, head: &Request<()>) {
        if self.chain.wants(Phase::ResponseHeaders) {
            *self.request_head.lock().unwrap_or_else(|p| p.into_inner()) = Some(head.clone());
        }
    }

    /// The kept request, to send again when a filter asked for a retry.
    pub fn take_request_head(&self) -> Option<Request<()>> {
        self.request_head
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// The response-headers phase, last filter to first.
    pub async fn on_response_headers(
        &self,
        head: &mut Response<()>,
        may_retry: bool,
    ) -> Result<ResponseDecision, ProxyError> {
        let mut request = self
            .request_head
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_default();
        let mut plan = BodyPlan::default();
        let mut result = Ok(None);
        for i in (0..self.chain.filters.len()).rev() {
            let phase = Phase::ResponseHeaders;
            let mut heads = Heads {
                request: Some(&mut request),
                response: Some(head),
                response_writable: true,
                ..Heads::default()
            };
            let action = match self.invoke(i, phase, Input::Headers, &mut heads).await {
                Ok(Some((Output::Action(a), part))) => {
                    self.note_body_mode(i, part.response_body, &mut plan);
                    a
                }
                Ok(_) => continue,
                Err(f) => match self.failed(i, phase, f) {
                    Ok(()) => continue,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                },
            };
            let step = match action {
                Action::Continue => Ok(None),
                Action::Respond(local) => match self.local_response(i, local) {
                    Ok(r) => Ok(Some(ResponseDecision::Respond(r))),
                    Err(why) => self.invalid(i, phase, why).map(|()| None),
                },
                Action::Retry if may_retry => Ok(Some(ResponseDecision::Retry)),
                // Refused retries (body too large to replay, or too many): the response goes on.
                Action::Retry => Ok(None),
                Action::Route(_) => self
                    .invalid(i, phase, "route is only valid in request phases".into())
                    .map(|()| None),
            };
            match step {
                Ok(None) => {}
                other => {
                    result = other;
                    break;
                }
            }
        }
        *self.request_head.lock().unwrap_or_else(|p| p.into_inner()) = Some(request);
        Ok(result?.unwrap_or(ResponseDecision::Continue(plan)))
    }

    /// Runs the body phase over one chunk for the filters of `plan`, in order (reverse
    /// order for responses). Returns the chunk as the filters left it, or a local
    /// response one of them asked for.
    pub async fn on_body(
        &self,
        request: bool,
        plan: &BodyPlan,
        chunk: Bytes,
        eos: bool,
    ) -> Result<Result<Bytes, Response<Body>>, ProxyError> {
        let phase = if request {
            Phase::RequestBody
        } else {
            Phase::ResponseBody
        };
        let mut chunk = chunk;
        let order: Box<dyn Iterator<Item = &usize> + Send> = if request {
            Box::new(plan.filters.iter())
        } else {
            Box::new(plan.filters.iter().rev())
        };
        for &i in order {
            let mut heads = Heads::default();
            let out = self
                .invoke(i, phase, Input::Body(chunk.clone(), eos), &mut heads)
                .await;
            match out {
                Ok(Some((Output::Body(BodyAction::Replace(bytes)), _))) => {
                    chunk = Bytes::from(bytes)
                }
                Ok(Some((Output::Body(BodyAction::Respond(local)), _))) => {
                    match self.local_response(i, local) {
                        Ok(r) => return Ok(Err(r)),
                        Err(why) => self.invalid(i, phase, why)?,
                    }
                }
                Ok(_) => {}
                Err(f) => self.failed(i, phase, f)?,
            }
        }
        Ok(Ok(chunk))
    }

    /// Runs the trailers phase for the filters of `plan`.
    pub async fn on_trailers(
        &self,
        request: bool,
        plan: &BodyPlan,
        trailers: &mut HeaderMap,
    ) -> Result<(), ProxyError> {
        let phase = if request {
            Phase::RequestTrailers
        } else {
            Phase::ResponseTrailers
        };
        let order: Vec<usize> = if request {
            plan.filters.clone()
        } else {
            plan.filters.iter().rev().copied().collect()
        };
        for i in order {
            let mut heads = if request {
                Heads {
                    request_trailers: Some(trailers),
                    ..Heads::default()
                }
            } else {
                Heads {
                    response_trailers: Some(trailers),
                    ..Heads::default()
                }
            };
            match self.invoke(i, phase, Input::Trailers, &mut heads).await {
                Ok(Some((Output::Action(Action::Continue), _)))
                | Ok(None)
                | Ok(Some((Output::Body(_) | Output::Done, _))) => {}
                Ok(Some((Output::Action(other), _))) => {
                    let what = match other {
                        Action::Respond(_) => "respond",
                        Action::Route(_) => "route",
                        _ => "retry",
                    };
                    self.invalid(i, phase, format!("{what} is not valid in a trailers phase"))?
                }
                Err(f) => self.failed(i, phase, f)?,
            }
        }
        Ok(())
    }

    /// The completion phase: every filter that took part, after the response ended.
    pub async fn on_complete(&self, info: Completion) {
        for i in (0..self.chain.filters.len()).rev() {
            if matches!(*self.slots[i].lock().await, Slot::Unused | Slot::Failed) {
                continue;
            }
            let mut heads = Heads::default();
            if let Err(f) = self
                .invoke(
                    i,
                    Phase::Complete,
                    Input::Complete(info.clone()),
                    &mut heads,
                )
                .await
            {
                // Completion cannot fail the request any more; it is counted and logged.
                let _ = self.failed(i, Phase::Complete, f);
            }
        }
    }

    /// Whether any filter took part that wants the completion phase.
    pub fn wants_completion(&self) -> bool {
        self.chain.wants(Phase::Complete)
    }

    pub fn set_local(&self, r: Response<Body>) {
        *self.local.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    }

    pub fn take_local(&self) -> Option<Response<Body>> {
        self.local.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Checks a filter's local response and makes it a response.
    fn local_response(&self, i: usize, local: LocalResponse) -> Result<Response<Body>, String> {
        let limits = &self.chain.filters[i].shared.limits;
        let status = StatusCode::from_u16(local.status)
            .map_err(|_| format!("invalid status {}", local.status))?;
        if status.is_informational() {
            return Err(format!(
                "a local response cannot have the informational status {status}"
            ));
        }
        if local.body.len() > limits.body_bytes.as_usize() {
            return Err(format!(
                "local response body of {} bytes exceeds the limit of {}",
                local.body.len(),
                limits.body_bytes
            ));
        }
        let header_bytes: usize = local.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        if header_bytes > limits.header_bytes.as_usize() {
            return Err(format!(
                "local response headers of {header_bytes} bytes exceed the limit of {}",
                limits.header_bytes
            ));
        }
        let mut resp = Response::new(Body::full(local.body));
        *resp.status_mut() = status;
        for (k, v) in local.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("invalid header name {k:?}"))?;
            let value = HeaderValue::from_bytes(&v)
                .map_err(|_| format!("invalid value for header {k:?}"))?;
            resp.headers_mut().append(name, value);
        }
        Ok(resp)
    }
}

/// What the completion phase hears about a finished exchange.
pub fn completion(ex: &crate::proxy::exchange::Exchange) -> Completion {
    Completion {
        status: ex.status,
        request_body_bytes: ex
            .tally
            .request_bytes
            .load(std::sync::atomic::Ordering::Relaxed),
        response_body_bytes: ex.response_bytes,
        duration_ns: ex.start.elapsed().as_nanos() as u64,
        upstream_ns: ex.upstream_latency.map(|d: Duration| d.as_nanos() as u64),
        cluster: ex.cluster.as_ref().map(|c| c.name.to_string()),
        retries: ex.retries,
        error: ex.error.map(str::to_string),
    }
}

type Pending = Pin<Box<dyn Future<Output = Result<Frame<Bytes>, BoxError>> + Send>>;

/// A body streaming through filters that watch it chunk by chunk.
pub struct FilteredBody {
    inner: Body,
    run: Arc<ChainRun>,
    plan: Arc<BodyPlan>,
    request: bool,
    pending: Option<Pending>,
    /// Whether the filters have seen the end of the stream.
    ended: bool,
}

impl FilteredBody {
    pub fn new(inner: Body, run: Arc<ChainRun>, plan: BodyPlan, request: bool) -> Self {
        FilteredBody {
            inner,
            run,
            plan: Arc::new(plan),
            request,
            pending: None,
            ended: false,
        }
    }

    fn chunk(&mut self, data: Bytes, eos: bool) -> Pending {
        let (run, plan, request) = (self.run.clone(), self.plan.clone(), self.request);
        Box::pin(async move {
            match run.on_body(request, &plan, data, eos).await? {
                Ok(bytes) => Ok(Frame::data(bytes)),
                Err(local) => {
                    if request {
                        run.set_local(local);
                        Err("a filter answered the request while its body streamed".into())
                    } else {
                        Err("a filter asked to answer after the response headers were sent".into())
                    }
                }
            }
        })
    }

    fn trailers(&mut self, mut trailers: HeaderMap) -> Pending {
        let (run, plan, request) = (self.run.clone(), self.plan.clone(), self.request);
        Box::pin(async move {
            run.on_trailers(request, &plan, &mut trailers).await?;
            Ok(Frame::trailers(trailers))
        })
    }
}

impl http_body::Body for FilteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(p) = this.pending.as_mut() {
                let r = ready!(p.as_mut().poll(cx));
                this.pending = None;
                return Poll::Ready(Some(r));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let eos = this.inner.is_end_stream();
                        this.ended = eos;
                        this.pending = Some(this.chunk(data, eos));
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(t) => {
                            // Trailers end the stream: the filters hear of its end first.
                            this.pending = Some(this.trailers(t));
                            this.ended = true;
                        }
                        Err(_) => continue,
                    },
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    this.ended = true;
                    this.pending = Some(this.chunk(Bytes::new(), true));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.pending.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // Filters may change the length.
        SizeHint::default()
    }
}

/// Collects a whole body up to `limit` bytes, keeping its trailers.
pub async fn collect(body: Body, limit: usize) -> Result<(Bytes, Option<HeaderMap>), CollectError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(CollectError::Body)?;
        match frame.into_data() {
            Ok(d) => {
                if buf.len() + d.len() > limit {
                    return Err(CollectError::TooLarge);
                }
                buf.extend_from_slice(&d);
            }
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    Ok((buf.freeze(), trailers))
}

pub enum CollectError {
    TooLarge,
    Body(BoxError),
}

/// A complete body with optional trailers, as a `Body`.
pub fn body_with_trailers(data: Bytes, trailers: Option<HeaderMap>) -> Body {
    match trailers {
        None => Body::full(data),
        Some(t) => {
            let frames: Vec<Result<Frame<Bytes>, BoxError>> =
                vec![Ok(Frame::data(data)), Ok(Frame::trailers(t))];
            Body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
                frames,
            )))
        }
    }
}
