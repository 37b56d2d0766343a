//! The proxy's clocks (in tests, the fake host's clock, which only moves when told).
//!
//! ```
//! use weft_sdk::time;
//! let started = time::monotonic();
//! // ... work ...
//! let elapsed = time::monotonic().saturating_sub(started);
//! # assert!(elapsed.as_secs() < 1);
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::host;

/// Wall-clock time. Use it for timestamps and token expiry, not for measuring
/// durations (see [`monotonic`]).
///
/// ```
/// use std::time::UNIX_EPOCH;
/// let now = weft_sdk::time::now();
/// assert!(now > UNIX_EPOCH);
/// ```
pub fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(host::now_ns())
}

/// A monotonic clock: time since an arbitrary start, never going back.
///
/// ```
/// let a = weft_sdk::time::monotonic();
/// let b = weft_sdk::time::monotonic();
/// assert!(b >= a);
/// ```
pub fn monotonic() -> Duration {
    Duration::from_nanos(host::monotonic_ns())
}
