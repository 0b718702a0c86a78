//! Containers through the CRI: resource updates on the live cgroup, OOM kills, the process user,
//! log reopening, the container metrics, and the cgroup statistics of a running container.

use std::time::{Duration, Instant};

use berth_e2e::container_fixture::*;
use k8s_cri::v1::*;

#[tokio::test]
async fn update_container_resources_changes_the_live_cgroup() {
    let _top = CgroupTop::new();
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
    start(&mut c, &id).await;
    let update = |linux: LinuxContainerResources| UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(linux),
        ..Default::default()
    };
    let cgroup = |controller: &str, file: &str| {
        let path = berth_e2e::cgroup_dir(
            controller,
            &container_cgroup("resize", &id).to_string_lossy(),
        )
        .join(file);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_string()
    };
    // The files the limits below land in: v1's, or v2's (cpu.weight from shares on the curve
    // runc, libcontainer and kubelet share: 512 → 59).
    let v2 = berth_e2e::memory_on_v2();
    let memory_file = if v2 {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    let assert_cpu = |shares_v1: &str, weight_v2: &str| {
        if v2 {
            assert_eq!(cgroup("cpu", "cpu.weight"), weight_v2);
            assert_eq!(cgroup("cpu", "cpu.max"), "50000 100000");
        } else {
            assert_eq!(cgroup("cpu", "cpu.shares"), shares_v1);
            assert_eq!(cgroup("cpu", "cpu.cfs_quota_us"), "50000");
            assert_eq!(cgroup("cpu", "cpu.cfs_period_us"), "100000");
        }
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
    assert_cpu("512", "59");
    assert_eq!(cgroup("memory", memory_file), "67108864");
    if v2 {
        // v2 only: memory+swap becomes memory.swap.max (their difference), and unified keys
        // are written as they come.
        c.update_container_resources(update(LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            memory_swap_limit_in_bytes: 96 << 20,
            unified: [("memory.high".to_string(), "50331648".to_string())].into(),
            ..Default::default()
        }))
        .await
        .unwrap();
        assert_eq!(
            cgroup("memory", "memory.swap.max"),
            (32u64 << 20).to_string()
        );
        assert_eq!(cgroup("memory", "memory.high"), "50331648");
    }
    if berth_e2e::cgroup_driver() == berth_runtime::CgroupDriver::Systemd {
        // systemd writes a unit's properties back into its cgroup on every reload: the update
        // must be in the scope's properties, not only in its files.
        let reload = std::process::Command::new("systemctl")
            .arg("daemon-reload")
            .status()
            .unwrap();
        assert!(reload.success());
        assert_cpu("512", "59");
        assert_eq!(
            cgroup("memory", memory_file),
            "67108864",
            "after daemon-reload"
        );
        assert_eq!(
            cgroup("memory", "memory.high"),
            "50331648",
            "after daemon-reload"
        );
    }
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
        err.message().contains(memory_file) && err.message().contains("4096"),
        "{err:?}"
    );
    assert_eq!(cgroup("memory", memory_file), "67108864");
    assert_cpu("512", "59");
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
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "resize");
}

/// libcgroups' systemd manager leaves its D-Bus connection open, and systemd writes every unit
/// signal down every connection on its private socket: one nobody reads fills, and past 1024
/// queued messages systemd stops dispatching its bus queue, so `systemctl daemon-reload` (and
/// every job waiter) hangs. The agent (after resource updates), a pod's monitor (after making its
/// scope) and a container (whose scope libcontainer made) must keep none.
#[tokio::test]
async fn neither_the_agent_nor_a_monitor_keeps_a_connection_to_systemd() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let pod_cfg = pod_config(&f, "nobus");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let id = create(
        &mut c,
        &pod,
        container_config(&f, "sleeper", &["sleep", "1000"]),
        pod_cfg.clone(),
    )
    .await;
    start(&mut c, &id).await;
    for cpu_shares in [512, 256, 768] {
        c.update_container_resources(UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(LinuxContainerResources {
                cpu_shares,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let monitor = monitor_pid(&mut c, &pod).await;
    let init = container_pid(&mut c, &id).await;
    let agent = bus_connections(f.agent.pid() as i32);
    let monitors = bus_connections(monitor);
    let inits = bus_connections(init);
    remove_pod(&mut c, &pod).await;
    assert_eq!(
        agent,
        Vec::<String>::new(),
        "the agent's connections to systemd"
    );
    assert_eq!(
        monitors,
        Vec::<String>::new(),
        "the monitor's connections to systemd"
    );
    assert_eq!(
        inits,
        Vec::<String>::new(),
        "the container's connections to systemd"
    );
    assert_clean(&f, "nobus");
}

#[tokio::test]
async fn oom_kill_user_reopen_log_and_metrics() {
    let _top = CgroupTop::new();
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
    start(&mut c, &hog).await;
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
    run_as(&mut cfg, "tester");
    let writer = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
    start(&mut c, &writer).await;
    let s = status(&mut c, &writer).await;
    let user = s.user.unwrap().linux.unwrap();
    assert_eq!((user.uid, user.gid), (1000, 1000));

    // kubelet's rotation: rename the file, then ReopenContainerLog; new lines go to a new file.
    wait_for_text(&s.log_path, "logged", |t| t.contains("line ")).await;
    let rotated = format!("{}.1", s.log_path);
    std::fs::rename(&s.log_path, &rotated).unwrap();
    c.reopen_container_log(ReopenContainerLogRequest {
        container_id: writer.clone(),
    })
    .await
    .unwrap();
    wait_for_text(&s.log_path, "logged after the reopen", |t| {
        t.contains("line ")
    })
    .await;
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

    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "oomlog");
}

/// Under the systemd driver a container's scope, with its `memory.events`, is removed by systemd
/// as soon as its last process has exited, and that can come before the monitor reaps the init:
/// the kill's own notification is rate-limited by the kernel and lost with the file. A stopped
/// monitor makes that order certain: the hog is killed, systemd removes the scope, and only
/// then does the monitor run again. The kill is still reported, from the pod cgroup's
/// hierarchical count. Under cgroupfs the container's cgroup stays until RemoveContainer, and
/// the late reap reads it.
#[tokio::test]
async fn an_oom_kill_is_reported_though_the_container_cgroup_went_before_the_reap() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let pod_cfg = pod_config(&f, "oomlate");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let monitor = nix::unistd::Pid::from_raw(monitor_pid(&mut c, &pod).await);
    let mut cfg = container_config(
        &f,
        "hog",
        &[
            "sh",
            "-c",
            "sleep 0.5; x=aaaaaaaa; while true; do x=$x$x; done",
        ],
    );
    cfg.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: 16 * 1024 * 1024,
        ..Default::default()
    });
    let hog = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
    start(&mut c, &hog).await;
    let memory = berth_e2e::cgroup_dir(
        "memory",
        &container_cgroup("oomlate", &hog).to_string_lossy(),
    );
    // The monitor stops before the hog begins to grow (after its half second of sleep).
    nix::sys::signal::kill(monitor, nix::sys::signal::Signal::SIGSTOP).unwrap();
    /// Continues the monitor when dropped, a failed assertion's unwinding included.
    struct Resume(nix::unistd::Pid);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
        }
    }
    let resume = Resume(monitor);
    let deadline = Instant::now() + Duration::from_secs(30);
    let systemd = berth_e2e::cgroup_driver() == berth_runtime::CgroupDriver::Systemd;
    loop {
        let gone = if systemd {
            !memory.exists()
        } else {
            memory.exists() && cgroup_procs(&memory).is_empty()
        };
        if gone {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hog's cgroup {} stayed",
            memory.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(resume);
    let s = wait_exited(&mut c, &hog).await;
    assert_eq!(
        (s.exit_code, s.reason.as_str()),
        (137, "OOMKilled"),
        "{s:?}"
    );
    assert_eq!(f.agent.metric("berth_container_oom_kills_total"), 1.0);
    stop_and_remove(&mut c, &hog).await;
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "oomlate");
}

/// The stats readers against a real container's cgroup on this host: CPU time of a busy loop,
/// the working set of 64 MiB written to /dev/shm (shmem is not reclaimable file cache), and
/// its processes.
#[tokio::test]
async fn cgroup_stats_of_a_running_container_show_its_cpu_memory_and_processes() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let pod_cfg = pod_config(&f, "stats");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let cfg = container_config(
        &f,
        "busy",
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/dev/shm/fill bs=1M count=64 2>/dev/null; while :; do :; done",
        ],
    );
    let id = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
    start(&mut c, &id).await;
    let cgroup = container_cgroup("stats", &id);
    let deadline = Instant::now() + Duration::from_secs(30);
    let stats = loop {
        let stats = berth_runtime::cgroups::stats::read(&cgroup);
        let busy = stats.cpu_usage_ns.is_some_and(|ns| ns > 200_000_000);
        let filled = stats
            .memory
            .as_ref()
            .is_some_and(|m| m.working_set_bytes >= 64 << 20);
        if busy && filled {
            break stats;
        }
        assert!(
            Instant::now() < deadline,
            "never busy and filled: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let memory = stats.memory.clone().unwrap();
    assert!(memory.usage_bytes >= memory.working_set_bytes, "{memory:?}");
    assert_eq!(memory.limit_bytes, None, "no limit was asked for");
    assert!(stats.pids.is_some_and(|n| n >= 1), "{stats:?}");
    // The loop still spins: CPU time keeps growing.
    while berth_runtime::cgroups::stats::read(&cgroup).cpu_usage_ns <= stats.cpu_usage_ns {
        assert!(Instant::now() < deadline, "CPU time stopped at {stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    remove_pod(&mut c, &pod).await;
    // Gone with its container: no values, no error.
    assert_eq!(
        berth_runtime::cgroups::stats::read(&cgroup),
        berth_runtime::cgroups::stats::CgroupStats::default()
    );
    assert_clean(&f, "stats");
}

/// ContainerStats and ListContainerStats through the CRI: CPU time and rate of a busy loop, a
/// 64 MiB working set, 10 MB written to the rootfs in the writable layer (measured in the
/// background, so polled for), the filters, and unknown ids.
#[tokio::test]
async fn container_stats_report_cpu_memory_and_the_writable_layer() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let pod_cfg = pod_config(&f, "cristats");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let mut cfg = container_config(
        &f,
        "busy",
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/dev/shm/fill bs=1M count=64 2>/dev/null; \
             dd if=/dev/zero of=/layer bs=1M count=10 2>/dev/null; while :; do :; done",
        ],
    );
    cfg.labels.insert("stats".into(), "yes".into());
    let id = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
    start(&mut c, &id).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let stats = loop {
        let s = c
            .container_stats(ContainerStatsRequest {
                container_id: id[..12].to_string(),
            })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
        let cpu = s.cpu.unwrap();
        let memory = s.memory.unwrap();
        assert!(cpu.timestamp > 0 && memory.timestamp > 0, "{s:?}");
        let busy = cpu
            .usage_core_nano_seconds
            .is_some_and(|v| v.value > 200_000_000)
            && cpu.usage_nano_cores.is_some_and(|v| v.value > 0);
        let filled = memory
            .working_set_bytes
            .is_some_and(|v| v.value >= 64 << 20);
        let written = s
            .writable_layer
            .as_ref()
            .and_then(|w| w.used_bytes)
            .is_some_and(|v| v.value >= 10 << 20);
        if busy && filled && written {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "stats never showed it all: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let attributes = stats.attributes.unwrap();
    assert_eq!(attributes.id, id);
    assert_eq!(attributes.metadata.unwrap().name, "busy");
    assert_eq!(
        attributes.labels.get("stats").map(String::as_str),
        Some("yes")
    );
    let layer = stats.writable_layer.unwrap();
    assert!(layer.timestamp > 0 && layer.inodes_used.is_some_and(|v| v.value >= 1));
    let memory = stats.memory.unwrap();
    assert!(memory.usage_bytes.unwrap().value >= memory.working_set_bytes.unwrap().value);
    assert!(
        memory.available_bytes.is_none(),
        "no limit, nothing available to report"
    );

    let list = |filter: ContainerStatsFilter| {
        let mut c = c.clone();
        async move {
            c.list_container_stats(ListContainerStatsRequest {
                filter: Some(filter),
            })
            .await
            .unwrap()
            .into_inner()
            .stats
            .into_iter()
            .map(|s| s.attributes.unwrap().id)
            .collect::<Vec<_>>()
        }
    };
    let by = |id: &str, pod: &str, label: Option<(&str, &str)>| ContainerStatsFilter {
        id: id.into(),
        pod_sandbox_id: pod.into(),
        label_selector: label
            .map(|(k, v)| [(k.to_string(), v.to_string())].into())
            .unwrap_or_default(),
    };
    let only = vec![id.clone()];
    assert_eq!(list(by(&id[..8], "", None)).await, only);
    assert_eq!(list(by("", &pod[..8], None)).await, only);
    assert_eq!(list(by("", "", Some(("stats", "yes")))).await, only);
    assert!(list(by("", "", Some(("stats", "no")))).await.is_empty());
    assert!(list(by("ffffffffffff", "", None)).await.is_empty());
    let err = c
        .container_stats(ContainerStatsRequest {
            container_id: "ffffffffffff".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "cristats");
}

/// A SIGKILL that is not the OOM killer's is an Error exit, even under a memory limit (kubelet
/// tells the two apart by the reason).
#[tokio::test]
async fn a_killed_container_under_a_memory_limit_is_an_error_not_an_oom_kill() {
    let _top = CgroupTop::new();
    let _cgroups = PodCgroups(vec!["notoom".into()]);
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let pod_cfg = pod_config(&f, "notoom");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let mut cfg = container_config(&f, "limited", &["sleep", "1000"]);
    cfg.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: 32 << 20,
        ..Default::default()
    });
    let id = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
    start(&mut c, &id).await;
    c.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    let s = status(&mut c, &id).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (137, "Error"));
    assert_eq!(f.agent.metric("berth_container_oom_kills_total"), 0.0);
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "notoom");
}
