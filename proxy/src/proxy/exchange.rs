//! The life of one request after its response headers: the response body streams
//! to the client under the request's deadline and idle timeout, and when it ends
//! (or the client goes away) the exchange is settled: metrics, access log, the
//! upstream connection back to its pool, the completion hook of the filters.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Uri, Version};
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::body::{Body, Tally};
use crate::error::BoxError;
use crate::server::ConnInfo;
use crate::snapshot::ListenerRuntime;
use crate::telemetry::access::{self, AccessRecord};
use crate::upstream::pool::Lease;
use crate::upstream::{Admitted, Cluster, Endpoint};
use crate::wasm::state::HeaderEdit;

/// Runs when an exchange is settled (the filters' completion phase).
pub type CompletionHook = Box<dyn FnOnce(&Exchange) + Send>;

/// Everything needed to settle a request once its response is done.
pub struct Exchange {
    pub start: Instant,
    /// Unique in the process; filters see it, and their log lines carry it.
    pub request_id: u64,
    pub conn: Arc<ConnInfo>,
    pub listener: Arc<ListenerRuntime>,
    pub method: Method,
    pub uri: Uri,
    /// The client's `Host`, kept for the access log when it is written.
    pub host: Option<HeaderValue>,
    /// The client's `User-Agent`, kept for the access log when it is written.
    pub user_agent: Option<HeaderValue>,
    /// The request's `X-Request-ID` (the client's, or the one the proxy made), kept
    /// for the access log when it is written.
    pub x_request_id: Option<HeaderValue>,
    pub version: Version,
    /// Whether the request is a gRPC call, whose failures the proxy answers with a
    /// gRPC status (`local::error`).
    pub grpc: bool,
    /// For a gRPC call, the status its client read (`grpc-status` in the trailers,
    /// or in the headers of a trailers-only response); `None` until one is seen.
    pub grpc_status: Option<u8>,
    /// The HTTP status answered; for a gRPC call the proxy failed, the one the
    /// failure stands for (the response itself is a `200` with a `grpc-status`).
    pub status: u16,
    pub cluster: Option<Arc<Cluster>>,
    /// The endpoint the request went to; its `pending` count includes this request.
    pub endpoint: Option<Arc<Endpoint>>,
    /// The connection the response comes on: an HTTP/1.1 one goes back to the pool if
    /// the exchange ends cleanly; an HTTP/2 one counts this stream until it ends.
    pub lease: Option<Lease>,
    /// Counted against the cluster's `max_requests` while the exchange (or its
    /// tunnel) lasts.
    pub admitted: Option<Admitted>,
    pub tally: Arc<Tally>,
    pub response_bytes: u64,
    pub upstream_latency: Option<Duration>,
    /// The idle timeout the upstream announced for the connection (`Keep-Alive:
    /// timeout=N` on its response), which bounds how long the pool reuses it.
    pub upstream_keep_alive: Option<Duration>,
    pub retries: u32,
    /// Why the request failed, if it did.
    pub error: Option<&'static str>,
    /// Set when the response body was sent to its end.
    pub complete: bool,
    pub on_complete: Option<CompletionHook>,
    /// Response headers the request-headers phase wrote before there was a response.
    pub response_edits: Vec<HeaderEdit>,
    /// Whether the response being answered already has them (an upstream response
    /// gets them before the response phases run).
    pub response_edited: bool,
}

impl Exchange {
    pub fn new(
        conn: Arc<ConnInfo>,
        listener: Arc<ListenerRuntime>,
        method: Method,
        uri: Uri,
        version: Version,
    ) -> Self {
        conn.state.begin();
        Exchange {
            start: Instant::now(),
            request_id: conn.runtime.next_request_id(),
            conn,
            listener,
            method,
            uri,
            host: None,
            user_agent: None,
            x_request_id: None,
            version,
            grpc: false,
            grpc_status: None,
            status: 0,
            cluster: None,
            endpoint: None,
            lease: None,
            admitted: None,
            tally: Arc::default(),
            response_bytes: 0,
            upstream_latency: None,
            upstream_keep_alive: None,
            retries: 0,
            error: None,
            complete: false,
            on_complete: None,
            response_edits: Vec::new(),
            response_edited: false,
        }
    }

    /// The response edits of the request phases, for the response about to be
    /// answered; none when it already had them. `again`: a retry may need them for
    /// its own response, so they are copied rather than handed over.
    pub fn response_edits_for_answer(&mut self, again: bool) -> Vec<HeaderEdit> {
        if self.response_edited || self.response_edits.is_empty() {
            return Vec::new();
        }
        self.response_edited = true;
        match again {
            true => self.response_edits.clone(),
            false => std::mem::take(&mut self.response_edits),
        }
    }

    /// A settled gRPC call's status: the one its client read or, for a call whose
    /// client went away before the end (it cancelled, or its deadline passed with
    /// nothing here enforcing it), CANCELLED, as the server counts it.
    fn grpc_status(&self) -> Option<u8> {
        self.grpc_status
            .or((!self.complete).then_some(super::grpc::CANCELLED))
    }

    /// Marks the request as sent to `ep`, counting it as pending there.
    pub fn set_endpoint(&mut self, ep: Arc<Endpoint>) {
        ep.pending.fetch_add(1, Ordering::Relaxed);
        if let Some(old) = self.endpoint.replace(ep) {
            old.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if let Some(ep) = &self.endpoint {
            ep.pending.fetch_sub(1, Ordering::Relaxed);
        }
        if !self.complete && self.error.is_none() {
            self.error = Some("downstream closed before the response ended");
        }
        // An HTTP/1.1 connection is reusable only when both bodies went through whole.
        // One clock read serves the duration, the pool and the connection's state.
        let now = Instant::now();
        if let (Some(Lease::H1 { sender, home, .. }), Some(ep), Some(cluster)) =
            (self.lease.take(), &self.endpoint, &self.cluster)
        {
            if self.complete && self.tally.request_done.load(Ordering::Relaxed) {
                let pool = &cluster.config.pool;
                ep.pool
                    .put(sender, home, pool, now, self.upstream_keep_alive);
            }
        }
        let elapsed = now.saturating_duration_since(self.start);
        let cluster = self.cluster.as_ref().map(|c| &*c.name);
        let stats = self.listener.stats(cluster);
        stats.record(self.status, elapsed.as_secs_f64());
        if self.grpc {
            stats.record_grpc(self.grpc_status());
        }
        if let Some(hook) = self.on_complete.take() {
            hook(self);
        }
        let authority = self.uri.authority().map(|a| a.as_str());
        access::log(&AccessRecord {
            request_id: self.request_id,
            listener: &self.conn.listener,
            remote: self.conn.remote,
            method: &self.method,
            uri: &self.uri,
            authority: authority.or_else(|| self.host.as_ref()?.to_str().ok()),
            x_request_id: self.x_request_id.as_ref().and_then(|v| v.to_str().ok()),
            user_agent: self.user_agent.as_ref().and_then(|v| v.to_str().ok()),
            version: self.version,
            status: self.status,
            grpc_status: self
                .grpc
                .then(|| self.grpc_status().map_or("none", super::grpc::code_name)),
            cluster,
            upstream: self.endpoint.as_ref().map(|e| e.addr),
            request_bytes: self.tally.request_bytes.load(Ordering::Relaxed),
            response_bytes: self.response_bytes,
            upstream_duration: self.upstream_latency,
            duration: elapsed,
            retries: self.retries,
            error: self.error,
        });
        self.conn.state.end(self.conn.runtime.ms_at(now));
    }
}

/// Limits on a streaming response body.
#[derive(Clone, Copy, Default)]
pub struct BodyTimeouts {
    /// The request's deadline (from the route or cluster `request_timeout`).
    pub deadline: Option<Instant>,
    /// The longest gap between two frames.
    pub idle: Option<Duration>,
}

/// The response body as the client receives it; settles the exchange when it ends.
pub struct ResponseBody {
    inner: Body,
    exchange: Option<Box<Exchange>>,
    timeouts: BodyTimeouts,
    /// Made only once a poll finds no frame ready, so quick bodies never touch the timer.
    timer: Option<Pin<Box<Sleep>>>,
    /// Since when the body has made no progress: read from the clock by the first
    /// poll that finds no frame after the head or a frame (so a body whose frames
    /// are ready when polled never reads it).
    idle_since: Option<Instant>,
    /// The request's bytes when that idle time began: a stream is idle only when
    /// neither direction moves (a client may upload while the upstream is silent).
    request_seen: u64,
}

impl ResponseBody {
    pub fn new(inner: Body, exchange: Box<Exchange>, timeouts: BodyTimeouts) -> Self {
        exchange
            .tally
            .response_started
            .store(true, Ordering::Relaxed);
        let mut body = ResponseBody {
            inner,
            exchange: Some(exchange),
            timeouts,
            timer: None,
            idle_since: None,
            request_seen: 0,
        };
        if http_body::Body::is_end_stream(&body.inner) {
            body.finish();
        }
        body
    }

    /// A body that settles nothing (answers given before a request exists).
    pub fn plain(inner: Body) -> Self {
        ResponseBody {
            inner,
            exchange: None,
            timeouts: BodyTimeouts::default(),
            timer: None,
            idle_since: None,
            request_seen: 0,
        }
    }

    fn finish(&mut self) {
        if let Some(mut ex) = self.exchange.take() {
            ex.complete = true;
        }
    }

    /// For a gRPC call, the trailers `end` makes to end it, its status noted; `None`
    /// for other requests.
    fn ended_grpc_call(
        &mut self,
        end: impl FnOnce() -> http::HeaderMap,
    ) -> Option<http::HeaderMap> {
        let ex = self.exchange.as_mut().filter(|ex| ex.grpc)?;
        let trailers = end();
        ex.grpc_status = super::grpc::status_of(&trailers);
        Some(trailers)
    }

    /// The request body's bytes so far (0 when the exchange has settled).
    fn request_progress(&self) -> u64 {
        self.exchange
            .as_ref()
            .map_or(0, |ex| ex.tally.request_bytes.load(Ordering::Relaxed))
    }

    fn fail(&mut self, why: &'static str) {
        if let Some(mut ex) = self.exchange.take() {
            ex.error = Some(why);
        }
    }

    /// When the body must have made progress by, if ever; called when a poll found
    /// no frame. The idle time runs from the first such poll after the head or the
    /// last frame (a body that never sends a frame is idle too).
    fn due(&mut self) -> Option<Instant> {
        let idle = self.timeouts.idle.map(|d| {
            let since = match self.idle_since {
                Some(t) => t,
                None => {
                    self.request_seen = self.request_progress();
                    *self.idle_since.insert(Instant::now())
                }
            };
            since + d
        });
        match (self.timeouts.deadline, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(ex) = this.exchange.as_mut() {
                    if let Some(data) = frame.data_ref() {
                        ex.response_bytes += data.len() as u64;
                    } else if let (true, Some(trailers)) = (ex.grpc, frame.trailers_ref()) {
                        ex.grpc_status = super::grpc::status_of(trailers);
                    }
                }
                this.idle_since = None;
                if this.inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::debug!(error = %e, "response body failed");
                let trailers = this.ended_grpc_call(|| super::grpc::failure_trailers(&*e));
                this.fail("upstream response body failed");
                if let Some(trailers) = trailers {
                    // The call ends with a status rather than a reset of the stream.
                    this.inner = Body::Empty;
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => loop {
                let Some(due) = this.due() else {
                    return Poll::Pending;
                };
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                if timer.deadline() != due {
                    timer.as_mut().reset(due);
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let hit_deadline = this.timeouts.deadline.is_some_and(|d| Instant::now() >= d);
                if !hit_deadline && this.request_progress() != this.request_seen {
                    // The client's upload moved meanwhile: a new idle period.
                    this.idle_since = None;
                    continue;
                }
                let why = if hit_deadline {
                    "request timeout while streaming the response"
                } else {
                    "response body idle timeout"
                };
                if let Some(c) = this.exchange.as_ref().and_then(|ex| ex.cluster.as_ref()) {
                    c.stats.timeouts.inc();
                }
                let trailers =
                    this.ended_grpc_call(|| super::grpc::timeout_trailers(hit_deadline, why));
                this.fail(why);
                if let Some(trailers) = trailers {
                    // The upstream's stream goes (dropped: reset); the client's ends
                    // with the status.
                    this.inner = Body::Empty;
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                return Poll::Ready(Some(Err(why.into())));
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
