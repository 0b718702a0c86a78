//! Containers as the agent keeps them: the rootfs (an overlay of the image's snapshots with a
//! writable upper dir), the bundle with its generated `config.json`, a record per container, and
//! requests to the pod's monitor, which runs and supervises them. Blocking functions: the agent
//! calls them from its blocking pool.

mod exec_sync;
mod lifecycle;
mod metrics;
mod record;
mod rootfs;
mod update;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use berth_runtime::monitor::protocol::ExitRecord;
use berth_runtime::spec::HostInfo;

pub use exec_sync::{exec_sync, ExecError, ExecOutput, DRAIN_GRACE, OUTPUT_CAP};
pub use lifecycle::parse_signal;
pub use metrics::ContainerMetrics;
pub use record::{ContainerError, ContainerRecord, ContainerState, ProcessUser};
use record::{EXIT_FILE, RECORD_FILE};
pub use rootfs::CreateInput;

pub struct Containers {
    state: PathBuf,
    root: PathBuf,
    host: HostInfo,
    records: Mutex<BTreeMap<String, ContainerRecord>>,
    metrics: ContainerMetrics,
}

impl Containers {
    /// Loads the records under `<state>/containers`.
    pub fn open(
        state: &Path,
        root: &Path,
        host: HostInfo,
        metrics: ContainerMetrics,
    ) -> std::io::Result<Containers> {
        let dir = state.join("containers");
        std::fs::create_dir_all(&dir)?;
        std::fs::create_dir_all(root.join("containers"))?;
        let mut records = BTreeMap::new();
        for entry in std::fs::read_dir(&dir)?.flatten() {
            match std::fs::read(entry.path().join(RECORD_FILE))
                .map(|b| serde_json::from_slice::<ContainerRecord>(&b))
            {
                Ok(Ok(r)) => {
                    records.insert(r.id.clone(), r);
                }
                _ => {
                    tracing::warn!(dir = %entry.path().display(), "container dir without a readable record")
                }
            }
        }
        Ok(Containers {
            state: state.to_path_buf(),
            root: root.to_path_buf(),
            host,
            records: Mutex::new(records),
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ContainerRecord>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.state.join("containers").join(id)
    }

    /// The record with its exit file read, if the container has exited since.
    pub fn get(&self, id: &str) -> Option<ContainerRecord> {
        let mut r = self.lock().get(id).cloned()?;
        if r.exit.is_none() {
            if let Ok(bytes) = std::fs::read(self.dir(id).join(EXIT_FILE)) {
                if let Ok(exit) = serde_json::from_slice::<ExitRecord>(&bytes) {
                    r.exit = Some(exit.clone());
                    let first_seen = match self.lock().get_mut(id) {
                        Some(stored) if stored.exit.is_none() => {
                            stored.exit = Some(exit.clone());
                            true
                        }
                        _ => false,
                    };
                    if first_seen {
                        self.metrics.observe_exit(&exit);
                        // Persist it, so a restarted agent does not count it again.
                        let _ = self.save(&r);
                    }
                }
            }
        }
        Some(r)
    }

    pub fn resolve(&self, id_or_prefix: &str) -> Option<String> {
        let records = self.lock();
        berth_common::ids::resolve_prefix(records.keys(), id_or_prefix)
    }

    pub fn list(&self) -> Vec<ContainerRecord> {
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        let all: Vec<ContainerRecord> = ids.iter().filter_map(|id| self.get(id)).collect();
        for (state, label) in [
            (ContainerState::Created, "created"),
            (ContainerState::Running, "running"),
            (ContainerState::Exited, "exited"),
        ] {
            let n = all.iter().filter(|r| r.state() == state).count();
            self.metrics.set_count(label, n);
        }
        all
    }

    pub fn in_sandbox(&self, sandbox_id: &str) -> Vec<String> {
        self.lock()
            .values()
            .filter(|r| r.sandbox_id == sandbox_id)
            .map(|r| r.id.clone())
            .collect()
    }

    fn save(&self, r: &ContainerRecord) -> Result<(), ContainerError> {
        let bytes = serde_json::to_vec_pretty(r)
            .map_err(|e| self.failed(&r.id, "write record", e.to_string()))?;
        // No fsync: records live in the state dir, a tmpfs that a power loss empties anyway.
        berth_common::atomic::write_atomic_unsynced(&self.dir(&r.id).join(RECORD_FILE), &bytes)
            .map_err(|e| self.failed(&r.id, "write record", e.to_string()))
    }

    fn failed(&self, id: &str, step: &'static str, message: String) -> ContainerError {
        ContainerError::Failed {
            id: id.to_string(),
            step,
            message,
        }
    }
}
