//! The streaming server end to end: Exec, Attach and PortForward RPCs hand out URLs, and a
//! SPDY client that is not berth's code (`berth_e2e::spdy`) runs the sessions against real
//! containers. crictl and critest are the cross-check run by hand (see the issue notes).

use std::time::{Duration, Instant};

use berth_e2e::container_fixture::*;
use berth_e2e::spdy::{self, run_session, Client, Event, Session};
use berth_e2e::RuntimeClient;
use k8s_cri::v1::*;
use sha2::{Digest, Sha256};

/// A running container in a new pod; returns (pod, container).
async fn running(
    f: &Fixture,
    c: &mut RuntimeClient,
    name: &str,
    command: &[&str],
    tweak: impl FnOnce(&mut ContainerConfig),
) -> (String, String) {
    let pod_cfg = pod_config(f, name);
    let pod = run_pod(c, pod_cfg.clone()).await;
    let mut cfg = container_config(f, name, command);
    tweak(&mut cfg);
    let id = create(c, &pod, cfg, pod_cfg).await;
    start(c, &id).await;
    (pod, id)
}

fn exec_request(id: &str, cmd: &[&str], s: &Session) -> ExecRequest {
    ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty: s.tty,
        stdin: s.stdin.is_some(),
        stdout: s.stdout,
        stderr: s.stderr,
    }
}

async fn exec_url(c: &mut RuntimeClient, id: &str, cmd: &[&str], s: &Session) -> String {
    c.exec(exec_request(id, cmd, s))
        .await
        .unwrap()
        .into_inner()
        .url
}

async fn exec(c: &mut RuntimeClient, id: &str, cmd: &[&str], s: &Session) -> spdy::Outcome {
    let url = exec_url(c, id, cmd, s).await;
    run_session(&url, s).await
}

fn out_err() -> Session {
    Session {
        stdout: true,
        stderr: true,
        ..Default::default()
    }
}

/// The processes in container `id` whose command line contains `needle`, by ExecSync `ps`.
async fn processes_in(c: &mut RuntimeClient, id: &str, needle: &str) -> Vec<String> {
    let r = c
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["ps".into(), "-o".into(), "pid,args".into()],
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner();
    String::from_utf8_lossy(&r.stdout)
        .lines()
        .filter(|l| l.contains(needle) && !l.contains("ps -o"))
        .map(str::to_string)
        .collect()
}

/// Polls until no process in the container runs `needle` (at most 20 s).
async fn wait_gone(c: &mut RuntimeClient, id: &str, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = processes_in(c, id, needle).await;
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "still running: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls a condition on the agent's metrics (at most 20 s).
async fn wait_metric(f: &Fixture, name: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = f.agent.metric(name);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{name} is {got}, want {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn exec_streams_output_and_reports_exit_codes() {
    let _top = CgroupTop;
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
    let _top = CgroupTop;
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
    let _top = CgroupTop;
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
    let _top = CgroupTop;
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
    // The client goes away mid-session: the exec'd shell and its children go with it.
    drop((stdout, resize, streams));
    wait_gone(&mut c, &id, "resize-loop").await;
    wait_metric(&f, "berth_streaming_active_sessions{", 0.0).await;
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "exec-tty");
}

#[tokio::test]
async fn a_client_that_drops_mid_output_kills_the_exec() {
    let _top = CgroupTop;
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

async fn attach_url(c: &mut RuntimeClient, id: &str, s: &Session) -> String {
    c.attach(AttachRequest {
        container_id: id.into(),
        stdin: s.stdin.is_some(),
        tty: s.tty,
        stdout: s.stdout,
        stderr: s.stderr,
    })
    .await
    .unwrap()
    .into_inner()
    .url
}

#[tokio::test]
async fn attach_with_stdin_once_closes_the_containers_stdin() {
    let _top = CgroupTop;
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let (pod, id) = running(&f, &mut c, "attach-once", &["sh"], |cfg| {
        cfg.stdin = true;
        cfg.stdin_once = true;
    })
    .await;
    let s = Session {
        stdin: Some(b"echo -n hello\necho -n oops >&2\n".to_vec()),
        ..out_err()
    };
    let url = attach_url(&mut c, &id, &s).await;
    let o = run_session(&url, &s).await;
    assert_eq!(o.stdout, b"hello");
    assert_eq!(o.stderr, b"oops");
    assert_eq!(o.status["status"], "Success", "{}", o.status);
    // The shell read EOF and exited: the attacher's stdin ending closed the container's.
    let st = wait_exited(&mut c, &id).await;
    assert_eq!(st.exit_code, 0);
    // While attached the log got everything too.
    let log = std::fs::read_to_string(f.logs.path().join("attach-once/attach-once/0.log"))
        .unwrap_or_default();
    assert!(
        log.contains("stdout F hello") || log.contains("hello"),
        "{log:?}"
    );
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "attach-once");
}

#[tokio::test]
async fn two_attachers_see_the_output_and_detaching_leaves_the_container_running() {
    let _top = CgroupTop;
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let script = "i=0; while true; do echo line$i; i=$((i+1)); sleep 0.05; done";
    let (pod, id) = running(&f, &mut c, "attach-two", &["sh", "-c", script], |_| {}).await;
    let s = Session {
        stdout: true,
        ..Default::default()
    };
    let (url_a, url_b) = (
        attach_url(&mut c, &id, &s).await,
        attach_url(&mut c, &id, &s).await,
    );
    assert_ne!(url_a, url_b);
    let mut a = spdy::open_session(&url_a, &s).await;
    let mut b = spdy::open_session(&url_b, &s).await;
    for streams in [&mut a, &mut b] {
        let stdout = streams.stdout.as_mut().unwrap();
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("\nline") {
            match stdout.next().await {
                Some(Event::Data(d)) => got.extend(d),
                other => panic!("attach output ended: {other:?}"),
            }
        }
    }
    drop((a, b));
    // Detached: still running, and the log still grows past what either attacher saw.
    let log = f.logs.path().join("attach-two/attach-two/0.log");
    let before = std::fs::read_to_string(&log).unwrap().lines().count();
    wait_for_text(&log.display().to_string(), "grew after detaching", |t| {
        t.lines().count() > before + 5
    })
    .await;
    assert_eq!(
        status(&mut c, &id).await.state,
        ContainerState::ContainerRunning as i32
    );
    wait_metric(&f, "berth_streaming_active_sessions{", 0.0).await;
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "attach-two");
}

#[tokio::test]
async fn urls_work_once_and_bad_requests_get_http_errors() {
    let _top = CgroupTop;
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
    let _top = CgroupTop;
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
    let _top = CgroupTop;
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

/// Opens a port-forward pair for `port` (request `n`) on `client`: the error stream (half-closed
/// at once, as client-go does) and the data stream.
async fn forward_pair(
    client: &mut Client,
    port: u16,
    n: u32,
) -> (spdy::ClientStream, spdy::ClientStream) {
    let port = port.to_string();
    let n = n.to_string();
    let error = client
        .open(&[("streamtype", "error"), ("port", &port), ("requestid", &n)])
        .await
        .expect("error stream accepted");
    error.close().await.unwrap();
    let data = client
        .open(&[("streamtype", "data"), ("port", &port), ("requestid", &n)])
        .await
        .expect("data stream accepted");
    (error, data)
}

async fn port_forward_client(c: &mut RuntimeClient, pod: &str) -> Client {
    let url = c
        .port_forward(PortForwardRequest {
            pod_sandbox_id: pod.into(),
            port: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (answer, tcp) = spdy::upgrade(&url, "POST", &["portforward.k8s.io"])
        .await
        .unwrap();
    assert_eq!(answer.status, 101, "{answer:?}");
    assert_eq!(
        answer.header("x-stream-protocol-version"),
        Some("portforward.k8s.io")
    );
    Client::new(tcp.unwrap())
}

#[tokio::test]
async fn port_forward_reaches_a_listener_inside_the_pod() {
    let _top = CgroupTop;
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let net = berth_e2e::network::TestNetwork::create(
        &f.agent.paths.cni_conf_dir,
        berth_e2e::network::Extra::None,
    );
    berth_e2e::cri::wait_network_ready(&mut c).await;
    let mut pod_cfg = pod_config(&f, "forward");
    pod_namespaces(&mut pod_cfg).network = NamespaceMode::Pod as i32;
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let script = "mkdir -p /www && echo -n hello-from-pod > /www/index.html && \
        head -c 104857600 /dev/urandom > /www/big && touch /www/ready && \
        exec httpd -f -p 8080 -h /www";
    let mut cfg = container_config(&f, "forward", &["sh", "-c", script]);
    container_namespaces(&mut cfg).network = NamespaceMode::Pod as i32;
    let id = create(&mut c, &pod, cfg, pod_cfg).await;
    start(&mut c, &id).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while c
        .exec_sync(ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["sh".into(), "-c".into(), "test -f /www/ready && cat /proc/net/tcp /proc/net/tcp6 | grep -q ':1F90 0.*:0000 0A'".into()],
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner()
        .exit_code
        != 0
    {
        assert!(
            Instant::now() < deadline,
            "httpd never listened: {:?}",
            std::fs::read_to_string(f.logs.path().join("forward/forward/0.log"))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = port_forward_client(&mut c, &pod).await;
    // Two forwarded connections at once on one session.
    let (e1, mut small) = forward_pair(&mut client, 8080, 1).await;
    let (mut e2, mut big) = forward_pair(&mut client, 8080, 2).await;
    big.send(b"GET /big HTTP/1.0\r\n\r\n").await.unwrap();
    small
        .send(b"GET /index.html HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let (small_body, big_body) = tokio::join!(small.read_to_end(), big.read_to_end());
    let small_body = small_body.unwrap();
    assert!(
        String::from_utf8_lossy(&small_body).ends_with("\r\n\r\nhello-from-pod"),
        "{:?}",
        String::from_utf8_lossy(&small_body)
    );
    let big_body = big_body.unwrap();
    let split = big_body.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let sum = c
        .exec_sync(ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["sha256sum".into(), "/www/big".into()],
            timeout: 30,
        })
        .await
        .unwrap()
        .into_inner()
        .stdout;
    assert_eq!(big_body.len() - split, 104_857_600);
    assert_eq!(
        String::from_utf8_lossy(&sum)
            .split_whitespace()
            .next()
            .unwrap(),
        format!("{:x}", Sha256::digest(&big_body[split..]))
    );
    assert_eq!(
        e2.read_to_end().await,
        Ok(Vec::new()),
        "no error for a good forward"
    );
    // A port nothing listens on: the error stream says so, the session lives on.
    let (mut e3, mut d3) = forward_pair(&mut client, 8081, 3).await;
    let message = e3.read_to_end().await.unwrap();
    assert!(
        String::from_utf8_lossy(&message).contains("8081"),
        "{:?}",
        String::from_utf8_lossy(&message)
    );
    assert_eq!(d3.read_to_end().await, Ok(Vec::new()));
    // Bad ports and kinds are refused per stream.
    assert!(client
        .open(&[("streamtype", "data"), ("port", "0"), ("requestid", "9")])
        .await
        .is_err());
    assert!(client
        .open(&[("streamtype", "bogus"), ("port", "80")])
        .await
        .is_err());
    // The streams hold the connection's write half: all go, and the connection closes.
    drop((client, e1, small, e2, big, e3, d3));
    wait_metric(&f, "berth_streaming_active_sessions{", 0.0).await;
    remove_pod(&mut c, &pod).await;
    assert!(net.leases().is_empty());
    assert_clean(&f, "forward");
}

#[tokio::test]
async fn port_forward_in_a_host_network_pod_dials_the_host() {
    let _top = CgroupTop;
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    // pod_config's pods use the host's network.
    let pod = run_pod(&mut c, pod_config(&f, "forward-host")).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(&[&buf[..], b"-pong"].concat()).await.unwrap();
    });
    let mut client = port_forward_client(&mut c, &pod).await;
    let (_e, mut data) = forward_pair(&mut client, port, 0).await;
    data.send(b"ping").await.unwrap();
    assert_eq!(data.read_to_end().await.unwrap(), b"ping-pong");
    server.await.unwrap();
    drop(client);
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "forward-host");
}

#[tokio::test]
async fn misbehaving_clients_are_cut_off_and_leave_nothing_behind() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _top = CgroupTop;
    let f = fixture_with("[streaming]\nstream_creation_timeout_secs = 2\n").await;
    let mut c = f.agent.runtime().await;
    let (pod, id) = running(&f, &mut c, "exec-bad", &["sleep", "1000"], |_| {}).await;
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", f.agent.pid()))
            .unwrap()
            .count()
    };
    let s = out_err();
    // Warm up whatever the agent opens once (the first exec's report dir, the metrics).
    run_session(&exec_url(&mut c, &id, &["true"], &s).await, &s).await;
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

#[tokio::test]
async fn an_agent_restart_during_an_attach_leaves_the_container_running() {
    let _top = CgroupTop;
    let mut f = fixture().await;
    let mut c = f.agent.runtime().await;
    let script = "while true; do echo tick; sleep 0.05; done";
    let (pod, id) = running(&f, &mut c, "attach-restart", &["sh", "-c", script], |_| {}).await;
    let s = Session {
        stdout: true,
        ..Default::default()
    };
    let mut a = spdy::open_session(&attach_url(&mut c, &id, &s).await, &s).await;
    match a.stdout.as_mut().unwrap().next().await {
        Some(Event::Data(d)) => assert!(String::from_utf8_lossy(&d).contains("tick")),
        other => panic!("{other:?}"),
    }
    f.agent
        .restart_with(nix::sys::signal::Signal::SIGKILL)
        .await;
    a.client.wait_closed().await;
    let mut c = f.agent.runtime().await;
    assert_eq!(
        status(&mut c, &id).await.state,
        ContainerState::ContainerRunning as i32
    );
    // And it can be attached to again through the new agent.
    let mut b = spdy::open_session(&attach_url(&mut c, &id, &s).await, &s).await;
    match b.stdout.as_mut().unwrap().next().await {
        Some(Event::Data(d)) => assert!(String::from_utf8_lossy(&d).contains("tick")),
        other => panic!("{other:?}"),
    }
    drop(b);
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "attach-restart");
}

mod websocket {
    //! The WebSocket transports with tokio-tungstenite as the client.

    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    type Ws = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    /// Connects to `url` (http:// → ws://) offering `protocol`; the chosen one comes back.
    async fn connect(url: &str, protocol: &str) -> Result<(Ws, String), u16> {
        let mut request = url
            .replacen("http://", "ws://", 1)
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, response)) => {
                let chosen = response.headers()["sec-websocket-protocol"]
                    .to_str()
                    .unwrap()
                    .to_string();
                Ok((ws, chosen))
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
            Err(e) => panic!("connect {url}: {e}"),
        }
    }

    /// Reads channel messages until the close; (stdout, stderr, status JSON).
    async fn read_channels(ws: &mut Ws) -> (Vec<u8>, Vec<u8>, serde_json::Value, Option<u16>) {
        let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), Vec::new());
        let mut close = None;
        while let Some(message) = ws.next().await {
            match message.unwrap() {
                Message::Binary(d) if !d.is_empty() => match d[0] {
                    1 => out.extend_from_slice(&d[1..]),
                    2 => err.extend_from_slice(&d[1..]),
                    3 => status.extend_from_slice(&d[1..]),
                    c => panic!("server wrote on channel {c}"),
                },
                Message::Close(frame) => {
                    close = frame.map(|f| u16::from(f.code));
                    break;
                }
                _ => {}
            }
        }
        let status = if status.is_empty() {
            serde_json::json!({"status": "Success"})
        } else {
            serde_json::from_slice(&status).unwrap()
        };
        (out, err, status, close)
    }

    #[tokio::test]
    async fn v5_exec_and_attach_carry_channels_and_close_stdin() {
        let _top = CgroupTop;
        let f = fixture().await;
        let mut c = f.agent.runtime().await;
        let (pod, id) = running(&f, &mut c, "ws-exec", &["sh"], |cfg| {
            cfg.stdin = true;
            cfg.stdin_once = true;
        })
        .await;
        let s = Session {
            stdin: Some(Vec::new()),
            ..out_err()
        };
        let url = exec_url(
            &mut c,
            &id,
            &["sh", "-c", "cat; echo -n bye >&2; exit 3"],
            &s,
        )
        .await;
        let (mut ws, chosen) = connect(&url, "v5.channel.k8s.io").await.unwrap();
        assert_eq!(chosen, "v5.channel.k8s.io");
        ws.send(Message::Binary([&[0u8][..], b"hello"].concat().into()))
            .await
            .unwrap();
        // v5's close of channel 0: cat reads EOF.
        ws.send(Message::Binary(vec![255u8, 0].into()))
            .await
            .unwrap();
        let (out, err, status, close) = read_channels(&mut ws).await;
        assert_eq!(
            (out.as_slice(), err.as_slice()),
            (&b"hello"[..], &b"bye"[..])
        );
        assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
        assert_eq!(status["details"]["causes"][0]["message"], "3");
        assert_eq!(close, Some(1000));

        // Attach to the container's own sh: the close of stdin (stdin_once) ends it.
        let url = attach_url(&mut c, &id, &s).await;
        let (mut ws, _) = connect(&url, "v5.channel.k8s.io").await.unwrap();
        ws.send(Message::Binary(
            [&[0u8][..], b"echo -n attached\n"].concat().into(),
        ))
        .await
        .unwrap();
        ws.send(Message::Binary(vec![255u8, 0].into()))
            .await
            .unwrap();
        let (out, _, status, _) = read_channels(&mut ws).await;
        assert_eq!(out, b"attached");
        assert_eq!(status["status"], "Success");
        assert_eq!(wait_exited(&mut c, &id).await.exit_code, 0);
        assert!(
            f.agent
                .metric("berth_streaming_sessions_total{verb=\"exec\",protocol=\"websocket\"}")
                >= 1.0
        );
        remove_pod(&mut c, &pod).await;
        assert_clean(&f, "ws-exec");
    }

    #[tokio::test]
    async fn unknown_subprotocols_are_refused() {
        let _top = CgroupTop;
        let f = fixture().await;
        let mut c = f.agent.runtime().await;
        let (pod, id) = running(&f, &mut c, "ws-refuse", &["sleep", "1000"], |_| {}).await;
        let url = exec_url(&mut c, &id, &["true"], &out_err()).await;
        assert_eq!(
            connect(&url, "base64.channel.k8s.io").await.err(),
            Some(403)
        );
        remove_pod(&mut c, &pod).await;
        assert_clean(&f, "ws-refuse");
    }

    /// The SPDY client over the WebSocket's binary messages (a pipe and two pumps).
    fn tunnel(ws: Ws) -> Client {
        let (ours, theirs) = tokio::io::duplex(256 * 1024);
        let (mut from_client, mut to_client) = tokio::io::split(theirs);
        let (mut sink, mut source) = ws.split();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = from_client.read(&mut buf).await {
                if n == 0
                    || sink
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        tokio::spawn(async move {
            while let Some(Ok(message)) = source.next().await {
                if let Message::Binary(d) = message {
                    if to_client.write_all(&d).await.is_err() {
                        break;
                    }
                }
            }
            let _ = to_client.shutdown().await;
        });
        Client::new(ours)
    }

    #[tokio::test]
    async fn port_forward_over_websocket_tunnels_spdy() {
        let _top = CgroupTop;
        let f = fixture().await;
        let mut c = f.agent.runtime().await;
        let pod = run_pod(&mut c, pod_config(&f, "ws-forward")).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).await.unwrap();
            s.write_all(&Sha256::digest(&all)).await.unwrap();
        });
        let url = c
            .port_forward(PortForwardRequest {
                pod_sandbox_id: pod.clone(),
                port: vec![port as i32],
            })
            .await
            .unwrap()
            .into_inner()
            .url;
        let (ws, chosen) = connect(&url, "SPDY/3.1+portforward.k8s.io").await.unwrap();
        assert_eq!(chosen, "SPDY/3.1+portforward.k8s.io");
        let mut client = tunnel(ws);
        let (e, mut data) = forward_pair(&mut client, port, 0).await;
        let payload: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        data.send(&payload).await.unwrap();
        data.close().await.unwrap();
        assert_eq!(
            data.read_to_end().await.unwrap(),
            Sha256::digest(&payload).to_vec()
        );
        server.await.unwrap();
        drop((client, e, data));
        wait_metric(&f, "berth_streaming_active_sessions{", 0.0).await;
        remove_pod(&mut c, &pod).await;
        assert_clean(&f, "ws-forward");
    }
}
