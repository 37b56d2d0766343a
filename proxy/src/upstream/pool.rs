//! Connections kept to each endpoint, per worker: idle HTTP/1.1 connections (one
//! request at a time each) and shared HTTP/2 connections (up to
//! `max_streams_per_connection` requests at a time each, another one opened when all
//! are that busy).
//!
//! Built directly on hyper's connection API rather than hyper-util's pooled client:
//! that client spawns a task per request to hand the connection back, which showed
//! up in profiles. Here a connection returns to the pool when the exchange that
//! used it ends (see `proxy::exchange`), with no extra task.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Cluster, Endpoint, Want};
use crate::config::PoolConfig;
use crate::error::ProxyError;
use crate::proxy::body::RequestBody;
use crate::workers::PerWorker;

type H2Sender = http2::SendRequest<RequestBody>;

/// An HTTP/1.1 connection's handle, and how many exchanges it has carried (for
/// `max_requests_per_connection`).
pub struct H1Sender {
    send: http1::SendRequest<RequestBody>,
    carried: u64,
}

impl H1Sender {
    fn new(send: http1::SendRequest<RequestBody>) -> Self {
        H1Sender { send, carried: 0 }
    }
}

impl std::ops::Deref for H1Sender {
    type Target = http1::SendRequest<RequestBody>;
    fn deref(&self) -> &Self::Target {
        &self.send
    }
}

impl std::ops::DerefMut for H1Sender {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.send
    }
}

/// An endpoint's connections, kept apart per worker (see `workers`): a connection's
/// I/O is driven by the runtime of the worker that opened it, so it serves only
/// that worker's requests. Sharing them made every request that took another
/// worker's connection wake that worker's thread to write it and again to read the
/// answer back: with 2 workers, 1.1 voluntary context switches per request against
/// 0.5 once pools were per worker (docs/benchmarks.md, "Connections per worker").
#[derive(Default)]
pub struct Pool {
    workers: PerWorker<WorkerPool>,
    slots: Arc<Slots>,
}

/// An endpoint's connections counted against its limit, and the requests waiting at
/// the limit for one to come free (`Cluster::checkout_queued`), served in the order
/// they came: what comes free is handed to the one that waited longest, so a request
/// arriving later cannot take it first.
#[derive(Default)]
struct Slots {
    /// Connections open to this endpoint, pooled or in use, on all workers.
    open: AtomicUsize,
    /// Requests waiting at the limit (counted before they join `waiters`).
    waiting: AtomicUsize,
    /// The waiting requests, oldest first (and some that gave up, skipped when met).
    waiters: Mutex<VecDeque<Waiter>>,
    /// When one of its HTTP/1.1 connections last ended.
    last_close: LastClose,
}

/// When an endpoint's HTTP/1.1 connection last ended: most often its server closing it
/// (a graceful shutdown closes every idle one at once, a keep-alive timeout one), in
/// which case a request written on another may meet the same fate as it is written.
struct LastClose {
    base: Instant,
    /// Milliseconds after `base`, plus one; 0: never.
    at: AtomicU64,
}

impl Default for LastClose {
    fn default() -> Self {
        LastClose {
            base: Instant::now(),
            at: AtomicU64::new(0),
        }
    }
}

impl LastClose {
    fn note(&self) {
        let ms = self.base.elapsed().as_millis() as u64 + 1;
        self.at.store(ms, Ordering::Relaxed);
    }

    /// Whether one ended less than `STALE_AFTER` before `now`.
    fn recent(&self, now: Instant) -> bool {
        let at = self.at.load(Ordering::Relaxed);
        at != 0
            && (now.saturating_duration_since(self.base).as_millis() as u64 + 1)
                < at + STALE_AFTER.as_millis() as u64
    }
}

/// What comes free at the limit, for a waiting request.
enum Freed {
    /// An HTTP/1.1 connection whose exchange ended, and the worker that drives it.
    Conn { sender: H1Sender, home: usize },
    /// The place of a connection that closed, for the request to open its own.
    Slot(OpenGuard),
    /// A stream that ended on a full HTTP/2 connection, taken again for the request.
    Stream(H2Stream),
}

struct Waiter {
    freed: oneshot::Sender<Freed>,
    /// Whether it can use a pooled connection or a stream (an upgrade needs a new
    /// connection).
    takes_conn: bool,
}

impl Slots {
    /// Takes a slot under `max` (0: no limit). Never counts past the limit, even for
    /// a moment: a request that finds the limit reached must be able to trust it.
    fn reserve(self: &Arc<Self>, max: usize) -> Option<OpenGuard> {
        if max == 0 {
            self.open.fetch_add(1, Ordering::SeqCst);
        } else {
            let mut open = self.open.load(Ordering::Relaxed);
            loop {
                if open >= max {
                    return None;
                }
                match self.open.compare_exchange_weak(
                    open,
                    open + 1,
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(now) => open = now,
                }
            }
        }
        Some(OpenGuard {
            slots: self.clone(),
            max,
            armed: true,
        })
    }

    /// Hands `freed` to the request that has waited longest and can use it; what
    /// none takes goes to `give_back` before the waiters' lock goes.
    ///
    /// How nothing freed is missed: the one freeing publishes it first (frees the
    /// slot, pools the connection, ends the stream), then reads `waiting`, and only
    /// if someone waits takes it back and comes here. A waiter counts itself in
    /// `waiting`, joins the waiters under this lock (`wait_turn`), then looks. So
    /// either the freeing saw nobody waiting and the waiter's look finds it
    /// published, or the waiter had joined and is handed it here, or it joins after
    /// `give_back` published it again, and finds it.
    fn hand_over(&self, mut freed: Freed, give_back: impl FnOnce(Freed)) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        let is_conn = matches!(freed, Freed::Conn { .. } | Freed::Stream(_));
        let mut i = 0;
        while i < waiters.len() {
            if is_conn && !waiters[i].takes_conn && !waiters[i].freed.is_closed() {
                i += 1;
                continue;
            }
            let Some(w) = waiters.remove(i) else { break };
            // A waiter that gave up (timed out, or served otherwise) refuses it.
            match w.freed.send(freed) {
                Ok(()) => return,
                Err(back) => freed = back,
            }
        }
        give_back(freed);
        drop(waiters);
    }

    /// Joins the waiting requests (after `queue`); what is handed over comes on the
    /// receiver.
    fn wait_turn(&self, takes_conn: bool) -> oneshot::Receiver<Freed> {
        let (tx, rx) = oneshot::channel();
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        // Those that gave up since anything was last handed over go now, so the
        // queue holds no more than the requests that may wait.
        waiters.retain(|w| !w.freed.is_closed());
        waiters.push_back(Waiter {
            freed: tx,
            takes_conn,
        });
        rx
    }

    /// A place among at most `max` waiting requests, counted in `gauge` too, held
    /// until dropped.
    fn queue<'a>(&'a self, max: usize, gauge: &'a Gauge) -> Option<Queued<'a>> {
        self.waiting
            .fetch_update(Ordering::SeqCst, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        gauge.inc();
        Some(Queued { slots: self, gauge })
    }
}

/// A request waiting at an endpoint's connection limit.
struct Queued<'a> {
    slots: &'a Slots,
    gauge: &'a Gauge,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.slots.waiting.fetch_sub(1, Ordering::SeqCst);
        self.gauge.dec();
    }
}

/// One worker's connections to an endpoint.
#[derive(Default)]
struct WorkerPool {
    idle: Mutex<Vec<Idle>>,
    /// HTTP/2 connections, oldest first: a request takes the first with room, so
    /// the newer ones serve only the overflow. Read without a lock on every request;
    /// replaced whole (under `h2_connect`) when a connection opens or is swept.
    h2: ArcSwap<Vec<Arc<H2Conn>>>,
    h2_connect: tokio::sync::Mutex<()>,
}

/// A shared HTTP/2 connection.
pub struct H2Conn {
    sender: H2Sender,
    /// Whether the peer enabled extended CONNECT (RFC 8441) in its settings, as last
    /// read; only the connection knows, so its task copies it here.
    extended_connect: Arc<AtomicBool>,
    /// Whether the server has sent anything yet (its preface comes first).
    heard: Arc<AtomicBool>,
    /// Requests on it whose exchange has not ended (`H2Stream`s alive).
    streams: AtomicUsize,
    /// Set by each request, cleared by the sweep: whether it was used since.
    used: AtomicBool,
    /// Since when the sweep has found it unused (only the sweep touches it).
    unused_since: Mutex<Option<Instant>>,
    /// The endpoint's slots, whose waiting requests a stream that ends may serve.
    slots: Arc<Slots>,
    /// The cluster's `max_streams_per_connection` when it was opened (0: no limit).
    max_streams: usize,
    /// Requests it has taken, and the most it may (`max_requests_per_connection`,
    /// 0: no limit); once it has taken them it takes no more, and the sweep lets it
    /// go when they have ended.
    taken: AtomicU64,
    max_requests: u64,
}

impl H2Conn {
    fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }

    /// Whether it may take another request under `max_streams` (0: no limit).
    fn has_room(&self, max_streams: usize) -> bool {
        // SeqCst, as the count's changes and the waiting count are: a request that
        // counted itself waiting then finds no room sees the stream's end, or the end
        // sees it waiting (`H2Stream::drop`). (A plain load on x86.)
        self.is_open()
            && !self.exhausted()
            && (max_streams == 0 || self.streams.load(Ordering::SeqCst) < max_streams)
    }

    /// Whether it has taken all the requests it may.
    fn exhausted(&self) -> bool {
        self.max_requests != 0 && self.taken.load(Ordering::Relaxed) >= self.max_requests
    }

    /// A request's use of the connection, counted until it is dropped.
    fn stream(self: &Arc<Self>) -> H2Stream {
        self.streams.fetch_add(1, Ordering::SeqCst);
        self.taken.fetch_add(1, Ordering::Relaxed);
        self.used.store(true, Ordering::Relaxed);
        H2Stream {
            sender: self.sender.clone(),
            conn: self.clone(),
            counted: true,
        }
    }

    /// After a stream ended, or the connection opened, with requests waiting at the
    /// connection limit: takes a stream, if there is room (a newcomer may have taken
    /// it), for the request that has waited longest (`Slots::hand_over`). Whether one
    /// was handed over.
    fn pass_on_stream(self: &Arc<Self>) -> bool {
        if self.exhausted() {
            return false;
        }
        let max = if self.max_streams == 0 {
            usize::MAX
        } else {
            self.max_streams
        };
        let taken = self
            .streams
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            });
        if taken.is_err() {
            return false;
        }
        self.taken.fetch_add(1, Ordering::Relaxed);
        let stream = H2Stream {
            sender: self.sender.clone(),
            conn: self.clone(),
            counted: true,
        };
        let mut handed = true;
        self.slots.hand_over(Freed::Stream(stream), |back| {
            handed = false;
            if let Freed::Stream(mut s) = back {
                s.counted = false;
                s.conn.streams.fetch_sub(1, Ordering::SeqCst);
            }
        });
        handed
    }
}

/// One request on a shared HTTP/2 connection, counted among the connection's streams
/// while the exchange lasts (its response body, or its tunnel, included).
pub struct H2Stream {
    sender: H2Sender,
    conn: Arc<H2Conn>,
    /// Whether its drop gives the stream back (not when it never counted).
    counted: bool,
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        // Given back first, then the waiting count read: with the waiter's order
        // (counted waiting, then looked for room), one of the two sees the other.
        self.conn.streams.fetch_sub(1, Ordering::SeqCst);
        if self.conn.slots.waiting.load(Ordering::SeqCst) > 0 && self.conn.is_open() {
            let _ = self.conn.pass_on_stream();
        }
    }
}

struct Idle {
    sender: H1Sender,
    since: Instant,
    /// How long it may sit idle, by its server's own word (`Keep-Alive: timeout`);
    /// `Duration::MAX` when the server said nothing.
    limit: Duration,
}

impl WorkerPool {
    /// The most recently pooled connection still fit for use, and whether it is one
    /// its server may close as a request is written: idle for `STALE_AFTER` or longer,
    /// or of an endpoint one of whose connections just ended (`LastClose`).
    fn take_idle(&self, max_idle: Duration, last_close: &LastClose) -> Option<(H1Sender, bool)> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(i) = idle.pop() {
            let now = Instant::now();
            let idle_for = now.saturating_duration_since(i.since);
            if idle_for < max_idle.min(i.limit) && !i.sender.is_closed() {
                let stale = idle_for >= STALE_AFTER || last_close.recent(now);
                return Some((i.sender, stale));
            }
        }
        None
    }

    /// Pools an idle connection if there is room; whether it did.
    fn pool_idle(
        &self,
        sender: H1Sender,
        max_idle_conns: usize,
        now: Instant,
        limit: Duration,
    ) -> bool {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() >= max_idle_conns {
            return false;
        }
        idle.push(Idle {
            sender,
            since: now,
            limit,
        });
        true
    }

    /// The connection pooled last, if it is still open.
    fn take_newest(&self) -> Option<H1Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.pop().map(|i| i.sender).filter(|s| !s.is_closed())
    }

    /// The oldest HTTP/2 connection with room for another request.
    fn h2(&self, max_streams: usize) -> Option<H2Stream> {
        let conns = self.h2.load();
        conns
            .iter()
            .find(|c| c.has_room(max_streams))
            .map(H2Conn::stream)
    }

    /// Adds a connection just opened, dropping the closed ones. Called under
    /// `h2_connect`, so no other change is lost.
    fn add_h2(&self, conn: Arc<H2Conn>) {
        let mut conns: Vec<_> = self
            .h2
            .load()
            .iter()
            .filter(|c| c.is_open())
            .cloned()
            .collect();
        conns.push(conn);
        self.h2.store(Arc::new(conns));
    }

    /// Drops closed HTTP/2 connections, and those no request used for `max_idle`
    /// (a burst's extra connections do not stay; hyper closes one when the pool's
    /// handle, the last, goes). Skipped while a connection is being opened.
    fn sweep_h2(&self, max_idle: Duration) {
        let Ok(_one_at_a_time) = self.h2_connect.try_lock() else {
            return;
        };
        let conns = self.h2.load();
        let now = Instant::now();
        let keep = |c: &&Arc<H2Conn>| {
            let mut since = c.unused_since.lock().unwrap_or_else(|p| p.into_inner());
            let busy = c.streams.load(Ordering::Relaxed) > 0;
            if c.exhausted() && !busy {
                return false;
            }
            if c.used.swap(false, Ordering::Relaxed) || busy {
                *since = None;
                return c.is_open();
            }
            c.is_open() && now.duration_since(*since.get_or_insert(now)) < max_idle
        };
        let kept: Vec<_> = conns.iter().filter(keep).cloned().collect();
        if kept.len() < conns.len() {
            self.h2.store(Arc::new(kept));
        }
    }
}

impl Pool {
    /// The calling worker's part of the pool.
    fn mine(&self) -> &WorkerPool {
        self.workers.mine()
    }

    /// Drops connections idle for `max_idle`, and closed ones, on every worker.
    pub(super) fn sweep(&self, max_idle: Duration) {
        for w in self.workers.iter() {
            let mut idle = w.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.retain(|i| i.since.elapsed() < max_idle.min(i.limit) && !i.sender.is_closed());
            drop(idle);
            w.sweep_h2(max_idle);
        }
    }

    /// The calling worker's most recently pooled connection still fit for use.
    fn take_idle(&self, max_idle: Duration) -> Option<Lease> {
        let (home, mine) = self.workers.mine_indexed();
        let (sender, stale) = mine.take_idle(max_idle, &self.slots.last_close)?;
        Some(Lease::H1 {
            sender,
            reused: true,
            stale,
            home,
        })
    }

    /// The worker part a connection the calling worker opens belongs to.
    fn home(&self) -> usize {
        self.workers.mine_indexed().0
    }

    /// Returns a connection whose exchange finished cleanly, idle from `now`, to the
    /// part of the pool of its `home` worker, whose runtime drives its I/O (a
    /// connection borrowed at the connection limit goes back where it came from).
    /// A request waiting at the connection limit gets it first. `server_timeout`: the
    /// idle timeout its server announced (`Keep-Alive: timeout=N`), past which it is
    /// not reused (see `reuse_window`).
    pub fn put(
        &self,
        mut sender: H1Sender,
        home: usize,
        pool: &PoolConfig,
        now: Instant,
        server_timeout: Option<Duration>,
    ) {
        sender.carried += 1;
        let max = pool.max_requests_per_connection;
        if sender.is_closed() || (max != 0 && sender.carried >= max) {
            return;
        }
        let max_idle_conns = pool.max_idle_per_endpoint;
        let limit = match server_timeout {
            None => Duration::MAX,
            Some(t) => reuse_window(t),
        };
        if limit.is_zero() {
            return;
        }
        let part = self.workers.part(home);
        // Not pooled (the pool is full): it closes, and its place passes on.
        if !part.pool_idle(sender, max_idle_conns, now, limit)
            || self.slots.waiting.load(Ordering::SeqCst) == 0
        {
            return;
        }
        self.pass_on_idle(part, home, max_idle_conns, now);
    }

    /// With requests waiting at the connection limit: the connection just pooled (or
    /// one as good; none if a newcomer took it) goes to the one that waited longest.
    #[inline(never)]
    fn pass_on_idle(&self, part: &WorkerPool, home: usize, max_idle_conns: usize, now: Instant) {
        let Some(sender) = part.take_newest() else {
            return;
        };
        self.slots.hand_over(Freed::Conn { sender, home }, |back| {
            if let Freed::Conn { sender, .. } = back {
                part.pool_idle(sender, max_idle_conns, now, Duration::MAX);
            }
        });
    }

    /// One of the calling worker's HTTP/2 connections with room for a request.
    fn h2(&self, max_streams: usize) -> Option<H2Stream> {
        self.mine().h2(max_streams)
    }

    /// For a request that the endpoint's connection limit keeps from opening a
    /// connection: an HTTP/2 connection with room on any worker (none has room when
    /// all carry `max_streams` requests: the request then waits in the endpoint's
    /// queue, bounded, rather than unbounded inside hyper), else an idle HTTP/1.1
    /// connection of another worker. Another worker's connection has its I/O cross
    /// threads for this request: the price of the limit, paid only at it. An
    /// HTTP/1.1 one goes back to its own worker's part afterwards.
    fn borrow(&self, max_idle: Duration, max_streams: usize) -> Option<Lease> {
        let (mine, _) = self.workers.mine_indexed();
        let workers = || {
            self.workers
                .iter()
                .skip(mine)
                .chain(self.workers.iter().take(mine))
        };
        if let Some(s) = workers().find_map(|w| w.h2(max_streams)) {
            return Some(Lease::H2(s));
        }
        let (home, (sender, stale)) =
            self.workers.iter().enumerate().find_map(|(home, w)| {
                Some((home, w.take_idle(max_idle, &self.slots.last_close)?))
            })?;
        Some(Lease::H1 {
            sender,
            reused: true,
            stale,
            home,
        })
    }

    pub fn open_connections(&self) -> usize {
        self.slots.open.load(Ordering::Relaxed)
    }

    /// Open HTTP/2 connections, on all workers.
    pub fn h2_connections(&self) -> usize {
        let open = |w: &WorkerPool| w.h2.load().iter().filter(|c| c.is_open()).count();
        self.workers.iter().map(open).sum()
    }

    /// Requests on HTTP/2 connections now, on all workers.
    pub fn h2_streams(&self) -> usize {
        let streams = |w: &WorkerPool| -> usize {
            let conns = w.h2.load();
            conns
                .iter()
                .map(|c| c.streams.load(Ordering::Relaxed))
                .sum()
        };
        self.workers.iter().map(streams).sum()
    }

    pub fn idle_connections(&self) -> usize {
        self.workers
            .iter()
            .map(|w| w.idle.lock().map(|i| i.len()).unwrap_or(0))
            .sum()
    }
}

/// A connection checked out for one request.
pub enum Lease {
    /// `reused` connections may have been closed by the upstream meanwhile; a
    /// request that fails on one before being written is sent again on a new one.
    H1 {
        sender: H1Sender,
        reused: bool,
        /// Reused after sitting idle for `STALE_AFTER` or longer (long enough for
        /// the upstream's own idle timeout to close it just as a request is written),
        /// or while the endpoint's connections are closing (`LastClose`).
        stale: bool,
        /// The worker whose pool part the connection returns to (`Pool::put`).
        home: usize,
    },
    H2(H2Stream),
}

impl Lease {
    pub fn is_h2(&self) -> bool {
        matches!(self, Lease::H2(_))
    }

    /// An HTTP/1.1 connection its upstream may close under a request for reasons of
    /// its own: new (its listener closing with the connection still in its backlog,
    /// a restart), long idle (its keep-alive timeout firing as the request arrives),
    /// or one of an endpoint whose connections are closing (a graceful shutdown).
    pub fn may_close_unasked(&self) -> bool {
        matches!(
            self,
            Lease::H1 { reused: false, .. } | Lease::H1 { stale: true, .. }
        )
    }
}

/// How long a connection whose server announced an idle timeout (`Keep-Alive:
/// timeout=N`: Node sends 5 s, Apache its `KeepAliveTimeout`) is reused: a second
/// less than the server's, or half of it if that is shorter, so that a request is
/// never written as the server closes the connection for idleness, which loses the
/// request unanswered (a POST cannot be sent again). Zero: not reused at all.
pub fn reuse_window(server_timeout: Duration) -> Duration {
    server_timeout - (server_timeout / 2).min(KEEP_ALIVE_MARGIN)
}

/// What `reuse_window` takes off a server's announced idle timeout (undici, Node's
/// HTTP client, takes off the same).
const KEEP_ALIVE_MARGIN: Duration = Duration::from_secs(1);

/// How long an idle HTTP/1.1 connection may sit before a request on it is treated
/// as one the upstream may close as it arrives (servers' keep-alive timeouts are
/// seconds: Node's is 5 s); busy connections are reused far sooner.
const STALE_AFTER: Duration = Duration::from_secs(1);

/// Whether an exchange failed because the upstream closed or reset the connection
/// without answering (what an idle connection's server does when its keep-alive
/// timeout fires as the request arrives, or a closing listener to the connections in
/// its backlog).
pub fn closed_unanswered(e: &ProxyError) -> bool {
    match e {
        ProxyError::Upstream { source, .. } => connection_lost(source),
        _ => false,
    }
}

/// Whether hyper failed because the connection closed or was reset under it.
fn connection_lost(source: &hyper::Error) -> bool {
    source.is_incomplete_message()
        || std::error::Error::source(source)
            .and_then(|c| {
                c.downcast_ref::<std::io::Error>()
                    .or_else(|| c.downcast_ref::<h2::Error>().and_then(h2::Error::get_io))
            })
            .is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                )
            })
}

/// Counts a connection as open until dropped; then its place passes to the request
/// that has waited longest at the limit, if one does.
struct OpenGuard {
    slots: Arc<Slots>,
    /// The limit it was reserved under, to reserve the place again for a waiter.
    max: usize,
    /// Whether its drop frees the place (not once given back under the lock).
    armed: bool,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let slots = &self.slots;
        slots.open.fetch_sub(1, Ordering::SeqCst);
        if slots.waiting.load(Ordering::SeqCst) == 0 {
            return;
        }
        // Taken again, unless a newcomer took it, for the request waiting longest.
        let Some(again) = slots.reserve(self.max) else {
            return;
        };
        slots.hand_over(Freed::Slot(again), |back| {
            if let Freed::Slot(mut g) = back {
                g.armed = false;
                g.slots.open.fetch_sub(1, Ordering::SeqCst);
            }
        });
    }
}

impl Cluster {
    /// A connection to `ep` fit for `want`. At the endpoint's connection limit, the
    /// request waits for one to come free (`checkout_queued`).
    pub(crate) async fn checkout(
        &self,
        ep: &Arc<Endpoint>,
        want: Want,
    ) -> Result<Lease, ProxyError> {
        match self.checkout_now(ep, want).await {
            Err(ProxyError::PoolExhausted(_)) if self.config.pool.max_pending_per_endpoint > 0 => {
                // Boxed: the waiting is rare, and would make every request's future larger.
                Box::pin(self.checkout_queued(ep, want)).await
            }
            r => r,
        }
    }

    /// At the endpoint's connection limit, with no connection to borrow: waits, among
    /// at most `max_pending_per_endpoint` requests and for at most the connect
    /// timeout, for a connection to come back to the pool or close, as Envoy queues
    /// pending requests rather than failing a burst a little over the limit. Waiting
    /// requests are served in the order they came (`Slots::hand_over`).
    async fn checkout_queued(&self, ep: &Arc<Endpoint>, want: Want) -> Result<Lease, ProxyError> {
        let slots = &ep.pool.slots;
        let max = self.config.pool.max_pending_per_endpoint;
        let Some(_queued) = slots.queue(max, &self.stats.pending) else {
            return Err(ProxyError::PoolExhausted(ep.addr));
        };
        // An upgrade over HTTP/1.1 needs a connection of its own; over HTTP/2 a stream.
        let takes_conn = want != Want::Upgrade || self.upgrades_over_h2();
        let mut freed = slots.wait_turn(takes_conn);
        let deadline = tokio::time::sleep_until(Instant::now() + self.config.connect_timeout.0);
        let deadline = std::pin::pin!(deadline);
        // Joined before looking: a connection or stream freed (or opened) in between
        // is handed to us. (What freed it before we were counted is in the pool.)
        match self.checkout_now(ep, want).await {
            Err(ProxyError::PoolExhausted(_)) => {}
            done => return done,
        }
        tokio::select! {
            got = &mut freed => match got {
                Ok(Freed::Conn { sender, home }) => Ok(Lease::H1 {
                    sender,
                    reused: true,
                    stale: false,
                    home,
                }),
                Ok(Freed::Stream(stream)) => Ok(Lease::H2(stream)),
                Ok(Freed::Slot(guard)) => {
                    let use_h2 = self.use_h2(ep, want).await;
                    self.connect_on(ep, want, use_h2, guard).await
                }
                Err(_) => Err(ProxyError::PoolExhausted(ep.addr)),
            },
            () = deadline => Err(ProxyError::PoolExhausted(ep.addr)),
        }
    }

    /// A connection to `ep` fit for `want`, or `PoolExhausted` at the limit.
    async fn checkout_now(&self, ep: &Arc<Endpoint>, want: Want) -> Result<Lease, ProxyError> {
        let max_idle = self.config.pool.idle_timeout.0;
        let use_h2 = match self.use_h2_known(ep, want) {
            Ok(known) => known,
            Err(_) => self.use_h2(ep, want).await,
        };
        match use_h2 {
            Some(true) => match self.h2_stream(ep, None).await {
                Ok(s) => Ok(Lease::H2(s)),
                Err(e) => self.borrow(ep, e),
            },
            Some(false) if want == Want::Upgrade => self.connect_h1(ep, true).await,
            Some(false) => match ep.pool.take_idle(max_idle) {
                Some(lease) => Ok(lease),
                None => match self.connect_h1(ep, false).await {
                    Ok(lease) => Ok(lease),
                    Err(e) => self.borrow(ep, e),
                },
            },
            // TLS with ALPN: use what the endpoint chose before, else connect and see.
            None => {
                if let Some(s) = ep.pool.h2(self.config.pool.max_streams_per_connection) {
                    return Ok(Lease::H2(s));
                }
                if let Some(lease) = ep.pool.take_idle(max_idle) {
                    return Ok(lease);
                }
                match self.reserve(ep) {
                    Ok(guard) => self.connect_on(ep, want, None, guard).await,
                    Err(e) => self.borrow(ep, e),
                }
            }
        }
    }

    /// A new connection to `ep` for `want`, in the slot `guard` holds, over HTTP/2
    /// as `use_h2` says (`None`: as TLS's ALPN chooses).
    async fn connect_on(
        &self,
        ep: &Arc<Endpoint>,
        want: Want,
        use_h2: Option<bool>,
        guard: OpenGuard,
    ) -> Result<Lease, ProxyError> {
        let (io, alpn_h2) = self.connect_counted(ep, use_h2 == Some(false)).await?;
        if use_h2.unwrap_or(alpn_h2) {
            self.h2_stream(ep, Some((io, guard))).await.map(Lease::H2)
        } else {
            self.handshake_h1(ep, io, guard, want == Want::Upgrade)
                .await
        }
    }

    /// At the endpoint's connection limit (`e`), a connection another worker holds,
    /// if there is one; any other error stands.
    fn borrow(&self, ep: &Endpoint, e: ProxyError) -> Result<Lease, ProxyError> {
        if !matches!(e, ProxyError::PoolExhausted(_)) {
            return Err(e);
        }
        let pool = &self.config.pool;
        ep.pool
            .borrow(pool.idle_timeout.0, pool.max_streams_per_connection)
            .ok_or(e)
    }

    /// Reserves a connection slot under the endpoint's limit.
    fn reserve(&self, ep: &Endpoint) -> Result<OpenGuard, ProxyError> {
        let max = self.config.pool.max_connections_per_endpoint;
        ep.pool
            .slots
            .reserve(max)
            .ok_or(ProxyError::PoolExhausted(ep.addr))
    }

    async fn connect_counted(
        &self,
        ep: &Endpoint,
        http1_only: bool,
    ) -> Result<(super::connect::Io, bool), ProxyError> {
        // Shared by many clients' requests: a PROXY header, if any, names no one.
        let r = self
            .connector
            .connect(ep.addr, &ep.host, http1_only, None)
            .await;
        if let Err(e) = &r {
            self.stats.connect_errors.inc();
            if matches!(e, ProxyError::ConnectTimeout(_)) {
                self.stats.timeouts.inc();
            }
        }
        r
    }

    async fn connect_h1(&self, ep: &Arc<Endpoint>, upgrades: bool) -> Result<Lease, ProxyError> {
        let guard = self.reserve(ep)?;
        let (io, _) = self.connect_counted(ep, true).await?;
        self.handshake_h1(ep, io, guard, upgrades).await
    }

    async fn handshake_h1(
        &self,
        ep: &Endpoint,
        io: super::connect::Io,
        guard: OpenGuard,
        upgrades: bool,
    ) -> Result<Lease, ProxyError> {
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(handshake_failed(ep))?;
        let addr = ep.addr;
        tokio::spawn(async move {
            let open = guard;
            let r = if upgrades {
                conn.with_upgrades().await
            } else {
                conn.await
            };
            open.slots.last_close.note();
            if let Err(e) = r {
                tracing::debug!(endpoint = %addr, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(Lease::H1 {
            sender: H1Sender::new(sender),
            reused: false,
            stale: false,
            home: ep.pool.home(),
        })
    }

    /// A request's stream on one of the calling worker's shared HTTP/2 connections to
    /// the endpoint with room for it, or on a new one when all are busy (opened once,
    /// however many requests wait for it). `made` is a connection already opened (one
    /// TLS's ALPN chose HTTP/2 for, or one a waiting request opened in its slot).
    async fn h2_stream(
        &self,
        ep: &Endpoint,
        made: Option<(super::connect::Io, OpenGuard)>,
    ) -> Result<H2Stream, ProxyError> {
        let max_streams = self.config.pool.max_streams_per_connection;
        if made.is_none() {
            if let Some(s) = ep.pool.h2(max_streams) {
                return Ok(s);
            }
        }
        let _one_at_a_time = ep.pool.mine().h2_connect.lock().await;
        if let Some(s) = ep.pool.h2(max_streams) {
            return Ok(s);
        }
        let (io, guard) = match made {
            Some(m) => m,
            None => {
                let guard = self.reserve(ep)?;
                (self.connect_counted(ep, false).await?.0, guard)
            }
        };
        let heard = Arc::new(AtomicBool::new(false));
        let io = Heard {
            io,
            heard: heard.clone(),
        };
        let (sender, mut conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .handshake(TokioIo::new(io))
            .await
            .map_err(handshake_failed(ep))?;
        let addr = ep.addr;
        let shared = Arc::new(H2Conn {
            sender,
            heard,
            extended_connect: Arc::default(),
            streams: AtomicUsize::new(0),
            slots: ep.pool.slots.clone(),
            max_streams: self.config.pool.max_streams_per_connection,
            taken: AtomicU64::new(0),
            max_requests: self.config.pool.max_requests_per_connection,
            used: AtomicBool::new(false),
            unused_since: Mutex::new(None),
        });
        let extended_connect = shared.extended_connect.clone();
        tokio::spawn(async move {
            let _open = guard;
            let run = std::future::poll_fn(|cx| {
                let r = Pin::new(&mut conn).poll(cx);
                extended_connect.store(
                    conn.is_extended_connect_protocol_enabled(),
                    Ordering::Relaxed,
                );
                r
            });
            if let Err(e) = run.await {
                tracing::debug!(endpoint = %addr, error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        let stream = shared.stream();
        ep.pool.mine().add_h2(shared.clone());
        // Published first, then the waiting count read (as for a stream that ends):
        // its room goes to waiting requests in the order they came.
        while ep.pool.slots.waiting.load(Ordering::SeqCst) > 0 && shared.pass_on_stream() {}
        Ok(stream)
    }

    /// Sends `req` on a leased connection. A request that a reused HTTP/1.1
    /// connection failed to write (the upstream closed it while idle) goes again on
    /// a new connection, once. A request no connection took comes back in the error
    /// (`SendError::Unsent`), to go elsewhere.
    pub(crate) async fn send(
        &self,
        ep: &Arc<Endpoint>,
        lease: &mut Lease,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let addr = ep.addr;
        match lease {
            Lease::H2(stream) => {
                let extended = req.extensions().get::<hyper::ext::Protocol>().is_some();
                stream.sender.try_send_request(req).await.map_err(|mut e| {
                    // Closed before the server sent anything, even its preface (a
                    // closing listener resetting its backlog): the connection never
                    // opened, and nothing on it was processed.
                    let never_opened = !stream.conn.heard.load(Ordering::Relaxed);
                    // The connection closed (the upstream's GOAWAY, a restart) while
                    // the request waited for its turn on it: nothing was sent.
                    if let Some(req) = e.take_message() {
                        let source = e.into_error();
                        return SendError::unsent(
                            req,
                            if never_opened {
                                ProxyError::Handshake { addr, source }
                            } else {
                                ProxyError::Upstream { addr, source }
                            },
                        );
                    }
                    let source = e.into_error();
                    // A server that did not offer extended CONNECT resets the stream;
                    // its settings, read by then, tell that apart from a failure of
                    // the endpoint (a config mismatch must not eject it).
                    SendError::Failed(
                        if extended && !stream.conn.extended_connect.load(Ordering::Relaxed) {
                            ProxyError::NoExtendedConnect(addr)
                        } else if never_opened && connection_lost(&source) {
                            ProxyError::Handshake { addr, source }
                        } else if refused_unprocessed(&source) {
                            ProxyError::UpstreamRefused { addr, source }
                        } else {
                            ProxyError::Upstream { addr, source }
                        },
                    )
                })
            }
            Lease::H1 { sender, reused, .. } => {
                // A pooled connection turns ready once its last exchange is fully done,
                // which most are by the time they are leased again: only the others
                // wait, under a timer (making one reads the clock).
                if *reused && !sender.is_ready() {
                    let ready =
                        tokio::time::timeout(self.connector.connect_timeout, sender.ready()).await;
                    if !matches!(ready, Ok(Ok(()))) {
                        return self.send_on_new_h1(ep, lease, req).await;
                    }
                }
                match sender.try_send_request(req).await {
                    Ok(r) => Ok(r),
                    Err(mut e) => match (e.take_message(), *reused) {
                        (Some(req), true) => {
                            tracing::debug!(endpoint = %addr, error = %e.error(), "pooled connection was closed; sending on a new one");
                            self.send_on_new_h1(ep, lease, req).await
                        }
                        (Some(req), false) => Err(SendError::unsent(
                            req,
                            ProxyError::Upstream {
                                addr,
                                source: e.into_error(),
                            },
                        )),
                        (None, _) => Err(SendError::Failed(ProxyError::Upstream {
                            addr,
                            source: e.into_error(),
                        })),
                    },
                }
            }
        }
    }

    /// `send` on a new HTTP/1.1 connection to `ep`, made the lease.
    async fn send_on_new_h1(
        &self,
        ep: &Arc<Endpoint>,
        lease: &mut Lease,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, SendError> {
        match self.connect_h1(ep, false).await {
            Ok(new) => *lease = new,
            Err(e) => return Err(SendError::unsent(req, e)),
        }
        Box::pin(self.send(ep, lease, req)).await
    }
}

/// Whether an HTTP/2 request failed because the server turned its stream away
/// unprocessed: a GOAWAY whose last stream is below it (the server is shutting down;
/// a stream opened just as its GOAWAY was on its way), or RST_STREAM with
/// REFUSED_STREAM (RFC 9113 §8.7).
fn refused_unprocessed(e: &hyper::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|c| c.downcast_ref::<h2::Error>())
        .is_some_and(|h2| {
            h2.is_remote()
                && ((h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR))
                    || (h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM)))
        })
}

/// Why a request sent on a lease got no response.
pub enum SendError {
    /// It never left for the upstream (no connection took it); here it is again,
    /// as it was (boxed: the common path's `Result` stays small).
    Unsent(Box<(Request<RequestBody>, ProxyError)>),
    /// It was sent, in part or whole.
    Failed(ProxyError),
}

impl SendError {
    fn unsent(req: Request<RequestBody>, why: ProxyError) -> Self {
        SendError::Unsent(Box::new((req, why)))
    }

    pub fn into_error(self) -> ProxyError {
        match self {
            SendError::Unsent(u) => u.1,
            SendError::Failed(e) => e,
        }
    }
}

/// The error of an HTTP handshake with `ep` that failed.
/// An HTTP/2 connection's transport, noting when the server first sends anything.
/// (hyper's handshake only writes the client's preface; it does not wait for the
/// server's.)
struct Heard {
    io: super::connect::Io,
    heard: Arc<AtomicBool>,
}

impl tokio::io::AsyncRead for Heard {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before && !this.heard.load(Ordering::Relaxed) {
            this.heard.store(true, Ordering::Relaxed);
        }
        read
    }
}

impl tokio::io::AsyncWrite for Heard {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

fn handshake_failed(ep: &Endpoint) -> impl FnOnce(hyper::Error) -> ProxyError {
    let addr = ep.addr;
    move |source| ProxyError::Handshake { addr, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool config keeping 8 idle connections per endpoint.
    fn eight_idle() -> PoolConfig {
        PoolConfig {
            max_idle_per_endpoint: 8,
            ..PoolConfig::default()
        }
    }

    /// Gives `pool` a new connection to `addr`, as the calling worker's.
    async fn pool_new(pool: &Pool, addr: std::net::SocketAddr) {
        let sender = connection(addr).await;
        pool.put(sender, pool.home(), &eight_idle(), Instant::now(), None);
    }

    #[test]
    fn a_server_announcing_its_idle_timeout_is_spared_a_margin_of_it() {
        let window = |ms| reuse_window(Duration::from_millis(ms)).as_millis();
        assert_eq!(window(5000), 4000);
        assert_eq!(window(2000), 1000);
        assert_eq!(window(1000), 500);
        assert_eq!(window(0), 0);
    }
    use crate::workers::Workers;
    use tokio::net::{TcpListener, TcpStream};

    #[test]
    fn a_closed_connections_place_passes_to_the_request_waiting_longest() {
        let slots = Arc::new(Slots::default());
        let held = slots.reserve(1).expect("the first slot");
        assert!(slots.reserve(1).is_none(), "a slot past the limit");
        let pending = Gauge::default();
        let first = slots.queue(2, &pending).expect("a place in the queue");
        let mut first_turn = slots.wait_turn(true);
        let second = slots.queue(2, &pending).expect("a second place");
        let mut second_turn = slots.wait_turn(false);
        assert!(
            slots.queue(2, &pending).is_none(),
            "a place past the queue's bound"
        );
        assert_eq!(pending.get(), 2);

        // The slot passes on, still counted: nobody arriving now may take it.
        drop(held);
        assert_eq!(slots.open.load(Ordering::SeqCst), 1);
        assert!(slots.reserve(1).is_none(), "a newcomer took the slot");
        let Ok(Freed::Slot(guard)) = first_turn.try_recv() else {
            panic!("the first waiter did not get the slot");
        };
        assert!(
            second_turn.try_recv().is_err(),
            "the second waiter was served first"
        );
        drop(first);

        // The second waiter gave up: the next slot is freed, not lost.
        drop((second_turn, second));
        drop(guard);
        assert_eq!(slots.open.load(Ordering::SeqCst), 0);
        assert_eq!(pending.get(), 0);
        assert!(slots.waiters.lock().unwrap().len() <= 1);
        assert!(slots.reserve(1).is_some());
    }

    #[test]
    fn a_place_freed_before_a_waiter_joins_is_found_by_its_look() {
        // Counted as waiting but not yet joined when the connection closes: the place
        // is taken back, nobody is there to take it, and it is freed again before the
        // waiters' lock goes, so the waiter's look after joining finds it.
        let slots = Arc::new(Slots::default());
        let held = slots.reserve(1).expect("the first slot");
        let pending = Gauge::default();
        let _queued = slots.queue(1, &pending).expect("a place in the queue");
        drop(held);
        assert_eq!(slots.open.load(Ordering::SeqCst), 0);
        let mut turn = slots.wait_turn(true);
        let found = slots.reserve(1);
        assert!(found.is_some(), "the freed place was lost");
        assert!(turn.try_recv().is_err());
        // Closed in turn, it passes to the waiter, who has joined by now.
        drop(found);
        assert!(matches!(turn.try_recv(), Ok(Freed::Slot(_))));
    }

    #[tokio::test]
    async fn a_connection_put_back_goes_to_a_waiting_request_before_the_pool() {
        let addr = holding_listener().await;
        let pool = Pool::default();
        let max_idle = Duration::from_secs(60);
        let pending = Gauge::default();
        let queued = pool.slots.queue(4, &pending).expect("a place");
        // An upgrade cannot use a pooled connection; the request behind it can.
        let mut upgrade = pool.slots.wait_turn(false);
        let mut request = pool.slots.wait_turn(true);
        pool_new(&pool, addr).await;
        assert!(pool.take_idle(max_idle).is_none(), "pooled for a newcomer");
        assert!(matches!(request.try_recv(), Ok(Freed::Conn { .. })));
        assert!(
            upgrade.try_recv().is_err(),
            "an upgrade got a pooled connection"
        );
        drop((upgrade, queued));
        // Nobody waits: back to the pool.
        pool_new(&pool, addr).await;
        assert!(pool.take_idle(max_idle).is_some());
    }

    /// An HTTP/1.1 connection to a listener that accepts and holds connections.
    async fn connection(to: std::net::SocketAddr) -> H1Sender {
        let stream = TcpStream::connect(to).await.unwrap();
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        H1Sender::new(sender)
    }

    /// A listener that accepts connections and holds them open, never answering.
    async fn holding_listener() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_worker_reuses_only_the_connections_it_opened() {
        let workers = Workers::spawn(1).unwrap();
        let addr = holding_listener().await;
        let pool = Arc::new(Pool::default());
        let max_idle = Duration::from_secs(60);

        // This thread is worker 0: it pools a connection its runtime drives.
        pool_new(&pool, addr).await;
        assert_eq!(pool.idle_connections(), 1);

        // Worker 1 does not take it, and pools one of its own.
        let p = pool.clone();
        let on_worker_1 = workers.handles()[0]
            .spawn(async move {
                let found = p.take_idle(max_idle).is_some();
                pool_new(&p, addr).await;
                found
            })
            .await
            .unwrap();
        assert!(!on_worker_1, "worker 1 took worker 0's connection");
        assert_eq!(pool.idle_connections(), 2);

        // Worker 0 gets its own back; worker 1's stays for worker 1.
        assert!(pool.take_idle(max_idle).is_some());
        assert!(pool.take_idle(max_idle).is_none());
        assert_eq!(pool.idle_connections(), 1);
        workers.stop();
    }

    #[tokio::test]
    async fn a_borrowed_connection_goes_back_to_the_worker_that_drives_it() {
        let workers = Workers::spawn(1).unwrap();
        let addr = holding_listener().await;
        let pool = Arc::new(Pool::default());
        let max_idle = Duration::from_secs(60);
        pool_new(&pool, addr).await;

        // Worker 1, at the connection limit, borrows worker 0's and is done with it.
        let p = pool.clone();
        let (home, own_after) = workers.handles()[0]
            .spawn(async move {
                let Some(Lease::H1 { sender, home, .. }) = p.borrow(max_idle, 100) else {
                    panic!("nothing to borrow");
                };
                p.put(sender, home, &eight_idle(), Instant::now(), None);
                (home, p.take_idle(max_idle).is_some())
            })
            .await
            .unwrap();
        assert_eq!(home, 0);
        assert!(!own_after, "the borrowed connection stayed with worker 1");
        assert!(pool.take_idle(max_idle).is_some(), "worker 0 lost it");
        workers.stop();
    }
}
