//! The request path: route, run the filter chain's request phases, pick an endpoint,
//! send upstream under the deadline, run the response phases, and stream the
//! response back (`exchange` settles it when it ends).

pub mod body;
pub mod exchange;
pub mod headers;
pub mod local;
pub mod tunnel;

use std::sync::Arc;

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::error::ProxyError;
use crate::server::ConnInfo;
use crate::snapshot::ListenerRuntime;
use crate::upstream::pool::Lease;
use crate::upstream::{Cluster, Endpoint, Want};
use body::{Body, RequestBody};
use exchange::{BodyTimeouts, Exchange, ResponseBody};

/// Serves one request; every failure becomes a response with the right status.
pub async fn handle(req: Request<Incoming>, conn: Arc<ConnInfo>) -> Response<ResponseBody> {
    let snap = conn.runtime.snapshot();
    let listener = match snap.listeners.get(&*conn.listener) {
        Some(l) => l.clone(),
        // The listener was removed by a reload; its open connections drain on what they had.
        None => return local::bare(StatusCode::SERVICE_UNAVAILABLE, "listener removed"),
    };
    let mut ex = Box::new(Exchange::new(
        conn,
        listener.clone(),
        req.method().clone(),
        req.uri().clone(),
        req.version(),
    ));
    match forward(req, &listener, &mut ex).await {
        Ok((resp, timeouts)) => {
            ex.status = resp.status().as_u16();
            let (parts, body) = resp.into_parts();
            Response::from_parts(parts, ResponseBody::new(body, ex, timeouts))
        }
        Err(e) => local::error(e, ex),
    }
}

async fn forward(
    mut req: Request<Incoming>,
    lr: &ListenerRuntime,
    ex: &mut Exchange,
) -> Result<(Response<Body>, BodyTimeouts), ProxyError> {
    if req.method() == Method::CONNECT {
        return tunnel::connect(req, lr, ex).await;
    }
    let target = lr
        .routes
        .find(authority_of(&req), req.uri().path())
        .ok_or(ProxyError::NoRoute)?;
    let cluster = target.cluster.clone().ok_or(ProxyError::NoCluster)?;
    ex.cluster = Some(cluster.clone());

    let upgrade = headers::is_upgrade(req.version(), req.headers());
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    let https = ex.conn.tls.is_some();
    headers::add_forwarding(
        &mut parts.headers,
        &lr.config.forwarding,
        ex.conn.remote,
        https,
        parts.version,
    );

    let hash_key = cluster
        .balancer
        .hash_header
        .as_ref()
        .and_then(|h| parts.headers.get(h))
        .map(HeaderValue::as_bytes);
    let ep = cluster.pick(hash_key)?;
    ex.set_endpoint(ep.clone());

    let want = if upgrade {
        Want::Upgrade
    } else {
        Want::Request {
            downstream_h2: parts.version == Version::HTTP_2,
        }
    };
    let timeout = target.timeout.unwrap_or(cluster.config.request_timeout.0);
    let deadline = (!timeout.is_zero()).then(|| ex.start + timeout);
    let tally = ex.tally.clone();
    let exchange = async {
        let mut lease = cluster.checkout(&ep, want).await?;
        let req = upstream_request(parts, body, &lease, &cluster, &ep, tally)?;
        let sent = Instant::now();
        let resp = cluster.send(&ep, &mut lease, req).await?;
        Ok((resp, lease, sent.elapsed()))
    };
    let outcome = match deadline {
        Some(d) => tokio::time::timeout_at(d, exchange)
            .await
            .unwrap_or(Err(ProxyError::Timeout(timeout))),
        None => exchange.await,
    };
    let (resp, lease, latency) = match outcome {
        Ok(r) => r,
        Err(e) => {
            // Not when the client held up its own body: a slow or broken upload
            // must not eject a healthy endpoint.
            let timed_out = matches!(e, ProxyError::Timeout(_));
            if e.counts_against_endpoint() && !ex.tally.client_at_fault(timed_out) {
                cluster.record(&ep, Err(()));
            }
            if timed_out {
                cluster.stats.timeouts.inc();
            }
            tracing::warn!(cluster = %cluster.name, endpoint = %ep.addr, error = %e, "upstream request failed");
            return Err(e);
        }
    };
    ex.upstream_latency = Some(latency);
    let failed = resp.status().is_server_error() && cluster.config.outlier.count_5xx;
    cluster.record(&ep, if failed { Err(()) } else { Ok(latency) });

    if let Some(downstream) = on_upgrade {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            return Ok((
                tunnel::splice_upgrade(downstream, resp, ex),
                BodyTimeouts::default(),
            ));
        }
    }
    let (mut parts, body) = resp.into_parts();
    // The client's protocol, not the upstream's, decides how the response is framed.
    parts.version = if ex.version == Version::HTTP_10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    headers::strip_hop_by_hop(&mut parts.headers, false);
    headers::add_via(&mut parts.headers, &lr.config.forwarding, parts.version);
    if matches!(lease, Lease::H1 { .. }) {
        ex.lease = Some(lease);
    }
    let timeouts = BodyTimeouts {
        deadline,
        idle: cluster.config.idle_timeout.non_zero(),
    };
    Ok((Response::from_parts(parts, Body::Incoming(body)), timeouts))
}

/// The request's authority: the URI's (HTTP/2, absolute-form) or the Host header.
pub fn authority_of<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(Authority::as_str)
        .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()))
}

/// Rewrites the request for the upstream connection: origin-form URI and a Host
/// header for HTTP/1.1; absolute URI (`:scheme`, `:authority`) for HTTP/2.
fn upstream_request(
    mut parts: http::request::Parts,
    body: Incoming,
    lease: &Lease,
    cluster: &Cluster,
    ep: &Endpoint,
    tally: Arc<body::Tally>,
) -> Result<Request<RequestBody>, ProxyError> {
    let authority = parts
        .uri
        .authority()
        .cloned()
        .or_else(|| {
            parts
                .headers
                .get(HOST)
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        })
        .map_or_else(
            || {
                Authority::try_from(ep.host_port())
                    .map_err(|e| ProxyError::BadRequest(e.to_string()))
            },
            Ok,
        )?;
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if lease.is_h2() {
        let scheme = if cluster.connector.tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        parts.uri = Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
        parts.headers.remove(HOST);
        parts.version = Version::HTTP_2;
    } else {
        if !parts.headers.contains_key(HOST) {
            let host = HeaderValue::from_str(authority.as_str())
                .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
            parts.headers.insert(HOST, host);
        }
        if parts.uri.authority().is_some() {
            parts.uri = Uri::from(path);
        }
        parts.version = Version::HTTP_11;
    }
    Ok(Request::from_parts(
        parts,
        RequestBody::new(Body::Incoming(body), tally),
    ))
}
