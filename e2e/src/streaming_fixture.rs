//! What the streaming suites share: a running container in a pod of its own, Exec/Attach/
//! PortForward URLs, sessions through the e2e SPDY client (`crate::spdy`), and the polls that
//! check a session left nothing behind.

use std::time::{Duration, Instant};

use k8s_cri::v1::*;

use crate::container_fixture::*;
use crate::spdy::{self, run_session, Client, Session};
use crate::RuntimeClient;

/// A running container in a new pod; returns (pod, container).
pub async fn running(
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

pub fn exec_request(id: &str, cmd: &[&str], s: &Session) -> ExecRequest {
    ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty: s.tty,
        stdin: s.stdin.is_some(),
        stdout: s.stdout,
        stderr: s.stderr,
    }
}

pub async fn exec_url(c: &mut RuntimeClient, id: &str, cmd: &[&str], s: &Session) -> String {
    c.exec(exec_request(id, cmd, s))
        .await
        .unwrap()
        .into_inner()
        .url
}

pub async fn exec(c: &mut RuntimeClient, id: &str, cmd: &[&str], s: &Session) -> spdy::Outcome {
    let url = exec_url(c, id, cmd, s).await;
    run_session(&url, s).await
}

pub fn out_err() -> Session {
    Session {
        stdout: true,
        stderr: true,
        ..Default::default()
    }
}

/// The processes in container `id` whose command line contains `needle`, by ExecSync `ps`.
pub async fn processes_in(c: &mut RuntimeClient, id: &str, needle: &str) -> Vec<String> {
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
pub async fn wait_gone(c: &mut RuntimeClient, id: &str, needle: &str) {
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
pub async fn wait_metric(f: &Fixture, name: &str, want: f64) {
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

pub async fn attach_url(c: &mut RuntimeClient, id: &str, s: &Session) -> String {
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

/// Opens a port-forward pair for `port` (request `n`) on `client`: the error stream (half-closed
/// at once, as client-go does) and the data stream.
pub async fn forward_pair(
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

pub async fn port_forward_client(c: &mut RuntimeClient, pod: &str) -> Client {
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
