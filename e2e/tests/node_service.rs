//! The node lane only (feature `node-lane`, systemd as init): berthd run by systemd with the
//! shipped unit, `deploy/berthd.service`. `systemctl start` returns once berthd said READY=1
//! (Type=notify), and neither `systemctl restart berthd` nor a kill -9 of the agent (which the
//! unit restarts) stops a container or loses a line of its log.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_e2e::container_fixture::{container_pid, status};
use berth_e2e::cri::{container_linux, create_started, namespaces, pod_linux, remove_pod, run_pod};
use berth_e2e::images::ImageBuilder;
use berth_e2e::registry::TestRegistry;
use berth_e2e::{berthd_path, cleanup_leftovers, connect, AgentPaths, RuntimeClient, TempDir};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;

/// A transient unit file under /run/systemd/system, stopped and removed on drop.
struct Unit {
    name: String,
    path: PathBuf,
}

impl Unit {
    fn install(name: &str, text: &str) -> Unit {
        let path = PathBuf::from("/run/systemd/system").join(name);
        std::fs::write(&path, text).unwrap();
        let unit = Unit {
            name: name.to_string(),
            path,
        };
        systemctl(&["daemon-reload"]);
        unit
    }

    fn show(&self, property: &str) -> String {
        let out = Command::new("systemctl")
            .args(["show", "-p", property, "--value", &self.name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn main_pid(&self) -> i32 {
        self.show("MainPID").parse().unwrap()
    }

    /// Polls until the unit is active with a main process other than `old`.
    fn wait_restarted(&self, old: i32) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let pid = self.main_pid();
            if pid != 0 && pid != old && self.show("ActiveState") == "active" {
                return pid;
            }
            assert!(Instant::now() < deadline, "{} never came back", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Unit {
    fn drop(&mut self) {
        systemctl(&["stop", &self.name]);
        let _ = std::fs::remove_file(&self.path);
        systemctl(&["daemon-reload"]);
    }
}

fn systemctl(args: &[&str]) {
    let status = Command::new("systemctl").args(args).status().unwrap();
    assert!(status.success(), "systemctl {args:?}: {status}");
}

/// The numbers of the `line <n>` records in a CRI log, in order.
fn logged_lines(path: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit_once("line ").and_then(|(_, n)| n.parse().ok()))
        .collect()
}

/// Polls until the log holds more than `count` lines; returns them.
async fn wait_log_beyond(path: &std::path::Path, count: usize) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lines = logged_lines(path);
        if lines.len() > count {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "the log stopped at {} lines",
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pid of container `id`'s init, which must be running.
async fn running_pid(c: &mut RuntimeClient, id: &str) -> i32 {
    assert_eq!(
        status(c, id).await.state,
        ContainerState::ContainerRunning as i32
    );
    container_pid(c, id).await
}

#[tokio::test]
async fn under_systemd_a_restart_and_a_kill_leave_containers_running_and_logging() {
    assert!(
        berth_runtime::cgroups::systemd::booted(),
        "this suite is the node lane's: it needs systemd as init"
    );
    let dir = TempDir::new("berth-e2e-node");
    let paths = AgentPaths::under(dir.path());
    std::fs::write(&paths.config, paths.config_text("")).unwrap();
    std::fs::create_dir_all(&paths.cni_conf_dir).unwrap();
    let shipped = include_str!("../../deploy/berthd.service");
    assert!(shipped.contains("\nType=notify\n"), "{shipped}");
    let unit = Unit::install(
        &format!("berth-e2e-{}.service", std::process::id()),
        &shipped.replace(
            "ExecStart=/usr/local/bin/berthd",
            &format!(
                "ExecStart={} --config {}",
                berthd_path().display(),
                paths.config.display()
            ),
        ),
    );
    // Type=notify: start returns once berthd said READY=1, so the socket answers at once.
    systemctl(&["start", &unit.name]);
    let mut c =
        RuntimeServiceClient::new(connect(&paths.socket).await.expect("ready means serving"));
    c.version(VersionRequest::default()).await.unwrap();
    // kubelet reads the driver from RuntimeConfig and refuses to run on a mismatch.
    let linux = c
        .runtime_config(RuntimeConfigRequest::default())
        .await
        .unwrap()
        .into_inner()
        .linux
        .unwrap();
    let expected = match berth_e2e::cgroup_driver() {
        berth_runtime::CgroupDriver::Systemd => CgroupDriver::Systemd,
        berth_runtime::CgroupDriver::Cgroupfs => CgroupDriver::Cgroupfs,
    };
    assert_eq!(linux.cgroup_driver, expected as i32);
    let metrics = berth_e2e::http_get(&paths.metrics, "/metrics").unwrap();
    let driver = berth_e2e::cgroup_driver().as_str();
    assert!(
        metrics.contains(&format!(
            r#"berth_cgroup_info{{driver="{driver}",hierarchy="v2"}} 1"#
        )),
        "{metrics}"
    );

    let registry = TestRegistry::start();
    let image = ImageBuilder::with_passwd()
        .push(&registry, "test/node", "v1")
        .image_ref();
    let mut images = k8s_cri::v1::image_service_client::ImageServiceClient::new(
        connect(&paths.socket).await.unwrap(),
    );
    berth_e2e::cri::pull(&mut images, &image).await;
    let logs = TempDir::new("berth-e2e-node-logs");
    let top = format!("berth-e2e-{}-node", std::process::id());
    let pod_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "svc".into(),
            uid: "uid-svc".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: logs.path().display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: berth_e2e::pod_cgroup_parent(&top, "svc"),
            ..pod_linux(namespaces(
                NamespaceMode::Node,
                NamespaceMode::Container,
                NamespaceMode::Pod,
            ))
        }),
        ..Default::default()
    };
    let pod = run_pod(&mut c, pod_config.clone()).await;
    let id = create_started(
        &mut c,
        &pod,
        &pod_config,
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: "ticker".into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image,
                ..Default::default()
            }),
            command: [
                "sh",
                "-c",
                "i=0; while :; do echo line $i; i=$((i+1)); sleep 0.05; done",
            ]
            .map(String::from)
            .to_vec(),
            log_path: "ticker.log".into(),
            linux: Some(container_linux(namespaces(
                NamespaceMode::Node,
                NamespaceMode::Container,
                NamespaceMode::Pod,
            ))),
            ..Default::default()
        },
    )
    .await;
    let log = logs.path().join("ticker.log");
    let init = running_pid(&mut c, &id).await;
    let mut seen = wait_log_beyond(&log, 5).await.len();

    // systemctl restart: a new agent; the container and its log carry on.
    let first = unit.main_pid();
    systemctl(&["restart", &unit.name]);
    let second = unit.wait_restarted(first);
    let mut c = RuntimeServiceClient::new(connect(&paths.socket).await.unwrap());
    assert_eq!(
        running_pid(&mut c, &id).await,
        init,
        "after systemctl restart"
    );
    seen = wait_log_beyond(&log, seen + 5).await.len();

    // kill -9 of the agent: systemd restarts it (Restart=always); nothing else is touched.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    unit.wait_restarted(second);
    let mut c = RuntimeServiceClient::new(connect(&paths.socket).await.unwrap());
    assert_eq!(running_pid(&mut c, &id).await, init, "after kill -9");
    let lines = wait_log_beyond(&log, seen + 5).await;
    // Not a line lost or written twice while the agent was away.
    let expected: Vec<u64> = (0..lines.len() as u64).collect();
    assert_eq!(lines, expected, "the log's lines");

    c.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    remove_pod(&mut c, &pod).await;
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(init), None).is_err(),
        "the container's init is gone with its pod"
    );
    drop(unit);
    berth_e2e::systemctl_stop(&berth_e2e::top_slice(&top));
    cleanup_leftovers(dir.path(), &paths.state);
}
