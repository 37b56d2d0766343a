//! Futures that skip the polls that cannot make progress.
//!
//! A connection's task is woken several times per request, and every wake-up polls
//! each future it waits on: its shutdown signal, its timers, the request's deadline.
//! Polling a registered watch future takes its channel's lock (one shared by every
//! connection); polling a registered timer swaps the task's waker into it (about
//! 120 instructions, with tokio's budget bookkeeping). Once such a
//! future has been polled (which hands it the task's waker), a cheap check says
//! whether polling it again can change anything; until then these gates answer
//! `Pending` without polling, and the waker they registered wakes the task when it
//! can.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

/// A future waiting on a watch channel, polled again only when the channel has
/// changed (one atomic load). A closed channel counts as changed.
pub struct WhenChanged<'a, F> {
    future: Pin<&'a mut F>,
    probe: watch::Receiver<bool>,
    registered: bool,
}

impl<'a, F: Future> WhenChanged<'a, F> {
    /// `probe`: a receiver of the channel `future` waits on.
    pub fn new(future: Pin<&'a mut F>, probe: watch::Receiver<bool>) -> Self {
        WhenChanged {
            future,
            probe,
            registered: false,
        }
    }
}

impl<F: Future> Future for WhenChanged<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if self.registered && !self.probe.has_changed().unwrap_or(true) {
            return Poll::Pending;
        }
        self.registered = true;
        self.future.as_mut().poll(cx)
    }
}

/// A timer polled again only once it has fired (the time driver has taken it out
/// of its wheel), after one poll per deadline that registers it.
pub struct FiredTimer<'a> {
    sleep: Pin<&'a mut Sleep>,
    registered: bool,
}

impl<'a> FiredTimer<'a> {
    pub fn new(sleep: Pin<&'a mut Sleep>) -> Self {
        FiredTimer {
            sleep,
            registered: false,
        }
    }

    /// Moves the deadline; the next poll registers the timer again.
    pub fn reset(&mut self, deadline: Instant) {
        self.sleep.as_mut().reset(deadline);
        self.registered = false;
    }
}

impl Future for FiredTimer<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.registered && !self.sleep.is_elapsed() {
            return Poll::Pending;
        }
        self.registered = true;
        self.sleep.as_mut().poll(cx)
    }
}

/// `future`'s output, or `None` if `deadline` comes first: `tokio::time::timeout_at`
/// with its timer behind a `FiredTimer`. The future is pinned by the caller, so a
/// large one is not copied into this one.
pub async fn before<F: Future>(deadline: Instant, future: Pin<&mut F>) -> Option<F::Output> {
    let sleep = pin!(tokio::time::sleep_until(deadline));
    race(FiredTimer::new(sleep), future).await
}

/// As [`before`], with the timer borrowed from `slot` (made there the first time)
/// and given back when done. A request dropped before then drops the timer too,
/// and the next one makes another.
pub async fn before_in<F: Future>(
    slot: &TimerSlot,
    deadline: Instant,
    future: Pin<&mut F>,
) -> Option<F::Output> {
    let mut sleep = slot.take(deadline);
    let out = race(FiredTimer::new(sleep.as_mut()), future).await;
    slot.give_back(sleep);
    out
}

async fn race<F: Future>(mut timer: FiredTimer<'_>, mut future: Pin<&mut F>) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        Pin::new(&mut timer).poll(cx).map(|()| None)
    })
    .await
}

/// A timer that the requests of one connection use in turn for their deadlines.
///
/// A timer made for each request locks the runtime's timer wheel twice (to file it
/// on its first poll, to take it out when dropped): about 450 instructions. Moving
/// a filed timer to a later instant only records the new one (tokio files it again
/// when the old instant comes round), and each request's deadline is later than the
/// one before, so a connection's requests share one timer. Requests that overlap
/// (HTTP/2) find the slot empty and make their own. The price: a kept timer whose
/// deadline passes while its connection is idle wakes the connection's task once.
#[derive(Default)]
pub struct TimerSlot(Mutex<Option<Pin<Box<Sleep>>>>);

impl TimerSlot {
    fn take(&self, deadline: Instant) -> Pin<Box<Sleep>> {
        let kept = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        match kept {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    fn give_back(&self, sleep: Pin<Box<Sleep>>) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(sleep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::time::Duration;

    /// Wraps `future` to count its polls in `polls`.
    async fn counted<F: Future>(polls: &Cell<u32>, future: F) -> F::Output {
        let mut future = pin!(future);
        std::future::poll_fn(|cx| {
            polls.set(polls.get() + 1);
            future.as_mut().poll(cx)
        })
        .await
    }

    #[tokio::test]
    async fn a_watch_future_is_polled_again_only_when_its_channel_changed() {
        let (tx, mut rx) = watch::channel(false);
        let probe = rx.clone();
        let polls = Cell::new(0);
        let waiting = pin!(counted(&polls, async {
            let _ = rx.wait_for(|v| *v).await;
        }));
        let mut gated = WhenChanged::new(waiting, probe);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..3 {
            assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        }
        assert_eq!(polls.get(), 1, "polled again although nothing changed");
        tx.send(true).unwrap();
        assert!(Pin::new(&mut gated).poll(&mut cx).is_ready());
        assert_eq!(polls.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_ends_a_future_that_does_not() {
        let start = Instant::now();
        let pending = pin!(std::future::pending::<()>());
        let never = before(start + Duration::from_secs(5), pending);
        // A gate that never polled its timer again would wait for ever.
        let out = tokio::time::timeout(Duration::from_secs(60), never).await;
        assert_eq!(out, Ok(None));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        let quick = before(start + Duration::from_secs(5), pin!(async { 7 })).await;
        assert_eq!(quick, Some(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_timer_fires_at_its_new_deadline() {
        let start = Instant::now();
        let sleep = pin!(tokio::time::sleep_until(start + Duration::from_secs(1)));
        let mut timer = FiredTimer::new(sleep);
        let waker = futures_util::task::noop_waker();
        assert!(Pin::new(&mut timer)
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        // A gate that kept the waker of the poll before the reset would never wake.
        let limit = Duration::from_secs(60);
        timer.reset(start + Duration::from_secs(3));
        assert!(tokio::time::timeout(limit, &mut timer).await.is_ok());
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        // Fired and reset: it waits again.
        timer.reset(start + Duration::from_secs(4));
        assert!(tokio::time::timeout(limit, &mut timer).await.is_ok());
        assert_eq!(start.elapsed(), Duration::from_secs(4));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_sharing_a_timer_each_end_at_their_own_deadline() {
        let slot = TimerSlot::default();
        let start = Instant::now();
        let at = |s| start + Duration::from_secs(s);
        // Answered in time: the timer goes back to the slot, filed for 10 s.
        assert_eq!(before_in(&slot, at(10), pin!(async { 1 })).await, Some(1));
        assert!(slot.0.lock().unwrap().is_some());
        // Later deadlines (moved without filing again), then an earlier one than
        // the timer was filed for: each request ends at its own.
        for (deadline, waited) in [(12, 12), (30, 30), (31, 31)] {
            let out = before_in(&slot, at(deadline), pin!(std::future::pending::<()>())).await;
            assert_eq!(out, None);
            assert_eq!(start.elapsed(), Duration::from_secs(waited));
        }
        // Two at once (HTTP/2): the second finds the slot empty and makes its own.
        let mut never_a = pin!(std::future::pending::<()>());
        let mut never_b = pin!(std::future::pending::<()>());
        let (a, b) = tokio::join!(
            before_in(&slot, at(33), never_a.as_mut()),
            before_in(&slot, at(32), never_b.as_mut()),
        );
        assert_eq!((a, b), (None, None));
        assert_eq!(start.elapsed(), Duration::from_secs(33));
        // One that finishes before a shorter deadline than the kept timer's.
        let quick = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            7
        };
        assert_eq!(before_in(&slot, at(40), pin!(quick)).await, Some(7));
        let out = before_in(&slot, at(36), pin!(std::future::pending::<()>())).await;
        assert_eq!(out, None);
        assert_eq!(start.elapsed(), Duration::from_secs(36));
    }
}
