//! The one place that runs `bindgen!`: Rust types and traits for the `weft:filter`
//! world. Host code implements the generated `Host` traits on `HostState`
//! (see `host/`); the request path calls the handler exports through `Filter`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "filter",
    imports: {
        // Suspends the filter's fiber while the call is in flight; no thread waits.
        "weft:filter/outbound.wait": async | trappable,
        default: trappable,
    },
    exports: { default: async },
});

pub use self::weft::filter::types::{
    Action, BodyAction, BodyMode, Completion, HeaderError, Level, LocalResponse, Message, Upstream,
};
