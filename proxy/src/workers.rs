//! Worker threads, one per core, each running its own single-threaded tokio
//! runtime (as nginx's workers and Envoy's worker threads each run their own event
//! loop). Every worker accepts from its own listening socket of each address
//! (`server/sockets.rs`) and serves the connections it accepts from start to end, so a request never changes thread:
//! no work-stealing queues, no cross-thread wake-ups, and the filter instances and
//! buffers a request touches stay in that core's caches.
//!
//! Measured here (docs/benchmarks.md): with one Wasm filter, tokio's multi-thread
//! scheduler spent about 60 µs of CPU per request against about 30 µs on a
//! single-threaded runtime, for the same requests and the same filter.
//!
//! The main thread's runtime is worker 0; it also runs what is not on the request
//! path (admin, reloads, health checks, DNS). `Workers` holds the others.
//!
//! What a request hands on to later requests (upstream connections, idle filter
//! instances) is kept per worker (`PerWorker`, found by `current()`): a
//! connection's I/O is driven by the runtime that opened it, so a request on
//! another worker would wake that runtime's thread and wait to be woken back; an
//! instance's memory and stack are in the caches of the core that used it last.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread::JoinHandle;

use anyhow::Context as _;
use tokio::runtime::Handle;
use tokio::sync::watch;

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// The most workers any `Workers::spawn` of this process started, the main one included.
static TOTAL: AtomicUsize = AtomicUsize::new(1);

/// The worker this thread is: 0 for the main runtime, and for any thread that is
/// not a worker.
pub fn current() -> usize {
    CURRENT.with(Cell::get)
}

/// How many workers serve requests, the main one included (the most this process
/// started): what per-worker state is sized by.
pub fn total() -> usize {
    TOTAL.load(Ordering::Relaxed)
}

/// One `T` per worker, each in cache lines of its own, for state that requests on a
/// worker share with that worker's later requests only.
pub struct PerWorker<T> {
    parts: Box<[Padded<T>]>,
}

/// Two cache lines: adjacent-line prefetching pulls pairs of 64-byte lines.
#[repr(align(128))]
struct Padded<T>(T);

impl<T> PerWorker<T> {
    /// A part for each of the `total()` workers, made by `make`.
    pub fn new(mut make: impl FnMut() -> T) -> Self {
        PerWorker {
            parts: (0..total()).map(|_| Padded(make())).collect(),
        }
    }

    /// The calling worker's part (a thread that is no worker gets worker 0's).
    pub fn mine(&self) -> &T {
        self.mine_indexed().1
    }

    /// The calling worker's part and its index.
    pub fn mine_indexed(&self) -> (usize, &T) {
        let (i, n) = (current(), self.parts.len());
        // A division only for a part made before more workers were started: this
        // runs several times per request, and a `div` costs tens of cycles.
        let i = if i < n { i } else { i % n };
        (i, &self.parts[i].0)
    }

    /// Worker `i`'s part (an index from `mine_indexed` or `iter().enumerate()`).
    pub fn part(&self, i: usize) -> &T {
        &self.parts[i % self.parts.len()].0
    }

    /// Every worker's part, for housekeeping and totals.
    /// How many parts there are (the workers there were when it was made).
    pub fn parts(&self) -> usize {
        self.parts.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.parts.iter().map(|p| &p.0)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.parts.iter_mut().map(|p| &mut p.0)
    }
}

impl<T: Default> Default for PerWorker<T> {
    fn default() -> Self {
        Self::new(T::default)
    }
}

pub struct Workers {
    handles: Vec<Handle>,
    stop: watch::Sender<bool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Workers {
    /// No extra workers: everything runs on the caller's runtime (tests, one core).
    pub fn none() -> Workers {
        Workers {
            handles: Vec::new(),
            stop: watch::channel(false).0,
            threads: Mutex::new(Vec::new()),
        }
    }

    /// Starts `extra` worker threads besides the main one.
    pub fn spawn(extra: usize) -> anyhow::Result<Workers> {
        let (stop, _) = watch::channel(false);
        TOTAL.fetch_max(extra + 1, Ordering::Relaxed);
        let mut handles = Vec::with_capacity(extra);
        let mut threads = Vec::with_capacity(extra);
        for i in 1..=extra {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting a worker runtime")?;
            handles.push(rt.handle().clone());
            let mut stopped = stop.subscribe();
            let thread = std::thread::Builder::new()
                .name(format!("weft-worker-{i}"))
                .spawn(move || {
                    CURRENT.with(|c| c.set(i));
                    rt.block_on(async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    });
                    // Dropping the runtime cancels what is left (after the drain deadline).
                })
                .context("starting a worker thread")?;
            threads.push(thread);
        }
        Ok(Workers {
            handles,
            stop,
            threads: Mutex::new(threads),
        })
    }

    /// How many workers serve connections, the main runtime included.
    pub fn count(&self) -> usize {
        self.handles.len() + 1
    }

    /// The runtimes of the extra workers (not the main one).
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// Stops the workers, cancelling whatever still runs on them.
    pub fn stop(&self) {
        self.stop.send_replace(true);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}
