//! Containers through the CRI: lifecycle, exit codes and logs, stop, restart survival and
//! leak-free cycles. A real berthd, its monitors and executor, real images.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth_e2e::container_fixture::*;
use k8s_cri::v1::*;

#[tokio::test]
async fn container_lifecycle_exit_codes_logs_and_status() {
    let _top = CgroupTop::new();
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
    start(&mut c, &id).await;
    let s = wait_exited(&mut c, &id).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (1, "Error"));
    assert!(s.started_at > 0 && s.finished_at >= s.started_at);
    let log = std::fs::read_to_string(&s.log_path).unwrap();
    assert!(
        log.contains(" stdout F to-stdout\n") && log.contains(" stderr F to-stderr\n"),
        "{log}"
    );
    // The image as ImageStatus names it: its id, and the reference it was asked by.
    let image = f
        .agent
        .image()
        .await
        .image_status(ImageStatusRequest {
            image: Some(ImageSpec {
                image: f.image.clone(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert_eq!(s.image_ref, image.id, "the image id");
    assert_eq!(
        s.image.as_ref().map(|i| i.image.as_str()),
        Some(f.image.as_str())
    );

    // Exit 0 → Completed; a non-root user from the image's /etc/passwd.
    let mut cfg = container_config(&f, "completes", &["sh", "-c", "id -u; id -g"]);
    run_as(&mut cfg, "tester");
    let ok = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
    start(&mut c, &ok).await;
    let s = wait_exited(&mut c, &ok).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));
    let log = std::fs::read_to_string(&s.log_path).unwrap();
    assert!(log.contains(" stdout F 1000\n"), "uid of tester: {log}");

    // A group without a user (the image's is root by default) is refused, as containerd and
    // critest have it, and leaves no container behind (the pod's count below stays 3).
    let mut cfg = container_config(&f, "group-only", &["id"]);
    let security = cfg
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap();
    security.run_as_group = Some(Int64Value { value: 1002 });
    let err = create_refused(&mut c, &pod, cfg, pod_cfg.clone()).await;
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .contains("user group is specified without user"),
        "{}",
        err.message()
    );

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
    start(&mut c, &ro).await;
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
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "life");
}

#[tokio::test]
async fn stop_sends_sigterm_then_sigkill_after_the_timeout() {
    let _top = CgroupTop::new();
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
                "trap 'exit 0' TERM; echo ready; while true; do sleep 0.1; done",
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
            &[
                "sh",
                "-c",
                "trap 'echo got-term' TERM; echo ready; while true; do sleep 0.1; done",
            ],
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
    // Signals only once the shells have set their traps.
    for id in [&graceful, &stubborn] {
        let log = status(&mut c, id).await.log_path;
        wait_for_text(&log, "ready", |t| t.contains(" F ready\n")).await;
    }
    c.stop_container(StopContainerRequest {
        container_id: graceful.clone(),
        timeout: 10,
    })
    .await
    .unwrap();
    assert_eq!(status(&mut c, &graceful).await.exit_code, 0);
    c.stop_container(StopContainerRequest {
        container_id: stubborn.clone(),
        timeout: 1,
    })
    .await
    .unwrap();
    // SIGTERM first (it said so, and lived on), SIGKILL once the timeout passed.
    let s = status(&mut c, &stubborn).await;
    assert_eq!(s.exit_code, 137);
    let log = std::fs::read_to_string(&s.log_path).unwrap();
    assert!(log.contains(" F got-term\n"), "{log}");
    // StopPodSandbox stops what still runs; RemovePodSandbox removes the containers.
    c.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    remove_pod(&mut c, &pod).await;
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
    let _top = CgroupTop::new();
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
    let ticker_log = status(&mut c, &ticker).await.log_path;
    let tick_count = |t: &str| t.matches("tick ").count();
    let before = tick_count(&wait_for_text(&ticker_log, "ticked", |t| tick_count(t) >= 5).await);
    let short_exit = f
        .agent
        .paths
        .state
        .join("containers")
        .join(&short)
        .join("exit.json");
    f.agent.stop_with(nix::sys::signal::Signal::SIGKILL);
    // While the agent is down the short one exits and the ticker keeps logging.
    wait_for_text(&ticker_log, "logged on", |t| tick_count(t) >= before + 20).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !short_exit.exists() {
        assert!(
            Instant::now() < deadline,
            "the short container never exited"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "survive");
}

#[tokio::test]
async fn a_hundred_create_start_stop_remove_cycles_leave_nothing() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let _cgroups = PodCgroups(vec!["cycles".into()]);
    let pod_cfg = pod_config(&f, "cycles");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let leaks = PodLeakCheck::new(&mut c, &pod, "cycles").await;
    for i in 0..100 {
        let mut cfg = container_config(&f, "cycle", &["sleep", "30"]);
        cfg.metadata.as_mut().unwrap().attempt = i;
        let id = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
        start(&mut c, &id).await;
        c.stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
        c.remove_container(RemoveContainerRequest { container_id: id })
            .await
            .unwrap();
        if i % 10 == 0 || i == 99 {
            leaks.assert_nothing_left(&f, &format!("after cycle {i}"));
        }
    }
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "cycles");
}

/// With the host's or the pod's PID namespace, the kernel does not end a container's other
/// processes when its init dies: berth must, as containerd does, or they run on after
/// StopContainer, out of anyone's sight.
#[tokio::test]
async fn a_stopped_container_leaves_no_process_whatever_its_pid_namespace() {
    let _top = CgroupTop::new();
    let _pods = PodCgroups(vec!["pidhost".into(), "pidpod".into(), "pidown".into()]);
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    for (name, mode) in [
        ("pidhost", NamespaceMode::Node),
        ("pidpod", NamespaceMode::Pod),
        ("pidown", NamespaceMode::Container),
    ] {
        let mut pod_cfg = pod_config(&f, name);
        pod_namespaces(&mut pod_cfg).pid = mode as i32;
        let pod = run_pod(&mut c, pod_cfg.clone()).await;
        // The init leaves a child behind when it is killed.
        let mut cfg = container_config(&f, "forks", &["sh", "-c", "sleep 1001 & exec sleep 1002"]);
        container_namespaces(&mut cfg).pid = mode as i32;
        eprintln!("case {name}");
        let id = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
        start(&mut c, &id).await;
        let cgroup = berth_e2e::cgroup_dir("pids", &container_cgroup(name, &id).to_string_lossy());
        let deadline = Instant::now() + Duration::from_secs(20);
        while cgroup_procs(&cgroup).len() < 2 {
            assert!(Instant::now() < deadline, "{name}: both sleeps never ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        c.stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
        let s = status(&mut c, &id).await;
        assert_eq!(s.state, ContainerState::ContainerExited as i32, "{name}");
        assert_eq!(
            cgroup_procs(&cgroup),
            Vec::<i32>::new(),
            "{name}: processes left in the stopped container's cgroup"
        );
        remove_pod(&mut c, &pod).await;
        assert_clean(&f, name);
    }
}

/// A container in the pod's PID namespace has a pid there that names some other process, or none,
/// in the host's /proc. libcontainer's v1 /sys/fs/cgroup emulation looked its own pid up there,
/// and its create failed ("failed to prepare rootfs") whenever the host had no such pid.
/// Whatever pid it gets, it starts, and /sys/fs/cgroup shows its own cgroup.
#[tokio::test]
async fn containers_in_the_pod_pid_namespace_start_whatever_pid_they_get() {
    let _top = CgroupTop::new();
    let _pods = PodCgroups(vec!["pidgaps".into()]);
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let mut pod_cfg = pod_config(&f, "pidgaps");
    pod_namespaces(&mut pod_cfg).pid = NamespaceMode::Pod as i32;
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let limit = 48u64 << 20;
    // Pids in the pod's namespace count up from 2; stop after two that the host has not.
    let mut unknown_to_the_host = Vec::new();
    for round in 0..40 {
        if unknown_to_the_host.len() == 2 {
            break;
        }
        let mut cfg = container_config(&f, &format!("gap{round}"), &["sleep", "1000"]);
        container_namespaces(&mut cfg).pid = NamespaceMode::Pod as i32;
        cfg.linux.get_or_insert_with(Default::default).resources = Some(LinuxContainerResources {
            memory_limit_in_bytes: limit as i64,
            ..Default::default()
        });
        let id = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
        start(&mut c, &id).await;
        let host_pid = container_pid(&mut c, &id).await;
        let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).unwrap();
        let pod_pid: i32 = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|p| p.parse().ok())
            .unwrap();
        if !std::path::Path::new(&format!("/proc/{pod_pid}")).exists() {
            unknown_to_the_host.push(pod_pid);
        }
        let shown = exec_sync(
            &mut c,
            &id,
            &[
                "sh",
                "-c",
                "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
            ],
        )
        .await;
        assert_eq!(
            String::from_utf8_lossy(&shown.stdout).trim(),
            limit.to_string(),
            "pid {pod_pid} in the pod: /sys/fs/cgroup is not its own cgroup"
        );
        stop_and_remove(&mut c, &id).await;
    }
    assert_eq!(
        unknown_to_the_host.len(),
        2,
        "no pod pid was one the host lacks: the case was not exercised"
    );
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "pidgaps");
}

/// The monitor writes logs as root, so the path kubelet names must stay inside the pod's log
/// directory: an absolute `log_path` or one with `..` is refused before anything is made, and a
/// symlink planted at the log path is not followed (the file it points at stays as it was).
#[tokio::test]
async fn log_paths_stay_inside_the_pod_log_directory_and_follow_no_symlink() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let pod_cfg = pod_config(&f, "logpaths");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let create = |log_path: &str| {
        let mut cfg = container_config(&f, "logger", &["echo", "written"]);
        cfg.log_path = log_path.into();
        CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cfg),
            sandbox_config: Some(pod_cfg.clone()),
        }
    };
    let outside = berth_e2e::TempDir::new("berth-e2e-victim");
    let victim = outside.path().join("victim");
    std::fs::write(&victim, "victim\n").unwrap();
    for bad in [
        victim.display().to_string(),
        "../escaped.log".to_string(),
        "logger/../../escaped.log".to_string(),
    ] {
        let err = c.create_container(create(&bad)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}: {err:?}");
        assert!(err.message().contains("log_path"), "{}", err.message());
    }
    assert!(!f.logs.path().join("escaped.log").exists());

    let planted = f.logs.path().join("logpaths/planted");
    std::fs::create_dir_all(&planted).unwrap();
    std::os::unix::fs::symlink(&victim, planted.join("0.log")).unwrap();
    let created = c.create_container(create("planted/0.log")).await;
    if let Ok(id) = created {
        // Refused at start at the latest; either way nothing reaches the victim.
        let id = id.into_inner().container_id;
        let started = c
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await;
        assert!(
            started.is_err(),
            "a container logging through a symlink started"
        );
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "victim\n");
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "logpaths");
}

#[tokio::test]
async fn an_idle_monitor_gives_back_the_pages_its_work_touched_and_still_runs_containers() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let pod_cfg = pod_config(&f, "trim");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let sleeper = create(
        &mut c,
        &pod,
        container_config(&f, "sleeper", &["sleep", "3600"]),
        pod_cfg.clone(),
    )
    .await;
    start(&mut c, &sleeper).await;
    let monitor = monitor_pid(&mut c, &pod).await;

    // The set-up and the container's create and start took the monitor to its peak; idle, it
    // unmaps what they touched.
    let (rss, peak) = wait_trimmed(monitor as u32, "the monitor").await;
    eprintln!("monitor: {rss} KiB resident after its {peak} KiB peak");

    // What it unmapped comes back as it is needed: the same monitor creates, starts, logs and
    // reaps a container, and stops the first one.
    let id = create(
        &mut c,
        &pod,
        container_config(&f, "after", &["sh", "-c", "echo after-trim; exit 3"]),
        pod_cfg.clone(),
    )
    .await;
    start(&mut c, &id).await;
    let s = wait_exited(&mut c, &id).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (3, "Error"));
    let log = std::fs::read_to_string(&s.log_path).unwrap();
    assert!(log.contains(" stdout F after-trim\n"), "{log}");
    assert_eq!(monitor_pid(&mut c, &pod).await, monitor);
    stop_and_remove(&mut c, &sleeper).await;

    // The agent reports the ready pods' monitors (read every 10 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    while f.agent.metric("berth_monitor_memory_bytes{kind=\"rss\"}") < 4096.0 {
        assert!(Instant::now() < deadline, "{}", f.agent.scrape());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(f.agent.metric("berth_monitor_memory_bytes{kind=\"pss\"}") > 0.0);
    stop_and_remove(&mut c, &id).await;
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "trim");
}
