//! `weft:filter/shared`: counters and a key-value store shared by all requests of a filter.

use std::time::Duration;

use crate::wasm::bindings::weft::filter::shared::{Host, StoreError};
use crate::wasm::shared::StoreError as E;
use crate::wasm::state::HostState;

type R<T> = wasmtime::Result<T>;

fn map(r: Result<(), E>) -> Result<(), StoreError> {
    r.map_err(|e| match e {
        E::Full => StoreError::Full,
        E::TooLarge => StoreError::TooLarge,
        E::Conflict => StoreError::Conflict,
    })
}

impl Host for HostState {
    fn counter_add(&mut self, key: String, delta: i64) -> R<i64> {
        Ok(self.filter.shared.counter_add(&key, delta))
    }

    fn counter_get(&mut self, key: String) -> R<i64> {
        Ok(self.filter.shared.counter_get(&key))
    }

    fn get(&mut self, key: String) -> R<Option<Vec<u8>>> {
        Ok(self.filter.shared.get(&key))
    }

    fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> R<Result<(), StoreError>> {
        Ok(map(self.filter.shared.set(
            &key,
            value,
            ttl_ms.map(Duration::from_millis),
        )))
    }

    fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> R<Result<(), StoreError>> {
        Ok(map(self.filter.shared.compare_and_swap(
            &key,
            expected.as_deref(),
            value,
            ttl_ms.map(Duration::from_millis),
        )))
    }

    fn delete(&mut self, key: String) -> R<()> {
        self.filter.shared.delete(&key);
        Ok(())
    }
}
