//! The benchmark filter: reads the request header `x-bench-in` and adds
//! `x-wasm-filter: seen` (or `1`) to the response — the same work as the proxy-wasm
//! filter the Envoy anchor runs, so the two measure the cost of the host/guest path.
//! What it saw crosses from the request phase to the response phase as a request
//! value, kept by the proxy, so the filter's instance serves other requests in between.

use weft_sdk::{Action, ConfigError, Context, Filter};

pub struct Bench;

const SAW: &str = "bench.saw";

impl Filter for Bench {
    type Config = ();

    fn configure(_: ()) -> Result<Self, ConfigError> {
        Ok(Bench)
    }

    async fn on_request_headers(&self, ctx: &mut Context) -> Action {
        if ctx.request().header("x-bench-in").is_some() {
            let _ = ctx.set_value(SAW, b"1");
        }
        Action::Continue
    }

    async fn on_response_headers(&self, ctx: &mut Context) -> Action {
        let saw = ctx.value(SAW).is_some();
        let _ = ctx
            .response()
            .set_header("x-wasm-filter", if saw { "seen" } else { "1" });
        Action::Continue
    }
}

weft_sdk::export_filter!(Bench);

#[cfg(test)]
mod tests {
    use super::*;
    use weft_sdk::http::{Request, Response};
    use weft_sdk::testing::TestHost;

    #[test]
    fn tags_the_response_with_what_it_saw() -> Result<(), Box<dyn std::error::Error>> {
        let mut t = TestHost::<Bench>::new(())?;
        let action = t
            .request(Request::get("/").header("x-bench-in", "1").body(())?)
            .on_request_headers();
        assert_eq!(action, Action::Continue);
        let action = t
            .response(Response::builder().status(200).body(())?)
            .on_response_headers();
        assert_eq!(action, Action::Continue);
        let resp = t.current_response().ok_or("no response")?;
        assert_eq!(resp.headers()["x-wasm-filter"], "seen");
        assert!(!t.keeps_instance());
        Ok(())
    }
}
