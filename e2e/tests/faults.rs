//! The faults the reliability review found, each reproduced against a real berthd: what a dead
//! helper, a hostile registry or an unlucky crash must not be able to do to a node.

use std::time::{Duration, Instant};

use berth_e2e::container_fixture::*;
use berth_e2e::RuntimeClient;
use k8s_cri::v1::*;

/// A fixture with one running pod `name` from `pod_config`, whose cgroups are taken back on
/// drop (after the agent: fields drop in order).
struct OnePod {
    f: Fixture,
    c: RuntimeClient,
    cfg: PodSandboxConfig,
    pod: String,
    _pods: PodCgroups,
    _top: CgroupTop,
}

async fn one_pod(name: &str) -> OnePod {
    let _top = CgroupTop::new();
    let _pods = PodCgroups(vec![name.to_string()]);
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let cfg = pod_config(&f, name);
    let pod = run_pod(&mut c, cfg.clone()).await;
    OnePod {
        f,
        c,
        cfg,
        pod,
        _pods,
        _top,
    }
}

/// Polls until the cgroup directories of `path` are gone in every hierarchy (systemd removes an
/// emptied scope a moment after its last process went), at most 10 s; returns what is left.
async fn cgroup_dirs_left(path: &std::path::Path) -> Vec<std::path::PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<_> = berth_e2e::cgroup_dirs(&path.to_string_lossy())
            .into_iter()
            .filter(|d| d.exists())
            .collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The monitor holds a pod's namespaces and its containers' stdio, but liveness must not depend
/// on it: after a SIGKILL of a pod's monitor, StopContainer, StopPodSandbox and
/// RemovePodSandbox still succeed (the agent kills through the container's cgroup what the
/// monitor would have killed, whatever the PID namespace), the container reads exited by
/// SIGKILL, and nothing is left: no process in any of the pod's cgroups, no cgroup, no mount.
#[tokio::test]
async fn a_pod_whose_monitor_was_killed_still_stops_and_goes() {
    let _top = CgroupTop::new();
    let cases = [
        // RemovePodSandbox straight away, as kubelet does for a pod it has given up on.
        ("deadmon-host", NamespaceMode::Node, "remove"),
        // StopPodSandbox, then RemovePodSandbox.
        ("deadmon-pod", NamespaceMode::Pod, "stop pod"),
        // StopContainer, then the pod.
        ("deadmon-own", NamespaceMode::Container, "stop container"),
    ];
    let _pods = PodCgroups(cases.iter().map(|(n, _, _)| n.to_string()).collect());
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    for (name, mode, path) in cases {
        eprintln!("case {name}: {path}");
        let mut pod_cfg = pod_config(&f, name);
        pod_namespaces(&mut pod_cfg).pid = mode as i32;
        let pod = run_pod(&mut c, pod_cfg.clone()).await;
        let mut cfg = container_config(&f, "forks", &["sh", "-c", "sleep 1001 & exec sleep 1002"]);
        container_namespaces(&mut cfg).pid = mode as i32;
        let id = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
        start(&mut c, &id).await;
        let cgroup = berth_e2e::cgroup_dir("pids", &container_cgroup(name, &id).to_string_lossy());
        let deadline = Instant::now() + Duration::from_secs(20);
        while cgroup_procs(&cgroup).len() < 2 {
            assert!(Instant::now() < deadline, "{name}: both sleeps never ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let monitor = monitor_pid(&mut c, &pod).await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(monitor),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        wait_process_gone(monitor);

        if path == "stop container" {
            c.stop_container(StopContainerRequest {
                container_id: id.clone(),
                timeout: 2,
            })
            .await
            .unwrap_or_else(|e| panic!("{name}: StopContainer with a dead monitor: {e}"));
        }
        if path != "remove" {
            c.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("{name}: StopPodSandbox with a dead monitor: {e}"));
            let s = status(&mut c, &id).await;
            assert_eq!(s.state, ContainerState::ContainerExited as i32, "{name}");
            assert_eq!(s.exit_code, 137, "{name}: killed by the agent: {s:?}");
            assert_eq!(s.reason, "Error", "{name}");
            assert_eq!(
                cgroup_procs(&cgroup),
                Vec::<i32>::new(),
                "{name}: processes left in the container's cgroup after StopPodSandbox"
            );
            let init = berth_e2e::cgroup_dir(
                "pids",
                &berth_e2e::monitor_cgroup_path(&pod_parent(name), &pod).to_string_lossy(),
            );
            assert_eq!(
                cgroup_procs(&init),
                Vec::<i32>::new(),
                "{name}: processes left in the monitor's cgroup after StopPodSandbox"
            );
        }
        c.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: RemovePodSandbox with a dead monitor: {e}"));
        let listed = c
            .list_containers(ListContainersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .containers;
        assert!(
            listed.iter().all(|l| l.id != id),
            "{name}: container still listed"
        );
        assert_clean(&f, name);
        assert!(f.agent.metric("berth_container_orphans_killed_total") >= 1.0);
        for dir in [
            container_cgroup(name, &id),
            berth_e2e::monitor_cgroup_path(&pod_parent(name), &pod),
        ] {
            let left = cgroup_dirs_left(&dir).await;
            assert!(left.is_empty(), "{name}: cgroups left: {left:?}");
        }
    }
}

/// A registry that answers 500 with a body that never ends must cost the agent a bounded read
/// and the pull, nothing more: three pulls through it at once (as many as the agent downloads
/// at a time) fail naming the status, a pull from a good registry meanwhile succeeds, and the
/// agent still answers.
#[tokio::test]
async fn endless_error_bodies_fail_their_pulls_and_hold_up_no_other() {
    use berth_e2e::fault::{Fault, FaultProxy};
    use berth_e2e::images::{ImageBuilder, Layer};
    let registry = berth_e2e::registry::TestRegistry::start();
    for i in 0..3 {
        let name = format!("endless{i}");
        ImageBuilder::new()
            .layer(Layer::files(&[(name.as_str(), name.as_bytes(), 0o644)]))
            .push(&registry, &format!("test/{name}"), "v1");
    }
    let good = ImageBuilder::new()
        .layer(Layer::files(&[("good", b"good", 0o644)]))
        .push(&registry, "test/good", "v1");
    let proxy = FaultProxy::start(&registry.address());
    proxy.set(Fault::EndlessError);
    let agent = berth_e2e::TestAgent::start().await;
    let pull = |image: String| {
        let agent = &agent;
        async move {
            agent
                .image()
                .await
                .pull_image(PullImageRequest {
                    image: Some(ImageSpec {
                        image,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().image_ref)
        }
    };
    let hostile = tokio::time::timeout(
        Duration::from_secs(30),
        futures_util::future::join_all(
            (0..3).map(|i| pull(format!("{}/test/endless{i}:v1", proxy.address()))),
        ),
    );
    let other = async {
        // Once the three hostile pulls are downloading.
        while proxy.blob_requests() < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::timeout(Duration::from_secs(20), pull(good.image_ref())).await
    };
    let (hostile, other) = tokio::join!(hostile, other);
    let other = other.expect("a pull from a good registry waited for the hostile ones");
    assert_eq!(other.unwrap(), good.config_digest);
    let hostile = hostile.expect("the pulls answered with an endless body never ended");
    for result in hostile {
        let err = result.expect_err("a pull answered 500 succeeded");
        assert!(err.message().contains("500"), "{err:?}");
    }
    agent
        .runtime()
        .await
        .version(VersionRequest::default())
        .await
        .unwrap();
}

/// Containers that write as fast as they can must not starve the pod's monitor: with three
/// containers flooding their logs, a quiet container beside them still answers ExecSync and
/// StopContainer, a flooding one stops, and the pod stops and goes.
#[tokio::test]
async fn log_floods_starve_neither_the_monitor_nor_their_neighbours() {
    let OnePod {
        f,
        mut c,
        cfg: pod_cfg,
        pod,
        _pods,
        _top,
    } = one_pod("flood").await;
    let mut flooders = Vec::new();
    for i in 0..3 {
        let mut cfg =
            container_config(&f, &format!("yes{i}"), &["yes", "a line the flood repeats"]);
        cfg.log_path = format!("yes{i}.log");
        let id = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
        start(&mut c, &id).await;
        flooders.push(id);
    }
    let quiet_cfg = container_config(&f, "quiet", &["sleep", "1000"]);
    let quiet = create(&mut c, &pod, quiet_cfg, pod_cfg.clone()).await;
    start(&mut c, &quiet).await;
    // The floods are under way: each log has grown past 1 MiB.
    for i in 0..3 {
        let log = f.logs.path().join("flood").join(format!("yes{i}.log"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::metadata(&log).map_or(0, |m| m.len()) < 1 << 20 {
            assert!(Instant::now() < deadline, "yes{i} never flooded its log");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    fn within<T>(what: &str, r: Result<T, tokio::time::error::Elapsed>) -> T {
        r.unwrap_or_else(|_| panic!("{what} did not return within 60 s during the flood"))
    }
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        exec_sync(&mut c, &quiet, &["echo", "still here"]),
    )
    .await;
    assert_eq!(within("ExecSync", out).stdout, b"still here\n");
    for id in [&quiet, &flooders[0]] {
        let stopped = tokio::time::timeout(
            Duration::from_secs(60),
            c.stop_container(StopContainerRequest {
                container_id: id.clone(),
                timeout: 1,
            }),
        )
        .await;
        within("StopContainer", stopped).unwrap();
        assert_eq!(
            status(&mut c, id).await.state,
            ContainerState::ContainerExited as i32
        );
    }
    let stopped = tokio::time::timeout(
        Duration::from_secs(60),
        c.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        }),
    )
    .await;
    within("StopPodSandbox", stopped).unwrap();
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "flood");
}

/// ExecSync as kubelet calls it (a client that takes replies of at most 16 MiB): a timeout
/// far past any deadline the agent can arm is no timeout, not a panic, and a command that fills
/// both streams gets its output cut to what one reply can carry instead of a reply that fails.
#[tokio::test]
async fn exec_sync_answers_for_any_timeout_and_any_output() {
    let OnePod {
        f,
        mut c,
        cfg: pod_cfg,
        pod,
        _pods,
        _top,
    } = one_pod("execlimits").await;
    let cfg = container_config(&f, "sleeper", &["sleep", "1000"]);
    let id = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
    start(&mut c, &id).await;
    let mut kubelet = c.clone().max_decoding_message_size(16 << 20);
    let exec = |cmd: &[&str], timeout: i64| ExecSyncRequest {
        container_id: id.clone(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout,
    };
    for timeout in [i64::MAX, i64::MAX / 1_000_000_000, 1 << 40] {
        let out = kubelet
            .exec_sync(exec(&["echo", "hi"], timeout))
            .await
            .unwrap_or_else(|e| panic!("timeout {timeout}: {e}"))
            .into_inner();
        assert_eq!(out.stdout, b"hi\n", "timeout {timeout}");
    }
    // StopContainer's timeout is an int64 of seconds too.
    let cfg = container_config(
        &f,
        "termed",
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; touch /trapped; while :; do sleep 0.1; done",
        ],
    );
    let termed = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
    start(&mut c, &termed).await;
    // Only once the trap is set: PID 1 of its namespace, sh would ignore SIGTERM before.
    let deadline = Instant::now() + Duration::from_secs(20);
    while exec_sync(&mut c, &termed, &["test", "-e", "/trapped"])
        .await
        .exit_code
        != 0
    {
        assert!(Instant::now() < deadline, "the trap was never set");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.stop_container(StopContainerRequest {
        container_id: termed.clone(),
        timeout: i64::MAX,
    })
    .await
    .expect("StopContainer with the largest timeout");
    assert_eq!(status(&mut c, &termed).await.exit_code, 0);
    let out = kubelet
        .exec_sync(exec(
            &[
                "sh",
                "-c",
                "head -c 20000000 /dev/zero; head -c 17000000 /dev/zero >&2; exit 4",
            ],
            60,
        ))
        .await
        .expect("a full ExecSync reply")
        .into_inner();
    assert_eq!(out.exit_code, 4);
    assert!(
        out.stdout.len() + out.stderr.len() < 16 << 20,
        "{} + {} bytes",
        out.stdout.len(),
        out.stderr.len()
    );
    assert!(
        out.stdout.len() > 8 << 20,
        "{} bytes of stdout",
        out.stdout.len()
    );
    f.agent
        .runtime()
        .await
        .version(VersionRequest::default())
        .await
        .expect("the agent is still there");
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "execlimits");
}

/// A tmpfs of `size` mounted on a temp dir of its own, unmounted on drop.
struct SmallFs {
    dir: berth_e2e::TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> SmallFs {
        let dir = berth_e2e::TempDir::new("berth-e2e-smallfs");
        nix::mount::mount(
            Some("berth-e2e-smallfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size}").as_str()),
        )
        .unwrap();
        SmallFs { dir }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A full log disk costs the container its log lines and nothing else: the monitor says so in
/// its own log (`monitor.log`, in the pod's state dir on /run) a bounded number of times, not
/// once per write that failed.
#[tokio::test]
async fn a_full_log_disk_does_not_fill_the_monitors_own_log() {
    let _top = CgroupTop::new();
    let _pods = PodCgroups(vec!["fulldisk".into()]);
    let logs = SmallFs::mount("256k");
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let mut pod_cfg = pod_config(&f, "fulldisk");
    pod_cfg.log_directory = logs.dir.path().display().to_string();
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let mut cfg = container_config(
        &f,
        "writer",
        &[
            "sh",
            "-c",
            "yes a line that will not fit | head -c 100000000",
        ],
    );
    cfg.log_path = "writer.log".into();
    let id = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
    start(&mut c, &id).await;
    let s = wait_exited(&mut c, &id).await;
    assert_eq!(s.exit_code, 0);
    let monitor_log = berth_e2e::sandbox_fixture::pod_dir(&f.agent, &pod)
        .join(berth_runtime::monitor::protocol::LOG_FILE);
    let text = std::fs::read_to_string(&monitor_log).unwrap_or_default();
    assert!(
        text.lines().count() <= 10,
        "{} lines in monitor.log for one full disk, the first: {:?}",
        text.lines().count(),
        text.lines().next()
    );
    assert!(
        text.contains("No space left"),
        "the full disk is not told: {text:?}"
    );
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "fulldisk");
}

/// What may be left of the pod `name` (made by `pod_config`) and of the agent's pods on the host.
fn leftovers(f: &Fixture, net: &berth_e2e::network::TestNetwork, name: &str) -> Vec<String> {
    let agent = &f.agent;
    let mut left = Vec::new();
    let entries = |dir: std::path::PathBuf| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    for pod in entries(agent.paths.state.join("pods")) {
        left.push(format!("pod dir {pod}"));
    }
    for c in entries(agent.paths.state.join("containers")) {
        left.push(format!("container dir {c}"));
    }
    for c in entries(agent.paths.root.join("containers")) {
        left.push(format!("writable layer {c}"));
    }
    for m in berth_e2e::network::mounts_under(agent.dir()) {
        left.push(format!("mount {m}"));
    }
    for p in
        berth_e2e::network::processes_mentioning(&agent.paths.state.join("pods").to_string_lossy())
    {
        left.push(format!("process {p}"));
    }
    let pod_cgroup = berth_e2e::pod_cgroup_path(&pod_parent(name));
    for d in berth_e2e::cgroup_dirs(&pod_cgroup.to_string_lossy()) {
        if d.exists() {
            left.push(format!("cgroup {}", d.display()));
        }
    }
    for l in net.leases() {
        left.push(format!("IP lease {l}"));
    }
    for v in net.veths() {
        left.push(format!("veth {v}"));
    }
    for dir in [&agent.paths.state, &agent.paths.root] {
        for r in entries(dir.join("cni/results")) {
            left.push(format!("CNI result {r}"));
        }
    }
    left
}

/// A reboot ends every process and empties `state` (a tmpfs), but keeps `root` and what the CNI
/// plugins keep on disk (host-local's leases). The agent that starts after it has no record of
/// the pods it ran: it runs the DEL of every attachment it finds no pod for, from what it kept
/// under `root`, and removes the writable layers that no container record claims.
#[tokio::test]
async fn after_a_reboot_the_agent_frees_the_ips_and_writable_layers_of_the_pods_it_lost() {
    use berth_e2e::network::{Extra, TestNetwork};
    let _top = CgroupTop::new();
    let name = "reboot";
    let _pods = PodCgroups(vec![name.to_string()]);
    let mut f = fixture().await;
    let net = TestNetwork::create(&f.agent.paths.cni_conf_dir, Extra::None);
    let mut c = f.agent.runtime().await;
    berth_e2e::cri::wait_network_ready(&mut c).await;
    let mut cfg = pod_config(&f, name);
    pod_namespaces(&mut cfg).network = NamespaceMode::Pod as i32;
    let pod = run_pod(&mut c, cfg.clone()).await;
    let id = create(
        &mut c,
        &pod,
        container_config(&f, "c", &["sleep", "1000"]),
        cfg.clone(),
    )
    .await;
    start(&mut c, &id).await;
    assert_eq!(net.leases().len(), 1, "{:?}", net.leases());
    assert!(f.agent.paths.root.join("containers").join(&id).exists());

    let pod_cgroup = berth_e2e::pod_cgroup_path(&pod_parent(name));
    let trees = berth_e2e::cgroup_dirs(&pod_cgroup.to_string_lossy());
    f.agent.reboot(&trees).await;
    let mut c = f.agent.runtime().await;
    let listed = berth_e2e::cri::list_pods(&mut c).await;
    assert!(listed.is_empty(), "{listed:?}");
    let left = leftovers(&f, &net, name);
    assert!(left.is_empty(), "left after the reboot: {left:#?}");
}

/// Every step of RunPodSandbox and of CreateContainer may be the moment the agent dies. For
/// each, an agent made to SIGKILL itself right after the step (`berth_common::crash`) starts
/// again and takes back everything the build had made so far: pod dir, shm and namespace
/// mounts, monitor, cgroups, IP, veth, CNI result, rootfs mount, writable layer. A second start
/// finds nothing more to roll back.
#[tokio::test]
async fn a_crash_at_any_step_of_a_build_is_rolled_back_at_the_next_start() {
    use berth_e2e::network::{Extra, TestNetwork};
    let _top = CgroupTop::new();
    let sandbox_points = [
        "sandbox-recorded",
        "sandbox-shm",
        "sandbox-cgroup",
        "sandbox-monitor",
        "sandbox-network",
    ];
    let container_points = ["container-rootfs", "container-created"];
    let names: Vec<String> = sandbox_points
        .iter()
        .chain(container_points.iter())
        .map(|p| format!("crash-{p}"))
        .collect();
    let _pods = PodCgroups(names.clone());
    let mut f = fixture().await;
    let net = TestNetwork::create(&f.agent.paths.cni_conf_dir, Extra::None);
    berth_e2e::cri::wait_network_ready(&mut f.agent.runtime().await).await;
    let pod_cfg = |f: &Fixture, name: &str| {
        let mut cfg = pod_config(f, name);
        pod_namespaces(&mut cfg).network = NamespaceMode::Pod as i32;
        cfg
    };
    let rollbacks = |f: &Fixture| f.agent.log().matches("rolling back").count();
    for point in sandbox_points.into_iter().chain(container_points) {
        let name = format!("crash-{point}");
        eprintln!("case {point}");
        let cfg = pod_cfg(&f, &name);
        let pod = if point.starts_with("container") {
            Some(run_pod(&mut f.agent.runtime().await, cfg.clone()).await)
        } else {
            None
        };
        f.agent.restart_crashing_at(point).await;
        let mut c = f.agent.runtime().await;
        match &pod {
            None => {
                let r = berth_e2e::cri::try_run_pod(&mut c, cfg.clone()).await;
                assert!(r.is_err(), "{point}: RunPodSandbox answered {r:?}");
            }
            Some(pod) => {
                let r = c
                    .create_container(CreateContainerRequest {
                        pod_sandbox_id: pod.clone(),
                        config: Some(container_config(&f, "c", &["sleep", "1000"])),
                        sandbox_config: Some(cfg.clone()),
                    })
                    .await;
                assert!(r.is_err(), "{point}: CreateContainer answered {r:?}");
            }
        }
        f.agent.wait_crashed();
        f.agent
            .restart_with(nix::sys::signal::Signal::SIGKILL)
            .await;
        let mut c = f.agent.runtime().await;
        if let Some(pod) = &pod {
            let listed = c
                .list_containers(ListContainersRequest::default())
                .await
                .unwrap()
                .into_inner()
                .containers;
            assert!(listed.is_empty(), "{point}: {listed:?}");
            remove_pod(&mut c, pod).await;
        }
        let listed = berth_e2e::cri::list_pods(&mut c).await;
        assert!(listed.is_empty(), "{point}: {listed:?}");
        let left = leftovers(&f, &net, &name);
        assert!(
            left.is_empty(),
            "{point}: left after the restart: {left:#?}"
        );
        let counted = f.agent.metric("berth_sandbox_rollbacks_total")
            + f.agent.metric("berth_container_rollbacks_total");
        assert_eq!(counted, 1.0, "{point}: rollbacks counted at the start");
        let before = rollbacks(&f);
        f.agent
            .restart_with(nix::sys::signal::Signal::SIGTERM)
            .await;
        assert_eq!(
            rollbacks(&f),
            before,
            "{point}: a second start rolled back again"
        );
        assert_eq!(f.agent.metric("berth_sandbox_rollbacks_total"), 0.0);
    }
}

/// kubelet retries a CreateContainer whose answer it did not get, with the same name and
/// attempt, possibly while the first is still being built: one container results, and the
/// retry is told the name is taken.
#[tokio::test]
async fn a_create_container_retried_while_the_first_is_in_flight_makes_one_container() {
    let OnePod {
        f,
        mut c,
        cfg: pod_cfg,
        pod,
        _pods,
        _top,
    } = one_pod("retried").await;
    for round in 0..5u32 {
        let mut cfg = container_config(&f, "twice", &["sleep", "1000"]);
        cfg.metadata.as_mut().unwrap().attempt = round;
        let request = CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cfg),
            sandbox_config: Some(pod_cfg.clone()),
        };
        let (mut a, mut b) = (c.clone(), c.clone());
        let (ra, rb) = tokio::join!(
            a.create_container(request.clone()),
            b.create_container(request.clone())
        );
        let ok: Vec<_> = [&ra, &rb].into_iter().filter(|r| r.is_ok()).collect();
        assert_eq!(ok.len(), 1, "round {round}: {ra:?} / {rb:?}");
        let refused = [ra, rb].into_iter().find_map(|r| r.err()).unwrap();
        assert!(refused.message().contains("reserved"), "{refused:?}");
        let listed = c
            .list_containers(ListContainersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .containers;
        assert_eq!(
            listed
                .iter()
                .filter(|l| l.metadata.as_ref().unwrap().attempt == round)
                .count(),
            1,
            "round {round}: {listed:?}"
        );
    }
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "retried");
}

/// A CreateContainer held at a crash point: the agent restarted to hold there, a pod run, its
/// create sent and the hold reached.
struct HeldCreate {
    /// Holds the gate: writing `gate` lets the held process go on.
    _gates: berth_e2e::TempDir,
    gate: std::path::PathBuf,
    c: RuntimeClient,
    pod: String,
    create:
        tokio::task::JoinHandle<Result<tonic::Response<CreateContainerResponse>, tonic::Status>>,
    /// The process that reached the hold (`<gate>.reached` names it).
    holder: i32,
}

/// Restarts `f`'s agent to hold at the crash point `point`, runs the pod `name` and sends its
/// CreateContainer, and returns once the create reached the hold.
async fn create_held_at(f: &mut Fixture, point: &str, name: &str) -> HeldCreate {
    let gates = berth_e2e::TempDir::new("berth-e2e-hold");
    let gate = gates.path().join("open");
    f.agent.restart_holding_at(point, &gate).await;
    let mut c = f.agent.runtime().await;
    let pod_cfg = pod_config(f, name);
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let request = CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(container_config(f, "held", &["sleep", "1000"])),
        sandbox_config: Some(pod_cfg),
    };
    let mut creating = c.clone();
    let create = tokio::spawn(async move { creating.create_container(request).await });
    let reached = gates.path().join("open.reached");
    let deadline = Instant::now() + Duration::from_secs(30);
    let holder = loop {
        if let Some(pid) = std::fs::read_to_string(&reached)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "the create never reached the hold"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    HeldCreate {
        _gates: gates,
        gate,
        c,
        pod,
        create,
        holder,
    }
}

/// A CreateContainer its caller gave up on (the RPC dropped while the container was being
/// made) still holds off the pod's teardown until the create is done. StopPodSandbox and
/// RemovePodSandbox then find the container and take it down with the pod; nothing of it is
/// made after the pod's dirs and cgroups are gone.
#[tokio::test]
async fn a_create_container_its_caller_dropped_still_holds_off_the_pods_removal() {
    let _top = CgroupTop::new();
    let name = "dropped-create";
    let _pods = PodCgroups(vec![name.to_string()]);
    let mut f = fixture().await;
    let held = create_held_at(&mut f, "container-created", name).await;
    // The caller gives up: its RPC is dropped, as a client's deadline drops it.
    held.create.abort();
    let _ = held.create.await;
    let (mut tearing, pod) = (held.c.clone(), held.pod.clone());
    let teardown = tokio::spawn(async move { remove_pod(&mut tearing, &pod).await });
    // A teardown that does not wait for the create is done within this; one that waits is not.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !teardown.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    std::fs::write(&held.gate, b"").unwrap();
    teardown.await.unwrap();
    assert_clean(&f, name);
    // Under the systemd driver the pod's slice is kubelet's (here `PodCgroups`'s) to remove.
    let left = container_cgroups_left(name);
    assert!(left.is_empty(), "container cgroups left: {left:?}");
}

/// Kills a process on drop if it still runs: what a failed test must not leave behind.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The executor a monitor forks for a create goes with the monitor: a monitor SIGKILLed in
/// the middle of a create leaves no executor to go on building the container (its cgroups, its
/// init) after the agent has rolled the create back, where nothing would take them down.
#[tokio::test]
async fn an_executor_goes_with_its_monitor() {
    let _top = CgroupTop::new();
    let name = "orphan-exec";
    let _pods = PodCgroups(vec![name.to_string()]);
    let mut f = fixture().await;
    let mut held = create_held_at(&mut f, "executor-create", name).await;
    let executor = held.holder;
    let _executor_guard = KillOnDrop(executor);
    let monitor = monitor_pid(&mut held.c, &held.pod).await;
    assert_ne!(
        executor, monitor,
        "the hold is the executor's, not the monitor's"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_process_gone(monitor);
    let deadline = Instant::now() + Duration::from_secs(10);
    while berth_e2e::running(executor as u32) {
        assert!(
            Instant::now() < deadline,
            "the executor {executor} outlived its monitor {monitor}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let created = held.create.await.unwrap();
    assert!(
        created.is_err(),
        "a create whose monitor died succeeded: {created:?}"
    );
    // Past the hold there is nobody left to build anything.
    std::fs::write(&held.gate, b"").unwrap();
    remove_pod(&mut held.c, &held.pod).await;
    assert_clean(&f, name);
    let left = container_cgroups_left(name);
    assert!(left.is_empty(), "container cgroups left: {left:?}");
}

/// An agent started from a directory that was removed since (a shell's temporary directory,
/// a checkout deleted under a running agent) still creates, starts and execs in containers:
/// nothing of a pod's monitor, nor of an executor, may depend on the working directory it
/// inherited. (Before, every CreateContainer failed: libcontainer's `failed to get cwd`.)
#[tokio::test]
async fn an_agent_started_from_a_directory_since_removed_still_runs_containers() {
    let _top = CgroupTop::new();
    let name = "gone-cwd";
    let _pods = PodCgroups(vec![name.to_string()]);
    let mut f = fixture().await;
    let cwd = berth_e2e::TempDir::new("berth-e2e-cwd");
    let gone = cwd.path().join("gone");
    std::fs::create_dir(&gone).unwrap();
    f.agent.restart_in(&gone).await;
    std::fs::remove_dir(&gone).unwrap();
    let mut c = f.agent.runtime().await;
    let pod_cfg = pod_config(&f, name);
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let id = create(
        &mut c,
        &pod,
        container_config(&f, "runs", &["sleep", "1000"]),
        pod_cfg,
    )
    .await;
    c.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer with the agent's directory gone: {e}"));
    assert_eq!(
        status(&mut c, &id).await.state,
        ContainerState::ContainerRunning as i32
    );
    // The first ExecSync starts its own executor, the next one is handed to the standby.
    for _ in 0..2 {
        let out = exec_sync(&mut c, &id, &["sh", "-c", "cd / && pwd"]).await;
        assert_eq!(out.exit_code, 0, "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "/\n");
    }
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, name);
}

/// RemoveImage racing a CreateContainer of that image must not take the layers the new
/// container's rootfs is being mounted on: the create either finds the image gone (NotFound,
/// nothing made) or succeeds with every file there (the layers are leased before the mount).
#[tokio::test]
async fn remove_image_racing_create_container_never_breaks_the_rootfs() {
    let OnePod {
        f,
        mut c,
        cfg: pod_cfg,
        pod,
        _pods,
        _top,
    } = one_pod("leased").await;
    let mut images = f.agent.image().await;
    let mut created = 0;
    for round in 0..10u32 {
        pull_ref(&f.agent, &f.image).await;
        let mut cfg = container_config(&f, "racer", &["sleep", "1000"]);
        cfg.metadata.as_mut().unwrap().attempt = round;
        let mut creator = c.clone();
        let create = creator.create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cfg),
            sandbox_config: Some(pod_cfg.clone()),
        });
        let remove = async {
            // Into the create, as far as a few milliseconds go.
            tokio::time::sleep(Duration::from_millis(u64::from(round))).await;
            images
                .remove_image(RemoveImageRequest {
                    image: Some(ImageSpec {
                        image: f.image.clone(),
                        ..Default::default()
                    }),
                })
                .await
        };
        let (created_result, removed) = tokio::join!(create, remove);
        removed.unwrap();
        let id = match created_result {
            Ok(r) => r.into_inner().container_id,
            // The image went first: the create is refused before anything is mounted.
            Err(e) if e.code() == tonic::Code::NotFound => continue,
            Err(e) => panic!("round {round}: the create failed on its way: {e:?}"),
        };
        created += 1;
        start(&mut c, &id).await;
        let out = exec_sync(&mut c, &id, &["ls", "/bin/busybox", "/etc/passwd"]).await;
        assert_eq!(
            out.exit_code,
            0,
            "round {round}: the rootfs lost its files: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        c.remove_container(RemoveContainerRequest { container_id: id })
            .await
            .unwrap();
    }
    eprintln!("{created} of 10 creates won the race");
    assert!(created > 0, "no create ever won the race");
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "leased");
}

/// kubelet after a node restart: 50 pods at once, each RunPodSandbox, CreateContainer and
/// StartContainer, and every call asked a second time as a retry would (RunPodSandbox returns
/// the same sandbox, the second create is told the name is taken, the second start finds it
/// running): exactly 50 pods, one running container each.
#[tokio::test]
async fn fifty_pods_at_once_asked_twice_make_fifty_pods_of_one_container() {
    use berth_e2e::network::{Extra, TestNetwork};
    let _top = CgroupTop::new();
    let names: Vec<String> = (0..50).map(|i| format!("burst-{i}")).collect();
    let _pods = PodCgroups(names.clone());
    let f = fixture().await;
    let net = TestNetwork::create(&f.agent.paths.cni_conf_dir, Extra::None);
    berth_e2e::cri::wait_network_ready(&mut f.agent.runtime().await).await;
    let c = f.agent.runtime().await;
    let one = |name: String| {
        let mut c = c.clone();
        let f = &f;
        async move {
            let mut cfg = pod_config(f, &name);
            pod_namespaces(&mut cfg).network = NamespaceMode::Pod as i32;
            let mut pods = Vec::new();
            let mut created = Vec::new();
            for _ in 0..2 {
                let pod = run_pod(&mut c, cfg.clone()).await;
                let request = CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(container_config(f, "main", &["sleep", "1000"])),
                    sandbox_config: Some(cfg.clone()),
                };
                match c.create_container(request).await {
                    Ok(r) => created.push(r.into_inner().container_id),
                    Err(e) => assert!(e.message().contains("reserved"), "{name}: {e:?}"),
                }
                if let Some(id) = created.first() {
                    let started = c
                        .start_container(StartContainerRequest {
                            container_id: id.clone(),
                        })
                        .await;
                    if let Err(e) = started {
                        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{name}: {e:?}");
                    }
                }
                pods.push(pod);
            }
            assert_eq!(
                pods[0], pods[1],
                "{name}: a retried RunPodSandbox made a second pod"
            );
            assert_eq!(created.len(), 1, "{name}: {created:?}");
            pods.remove(0)
        }
    };
    let pods = futures_util::future::join_all(names.iter().cloned().map(one)).await;
    let mut c = f.agent.runtime().await;
    let listed_pods = berth_e2e::cri::list_pods(&mut c).await;
    assert_eq!(listed_pods.len(), 50);
    let containers = c
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(containers.len(), 50);
    assert!(
        containers
            .iter()
            .all(|x| x.state == ContainerState::ContainerRunning as i32),
        "{containers:?}"
    );
    let per_pod: std::collections::HashSet<_> = containers
        .iter()
        .map(|x| x.pod_sandbox_id.clone())
        .collect();
    assert_eq!(per_pod.len(), 50);
    assert_eq!(net.leases().len(), 50, "one IP per pod");
    for pod in &pods {
        remove_pod(&mut c, pod).await;
    }
    assert_eq!(net.leases(), Vec::<String>::new());
    assert_clean(&f, "burst-0");
}

/// StopPodSandbox racing a CreateContainer in the same pod (kubelet tearing down a pod it was
/// still building): once the stop returns, nothing of the pod runs, whichever came first, and
/// the create either made a container the stop then stopped or was refused.
#[tokio::test]
async fn stop_pod_sandbox_racing_create_container_leaves_nothing_running() {
    let _top = CgroupTop::new();
    let names: Vec<String> = (0..8).map(|i| format!("stoprace-{i}")).collect();
    let _pods = PodCgroups(names.clone());
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    for (round, name) in names.iter().enumerate() {
        let pod_cfg = pod_config(&f, name);
        let pod = run_pod(&mut c, pod_cfg.clone()).await;
        let mut creator = c.clone();
        let create = creator.create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config(&f, "late", &["sleep", "1000"])),
            sandbox_config: Some(pod_cfg.clone()),
        });
        let mut stopper = c.clone();
        let stop = async {
            tokio::time::sleep(Duration::from_millis(round as u64 * 2)).await;
            stopper
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: pod.clone(),
                })
                .await
        };
        let (created, stopped) = tokio::join!(create, stop);
        stopped.unwrap();
        let running: Vec<(std::path::PathBuf, Vec<i32>)> = container_cgroups(name)
            .into_iter()
            .map(|d| {
                let procs = cgroup_procs(&d);
                (d, procs)
            })
            .filter(|(_, p)| !p.is_empty())
            .collect();
        assert!(
            running.is_empty(),
            "round {round} (create {}): processes after StopPodSandbox: {running:?}",
            if created.is_ok() {
                "succeeded"
            } else {
                "refused"
            }
        );
        if let Ok(r) = created {
            let s = status(&mut c, &r.into_inner().container_id).await;
            assert_ne!(s.state, ContainerState::ContainerRunning as i32);
        }
        remove_pod(&mut c, &pod).await;
        assert_clean(&f, name);
    }
}

/// The descriptors a process holds (but 0, 1 and 2, and /dev/null), as `readlink` names them.
fn held_descriptors(pid: i32) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) > Some(2))
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|l| l.display().to_string())
                .filter(|l| l != "/dev/null")
                .collect()
        })
        .unwrap_or_default()
}

/// A container that is created but not started waits in its init before execve, holding what
/// the executor inherited. It must hold nothing of its monitor's: with the monitor's listening
/// socket, a dead monitor's pod still accepted connections nobody would answer (the soak found
/// an agent start-up waiting two minutes on one), and the log file, signalfd and the other
/// containers' pipes were held by a process that has no use for them.
#[tokio::test]
async fn a_created_container_holds_none_of_its_monitors_descriptors() {
    let OnePod {
        f,
        mut c,
        cfg: pod_cfg,
        pod,
        _pods,
        _top,
    } = one_pod("fdhygiene").await;
    // A running neighbour, so the monitor holds another container's pipes too.
    let other = create(
        &mut c,
        &pod,
        container_config(&f, "other", &["sleep", "1000"]),
        pod_cfg.clone(),
    )
    .await;
    start(&mut c, &other).await;
    let id = create(
        &mut c,
        &pod,
        container_config(&f, "waiting", &["sleep", "1000"]),
        pod_cfg.clone(),
    )
    .await;
    let init = container_pid(&mut c, &id).await;
    let monitor = monitor_pid(&mut c, &pod).await;
    let shared: Vec<String> = held_descriptors(init)
        .intersection(&held_descriptors(monitor))
        .cloned()
        .collect();
    assert!(
        shared.is_empty(),
        "the created container's init holds its monitor's {shared:?}"
    );
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "fdhygiene");
}

/// A monitor that dies while it creates a container (made to SIGKILL itself right after the
/// executor built it) leaves the container's init waiting in its cgroup: the failed
/// CreateContainer must end it through the cgroup its record names, so that the pod then goes
/// without a trace.
#[tokio::test]
async fn a_monitor_dying_in_a_create_leaves_no_container_behind() {
    let _top = CgroupTop::new();
    let _pods = PodCgroups(vec!["monitorcrash".into()]);
    let mut f = fixture().await;
    f.agent.restart_crashing_at("monitor-created").await;
    let mut c = f.agent.runtime().await;
    let pod_cfg = pod_config(&f, "monitorcrash");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let err = c
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config(&f, "c", &["sleep", "1000"])),
            sandbox_config: Some(pod_cfg),
        })
        .await
        .expect_err("the monitor died answering");
    eprintln!("CreateContainer: {err:?}");
    let running: Vec<_> = container_cgroups("monitorcrash")
        .into_iter()
        .filter(|d| !cgroup_procs(d).is_empty())
        .collect();
    assert!(
        running.is_empty(),
        "a container init outlived the failed create: {running:?}"
    );
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "monitorcrash");
    let pod_cgroup = berth_e2e::pod_cgroup_path(&pod_parent("monitorcrash"));
    let left: Vec<_> = berth_e2e::cgroup_dirs(&pod_cgroup.to_string_lossy())
        .into_iter()
        .filter(|d| d.exists())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A full root does not keep berthd from starting, as it does not keep containerd: the agent
/// comes up and serves, and a pull fails on the full disk, then works once there is room. The
/// soak (its containers fill the root while the agent restarts) met a start that failed: the
/// agent removed its content store's ingest directory and made it again, and on a full disk
/// (and for good once an agent had died between the two) there was no room to make it.
#[tokio::test]
async fn the_agent_starts_on_a_full_root_and_pulls_once_there_is_room() {
    let registry = berth_e2e::registry::TestRegistry::start();
    let image = berth_e2e::images::ImageBuilder::busybox().push(&registry, "full/busybox", "v1");
    let (mut agent, _root) = berth_e2e::soak::agent_on_small_root(8).await;
    agent.stop();
    // An agent that died with its ingest directory removed and not yet made again.
    std::fs::remove_dir(agent.paths.root.join("content/ingest")).unwrap();
    let fill = agent.paths.root.join("fill");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&fill).unwrap();
        // Smaller and smaller writes until not one more block is free.
        for size in [1 << 20, 4096] {
            let chunk = vec![0u8; size];
            let full = loop {
                if let Err(e) = file.write_all(&chunk).and_then(|()| file.sync_all()) {
                    break e;
                }
            };
            assert_eq!(full.raw_os_error(), Some(libc::ENOSPC), "{full}");
        }
    }
    // And every inode.
    let files: Vec<_> = (0..)
        .map(|i| agent.paths.root.join(format!("f{i}")))
        .take_while(|f| std::fs::File::create(f).is_ok())
        .collect();
    assert_eq!(
        std::fs::create_dir(agent.paths.root.join("no-room"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOSPC),
        "the root has room for a directory: the test proves nothing"
    );
    agent.restart_with(nix::sys::signal::Signal::SIGTERM).await;
    let mut images = agent.image().await;
    let pull = |images: &mut berth_e2e::ImageClient| {
        let request = PullImageRequest {
            image: Some(ImageSpec {
                image: image.image_ref(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        };
        let mut images = images.clone();
        async move { images.pull_image(request).await }
    };
    let refused = pull(&mut images).await.unwrap_err();
    assert!(
        refused.message().contains("No space left on device"),
        "{refused:?}"
    );
    std::fs::remove_file(&fill).unwrap();
    for f in files {
        std::fs::remove_file(f).unwrap();
    }
    pull(&mut images).await.unwrap();
}
