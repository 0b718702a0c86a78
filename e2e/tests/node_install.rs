//! The node lane only (feature `node-lane`, systemd as init): the installer image run as the
//! Helm chart's DaemonSet runs it, a privileged pod with host PID and host network and the
//! node's `/` at `/host`, here under a test agent that plays the node's current runtime.
//!
//! The first run installs berthd under systemd; a pod is started on it; a second run with a
//! changed config upgrades it in place (a new berthd, the same container init, its log going
//! on); a third with nothing changed leaves berthd alone; after the node is drained, `uninstall`
//! removes everything install added and nothing else.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_e2e::container_fixture::{container_pid, pull_ref, status};
use berth_e2e::cri::{container_linux, create_started, namespaces, pod_linux, remove_pod, run_pod};
use berth_e2e::images::ImageBuilder;
use berth_e2e::registry::TestRegistry;
use berth_e2e::{berthd_path, cleanup_leftovers, connect, RuntimeClient, TempDir, TestAgent};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;

const SOCKET: &str = "/run/berth/berth.sock";
const REGISTRY_HOST: &str = "mirror.berth-e2e.invalid";
/// What install puts on the node (the registry host file is the one the test gives it).
const INSTALLED: [&str; 5] = [
    "/usr/local/bin/berthd",
    "/etc/systemd/system/berthd.service",
    "/etc/berth/config.toml",
    "/etc/berth/certs.d/mirror.berth-e2e.invalid/hosts.toml",
    "/var/lib/berth-installer/installed",
];
/// Installs under TCG take a while: a pull of the image, a berthd start, its health check.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);

/// Whatever a failed run left of the installed berthd: its unit stopped and its files gone,
/// its pods ended. A passing run has already removed all of it through `uninstall`.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("systemctl")
            .args(["disable", "--now", "berthd.service"])
            .stderr(std::process::Stdio::null())
            .status();
        cleanup_leftovers(Path::new("/run/berth"), Path::new("/run/berth"));
        for path in INSTALLED {
            let _ = std::fs::remove_file(path);
        }
        let _ = Command::new("systemctl").arg("daemon-reload").status();
        let _ = std::fs::remove_dir_all("/var/lib/berth");
        let _ = std::fs::remove_dir_all("/etc/berth");
    }
}

fn systemctl_show(property: &str) -> String {
    let out = Command::new("systemctl")
        .args(["show", "-p", property, "--value", "berthd.service"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn main_pid() -> i32 {
    systemctl_show("MainPID").parse().unwrap()
}

/// A release directory as `make dist` lays it out, from the berthd under test with `trailer`
/// appended (an ELF file runs the same with bytes after its end: a new binary, as an upgrade
/// brings, that behaves as the one under test).
fn release(dir: &Path, trailer: &[u8]) -> PathBuf {
    let release = dir.join(format!("release-{}", trailer.len()));
    std::fs::create_dir_all(&release).unwrap();
    let mut berthd = std::fs::read(berthd_path()).unwrap();
    berthd.extend_from_slice(trailer);
    std::fs::write(release.join("berthd"), berthd).unwrap();
    std::fs::set_permissions(
        release.join("berthd"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(
        release.join("install.sh"),
        include_str!("../../deploy/installer/install.sh"),
    )
    .unwrap();
    std::fs::write(
        release.join("berthd.service"),
        include_str!("../../deploy/berthd.service"),
    )
    .unwrap();
    std::fs::write(
        release.join("config.toml"),
        include_str!("../../deploy/config.toml"),
    )
    .unwrap();
    release
}

/// The node's config, as the chart renders it into its ConfigMap: the lane's cgroup driver.
fn node_config(level: &str) -> String {
    format!(
        "[log]\nlevel = {level:?}\n[runtime]\ncgroup_driver = {:?}\n",
        berth_e2e::cgroup_driver().as_str()
    )
}

/// The installer pod under the test agent: privileged, host PID, IPC and network, the node's
/// `/` at `/host`, the config and registry host files where the chart mounts them.
async fn start_installer(
    c: &mut RuntimeClient,
    image: &str,
    command: &str,
    inputs: &Path,
    logs: &Path,
    attempt: u32,
) -> (String, String) {
    let node = namespaces(
        NamespaceMode::Node,
        NamespaceMode::Node,
        NamespaceMode::Node,
    );
    let mut pod_linux = pod_linux(node.clone());
    if let Some(security) = pod_linux.security_context.as_mut() {
        security.privileged = true;
    }
    let pod_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "berth-installer".into(),
            uid: format!("uid-installer-{attempt}"),
            namespace: "kube-system".into(),
            attempt,
        }),
        log_directory: logs.display().to_string(),
        linux: Some(pod_linux),
        ..Default::default()
    };
    let pod = run_pod(c, pod_config.clone()).await;
    let mut linux = container_linux(node);
    if let Some(security) = linux.security_context.as_mut() {
        security.privileged = true;
    }
    let mount = |host: &Path, container: &str, readonly: bool, propagation| Mount {
        host_path: host.display().to_string(),
        container_path: container.to_string(),
        readonly,
        propagation: propagation as i32,
        ..Default::default()
    };
    let id = create_started(
        c,
        &pod,
        &pod_config,
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: "install".into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            args: vec![command.to_string()],
            mounts: vec![
                mount(
                    Path::new("/"),
                    "/host",
                    false,
                    MountPropagation::PropagationHostToContainer,
                ),
                mount(
                    &inputs.join("config.toml"),
                    "/etc/berth-install/config.toml",
                    true,
                    MountPropagation::PropagationPrivate,
                ),
                mount(
                    &inputs.join("certs.d"),
                    "/etc/berth-install/certs.d",
                    true,
                    MountPropagation::PropagationPrivate,
                ),
            ],
            log_path: format!("install-{attempt}.log"),
            linux: Some(linux),
            ..Default::default()
        },
    )
    .await;
    (pod, id)
}

/// Polls the installer's log until it holds `done`; fails with the log if the installer
/// exited or took too long.
async fn wait_installer(c: &mut RuntimeClient, id: &str, log: &Path, done: &str) -> String {
    let deadline = Instant::now() + INSTALL_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(done) {
            return text;
        }
        let state = status(c, id).await.state;
        assert_ne!(
            state,
            ContainerState::ContainerExited as i32,
            "the installer exited:\n{text}"
        );
        assert!(Instant::now() < deadline, "no {done:?} in:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The DaemonSet on this node: its image, its mounted inputs, and its current pod.
struct DaemonSet {
    image: String,
    inputs: PathBuf,
    logs: PathBuf,
    pod: Option<String>,
    attempt: u32,
}

impl DaemonSet {
    /// One pod's life: the previous pod replaced by a new one running `command`, until its log
    /// says `done`; an install must then pass the chart's readiness probe. Returns the log.
    async fn run(&mut self, c: &mut RuntimeClient, command: &str, done: &str) -> String {
        if let Some(pod) = self.pod.take() {
            remove_pod(c, &pod).await;
        }
        self.attempt += 1;
        let attempt = self.attempt;
        let (pod, id) =
            start_installer(c, &self.image, command, &self.inputs, &self.logs, attempt).await;
        self.pod = Some(pod);
        let log_path = self.logs.join(format!("install-{attempt}.log"));
        let log = wait_installer(c, &id, &log_path, done).await;
        if command == "install" {
            let probe = c
                .exec_sync(ExecSyncRequest {
                    container_id: id.clone(),
                    cmd: vec!["/opt/berth/install.sh".into(), "health".into()],
                    timeout: 60,
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                probe.exit_code,
                0,
                "readiness: {}",
                String::from_utf8_lossy(&probe.stderr)
            );
        }
        log
    }
}

fn logged_lines(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit_once("line ").and_then(|(_, n)| n.parse().ok()))
        .collect()
}

async fn wait_log_beyond(path: &Path, count: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = logged_lines(path).len();
        if n > count {
            return n;
        }
        assert!(Instant::now() < deadline, "the log stopped at {n} lines");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A pod with a ticking container on the installed berthd, whose image comes through the
/// registry host file the installer put in place.
async fn start_ticker(
    c: &mut RuntimeClient,
    image: &str,
    logs: &Path,
    top: &str,
) -> (String, String) {
    let mut images = ImageServiceClient::new(connect(Path::new(SOCKET)).await.unwrap());
    berth_e2e::cri::pull(&mut images, image).await;
    let options = namespaces(
        NamespaceMode::Node,
        NamespaceMode::Container,
        NamespaceMode::Pod,
    );
    let pod_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "ticker".into(),
            uid: "uid-ticker".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: logs.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: berth_e2e::pod_cgroup_parent(top, "ticker"),
            ..pod_linux(options.clone())
        }),
        ..Default::default()
    };
    let pod = run_pod(c, pod_config.clone()).await;
    let id = create_started(
        c,
        &pod,
        &pod_config,
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: "ticker".into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            command: [
                "sh",
                "-c",
                "i=0; while :; do echo line $i; i=$((i+1)); sleep 0.1; done",
            ]
            .map(String::from)
            .to_vec(),
            log_path: "ticker.log".into(),
            linux: Some(container_linux(options)),
            ..Default::default()
        },
    )
    .await;
    (pod, id)
}

#[tokio::test]
async fn the_installer_installs_upgrades_with_a_pod_running_and_uninstalls_berth_under_systemd() {
    assert!(
        berth_runtime::cgroups::systemd::booted(),
        "this suite is the node lane's: it needs systemd as init"
    );
    for path in INSTALLED {
        assert!(
            !Path::new(path).exists(),
            "{path} is there before the install"
        );
    }
    let installed = Installed;
    let dir = TempDir::new("berth-e2e-install");
    let registry = TestRegistry::start();
    let push = |trailer: &[u8], tag: &str| {
        berth_e2e::installer::image(&release(dir.path(), trailer), tag)
            .unwrap()
            .build()
            .push(&registry, "berth/installer", tag)
            .image_ref()
    };
    let installer = push(b"", "v1");
    let upgrade = push(b"\nberth-e2e: the next release\n", "v2");
    // The ticker's image under a registry name that only the installed host file resolves.
    ImageBuilder::busybox().push(&registry, "test/ticker", "v1");
    let ticker_image = format!("{REGISTRY_HOST}/test/ticker:v1");

    let inputs = dir.path().join("inputs");
    std::fs::create_dir_all(inputs.join("certs.d").join(REGISTRY_HOST)).unwrap();
    std::fs::write(inputs.join("config.toml"), node_config("info")).unwrap();
    std::fs::write(
        inputs.join("certs.d").join(REGISTRY_HOST).join("hosts.toml"),
        format!(
            "server = \"http://{0}\"\n[host.\"http://{0}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            registry.address()
        ),
    )
    .unwrap();

    // The node's current runtime, which runs the DaemonSet's pods.
    let agent = TestAgent::start().await;
    let mut old = agent.runtime().await;
    for image in [&installer, &upgrade] {
        pull_ref(&agent, image).await;
    }
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut daemonset = DaemonSet {
        image: installer,
        inputs: inputs.clone(),
        logs,
        pod: None,
        attempt: 0,
    };

    // 1. Install: berthd runs under systemd, enabled, answering on its socket.
    let log = daemonset.run(&mut old, "install", "berthd: ok").await;
    for path in INSTALLED {
        assert!(Path::new(path).exists(), "{path} was not installed:\n{log}");
    }
    assert_eq!(
        std::fs::read(INSTALLED[0]).unwrap(),
        std::fs::read(berthd_path()).unwrap()
    );
    assert_eq!(systemctl_show("ActiveState"), "active");
    assert_eq!(systemctl_show("UnitFileState"), "enabled");
    let first = main_pid();
    let mut c = RuntimeServiceClient::new(connect(Path::new(SOCKET)).await.unwrap());
    let top = format!("berth-e2e-{}-install", std::process::id());
    let pod_logs = TempDir::new("berth-e2e-install-logs");
    let (pod, ticker) = start_ticker(&mut c, &ticker_image, pod_logs.path(), &top).await;
    let init = container_pid(&mut c, &ticker).await;
    let ticker_log = pod_logs.path().join("ticker.log");
    let seen = wait_log_beyond(&ticker_log, 3).await;

    // 2. Upgrade (a new image, whose berthd differs, and a new config): berthd restarted, the
    // container untouched, its log going on.
    std::fs::write(inputs.join("config.toml"), node_config("debug")).unwrap();
    daemonset.image = upgrade;
    let log = daemonset.run(&mut old, "install", "berthd: ok").await;
    assert!(log.contains("restarting berthd"), "{log}");
    let second = main_pid();
    assert_ne!(second, first, "berthd was not restarted:\n{log}");
    assert!(std::fs::read_to_string(INSTALLED[2])
        .unwrap()
        .contains("debug"));
    let mut c = RuntimeServiceClient::new(connect(Path::new(SOCKET)).await.unwrap());
    assert_eq!(
        status(&mut c, &ticker).await.state,
        ContainerState::ContainerRunning as i32
    );
    assert_eq!(container_pid(&mut c, &ticker).await, init);
    let seen = wait_log_beyond(&ticker_log, seen + 3).await;
    let lines = logged_lines(&ticker_log);
    assert_eq!(lines, (0..lines.len() as u64).collect::<Vec<_>>());

    // 3. The same again: nothing to do, berthd left alone.
    let log = daemonset.run(&mut old, "install", "berthd: ok").await;
    assert!(log.contains("nothing changed"), "{log}");
    assert_eq!(main_pid(), second);
    wait_log_beyond(&ticker_log, seen).await;

    // 4. Drain, then uninstall: what install added is gone, berth's data stays.
    c.stop_container(StopContainerRequest {
        container_id: ticker.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    remove_pod(&mut c, &pod).await;
    drop(c);
    let log = daemonset.run(&mut old, "uninstall", "uninstalled").await;
    for path in INSTALLED {
        assert!(!Path::new(path).exists(), "{path} is left:\n{log}");
    }
    assert!(
        !Path::new("/etc/berth").exists(),
        "/etc/berth is left:\n{log}"
    );
    assert_eq!(systemctl_show("ActiveState"), "inactive");
    assert!(Path::new("/var/lib/berth").is_dir(), "the data was removed");
    if let Some(pod) = daemonset.pod.take() {
        remove_pod(&mut old, &pod).await;
    }
    berth_e2e::systemctl_stop(&berth_e2e::top_slice(&top));
    drop(installed);
}
