//! The only `wit_bindgen::generate!` of the SDK (Wasm builds only).
//!
//! Nothing outside `host::wasm` and `export` touches these types; authors never see them.
//! The export macro is public (and hidden) so that `weft_sdk::export_filter!` can expand to
//! it inside the author's crate, which is where the component's exports must be defined.

// Generated code: documented by the WIT file, not held to this crate's lints.
#![allow(missing_docs, clippy::all)]

wit_bindgen::generate!({
    path: "../wit",
    world: "filter",
    pub_export_macro: true,
    export_macro_name: "__export_weft_filter",
    default_bindings_module: "weft_sdk::__bindings",
    // Imports take borrowed arguments (`&str`, `&[u8]`), so host calls do not copy.
    ownership: Borrowing { duplicate_if_necessary: false },
});
