//! `weft:filter/context`: the filter's config and name, logging, the connection,
//! clocks and randomness.

use ring::rand::SecureRandom;

use crate::wasm::bindings::weft::filter::context::{ConnectionInfo, Host, StoreError, TlsInfo};
use crate::wasm::bindings::Level;
use crate::wasm::state::HostState;

type R<T> = wasmtime::Result<T>;

/// The largest random buffer one call returns.
const MAX_RANDOM: u32 = 64 * 1024;
/// The longest log message kept; the rest is cut.
const MAX_LOG: usize = 8 * 1024;

impl Host for HostState {
    fn config(&mut self) -> R<Vec<u8>> {
        Ok(self.filter.config_json.clone())
    }

    fn filter_name(&mut self) -> R<String> {
        Ok(self.filter.name.to_string())
    }

    fn request_id(&mut self) -> R<u64> {
        Ok(self.call.request_id)
    }

    fn keep_instance(&mut self) -> R<()> {
        self.call.keep = true;
        Ok(())
    }

    fn request_value(&mut self, key: String) -> R<Option<Vec<u8>>> {
        Ok(self.call.scope.as_ref().and_then(|s| {
            let values = s.values.lock().unwrap_or_else(|p| p.into_inner());
            values.get(&key).map(<[u8]>::to_vec)
        }))
    }

    fn set_request_value(&mut self, key: String, value: Vec<u8>) -> R<Result<(), StoreError>> {
        let Some(scope) = &self.call.scope else {
            // Outside a request (`configure`): nothing to keep it with.
            return Ok(Err(StoreError::Full));
        };
        let mut values = scope.values.lock().unwrap_or_else(|p| p.into_inner());
        Ok(if values.set(key, value) {
            Ok(())
        } else {
            Err(StoreError::TooLarge)
        })
    }

    fn log(&mut self, level: Level, message: String) -> R<()> {
        let mut message = message;
        if message.len() > MAX_LOG {
            let mut cut = MAX_LOG;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let filter = &*self.filter.name;
        let request = self.call.request_id;
        match level {
            Level::Trace => tracing::trace!(target: "weft::filter", filter, request, "{message}"),
            Level::Debug => tracing::debug!(target: "weft::filter", filter, request, "{message}"),
            Level::Info => tracing::info!(target: "weft::filter", filter, request, "{message}"),
            Level::Warn => tracing::warn!(target: "weft::filter", filter, request, "{message}"),
            Level::Error => tracing::error!(target: "weft::filter", filter, request, "{message}"),
        }
        Ok(())
    }

    fn log_enabled(&mut self, level: Level) -> R<bool> {
        Ok(match level {
            Level::Trace => tracing::enabled!(target: "weft::filter", tracing::Level::TRACE),
            Level::Debug => tracing::enabled!(target: "weft::filter", tracing::Level::DEBUG),
            Level::Info => tracing::enabled!(target: "weft::filter", tracing::Level::INFO),
            Level::Warn => tracing::enabled!(target: "weft::filter", tracing::Level::WARN),
            Level::Error => tracing::enabled!(target: "weft::filter", tracing::Level::ERROR),
        })
    }

    fn connection(&mut self) -> R<ConnectionInfo> {
        let Some(c) = self.call.scope.as_ref().and_then(|s| s.conn.as_ref()) else {
            return Ok(ConnectionInfo {
                remote_address: String::new(),
                local_address: String::new(),
                listener: String::new(),
                tls: None,
            });
        };
        Ok(ConnectionInfo {
            remote_address: c.remote.to_string(),
            local_address: c.local.to_string(),
            listener: c.listener.to_string(),
            tls: c.tls.as_ref().map(|t| TlsInfo {
                sni: t.sni.clone(),
                alpn: t.alpn.clone(),
                peer_identity: t.peer_identity.clone(),
            }),
        })
    }

    fn now_ns(&mut self) -> R<u64> {
        Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64))
    }

    fn monotonic_ns(&mut self) -> R<u64> {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        Ok(START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_nanos() as u64)
    }

    fn random_bytes(&mut self, len: u32) -> R<Vec<u8>> {
        let mut buf = vec![0u8; len.min(MAX_RANDOM) as usize];
        ring::rand::SystemRandom::new()
            .fill(&mut buf)
            .map_err(|_| wasmtime::Error::msg("the system random generator failed"))?;
        Ok(buf)
    }

    fn skip_phase(&mut self) -> R<()> {
        self.call.skipped = true;
        Ok(())
    }
}
