//! Pod sandboxes end to end: a real berthd, its monitors, and Debian's CNI plugins.

use std::collections::HashMap;
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use berth_e2e::cri::{wait_network, wait_network_ready};
use berth_e2e::network::{
    mounts_under, nat_rules_of, processes_mentioning, require_iptables, serve_once_in_netns, Extra,
    TestNetwork,
};
use berth_e2e::sandbox_fixture::*;
use berth_e2e::{free_port, TestAgent};
use k8s_cri::v1::*;

#[tokio::test]
async fn network_ready_follows_the_cni_conf_dir() {
    let agent = TestAgent::start().await;
    let condition = |s: StatusResponse| {
        s.status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.r#type == "NetworkReady")
            .unwrap()
    };
    let mut client = agent.runtime().await;
    let c = condition(
        client
            .status(StatusRequest { verbose: false })
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(!c.status);
    assert_eq!(c.reason, "NetworkPluginNotReady");
    assert!(c.message.contains("no network config"), "{}", c.message);
    let _net = TestNetwork::create(&agent.paths.cni_conf_dir, Extra::None);
    let mut ready = false;
    for _ in 0..50 {
        let c = condition(
            client
                .status(StatusRequest { verbose: false })
                .await
                .unwrap()
                .into_inner(),
        );
        if c.status {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "NetworkReady turned true once a conflist existed");
}

#[tokio::test]
async fn run_pod_sandbox_gives_ip_hostname_dns_and_sysctls() {
    let agent = TestAgent::start().await;
    let net = TestNetwork::create(&agent.paths.cni_conf_dir, Extra::None);
    wait_network_ready(&mut agent.runtime().await).await;
    let mut config = pod_config("web");
    config.dns_config = Some(DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["default.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    config.annotations = HashMap::from([("note".to_string(), "kept".to_string())]);
    config.linux.as_mut().unwrap().sysctls = HashMap::from([
        (
            "net.ipv4.ip_unprivileged_port_start".to_string(),
            "81".to_string(),
        ),
        ("kernel.shmmni".to_string(), "1234".to_string()),
    ]);
    let id = run(&agent, config).await.unwrap();

    let s = status(&agent, &id, true).await;
    let st = s.status.unwrap();
    assert_eq!(st.state, PodSandboxState::SandboxReady as i32);
    let ip = st.network.unwrap().ip;
    assert!(ip.starts_with(&format!("{}.", net.net24)), "{ip}");
    assert_eq!(st.metadata.unwrap().name, "web");
    assert_eq!(st.annotations["note"], "kept");
    let info: serde_json::Value = serde_json::from_str(&s.info["info"]).unwrap();
    assert!(info["monitorPid"].as_u64().unwrap() > 1);
    assert_eq!(info["cniResult"]["ips"][0]["address"], format!("{ip}/24"));

    assert_eq!(in_pod(&agent, &id, &["uts"], &["hostname"]), "web");
    assert!(in_pod(&agent, &id, &["net"], &["ip", "-4", "addr", "show", "eth0"]).contains(&ip));
    assert!(in_pod(&agent, &id, &["net"], &["ip", "link", "show", "lo"]).contains("UP"));
    assert_eq!(
        in_pod(
            &agent,
            &id,
            &["net"],
            &["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]
        ),
        "81"
    );
    assert_eq!(
        in_pod(&agent, &id, &["ipc"], &["cat", "/proc/sys/kernel/shmmni"]),
        "1234"
    );
    let resolv = std::fs::read_to_string(pod_dir(&agent, &id).join("resolv.conf")).unwrap();
    assert_eq!(
        resolv,
        "search default.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    );
    let hosts = std::fs::read_to_string(pod_dir(&agent, &id).join("hosts")).unwrap();
    assert!(hosts.contains(&format!("{ip}\tweb")), "{hosts}");
    assert!(mounts_under(&pod_dir(&agent, &id))
        .iter()
        .any(|m| m.ends_with("/shm")));

    // Filters: id prefix (as crictl), state, labels.
    let list = |filter: PodSandboxFilter| {
        let agent = &agent;
        async move {
            agent
                .runtime()
                .await
                .list_pod_sandbox(ListPodSandboxRequest {
                    filter: Some(filter),
                })
                .await
                .unwrap()
                .into_inner()
                .items
        }
    };
    assert_eq!(
        list(PodSandboxFilter {
            id: id[..12].to_string(),
            ..Default::default()
        })
        .await
        .len(),
        1
    );
    let ready = Some(PodSandboxStateValue {
        state: PodSandboxState::SandboxReady as i32,
    });
    assert_eq!(
        list(PodSandboxFilter {
            state: ready,
            ..Default::default()
        })
        .await
        .len(),
        1
    );
    let other = HashMap::from([("app".to_string(), "db".to_string())]);
    assert!(list(PodSandboxFilter {
        label_selector: other,
        ..Default::default()
    })
    .await
    .is_empty());

    stop(&agent, &id).await;
    let st = status(&agent, &id, false).await.status.unwrap();
    assert_eq!(st.state, PodSandboxState::SandboxNotready as i32);
    assert_eq!(net.leases(), Vec::<String>::new(), "stop releases the IP");
    stop(&agent, &id).await;
    remove(&agent, &id).await;
    remove(&agent, &id).await;
    stop(&agent, "0123456789abcdef").await;
    remove(&agent, "0123456789abcdef").await;
    let err = agent
        .runtime()
        .await
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_no_leaks(&agent, Some(&net));
    assert!(agent.metric("berth_sandbox_create_duration_seconds_count") >= 1.0);
    assert!(agent
        .scrape()
        .contains("berth_cni_operation_duration_seconds"));
}

#[tokio::test]
async fn repeated_run_returns_the_same_sandbox_and_a_new_attempt_a_new_one() {
    let agent = TestAgent::start().await;
    let _net = TestNetwork::create(&agent.paths.cni_conf_dir, Extra::None);
    wait_network_ready(&mut agent.runtime().await).await;
    let (a, b) = tokio::join!(
        run(&agent, pod_config("same")),
        run(&agent, pod_config("same"))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b, "a retry while building gets the same sandbox");
    assert_eq!(
        run(&agent, pod_config("same")).await.unwrap(),
        a,
        "and after it is built"
    );
    let mut next = pod_config("same");
    next.metadata.as_mut().unwrap().attempt = 1;
    let c = run(&agent, next).await.unwrap();
    assert_ne!(c, a);
    for id in [&a, &c] {
        remove(&agent, id).await;
    }
    assert_no_leaks(&agent, None);
}

#[tokio::test]
async fn two_pods_on_one_bridge_reach_each_other_and_a_host_port_reaches_a_pod() {
    let agent = TestAgent::start().await;
    let net = TestNetwork::create(&agent.paths.cni_conf_dir, Extra::Portmap);
    wait_network_ready(&mut agent.runtime().await).await;
    let a = run(&agent, pod_config("pod-a")).await.unwrap();
    let host_port = free_port();
    let mut with_port = pod_config("pod-b");
    with_port.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: 8080,
        host_port: host_port as i32,
        host_ip: "127.0.0.1".to_string(),
    }];
    let b = run(&agent, with_port).await.unwrap();
    let ip_b = status(&agent, &b, false)
        .await
        .status
        .unwrap()
        .network
        .unwrap()
        .ip;
    let ping = Command::new("nsenter")
        .arg(format!(
            "--net={}",
            pod_dir(&agent, &a).join("ns/net").display()
        ))
        .args(["busybox", "ping", "-c", "1", "-W", "3", &ip_b])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "ping {ip_b}: {}",
        String::from_utf8_lossy(&ping.stdout)
    );

    require_iptables();
    assert!(
        !nat_rules_of(&b).is_empty(),
        "portmap wrote no rule for pod-b's host port"
    );
    {
        let server = serve_once_in_netns(
            &pod_dir(&agent, &b).join("ns/net"),
            8080,
            b"hello from pod-b",
        );
        let reply = tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect_timeout(
                &([127, 0, 0, 1], host_port).into(),
                Duration::from_secs(5),
            )
            .map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut reply = String::new();
            s.read_to_string(&mut reply).map_err(|e| e.to_string())?;
            Ok::<_, String>(reply)
        })
        .await
        .unwrap();
        let _ = server.join();
        assert_eq!(reply.unwrap(), "hello from pod-b");
    }
    for id in [&a, &b] {
        stop(&agent, id).await;
        remove(&agent, id).await;
    }
    assert_eq!(
        nat_rules_of(&b),
        Vec::<String>::new(),
        "a removed pod's portmap rules are gone"
    );
    assert_no_leaks(&agent, Some(&net));
}

#[tokio::test]
async fn host_network_and_ipc_pods_use_the_hosts_namespaces() {
    let agent = TestAgent::start().await;
    let config = pod_config_with(
        "hostnet",
        NamespaceMode::Node,
        NamespaceMode::Container,
        NamespaceMode::Node,
    );
    // No CNI config at all: a host-network pod needs none.
    let id = run(&agent, config).await.unwrap();
    let st = status(&agent, &id, false).await.status.unwrap();
    assert_eq!(st.state, PodSandboxState::SandboxReady as i32);
    assert!(st.network.is_none());
    let ns = pod_dir(&agent, &id).join("ns");
    assert!(!ns.join("net").exists() && !ns.join("ipc").exists() && !ns.join("uts").exists());
    assert!(
        mounts_under(&pod_dir(&agent, &id)).is_empty(),
        "no shm for a host-IPC pod"
    );
    remove(&agent, &id).await;
    assert_no_leaks(&agent, None);
}

#[tokio::test]
async fn pod_pid_namespace_gets_our_own_init() {
    let agent = TestAgent::start().await;
    let config = pod_config_with(
        "sharedpid",
        NamespaceMode::Node,
        NamespaceMode::Pod,
        NamespaceMode::Pod,
    );
    let id = run(&agent, config).await.unwrap();
    let pid_ns = pod_dir(&agent, &id).join("ns/pid");
    let init = Command::new("nsenter")
        .arg(format!("--pid={}", pid_ns.display()))
        .args(["--", "busybox", "sh", "-c", "readlink /proc/self/ns/pid"])
        .output()
        .unwrap();
    assert!(init.status.success());
    let own = std::fs::read_link("/proc/self/ns/pid").unwrap();
    assert_ne!(
        String::from_utf8_lossy(&init.stdout).trim(),
        own.to_string_lossy()
    );
    remove(&agent, &id).await;
    assert_no_leaks(&agent, None);
}

#[tokio::test]
async fn a_failure_at_any_step_leaves_nothing_behind() {
    let agent = TestAgent::start().await;
    let net = TestNetwork::create(&agent.paths.cni_conf_dir, Extra::FailingTuning);
    wait_network_ready(&mut agent.runtime().await).await;
    // CNI: bridge's ADD succeeds, tuning's fails: the rollback must DEL the bridge part.
    let err = run(&agent, pod_config("cni-fails")).await.unwrap_err();
    assert!(err.message().contains("tuning"), "{}", err.message());
    assert_no_leaks(&agent, Some(&net));

    // Monitor: a sysctl that passes validation but does not exist in the kernel.
    let mut bad = pod_config("sysctl-fails");
    bad.linux.as_mut().unwrap().sysctls =
        HashMap::from([("net.ipv4.berth_no_such_key".to_string(), "1".to_string())]);
    let err = run(&agent, bad).await.unwrap_err();
    assert!(
        err.message().contains("berth_no_such_key"),
        "{}",
        err.message()
    );
    assert_no_leaks(&agent, Some(&net));

    // Monitor: a hostname the kernel refuses.
    let mut long = pod_config("hostname-fails");
    long.hostname = "h".repeat(100);
    assert!(run(&agent, long).await.is_err());
    assert_no_leaks(&agent, Some(&net));

    // Refused before anything is made: a non-namespaced sysctl, an unknown handler.
    let mut host_sysctl = pod_config("bad-sysctl");
    host_sysctl.linux.as_mut().unwrap().sysctls =
        HashMap::from([("vm.swappiness".to_string(), "1".to_string())]);
    assert_eq!(
        run(&agent, host_sysctl).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    let err = agent
        .runtime()
        .await
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config("handler")),
            runtime_handler: "kata".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("kata"), "{}", err.message());
    assert_no_leaks(&agent, Some(&net));
}

#[tokio::test]
async fn sandboxes_survive_an_agent_kill_and_a_dead_monitor_reads_not_ready() {
    let mut agent = TestAgent::start().await;
    let net = TestNetwork::create(&agent.paths.cni_conf_dir, Extra::None);
    wait_network_ready(&mut agent.runtime().await).await;
    let a = run(&agent, pod_config("survivor")).await.unwrap();
    let b = run(&agent, pod_config("victim")).await.unwrap();
    let ip_a = status(&agent, &a, false)
        .await
        .status
        .unwrap()
        .network
        .unwrap()
        .ip;
    let monitor_b = status(&agent, &b, true).await.info["info"].clone();
    let monitor_b: serde_json::Value = serde_json::from_str(&monitor_b).unwrap();
    let monitor_b = monitor_b["monitorPid"].as_i64().unwrap() as i32;

    agent.stop_with(nix::sys::signal::Signal::SIGKILL);
    // While the agent is down, one pod's monitor dies.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor_b),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    berth_e2e::container_fixture::wait_process_gone(monitor_b);
    agent.restart_with(nix::sys::signal::Signal::SIGKILL).await;

    let st = status(&agent, &a, false).await.status.unwrap();
    assert_eq!(st.state, PodSandboxState::SandboxReady as i32);
    assert_eq!(st.network.unwrap().ip, ip_a);
    let st = status(&agent, &b, false).await.status.unwrap();
    assert_eq!(st.state, PodSandboxState::SandboxNotready as i32);
    for id in [&a, &b] {
        stop(&agent, id).await;
        remove(&agent, id).await;
    }
    assert_no_leaks(&agent, Some(&net));
}

#[tokio::test]
async fn fifty_run_stop_remove_cycles_leave_nothing() {
    require_iptables();
    let agent = TestAgent::start().await;
    let net = TestNetwork::create(&agent.paths.cni_conf_dir, Extra::Portmap);
    wait_network_ready(&mut agent.runtime().await).await;
    for i in 0..50 {
        let mut config = pod_config("cycle");
        config.metadata.as_mut().unwrap().attempt = i;
        // A real host port: portmap writes rules, which must go with the pod.
        config.port_mappings = vec![PortMapping {
            protocol: Protocol::Tcp as i32,
            container_port: 80,
            host_port: free_port() as i32,
            host_ip: "127.0.0.1".to_string(),
        }];
        let id = run(&agent, config).await.unwrap();
        assert!(!nat_rules_of(&id).is_empty(), "cycle {i}: no portmap rule");
        stop(&agent, &id).await;
        remove(&agent, &id).await;
        assert_eq!(nat_rules_of(&id), Vec::<String>::new(), "cycle {i}");
    }
    assert_no_leaks(&agent, Some(&net));
}

/// RemovePodSandbox takes the pod dir out of sight with one rename into `<state>/trash` and
/// answers; its files are deleted after. An agent killed between the two leaves them in the
/// trash, and its next start deletes them.
#[tokio::test]
async fn a_pod_dir_a_crash_left_in_the_trash_is_deleted_at_the_next_start() {
    let mut agent = TestAgent::start().await;
    let config = pod_config_with(
        "trashed",
        NamespaceMode::Node,
        NamespaceMode::Container,
        NamespaceMode::Pod,
    );
    let id = run(&agent, config).await.unwrap();
    std::fs::write(pod_dir(&agent, &id).join("extra"), "written by the test").unwrap();
    stop(&agent, &id).await;
    agent.restart_crashing_at("sandbox-trashed").await;
    let removed = agent
        .runtime()
        .await
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await;
    assert!(removed.is_err(), "RemovePodSandbox answered {removed:?}");
    agent.wait_crashed();
    assert!(
        !pod_dir(&agent, &id).exists(),
        "the pod dir was not renamed"
    );
    let trash = agent.paths.state.join("trash");
    let left: Vec<PathBuf> = std::fs::read_dir(&trash)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].join("extra").exists(), "{left:?}");

    agent.restart_with(nix::sys::signal::Signal::SIGKILL).await;
    let left: Vec<_> = std::fs::read_dir(&trash).unwrap().flatten().collect();
    assert!(
        left.is_empty(),
        "left in the trash after the start: {left:?}"
    );
    let listed = berth_e2e::cri::list_pods(&mut agent.runtime().await).await;
    assert!(listed.is_empty(), "{listed:?}");
    assert_no_leaks(&agent, None);
}

/// StopPodSandbox releases the pod's network (IP lease, cached result) even when CNI DEL cannot
/// enter the netns any more (its pin was unmounted) or the network config is gone (the conflist
/// was deleted): DEL runs with the cached config, as kubelet's runtimes do.
#[tokio::test]
async fn stop_releases_the_network_without_the_netns_or_the_conflist() {
    let agent = TestAgent::start().await;
    let net = TestNetwork::create(&agent.paths.cni_conf_dir, Extra::None);
    wait_network_ready(&mut agent.runtime().await).await;

    let unpinned = run(&agent, pod_config("netns-gone")).await.unwrap();
    let pin = pod_dir(&agent, &unpinned).join("ns/net");
    nix::mount::umount2(&pin, nix::mount::MntFlags::MNT_DETACH).unwrap();
    assert_eq!(net.leases().len(), 1);
    stop(&agent, &unpinned).await;
    assert_eq!(net.leases(), Vec::<String>::new(), "netns gone: lease kept");
    remove(&agent, &unpinned).await;

    let unconfigured = run(&agent, pod_config("conf-gone")).await.unwrap();
    assert_eq!(net.leases().len(), 1);
    for conf in std::fs::read_dir(&agent.paths.cni_conf_dir)
        .unwrap()
        .flatten()
    {
        std::fs::remove_file(conf.path()).unwrap();
    }
    // Once the agent has noticed, it has no network config but the one saved with the pod.
    wait_network(&mut agent.runtime().await, false).await;
    stop(&agent, &unconfigured).await;
    assert_eq!(
        net.leases(),
        Vec::<String>::new(),
        "conflist gone: lease kept"
    );
    remove(&agent, &unconfigured).await;
    assert_no_leaks(&agent, Some(&net));
}

/// An agent whose network holds every ADD (after bridge's, so the IP is leased) until `gate`
/// is created: `berth-cni-gate` from this package, found through `[cni] bin_dirs`.
async fn gated_agent(gates: &berth_e2e::TempDir) -> (TestAgent, TestNetwork, PathBuf) {
    let gate = gates.path().join("open");
    let (agent, net) = agent_with_gate_plugin(Extra::Gate(gate.clone())).await;
    (agent, net, gate)
}

/// An agent whose network chains `berth-cni-gate` (`extra`) after bridge.
async fn agent_with_gate_plugin(extra: Extra) -> (TestAgent, TestNetwork) {
    let dir = berth_e2e::TempDir::new("berth-e2e");
    let paths = berth_e2e::AgentPaths::under(dir.path());
    let gate_bin = std::path::Path::new(env!("CARGO_BIN_EXE_berth-cni-gate"))
        .parent()
        .unwrap()
        .to_path_buf();
    let config = format!(
        "{}bin_dirs = [{:?}, \"/usr/lib/cni\"]\n",
        paths.config_text(""),
        gate_bin
    );
    std::fs::write(&paths.config, config).unwrap();
    let agent = TestAgent::start_in(dir, paths).await;
    let net = TestNetwork::create(&agent.paths.cni_conf_dir, extra);
    wait_network_ready(&mut agent.runtime().await).await;
    (agent, net)
}

/// StopPodSandbox ends the pod's monitor while the plugins' DEL runs, not after it: neither
/// waits for the other. The network namespace the DEL was handed stays pinned until it is done.
#[tokio::test]
async fn stop_ends_the_monitor_while_cni_del_runs_with_the_netns_still_pinned() {
    let gates = berth_e2e::TempDir::new("berth-gate");
    let gate = gates.path().join("del-open");
    let (agent, net) = agent_with_gate_plugin(Extra::DelGate(gate.clone())).await;
    let id = run(&agent, pod_config("del-gated")).await.unwrap();
    let dir = pod_dir(&agent, &id);
    assert!(
        !processes_mentioning(&id).is_empty(),
        "no monitor for the pod"
    );
    let stopping = tokio::spawn({
        let mut c = agent.runtime().await;
        let id = id.clone();
        async move {
            c.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id })
                .await
        }
    });
    wait_holding(&gate, "DEL").await;
    // The DEL holds: the monitor (and the pod's init) go meanwhile.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !processes_mentioning(&id).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the monitor waited for the DEL: {:?}",
            processes_mentioning(&id)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        mounts_under(&dir).iter().any(|m| m.ends_with("/ns/net")),
        "the netns was unpinned under the DEL: {:?}",
        mounts_under(&dir)
    );
    std::fs::write(&gate, b"").unwrap();
    stopping.await.unwrap().unwrap();
    assert_eq!(mounts_under(&dir), Vec::<String>::new(), "pins left");
    assert_eq!(net.leases(), Vec::<String>::new(), "lease kept");
    remove(&agent, &id).await;
    assert_no_leaks(&agent, Some(&net));
}

/// A reboot while CNI ADD runs: bridge's host-local has leased the IP (on disk, which the reboot
/// keeps), no result was saved, and the record that said `creating` went with `state`. The
/// agent that starts after it still runs the DEL, from what it wrote under `root` before ADD.
#[tokio::test]
async fn a_reboot_during_cni_add_still_frees_the_ip_it_leased() {
    let gates = berth_e2e::TempDir::new("berth-gate");
    let (mut agent, net, gate) = gated_agent(&gates).await;
    let first = tokio::spawn({
        let mut c = agent.runtime().await;
        async move { berth_e2e::cri::try_run_pod(&mut c, pod_config("rebooted")).await }
    });
    wait_creating(&agent, &gate).await;
    assert_eq!(net.leases().len(), 1, "{:?}", net.leases());
    agent.reboot(&[]).await;
    // The plugin a reboot would have ended goes on by itself.
    std::fs::write(&gate, b"").unwrap();
    assert!(first.await.unwrap().is_err());
    assert_no_leaks(&agent, Some(&net));
}

/// Waits until a gated ADD is holding, and returns the pod dir whose record reads `creating`.
async fn wait_creating(agent: &TestAgent, gate: &std::path::Path) -> PathBuf {
    wait_holding(gate, "ADD").await;
    let dirs: Vec<PathBuf> = std::fs::read_dir(agent.paths.state.join("pods"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dirs[0].join("sandbox.json")).unwrap()).unwrap();
    assert_eq!(record["state"], "creating", "{record}");
    dirs[0].clone()
}

/// Waits until `berth-cni-gate`'s `verb` (ADD or DEL) holds at `gate`.
async fn wait_holding(gate: &std::path::Path, verb: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !gate.with_extension("waiting").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no {verb} reached the gate"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn adds(gate: &std::path::Path) -> usize {
    std::fs::read_to_string(gate.with_extension("adds"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// RunPodSandbox asked again while the first build is half-way (its record reads `creating`),
/// or after the first call was cancelled, gets the same sandbox: one pod dir, one monitor, one
/// CNI ADD, one IP.
#[tokio::test]
async fn a_retry_during_the_build_or_after_a_cancelled_call_gets_the_same_sandbox() {
    let gates = berth_e2e::TempDir::new("berth-gate");
    let (agent, net, gate) = gated_agent(&gates).await;
    let first = tokio::spawn({
        let mut c = agent.runtime().await;
        async move { berth_e2e::cri::try_run_pod(&mut c, pod_config("retried")).await }
    });
    let dir = wait_creating(&agent, &gate).await;
    // The retry, sent while the record reads `creating`.
    let second = tokio::spawn({
        let mut c = agent.runtime().await;
        async move { berth_e2e::cri::try_run_pod(&mut c, pod_config("retried")).await }
    });
    // A third, cancelled by its caller (kubelet's deadline) before the build ends.
    let cancelled = tokio::time::timeout(
        Duration::from_millis(100),
        run(&agent, pod_config("retried")),
    )
    .await;
    assert!(
        cancelled.is_err(),
        "the build was held, so the call could not end"
    );
    std::fs::write(&gate, b"").unwrap();
    let (a, b) = (
        first.await.unwrap().unwrap(),
        second.await.unwrap().unwrap(),
    );
    assert_eq!(a, b);
    assert_eq!(dir, pod_dir(&agent, &a));
    // Asked once more after the cancelled call: the same sandbox, nothing built again.
    assert_eq!(run(&agent, pod_config("retried")).await.unwrap(), a);
    let pods: Vec<_> = std::fs::read_dir(agent.paths.state.join("pods"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(pods.len(), 1, "{pods:?}");
    let monitors = processes_mentioning(&agent.paths.state.join("pods").to_string_lossy());
    assert_eq!(monitors.len(), 1, "one monitor: {monitors:?}");
    assert_eq!(adds(&gate), 1, "one CNI ADD");
    assert_eq!(net.leases().len(), 1, "one IP");
    stop(&agent, &a).await;
    remove(&agent, &a).await;
    assert_no_leaks(&agent, Some(&net));
}

/// An agent killed while a sandbox is half-built rolls it back when it starts again: the pod
/// dir, its monitor, its namespaces and its IP go.
#[tokio::test]
async fn a_sandbox_left_creating_by_a_killed_agent_is_rolled_back_at_start() {
    let gates = berth_e2e::TempDir::new("berth-gate");
    let (mut agent, net, gate) = gated_agent(&gates).await;
    let pending = tokio::spawn({
        let mut c = agent.runtime().await;
        async move { berth_e2e::cri::try_run_pod(&mut c, pod_config("halfbuilt")).await }
    });
    let dir = wait_creating(&agent, &gate).await;
    assert_eq!(net.leases().len(), 1, "bridge's ADD ran before the gate");
    agent.stop_with(nix::sys::signal::Signal::SIGKILL);
    assert!(pending.await.unwrap().is_err());
    // Let the orphaned plugin go, then start again.
    std::fs::write(&gate, b"").unwrap();
    agent.restart_with(nix::sys::signal::Signal::SIGKILL).await;
    assert!(!dir.exists(), "the half-built pod's dir is gone");
    let listed = berth_e2e::cri::list_pods(&mut agent.runtime().await).await;
    assert!(listed.is_empty(), "{listed:?}");
    assert_no_leaks(&agent, Some(&net));
}

/// A pod's monitor is the standby the agent kept waiting, renamed for its pod as an exec'd
/// monitor would be named, in the network, IPC and UTS namespaces it made while it waited;
/// another standby takes its place.
#[tokio::test]
async fn a_pod_monitor_is_the_standby_and_a_new_standby_takes_its_place() {
    let (agent, net) = agent_with_network("").await;
    let standby = wait_standby(&agent, None);
    let made: Vec<String> = ["net", "ipc", "uts"]
        .iter()
        .map(|kind| namespace_of(standby, kind))
        .collect();
    for (kind, made) in ["net", "ipc", "uts"].iter().zip(&made) {
        assert_ne!(
            *made,
            namespace_of(agent.pid(), kind),
            "the waiting standby's {kind} namespace is a new one"
        );
    }
    let id = run(&agent, pod_config("standby")).await.unwrap();
    assert_eq!(
        agent.metric("berth_monitor_starts_total{how=\"standby\"}"),
        1.0
    );
    assert_eq!(
        agent.metric("berth_monitor_starts_total{how=\"exec\"}"),
        0.0
    );
    let monitors = processes_mentioning(&pod_dir(&agent, &id).to_string_lossy());
    assert_eq!(monitors, vec![standby], "the pod's monitor is the standby");
    let cmdline = std::fs::read(format!("/proc/{standby}/cmdline")).unwrap();
    let config = pod_dir(&agent, &id).join("monitor.json");
    assert!(
        String::from_utf8_lossy(&cmdline).contains(&format!("\0monitor\0{}\0", config.display())),
        "{:?}",
        String::from_utf8_lossy(&cmdline)
    );
    // The pod's namespaces, pinned in its dir, are those.
    for (kind, made) in ["net", "ipc", "uts"].iter().zip(&made) {
        let pinned = std::fs::metadata(pod_dir(&agent, &id).join("ns").join(kind))
            .unwrap()
            .ino();
        assert_eq!(
            *made,
            format!("{kind}:[{pinned}]"),
            "the pod's {kind} namespace"
        );
    }
    let next = wait_standby(&agent, Some(standby));
    // The pod works as one whose monitor was exec'd: its own network namespace and IP.
    assert!(!pod_ip(&agent, &id).await.is_empty());
    let second = run(&agent, pod_config("standby-2")).await.unwrap();
    assert_eq!(
        processes_mentioning(&pod_dir(&agent, &second).to_string_lossy()),
        vec![next]
    );
    remove_all_leaving_nothing(&agent, &[&id, &second], &net).await;
}

/// A pod that shares the host's namespaces gets them though its monitor was a standby that had
/// made its own: all three for a host-network, host-IPC pod; only those it shares for one
/// with an IPC namespace of its own.
#[tokio::test]
async fn a_standby_goes_back_to_the_host_namespaces_its_pod_shares() {
    let agent = TestAgent::start().await;
    let host = |kind: &str| namespace_of(std::process::id(), kind);
    let mut standby = None;
    let mut pods = Vec::new();
    for (name, ipc, own) in [
        ("standby-hostns", NamespaceMode::Node, &[][..]),
        ("standby-hostnet", NamespaceMode::Pod, &["ipc"][..]),
    ] {
        let monitor = wait_standby(&agent, standby);
        let config = pod_config_with(name, NamespaceMode::Node, NamespaceMode::Container, ipc);
        let id = run(&agent, config).await.unwrap();
        assert_eq!(
            processes_mentioning(&pod_dir(&agent, &id).to_string_lossy()),
            vec![monitor],
            "{name}'s monitor is the standby"
        );
        for kind in ["net", "ipc", "uts"] {
            let shares = namespace_of(monitor, kind) == host(kind);
            assert_eq!(shares, !own.contains(&kind), "{name}'s {kind} namespace");
            assert_eq!(
                pod_dir(&agent, &id).join("ns").join(kind).exists(),
                own.contains(&kind),
                "{name}'s {kind} namespace pinned"
            );
        }
        standby = Some(monitor);
        pods.push(id);
    }
    assert_eq!(
        agent.metric("berth_monitor_starts_total{how=\"standby\"}"),
        2.0
    );
    for id in &pods {
        remove(&agent, id).await;
    }
    assert_no_leaks(&agent, None);
}

/// The standby belongs to its agent: it exits when the agent dies, however it dies.
#[tokio::test]
async fn the_standby_monitor_exits_with_its_agent() {
    let mut agent = TestAgent::start().await;
    let first = wait_standby(&agent, None);
    agent.stop_with(nix::sys::signal::Signal::SIGKILL);
    berth_e2e::container_fixture::wait_process_gone(first as i32);
    agent.restart_with(nix::sys::signal::Signal::SIGKILL).await;
    let second = wait_standby(&agent, Some(first));
    agent.stop_with(nix::sys::signal::Signal::SIGTERM);
    berth_e2e::container_fixture::wait_process_gone(second as i32);
    assert_eq!(standby_monitors(&agent), Vec::<u32>::new());
}

/// A standby that died before its pod came is not a failed pod: the monitor is exec'd, and a
/// new standby started.
#[tokio::test]
async fn a_pod_starts_though_its_standby_monitor_was_killed() {
    let (agent, net) = agent_with_network("").await;
    let standby = wait_standby(&agent, None);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(standby as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    berth_e2e::container_fixture::wait_process_gone(standby as i32);
    let id = run(&agent, pod_config("no-standby")).await.unwrap();
    assert_eq!(
        agent.metric("berth_monitor_starts_total{how=\"exec\"}"),
        1.0
    );
    assert_eq!(
        agent.metric("berth_monitor_starts_total{how=\"standby\"}"),
        0.0
    );
    assert_eq!(
        processes_mentioning(&pod_dir(&agent, &id).to_string_lossy()).len(),
        1,
        "one monitor"
    );
    wait_standby(&agent, Some(standby));
    remove_all_leaving_nothing(&agent, &[&id], &net).await;
}

/// `[runtime] monitor_standby = false`: no standby, every monitor exec'd for its pod.
#[tokio::test]
async fn with_monitor_standby_off_no_monitor_waits_ahead() {
    let (agent, net) = agent_with_network("[runtime]\nmonitor_standby = false\n").await;
    let id = run(&agent, pod_config("exec")).await.unwrap();
    let second = run(&agent, pod_config("exec-2")).await.unwrap();
    assert_eq!(
        agent.metric("berth_monitor_starts_total{how=\"exec\"}"),
        2.0
    );
    assert_eq!(standby_monitors(&agent), Vec::<u32>::new());
    remove_all_leaving_nothing(&agent, &[&id, &second], &net).await;
}

/// An idle monitor gives back the pages its work touched (`trim`) and then waits without
/// running libc's code again: none of libc's code stays mapped in it (its poll loop, nix and
/// libc's wrappers had kept ~0.4 MiB of code mapped in every idle monitor).
#[tokio::test]
async fn an_idle_monitor_keeps_none_of_libcs_code_mapped() {
    let (agent, net) = agent_with_network("").await;
    let id = run(&agent, pod_config("idle")).await.unwrap();
    let pid: u32 = std::fs::read_to_string(pod_dir(&agent, &id).join("monitor.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let code = |name: &str| -> u64 {
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
        let mut total = 0;
        let mut counting = false;
        for line in smaps.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields
                .first()
                .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
            {
                counting = fields.get(1).is_some_and(|p| p.contains('x'))
                    && fields.get(5).is_some_and(|path| path.ends_with(name));
            } else if counting && fields.first() == Some(&"Rss:") {
                total += fields[1].parse::<u64>().unwrap();
            }
        }
        total
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while code("libc.so.6") > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        code("libc.so.6"),
        0,
        "KiB of libc's code mapped in the idle monitor (and {} KiB of berthd's)",
        code("berthd")
    );
    remove_all_leaving_nothing(&agent, &[&id], &net).await;
}
