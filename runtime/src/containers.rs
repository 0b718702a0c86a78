//! Containers as the agent keeps them: the rootfs (an overlay of the image's snapshots with a
//! writable upper dir), the bundle with its generated `config.json`, a record per container, and
//! requests to the pod's monitor, which runs and supervises them. Blocking functions: the agent
//! calls them from its blocking pool.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde::{Deserialize, Serialize};

use crate::monitor::protocol::{short_socket_path, ExitRecord, Request, Response, SOCKET_FILE};
use crate::spec::{self, ContainerSpec, HostInfo, ImageConfig, SandboxInfo, SpecInput};

const RECORD_FILE: &str = "container.json";
const EXIT_FILE: &str = "exit.json";

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("container {0} not found")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("container {id}: {step}: {message}")]
    Failed {
        id: String,
        step: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

/// What berth records about a container (`<state>/containers/<id>/container.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    pub pod_dir: PathBuf,
    pub config: ContainerSpec,
    /// The image as the user named it, and its id.
    pub image: String,
    pub image_id: String,
    pub stop_signal: String,
    pub log_path: PathBuf,
    pub cgroup: Option<PathBuf>,
    pub pid: i32,
    pub created_at: i64,
    pub started_at: i64,
    /// From the monitor's exit file, once the container has exited.
    pub exit: Option<ExitRecord>,
    /// Where the container's writable layer lives (`<root>/containers/<id>`).
    pub layer_dir: PathBuf,
    /// The identity the container's process runs with, as resolved into the spec.
    #[serde(default)]
    pub user: Option<ProcessUser>,
    /// The image snapshots (overlay lower dirs) the rootfs is built on, bottom first.
    #[serde(default)]
    pub layers: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

impl ContainerRecord {
    pub fn state(&self) -> ContainerState {
        if self.exit.is_some() {
            ContainerState::Exited
        } else if self.started_at > 0 {
            ContainerState::Running
        } else {
            ContainerState::Created
        }
    }
}

/// Everything `create` needs, gathered by the CRI layer.
pub struct CreateInput {
    pub sandbox_id: String,
    pub pod_dir: PathBuf,
    pub sandbox: SandboxInfo,
    pub config: ContainerSpec,
    pub image: String,
    pub image_id: String,
    pub image_config: ImageConfig,
    /// The image's unpacked layers, bottom first.
    pub layers: Vec<PathBuf>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// Container metric families. Operation durations are the CRI layer's
/// `berth_cri_operation_duration_seconds{operation="CreateContainer"|…}`.
#[derive(Debug, Clone, Default)]
pub struct ContainerMetrics {
    by_state: prometheus_client::metrics::family::Family<
        StateLabel,
        prometheus_client::metrics::gauge::Gauge,
    >,
    oom_kills: prometheus_client::metrics::counter::Counter,
    log_bytes: prometheus_client::metrics::counter::Counter,
}

impl ContainerMetrics {
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> ContainerMetrics {
        let m = ContainerMetrics::default();
        registry.register(
            "berth_containers",
            "Containers by state (created, running, exited)",
            m.by_state.clone(),
        );
        registry.register(
            "berth_container_oom_kills",
            "Containers whose exit was an OOM kill",
            m.oom_kills.clone(),
        );
        registry.register(
            "berth_container_log_bytes",
            "CRI log bytes written by pod monitors, counted when a container's exit is seen",
            m.log_bytes.clone(),
        );
        m
    }
}

pub struct Containers {
    state: PathBuf,
    root: PathBuf,
    host: HostInfo,
    records: Mutex<BTreeMap<String, ContainerRecord>>,
    metrics: ContainerMetrics,
}

/// Replaces a record whole (temp file + rename), so a killed agent never leaves half of one.
/// No fsync: container records live in the state dir, a tmpfs (`/run/berth`) that a power loss
/// empties anyway; syncing would only slow CreateContainer/StartContainer down.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::File::create(&tmp)?.write_all(bytes)?;
    std::fs::rename(tmp, path)
}

/// One request to a pod's monitor.
pub fn monitor_request(pod_dir: &Path, request: &Request) -> Result<Response, String> {
    let (_dir, path) =
        short_socket_path(pod_dir, SOCKET_FILE).map_err(|e| format!("pod dir: {e}"))?;
    let stream =
        UnixStream::connect(path).map_err(|e| format!("connect to the pod's monitor: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let line = serde_json::to_string(request).map_err(|e| e.to_string())?;
    writeln!(&stream, "{line}").map_err(|e| format!("write to the pod's monitor: {e}"))?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|e| format!("read from the pod's monitor: {e}"))?;
    let response: Response =
        serde_json::from_str(&answer).map_err(|e| format!("monitor answered {answer:?}: {e}"))?;
    if response.ok {
        Ok(response)
    } else {
        Err(response
            .error
            .unwrap_or_else(|| "monitor refused".to_string()))
    }
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
                        if exit.reason == "OOMKilled" {
                            self.metrics.oom_kills.inc();
                        }
                        self.metrics.log_bytes.inc_by(exit.log_bytes);
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
            self.metrics
                .by_state
                .get_or_create(&StateLabel { state: label })
                .set(n as i64);
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
        write_atomic(&self.dir(&r.id).join(RECORD_FILE), &bytes)
            .map_err(|e| self.failed(&r.id, "write record", e.to_string()))
    }

    fn failed(&self, id: &str, step: &'static str, message: String) -> ContainerError {
        ContainerError::Failed {
            id: id.to_string(),
            step,
            message,
        }
    }

    /// CreateContainer: rootfs, bundle, and the container built (not started) by the monitor.
    /// Any failure takes back every step.
    pub fn create(&self, input: CreateInput) -> Result<String, ContainerError> {
        {
            let records = self.lock();
            let same = records.values().find(|r| {
                r.sandbox_id == input.sandbox_id
                    && r.config.metadata.name == input.config.metadata.name
                    && r.config.metadata.attempt == input.config.metadata.attempt
            });
            if let Some(r) = same {
                return Err(ContainerError::InvalidArgument(format!(
                    "container name {:?} attempt {} is reserved for {} in pod {}",
                    r.config.metadata.name, r.config.metadata.attempt, r.id, r.sandbox_id
                )));
            }
        }
        let id = berth_common::ids::new_id().map_err(|e| self.failed("", "make an id", e.to_string()))?;
        let dir = self.dir(&id);
        let layer_dir = self.root.join("containers").join(&id);
        let rootfs = dir.join("rootfs");
        let result = self.build(&id, &dir, &layer_dir, &rootfs, &input);
        if let Err(e) = &result {
            tracing::warn!(container_id = %id, error = %e, "create failed: rolling back");
            let _ = monitor_request(&input.pod_dir, &Request::Delete { id: id.clone() });
            let _ = umount2(&rootfs, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir_all(&dir);
            let _ = std::fs::remove_dir_all(&layer_dir);
        }
        result.map(|record| {
            self.lock().insert(id.clone(), record);
            id
        })
    }

    fn build(
        &self,
        id: &str,
        dir: &Path,
        layer_dir: &Path,
        rootfs: &Path,
        input: &CreateInput,
    ) -> Result<ContainerRecord, ContainerError> {
        let fail = |step: &'static str| move |e: String| self.failed(id, step, e);
        for d in [
            rootfs.to_path_buf(),
            layer_dir.join("upper"),
            layer_dir.join("work"),
        ] {
            std::fs::create_dir_all(&d).map_err(|e| fail("create dirs")(e.to_string()))?;
        }
        if input.layers.is_empty() {
            return Err(fail("rootfs")("the image has no layers".to_string()));
        }
        // overlayfs: the first lowerdir is the top layer.
        let lower: Vec<String> = input
            .layers
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect();
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            layer_dir.join("upper").display(),
            layer_dir.join("work").display()
        );
        mount(
            Some("overlay"),
            rootfs,
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(|e| fail("mount rootfs")(e.to_string()))?;
        let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).ok();
        let group = std::fs::read_to_string(rootfs.join("etc/group")).ok();
        let log_path = if input.config.log_path.is_empty() {
            // No log directory from kubelet: keep the output beside the container's state.
            dir.join("log")
        } else {
            PathBuf::from(&input.config.log_path)
        };
        if let Some(parent) = log_path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| fail("log directory")(e.to_string()))?;
        }
        let mut config = input.config.clone();
        config.log_path = log_path.display().to_string();
        // As containerd: rslave/rshared only make sense from a slave/shared source mount.
        check_propagation(&input.config.mounts).map_err(ContainerError::InvalidArgument)?;
        // As containerd: a bind mount's missing host directory is created.
        for m in &config.mounts {
            if !m.host_path.exists() {
                std::fs::create_dir_all(&m.host_path).map_err(|e| {
                    fail("mount source")(format!("create {}: {e}", m.host_path.display()))
                })?;
            }
        }
        let devices =
            spec::devices::nodes_for(&config).map_err(|e| fail("devices")(e.to_string()))?;
        let generated = spec::generate(&SpecInput {
            container_id: id,
            rootfs,
            config: &config,
            sandbox: &input.sandbox,
            image: &input.image_config,
            etc_passwd: passwd.as_deref(),
            etc_group: group.as_deref(),
            device_nodes: &devices,
            target_pid_namespace: None,
            host: &self.host,
        })
        .map_err(|e| ContainerError::InvalidArgument(format!("container {id}: {e}")))?;
        let user = generated.process().as_ref().map(|p| ProcessUser {
            uid: p.user().uid(),
            gid: p.user().gid(),
            additional_gids: p.user().additional_gids().clone().unwrap_or_default(),
        });
        let cgroup = generated
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().clone());
        generated
            .save(dir.join("config.json"))
            .map_err(|e| fail("write config.json")(e.to_string()))?;
        let mut record = ContainerRecord {
            id: id.to_string(),
            sandbox_id: input.sandbox_id.clone(),
            pod_dir: input.pod_dir.clone(),
            config,
            image: input.image.clone(),
            image_id: input.image_id.clone(),
            stop_signal: input.image_config.stop_signal.clone(),
            log_path: log_path.clone(),
            cgroup: cgroup.clone(),
            pid: 0,
            created_at: berth_common::ids::now_nanos(),
            started_at: 0,
            exit: None,
            layer_dir: layer_dir.to_path_buf(),
            user,
            layers: input.layers.clone(),
        };
        self.save(&record)?;
        let response = monitor_request(
            &input.pod_dir,
            &Request::Create {
                id: id.to_string(),
                bundle: dir.to_path_buf(),
                log_path,
                exit_file: dir.join(EXIT_FILE),
                cgroup,
                stdin: record.config.stdin,
                tty: record.config.tty,
            },
        )
        .map_err(fail("create in the pod's monitor"))?;
        record.pid = response.pid.unwrap_or(0);
        self.save(&record)?;
        Ok(record)
    }

    /// StartContainer: only a created container starts.
    pub fn start(&self, id: &str) -> Result<(), ContainerError> {
        let record = self
            .get(id)
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        if record.state() != ContainerState::Created {
            return Err(ContainerError::FailedPrecondition(format!(
                "container {id} is {:?}, not created",
                record.state()
            )));
        }
        // Stamped before the process may run: a container that exits at once must not show a
        // finish time earlier than its start.
        let started_at = berth_common::ids::now_nanos();
        monitor_request(&record.pod_dir, &Request::Start { id: id.to_string() })
            .map_err(|e| self.failed(id, "start", e))?;
        let mut records = self.lock();
        if let Some(r) = records.get_mut(id) {
            r.started_at = started_at;
            let r = r.clone();
            drop(records);
            self.save(&r)?;
        }
        Ok(())
    }

    /// StopContainer: the stop signal, SIGKILL after `timeout`, returns once the process is
    /// gone. CRI: a stopped or unknown container is not an error.
    pub fn stop(&self, id: &str, timeout: Duration) -> Result<(), ContainerError> {
        let Some(record) = self.get(id) else {
            return Ok(());
        };
        if record.state() == ContainerState::Exited {
            return Ok(());
        }
        let signal = parse_signal(&record.stop_signal).unwrap_or(libc::SIGTERM);
        let exit_file = self.dir(id).join(EXIT_FILE);
        if record.state() == ContainerState::Created {
            // Never started: its init waits for `start`; SIGKILL is the only way out.
            let _ = monitor_request(
                &record.pod_dir,
                &Request::Signal {
                    id: id.into(),
                    signal: libc::SIGKILL,
                },
            );
        } else if !timeout.is_zero() {
            monitor_request(
                &record.pod_dir,
                &Request::Signal {
                    id: id.into(),
                    signal,
                },
            )
            .map_err(|e| self.failed(id, "stop signal", e))?;
            if wait_for(&exit_file, timeout) {
                return Ok(());
            }
        }
        monitor_request(
            &record.pod_dir,
            &Request::Signal {
                id: id.into(),
                signal: libc::SIGKILL,
            },
        )
        .map_err(|e| self.failed(id, "kill", e))?;
        if !wait_for(&exit_file, Duration::from_secs(30)) {
            return Err(self.failed(
                id,
                "stop",
                "the process did not exit 30s after SIGKILL".to_string(),
            ));
        }
        Ok(())
    }

    /// RemoveContainer: stop, then the monitor's and libcontainer's state, the rootfs, the
    /// writable layer and the record. CRI: an unknown container is already removed.
    pub fn remove(&self, id: &str) -> Result<(), ContainerError> {
        let Some(record) = self.get(id) else {
            return Ok(());
        };
        // A pod whose monitor is gone has no process left to stop.
        if record.pod_dir.join(SOCKET_FILE).exists() {
            self.stop(id, Duration::ZERO)?;
            if let Err(e) =
                monitor_request(&record.pod_dir, &Request::Delete { id: id.to_string() })
            {
                tracing::warn!(container_id = %id, error = %e, "monitor could not delete the container's state");
            }
        }
        let dir = self.dir(id);
        match umount2(&dir.join("rootfs"), MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(self.failed(id, "unmount rootfs", e.to_string())),
        }
        if let Some(cgroup) = &record.cgroup {
            // libcontainer's delete removes it; a container whose monitor died leaves it.
            let relative = cgroup.strip_prefix("/").unwrap_or(cgroup);
            for h in crate::cgroups::hierarchies() {
                let _ = std::fs::remove_dir(h.mountpoint.join(relative));
            }
        }
        let _ = std::fs::remove_dir_all(&record.layer_dir);
        std::fs::remove_dir_all(&dir)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|e| self.failed(id, "remove dir", e.to_string()))?;
        self.lock().remove(id);
        Ok(())
    }

    /// ReopenContainerLog: the monitor opens the log path anew (after kubelet's rotation).
    pub fn reopen_log(&self, id: &str) -> Result<(), ContainerError> {
        let record = self
            .get(id)
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        if record.state() != ContainerState::Running {
            return Err(ContainerError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        monitor_request(&record.pod_dir, &Request::ReopenLog { id: id.to_string() })
            .map(|_| ())
            .map_err(|e| self.failed(id, "reopen log", e))
    }

    /// UpdateContainerResources: the new limits (a zero or empty field keeps its value, as with
    /// `runc update`) into the container's live cgroup, then into its record. An exited
    /// container's cgroup is gone, and a CRI container never starts again.
    pub fn update_resources(
        &self,
        id: &str,
        resources: spec::Resources,
    ) -> Result<(), ContainerError> {
        use crate::resources_update::{self as update, UpdateError};
        // One update at a time, so that the cgroup and the record end with the same values.
        static UPDATES: Mutex<()> = Mutex::new(());
        let _one = UPDATES.lock().unwrap_or_else(|e| e.into_inner());
        let record = self
            .get(id)
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        if record.state() == ContainerState::Exited {
            return Err(ContainerError::FailedPrecondition(format!(
                "container {id} has exited: its resources cannot change"
            )));
        }
        let cgroup = record.cgroup.clone().ok_or_else(|| {
            ContainerError::FailedPrecondition(format!("container {id} has no cgroup"))
        })?;
        let invalid = |e: String| ContainerError::InvalidArgument(format!("container {id}: {e}"));
        let old = &record.config.resources;
        let merged = update::merge(old, &resources);
        let linux =
            spec::resources::resources(&merged, &self.host).map_err(|e| invalid(e.to_string()))?;
        let oom_score_adj = (merged.oom_score_adj != old.oom_score_adj)
            .then(|| {
                spec::resources::oom_score_adj(merged.oom_score_adj, self.host.min_oom_score_adj)
            })
            .transpose()
            .map_err(|e| invalid(e.to_string()))?;
        update::update_cgroup(&cgroup, &linux).map_err(|e| match e {
            UpdateError::Invalid(m) => invalid(m),
            UpdateError::Refused(m) => self.failed(id, "update resources", m),
        })?;
        if let Some(adj) = oom_score_adj.filter(|_| record.pid > 0) {
            update::set_oom_score_adj(record.pid, adj)
                .map_err(|e| self.failed(id, "update oom_score_adj", e))?;
        }
        let updated = {
            let mut records = self.lock();
            let r = records
                .get_mut(id)
                .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
            r.config.resources = merged;
            r.clone()
        };
        self.save(&updated)
    }
}

/// Refuses HostToContainer (rslave) and Bidirectional (rshared) mounts whose source is not on a
/// slave or shared mount, with containerd's reasoning: nothing would propagate.
fn check_propagation(mounts: &[spec::Mount]) -> Result<(), String> {
    let wanted: Vec<&spec::Mount> = mounts
        .iter()
        .filter(|m| m.propagation != spec::Propagation::Private)
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("read mountinfo: {e}"))?;
    for m in wanted {
        let (mountpoint, tags) = mount_of(&info, &m.host_path);
        let ok = match m.propagation {
            spec::Propagation::Bidirectional => tags.iter().any(|t| t.starts_with("shared:")),
            _ => tags
                .iter()
                .any(|t| t.starts_with("shared:") || t.starts_with("master:")),
        };
        if !ok {
            return Err(format!(
                "path {} is mounted on {mountpoint} but it is not a {} mount",
                m.host_path.display(),
                if m.propagation == spec::Propagation::Bidirectional {
                    "shared"
                } else {
                    "shared or slave"
                }
            ));
        }
    }
    Ok(())
}

/// The mount point holding `path` (the longest matching one) and its propagation tags.
fn mount_of(mountinfo: &str, path: &Path) -> (String, Vec<String>) {
    let mut best: (String, Vec<String>) = ("/".to_string(), Vec::new());
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let Some(point) = fields.get(4) else { continue };
        if path.starts_with(point) && point.len() >= best.0.len() {
            best = (
                point.to_string(),
                fields[6..sep].iter().map(|s| s.to_string()).collect(),
            );
        }
    }
    best
}

/// Waits until `file` exists, at most `timeout`.
fn wait_for(file: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if file.exists() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `SIGTERM`, `TERM`, `15` → 15.
pub fn parse_signal(s: &str) -> Option<i32> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<i32>() {
        return Some(n);
    }
    let name = s.to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn propagation_needs_a_shared_or_slave_source() {
        let info = "\
20 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 20 0:5 / /private rw - tmpfs tmpfs rw
31 20 0:6 / /slave rw master:7 - tmpfs tmpfs rw
";
        assert_eq!(mount_of(info, Path::new("/private/x")).0, "/private");
        assert_eq!(mount_of(info, Path::new("/slave/y")).1, ["master:7"]);
        assert_eq!(mount_of(info, Path::new("/home/z")).1, ["shared:1"]);
    }

    #[test]
    fn stop_signals_parse_by_name_or_number() {
        assert_eq!(parse_signal("SIGTERM"), Some(15));
        assert_eq!(parse_signal("term"), Some(15));
        assert_eq!(parse_signal("SIGQUIT"), Some(3));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal(""), None);
        assert_eq!(parse_signal("SIGNOPE"), None);
    }
}
