//! Pod sandbox figures: RunPodSandbox and Stop+Remove medians, and the memory each pod's helper
//! processes cost (berth: its monitor; containerd: shim + pause).

use std::path::Path;
use std::time::{Duration, Instant};

use berth_e2e::connect;
use berth_e2e::cri::run_pod;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;

use crate::{percentile, Figures};

const RUNS: usize = 20;
const MEMORY_PODS: usize = 10;

pub(crate) fn pod_config(tag: &str, i: usize) -> PodSandboxConfig {
    let unique = format!("{}-{}-{i}", std::process::id(), tag);
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: format!("bench-{unique}"),
            uid: format!("uid-{unique}"),
            namespace: "bench".to_string(),
            attempt: 0,
        }),
        hostname: "bench".to_string(),
        linux: Some(berth_e2e::cri::pod_linux(berth_e2e::cri::namespaces(
            NamespaceMode::Pod,
            NamespaceMode::Container,
            NamespaceMode::Pod,
        ))),
        ..Default::default()
    }
}

/// Sum of VmRSS (KiB) of the processes `is_helper` picks by pid and command line.
pub(crate) fn helpers_rss_kib(is_helper: &dyn Fn(&str, &str) -> bool) -> u64 {
    helper_pids(is_helper).filter_map(crate::rss_kib).sum()
}

/// Sum of PSS (KiB) of the processes `is_helper` picks: each shared page counted once across
/// every process that maps it, so shared text does not count once per helper.
pub(crate) fn helpers_pss_kib(is_helper: &dyn Fn(&str, &str) -> bool) -> u64 {
    helper_pids(is_helper).filter_map(crate::pss_kib).sum()
}

pub(crate) fn helper_pids(
    is_helper: &dyn Fn(&str, &str) -> bool,
) -> impl Iterator<Item = u32> + '_ {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(move |pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            is_helper(comm.trim(), &String::from_utf8_lossy(&cmdline))
        })
}

async fn stop_remove(client: &mut RuntimeServiceClient<tonic::transport::Channel>, id: &str) {
    client
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .unwrap_or_else(|e| panic!("StopPodSandbox: {e}"));
    client
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}"));
}

pub async fn measure(
    socket: &Path,
    tag: &str,
    is_helper: &dyn Fn(&str, &str) -> bool,
    figures: &mut Figures,
) {
    let mut client = RuntimeServiceClient::new(connect(socket).await.expect("connect"));
    let mut runs = Vec::with_capacity(RUNS);
    let mut teardowns = Vec::with_capacity(RUNS);
    for i in 0..RUNS + 2 {
        let t = Instant::now();
        let id = run_pod(&mut client, pod_config(tag, i)).await;
        let ran = t.elapsed();
        let t = Instant::now();
        stop_remove(&mut client, &id).await;
        // The first two warm caches (binary pages, CNI plugins) and are not counted.
        if i >= 2 {
            runs.push(ran);
            teardowns.push(t.elapsed());
        }
    }
    runs.sort();
    teardowns.sort();
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    figures
        .rows
        .push(("RunPodSandbox, median".into(), ms(percentile(&runs, 0.5))));
    figures
        .rows
        .push(("RunPodSandbox, p90".into(), ms(percentile(&runs, 0.9))));
    figures.rows.push((
        "Stop+RemovePodSandbox, median".into(),
        ms(percentile(&teardowns, 0.5)),
    ));

    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = helpers_rss_kib(is_helper);
    let mut ids = Vec::new();
    for i in 0..MEMORY_PODS {
        ids.push(run_pod(&mut client, pod_config(&format!("{tag}-mem"), i)).await);
    }
    tokio::time::sleep(crate::SETTLE).await;
    let after = helpers_rss_kib(is_helper);
    for id in &ids {
        stop_remove(&mut client, id).await;
    }
    let per_pod = after.saturating_sub(before) as f64 / MEMORY_PODS as f64;
    figures.rows.push((
        format!("helper RSS per pod ({MEMORY_PODS} pods)"),
        format!("{:.2} MiB", per_pod / 1024.0),
    ));
}
