//! The benchmark filter: reads the request header `x-bench-in` and adds
//! `x-wasm-filter: seen` (or `1`) to the response — the same work as the proxy-wasm
//! filter the Envoy anchor runs, so the two measure the cost of the host/guest path.
//!
//! By default it does all of it in one call: in the request-headers phase it writes
//! the response header, which the proxy makes on the response when it arrives, and
//! leaves the response phases to the SDK's defaults. With `{"two_phase": true}` it
//! works as a proxy-wasm filter must: it remembers what it saw in a request value
//! (kept by the proxy, so the filter's instance serves other requests in between) and
//! sets the header in the response-headers phase, two calls per request.
//!
//! With `{"floor": true}` it does none of that: its request-headers phase returns
//! "continue" without a host call, so a request costs one call into the guest and
//! nothing else. What the proxy and the runtime spend on that call is the floor under
//! any filter's cost (docs/benchmarks.md, "The floor of a filter call").

use serde::Deserialize;
use weft_sdk::{Action, ConfigError, Context, Filter};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Set the header in the response-headers phase rather than from the request's.
    #[serde(default)]
    two_phase: bool,
    /// Do nothing: measure the call alone.
    #[serde(default)]
    floor: bool,
}

pub struct Bench {
    two_phase: bool,
    floor: bool,
}

const SAW: &str = "bench.saw";
const HEADER: &str = "x-wasm-filter";

fn tag(saw: bool) -> &'static str {
    if saw {
        "seen"
    } else {
        "1"
    }
}

impl Filter for Bench {
    type Config = Config;

    fn configure(config: Config) -> Result<Self, ConfigError> {
        Ok(Bench {
            two_phase: config.two_phase,
            floor: config.floor,
        })
    }

    async fn on_request_headers(&self, ctx: &mut Context) -> Action {
        if self.floor {
            return Action::Continue;
        }
        let saw = ctx.request().header("x-bench-in").is_some();
        if !self.two_phase {
            let _ = ctx.response().set_header(HEADER, tag(saw));
        } else if saw {
            let _ = ctx.set_value(SAW, b"1");
        }
        Action::Continue
    }

    async fn on_response_headers(&self, ctx: &mut Context) -> Action {
        if self.two_phase {
            let saw = ctx.value(SAW).is_some();
            let _ = ctx.response().set_header(HEADER, tag(saw));
        } else {
            ctx.skip_phase();
        }
        Action::Continue
    }
}

weft_sdk::export_filter!(Bench);

#[cfg(test)]
mod tests {
    use super::*;
    use weft_sdk::http::{Request, Response};
    use weft_sdk::testing::{Phase, TestHost};

    /// Both headers phases of one request; returns the host and the response's tag.
    fn run(
        config: serde_json::Value,
    ) -> Result<(TestHost<Bench>, Option<String>), Box<dyn std::error::Error>> {
        let mut t = TestHost::<Bench>::new(config)?;
        let action = t
            .request(Request::get("/").header("x-bench-in", "1").body(())?)
            .on_request_headers();
        assert_eq!(action, Action::Continue);
        let action = t
            .response(Response::builder().status(200).body(())?)
            .on_response_headers();
        assert_eq!(action, Action::Continue);
        let resp = t.current_response().ok_or("no response")?;
        let tag = match resp.headers().get("x-wasm-filter") {
            Some(v) => Some(v.to_str()?.to_string()),
            None => None,
        };
        assert!(!t.keeps_instance());
        Ok((t, tag))
    }

    #[test]
    fn tags_the_response_from_the_request_phase() -> Result<(), Box<dyn std::error::Error>> {
        let (t, tag) = run(serde_json::json!(null))?;
        assert_eq!(tag.as_deref(), Some("seen"));
        assert_eq!(t.skipped(), [Phase::ResponseHeaders]);
        Ok(())
    }

    #[test]
    fn the_floor_touches_nothing() -> Result<(), Box<dyn std::error::Error>> {
        let (t, tag) = run(serde_json::json!({"floor": true}))?;
        assert_eq!(tag, None);
        assert_eq!(t.skipped(), [Phase::ResponseHeaders]);
        Ok(())
    }

    #[test]
    fn two_phase_tags_the_response_in_its_own_phase() -> Result<(), Box<dyn std::error::Error>> {
        let (t, tag) = run(serde_json::json!({"two_phase": true}))?;
        assert_eq!(tag.as_deref(), Some("seen"));
        assert!(t.skipped().is_empty());
        Ok(())
    }
}
