//! `weft:filter/outbound`: HTTP calls from a filter to a cluster. `send` starts the
//! call on its own task; `wait` suspends the filter (not the thread) until it ends.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::error::ProxyError;
use crate::proxy::body::{Body, RequestBody};
use crate::upstream::pool::{Lease, SendError};
use crate::upstream::{Cluster, Endpoint, Want};
use crate::wasm::bindings::weft::filter::outbound::{
    CallError, CallId, Host, Request as CallRequest, Response as CallResponse,
};
use crate::wasm::state::HostState;

type R<T> = wasmtime::Result<T>;

impl Host for HostState {
    fn send(&mut self, cluster: String, req: CallRequest) -> R<Result<CallId, CallError>> {
        let limit = self.filter.limits.outbound_calls;
        if self.call.part.calls_made >= limit {
            return Ok(Err(CallError::Limit(format!(
                "at most {limit} calls per request"
            ))));
        }
        let Some(snapshot) = self.call.scope.as_ref().and_then(|s| s.snapshot.clone()) else {
            return Ok(Err(CallError::Upstream("no request in progress".into())));
        };
        let Some(cluster) = snapshot.clusters.get(&cluster).cloned() else {
            return Ok(Err(CallError::UnknownCluster(cluster)));
        };
        let request = match build(&req, &cluster) {
            Ok(r) => r,
            Err(e) => return Ok(Err(CallError::InvalidRequest(e))),
        };
        let timeout = req
            .timeout_ms
            .map(|ms| Duration::from_millis(ms.into()))
            .unwrap_or(cluster.config.request_timeout.0);
        let max_body = self.filter.limits.body_bytes.as_usize();
        let task = tokio::spawn(async move {
            let call = async {
                let (resp, lease, ep, started) = exchange(&cluster, request).await?;
                cluster.record(&ep, Ok(started.elapsed()));
                let (parts, body) = resp.into_parts();
                let keep_alive = crate::proxy::headers::HopByHop::scan(&parts.headers)
                    .keep_alive_timeout(&parts.headers);
                let body = http_body_util::Limited::new(body, max_body)
                    .collect()
                    .await
                    .map_err(|e| CallError::Limit(format!("response body: {e}")))?
                    .to_bytes();
                if let Lease::H1 { sender, home, .. } = lease {
                    ep.pool.put(
                        sender,
                        home,
                        &cluster.config.pool,
                        Instant::now(),
                        keep_alive,
                    );
                }
                Ok(CallResponse {
                    status: parts.status.as_u16(),
                    headers: parts
                        .headers
                        .iter()
                        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                        .collect(),
                    body: body.to_vec(),
                })
            };
            if timeout.is_zero() {
                call.await
            } else {
                tokio::time::timeout(timeout, call)
                    .await
                    .unwrap_or(Err(CallError::Timeout))
            }
        });
        let id = self.call.part.next_call;
        self.call.part.next_call += 1;
        self.call.part.calls_made += 1;
        self.call.outbound.insert(id, task);
        Ok(Ok(id))
    }

    async fn wait(&mut self, id: CallId) -> R<Result<CallResponse, CallError>> {
        let Some(task) = self.call.outbound.remove(&id) else {
            return Ok(Err(CallError::UnknownCall));
        };
        Ok(task
            .await
            .unwrap_or_else(|e| Err(CallError::Upstream(format!("the call was lost: {e}")))))
    }
}

/// Sends a call's request to an endpoint of `cluster`, as the proxy sends requests:
/// one that got no connection, or whose connection closed before taking it, goes
/// again (to another endpoint when connecting failed), up to `connect_retries` times.
async fn exchange(
    cluster: &Arc<Cluster>,
    mut request: Request<RequestBody>,
) -> Result<(Response<Incoming>, Lease, Arc<Endpoint>, Instant), CallError> {
    let upstream = |e: ProxyError| CallError::Upstream(e.to_string());
    let want = Want::Request {
        downstream_h2: false,
    };
    let mut ep = cluster.pick(None).map_err(upstream)?;
    let mut tried: Vec<Arc<Endpoint>> = Vec::new();
    let mut retries_left = cluster.config.connect_retries;
    // A filter's call names the host it wants; a cluster that names its endpoints
    // still does (no client's host to pass on).
    let rewrite = crate::proxy::HostRewrite::for_call(cluster);
    loop {
        let (e, unsent) = match cluster.checkout(&ep, want).await {
            Err(e) => (e, request),
            Ok(mut lease) => {
                crate::proxy::for_lease(&mut request, &lease, cluster, &ep, rewrite.as_ref())
                    .map_err(|e| CallError::InvalidRequest(e.to_string()))?;
                let started = Instant::now();
                match cluster.send(&ep, &mut lease, request).await {
                    Ok(resp) => return Ok((resp, lease, ep, started)),
                    Err(SendError::Failed(e)) => {
                        if e.counts_against_endpoint() {
                            cluster.record(&ep, Err(()));
                        }
                        return Err(upstream(e));
                    }
                    Err(SendError::Unsent(u)) => {
                        let (req, e) = *u;
                        if retries_left > 0 && !e.is_connect_failure() {
                            // Its connection closed under it: again, on another.
                            retries_left -= 1;
                            cluster.stats.connect_retries.inc();
                            request = req;
                            continue;
                        }
                        (e, req)
                    }
                }
            }
        };
        if !e.is_connect_failure() {
            return Err(upstream(e));
        }
        cluster.record(&ep, Err(()));
        tried.push(ep.clone());
        let next = (retries_left > 0)
            .then(|| cluster.pick_avoiding(None, &tried))
            .flatten();
        let Some(next) = next else {
            return Err(upstream(e));
        };
        retries_left -= 1;
        cluster.stats.connect_retries.inc();
        ep = next;
        request = unsent;
    }
}

fn build(
    req: &CallRequest,
    cluster: &crate::upstream::Cluster,
) -> Result<Request<RequestBody>, String> {
    let method = Method::from_bytes(req.method.as_bytes())
        .map_err(|_| format!("bad method {:?}", req.method))?;
    let path: http::uri::PathAndQuery = req
        .path
        .parse()
        .map_err(|_| format!("bad path {:?}", req.path))?;
    let mut builder = Request::builder().method(method).uri(path);
    for (k, v) in &req.headers {
        let name =
            HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("bad header name {k:?}"))?;
        let value =
            HeaderValue::from_bytes(v).map_err(|_| format!("bad value for header {k:?}"))?;
        builder = builder.header(name, value);
    }
    let _ = cluster;
    let body = Body::full(Bytes::from(req.body.clone()));
    builder
        .body(RequestBody::new(body, Default::default()))
        .map_err(|e| e.to_string())
}
