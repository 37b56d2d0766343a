//! Random bytes from the host's cryptographic generator (in tests, a fixed-seed
//! generator, so runs repeat).
//!
//! ```
//! let nonce = weft_sdk::random::bytes(16);
//! assert_eq!(nonce.len(), 16);
//! ```

use crate::host;

/// `len` random bytes.
///
/// ```
/// let key = weft_sdk::random::bytes(32);
/// # assert_eq!(key.len(), 32);
/// ```
pub fn bytes(len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    fill(&mut out);
    out
}

/// Fills a buffer with random bytes.
///
/// ```
/// let mut id = [0u8; 8];
/// weft_sdk::random::fill(&mut id);
/// ```
pub fn fill(buf: &mut [u8]) {
    // The host takes a u32 length; ask in pieces for (absurdly) large buffers.
    for piece in buf.chunks_mut(1 << 20) {
        let len = u32::try_from(piece.len()).unwrap_or(u32::MAX);
        let random = host::random_bytes(len);
        let n = random.len().min(piece.len());
        piece[..n].copy_from_slice(&random[..n]);
    }
}

/// A random `u64`.
///
/// ```
/// let sample = weft_sdk::random::u64() % 100 < 5; // keep 5% of requests
/// # let _ = sample;
/// ```
pub fn u64() -> u64 {
    let mut buf = [0u8; 8];
    fill(&mut buf);
    u64::from_le_bytes(buf)
}
