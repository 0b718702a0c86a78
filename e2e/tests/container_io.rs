//! Containers through the CRI: ExecSync, stdin, terminals and the descriptors a container holds.

use berth_e2e::container_fixture::*;
use k8s_cri::v1::*;

#[tokio::test]
async fn exec_sync_returns_output_and_code_and_times_out() {
    let _top = CgroupTop::new();
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
    start(&mut c, &id).await;
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
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "execs");
}

/// Pod `name` with a container running `sleep 1000`: (pod id, container id).
async fn sleeping_container(
    f: &Fixture,
    c: &mut berth_e2e::RuntimeClient,
    name: &str,
) -> (String, String) {
    let pod_cfg = pod_config(f, name);
    let pod = run_pod(c, pod_cfg.clone()).await;
    let command = container_config(f, "target", &["sleep", "1000"]);
    let id = create(c, &pod, command, pod_cfg).await;
    start(c, &id).await;
    (pod, id)
}

/// The agent's ExecSync standby executors (`berthd init exec-standby <state>`) that are running.
fn exec_standbys(f: &Fixture) -> Vec<u32> {
    let needle = format!("\0init\0exec-standby\0{}\0", f.agent.paths.state.display());
    berth_e2e::network::processes_mentioning(&needle)
        .into_iter()
        .filter(|&pid| berth_e2e::running(pid))
        .collect()
}

/// Waits (at most 20 s) until one standby executor waits, other than `not`; returns its pid.
async fn wait_exec_standby(f: &Fixture, not: Option<u32>) -> u32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let waiting = f.agent.metric("berth_exec_standby_waiting") == 1.0;
        let fresh: Vec<u32> = exec_standbys(f)
            .into_iter()
            .filter(|&p| Some(p) != not)
            .collect();
        if let ([pid], true) = (fresh.as_slice(), waiting) {
            return *pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no standby executor waits: {fresh:?}, waiting {waiting}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// An agent's first ExecSync starts a standby executor, which gives back what its start-up
/// touched while it waits; the next ExecSync is handed to it (in the container, stdin
/// /dev/null, output and exit code as ever), it goes once done, and another waits in its place.
#[tokio::test]
async fn an_exec_sync_is_handed_to_the_standby_executor_and_another_waits_after_it() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let (pod, id) = sleeping_container(&f, &mut c, "standby").await;
    assert_eq!(
        exec_standbys(&f),
        Vec::<u32>::new(),
        "none before an ExecSync"
    );
    assert_eq!(exec_sync(&mut c, &id, &["true"]).await.exit_code, 0);
    assert_eq!(
        f.agent.metric("berth_exec_sync_starts_total{how=\"exec\"}"),
        1.0
    );
    let standby = wait_exec_standby(&f, None).await;
    wait_trimmed(standby, "the waiting standby executor").await;

    let r = exec_sync(
        &mut c,
        &id,
        &[
            "sh",
            "-c",
            "readlink /proc/self/fd/0; tr '\\0' ' ' < /proc/1/cmdline; echo; echo err >&2; exit 3",
        ],
    )
    .await;
    assert_eq!(
        (
            String::from_utf8_lossy(&r.stdout).as_ref(),
            String::from_utf8_lossy(&r.stderr).as_ref(),
            r.exit_code
        ),
        ("/dev/null\nsleep 1000 \n", "err\n", 3),
        "in the container, stdin /dev/null"
    );
    assert_eq!(
        f.agent
            .metric("berth_exec_sync_starts_total{how=\"standby\"}"),
        1.0
    );
    wait_process_gone(standby as i32);
    assert_eq!(zombie_children(f.agent.pid() as i32), Vec::<i32>::new());
    let next = wait_exec_standby(&f, Some(standby)).await;
    assert_ne!(next, standby);
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "standby");
}

/// A standby executor is its agent's: it exits when the agent dies, even by SIGKILL.
#[tokio::test]
async fn the_standby_executor_goes_with_its_agent() {
    let _top = CgroupTop::new();
    let mut f = fixture().await;
    let mut c = f.agent.runtime().await;
    let (pod, id) = sleeping_container(&f, &mut c, "standby-dies").await;
    assert_eq!(exec_sync(&mut c, &id, &["true"]).await.exit_code, 0);
    let standby = wait_exec_standby(&f, None).await;
    f.agent.stop_with(nix::sys::signal::Signal::SIGKILL);
    wait_process_gone(standby as i32);
    f.agent
        .restart_with(nix::sys::signal::Signal::SIGTERM)
        .await;
    let mut c = f.agent.runtime().await;
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "standby-dies");
}

/// `[runtime] exec_standby = false`: every ExecSync starts an executor of its own, and none
/// waits ahead.
#[tokio::test]
async fn with_exec_standby_off_every_exec_sync_starts_its_own_executor() {
    let _top = CgroupTop::new();
    let f = fixture_with("[runtime]\nexec_standby = false\n").await;
    let mut c = f.agent.runtime().await;
    let (pod, id) = sleeping_container(&f, &mut c, "no-standby").await;
    for _ in 0..3 {
        assert_eq!(exec_sync(&mut c, &id, &["true"]).await.exit_code, 0);
    }
    assert_eq!(
        f.agent.metric("berth_exec_sync_starts_total{how=\"exec\"}"),
        3.0
    );
    assert_eq!(f.agent.metric("berth_exec_standby_waiting"), 0.0);
    assert_eq!(exec_standbys(&f), Vec::<u32>::new());
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "no-standby");
}

#[tokio::test]
async fn stdin_is_an_open_pipe_only_when_asked_for() {
    let _top = CgroupTop::new();
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
    // Without stdin, `read` sees EOF at once; with it, it waits on a pipe whose other end the
    // pod's monitor holds open, so no EOF can come.
    assert_eq!(wait_exited(&mut c, &without).await.exit_code, 0);
    assert_eq!(
        status(&mut c, &with).await.state,
        ContainerState::ContainerRunning as i32
    );
    let pid = container_pid(&mut c, &with).await;
    let monitor = monitor_pid(&mut c, &pod).await;
    let stdin = std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap();
    assert!(stdin.to_string_lossy().starts_with("pipe:"), "{stdin:?}");
    let held = std::fs::read_dir(format!("/proc/{monitor}/fd"))
        .unwrap()
        .flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == stdin));
    assert!(
        held,
        "the monitor holds no end of the container's stdin {stdin:?}"
    );
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "stdin");
}

#[tokio::test]
async fn tty_containers_run_on_a_terminal_and_log_one_stream() {
    let _top = CgroupTop::new();
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
    start(&mut c, &id).await;
    let s = wait_exited(&mut c, &id).await;
    assert_eq!(s.exit_code, 0);
    // Read at once: the monitor drains the terminal into the log before it records the exit.
    let log = std::fs::read_to_string(&s.log_path).unwrap();
    assert!(log.contains(" stdout F is-a-tty\n"), "{log}");
    assert!(
        log.contains(" stdout F to-stderr\n"),
        "a terminal has one stream: {log}"
    );
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "tty");
}

#[tokio::test]
async fn a_container_holds_no_descriptor_of_another() {
    let _top = CgroupTop::new();
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
    start(&mut c, &first).await;
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
    start(&mut c, &second).await;
    let s = wait_exited(&mut c, &second).await;
    let log = std::fs::read_to_string(&s.log_path).unwrap();
    // stdin, stdout, stderr, and the directory `ls` itself opened.
    assert!(log.contains(" stdout F 0 1 2 3 \n"), "{log}");
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "fds");
}
