//! A bare hyper HTTP/1.1 reverse proxy: one thread, a pool of kept-alive upstream
//! connections, bodies passed through, nothing else (no header rules, timeouts,
//! balancing, metrics or logs). `bare-hyper LISTEN UPSTREAM`, both `host:port`.
//!
//! It is what Weft's request path costs without its features, for callgrind and
//! timed runs side by side with `weft proxy` (docs/benchmarks.md). It panics on any
//! error: a benchmark fixture, not a proxy.
use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Idle upstream connections, last in first out.
type Pool = Rc<RefCell<Vec<SendRequest<Incoming>>>>;

/// The upstream response's body; hands its connection back to the pool when done.
struct Back {
    body: Incoming,
    sender: Option<SendRequest<Incoming>>,
    pool: Pool,
}

impl Body for Back {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = r {
            if let Some(s) = self.sender.take() {
                self.pool.borrow_mut().push(s);
            }
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

// Also when dropped unfinished: `handle` passes over a connection that is not ready.
impl Drop for Back {
    fn drop(&mut self) {
        if let Some(s) = self.sender.take() {
            self.pool.borrow_mut().push(s);
        }
    }
}

async fn connect(up: std::net::SocketAddr) -> SendRequest<Incoming> {
    let s = tokio::net::TcpStream::connect(up).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    sender
}

async fn handle(
    req: Request<Incoming>,
    pool: Pool,
    up: std::net::SocketAddr,
) -> Result<Response<Back>, hyper::Error> {
    let mut sender = loop {
        let s = pool.borrow_mut().pop();
        match s {
            Some(s) if s.is_ready() => break s,
            Some(_) => continue,
            None => break connect(up).await,
        }
    };
    let resp = sender.send_request(req).await?;
    Ok(resp.map(|body| Back {
        body,
        sender: Some(sender),
        pool,
    }))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let listen: std::net::SocketAddr = args.next().unwrap().parse().unwrap();
    let up: std::net::SocketAddr = args.next().unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let pool: Pool = Rc::new(RefCell::new(Vec::new()));
        let l = tokio::net::TcpListener::bind(listen).await.unwrap();
        loop {
            let (s, _) = l.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            let pool = pool.clone();
            tokio::task::spawn_local(async move {
                let svc = hyper::service::service_fn(move |req| handle(req, pool.clone(), up));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
}
