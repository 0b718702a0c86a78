//! Containers through the CRI: a real berthd, its monitors and executor, real images.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth_e2e::images::ImageBuilder;
use berth_e2e::network::{mounts_under, processes_mentioning};
use berth_e2e::registry::TestRegistry;
use berth_e2e::{RuntimeClient, TempDir, TestAgent};
use k8s_cri::v1::*;

struct Fixture {
    agent: TestAgent,
    _registry: TestRegistry,
    image: String,
    logs: TempDir,
}

async fn fixture() -> Fixture {
    let registry = TestRegistry::start();
    let pushed = ImageBuilder::with_passwd().push(&registry, "test/ctr", "v1");
    let agent = TestAgent::start().await;
    agent
        .image()
        .await
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: pushed.image_ref(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    Fixture {
        agent,
        _registry: registry,
        image: pushed.image_ref(),
        logs: TempDir::new("berth-e2e-logs"),
    }
}

fn pod_config(f: &Fixture, name: &str) -> PodSandboxConfig {
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
            cgroup_parent: format!("/berth-e2e-{}/{name}", std::process::id()),
            ..berth_e2e::cri::pod_linux(berth_e2e::cri::namespaces(
                NamespaceMode::Node,
                NamespaceMode::Container,
                NamespaceMode::Pod,
            ))
        }),
        ..Default::default()
    }
}

fn container_config(f: &Fixture, name: &str, command: &[&str]) -> ContainerConfig {
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
        linux: Some(berth_e2e::cri::container_linux(berth_e2e::cri::namespaces(
            NamespaceMode::Node,
            NamespaceMode::Container,
            NamespaceMode::Pod,
        ))),
        ..Default::default()
    }
}

async fn run_pod(c: &mut RuntimeClient, config: PodSandboxConfig) -> String {
    c.run_pod_sandbox(RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .pod_sandbox_id
}

async fn create(
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

async fn status(c: &mut RuntimeClient, id: &str) -> ContainerStatus {
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

async fn wait_exited(c: &mut RuntimeClient, id: &str) -> ContainerStatus {
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

fn assert_clean(f: &Fixture, pod_name: &str) {
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
    let pod_cgroup = format!(
        "/sys/fs/cgroup/memory/berth-e2e-{}/{pod_name}",
        std::process::id()
    );
    let nested: Vec<_> = std::fs::read_dir(&pod_cgroup)
        .map(|r| {
            r.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    assert!(nested.is_empty(), "container cgroups left: {nested:?}");
}

struct CgroupTop;

impl Drop for CgroupTop {
    fn drop(&mut self) {
        for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let top = h.path().join(format!("berth-e2e-{}", std::process::id()));
            if let Ok(pods) = std::fs::read_dir(&top) {
                for pod in pods.flatten().filter(|p| p.path().is_dir()) {
                    let _ = std::fs::remove_dir(pod.path());
                }
            }
            let _ = std::fs::remove_dir(&top);
        }
    }
}

#[tokio::test]
async fn container_lifecycle_exit_codes_logs_and_status() {
    let _top = CgroupTop;
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let pod_cfg = pod_config(&f, "life");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;

    // Exit 1 with output; the status says Error with code 1.
    let mut cfg = container_config(
        &f,
        "fails",
        &["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 1"],
    );
    cfg.labels = HashMap::from([("role".to_string(), "test".to_string())]);
    let id = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
    assert_eq!(
        status(&mut c, &id).await.state,
        ContainerState::ContainerCreated as i32
    );
    c.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    let s = wait_exited(&mut c, &id).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (1, "Error"));
    assert!(s.started_at > 0 && s.finished_at >= s.started_at);
    let log = std::fs::read_to_string(&s.log_path).unwrap();
    assert!(
        log.contains(" stdout F to-stdout\n") && log.contains(" stderr F to-stderr\n"),
        "{log}"
    );
    assert_eq!(s.image_ref.len(), 71, "the image id");

    // Exit 0 → Completed; a non-root user from the image's /etc/passwd.
    let mut cfg = container_config(&f, "completes", &["sh", "-c", "id -u; id -g"]);
    cfg.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .run_as_username = "tester".into();
    let ok = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
    c.start_container(StartContainerRequest {
        container_id: ok.clone(),
    })
    .await
    .unwrap();
    let s = wait_exited(&mut c, &ok).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));
    let log = std::fs::read_to_string(&s.log_path).unwrap();
    assert!(log.contains(" stdout F 1000\n"), "uid of tester: {log}");

    // Read-only rootfs: writing fails.
    let mut cfg = container_config(
        &f,
        "readonly",
        &["sh", "-c", "touch /x && echo wrote || echo refused"],
    );
    cfg.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .readonly_rootfs = true;
    let ro = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
    c.start_container(StartContainerRequest {
        container_id: ro.clone(),
    })
    .await
    .unwrap();
    let s = wait_exited(&mut c, &ro).await;
    assert!(std::fs::read_to_string(&s.log_path)
        .unwrap()
        .contains(" stdout F refused\n"));

    // List filters.
    let list = c
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                label_selector: HashMap::from([("role".to_string(), "test".to_string())]),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, id);
    let by_pod = c
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                pod_sandbox_id: pod[..12].to_string(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(by_pod.len(), 3);

    // Stop and remove are idempotent; unknown ids are fine; the status of a removed one is NotFound.
    for x in [&id, &ok, &ro] {
        c.stop_container(StopContainerRequest {
            container_id: x.to_string(),
            timeout: 1,
        })
        .await
        .unwrap();
        c.remove_container(RemoveContainerRequest {
            container_id: x.to_string(),
        })
        .await
        .unwrap();
        c.remove_container(RemoveContainerRequest {
            container_id: x.to_string(),
        })
        .await
        .unwrap();
    }
    c.stop_container(StopContainerRequest {
        container_id: "feedbeef".into(),
        timeout: 1,
    })
    .await
    .unwrap();
    let err = c
        .container_status(ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    c.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
    assert_clean(&f, "life");
}

#[tokio::test]
async fn stop_sends_sigterm_then_sigkill_after_the_timeout() {
    let _top = CgroupTop;
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let pod_cfg = pod_config(&f, "stopper");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    // Traps SIGTERM and exits 0: graceful stop.
    let graceful = create(
        &mut c,
        &pod,
        container_config(
            &f,
            "graceful",
            &[
                "sh",
                "-c",
                "trap 'exit 0' TERM; while true; do sleep 0.1; done",
            ],
        ),
        pod_cfg.clone(),
    )
    .await;
    // Ignores SIGTERM: killed after the timeout.
    let stubborn = create(
        &mut c,
        &pod,
        container_config(
            &f,
            "stubborn",
            &["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"],
        ),
        pod_cfg.clone(),
    )
    .await;
    for id in [&graceful, &stubborn] {
        c.start_container(StartContainerRequest {
            container_id: id.to_string(),
        })
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.stop_container(StopContainerRequest {
        container_id: graceful.clone(),
        timeout: 10,
    })
    .await
    .unwrap();
    assert_eq!(status(&mut c, &graceful).await.exit_code, 0);
    let t = Instant::now();
    c.stop_container(StopContainerRequest {
        container_id: stubborn.clone(),
        timeout: 1,
    })
    .await
    .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(900));
    let s = status(&mut c, &stubborn).await;
    assert_eq!(s.exit_code, 137);
    // StopPodSandbox stops what still runs; RemovePodSandbox removes the containers.
    c.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    c.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
    let left = c
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(left.is_empty());
    assert_clean(&f, "stopper");
}

#[tokio::test]
async fn containers_and_their_logs_survive_an_agent_kill() {
    let _top = CgroupTop;
    let mut f = fixture().await;
    let mut c = f.agent.runtime().await;
    let pod_cfg = pod_config(&f, "survive");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let ticker = create(
        &mut c,
        &pod,
        container_config(
            &f,
            "ticker",
            &[
                "sh",
                "-c",
                "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.05; done",
            ],
        ),
        pod_cfg.clone(),
    )
    .await;
    let short = create(
        &mut c,
        &pod,
        container_config(&f, "short", &["sh", "-c", "sleep 1; exit 3"]),
        pod_cfg.clone(),
    )
    .await;
    for id in [&ticker, &short] {
        c.start_container(StartContainerRequest {
            container_id: id.to_string(),
        })
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.agent.stop_with(nix::sys::signal::Signal::SIGKILL);
    // While the agent is down the short one exits and the ticker keeps logging.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    f.agent
        .restart_with(nix::sys::signal::Signal::SIGKILL)
        .await;
    let mut c = f.agent.runtime().await;
    assert_eq!(
        status(&mut c, &ticker).await.state,
        ContainerState::ContainerRunning as i32
    );
    let s = status(&mut c, &short).await;
    assert_eq!(
        (s.state, s.exit_code, s.reason.as_str()),
        (ContainerState::ContainerExited as i32, 3, "Error")
    );
    c.stop_container(StopContainerRequest {
        container_id: ticker.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    let s = status(&mut c, &ticker).await;
    let log = std::fs::read_to_string(&s.log_path).unwrap();
    let ticks: Vec<u64> = log
        .lines()
        .filter_map(|l| l.rsplit("tick ").next()?.parse().ok())
        .collect();
    assert!(ticks.len() > 20, "{} ticks", ticks.len());
    for (i, t) in ticks.iter().enumerate() {
        assert_eq!(*t, i as u64, "no line lost or repeated across the restart");
    }
    c.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
    assert_clean(&f, "survive");
}

#[tokio::test]
async fn a_hundred_create_start_stop_remove_cycles_leave_nothing() {
    let _top = CgroupTop;
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let pod_cfg = pod_config(&f, "cycles");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    for i in 0..100 {
        let mut cfg = container_config(&f, "cycle", &["sleep", "30"]);
        cfg.metadata.as_mut().unwrap().attempt = i;
        let id = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
        c.start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
        c.stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
        c.remove_container(RemoveContainerRequest { container_id: id })
            .await
            .unwrap();
    }
    c.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
    assert_clean(&f, "cycles");
}

#[tokio::test]
async fn exec_sync_returns_output_and_code_and_times_out() {
    let _top = CgroupTop;
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let pod_cfg = pod_config(&f, "execs");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let id = create(
        &mut c,
        &pod,
        container_config(&f, "target", &["sleep", "1000"]),
        pod_cfg.clone(),
    )
    .await;
    let exec = |cmd: &[&str], timeout: i64| ExecSyncRequest {
        container_id: id.clone(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout,
    };
    let err = c.exec_sync(exec(&["true"], 5)).await.unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::FailedPrecondition,
        "not started yet: {err:?}"
    );
    c.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    let r = c
        .exec_sync(exec(&["sh", "-c", "echo out; echo err >&2; exit 3"], 10))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code),
        (&b"out\n"[..], &b"err\n"[..], 3)
    );
    let err = c.exec_sync(exec(&["sleep", "60"], 1)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
    assert!(err.message().contains("timed out"), "{}", err.message());
    for _ in 0..50 {
        assert_eq!(
            c.exec_sync(exec(&["true"], 10))
                .await
                .unwrap()
                .into_inner()
                .exit_code,
            0
        );
    }
    c.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
    assert_clean(&f, "execs");
}

#[tokio::test]
async fn update_container_resources_changes_the_live_cgroup() {
    let _top = CgroupTop;
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let pod_cfg = pod_config(&f, "resize");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let id = create(
        &mut c,
        &pod,
        container_config(&f, "sleeper", &["sleep", "1000"]),
        pod_cfg.clone(),
    )
    .await;
    c.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    let update = |linux: LinuxContainerResources| UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(linux),
        ..Default::default()
    };
    let cgroup = |controller: &str, file: &str| {
        let path = format!(
            "/sys/fs/cgroup/{controller}/berth-e2e-{}/resize/{id}/{file}",
            std::process::id()
        );
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .to_string()
    };
    c.update_container_resources(update(LinuxContainerResources {
        cpu_shares: 512,
        cpu_quota: 50_000,
        cpu_period: 100_000,
        memory_limit_in_bytes: 64 << 20,
        oom_score_adj: 500,
        ..Default::default()
    }))
    .await
    .unwrap();
    assert_eq!(cgroup("cpu", "cpu.shares"), "512");
    assert_eq!(cgroup("cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(cgroup("cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(cgroup("memory", "memory.limit_in_bytes"), "67108864");
    let linux = status(&mut c, &id).await.resources.unwrap().linux.unwrap();
    assert_eq!(
        (
            linux.cpu_shares,
            linux.cpu_quota,
            linux.cpu_period,
            linux.memory_limit_in_bytes,
            linux.oom_score_adj
        ),
        (512, 50_000, 100_000, 64 << 20, 500)
    );
    let verbose = c
        .container_status(ContainerStatusRequest {
            container_id: id.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner()
        .info;
    let info: serde_json::Value = serde_json::from_str(&verbose["info"]).unwrap();
    let pid = info["pid"].as_i64().unwrap();
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
            .unwrap()
            .trim(),
        "500"
    );

    // Zero fields keep their values; the kernel refuses a limit below what `sleep` uses (no
    // swap to push it to) and the error names the file and the value; the record is unchanged.
    let err = c
        .update_container_resources(update(LinuxContainerResources {
            memory_limit_in_bytes: 4096,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("memory.limit_in_bytes") && err.message().contains("4096"),
        "{err:?}"
    );
    assert_eq!(cgroup("memory", "memory.limit_in_bytes"), "67108864");
    assert_eq!(cgroup("cpu", "cpu.shares"), "512");
    let linux = status(&mut c, &id).await.resources.unwrap().linux.unwrap();
    assert_eq!(linux.memory_limit_in_bytes, 64 << 20);

    let err = c
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: "feedbeef".into(),
            linux: Some(LinuxContainerResources::default()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    c.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    let err = c
        .update_container_resources(update(LinuxContainerResources {
            cpu_shares: 256,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    c.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
    assert_clean(&f, "resize");
}

#[tokio::test]
async fn oom_kill_user_reopen_log_and_metrics() {
    let _top = CgroupTop;
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let pod_cfg = pod_config(&f, "oomlog");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;

    // OOM-killed under a 16 MiB limit: reason OOMKilled, counted.
    let mut cfg = container_config(
        &f,
        "hog",
        &["sh", "-c", "x=aaaaaaaa; while true; do x=$x$x; done"],
    );
    cfg.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: 16 * 1024 * 1024,
        ..Default::default()
    });
    let hog = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
    c.start_container(StartContainerRequest {
        container_id: hog.clone(),
    })
    .await
    .unwrap();
    let s = wait_exited(&mut c, &hog).await;
    assert_eq!(s.reason, "OOMKilled", "{s:?}");
    let _ = c
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap();
    assert_eq!(f.agent.metric("berth_container_oom_kills_total"), 1.0);
    assert_eq!(f.agent.metric(r#"berth_containers{state="exited"}"#), 1.0);

    // The user the process runs as, resolved from the image's /etc/passwd.
    let mut cfg = container_config(
        &f,
        "writer",
        &[
            "sh",
            "-c",
            "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.05; done",
        ],
    );
    cfg.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .run_as_username = "tester".into();
    let writer = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
    c.start_container(StartContainerRequest {
        container_id: writer.clone(),
    })
    .await
    .unwrap();
    let s = status(&mut c, &writer).await;
    let user = s.user.unwrap().linux.unwrap();
    assert_eq!((user.uid, user.gid), (1000, 1000));

    // kubelet's rotation: rename the file, then ReopenContainerLog; new lines go to a new file.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rotated = format!("{}.1", s.log_path);
    std::fs::rename(&s.log_path, &rotated).unwrap();
    c.reopen_container_log(ReopenContainerLogRequest {
        container_id: writer.clone(),
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.stop_container(StopContainerRequest {
        container_id: writer.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    let old = std::fs::read_to_string(&rotated).unwrap();
    let new = std::fs::read_to_string(&s.log_path).unwrap();
    let numbers = |text: &str| -> Vec<u64> {
        text.lines()
            .filter_map(|l| l.rsplit("line ").next()?.parse().ok())
            .collect()
    };
    let (old, new) = (numbers(&old), numbers(&new));
    assert!(
        !old.is_empty() && !new.is_empty(),
        "old {old:?} new {new:?}"
    );
    let all: Vec<u64> = old.iter().chain(new.iter()).copied().collect();
    assert_eq!(
        all,
        (0..all.len() as u64).collect::<Vec<_>>(),
        "nothing lost or repeated across the reopen"
    );
    let err = c
        .reopen_container_log(ReopenContainerLogRequest {
            container_id: writer.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    let _ = c
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap();
    assert!(f.agent.metric("berth_container_log_bytes_total") > 0.0);

    c.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
    assert_clean(&f, "oomlog");
}

#[tokio::test]
async fn stdin_is_an_open_pipe_only_when_asked_for() {
    let _top = CgroupTop;
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let pod_cfg = pod_config(&f, "stdin");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let reader = |stdin: bool, name: &str| {
        let mut cfg = container_config(&f, name, &["sh", "-c", "read line; echo got-eof"]);
        cfg.stdin = stdin;
        cfg
    };
    let with = create(&mut c, &pod, reader(true, "with-stdin"), pod_cfg.clone()).await;
    let without = create(
        &mut c,
        &pod,
        reader(false, "without-stdin"),
        pod_cfg.clone(),
    )
    .await;
    for id in [&with, &without] {
        c.start_container(StartContainerRequest {
            container_id: id.to_string(),
        })
        .await
        .unwrap();
    }
    // Without stdin, `read` sees EOF at once; with it, it waits on the open pipe.
    assert_eq!(wait_exited(&mut c, &without).await.exit_code, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        status(&mut c, &with).await.state,
        ContainerState::ContainerRunning as i32
    );
    c.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
    assert_clean(&f, "stdin");
}

#[tokio::test]
async fn tty_containers_run_on_a_terminal_and_log_one_stream() {
    let _top = CgroupTop;
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let pod_cfg = pod_config(&f, "tty");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let mut cfg = container_config(
        &f,
        "term",
        &["sh", "-c", "test -t 1 && echo is-a-tty; echo to-stderr >&2"],
    );
    cfg.tty = true;
    let id = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
    c.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    let s = wait_exited(&mut c, &id).await;
    assert_eq!(s.exit_code, 0);
    // The monitor may still be draining the terminal when the exit is recorded.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = std::fs::read_to_string(&s.log_path).unwrap();
    assert!(log.contains(" stdout F is-a-tty\n"), "{log}");
    assert!(
        log.contains(" stdout F to-stderr\n"),
        "a terminal has one stream: {log}"
    );
    c.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
    assert_clean(&f, "tty");
}

#[tokio::test]
async fn bind_mounts_reach_the_host_and_missing_sources_are_created() {
    let _top = CgroupTop;
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let pod_cfg = pod_config(&f, "mounts");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let shared = f.logs.path().join("shared-dir");
    let readonly = f.logs.path().join("ro-dir");
    std::fs::create_dir_all(&readonly).unwrap();
    std::fs::write(readonly.join("given"), "from the host\n").unwrap();
    let mut cfg = container_config(
        &f,
        "mounter",
        &["sh", "-c", "echo hi > /data/out; cat /ro/given; touch /ro/x 2>/dev/null && echo ro-writable || echo ro-refused"],
    );
    cfg.mounts = vec![
        Mount {
            container_path: "/data".into(),
            host_path: shared.display().to_string(),
            ..Default::default()
        },
        Mount {
            container_path: "/ro".into(),
            host_path: readonly.display().to_string(),
            readonly: true,
            ..Default::default()
        },
    ];
    let id = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
    c.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    let s = wait_exited(&mut c, &id).await;
    assert_eq!(s.exit_code, 0);
    assert_eq!(std::fs::read_to_string(shared.join("out")).unwrap(), "hi\n");
    let log = std::fs::read_to_string(&s.log_path).unwrap();
    assert!(
        log.contains(" stdout F from the host\n") && log.contains(" stdout F ro-refused\n"),
        "{log}"
    );
    assert_eq!(s.mounts.len(), 2);
    c.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
    assert_clean(&f, "mounts");
}

#[tokio::test]
async fn a_container_holds_no_descriptor_of_another() {
    let _top = CgroupTop;
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let pod_cfg = pod_config(&f, "fds");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let first = create(
        &mut c,
        &pod,
        container_config(&f, "first", &["sleep", "1000"]),
        pod_cfg.clone(),
    )
    .await;
    c.start_container(StartContainerRequest {
        container_id: first.clone(),
    })
    .await
    .unwrap();
    let second = create(
        &mut c,
        &pod,
        container_config(
            &f,
            "second",
            &["sh", "-c", "ls /proc/self/fd | tr '\\n' ' '; echo"],
        ),
        pod_cfg.clone(),
    )
    .await;
    c.start_container(StartContainerRequest {
        container_id: second.clone(),
    })
    .await
    .unwrap();
    let s = wait_exited(&mut c, &second).await;
    let log = std::fs::read_to_string(&s.log_path).unwrap();
    // stdin, stdout, stderr, and the directory `ls` itself opened.
    assert!(log.contains(" stdout F 0 1 2 3 \n"), "{log}");
    c.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
    assert_clean(&f, "fds");
}

#[tokio::test]
async fn privileged_containers_need_a_privileged_pod() {
    let _top = CgroupTop;
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let plain_cfg = pod_config(&f, "plainpod");
    let plain = run_pod(&mut c, plain_cfg.clone()).await;
    let mut privileged_ctr =
        container_config(&f, "priv", &["sh", "-c", "grep CapEff /proc/self/status"]);
    privileged_ctr
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .privileged = true;
    let err = c
        .create_container(CreateContainerRequest {
            pod_sandbox_id: plain.clone(),
            config: Some(privileged_ctr.clone()),
            sandbox_config: Some(plain_cfg),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let mut priv_cfg = pod_config(&f, "privpod");
    priv_cfg
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .privileged = true;
    let privileged_pod = run_pod(&mut c, priv_cfg.clone()).await;
    let id = create(&mut c, &privileged_pod, privileged_ctr, priv_cfg).await;
    c.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    let s = wait_exited(&mut c, &id).await;
    assert_eq!(s.exit_code, 0);
    for pod in [plain, privileged_pod] {
        c.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .unwrap();
    }
    assert_clean(&f, "plainpod");
    assert_clean(&f, "privpod");
}

#[tokio::test]
async fn host_to_container_propagation_needs_a_slave_or_shared_source() {
    let _top = CgroupTop;
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let pod_cfg = pod_config(&f, "propagation");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    // A private tmpfs as the source, whatever the host's own propagation is.
    let source = f.logs.path().join("private-source");
    std::fs::create_dir_all(&source).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &source,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(source.clone());
    nix::mount::mount(
        None::<&str>,
        &source,
        None::<&str>,
        nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .unwrap();
    let mut cfg = container_config(&f, "rslave", &["true"]);
    cfg.mounts = vec![Mount {
        container_path: "/data".into(),
        host_path: source.display().to_string(),
        propagation: MountPropagation::PropagationHostToContainer as i32,
        ..Default::default()
    }];
    // Nothing could propagate from a private mount, so (as containerd) it is refused.
    let err = c
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cfg),
            sandbox_config: Some(pod_cfg),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("not a shared or slave mount"),
        "{}",
        err.message()
    );
    c.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
    assert_clean(&f, "propagation");
}

#[tokio::test]
async fn removing_the_image_of_a_running_container_keeps_its_rootfs() {
    let _top = CgroupTop;
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let pod_cfg = pod_config(&f, "imagegone");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let id = create(
        &mut c,
        &pod,
        container_config(&f, "keeps", &["sleep", "1000"]),
        pod_cfg.clone(),
    )
    .await;
    c.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    f.agent
        .image()
        .await
        .remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: f.image.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let snapshots = f.agent.paths.root.join("snapshots");
    assert!(
        std::fs::read_dir(&snapshots).unwrap().count() > 0,
        "the running container's layers stay"
    );
    let r = c
        .exec_sync(ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["cat".into(), "/etc/passwd".into()],
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.exit_code, 0);
    assert!(String::from_utf8_lossy(&r.stdout).contains("tester"));
    // Once the container goes, so do the layers nothing else uses.
    c.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_dir(&snapshots).unwrap().count(),
        0,
        "released layers are collected"
    );
    assert_clean(&f, "imagegone");
}
