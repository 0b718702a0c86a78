//! The soak (`make soak`, and a short run in `make test`): pod lifecycles driven over the CRI
//! socket as kubelet drives them, several in flight, while berthd is SIGKILLed at seeded random
//! moments (and, less often, a pod's monitor or a container's init). Every RPC that fails is
//! retried as kubelet would; every container's exit code and log is checked against what it
//! really did; at the end the host is searched for anything left. The seed is printed, so a
//! failing run replays.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::os::fd::{AsRawFd, OwnedFd};

use k8s_cri::v1::*;
use nix::sys::signal::Signal;

use crate::container_fixture::{pod_parent, CgroupTop, PodCgroups};
use crate::images::ImageBuilder;
use crate::network::{mounts_under, processes_mentioning, Extra, TestNetwork};
use crate::registry::TestRegistry;
use crate::{RuntimeClient, TempDir, TestAgent};

/// Lines each container writes, one every [`LINE_EVERY_MS`], before it exits with
/// [`EXIT_CODE`].
const LINES: usize = 20;
const LINE_EVERY_MS: u64 = 10;
const EXIT_CODE: i32 = 7;
/// How long one RPC is retried before the lifecycle is failed.
const RETRY_FOR: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy)]
pub struct SoakConfig {
    pub lifecycles: usize,
    pub in_flight: usize,
    pub seed: u64,
    /// Mean time between two injected faults.
    pub fault_every: Duration,
    /// Every this many faults, one is a reboot ([`TestAgent::reboot`]: every process of the
    /// agent and its pods killed, `state` emptied, `root` kept); 0 for none.
    pub reboot_every: usize,
    /// The agent's `root` on a loop-mounted ext4 of this many MiB, which the containers fill
    /// (each writes into its writable layer until the disk is full); 0 for the host's disk.
    pub small_root_mib: u64,
}

/// A lifecycle whose pod a reboot took: not a failure, and not checked.
const LOST: &str = "lost to a reboot";

tokio::task_local! {
    /// The reboot count when the lifecycle began: a retry in a later one gives up as [`LOST`].
    static EPOCH: usize;
}

/// xorshift64*: enough randomness for fault timing, and the same sequence for the same seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// In `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// What the run found.
#[derive(Debug, Default)]
pub struct SoakReport {
    pub seed: u64,
    pub lifecycles: usize,
    pub agent_kills: usize,
    pub monitor_kills: usize,
    pub container_kills: usize,
    pub reboots: usize,
    /// Lifecycles a reboot cut short (their pods torn down afterwards, as kubelet does).
    pub lost_to_reboots: usize,
    pub retried_rpcs: usize,
    /// Of those, the failures that named a full disk.
    pub disk_full_rpcs: usize,
    pub elapsed: Duration,
    /// Containers whose exit code or log did not match what happened.
    pub mismatches: Vec<String>,
    /// What was left on the host, by kind.
    pub leaks: Vec<(&'static str, Vec<String>)>,
    /// Where the agent's log was kept, when the run was not clean.
    pub agent_log: Option<PathBuf>,
}

impl SoakReport {
    pub fn clean(&self) -> bool {
        self.mismatches.is_empty() && self.leaks.iter().all(|(_, l)| l.is_empty())
    }
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "soak: seed {} · {} lifecycles in {:.1} s · kill -9 of berthd {}×, of a monitor {}×, of a container {}× · {} reboots ({} lifecycles cut short) · {} RPCs retried ({} on a full disk)",
            self.seed,
            self.lifecycles,
            self.elapsed.as_secs_f64(),
            self.agent_kills,
            self.monitor_kills,
            self.container_kills,
            self.reboots,
            self.lost_to_reboots,
            self.retried_rpcs,
            self.disk_full_rpcs
        )?;
        writeln!(f, "| left on the host | count |")?;
        writeln!(f, "|---|---|")?;
        for (what, left) in &self.leaks {
            writeln!(f, "| {what} | {} |", left.len())?;
        }
        writeln!(
            f,
            "| containers whose exit or log was wrong | {} |",
            self.mismatches.len()
        )?;
        for (what, left) in &self.leaks {
            for l in left.iter().take(5) {
                writeln!(f, "  {what}: {l}")?;
            }
        }
        for m in self.mismatches.iter().take(10) {
            writeln!(f, "  mismatch: {m}")?;
        }
        if let Some(log) = &self.agent_log {
            writeln!(f, "  the agent's log: {}", log.display())?;
        }
        Ok(())
    }
}

/// What befell a pod, as the fault injector did it.
#[derive(Debug, Default)]
struct Struck {
    monitor: HashSet<String>,
    container: HashSet<String>,
}

/// The live pods and containers the fault injector may strike, each held by a pidfd so that a
/// pid the kernel has since given to another process is never signalled.
#[derive(Debug, Default)]
struct Targets {
    /// sandbox id → its monitor; container id → its init.
    monitors: HashMap<String, OwnedFd>,
    inits: HashMap<String, OwnedFd>,
    struck: Struck,
    retried: usize,
    disk_full: usize,
    /// Reboots so far.
    epoch: usize,
    lost: usize,
}

/// SIGKILL through a pidfd: the process it was opened on, or nothing.
fn kill_by_pidfd(fd: &OwnedFd) -> bool {
    // SAFETY: pidfd_send_signal takes a descriptor we own, a signal, a null siginfo and flags.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        ) == 0
    }
}

/// Strikes one of `map`'s processes, chosen by `rng`; its key, if any was there to strike.
fn strike(rng: &mut Rng, map: &HashMap<String, OwnedFd>) -> Option<String> {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    if keys.is_empty() {
        return None;
    }
    let key = keys[rng.below(keys.len() as u64) as usize].clone();
    kill_by_pidfd(&map[&key]).then_some(key)
}

/// Registers process `pid` under `key` in `map` (of `targets`), by a pidfd.
fn register(targets: &Shared, pid: i64, key: &str, monitors: bool) {
    let Ok(fd) = berth_runtime::pidfd_open(pid as i32) else {
        return;
    };
    let mut t = lock(targets);
    let map = if monitors {
        &mut t.monitors
    } else {
        &mut t.inits
    };
    map.insert(key.to_string(), fd);
}

type Shared = Arc<Mutex<Targets>>;

fn lock(t: &Shared) -> std::sync::MutexGuard<'_, Targets> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the soak on a fresh agent, registry and network of its own.
pub async fn run(config: SoakConfig) -> SoakReport {
    let started = Instant::now();
    let _top = CgroupTop::new();
    // Runs at once in one process (the tests) name their pods, and so their cgroups, apart.
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let base = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) * 1_000_000;
    let names: Vec<String> = (base..base + config.lifecycles).map(pod_name).collect();
    let _pods = PodCgroups(names.clone());
    let registry = TestRegistry::start();
    let image = ImageBuilder::with_passwd()
        .push(&registry, "soak/busybox", "v1")
        .image_ref();
    let (mut agent, _small_root) = start_agent(&config).await;
    let net = TestNetwork::create(&agent.paths.cni_conf_dir, Extra::None);
    crate::cri::wait_network_ready(&mut agent.runtime().await).await;
    let logs = TempDir::new("berth-soak-logs");
    let socket = agent.paths.socket.clone();
    // The image's own snapshots stay: what is counted is what the lifecycles add.
    crate::container_fixture::pull_ref(&agent, &image).await;
    let snapshots_before = entries(&agent.paths.root.join("snapshots"));

    let targets: Shared = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut rng = Rng::new(config.seed);
    // The lifecycles, `in_flight` at a time.
    let work = {
        let (socket, targets, image) = (socket.clone(), targets.clone(), image.clone());
        let log_root = logs.path().to_path_buf();
        let in_flight = config.in_flight.max(1);
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let workers: Vec<_> = (0..in_flight)
            .map(|_| {
                let (socket, targets, image, log_root, next) = (
                    socket.clone(),
                    targets.clone(),
                    image.clone(),
                    log_root.clone(),
                    next.clone(),
                );
                let lifecycles = config.lifecycles;
                let fill = config.small_root_mib > 0;
                tokio::spawn(async move {
                    let mut problems = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= lifecycles {
                            return problems;
                        }
                        let i = base + i;
                        let epoch = lock(&targets).epoch;
                        let life = lifecycle(i, &socket, &image, &log_root, &targets, fill);
                        match EPOCH.scope(epoch, life).await {
                            Err(e) if e.contains(LOST) => {
                                lock(&targets).lost += 1;
                                let now = lock(&targets).epoch;
                                // A second reboot in the meantime takes that pod too.
                                match EPOCH.scope(now, tear_down(i, &socket, &targets)).await {
                                    Err(e) if !e.contains(LOST) => {
                                        problems.push(format!("lifecycle {i} after a reboot: {e}"))
                                    }
                                    _ => {}
                                }
                            }
                            Err(e) => problems.push(format!("lifecycle {i}: {e}")),
                            Ok(()) => {}
                        }
                    }
                })
            })
            .collect();
        let done = done.clone();
        async move {
            let mut problems = Vec::new();
            for w in workers {
                problems.extend(w.await.unwrap_or_else(|e| vec![format!("worker: {e}")]));
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            problems
        }
    };
    // The faults, until the lifecycles are done.
    let cgroup_trees: Vec<PathBuf> = names
        .iter()
        .flat_map(|n| crate::cgroup_dirs(&crate::pod_cgroup_path(&pod_parent(n)).to_string_lossy()))
        .collect();
    let chaos = async {
        let mut kills = (0, 0, 0, 0);
        let mut faults = 0;
        let mean = config.fault_every.as_millis().max(2) as u64;
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(mean / 2 + rng.below(mean))).await;
            if done.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            faults += 1;
            if config.reboot_every > 0 && faults % config.reboot_every == 0 {
                {
                    // Counted first, so that no lifecycle takes the new agent for its own.
                    let mut t = lock(&targets);
                    t.epoch += 1;
                    t.monitors.clear();
                    t.inits.clear();
                }
                agent.reboot(&cgroup_trees).await;
                kills.3 += 1;
                continue;
            }
            match rng.below(10) {
                0 => {
                    let mut t = lock(&targets);
                    // Noted before the signal: the pod may notice before this task runs again.
                    if let Some(pod) = strike(&mut rng, &t.monitors) {
                        t.struck.monitor.insert(pod);
                        kills.1 += 1;
                    }
                }
                1 => {
                    let mut t = lock(&targets);
                    if let Some(id) = strike(&mut rng, &t.inits) {
                        t.struck.container.insert(id);
                        kills.2 += 1;
                    }
                }
                _ => {
                    agent.restart_with(Signal::SIGKILL).await;
                    kills.0 += 1;
                }
            }
        }
        kills
    };
    let (problems, kills) = tokio::join!(work, chaos);
    let (lost, retried, disk_full) = {
        let t = lock(&targets);
        (t.lost, t.retried, t.disk_full)
    };

    let mut report = SoakReport {
        seed: config.seed,
        lifecycles: config.lifecycles,
        agent_kills: kills.0,
        monitor_kills: kills.1,
        container_kills: kills.2,
        reboots: kills.3,
        lost_to_reboots: lost,
        retried_rpcs: retried,
        disk_full_rpcs: disk_full,
        mismatches: problems,
        ..SoakReport::default()
    };
    // One more restart: what the last crash left must be repaired, and stay so.
    agent.restart_with(Signal::SIGKILL).await;
    report.leaks = leaks(&agent, &net, &names, &snapshots_before);
    report.elapsed = started.elapsed();
    if !report.clean() {
        // The agent's log goes with its temp dir: kept where the report names it.
        let kept = std::env::temp_dir().join(format!("berth-soak-{}.log", config.seed));
        if std::fs::write(&kept, agent.log()).is_ok() {
            report.agent_log = Some(kept);
        }
    }
    report
}

/// The agent the soak drives: on the host's disk, or with its `root` on a small loop-mounted
/// ext4 (unmounted, with the agent's directory, when the guard drops after the agent).
async fn start_agent(config: &SoakConfig) -> (TestAgent, Option<SmallRoot>) {
    if config.small_root_mib == 0 {
        return (TestAgent::start().await, None);
    }
    let (agent, root) = agent_on_small_root(config.small_root_mib).await;
    (agent, Some(root))
}

/// An agent whose `root` is a loop-mounted ext4 of `mib` MiB with no blocks reserved, so that
/// what fills it fills it for the agent too. Drop the agent before the guard.
pub async fn agent_on_small_root(mib: u64) -> (TestAgent, SmallRoot) {
    let dir = TempDir::new("berth-e2e");
    let paths = crate::AgentPaths::under(dir.path());
    let image = dir.path().join("root.img");
    // No blocks reserved for root: the containers' writes must fill it for the agent too.
    let made = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0"])
        .arg(&image)
        .arg(format!("{mib}M"))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run mkfs.ext4");
    assert!(made.success(), "mkfs.ext4 {}", image.display());
    std::fs::create_dir_all(&paths.root).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-o", "loop"])
        .arg(&image)
        .arg(&paths.root)
        .status()
        .expect("run mount");
    assert!(
        mounted.success(),
        "mount {} on {}",
        image.display(),
        paths.root.display()
    );
    let guard = SmallRoot {
        mountpoint: paths.root.clone(),
        dir: dir.path().to_path_buf(),
    };
    // The image is pulled before it fills; what fills it is the containers' writes.
    std::fs::write(
        &paths.config,
        paths.config_text("[registry]\nmin_free_bytes = 0\n"),
    )
    .unwrap();
    (TestAgent::start_in(dir, paths).await, guard)
}

/// A loop-mounted root: unmounted (which frees the loop device) and its agent's directory
/// removed on drop.
pub struct SmallRoot {
    mountpoint: PathBuf,
    dir: PathBuf,
}

impl Drop for SmallRoot {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Stops and removes the pods named for lifecycle `i` that a reboot left to the agent after
/// it (one made by a RunPodSandbox the reboot interrupted), as kubelet removes the pods it no
/// longer wants.
async fn tear_down(i: usize, socket: &Path, targets: &Shared) -> Result<(), String> {
    let name = pod_name(i);
    let pods = retry(socket, targets, "ListPodSandbox", |mut c| async move {
        c.list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await
            .map(|r| r.into_inner().items)
    })
    .await?;
    for pod in pods
        .into_iter()
        .filter(|p| p.metadata.as_ref().is_some_and(|m| m.name == name))
    {
        retry(socket, targets, "StopPodSandbox", |mut c| {
            let id = pod.id.clone();
            async move {
                c.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id })
                    .await
            }
        })
        .await?;
        retry(socket, targets, "RemovePodSandbox", |mut c| {
            let id = pod.id.clone();
            async move {
                c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                    .await
            }
        })
        .await?;
    }
    Ok(())
}

fn pod_name(i: usize) -> String {
    format!("soak-{i}")
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A fresh connection to the agent, waiting through its restarts.
async fn client(socket: &Path) -> RuntimeClient {
    let deadline = Instant::now() + RETRY_FOR;
    loop {
        if let Ok(channel) = crate::connect(socket).await {
            return RuntimeClient::new(channel);
        }
        assert!(Instant::now() < deadline, "the agent never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Calls `call` until it succeeds or `settled` says its failure is an answer; failures in
/// between (the agent died, came back, half-did it) are retried, as kubelet retries.
async fn retry<T, F, Fut>(
    socket: &Path,
    targets: &Shared,
    what: &str,
    mut call: F,
) -> Result<T, String>
where
    F: FnMut(RuntimeClient) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + RETRY_FOR;
    let mut last = String::new();
    let epoch = EPOCH.try_with(|e| *e).ok();
    while Instant::now() < deadline {
        if epoch.is_some_and(|e| e != lock(targets).epoch) {
            return Err(format!("{what}: {LOST}"));
        }
        match tokio::time::timeout(Duration::from_secs(30), call(client(socket).await)).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => last = format!("{}: {}", e.code(), e.message()),
            Err(_) => last = "no answer in 30 s".to_string(),
        }
        {
            let mut t = lock(targets);
            t.retried += 1;
            t.disk_full += usize::from(last.contains("No space left on device"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{what}: still failing after {RETRY_FOR:?}: {last}"))
}

/// One pod's life, as kubelet lives it.
async fn lifecycle(
    i: usize,
    socket: &Path,
    image: &str,
    log_root: &Path,
    targets: &Shared,
    fill: bool,
) -> Result<(), String> {
    let name = pod_name(i);
    let pod_cfg = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.clone(),
            uid: format!("uid-{name}"),
            namespace: "soak".into(),
            attempt: 0,
        }),
        hostname: name.clone(),
        log_directory: log_root.join(&name).display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: pod_parent(&name),
            ..crate::cri::pod_linux(crate::cri::namespaces(
                NamespaceMode::Pod,
                NamespaceMode::Container,
                NamespaceMode::Pod,
            ))
        }),
        ..Default::default()
    };
    let pod = retry(socket, targets, "RunPodSandbox", |mut c| {
        let cfg = pod_cfg.clone();
        async move {
            c.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(cfg),
                runtime_handler: String::new(),
            })
            .await
            .map(|r| r.into_inner().pod_sandbox_id)
        }
    })
    .await?;
    let result = run_container(
        socket, targets, &pod, &pod_cfg, image, log_root, &name, fill,
    )
    .await;
    retry(socket, targets, "StopPodSandbox", |mut c| {
        let pod = pod.clone();
        async move {
            c.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod,
            })
            .await
        }
    })
    .await?;
    retry(socket, targets, "RemovePodSandbox", |mut c| {
        let pod = pod.clone();
        async move {
            c.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod,
            })
            .await
        }
    })
    .await?;
    lock(targets).monitors.remove(&pod);
    result
}

/// The container of a lifecycle: pulled, created, started, exec'd, waited for, its exit and
/// log checked, stopped and removed.
#[allow(clippy::too_many_arguments)]
async fn run_container(
    socket: &Path,
    targets: &Shared,
    pod: &str,
    pod_cfg: &PodSandboxConfig,
    image: &str,
    log_root: &Path,
    name: &str,
    fill: bool,
) -> Result<(), String> {
    let mut c = client(socket).await;
    if let Ok(status) = c
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.to_string(),
            verbose: true,
        })
        .await
    {
        let info = status.into_inner().info;
        let pid = info
            .get("info")
            .and_then(|i| serde_json::from_str::<serde_json::Value>(i).ok())
            .and_then(|v| v["monitorPid"].as_i64());
        if let Some(pid) = pid {
            register(targets, pid, pod, true);
        }
    }
    retry(socket, targets, "PullImage", |_| {
        let image = image.to_string();
        let socket = socket.to_path_buf();
        async move {
            let channel = crate::connect(&socket)
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            crate::ImageClient::new(channel)
                .pull_image(PullImageRequest {
                    image: Some(ImageSpec {
                        image,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
        }
    })
    .await?;
    let pause = format!("{:.3}", LINE_EVERY_MS as f64 / 1000.0);
    // On a small root, each container fills it (and goes on when it is full), and holds it
    // full for a second: the RPCs of the other lifecycles meet the full disk meanwhile.
    let fill = if fill {
        "dd if=/dev/zero of=/fill bs=65536 2>/dev/null; dd if=/dev/zero of=/fill2 bs=512 2>/dev/null; sleep 1; "
    } else {
        ""
    };
    let script = format!(
        "{fill}i=0; while [ $i -lt {LINES} ]; do echo line-$i; i=$((i+1)); sleep {pause}; done; exit {EXIT_CODE}"
    );
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "main".into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.to_string(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into(), script],
        log_path: "main.log".into(),
        linux: Some(crate::cri::container_linux(crate::cri::namespaces(
            NamespaceMode::Pod,
            NamespaceMode::Container,
            NamespaceMode::Pod,
        ))),
        ..Default::default()
    };
    let id = create(socket, targets, pod, pod_cfg, &config).await?;
    if id.is_empty() {
        // The pod's monitor was struck before the container could be made: kubelet would
        // make the pod anew; this lifecycle goes on to tear it down.
        return Ok(());
    }
    // A start whose answer was lost finds the container no longer created: that is a start.
    retry(socket, targets, "StartContainer", |mut c| {
        let id = id.clone();
        let pod = pod.to_string();
        async move {
            match c
                .start_container(StartContainerRequest {
                    container_id: id.clone(),
                })
                .await
            {
                // A pod whose monitor was struck cannot start anything: kubelet makes it anew.
                Err(_) if lock(targets).struck.monitor.contains(&pod) => Ok(()),
                Err(e) if e.code() == tonic::Code::FailedPrecondition => {
                    let s = c
                        .container_status(ContainerStatusRequest {
                            container_id: id,
                            verbose: false,
                        })
                        .await?
                        .into_inner()
                        .status
                        .unwrap_or_default();
                    if s.state == ContainerState::ContainerCreated as i32 {
                        Err(e)
                    } else {
                        Ok(())
                    }
                }
                other => other.map(|_| ()),
            }
        }
    })
    .await?;
    if let Ok(r) = c
        .container_status(ContainerStatusRequest {
            container_id: id.clone(),
            verbose: true,
        })
        .await
    {
        let pid = r
            .into_inner()
            .info
            .get("info")
            .and_then(|i| serde_json::from_str::<serde_json::Value>(i).ok())
            .and_then(|v| v["pid"].as_i64());
        if let Some(pid) = pid {
            register(targets, pid, &id, false);
        }
    }
    // An exec while it runs (not retried: a struck pod may refuse it).
    let mut c = client(socket).await;
    let exec = c
        .exec_sync(ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["echo".into(), "exec".into()],
            timeout: 10,
        })
        .await;
    let status = wait_exited(socket, targets, pod, &id).await?;
    lock(targets).inits.remove(&id);
    let (struck_monitor, struck_container) = {
        let t = lock(targets);
        (
            t.struck.monitor.contains(pod),
            t.struck.container.contains(&id),
        )
    };
    let mut problems = Vec::new();
    let disturbed = struck_monitor || struck_container;
    if !disturbed {
        if status.exit_code != EXIT_CODE {
            problems.push(format!(
                "exit code {} (reason {:?}), not {EXIT_CODE}",
                status.exit_code, status.reason
            ));
        }
        // An exec that raced the container's exit is killed with it (137): only one that ran
        // to its end must have said its word.
        if let Ok(r) = &exec {
            let r = r.get_ref();
            if r.exit_code == 0 && r.stdout != b"exec\n" {
                problems.push(format!("exec exited 0 saying {:?}", r.stdout));
            }
        }
    } else if struck_container && !struck_monitor && ![137, EXIT_CODE].contains(&status.exit_code) {
        problems.push(format!("killed container exited {}", status.exit_code));
    }
    let log = log_root.join(name).join("main.log");
    if let Err(e) = check_log(&log, !disturbed) {
        problems.push(e);
    }
    retry(socket, targets, "RemoveContainer", |mut c| {
        let id = id.clone();
        async move {
            c.remove_container(RemoveContainerRequest { container_id: id })
                .await
        }
    })
    .await?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("container {id} of {name}: {}", problems.join("; ")))
    }
}

/// CreateContainer, retried; a retry told the name is reserved finds the container the first
/// call made. An empty id: the pod's monitor was struck, so the pod is not ready any more.
async fn create(
    socket: &Path,
    targets: &Shared,
    pod: &str,
    pod_cfg: &PodSandboxConfig,
    config: &ContainerConfig,
) -> Result<String, String> {
    retry(socket, targets, "CreateContainer", |mut c| {
        let request = CreateContainerRequest {
            pod_sandbox_id: pod.to_string(),
            config: Some(config.clone()),
            sandbox_config: Some(pod_cfg.clone()),
        };
        let pod = pod.to_string();
        async move {
            match c.create_container(request).await {
                Ok(r) => Ok(r.into_inner().container_id),
                Err(e) if e.message().contains("is reserved for") => {
                    let listed = c
                        .list_containers(ListContainersRequest {
                            filter: Some(ContainerFilter {
                                pod_sandbox_id: pod,
                                ..Default::default()
                            }),
                        })
                        .await?
                        .into_inner()
                        .containers;
                    listed
                        .into_iter()
                        .find(|l| l.metadata.as_ref().is_some_and(|m| m.name == "main"))
                        .map(|l| l.id)
                        .ok_or(e)
                }
                Err(e)
                    if e.code() == tonic::Code::FailedPrecondition
                        && lock(targets).struck.monitor.contains(&pod) =>
                {
                    Ok(String::new())
                }
                Err(e) => Err(e),
            }
        }
    })
    .await
}

/// Polls ContainerStatus until the container has exited. One in a pod whose monitor was
/// struck is stopped, as kubelet stops the containers of a pod gone NotReady.
async fn wait_exited(
    socket: &Path,
    targets: &Shared,
    pod: &str,
    id: &str,
) -> Result<ContainerStatus, String> {
    let deadline = Instant::now() + RETRY_FOR;
    loop {
        let status = retry(socket, targets, "ContainerStatus", |mut c| {
            let id = id.to_string();
            async move {
                c.container_status(ContainerStatusRequest {
                    container_id: id,
                    verbose: false,
                })
                .await
                .map(|r| r.into_inner().status.unwrap_or_default())
            }
        })
        .await?;
        if status.state == ContainerState::ContainerExited as i32 {
            return Ok(status);
        }
        if Instant::now() > deadline {
            return Err(format!("container {id} never exited: {status:?}"));
        }
        if lock(targets).struck.monitor.contains(pod) {
            retry(socket, targets, "StopContainer", |mut c| {
                let id = id.to_string();
                async move {
                    c.stop_container(StopContainerRequest {
                        container_id: id,
                        timeout: 0,
                    })
                    .await
                }
            })
            .await?;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The container's CRI log holds `line-0` … in order, each once; all [`LINES`] of them if
/// `whole`, else a prefix (its writer or reader was killed).
fn check_log(path: &PathBuf, whole: bool) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("log {}: {e}", path.display()))?;
    let lines: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(4, ' ');
            let (_ts, stream, tag, content) =
                (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
            (stream == "stdout" && tag == "F").then_some(content)
        })
        .collect();
    for (n, line) in lines.iter().enumerate() {
        if *line != format!("line-{n}") {
            return Err(format!("log line {n} is {line:?}: lost or repeated lines"));
        }
    }
    if whole && lines.len() != LINES {
        return Err(format!("log has {} of {LINES} lines", lines.len()));
    }
    Ok(())
}

/// What is left on the host once every lifecycle is over and the agent restarted.
fn leaks(
    agent: &TestAgent,
    net: &TestNetwork,
    names: &[String],
    snapshots_before: &[String],
) -> Vec<(&'static str, Vec<String>)> {
    let state = &agent.paths.state;
    let cgroups: Vec<String> = names
        .iter()
        .flat_map(|n| crate::cgroup_dirs(&crate::pod_cgroup_path(&pod_parent(n)).to_string_lossy()))
        .filter(|d| d.exists())
        .map(|d| d.display().to_string())
        .collect();
    let snapshots: Vec<String> = entries(&agent.paths.root.join("snapshots"))
        .into_iter()
        .filter(|s| !snapshots_before.contains(s))
        .collect();
    let netns: Vec<String> = mounts_under(&state.join("pods"))
        .into_iter()
        .filter(|m| m.contains("/ns/net"))
        .collect();
    vec![
        ("network namespaces", netns),
        (
            "mounts",
            // A small root is the soak's own mount.
            mounts_under(agent.dir())
                .into_iter()
                .filter(|m| Path::new(m) != agent.paths.root)
                .collect(),
        ),
        ("veths", net.veths()),
        ("host-local IPs", net.leases()),
        ("cgroups", cgroups),
        (
            "processes",
            processes_mentioning(&state.join("pods").to_string_lossy())
                .iter()
                .map(|p| p.to_string())
                .collect(),
        ),
        ("pod dirs", entries(&state.join("pods"))),
        // The start just before this emptied the trash.
        ("trash", entries(&state.join("trash"))),
        ("container dirs", entries(&state.join("containers"))),
        (
            "writable layers",
            entries(&agent.paths.root.join("containers")),
        ),
        ("new snapshot dirs", snapshots),
        (
            "CNI results",
            entries(&state.join("cni/results"))
                .into_iter()
                .chain(entries(&agent.paths.root.join("cni/results")))
                .collect(),
        ),
    ]
}
