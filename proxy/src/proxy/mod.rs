//! The request path: route, run the filter chain's request phases, pick an endpoint,
//! send upstream under the deadline, run the response phases, and stream the
//! response back (`exchange` settles it when it ends).

pub mod body;
pub mod exchange;
pub mod grpc;
pub mod headers;
pub mod local;
pub mod path;
pub mod tcp;
pub mod tunnel;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING, USER_AGENT};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::chain::run::{
    self, BodyPlan, ChainRun, CollectError, FilteredBody, RequestDecision, ResponseDecision,
    MAX_RETRIES,
};
use crate::config::units::Dur;
use crate::config::{ForwardMode, HostHeader, RequestIdMode};
use crate::error::ProxyError;
use crate::server::ConnInfo;
use crate::snapshot::{ListenerRuntime, Snapshot};
use crate::telemetry::access;
use crate::telemetry::metrics::Limit;
use crate::upstream::pool::{closed_unanswered, Lease, SendError};
use crate::upstream::{Cluster, Endpoint, Want};
use crate::wasm::state::HeaderEdit;
use body::{Body, Recorder, RequestBody, Resumed, Tape};
use exchange::{BodyTimeouts, Exchange, ResponseBody};
use tunnel::{ExtendedConnect, UpgradeOverH2};

/// Serves one request; every failure becomes a response with the right status.
pub async fn handle(req: Request<Incoming>, conn: Arc<ConnInfo>) -> Response<ResponseBody> {
    // A retired connection tells its client it closes after this answer.
    let close = conn.state.closes_after_answer();
    let snap = conn.runtime.snapshot();
    // Borrowed from the snapshot: every reference count the request path moves is a
    // cache line that all workers write.
    let listener = match snap.listeners.get(&*conn.listener) {
        Some(l) => l,
        // The listener was removed or renamed by a reload; its connections are closing
        // (`server::serve`). One whose first request was on its way is served by the
        // listener that owns its socket now, if any.
        None => match snap.sockets.get(&conn.socket) {
            Some(owner) => &owner.listener,
            None => return local::bare(StatusCode::SERVICE_UNAVAILABLE, "listener removed"),
        },
    };
    let mut ex = Box::new(Exchange::new(
        conn,
        listener.clone(),
        req.method().clone(),
        req.uri().clone(),
        req.version(),
    ));
    if access::enabled() {
        ex.host = req.headers().get(HOST).cloned();
        ex.user_agent = req.headers().get(USER_AGENT).cloned();
    }
    // gRPC runs over HTTP/2 only: HTTP/1.1 requests need no look.
    ex.grpc = ex.version == Version::HTTP_2 && grpc::is_grpc(req.headers());
    let forwarding = &listener.config.forwarding;
    if forwarding.request_id_in_response && forwarding.request_id != RequestIdMode::Replace {
        // What the response names if the request is answered before it is forwarded.
        ex.x_request_id = req.headers().get(&headers::X_REQUEST_ID).cloned();
    }
    match forward(req, &snap, listener, &mut ex).await {
        Ok((mut resp, timeouts)) => {
            HeaderEdit::apply(ex.response_edits_for_answer(false), resp.headers_mut());
            if let Some(id) = headers::request_id_for_response(&mut ex.x_request_id, forwarding) {
                resp.headers_mut().insert(&headers::X_REQUEST_ID, id);
            }
            ex.status = resp.status().as_u16();
            if ex.grpc {
                grpc::answer_local(&mut resp);
                if let Some(was) = resp.extensions().get::<grpc::StandsFor>() {
                    ex.status = was.0.as_u16();
                }
                // Trailers-only: the status is in the headers.
                ex.grpc_status = grpc::status_of(resp.headers());
            }
            let (mut parts, body) = resp.into_parts();
            // The client's protocol, not the upstream's, decides how the response is framed.
            parts.version = if ex.version == Version::HTTP_10 {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            };
            if close {
                parts
                    .headers
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Response::from_parts(parts, ResponseBody::new(body, ex, timeouts))
        }
        Err(e) => {
            let edits = ex.response_edits_for_answer(false);
            let id = headers::request_id_for_response(&mut ex.x_request_id, forwarding);
            let mut resp = local::error(e, ex);
            HeaderEdit::apply(edits, resp.headers_mut());
            if let Some(id) = id {
                resp.headers_mut().insert(&headers::X_REQUEST_ID, id);
            }
            if close {
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        }
    }
}

async fn forward(
    mut req: Request<Incoming>,
    snap: &Arc<Snapshot>,
    lr: &ListenerRuntime,
    ex: &mut Exchange,
) -> Result<(Response<Body>, BodyTimeouts), ProxyError> {
    if req.version() == Version::HTTP_2 {
        // HTTP/1.1 heads are bounded by hyper's buffer; HTTP/2 header lists are checked
        // here, under a looser ceiling in h2 itself (see `snapshot.rs`), so that the
        // refusal is counted like HTTP/1.1's.
        let limit = lr.config.limits.max_header_bytes.as_usize();
        let size = headers::h2_header_list_size(&req);
        if size > limit {
            ex.conn
                .runtime
                .metrics
                .limit_hit(&ex.conn.listener, Limit::header_size);
            return Err(ProxyError::HeadersTooLarge { size, limit });
        }
    }
    headers::check_host(&mut req).map_err(ProxyError::Refused)?;
    let path_rules = path::Rules::of(&lr.config);
    if path_rules.any() {
        normalize_path(&mut req, path_rules)?;
    }
    let extended_connect = ExtendedConnect::is(&req);
    if req.method() == Method::CONNECT && !extended_connect {
        return tunnel::connect(req, lr, ex).await;
    }
    // After CONNECT: its authority is where the tunnel goes, not a host of ours.
    if let Some(tls) = &ex.conn.tls {
        if lr.strict_sni_host && !headers::host_is_sni(authority_of(&req), tls.sni.as_deref()) {
            return Err(ProxyError::Misdirected);
        }
    }
    let Some(target) = lr.routes.find(|| authority_of(&req), req.uri().path()) else {
        // Built with `ok_or`, the error would be made (and dropped) on every request.
        return Err(ProxyError::NoRoute);
    };
    // Answers given before the upstream is chosen count under the route's cluster.
    ex.cluster = target.cluster.clone();

    let hop_by_hop = headers::HopByHop::scan(req.headers());
    let upgrade = extended_connect || hop_by_hop.is_upgrade(req.version(), req.headers());
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, incoming) = req.into_parts();
    let mut head = Request::from_parts(parts, ());
    hop_by_hop.strip(head.headers_mut(), upgrade);
    let extended_connect = match extended_connect {
        true => Some(ExtendedConnect::rewrite(&mut head)?),
        false => None,
    };
    let https = ex.conn.tls.is_some();
    let version = head.version();
    headers::add_forwarding(
        head.headers_mut(),
        &lr.config.forwarding,
        &ex.conn.client_ip,
        https,
        version,
    );
    if access::enabled() || lr.config.forwarding.request_id_in_response {
        ex.x_request_id = head.headers().get(&headers::X_REQUEST_ID).cloned();
    }
    let mut body = Body::Incoming(incoming);
    let max_body = lr.config.limits.max_request_body.as_usize();
    // An upgrade's body (HTTP/2's extended CONNECT) is its tunnel, not a body.
    if max_body != 0 && !upgrade && !http_body::Body::is_end_stream(&body) {
        body = limit_request_body(body, max_body, ex)?;
    }

    // Request phases of the filter chain.
    let run = target.chain.clone().map(|c| {
        Arc::new(ChainRun::new(
            c,
            ex.request_id,
            ex.conn.clone(),
            snap.clone(),
        ))
    });
    let mut decision = RequestDecision::default();
    if let Some(run) = &run {
        if run.wants_completion() {
            let hook_run = run.clone();
            ex.on_complete = Some(Box::new(move |ex: &Exchange| {
                let info = run::completion(ex);
                tokio::spawn(async move { hook_run.on_complete(info).await });
            }));
        }
        decision = run
            .on_request_headers(&mut head, &mut ex.response_edits)
            .await?;
        if let Some(resp) = decision.respond.take() {
            return Ok((resp, BodyTimeouts::default()));
        }
        if !decision.body.is_empty() {
            let phase = request_body_phase(run, &mut head, body, &decision.body, max_body);
            body = match phase.await {
                Ok(Ok(b)) => b,
                Ok(Err(local)) => return Ok((local, BodyTimeouts::default())),
                Err(ProxyError::BodyTooLarge(limit)) => return Err(body_too_large(ex, limit)),
                Err(e) => return Err(e),
            };
        }
    }

    let cluster = match &decision.route {
        Some(up) => snap
            .clusters
            .get(&up.cluster)
            .ok_or_else(|| ProxyError::UnknownCluster(up.cluster.clone()))?,
        None => match &target.cluster {
            Some(c) => c,
            None => return Err(ProxyError::NoCluster),
        },
    };
    if !ex.cluster.as_ref().is_some_and(|c| Arc::ptr_eq(c, cluster)) {
        ex.cluster = Some(cluster.clone());
    }
    ex.admitted = cluster.admit()?;
    let over_h2 = match upgrade && cluster.upgrades_over_h2() {
        true => Some(UpgradeOverH2::rewrite(&mut head)?),
        false => None,
    };
    let deadline = Deadline::of(
        target.timeout.unwrap_or(cluster.config.request_timeout.0),
        cluster,
        ex,
        &mut head,
    );
    let want = if upgrade {
        Want::Upgrade
    } else {
        Want::Request {
            downstream_h2: version == Version::HTTP_2,
        }
    };

    // A filter may ask to send the request again: keep what a replay needs.
    let retry_run = run
        .as_ref()
        .filter(|r| r.chain.wants(crate::wasm::state::Phase::ResponseHeaders) && !upgrade);
    let tape = retry_run.map(|r| {
        Tape::new(
            r.chain
                .filters
                .iter()
                .map(|f| f.shared.limits.retry_buffer.as_usize())
                .min()
                .unwrap_or(0),
        )
    });
    if let (Some(tape), false) = (&tape, http_body::Body::is_end_stream(&body)) {
        body = Body::boxed(Recorder::new(body, tape.clone()));
    }
    let mut attempt_body = Some(body);
    // Taken by each attempt (an `Option`, so that no empty request is made to take
    // its place and dropped).
    let mut attempt_head = Some(head);
    loop {
        let this_head = attempt_head.take().unwrap_or_default();
        // The response phases read the request as sent, and a retry sends it again
        // from that same copy: one clone per attempt.
        if let Some(run) = &run {
            run.keep_request_head(&this_head);
        }
        let body = attempt_body.take().unwrap_or_default();
        let sent = send(
            this_head,
            body,
            cluster,
            decision.route.as_ref().and_then(|u| u.hash_key.as_deref()),
            want,
            &deadline,
            ex,
        )
        .await;
        let (resp, lease) = match sent {
            Ok(sent) => sent,
            // A filter answered while the request body streamed, which cut the
            // exchange off: its answer is the response.
            Err(e) => match run.as_ref().and_then(|r| r.take_local()) {
                Some(local) => return Ok((local, BodyTimeouts::default())),
                None => return Err(e),
            },
        };

        if let Some(downstream) = on_upgrade {
            // RFC 8441 §5: an extended CONNECT succeeded with any 2xx.
            let switched = match over_h2 {
                Some(_) => resp.status().is_success(),
                None => resp.status() == StatusCode::SWITCHING_PROTOCOLS,
            };
            if switched {
                return Ok((
                    tunnel::splice_upgrade(
                        downstream,
                        (resp, lease),
                        extended_connect.as_ref(),
                        over_h2.as_ref(),
                        ex,
                    )?,
                    BodyTimeouts::default(),
                ));
            }
            // The upstream declined to switch: an ordinary response.
            let (parts, b) = resp.into_parts();
            return Ok((
                finish_response(Response::from_parts(parts, ()), Body::Incoming(b), lr),
                body_timeouts(cluster, deadline.at),
            ));
        }
        let (parts, incoming) = resp.into_parts();
        let mut rhead = Response::from_parts(parts, ());
        let hop_by_hop = headers::HopByHop::scan(rhead.headers());
        ex.upstream_keep_alive = hop_by_hop.keep_alive_timeout(rhead.headers());
        // Framed by both Transfer-Encoding (which the body was read by) and
        // Content-Length: the length goes (RFC 9112 §6.3), and so does the
        // connection, whose next bytes may be a response smuggled in after the body.
        let framing_conflict = hop_by_hop.has_transfer_encoding()
            && rhead.headers_mut().remove(CONTENT_LENGTH).is_some();
        hop_by_hop.strip(rhead.headers_mut(), false);
        let mut rbody = Body::Incoming(incoming);
        match lease {
            // The connection goes with this response: its next bytes are suspect.
            Lease::H1 { .. } if framing_conflict => {}
            lease => ex.lease = Some(lease),
        }
        if let Some(run) = &run {
            // What the request phases wrote for the response, before the response
            // phases see it.
            HeaderEdit::apply(
                ex.response_edits_for_answer(tape.is_some()),
                rhead.headers_mut(),
            );
            if !run.chain.wants(crate::wasm::state::Phase::ResponseHeaders) {
                // No filter of the chain runs in the response phases (filters that
                // skipped theirs are known after their first request): nothing to call.
                return Ok((
                    finish_response(rhead, rbody, lr),
                    body_timeouts(cluster, deadline.at),
                ));
            }
            let replay = match &tape {
                Some(t)
                    if ex.retries < MAX_RETRIES
                        && ex
                            .tally
                            .request_done
                            .load(std::sync::atomic::Ordering::Relaxed) =>
                {
                    t.lock().unwrap_or_else(|p| p.into_inner()).replay()
                }
                _ => None,
            };
            match run
                .on_response_headers(&mut rhead, replay.is_some())
                .await?
            {
                ResponseDecision::Retry => {
                    ex.retries += 1;
                    ex.response_edited = false;
                    // The unread response is dropped with its connection.
                    ex.lease = None;
                    tracing::debug!(cluster = %cluster.name, retry = ex.retries, "a filter asked to retry the request");
                    attempt_head = run.take_request_head();
                    attempt_body = Some(replay.map(Body::full).unwrap_or_default());
                    continue;
                }
                ResponseDecision::Respond(local) => return Ok((local, BodyTimeouts::default())),
                ResponseDecision::Continue(plan) if !plan.is_empty() => {
                    rbody = response_body_phase(run, &mut rhead, rbody, plan).await?;
                }
                ResponseDecision::Continue(_) => {}
            }
        }
        return Ok((
            finish_response(rhead, rbody, lr),
            body_timeouts(cluster, deadline.at),
        ));
    }
}

/// What is kept of a request body sent to an HTTP/2 upstream, to send it again.
struct Kept {
    tape: Arc<std::sync::Mutex<Tape>>,
    tally: Arc<body::Tally>,
    /// The part hyper had not read yet, handed back when it lets go of the stream.
    rest: tokio::sync::oneshot::Receiver<Body>,
}

/// The body to send a request again with, after an HTTP/2 upstream turned its
/// stream away: none (it had none), or what was kept of it followed by whatever
/// had not been read yet; nothing if more than the bound had been read.
async fn replay(kept: Option<Kept>) -> Option<Body> {
    let Some(Kept { tape, tally, rest }) = kept else {
        return Some(Body::Empty);
    };
    // hyper lets go of the body as soon as it sees the stream reset (within the
    // request's deadline, which covers this); bounded in case it holds on.
    let rest = tokio::time::timeout(Duration::from_secs(1), rest).await;
    let recorded = tape.lock().unwrap_or_else(|p| p.into_inner()).replay()?;
    match rest {
        Ok(Ok(rest)) => Some(Body::boxed(Resumed::new(recorded, rest))),
        // Let go of at its end: the recording is the whole body.
        Ok(Err(_))
            if tally
                .request_done
                .load(std::sync::atomic::Ordering::Relaxed) =>
        {
            Some(Body::full(recorded))
        }
        _ => None,
    }
}

/// The most of a request body kept to send it again should an HTTP/2 upstream turn its
/// stream away unprocessed; a larger body's client hears the refusal (`503`).
const REFUSED_REPLAY_LIMIT: usize = 64 * 1024;

/// When the request must be answered by.
struct Deadline {
    at: Option<Instant>,
    /// The time allowed, for the error.
    after: Duration,
    /// Whether it is the client's own (`grpc-timeout`), whose expiry says nothing
    /// about the endpoint.
    set_by_client: bool,
}

impl Deadline {
    /// `configured` (the route's or cluster's timeout), or for a gRPC call to a
    /// cluster with `grpc_timeout_max` the call's `grpc-timeout` in its place, less
    /// `grpc_timeout_offset` and capped at that maximum (Envoy's
    /// `grpc_timeout_header_max` and `_offset`); a value changed so is what the
    /// upstream is told too.
    #[inline]
    fn of(
        configured: Duration,
        cluster: &Cluster,
        ex: &Exchange,
        head: &mut Request<()>,
    ) -> Deadline {
        let (after, set_by_client) = match (ex.grpc, cluster.config.grpc_timeout_max) {
            (true, Some(max)) => {
                Deadline::grpc(configured, max, cluster.config.grpc_timeout_offset, head)
            }
            _ => (configured, false),
        };
        Deadline {
            at: (!after.is_zero()).then(|| ex.start + after),
            after,
            set_by_client,
        }
    }

    /// The time a gRPC call gets, and whether it is the client's own.
    #[inline(never)]
    fn grpc(
        configured: Duration,
        max: Dur,
        offset: Dur,
        head: &mut Request<()>,
    ) -> (Duration, bool) {
        let Some(asked) = grpc::timeout(head.headers()) else {
            return (configured, false);
        };
        let (after, set_by_client) = match max.non_zero() {
            Some(max) if max < asked.saturating_sub(offset.0) => (max, false),
            // Zero is no deadline here, but an expired one to gRPC.
            _ => (
                asked.saturating_sub(offset.0).max(Duration::from_nanos(1)),
                true,
            ),
        };
        if after < asked {
            head.headers_mut()
                .insert(grpc::GRPC_TIMEOUT, grpc::timeout_value(after));
        }
        (after, set_by_client)
    }
}

fn body_timeouts(cluster: &Cluster, deadline: Option<Instant>) -> BodyTimeouts {
    BodyTimeouts {
        deadline,
        idle: cluster.config.idle_timeout.non_zero(),
    }
}

fn finish_response(mut head: Response<()>, body: Body, lr: &ListenerRuntime) -> Response<Body> {
    // RFC 9110 §7.6.3: Via names the protocol the message was received with, and a
    // response was received from the upstream.
    let version = head.version();
    headers::add_via(head.headers_mut(), &lr.config.forwarding, version);
    let (parts, ()) = head.into_parts();
    Response::from_parts(parts, body)
}

/// What consistent hashing places the request by: the key a filter gave, else the
/// cluster's `hash_header`.
fn hash_key_of<'a>(
    from_filter: Option<&'a str>,
    cluster: &'a Cluster,
    head: &'a Request<()>,
) -> Option<&'a [u8]> {
    from_filter.map(str::as_bytes).or_else(|| {
        cluster
            .balancer
            .hash_header
            .as_ref()
            .and_then(|h| head.headers().get(h))
            .map(HeaderValue::as_bytes)
    })
}

/// The listener's `max_request_body` on a request's body: one that says it is longer
/// is refused at once (413, before any filter or upstream sees it); one of unknown
/// length (chunked, or HTTP/2 without `content-length`) is cut off where it passes the
/// limit (`Limited`), which `send` and the filters' collecting answer with 413. A
/// declared length is held to by hyper and h2 (more is a protocol error).
fn limit_request_body(body: Body, limit: usize, ex: &Exchange) -> Result<Body, ProxyError> {
    let size = http_body::Body::size_hint(&body);
    if size.lower() > limit as u64 {
        return Err(body_too_large(ex, limit));
    }
    Ok(match size.upper() {
        Some(n) if n <= limit as u64 => body,
        _ => Body::boxed(http_body_util::Limited::new(body, limit)),
    })
}

/// A 413 for a request body past `limit`, counted as a `body_size` limit hit.
fn body_too_large(ex: &Exchange, limit: usize) -> ProxyError {
    ex.conn
        .runtime
        .metrics
        .limit_hit(&ex.conn.listener, Limit::body_size);
    ProxyError::BodyTooLarge(limit)
}

/// Picks an endpoint and sends the request under the deadline, to another endpoint
/// when no connection could be had (`connect_retries`); records how it went.
async fn send(
    head: Request<()>,
    body: Body,
    cluster: &Arc<Cluster>,
    filter_hash_key: Option<&str>,
    want: Want,
    deadline: &Deadline,
    ex: &mut Exchange,
) -> Result<(Response<Incoming>, Lease), ProxyError> {
    let mut ep = cluster.pick(hash_key_of(filter_hash_key, cluster, &head))?;
    ex.set_endpoint(ep.clone());
    let rewrite = HostRewrite::of(&head, cluster, &ex.listener);
    // Taken once a connection is had: a request that failed to get one was not sent,
    // and goes again, whole, to another endpoint.
    let (mut head, mut body) = (Some(head), Some(body));
    let mut retries_left = cluster.config.connect_retries;
    let mut tried: Vec<Arc<Endpoint>> = Vec::new();
    loop {
        // Whether a connection was had but closed before it took the request (or,
        // for a request that may be sent twice, before it answered).
        let mut given_back = false;
        // The attempt, dropped before its outcome is looked at (it borrows the
        // request to take it).
        let outcome = {
            let tally = ex.tally.clone();
            // Pinned where it is made: moving a future this size costs a copy of it.
            let exchange = std::pin::pin!(async {
                let mut lease = cluster.checkout(&ep, want).await?;
                let mut this_head = head.take().unwrap_or_default();
                for_lease(&mut this_head, &lease, cluster, &ep, rewrite.as_ref())?;
                let this_body = body.take().unwrap_or_default();
                let bodiless = http_body::Body::is_end_stream(&this_body);
                // A stream an HTTP/2 upstream turns away unprocessed (its GOAWAY
                // crossing the request as it shuts down, or REFUSED_STREAM) may go
                // again whatever its method (RFC 9113 §8.7), as Envoy's `refused-stream`
                // retry does: keep its head, and its body up to a bound. (An upgrade's
                // body is a tunnel, never replayed.)
                let h2 = lease.is_h2() && want != Want::Upgrade;
                let (this_body, kept) = if h2 && !bodiless {
                    let tape = Tape::new(REFUSED_REPLAY_LIMIT);
                    let (recorder, rest) = Recorder::handing_back(this_body, tape.clone());
                    let kept = Kept {
                        tape,
                        tally: tally.clone(),
                        rest,
                    };
                    (Body::boxed(recorder), Some(kept))
                } else {
                    (this_body, None)
                };
                let this_body = RequestBody::new(this_body, tally)
                    .with_idle_timeout(cluster.config.idle_timeout.non_zero());
                // A request that may be sent twice (idempotent, no body) goes again if
                // its connection is lost before the answer (RFC 9110 §9.2.2; nginx's
                // `proxy_next_upstream error`) where a copy of it is kept anyway
                // (HTTP/2), or where that is likely for reasons of the connection's
                // own (a new or long-idle HTTP/1.1 one); busy connections make no copy.
                let twice = this_head.method().is_idempotent() && bodiless;
                let copy = (h2 || (twice && lease.may_close_unasked())).then(|| this_head.clone());
                let req = this_head.map(|()| this_body);
                let sent = Instant::now();
                let resp = match cluster.send(&ep, &mut lease, req).await {
                    Ok(resp) => resp,
                    Err(SendError::Failed(e)) => {
                        let again = match e {
                            // Turned away, or on an HTTP/2 connection that never opened
                            // (`Handshake` here): not processed.
                            ProxyError::UpstreamRefused { .. } | ProxyError::Handshake { .. } => {
                                replay(kept).await
                            }
                            _ if twice && closed_unanswered(&e) => Some(Body::Empty),
                            _ => None,
                        };
                        if let (Some(copy), Some(again)) = (copy, again) {
                            head = Some(copy);
                            body = Some(again);
                            given_back = true;
                        }
                        return Err(e);
                    }
                    Err(SendError::Unsent(unsent)) => {
                        // Back where it was, to go again.
                        let (req, e) = *unsent;
                        let (parts, unsent_body) = req.into_parts();
                        head = Some(Request::from_parts(parts, ()));
                        body = Some(unsent_body.into_inner());
                        given_back = true;
                        return Err(e);
                    }
                };
                // Answered: the body will not go again, so what was kept of it goes now
                // (rather than with the stream, which may be a long one).
                if let Some(kept) = &kept {
                    kept.tape
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .discard();
                }
                let answered = Instant::now();
                Ok((resp, lease, answered - sent, answered))
            });
            match deadline.at {
                Some(d) => crate::gate::before_in(&ex.conn.deadline_timer, d, exchange)
                    .await
                    .unwrap_or(Err(ProxyError::Timeout(deadline.after))),
                None => exchange.await,
            }
        };
        return match outcome {
            Ok((resp, lease, latency, answered)) => {
                ex.upstream_latency = Some(latency);
                let failed = resp.status().is_server_error() && cluster.config.outlier.count_5xx;
                let outcome = if failed { Err(()) } else { Ok(latency) };
                cluster.record_at(&ep, outcome, answered);
                Ok((resp, lease))
            }
            // Not sent (the request is still here) because the connection it was
            // given closed under it (an HTTP/2 upstream's GOAWAY, a restart), sent
            // but unanswered on an idle connection its upstream closed, or turned away
            // unprocessed by an HTTP/2 upstream: again, the endpoint not blamed, but
            // elsewhere when there is an elsewhere (one shutting down may have no one
            // listening a moment later), else on a new connection to it.
            Err(e) if retries_left > 0 && given_back && !e.is_connect_failure() => {
                cluster.stats.connect_retries.inc();
                retries_left -= 1;
                let key = head
                    .as_ref()
                    .and_then(|h| hash_key_of(filter_hash_key, cluster, h));
                let next = cluster.pick_avoiding(key, std::slice::from_ref(&ep));
                tracing::debug!(cluster = %cluster.name, endpoint = %ep.addr, next = ?next.as_ref().map(|n| n.addr), error = %e, "the upstream did not take the request, sending it again");
                if let Some(next) = next {
                    ex.set_endpoint(next.clone());
                    ep = next;
                }
                continue;
            }
            // Not sent because no connection could be had (or, given back, no new one
            // in place of one that closed): another endpoint may have it.
            Err(e) if retries_left > 0 && e.is_connect_failure() && head.is_some() => {
                cluster.record(&ep, Err(()));
                tried.push(ep.clone());
                let key = head
                    .as_ref()
                    .and_then(|h| hash_key_of(filter_hash_key, cluster, h));
                let Some(next) = cluster.pick_avoiding(key, &tried) else {
                    tracing::warn!(cluster = %cluster.name, endpoint = %ep.addr, error = %e, "upstream request failed, no other endpoint to try");
                    return Err(e);
                };
                tracing::debug!(cluster = %cluster.name, endpoint = %ep.addr, next = %next.addr, error = %e, "connecting failed, trying another endpoint");
                cluster.stats.connect_retries.inc();
                retries_left -= 1;
                ex.set_endpoint(next.clone());
                ep = next;
                continue;
            }
            Err(_) if ex.tally.too_large() => {
                let limit = ex.listener.config.limits.max_request_body.as_usize();
                tracing::debug!(listener = %ex.conn.listener, remote = %ex.conn.remote, limit, "request body past max_request_body");
                Err(body_too_large(ex, limit))
            }
            Err(_) if ex.tally.idle_timed_out() => {
                ex.conn
                    .runtime
                    .metrics
                    .limit_hit(&ex.conn.listener, Limit::stream_idle_timeout);
                tracing::debug!(listener = %ex.conn.listener, remote = %ex.conn.remote, "request body idle timeout");
                Err(ProxyError::ClientTimeout)
            }
            // The request body failed on its way (malformed, cut off by the client, or
            // stopped by a filter's answer): the request's fault, not the endpoint's.
            Err(e) if ex.tally.client_at_fault(false) => {
                tracing::debug!(listener = %ex.conn.listener, remote = %ex.conn.remote, error = %e, "request body failed");
                Err(ProxyError::DownstreamBody(e.to_string()))
            }
            Err(e) => {
                // Not when the client held up its own body (a slow upload must not
                // eject a healthy endpoint), nor when the deadline was the client's.
                let timed_out = matches!(e, ProxyError::Timeout(_));
                if e.counts_against_endpoint()
                    && !ex.tally.client_at_fault(timed_out)
                    && !(timed_out && deadline.set_by_client)
                {
                    cluster.record(&ep, Err(()));
                }
                if timed_out {
                    cluster.stats.timeouts.inc();
                }
                tracing::warn!(cluster = %cluster.name, endpoint = %ep.addr, error = %e, "upstream request failed");
                Err(e)
            }
        };
    }
}

/// Runs the request-body phase: the whole body for filters that buffer, or a
/// stream that passes each chunk through the filters.
async fn request_body_phase(
    run: &Arc<ChainRun>,
    head: &mut Request<()>,
    body: Body,
    plan: &BodyPlan,
    max_body: usize,
) -> Result<Result<Body, Response<Body>>, ProxyError> {
    if !plan.buffer {
        head.headers_mut().remove(CONTENT_LENGTH);
        return Ok(Ok(Body::boxed(FilteredBody::new(
            body,
            run.clone(),
            plan.clone(),
            true,
        ))));
    }
    let (data, mut trailers) = match run::collect(body, plan.limit).await {
        Ok(c) => c,
        Err(CollectError::TooLarge) => return Err(ProxyError::BodyTooLarge(plan.limit)),
        // Past the listener's `max_request_body`, before the filters' own limit.
        Err(CollectError::Body(e)) if body::past_length_limit(&*e) => {
            return Err(ProxyError::BodyTooLarge(max_body));
        }
        Err(CollectError::Body(e)) => return Err(ProxyError::DownstreamBody(e.to_string())),
    };
    let data = match run.on_body(true, plan, data, true).await? {
        Ok(d) => d,
        Err(local) => return Ok(Err(local)),
    };
    if let Some(t) = trailers.as_mut() {
        run.on_trailers(true, plan, t).await?;
    }
    set_length(head.headers_mut(), &data);
    Ok(Ok(run::body_with_trailers(data, trailers)))
}

/// The response-body phase, as for requests; a buffered response that is too large is a 502.
async fn response_body_phase(
    run: &Arc<ChainRun>,
    head: &mut Response<()>,
    body: Body,
    plan: BodyPlan,
) -> Result<Body, ProxyError> {
    if !plan.buffer {
        head.headers_mut().remove(CONTENT_LENGTH);
        return Ok(Body::boxed(FilteredBody::new(
            body,
            run.clone(),
            plan,
            false,
        )));
    }
    let (data, mut trailers) = match run::collect(body, plan.limit).await {
        Ok(c) => c,
        Err(CollectError::TooLarge) => return Err(ProxyError::ResponseTooLarge(plan.limit)),
        Err(CollectError::Body(e)) => {
            return Err(ProxyError::BadRequest(format!("upstream body: {e}")))
        }
    };
    let data = match run.on_body(false, &plan, data, true).await? {
        Ok(d) => d,
        Err(local) => {
            let (parts, b) = local.into_parts();
            *head = Response::from_parts(parts, ());
            return Ok(b);
        }
    };
    if let Some(t) = trailers.as_mut() {
        run.on_trailers(false, &plan, t).await?;
    }
    set_length(head.headers_mut(), &data);
    Ok(run::body_with_trailers(data, trailers))
}

fn set_length(headers: &mut http::HeaderMap, data: &Bytes) {
    headers.remove(TRANSFER_ENCODING);
    headers.insert(CONTENT_LENGTH, HeaderValue::from(data.len()));
}

/// Puts the request's path in its normal form (`path::normalize`), the one routes,
/// filters and the upstream then see.
fn normalize_path<B>(req: &mut Request<B>, rules: path::Rules) -> Result<(), ProxyError> {
    let Some(p) = req.uri().path_and_query() else {
        return Ok(());
    };
    let Some(normal) = path::normalize(p.as_str(), rules).map_err(ProxyError::Refused)? else {
        return Ok(());
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query =
        Some(PathAndQuery::try_from(normal).map_err(|e| ProxyError::BadRequest(e.to_string()))?);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    Ok(())
}

/// The request's authority: the URI's (HTTP/2, absolute-form) or the Host header.
pub fn authority_of<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(Authority::as_str)
        .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()))
}

/// A cluster's requests name its endpoint rather than the client's host
/// (`host_header = "endpoint"`).
pub struct HostRewrite {
    /// The host the client named, taken before the first attempt rewrote it.
    client: Option<HeaderValue>,
    /// The listener's `x_forwarded_for`, which `X-Forwarded-Host` follows.
    forward: ForwardMode,
}

impl HostRewrite {
    pub fn of<B>(req: &Request<B>, cluster: &Cluster, listener: &ListenerRuntime) -> Option<Self> {
        (cluster.config.host_header == HostHeader::Endpoint).then(|| HostRewrite {
            client: authority_of(req).and_then(|a| HeaderValue::from_str(a).ok()),
            forward: listener.config.forwarding.x_forwarded_for,
        })
    }

    /// For a filter's outbound call: no client, no `X-Forwarded-Host`.
    pub fn for_call(cluster: &Cluster) -> Option<Self> {
        (cluster.config.host_header == HostHeader::Endpoint).then_some(HostRewrite {
            client: None,
            forward: ForwardMode::Off,
        })
    }
}

/// Rewrites a request for the connection it goes on: origin-form URI and a Host
/// header for HTTP/1.1; absolute URI (`:scheme`, `:authority`) for HTTP/2. In place:
/// a request is a few hundred bytes, and each move of it is a copy.
pub fn for_lease<B>(
    req: &mut Request<B>,
    lease: &Lease,
    cluster: &Cluster,
    ep: &Endpoint,
    rewrite: Option<&HostRewrite>,
) -> Result<(), ProxyError> {
    let tls = cluster.connector.tls.is_some();
    let rewritten = match rewrite {
        None => None,
        Some(r) => {
            if let Some(host) = &r.client {
                headers::add_forwarded_host(req.headers_mut(), r.forward, host);
            }
            let a = Authority::try_from(ep.authority(tls))
                .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
            Some(a)
        }
    };
    // The request's authority, from its URI or Host header, else the endpoint's.
    // Parsed only when needed: an HTTP/1.1 request that has a Host header keeps it.
    let authority = |req: &Request<B>| {
        req.uri()
            .authority()
            .cloned()
            .or_else(|| {
                req.headers()
                    .get(HOST)
                    .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            })
            .map_or_else(
                || {
                    Authority::try_from(ep.host_port())
                        .map_err(|e| ProxyError::BadRequest(e.to_string()))
                },
                Ok,
            )
    };
    let path = |req: &Request<B>| {
        req.uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"))
    };
    if lease.is_h2() {
        let scheme = if tls { Scheme::HTTPS } else { Scheme::HTTP };
        let authority = match rewritten {
            Some(a) => a,
            None => authority(req)?,
        };
        *req.uri_mut() = Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(path(req))
            .build()
            .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
        req.headers_mut().remove(HOST);
        *req.version_mut() = Version::HTTP_2;
    } else {
        if let Some(a) = rewritten {
            let host = HeaderValue::from_str(a.as_str())
                .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
            req.headers_mut().insert(HOST, host);
        } else if !req.headers().contains_key(HOST) {
            let host = HeaderValue::from_str(authority(req)?.as_str())
                .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
            req.headers_mut().insert(HOST, host);
        }
        if req.uri().authority().is_some() {
            *req.uri_mut() = Uri::from(path(req));
        }
        *req.version_mut() = Version::HTTP_11;
    }
    Ok(())
}
