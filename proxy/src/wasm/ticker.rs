//! The epoch ticker: the thread that advances wasmtime's epoch every `EPOCH_TICK`, which
//! is what makes a long call yield and what runs its CPU budget down.
//!
//! It ticks only while filters are being called. An idle sidecar with filters would
//! otherwise wake 500 times a second for nothing (a wake-up costs a few µs of CPU and
//! keeps the core out of its deeper sleep states). Every call is counted while it runs
//! (`running`): after `IDLE_TICKS` ticks in which no call started and none was running,
//! the thread parks, and the next call to start unparks it. A call that starts then
//! has its deadline two ticks away as always (`FilterInstance::begin_call`), and the
//! woken ticker is a tick from its next advance, so budgets and yielding keep their
//! granularity. While traffic flows the ticker never parks, and the count costs two
//! uncontended atomic adds per call, on the calling worker's own cache line.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use wasmtime::Engine;

use super::EPOCH_TICK;
use crate::workers::PerWorker;

/// Quiet ticks before the ticker parks (100 ms): a proxy serving a request now and
/// then unparks it once per quiet spell rather than once per request.
const IDLE_TICKS: u32 = 50;

/// The longest the ticker stays parked: it notices a dropped engine this late, and
/// this bounds what a missed wake-up could cost, though the handshake below has none.
const BACKSTOP: Duration = Duration::from_secs(1);

pub struct EpochTicker {
    calls: PerWorker<Calls>,
    /// The ticker is parked or about to be; the next call to start wakes it.
    sleeping: AtomicBool,
    thread: OnceLock<Thread>,
}

/// Calls started and finished on one worker (both only grow: the difference over all
/// workers is the calls running, and a change in the first is activity).
#[derive(Default)]
struct Calls {
    started: AtomicU64,
    finished: AtomicU64,
}

/// A call into a guest in progress; counted as running until dropped (also when its
/// future is dropped with the guest suspended: that instance is never entered again).
pub struct Running<'a>(&'a Calls);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::Relaxed);
    }
}

impl EpochTicker {
    /// Starts the ticker thread for `engine`; it ends when the engine is dropped.
    pub fn start(engine: &Engine) -> Arc<EpochTicker> {
        let ticker = Arc::new(EpochTicker {
            calls: PerWorker::new(Calls::default),
            sleeping: AtomicBool::new(false),
            thread: OnceLock::new(),
        });
        let engine = engine.weak();
        let t = ticker.clone();
        let spawned = std::thread::Builder::new()
            .name("weft-epoch".into())
            .spawn(move || t.run(|| engine.upgrade().map(|e| e.increment_epoch()).is_some()));
        match spawned {
            Ok(handle) => {
                let _ = ticker.thread.set(handle.thread().clone());
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start the epoch ticker: filters will not yield or run out of CPU time")
            }
        }
        ticker
    }

    /// Counts a call as running until the guard drops, waking the ticker if it sleeps.
    pub fn running(&self) -> Running<'_> {
        let calls = self.calls.mine();
        // SeqCst pairs with the ticker's store to `sleeping` and reload of the counts:
        // either it sees this call start, or this call sees it sleeping.
        calls.started.fetch_add(1, Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) && self.sleeping.swap(false, Ordering::SeqCst) {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
        Running(calls)
    }

    /// Calls started so far, and whether any is running now.
    fn activity(&self) -> (u64, bool) {
        let (mut started, mut finished) = (0u64, 0u64);
        for c in self.calls.iter() {
            started = started.wrapping_add(c.started.load(Ordering::SeqCst));
            finished = finished.wrapping_add(c.finished.load(Ordering::SeqCst));
        }
        (started, started != finished)
    }

    /// The thread's loop: `tick` advances the epoch, false once the engine is gone.
    fn run(&self, tick: impl Fn() -> bool) {
        let (mut seen, mut quiet) = (0u64, 0u32);
        loop {
            std::thread::sleep(EPOCH_TICK);
            if !tick() {
                return;
            }
            let (started, busy) = self.activity();
            if busy || started != seen {
                (seen, quiet) = (started, 0);
                continue;
            }
            quiet += 1;
            if quiet < IDLE_TICKS {
                continue;
            }
            // Parked until a call starts (the backstop wakes it only to look).
            loop {
                self.sleeping.store(true, Ordering::SeqCst);
                if self.activity().0 != seen {
                    break;
                }
                std::thread::park_timeout(BACKSTOP);
                if !tick() {
                    return;
                }
            }
            self.sleeping.store(false, Ordering::SeqCst);
            quiet = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    /// A ticker thread over a counter instead of an engine.
    fn counting() -> (Arc<EpochTicker>, Arc<AtomicUsize>) {
        let ticker = Arc::new(EpochTicker {
            calls: PerWorker::new(Calls::default),
            sleeping: AtomicBool::new(false),
            thread: OnceLock::new(),
        });
        let ticks = Arc::new(AtomicUsize::new(0));
        let (t, n) = (ticker.clone(), ticks.clone());
        let handle = std::thread::spawn(move || {
            t.run(|| {
                n.fetch_add(1, Ordering::SeqCst);
                Arc::strong_count(&n) > 1
            })
        });
        let _ = ticker.thread.set(handle.thread().clone());
        (ticker, ticks)
    }

    fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn parks_when_idle_ticks_while_a_call_runs_and_wakes_for_the_next() {
        let (ticker, ticks) = counting();
        wait_until("the ticker sleeps", || {
            ticker.sleeping.load(Ordering::SeqCst)
        });
        let parked = ticks.load(Ordering::SeqCst);
        std::thread::sleep(EPOCH_TICK * 20);
        assert_eq!(
            ticks.load(Ordering::SeqCst),
            parked,
            "a parked ticker ticked"
        );

        // A call that runs long keeps it ticking, past the idle spell.
        let call = ticker.running();
        wait_until("a call wakes it", || {
            ticks.load(Ordering::SeqCst) > parked + IDLE_TICKS as usize + 5
        });
        assert!(!ticker.sleeping.load(Ordering::SeqCst));
        drop(call);
        wait_until("it sleeps again", || ticker.sleeping.load(Ordering::SeqCst));

        // Short calls now and then wake it each time.
        for _ in 0..3 {
            let before = ticks.load(Ordering::SeqCst);
            drop(ticker.running());
            wait_until("the call's tick", || ticks.load(Ordering::SeqCst) > before);
            wait_until("it sleeps", || ticker.sleeping.load(Ordering::SeqCst));
        }
    }
}
