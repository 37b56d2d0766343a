//! Metrics (Prometheus, through prometheus-client) and logs (tracing): the access
//! log is one `weft::access` event per request.

pub mod access;
pub mod metrics;
pub mod per_worker;

use std::sync::OnceLock;

use tracing_subscriber::{reload, EnvFilter};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global log subscriber. `RUST_LOG` overrides `default_filter`. Its
/// filter can be changed while the proxy runs (`set_log_filter`).
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let colours = colours();
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(colours)
        .with_env_filter(filter);
    // A second init (tests start several proxies in one process) keeps the first.
    // (The reloadable filter is added last: its handle's type names the format's.)
    match format {
        LogFormat::Text => {
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            if builder.try_init().is_ok() {
                LogFilter::install(handle);
                access::write_here(access::Style { format, colours });
            }
        }
        LogFormat::Json => {
            let builder = builder.json().flatten_event(true).with_filter_reloading();
            let handle = builder.reload_handle();
            if builder.try_init().is_ok() {
                LogFilter::install(handle);
                access::write_here(access::Style { format, colours });
            }
        }
    }
}

/// Whether human-readable lines are coloured: only for a terminal, and not under
/// `NO_COLOR` (no-color.org). A container's or a service manager's log collector
/// would store the escape codes; writing them also took a third of the access log's
/// cost per request (`docs/benchmarks.md`).
fn colours() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The running subscriber's filter, behind its reload handle (whose type depends on
/// the log format).
struct LogFilter {
    get: Box<dyn Fn() -> Option<String> + Send + Sync>,
    set: Box<dyn Fn(EnvFilter) -> Result<(), reload::Error> + Send + Sync>,
}

static LOG_FILTER: OnceLock<LogFilter> = OnceLock::new();

impl LogFilter {
    fn install<S: 'static>(handle: reload::Handle<EnvFilter, S>) {
        let get = handle.clone();
        let _ = LOG_FILTER.set(LogFilter {
            get: Box::new(move || get.with_current(|f| f.to_string()).ok()),
            set: Box::new(move |f| handle.reload(f)),
        });
    }
}

/// What is logged now (`EnvFilter` directives), if this process set up logging.
pub fn log_filter() -> Option<String> {
    (LOG_FILTER.get()?.get)()
}

/// Why the log filter was not changed.
#[derive(Debug, thiserror::Error)]
pub enum LogFilterError {
    #[error("invalid log filter {0:?}: {1}")]
    Invalid(String, String),
    #[error("logging is not set up by this process")]
    NotSetUp,
}

/// Changes what is logged, as `--log` or `RUST_LOG` would (`"debug"`,
/// `"info,weft::access=off"`): for an incident, without a restart. Callsites are
/// re-registered, so what is off costs nothing again once turned off.
pub fn set_log_filter(directives: &str) -> Result<String, LogFilterError> {
    let reloader = LOG_FILTER.get().ok_or(LogFilterError::NotSetUp)?;
    let filter = EnvFilter::try_new(directives.trim())
        .map_err(|e| LogFilterError::Invalid(directives.trim().to_string(), e.to_string()))?;
    let text = filter.to_string();
    (reloader.set)(filter).map_err(|_| LogFilterError::NotSetUp)?;
    Ok(text)
}
