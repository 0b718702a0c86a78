//! A pod's cgroup under either driver: where the monitor runs, what goes with the pod, and the
//! pod's stats (its cgroup, its network, its processes).

use std::collections::HashMap;

use berth_e2e::cri::wait_network_ready;
use berth_e2e::network::{Extra, TestNetwork};
use berth_e2e::sandbox_fixture::*;
use berth_e2e::{RuntimeClient, TestAgent};
use k8s_cri::v1::*;

#[tokio::test]
async fn the_monitor_joins_the_pods_cgroup_parent_and_made_cgroups_go_with_the_pod() {
    let agent = TestAgent::start().await;
    let top = format!("berth-e2e-{}-cg", std::process::id());
    let mut config = pod_config_with(
        "cgroup",
        NamespaceMode::Node,
        NamespaceMode::Container,
        NamespaceMode::Pod,
    );
    let parent = berth_e2e::pod_cgroup_parent(&top, "pod-cgroup");
    let _slices = TopSlice(top.clone());
    config.linux.as_mut().unwrap().cgroup_parent = parent.clone();
    let id = run(&agent, config).await.unwrap();
    let info: serde_json::Value =
        serde_json::from_str(&status(&agent, &id, true).await.info["info"]).unwrap();
    let monitor = info["monitorPid"].as_u64().unwrap().to_string();
    // In a leaf of the pod cgroup (cgroupfs) or a scope of its own in the pod's slice (systemd).
    let monitor_cgroup = berth_e2e::monitor_cgroup_path(&parent, &id);
    let procs = std::fs::read_to_string(
        berth_e2e::cgroup_dir("memory", &monitor_cgroup.to_string_lossy()).join("cgroup.procs"),
    )
    .unwrap();
    assert!(
        procs.lines().any(|p| p == monitor),
        "monitor {monitor} in {procs:?}"
    );
    remove(&agent, &id).await;
    assert_made_cgroups_gone(&top, &monitor_cgroup);
    let err = run(&agent, {
        let mut c = pod_config("cgroup-escape");
        c.linux.as_mut().unwrap().cgroup_parent = "/../../etc".to_string();
        c
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_no_leaks(&agent, None);
}

#[tokio::test]
async fn pod_sandbox_stats_show_the_pod_cgroup_network_and_processes() {
    let agent = TestAgent::start().await;
    let net = TestNetwork::create(&agent.paths.cni_conf_dir, Extra::None);
    wait_network_ready(&mut agent.runtime().await).await;
    let top = format!("berth-e2e-{}-stats", std::process::id());
    let mut config = pod_config("podstats");
    config.linux.as_mut().unwrap().cgroup_parent = berth_e2e::pod_cgroup_parent(&top, "pod");
    let _slices = TopSlice(top.clone());
    let id = run(&agent, config).await.unwrap();
    let mut c = agent.runtime().await;
    let sample = |c: &mut RuntimeClient| {
        let mut c = c.clone();
        let id = id.clone();
        async move {
            c.pod_sandbox_stats(PodSandboxStatsRequest {
                pod_sandbox_id: id[..12].to_string(),
            })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap()
        }
    };
    let before = sample(&mut c).await;
    assert_eq!(before.attributes.as_ref().unwrap().id, id);
    assert_eq!(
        before
            .attributes
            .as_ref()
            .unwrap()
            .labels
            .get("app")
            .map(String::as_str),
        Some("podstats")
    );
    let linux = before.linux.clone().unwrap();
    assert!(
        linux.cpu.unwrap().usage_core_nano_seconds.is_some(),
        "the pod cgroup's CPU"
    );
    assert!(
        linux.memory.unwrap().working_set_bytes.is_some(),
        "the pod cgroup's memory"
    );
    // The monitor is in the pod cgroup.
    let processes = linux.process.unwrap();
    assert!(processes.timestamp > 0 && processes.process_count.unwrap().value >= 1);
    let eth0 = |s: &PodSandboxStats| {
        let network = s.linux.clone().unwrap().network.unwrap();
        assert!(network.timestamp > 0);
        assert!(
            network.interfaces.iter().all(|i| i.name != "lo"),
            "{network:?}"
        );
        network.default_interface.unwrap()
    };
    let rx_before = eth0(&before).rx_bytes.unwrap().value;
    in_pod(
        &agent,
        &id,
        &["net"],
        &[
            "busybox",
            "ping",
            "-c",
            "3",
            "-W",
            "3",
            &format!("{}.1", net.net24),
        ],
    );
    let after = eth0(&sample(&mut c).await);
    assert!(after.rx_bytes.unwrap().value > rx_before, "{after:?}");
    assert!(after.tx_bytes.unwrap().value > 0, "{after:?}");

    let lister = c.clone();
    let list = |filter: PodSandboxStatsFilter| {
        let mut c = lister.clone();
        async move {
            c.list_pod_sandbox_stats(ListPodSandboxStatsRequest {
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
    let only = vec![id.clone()];
    let labels = |v: &str| HashMap::from([("app".to_string(), v.to_string())]);
    assert_eq!(
        list(PodSandboxStatsFilter {
            id: id[..8].into(),
            label_selector: HashMap::new()
        })
        .await,
        only
    );
    assert_eq!(
        list(PodSandboxStatsFilter {
            id: String::new(),
            label_selector: labels("podstats")
        })
        .await,
        only
    );
    assert!(list(PodSandboxStatsFilter {
        id: String::new(),
        label_selector: labels("other")
    })
    .await
    .is_empty());
    let err = c
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: "ffffffffffff".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // A stopped pod has no stats and is not listed.
    stop(&agent, &id).await;
    let err = c
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(list(PodSandboxStatsFilter::default()).await.is_empty());
    remove(&agent, &id).await;
    assert_no_leaks(&agent, Some(&net));
    let monitor_cgroup =
        berth_e2e::monitor_cgroup_path(&berth_e2e::pod_cgroup_parent(&top, "pod"), &id);
    assert_made_cgroups_gone(&top, &monitor_cgroup);
}

/// With cgroupfs, berth made the pod cgroup and its parent and takes them back; with systemd,
/// systemd made the slices (kubelet would have), and the monitor's scope is gone with the pod.
/// (systemd removes an emptied scope on its own time: polled for.)
fn assert_made_cgroups_gone(top: &str, monitor_cgroup: &std::path::Path) {
    let dir = berth_e2e::cgroup_dir("memory", &monitor_cgroup.to_string_lossy());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while dir.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the monitor's cgroup {} goes with the pod",
            dir.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if berth_e2e::cgroup_driver() == berth_runtime::CgroupDriver::Cgroupfs {
        assert!(
            !berth_e2e::cgroup_dir("memory", top).exists(),
            "cgroups made for the pod go with it"
        );
    }
}

/// The test's own top cgroup, taken back at the end even when the test failed: the slice
/// systemd made (systemd driver), or whatever is left of the tree in every hierarchy (cgroupfs).
struct TopSlice(String);

impl Drop for TopSlice {
    fn drop(&mut self) {
        if berth_e2e::cgroup_driver() == berth_runtime::CgroupDriver::Systemd {
            berth_e2e::systemctl_stop(&berth_e2e::top_slice(&self.0));
            return;
        }
        for dir in berth_e2e::cgroup_dirs(&self.0) {
            berth_e2e::container_fixture::remove_cgroup_tree(&dir);
        }
    }
}

/// Pods of several agents (or tests) that share a cgroup parent may make it at the same moment:
/// each `ensure` must find the directory made, whoever made it, and count it as its own only if
/// it made it. Before the fix, the losers of the race failed with "File exists" (seen as a
/// RunPodSandbox error in `make test-host`).
#[test]
fn pods_that_make_one_new_cgroup_parent_at_once_all_succeed() {
    use std::sync::{Arc, Barrier};
    const CALLERS: usize = 8;
    let top = format!("berth-e2e-race-{}", std::process::id());
    let mut made: Vec<std::path::PathBuf> = Vec::new();
    let mut failures = Vec::new();
    for round in 0..10 {
        let path = std::path::PathBuf::from(format!("/{top}/round-{round}/pod"));
        let barrier = Arc::new(Barrier::new(CALLERS));
        let callers: Vec<_> = (0..CALLERS)
            .map(|_| {
                let (barrier, path) = (barrier.clone(), path.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    berth_runtime::cgroups::ensure(&path)
                })
            })
            .collect();
        let mut made_here = Vec::new();
        for caller in callers {
            match caller.join().unwrap() {
                Ok(dirs) => made_here.extend(dirs),
                Err(e) => failures.push(e.to_string()),
            }
        }
        // Every directory was made by exactly one caller.
        let mut unique = made_here.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            made_here.len(),
            "round {round}: {made_here:?}"
        );
        made.extend(made_here);
    }
    // Parents first, as `ensure` returns them: `remove_created` takes them back deepest first.
    made.sort_by_key(|d| d.components().count());
    let left = berth_runtime::cgroups::remove_created(&made);
    for h in berth_runtime::cgroups::hierarchies() {
        let _ = std::fs::remove_dir(h.mountpoint.join(&top));
    }
    assert!(failures.is_empty(), "{failures:?}");
    assert!(left.is_empty(), "{left:?}");
}
