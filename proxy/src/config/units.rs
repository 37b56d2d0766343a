//! Durations and byte sizes as operators write them: `"250ms"`, `"30s"`, `"16MiB"`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written with its unit, such as `"1s"`, `"250ms"` or `"5m"`.
/// `"0s"` means "no limit" wherever a field says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
    /// `None` when the duration is zero (the "no limit" convention).
    pub fn non_zero(self) -> Option<Duration> {
        (!self.0.is_zero()).then_some(self.0)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim())
            .map(Dur)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?} ({e}); write it with a unit, such as \"250ms\" or \"30s\"")))
    }
}

/// A size in bytes: a plain integer or a string with a unit, such as `"64KiB"` or `"16MiB"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Bytes(pub u64);

impl Bytes {
    pub const fn kib(n: u64) -> Self {
        Bytes(n * 1024)
    }
    pub const fn mib(n: u64) -> Self {
        Bytes(n * 1024 * 1024)
    }
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", bytesize::ByteSize(self.0).display().iec())
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Bytes(n)),
            Raw::Text(t) => t.trim().parse::<bytesize::ByteSize>().map(|b| Bytes(b.as_u64())).map_err(|e| {
                serde::de::Error::custom(format!("invalid size {t:?} ({e}); write bytes or a unit, such as \"64KiB\" or \"16MiB\""))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Holder {
        d: Dur,
        b: Bytes,
    }

    #[test]
    fn parses_units() {
        let h: Holder = toml::from_str("d = \"250ms\"\nb = \"16MiB\"").unwrap();
        assert_eq!(h.d.0, Duration::from_millis(250));
        assert_eq!(h.b.0, 16 * 1024 * 1024);
        let h: Holder = toml::from_str("d = \"1m 30s\"\nb = 4096").unwrap();
        assert_eq!(h.d.0, Duration::from_secs(90));
        assert_eq!(h.b.0, 4096);
    }

    #[test]
    fn rejects_missing_unit() {
        let err = toml::from_str::<Holder>("d = \"30\"\nb = 1")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("invalid duration"), "{err}");
    }

    #[test]
    fn zero_means_unlimited() {
        assert_eq!(Dur::secs(0).non_zero(), None);
        assert_eq!(Dur::secs(2).non_zero(), Some(Duration::from_secs(2)));
    }
}
