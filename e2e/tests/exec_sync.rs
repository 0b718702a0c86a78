//! ExecSync below the CRI layer: `berth_runtime::exec_sync` running commands through
//! `berthd init exec` in a real container (a pod, a busybox image, `sleep 1000` started through
//! the pod monitor, as in monitor_containers.rs).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_e2e::images::ImageBuilder;
use berth_e2e::network::{mounts_under, processes_mentioning};
use berth_e2e::registry::TestRegistry;
use berth_e2e::{berthd_path, TestAgent};
use berth_image::digest::{chain_ids, Digest};
use berth_runtime::exec_sync::{exec_sync, ExecError, ExecOutput, OUTPUT_CAP};
use berth_runtime::monitor::protocol::{short_socket_path, ExitRecord, Request, Response};
use berth_runtime::spec::{self, ContainerSpec, HostInfo, ImageConfig, SandboxInfo, SpecInput};
use berth_runtime::CgroupDriver;
use k8s_cri::v1::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

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
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                std::thread::sleep(Duration::from_millis(50));
                let _ = std::fs::remove_dir(child.path());
            }
            let _ = std::fs::remove_dir(&top);
        }
    }
}

/// A pod the test did not get to remove through the agent (it failed): its monitor is killed and
/// everything mounted under the agent's directory is detached.
struct PodCleanup {
    pod_dir: PathBuf,
    agent_dir: PathBuf,
    removed: bool,
}

impl Drop for PodCleanup {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        for pid in processes_mentioning(&self.pod_dir.to_string_lossy()) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
        for mount in mounts_under(&self.agent_dir).iter().rev() {
            let _ = nix::mount::umount2(mount.as_str(), nix::mount::MntFlags::MNT_DETACH);
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
    let image = ImageBuilder::busybox().push(registry, "test/exec", "v1");
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
            name: "exec-test".into(),
            uid: "uid-exec-test".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "exec".into(),
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

fn cgroup_parent() -> String {
    format!("/berth-e2e-exec-{}", std::process::id())
}

/// Writes a bundle for `command` with the generated spec.
fn bundle(agent: &TestAgent, pod: &Pod, id: &str, command: &[&str]) -> Bundle {
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
    config.security.namespace_options.network = spec::NamespaceMode::Node;
    config.security.namespace_options.pid = spec::NamespaceMode::Container;
    config.security.namespace_options.ipc = spec::NamespaceMode::Pod;
    let sandbox = SandboxInfo {
        id: pod.id.clone(),
        hostname: "exec".into(),
        resolv_conf: Some(pod.dir.join("resolv.conf")),
        hosts: Some(pod.dir.join("hosts")),
        hostname_file: Some(pod.dir.join("hostname")),
        shm: Some(pod.dir.join("shm")),
        ipc_ns: Some(pod.dir.join("ns/ipc")),
        cgroup_parent: cgroup_parent(),
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

/// Creates and starts the container; returns its init's pid and its exit file.
fn create_and_start(pod: &Pod, bundle: &Bundle, id: &str) -> (i32, PathBuf) {
    let exit_file = bundle.dir.join("exit.json");
    let r = request(
        &pod.dir,
        &Request::Create {
            id: id.into(),
            bundle: bundle.dir.clone(),
            log_path: bundle.dir.join("log"),
            exit_file: exit_file.clone(),
            cgroup: Some(PathBuf::from(format!("{}/{id}", cgroup_parent()))),
            stdin: false,
            tty: false,
        },
    );
    let pid = r.pid.unwrap_or(0) as i32;
    assert!(r.ok && pid > 1, "{r:?}");
    assert!(request(&pod.dir, &Request::Start { id: id.into() }).ok);
    (pid, exit_file)
}

/// `(state, ppid)` from /proc/<pid>/stat.
fn stat(pid: i32) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

fn zombie_children(parent: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&pid| stat(pid) == Some(('Z', parent)))
        .collect()
}

/// Live (not zombie) processes running `cmdline` (NUL-separated, as in /proc) in `cgroup`.
fn live_in_cgroup(cgroup: &str, cmdline: &str) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&pid| {
            let in_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .unwrap_or_default()
                .lines()
                .any(|l| l.rsplit(':').next() == Some(cgroup));
            in_cgroup
                && std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()
                    == cmdline.as_bytes()
                && stat(pid).is_some_and(|(state, _)| state != 'Z')
        })
        .collect()
}

/// Report or process files of ours (`<id>.exec-…`) in libcontainer's state root.
fn exec_leftovers(state_root: &Path) -> Vec<String> {
    std::fs::read_dir(state_root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".exec-"))
        .collect()
}

/// `sleep 60` as /proc/<pid>/cmdline has it.
const SLEEP_60: &str = "sleep\x0060\x00";

fn args(cmd: &[&str]) -> Vec<String> {
    cmd.iter().map(|s| s.to_string()).collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn exec_sync_runs_in_the_container_caps_output_and_kills_on_timeout() {
    let registry = TestRegistry::start();
    let agent = TestAgent::start().await;
    let pod = pod_with_image(&agent, &registry).await;
    let mut pod_cleanup = PodCleanup {
        pod_dir: pod.dir.clone(),
        agent_dir: agent.dir().to_path_buf(),
        removed: false,
    };
    let id = format!("exec-{}", std::process::id());
    let b = bundle(&agent, &pod, &id, &["sleep", "1000"]);
    let _cgroups = CgroupCleanup {
        top: cgroup_parent().trim_start_matches('/').to_string(),
    };
    let (init_pid, exit_file) = create_and_start(&pod, &b, &id);
    let monitor_pid = stat(init_pid).map(|(_, ppid)| ppid).unwrap();
    let berthd = berthd_path();
    let state_root = pod.dir.join("runc");
    let cgroup = format!("{}/{id}", cgroup_parent());
    let me = std::process::id() as i32;
    let exec = |cmd: Vec<String>, timeout: Duration| {
        let (berthd, state_root, id) = (berthd.clone(), state_root.clone(), id.clone());
        async move { exec_sync(&berthd, &state_root, &id, &cmd, timeout).await }
    };

    // Both streams and the exit code.
    let out = exec(
        args(&["sh", "-c", "echo out; echo err >&2; exit 3"]),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(
        out,
        ExecOutput {
            stdout: b"out\n".to_vec(),
            stderr: b"err\n".to_vec(),
            exit_code: 3
        }
    );

    // The container's rootfs (a file written lands in its overlay upper dir), its /etc/hostname,
    // its PID namespace (PID 1 is the container's sleep), its env.
    let out = exec(
        args(&[
            "sh",
            "-c",
            "echo hi > /exec-marker; cat /etc/hostname; tr '\\0' ' ' < /proc/1/cmdline; echo; echo $PATH",
        ]),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(out.exit_code, 0, "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(b.dir.join("upper/exec-marker")).unwrap(),
        "hi\n"
    );
    let hostname = std::fs::read_to_string(pod.dir.join("hostname")).unwrap();
    assert_eq!(
        text(&out.stdout),
        format!("{hostname}sleep 1000 \n/bin\n"),
        "{}",
        text(&out.stderr)
    );
    let out = exec(args(&["ls", "/bin/busybox"]), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        (text(&out.stdout).as_str(), out.exit_code),
        ("/bin/busybox\n", 0)
    );

    // A command that cannot be run, and a container that does not exist, are errors.
    match exec(args(&["/no/such/binary"]), Duration::from_secs(10)).await {
        Err(ExecError::Failed(_)) => {}
        other => panic!("{other:?}"),
    }
    match exec_sync(
        &berthd,
        &state_root,
        "no-such-container",
        &args(&["true"]),
        Duration::from_secs(10),
    )
    .await
    {
        Err(ExecError::Failed(e)) => assert!(e.contains("no-such-container"), "{e}"),
        other => panic!("{other:?}"),
    }

    // More than 16 MiB on each stream: each is cut at the cap, the rest drained, the exit code kept.
    let out = exec(
        args(&[
            "sh",
            "-c",
            "head -c 20000000 /dev/zero; head -c 17000000 /dev/zero >&2; echo late; exit 4",
        ]),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(
        (out.stdout.len(), out.stderr.len(), out.exit_code),
        (OUTPUT_CAP, OUTPUT_CAP, 4)
    );
    assert!(out.stdout.iter().all(|&b| b == 0));

    // Many execs in a row leave no zombie behind, in the monitor or here.
    let mut times = Vec::new();
    let all = Instant::now();
    // Thousands of calls, as kubelet's exec probes make over a day (each ~10 ms here).
    for _ in 0..2000 {
        let started = Instant::now();
        let out = exec(args(&["true"]), Duration::from_secs(10))
            .await
            .unwrap();
        times.push(started.elapsed());
        assert_eq!(out.exit_code, 0, "{}", text(&out.stderr));
        assert!(
            all.elapsed() < Duration::from_secs(180),
            "2000 execs took too long"
        );
    }
    times.sort();
    println!(
        "ExecSync of `true`: median {:?}, min {:?}, max {:?}",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
    assert_eq!(zombie_children(me), Vec::<i32>::new());
    assert_eq!(zombie_children(monitor_pid), Vec::<i32>::new());
    assert_eq!(zombie_children(init_pid), Vec::<i32>::new());
    // A timeout kills the process (it ran in the container's cgroup) and returns promptly.
    let started = Instant::now();
    let task = tokio::spawn(exec(args(&["sleep", "60"]), Duration::from_secs(2)));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(live_in_cgroup(&cgroup, SLEEP_60).len(), 1);
    let result = task.await.unwrap();
    let took = started.elapsed();
    assert_eq!(result, Err(ExecError::TimedOut(Duration::from_secs(2))));
    println!("a 2 s timeout returned after {took:?}");
    assert!(took < Duration::from_secs(3), "timed out after {took:?}");
    assert_eq!(live_in_cgroup(&cgroup, SLEEP_60), Vec::<i32>::new());

    // The whole tree: a shell with a background child and a foreground one.
    let result = exec(
        args(&["sh", "-c", "sleep 60 & sleep 60; echo never"]),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(result, Err(ExecError::TimedOut(Duration::from_secs(1))));
    assert_eq!(live_in_cgroup(&cgroup, SLEEP_60), Vec::<i32>::new());

    // An executor that cannot act on SIGTERM (stopped here) is killed with its process by us.
    let started = Instant::now();
    let task = tokio::spawn(exec(args(&["sleep", "60"]), Duration::from_secs(1)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let executors: Vec<u32> = processes_mentioning("init\0exec\0")
        .into_iter()
        .filter(|&pid| stat(pid as i32).is_some_and(|(_, ppid)| ppid == me))
        .collect();
    assert_eq!(executors.len(), 1, "{executors:?}");
    kill(Pid::from_raw(executors[0] as i32), Signal::SIGSTOP).unwrap();
    let result = task.await.unwrap();
    assert_eq!(result, Err(ExecError::TimedOut(Duration::from_secs(1))));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "timed out after {took:?}");
    assert_eq!(live_in_cgroup(&cgroup, SLEEP_60), Vec::<i32>::new());

    // A call dropped halfway (a cancelled RPC) kills its process too, in the background.
    let dropped = tokio::time::timeout(
        Duration::from_millis(700),
        exec(args(&["sleep", "60"]), Duration::ZERO),
    )
    .await;
    assert!(dropped.is_err());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !live_in_cgroup(&cgroup, SLEEP_60).is_empty() || !exec_leftovers(&state_root).is_empty() {
        assert!(Instant::now() < deadline, "dropped exec still running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The killed shell's children may outlive it for an instant and end up zombies of the
    // container's init (sleep never reaps, as with any runtime); nothing is left with us.
    assert_eq!(zombie_children(me), Vec::<i32>::new());
    assert_eq!(zombie_children(monitor_pid), Vec::<i32>::new());
    // Nothing of ours is left in the state dir but libcontainer's own.
    assert_eq!(exec_leftovers(&state_root), Vec::<String>::new());

    // Stop and remove the container, then the pod.
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
    wait_exit(&exit_file);
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
    pod_cleanup.removed = true;
    assert!(
        mounts_under(agent.dir()).is_empty(),
        "{:?}",
        mounts_under(agent.dir())
    );
}
