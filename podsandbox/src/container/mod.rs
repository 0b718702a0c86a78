//! Containers as the agent keeps them: a record per container (`record`), the rootfs (an
//! overlay of the image's snapshots with a writable upper dir) and the bundle with its generated
//! `config.json` (`rootfs`), create/start/stop/remove as requests to the pod's monitor, which
//! runs and supervises them (`lifecycle`), resource updates (`update`), usage samples (`stats`)
//! and ExecSync (`exec_sync`). Blocking functions except ExecSync: `Pods` calls them on the blocking pool.
//! Exits reach a record only through [`Containers::fold_exit`]; reading has no side effects.

mod attach;
mod exec;
mod exec_standby;
mod exec_stream;
mod exec_sync;
mod fd_io;
mod lifecycle;
mod metrics;
mod record;
mod rootfs;
mod stats;
mod update;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use berth_runtime::monitor::protocol::ExitRecord;
use berth_runtime::spec::HostInfo;

use crate::events::{EventKind, Events};

pub use attach::attach;
pub use exec_stream::{exec_stream, ExecStdio};
pub use exec_sync::{exec_sync, ExecError, ExecOutput, DRAIN_GRACE, OUTPUT_CAP};
pub use lifecycle::parse_signal;
pub use metrics::ContainerMetrics;
pub use record::{ContainerError, ContainerRecord, ContainerState, ProcessUser};
use record::{EXIT_FILE, RECORD_FILE};
pub use rootfs::CreateInput;
pub use stats::{ContainerDetail, ContainerUsage, LayerFilesystem};

pub struct Containers {
    state: PathBuf,
    root: PathBuf,
    host: HostInfo,
    records: Mutex<BTreeMap<String, ContainerRecord>>,
    metrics: ContainerMetrics,
    events: Arc<Events>,
    /// The names (pod, name, attempt) of creates in flight, with the id each will have.
    creating: Mutex<HashMap<(String, String, u32), String>>,
    /// Each container's CPU rate and the sample it was measured from.
    cpu_samples: Mutex<HashMap<String, stats::CpuRate>>,
    /// Where each container's cgroup files are, probed on its first stats sample.
    layouts: Mutex<HashMap<String, berth_runtime::cgroups::update::Layout>>,
    /// Each container's writable layer as last measured (bytes and inodes, and when).
    layer_usage: Mutex<HashMap<String, (berth_common::fs::DiskUsage, i64)>>,
    /// Each seccomp profile's program, compiled once (the executor only loads it).
    seccomp_programs: berth_runtime::seccomp_filter::FilterCache,
    /// With `exec_standby`, one executor is kept started ahead of the next ExecSync.
    exec_spare: exec_standby::ExecSpare,
}

impl Containers {
    /// Loads the records under `<state>/containers`. With `exec_standby`, ExecSync keeps an
    /// executor started ahead of the next one (`[runtime] exec_standby`).
    pub fn open(
        state: &Path,
        root: &Path,
        host: HostInfo,
        metrics: ContainerMetrics,
        events: Arc<Events>,
        exec_standby: bool,
    ) -> std::io::Result<Containers> {
        let dir = state.join("containers");
        // The containers' writable layers are root's alone (an upper dir must stay 0755: it
        // is the container's `/`). The bundles' parent may be passed through (0711, as
        // containerd's state dirs): each bundle is 0700 itself, or 0710 for its pod root's group
        // in a user namespace, which must reach its rootfs.
        berth_common::fs::passable_dir(&dir)?;
        berth_common::fs::private_dir(&root.join("containers"))?;
        let mut records = BTreeMap::new();
        let mut unfinished = Vec::new();
        for entry in std::fs::read_dir(&dir)?.flatten() {
            // A bundle from before bundles were closed to others is closed now.
            if let Ok(meta) = entry.metadata() {
                use std::os::unix::fs::PermissionsExt;
                if meta.is_dir() && meta.permissions().mode() & 0o007 != 0 {
                    let _ = berth_common::fs::closed_dir(&entry.path(), None);
                }
            }
            match ContainerRecord::load(&entry.path()) {
                // The monitor's answer to create is the last thing a create records: without
                // it the create was cut short, and nobody was told the container's id.
                Some(r) if r.pid == 0 && r.started_at == 0 && r.exit.is_none() => {
                    unfinished.push(r);
                }
                Some(r) => {
                    records.insert(r.id.clone(), r);
                }
                None => {
                    let id = entry.file_name().to_string_lossy().into_owned();
                    tracing::info!(container_id = %id, "rolling back a container dir without a readable record");
                    unfinished.push(ContainerRecord::unrecorded(&id, root));
                }
            }
        }
        let containers = Containers {
            state: state.to_path_buf(),
            root: root.to_path_buf(),
            host,
            records: Mutex::new(records),
            events,
            creating: Mutex::new(HashMap::new()),
            cpu_samples: Mutex::new(HashMap::new()),
            layouts: Mutex::new(HashMap::new()),
            seccomp_programs: Default::default(),
            layer_usage: Mutex::new(HashMap::new()),
            exec_spare: exec_standby::ExecSpare::new(
                state,
                exec_standby,
                metrics.exec_standby_waiting(),
            ),
            metrics,
        };
        for r in unfinished {
            tracing::info!(container_id = %r.id, "rolling back a container whose create was interrupted");
            containers.take_back(&r);
            containers.metrics.rolled_back();
        }
        containers.remove_unclaimed_layers();
        Ok(containers)
    }

    /// The writable layers under `<root>/containers` that no container dir in `state` claims:
    /// a reboot empties `state` (a tmpfs) and keeps `root`, so that a container's upper dir
    /// outlives every record of it. Nothing has them mounted after a reboot; they go, counted.
    fn remove_unclaimed_layers(&self) {
        let Ok(entries) = std::fs::read_dir(self.root.join("containers")) else {
            return;
        };
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if self.dir(&id).exists() {
                continue;
            }
            tracing::info!(container_id = %id, "removing a writable layer no container record claims (lost with the state dir)");
            match berth_common::fs::remove_dir_all_if_present(&entry.path()) {
                Ok(()) => self.metrics.unclaimed_layer_removed(),
                Err(e) => {
                    tracing::warn!(container_id = %id, error = %e, "writable layer not removed")
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ContainerRecord>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.state.join("containers").join(id)
    }

    /// ExecSync of `cmd` in container `record` through `berthd` (our own binary): handed to the
    /// standby executor when one waits, else through an executor of its own.
    pub async fn exec_sync(
        &self,
        berthd: &Path,
        record: &ContainerRecord,
        cmd: &[String],
        timeout: std::time::Duration,
    ) -> Result<ExecOutput, ExecError> {
        let (standby, result) = exec_sync::exec_sync_through(
            &self.exec_spare,
            berthd,
            &record
                .pod_dir
                .join(berth_runtime::monitor::protocol::RUNC_DIR),
            &record.id,
            cmd,
            timeout,
        )
        .await;
        self.metrics.exec_sync_started(standby);
        result
    }

    /// The record as the agent holds it. No side effects: an exit the monitor wrote since is
    /// only seen after [`Containers::fold_exit`].
    pub fn get(&self, id: &str) -> Option<ContainerRecord> {
        self.lock().get(id).cloned()
    }

    pub fn resolve(&self, id_or_prefix: &str) -> Option<String> {
        let records = self.lock();
        berth_common::ids::resolve_prefix(records.keys(), id_or_prefix)
    }

    /// Every record as the agent holds it (no side effects; see [`Containers::fold_exits`]).
    pub fn list(&self) -> Vec<ContainerRecord> {
        self.lock().values().cloned().collect()
    }

    /// The one step by which a container becomes Exited in the agent's view: the exit file its
    /// monitor wrote, folded into the record. The exit is counted in the metrics once and the
    /// record saved, so a restarted agent does not count it again. Returns the record.
    pub fn fold_exit(&self, id: &str) -> Option<ContainerRecord> {
        let pending = self.lock().get(id)?.exit.is_none();
        if pending {
            if let Some(exit) = self.read_exit(id) {
                let updated = match self.lock().get_mut(id) {
                    Some(stored) if stored.exit.is_none() => {
                        stored.exit = Some(exit.clone());
                        Some(stored.clone())
                    }
                    _ => None,
                };
                if let Some(record) = updated {
                    self.metrics.observe_exit(&exit);
                    let _ = self.save(&record);
                    self.events
                        .publish(EventKind::Stopped, id, &record.sandbox_id);
                }
            }
        }
        self.get(id)
    }

    /// [`Containers::fold_exit`] for every container, then the state gauges refreshed.
    pub fn fold_exits(&self) -> Vec<ContainerRecord> {
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        let all: Vec<ContainerRecord> = ids.iter().filter_map(|id| self.fold_exit(id)).collect();
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

    fn read_exit(&self, id: &str) -> Option<ExitRecord> {
        let bytes = std::fs::read(self.dir(id).join(EXIT_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn in_sandbox(&self, sandbox_id: &str) -> Vec<String> {
        self.lock()
            .values()
            .filter(|r| r.sandbox_id == sandbox_id)
            .map(|r| r.id.clone())
            .collect()
    }

    /// The records of the containers in a sandbox, as the agent holds them.
    pub fn in_sandbox_records(&self, sandbox_id: &str) -> Vec<ContainerRecord> {
        self.lock()
            .values()
            .filter(|r| r.sandbox_id == sandbox_id)
            .cloned()
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

#[cfg(test)]
mod tests {
    use berth_runtime::spec::ContainerSpec;
    use berth_runtime::CgroupDriver;

    use super::*;

    fn record(id: &str) -> ContainerRecord {
        ContainerRecord {
            id: id.to_string(),
            sandbox_id: "pod".to_string(),
            pod_dir: PathBuf::from("/nonexistent/pod"),
            config: ContainerSpec::default(),
            image: "busybox".to_string(),
            image_id: "sha256:0".to_string(),
            stop_signal: String::new(),
            log_path: PathBuf::from("/nonexistent/log"),
            cgroup: None,
            pid: 42,
            created_at: 1,
            started_at: 2,
            exit: None,
            layer_dir: PathBuf::from("/nonexistent/layer"),
            user: None,
            layers: Vec::new(),
            volume_layers: Vec::new(),
        }
    }

    #[test]
    fn reading_a_record_has_no_side_effects_and_folding_its_exit_is_explicit() {
        let state = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let dir = state.path().join("containers").join("c1");
        std::fs::create_dir_all(&dir).unwrap();
        let on_disk = serde_json::to_vec_pretty(&record("c1")).unwrap();
        std::fs::write(dir.join(RECORD_FILE), &on_disk).unwrap();
        let exit = ExitRecord::new(3, None, 5, false);
        std::fs::write(dir.join(EXIT_FILE), serde_json::to_vec(&exit).unwrap()).unwrap();
        let host = HostInfo::probe(CgroupDriver::Cgroupfs).unwrap();
        let metrics = ContainerMetrics::default();
        let events = Events::new(8, Default::default());
        let containers = Containers::open(
            state.path(),
            root.path(),
            host,
            metrics,
            events.clone(),
            false,
        )
        .unwrap();
        let mut subscription = events.subscribe();

        let read = containers.get("c1").unwrap();
        assert_eq!(read.state(), ContainerState::Running);
        assert_eq!(containers.list()[0].exit, None);
        assert_eq!(std::fs::read(dir.join(RECORD_FILE)).unwrap(), on_disk);

        let folded = containers.fold_exit("c1").unwrap();
        assert_eq!(folded.exit.as_ref().map(|e| e.exit_code), Some(3));
        assert_eq!(
            containers.get("c1").unwrap().state(),
            ContainerState::Exited
        );
        let saved: ContainerRecord =
            serde_json::from_slice(&std::fs::read(dir.join(RECORD_FILE)).unwrap()).unwrap();
        assert_eq!(saved.exit, Some(exit));
        assert!(containers.fold_exit("missing").is_none());
        // The exit was published once, however often it is folded.
        containers.fold_exit("c1");
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let std::task::Poll::Ready(Some(stopped)) = subscription.poll_next(&mut cx) else {
            panic!("no STOPPED event");
        };
        assert_eq!(
            (stopped.id.as_str(), stopped.kind),
            ("c1", EventKind::Stopped)
        );
        assert!(subscription.poll_next(&mut cx).is_pending());
    }
}
