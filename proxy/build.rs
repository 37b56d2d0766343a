//! Link-time layout of the `weft` binary, for a smaller resident set (measured in
//! docs/benchmarks.md, "Resident memory"). Both settings only shape how the binary is
//! laid out; neither changes what it does.
//!
//! - `weft.order` (written by `benches/orderfile.py`) lists the functions serving and
//!   start-up execute, the request path's first, the Wasm host's apart; lld places them
//!   together, so the few MiB of code a proxy runs are not spread over all 17 MB of
//!   text, each page touched mapping its neighbours too.
//! - Packed relative relocations (DT_RELR): the dynamic loader reads the whole
//!   relocation table at start-up, 600 KiB of it in the RELA form, a few KiB as RELR.
//!   glibc understands RELR from 2.36, so it is used only when building natively
//!   against such a glibc (the binary then says it needs it, rather than crashing).

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=weft.order");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    // Rust links this target with its bundled lld, which both options need.
    if var("TARGET") != "x86_64-unknown-linux-gnu" || var("HOST") != var("TARGET") {
        return;
    }
    let order = Path::new(&var("CARGO_MANIFEST_DIR")).join("weft.order");
    // The linker reads a copy in OUT_DIR. Cargo keeps this script's output for any
    // checkout sharing the target directory (a CI clone, a worktree): a path into
    // the checkout that ran it would break every other one's link once that
    // checkout is deleted. (The copy is renewed whenever weft.order changes.)
    let copy = Path::new(&var("OUT_DIR")).join("weft.order");
    if order.exists() && std::fs::copy(&order, &copy).is_ok() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            copy.display()
        );
        // Symbols of another build (the file ages as the code changes) are skipped.
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
    if glibc_has_relr() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether the glibc this build script runs on (the target's, when building
/// natively) is 2.36 or later. (`cfg` here is the build script's own platform.)
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn glibc_has_relr() -> bool {
    unsafe extern "C" {
        fn gnu_get_libc_version() -> *const std::ffi::c_char;
    }
    // SAFETY: glibc returns a static NUL-terminated string.
    let version = unsafe { std::ffi::CStr::from_ptr(gnu_get_libc_version()) };
    let mut parts = version
        .to_str()
        .unwrap_or("")
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 36)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn glibc_has_relr() -> bool {
    false
}
