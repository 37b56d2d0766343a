//! Typed views of the request, the response and their trailers.
//!
//! A view holds nothing: every method is one host call on the message the current
//! request is at, so a filter pays only for what it reads or writes.

use std::convert::Infallible;
use std::fmt;
use std::marker::PhantomData;

use http::header::{HeaderName, HeaderValue, InvalidHeaderName, InvalidHeaderValue};
use http::uri::{Authority, InvalidUri, PathAndQuery, Scheme};
use http::{HeaderMap, Method, StatusCode};

use crate::host::{self, Message};
use crate::Context;

/// How a filter wants to see the body of the request or the response.
///
/// Chosen in that message's headers phase with
/// [`RequestView::set_body_mode`] or [`ResponseView::set_body_mode`].
///
/// ```
/// use weft_sdk::BodyMode;
/// assert_eq!(BodyMode::default(), BodyMode::Skip);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BodyMode {
    /// The body streams past the filter without a call (the default, and free).
    #[default]
    Skip,
    /// The body phase is called for each chunk as it streams.
    Stream,
    /// The proxy holds the headers, collects the whole body (up to the filter's limit)
    /// and calls the body phase once with all of it, before the headers go on. Headers
    /// can still be changed in that body phase.
    Buffer,
}

/// Why a header, pseudo-header or body mode could not be changed.
///
/// ```
/// use weft_sdk::HeaderError;
/// let err: HeaderError = "bad name".parse::<weft_sdk::http::HeaderName>().unwrap_err().into();
/// assert_eq!(err, HeaderError::InvalidName);
/// assert_eq!(err.to_string(), "invalid header name");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HeaderError {
    /// Not a valid HTTP field name.
    InvalidName,
    /// Not a valid HTTP field value (or method, path, authority, status).
    InvalidValue,
    /// May not be changed in this phase (for example response headers already sent),
    /// or the pseudo-header does not exist here (a status before the response exists).
    Immutable,
    /// The filter's size limit for the headers it writes was exceeded.
    TooLarge,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeaderError::InvalidName => "invalid header name",
            HeaderError::InvalidValue => "invalid header value",
            HeaderError::Immutable => "header cannot be changed in this phase",
            HeaderError::TooLarge => "header size limit exceeded",
        })
    }
}

impl std::error::Error for HeaderError {}

impl From<InvalidHeaderName> for HeaderError {
    fn from(_: InvalidHeaderName) -> Self {
        HeaderError::InvalidName
    }
}

impl From<InvalidHeaderValue> for HeaderError {
    fn from(_: InvalidHeaderValue) -> Self {
        HeaderError::InvalidValue
    }
}

impl From<InvalidUri> for HeaderError {
    fn from(_: InvalidUri) -> Self {
        HeaderError::InvalidValue
    }
}

impl From<http::method::InvalidMethod> for HeaderError {
    fn from(_: http::method::InvalidMethod) -> Self {
        HeaderError::InvalidValue
    }
}

impl From<Infallible> for HeaderError {
    fn from(never: Infallible) -> Self {
        match never {}
    }
}

/// Converts a name into a `HeaderName`, mapping the error.
mod sealed {
    pub trait Sealed {}
}

/// A header name the header setters take: a [`HeaderName`] (such as the `http`
/// crate's constants) or a string.
///
/// A string goes to the proxy as it is, which checks it as it makes the change (an
/// invalid one gets [`HeaderError::InvalidName`]; upper case is folded): parsing it
/// into a `HeaderName` in the filter first would check it twice and copy it once.
///
/// ```
/// use weft_sdk::http::header::VARY;
/// fn names(ctx: &weft_sdk::Context, custom: String) -> Result<(), weft_sdk::HeaderError> {
///     ctx.response().set_header(VARY, "accept")?;
///     ctx.response().set_header("x-static", "1")?;
///     ctx.response().set_header(custom, "2")
/// }
/// ```
pub trait IntoHeaderName: sealed::Sealed {
    #[doc(hidden)]
    fn with_name<R>(self, f: impl FnOnce(&str) -> R) -> R;
}

/// A header value the header setters take: a [`HeaderValue`], a string, bytes, or
/// an integer.
///
/// Like names, values go to the proxy as they are and are checked there (an invalid
/// one gets [`HeaderError::InvalidValue`]).
///
/// ```
/// fn values(ctx: &weft_sdk::Context) -> Result<(), weft_sdk::HeaderError> {
///     ctx.response().set_header("x-a", "text")?;
///     ctx.response().set_header("x-b", format!("{}-{}", 1, 2))?;
///     ctx.response().set_header("x-c", b"bytes".as_slice())?;
///     ctx.response().set_header("x-d", 42u64)
/// }
/// ```
pub trait IntoHeaderValue: sealed::Sealed {
    #[doc(hidden)]
    fn with_value<R>(self, f: impl FnOnce(&[u8]) -> R) -> R;
}

macro_rules! names {
    ($($t:ty => |$n:ident| $e:expr),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl IntoHeaderName for $t {
            fn with_name<R>(self, f: impl FnOnce(&str) -> R) -> R {
                let $n = self;
                f($e)
            }
        }
    )*};
}

names! {
    HeaderName => |n| n.as_str(),
    &HeaderName => |n| n.as_str(),
    &str => |n| n,
    String => |n| n.as_str(),
    &String => |n| n.as_str(),
}

macro_rules! values {
    ($($t:ty => |$v:ident| $e:expr),* $(,)?) => {$(
        impl IntoHeaderValue for $t {
            fn with_value<R>(self, f: impl FnOnce(&[u8]) -> R) -> R {
                let $v = self;
                f($e)
            }
        }
    )*};
}

// `&str`, `String` and `&String` are sealed by `names!` already.
impl sealed::Sealed for HeaderValue {}
impl sealed::Sealed for &HeaderValue {}
impl sealed::Sealed for &[u8] {}
impl sealed::Sealed for Vec<u8> {}
impl sealed::Sealed for &Vec<u8> {}
impl<const N: usize> sealed::Sealed for &[u8; N] {}

values! {
    HeaderValue => |v| v.as_bytes(),
    &HeaderValue => |v| v.as_bytes(),
    &str => |v| v.as_bytes(),
    String => |v| v.as_bytes(),
    &String => |v| v.as_bytes(),
    &[u8] => |v| v,
    Vec<u8> => |v| v.as_slice(),
    &Vec<u8> => |v| v.as_slice(),
}

impl<const N: usize> IntoHeaderValue for &[u8; N] {
    fn with_value<R>(self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self.as_slice())
    }
}

macro_rules! integers {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl IntoHeaderValue for $t {
            fn with_value<R>(self, f: impl FnOnce(&[u8]) -> R) -> R {
                f(self.to_string().as_bytes())
            }
        }
    )*};
}

integers!(u16, u32, u64, usize, i16, i32, i64, isize);

/// Parses the host's header list, skipping any name or value that is not valid HTTP.
pub(crate) fn header_map(raw: Vec<(String, Vec<u8>)>) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(raw.len());
    for (name, value) in raw {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::try_from(value),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// The header methods every view has, documented with the view's own accessor.
macro_rules! header_methods {
    ($accessor:literal) => {
        #[doc = concat!(
            "The first value of a header, if any. Names are case-insensitive; a value that is ",
            "not valid HTTP reads as absent.\n\n```\n",
            "fn api_key(ctx: &weft_sdk::Context) -> Option<weft_sdk::http::HeaderValue> {\n",
            "    ctx.", $accessor, "().header(\"x-api-key\")\n}\n```"
        )]
        pub fn header(&self, name: impl AsRef<str>) -> Option<HeaderValue> {
            host::header(self.message(), name.as_ref()).and_then(|v| HeaderValue::try_from(v).ok())
        }

        #[doc = concat!(
            "Every value of a header, in order (values that are not valid HTTP are skipped).\n\n```\n",
            "use weft_sdk::http::header::ACCEPT;\n",
            "fn accepts(ctx: &weft_sdk::Context) -> usize {\n",
            "    ctx.", $accessor, "().header_all(ACCEPT).len()\n}\n```"
        )]
        pub fn header_all(&self, name: impl AsRef<str>) -> Vec<HeaderValue> {
            host::header_all(self.message(), name.as_ref())
                .into_iter()
                .filter_map(|v| HeaderValue::try_from(v).ok())
                .collect()
        }

        #[doc = concat!(
            "Every header, in order. This copies them all out of the proxy: prefer ",
            "[`header`](Self::header) when you know the name.\n\n```\n",
            "fn count(ctx: &weft_sdk::Context) -> usize {\n",
            "    ctx.", $accessor, "().headers().len()\n}\n```"
        )]
        pub fn headers(&self) -> HeaderMap {
            header_map(host::headers(self.message()))
        }

        #[doc = concat!(
            "Replaces every value of a header with this one. Takes a `HeaderName` (the `http` ",
            "constants) or a string, and a `HeaderValue`, a string, bytes or an integer ",
            "(see [`IntoHeaderName`] and [`IntoHeaderValue`]); the proxy checks them.\n\n",
            "```\n",
            "fn tag(ctx: &weft_sdk::Context) -> Result<(), weft_sdk::HeaderError> {\n",
            "    ctx.", $accessor, "().set_header(\"x-filtered-by\", \"hello-filter\")\n}\n```"
        )]
        pub fn set_header(
            &self,
            name: impl IntoHeaderName,
            value: impl IntoHeaderValue,
        ) -> Result<(), HeaderError> {
            name.with_name(|n| value.with_value(|v| host::set_header(self.message(), n, v)))
        }

        #[doc = concat!(
            "Adds a value to a header, keeping the values it has.\n\n```\n",
            "use weft_sdk::http::header::VARY;\n",
            "fn vary(ctx: &weft_sdk::Context) -> Result<(), weft_sdk::HeaderError> {\n",
            "    ctx.", $accessor, "().append_header(VARY, \"x-api-key\")\n}\n```"
        )]
        pub fn append_header(
            &self,
            name: impl IntoHeaderName,
            value: impl IntoHeaderValue,
        ) -> Result<(), HeaderError> {
            name.with_name(|n| value.with_value(|v| host::append_header(self.message(), n, v)))
        }

        #[doc = concat!(
            "Removes every value of a header (nothing happens if it is absent).\n\n```\n",
            "fn strip(ctx: &weft_sdk::Context) -> Result<(), weft_sdk::HeaderError> {\n",
            "    ctx.", $accessor, "().remove_header(\"x-internal\")\n}\n```"
        )]
        pub fn remove_header(&self, name: impl IntoHeaderName) -> Result<(), HeaderError> {
            name.with_name(|n| host::remove_header(self.message(), n))
        }
    };
}

/// The request: its method, scheme, authority, path and headers.
///
/// Get it with [`Context::request`]. Changes made in the request-headers phase go to
/// the next filter and then the upstream.
///
/// ```
/// use weft_sdk::{http::Method, Context};
/// fn is_read(ctx: &Context) -> bool {
///     matches!(ctx.request().method(), Method::GET | Method::HEAD)
/// }
/// ```
#[derive(Clone, Copy)]
pub struct RequestView<'a> {
    _ctx: PhantomData<&'a Context>,
}

impl fmt::Debug for RequestView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RequestView")
    }
}

impl RequestView<'_> {
    pub(crate) fn new() -> Self {
        Self { _ctx: PhantomData }
    }

    /// The request method, as the client sent it or a filter set it.
    ///
    /// The proxy only holds valid methods; should it ever hand over one that is not an
    /// HTTP token, this reads as the extension method `INVALID`, which matches no rule.
    ///
    /// ```
    /// use weft_sdk::{http::Method, Context};
    /// fn is_post(ctx: &Context) -> bool {
    ///     ctx.request().method() == Method::POST
    /// }
    /// ```
    pub fn method(&self) -> Method {
        let raw = host::method();
        Method::from_bytes(raw.as_bytes())
            .or_else(|_| Method::from_bytes(b"INVALID"))
            .unwrap_or_default()
    }

    /// Changes the method sent upstream.
    ///
    /// ```
    /// use weft_sdk::{http::Method, Context, HeaderError};
    /// fn head_to_get(ctx: &Context) -> Result<(), HeaderError> {
    ///     if ctx.request().method() == Method::HEAD {
    ///         ctx.request().set_method(Method::GET)?;
    ///     }
    ///     Ok(())
    /// }
    /// ```
    pub fn set_method(&self, method: Method) -> Result<(), HeaderError> {
        host::set_method(method.as_str())
    }

    /// `http` or `https`, as the client reached the proxy. (An unexpected value from the
    /// proxy reads as `http`, the less trusted of the two.)
    ///
    /// ```
    /// use weft_sdk::{http::uri::Scheme, Context};
    /// fn is_tls(ctx: &Context) -> bool {
    ///     ctx.request().scheme() == Scheme::HTTPS
    /// }
    /// ```
    pub fn scheme(&self) -> Scheme {
        Scheme::try_from(host::scheme().as_str()).unwrap_or(Scheme::HTTP)
    }

    /// The authority (the `Host` header or the `:authority` pseudo-header), if the
    /// request has one that parses.
    ///
    /// ```
    /// use weft_sdk::Context;
    /// fn host_name(ctx: &Context) -> Option<String> {
    ///     ctx.request().authority().map(|a| a.host().to_owned())
    /// }
    /// ```
    pub fn authority(&self) -> Option<Authority> {
        host::authority().and_then(|a| Authority::try_from(a.as_str()).ok())
    }

    /// Changes the authority sent upstream.
    ///
    /// ```
    /// use weft_sdk::{Context, HeaderError};
    /// fn rewrite(ctx: &Context) -> Result<(), HeaderError> {
    ///     ctx.request().set_authority("api.internal:8443")
    /// }
    /// ```
    pub fn set_authority<A>(&self, authority: A) -> Result<(), HeaderError>
    where
        A: TryInto<Authority>,
        A::Error: Into<HeaderError>,
    {
        let authority = authority.try_into().map_err(Into::into)?;
        host::set_authority(authority.as_str())
    }

    /// The path, without the query: `/items` for `/items?id=3`.
    ///
    /// ```
    /// use weft_sdk::Context;
    /// fn is_health_check(ctx: &Context) -> bool {
    ///     ctx.request().path() == "/healthz"
    /// }
    /// ```
    pub fn path(&self) -> String {
        let mut raw = host::path();
        if let Some(q) = raw.find('?') {
            raw.truncate(q);
        }
        raw
    }

    /// The query, without the `?`: `id=3` for `/items?id=3`; `None` when there is none.
    ///
    /// ```
    /// use weft_sdk::Context;
    /// fn has_query(ctx: &Context) -> bool {
    ///     ctx.request().query().is_some()
    /// }
    /// ```
    pub fn query(&self) -> Option<String> {
        let raw = host::path();
        raw.split_once('?').map(|(_, q)| q.to_owned())
    }

    /// The path and query, as the client sent them: `/items?id=3`.
    ///
    /// ```
    /// use weft_sdk::Context;
    /// fn target(ctx: &Context) -> String {
    ///     ctx.request().path_and_query()
    /// }
    /// ```
    pub fn path_and_query(&self) -> String {
        host::path()
    }

    /// Changes the path and query sent upstream.
    ///
    /// ```
    /// use weft_sdk::{Context, HeaderError};
    /// fn version(ctx: &Context) -> Result<(), HeaderError> {
    ///     let path = format!("/v2{}", ctx.request().path_and_query());
    ///     ctx.request().set_path(path)
    /// }
    /// ```
    pub fn set_path<P>(&self, path_and_query: P) -> Result<(), HeaderError>
    where
        P: TryInto<PathAndQuery>,
        P::Error: Into<HeaderError>,
    {
        let path = path_and_query.try_into().map_err(Into::into)?;
        host::set_path(path.as_str())
    }

    /// Asks to see the request body (in the request-headers phase only); the
    /// default is [`BodyMode::Skip`].
    ///
    /// ```
    /// use weft_sdk::{BodyMode, Context, HeaderError};
    /// fn want_body(ctx: &Context) -> Result<(), HeaderError> {
    ///     ctx.request().set_body_mode(BodyMode::Buffer)
    /// }
    /// ```
    pub fn set_body_mode(&self, mode: BodyMode) -> Result<(), HeaderError> {
        host::set_body_mode(Message::Request, mode)
    }

    fn message(&self) -> Message {
        Message::Request
    }

    header_methods!("request");
}

/// The response: its status and headers.
///
/// Get it with [`Context::response`]; it exists from the response-headers phase on
/// (before that, [`status`](Self::status) is `None` and writes fail with
/// [`HeaderError::Immutable`]).
///
/// ```
/// use weft_sdk::Context;
/// fn failed(ctx: &Context) -> bool {
///     ctx.response().status().is_some_and(|s| s.is_server_error())
/// }
/// ```
#[derive(Clone, Copy)]
pub struct ResponseView<'a> {
    _ctx: PhantomData<&'a Context>,
}

impl fmt::Debug for ResponseView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseView")
    }
}

impl ResponseView<'_> {
    pub(crate) fn new() -> Self {
        Self { _ctx: PhantomData }
    }

    /// The response status; `None` before the response exists.
    ///
    /// ```
    /// use weft_sdk::{http::StatusCode, Context};
    /// fn not_found(ctx: &Context) -> bool {
    ///     ctx.response().status() == Some(StatusCode::NOT_FOUND)
    /// }
    /// ```
    pub fn status(&self) -> Option<StatusCode> {
        host::status().and_then(|s| StatusCode::from_u16(s).ok())
    }

    /// Changes the status sent to the client.
    ///
    /// ```
    /// use weft_sdk::{http::StatusCode, Context, HeaderError};
    /// fn hide_errors(ctx: &Context) -> Result<(), HeaderError> {
    ///     ctx.response().set_status(StatusCode::BAD_GATEWAY)
    /// }
    /// ```
    pub fn set_status(&self, status: StatusCode) -> Result<(), HeaderError> {
        host::set_status(status.as_u16())
    }

    /// Asks to see the response body (in the response-headers phase only); the
    /// default is [`BodyMode::Skip`].
    ///
    /// ```
    /// use weft_sdk::{BodyMode, Context, HeaderError};
    /// fn stream(ctx: &Context) -> Result<(), HeaderError> {
    ///     ctx.response().set_body_mode(BodyMode::Stream)
    /// }
    /// ```
    pub fn set_body_mode(&self, mode: BodyMode) -> Result<(), HeaderError> {
        host::set_body_mode(Message::Response, mode)
    }

    fn message(&self) -> Message {
        Message::Response
    }

    header_methods!("response");
}

/// The trailers of the request or the response.
///
/// Get them with [`Context::request_trailers`] or [`Context::response_trailers`];
/// they can be changed in the matching trailers phase.
///
/// ```
/// fn grpc_status(ctx: &weft_sdk::Context) -> Option<weft_sdk::http::HeaderValue> {
///     ctx.response_trailers().header("grpc-status")
/// }
/// ```
#[derive(Clone, Copy)]
pub struct TrailersView<'a> {
    msg: Message,
    _ctx: PhantomData<&'a Context>,
}

impl fmt::Debug for TrailersView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrailersView")
            .field("of", &self.msg)
            .finish()
    }
}

impl TrailersView<'_> {
    pub(crate) fn new(msg: Message) -> Self {
        Self {
            msg,
            _ctx: PhantomData,
        }
    }

    fn message(&self) -> Message {
        self.msg
    }

    header_methods!("response_trailers");
}
