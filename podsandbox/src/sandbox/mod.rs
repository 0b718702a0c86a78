//! Pod sandboxes: their lifecycle, records and networks.
//!
//! A sandbox is the set of namespaces its containers share plus its network. The per-pod
//! monitor (`berth_runtime::monitor`) creates and pins the namespaces; this module starts it,
//! writes the pod's resolv.conf / hostname / hosts, mounts its /dev/shm, attaches it to the
//! network through CNI, and keeps a record per sandbox so a restarted agent picks up where the
//! last one stopped. Every step of a build registers its undo first, so a failure anywhere
//! leaves nothing behind.

mod dial;
pub mod metrics;
mod network;
pub mod record;
pub mod spec;
mod stats;
mod undo;
mod watch;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_common::fs::Trash;
use berth_runtime::monitor::protocol::{ns_path, MonitorConfig};
use berth_runtime::CgroupDriver;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

pub use metrics::SandboxMetrics;
pub use network::PodNetwork;
use record::{NetworkStatus, SandboxRecord, SandboxState};
use spec::{NamespaceMode, PodMetadata, SandboxSpec};
pub use stats::{parse_net_dev, InterfaceUsage, SandboxUsage, DEFAULT_INTERFACE};
use undo::Undo;

use crate::events::{EventKind, Events};
use crate::monitor_client;

/// Size of the pod's /dev/shm when nothing else is asked (as Docker and containerd).
const SHM_SIZE: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("pod sandbox {0} not found")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("pod sandbox {id}: {step}: {message}")]
    Failed {
        id: String,
        step: &'static str,
        message: String,
    },
}

/// The sandboxes of this agent, in memory and on disk under `<state>/pods/`.
pub struct Sandboxes {
    state: PathBuf,
    handlers: Vec<String>,
    cgroup_driver: CgroupDriver,
    network: PodNetwork,
    sandboxes: Mutex<BTreeMap<String, SandboxRecord>>,
    /// One lock per pod identity: a repeated RunPodSandbox waits for the first and gets its result.
    builds: Mutex<HashMap<PodMetadata, Arc<tokio::sync::Mutex<()>>>>,
    metrics: SandboxMetrics,
    events: Arc<Events>,
    /// One monitor started ahead of the next pod (`[runtime] monitor_standby`).
    standby: Arc<crate::standby::Standby<crate::monitor_client::Standby>>,
    /// Where RemovePodSandbox renames a pod dir before its files are deleted.
    trash: Trash,
}

impl Sandboxes {
    /// Loads every record under `<state>/pods` and reconciles it with reality: a sandbox whose
    /// build never finished is rolled back; a ready one whose monitor died becomes NotReady when
    /// its monitor is first watched (`Pods::catch_up`).
    /// With `monitor_standby`, one monitor is kept started ahead of the next pod.
    pub async fn open(
        state: &Path,
        handlers: Vec<String>,
        cgroup_driver: CgroupDriver,
        network: PodNetwork,
        metrics: SandboxMetrics,
        events: Arc<Events>,
        monitor_standby: bool,
    ) -> std::io::Result<Sandboxes> {
        let pods = state.join("pods");
        // Passable, not listable: each pod dir is closed itself. A pod with its own user
        // namespace lets its root's group through: its containers join the namespaces pinned
        // there, and bind its files, as that root.
        berth_common::fs::passable_dir(&pods)?;
        let trash = Trash::open(state.join("trash"))?;
        let sandboxes = Sandboxes {
            state: state.to_path_buf(),
            handlers,
            cgroup_driver,
            network,
            sandboxes: Mutex::new(BTreeMap::new()),
            builds: Mutex::new(HashMap::new()),
            standby: crate::standby::Standby::new(
                "standby monitor",
                "the next pod's monitor is exec'd",
                monitor_standby,
                metrics.standby_waiting(),
            ),
            metrics,
            events,
            trash,
        };
        for entry in std::fs::read_dir(&pods)?.flatten() {
            let dir = entry.path();
            let mut record = match SandboxRecord::load(&dir) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "pod dir without a readable record: removing");
                    sandboxes.teardown_unrecorded(&dir);
                    continue;
                }
            };
            match record.state {
                SandboxState::Creating => {
                    tracing::info!(pod_id = %record.id, "rolling back a sandbox whose build was interrupted");
                    // Its CNI ADD may have been half-way (an IP leased, the result not yet
                    // recorded): DEL whenever it had a network to attach, as CNI asks after any
                    // ADD that did not finish. DEL of what was never added succeeds.
                    if !record.spec.host_network() {
                        record.network_attached = true;
                    }
                    // Mounted before the record could say so, perhaps.
                    record.shm_mounted = !record.spec.host_ipc();
                    sandboxes.release(&mut record).await;
                    for left in berth_runtime::cgroups::remove_created(&record.cgroups_created) {
                        tracing::warn!(pod_id = %record.id, cgroup = %left, "cgroup not removed");
                    }
                    if let Err(e) = berth_common::fs::remove_dir_all_if_present(&dir) {
                        tracing::warn!(pod_id = %record.id, error = %e, "pod dir not removed");
                    }
                    sandboxes.metrics.rolled_back();
                    continue;
                }
                // A ready sandbox whose monitor died while we were down is taken out of Ready,
                // with its STOPPED event, by the monitor watch `Pods::catch_up` starts.
                SandboxState::Ready if record.monitor.is_none() => {
                    record.state = SandboxState::NotReady;
                    let _ = record.save(&dir);
                }
                _ => {}
            }
            sandboxes.lock().insert(record.id.clone(), record);
        }
        let known: HashSet<String> = sandboxes.lock().keys().cloned().collect();
        let released = sandboxes.network.release_orphans(&known).await;
        sandboxes.metrics.orphan_networks_released(released);
        sandboxes.update_state_metrics();
        sandboxes.refill_standby();
        Ok(sandboxes)
    }

    /// Starts the next standby monitor in the background, unless one waits (`crate::standby`).
    fn refill_standby(&self) {
        let state = self.state.clone();
        self.standby
            .refill(move || async move { crate::monitor_client::start_standby(&state).await });
    }

    /// A sandbox being stopped leaves Ready before its monitor is stopped, so that the monitor
    /// watch takes the monitor's exit for what it is. Whether it was Ready (then the caller
    /// publishes STOPPED, once).
    fn take_out_of_ready(&self, id: &str) -> bool {
        match self.lock().get_mut(id) {
            Some(r) if r.state == SandboxState::Ready => {
                r.state = SandboxState::NotReady;
                true
            }
            _ => false,
        }
    }

    /// Watches the monitor of every ready sandbox (after a restart: those the agent found; one
    /// that died meanwhile is taken out of Ready now, with its STOPPED event).
    pub(crate) fn watch_monitors(self: &Arc<Self>) {
        let ready: Vec<String> = self
            .lock()
            .values()
            .filter(|r| r.state == SandboxState::Ready)
            .map(|r| r.id.clone())
            .collect();
        for id in ready {
            self.watch_monitor(&id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SandboxRecord>> {
        self.sandboxes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pod_dir(&self, id: &str) -> PathBuf {
        SandboxRecord::dir(&self.state, id)
    }

    /// The sandbox's directory under `<state>/pods`.
    pub fn pod_dir_path(&self, id: &str) -> PathBuf {
        self.pod_dir(id)
    }

    /// The pinned network namespace of a sandbox.
    pub fn netns_path(&self, id: &str) -> PathBuf {
        ns_path(&self.pod_dir(id), "net")
    }

    /// Whether pods can be made now, and why not: the state dir takes a file (a read-only or
    /// full tmpfs refuses every pod), and the binary the monitors and executors run (ours) is
    /// there and executable (a package upgrade may have removed it under us).
    pub fn runtime_ready(&self) -> Result<(), String> {
        let probe = self.state.join("pods").join(".ready-probe");
        std::fs::write(&probe, b"")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|e| format!("state dir {}: {e}", self.state.display()))?;
        let exe = std::env::current_exe().map_err(|e| format!("our binary: {e}"))?;
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(&exe) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
            Ok(_) => Err(format!("{} is not executable", exe.display())),
            Err(e) => Err(format!("{}: {e}", exe.display())),
        }
    }

    /// Whether pods can get a network now, and why not.
    pub fn network_ready(&self) -> Result<(), String> {
        self.network.ready()
    }

    /// A sandbox record with its liveness checked now.
    pub fn get(&self, id: &str) -> Option<SandboxRecord> {
        let mut record = self.lock().get(id).cloned()?;
        if record.state == SandboxState::Ready && !record.monitor.is_some_and(|m| m.alive()) {
            record.state = SandboxState::NotReady;
        }
        Some(record)
    }

    /// Full id from an id or a unique prefix (as crictl passes them).
    pub fn resolve(&self, id_or_prefix: &str) -> Option<String> {
        let records = self.lock();
        berth_common::ids::resolve_prefix(records.keys(), id_or_prefix)
    }

    pub fn list(&self) -> Vec<SandboxRecord> {
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        ids.iter().filter_map(|id| self.get(id)).collect()
    }

    /// Sets `berth_monitor_memory_bytes` from `/proc` for every ready pod's monitor.
    pub fn refresh_monitor_memory(&self) {
        let pids: Vec<u32> = self
            .lock()
            .values()
            .filter(|r| r.state == SandboxState::Ready)
            .filter_map(|r| r.monitor.as_ref().map(|m| m.pid))
            .collect();
        let (mut rss, mut pss) = (0, 0);
        for pid in pids {
            let kib = |file, field| berth_common::procfs::kib(pid, file, field).unwrap_or(0);
            rss += kib("status", "VmRSS:") * 1024;
            pss += kib("smaps_rollup", "Pss:") * 1024;
        }
        self.metrics.set_monitor_memory(rss, pss);
    }

    fn update_state_metrics(&self) {
        let records = self.lock();
        let ready = records
            .values()
            .filter(|r| r.state == SandboxState::Ready)
            .count();
        let not_ready = records.len() - ready;
        self.metrics.set_counts(ready as i64, not_ready as i64);
    }

    /// RunPodSandbox: builds the sandbox and returns its id once it is Ready. The same pod
    /// identity asked again gets the same sandbox, even while the first build runs.
    pub async fn run(self: &Arc<Self>, spec: SandboxSpec) -> Result<String, SandboxError> {
        validate(&spec, &self.handlers, self.cgroup_driver)?;
        let key = spec.metadata.clone();
        let lock = {
            let mut builds = self.builds.lock().unwrap_or_else(|e| e.into_inner());
            builds.entry(key.clone()).or_default().clone()
        };
        let _build = lock.lock().await;
        let existing = self
            .lock()
            .values()
            .find(|r| r.spec.metadata == key)
            .cloned();
        if let Some(existing) = existing {
            return match self.get(&existing.id).map(|r| r.state) {
                Some(SandboxState::Ready) => Ok(existing.id),
                _ => Err(SandboxError::AlreadyExists(format!(
                    "pod sandbox {} for {}/{} attempt {} exists but is not ready; remove it first",
                    existing.id, key.namespace, key.name, key.attempt
                ))),
            };
        }
        // The build runs as its own task: if kubelet gives up on the RPC, the sandbox is still
        // finished (or rolled back), and its retry finds it here.
        let this = self.clone();
        let started = Instant::now();
        let result = tokio::spawn(async move { this.build(spec).await })
            .await
            .map_err(|e| SandboxError::Failed {
                id: String::new(),
                step: "build task",
                message: e.to_string(),
            })?;
        self.metrics
            .observe_create(started.elapsed().as_secs_f64(), result.is_ok());
        self.update_state_metrics();
        if let Ok(id) = &result {
            self.watch_monitor(id);
        }
        result
    }

    async fn build(&self, spec: SandboxSpec) -> Result<String, SandboxError> {
        let id = berth_common::ids::new_id().map_err(|e| SandboxError::Failed {
            id: String::new(),
            step: "make an id",
            message: e.to_string(),
        })?;
        let dir = self.pod_dir(&id);
        let mut record = SandboxRecord {
            id: id.clone(),
            spec,
            state: SandboxState::Creating,
            created_at: berth_common::time::now_nanos(),
            monitor: None,
            network: NetworkStatus::default(),
            network_attached: false,
            shm_mounted: false,
            cgroups_created: Vec::new(),
        };
        let fail = |step: &'static str| {
            let id = id.clone();
            move |message: String| SandboxError::Failed { id, step, message }
        };
        let mut undo = Undo::new();
        let result: Result<(), SandboxError> = async {
            // Record first: a crash from here on is rolled back at the next start.
            {
                let dir = dir.clone();
                undo.push("remove pod dir", move || {
                    let _ = std::fs::remove_dir_all(&dir);
                });
            }
            std::fs::create_dir_all(&dir).map_err(|e| fail("create pod dir")(e.to_string()))?;
            let root_group = record.spec.userns.map(|u| u.root_on_host().1);
            berth_common::fs::closed_dir(&dir, root_group)
                .map_err(|e| fail("create pod dir")(e.to_string()))?;
            record
                .save(&dir)
                .map_err(|e| fail("write record")(e.to_string()))?;
            berth_common::crash::point("sandbox-recorded");

            self.write_files(&record, &dir)
                .map_err(fail("write pod files"))?;

            if !record.spec.host_ipc() {
                let shm = dir.join("shm");
                undo.push("unmount shm", {
                    let shm = shm.clone();
                    move || {
                        let _ = umount2(&shm, MntFlags::MNT_DETACH);
                    }
                });
                mount_shm(&shm).map_err(fail("mount /dev/shm"))?;
                record.shm_mounted = true;
                berth_common::crash::point("sandbox-shm");
            }
            let systemd_slice = (self.cgroup_driver == CgroupDriver::Systemd).then(|| {
                // systemd makes the monitor's scope (and the slice, when kubelet has not).
                // validate() checked it names a slice.
                berth_runtime::cgroups::systemd::slice_name(&record.spec.cgroup_parent)
                    .unwrap_or(berth_runtime::cgroups::systemd::DEFAULT_SLICE)
                    .to_string()
            });
            let cgroup = if record.spec.cgroup_parent.is_empty() || systemd_slice.is_some() {
                None
            } else {
                // The monitor (and the pod init it forks) runs in a leaf of the pod cgroup, not in
                // the pod cgroup itself: on cgroup v2 a cgroup holding processes cannot hand its
                // controllers down, so the containers' cgroups below it could not be limited.
                let path = self
                    .monitor_cgroup(&record)
                    .map_err(fail("cgroup"))?
                    .ok_or_else(|| fail("cgroup")("no cgroup parent".to_string()))?;
                // Record first: a crash from here on removes what was made, not more.
                record.cgroups_created = berth_runtime::cgroups::missing(&path);
                record
                    .save(&dir)
                    .map_err(|e| fail("write record")(e.to_string()))?;
                let created = berth_runtime::cgroups::ensure(&path)
                    .map_err(|e| fail("cgroup")(e.to_string()))?;
                undo.push("remove cgroups", {
                    let created = created.clone();
                    move || {
                        berth_runtime::cgroups::remove_created(&created);
                    }
                });
                record.cgroups_created = created;
                berth_common::crash::point("sandbox-cgroup");
                Some(path)
            };
            let monitor_config = MonitorConfig {
                sandbox_id: id.clone(),
                pod_dir: dir.clone(),
                new_net: !record.spec.host_network(),
                new_ipc: !record.spec.host_ipc(),
                // A pod on the host network keeps the host's name, as with containerd.
                new_uts: !record.spec.host_network(),
                pod_pid: record.spec.namespaces.pid == NamespaceMode::Pod,
                hostname: (!record.spec.hostname.is_empty()).then(|| record.spec.hostname.clone()),
                sysctls: record
                    .spec
                    .sysctls
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                cgroup,
                systemd_slice,
                exit_notice: Some(
                    self.state
                        .join(berth_runtime::monitor::protocol::EXIT_NOTICE_SOCKET),
                ),
                userns: record.spec.userns,
            };
            undo.push("stop monitor, unpin namespaces", {
                let dir = dir.clone();
                move || {
                    match SandboxRecord::load(&dir).ok().and_then(|r| r.monitor) {
                        Some(m) => monitor_client::stop(&dir, &m),
                        None => monitor_client::kill_unreported(&dir),
                    }
                    let _ = berth_runtime::monitor::unpin_all(&dir);
                }
            });
            let (monitor, how) = monitor_client::start(&monitor_config, self.standby.take())
                .await
                .map_err(fail("start monitor"))?;
            self.metrics.monitor_started(how);
            berth_common::crash::point("sandbox-monitor");
            record.monitor = Some(monitor);
            record
                .save(&dir)
                .map_err(|e| fail("write record")(e.to_string()))?;

            if !record.spec.host_network() {
                let netns = ns_path(&dir, "net");
                let status = self
                    .network
                    .attach(&record, &netns, &mut undo)
                    .await
                    .map_err(fail("network"))?;
                record.network = status;
                record.network_attached = true;
                berth_common::crash::point("sandbox-network");
                // The pod's own IP in its hosts file, now that it has one.
                let ip = record.network.ips.first().map(String::as_str);
                let _ = berth_common::atomic::write_atomic_unsynced(
                    &dir.join("hosts"),
                    spec::hosts_file(&record.spec.hostname, ip).as_bytes(),
                );
            }

            record.state = SandboxState::Ready;
            record
                .save(&dir)
                .map_err(|e| fail("write record")(e.to_string()))?;
            Ok(())
        }
        .await;
        // The next standby starts once this build is done, not beside its CNI plugins.
        self.refill_standby();
        match result {
            Ok(()) => {
                undo.commit();
                tracing::info!(pod_id = %id, pod = %record.spec.metadata.name, ips = ?record.network.ips, "sandbox ready");
                self.lock().insert(id.clone(), record);
                self.events.publish(EventKind::Created, &id, &id);
                self.events.publish(EventKind::Started, &id, &id);
                Ok(id)
            }
            Err(e) => {
                tracing::warn!(pod_id = %id, error = %e, "sandbox build failed: rolling back");
                undo.rollback().await;
                Err(e)
            }
        }
    }

    fn write_files(&self, record: &SandboxRecord, dir: &Path) -> Result<(), String> {
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let write = |name: &str, text: String| {
            berth_common::atomic::write_atomic_unsynced(&dir.join(name), text.as_bytes())
                .map_err(|e| format!("{name}: {e}"))
        };
        write(
            "resolv.conf",
            spec::resolv_conf(record.spec.dns.as_ref(), &host_resolv),
        )?;
        let hostname = if record.spec.host_network() {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            record.spec.hostname.clone()
        };
        write("hostname", format!("{hostname}\n"))?;
        write("hosts", spec::hosts_file(&record.spec.hostname, None))?;
        Ok(())
    }

    /// Stops a sandbox's network, monitor, namespaces and shm. Safe to repeat.
    async fn release(&self, record: &mut SandboxRecord) {
        let dir = self.pod_dir(&record.id);
        // The monitor, the pod's init and every pin but the network namespace's go while the
        // plugins' DEL runs: neither waits for the other (the DEL is mostly the kernel tearing
        // the veth down). The network namespace stays pinned for the DEL until it is done.
        let ending = {
            let monitor = record.monitor;
            let cgroup = self.monitor_cgroup(record).ok().flatten();
            let shm = record.shm_mounted.then(|| dir.join("shm"));
            let (dir, id) = (dir.clone(), record.id.clone());
            tokio::task::spawn_blocking(move || {
                match monitor {
                    Some(m) => monitor_client::stop(&dir, &m),
                    None => monitor_client::kill_unreported(&dir),
                }
                // The monitor's cgroup still holds the pod's init (a shared PID namespace) if
                // the monitor died before it could end it.
                if let Some(cgroup) = cgroup {
                    if let Err(e) =
                        berth_runtime::cgroups::kill_all(&cgroup, Duration::from_secs(10))
                    {
                        tracing::warn!(pod_id = %id, error = %e, "processes left in the monitor's cgroup");
                    }
                }
                let _ = berth_runtime::monitor::unpin_all_but(&dir, "net");
                if let Some(shm) = shm {
                    let _ = umount2(&shm, MntFlags::MNT_DETACH);
                }
            })
        };
        let detached = async {
            if record.network_attached {
                Some(self.network.detach(record, &ns_path(&dir, "net")).await)
            } else {
                None
            }
        };
        let (detached, _) = tokio::join!(detached, ending);
        match detached {
            Some(Ok(())) => record.network_attached = false,
            Some(Err(e)) => {
                tracing::warn!(pod_id = %record.id, error = %e, "network teardown failed")
            }
            None => {}
        }
        let _ = berth_runtime::monitor::unpin_all(&dir);
        record.shm_mounted = false;
    }

    /// Deletes a pod dir the trash took, on a blocking thread: RemovePodSandbox does not wait.
    fn delete_later(&self, doomed: PathBuf) {
        let (trash, metrics) = (self.trash.clone(), self.metrics.clone());
        metrics.dir_deleting(1);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = trash.delete(&doomed) {
                tracing::warn!(dir = %doomed.display(), error = %e, "pod dir not deleted (the next start tries again)");
                metrics.dir_delete_failed();
            }
            metrics.dir_deleting(-1);
        });
    }

    /// The cgroupfs path of the cgroup the pod's monitor (and the pod's init) runs in: a leaf of
    /// the pod's cgroup, or its own scope in the pod's slice; none for a pod without a cgroup
    /// parent under cgroupfs (the monitor stays in the agent's).
    fn monitor_cgroup(&self, record: &SandboxRecord) -> Result<Option<PathBuf>, String> {
        use berth_runtime::cgroups::systemd;
        let parent = &record.spec.cgroup_parent;
        match self.cgroup_driver {
            CgroupDriver::Systemd => {
                let slice = systemd::slice_name(parent).unwrap_or(systemd::DEFAULT_SLICE);
                let oci = systemd::oci_path(slice, systemd::MONITOR_PREFIX, &record.id);
                systemd::fs_path(Path::new(&oci)).map(Some)
            }
            CgroupDriver::Cgroupfs if parent.is_empty() => Ok(None),
            CgroupDriver::Cgroupfs => {
                Ok(Some(berth_runtime::cgroups::cgroupfs_path(parent)?.join(
                    format!("{}-{}", systemd::MONITOR_PREFIX, record.id),
                )))
            }
        }
    }

    /// A pod dir without a record: undo what may be there.
    fn teardown_unrecorded(&self, dir: &Path) {
        let _ = berth_runtime::monitor::unpin_all(dir);
        let _ = umount2(&dir.join("shm"), MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// StopPodSandbox: the network's DEL beside the monitor's end, then the namespaces (the pod's
    /// containers are stopped first, by `Pods::stop_pod`). Keeps the record.
    /// CRI: succeeds for an unknown or already stopped sandbox.
    pub async fn stop(&self, id: &str) -> Result<(), SandboxError> {
        let Some(mut record) = self.lock().get(id).cloned() else {
            return Ok(());
        };
        let was_ready = self.take_out_of_ready(id);
        self.release(&mut record).await;
        record.state = SandboxState::NotReady;
        let dir = self.pod_dir(id);
        record.save(&dir).map_err(|e| SandboxError::Failed {
            id: id.to_string(),
            step: "write record",
            message: e.to_string(),
        })?;
        let network_left = record.network_attached;
        self.lock().insert(id.to_string(), record);
        self.update_state_metrics();
        if was_ready {
            self.events.publish(EventKind::Stopped, id, id);
        }
        if network_left {
            return Err(SandboxError::Failed {
                id: id.to_string(),
                step: "network teardown",
                message: "CNI DEL failed; see the agent log (retry StopPodSandbox)".to_string(),
            });
        }
        Ok(())
    }

    /// RemovePodSandbox: stop, then forget everything. CRI: succeeds for an unknown id.
    pub async fn remove(&self, id: &str) -> Result<(), SandboxError> {
        let Some(mut record) = self.lock().get(id).cloned() else {
            return Ok(());
        };
        let was_ready = self.take_out_of_ready(id);
        self.release(&mut record).await;
        if record.network_attached {
            // Removal never gets stuck on the network: the record goes, the failure is logged.
            tracing::warn!(pod_id = %id, "removing sandbox whose network teardown failed");
            self.network.forget(&record);
        }
        for left in berth_runtime::cgroups::remove_created(&record.cgroups_created) {
            tracing::warn!(pod_id = %id, cgroup = %left, "cgroup not removed");
        }
        let dir = self.pod_dir(id);
        let doomed = self.trash.take(&dir).map_err(|e| SandboxError::Failed {
            id: id.to_string(),
            step: "remove pod dir",
            message: e.to_string(),
        })?;
        if let Some(doomed) = doomed {
            berth_common::crash::point("sandbox-trashed");
            self.delete_later(doomed);
        }
        // The events carry the sandbox as it was last: stopped, not yet forgotten.
        record.state = SandboxState::NotReady;
        self.lock().insert(id.to_string(), record.clone());
        if was_ready {
            self.events.publish(EventKind::Stopped, id, id);
        }
        self.events.publish(EventKind::Deleted, id, id);
        self.lock().remove(id);
        self.builds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&record.spec.metadata);
        self.update_state_metrics();
        Ok(())
    }
}

fn validate(
    spec: &SandboxSpec,
    handlers: &[String],
    driver: CgroupDriver,
) -> Result<(), SandboxError> {
    let m = &spec.metadata;
    if m.name.is_empty() || m.uid.is_empty() || m.namespace.is_empty() {
        return Err(SandboxError::InvalidArgument(
            "pod sandbox metadata needs a name, a uid and a namespace".to_string(),
        ));
    }
    if !spec.runtime_handler.is_empty() && !handlers.iter().any(|h| h == &spec.runtime_handler) {
        return Err(SandboxError::InvalidArgument(format!(
            "runtime handler {:?} is not configured (berth has: {})",
            spec.runtime_handler,
            if handlers.is_empty() {
                "only the default \"\"".to_string()
            } else {
                handlers.join(", ")
            }
        )));
    }
    if !spec.cgroup_parent.is_empty() {
        berth_runtime::cgroups::parent_path(driver, &spec.cgroup_parent)
            .map_err(SandboxError::InvalidArgument)?;
    }
    if spec.namespaces.network == NamespaceMode::Target
        || spec.namespaces.ipc == NamespaceMode::Target
    {
        return Err(SandboxError::InvalidArgument(
            "TARGET mode is only valid for the PID namespace".to_string(),
        ));
    }
    for name in spec.sysctls.keys() {
        let ns = berth_runtime::monitor::protocol::sysctl_namespace(name).ok_or_else(|| {
            SandboxError::InvalidArgument(format!(
                "sysctl {name} is not namespaced and cannot be set per pod"
            ))
        })?;
        if (ns == "net" && spec.host_network()) || (ns == "ipc" && spec.host_ipc()) {
            return Err(SandboxError::InvalidArgument(format!(
                "sysctl {name} cannot be set: the pod uses the host's {ns} namespace"
            )));
        }
        if berth_runtime::monitor::protocol::sysctl_path(name).is_none() {
            return Err(SandboxError::InvalidArgument(format!(
                "sysctl {name:?} is not a valid name"
            )));
        }
    }
    Ok(())
}

/// A tmpfs for the pod's /dev/shm.
fn mount_shm(path: &Path) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
    let options = format!("mode=1777,size={SHM_SIZE}");
    mount(
        Some("shm"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(options.as_str()),
    )
    .map_err(|e| format!("mount tmpfs on {}: {e}", path.display()))
}
