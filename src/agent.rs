//! The agent: claims the state dir, binds the CRI socket and the metrics endpoint, serves until
//! SIGTERM/SIGINT, then drains in-flight RPCs (bounded) and removes its socket and lock. SIGHUP
//! reloads what can change without a restart (`reload.rs`).

use std::fs::{DirBuilder, File, OpenOptions, Permissions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_cri::authority::AuthorityFix;
use berth_cri::{CriMetrics, CriOptions};
use berth_image::{ImageMetrics, Images};
use berth_podsandbox::{
    ContainerMetrics, Containers, EventMetrics, Events, PodNetwork, Pods, SandboxMetrics, Sandboxes,
};
use prometheus_client::registry::Registry;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;

use crate::config::Config;
use crate::logging::LogLevel;
use crate::metrics;
use crate::reload::Reloader;

const LOCK_FILE: &str = "berthd.lock";

/// Why the agent could not start or serve. One line each, naming the path or address.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open lock file {path}: {source}")]
    OpenLock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another berthd (pid {pid}) is already running with state dir {state} (lock {path} is held)")]
    Locked {
        state: PathBuf,
        path: PathBuf,
        pid: String,
    },
    #[error("runtime.cgroup_driver is \"systemd\" but systemd is not this host's init (no /run/systemd/system); use \"cgroupfs\"")]
    NoSystemd,
    #[error("socket {0} is in use by another process")]
    SocketBusy(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("cannot bind socket {path}: {source}")]
    BindSocket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot bind metrics address {address}: {source}")]
    BindMetrics {
        address: String,
        source: std::io::Error,
    },
    #[error("cannot bind streaming address {address}: {source}")]
    BindStreaming {
        address: String,
        source: std::io::Error,
    },
    #[error("image store: {0}")]
    Images(berth_image::ImageError),
    #[error("containers: {0}")]
    Containers(std::io::Error),
    #[error("pod sandboxes: {0}")]
    Sandboxes(std::io::Error),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    #[error("gRPC server failed: {0}")]
    Serve(tonic::transport::Error),
}

/// Creates `path` and its missing parents with `mode`; an existing directory is left as it is.
fn create_dir(path: &Path, mode: u32) -> Result<(), AgentError> {
    DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|source| AgentError::CreateDir {
            path: path.to_path_buf(),
            source,
        })
}

/// An exclusive claim on a state dir: a flock on `<state>/berthd.lock` holding our pid.
/// Dropping it removes the file and releases the lock.
struct StateLock {
    path: PathBuf,
    _file: File,
}

impl StateLock {
    fn acquire(state: &Path) -> Result<StateLock, AgentError> {
        let path = state.join(LOCK_FILE);
        let open_error = |source| AgentError::OpenLock {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(open_error)?;
        match lock_unless_held_by_an_agent(&file) {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.rewind();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(AgentError::Locked {
                    state: state.to_path_buf(),
                    path,
                    pid: if pid.is_empty() {
                        "unknown".to_string()
                    } else {
                        pid.to_string()
                    },
                });
            }
            Err(TryLockError::Error(e)) => return Err(open_error(e)),
        }
        // Record who holds it, for the message a second agent prints.
        file.set_len(0).map_err(open_error)?;
        file.rewind().map_err(open_error)?;
        writeln!(file, "{}", std::process::id()).map_err(open_error)?;
        Ok(StateLock { path, _file: file })
    }
}

/// How long a lock whose named agent is dead may still be held by what it left.
const LEFTOVER_LOCK_WAIT: Duration = Duration::from_secs(10);

/// Takes the lock. Held, it is refused at once while the agent it names lives; when that agent
/// is gone, the holder is something it left (a child forked and not yet exec'd when the agent
/// was killed, which closes the lock at its exec), so it is waited for, for a while.
fn lock_unless_held_by_an_agent(file: &File) -> Result<(), TryLockError> {
    let deadline = std::time::Instant::now() + LEFTOVER_LOCK_WAIT;
    loop {
        match file.try_lock() {
            Err(TryLockError::WouldBlock)
                if !named_agent_lives(file) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Whether the pid the lock file holds is a live process (not a zombie).
fn named_agent_lives(mut file: &File) -> bool {
    let mut text = String::new();
    if file.rewind().is_err() || file.read_to_string(&mut text).is_err() {
        return true;
    }
    let Ok(pid) = text.trim().parse::<u32>() else {
        return true;
    };
    berth_common::procfs::running(pid)
}

impl Drop for StateLock {
    fn drop(&mut self) {
        // Removed while still locked, so no other agent can have claimed this file meanwhile.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The CRI socket: bound with mode 0660, owned by root and `[grpc] gid`, removed on drop.
struct CriSocket {
    path: PathBuf,
}

impl CriSocket {
    fn bind(
        path: &Path,
        gid: u32,
    ) -> Result<(CriSocket, std::os::unix::net::UnixListener), AgentError> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                // A live listener answers; a socket left by a dead agent refuses the connection.
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(AgentError::SocketBusy(path.to_path_buf()));
                }
                tracing::info!(socket = %path.display(), "replacing stale socket");
                std::fs::remove_file(path).map_err(|source| AgentError::BindSocket {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
            Ok(_) => return Err(AgentError::NotASocket(path.to_path_buf())),
            Err(_) => {}
        }
        let bind_error = |source| AgentError::BindSocket {
            path: path.to_path_buf(),
            source,
        };
        let listener = std::os::unix::net::UnixListener::bind(path).map_err(bind_error)?;
        let socket = CriSocket {
            path: path.to_path_buf(),
        };
        std::fs::set_permissions(path, Permissions::from_mode(0o660)).map_err(bind_error)?;
        if gid != 0 {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(bind_error)?;
        }
        listener.set_nonblocking(true).map_err(bind_error)?;
        Ok((socket, listener))
    }
}

impl Drop for CriSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Makes the CRI socket's directory when it is missing. One berth made for it is set to 0700, or
/// 0710 with `gid` as its group so that group can reach the socket; the state dir (the default
/// place) to 0711 with that group; a directory berth does not own (say `/run`) is left as it is.
fn socket_dir(dir: &Path, state: &Path, gid: u32) -> Result<(), AgentError> {
    let made = !dir.exists();
    create_dir(dir, 0o700)?;
    if !made && dir != state {
        return Ok(());
    }
    let error = |source| AgentError::CreateDir {
        path: dir.to_path_buf(),
        source,
    };
    // The state dir must stay passable (0711, as containerd's): a pod's root in a user
    // namespace reaches its pod's namespaces and files under it. The socket itself (0660,
    // root:<gid>) is what keeps others out there.
    let mode = if dir == state {
        0o711
    } else if gid == 0 {
        0o700
    } else {
        0o710
    };
    std::os::unix::fs::chown(dir, None, Some(gid)).map_err(error)?;
    std::fs::set_permissions(dir, Permissions::from_mode(mode)).map_err(error)
}

/// Runs the agent until a termination signal. Returns once the socket and lock are removed.
pub async fn run(
    config: Config,
    config_path: Option<&Path>,
    log_level: LogLevel,
) -> Result<(), AgentError> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(AgentError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(AgentError::Signal)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(AgentError::Signal)?;

    // The socket's directory first: with the defaults it is the state dir itself.
    if let Some(dir) = config.grpc.address.parent() {
        socket_dir(dir, &config.state, config.grpc.gid)?;
    }
    // 0711 as containerd: others may traverse to what we expose, but not list.
    create_dir(&config.root, 0o711)?;
    create_dir(&config.state, 0o711)?;
    let lock = StateLock::acquire(&config.state)?;

    let metrics_listener = match config.metrics_address() {
        Some(address) => Some(std::net::TcpListener::bind(address).map_err(|source| {
            AgentError::BindMetrics {
                address: config.metrics.address.clone(),
                source,
            }
        })?),
        None => None,
    };
    let (socket, listener) = CriSocket::bind(&config.grpc.address, config.grpc.gid)?;
    let listener =
        tokio::net::UnixListener::from_std(listener).map_err(|source| AgentError::BindSocket {
            path: config.grpc.address.clone(),
            source,
        })?;

    let mut registry = Registry::default();
    metrics::register_build_info(&mut registry);
    metrics::register_cgroup_info(&mut registry, config.runtime.cgroup_driver);
    let cri_metrics = Arc::new(CriMetrics::register(&mut registry));
    let image_metrics = ImageMetrics::register(&mut registry);
    let cni_metrics = berth_cni::CniMetrics::register(&mut registry);
    let sandbox_metrics = SandboxMetrics::register(&mut registry);
    let container_metrics = ContainerMetrics::register(&mut registry);
    let events = Events::new(config.events.queue, EventMetrics::register(&mut registry));
    let streaming_metrics = berth_streaming::StreamingMetrics::register(&mut registry);
    let reloads = metrics::register_reloads(&mut registry);
    let registry = Arc::new(registry);
    if config.runtime.cgroup_driver == berth_runtime::CgroupDriver::Systemd
        && !berth_runtime::cgroups::systemd::booted()
    {
        return Err(AgentError::NoSystemd);
    }
    let mut host = berth_runtime::spec::HostInfo::probe(config.runtime.cgroup_driver)
        .map_err(AgentError::Containers)?;
    host.default_seccomp = config.runtime.default_seccomp.profile();
    let containers = Containers::open(
        &config.state,
        &config.root,
        host,
        container_metrics,
        events.clone(),
        config.runtime.exec_standby,
    )
    .map_err(AgentError::Containers)?;
    // Containers first: the snapshots they are built on are leased before the image store's
    // start-up GC runs, so it cannot take a running container's rootfs away.
    let leases = Pods::image_leases(&containers);
    let images = Images::open(&config.root, config.registry.clone(), image_metrics, leases)
        .map_err(AgentError::Images)?;
    let images = Arc::new(images);
    let network = PodNetwork::new(&config.cni, &config.root, &config.state, cni_metrics);
    let sandboxes = Sandboxes::open(
        &config.state,
        Vec::new(),
        config.runtime.cgroup_driver,
        network,
        sandbox_metrics,
        events.clone(),
        config.runtime.monitor_standby,
    )
    .await
    .map_err(AgentError::Sandboxes)?;
    let sandboxes = Arc::new(sandboxes);
    let pods = Arc::new(Pods::new(
        images.clone(),
        sandboxes,
        Arc::new(containers),
        events,
    ));
    let background = pods.spawn_background();
    // Listening for exits before looking for those that happened while we were down: none
    // falls between.
    let exit_notices = pods
        .spawn_exit_notices(&config.state)
        .map_err(AgentError::Containers)?;
    pods.catch_up().await;

    let metrics_task = metrics_listener.map(|l| {
        let registry = registry.clone();
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(l, registry).await {
                tracing::error!(error = %e, "metrics endpoint stopped");
            }
        })
    });

    let (streaming, _streaming_task) = berth_streaming::Server::start(
        config.streaming.clone(),
        berth_cri::streaming::StreamBackend::new(pods.clone()),
        streaming_metrics,
    )
    .await
    .map_err(|source| AgentError::BindStreaming {
        address: config.streaming.address.clone(),
        source,
    })?;

    // Pods with their own user namespace need idmapped mounts of the image layers under root.
    let user_namespaces = match berth_runtime::idmap::supported_at(&config.root) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(root = %config.root.display(), error = %e, "no idmapped mounts here: user namespaces are not offered");
            false
        }
    };
    let options = CriOptions {
        cgroup_driver: config.runtime.cgroup_driver,
        config_json: serde_json::to_string(&config).unwrap_or_else(|_| "{}".to_string()),
        user_namespaces,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = berth_cri::router(options, pods, streaming.clone(), cri_metrics.clone())
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener).map(|c| c.map(AuthorityFix::new)),
            async {
                let _ = stop_rx.await;
            },
        );
    let mut server = tokio::spawn(server);
    tracing::info!(
        socket = %config.grpc.address.display(),
        metrics = %config.metrics.address,
        streaming = %streaming.address(),
        root = %config.root.display(),
        state = %config.state.display(),
        version = env!("CARGO_PKG_VERSION"),
        "berthd serving CRI"
    );
    // systemd's Type=notify: the unit is started once the socket answers.
    if let Err(e) = berth_common::notify::notify("READY=1") {
        tracing::warn!(error = %e, "sd_notify READY=1");
    }

    let mut reloader = Reloader {
        path: config_path,
        running: config.clone(),
        log_level,
        images: &images,
        reloads,
    };
    let outcome = loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break None }
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break None }
            _ = sighup.recv() => reloader.reload(),
            r = &mut server => break Some(r),
        }
    };
    let _ = berth_common::notify::notify("STOPPING=1");
    let result = match outcome {
        Some(Ok(Err(e))) => Err(AgentError::Serve(e)),
        Some(_) => Ok(()),
        None => {
            // Stop accepting, let in-flight RPCs finish, but never wait forever. Clients such as
            // kubelet keep idle connections open, so once no RPC is running we leave without them.
            let _ = stop_tx.send(());
            let grace = Duration::from_secs(config.grpc.shutdown_timeout_secs);
            let drained = async {
                cri_metrics.drained().await;
                // Let the last responses be written out.
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            tokio::select! {
                r = &mut server => match r {
                    Ok(Err(e)) => Err(AgentError::Serve(e)),
                    _ => Ok(()),
                },
                _ = drained => Ok(()),
                _ = tokio::time::sleep(grace) => {
                    tracing::warn!(seconds = grace.as_secs(), "RPCs still running after the shutdown timeout; exiting anyway");
                    Ok(())
                }
            }
        }
    };
    background.abort();
    exit_notices.abort();
    if let Some(task) = metrics_task {
        task.abort();
    }
    drop(socket);
    drop(lock);
    tracing::info!("berthd stopped");
    result
}
