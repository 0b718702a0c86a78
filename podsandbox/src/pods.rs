//! `Pods`: sandboxes, the containers in them and the images they are built on, composed. The
//! glue between them lives here and nowhere else: a container leases its image's snapshots
//! while it exists, a pod's containers go before the pod does, and the container manager's
//! blocking work runs on the blocking pool.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_image::{ChainId, Images};
use berth_runtime::monitor::protocol::EXIT_NOTICE_SOCKET;
use berth_runtime::spec::Resources;

use crate::container::ContainerState;
use crate::container::{
    attach, exec_stream, ContainerDetail, ContainerError, ContainerRecord, ContainerUsage,
    Containers, CreateInput, ExecError, ExecOutput, ExecStdio,
};
use crate::events::Events;
use crate::sandbox::record::{SandboxRecord, SandboxState};
use crate::sandbox::{SandboxError, SandboxUsage, Sandboxes};

/// How often the containers' writable layers are measured for their stats (kubelet polls
/// stats every 10 s).
const LAYER_USAGE_INTERVAL: Duration = Duration::from_secs(10);

/// A pod's usage sample with its running containers'.
#[derive(Debug, Clone)]
pub struct PodUsage {
    pub sandbox: SandboxRecord,
    pub usage: SandboxUsage,
    pub containers: Vec<ContainerSample>,
}

/// One running container's sample; `detail` only when it was asked for (the CRI metrics).
#[derive(Debug, Clone)]
pub struct ContainerSample {
    pub record: ContainerRecord,
    pub usage: ContainerUsage,
    pub detail: Option<ContainerDetail>,
}

/// Why a pod-wide operation failed: one of its containers, or the sandbox itself.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

/// The agent's pods: what the CRI services drive.
pub struct Pods {
    pub images: Arc<Images>,
    pub sandboxes: Arc<Sandboxes>,
    pub containers: Arc<Containers>,
    pub events: Arc<Events>,
    /// Per pod: creates of containers hold it shared, stopping or removing the pod exclusive,
    /// so a container being made while its pod is taken down is either made first (and then
    /// stopped with the others) or refused.
    teardown: std::sync::Mutex<HashMap<String, Arc<tokio::sync::RwLock<()>>>>,
}

impl Pods {
    /// The agent's pods. `events` must be the bus `sandboxes` and `containers` publish on: it
    /// takes its pod snapshots from them from now on.
    pub fn new(
        images: Arc<Images>,
        sandboxes: Arc<Sandboxes>,
        containers: Arc<Containers>,
        events: Arc<Events>,
    ) -> Pods {
        events.attach(&sandboxes, &containers);
        Pods {
            images,
            sandboxes,
            containers,
            events,
            teardown: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Pod `sandbox_id`'s teardown lock ([`Pods::teardown`]).
    fn teardown_lock(&self, sandbox_id: &str) -> Arc<tokio::sync::RwLock<()>> {
        self.teardown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(sandbox_id.to_string())
            .or_default()
            .clone()
    }

    /// What happened while the agent was down, as events: the sandboxes whose monitor died,
    /// then the exits the monitors recorded; from then on, the live monitors are watched. Call
    /// once the exit notices are being received, so that no exit falls between the two.
    pub async fn catch_up(&self) {
        self.sandboxes.watch_monitors();
        let containers = self.containers.clone();
        let _ = tokio::task::spawn_blocking(move || containers.fold_exits()).await;
    }

    /// Receives the monitors' exit notices on `<state>/exits.sock` and folds each exit at once,
    /// which publishes its STOPPED event. Binds before it returns.
    pub fn spawn_exit_notices(&self, state: &Path) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let path = state.join(EXIT_NOTICE_SOCKET);
        let _ = std::fs::remove_file(&path);
        let (_dir, short) =
            berth_runtime::monitor::protocol::short_socket_path(state, EXIT_NOTICE_SOCKET)?;
        let socket = tokio::net::UnixDatagram::bind(&short)?;
        let containers = self.containers.clone();
        Ok(tokio::spawn(async move {
            let mut buf = [0u8; 256];
            loop {
                let n = match socket.recv(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(error = %e, "exit notices: receive failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(id) = std::str::from_utf8(&buf[..n]).map(str::to_string) else {
                    continue;
                };
                let c = containers.clone();
                let _ = tokio::task::spawn_blocking(move || c.fold_exit(&id)).await;
            }
        }))
    }

    /// The snapshots each recorded container is built on, to lease them before the image
    /// store's start-up GC runs (so it cannot take a container's rootfs away).
    pub fn image_leases(containers: &Containers) -> HashMap<String, Vec<ChainId>> {
        containers
            .list()
            .into_iter()
            .map(|c| (c.id, chains_of(&[c.layers, c.volume_layers].concat())))
            .collect()
    }

    /// Runs one of the container manager's blocking operations on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Containers) -> Result<T, ContainerError> + Send + 'static,
    ) -> Result<T, ContainerError> {
        let containers = self.containers.clone();
        tokio::task::spawn_blocking(move || f(&containers))
            .await
            .map_err(|e| ContainerError::Failed {
                id: String::new(),
                step: "container task",
                message: e.to_string(),
            })?
    }

    /// CreateContainer. Its layers stay, whatever happens to the image, until it is removed:
    /// they are leased before anything is mounted on them, and a create whose image went
    /// before that is NotFound.
    pub async fn create_container(&self, input: CreateInput) -> Result<String, ContainerError> {
        // Image volumes' layers are leased with the rootfs's: RemoveImage cannot pull them away.
        let mut layers = input.layers.clone();
        for (_, volume) in &input.image_volumes {
            layers.extend(volume.iter().cloned());
        }
        let chains = chains_of(&layers);
        // Owned, and moved into the blocking create below: a caller that gives up drops this
        // future, and the create must still hold the pod's teardown off until it is done.
        let not_torn_down = self.teardown_lock(&input.sandbox_id).read_owned().await;
        // The pod was stopped while this create waited for the lock.
        if self
            .sandboxes
            .get(&input.sandbox_id)
            .is_none_or(|s| s.state != SandboxState::Ready)
        {
            return Err(ContainerError::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                input.sandbox_id
            )));
        }
        // The grace period the create's cgroup move waits for starts now, beside the create.
        tokio::task::spawn_blocking(berth_runtime::cgroups::take_threadgroup_lock_in_place);
        let id = berth_common::ids::new_id().map_err(|e| ContainerError::Failed {
            id: String::new(),
            step: "make an id",
            message: e.to_string(),
        })?;
        let images = self.images.clone();
        let image = input.image.clone();
        let holder = id.clone();
        let created = self
            .blocking(move |c| {
                let _not_torn_down = not_torn_down;
                images.lease(&holder, chains);
                if layers.iter().any(|l| !l.exists()) {
                    return Err(ContainerError::ImageGone(image));
                }
                c.create(&holder, input)
            })
            .await;
        if created.is_err() {
            self.release(id.clone()).await;
        }
        created.map(|()| id)
    }

    pub async fn start_container(&self, id: String) -> Result<(), ContainerError> {
        self.blocking(move |c| c.start(&id)).await
    }

    pub async fn stop_container(
        &self,
        id: String,
        timeout: Duration,
    ) -> Result<(), ContainerError> {
        self.blocking(move |c| c.stop(&id, timeout)).await
    }

    /// RemoveContainer; its image layers are released to GC.
    pub async fn remove_container(&self, id: String) -> Result<(), ContainerError> {
        let held = id.clone();
        self.blocking(move |c| c.remove(&id)).await?;
        self.release(held).await;
        Ok(())
    }

    pub async fn reopen_container_log(&self, id: String) -> Result<(), ContainerError> {
        self.blocking(move |c| c.reopen_log(&id)).await
    }

    pub async fn update_container_resources(
        &self,
        id: String,
        resources: Resources,
    ) -> Result<(), ContainerError> {
        self.blocking(move |c| c.update_resources(&id, resources))
            .await
    }

    /// ExecSync in a container, through `berthd init exec` (our own binary).
    pub async fn exec_sync(
        &self,
        record: &ContainerRecord,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, ExecError> {
        let berthd = std::env::current_exe()
            .map_err(|e| ExecError::Failed(format!("find our binary: {e}")))?;
        self.containers
            .exec_sync(&berthd, record, cmd, timeout)
            .await
    }

    /// A streaming exec in a container, to the process's end (dropped: killed).
    pub async fn exec_stream(
        &self,
        record: &ContainerRecord,
        cmd: &[String],
        stdio: ExecStdio,
    ) -> Result<i32, ExecError> {
        let berthd = std::env::current_exe()
            .map_err(|e| ExecError::Failed(format!("find our binary: {e}")))?;
        exec_stream(
            &berthd,
            &record
                .pod_dir
                .join(berth_runtime::monitor::protocol::RUNC_DIR),
            &record.id,
            cmd,
            stdio,
        )
        .await
    }

    /// Attaches to a running container's stdio until its output ends (dropped: detached).
    pub async fn attach(&self, record: &ContainerRecord, stdio: ExecStdio) -> Result<(), String> {
        attach(record, stdio).await
    }

    /// A usage sample of each container, read on the blocking pool.
    pub async fn container_usage(
        &self,
        records: Vec<ContainerRecord>,
    ) -> Vec<(ContainerRecord, ContainerUsage)> {
        let containers = self.containers.clone();
        tokio::task::spawn_blocking(move || {
            records
                .into_iter()
                .map(|r| {
                    let usage = containers.usage(&r);
                    (r, usage)
                })
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    /// A usage sample of each sandbox and of the running containers in it, read on the
    /// blocking pool; with each container's [`ContainerDetail`] if `detailed`.
    pub async fn sandbox_usage(
        &self,
        records: Vec<SandboxRecord>,
        detailed: bool,
    ) -> Vec<PodUsage> {
        let sandboxes = self.sandboxes.clone();
        let containers = self.containers.clone();
        tokio::task::spawn_blocking(move || {
            let mut all_containers = containers.fold_exits();
            records
                .into_iter()
                .map(|sandbox| {
                    let usage = sandboxes.usage(&sandbox);
                    let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut all_containers)
                        .into_iter()
                        .partition(|c| c.sandbox_id == sandbox.id);
                    all_containers = rest;
                    let containers = mine
                        .into_iter()
                        .filter(|c| c.state() == ContainerState::Running)
                        .map(|record| ContainerSample {
                            usage: containers.usage(&record),
                            detail: detailed.then(|| containers.detail(&record)),
                            record,
                        })
                        .collect();
                    PodUsage {
                        sandbox,
                        usage,
                        containers,
                    }
                })
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    /// Starts what the agent keeps doing in the background: measuring writable layers, so that
    /// the stats RPCs never walk a directory tree themselves, and the monitors' memory.
    pub fn spawn_background(&self) -> tokio::task::JoinHandle<()> {
        let containers = self.containers.clone();
        let sandboxes = self.sandboxes.clone();
        tokio::spawn(async move {
            loop {
                let (c, s) = (containers.clone(), sandboxes.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    c.refresh_layer_usage();
                    s.refresh_monitor_memory();
                })
                .await;
                tokio::time::sleep(LAYER_USAGE_INTERVAL).await;
            }
        })
    }

    /// StopPodSandbox: every container of the pod is stopped first, then the sandbox.
    pub async fn stop_pod(&self, sandbox_id: &str) -> Result<(), PodError> {
        let lock = self.teardown_lock(sandbox_id);
        let _no_create = lock.write().await;
        self.take_containers(sandbox_id, false).await?;
        Ok(self.sandboxes.stop(sandbox_id).await?)
    }

    /// RemovePodSandbox: every container of the pod is stopped and removed, then the sandbox.
    pub async fn remove_pod(&self, sandbox_id: &str) -> Result<(), PodError> {
        let lock = self.teardown_lock(sandbox_id);
        let _no_create = lock.write().await;
        self.take_containers(sandbox_id, true).await?;
        self.sandboxes.remove(sandbox_id).await?;
        self.teardown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(sandbox_id);
        Ok(())
    }

    async fn take_containers(&self, sandbox_id: &str, remove: bool) -> Result<(), ContainerError> {
        for id in self.containers.in_sandbox(sandbox_id) {
            let held = id.clone();
            self.blocking(move |c| {
                c.stop(&id, Duration::ZERO)?;
                if remove {
                    c.remove(&id)?;
                }
                Ok(())
            })
            .await?;
            if remove {
                self.release(held).await;
            }
        }
        Ok(())
    }

    /// Gives a removed container's image layers back to GC.
    async fn release(&self, id: String) {
        let images = self.images.clone();
        let _ = tokio::task::spawn_blocking(move || images.release(&id)).await;
    }
}

fn chains_of(layers: &[PathBuf]) -> Vec<ChainId> {
    layers
        .iter()
        .filter_map(|l| Images::chain_of_snapshot_dir(l))
        .collect()
}
