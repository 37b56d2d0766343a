//! State shared by every request of the same filter, for rate limits and budgets.
//!
//! It lives in the proxy (not in the Wasm instance), survives config reloads for a filter
//! of the same name, and is bounded in size. Keys are per filter.
//!
//! ```
//! use std::time::Duration;
//! use weft_sdk::shared;
//!
//! // A fixed-window limit: at most 100 requests per client per minute.
//! let window = weft_sdk::time::now()
//!     .duration_since(std::time::UNIX_EPOCH)
//!     .unwrap_or_default()
//!     .as_secs()
//!     / 60;
//! let seen = shared::counter_add(&format!("rl:10.0.0.7:{window}"), 1);
//! let allowed = seen <= 100;
//! # assert!(allowed);
//! ```

use std::fmt;
use std::time::Duration;

use crate::host;

/// Why the shared store refused a write.
///
/// ```
/// use weft_sdk::shared::{self, StoreError};
/// shared::set("k", b"new", None)?;
/// let lost = shared::compare_and_swap("k", Some(b"old".as_slice()), b"newer", None);
/// assert_eq!(lost, Err(StoreError::Conflict));
/// # Ok::<(), StoreError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreError {
    /// The store holds as many entries or bytes as it may.
    Full,
    /// The key or value is larger than allowed.
    TooLarge,
    /// A compare-and-swap found another value.
    Conflict,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreError::Full => "the store is full",
            StoreError::TooLarge => "key or value too large for the store",
            StoreError::Conflict => "compare-and-swap found another value",
        })
    }
}

impl std::error::Error for StoreError {}

/// Milliseconds for the host, rounded up so a short TTL does not become "no expiry".
fn ttl_ms(ttl: Option<Duration>) -> Option<u64> {
    ttl.map(|d| {
        let ms = d.as_millis() + u128::from(d.subsec_nanos() % 1_000_000 != 0);
        u64::try_from(ms).unwrap_or(u64::MAX)
    })
}

/// Atomically adds `delta` to a named counter and returns the new value.
///
/// ```
/// let n = weft_sdk::shared::counter_add("budget:tenant-7", 1);
/// # assert_eq!(n, 1);
/// ```
pub fn counter_add(key: &str, delta: i64) -> i64 {
    host::counter_add(key, delta)
}

/// Reads a counter (0 when absent).
///
/// ```
/// assert_eq!(weft_sdk::shared::counter_get("never-touched"), 0);
/// ```
pub fn counter_get(key: &str) -> i64 {
    host::counter_get(key)
}

/// Reads a key; expired entries read as absent.
///
/// ```
/// let cached = weft_sdk::shared::get("jwks");
/// # assert!(cached.is_none());
/// ```
pub fn get(key: &str) -> Option<Vec<u8>> {
    host::shared_get(key)
}

/// Writes a key, optionally expiring after `ttl` (rounded up to a millisecond).
///
/// ```
/// use std::time::Duration;
/// weft_sdk::shared::set("jwks", b"{\"keys\":[]}", Some(Duration::from_secs(300)))?;
/// # Ok::<(), weft_sdk::shared::StoreError>(())
/// ```
pub fn set(key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
    host::shared_set(key, value, ttl_ms(ttl))
}

/// Writes a key only if its current value is `expected` (`None`: the key is absent).
///
/// ```
/// use weft_sdk::shared::{self, StoreError};
/// // Only the first request to get here becomes the leader.
/// let leader = shared::compare_and_swap("refresh-lock", None, b"1", None).is_ok();
/// # assert!(leader);
/// ```
pub fn compare_and_swap(
    key: &str,
    expected: Option<&[u8]>,
    value: &[u8],
    ttl: Option<Duration>,
) -> Result<(), StoreError> {
    host::shared_compare_and_swap(key, expected, value, ttl_ms(ttl))
}

/// Removes a key.
///
/// ```
/// weft_sdk::shared::delete("refresh-lock");
/// ```
pub fn delete(key: &str) {
    host::shared_delete(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_to_a_millisecond() {
        assert_eq!(ttl_ms(None), None);
        assert_eq!(ttl_ms(Some(Duration::ZERO)), Some(0));
        assert_eq!(ttl_ms(Some(Duration::from_nanos(1))), Some(1));
        assert_eq!(ttl_ms(Some(Duration::from_millis(1500))), Some(1500));
        assert_eq!(ttl_ms(Some(Duration::from_micros(1500))), Some(2));
        assert_eq!(ttl_ms(Some(Duration::MAX)), Some(u64::MAX));
    }
}
