//! Shared by the container suites (`e2e/tests/container*.rs`): an agent with a pulled test
//! image, pod and container configs with unique names and cgroup parents, CRI call shorthands,
//! and the leak check every suite runs before its teardown.

use std::time::{Duration, Instant};

use k8s_cri::v1::*;

pub use crate::cri::{remove_pod, run_pod};
use crate::images::ImageBuilder;
use crate::network::{mounts_under, processes_mentioning};
use crate::registry::TestRegistry;
use crate::{RuntimeClient, TempDir, TestAgent};

/// An agent with a pulled test image (with /etc/passwd and /etc/group) and a log directory.
pub struct Fixture {
    pub agent: TestAgent,
    pub registry: TestRegistry,
    pub image: String,
    pub logs: TempDir,
}

pub async fn fixture() -> Fixture {
    fixture_with("").await
}

/// [`fixture`] with `extra` config text for the agent (sections of their own, say).
pub async fn fixture_with(extra: &str) -> Fixture {
    fixture_for(TestAgent::start_with(extra).await).await
}

/// A [`Fixture`] around an agent the caller started (with paths of its own, say).
pub async fn fixture_for(agent: TestAgent) -> Fixture {
    let registry = TestRegistry::start();
    let pushed = ImageBuilder::with_passwd().push(&registry, "test/ctr", "v1");
    pull_ref(&agent, &pushed.image_ref()).await;
    Fixture {
        agent,
        registry,
        image: pushed.image_ref(),
        logs: TempDir::new("berth-e2e-logs"),
    }
}

pub fn pod_config(f: &Fixture, name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: f.logs.path().join(name).display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: pod_parent(name),
            ..crate::cri::pod_linux(crate::cri::namespaces(
                NamespaceMode::Node,
                NamespaceMode::Container,
                NamespaceMode::Pod,
            ))
        }),
        ..Default::default()
    }
}

/// The pod's Linux security context, made empty if it has none.
pub fn pod_security(config: &mut PodSandboxConfig) -> &mut LinuxSandboxSecurityContext {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// The container's Linux security context, made empty if it has none.
pub fn security(cfg: &mut ContainerConfig) -> &mut LinuxContainerSecurityContext {
    cfg.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

pub fn container_config(f: &Fixture, name: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: f.image.clone(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        linux: Some(crate::cri::container_linux(crate::cri::namespaces(
            NamespaceMode::Node,
            NamespaceMode::Container,
            NamespaceMode::Pod,
        ))),
        ..Default::default()
    }
}

/// Pulls `reference` through `agent`; the image ref PullImage answers (the image id).
pub async fn pull_ref(agent: &TestAgent, reference: &str) -> String {
    crate::cri::pull(&mut agent.image().await, reference).await
}

/// Pushes `image` to the fixture's registry as `<repo>:v1` and pulls it; its image ref.
pub async fn push_and_pull(f: &Fixture, image: ImageBuilder, repo: &str) -> String {
    pull_ref(&f.agent, &image.push(&f.registry, repo, "v1").image_ref()).await
}

/// A CreateContainer that must fail; its status.
pub async fn create_refused(
    c: &mut RuntimeClient,
    pod: &str,
    config: ContainerConfig,
    pod_config: PodSandboxConfig,
) -> tonic::Status {
    c.create_container(CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(config),
        sandbox_config: Some(pod_config),
    })
    .await
    .unwrap_err()
}

/// ExecSync of `cmd` with a 20 s timeout, which must be answered.
pub async fn exec_sync(c: &mut RuntimeClient, id: &str, cmd: &[&str]) -> ExecSyncResponse {
    c.exec_sync(ExecSyncRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout: 20,
    })
    .await
    .unwrap()
    .into_inner()
}

pub async fn create(
    c: &mut RuntimeClient,
    pod: &str,
    config: ContainerConfig,
    pod_config: PodSandboxConfig,
) -> String {
    c.create_container(CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(config),
        sandbox_config: Some(pod_config),
    })
    .await
    .unwrap()
    .into_inner()
    .container_id
}

/// StopContainer (no grace) and RemoveContainer, which must both succeed.
pub async fn stop_and_remove(c: &mut RuntimeClient, id: &str) {
    c.stop_container(StopContainerRequest {
        container_id: id.into(),
        timeout: 0,
    })
    .await
    .unwrap();
    c.remove_container(RemoveContainerRequest {
        container_id: id.into(),
    })
    .await
    .unwrap();
}

pub async fn start(c: &mut RuntimeClient, id: &str) {
    c.start_container(StartContainerRequest {
        container_id: id.into(),
    })
    .await
    .unwrap();
}

/// The container's process runs as `username` from the image's /etc/passwd.
pub fn run_as(config: &mut ContainerConfig, username: &str) {
    if let Some(s) = config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
    {
        s.run_as_username = username.into();
    }
}

pub async fn status(c: &mut RuntimeClient, id: &str) -> ContainerStatus {
    c.container_status(ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .unwrap()
    .into_inner()
    .status
    .unwrap()
}

pub async fn wait_exited(c: &mut RuntimeClient, id: &str) -> ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(c, id).await;
        if s.state == ContainerState::ContainerExited as i32 {
            return s;
        }
        assert!(Instant::now() < deadline, "container {id} did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn assert_clean(f: &Fixture, pod_name: &str) {
    let agent = &f.agent;
    assert!(
        mounts_under(agent.dir()).is_empty(),
        "mounts: {:?}",
        mounts_under(agent.dir())
    );
    let procs = processes_mentioning(&agent.paths.state.join("pods").to_string_lossy());
    assert!(procs.is_empty(), "processes left: {procs:?}");
    let left: Vec<_> = std::fs::read_dir(agent.paths.state.join("containers"))
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "container dirs left: {left:?}");
    let nested = container_cgroups_left(pod_name);
    assert!(nested.is_empty(), "container cgroups left: {nested:?}");
}

/// Removes this test process's top cgroup (`berth-e2e-<pid>`) and the pod cgroups under it,
/// once the last test of the process that holds one is done: the tests of a suite run at once
/// in one process, and one test's cleanup must not take an empty pod cgroup another test's
/// agent has just made (its monitor would then fail to join it).
pub struct CgroupTop(());

static TOP_HOLDERS: std::sync::Mutex<usize> = std::sync::Mutex::new(0);

impl CgroupTop {
    #[allow(clippy::new_without_default)]
    pub fn new() -> CgroupTop {
        *TOP_HOLDERS.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        CgroupTop(())
    }
}

impl Drop for CgroupTop {
    fn drop(&mut self) {
        let mut holders = TOP_HOLDERS.lock().unwrap_or_else(|e| e.into_inner());
        *holders -= 1;
        if *holders > 0 {
            return;
        }
        if crate::cgroup_driver() == berth_runtime::CgroupDriver::Systemd {
            crate::systemctl_stop(&crate::top_slice(&top()));
            return;
        }
        // The whole tree: a pod cgroup holds its monitor's leaf, and a test that failed before
        // removing its pod leaves both (its agent's drop has ended the processes).
        for top in crate::cgroup_dirs(&top()) {
            remove_cgroup_tree(&top);
        }
    }
}

/// Kills whatever still runs in the cgroups of the named pods (`pod_config`'s cgroup parents)
/// and removes them, even when the test failed. Only these pods: the tests of one suite run in
/// one process and share its top cgroup.
pub struct PodCgroups(pub Vec<String>);

impl Drop for PodCgroups {
    fn drop(&mut self) {
        if crate::cgroup_driver() == berth_runtime::CgroupDriver::Systemd {
            for name in &self.0 {
                crate::systemctl_stop(&pod_parent(name));
            }
            return;
        }
        for top in crate::cgroup_dirs(&top()) {
            for name in &self.0 {
                remove_cgroup_tree(&top.join(name));
            }
        }
    }
}

/// This test process's top cgroup, under which `pod_config` puts each pod.
fn top() -> String {
    format!("berth-e2e-{}", std::process::id())
}

/// The cgroup parent `pod_config` gives pod `pod_name`.
pub fn pod_parent(pod_name: &str) -> String {
    crate::pod_cgroup_parent(&top(), pod_name)
}

/// The cgroupfs path of container `id` in the pod `pod_config` made as `pod_name`.
pub fn container_cgroup(pod_name: &str, id: &str) -> std::path::PathBuf {
    crate::container_cgroup_path(&pod_parent(pod_name), id)
}

/// The container cgroups under the pod cgroup `pod_name` (`pod_config`'s parent) in any
/// hierarchy: its directories but the pod monitor's leaf.
pub fn container_cgroups(pod_name: &str) -> Vec<std::path::PathBuf> {
    crate::cgroup_dirs(&crate::pod_cgroup_path(&pod_parent(pod_name)).to_string_lossy())
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
        .filter(|e| e.path().is_dir())
        .filter(|e| {
            !e.file_name()
                .to_string_lossy()
                .starts_with("berth-monitor-")
        })
        .map(|e| e.path())
        .collect()
}

/// [`container_cgroups`] once they are gone, or after 10 s: a scope the systemd driver stopped
/// is removed by systemd when its job runs, just after the RPC returned.
pub fn container_cgroups_left(pod_name: &str) -> Vec<std::path::PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = container_cgroups(pod_name);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills whatever still runs in `dir` or below (a process a broken runtime left behind) and
/// removes the cgroups, deepest first.
pub fn remove_cgroup_tree(dir: &std::path::Path) {
    let Ok(children) = std::fs::read_dir(dir) else {
        return;
    };
    for child in children.flatten().filter(|c| c.path().is_dir()) {
        remove_cgroup_tree(&child.path());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cgroup_procs(dir).is_empty() && Instant::now() < deadline {
        for pid in cgroup_procs(dir) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_dir(dir);
}

/// Waits until process `pid` has exited (gone, or a zombie nobody reaps), at most 20 s.
pub fn wait_process_gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while crate::running(pid as u32) {
        assert!(Instant::now() < deadline, "{pid} did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The processes in the cgroup directory `dir` (any hierarchy's).
pub fn cgroup_procs(dir: &std::path::Path) -> Vec<i32> {
    berth_runtime::cgroups::parse_procs(
        &std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default(),
    )
}

/// Polls the file at `path` (a container's log, say) until `done` holds for its text, at most
/// 20 s; returns that text.
pub async fn wait_for_text(path: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if done(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{path}: never {what}: {text:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A verbose status's `info` JSON.
fn verbose_info(info: &std::collections::HashMap<String, String>) -> serde_json::Value {
    serde_json::from_str(&info["info"]).unwrap()
}

/// Polls until process `pid` holds under 60% of its peak resident set (a helper that gave
/// back what its start touched); returns (resident, peak) in KiB.
pub async fn wait_trimmed(pid: u32, what: &str) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let kib =
            |field| berth_common::procfs::kib(pid, "status", field).expect("the process is there");
        let (rss, peak) = (kib("VmRSS:"), kib("VmHWM:"));
        if rss * 10 < peak * 6 {
            return (rss, peak);
        }
        assert!(
            Instant::now() < deadline,
            "{what} kept {rss} KiB of its {peak} KiB peak"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The pid of pod `pod`'s monitor, from its verbose status.
pub async fn monitor_pid(c: &mut RuntimeClient, pod: &str) -> i32 {
    let response = c
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    verbose_info(&response.info)["monitorPid"].as_i64().unwrap() as i32
}

/// The pid of container `id`'s init, from its verbose status.
pub async fn container_pid(c: &mut RuntimeClient, id: &str) -> i32 {
    let response = c
        .container_status(ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    verbose_info(&response.info)["pid"].as_i64().unwrap() as i32
}

/// What a running pod must not accumulate as containers come and go, checked while the pod is
/// still there (removing it would clean up anyway and hide a per-container leak).
pub struct PodLeakCheck {
    pod: String,
    pod_name: String,
    monitor: i32,
    monitor_fds: usize,
}

/// The monitor's open descriptors, less its one inotify instance: it makes that with the pod's
/// first container on cgroup v2 (to watch `memory.events`) and keeps it for the pod's life.
fn fd_count(pid: i32) -> usize {
    let targets: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    let inotify = targets
        .iter()
        .filter(|t| t.as_os_str() == "anon_inode:inotify")
        .count();
    targets.len() - inotify.min(1)
}

/// The descriptors of process `pid` that are connections to systemd's D-Bus sockets, as
/// `fd N → path`: each is copied out of the process with pidfd_getfd and asked for its peer.
pub fn bus_connections(pid: i32) -> Vec<String> {
    use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
    let pidfd = berth_runtime::pidfd_open(pid).unwrap_or_else(|e| panic!("pidfd of {pid}: {e}"));
    let copy = |n: i32| {
        // SAFETY: pidfd_getfd takes a pidfd we own, a descriptor number and flags, and returns
        // a new descriptor of ours or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), n, 0) };
        // SAFETY: the kernel just returned this descriptor; nothing else owns it.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
    };
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .flatten()
        .filter_map(|entry| {
            let n: i32 = entry.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            if !target.to_string_lossy().starts_with("socket:") {
                return None;
            }
            let fd = copy(n)?;
            let peer = berth_runtime::cgroups::systemd::bus_peer(fd.as_fd())?;
            Some(format!("fd {n} → {peer}"))
        })
        .collect()
}

/// The zombie children of `parent`: exits nobody collected.
pub fn zombie_children(parent: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().collect())
                .unwrap_or_default();
            fields.first() == Some(&"Z") && fields.get(1) == Some(&parent.to_string().as_str())
        })
        .collect()
}

impl PodLeakCheck {
    /// Takes the baseline of pod `pod` (made by `pod_config(f, pod_name)`): its monitor's open
    /// descriptors now.
    pub async fn new(c: &mut RuntimeClient, pod: &str, pod_name: &str) -> PodLeakCheck {
        let monitor = monitor_pid(c, pod).await;
        PodLeakCheck {
            pod: pod.to_string(),
            pod_name: pod_name.to_string(),
            monitor,
            monitor_fds: fd_count(monitor),
        }
    }

    /// Once every container of the pod is removed: no rootfs mount, no container state (the
    /// agent's or libcontainer's), no container cgroup in any hierarchy, v1 or v2, the monitor
    /// holding what it held at the start and no zombie of it.
    pub fn assert_nothing_left(&self, f: &Fixture, when: &str) {
        let agent = &f.agent;
        let mounts = mounts_under(&agent.paths.root.join("containers"));
        assert!(mounts.is_empty(), "{when}: rootfs mounts left: {mounts:?}");
        let entries = |dir: std::path::PathBuf| -> Vec<String> {
            std::fs::read_dir(&dir)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        let state = entries(agent.paths.state.join("containers"));
        assert!(state.is_empty(), "{when}: container state left: {state:?}");
        let runc = entries(agent.paths.state.join("pods").join(&self.pod).join("runc"));
        assert!(runc.is_empty(), "{when}: libcontainer state left: {runc:?}");
        let children = container_cgroups_left(&self.pod_name);
        assert!(
            children.is_empty(),
            "{when}: container cgroups left: {children:?}"
        );
        assert_eq!(
            fd_count(self.monitor),
            self.monitor_fds,
            "{when}: the monitor's descriptors grew: {:?}",
            std::fs::read_dir(format!("/proc/{}/fd", self.monitor))
                .map(|d| d
                    .flatten()
                    .filter_map(|e| std::fs::read_link(e.path()).ok())
                    .collect::<Vec<_>>())
                .unwrap_or_default()
        );
        let zombies = zombie_children(self.monitor);
        assert!(
            zombies.is_empty(),
            "{when}: zombies of the monitor: {zombies:?}"
        );
    }
}

/// The namespace options of a pod config made by [`pod_config`], to change a mode.
pub fn pod_namespaces(config: &mut PodSandboxConfig) -> &mut NamespaceOption {
    config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
        .expect("pod_config sets namespace options")
}

/// The namespace options of a container config made by [`container_config`].
pub fn container_namespaces(config: &mut ContainerConfig) -> &mut NamespaceOption {
    config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
        .expect("container_config sets namespace options")
}
