//! Logging into the proxy's log, tagged with the filter's name and the request.
//!
//! The macros ask the proxy whether the level is enabled before formatting, so a
//! disabled `debug!` costs one host call and no allocation.
//!
//! ```
//! use weft_sdk::log;
//! let user = "ada";
//! log::info!("allowed {user}");
//! log::warn!("quota at {}%", 93);
//! ```

use std::fmt;

use crate::host;

/// A log level, mapped onto the proxy's `tracing` levels. Ordered from the most
/// verbose (`Trace`) to the most severe (`Error`).
///
/// ```
/// use weft_sdk::log::Level;
/// assert!(Level::Error > Level::Info);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging details.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the filter handled.
    Warn,
    /// Something failed.
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Trace => "TRACE",
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        })
    }
}

/// Whether a log at this level would be written.
///
/// ```
/// use weft_sdk::log::{self, Level};
/// if log::enabled(Level::Debug) {
///     let expensive = format!("{:?}", vec![1, 2, 3]);
///     log::write(Level::Debug, &expensive);
/// }
/// ```
pub fn enabled(level: Level) -> bool {
    host::log_enabled(level)
}

/// Writes a message at this level (without checking [`enabled`] first; the macros do).
///
/// ```
/// weft_sdk::log::write(weft_sdk::log::Level::Info, "configured");
/// ```
pub fn write(level: Level, message: &str) {
    host::log(level, message)
}

#[doc(hidden)]
#[macro_export]
macro_rules! __weft_log {
    ($level:expr, $($arg:tt)+) => {{
        let level: $crate::log::Level = $level;
        if $crate::log::enabled(level) {
            $crate::log::write(level, &::std::format!($($arg)+));
        }
    }};
}

#[doc(hidden)]
#[macro_export]
macro_rules! __weft_trace {
    ($($arg:tt)+) => { $crate::__weft_log!($crate::log::Level::Trace, $($arg)+) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __weft_debug {
    ($($arg:tt)+) => { $crate::__weft_log!($crate::log::Level::Debug, $($arg)+) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __weft_info {
    ($($arg:tt)+) => { $crate::__weft_log!($crate::log::Level::Info, $($arg)+) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __weft_warn {
    ($($arg:tt)+) => { $crate::__weft_log!($crate::log::Level::Warn, $($arg)+) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __weft_error {
    ($($arg:tt)+) => { $crate::__weft_log!($crate::log::Level::Error, $($arg)+) };
}

/// Logs at a level given at run time, formatting like `format!` only if enabled.
///
/// ```
/// use weft_sdk::log::{self, Level};
/// let level = if cfg!(debug_assertions) { Level::Debug } else { Level::Info };
/// log::log!(level, "starting {}", "up");
/// ```
#[doc(inline)]
pub use crate::__weft_log as log;

/// Logs at [`Level::Trace`].
///
/// ```
/// weft_sdk::log::trace!("header count {}", 3);
/// ```
#[doc(inline)]
pub use crate::__weft_trace as trace;

/// Logs at [`Level::Debug`].
///
/// ```
/// weft_sdk::log::debug!("cache miss for {}", "/items");
/// ```
#[doc(inline)]
pub use crate::__weft_debug as debug;

/// Logs at [`Level::Info`].
///
/// ```
/// weft_sdk::log::info!("allowed");
/// ```
#[doc(inline)]
pub use crate::__weft_info as info;

/// Logs at [`Level::Warn`].
///
/// ```
/// weft_sdk::log::warn!("token expires in {}s", 5);
/// ```
#[doc(inline)]
pub use crate::__weft_warn as warn;

/// Logs at [`Level::Error`].
///
/// ```
/// weft_sdk::log::error!("jwks fetch failed: {}", "timeout");
/// ```
#[doc(inline)]
pub use crate::__weft_error as error;
