//! What a phase tells the proxy to do next.

use http::header::{HeaderValue, IntoHeaderName};
use http::{HeaderMap, StatusCode};

/// The verdict of a header or trailer phase. The default is [`Action::Continue`].
///
/// ```
/// use weft_sdk::{http::StatusCode, Action};
///
/// let deny: Action = Action::respond(StatusCode::FORBIDDEN).body("no").into();
/// assert!(matches!(deny, Action::Respond(r) if r.status() == 403));
/// assert_eq!(Action::default(), Action::Continue);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Action {
    /// Go on with the next filter, then the upstream (or the client).
    #[default]
    Continue,
    /// Stop the chain and answer the client with this response.
    Respond(LocalResponse),
    /// Request phases only: send the request to this upstream, then go on with the
    /// next filter.
    Route(Upstream),
    /// Response-headers phase only: discard this response and send the request again.
    /// The proxy refuses (the response goes on unchanged) when the request body was
    /// too large to replay or the route's retry budget is spent.
    Retry,
}

impl Action {
    /// Starts a local response; finish it with [`LocalResponse::header`] and
    /// [`LocalResponse::body`], then `.into()` an `Action` (or a [`BodyAction`]).
    ///
    /// To a gRPC call, the proxy sends a status other than `200` as gRPC clients read
    /// failures: `200` with a `grpc-status` mapped from it (`401` UNAUTHENTICATED,
    /// `403` PERMISSION_DENIED, `429` UNAVAILABLE, ...) and the body's text as
    /// `grpc-message`; a response that sets `grpc-status` itself goes as written.
    ///
    /// ```
    /// use weft_sdk::{http::StatusCode, Action};
    /// let action: Action = Action::respond(StatusCode::UNAUTHORIZED).body("missing key").into();
    /// # assert!(matches!(action, Action::Respond(_)));
    /// ```
    pub fn respond(status: StatusCode) -> LocalResponse {
        LocalResponse::new(status)
    }

    /// Routes the request to a cluster of the proxy's config.
    ///
    /// ```
    /// use weft_sdk::{Action, Upstream};
    /// assert_eq!(Action::route("canary"), Action::Route(Upstream::new("canary")));
    /// ```
    pub fn route(cluster: impl Into<String>) -> Action {
        Action::Route(Upstream::new(cluster))
    }
}

impl From<LocalResponse> for Action {
    fn from(response: LocalResponse) -> Self {
        Action::Respond(response)
    }
}

impl From<Upstream> for Action {
    fn from(upstream: Upstream) -> Self {
        Action::Route(upstream)
    }
}

/// The verdict of a body phase. The default is [`BodyAction::Continue`].
///
/// ```
/// use weft_sdk::BodyAction;
/// let redacted = BodyAction::Replace(b"{}".to_vec());
/// assert_ne!(redacted, BodyAction::default());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BodyAction {
    /// Pass the chunk on unchanged.
    #[default]
    Continue,
    /// Pass these bytes on instead of the chunk.
    Replace(Vec<u8>),
    /// Stop and answer the client. Valid while the message's headers have not been
    /// sent: always for request bodies, and for buffered response bodies.
    Respond(LocalResponse),
}

impl From<LocalResponse> for BodyAction {
    fn from(response: LocalResponse) -> Self {
        BodyAction::Respond(response)
    }
}

/// A response the filter writes itself instead of asking the upstream.
///
/// ```
/// use weft_sdk::http::{header, HeaderValue, StatusCode};
/// use weft_sdk::LocalResponse;
///
/// let r = LocalResponse::new(StatusCode::UNAUTHORIZED)
///     .header(header::WWW_AUTHENTICATE, HeaderValue::from_static("ApiKey"))
///     .body("missing or wrong x-api-key\n");
/// assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
/// assert_eq!(r.headers()["www-authenticate"], "ApiKey");
/// assert_eq!(r.body_bytes(), b"missing or wrong x-api-key\n");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl LocalResponse {
    /// A response with this status, no headers and an empty body.
    ///
    /// ```
    /// use weft_sdk::{http::StatusCode, LocalResponse};
    /// assert!(LocalResponse::new(StatusCode::NO_CONTENT).body_bytes().is_empty());
    /// ```
    pub fn new(status: StatusCode) -> Self {
        Self {
            status,
            headers: HeaderMap::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header (keeping earlier values of the same name). The name is a
    /// `HeaderName` or a `&'static str`; like the `http` crate, a static string that is
    /// not a valid name panics, so use `HeaderName::try_from` for names built at run time.
    ///
    /// ```
    /// use weft_sdk::http::{HeaderValue, StatusCode};
    /// use weft_sdk::LocalResponse;
    /// let r = LocalResponse::new(StatusCode::TOO_MANY_REQUESTS)
    ///     .header("retry-after", HeaderValue::from(30u32));
    /// assert_eq!(r.headers()["retry-after"], "30");
    /// ```
    pub fn header<K: IntoHeaderName>(mut self, name: K, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Sets the body.
    ///
    /// ```
    /// use weft_sdk::{http::StatusCode, LocalResponse};
    /// let r = LocalResponse::new(StatusCode::OK).body(String::from("pong"));
    /// assert_eq!(r.body_bytes(), b"pong");
    /// ```
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The status.
    ///
    /// ```
    /// use weft_sdk::{http::StatusCode, LocalResponse};
    /// assert_eq!(LocalResponse::new(StatusCode::IM_A_TEAPOT).status(), 418);
    /// ```
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The headers.
    ///
    /// ```
    /// use weft_sdk::{http::StatusCode, LocalResponse};
    /// assert!(LocalResponse::new(StatusCode::OK).headers().is_empty());
    /// ```
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The headers, to change.
    ///
    /// ```
    /// use weft_sdk::http::{header::CACHE_CONTROL, HeaderValue, StatusCode};
    /// use weft_sdk::LocalResponse;
    /// let mut r = LocalResponse::new(StatusCode::OK);
    /// r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    /// assert_eq!(r.headers().len(), 1);
    /// ```
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        &mut self.headers
    }

    /// The body.
    ///
    /// ```
    /// use weft_sdk::{http::StatusCode, LocalResponse};
    /// assert_eq!(LocalResponse::new(StatusCode::OK).body("hi").body_bytes(), b"hi");
    /// ```
    pub fn body_bytes(&self) -> &[u8] {
        &self.body
    }

    pub(crate) fn into_parts(self) -> (StatusCode, HeaderMap, Vec<u8>) {
        (self.status, self.headers, self.body)
    }
}

impl From<LocalResponse> for http::Response<Vec<u8>> {
    /// Turns the local response into an `http::Response`, handy in tests.
    ///
    /// ```
    /// use weft_sdk::{http::StatusCode, LocalResponse};
    /// let r: weft_sdk::http::Response<Vec<u8>> = LocalResponse::new(StatusCode::OK).body("x").into();
    /// assert_eq!(r.body(), b"x");
    /// ```
    fn from(local: LocalResponse) -> Self {
        let (status, headers, body) = local.into_parts();
        let mut response = http::Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }
}

/// Where the proxy should send the request.
///
/// ```
/// use weft_sdk::{Action, Upstream};
/// let to_shard: Action = Upstream::new("sessions").hash_key("user-42").into();
/// assert!(matches!(to_shard, Action::Route(u) if u.hash_key.as_deref() == Some("user-42")));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// A cluster named in the proxy's config.
    pub cluster: String,
    /// Key for clusters balanced by consistent hash; overrides the configured header.
    pub hash_key: Option<String>,
}

impl Upstream {
    /// The named cluster, with no hash key.
    ///
    /// ```
    /// assert_eq!(weft_sdk::Upstream::new("api").cluster, "api");
    /// ```
    pub fn new(cluster: impl Into<String>) -> Self {
        Self {
            cluster: cluster.into(),
            hash_key: None,
        }
    }

    /// Sets the key for consistent-hash balancing.
    ///
    /// ```
    /// let u = weft_sdk::Upstream::new("api").hash_key("tenant-7");
    /// assert_eq!(u.hash_key.as_deref(), Some("tenant-7"));
    /// ```
    pub fn hash_key(mut self, key: impl Into<String>) -> Self {
        self.hash_key = Some(key.into());
        self
    }
}
