//! Containers through the pod monitor and the executor (`berthd init`), below the CRI layer:
//! a real pod, a real image, a spec from `berth_runtime::spec`, the monitor's control socket.

use berth_e2e::monitor_fixture::{
    bundle, create, pod_with_image, request, wait_exit, CgroupCleanup,
};
use berth_e2e::network::mounts_under;
use berth_e2e::registry::TestRegistry;
use berth_e2e::TestAgent;
use berth_runtime::monitor::protocol::Request;

fn parent() -> String {
    format!("/berth-e2e-{}", std::process::id())
}

#[tokio::test]
async fn monitor_answers_ping_with_its_pid_and_refuses_bad_requests() {
    let registry = TestRegistry::start();
    let agent = TestAgent::start().await;
    let pod = pod_with_image(&agent, &registry, "ping").await;
    let pid: u32 = std::fs::read_to_string(pod.dir.join("monitor.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(berth_podsandbox::monitor_client::ping(&pod.dir), Some(pid));
    let refused = request(
        &pod.dir,
        &Request::Start {
            id: "no-such-container".into(),
        },
    );
    assert!(!refused.ok && refused.error.is_some(), "{refused:?}");
    // Still there after the refusal.
    assert_eq!(berth_podsandbox::monitor_client::ping(&pod.dir), Some(pid));
}

#[tokio::test]
async fn monitor_runs_containers_logs_them_and_records_exits() {
    let registry = TestRegistry::start();
    let agent = TestAgent::start().await;
    let pod = pod_with_image(&agent, &registry, "monitor").await;
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
        &parent(),
    );
    let (_, exit_file) = create(&pod, &b, &id, &parent());
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
    assert!(!berth_e2e::cgroup_dir("memory", &format!("berth-e2e-{suffix}/{id}")).exists());
    drop(b);

    // Killed by a signal: 128 + 9.
    let id = format!("sleeper-{suffix}");
    let b = bundle(&agent, &pod, &id, &["sleep", "100"], 0, &parent());
    let (_, exit_file) = create(&pod, &b, &id, &parent());
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
        &parent(),
    );
    let (_, exit_file) = create(&pod, &b, &id, &parent());
    assert!(request(&pod.dir, &Request::Start { id: id.clone() }).ok);
    let exit = wait_exit(&exit_file);
    assert_eq!(exit.reason, "OOMKilled", "{exit:?}");
    assert!(request(&pod.dir, &Request::Delete { id: id.clone() }).ok);
    drop(b);

    // Exit 0 is Completed.
    let id = format!("ok-{suffix}");
    let b = bundle(&agent, &pod, &id, &["true"], 0, &parent());
    let (_, exit_file) = create(&pod, &b, &id, &parent());
    assert!(request(&pod.dir, &Request::Start { id: id.clone() }).ok);
    assert_eq!(wait_exit(&exit_file).reason, "Completed");
    assert!(request(&pod.dir, &Request::Delete { id: id.clone() }).ok);
    drop(b);

    berth_e2e::cri::remove_pod(&mut agent.runtime().await, &pod.id).await;
    assert!(
        mounts_under(agent.dir()).is_empty(),
        "{:?}",
        mounts_under(agent.dir())
    );
}
