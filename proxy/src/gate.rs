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
pub async fn before<F: Future>(deadline: Instant, mut future: Pin<&mut F>) -> Option<F::Output> {
    let sleep = pin!(tokio::time::sleep_until(deadline));
    let mut timer = FiredTimer::new(sleep);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        Pin::new(&mut timer).poll(cx).map(|()| None)
    })
    .await
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
}
