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
