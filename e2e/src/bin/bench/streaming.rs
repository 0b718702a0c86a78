//! Streaming figures: an exec of `true` through the streaming path (Exec RPC, SPDY upgrade,
//! streams, exit status), port-forward throughput over one connection, and the memory each
//! open exec session costs. The client is berth-e2e's own SPDY client, which speaks to
//! containerd's (Go) streaming server as it does to berth's.

use std::path::Path;
use std::time::{Duration, Instant};

use berth_e2e::connect;
use berth_e2e::cri::run_pod;
use berth_e2e::spdy::{self, Client, Session};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::Channel;

use crate::containers::{container, remove_pod};
use crate::sandboxes::{helpers_rss_kib, pod_config};
use crate::{percentile, Figures};

const EXECS: usize = 30;
const OPEN_SESSIONS: usize = 20;
const FORWARD_BYTES: usize = 256 * 1024 * 1024;

fn session() -> Session {
    Session {
        stdout: true,
        stderr: true,
        ..Default::default()
    }
}

async fn exec_url(
    c: &mut RuntimeServiceClient<Channel>,
    id: &str,
    cmd: &[&str],
) -> Result<String, tonic::Status> {
    Ok(c.exec(ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty: false,
        stdin: false,
        stdout: true,
        stderr: true,
    })
    .await?
    .into_inner()
    .url)
}

async fn exec_sync_ok(c: &mut RuntimeServiceClient<Channel>, id: &str, script: &str) -> bool {
    c.exec_sync(ExecSyncRequest {
        container_id: id.into(),
        cmd: vec!["sh".into(), "-c".into(), script.into()],
        timeout: 10,
    })
    .await
    .map(|r| r.into_inner().exit_code == 0)
    .unwrap_or(false)
}

pub async fn measure(
    socket: &Path,
    tag: &str,
    image: &str,
    agent_pid: u32,
    is_helper: &dyn Fn(&str, &str) -> bool,
    figures: &mut Figures,
) {
    let mut c = RuntimeServiceClient::new(connect(socket).await.expect("connect"));
    let config = pod_config(&format!("{tag}-stream"), 0);
    let pod = run_pod(&mut c, config.clone()).await;
    let mut sender = container(image, "sender");
    // One connection at a time gets FORWARD_BYTES of zeros on port 9000.
    let script = format!(
        "printf '#!/bin/sh\\ndd if=/dev/zero bs=1048576 count={} 2>/dev/null\\n' > /send && \
         chmod +x /send && exec nc -ll -p 9000 -e /send",
        FORWARD_BYTES / 1048576
    );
    sender.command = vec!["sh".into(), "-c".into(), script];
    let id = berth_e2e::cri::create_started(&mut c, &pod, &config, sender).await;

    // Exec of `true` through the streaming path.
    let mut samples = Vec::new();
    let mut failed = None;
    for _ in 0..EXECS + 3 {
        let t = Instant::now();
        let url = match exec_url(&mut c, &id, &["true"]).await {
            Ok(url) => url,
            Err(e) => {
                failed = Some(format!("{:?}", e.code()));
                break;
            }
        };
        let outcome = spdy::run_session(&url, &session()).await;
        if outcome.exit_code() != 0 {
            failed = Some(format!("status {}", outcome.status));
            break;
        }
        samples.push(t.elapsed());
    }
    let samples: Vec<Duration> = {
        let mut s: Vec<Duration> = samples.into_iter().skip(3).collect();
        s.sort();
        s
    };
    figures.rows.push((
        "exec of true via streaming (SPDY), median".into(),
        match (&failed, samples.is_empty()) {
            (Some(f), _) => f.clone(),
            (None, true) => "-".into(),
            (None, false) => format!("{:.1} ms", percentile(&samples, 0.5).as_secs_f64() * 1e3),
        },
    ));

    // Port-forward throughput: FORWARD_BYTES from a listener in the pod, one connection.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !exec_sync_ok(
        &mut c,
        &id,
        "cat /proc/net/tcp /proc/net/tcp6 | grep -q ':2328 0.*:0000 0A'",
    )
    .await
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    figures.rows.push((
        "port-forward throughput, one connection (median of 3)".into(),
        forward_throughput(&mut c, &pod).await,
    ));

    // Memory per open exec session.
    let before = crate::rss_kib(agent_pid).unwrap_or(0) + helpers_rss_kib(is_helper);
    let mut open = Vec::new();
    for _ in 0..OPEN_SESSIONS {
        let Ok(url) = exec_url(&mut c, &id, &["sleep", "3600"]).await else {
            break;
        };
        open.push(spdy::open_session(&url, &session()).await);
    }
    tokio::time::sleep(crate::SETTLE).await;
    let after = crate::rss_kib(agent_pid).unwrap_or(0) + helpers_rss_kib(is_helper);
    figures.rows.push((
        format!("agent + helpers RSS per open exec session ({OPEN_SESSIONS})"),
        match open.len() {
            0 => "-".into(),
            n => format!("{:.0} KiB", after.saturating_sub(before) as f64 / n as f64),
        },
    ));
    drop(open);
    remove_pod(&mut c, &pod).await;
}

/// FORWARD_BYTES through one port-forward session, three connections one after the other;
/// the median rate.
async fn forward_throughput(c: &mut RuntimeServiceClient<Channel>, pod: &str) -> String {
    let url = match c
        .port_forward(PortForwardRequest {
            pod_sandbox_id: pod.into(),
            port: vec![9000],
        })
        .await
    {
        Ok(r) => r.into_inner().url,
        Err(e) => return format!("{:?}", e.code()),
    };
    let (answer, tcp) = match spdy::upgrade(&url, "POST", &["portforward.k8s.io"]).await {
        Ok(a) => a,
        Err(e) => return format!("upgrade: {e}"),
    };
    let Some(tcp) = tcp else {
        return format!("HTTP {}", answer.status);
    };
    let mut client = Client::new(tcp);
    let mut rates = Vec::new();
    for request in 0..3 {
        match one_connection(&mut client, request).await {
            Ok(rate) => rates.push(rate),
            Err(e) => return e,
        }
    }
    rates.sort_by(f64::total_cmp);
    format!("{:.0} MB/s", rates[1])
}

async fn one_connection(client: &mut Client, request: u32) -> Result<f64, String> {
    let id = request.to_string();
    let headers = |kind| {
        [
            ("streamtype", kind),
            ("port", "9000"),
            ("requestid", id.as_str()),
        ]
    };
    let error = client
        .open(&headers("error"))
        .await
        .map_err(|_| "error stream refused".to_string())?;
    let _ = error.close().await;
    let mut data = client
        .open(&headers("data"))
        .await
        .map_err(|_| "data stream refused".to_string())?;
    let t = Instant::now();
    let mut got = 0usize;
    while let Some(spdy::Event::Data(d)) = data.next().await {
        got += d.len();
        if got >= FORWARD_BYTES {
            break;
        }
    }
    let took = t.elapsed();
    if got < FORWARD_BYTES {
        return Err(format!("only {got} bytes"));
    }
    let _ = data.close().await;
    Ok(got as f64 / 1e6 / took.as_secs_f64())
}
