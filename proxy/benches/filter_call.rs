//! The cost of running one filter on one request, without the network: take an
//! instance, call its request-headers and response-headers phases with a typical
//! request, give the instance back. Run with
//!
//!     cargo bench -p weft --bench filter_call -- [PATH.wasm]
//!
//! (default: the bench filter from `.ci/build-filters`; other arguments pick the
//! cases whose label contains all of them, to profile one). It prints the median and
//! p99 per request for the reused-instance policy (the default) and for a fresh
//! instance per request (`instance_reuse = 1`), measured in the same run.
//! With `THRASH=1`, the 50-in-flight case evicts the CPU caches between the two
//! phases (as the network path does in the proxy); eviction time is not counted.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use weft::config::{FilterConfig, RuntimeConfig};
use weft::telemetry::metrics::Metrics;
use weft::wasm::shared::SharedStore;
use weft::wasm::state::Phase;
use weft::wasm::{FilterInstance, Host, LoadedFilter};

const BATCHES: usize = 200;
const PER_BATCH: usize = 200;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let module = args
        .iter()
        .find(|a| a.ends_with(".wasm"))
        .map(PathBuf::from)
        .unwrap_or_else(default_module);
    let picked: Vec<&String> = args.iter().filter(|a| !a.ends_with(".wasm")).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let runtime = RuntimeConfig {
            module_cache: None,
            // Valgrind cannot reserve the address space of the default pool.
            filter_instances: std::env::var("FILTER_INSTANCES")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(RuntimeConfig::default().filter_instances),
            ..RuntimeConfig::default()
        };
        let host = Host::new(&runtime)?;
        for (label, reuse, concurrent) in [
            ("reused instance, 1 in flight", 10_000, 1),
            ("reused instance, 50 in flight", 10_000, 50),
            ("fresh instance, 1 in flight", 1, 1),
        ] {
            if !picked.iter().all(|p| label.contains(p.as_str())) {
                continue;
            }
            // Both phases called, the request value carried from one to the other (the
            // bench filter's two-call form; by default it tags from the request phase).
            let cfg: FilterConfig = toml::from_str(&format!(
                "name = \"bench\"\nmodule = {:?}\nconfig = {{ two_phase = true }}\n[limits]\ninstance_reuse = {reuse}\n",
                module.display().to_string()
            ))?;
            let filter = LoadedFilter::load(
                &host,
                &cfg,
                module.clone(),
                Arc::new(Metrics::new()),
                Arc::new(SharedStore::new(16)),
            )
            .await?;
            let mut per_request = Vec::with_capacity(BATCHES);
            let mut id = 1;
            for _ in 0..BATCHES {
                let started = Instant::now();
                for _ in 0..PER_BATCH / concurrent {
                    if concurrent == 1 {
                        id += 1;
                        one_request(&filter, id).await?;
                    } else {
                        concurrent_requests(&filter, &mut id, concurrent).await?;
                    }
                }
                let thrashed = THRASHED.with(|c| c.replace(std::time::Duration::ZERO));
                per_request.push((started.elapsed() - thrashed) / PER_BATCH as u32);
            }
            per_request.sort();
            println!(
                "{label:>30}: median {:>8.2?}  p99 {:>8.2?} per request (2 calls), {} requests",
                per_request[BATCHES / 2],
                per_request[BATCHES * 99 / 100],
                BATCHES * PER_BATCH
            );
        }
        Ok(())
    })
}

async fn one_request(filter: &LoadedFilter, id: u64) -> anyhow::Result<()> {
    let inst = filter.instance(id, filter.new_part()).await?;
    let inst = request_phase(inst).await?;
    let inst = response_phase(inst).await?;
    filter.release(inst);
    Ok(())
}

/// Requests in flight at once: each holds its instance from its request phase to
/// its response phase, as in the proxy.
async fn concurrent_requests(filter: &LoadedFilter, id: &mut u64, n: usize) -> anyhow::Result<()> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        *id += 1;
        held.push(request_phase(filter.instance(*id, filter.new_part()).await?).await?);
    }
    if std::env::var_os("THRASH").is_some() {
        let t = Instant::now();
        thrash();
        THRASHED.with(|c| c.set(c.get() + t.elapsed()));
    }
    for inst in held {
        filter.release(response_phase(inst).await?);
    }
    Ok(())
}

async fn request_phase(mut inst: FilterInstance) -> anyhow::Result<FilterInstance> {
    let id = inst.store.data().call.request_id;
    let mut req = Request::get("http://example.com/api/items?page=2");
    for (name, value) in [
        ("user-agent", "bench/1.0"),
        ("accept", "*/*"),
        ("x-bench-in", "1"),
        ("x-request-id", "4bf92f3577b34da6a3ce929d0e0e4736"),
    ] {
        req = req.header(name, value);
    }
    let call = &mut inst.store.data_mut().call;
    call.request = Some(req.body(())?);
    call.scope = Some(Default::default());
    call.phase = Some(Phase::RequestHeaders);
    inst.begin_call();
    inst.bindings
        .weft_filter_handler()
        .call_on_request_headers(&mut inst.store, id)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    inst.end_call();
    Ok(inst)
}

async fn response_phase(mut inst: FilterInstance) -> anyhow::Result<FilterInstance> {
    let id = inst.store.data().call.request_id;
    let call = &mut inst.store.data_mut().call;
    call.response = Some(
        Response::builder()
            .status(200)
            .header("content-type", "text/plain")
            .header("content-length", "100")
            .body(())?,
    );
    call.response_writable = true;
    call.phase = Some(Phase::ResponseHeaders);
    inst.begin_call();
    inst.bindings
        .weft_filter_handler()
        .call_on_response_headers(&mut inst.store, id)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    inst.end_call();
    let added = inst
        .store
        .data()
        .call
        .response
        .as_ref()
        .and_then(|r| r.headers().get("x-wasm-filter").cloned());
    // "seen" only when the request phase's value reached the response phase.
    anyhow::ensure!(added.is_some_and(|v| v == "seen"), "the filter did not run");
    Ok(inst)
}

fn default_module() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("wasm32-wasip2/release/bench_filter.wasm")
}

fn thrash() {
    use std::sync::OnceLock;
    static BUF: OnceLock<std::sync::Mutex<Vec<u8>>> = OnceLock::new();
    let buf = BUF.get_or_init(|| std::sync::Mutex::new(vec![0u8; 16 << 20]));
    let mut b = buf.lock().unwrap();
    for i in (0..b.len()).step_by(64) {
        b[i] = b[i].wrapping_add(1);
    }
}

thread_local! {
    static THRASHED: std::cell::Cell<std::time::Duration> = const { std::cell::Cell::new(std::time::Duration::ZERO) };
}
