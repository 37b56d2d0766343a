//! Run a filter natively under `cargo test`, against a fake proxy. No Wasm build needed.
//!
//! A [`TestHost`] configures your filter from JSON, then lets you play requests through
//! it phase by phase and look at everything the filter did: the action of each phase,
//! the headers it left, its logs and metrics, its shared state, its outbound calls and
//! the phases it skipped. On native targets every host call of the SDK goes to the
//! `TestHost` that is running the filter; the fake behaves like the proxy and is strict
//! where the proxy may be (a header write outside the phases where the proxy accepts it
//! fails with [`HeaderError::Immutable`](crate::HeaderError::Immutable)).
//!
//! ```
//! use serde::Deserialize;
//! use serde_json::json;
//! use weft_sdk::http::{Request, Response, StatusCode};
//! use weft_sdk::testing::{Phase, TestHost};
//! use weft_sdk::{Action, ConfigError, Context, Filter};
//!
//! struct Hello {
//!     key: String,
//! }
//!
//! #[derive(Deserialize)]
//! struct Config {
//!     key: String,
//! }
//!
//! impl Filter for Hello {
//!     type Config = Config;
//!     fn configure(config: Config) -> Result<Self, ConfigError> {
//!         Ok(Hello { key: config.key })
//!     }
//!     async fn on_request_headers(&self, ctx: &mut Context) -> Action {
//!         match ctx.request().header("x-api-key") {
//!             Some(k) if k == self.key.as_str() => Action::Continue,
//!             _ => Action::respond(StatusCode::UNAUTHORIZED).body("bad key").into(),
//!         }
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut t = TestHost::<Hello>::new(json!({"key": "s3cret"}))?;
//!
//! let action = t
//!     .request(Request::get("/").header("x-api-key", "wrong").body(())?)
//!     .on_request_headers();
//! assert!(matches!(action, Action::Respond(r) if r.status() == 401));
//!
//! let action = t
//!     .request(Request::get("/").header("x-api-key", "s3cret").body(())?)
//!     .on_request_headers();
//! assert_eq!(action, Action::Continue);
//!
//! // Phases the filter does not implement tell the proxy to stop calling them.
//! t.response(Response::builder().status(200).body(())?).on_response_headers();
//! assert!(t.is_skipped(Phase::ResponseHeaders));
//!
//! // A bad config is an error, not a panic.
//! let err = TestHost::<Hello>::new(json!({})).err().unwrap();
//! assert!(matches!(err, ConfigError::Mismatch { .. }));
//! # Ok(())
//! # }
//! ```

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::HOST;
use http::{HeaderMap, StatusCode, Uri};
use serde::Serialize;

use crate::host::fake::{self, slot, FakeHost};
use crate::host::{Message, MetricKind};
use crate::log::Level;
use crate::outbound::CallError;
use crate::runtime::Instance;
use crate::{Action, BodyAction, BodyMode, Completion, ConfigError, Connection, Filter};

/// A phase of a request, as reported by [`TestHost::skipped`].
///
/// ```
/// use weft_sdk::testing::Phase;
/// assert_ne!(Phase::RequestHeaders, Phase::ResponseHeaders);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// [`Filter::on_request_headers`].
    RequestHeaders,
    /// [`Filter::on_request_body`].
    RequestBody,
    /// [`Filter::on_request_trailers`].
    RequestTrailers,
    /// [`Filter::on_response_headers`].
    ResponseHeaders,
    /// [`Filter::on_response_body`].
    ResponseBody,
    /// [`Filter::on_response_trailers`].
    ResponseTrailers,
    /// [`Filter::on_complete`].
    Complete,
}

/// A log line the filter wrote.
///
/// ```
/// use weft_sdk::log::Level;
/// use weft_sdk::testing::LogRecord;
/// let line = LogRecord { level: Level::Info, message: "allowed".into() };
/// assert_eq!(line.to_string(), "INFO allowed");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Its level.
    pub level: Level,
    /// Its text.
    pub message: String,
}

impl fmt::Display for LogRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.level, self.message)
    }
}

/// An outbound call the filter made, as the proxy would have sent it.
///
/// The request's URI is the path and query; a [`Timeout`](crate::outbound::Timeout)
/// the filter set is in its extensions.
///
/// ```
/// use weft_sdk::http::Request;
/// use weft_sdk::testing::OutboundCall;
/// let call = OutboundCall { cluster: "authz".into(), request: Request::new(Vec::new()) };
/// assert_eq!(call.clone().cluster, "authz");
/// ```
#[derive(Debug)]
pub struct OutboundCall {
    /// The cluster it went to.
    pub cluster: String,
    /// The request.
    pub request: http::Request<Vec<u8>>,
}

impl Clone for OutboundCall {
    fn clone(&self) -> Self {
        let mut request = http::Request::new(self.request.body().clone());
        *request.method_mut() = self.request.method().clone();
        *request.uri_mut() = self.request.uri().clone();
        *request.version_mut() = self.request.version();
        *request.headers_mut() = self.request.headers().clone();
        *request.extensions_mut() = self.request.extensions().clone();
        Self {
            cluster: self.cluster.clone(),
            request,
        }
    }
}

/// A fake proxy running one filter of type `F`. See the [module docs](self) for a tour.
///
/// Set-up methods return `&mut Self` so they chain:
/// `t.request(req).on_request_headers()`. Several `TestHost`s can live in one test; each
/// has its own state.
///
/// ```
/// use weft_sdk::http::{Request, Response};
/// use weft_sdk::testing::TestHost;
/// use weft_sdk::{Action, ConfigError, Context, Filter};
///
/// struct Tag;
/// impl Filter for Tag {
///     type Config = ();
///     fn configure(_: ()) -> Result<Self, ConfigError> {
///         Ok(Tag)
///     }
///     async fn on_response_headers(&self, ctx: &mut Context) -> Action {
///         let _ = ctx.response().set_header("x-tag", "1");
///         Action::Continue
///     }
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut t = TestHost::<Tag>::new(())?;
/// t.request(Request::get("/").body(())?).on_request_headers();
/// t.response(Response::new(())).on_response_headers();
/// assert_eq!(t.current_response().unwrap().headers()["x-tag"], "1");
/// # Ok(())
/// # }
/// ```
pub struct TestHost<F> {
    host: Rc<RefCell<FakeHost>>,
    instance: Option<Instance<F>>,
}

impl<F> fmt::Debug for TestHost<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestHost")
            .field("configured", &self.instance.is_some())
            .finish_non_exhaustive()
    }
}

impl<F: Filter> TestHost<F> {
    /// A fake proxy with the filter configured from `config` (usually `serde_json::json!`),
    /// exactly as the proxy would: serialized to JSON, then parsed into `F::Config`.
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// let t = TestHost::<Nop>::new(())?; // `()` is JSON `null`: no config
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn new(config: impl Serialize) -> Result<Self, ConfigError> {
        let mut host = Self::unconfigured();
        host.configure(config)?;
        Ok(host)
    }

    /// A fake proxy with the filter configured from raw bytes, to test configs that are
    /// not JSON.
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// let err = TestHost::<Nop>::with_raw_config("{oops").unwrap_err();
    /// assert!(matches!(err, ConfigError::NotJson { .. }));
    /// ```
    pub fn with_raw_config(config: impl AsRef<[u8]>) -> Result<Self, ConfigError> {
        let mut host = Self::unconfigured();
        host.configure_raw(config)?;
        Ok(host)
    }

    /// A fake proxy whose filter is not configured yet: set up shared state, outbound
    /// responses or the clock first, then call [`configure`](Self::configure).
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// let mut t = TestHost::<Nop>::unconfigured();
    /// t.shared_set("seed", "42", None).configure(())?;
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn unconfigured() -> Self {
        Self {
            host: Rc::new(RefCell::new(FakeHost::default())),
            instance: None,
        }
    }

    /// (Re)configures the filter from `config`, serialized to JSON.
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, ConfigError, Filter};
    /// # struct Max(u32);
    /// # impl Filter for Max { type Config = u32; fn configure(m: u32) -> Result<Self, ConfigError> { Ok(Max(m)) } }
    /// let mut t = TestHost::<Max>::new(3)?;
    /// t.configure(5)?;
    /// assert_eq!(t.filter().0, 5);
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn configure(&mut self, config: impl Serialize) -> Result<&mut Self, ConfigError> {
        let json = serde_json::to_vec(&config).map_err(|e| ConfigError::NotJson {
            message: e.to_string(),
        })?;
        self.configure_raw(json)
    }

    /// (Re)configures the filter from raw bytes.
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// let mut t = TestHost::<Nop>::unconfigured();
    /// t.configure_raw(b"")?; // an absent config
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn configure_raw(&mut self, config: impl AsRef<[u8]>) -> Result<&mut Self, ConfigError> {
        let _installed = fake::install(self.host.clone());
        self.instance = Some(Instance::configure(config.as_ref())?);
        Ok(self)
    }

    /// The configured filter, to inspect its state.
    ///
    /// Panics if the filter is not configured.
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, ConfigError, Filter};
    /// # struct Max(u32);
    /// # impl Filter for Max { type Config = u32; fn configure(m: u32) -> Result<Self, ConfigError> { Ok(Max(m)) } }
    /// assert_eq!(TestHost::<Max>::new(7)?.filter().0, 7);
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn filter(&self) -> &F {
        match &self.instance {
            Some(instance) => instance.filter(),
            None => panic!("TestHost: the filter is not configured; call `configure` first"),
        }
    }

    fn run<R>(&mut self, phase: Phase, call: impl FnOnce(&mut Instance<F>, u64) -> R) -> R {
        let Some(instance) = self.instance.as_mut() else {
            panic!("TestHost: the filter is not configured; call `configure` first");
        };
        let _installed = fake::install(self.host.clone());
        let id = {
            let mut host = self.host.borrow_mut();
            host.phase = Some(phase);
            host.request_id
        };
        let out = call(instance, id);
        self.host.borrow_mut().phase = None;
        out
    }

    // ---- the request and response ----

    /// Starts a new request (a new request id, so the filter gets a fresh
    /// [`Context`](crate::Context)) with this method, URI and headers. The authority
    /// comes from the URI or the `host` header, the scheme from the URI (default
    /// `http`). The body is ignored: feed it with [`on_request_body`](Self::on_request_body).
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let mut t = TestHost::<Nop>::new(())?;
    /// use weft_sdk::http::Request;
    /// t.request(Request::post("https://api.example.com/items?id=3").header("x-api-key", "k").body(())?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn request<B>(&mut self, request: http::Request<B>) -> &mut Self {
        let (parts, _body) = request.into_parts();
        let mut h = self.host.borrow_mut();
        h.start_request();
        h.method = parts.method.as_str().to_owned();
        h.scheme = parts.uri.scheme_str().unwrap_or("http").to_owned();
        h.authority = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                let host = parts.headers.get(HOST)?.to_str().ok()?;
                Some(host.to_owned())
            });
        h.path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        h.maps[slot(Message::Request)] = parts.headers;
        drop(h);
        self
    }

    /// Sets the request's trailers.
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let mut t = TestHost::<Nop>::new(())?;
    /// let mut trailers = weft_sdk::http::HeaderMap::new();
    /// trailers.insert("x-checksum", "abc".parse()?);
    /// t.request_trailers(trailers).on_request_trailers();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn request_trailers(&mut self, trailers: HeaderMap) -> &mut Self {
        self.host.borrow_mut().maps[slot(Message::RequestTrailers)] = trailers;
        self
    }

    /// Sets the upstream's response (status and headers; the body is ignored: feed it
    /// with [`on_response_body`](Self::on_response_body)).
    ///
    /// As in the proxy, the response gets the response headers the filter wrote in
    /// the request-headers phase.
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let mut t = TestHost::<Nop>::new(())?;
    /// use weft_sdk::http::Response;
    /// t.response(Response::builder().status(503).header("retry-after", "1").body(())?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn response<B>(&mut self, response: http::Response<B>) -> &mut Self {
        let (parts, _body) = response.into_parts();
        let mut h = self.host.borrow_mut();
        h.status = Some(parts.status.as_u16());
        h.maps[slot(Message::Response)] = parts.headers;
        h.response_body_mode = BodyMode::Skip;
        h.receive_response();
        drop(h);
        self
    }

    /// Sets the response's trailers.
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let mut t = TestHost::<Nop>::new(())?;
    /// let mut trailers = weft_sdk::http::HeaderMap::new();
    /// trailers.insert("grpc-status", "0".parse()?);
    /// t.response_trailers(trailers).on_response_trailers();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn response_trailers(&mut self, trailers: HeaderMap) -> &mut Self {
        self.host.borrow_mut().maps[slot(Message::ResponseTrailers)] = trailers;
        self
    }

    /// Sets the downstream connection the requests arrive on (by default plain text
    /// from `127.0.0.1:50000` to `127.0.0.1:8080`, listener `default`).
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let mut t = TestHost::<Nop>::new(())?;
    /// use weft_sdk::{Connection, TlsInfo};
    /// t.connection(
    ///     Connection::new(([10, 0, 0, 9], 41000).into(), ([10, 0, 0, 1], 443).into())
    ///         .with_tls(TlsInfo::new().with_peer_identity("spiffe://mesh/web")),
    /// );
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn connection(&mut self, connection: Connection) -> &mut Self {
        self.host.borrow_mut().connection = connection.to_raw();
        self
    }

    // ---- phases ----

    /// Runs the request-headers phase.
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, Action, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let mut t = TestHost::<Nop>::new(())?;
    /// assert_eq!(t.on_request_headers(), Action::Continue);
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn on_request_headers(&mut self) -> Action {
        self.run(Phase::RequestHeaders, |i, id| i.on_request_headers(id))
    }

    /// Runs the request-body phase with a chunk (call it once with the whole body and
    /// `end_of_stream = true` to act like [`BodyMode::Buffer`]).
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, BodyAction, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let mut t = TestHost::<Nop>::new(())?;
    /// assert_eq!(t.on_request_body("{\"a\":1}", true), BodyAction::Continue);
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn on_request_body(
        &mut self,
        chunk: impl Into<Vec<u8>>,
        end_of_stream: bool,
    ) -> BodyAction {
        let chunk = chunk.into();
        self.run(Phase::RequestBody, |i, id| {
            i.on_request_body(id, chunk, end_of_stream)
        })
    }

    /// Runs the request-trailers phase.
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, Action, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let mut t = TestHost::<Nop>::new(())?;
    /// assert_eq!(t.on_request_trailers(), Action::Continue);
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn on_request_trailers(&mut self) -> Action {
        self.run(Phase::RequestTrailers, |i, id| i.on_request_trailers(id))
    }

    /// Runs the response-headers phase (with a bare `200 OK` if no
    /// [`response`](Self::response) was set).
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, Action, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let mut t = TestHost::<Nop>::new(())?;
    /// assert_eq!(t.on_response_headers(), Action::Continue);
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn on_response_headers(&mut self) -> Action {
        {
            let mut h = self.host.borrow_mut();
            if h.status.is_none() {
                h.status = Some(StatusCode::OK.as_u16());
                h.receive_response();
            }
        }
        self.run(Phase::ResponseHeaders, |i, id| i.on_response_headers(id))
    }

    /// Runs the response-body phase with a chunk.
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, BodyAction, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let mut t = TestHost::<Nop>::new(())?;
    /// assert_eq!(t.on_response_body(b"chunk".to_vec(), false), BodyAction::Continue);
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn on_response_body(
        &mut self,
        chunk: impl Into<Vec<u8>>,
        end_of_stream: bool,
    ) -> BodyAction {
        let chunk = chunk.into();
        self.run(Phase::ResponseBody, |i, id| {
            i.on_response_body(id, chunk, end_of_stream)
        })
    }

    /// Runs the response-trailers phase.
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, Action, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let mut t = TestHost::<Nop>::new(())?;
    /// assert_eq!(t.on_response_trailers(), Action::Continue);
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn on_response_trailers(&mut self) -> Action {
        self.run(Phase::ResponseTrailers, |i, id| i.on_response_trailers(id))
    }

    /// Runs the completion hook; the filter's per-request context is dropped after it.
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let mut t = TestHost::<Nop>::new(())?;
    /// use weft_sdk::{http::StatusCode, Completion};
    /// t.on_complete(Completion { status: Some(StatusCode::OK), ..Completion::default() });
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn on_complete(&mut self, info: Completion) {
        self.run(Phase::Complete, |i, id| i.on_complete(id, &info))
    }

    // ---- what the filter did ----

    /// The request as the filter left it (what the upstream would get): method, URI
    /// (scheme and authority included when known), headers.
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let mut t = TestHost::<Nop>::new(())?;
    /// t.request(weft_sdk::http::Request::get("/a?b=c").body(())?).on_request_headers();
    /// assert_eq!(t.current_request().uri(), "/a?b=c");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn current_request(&self) -> http::Request<()> {
        let h = self.host.borrow();
        let uri = match &h.authority {
            Some(authority) => Uri::builder()
                .scheme(h.scheme.as_str())
                .authority(authority.as_str())
                .path_and_query(h.path.as_str())
                .build()
                .ok(),
            None => h.path.parse().ok(),
        };
        let mut request = http::Request::new(());
        *request.method_mut() = h.method.parse().unwrap_or_default();
        *request.uri_mut() = uri.unwrap_or_default();
        *request.headers_mut() = h.maps[slot(Message::Request)].clone();
        request
    }

    /// The response as the filter left it (what the client would get), once there is one.
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let mut t = TestHost::<Nop>::new(())?;
    /// assert!(t.current_response().is_none());
    /// t.on_response_headers();
    /// assert_eq!(t.current_response().map(|r| r.status()), Some(weft_sdk::http::StatusCode::OK));
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn current_response(&self) -> Option<http::Response<()>> {
        let h = self.host.borrow();
        let status = StatusCode::from_u16(h.status?).ok()?;
        let mut response = http::Response::new(());
        *response.status_mut() = status;
        *response.headers_mut() = h.maps[slot(Message::Response)].clone();
        Some(response)
    }

    /// The request trailers as the filter left them.
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let t = TestHost::<Nop>::new(())?;
    /// assert!(t.current_request_trailers().is_empty());
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn current_request_trailers(&self) -> HeaderMap {
        self.host.borrow().maps[slot(Message::RequestTrailers)].clone()
    }

    /// The response trailers as the filter left them.
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let t = TestHost::<Nop>::new(())?;
    /// assert!(t.current_response_trailers().is_empty());
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn current_response_trailers(&self) -> HeaderMap {
        self.host.borrow().maps[slot(Message::ResponseTrailers)].clone()
    }

    /// The request body mode the filter chose.
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, BodyMode, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let t = TestHost::<Nop>::new(())?;
    /// assert_eq!(t.request_body_mode(), BodyMode::Skip);
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn request_body_mode(&self) -> BodyMode {
        self.host.borrow().request_body_mode
    }

    /// The response body mode the filter chose.
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, BodyMode, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let t = TestHost::<Nop>::new(())?;
    /// assert_eq!(t.response_body_mode(), BodyMode::Skip);
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn response_body_mode(&self) -> BodyMode {
        self.host.borrow().response_body_mode
    }

    /// The id of the current request (it changes with every [`request`](Self::request)).
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let mut t = TestHost::<Nop>::new(())?;
    /// let first = t.request_id();
    /// t.request(weft_sdk::http::Request::new(()));
    /// assert_ne!(t.request_id(), first);
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn request_id(&self) -> u64 {
        self.host.borrow().request_id
    }

    /// The phases the filter told the proxy to skip (those it does not implement), in
    /// the order they were first run.
    ///
    /// ```
    /// # use weft_sdk::{testing::{Phase, TestHost}, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let mut t = TestHost::<Nop>::new(())?;
    /// t.on_request_headers();
    /// assert_eq!(t.skipped(), [Phase::RequestHeaders]);
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn skipped(&self) -> Vec<Phase> {
        self.host.borrow().skipped.clone()
    }

    /// Whether the filter told the proxy to skip this phase.
    ///
    /// ```
    /// # use weft_sdk::{testing::{Phase, TestHost}, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let mut t = TestHost::<Nop>::new(())?;
    /// t.on_response_trailers();
    /// assert!(t.is_skipped(Phase::ResponseTrailers));
    /// assert!(!t.is_skipped(Phase::RequestHeaders)); // not run yet
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn is_skipped(&self, phase: Phase) -> bool {
        self.host.borrow().skipped.contains(&phase)
    }

    /// Whether the filter asked the proxy to keep its instance for the current
    /// request, which the SDK does once the filter stores request extensions.
    /// Without it the proxy may run other requests on the instance between this
    /// request's phases.
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, Action, ConfigError, Context, Filter};
    /// struct Remember;
    /// impl Filter for Remember {
    ///     type Config = ();
    ///     fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Remember) }
    ///     async fn on_request_headers(&self, ctx: &mut Context) -> Action {
    ///         let path = ctx.request().path();
    ///         if path != "/" {
    ///             ctx.extensions_mut().insert(path);
    ///         }
    ///         Action::Continue
    ///     }
    /// }
    /// let mut t = TestHost::<Remember>::new(())?;
    /// t.on_request_headers();
    /// assert!(!t.keeps_instance());
    /// t.request(weft_sdk::http::Request::get("/a").body(())?);
    /// t.on_request_headers();
    /// assert!(t.keeps_instance());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn keeps_instance(&self) -> bool {
        self.host.borrow().kept
    }

    /// A request value the filter stored with
    /// [`Context::set_value`](crate::Context::set_value).
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, Action, ConfigError, Context, Filter};
    /// struct Tag;
    /// impl Filter for Tag {
    ///     type Config = ();
    ///     fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Tag) }
    ///     async fn on_request_headers(&self, ctx: &mut Context) -> Action {
    ///         let _ = ctx.set_value("tag.seen", b"yes");
    ///         Action::Continue
    ///     }
    /// }
    /// let mut t = TestHost::<Tag>::new(())?;
    /// t.on_request_headers();
    /// assert_eq!(t.request_value("tag.seen").as_deref(), Some(&b"yes"[..]));
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn request_value(&self, key: &str) -> Option<Vec<u8>> {
        self.host.borrow().values.get(key).cloned()
    }

    /// Sets a request value for the current request, as a filter earlier in the
    /// chain would have.
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let mut t = TestHost::<Nop>::new(())?;
    /// t.set_request_value("auth.tenant", b"acme");
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn set_request_value(&mut self, key: &str, value: impl AsRef<[u8]>) -> &mut Self {
        self.host
            .borrow_mut()
            .values
            .insert(key.to_owned(), value.as_ref().to_vec());
        self
    }

    /// Every log line the filter wrote (at or above the [log level](Self::set_log_level)).
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { weft_sdk::log::info!("ready"); Ok(Nop) } }
    /// let t = TestHost::<Nop>::new(())?;
    /// assert_eq!(t.logs()[0].message, "ready");
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn logs(&self) -> Vec<LogRecord> {
        self.host.borrow().logs.clone()
    }

    /// The value of a counter or gauge for these label values (in the order of the
    /// label names); `None` if the metric is not defined, is a histogram, or has no
    /// value for these labels yet.
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, metrics::Counter, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> {
    /// #     Counter::new("starts_total", "Starts", &["how"])?.inc(&["cold"]); Ok(Nop) } }
    /// let t = TestHost::<Nop>::new(())?;
    /// assert_eq!(t.metric("starts_total", &["cold"]), Some(1.0));
    /// assert_eq!(t.metric("starts_total", &["warm"]), None);
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn metric(&self, name: &str, label_values: &[&str]) -> Option<f64> {
        let h = self.host.borrow();
        let def = h.metrics.iter().find(|d| d.name == name)?;
        if def.kind == MetricKind::Histogram {
            return None;
        }
        def.values.get(&labels(label_values)).copied()
    }

    /// The observations of a histogram for these label values, in order.
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, metrics::Histogram, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> {
    /// #     Histogram::new("setup_seconds", "Setup", &[], &[1.0])?.observe(&[], 0.5); Ok(Nop) } }
    /// let t = TestHost::<Nop>::new(())?;
    /// assert_eq!(t.observations("setup_seconds", &[]), [0.5]);
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn observations(&self, name: &str, label_values: &[&str]) -> Vec<f64> {
        let h = self.host.borrow();
        h.metrics
            .iter()
            .find(|d| d.name == name)
            .and_then(|d| d.observations.get(&labels(label_values)).cloned())
            .unwrap_or_default()
    }

    /// Every outbound call the filter made, in order.
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let t = TestHost::<Nop>::new(())?;
    /// assert!(t.outbound_calls().is_empty());
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn outbound_calls(&self) -> Vec<OutboundCall> {
        self.host.borrow().calls.clone()
    }

    // ---- the environment ----

    /// Answers the filter's outbound calls to `cluster` with `handler`. Calls to a
    /// cluster without a handler fail with [`CallError::UnknownCluster`].
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let mut t = TestHost::<Nop>::new(())?;
    /// use weft_sdk::{http::Response, outbound::CallError};
    /// t.on_outbound("authz", |req| {
    ///     if req.uri().path() == "/allow" {
    ///         Ok(Response::new(b"yes".to_vec()))
    ///     } else {
    ///         Err(CallError::Timeout)
    ///     }
    /// });
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn on_outbound(
        &mut self,
        cluster: impl Into<String>,
        handler: impl FnMut(&http::Request<Vec<u8>>) -> Result<http::Response<Vec<u8>>, CallError>
            + 'static,
    ) -> &mut Self {
        self.host
            .borrow_mut()
            .handlers
            .insert(cluster.into(), Box::new(handler));
        self
    }

    /// Answers every outbound call to `cluster` with (a copy of) `response`.
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let mut t = TestHost::<Nop>::new(())?;
    /// use weft_sdk::http::Response;
    /// t.outbound_response("jwks", Response::builder().status(200).body(br#"{"keys":[]}"#.to_vec())?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn outbound_response(
        &mut self,
        cluster: impl Into<String>,
        response: http::Response<Vec<u8>>,
    ) -> &mut Self {
        let (parts, body) = response.into_parts();
        let (status, headers) = (parts.status, parts.headers);
        self.on_outbound(cluster, move |_| {
            let mut response = http::Response::new(body.clone());
            *response.status_mut() = status;
            *response.headers_mut() = headers.clone();
            Ok(response)
        })
    }

    /// Reads a key of the filter's shared state (expired entries read as absent).
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let mut t = TestHost::<Nop>::new(())?;
    /// t.shared_set("k", "v", None);
    /// assert_eq!(t.shared_get("k").as_deref(), Some(&b"v"[..]));
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn shared_get(&self, key: &str) -> Option<Vec<u8>> {
        let _installed = fake::install(self.host.clone());
        crate::shared::get(key)
    }

    /// Presets a key of the filter's shared state, optionally expiring after `ttl` on
    /// the fake clock (see [`advance`](Self::advance)).
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let mut t = TestHost::<Nop>::new(())?;
    /// use std::time::Duration;
    /// t.shared_set("session", "ada", Some(Duration::from_secs(60)));
    /// t.advance(Duration::from_secs(61));
    /// assert_eq!(t.shared_get("session"), None);
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn shared_set(
        &mut self,
        key: &str,
        value: impl AsRef<[u8]>,
        ttl: Option<Duration>,
    ) -> &mut Self {
        let _installed = fake::install(self.host.clone());
        // The fake never refuses a write.
        let _ = crate::shared::set(key, value.as_ref(), ttl);
        self
    }

    /// Reads a shared counter (0 when absent).
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let t = TestHost::<Nop>::new(())?;
    /// assert_eq!(t.counter("hits"), 0);
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn counter(&self, key: &str) -> i64 {
        self.host.borrow().counters.get(key).copied().unwrap_or(0)
    }

    /// Presets a shared counter.
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let mut t = TestHost::<Nop>::new(())?;
    /// t.set_counter("rl:10.0.0.9", 99);
    /// assert_eq!(t.counter("rl:10.0.0.9"), 99);
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn set_counter(&mut self, key: &str, value: i64) -> &mut Self {
        self.host
            .borrow_mut()
            .counters
            .insert(key.to_owned(), value);
        self
    }

    /// Moves both fake clocks forward (they never move by themselves). The wall clock
    /// starts at 2026-01-01T00:00:00Z.
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let mut t = TestHost::<Nop>::new(())?;
    /// t.advance(std::time::Duration::from_secs(30));
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn advance(&mut self, by: Duration) -> &mut Self {
        let ns = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let mut h = self.host.borrow_mut();
        h.wall_ns = h.wall_ns.saturating_add(ns);
        h.monotonic_ns = h.monotonic_ns.saturating_add(ns);
        drop(h);
        self
    }

    /// Sets the fake wall clock (the monotonic clock does not move).
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let mut t = TestHost::<Nop>::new(())?;
    /// use std::time::{Duration, UNIX_EPOCH};
    /// t.set_time(UNIX_EPOCH + Duration::from_secs(2_000_000_000));
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn set_time(&mut self, now: SystemTime) -> &mut Self {
        let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        self.host.borrow_mut().wall_ns = u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX);
        self
    }

    /// Sets the lowest level the proxy logs (default: [`Level::Trace`], everything).
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// # let mut t = TestHost::<Nop>::new(())?;
    /// t.set_log_level(weft_sdk::log::Level::Warn);
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn set_log_level(&mut self, level: Level) -> &mut Self {
        self.host.borrow_mut().log_level = level;
        self
    }

    /// Sets the filter's name in the (fake) proxy config (default: `test`).
    ///
    /// ```
    /// # use weft_sdk::{testing::TestHost, ConfigError, Filter};
    /// # struct Nop;
    /// # impl Filter for Nop { type Config = (); fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Nop) } }
    /// let mut t = TestHost::<Nop>::unconfigured();
    /// t.set_filter_name("auth").configure(())?;
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn set_filter_name(&mut self, name: impl Into<String>) -> &mut Self {
        self.host.borrow_mut().filter_name = name.into();
        self
    }
}

fn labels(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}
