//! berth-e2e: end-to-end tests against a real `berthd`.
//!
//! [`TestAgent`] starts the berthd binary as a separate process with a unique temporary root,
//! state dir, socket and metrics port, waits until it answers `Version`, hands out CRI clients,
//! and on drop stops it and removes everything it made. Tests must run as root.

pub mod container_fixture;
pub mod cri;
pub mod fault;
pub mod images;
pub mod installer;
pub mod monitor_fixture;
pub mod network;
pub mod registry;
pub mod sandbox_fixture;
pub mod soak;
pub mod spdy;
pub mod streaming_fixture;
pub mod unpack_fixture;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::VersionRequest;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tonic::transport::{Channel, Endpoint, Uri};

pub type RuntimeClient = RuntimeServiceClient<Channel>;
pub type ImageClient = ImageServiceClient<Channel>;

/// The directories of the cgroup `path` (a cgroupfs path such as `/berth-e2e-1/pod`) in every
/// cgroup hierarchy of this host: one per v1 controller mount and the v2 one, or only the v2 one
/// on a pure cgroup v2 host.
pub fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    let relative = path.trim_start_matches('/');
    berth_runtime::cgroups::hierarchies()
        .into_iter()
        .map(|h| h.mountpoint.join(relative))
        .collect()
}

/// The directory of the cgroup `path` in the hierarchy that holds `controller`: its v1 mount
/// where there is one (this host's hybrid layout), else the v2 hierarchy.
pub fn cgroup_dir(controller: &str, path: &str) -> PathBuf {
    let hierarchies = berth_runtime::cgroups::hierarchies();
    let h = hierarchies
        .iter()
        .find(|h| h.controllers.iter().any(|c| c == controller))
        .or_else(|| hierarchies.iter().find(|h| h.v2))
        .unwrap_or_else(|| panic!("no cgroup hierarchy holds {controller}"));
    h.mountpoint.join(path.trim_start_matches('/'))
}

/// The cgroup driver the suites run berthd with: `$BERTH_E2E_CGROUP_DRIVER` (`systemd` or
/// `cgroupfs`; the node lane runs its suites with each), cgroupfs when unset.
pub fn cgroup_driver() -> berth_runtime::CgroupDriver {
    match std::env::var("BERTH_E2E_CGROUP_DRIVER").as_deref() {
        Ok("systemd") => berth_runtime::CgroupDriver::Systemd,
        Ok("cgroupfs") | Err(_) => berth_runtime::CgroupDriver::Cgroupfs,
        Ok(other) => panic!("BERTH_E2E_CGROUP_DRIVER={other:?}: expected systemd or cgroupfs"),
    }
}

/// The cgroup parent of pod `name` under a test's own top (`berth-e2e-<pid>`), named as kubelet
/// names it for the driver under test: `/<top>/<name>`, or the slice `<top>-<name>.slice` (with
/// `_` for the `-` in either, a dash opening a level of slices).
pub fn pod_cgroup_parent(top: &str, name: &str) -> String {
    match cgroup_driver() {
        berth_runtime::CgroupDriver::Cgroupfs => format!("/{top}/{name}"),
        berth_runtime::CgroupDriver::Systemd => {
            format!("{}-{}.slice", top.replace('-', "_"), name.replace('-', "_"))
        }
    }
}

/// The systemd driver's slice for a test's top `top`, the parent of every slice
/// [`pod_cgroup_parent`] names under it: stopping it takes them all.
pub fn top_slice(top: &str) -> String {
    format!("{}.slice", top.replace('-', "_"))
}

/// The cgroupfs path of the cgroup a pod with cgroup parent `parent` gets.
pub fn pod_cgroup_path(parent: &str) -> PathBuf {
    berth_runtime::cgroups::parent_path(cgroup_driver(), parent).unwrap()
}

/// The cgroupfs path of container `id`'s cgroup in a pod with cgroup parent `parent`.
pub fn container_cgroup_path(parent: &str, id: &str) -> PathBuf {
    let oci = berth_runtime::spec::resources::cgroups_path(cgroup_driver(), parent, id).unwrap();
    berth_runtime::cgroups::systemd::fs_path(&oci).unwrap()
}

/// The directory of the pod monitor's cgroup in a pod with cgroup parent `parent`.
pub fn monitor_cgroup_path(parent: &str, sandbox_id: &str) -> PathBuf {
    let leaf = match cgroup_driver() {
        berth_runtime::CgroupDriver::Cgroupfs => format!("berth-monitor-{sandbox_id}"),
        berth_runtime::CgroupDriver::Systemd => format!("berth-monitor-{sandbox_id}.scope"),
    };
    pod_cgroup_path(parent).join(leaf)
}

/// Stops a systemd unit (a test's slice and everything in it), waiting for the job.
pub fn systemctl_stop(unit: &str) {
    let _ = Command::new("systemctl")
        .args(["stop", unit])
        .stderr(Stdio::null())
        .status();
}

/// Whether this host's memory controller is on cgroup v2 (the node lane's VM), so a test knows
/// which files it reads.
pub fn memory_on_v2() -> bool {
    !berth_runtime::cgroups::hierarchies()
        .iter()
        .any(|h| h.controllers.iter().any(|c| c == "memory"))
}

/// Where [`skip`] records skipped tests: `$BERTH_E2E_SKIPS` (`make test` sets it and prints
/// the list at the end).
pub const SKIPS_ENV: &str = "BERTH_E2E_SKIPS";

/// A test that cannot run here and need not: recorded (test name and why) for `make test`'s
/// summary, since libtest hides the output of passing tests. Under CI (`$CI` set) nothing may
/// be skipped: this fails the test instead.
pub fn skip(test: &str, why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{test} cannot run here ({why}), and nothing may be skipped in CI");
    }
    eprintln!("SKIPPED {test}: {why}");
    if let Some(path) = std::env::var_os(SKIPS_ENV) {
        if let Ok(mut log) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(log, "{test}: {why}");
        }
    }
}

/// How long a fresh agent may take to answer its first `Version`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping agent may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The berthd binary under test: `$BERTHD`, else the workspace's debug build.
pub fn berthd_path() -> PathBuf {
    if let Some(p) = std::env::var_os("BERTHD") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("debug/berthd");
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build --bin berthd`, as `make test` does) or set BERTHD",
        path.display()
    );
    path
}

/// A directory unique to this test (pid + counter + time), removed with its contents on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}-{nanos:08x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create test dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A free TCP port on loopback (bound then released; berthd binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free loopback port")
}

/// The paths and addresses one agent uses, all under its own temporary directory.
#[derive(Debug, Clone)]
pub struct AgentPaths {
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub metrics: String,
    /// The agent's CNI conf dir: empty (network not ready) until a test writes a conflist.
    pub cni_conf_dir: PathBuf,
}

impl AgentPaths {
    pub fn under(dir: &Path) -> AgentPaths {
        AgentPaths {
            root: dir.join("root"),
            state: dir.join("state"),
            socket: dir.join("run/berth.sock"),
            config: dir.join("config.toml"),
            log: dir.join("berthd.log"),
            metrics: format!("127.0.0.1:{}", free_port()),
            cni_conf_dir: dir.join("net.d"),
        }
    }

    /// The config file text for these paths, followed by `extra` (more sections or keys).
    pub fn config_text(&self, extra: &str) -> String {
        // The driver under test goes into [runtime], which `extra` may already open (or name a
        // driver of its own).
        let driver = cgroup_driver().as_str();
        let extra = if extra.contains("cgroup_driver") {
            extra.to_string()
        } else if extra.contains("[runtime]\n") {
            extra.replacen(
                "[runtime]\n",
                &format!("[runtime]\ncgroup_driver = {driver:?}\n"),
                1,
            )
        } else {
            format!("{extra}\n[runtime]\ncgroup_driver = {driver:?}\n")
        };
        // Tests read the agent's debug log when they fail; `extra` may set its own level.
        let log = if extra.contains("[log]\n") {
            ""
        } else {
            "[log]\nlevel = \"debug\"\n"
        };
        format!(
            "root = {:?}\nstate = {:?}\n{extra}\n[grpc]\naddress = {:?}\nshutdown_timeout_secs = 5\n\
             [metrics]\naddress = {:?}\n{log}[cni]\nconf_dir = {:?}\n",
            self.root, self.state, self.socket, self.metrics, self.cni_conf_dir
        )
    }
}

/// A running berthd with its own root, state, socket and metrics port.
pub struct TestAgent {
    pub paths: AgentPaths,
    child: Option<Child>,
    dir: TempDir,
}

impl TestAgent {
    /// Starts an agent with a fresh temporary directory and waits until it is ready.
    pub async fn start() -> TestAgent {
        Self::start_with("").await
    }

    /// Like [`TestAgent::start`], with `extra` top-level config text (before any section).
    pub async fn start_with(extra: &str) -> TestAgent {
        let dir = TempDir::new("berth-e2e");
        let paths = AgentPaths::under(dir.path());
        std::fs::write(&paths.config, paths.config_text(extra)).expect("write config");
        Self::start_in(dir, paths).await
    }

    /// Starts an agent on prepared paths (the config file must exist) and waits for readiness.
    pub async fn start_in(dir: TempDir, paths: AgentPaths) -> TestAgent {
        std::fs::create_dir_all(&paths.cni_conf_dir).expect("create CNI conf dir");
        let child = spawn_berthd(&paths.config, &paths.log).expect("spawn berthd");
        let mut agent = TestAgent {
            paths,
            child: Some(child),
            dir,
        };
        agent.wait_ready().await;
        agent
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("berthd exited during start ({status}):\n{}", self.log());
                }
            }
            if let Ok(channel) = connect(&self.paths.socket).await {
                // The socket is bound before the stores are open: a start that hangs there
                // must end in the panic below, not in a Version call that never returns.
                let mut client = RuntimeServiceClient::new(channel);
                let version = client.version(VersionRequest::default());
                let left = deadline.saturating_duration_since(Instant::now());
                if let Ok(Ok(_)) = tokio::time::timeout(left, version).await {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!("berthd not ready after {READY_TIMEOUT:?}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// berthd's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.paths.log).unwrap_or_default()
    }

    pub async fn runtime(&self) -> RuntimeClient {
        RuntimeServiceClient::new(connect(&self.paths.socket).await.expect("connect"))
    }

    pub async fn image(&self) -> ImageClient {
        ImageServiceClient::new(connect(&self.paths.socket).await.expect("connect"))
    }

    /// GET /metrics, returning the body.
    pub fn scrape(&self) -> String {
        http_get(&self.paths.metrics, "/metrics").expect("scrape metrics")
    }

    /// Sends `signal` and waits for the process to exit.
    pub fn stop_with(&mut self, signal: Signal) -> ExitStatus {
        let mut child = self.child.take().expect("agent already stopped");
        stop_child(&mut child, signal)
    }

    /// SIGTERM, then wait: the normal shutdown.
    pub fn stop(&mut self) -> ExitStatus {
        self.stop_with(Signal::SIGTERM)
    }

    /// Stops the agent with `signal` and starts it again on the same root, state and config.
    pub async fn restart_with(&mut self, signal: Signal) {
        if self.child.is_some() {
            self.stop_with(signal);
        }
        self.child =
            Some(spawn_berthd(&self.paths.config, &self.paths.log).expect("respawn berthd"));
        self.wait_ready().await;
    }

    /// What a reboot does to the agent and its pods, short of rebooting: the agent and every
    /// process of its pods die (monitors found by their command line, containers by their root
    /// under this agent's directory), the cgroup trees `cgroups` (cgroupfs directories) go, and
    /// `state`, a tmpfs on a real node, loses every mount and file. `root` stays. Then the
    /// agent starts again on the same config.
    pub async fn reboot(&mut self, cgroups: &[PathBuf]) {
        if self.child.is_some() {
            self.stop_with(Signal::SIGKILL);
        }
        let dir = self.dir().to_string_lossy().into_owned();
        let ours = |pid: u32| {
            let root = std::fs::read_link(format!("/proc/{pid}/root")).unwrap_or_default();
            root.starts_with(&dir) && root != Path::new("/")
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left: Vec<u32> = network::processes_mentioning(&dir)
                .into_iter()
                .chain(all_pids().into_iter().filter(|&p| ours(p)))
                .filter(|&p| p != std::process::id())
                .collect();
            if left.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "reboot: still running: {left:?}");
            for pid in left {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for tree in cgroups {
            container_fixture::remove_cgroup_tree(tree);
        }
        let mut mounts = network::mounts_under(&self.paths.state);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        std::fs::remove_dir_all(&self.paths.state).expect("reboot: empty the state dir");
        self.child =
            Some(spawn_berthd(&self.paths.config, &self.paths.log).expect("respawn berthd"));
        self.wait_ready().await;
    }

    /// Restarts the agent (SIGKILL) so that it kills itself at the crash point `point`
    /// (`berth_common::crash`) when it gets there.
    pub async fn restart_crashing_at(&mut self, point: &str) {
        self.restart_with_env(berth_common::crash::ENV, point.to_string())
            .await;
    }

    /// Restarts the agent (SIGKILL) so that it holds at the crash point `point` until the file
    /// `gate` exists; it makes `<gate>.reached` when it gets there
    /// (`berth_common::crash::HOLD_ENV`).
    pub async fn restart_holding_at(&mut self, point: &str, gate: &Path) {
        let value = format!("{point}:{}", gate.display());
        self.restart_with_env(berth_common::crash::HOLD_ENV, value)
            .await;
    }

    /// Restarts the agent (SIGKILL) with `key=value` in its environment.
    async fn restart_with_env(&mut self, key: &str, value: String) {
        self.restart_changed(|command| {
            command.env(key, value);
        })
        .await;
    }

    /// Restarts the agent (SIGKILL) with `dir` as its working directory, as an operator who
    /// started it from a shell there would.
    pub async fn restart_in(&mut self, dir: &Path) {
        self.restart_changed(|command| {
            command.current_dir(dir);
        })
        .await;
    }

    /// Restarts the agent (SIGKILL) with its command changed by `change`.
    async fn restart_changed(&mut self, change: impl FnOnce(&mut Command)) {
        if self.child.is_some() {
            self.stop_with(Signal::SIGKILL);
        }
        let mut command = berthd_command(&self.paths.config, &self.paths.log).expect("log");
        change(&mut command);
        self.child = Some(command.spawn().expect("respawn berthd"));
        self.wait_ready().await;
    }

    /// Waits (at most 30 s) for an agent that is to crash by itself to be gone.
    pub fn wait_crashed(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("agent already stopped");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "the agent did not crash");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A metric's value from a scrape: the first sample line starting with `prefix`
    /// (name and labels), or 0 when there is none yet.
    pub fn metric(&self, prefix: &str) -> f64 {
        self.scrape()
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Signal::SIGTERM);
        }
        if std::thread::panicking() {
            eprintln!(
                "--- berthd log ({}) ---\n{}",
                self.paths.log.display(),
                self.log()
            );
        }
        // A test that failed halfway leaves pods behind (monitors outlive the agent by design):
        // end them and their containers, unmount what is ours, so nothing leaks.
        cleanup_leftovers(self.dir.path(), &self.paths.state);
    }
}

/// Kills containers (through their cgroups) and every process naming `dir` (monitors, pod
/// inits, executors), then unmounts everything under `dir`, deepest first.
pub fn cleanup_leftovers(dir: &Path, state: &Path) {
    if let Ok(entries) = std::fs::read_dir(state.join("containers")) {
        for entry in entries.flatten() {
            let record = std::fs::read(entry.path().join("container.json")).unwrap_or_default();
            let cgroup = serde_json::from_slice::<serde_json::Value>(&record)
                .ok()
                .and_then(|v| v["cgroup"].as_str().map(str::to_string));
            if let Some(cgroup) = cgroup {
                kill_cgroup(&cgroup);
            }
        }
    }
    let needle = dir.to_string_lossy().into_owned();
    let leftovers = network::processes_mentioning(&needle);
    for pid in &leftovers {
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
    }
    if !leftovers.is_empty() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut mounts = network::mounts_under(dir);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// SIGKILLs every process in the cgroup (all hierarchies) and removes it.
pub fn kill_cgroup(cgroup: &str) {
    let dirs: Vec<PathBuf> = cgroup_dirs(cgroup)
        .into_iter()
        .filter(|d| d.is_dir())
        .collect();
    for d in &dirs {
        let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
        for pid in berth_runtime::cgroups::parse_procs(&procs) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    std::thread::sleep(Duration::from_millis(50));
    for d in &dirs {
        let _ = std::fs::remove_dir(d);
    }
}

/// Whether process `pid` is there and not a zombie (an exited child init has yet to reap).
pub use berth_common::procfs::running;

/// Starts berthd with `config`, its stdout and stderr going to `log`.
pub fn spawn_berthd(config: &Path, log: &Path) -> std::io::Result<Child> {
    berthd_command(config, log)?.spawn()
}

/// The command [`spawn_berthd`] runs.
fn berthd_command(config: &Path, log: &Path) -> std::io::Result<Command> {
    // Appends, so a restarted agent's log follows the first one's.
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut command = Command::new(berthd_path());
    command
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .env_remove(berth_common::crash::ENV)
        .env_remove(berth_common::crash::HOLD_ENV)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    Ok(command)
}

/// Signals the child by its own pid, waits up to STOP_TIMEOUT, then SIGKILLs it.
fn stop_child(child: &mut Child, signal: Signal) -> ExitStatus {
    let _ = kill(Pid::from_raw(child.id() as i32), signal);
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().expect("wait for killed berthd");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A gRPC channel over the unix socket at `path` (the URI is ignored; h2 sees `localhost`).
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
}

/// A plain HTTP/1.1 GET on loopback; returns the body of a 200 answer.
pub fn http_get(address: &str, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("GET {path}: {head}")));
    }
    // axum may answer chunked; undo the chunking.
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(dechunk(body));
    }
    Ok(body.to_string())
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Runs berthd with `args` to completion and returns (exit status, stderr).
pub fn run_berthd(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(berthd_path())
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run berthd");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every pid in /proc.
fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
