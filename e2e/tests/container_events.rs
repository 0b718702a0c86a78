//! GetContainerEvents through the CRI: a pod's and its container's lifecycle in order, each
//! event with the pod's status and its containers'; an exit pushed by the monitor (no RPC is
//! made while the test waits for it); exits that happened while the agent was down, published
//! once it is back; a subscriber that stops reading is dropped while another gets everything.
//! Also PodSandboxStatus's containers_statuses and timestamp.

use std::time::{Duration, Instant};

use berth_e2e::container_fixture::*;
use k8s_cri::v1::*;
use tonic::Streaming;

type Kind = ContainerEventType;

async fn subscribe(c: &mut berth_e2e::RuntimeClient) -> Streaming<ContainerEventResponse> {
    c.get_container_events(GetEventsRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// The next event of `stream` for pod `pod` (whose uid is `uid-<name>`), within 20 s.
async fn next_of(
    stream: &mut Streaming<ContainerEventResponse>,
    uid: &str,
) -> ContainerEventResponse {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .unwrap_or_else(|_| panic!("no event for pod {uid} within 20 s"))
            .expect("event stream failed")
            .expect("event stream ended");
        let status = event
            .pod_sandbox_status
            .as_ref()
            .expect("every event has the pod's status");
        if status.metadata.as_ref().map(|m| m.uid.as_str()) == Some(uid) {
            return event;
        }
    }
}

fn kind(e: &ContainerEventResponse) -> (String, Kind) {
    (
        e.container_id.clone(),
        Kind::try_from(e.container_event_type).unwrap(),
    )
}

fn container_in<'a>(e: &'a ContainerEventResponse, id: &str) -> Option<&'a ContainerStatus> {
    e.containers_statuses.iter().find(|s| s.id == id)
}

#[tokio::test]
async fn events_follow_a_pod_and_its_container_in_order_with_their_statuses() {
    let _top = CgroupTop::new();
    let _cgroups = PodCgroups(vec!["events".into()]);
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let mut events = subscribe(&mut c).await;
    let uid = "uid-events";
    let pod_cfg = pod_config(&f, "events");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let created = next_of(&mut events, uid).await;
    assert_eq!(kind(&created), (pod.clone(), Kind::ContainerCreatedEvent));
    assert!(created.created_at > 0);
    let started = next_of(&mut events, uid).await;
    assert_eq!(kind(&started), (pod.clone(), Kind::ContainerStartedEvent));
    let status = started.pod_sandbox_status.as_ref().unwrap();
    assert_eq!(status.id, pod);
    assert_eq!(status.state, PodSandboxState::SandboxReady as i32);

    // It waits on a fifo in the pod's /dev/shm until the test writes to it from the host.
    let cfg = container_config(
        &f,
        "waits",
        &[
            "sh",
            "-c",
            "mkfifo /dev/shm/go && read line < /dev/shm/go; exit 7",
        ],
    );
    let id = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
    let e = next_of(&mut events, uid).await;
    assert_eq!(kind(&e), (id.clone(), Kind::ContainerCreatedEvent));
    assert_eq!(
        container_in(&e, &id).map(|s| s.state),
        Some(ContainerState::ContainerCreated as i32)
    );
    start(&mut c, &id).await;
    let e = next_of(&mut events, uid).await;
    assert_eq!(kind(&e), (id.clone(), Kind::ContainerStartedEvent));
    assert_eq!(
        container_in(&e, &id).map(|s| s.state),
        Some(ContainerState::ContainerRunning as i32)
    );

    // PodSandboxStatus has the pod's containers and when it was read.
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let response = c
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(response.timestamp >= before, "{}", response.timestamp);
    let ids: Vec<_> = response.containers_statuses.iter().map(|s| &s.id).collect();
    assert_eq!(ids, [&id]);
    assert_eq!(
        response.containers_statuses[0].state,
        ContainerState::ContainerRunning as i32
    );

    // Let it exit, and make no RPC until the STOPPED event is here: only the monitor's notice
    // can bring it.
    let fifo = f.agent.paths.state.join("pods").join(&pod).join("shm/go");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fifo.exists() {
        assert!(Instant::now() < deadline, "the container made no fifo");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    std::fs::write(&fifo, "go\n").unwrap();
    let e = next_of(&mut events, uid).await;
    assert_eq!(kind(&e), (id.clone(), Kind::ContainerStoppedEvent));
    let exited = container_in(&e, &id).unwrap();
    assert_eq!(exited.state, ContainerState::ContainerExited as i32);
    assert_eq!(exited.exit_code, 7);

    c.remove_container(RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    let e = next_of(&mut events, uid).await;
    assert_eq!(kind(&e), (id.clone(), Kind::ContainerDeletedEvent));
    assert!(
        container_in(&e, &id).is_none(),
        "a deleted container is gone from its pod"
    );

    c.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    let e = next_of(&mut events, uid).await;
    assert_eq!(kind(&e), (pod.clone(), Kind::ContainerStoppedEvent));
    assert_eq!(
        e.pod_sandbox_status.as_ref().unwrap().state,
        PodSandboxState::SandboxNotready as i32
    );
    // Stopping again changes nothing, so it says nothing.
    c.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    remove_pod(&mut c, &pod).await;
    let e = next_of(&mut events, uid).await;
    assert_eq!(kind(&e), (pod.clone(), Kind::ContainerDeletedEvent));
    // Kubelet keys a deleted pod by the uid in its status: the last event still has one.
    assert_eq!(e.pod_sandbox_status.as_ref().unwrap().id, pod);
    assert_eq!(f.agent.metric("berth_events_subscribers "), 1.0);
    drop(events);
    assert_clean(&f, "events");
}

#[tokio::test]
async fn exits_while_the_agent_is_down_are_published_once_it_is_back() {
    let _top = CgroupTop::new();
    let _cgroups = PodCgroups(vec!["downexit".into()]);
    let mut f = fixture().await;
    let mut c = f.agent.runtime().await;
    let uid = "uid-downexit";
    let pod_cfg = pod_config(&f, "downexit");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let cfg = container_config(&f, "sleeper", &["sleep", "1000"]);
    let id = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
    start(&mut c, &id).await;
    let pid = container_pid(&mut c, &id).await;

    f.agent.stop_with(nix::sys::signal::Signal::SIGKILL);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // The monitor records the exit while nobody listens.
    let exit_file = f
        .agent
        .paths
        .state
        .join("containers")
        .join(&id)
        .join("exit.json");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !exit_file.exists() {
        assert!(Instant::now() < deadline, "the monitor recorded no exit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f.agent
        .restart_with(nix::sys::signal::Signal::SIGKILL)
        .await;
    let mut c = f.agent.runtime().await;
    let mut first = subscribe(&mut c).await;
    let e = next_of(&mut first, uid).await;
    assert_eq!(kind(&e), (id.clone(), Kind::ContainerStoppedEvent));
    assert_eq!(
        container_in(&e, &id).map(|s| s.exit_code),
        Some(128 + libc::SIGKILL)
    );
    // Published once: a later subscriber sees only what happens from then on.
    let mut second = subscribe(&mut c).await;
    remove_pod(&mut c, &pod).await;
    for stream in [&mut first, &mut second] {
        assert_eq!(
            kind(&next_of(stream, uid).await),
            (id.clone(), Kind::ContainerDeletedEvent)
        );
    }
    assert_clean(&f, "downexit");
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_dropped_and_the_others_get_everything() {
    let _top = CgroupTop::new();
    let _cgroups = PodCgroups(vec!["slowsub".into()]);
    let f = fixture_with("[events]\nqueue = 4\n").await;
    let mut c = f.agent.runtime().await;
    let uid = "uid-slowsub";
    // Never read: once the transport's windows and buffers are full, its queue fills. A
    // connection of its own, so that it holds up nobody else's window.
    let mut slow = subscribe(&mut f.agent.runtime().await).await;
    let mut quick = subscribe(&mut c).await;
    let mut pod_cfg = pod_config(&f, "slowsub");
    // Every event carries the pod's status: 128 KiB each fill the transport in a few dozen.
    pod_cfg
        .annotations
        .insert("ballast".into(), "x".repeat(128 << 10));
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    for _ in 0..2 {
        next_of(&mut quick, uid).await;
    }
    let mut cycles = 0;
    while f.agent.metric("berth_events_dropped_subscribers_total") < 1.0 {
        assert!(cycles < 300, "the slow subscriber was never dropped");
        let name = format!("c{cycles}");
        let cfg = container_config(&f, &name, &["true"]);
        let id = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
        c.remove_container(RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
        // The quick one keeps up and misses nothing.
        assert_eq!(
            kind(&next_of(&mut quick, uid).await),
            (id.clone(), Kind::ContainerCreatedEvent)
        );
        // Its init, waiting to be started, is killed: STOPPED, then DELETED.
        assert_eq!(
            kind(&next_of(&mut quick, uid).await),
            (id.clone(), Kind::ContainerStoppedEvent)
        );
        assert_eq!(
            kind(&next_of(&mut quick, uid).await),
            (id.clone(), Kind::ContainerDeletedEvent)
        );
        cycles += 1;
    }
    // The slow one reads what it had, then learns it was dropped.
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(20), slow.message())
            .await
            .expect("the dropped stream neither ended nor failed")
        {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    let status = end.expect_err("a dropped subscriber's stream ends with an error");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(f.agent.metric("berth_events_subscribers "), 1.0);
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "slowsub");
}

#[tokio::test]
async fn a_pod_whose_monitor_dies_is_stopped_at_once_and_said_so_once() {
    let _top = CgroupTop::new();
    let _cgroups = PodCgroups(vec!["deadmon".into()]);
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let mut events = subscribe(&mut c).await;
    let uid = "uid-deadmon";
    let pod = run_pod(&mut c, pod_config(&f, "deadmon")).await;
    for expected in [Kind::ContainerCreatedEvent, Kind::ContainerStartedEvent] {
        assert_eq!(
            kind(&next_of(&mut events, uid).await),
            (pod.clone(), expected)
        );
    }
    let monitor = monitor_pid(&mut c, &pod).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // No RPC until the event is here: only the agent's watch on the monitor can bring it.
    let e = next_of(&mut events, uid).await;
    assert_eq!(kind(&e), (pod.clone(), Kind::ContainerStoppedEvent));
    assert_eq!(
        e.pod_sandbox_status.unwrap().state,
        PodSandboxState::SandboxNotready as i32
    );
    assert_eq!(f.agent.metric("berth_sandboxes{state=\"ready\"}"), 0.0);
    // StopPodSandbox finds it stopped already: no second STOPPED, straight to DELETED.
    remove_pod(&mut c, &pod).await;
    let e = next_of(&mut events, uid).await;
    assert_eq!(kind(&e), (pod.clone(), Kind::ContainerDeletedEvent));
    assert_clean(&f, "deadmon");
}
