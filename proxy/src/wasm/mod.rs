//! The Wasm host: one wasmtime `Engine` and `Linker` for the process, components
//! compiled once (and cached on disk by content hash), `instantiate_pre` once per
//! filter, and instances from the pooling allocator, each with its own store,
//! memory cap and CPU budget.
//!
//! Instance policy: an instance serves one call at a time and is replaced after
//! `instance_reuse` uses; an instance that trapped, or whose call was abandoned, is
//! never entered again. A request keeps the instance it first called for the rest of
//! its phases only when the filter holds state for it (the SDK tells the proxy with
//! `keep-instance` once the filter stores request extensions) or an outbound call is
//! pending; otherwise the instance goes back to the pool after each call, so the
//! number of instances follows concurrent calls, not concurrent requests (200 for 4
//! filters under 50 slow requests otherwise). Between uses the host clears what it
//! holds for the request, and the SDK drops its per-request state when another
//! request id arrives, so a request sees nothing of another unless the filter keeps
//! it on purpose (the shared-state API, or statics). `instance_reuse = 1` gives
//! every request fresh instances, at the cost measured in docs/benchmarks.md.

pub mod bindings;
pub mod compile;
mod host;
pub mod pool;
pub mod shared;
pub mod state;
pub mod ticker;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;

use crate::config::{FailurePolicy, FilterConfig, FilterLimits, RuntimeConfig};
use crate::telemetry::metrics::{FilterFailureLabels, FilterLabels, FilterPhaseLabels, Metrics};
use crate::telemetry::per_worker::{WorkerGauge, WorkerHistogram};
use crate::workers::PerWorker;
use bindings::{Filter, FilterPre};
use pool::IdlePool;
use shared::SharedStore;
use state::{Call, HostState, Part, Phase};
use ticker::{EpochTicker, Running};

/// How often the epoch advances: the granularity of CPU budgets and of yielding.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// The largest memory a filter may be given (the pool reserves address space for it).
pub const MAX_FILTER_MEMORY: u64 = 512 * 1024 * 1024;

/// The engine and linker every filter shares.
pub struct Host {
    pub engine: Engine,
    linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
    /// The setting the engine was made with, for a compiler process to make the same.
    filter_instances: u32,
    compiled: Mutex<std::collections::HashMap<String, Component>>,
    ticker: Arc<EpochTicker>,
}

impl Host {
    pub fn new(runtime: &RuntimeConfig) -> anyhow::Result<Arc<Host>> {
        let engine = Engine::new(&compile::engine_config(runtime))
            .map_err(|e| wt("configuring wasmtime", e))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| wt("linking WASI", e))?;
        Filter::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| wt("linking the weft:filter host", e))?;
        let ticker = EpochTicker::start(&engine);
        Ok(Arc::new(Host {
            engine,
            linker,
            cache_dir: runtime
                .module_cache
                .clone()
                .filter(|p| !p.as_os_str().is_empty()),
            compiled: Default::default(),
            filter_instances: runtime.filter_instances,
            ticker,
        }))
    }

    /// Compiles a component, or finds it compiled: in memory for reloads, on disk
    /// (by content hash) across restarts.
    pub fn compile(&self, path: &Path) -> anyhow::Result<Component> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let key = content_key(&self.engine, &bytes);
        if let Some(c) = self
            .compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(c.clone());
        }
        let cached = self
            .cache_dir
            .as_ref()
            .map(|d| d.join(format!("{key}.cwasm")));
        let from_disk = cached.as_ref().filter(|p| p.exists()).and_then(|p| {
            // SAFETY: the cache folder is written only by this proxy, with artifacts of
            // this same engine configuration (the key includes its compatibility hash).
            unsafe { Component::deserialize_file(&self.engine, p) }.ok()
        });
        let component = match (from_disk, &cached) {
            (Some(c), _) => c,
            (None, Some(out)) => {
                match compile::in_child(&self.engine, self.filter_instances, path, out) {
                    compile::Outcome::Compiled(c) => c,
                    compile::Outcome::Failed(e) => return Err(e),
                    compile::Outcome::NoChild => {
                        compile::here(&self.engine, &bytes, path, cached.as_deref())?
                    }
                }
            }
            (None, None) => compile::here(&self.engine, &bytes, path, None)?,
        };
        let mut compiled = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        // Bound the in-memory cache: a proxy reloaded with ever new modules would grow.
        if compiled.len() >= 256 {
            compiled.clear();
        }
        compiled.insert(key, component.clone());
        Ok(component)
    }

    /// Checks that a component implements the world and prepares fast instantiation.
    pub fn prepare(&self, component: &Component) -> anyhow::Result<FilterPre<HostState>> {
        let pre = self.linker.instantiate_pre(component).map_err(|e| {
            anyhow!("it does not fit the weft:filter@0.3.0 world this proxy serves: {e:#}")
        })?;
        FilterPre::new(pre)
            .map_err(|e| anyhow!("it does not export weft:filter/handler@0.3.0: {e:#}"))
    }
}

fn content_key(engine: &Engine, bytes: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}-{:016x}", h.finish())
}

/// What every instance of one configured filter shares.
pub struct FilterShared {
    pub name: Arc<str>,
    pub config_json: Vec<u8>,
    pub limits: FilterLimits,
    pub failure: FailurePolicy,
    /// Phases the filter does not implement (learned from `skip-phase`).
    skip: AtomicU8,
    durations: [WorkerHistogram; 7],
    instances_created: prometheus_client::metrics::counter::Counter,
    /// Idle instances of this filter, over all the chains that hold it (a reload's
    /// old and new chains add up).
    instances_idle: WorkerGauge,
    pub metrics: Arc<Metrics>,
    pub shared: Arc<SharedStore>,
    /// Metrics the filter declared, by id.
    pub guest_metrics: Mutex<Vec<host::DeclaredMetric>>,
}

impl FilterShared {
    pub fn implements(&self, phase: Phase) -> bool {
        self.skip.load(Ordering::Relaxed) & phase.bit() == 0
    }

    pub fn note_skipped(&self, phase: Phase) {
        self.skip.fetch_or(phase.bit(), Ordering::Relaxed);
    }

    pub fn observe(&self, phase: Phase, took: Duration) {
        self.durations[phase as usize].observe(took.as_secs_f64());
    }

    pub fn failed(&self, reason: &'static str) {
        self.metrics
            .filter_failures
            .get_or_create(&FilterFailureLabels {
                filter: self.name.to_string(),
                reason,
            })
            .inc();
    }
}

/// A filter of a chain: compiled, linked, configured, with its idle instances.
pub struct LoadedFilter {
    pub shared: Arc<FilterShared>,
    host: Arc<Host>,
    pre: FilterPre<HostState>,
    grants: crate::config::FilterGrants,
    /// Per worker: an instance's memory and stack stay in the caches of the core
    /// whose requests use it.
    idle: PerWorker<Mutex<IdlePool<FilterInstance>>>,
    /// The module file, for logs.
    pub module: PathBuf,
}

impl Drop for LoadedFilter {
    fn drop(&mut self) {
        let idle: usize = self
            .idle
            .iter_mut()
            .map(|pool| pool.get_mut().unwrap_or_else(|p| p.into_inner()).count())
            .sum();
        self.shared.instances_idle.dec_by(idle as i64);
    }
}

pub struct FilterInstance {
    pub store: Store<HostState>,
    /// The export handles (192 bytes) behind a pointer: an instance moves four times
    /// per call (out of the idle pool, into the request's slot, out of it, back), and
    /// at 24 bytes it moves in registers rather than by `memcpy`. One allocation per
    /// instance, not per call.
    pub bindings: Box<Filter>,
    uses: u32,
    /// A call is under way. Still set when the instance comes back means the call
    /// was abandoned half way (its request went away while the guest was suspended
    /// on an outbound call or a CPU-time yield): wasmtime will not enter that
    /// instance again, so `release` drops it.
    in_call: bool,
}

impl LoadedFilter {
    /// Compiles (or finds), links and configures a filter; the instance that ran
    /// `configure` is kept for the first request.
    pub async fn load(
        host: &Arc<Host>,
        cfg: &FilterConfig,
        module: PathBuf,
        metrics: Arc<Metrics>,
        shared: Arc<SharedStore>,
    ) -> anyhow::Result<LoadedFilter> {
        // Compiling takes seconds for a large module: off the worker threads, which
        // go on serving requests meanwhile.
        let component = {
            let (host, path) = (host.clone(), module.clone());
            tokio::task::spawn_blocking(move || host.compile(&path))
                .await
                .map_err(|e| anyhow!("compiling {} stopped: {e}", module.display()))??
        };
        let pre = host.prepare(&component)?;
        let config_json = match &cfg.config {
            Some(v) => serde_json::to_vec(v).context("the config cannot be written as JSON")?,
            None => b"null".to_vec(),
        };
        let durations = Phase::ALL.map(|p| {
            metrics
                .filter_duration
                .get_or_create(&FilterPhaseLabels {
                    filter: cfg.name.clone(),
                    phase: p.name(),
                })
                .clone()
        });
        let label = FilterLabels {
            filter: cfg.name.clone(),
        };
        let instances_created = metrics
            .filter_instances_created
            .get_or_create(&label)
            .clone();
        let instances_idle = metrics.filter_instances_idle.get_or_create(&label).clone();
        let filter = LoadedFilter {
            shared: Arc::new(FilterShared {
                name: cfg.name.as_str().into(),
                config_json,
                limits: cfg.limits.clone(),
                failure: cfg.failure,
                skip: AtomicU8::new(0),
                durations,
                instances_created,
                instances_idle,
                metrics,
                shared,
                guest_metrics: Mutex::new(Vec::new()),
            }),
            host: host.clone(),
            pre,
            grants: cfg.grants.clone(),
            idle: PerWorker::new(|| Mutex::new(IdlePool::new(std::time::Instant::now()))),
            module,
        };
        let first = filter.instantiate().await?;
        filter.release(first);
        Ok(filter)
    }

    /// What the proxy tracks for a request this filter has not been called for yet.
    pub fn new_part(&self) -> Part {
        Part {
            header_budget: self.shared.limits.header_bytes.as_usize(),
            ..Part::default()
        }
    }

    /// An instance ready for a call of request `request_id`, in which the filter's
    /// part so far is `part`: an idle instance, or a new one.
    pub async fn instance(&self, request_id: u64, part: Part) -> anyhow::Result<FilterInstance> {
        let reused = self.with_idle(|pool| pool.take());
        let mut inst = match reused {
            Some(i) => i,
            None => match self.instantiate().await {
                Ok(i) => i,
                // Such as when `runtime.filter_instances` are all made: an instance
                // another worker keeps idle serves rather than failing the call.
                Err(e) => self.take_from_other_workers().ok_or(e)?,
            },
        };
        inst.uses += 1;
        // Idle instances were reset when released, new ones after `configure`: only
        // what names this request is set here.
        let call = &mut inst.store.data_mut().call;
        call.request_id = request_id;
        call.part = part;
        Ok(inst)
    }

    /// Counts a call into one of this filter's instances as running (so the epoch
    /// ticks) until the guard drops.
    pub fn running(&self) -> Running<'_> {
        self.host.ticker.running()
    }

    /// Whether `inst` would go back to the idle pool if released now.
    pub fn reusable(&self, inst: &FilterInstance) -> bool {
        !inst.abandoned() && inst.uses < self.shared.limits.instance_reuse
    }

    /// Takes an instance back after its request (or its call, when the filter holds
    /// nothing for the request); worn-out ones are dropped.
    pub fn release(&self, mut inst: FilterInstance) {
        if !self.reusable(&inst) {
            return;
        }
        inst.store.data_mut().call.reset(0, Part::default());
        self.with_idle(|pool| pool.give(inst));
    }

    /// Destroys the idle instances that went unused for a whole trim period.
    pub fn trim_idle(&self) {
        let now = std::time::Instant::now();
        for pool in self.idle.iter() {
            let unneeded = Self::in_pool(&self.shared, pool, |pool| pool.trim(now));
            // Destroyed outside the lock: returning their memory to the pool takes a while.
            drop(unneeded);
        }
    }

    /// An idle instance of any worker's pool, for a worker that cannot make one.
    fn take_from_other_workers(&self) -> Option<FilterInstance> {
        self.idle
            .iter()
            .find_map(|pool| Self::in_pool(&self.shared, pool, |pool| pool.take()))
    }

    /// Runs `f` on the calling worker's idle pool.
    fn with_idle<R>(&self, f: impl FnOnce(&mut IdlePool<FilterInstance>) -> R) -> R {
        Self::in_pool(&self.shared, self.idle.mine(), f)
    }

    /// Runs `f` on one idle pool and keeps `weft_filter_instances_idle` in step.
    fn in_pool<R>(
        shared: &FilterShared,
        pool: &Mutex<IdlePool<FilterInstance>>,
        f: impl FnOnce(&mut IdlePool<FilterInstance>) -> R,
    ) -> R {
        let mut pool = pool.lock().unwrap_or_else(|p| p.into_inner());
        let before = pool.count() as i64;
        let out = f(&mut pool);
        shared.instances_idle.inc_by(pool.count() as i64 - before);
        out
    }

    async fn instantiate(&self) -> anyhow::Result<FilterInstance> {
        let limits = &self.shared.limits;
        let mut wasi = WasiCtxBuilder::new();
        for (k, v) in &self.grants.env {
            wasi.env(k, v);
        }
        for dir in &self.grants.read_dirs {
            let guest = dir.to_string_lossy();
            wasi.preopened_dir(dir, guest.as_ref(), wasmtime_wasi::FsPerms::ReadOnly)
                .map_err(|e| wt(&format!("cannot grant {}", dir.display()), e))?;
        }
        if self.grants.stderr {
            wasi.inherit_stderr();
        }
        let state = HostState {
            filter: self.shared.clone(),
            names: Default::default(),
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory.as_usize().min(MAX_FILTER_MEMORY as usize))
                .instances(32)
                .tables(32)
                .memories(4)
                .trap_on_grow_failure(true)
                .build(),
            wasi: wasi.build(),
            table: Default::default(),
            call: Call::default(),
            ticks: 0,
            tick_budget: budget_ticks(limits.cpu_time.0),
            out_of_time: false,
        };
        let mut store = Store::new(&self.host.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|mut ctx| {
            let s = ctx.data_mut();
            s.ticks += 1;
            if s.ticks >= s.tick_budget {
                s.out_of_time = true;
                return Err(wasmtime::Error::msg("the filter ran out of CPU time"));
            }
            // Let other requests on this thread run, then continue. tokio's own
            // yield also lets the runtime poll its sockets before coming back.
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        });
        store.set_epoch_deadline(1);
        // Instantiating runs the guest's start code, and `configure` follows.
        let _running = self.running();
        let bindings = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| anyhow!("instantiation failed: {e:#}"))?;
        self.shared.instances_created.inc();
        let mut inst = FilterInstance {
            store,
            bindings: Box::new(bindings),
            uses: 0,
            in_call: false,
        };
        inst.begin_call();
        let configured = inst
            .bindings
            .weft_filter_handler()
            .call_configure(&mut inst.store, &self.shared.config_json)
            .await;
        inst.end_call();
        match configured {
            Ok(Ok(())) => {
                // Whatever `configure` left in the call state goes before a request sees it.
                inst.store.data_mut().call.reset(0, Part::default());
                Ok(inst)
            }
            Ok(Err(msg)) => Err(anyhow!("the filter refused its config: {msg}")),
            Err(trap) => Err(anyhow!(
                "configure trapped: {}",
                describe_trap(&trap, inst.store.data())
            )),
        }
    }
}

/// Epoch callbacks a call may take before it runs out of CPU time. The first comes
/// at the second tick boundary after the call starts (see `begin_call`), after one
/// to two ticks of running, the next at every tick after that.
fn budget_ticks(cpu: Duration) -> u64 {
    (cpu.as_nanos() / EPOCH_TICK.as_nanos()).max(1) as u64
}

impl FilterInstance {
    /// Resets the CPU budget before a call into the guest. The first deadline is two
    /// ticks away: a call that merely crosses a tick boundary (a few µs of a 2 ms
    /// tick) runs on instead of yielding, which would hold its instance across a
    /// trip through the scheduler and make the next request take another.
    pub fn begin_call(&mut self) {
        self.in_call = true;
        let s = self.store.data_mut();
        s.ticks = 0;
        s.out_of_time = false;
        self.store.set_epoch_deadline(2);
    }

    /// The call returned (with a result or a trap), so it was not abandoned.
    pub fn end_call(&mut self) {
        self.in_call = false;
    }

    /// A call began and never returned: its future was dropped with the guest
    /// suspended, which wasmtime unwinds as a trap.
    pub fn abandoned(&self) -> bool {
        self.in_call
    }
}

/// Why a call into a filter failed, for logs and the `reason` label.
pub fn failure_reason(trap: &wasmtime::Error, state: &HostState) -> &'static str {
    if state.out_of_time {
        "cpu_time"
    } else if is_memory_trap(trap) {
        "memory"
    } else {
        "trap"
    }
}

fn is_memory_trap(trap: &wasmtime::Error) -> bool {
    let text = format!("{trap:#}");
    text.contains("grow") && (text.contains("memory") || text.contains("limit"))
}

pub fn describe_trap(trap: &wasmtime::Error, state: &HostState) -> String {
    match failure_reason(trap, state) {
        "cpu_time" => format!(
            "CPU time limit of {:?} exceeded",
            state.filter.limits.cpu_time.0
        ),
        "memory" => format!("memory limit of {} exceeded", state.filter.limits.memory),
        _ => format!("{}", trap.root_cause()),
    }
}

/// wasmtime's error type is its own; the rest of the proxy speaks anyhow.
fn wt(what: &str, e: wasmtime::Error) -> anyhow::Error {
    anyhow!("{what}: {e:#}")
}
