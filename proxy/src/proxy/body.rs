//! Body types of the request path. Bodies stream: nothing here buffers unless a
//! filter asked for the whole body.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

use crate::error::BoxError;

/// Any body the proxy forwards or writes.
#[derive(Default)]
pub enum Body {
    #[default]
    Empty,
    Full(Option<Bytes>),
    Incoming(Incoming),
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
}

impl Body {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let b = bytes.into();
        if b.is_empty() {
            Body::Empty
        } else {
            Body::Full(Some(b))
        }
    }

    pub fn boxed<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        use http_body_util::BodyExt;
        Body::Boxed(body.map_err(Into::into).boxed_unsync())
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Body::Boxed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(b) => b.is_none(),
            Body::Incoming(b) => b.is_end_stream(),
            Body::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Incoming(b) => b.size_hint(),
            Body::Boxed(b) => b.size_hint(),
        }
    }
}

/// Facts about the request body that the end of the exchange needs: how much came
/// in, and whether it all did (an HTTP/1.1 connection is reusable only then).
#[derive(Default)]
pub struct Tally {
    pub request_bytes: AtomicU64,
    pub request_done: AtomicBool,
    /// Where the request body stands with the client: `FLOWING`, `AWAITING_CLIENT`
    /// (the last poll found no data from it) or `BROKEN` (its body failed).
    client: AtomicU8,
    /// The client sent nothing of its body for the idle timeout.
    idle_timed_out: AtomicBool,
    /// The response is on its way to the client: from then on its body's idle
    /// timer, which looks at both directions, is the stream's (a client listening
    /// to a stream may say nothing for longer than the idle timeout).
    pub response_started: AtomicBool,
    /// The client's body went past the listener's `max_request_body`.
    too_large: AtomicBool,
}

const FLOWING: u8 = 0;
const AWAITING_CLIENT: u8 = 1;
const BROKEN: u8 = 2;

impl Tally {
    /// Whether a failed exchange may be the client's doing rather than the
    /// endpoint's: it broke its request body off, or the exchange `timed_out`
    /// while the proxy was waiting for the client's body. Such failures must not
    /// count against the endpoint (a slow upload would eject a healthy one).
    pub fn client_at_fault(&self, timed_out: bool) -> bool {
        match self.client.load(Ordering::Relaxed) {
            BROKEN => true,
            AWAITING_CLIENT => timed_out,
            _ => false,
        }
    }

    /// Whether the upload was cut off because the client stopped sending.
    pub fn idle_timed_out(&self) -> bool {
        self.idle_timed_out.load(Ordering::Relaxed)
    }

    /// Whether the upload was cut off at the listener's `max_request_body`.
    pub fn too_large(&self) -> bool {
        self.too_large.load(Ordering::Relaxed)
    }
}

/// Whether a body's error is, or was caused by, going past a length limit
/// (`http_body_util::Limited`, which the listener's `max_request_body` puts on a body
/// of unknown length; filters' body wrappers may pass it on inside their own).
pub fn past_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut at = Some(e);
    while let Some(e) = at {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        at = e.source();
    }
    false
}

/// The request body on its way upstream, counted. One pointer wide: the request it
/// rides in is moved about twenty times on its way into the upstream connection (through
/// our futures and hyper's dispatch), and under 256 bytes each move is one short
/// run of vector copies rather than `memcpy`'s loop (320 bytes with the state inline;
/// docs/benchmarks.md, "Where the time goes").
pub struct RequestBody(Box<Counted>);

struct Counted {
    inner: Body,
    tally: Arc<Tally>,
    /// What `tally.client` was last set to (it is written only on change).
    client: u8,
    /// The longest the client may leave its upload without a byte.
    idle: Option<std::time::Duration>,
    /// Since when the client has sent nothing: read from the clock by the first
    /// poll that finds no data after the start or the last frame.
    idle_since: Option<tokio::time::Instant>,
    /// Made only when a poll finds no data, so quick bodies never touch the timer.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl RequestBody {
    pub fn new(inner: Body, tally: Arc<Tally>) -> Self {
        if inner.is_end_stream() {
            tally.request_done.store(true, Ordering::Relaxed);
        }
        RequestBody(Box::new(Counted {
            inner,
            tally,
            client: FLOWING,
            idle: None,
            idle_since: None,
            timer: None,
        }))
    }

    /// The body it counts, for a request that was never sent and goes again.
    pub fn into_inner(self) -> Body {
        self.0.inner
    }

    /// Aborts the upload when the client sends nothing for `idle`.
    pub fn with_idle_timeout(mut self, idle: Option<std::time::Duration>) -> Self {
        self.0.idle = idle;
        self
    }
}

impl Counted {
    /// On a poll that found no data: has the client been silent too long, before
    /// any response? (Once one is under way, its idle timer decides.)
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        use std::future::Future;
        let Some(idle) = self.idle else { return false };
        let due = *self
            .idle_since
            .get_or_insert_with(tokio::time::Instant::now)
            + idle;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if timer.deadline() != due {
            timer.as_mut().reset(due);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        if self.tally.response_started.load(Ordering::Relaxed) {
            self.idle = None;
            self.timer = None;
            return false;
        }
        true
    }

    fn client(&mut self, state: u8) {
        // A broken body stays broken.
        if self.client != state && self.client != BROKEN {
            self.client = state;
            self.tally.client.store(state, Ordering::Relaxed);
        }
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self.get_mut().0;
        let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) else {
            this.client(AWAITING_CLIENT);
            if this.idle_expired(cx) {
                this.tally.idle_timed_out.store(true, Ordering::Relaxed);
                this.client(BROKEN);
                return Poll::Ready(Some(Err(
                    "the client sent no request body for the idle timeout".into(),
                )));
            }
            return Poll::Pending;
        };
        this.idle_since = None;
        this.client(if matches!(frame, Some(Err(_))) {
            BROKEN
        } else {
            FLOWING
        });
        match &frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    this.tally
                        .request_bytes
                        .fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                if this.inner.is_end_stream() {
                    this.tally.request_done.store(true, Ordering::Relaxed);
                }
            }
            None => this.tally.request_done.store(true, Ordering::Relaxed),
            Some(Err(e)) => {
                if past_length_limit(&**e) {
                    this.tally.too_large.store(true, Ordering::Relaxed);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.0.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.inner.size_hint()
    }
}

/// Keeps a copy of a request body, up to a bound, so the request can be sent again.
pub struct Recorder {
    inner: Body,
    tape: Arc<std::sync::Mutex<Tape>>,
    /// Where the unread rest of the body goes if whoever sends it lets go before the
    /// end (hyper, when an HTTP/2 stream is turned away as its body goes out).
    rest: Option<tokio::sync::oneshot::Sender<Body>>,
}

#[derive(Default)]
pub struct Tape {
    data: bytes::BytesMut,
    limit: usize,
    overflowed: bool,
}

impl Tape {
    pub fn new(limit: usize) -> Arc<std::sync::Mutex<Tape>> {
        Arc::new(std::sync::Mutex::new(Tape {
            limit,
            ..Tape::default()
        }))
    }

    /// What was recorded, if it fit under the bound (and had no trailers or error).
    pub fn replay(&self) -> Option<Bytes> {
        (!self.overflowed).then(|| self.data.clone().freeze())
    }

    /// Forgets what was recorded and records no more: the body will not be sent again.
    pub fn discard(&mut self) {
        self.overflowed = true;
        self.data = bytes::BytesMut::new();
    }
}

impl Recorder {
    pub fn new(inner: Body, tape: Arc<std::sync::Mutex<Tape>>) -> Self {
        Recorder {
            inner,
            tape,
            rest: None,
        }
    }

    /// A recorder that, dropped before the end of the body, hands back the unread
    /// rest: with what it recorded, the whole body again (`Resumed`).
    pub fn handing_back(
        inner: Body,
        tape: Arc<std::sync::Mutex<Tape>>,
    ) -> (Self, tokio::sync::oneshot::Receiver<Body>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut recorder = Recorder::new(inner, tape);
        recorder.rest = Some(tx);
        (recorder, rx)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(rest) = self.rest.take() {
            if !self.inner.is_end_stream() {
                let _ = rest.send(std::mem::take(&mut self.inner));
            }
        }
    }
}

impl http_body::Body for Recorder {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                let mut tape = this.tape.lock().unwrap_or_else(|p| p.into_inner());
                match f.data_ref() {
                    Some(d) if !tape.overflowed => {
                        if tape.data.len() + d.len() > tape.limit {
                            tape.discard();
                        } else {
                            tape.data.extend_from_slice(d);
                        }
                    }
                    _ => {}
                }
                // Trailers are not replayed; a body that had them cannot be sent again as it was.
                if f.is_trailers() {
                    tape.discard();
                }
            }
            Some(Err(_)) => this
                .tape
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .discard(),
            None => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body sent again: what was recorded of it, then the rest, as it comes.
pub struct Resumed {
    recorded: Option<Bytes>,
    rest: Body,
}

impl Resumed {
    pub fn new(recorded: Bytes, rest: Body) -> Self {
        Resumed {
            recorded: (!recorded.is_empty()).then_some(recorded),
            rest,
        }
    }
}

impl http_body::Body for Resumed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match this.recorded.take() {
            Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
            None => Pin::new(&mut this.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recorded.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let before = self.recorded.as_ref().map_or(0, |b| b.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + before);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + before);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use futures_util::stream::{self, StreamExt};
    use http_body_util::StreamBody;

    use super::*;

    #[test]
    fn a_request_with_its_body_stays_under_256_bytes() {
        // Moved about twenty times per request (see `RequestBody`): at 256 bytes or
        // more, each move takes memcpy's loop (callgrind: ~1,000 instructions a request).
        assert!(std::mem::size_of::<http::Request<RequestBody>>() <= 256);
    }

    fn poll(body: &mut RequestBody) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(body).poll_frame(&mut Context::from_waker(Waker::noop()))
    }

    #[tokio::test]
    async fn a_recorder_let_go_of_early_hands_back_the_rest_to_resume_from() {
        use http_body_util::BodyExt;
        let chunks =
            ["kept, ", "and the rest"].map(|c| Ok::<_, BoxError>(Frame::data(Bytes::from(c))));
        let tape = Tape::new(1024);
        let (mut recorder, rest) = Recorder::handing_back(
            Body::boxed(StreamBody::new(stream::iter(chunks))),
            tape.clone(),
        );
        let first = Pin::new(&mut recorder).poll_frame(&mut Context::from_waker(Waker::noop()));
        assert!(matches!(first, Poll::Ready(Some(Ok(_)))));
        drop(recorder);
        let recorded = tape.lock().unwrap().replay().unwrap();
        let again = Resumed::new(recorded, rest.await.unwrap());
        let whole = again.collect().await.unwrap().to_bytes();
        assert_eq!(&whole[..], b"kept, and the rest");

        // Read to its end: nothing to hand back, the recording is the body.
        let tape = Tape::new(1024);
        let (recorder, rest) = Recorder::handing_back(Body::full("all"), tape.clone());
        assert_eq!(&recorder.collect().await.unwrap().to_bytes()[..], b"all");
        assert!(rest.await.is_err());
        assert_eq!(&tape.lock().unwrap().replay().unwrap()[..], b"all");
        // Answered: what was kept goes.
        tape.lock().unwrap().discard();
        assert!(tape.lock().unwrap().replay().is_none());

        // A body that failed on its way cannot be sent again.
        let tape = Tape::new(1024);
        let broken = stream::iter([
            Ok::<_, BoxError>(Frame::data(Bytes::from("part"))),
            Err::<Frame<Bytes>, BoxError>("reset".into()),
        ]);
        let recorder = Recorder::new(Body::boxed(StreamBody::new(broken)), tape.clone());
        assert!(recorder.collect().await.is_err());
        assert!(tape.lock().unwrap().replay().is_none());
    }

    #[test]
    fn request_body_tells_when_the_client_holds_it_up() {
        let tally = Arc::new(Tally::default());
        let one = stream::iter([Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"a")))]);
        let mut body = RequestBody::new(
            Body::boxed(StreamBody::new(one.chain(stream::pending()))),
            tally.clone(),
        );
        assert!(matches!(poll(&mut body), Poll::Ready(Some(Ok(_)))));
        assert!(!tally.client_at_fault(true), "the client is keeping up");
        assert!(poll(&mut body).is_pending());
        assert!(
            tally.client_at_fault(true),
            "a timeout waiting for the client"
        );
        assert!(!tally.client_at_fault(false), "only a timeout is excused");

        let tally = Arc::new(Tally::default());
        let broken = stream::iter([Err::<Frame<Bytes>, BoxError>("reset".into())]);
        let mut body = RequestBody::new(Body::boxed(StreamBody::new(broken)), tally.clone());
        assert!(matches!(poll(&mut body), Poll::Ready(Some(Err(_)))));
        assert!(poll(&mut body).is_ready());
        assert!(
            tally.client_at_fault(false),
            "a broken body stays the client's"
        );
    }
}
