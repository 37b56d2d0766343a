//! The Weft quickstart filter.
//!
//! Answers `401 Unauthorized` to requests whose `x-api-key` header is not the configured
//! key, adds `x-filtered-by: hello-filter` to every response it lets through, and counts
//! its verdicts in `weft_filter_hello_requests_total{outcome="allowed"|"denied"}`.
//!
//! Config: `{"key": "..."}`.

use serde::Deserialize;
use weft_sdk::crypto::constant_time_eq;
use weft_sdk::http::header::{HeaderValue, CONTENT_TYPE, WWW_AUTHENTICATE};
use weft_sdk::http::StatusCode;
use weft_sdk::metrics::Counter;
use weft_sdk::{Action, ConfigError, Context, Filter};

/// The operator's config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The API key a request must carry in `x-api-key`.
    pub key: String,
}

/// The filter: the key to compare with, and its metric.
pub struct Hello {
    key: String,
    requests: Counter,
}

impl Filter for Hello {
    type Config = Config;

    fn configure(config: Config) -> Result<Self, ConfigError> {
        if config.key.is_empty() {
            return Err(ConfigError::invalid("`key` must not be empty"));
        }
        let requests = Counter::new(
            "hello_requests_total",
            "Requests hello-filter allowed or denied",
            &["outcome"],
        )?;
        Ok(Hello {
            key: config.key,
            requests,
        })
    }

    async fn on_request_headers(&self, ctx: &mut Context) -> Action {
        let key = ctx.request().header("x-api-key");
        // Constant time, so response timing does not reveal how much of a guess was right.
        if key.is_some_and(|k| constant_time_eq(k.as_bytes(), self.key.as_bytes())) {
            self.requests.inc(&["allowed"]);
            // Written now, made by the proxy on the response when it comes: the filter
            // needs no response phase, so a request costs one call into it, not two.
            if let Err(e) = ctx.response().set_header("x-filtered-by", "hello-filter") {
                weft_sdk::log::warn!("could not tag the response: {e}");
            }
            return Action::Continue;
        }
        self.requests.inc(&["denied"]);
        Action::respond(StatusCode::UNAUTHORIZED)
            .header(WWW_AUTHENTICATE, HeaderValue::from_static("ApiKey"))
            .header(CONTENT_TYPE, HeaderValue::from_static("text/plain"))
            .body("missing or wrong x-api-key\n")
            .into()
    }
}

weft_sdk::export_filter!(Hello);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use weft_sdk::http::{Request, Response};
    use weft_sdk::testing::{Phase, TestHost};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn host() -> Result<TestHost<Hello>, ConfigError> {
        TestHost::new(json!({"key": "s3cret"}))
    }

    fn denied(action: &Action) -> bool {
        matches!(action, Action::Respond(r)
            if r.status() == StatusCode::UNAUTHORIZED
                && r.body_bytes() == b"missing or wrong x-api-key\n"
                && r.headers()[WWW_AUTHENTICATE] == "ApiKey")
    }

    #[test]
    fn missing_key_is_401() -> TestResult {
        let mut t = host()?;
        let action = t.request(Request::get("/").body(())?).on_request_headers();
        assert!(denied(&action), "{action:?}");
        Ok(())
    }

    #[test]
    fn wrong_key_is_401() -> TestResult {
        let mut t = host()?;
        let req = Request::get("/").header("x-api-key", "guess").body(())?;
        let action = t.request(req).on_request_headers();
        assert!(denied(&action), "{action:?}");
        Ok(())
    }

    #[test]
    fn right_key_continues() -> TestResult {
        let mut t = host()?;
        let req = Request::get("/items")
            .header("x-api-key", "s3cret")
            .body(())?;
        assert_eq!(t.request(req).on_request_headers(), Action::Continue);
        Ok(())
    }

    #[test]
    fn response_is_tagged() -> TestResult {
        let mut t = host()?;
        let req = Request::get("/").header("x-api-key", "s3cret").body(())?;
        t.request(req).on_request_headers();
        let response = Response::builder().status(200).body(())?;
        assert_eq!(t.response(response).on_response_headers(), Action::Continue);
        let sent = t.current_response().ok_or("no response")?;
        assert_eq!(sent.headers()["x-filtered-by"], "hello-filter");
        assert!(t.logs().is_empty(), "{:?}", t.logs());
        // Tagged from the request phase: the response phase is not the filter's.
        assert_eq!(t.skipped(), [Phase::ResponseHeaders]);
        Ok(())
    }

    #[test]
    fn a_refused_response_is_not_tagged() -> TestResult {
        let mut t = host()?;
        let action = t.request(Request::get("/").body(())?).on_request_headers();
        let Action::Respond(answer) = action else {
            return Err(format!("{action:?}").into());
        };
        assert!(answer.headers().get("x-filtered-by").is_none());
        let response = Response::builder().status(200).body(())?;
        t.response(response).on_response_headers();
        let sent = t.current_response().ok_or("no response")?;
        assert!(sent.headers().get("x-filtered-by").is_none());
        Ok(())
    }

    #[test]
    fn unimplemented_phases_are_skipped() -> TestResult {
        let mut t = host()?;
        t.on_request_body("x", true);
        t.on_response_trailers();
        assert_eq!(t.skipped(), [Phase::RequestBody, Phase::ResponseTrailers]);
        assert!(!t.is_skipped(Phase::RequestHeaders));
        Ok(())
    }

    #[test]
    fn outcomes_are_counted() -> TestResult {
        let mut t = host()?;
        for key in ["s3cret", "nope", "s3cret"] {
            let req = Request::get("/").header("x-api-key", key).body(())?;
            t.request(req).on_request_headers();
        }
        t.request(Request::get("/").body(())?).on_request_headers();
        assert_eq!(t.metric("hello_requests_total", &["allowed"]), Some(2.0));
        assert_eq!(t.metric("hello_requests_total", &["denied"]), Some(2.0));
        Ok(())
    }

    #[test]
    fn missing_key_in_config_is_a_clear_error() {
        let err = TestHost::<Hello>::new(json!({})).err();
        let message = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("missing field `key`"), "{message}");
    }

    #[test]
    fn config_that_is_not_json_is_a_clear_error() {
        let err = TestHost::<Hello>::with_raw_config("key=s3cret").err();
        assert!(matches!(err, Some(ConfigError::NotJson { .. })), "{err:?}");
    }

    #[test]
    fn misspelt_or_empty_key_is_refused() {
        let typo = TestHost::<Hello>::new(json!({"kye": "s3cret"})).err();
        let message = typo.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("unknown field `kye`"), "{message}");

        let empty = TestHost::<Hello>::new(json!({"key": ""})).err();
        assert_eq!(
            empty.map(|e| e.to_string()).as_deref(),
            Some("invalid config: `key` must not be empty")
        );
    }
}
