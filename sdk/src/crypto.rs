//! Cryptography done natively by the proxy: much faster than inside Wasm.
//!
//! ```
//! use weft_sdk::crypto::{self, HashAlgorithm};
//!
//! let tag = crypto::hmac(HashAlgorithm::Sha256, b"secret", b"payload");
//! assert!(crypto::hmac_verify(HashAlgorithm::Sha256, b"secret", b"payload", &tag));
//! ```

use std::fmt;

use crate::host;

/// A signature algorithm, named as in JWT (`alg`).
///
/// ```
/// use weft_sdk::crypto::SignatureAlgorithm;
/// assert_eq!(SignatureAlgorithm::from_jwt("ES256"), Some(SignatureAlgorithm::Es256));
/// assert_eq!(SignatureAlgorithm::from_jwt("none"), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignatureAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (JWT `RS256`).
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384 (JWT `RS384`).
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512 (JWT `RS512`).
    Rs512,
    /// RSASSA-PSS with SHA-256 (JWT `PS256`).
    Ps256,
    /// RSASSA-PSS with SHA-384 (JWT `PS384`).
    Ps384,
    /// RSASSA-PSS with SHA-512 (JWT `PS512`).
    Ps512,
    /// ECDSA P-256 with SHA-256, fixed-size `r||s` signature (JWT `ES256`).
    Es256,
    /// ECDSA P-384 with SHA-384, fixed-size `r||s` signature (JWT `ES384`).
    Es384,
    /// Ed25519 (JWT `EdDSA`).
    Ed25519,
}

impl SignatureAlgorithm {
    /// The algorithm for a JWT `alg` name; `None` for names not supported (including `none`).
    ///
    /// ```
    /// use weft_sdk::crypto::SignatureAlgorithm;
    /// assert_eq!(SignatureAlgorithm::from_jwt("EdDSA"), Some(SignatureAlgorithm::Ed25519));
    /// ```
    pub fn from_jwt(alg: &str) -> Option<Self> {
        Some(match alg {
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "PS256" => Self::Ps256,
            "PS384" => Self::Ps384,
            "PS512" => Self::Ps512,
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            "EdDSA" => Self::Ed25519,
            _ => return None,
        })
    }
}

/// A hash function for [`hmac`] and [`digest`].
///
/// ```
/// use weft_sdk::crypto::{digest, HashAlgorithm};
/// assert_eq!(digest(HashAlgorithm::Sha384, b"").len(), 48);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlgorithm {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

/// A public key in one of the forms JWKS and PEM files carry.
///
/// ```
/// use weft_sdk::crypto::PublicKey;
/// // From a JWK {"kty":"RSA","n":...,"e":"AQAB"}, after base64url-decoding n and e:
/// let key = PublicKey::Rsa { n: vec![0xc3; 256], e: vec![1, 0, 1] };
/// # let _ = key;
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PublicKey {
    /// An RSA key by modulus and exponent, big-endian bytes (JWK `n` and `e`).
    Rsa {
        /// The modulus.
        n: Vec<u8>,
        /// The public exponent.
        e: Vec<u8>,
    },
    /// An uncompressed elliptic-curve point `0x04||x||y`, or a raw 32-byte Ed25519 key.
    Raw(Vec<u8>),
    /// A DER SubjectPublicKeyInfo, as in a PEM `PUBLIC KEY` block.
    SpkiDer(Vec<u8>),
}

/// Why a signature could not be checked.
///
/// ```
/// use weft_sdk::crypto::{verify, CryptoError, PublicKey, SignatureAlgorithm};
/// let err = verify(SignatureAlgorithm::Es256, &PublicKey::Raw(vec![1, 2, 3]), b"m", b"s");
/// assert!(matches!(err, Err(CryptoError::InvalidKey(_))));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    /// The key could not be read for this algorithm.
    InvalidKey(String),
}

impl fmt::Display for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CryptoError::InvalidKey(reason) => write!(f, "invalid key: {reason}"),
        }
    }
}

impl std::error::Error for CryptoError {}

/// Verifies a signature: `Ok(false)` when it does not match, an error when the key
/// cannot be used with this algorithm.
///
/// ```
/// use weft_sdk::crypto::{verify, PublicKey, SignatureAlgorithm};
/// fn check(key: &PublicKey, signed: &[u8], sig: &[u8]) -> bool {
///     verify(SignatureAlgorithm::Rs256, key, signed, sig).unwrap_or(false)
/// }
/// ```
pub fn verify(
    alg: SignatureAlgorithm,
    key: &PublicKey,
    message: &[u8],
    signature: &[u8],
) -> Result<bool, CryptoError> {
    host::verify(alg, key, message, signature)
}

/// Computes an HMAC.
///
/// ```
/// use weft_sdk::crypto::{hmac, HashAlgorithm};
/// assert_eq!(hmac(HashAlgorithm::Sha512, b"k", b"m").len(), 64);
/// ```
pub fn hmac(alg: HashAlgorithm, key: &[u8], message: &[u8]) -> Vec<u8> {
    host::hmac(alg, key, message)
}

/// Checks an HMAC in constant time.
///
/// ```
/// use weft_sdk::crypto::{hmac_verify, HashAlgorithm};
/// assert!(!hmac_verify(HashAlgorithm::Sha256, b"k", b"m", b"not the tag"));
/// ```
pub fn hmac_verify(alg: HashAlgorithm, key: &[u8], message: &[u8], tag: &[u8]) -> bool {
    host::hmac_verify(alg, key, message, tag)
}

/// Compares two byte strings in time that depends only on their lengths, not on where
/// they differ: use it to check API keys and tokens. Done in the filter (no host call).
///
/// ```
/// use weft_sdk::crypto::constant_time_eq;
/// assert!(constant_time_eq(b"s3cret", b"s3cret"));
/// assert!(!constant_time_eq(b"s3cret", b"s3creT"));
/// assert!(!constant_time_eq(b"s3cret", b"s3cre"));
/// ```
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keep the optimizer from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

/// Computes a digest.
///
/// ```
/// use weft_sdk::crypto::{digest, HashAlgorithm};
/// let d = digest(HashAlgorithm::Sha256, b"abc");
/// assert_eq!(d[..4], [0xba, 0x78, 0x16, 0xbf]);
/// ```
pub fn digest(alg: HashAlgorithm, data: &[u8]) -> Vec<u8> {
    host::digest(alg, data)
}
