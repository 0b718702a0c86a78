//! Exec over the streaming server end to end: the Exec RPC hands out a URL and a SPDY client
//! that is not berth's code (`berth_e2e::spdy`) runs the session against a real container;
//! also the URLs themselves, the RPCs' refusals and clients that misbehave. crictl and critest
//! are the cross-check run by hand.

use std::time::{Duration, Instant};

use berth_e2e::container_fixture::*;
use berth_e2e::spdy::{self, run_session, Client, Event, Session};
use berth_e2e::streaming_fixture::*;
use k8s_cri::v1::*;
use sha2::{Digest, Sha256};

#[tokio::test]
async fn exec_streams_output_and_reports_exit_codes() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let (pod, id) = running(&f, &mut c, "exec-codes", &["sleep", "1000"], |_| {}).await;
    for code in [0, 1, 7, 255] {
        let script = format!("echo -n out; echo -n err >&2; exit {code}");
        let o = exec(&mut c, &id, &["sh", "-c", &script], &out_err()).await;
        assert_eq!(
            (o.stdout.as_slice(), o.stderr.as_slice()),
            (&b"out"[..], &b"err"[..])
        );
        assert_eq!(o.exit_code(), code, "{}", o.status);
        if code == 0 {
            assert_eq!(o.status["status"], "Success");
        } else {
            assert_eq!(o.status["reason"], "NonZeroExitCode", "{}", o.status);
            assert_eq!(o.status["details"]["causes"][0]["reason"], "ExitCode");
        }
    }
    // A command that cannot start is an InternalError status, not a hang.
    let o = exec(&mut c, &id, &["/no/such/binary"], &out_err()).await;
    assert_eq!(o.status["status"], "Failure", "{}", o.status);
    assert_eq!(o.status["reason"], "InternalError", "{}", o.status);
    assert!(
        f.agent
            .metric("berth_streaming_sessions_total{verb=\"exec\",protocol=\"spdy\"}")
            >= 5.0
    );
    wait_metric(&f, "berth_streaming_active_sessions{", 0.0).await;
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "exec-codes");
}

#[tokio::test]
async fn sixteen_mib_through_exec_stdin_and_stdout_keep_their_checksum() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let (pod, id) = running(&f, &mut c, "exec-bulk", &["sleep", "1000"], |_| {}).await;
    let mut data = vec![0u8; 16 * 1024 * 1024];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let s = Session {
        stdin: Some(data.clone()),
        ..out_err()
    };
    // Both directions at once: the process writes while we still send.
    let o = exec(&mut c, &id, &["cat"], &s).await;
    assert_eq!(o.exit_code(), 0, "{}", o.status);
    assert_eq!(o.stdout.len(), data.len());
    assert_eq!(Sha256::digest(&o.stdout), Sha256::digest(&data));
    // And output the process makes itself, checked against its own checksum.
    let o = exec(
        &mut c,
        &id,
        &[
            "sh",
            "-c",
            "head -c 16777216 /dev/urandom > /tmp/out; sha256sum /tmp/out >&2; cat /tmp/out",
        ],
        &out_err(),
    )
    .await;
    assert_eq!(o.stdout.len(), 16 * 1024 * 1024);
    let want = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        want.split_whitespace().next().unwrap(),
        format!("{:x}", Sha256::digest(&o.stdout))
    );
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "exec-bulk");
}

#[tokio::test]
async fn exec_ends_when_the_process_exits_though_stdin_stays_open() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let (pod, id) = running(&f, &mut c, "exec-open", &["sleep", "1000"], |_| {}).await;
    for tty in [false, true] {
        let s = Session {
            stdin: Some(Vec::new()),
            keep_stdin_open: true,
            stdout: true,
            stderr: !tty,
            tty,
            ..Default::default()
        };
        let o = exec(&mut c, &id, &["echo", "hello"], &s).await;
        assert_eq!(o.exit_code(), 0);
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("hello"), "tty={tty}: {text:?}");
    }
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "exec-open");
}

#[tokio::test]
async fn tty_exec_gets_a_controlling_terminal_resizes_and_dies_with_its_client() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let (pod, id) = running(&f, &mut c, "exec-tty", &["sleep", "1000"], |_| {}).await;
    let s = Session {
        stdout: true,
        tty: true,
        resize: vec![(0, 0), (100, 40)],
        ..Default::default()
    };
    let script = "tty; while true; do stty size; sleep 0.05; done # resize-loop";
    let url = exec_url(&mut c, &id, &["sh", "-c", script], &s).await;
    let mut streams = spdy::open_session(&url, &s).await;
    let resize = streams.resize.take().unwrap();
    for (w, h) in &s.resize {
        resize
            .send(format!("{{\"Width\":{w},\"Height\":{h}}}\n").as_bytes())
            .await
            .unwrap();
    }
    let mut stdout = streams.stdout.take().unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&seen).contains("40 100") {
        assert!(
            Instant::now() < deadline,
            "no resize seen: {:?}",
            String::from_utf8_lossy(&seen)
        );
        match tokio::time::timeout(Duration::from_secs(20), stdout.next()).await {
            Ok(Some(Event::Data(d))) => seen.extend(d),
            other => panic!("stdout ended: {other:?}"),
        }
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.starts_with("/dev/pts/"),
        "a terminal of its own: {text:?}"
    );
    // A session still running after a moment is waited for by a slim `berthd init wait`, not
    // by the executor libcontainer ran in.
    let state = f.agent.paths.state.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let waiters = loop {
        let waiters: Vec<u32> = berth_e2e::network::processes_mentioning("init\0wait\0")
            .into_iter()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.contains(&state))
            })
            .collect();
        if !waiters.is_empty() || Instant::now() > deadline {
            break waiters;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(waiters.len(), 1, "one waiter for the one open session");
    // It keeps nothing of the start-up that brought it to its wait.
    wait_trimmed(waiters[0], "the waiter").await;
    // The client goes away mid-session: the exec'd shell and its children go with it, killed
    // through the waiter, which goes too.
    drop((stdout, resize, streams));
    wait_gone(&mut c, &id, "resize-loop").await;
    wait_metric(&f, "berth_streaming_active_sessions{", 0.0).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::path::Path::new(&format!("/proc/{}", waiters[0])).exists() {
        assert!(Instant::now() < deadline, "the waiter outlived its session");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "exec-tty");
}

#[tokio::test]
async fn a_client_that_drops_mid_output_kills_the_exec() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let (pod, id) = running(&f, &mut c, "exec-drop", &["sleep", "1000"], |_| {}).await;
    let s = out_err();
    let url = exec_url(&mut c, &id, &["yes", "flood"], &s).await;
    let mut streams = spdy::open_session(&url, &s).await;
    let mut stdout = streams.stdout.take().unwrap();
    match stdout.next().await {
        Some(Event::Data(d)) => assert!(d.starts_with(b"flood")),
        other => panic!("no output: {other:?}"),
    }
    drop((stdout, streams));
    wait_gone(&mut c, &id, "yes flood").await;
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "exec-drop");
}

#[tokio::test]
async fn urls_work_once_and_bad_requests_get_http_errors() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let (pod, id) = running(&f, &mut c, "exec-urls", &["sleep", "1000"], |_| {}).await;
    let s = out_err();
    let url = exec_url(&mut c, &id, &["true"], &s).await;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert_eq!(run_session(&url, &s).await.exit_code(), 0);
    let (again, _) = spdy::upgrade(&url, "POST", &["v4.channel.k8s.io"])
        .await
        .unwrap();
    assert_eq!(again.status, 404, "a used token: {again:?}");
    let (unknown, _) = spdy::upgrade(&format!("{url}x"), "GET", &["v4.channel.k8s.io"])
        .await
        .unwrap();
    assert_eq!(unknown.status, 404);
    // No protocol we speak: 403 with the list, and the token is spent.
    let url = exec_url(&mut c, &id, &["true"], &s).await;
    let (refused, _) = spdy::upgrade(&url, "GET", &["v9.channel.k8s.io"])
        .await
        .unwrap();
    assert_eq!(refused.status, 403, "{refused:?}");
    let accepted: Vec<&str> = refused
        .headers
        .iter()
        .filter(|(n, _)| n == "x-accepted-stream-protocol-versions")
        .map(|(_, v)| v.as_str())
        .collect();
    assert!(accepted.contains(&"v4.channel.k8s.io"), "{accepted:?}");
    // A port-forward token is not an exec token.
    let pf = c
        .port_forward(PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![80],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (wrong, _) = spdy::upgrade(
        &pf.replace("/portforward/", "/exec/"),
        "POST",
        &["v4.channel.k8s.io"],
    )
    .await
    .unwrap();
    assert_eq!(wrong.status, 404);
    assert!(
        f.agent
            .metric("berth_streaming_rejected_requests_total{reason=\"unknown_token\"}")
            >= 3.0
    );
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "exec-urls");
}

#[tokio::test]
async fn an_unused_url_expires() {
    let _top = CgroupTop::new();
    let f = fixture_with("[streaming]\ntoken_ttl_secs = 1\n").await;
    let mut c = f.agent.runtime().await;
    let (pod, id) = running(&f, &mut c, "exec-ttl", &["sleep", "1000"], |_| {}).await;
    let url = exec_url(&mut c, &id, &["true"], &out_err()).await;
    // Waiting out the TTL is the point of this test, not a race.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (late, _) = spdy::upgrade(&url, "POST", &["v4.channel.k8s.io"])
        .await
        .unwrap();
    assert_eq!(late.status, 404);
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "exec-ttl");
}

#[tokio::test]
async fn streaming_rpcs_refuse_what_cannot_be_served() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let (pod, id) = running(&f, &mut c, "exec-rpc", &["sleep", "1000"], |_| {}).await;
    let code = |r: Result<tonic::Response<ExecResponse>, tonic::Status>| r.unwrap_err().code();
    let req = |tty, stdin, stdout, stderr| ExecRequest {
        container_id: id.clone(),
        cmd: vec!["true".into()],
        tty,
        stdin,
        stdout,
        stderr,
    };
    assert_eq!(
        code(c.exec(req(true, false, true, true)).await),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        code(c.exec(req(false, false, false, false)).await),
        tonic::Code::InvalidArgument
    );
    let mut empty = req(false, false, true, false);
    empty.cmd.clear();
    assert_eq!(code(c.exec(empty).await), tonic::Code::InvalidArgument);
    let mut nobody = req(false, false, true, false);
    nobody.container_id = String::new();
    assert_eq!(code(c.exec(nobody).await), tonic::Code::InvalidArgument);
    let mut unknown = req(false, false, true, false);
    unknown.container_id = "0123456789abcdef-none".into();
    assert_eq!(code(c.exec(unknown).await), tonic::Code::NotFound);
    let attach = |container_id: &str| AttachRequest {
        container_id: container_id.into(),
        stdout: true,
        ..Default::default()
    };
    let created = create(
        &mut c,
        &pod,
        container_config(&f, "not-started", &["sleep", "1"]),
        pod_config(&f, "exec-rpc"),
    )
    .await;
    let mut not_started = req(false, false, true, false);
    not_started.container_id = created.clone();
    assert_eq!(
        code(c.exec(not_started).await),
        tonic::Code::FailedPrecondition
    );
    assert_eq!(
        c.attach(attach(&created)).await.unwrap_err().code(),
        tonic::Code::FailedPrecondition
    );
    assert!(c.attach(attach(&id)).await.is_ok());
    c.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    let err = c
        .port_forward(PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![80],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "exec-rpc");
}

#[tokio::test]
async fn misbehaving_clients_are_cut_off_and_leave_nothing_behind() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _top = CgroupTop::new();
    let f = fixture_with("[streaming]\nstream_creation_timeout_secs = 2\n").await;
    let mut c = f.agent.runtime().await;
    let (pod, id) = running(&f, &mut c, "exec-bad", &["sleep", "1000"], |_| {}).await;
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", f.agent.pid()))
            .unwrap()
            .count()
    };
    let s = out_err();
    // Warm up whatever the agent opens once (the first exec's report dir, the metrics), and
    // the standby executor the first ExecSync starts (its pipes: `wait_gone` below execs).
    run_session(&exec_url(&mut c, &id, &["true"], &s).await, &s).await;
    processes_in(&mut c, &id, "true").await;
    wait_metric(&f, "berth_exec_standby_waiting", 1.0).await;
    let baseline = fds();

    // Garbage after the upgrade: GOAWAY and the connection closes.
    let url = exec_url(&mut c, &id, &["sleep", "123"], &s).await;
    let (_, tcp) = spdy::upgrade(&url, "POST", &["v4.channel.k8s.io"])
        .await
        .unwrap();
    let mut garbage = Client::new(tcp.unwrap());
    garbage
        .send_raw(&[0x80, 0x02, 0, 1, 0, 0, 0, 0])
        .await
        .unwrap();
    garbage.wait_closed().await;
    assert_eq!(
        *garbage.goaway.lock().unwrap(),
        Some(1),
        "GOAWAY(PROTOCOL_ERROR)"
    );

    // A client that never opens its streams: closed after the creation timeout.
    let url = exec_url(&mut c, &id, &["sleep", "123"], &s).await;
    let (_, tcp) = spdy::upgrade(&url, "POST", &["v4.channel.k8s.io"])
        .await
        .unwrap();
    let mut silent = Client::new(tcp.unwrap());
    silent.wait_closed().await;

    // Half the streams, then nothing: the same.
    let url = exec_url(&mut c, &id, &["sleep", "123"], &s).await;
    let (_, tcp) = spdy::upgrade(&url, "POST", &["v4.channel.k8s.io"])
        .await
        .unwrap();
    let mut half = Client::new(tcp.unwrap());
    half.open(&[("streamtype", "error")]).await.unwrap();
    // An unknown stream type and a repeated one are refused; a stream with an even id, one
    // with a reused id, and data on a stream never opened are reset.
    assert_eq!(half.open(&[("streamtype", "video")]).await.err(), Some(3));
    assert_eq!(half.open(&[("streamtype", "error")]).await.err(), Some(3));
    assert_eq!(
        half.open_as(8, &[("streamtype", "stdout")]).await.err(),
        Some(1)
    );
    assert_eq!(
        half.open_as(1, &[("streamtype", "stdout")]).await.err(),
        Some(8)
    );
    half.ping(7).await.unwrap();
    assert_eq!(half.pongs.recv().await, Some(7), "PING echoed");
    half.wait_closed().await;

    // Slowloris: half a request line, never finished.
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /exec/").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(30), slow.read(&mut buf))
        .await
        .expect("the server hangs up on a slow client");
    assert!(matches!(n, Ok(_) | Err(_)));

    // A header block that inflates past the cap: GOAWAY.
    let url = exec_url(&mut c, &id, &["sleep", "123"], &s).await;
    let (_, tcp) = spdy::upgrade(&url, "POST", &["v4.channel.k8s.io"])
        .await
        .unwrap();
    let mut bomb = Client::new(tcp.unwrap());
    let huge = "x".repeat(1 << 20);
    let _ = bomb
        .open(&[("streamtype", "error"), ("padding", &huge)])
        .await;
    bomb.wait_closed().await;
    assert_eq!(*bomb.goaway.lock().unwrap(), Some(1));

    // Nothing left: no session, no exec'd process, no descriptor.
    wait_metric(&f, "berth_streaming_active_sessions{", 0.0).await;
    wait_gone(&mut c, &id, "sleep 123").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while fds() > baseline {
        assert!(
            Instant::now() < deadline,
            "agent fds {} > {baseline}",
            fds()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "exec-bad");
}
