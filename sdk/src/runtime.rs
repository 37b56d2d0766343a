//! Runs a `Filter`: config, per-request contexts and the phase executor.
//!
//! Shared by the Wasm export glue and by `testing`, so tests run the same code path
//! as the proxy does.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{self, Poll, Wake, Waker};

use crate::filter::parse_config;
use crate::host;
use crate::log::Level;
use crate::{Action, BodyAction, Completion, ConfigError, Context, Filter};

/// A configured filter and the context of the request it is in.
pub(crate) struct Instance<F> {
    filter: F,
    request: Option<Context>,
}

impl<F: Filter> Instance<F> {
    pub(crate) fn configure(config: &[u8]) -> Result<Self, ConfigError> {
        let config = parse_config::<F::Config>(config)?;
        Ok(Self {
            filter: F::configure(config)?,
            request: None,
        })
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn filter(&self) -> &F {
        &self.filter
    }

    /// Runs one phase of request `id` and, once the filter stores something in the
    /// request's extensions, asks the proxy to keep this instance for the request
    /// (otherwise the proxy may run its later phases on another instance).
    fn phase<R>(&mut self, id: u64, run: impl FnOnce(&F, &mut Context) -> R) -> R {
        let (filter, ctx) = self.parts(id);
        let out = run(filter, ctx);
        if !ctx.kept && !ctx.extensions().is_empty() {
            host::keep_instance();
            ctx.kept = true;
        }
        out
    }

    /// The filter and the context of request `id`, fresh if a new request started.
    fn parts(&mut self, id: u64) -> (&F, &mut Context) {
        if self.request.as_ref().is_none_or(|c| c.request_id() != id) {
            // Drops the previous request's state.
            self.request = Some(Context::new(id));
        }
        let ctx = self.request.get_or_insert_with(|| Context::new(id));
        (&self.filter, ctx)
    }

    pub(crate) fn on_request_headers(&mut self, id: u64) -> Action {
        self.phase(id, |f, ctx| {
            block_on("on-request-headers", f.on_request_headers(ctx))
        })
    }

    pub(crate) fn on_request_body(
        &mut self,
        id: u64,
        chunk: Vec<u8>,
        end_of_stream: bool,
    ) -> BodyAction {
        self.phase(id, |f, ctx| {
            block_on(
                "on-request-body",
                f.on_request_body(ctx, chunk, end_of_stream),
            )
        })
    }

    pub(crate) fn on_request_trailers(&mut self, id: u64) -> Action {
        self.phase(id, |f, ctx| {
            block_on("on-request-trailers", f.on_request_trailers(ctx))
        })
    }

    pub(crate) fn on_response_headers(&mut self, id: u64) -> Action {
        self.phase(id, |f, ctx| {
            block_on("on-response-headers", f.on_response_headers(ctx))
        })
    }

    pub(crate) fn on_response_body(
        &mut self,
        id: u64,
        chunk: Vec<u8>,
        end_of_stream: bool,
    ) -> BodyAction {
        self.phase(id, |f, ctx| {
            block_on(
                "on-response-body",
                f.on_response_body(ctx, chunk, end_of_stream),
            )
        })
    }

    pub(crate) fn on_response_trailers(&mut self, id: u64) -> Action {
        self.phase(id, |f, ctx| {
            block_on("on-response-trailers", f.on_response_trailers(ctx))
        })
    }

    pub(crate) fn on_complete(&mut self, id: u64, info: &Completion) {
        let (filter, ctx) = self.parts(id);
        block_on("on-complete", filter.on_complete(ctx, info));
        // The request is over: free its state now rather than at the next request.
        self.request = None;
    }
}

/// Remembers whether the future asked to be polled again.
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Runs a phase's future to completion.
///
/// The SDK's own futures complete when first polled (the host blocks in `wait`), so a
/// phase normally finishes in one poll. A future that wakes itself (a yield) is polled
/// again. A future that is pending without a wake-up would wait forever: that fails the
/// phase (a trap, which the proxy turns into an error for this request only).
pub(crate) fn block_on<T>(phase: &str, future: impl Future<Output = T>) -> T {
    thread_local! {
        // One flag per thread (a Wasm instance has one), made once: a phase that
        // completes in one poll then costs no allocation.
        static FLAG: Arc<Flag> = Arc::new(Flag(AtomicBool::new(false)));
    }
    let mut future = pin!(future);
    let flag = FLAG.with(Arc::clone);
    flag.0.store(false, Ordering::Relaxed);
    let waker = Waker::from(flag.clone());
    let mut cx = task::Context::from_waker(&waker);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        if !flag.0.swap(false, Ordering::Relaxed) {
            let message = format!(
                "weft-sdk: the {phase} phase awaited a future that can never complete here; \
                 filters can await only the SDK's own futures (such as weft_sdk::outbound::send), \
                 not timers, channels or other runtimes' I/O"
            );
            host::log(Level::Error, &message);
            panic!("{message}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::{pending, poll_fn};

    #[test]
    fn ready_future_completes() {
        assert_eq!(block_on("test", async { 7 }), 7);
    }

    #[test]
    fn self_waking_future_is_polled_again() {
        let mut polls = 0;
        let out = block_on(
            "test",
            poll_fn(|cx| {
                polls += 1;
                if polls < 3 {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                } else {
                    Poll::Ready(polls)
                }
            }),
        );
        assert_eq!(out, 3);
    }

    #[test]
    #[should_panic(expected = "the test phase awaited a future that can never complete")]
    fn stalled_future_fails_the_phase() {
        block_on("test", pending::<()>());
    }
}
