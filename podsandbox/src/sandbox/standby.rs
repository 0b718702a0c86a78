//! The standby monitor: one `berthd monitor-standby` kept waiting, so that the next
//! RunPodSandbox hands it its pod instead of exec'ing a monitor (`monitor_client::start`). A
//! new one is started once the build is done, so that its start does not take CPU from that
//! build's CNI plugins. It belongs to this
//! agent: it exits when the agent's end of its stdin closes, whatever ends the agent.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;

use crate::monitor_client::{self, Standby};

pub(crate) struct Spare {
    state: PathBuf,
    slot: Mutex<Slot>,
    /// `berth_monitor_standby_waiting`: 1 while the slot is `Ready`.
    waiting: Gauge,
}

enum Slot {
    /// `[runtime] monitor_standby = false`.
    Off,
    Empty,
    Starting,
    Ready(Standby),
}

impl Spare {
    pub(crate) fn new(state: PathBuf, enabled: bool, waiting: Gauge) -> Arc<Spare> {
        Arc::new(Spare {
            state,
            slot: Mutex::new(if enabled { Slot::Empty } else { Slot::Off }),
            waiting,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The standby, when one waits.
    pub(crate) fn take(&self) -> Option<Standby> {
        let mut slot = self.lock();
        match std::mem::replace(&mut *slot, Slot::Empty) {
            Slot::Ready(standby) => {
                self.waiting.set(0);
                Some(standby)
            }
            other => {
                *slot = other;
                None
            }
        }
    }

    /// Starts a standby in the background, unless one waits or is being started.
    pub(crate) fn refill(self: &Arc<Self>) {
        {
            let mut slot = self.lock();
            if !matches!(*slot, Slot::Empty) {
                return;
            }
            *slot = Slot::Starting;
        }
        let spare = self.clone();
        tokio::spawn(async move {
            let started = monitor_client::start_standby(&spare.state).await;
            let mut slot = spare.lock();
            *slot = match started {
                Ok(standby) => {
                    tracing::debug!(pid = standby.pid(), "standby monitor waiting");
                    spare.waiting.set(1);
                    Slot::Ready(standby)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "standby monitor did not start: the next pod's monitor is exec'd");
                    Slot::Empty
                }
            };
        });
    }
}
