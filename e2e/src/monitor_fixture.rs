//! Containers below the CRI layer: a pod from a real agent, a busybox rootfs over the image's
//! snapshot, a spec from `berth_runtime::spec`, and requests on the pod monitor's socket. Shared by
//! the monitor and ExecSync suites.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::images::ImageBuilder;
use crate::registry::TestRegistry;
use crate::TestAgent;
use berth_image::digest::{chain_ids, Digest};
use berth_runtime::monitor::protocol::{ExitRecord, Request, Response};
use berth_runtime::spec::{self, ContainerSpec, HostInfo, ImageConfig, SandboxInfo, SpecInput};
use berth_runtime::CgroupDriver;
use k8s_cri::v1::*;

/// One container's bundle: an overlay rootfs over the image's snapshot, unmounted on drop.
pub struct Bundle {
    pub dir: PathBuf,
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.dir.join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The test's cgroup parent in every hierarchy: on drop, whatever still runs in it is killed and
/// the cgroups are removed, even when the test failed halfway.
pub struct CgroupCleanup {
    pub top: String,
}

impl Drop for CgroupCleanup {
    fn drop(&mut self) {
        for h in berth_runtime::cgroups::hierarchies() {
            let top = h.mountpoint.join(&self.top);
            let Ok(children) = std::fs::read_dir(&top) else {
                continue;
            };
            for child in children.flatten().filter(|c| c.path().is_dir()) {
                let procs =
                    std::fs::read_to_string(child.path().join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
                let _ = std::fs::remove_dir(child.path());
            }
            let _ = std::fs::remove_dir(&top);
        }
    }
}

/// One request through the agent's own monitor client; a refusal comes back as a failed
/// response, a broken connection panics.
pub fn request(pod_dir: &Path, request: &Request) -> Response {
    match berth_podsandbox::monitor_client::request(pod_dir, request) {
        Ok(response) => response,
        Err(e) if e.starts_with("connect") || e.starts_with("read") || e.starts_with("write") => {
            panic!("monitor request {request:?}: {e}")
        }
        Err(e) => Response::failure(e),
    }
}

pub fn wait_exit(file: &Path) -> ExitRecord {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(bytes) = std::fs::read(file) {
            return serde_json::from_slice(&bytes).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no exit record at {}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Pod {
    pub id: String,
    pub dir: PathBuf,
    /// The busybox image's unpacked layer.
    pub lower: PathBuf,
    /// Also the repository and hostname.
    pub name: String,
}

/// Pulls a busybox image and runs a host-network pod named `name`.
pub async fn pod_with_image(agent: &TestAgent, registry: &TestRegistry, name: &str) -> Pod {
    let image = ImageBuilder::busybox().push(registry, &format!("test/{name}"), "v1");
    agent
        .image()
        .await
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.image_ref(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let diffs: Vec<Digest> = image.diff_ids.iter().map(|d| d.parse().unwrap()).collect();
    let lower = agent
        .paths
        .root
        .join("snapshots")
        .join(chain_ids(&diffs)[0].hex())
        .join("fs");
    let config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: format!("{name}-test"),
            uid: format!("uid-{name}-test"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        linux: Some(crate::cri::pod_linux(crate::cri::namespaces(
            NamespaceMode::Node,
            NamespaceMode::Container,
            NamespaceMode::Pod,
        ))),
        ..Default::default()
    };
    let id = crate::cri::run_pod(&mut agent.runtime().await, config).await;
    let dir = agent.paths.state.join("pods").join(&id);
    Pod {
        id,
        dir,
        lower,
        name: name.to_string(),
    }
}

/// Writes a bundle for `command` with the generated spec; the container's cgroup goes under
/// `cgroup_parent`.
pub fn bundle(
    agent: &TestAgent,
    pod: &Pod,
    id: &str,
    command: &[&str],
    memory_limit: i64,
    cgroup_parent: &str,
) -> Bundle {
    let dir = agent.dir().join("containers").join(id);
    for d in ["rootfs", "upper", "work"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        pod.lower.display(),
        dir.join("upper").display(),
        dir.join("work").display()
    );
    nix::mount::mount(
        Some("overlay"),
        &dir.join("rootfs"),
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(options.as_str()),
    )
    .unwrap();
    let bundle = Bundle { dir: dir.clone() };
    let mut config = ContainerSpec {
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: dir.join("log").display().to_string(),
        ..Default::default()
    };
    config.metadata.name = id.to_string();
    config.resources.memory_limit_in_bytes = memory_limit;
    config.security.namespace_options.network = spec::NamespaceMode::Node;
    config.security.namespace_options.pid = spec::NamespaceMode::Container;
    config.security.namespace_options.ipc = spec::NamespaceMode::Pod;
    let sandbox = SandboxInfo {
        id: pod.id.clone(),
        hostname: pod.name.clone(),
        resolv_conf: Some(pod.dir.join("resolv.conf")),
        hosts: Some(pod.dir.join("hosts")),
        hostname_file: Some(pod.dir.join("hostname")),
        shm: Some(pod.dir.join("shm")),
        ipc_ns: Some(pod.dir.join("ns/ipc")),
        cgroup_parent: cgroup_parent.to_string(),
        ..Default::default()
    };
    let image = ImageConfig {
        env: vec!["PATH=/bin".into()],
        ..Default::default()
    };
    let host = HostInfo::probe(CgroupDriver::Cgroupfs).unwrap();
    let rootfs = dir.join("rootfs");
    let spec = spec::generate(&SpecInput {
        container_id: id,
        rootfs: &rootfs,
        config: &config,
        sandbox: &sandbox,
        image: &image,
        etc_passwd: None,
        etc_group: None,
        device_nodes: &[],
        seccomp_localhost: None,
        apparmor_profile: None,
        target_pid_namespace: None,
        host: &host,
    })
    .unwrap();
    spec.save(dir.join("config.json")).unwrap();
    bundle
}

/// Builds the container in the pod's monitor; returns its init's pid and its exit file.
pub fn create(pod: &Pod, bundle: &Bundle, id: &str, cgroup_parent: &str) -> (i32, PathBuf) {
    let exit_file = bundle.dir.join("exit.json");
    let r = request(
        &pod.dir,
        &Request::Create {
            id: id.into(),
            bundle: bundle.dir.clone(),
            log_path: bundle.dir.join("log"),
            exit_file: exit_file.clone(),
            cgroup: Some(PathBuf::from(format!("{cgroup_parent}/{id}"))),
            stdin: false,
            tty: false,
        },
    );
    let pid = r.pid.unwrap_or(0);
    assert!(r.ok && pid > 1, "{r:?}");
    (pid, exit_file)
}
