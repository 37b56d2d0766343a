//! State shared by every request of one filter: atomic counters and a small
//! key-value store with TTLs, bounded in entries and bytes. It belongs to the
//! filter's name, so a chain swap that keeps the name keeps the state.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Largest key and value the store takes.
pub const MAX_KEY: usize = 1024;
pub const MAX_VALUE: usize = 64 * 1024;

pub struct SharedStore {
    counters: Mutex<HashMap<String, i64>>,
    entries: Mutex<HashMap<String, Entry>>,
    max_entries: Mutex<usize>,
}

struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum StoreError {
    Full,
    TooLarge,
    Conflict,
}

impl SharedStore {
    pub fn new(max_entries: usize) -> Self {
        SharedStore {
            counters: Mutex::default(),
            entries: Mutex::default(),
            max_entries: Mutex::new(max_entries),
        }
    }

    /// A reload may change the bound; existing entries stay.
    pub fn set_max_entries(&self, n: usize) {
        *self.max_entries.lock().unwrap_or_else(|p| p.into_inner()) = n;
    }

    pub fn counter_add(&self, key: &str, delta: i64) -> i64 {
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = c.get_mut(key) {
            *v = v.saturating_add(delta);
            return *v;
        }
        let max = *self.max_entries.lock().unwrap_or_else(|p| p.into_inner());
        if c.len() >= max || key.len() > MAX_KEY {
            // Out of room: report what the counter would be without keeping it.
            return delta;
        }
        c.insert(key.to_string(), delta);
        delta
    }

    pub fn counter_get(&self, key: &str) -> i64 {
        self.counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|e| e.live(now))
            .map(|e| e.value.clone())
    }

    pub fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), StoreError> {
        self.write(key, None, value, ttl)
    }

    /// Writes only if the current value is `expected` (`None`: absent or expired).
    pub fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        self.write(key, Some(expected), value, ttl)
    }

    fn write(
        &self,
        key: &str,
        expected: Option<Option<&[u8]>>,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        if key.len() > MAX_KEY || value.len() > MAX_VALUE {
            return Err(StoreError::TooLarge);
        }
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(expected) = expected {
            let current = entries
                .get(key)
                .filter(|e| e.live(now))
                .map(|e| e.value.as_slice());
            if current != expected {
                return Err(StoreError::Conflict);
            }
        }
        let max = *self.max_entries.lock().unwrap_or_else(|p| p.into_inner());
        if !entries.contains_key(key) && entries.len() >= max {
            entries.retain(|_, e| e.live(now));
            if entries.len() >= max {
                return Err(StoreError::Full);
            }
        }
        entries.insert(
            key.to_string(),
            Entry {
                value,
                expires: ttl.map(|t| now + t),
            },
        );
        Ok(())
    }

    pub fn delete(&self, key: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn entries_expire_and_the_store_is_bounded() {
        let s = SharedStore::new(2);
        s.set("a", b"1".to_vec(), Some(Duration::from_secs(1)))
            .unwrap();
        s.set("b", b"2".to_vec(), None).unwrap();
        assert_eq!(s.set("c", b"3".to_vec(), None), Err(StoreError::Full));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(s.get("a"), None);
        // The expired entry made room.
        s.set("c", b"3".to_vec(), None).unwrap();
        assert_eq!(s.get("c").as_deref(), Some(&b"3"[..]));
        assert_eq!(
            s.set("big", vec![0; MAX_VALUE + 1], None),
            Err(StoreError::TooLarge)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn compare_and_swap_sees_only_live_values() {
        let s = SharedStore::new(10);
        s.compare_and_swap("k", None, b"v1".to_vec(), Some(Duration::from_secs(1)))
            .unwrap();
        assert_eq!(
            s.compare_and_swap("k", None, b"x".to_vec(), None),
            Err(StoreError::Conflict)
        );
        s.compare_and_swap("k", Some(b"v1"), b"v2".to_vec(), None)
            .unwrap();
        assert_eq!(s.get("k").as_deref(), Some(&b"v2"[..]));
    }

    #[test]
    fn counters_add_atomically() {
        let s = std::sync::Arc::new(SharedStore::new(10));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    (0..1000).for_each(|_| {
                        s.counter_add("n", 1);
                    })
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(s.counter_get("n"), 4000);
    }
}
