//! The per-request context and what the filter knows about the connection.

use std::cell::OnceCell;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Extensions, StatusCode};

use crate::host::{self, Message, RawConnection};
use crate::shared::StoreError;
use crate::view::{RequestView, ResponseView, TrailersView};

/// Everything about the request being filtered.
///
/// The SDK makes a fresh `Context` for every request and drops it when the next
/// request starts (or after [`Filter::on_complete`](crate::Filter::on_complete)), so
/// anything a filter stores in [`extensions_mut`](Self::extensions_mut) lives exactly
/// as long as its request.
///
/// Keep per-request state in the extensions, not in the filter's own struct: an
/// instance of a filter that stores no extensions is shared with other requests
/// between the phases of one request (the proxy needs far fewer instances that
/// way). Storing an extension tells the proxy to keep the instance for the request;
/// [request values](Self::set_value), kept by the proxy, do not.
///
/// ```
/// use weft_sdk::Context;
///
/// #[derive(Clone)]
/// struct Tenant(String);
///
/// fn remember(ctx: &mut Context) {
///     if let Some(t) = ctx.request().header("x-tenant") {
///         let tenant = Tenant(t.to_str().unwrap_or("").to_owned());
///         ctx.extensions_mut().insert(tenant);
///     }
/// }
/// ```
pub struct Context {
    request_id: u64,
    connection: OnceCell<Connection>,
    extensions: Extensions,
    /// The proxy was asked to keep this instance for the request.
    pub(crate) kept: bool,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("request_id", &self.request_id)
            .field("connection", &self.connection.get())
            .field("extensions", &self.extensions)
            .finish()
    }
}

impl Context {
    pub(crate) fn new(request_id: u64) -> Self {
        Self {
            request_id,
            connection: OnceCell::new(),
            extensions: Extensions::new(),
            kept: false,
        }
    }

    /// A number unique to this request within the proxy process.
    ///
    /// ```
    /// fn trace_id(ctx: &weft_sdk::Context) -> String {
    ///     format!("req-{}", ctx.request_id())
    /// }
    /// ```
    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    /// The request: method, scheme, authority, path, headers and body mode.
    ///
    /// ```
    /// fn path(ctx: &weft_sdk::Context) -> String {
    ///     ctx.request().path()
    /// }
    /// ```
    pub fn request(&self) -> RequestView<'_> {
        RequestView::new()
    }

    /// The response: status, headers and body mode.
    ///
    /// In the request-headers phase there is no response yet: reads find nothing,
    /// and header writes (set, append, remove) are kept and made on the response that
    /// comes next: the upstream's, before the response phases run; the local response
    /// a request phase answers with; or the proxy's error (not a local response a
    /// response phase writes, which says all it means to). A filter
    /// that only adds response headers can so do all its work in one call, and
    /// leave the response phases to the SDK's defaults (which the proxy then never
    /// calls).
    ///
    /// ```
    /// fn status(ctx: &weft_sdk::Context) -> Option<weft_sdk::http::StatusCode> {
    ///     ctx.response().status()
    /// }
    ///
    /// // In on_request_headers: tag whatever response this request gets.
    /// fn tag(ctx: &weft_sdk::Context) -> Result<(), weft_sdk::HeaderError> {
    ///     let id = ctx.request().header("x-request-id");
    ///     match id {
    ///         Some(id) => ctx.response().set_header("x-request-id", id),
    ///         None => Ok(()),
    ///     }
    /// }
    /// ```
    pub fn response(&self) -> ResponseView<'_> {
        ResponseView::new()
    }

    /// The request's trailers.
    ///
    /// ```
    /// fn checksum(ctx: &weft_sdk::Context) -> Option<weft_sdk::http::HeaderValue> {
    ///     ctx.request_trailers().header("x-checksum")
    /// }
    /// ```
    pub fn request_trailers(&self) -> TrailersView<'_> {
        TrailersView::new(Message::RequestTrailers)
    }

    /// The response's trailers.
    ///
    /// ```
    /// fn grpc_status(ctx: &weft_sdk::Context) -> Option<weft_sdk::http::HeaderValue> {
    ///     ctx.response_trailers().header("grpc-status")
    /// }
    /// ```
    pub fn response_trailers(&self) -> TrailersView<'_> {
        TrailersView::new(Message::ResponseTrailers)
    }

    /// The downstream connection the request arrived on (asked of the proxy once per
    /// request, on first use).
    ///
    /// ```
    /// fn from_loopback(ctx: &weft_sdk::Context) -> bool {
    ///     ctx.connection().remote_addr().is_some_and(|a| a.ip().is_loopback())
    /// }
    /// ```
    pub fn connection(&self) -> &Connection {
        self.connection
            .get_or_init(|| Connection::from_raw(host::connection()))
    }

    /// The filter's own per-request values.
    ///
    /// ```
    /// #[derive(Clone)]
    /// struct Started(std::time::Duration);
    /// fn elapsed(ctx: &weft_sdk::Context) -> Option<std::time::Duration> {
    ///     let started = ctx.extensions().get::<Started>()?;
    ///     Some(weft_sdk::time::monotonic().saturating_sub(started.0))
    /// }
    /// ```
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// The filter's own per-request values, to change. Values must be
    /// `Clone + Send + Sync + 'static` (an `http::Extensions` rule).
    ///
    /// ```
    /// #[derive(Clone)]
    /// struct Started(std::time::Duration);
    /// fn start(ctx: &mut weft_sdk::Context) {
    ///     ctx.extensions_mut().insert(Started(weft_sdk::time::monotonic()));
    /// }
    /// ```
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.extensions
    }

    /// A request value: a fact stored for this request with
    /// [`set_value`](Self::set_value), by this filter in an earlier phase or by a
    /// filter before it in the chain. One host call.
    ///
    /// ```
    /// fn tenant(ctx: &weft_sdk::Context) -> Option<String> {
    ///     String::from_utf8(ctx.value("auth.tenant")?).ok()
    /// }
    /// ```
    pub fn value(&self, key: &str) -> Option<Vec<u8>> {
        host::request_value(key)
    }

    /// Stores a request value. The proxy keeps it until the request ends, for every
    /// filter of the chain to read in any phase (prefix keys with your filter's
    /// name). Unlike [`extensions`](Self::extensions_mut) it does not tie this
    /// filter's instance to the request, so it is the cheaper way to carry a small
    /// fact from one phase to the next. Fails with [`StoreError::TooLarge`] past
    /// 16 KiB of keys and values in all for the request.
    ///
    /// ```
    /// fn remember_tenant(ctx: &weft_sdk::Context) -> Result<(), weft_sdk::shared::StoreError> {
    ///     let tenant = ctx.request().header("x-tenant");
    ///     let tenant = tenant.as_ref().map_or(&b"none"[..], |v| v.as_bytes());
    ///     ctx.set_value("auth.tenant", tenant)
    /// }
    /// ```
    pub fn set_value(&self, key: &str, value: impl AsRef<[u8]>) -> Result<(), StoreError> {
        host::set_request_value(key, value.as_ref())
    }

    /// Tells the proxy this filter has nothing to do in the running phase, for any
    /// request: the proxy stops calling it for that phase (until the chain is built
    /// again by a reload). The trait's default methods call it; call it yourself when
    /// your config decides that a phase you implement is not needed.
    ///
    /// ```
    /// # use weft_sdk::{Action, ConfigError, Context, Filter};
    /// struct Cors { expose_on_response: bool }
    /// impl Filter for Cors {
    ///     type Config = ();
    ///     fn configure(_: ()) -> Result<Self, ConfigError> { Ok(Cors { expose_on_response: false }) }
    ///     async fn on_response_headers(&self, ctx: &mut Context) -> Action {
    ///         if !self.expose_on_response {
    ///             ctx.skip_phase();
    ///         }
    ///         Action::Continue
    ///     }
    /// }
    /// ```
    pub fn skip_phase(&mut self) {
        host::skip_phase()
    }
}

/// The filter's name in the proxy config (useful in logs and shared-state keys).
///
/// ```
/// let key = format!("{}:budget", weft_sdk::filter_name());
/// # assert!(key.ends_with(":budget"));
/// ```
pub fn filter_name() -> String {
    host::filter_name()
}

/// The downstream connection a request arrived on.
///
/// ```
/// use std::net::SocketAddr;
/// use weft_sdk::{Connection, TlsInfo};
///
/// let remote: SocketAddr = "10.0.0.7:51000".parse().unwrap();
/// let local: SocketAddr = "10.0.0.1:443".parse().unwrap();
/// let conn = Connection::new(remote, local)
///     .with_listener("public")
///     .with_tls(TlsInfo::new().with_sni("api.example.com"));
/// assert_eq!(conn.remote_addr(), Some(remote));
/// assert_eq!(conn.tls().and_then(|t| t.sni()), Some("api.example.com"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    remote_addr: Option<SocketAddr>,
    local_addr: Option<SocketAddr>,
    listener: String,
    tls: Option<TlsInfo>,
}

impl Connection {
    /// A plain-text connection between these addresses on an unnamed listener
    /// (for tests: see [`testing::TestHost::connection`](crate::testing)).
    ///
    /// ```
    /// let c = weft_sdk::Connection::new(([127, 0, 0, 1], 5000).into(), ([127, 0, 0, 1], 8080).into());
    /// assert!(c.tls().is_none());
    /// ```
    pub fn new(remote_addr: SocketAddr, local_addr: SocketAddr) -> Self {
        Self {
            remote_addr: Some(remote_addr),
            local_addr: Some(local_addr),
            listener: String::new(),
            tls: None,
        }
    }

    /// Names the listener.
    ///
    /// ```
    /// let c = weft_sdk::Connection::new(([127, 0, 0, 1], 5000).into(), ([127, 0, 0, 1], 8080).into())
    ///     .with_listener("admin");
    /// assert_eq!(c.listener(), "admin");
    /// ```
    pub fn with_listener(mut self, listener: impl Into<String>) -> Self {
        self.listener = listener.into();
        self
    }

    /// Marks the connection as TLS.
    ///
    /// ```
    /// use weft_sdk::{Connection, TlsInfo};
    /// let c = Connection::new(([127, 0, 0, 1], 5000).into(), ([127, 0, 0, 1], 8443).into())
    ///     .with_tls(TlsInfo::new().with_alpn("h2"));
    /// assert_eq!(c.tls().and_then(TlsInfo::alpn), Some("h2"));
    /// ```
    pub fn with_tls(mut self, tls: TlsInfo) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The client's address; `None` if the proxy's value does not parse as `ip:port`.
    ///
    /// ```
    /// fn client_ip(ctx: &weft_sdk::Context) -> Option<std::net::IpAddr> {
    ///     ctx.connection().remote_addr().map(|a| a.ip())
    /// }
    /// ```
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote_addr
    }

    /// The proxy's address the client reached; `None` if it does not parse.
    ///
    /// ```
    /// fn port(ctx: &weft_sdk::Context) -> Option<u16> {
    ///     ctx.connection().local_addr().map(|a| a.port())
    /// }
    /// ```
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The listener's name in the proxy config.
    ///
    /// ```
    /// fn internal(ctx: &weft_sdk::Context) -> bool {
    ///     ctx.connection().listener() == "internal"
    /// }
    /// ```
    pub fn listener(&self) -> &str {
        &self.listener
    }

    /// The TLS facts, when the client connected with TLS.
    ///
    /// ```
    /// fn client_identity(ctx: &weft_sdk::Context) -> Option<String> {
    ///     ctx.connection().tls()?.peer_identity().map(str::to_owned)
    /// }
    /// ```
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    pub(crate) fn from_raw(raw: RawConnection) -> Self {
        Self {
            remote_addr: raw.remote_address.parse().ok(),
            local_addr: raw.local_address.parse().ok(),
            listener: raw.listener,
            tls: raw.tls.map(|t| TlsInfo {
                sni: t.sni,
                alpn: t.alpn,
                peer_identity: t.peer_identity,
            }),
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn to_raw(&self) -> RawConnection {
        RawConnection {
            remote_address: self.remote_addr.map(|a| a.to_string()).unwrap_or_default(),
            local_address: self.local_addr.map(|a| a.to_string()).unwrap_or_default(),
            listener: self.listener.clone(),
            tls: self.tls.as_ref().map(|t| host::RawTls {
                sni: t.sni.clone(),
                alpn: t.alpn.clone(),
                peer_identity: t.peer_identity.clone(),
            }),
        }
    }
}

/// The TLS facts of a downstream connection.
///
/// ```
/// let tls = weft_sdk::TlsInfo::new().with_peer_identity("spiffe://mesh/ns/web/sa/frontend");
/// assert!(tls.peer_identity().unwrap().starts_with("spiffe://"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsInfo {
    sni: Option<String>,
    alpn: Option<String>,
    peer_identity: Option<String>,
}

impl TlsInfo {
    /// TLS with nothing known (no SNI, no ALPN, no client certificate).
    ///
    /// ```
    /// assert!(weft_sdk::TlsInfo::new().sni().is_none());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the server name the client asked for.
    ///
    /// ```
    /// assert_eq!(weft_sdk::TlsInfo::new().with_sni("a.example").sni(), Some("a.example"));
    /// ```
    pub fn with_sni(mut self, sni: impl Into<String>) -> Self {
        self.sni = Some(sni.into());
        self
    }

    /// Sets the negotiated application protocol.
    ///
    /// ```
    /// assert_eq!(weft_sdk::TlsInfo::new().with_alpn("h2").alpn(), Some("h2"));
    /// ```
    pub fn with_alpn(mut self, alpn: impl Into<String>) -> Self {
        self.alpn = Some(alpn.into());
        self
    }

    /// Sets the verified client identity.
    ///
    /// ```
    /// assert!(weft_sdk::TlsInfo::new().with_peer_identity("web").peer_identity().is_some());
    /// ```
    pub fn with_peer_identity(mut self, identity: impl Into<String>) -> Self {
        self.peer_identity = Some(identity.into());
        self
    }

    /// The server name the client asked for (SNI).
    ///
    /// ```
    /// fn sni(ctx: &weft_sdk::Context) -> Option<String> {
    ///     ctx.connection().tls()?.sni().map(str::to_owned)
    /// }
    /// ```
    pub fn sni(&self) -> Option<&str> {
        self.sni.as_deref()
    }

    /// The negotiated application protocol, such as `h2`.
    ///
    /// ```
    /// fn is_h2(ctx: &weft_sdk::Context) -> bool {
    ///     ctx.connection().tls().and_then(|t| t.alpn()) == Some("h2")
    /// }
    /// ```
    pub fn alpn(&self) -> Option<&str> {
        self.alpn.as_deref()
    }

    /// The verified identity of the client certificate (its SPIFFE URI or, lacking
    /// one, its first DNS name), when the client presented one.
    ///
    /// ```
    /// fn is_frontend(ctx: &weft_sdk::Context) -> bool {
    ///     ctx.connection().tls().and_then(|t| t.peer_identity()) == Some("spiffe://mesh/frontend")
    /// }
    /// ```
    pub fn peer_identity(&self) -> Option<&str> {
        self.peer_identity.as_deref()
    }
}

/// What [`Filter::on_complete`](crate::Filter::on_complete) learns about a finished request.
///
/// ```
/// use std::time::Duration;
/// use weft_sdk::{http::StatusCode, Completion};
///
/// let done = Completion {
///     status: Some(StatusCode::OK),
///     duration: Duration::from_millis(12),
///     ..Completion::default()
/// };
/// assert!(done.error.is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Completion {
    /// The status sent to the client; `None` when no response was sent.
    pub status: Option<StatusCode>,
    /// Request body bytes received from the client.
    pub request_body_bytes: u64,
    /// Response body bytes sent to the client.
    pub response_body_bytes: u64,
    /// From the first request byte to the last response byte.
    pub duration: Duration,
    /// Time spent waiting for the upstream's response headers, if one was asked.
    pub upstream_time: Option<Duration>,
    /// The cluster that served the request, if any.
    pub cluster: Option<String>,
    /// How many times the request was sent again.
    pub retries: u32,
    /// Why the request failed, when it did (for example "upstream timeout").
    pub error: Option<String>,
}
