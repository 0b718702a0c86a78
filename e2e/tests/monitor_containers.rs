//! Containers through the pod monitor and the executor (`berthd init`), below the CRI layer:
//! a real pod, a real image, a spec from `berth_runtime::spec`, the monitor's control socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_e2e::images::ImageBuilder;
use berth_e2e::network::mounts_under;
use berth_e2e::registry::TestRegistry;
use berth_e2e::TestAgent;
use berth_image::digest::{chain_ids, Digest};
use berth_runtime::monitor::protocol::{short_socket_path, ExitRecord, Request, Response};
use berth_runtime::spec::{self, ContainerSpec, HostInfo, ImageConfig, SandboxInfo, SpecInput};
use berth_runtime::CgroupDriver;
use k8s_cri::v1::*;

/// One container's bundle: an overlay rootfs over the image's snapshot, unmounted on drop.
struct Bundle {
    dir: PathBuf,
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.dir.join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The test's cgroup parent in every hierarchy: on drop, whatever still runs in it is killed and
/// the cgroups are removed, even when the test failed halfway.
struct CgroupCleanup {
    top: String,
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

fn request(pod_dir: &Path, request: &Request) -> Response {
    let (_dir, path) = short_socket_path(pod_dir, "monitor.sock").unwrap();
    let stream = UnixStream::connect(path).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    writeln!(&stream, "{}", serde_json::to_string(request).unwrap()).unwrap();
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

fn wait_exit(file: &Path) -> ExitRecord {
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

struct Pod {
    id: String,
    dir: PathBuf,
    lower: PathBuf,
}

async fn pod_with_image(agent: &TestAgent, registry: &TestRegistry) -> Pod {
    let image = ImageBuilder::busybox().push(registry, "test/monitor", "v1");
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
            name: "monitor-test".into(),
            uid: "uid-monitor-test".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "mon".into(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = agent
        .runtime()
        .await
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let dir = agent.paths.state.join("pods").join(&id);
    Pod { id, dir, lower }
}

/// Writes a bundle for `command` with the generated spec.
fn bundle(agent: &TestAgent, pod: &Pod, id: &str, command: &[&str], memory_limit: i64) -> Bundle {
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
        hostname: "mon".into(),
        resolv_conf: Some(pod.dir.join("resolv.conf")),
        hosts: Some(pod.dir.join("hosts")),
        hostname_file: Some(pod.dir.join("hostname")),
        shm: Some(pod.dir.join("shm")),
        ipc_ns: Some(pod.dir.join("ns/ipc")),
        cgroup_parent: format!("/berth-e2e-{}", std::process::id()),
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
        target_pid_namespace: None,
        host: &host,
    })
    .unwrap();
    spec.save(dir.join("config.json")).unwrap();
    bundle
}

fn create(pod: &Pod, bundle: &Bundle, id: &str) -> PathBuf {
    let exit_file = bundle.dir.join("exit.json");
    let r = request(
        &pod.dir,
        &Request::Create {
            id: id.into(),
            bundle: bundle.dir.clone(),
            log_path: bundle.dir.join("log"),
            exit_file: exit_file.clone(),
            cgroup: Some(PathBuf::from(format!(
                "/berth-e2e-{}/{id}",
                std::process::id()
            ))),
            stdin: false,
            tty: false,
        },
    );
    assert!(r.ok && r.pid.unwrap_or(0) > 1, "{r:?}");
    exit_file
}

#[tokio::test]
async fn monitor_runs_containers_logs_them_and_records_exits() {
    let registry = TestRegistry::start();
    let agent = TestAgent::start().await;
    let pod = pod_with_image(&agent, &registry).await;
    let suffix = std::process::id();
    let _cgroups = CgroupCleanup {
        top: format!("berth-e2e-{suffix}"),
    };

    // Exit 7 with output on both streams.
    let id = format!("exit7-{suffix}");
    let b = bundle(
        &agent,
        &pod,
        &id,
        &["sh", "-c", "echo out; echo err >&2; hostname; exit 7"],
        0,
    );
    let exit_file = create(&pod, &b, &id);
    assert!(request(&pod.dir, &Request::Start { id: id.clone() }).ok);
    let exit = wait_exit(&exit_file);
    assert_eq!(
        (exit.exit_code, exit.signal, exit.reason.as_str()),
        (7, None, "Error")
    );
    let log = std::fs::read_to_string(b.dir.join("log")).unwrap();
    assert!(log.lines().any(|l| l.ends_with(" stdout F out")), "{log}");
    assert!(log.lines().any(|l| l.ends_with(" stderr F err")), "{log}");
    // A host-network pod keeps the node's name, as with containerd.
    let node = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert!(
        log.lines()
            .any(|l| l.ends_with(&format!(" stdout F {node}"))),
        "{log}"
    );
    assert!(request(&pod.dir, &Request::Delete { id: id.clone() }).ok);
    assert!(!Path::new(&format!("/sys/fs/cgroup/memory/berth-e2e-{suffix}/{id}")).exists());
    drop(b);

    // Killed by a signal: 128 + 9.
    let id = format!("sleeper-{suffix}");
    let b = bundle(&agent, &pod, &id, &["sleep", "100"], 0);
    let exit_file = create(&pod, &b, &id);
    assert!(request(&pod.dir, &Request::Start { id: id.clone() }).ok);
    assert!(
        request(
            &pod.dir,
            &Request::Signal {
                id: id.clone(),
                signal: 9
            }
        )
        .ok
    );
    let exit = wait_exit(&exit_file);
    assert_eq!((exit.exit_code, exit.signal), (137, Some(9)));
    assert!(request(&pod.dir, &Request::Delete { id: id.clone() }).ok);
    drop(b);

    // OOM-killed under a small memory limit.
    let id = format!("oom-{suffix}");
    let b = bundle(
        &agent,
        &pod,
        &id,
        &["sh", "-c", "x=aaaaaaaa; while true; do x=$x$x; done"],
        16 * 1024 * 1024,
    );
    let exit_file = create(&pod, &b, &id);
    assert!(request(&pod.dir, &Request::Start { id: id.clone() }).ok);
    let exit = wait_exit(&exit_file);
    assert_eq!(exit.reason, "OOMKilled", "{exit:?}");
    assert!(request(&pod.dir, &Request::Delete { id: id.clone() }).ok);
    drop(b);

    // Exit 0 is Completed.
    let id = format!("ok-{suffix}");
    let b = bundle(&agent, &pod, &id, &["true"], 0);
    let exit_file = create(&pod, &b, &id);
    assert!(request(&pod.dir, &Request::Start { id: id.clone() }).ok);
    assert_eq!(wait_exit(&exit_file).reason, "Completed");
    assert!(request(&pod.dir, &Request::Delete { id: id.clone() }).ok);
    drop(b);

    agent
        .runtime()
        .await
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        })
        .await
        .unwrap();
    assert!(
        mounts_under(agent.dir()).is_empty(),
        "{:?}",
        mounts_under(agent.dir())
    );
}
