//! Shared by the sandbox suites (`e2e/tests/sandbox*.rs`): pod configs as kubelet sends them,
//! CRI call shorthands on a [`TestAgent`], commands in a pod's pinned namespaces, and the leak
//! check every sandbox test ends with.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use k8s_cri::v1::*;

use crate::network::{mounts_under, processes_mentioning, TestNetwork};
use crate::TestAgent;

pub fn pod_config(name: &str) -> PodSandboxConfig {
    pod_config_with(
        name,
        NamespaceMode::Pod,
        NamespaceMode::Container,
        NamespaceMode::Pod,
    )
}

/// A pod with the given network, PID and IPC namespace modes.
pub fn pod_config_with(
    name: &str,
    network: NamespaceMode,
    pid: NamespaceMode,
    ipc: NamespaceMode,
) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_string(),
            uid: format!("uid-{name}"),
            namespace: "default".to_string(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        linux: Some(crate::cri::pod_linux(crate::cri::namespaces(
            network, pid, ipc,
        ))),
        ..Default::default()
    }
}

pub async fn run(agent: &TestAgent, config: PodSandboxConfig) -> Result<String, tonic::Status> {
    crate::cri::try_run_pod(&mut agent.runtime().await, config).await
}

pub async fn status(agent: &TestAgent, id: &str, verbose: bool) -> PodSandboxStatusResponse {
    agent
        .runtime()
        .await
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose,
        })
        .await
        .unwrap()
        .into_inner()
}

pub async fn stop(agent: &TestAgent, id: &str) {
    agent
        .runtime()
        .await
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .unwrap();
}

pub async fn remove(agent: &TestAgent, id: &str) {
    crate::cri::remove_pod(&mut agent.runtime().await, id).await;
}

pub fn pod_dir(agent: &TestAgent, id: &str) -> PathBuf {
    agent.paths.state.join("pods").join(id)
}

/// Runs a command inside the pod's pinned namespaces.
pub fn in_pod(agent: &TestAgent, id: &str, namespaces: &[&str], command: &[&str]) -> String {
    let dir = pod_dir(agent, id).join("ns");
    let mut cmd = Command::new("nsenter");
    for ns in namespaces {
        cmd.arg(format!("--{ns}={}", dir.join(ns).display()));
    }
    let out = cmd.args(command).output().expect("nsenter");
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The agent's standby monitors (`berthd monitor-standby <state>`) that are running: one, or
/// none for a moment after one was handed a pod, or when standbys are off.
pub fn standby_monitors(agent: &TestAgent) -> Vec<u32> {
    let needle = format!("\0monitor-standby\0{}\0", agent.paths.state.display());
    processes_mentioning(&needle)
        .into_iter()
        .filter(|&pid| crate::running(pid))
        .collect()
}

/// Polls (10 s at most) until the agent holds a standby monitor other than `not` ready for the
/// next pod, and returns it. Its process shows before the agent has read its report, and a pod
/// run in between gets an exec'd monitor: ready is `berth_monitor_standby_waiting` at 1. The
/// process the agent starts forks the standby and exits: until it has, it shows too, alone
/// before its fork. So the gauge is read first (once it is 1 the standby exists), and only a
/// lone process is taken.
pub fn wait_standby(agent: &TestAgent, not: Option<u32>) -> u32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let ready = agent.metric("berth_monitor_standby_waiting") == 1.0;
        let standbys: Vec<u32> = standby_monitors(agent)
            .into_iter()
            .filter(|&p| Some(p) != not)
            .collect();
        if let ([pid], true) = (&standbys[..], ready) {
            return *pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no lone standby monitor ready in 10 s: {standbys:?}, ready {ready}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// `/proc/<pid>/ns/<kind>` as the kernel names it (`net:[4026531840]`): one name, one namespace.
pub fn namespace_of(pid: u32, kind: &str) -> String {
    let link = format!("/proc/{pid}/ns/{kind}");
    let name = std::fs::read_link(&link).unwrap_or_else(|e| panic!("{link}: {e}"));
    name.to_string_lossy().into_owned()
}

/// The pod's IP, as PodSandboxStatus gives it.
pub async fn pod_ip(agent: &TestAgent, id: &str) -> String {
    let status = status(agent, id, false).await.status.expect("a status");
    status.network.map(|n| n.ip).unwrap_or_default()
}

/// An agent (`extra` config text) with a bridge network of its own, once NetworkReady.
pub async fn agent_with_network(extra: &str) -> (TestAgent, TestNetwork) {
    let agent = TestAgent::start_with(extra).await;
    let net = TestNetwork::create(&agent.paths.cni_conf_dir, crate::network::Extra::None);
    crate::cri::wait_network_ready(&mut agent.runtime().await).await;
    (agent, net)
}

/// Stops and removes each pod, then checks that none of them left anything.
pub async fn remove_all_leaving_nothing(agent: &TestAgent, ids: &[&str], net: &TestNetwork) {
    for id in ids {
        stop(agent, id).await;
        remove(agent, id).await;
    }
    assert_no_leaks(agent, Some(net));
}

fn trash_entries(trash: &std::path::Path) -> usize {
    std::fs::read_dir(trash).map(|r| r.count()).unwrap_or(0)
}

/// Everything a sandbox could leave behind, for the agent and network under test.
pub fn assert_no_leaks(agent: &TestAgent, network: Option<&TestNetwork>) {
    let pods: Vec<_> = std::fs::read_dir(agent.paths.state.join("pods"))
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(pods.is_empty(), "pod dirs left: {pods:?}");
    // RemovePodSandbox renames a pod dir into the trash and answers; its files go after.
    let trash = agent.paths.state.join("trash");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while trash_entries(&trash) > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(trash_entries(&trash), 0, "pod dirs left in the trash");
    assert_eq!(
        mounts_under(agent.dir()),
        Vec::<String>::new(),
        "mounts left"
    );
    let monitors = processes_mentioning(&agent.paths.state.join("pods").to_string_lossy());
    assert!(monitors.is_empty(), "monitor processes left: {monitors:?}");
    if let Some(net) = network {
        assert_eq!(net.leases(), Vec::<String>::new(), "IP leases left");
        // A pod's host-side veth goes with its network namespace, which the kernel tears down
        // in a work queue after the last reference (the pin, the monitor) is gone: not at once.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !net.veths().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(net.veths(), Vec::<String>::new(), "veths left");
    }
    // The cache is under `root` (a reboot keeps it); an older agent's was under `state`.
    let results: Vec<_> = [&agent.paths.root, &agent.paths.state]
        .iter()
        .flat_map(|dir| {
            std::fs::read_dir(dir.join("cni/results"))
                .into_iter()
                .flatten()
        })
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(results.is_empty(), "cached CNI results left: {results:?}");
}
