//! Helpers started ahead of their use: one kept in a slot, taken when it waits, and started
//! again in the background when its owner says so. The pod monitor (`berthd monitor-standby`,
//! handed the next RunPodSandbox's pod) and the ExecSync executor (`berthd init exec-standby`,
//! handed the next command) are kept so. Each belongs to this agent: it exits when the agent's
//! end of its stdin closes, whatever ends the agent.

use std::future::Future;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;

pub(crate) struct Standby<T> {
    slot: Mutex<Slot<T>>,
    /// `berth_…_standby_waiting`: 1 while the slot is `Ready`.
    waiting: Gauge,
    /// What waits, for the log ("standby monitor").
    what: &'static str,
    /// What happens instead while none waits, for the log.
    instead: &'static str,
}

enum Slot<T> {
    /// Standbys are turned off (`[runtime] monitor_standby = false`, say).
    Off,
    Empty,
    Starting,
    Ready(Box<T>),
}

impl<T: Send + 'static> Standby<T> {
    pub(crate) fn new(
        what: &'static str,
        instead: &'static str,
        enabled: bool,
        waiting: Gauge,
    ) -> Arc<Standby<T>> {
        Arc::new(Standby {
            slot: Mutex::new(if enabled { Slot::Empty } else { Slot::Off }),
            waiting,
            what,
            instead,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot<T>> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The standby, when one waits.
    pub(crate) fn take(&self) -> Option<T> {
        let mut slot = self.lock();
        match std::mem::replace(&mut *slot, Slot::Empty) {
            Slot::Ready(standby) => {
                self.waiting.set(0);
                Some(*standby)
            }
            other => {
                *slot = other;
                None
            }
        }
    }

    /// Starts a standby with `start` in a task of its own, unless one waits or is being started
    /// (or they are off).
    pub(crate) fn refill<F, S, E>(self: &Arc<Self>, start: F)
    where
        F: FnOnce() -> S + Send + 'static,
        S: Future<Output = Result<T, E>> + Send,
        E: std::fmt::Display,
    {
        {
            let mut slot = self.lock();
            if !matches!(*slot, Slot::Empty) {
                return;
            }
            *slot = Slot::Starting;
        }
        let standby = self.clone();
        tokio::spawn(async move {
            let started = start().await;
            let mut slot = standby.lock();
            *slot = match started {
                Ok(ready) => {
                    tracing::debug!("{} waiting", standby.what);
                    standby.waiting.set(1);
                    Slot::Ready(Box::new(ready))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "{} did not start: {}", standby.what, standby.instead);
                    Slot::Empty
                }
            };
        });
    }
}
