//! ListMetricDescriptors and ListPodSandboxMetrics through the CRI, as critest's two metrics
//! specs and kubelet's CRI metrics collector read them: every cadvisor family critest expects is
//! described, with help and label keys, and has a value for a running container in a pod on a
//! CNI network, with as many label values as its descriptor has keys; the values say what the
//! container is (its limits, its start, its processes, its written files).

use std::collections::HashMap;

use berth_e2e::container_fixture::*;
use berth_e2e::cri::wait_network_ready;
use berth_e2e::network::{Extra, TestNetwork};
use k8s_cri::v1::*;

/// critest's `expectedMetricDescriptorNames` minus what it holds unimplemented (hugetlb,
/// pressure, spec_cpu_quota, spec_memory_reservation_limit_bytes, ulimits_soft).
const EXPECTED: &[&str] = &[
    "container_blkio_device_usage_total",
    "container_cpu_cfs_periods_total",
    "container_cpu_cfs_throttled_periods_total",
    "container_cpu_cfs_throttled_seconds_total",
    "container_cpu_system_seconds_total",
    "container_cpu_usage_seconds_total",
    "container_cpu_user_seconds_total",
    "container_file_descriptors",
    "container_fs_inodes_free",
    "container_fs_inodes_total",
    "container_fs_limit_bytes",
    "container_fs_reads_bytes_total",
    "container_fs_reads_total",
    "container_fs_usage_bytes",
    "container_fs_writes_bytes_total",
    "container_fs_writes_total",
    "container_last_seen",
    "container_memory_cache",
    "container_memory_failcnt",
    "container_memory_failures_total",
    "container_memory_kernel_usage",
    "container_memory_mapped_file",
    "container_memory_max_usage_bytes",
    "container_memory_rss",
    "container_memory_swap",
    "container_memory_usage_bytes",
    "container_memory_working_set_bytes",
    "container_network_receive_bytes_total",
    "container_network_receive_errors_total",
    "container_network_receive_packets_dropped_total",
    "container_network_receive_packets_total",
    "container_network_transmit_bytes_total",
    "container_network_transmit_errors_total",
    "container_network_transmit_packets_dropped_total",
    "container_network_transmit_packets_total",
    "container_oom_events_total",
    "container_processes",
    "container_sockets",
    "container_spec_cpu_period",
    "container_spec_cpu_shares",
    "container_spec_memory_limit_bytes",
    "container_spec_memory_swap_limit_bytes",
    "container_start_time_seconds",
    "container_threads",
    "container_threads_max",
];

/// Block I/O accounting, which critest holds optional (and berth does not report yet).
const OPTIONAL: &[&str] = &[
    "container_blkio_device_usage_total",
    "container_fs_reads_bytes_total",
    "container_fs_reads_total",
    "container_fs_writes_bytes_total",
    "container_fs_writes_total",
];

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn pod_metrics(c: &mut berth_e2e::RuntimeClient) -> Vec<PodSandboxMetrics> {
    c.list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics
}

#[tokio::test]
async fn pod_sandbox_metrics_cover_every_described_family_for_a_running_container() {
    let _top = CgroupTop::new();
    let _cgroups = PodCgroups(vec!["metrics".into()]);
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let descriptors = c
        .list_metric_descriptors(ListMetricDescriptorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .descriptors;
    let keys: HashMap<&str, &MetricDescriptor> =
        descriptors.iter().map(|d| (d.name.as_str(), d)).collect();
    for name in EXPECTED {
        let d = keys
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not described"));
        assert!(!d.help.is_empty(), "{name} has no help");
        assert_eq!(
            &d.label_keys[..5],
            ["pod", "namespace", "container", "id", "image"]
        );
    }

    let net = TestNetwork::create(&f.agent.paths.cni_conf_dir, Extra::None);
    wait_network_ready(&mut c).await;
    let mut pod_cfg = pod_config(&f, "metrics");
    pod_namespaces(&mut pod_cfg).network = NamespaceMode::Pod as i32;
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let mut cfg = container_config(&f, "measured", &["sleep", "1000"]);
    container_namespaces(&mut cfg).network = NamespaceMode::Pod as i32;
    let linux = cfg.linux.as_mut().unwrap();
    linux.resources = Some(LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 20_000,
        cpu_shares: 1024,
        memory_limit_in_bytes: 64 << 20,
        memory_swap_limit_in_bytes: 64 << 20,
        ..Default::default()
    });
    let before = now_secs();
    let id = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
    start(&mut c, &id).await;
    let exec = c
        .exec_sync(ExecSyncRequest {
            container_id: id.clone(),
            cmd: [
                "sh",
                "-c",
                "mkdir -p /data && for i in $(seq 1 10); do echo hi >> /data/f$i; done; sync",
            ]
            .map(String::from)
            .to_vec(),
            timeout: 30,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exec.exit_code, 0, "{exec:?}");

    let all = pod_metrics(&mut c).await;
    let mine = all
        .iter()
        .find(|p| p.pod_sandbox_id == pod)
        .expect("the pod has metrics");
    assert_eq!(mine.container_metrics.len(), 1);
    assert_eq!(mine.container_metrics[0].container_id, id);
    let mut found: HashMap<&str, Vec<&Metric>> = HashMap::new();
    for m in mine
        .metrics
        .iter()
        .chain(mine.container_metrics.iter().flat_map(|c| c.metrics.iter()))
    {
        found.entry(m.name.as_str()).or_default().push(m);
    }
    for d in &descriptors {
        let Some(metrics) = found.get(d.name.as_str()) else {
            assert!(
                OPTIONAL.contains(&d.name.as_str()),
                "no value for {}",
                d.name
            );
            continue;
        };
        for m in metrics {
            assert_eq!(m.label_values.len(), d.label_keys.len(), "{m:?}");
            assert!(m.timestamp > 0, "{m:?}");
            assert!(m.value.is_some(), "{m:?}");
        }
    }
    let value = |name: &str| found[name][0].value.as_ref().unwrap().value;
    let labels = |name: &str| found[name][0].label_values.clone();
    assert_eq!(value("container_spec_memory_limit_bytes"), 64 << 20);
    assert_eq!(value("container_spec_memory_swap_limit_bytes"), 64 << 20);
    assert_eq!(value("container_spec_cpu_period"), 100_000);
    assert_eq!(value("container_spec_cpu_shares"), 1024);
    let started = value("container_start_time_seconds");
    assert!(started >= before && started <= now_secs(), "{started}");
    assert!(value("container_processes") >= 1);
    assert!(value("container_threads") >= 1);
    assert!(value("container_file_descriptors") >= 1);
    assert!(value("container_memory_usage_bytes") > 0);
    assert!(value("container_fs_usage_bytes") > 0, "the files written");
    assert!(value("container_fs_inodes_total") >= value("container_fs_inodes_free"));
    assert_eq!(
        labels("container_memory_rss"),
        [
            "metrics",
            "default",
            "measured",
            id.as_str(),
            f.image.as_str()
        ]
    );
    // The network is the pod's: no container, no image, the interface last.
    assert_eq!(
        labels("container_network_receive_bytes_total"),
        ["metrics", "default", "", pod.as_str(), "", "eth0"]
    );
    let failures: Vec<_> = found["container_memory_failures_total"]
        .iter()
        .map(|m| m.label_values[5..].to_vec())
        .collect();
    assert_eq!(
        failures,
        [["pgfault", "container"], ["pgmajfault", "container"]]
    );

    // A stopped pod has no metrics.
    c.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    let all = pod_metrics(&mut c).await;
    assert!(all.iter().all(|p| p.pod_sandbox_id != pod));
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "metrics");
    drop(net);
}
