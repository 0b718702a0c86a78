//! Kubelet-sized load: a burst of pods made at once (as after a node restart or a drain
//! elsewhere), steady churn of whole pod lifecycles, and what one lifecycle costs in CPU.
//!
//! - Burst: `BURST_PODS` pods, each RunPodSandbox then Create+Start of one container,
//!   `IN_FLIGHT` at a time; the wall time until all run, and the p99 of one pod's time.
//! - Churn: `CHURN_PODS` lifecycles (run, create+start, stop, remove), `IN_FLIGHT` at a time.
//! - CPU per lifecycle, over the churn: the daemon's own CPU with its waited-for children
//!   (berth: executors, CNI plugins; containerd: CNI plugins), and the whole machine's busy CPU
//!   less the bench's own, which also holds the per-pod helpers and the kernel's share. Both are
//!   read from /proc, the same way for either runtime.

use std::path::Path;
use std::time::{Duration, Instant};

use berth_e2e::connect;
use berth_e2e::cri::{create_started, run_pod};
use futures_util::stream::{self, StreamExt};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use crate::containers::{container, remove_pod};
use crate::sandboxes::pod_config;
use crate::{percentile, Figures};

const BURST_PODS: usize = 50;
const CHURN_PODS: usize = 200;
const IN_FLIGHT: usize = 10;

/// One pod with one running container: its sandbox id and how long it took.
async fn start_pod(
    mut c: RuntimeServiceClient<Channel>,
    tag: String,
    i: usize,
    image: String,
) -> (String, Duration) {
    let t = Instant::now();
    let config = pod_config(&tag, i);
    let pod = run_pod(&mut c, config.clone()).await;
    create_started(&mut c, &pod, &config, container(&image, "app")).await;
    (pod, t.elapsed())
}

/// CPU time a process used, its waited-for children included, in clock ticks (1/100 s).
pub(crate) fn cpu_ticks_with_children(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime, stime, cutime, cstime: fields 14-17 of proc(5), 11-14 after the command name.
    fields[11..15]
        .iter()
        .map(|f| f.parse::<u64>().ok())
        .sum::<Option<u64>>()
}

/// The machine's busy CPU time so far (all but idle and iowait), in clock ticks.
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = cpu
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is within user already).
    Some(v.iter().take(8).sum::<u64>() - v.get(3)? - v.get(4)?)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

pub async fn measure(
    socket: &Path,
    tag: &str,
    image: &str,
    daemon_pid: u32,
    figures: &mut Figures,
) {
    let c = RuntimeServiceClient::new(connect(socket).await.expect("connect"));

    // Burst.
    let t = Instant::now();
    let started: Vec<(String, Duration)> = stream::iter(0..BURST_PODS)
        .map(|i| start_pod(c.clone(), format!("{tag}-burst"), i, image.to_string()))
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let wall = t.elapsed();
    let mut each: Vec<Duration> = started.iter().map(|(_, d)| *d).collect();
    each.sort();
    figures.rows.push((
        format!("burst: {BURST_PODS} pods, {IN_FLIGHT} in flight, all running"),
        ms(wall),
    ));
    figures
        .rows
        .push(("burst: one pod, p99".into(), ms(percentile(&each, 0.99))));
    let t = Instant::now();
    stream::iter(started)
        .for_each_concurrent(IN_FLIGHT, |(pod, _)| {
            let mut c = c.clone();
            async move { remove_pod(&mut c, &pod).await }
        })
        .await;
    figures.rows.push((
        format!("burst: Stop+Remove of the {BURST_PODS}, {IN_FLIGHT} in flight"),
        ms(t.elapsed()),
    ));

    // Churn, with the CPU it costs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let daemon = daemon_pid.to_string();
    let before = (
        cpu_ticks_with_children(&daemon),
        machine_busy_ticks(),
        cpu_ticks_with_children("self"),
    );
    let t = Instant::now();
    stream::iter(0..CHURN_PODS)
        .for_each_concurrent(IN_FLIGHT, |i| {
            let c = c.clone();
            let tag = format!("{tag}-churn");
            async move {
                let (pod, _) = start_pod(c.clone(), tag, i, image.to_string()).await;
                remove_pod(&mut c.clone(), &pod).await;
            }
        })
        .await;
    let wall = t.elapsed();
    let after = (
        cpu_ticks_with_children(&daemon),
        machine_busy_ticks(),
        cpu_ticks_with_children("self"),
    );
    figures.rows.push((
        format!("churn: {CHURN_PODS} lifecycles, {IN_FLIGHT} in flight"),
        format!("{:.1} pods/s", CHURN_PODS as f64 / wall.as_secs_f64()),
    ));
    // Clock ticks are 10 ms.
    let per_pod = |a: Option<u64>, b: Option<u64>| match a.zip(b) {
        Some((a, b)) => format!("{:.1} ms", (b - a) as f64 * 10.0 / CHURN_PODS as f64),
        None => "-".to_string(),
    };
    figures.rows.push((
        "CPU per lifecycle: the daemon (with its children)".into(),
        per_pod(before.0, after.0),
    ));
    let machine = match (before.1.zip(after.1), before.2.zip(after.2)) {
        (Some((a, b)), Some((s, e))) => Some((b - a).saturating_sub(e - s)),
        _ => None,
    };
    figures.rows.push((
        "CPU per lifecycle: whole machine less the bench".into(),
        per_pod(Some(0), machine),
    ));
}
