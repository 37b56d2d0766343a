//! The `Filter` trait and its configuration.

use std::fmt;

use serde::de::DeserializeOwned;

use crate::metrics::MetricError;
use crate::{Action, BodyAction, Completion, Context};

/// A Weft filter: built once from its config, then called for each phase of each request.
///
/// Only [`configure`](Self::configure) is required. Every phase has a default that
/// continues and tells the proxy to stop calling that phase for this filter, so a
/// phase you do not implement costs nothing after its first call.
///
/// Phases are `async` so outbound HTTP calls ([`outbound::send`](crate::outbound::send))
/// are ordinary `.await`s. The proxy suspends the filter while a call is in flight, so
/// await only the SDK's futures (or futures built from them, such as a join of several
/// calls): a future that waits for anything else fails the phase.
///
/// State that lives as long as the filter (parsed config, metric handles) is in `self`;
/// state of one request goes in [`Context::extensions_mut`].
///
/// ```
/// use serde::Deserialize;
/// use weft_sdk::{http::StatusCode, Action, ConfigError, Context, Filter};
///
/// #[derive(Deserialize)]
/// struct Config {
///     /// Paths that need no key.
///     #[serde(default)]
///     public: Vec<String>,
/// }
///
/// struct Gate {
///     public: Vec<String>,
/// }
///
/// impl Filter for Gate {
///     type Config = Config;
///
///     fn configure(config: Config) -> Result<Self, ConfigError> {
///         Ok(Gate { public: config.public })
///     }
///
///     async fn on_request_headers(&self, ctx: &mut Context) -> Action {
///         let path = ctx.request().path();
///         if self.public.contains(&path) || ctx.request().header("authorization").is_some() {
///             Action::Continue
///         } else {
///             Action::respond(StatusCode::UNAUTHORIZED).into()
///         }
///     }
/// }
/// ```
// Phases run on the SDK's single-threaded executor, so their futures need not be `Send`.
#[allow(async_fn_in_trait)]
pub trait Filter: Sized + 'static {
    /// The filter's config, deserialized from the operator's JSON.
    ///
    /// Use `()` for a filter without config: it accepts an absent config, `null` and
    /// `{}`. A struct whose fields all have `#[serde(default)]` also accepts all three.
    /// Add `#[serde(deny_unknown_fields)]` to catch typos in the operator's config.
    ///
    /// ```
    /// #[derive(serde::Deserialize)]
    /// #[serde(deny_unknown_fields)]
    /// struct Config {
    ///     key: String,
    /// }
    /// ```
    type Config: DeserializeOwned;

    /// Builds the filter from its config, once per instance and before any request.
    ///
    /// An error refuses the config: the proxy does not build the chain holding the
    /// filter and shows the message to the operator. Define metrics here.
    ///
    /// ```
    /// use weft_sdk::{ConfigError, Filter};
    /// struct Limit(u32);
    /// impl Filter for Limit {
    ///     type Config = u32;
    ///     fn configure(max: u32) -> Result<Self, ConfigError> {
    ///         if max == 0 {
    ///             return Err(ConfigError::invalid("the limit must be at least 1"));
    ///         }
    ///         Ok(Limit(max))
    ///     }
    /// }
    /// ```
    fn configure(config: Self::Config) -> Result<Self, ConfigError>;

    /// The request's headers have arrived. Read or change them, choose a request body
    /// mode, answer, or route.
    ///
    /// ```
    /// use weft_sdk::{Action, Context, Filter};
    /// # struct Tag;
    /// impl Filter for Tag {
    ///     # type Config = ();
    ///     # fn configure(_: ()) -> Result<Self, weft_sdk::ConfigError> { Ok(Tag) }
    ///     // ...
    ///     async fn on_request_headers(&self, ctx: &mut Context) -> Action {
    ///         let _ = ctx.request().set_header("x-request-id", ctx.request_id().to_string());
    ///         Action::Continue
    ///     }
    /// }
    /// ```
    async fn on_request_headers(&self, ctx: &mut Context) -> Action {
        ctx.skip_phase();
        Action::Continue
    }

    /// A chunk of the request body (body mode [`Stream`](crate::BodyMode::Stream)), or
    /// all of it at once (body mode [`Buffer`](crate::BodyMode::Buffer)).
    ///
    /// ```
    /// use weft_sdk::{http::StatusCode, Action, BodyAction, BodyMode, Context, Filter};
    /// # struct NoSecrets;
    /// impl Filter for NoSecrets {
    ///     # type Config = ();
    ///     # fn configure(_: ()) -> Result<Self, weft_sdk::ConfigError> { Ok(NoSecrets) }
    ///     async fn on_request_headers(&self, ctx: &mut Context) -> Action {
    ///         let _ = ctx.request().set_body_mode(BodyMode::Buffer);
    ///         Action::Continue
    ///     }
    ///
    ///     async fn on_request_body(&self, _ctx: &mut Context, body: Vec<u8>, _end: bool) -> BodyAction {
    ///         if body.windows(6).any(|w| w == b"secret") {
    ///             return Action::respond(StatusCode::BAD_REQUEST).into();
    ///         }
    ///         BodyAction::Continue
    ///     }
    /// }
    /// ```
    async fn on_request_body(
        &self,
        ctx: &mut Context,
        chunk: Vec<u8>,
        end_of_stream: bool,
    ) -> BodyAction {
        let _ = (chunk, end_of_stream);
        ctx.skip_phase();
        BodyAction::Continue
    }

    /// The request's trailers have arrived.
    ///
    /// ```
    /// use weft_sdk::{Action, Context, Filter};
    /// # struct T;
    /// impl Filter for T {
    ///     # type Config = ();
    ///     # fn configure(_: ()) -> Result<Self, weft_sdk::ConfigError> { Ok(T) }
    ///     async fn on_request_trailers(&self, ctx: &mut Context) -> Action {
    ///         let _ = ctx.request_trailers().remove_header("x-debug");
    ///         Action::Continue
    ///     }
    /// }
    /// ```
    async fn on_request_trailers(&self, ctx: &mut Context) -> Action {
        ctx.skip_phase();
        Action::Continue
    }

    /// The response's headers have arrived. Read or change them, choose a response
    /// body mode, answer instead, or ask for a retry.
    ///
    /// ```
    /// use weft_sdk::{Action, Context, Filter};
    /// # struct T;
    /// impl Filter for T {
    ///     # type Config = ();
    ///     # fn configure(_: ()) -> Result<Self, weft_sdk::ConfigError> { Ok(T) }
    ///     async fn on_response_headers(&self, ctx: &mut Context) -> Action {
    ///         if ctx.response().status().is_some_and(|s| s.as_u16() == 503) {
    ///             return Action::Retry;
    ///         }
    ///         Action::Continue
    ///     }
    /// }
    /// ```
    async fn on_response_headers(&self, ctx: &mut Context) -> Action {
        ctx.skip_phase();
        Action::Continue
    }

    /// A chunk of the response body, or all of it (see
    /// [`on_request_body`](Self::on_request_body)).
    ///
    /// ```
    /// use weft_sdk::{BodyAction, Context, Filter};
    /// # struct Upper;
    /// impl Filter for Upper {
    ///     # type Config = ();
    ///     # fn configure(_: ()) -> Result<Self, weft_sdk::ConfigError> { Ok(Upper) }
    ///     async fn on_response_body(&self, _: &mut Context, chunk: Vec<u8>, _: bool) -> BodyAction {
    ///         BodyAction::Replace(chunk.to_ascii_uppercase())
    ///     }
    /// }
    /// ```
    async fn on_response_body(
        &self,
        ctx: &mut Context,
        chunk: Vec<u8>,
        end_of_stream: bool,
    ) -> BodyAction {
        let _ = (chunk, end_of_stream);
        ctx.skip_phase();
        BodyAction::Continue
    }

    /// The response's trailers have arrived.
    ///
    /// ```
    /// use weft_sdk::{Action, Context, Filter};
    /// # struct T;
    /// impl Filter for T {
    ///     # type Config = ();
    ///     # fn configure(_: ()) -> Result<Self, weft_sdk::ConfigError> { Ok(T) }
    ///     async fn on_response_trailers(&self, ctx: &mut Context) -> Action {
    ///         if let Some(status) = ctx.response_trailers().header("grpc-status") {
    ///             weft_sdk::log::debug!("grpc-status {status:?}");
    ///         }
    ///         Action::Continue
    ///     }
    /// }
    /// ```
    async fn on_response_trailers(&self, ctx: &mut Context) -> Action {
        ctx.skip_phase();
        Action::Continue
    }

    /// After the response was sent (or the request failed), for telemetry. The
    /// request's [`Context`] is dropped right after.
    ///
    /// ```
    /// use weft_sdk::{metrics::Histogram, Completion, ConfigError, Context, Filter};
    /// struct Timing(Histogram);
    /// impl Filter for Timing {
    ///     type Config = ();
    ///     fn configure(_: ()) -> Result<Self, ConfigError> {
    ///         let buckets = [0.005, 0.05, 0.5, 5.0];
    ///         Ok(Timing(Histogram::new("request_duration_seconds", "Request time", &[], &buckets)?))
    ///     }
    ///     async fn on_complete(&self, _ctx: &mut Context, info: &Completion) {
    ///         self.0.observe(&[], info.duration.as_secs_f64());
    ///     }
    /// }
    /// ```
    async fn on_complete(&self, ctx: &mut Context, info: &Completion) {
        let _ = info;
        ctx.skip_phase();
    }
}

/// Why a filter refused its config.
///
/// The proxy shows the [`Display`](fmt::Display) text to the operator.
///
/// ```
/// use weft_sdk::ConfigError;
/// let err = ConfigError::invalid("`key` must not be empty");
/// assert_eq!(err.to_string(), "invalid config: `key` must not be empty");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config is not JSON.
    NotJson {
        /// serde_json's message, with line and column.
        message: String,
    },
    /// The JSON does not fit the filter's [`Filter::Config`] type.
    Mismatch {
        /// Where in the config, such as `limits.per_second` or `routes[2]`; `None` at the top.
        path: Option<String>,
        /// serde's message, such as "missing field `key`", with line and column.
        message: String,
    },
    /// [`Filter::configure`] refused the values.
    Invalid(String),
    /// A metric could not be defined.
    Metric(MetricError),
}

impl ConfigError {
    /// A refusal from [`Filter::configure`], with a message for the operator.
    ///
    /// ```
    /// let err = weft_sdk::ConfigError::invalid("unknown algorithm \"md5\"");
    /// assert!(matches!(err, weft_sdk::ConfigError::Invalid(_)));
    /// ```
    pub fn invalid(message: impl Into<String>) -> Self {
        ConfigError::Invalid(message.into())
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NotJson { message } => write!(f, "config is not valid JSON: {message}"),
            ConfigError::Mismatch {
                path: Some(path),
                message,
            } => write!(f, "invalid config at `{path}`: {message}"),
            ConfigError::Mismatch {
                path: None,
                message,
            } => write!(f, "invalid config: {message}"),
            ConfigError::Invalid(message) => write!(f, "invalid config: {message}"),
            ConfigError::Metric(e) => write!(f, "cannot define metric: {e}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Metric(e) => Some(e),
            _ => None,
        }
    }
}

impl From<MetricError> for ConfigError {
    fn from(e: MetricError) -> Self {
        ConfigError::Metric(e)
    }
}

/// Deserializes the operator's JSON into the filter's config type.
///
/// An empty config reads as `null`. If `null` does not fit the type, `{}` is tried, and
/// the other way round, so `()` and all-default structs accept both.
pub(crate) fn parse_config<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    let trimmed = bytes.trim_ascii();
    let input: &[u8] = if trimmed.is_empty() { b"null" } else { trimmed };
    match from_json(input) {
        Ok(config) => Ok(config),
        Err(first) => {
            let alternative: Option<&[u8]> = if input == b"null" {
                Some(b"{}")
            } else if is_empty_object(input) {
                Some(b"null")
            } else {
                None
            };
            alternative.and_then(|alt| from_json(alt).ok()).ok_or(first)
        }
    }
}

fn from_json<T: DeserializeOwned>(input: &[u8]) -> Result<T, ConfigError> {
    // Check the syntax of the whole document first: serde stops at the first value that
    // does not fit the type, so `{oops` for `()` would otherwise read as a type mismatch.
    serde_json::from_slice::<serde::de::IgnoredAny>(input).map_err(|e| json_error(None, e))?;
    let mut de = serde_json::Deserializer::from_slice(input);
    let config = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        json_error(Some(path), e.into_inner())
    })?;
    de.end().map_err(|e| json_error(None, e))?;
    Ok(config)
}

fn json_error(path: Option<String>, e: serde_json::Error) -> ConfigError {
    let message = e.to_string();
    if e.is_data() {
        ConfigError::Mismatch {
            path: path.filter(|p| p != "."),
            message,
        }
    } else {
        ConfigError::NotJson { message }
    }
}

fn is_empty_object(input: &[u8]) -> bool {
    input
        .strip_prefix(b"{")
        .and_then(|rest| rest.strip_suffix(b"}"))
        .is_some_and(|inner| inner.trim_ascii().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Keyed {
        key: String,
    }

    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(default)]
    struct Defaults {
        limit: u32,
    }

    #[derive(Debug, Deserialize)]
    struct Nested {
        #[allow(dead_code)] // read through serde only
        limits: Vec<Defaults>,
    }

    #[test]
    fn unit_accepts_empty_null_and_empty_object() {
        for input in [&b""[..], b"  ", b"null", b"{}", b" { } "] {
            assert_eq!(parse_config::<()>(input), Ok(()), "{input:?}");
        }
        assert!(parse_config::<()>(b"[1]").is_err());
    }

    #[test]
    fn all_default_struct_accepts_empty_null_and_empty_object() {
        for input in [&b""[..], b"null", b"{}"] {
            assert_eq!(parse_config::<Defaults>(input), Ok(Defaults::default()));
        }
        assert_eq!(
            parse_config::<Defaults>(br#"{"limit": 3}"#),
            Ok(Defaults { limit: 3 })
        );
    }

    #[test]
    fn missing_field_is_a_mismatch_at_the_top() {
        let err = parse_config::<Keyed>(b"{}").unwrap_err();
        assert!(
            matches!(&err, ConfigError::Mismatch { path: None, message } if message.contains("missing field `key`")),
            "{err:?}"
        );
        assert!(err
            .to_string()
            .starts_with("invalid config: missing field `key`"));
    }

    #[test]
    fn wrong_type_names_the_path() {
        let err =
            parse_config::<Nested>(br#"{"limits": [{"limit": 1}, {"limit": "x"}]}"#).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Mismatch { path: Some(p), .. } if p == "limits[1].limit"),
            "{err:?}"
        );
    }

    #[test]
    fn unknown_field_is_reported() {
        let err = parse_config::<Keyed>(br#"{"key": "a", "kye": "b"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `kye`"), "{err}");
    }

    #[test]
    fn not_json_is_reported_as_such() {
        let err = parse_config::<Keyed>(b"key=s3cret").unwrap_err();
        assert!(matches!(err, ConfigError::NotJson { .. }), "{err:?}");
        assert!(err.to_string().starts_with("config is not valid JSON"));
        let trailing = parse_config::<Keyed>(br#"{"key": "a"} x"#).unwrap_err();
        assert!(
            matches!(trailing, ConfigError::NotJson { .. }),
            "{trailing:?}"
        );
        let broken = parse_config::<()>(b"{oops").unwrap_err();
        assert!(matches!(broken, ConfigError::NotJson { .. }), "{broken:?}");
    }
}
