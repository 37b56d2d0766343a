//! Compiling components: the engine settings every compiler must share, the disk
//! cache's files, and compiling in a child process.
//!
//! The `weft` binary compiles a module the cache does not hold in a child process
//! (`weft compile-filter`, hidden), which writes the cache file and exits; the proxy
//! then maps that file as it would after a restart. Cranelift's working memory (about
//! 10 MiB for a small filter) and the pages of its code never enter the serving
//! process, whose RSS after a reload with a new module is what it would be after a
//! restart; and a compiler that crashes fails the load, not the proxy. Embedders of
//! the library (the tests) compile in-process unless they opt in.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{anyhow, Context as _};
use wasmtime::component::Component;
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::{wt, MAX_FILTER_MEMORY};
use crate::config::RuntimeConfig;

/// The executable that compiles in a child process, when one was named.
static CHILD_COMPILER: OnceLock<PathBuf> = OnceLock::new();

/// Makes this process compile modules by running `exe compile-filter` (the `weft`
/// binary names itself).
pub fn compile_in_child_processes(exe: PathBuf) {
    let _ = CHILD_COMPILER.set(exe);
}

fn child_compiler() -> Option<&'static Path> {
    CHILD_COMPILER.get().map(PathBuf::as_path)
}

/// The engine settings: the same in the proxy and in a compiler process, so that
/// what one compiles the other loads.
pub fn engine_config(runtime: &RuntimeConfig) -> wasmtime::Config {
    let mut cfg = wasmtime::Config::new();
    cfg.wasm_component_model(true);
    cfg.epoch_interruption(true);
    cfg.cranelift_opt_level(wasmtime::OptLevel::Speed);
    // Fiber stacks for filter calls; Rust filters need little.
    cfg.async_stack_size(1 << 20);
    cfg.max_wasm_stack(512 << 10);
    let instances = runtime.filter_instances.max(1);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(4))
        .max_core_instances_per_component(16)
        .total_memories(instances)
        .total_tables(instances.saturating_mul(2))
        .total_stacks(instances)
        .max_memory_size(MAX_FILTER_MEMORY as usize)
        // Keep a little of each recycled slot mapped so the next instance
        // starts without page faults, but give the rest back.
        .linear_memory_keep_resident(64 << 10)
        .async_stack_keep_resident(16 << 10);
    cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    // Names the filters' compiled functions in /tmp/perf-PID.map, for `perf report`.
    if std::env::var_os("WEFT_WASM_PERFMAP").is_some() {
        cfg.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    cfg
}

/// What `weft compile-filter` does: compiles `module` and writes it to `out`.
pub fn compile_to_file(filter_instances: u32, module: &Path, out: &Path) -> anyhow::Result<()> {
    let runtime = RuntimeConfig {
        filter_instances,
        ..RuntimeConfig::default()
    };
    let engine =
        Engine::new(&engine_config(&runtime)).map_err(|e| wt("configuring wasmtime", e))?;
    let bytes =
        std::fs::read(module).with_context(|| format!("cannot read {}", module.display()))?;
    let component = Component::new(&engine, &bytes).map_err(|e| invalid(module, e))?;
    write_cache(out, &component)
}

/// What compiling in a child process came to.
pub(super) enum Outcome {
    Compiled(Component),
    /// The module did not compile, or the compiler process failed: the reason.
    Failed(anyhow::Error),
    /// Compile in this process: no compiler process is configured, it could not be
    /// started, or what it wrote does not load here.
    NoChild,
}

/// Compiles `module` into the cache file `out` in a child process, and loads it.
pub(super) fn in_child(
    engine: &Engine,
    filter_instances: u32,
    module: &Path,
    out: &Path,
) -> Outcome {
    match child_compiler() {
        Some(exe) => run_child(exe, engine, filter_instances, module, out),
        None => Outcome::NoChild,
    }
}

fn run_child(
    exe: &Path,
    engine: &Engine,
    filter_instances: u32,
    module: &Path,
    out: &Path,
) -> Outcome {
    let done = Command::new(exe)
        .args(["--log", "off", "compile-filter", "--filter-instances"])
        .arg(filter_instances.to_string())
        .arg(module)
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let done = match done {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(exe = %exe.display(), error = %e, "cannot start a compiler process; compiling in the proxy");
            return Outcome::NoChild;
        }
    };
    if !done.status.success() {
        let reason = String::from_utf8_lossy(&done.stderr).trim().to_string();
        return Outcome::Failed(if reason.is_empty() {
            anyhow!(
                "compiling {} failed: the compiler process {}",
                module.display(),
                done.status
            )
        } else {
            anyhow!("{reason}")
        });
    }
    // SAFETY: the file was just written by this same binary with this engine's
    // settings; wasmtime checks the settings again as it loads.
    match unsafe { Component::deserialize_file(engine, out) } {
        Ok(c) => Outcome::Compiled(c),
        // The child saw another machine than this process does (the CPU features
        // wasmtime detects differ: this process runs under an emulator or valgrind, or
        // the binary was swapped): what it wrote does not load here, so compile here.
        Err(e) => {
            tracing::warn!(module = %module.display(), error = %format!("{e:#}"), "the compiler process's output does not load in this process; compiling in the proxy");
            Outcome::NoChild
        }
    }
}

/// Compiles in this process; with a cache file to write, the component is then
/// served from that file, as after a restart (its pages are shared and reclaimable,
/// where the compiler's copy would stay in the heap).
pub(super) fn here(
    engine: &Engine,
    bytes: &[u8],
    module: &Path,
    cache_file: Option<&Path>,
) -> anyhow::Result<Component> {
    let c = Component::new(engine, bytes).map_err(|e| invalid(module, e))?;
    let written = cache_file.and_then(|p| match write_cache(p, &c) {
        // SAFETY: just written by this process with this engine.
        Ok(()) => unsafe { Component::deserialize_file(engine, p) }.ok(),
        Err(e) => {
            tracing::warn!(path = %p.display(), error = %e, "cannot cache the compiled filter");
            None
        }
    });
    let c = written.unwrap_or(c);
    release_freed_memory();
    Ok(c)
}

fn invalid(module: &Path, e: wasmtime::Error) -> anyhow::Error {
    anyhow!("{} is not a valid component: {e:#}", module.display())
}

/// Writes a compiled component where the cache expects it; readers never see a
/// partial file (written aside, then renamed).
fn write_cache(path: &Path, component: &Component) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(
        &tmp,
        component.serialize().map_err(|e| wt("serializing", e))?,
    )?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Gives the heap pages that an in-process compile freed back to the system: glibc
/// keeps free pages in its arenas, so the RSS would stay several MiB higher after
/// every load of a new module.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; no pointer changes.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_of_a_compiler_process_that_does_not_load_is_compiled_here_instead() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // Both scripts written before either runs (a file still open for writing
        // somewhere cannot be executed).
        let script = |name: &str, text: &str| {
            let exe = dir.path().join(name);
            std::fs::write(&exe, text).unwrap();
            std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
            exe
        };
        // A "compiler" that exits 0 having written what no engine can load, as a child
        // that detected other CPU features would; and one that fails.
        let unloadable = script(
            "unloadable",
            "#!/bin/sh\nfor last; do :; done\necho not-a-cwasm > \"$last\"\n",
        );
        let failing = script(
            "failing",
            "#!/bin/sh\necho 'm.wasm is not a valid component' >&2\nexit 1\n",
        );
        let runtime = RuntimeConfig {
            filter_instances: 1,
            ..RuntimeConfig::default()
        };
        let engine = Engine::new(&engine_config(&runtime)).unwrap();
        let out = dir.path().join("m.cwasm");
        let outcome = run_child(&unloadable, &engine, 1, Path::new("m.wasm"), &out);
        assert!(matches!(outcome, Outcome::NoChild));
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "not-a-cwasm\n");

        // A compiler that fails still fails the load, with its reason.
        match run_child(&failing, &engine, 1, Path::new("m.wasm"), &out) {
            Outcome::Failed(e) => assert_eq!(e.to_string(), "m.wasm is not a valid component"),
            _ => panic!("a failed compiler process must fail the load"),
        }
    }
}
