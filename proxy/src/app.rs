//! The composition root: loads the config, builds the first snapshot, binds the
//! listeners and the admin endpoint, and owns reload and shutdown. Nothing on the
//! request path lives here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::chain::ChainBuilder;
use crate::config::{self, ConfigError, LoadedConfig, RuntimeConfig};
use crate::runtime::Runtime;
use crate::server::drain::{Drain, DrainController};
use crate::server::sockets::{Binding, Plan, Socket};
use crate::snapshot::Snapshot;
use crate::telemetry::metrics::{Metrics, Outcome, OutcomeLabels};
use crate::workers::Workers;

/// Where the config comes from.
#[derive(Clone, Debug)]
pub enum ConfigSource {
    /// A TOML file, read again on every reload.
    File(PathBuf),
    /// A config built in code (`weft proxy`); reloads re-apply it.
    Fixed(Box<LoadedConfig>),
}

impl ConfigSource {
    pub fn load(&self) -> Result<LoadedConfig, ConfigError> {
        match self {
            ConfigSource::File(p) => config::load(p),
            ConfigSource::Fixed(c) => Ok((**c).clone()),
        }
    }
}

/// What an applied reload did.
#[derive(Debug)]
pub struct Reloaded {
    pub generation: u64,
    /// Fields whose new values wait for a restart, such as `runtime.workers`.
    pub needs_restart: Vec<&'static str>,
}

/// Why a reload did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// Shutdown has begun: connections are draining and nothing new is started.
    #[error("the proxy is shutting down")]
    ShuttingDown,
    /// The config was refused; the message names the file, field and reason of
    /// each problem.
    #[error("{0}")]
    Refused(String),
}

/// A running proxy.
pub struct App {
    pub runtime: Arc<Runtime>,
    source: ConfigSource,
    /// Each listener's socket binding (`server/sockets.rs`).
    listeners: Mutex<HashMap<String, Arc<Binding>>>,
    reload_lock: tokio::sync::Mutex<()>,
    /// Taken by `shutdown`; hands out the `Drain` tokens tasks hold.
    drain: Mutex<Option<DrainController>>,
    draining: watch::Receiver<bool>,
    /// Shutdown's delay has begun (`shutdown_delay`): not ready, connections closing
    /// after their requests, listeners still accepting.
    leaving: AtomicBool,
    ready: AtomicBool,
    /// Turns true when shutdown has finished; the admin endpoint serves until then.
    stopped: watch::Sender<bool>,
    admin: Mutex<Option<SocketAddr>>,
    /// Worker threads besides the one `start` runs on; each accepts on every listener.
    workers: Workers,
    /// The runtime settings the process started with: some are read only then, and
    /// a reload is compared with these, not with the previous reload.
    started: RuntimeConfig,
}

impl App {
    /// Loads the config, binds every listener and the admin endpoint, and starts
    /// serving. Returns once the proxy is ready.
    pub async fn start(source: ConfigSource) -> anyhow::Result<Arc<App>> {
        Self::start_on(source, Workers::none()).await
    }

    /// As `start`, with listeners served by `workers` too.
    pub async fn start_on(source: ConfigSource, workers: Workers) -> anyhow::Result<Arc<App>> {
        let loaded = source.load()?;
        let metrics = Arc::new(Metrics::new());
        let chains = ChainBuilder::new(metrics.clone(), &loaded.config.runtime)
            .context("starting the filter engine")?;
        let mut snapshot = Snapshot::build(loaded, None, &metrics, &chains).await?;
        let plan = Plan::make(
            &HashMap::new(),
            &snapshot.config.config.listeners,
            &snapshot.config.source,
            workers.count(),
        )?;
        snapshot.sockets = plan.owners(&snapshot);
        let admin_address = snapshot.config.config.admin.listen();
        // Watched whatever the setting: `watch_config` may be turned on by a reload,
        // and the watcher reloads only while it is on.
        let watch_file = matches!(source, ConfigSource::File(_));
        let started = snapshot.config.config.runtime.clone();
        let runtime = Arc::new(Runtime::new(snapshot, metrics, chains));
        let drain = DrainController::new();
        let app = Arc::new(App {
            runtime,
            source,
            listeners: Mutex::new(HashMap::new()),
            reload_lock: tokio::sync::Mutex::new(()),
            draining: drain.signal(),
            drain: Mutex::new(Some(drain)),
            leaving: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            stopped: watch::channel(false).0,
            admin: Mutex::new(None),
            workers,
            started,
        });
        let snap = app.runtime.snapshot();
        app.activate_listeners(plan);
        if let Some(addr) = admin_address {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the admin endpoint to {addr}"))?;
            let local = listener.local_addr().ok();
            *app.admin.lock().unwrap_or_else(|p| p.into_inner()) = local;
            // Logged before "weft is ready", so whoever waits for that line finds this one.
            if let Some(addr) = local {
                tracing::info!(address = %addr, "admin endpoint listening");
            }
            tokio::spawn(crate::admin::serve(
                listener,
                app.clone(),
                app.stopped.subscribe(),
            ));
        }
        if watch_file {
            crate::config::watch::spawn(app.clone());
        }
        tokio::spawn(sweep_idle_instances(Arc::downgrade(&app.runtime)));
        app.ready.store(true, Ordering::Release);
        tracing::info!(
            generation = snap.generation,
            listeners = snap.listeners.len(),
            clusters = snap.clusters.len(),
            "weft is ready"
        );
        Ok(app)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_leaving()
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Whether shutdown has begun, its delay included.
    fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Acquire) || self.is_draining()
    }

    /// A token for a task shutdown must wait for; none once shutdown has begun.
    fn drain_token(&self) -> Option<Drain> {
        self.drain
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(DrainController::watcher)
    }

    pub fn source(&self) -> &ConfigSource {
        &self.source
    }

    /// The address a listener is bound to (useful when the config says port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map(|l| l.socket.local)
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        *self.admin.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the config again and, if it is valid, publishes it as a new snapshot.
    /// New requests use it at once; requests in flight finish on the old one. A
    /// refused config leaves everything as it was. Once shutdown has begun nothing
    /// is reloaded: it would bind listeners and start cluster tasks for a process
    /// that is on its way out.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        if self.is_leaving() {
            tracing::warn!("reload not done: the proxy is shutting down");
            return Err(ReloadError::ShuttingDown);
        }
        let result = self.try_reload().await;
        let outcome = if result.is_ok() {
            Outcome::applied
        } else {
            Outcome::refused
        };
        self.runtime
            .metrics
            .reloads
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        match &result {
            Ok(r) => {
                tracing::info!(generation = r.generation, "config reloaded");
                for field in &r.needs_restart {
                    tracing::warn!(
                        field,
                        "{field} changed, but it is read only at start: the new value applies after a restart"
                    );
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "config reload refused; the previous config keeps serving")
            }
        }
        result.map_err(ReloadError::Refused)
    }

    async fn try_reload(&self) -> Result<Reloaded, String> {
        let loaded = self.source.load().map_err(|e| e.to_string())?;
        let old = self.runtime.snapshot();
        if loaded.config.admin != old.config.config.admin {
            return Err(format!(
                "{}: admin: the admin address cannot change without a restart",
                loaded.source.display()
            ));
        }
        let mut next = Snapshot::build(
            loaded,
            Some(&old),
            &self.runtime.metrics,
            &self.runtime.chains,
        )
        .await
        .map_err(|e| e.to_string())?;
        let current = self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let plan = Plan::make(
            &current,
            &next.config.config.listeners,
            &next.config.source,
            self.workers.count(),
        )
        .map_err(|e| format!("{e:#}"))?;
        drop(current);
        next.sockets = plan.owners(&next);
        let generation = next.generation;
        let needs_restart = self.started.start_only_changes(&next.config.config.runtime);
        self.runtime.publish(next);
        self.activate_listeners(plan);
        Ok(Reloaded {
            generation,
            needs_restart,
        })
    }

    /// Installs the bindings of a published plan: those it dropped retire (their
    /// connections close, their sockets stop accepting unless handed over) and the
    /// sockets it bound start accepting.
    fn activate_listeners(&self, plan: Plan) {
        for (name, from) in &plan.handed_over {
            tracing::info!(listener = %name, from = %from, "listening on a socket handed over by another listener");
        }
        let old = std::mem::replace(
            &mut *self.listeners.lock().unwrap_or_else(|p| p.into_inner()),
            plan.bindings,
        );
        drop(old);
        let Some(token) = self.drain_token() else {
            return;
        };
        let snap = self.runtime.snapshot();
        for (socket, copies) in plan.fresh {
            if let Some(owner) = snap.sockets.get(&socket.local) {
                let l = &owner.listener.config;
                tracing::info!(listener = %owner.listener.name, address = %socket.local, protocol = ?l.protocol, tls = l.tls.is_some(), "listening");
            }
            self.spawn_accept_loops(&socket, copies, token.clone());
        }
    }

    /// Starts accepting on a socket bound for every worker: each copy registered with
    /// its own worker's runtime (this one first).
    fn spawn_accept_loops(&self, socket: &Socket, copies: Vec<TcpListener>, token: Drain) {
        let local = socket.local;
        let mut copies = copies.into_iter();
        if let Some(first) = copies.next() {
            let (rt, stopped) = (self.runtime.clone(), socket.stopped());
            tokio::spawn(crate::server::accept_loop(
                first,
                local,
                rt,
                stopped,
                token.clone(),
            ));
        }
        for (handle, copy) in self.workers.handles().iter().zip(copies) {
            let (rt, stopped, token) = (self.runtime.clone(), socket.stopped(), token.clone());
            // Registered with this runtime's reactor when bound: move it to the worker's.
            let copy = match copy.into_std() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(address = %local, error = %e, "cannot hand a listening socket to a worker");
                    continue;
                }
            };
            handle.spawn(async move {
                match TcpListener::from_std(copy) {
                    Ok(l) => crate::server::accept_loop(l, local, rt, stopped, token).await,
                    Err(e) => {
                        tracing::warn!(address = %local, error = %e, "a worker cannot accept on the socket")
                    }
                }
            });
        }
    }

    /// The first part of shutdown, when the config in force has a `shutdown_delay`:
    /// for that long the proxy still accepts and serves, while it tells whoever
    /// sends it traffic to go elsewhere, so that no client finds its address refusing
    /// connections before they have all heard (a Kubernetes Service takes seconds to
    /// drop a terminating pod's address, and a load balancer its health-check
    /// interval): `/ready` answers 503, and every HTTP connection, open or accepted
    /// meanwhile, closes once it has answered a request (`Connection: close`, HTTP/2's
    /// GOAWAY), as when a reload removes its listener. Reloads are refused from here on.
    pub async fn leave(&self) {
        let delay = self
            .runtime
            .snapshot()
            .config
            .config
            .runtime
            .shutdown_delay
            .0;
        if delay.is_zero() || self.is_leaving() {
            return;
        }
        let _one_at_a_time = self.reload_lock.lock().await;
        self.leaving.store(true, Ordering::Release);
        for binding in self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            binding.retire_connections();
        }
        drop(_one_at_a_time);
        tracing::info!(
            delay_secs = delay.as_secs_f64(),
            "shutting down: not ready, still accepting, closing connections after their requests"
        );
        tokio::time::sleep(delay).await;
    }

    /// Stops accepting, lets requests in flight finish for up to the configured
    /// shutdown timeout, and returns whether they all did.
    pub async fn shutdown(&self) -> bool {
        let Some(drain) = self.drain.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return true;
        };
        let deadline = self
            .runtime
            .snapshot()
            .config
            .config
            .runtime
            .shutdown_timeout
            .0;
        tracing::info!(
            deadline_secs = deadline.as_secs_f64(),
            "shutting down: draining connections"
        );
        let clean = drain.drain(deadline).await;
        self.stopped.send_replace(true);
        if clean {
            tracing::info!("all connections drained");
        } else {
            tracing::warn!("shutdown deadline reached with requests still in flight");
        }
        clean
    }

    /// Serves until SIGTERM or SIGINT (reloading on SIGHUP), then shuts down.
    pub async fn run_until_signal(self: &Arc<Self>, mut signals: Signals) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                _ = signals.term.recv() => break,
                _ = signals.int.recv() => break,
                _ = signals.hup.recv() => {
                    tracing::info!("SIGHUP: reloading the config");
                    let _ = self.reload().await;
                }
            }
        }
        // A second signal cuts the delay short.
        tokio::select! {
            () = self.leave() => {}
            _ = signals.term.recv() => tracing::info!("second signal: shutdown delay cut short"),
            _ = signals.int.recv() => tracing::info!("second signal: shutdown delay cut short"),
        }
        self.shutdown().await;
        self.workers.stop();
        Ok(())
    }
}

/// Gives back the filter instances of the current chains that went unused for a
/// trim period, also when no request comes to do it (`wasm/pool.rs`).
async fn sweep_idle_instances(runtime: std::sync::Weak<Runtime>) {
    loop {
        tokio::time::sleep(crate::wasm::pool::TRIM_PERIOD).await;
        let Some(rt) = runtime.upgrade() else { return };
        for chain in rt.snapshot().chains.values() {
            for filter in &chain.filters {
                filter.trim_idle();
            }
        }
    }
}

/// The signals a running proxy answers. Register them before `App::start`: a
/// signal sent as soon as the proxy says it is ready must find them, or SIGTERM
/// and SIGHUP kill the process (their default action) instead of draining or
/// reloading.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn register() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// How long the watcher waits for a burst of file events to settle.
pub const RELOAD_DEBOUNCE: Duration = Duration::from_millis(200);
