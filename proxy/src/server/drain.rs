//! Graceful shutdown: one signal tells every listener and connection to stop taking
//! work, then the controller waits until the last of them is gone or time runs out.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// Held by every task that must finish before the process may exit.
#[derive(Clone)]
pub struct Drain {
    signal: watch::Receiver<bool>,
    _token: mpsc::Sender<()>,
}

impl Drain {
    /// Resolves once shutdown has begun.
    pub async fn signaled(&mut self) {
        // An error means the controller is gone, which is also shutdown.
        let _ = self.signal.wait_for(|draining| *draining).await;
    }

    pub fn is_draining(&self) -> bool {
        *self.signal.borrow()
    }

    /// A receiver of the shutdown signal that reads whether it changed without
    /// waiting (`has_changed`, one atomic load).
    pub fn probe(&self) -> watch::Receiver<bool> {
        self.signal.clone()
    }
}

pub struct DrainController {
    signal: watch::Sender<bool>,
    token: Option<mpsc::Sender<()>>,
    done: mpsc::Receiver<()>,
}

impl Default for DrainController {
    fn default() -> Self {
        Self::new()
    }
}

impl DrainController {
    pub fn new() -> Self {
        let (signal, _) = watch::channel(false);
        let (token, done) = mpsc::channel(1);
        DrainController {
            signal,
            token: Some(token),
            done,
        }
    }

    /// Whether shutdown has begun, without holding shutdown up.
    pub fn signal(&self) -> watch::Receiver<bool> {
        self.signal.subscribe()
    }

    pub fn watcher(&self) -> Drain {
        Drain {
            signal: self.signal.subscribe(),
            // Only taken in `drain`, which consumes self.
            _token: self.token.clone().unwrap_or_else(|| mpsc::channel(1).0),
        }
    }

    /// Signals shutdown and waits for every `Drain` to be dropped, up to `deadline`.
    /// Returns whether everything finished in time.
    pub async fn drain(mut self, deadline: Duration) -> bool {
        let _ = self.signal.send(true);
        self.token = None;
        tokio::time::timeout(deadline, self.done.recv())
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_holders_then_gives_up_at_the_deadline() {
        let c = DrainController::new();
        let mut quick = c.watcher();
        tokio::spawn(async move {
            quick.signaled().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        assert!(c.drain(Duration::from_secs(5)).await);

        let c = DrainController::new();
        let mut slow = c.watcher();
        tokio::spawn(async move {
            slow.signaled().await;
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        assert!(!c.drain(Duration::from_secs(5)).await);
    }
}
