//! ListPodSandboxMetrics: for every ready pod, its network counters (pod-level, per interface)
//! and each running container's cadvisor families, labelled as `metric_descriptors` says. A
//! value a container's cgroup did not give (it exited mid-read) is left out, never an error.
//! Block I/O (`container_fs_reads_*`, `_writes_*`, `blkio_device_usage_total`) is described but
//! not reported yet; critest holds those optional.

use berth_podsandbox::sandbox::record::SandboxState;
use berth_podsandbox::{ContainerSample, PodUsage, Pods};
use k8s_cri::v1 as cri;

use super::metric_descriptors::family;

const NS_PER_SECOND: u64 = 1_000_000_000;

pub(super) async fn list_pod_sandbox_metrics(
    pods: &Pods,
    _request: cri::ListPodSandboxMetricsRequest,
) -> cri::ListPodSandboxMetricsResponse {
    let ready: Vec<_> = pods
        .sandboxes
        .list()
        .into_iter()
        .filter(|s| s.state == SandboxState::Ready)
        .collect();
    let sampled = pods.sandbox_usage(ready, true).await;
    cri::ListPodSandboxMetricsResponse {
        pod_metrics: sampled.iter().map(pod_metrics).collect(),
    }
}

/// Metrics of one family, all with the same timestamp.
struct Metrics {
    at: i64,
    out: Vec<cri::Metric>,
}

impl Metrics {
    fn new(at: i64) -> Metrics {
        Metrics {
            at,
            out: Vec::new(),
        }
    }

    /// Adds `name` with `labels` (the base five, then the family's own) if there is a value.
    fn put(&mut self, name: &'static str, labels: &[&str], value: Option<u64>) {
        let (Some(value), Some(family)) = (value, family(name)) else {
            debug_assert!(family(name).is_some(), "{name} has no descriptor");
            return;
        };
        debug_assert_eq!(labels.len(), family.label_keys().len(), "{name}");
        self.out.push(cri::Metric {
            name: name.to_string(),
            timestamp: self.at,
            metric_type: family.kind as i32,
            label_values: labels.iter().map(|l| l.to_string()).collect(),
            value: Some(cri::UInt64Value { value }),
        });
    }
}

pub(super) fn pod_metrics(p: &PodUsage) -> cri::PodSandboxMetrics {
    let meta = &p.sandbox.spec.metadata;
    let mut pod = Metrics::new(p.usage.timestamp);
    // Pod-level: no container, no image.
    let base = [meta.name.as_str(), &meta.namespace, "", &p.sandbox.id, ""];
    for i in &p.usage.interfaces {
        let labels = [&base[..], &[i.name.as_str()]].concat();
        for (name, value) in [
            ("container_network_receive_bytes_total", i.rx_bytes),
            ("container_network_receive_packets_total", i.rx_packets),
            (
                "container_network_receive_packets_dropped_total",
                i.rx_dropped,
            ),
            ("container_network_receive_errors_total", i.rx_errors),
            ("container_network_transmit_bytes_total", i.tx_bytes),
            ("container_network_transmit_packets_total", i.tx_packets),
            (
                "container_network_transmit_packets_dropped_total",
                i.tx_dropped,
            ),
            ("container_network_transmit_errors_total", i.tx_errors),
        ] {
            pod.put(name, &labels, Some(value));
        }
    }
    cri::PodSandboxMetrics {
        pod_sandbox_id: p.sandbox.id.clone(),
        metrics: pod.out,
        container_metrics: p
            .containers
            .iter()
            .map(|c| container_metrics(&meta.name, &meta.namespace, c))
            .collect(),
    }
}

fn container_metrics(pod: &str, namespace: &str, c: &ContainerSample) -> cri::ContainerMetrics {
    let r = &c.record;
    let u = &c.usage;
    let detail = c.detail.clone().unwrap_or_default();
    let labels = [
        pod,
        namespace,
        r.config.metadata.name.as_str(),
        &r.id,
        &r.image,
    ];
    let mut m = Metrics::new(u.timestamp);
    let seconds = |ns: Option<u64>| ns.map(|ns| ns / NS_PER_SECOND);
    let cpu = &detail.cgroup.cpu;
    m.put(
        "container_cpu_usage_seconds_total",
        &labels,
        seconds(u.cgroup.cpu_usage_ns),
    );
    m.put(
        "container_cpu_user_seconds_total",
        &labels,
        seconds(cpu.user_ns),
    );
    m.put(
        "container_cpu_system_seconds_total",
        &labels,
        seconds(cpu.system_ns),
    );
    m.put("container_cpu_cfs_periods_total", &labels, cpu.periods);
    m.put(
        "container_cpu_cfs_throttled_periods_total",
        &labels,
        cpu.throttled_periods,
    );
    m.put(
        "container_cpu_cfs_throttled_seconds_total",
        &labels,
        seconds(cpu.throttled_ns),
    );

    let memory = u.cgroup.memory.as_ref();
    let more = &detail.cgroup.memory;
    m.put("container_memory_cache", &labels, more.cache_bytes);
    m.put("container_memory_rss", &labels, memory.map(|m| m.rss_bytes));
    m.put("container_memory_kernel_usage", &labels, more.kernel_bytes);
    m.put(
        "container_memory_mapped_file",
        &labels,
        more.mapped_file_bytes,
    );
    m.put("container_memory_swap", &labels, u.cgroup.swap_usage_bytes);
    m.put("container_memory_failcnt", &labels, more.failcnt);
    m.put(
        "container_memory_usage_bytes",
        &labels,
        memory.map(|m| m.usage_bytes),
    );
    m.put(
        "container_memory_max_usage_bytes",
        &labels,
        more.max_usage_bytes,
    );
    m.put(
        "container_memory_working_set_bytes",
        &labels,
        memory.map(|m| m.working_set_bytes),
    );
    for (kind, value) in [
        ("pgfault", memory.map(|m| m.page_faults)),
        ("pgmajfault", memory.map(|m| m.major_page_faults)),
    ] {
        let failure = [&labels[..], &[kind, "container"]].concat();
        m.put("container_memory_failures_total", &failure, value);
    }
    m.put("container_oom_events_total", &labels, more.oom_kills);

    if let Some(fs) = &detail.filesystem {
        let device = [&labels[..], &[fs.device.as_str()]].concat();
        m.put("container_fs_inodes_free", &device, Some(fs.inodes_free));
        m.put("container_fs_inodes_total", &device, Some(fs.inodes));
        m.put("container_fs_limit_bytes", &device, Some(fs.capacity_bytes));
        m.put(
            "container_fs_usage_bytes",
            &device,
            Some(detail.writable_layer.bytes),
        );
    }

    let tasks = &detail.cgroup.tasks;
    m.put(
        "container_processes",
        &labels,
        tasks.processes.or(u.cgroup.pids),
    );
    m.put(
        "container_file_descriptors",
        &labels,
        tasks.file_descriptors,
    );
    m.put("container_sockets", &labels, tasks.sockets);
    m.put("container_threads", &labels, tasks.threads);
    m.put("container_threads_max", &labels, tasks.threads_max);

    m.put(
        "container_last_seen",
        &labels,
        Some(u.timestamp.max(0) as u64 / NS_PER_SECOND),
    );
    m.put(
        "container_start_time_seconds",
        &labels,
        Some(r.started_at.max(0) as u64 / NS_PER_SECOND),
    );
    let spec = &r.config.resources;
    let set = |v: i64| (v > 0).then_some(v as u64);
    m.put("container_spec_cpu_period", &labels, set(spec.cpu_period));
    m.put("container_spec_cpu_shares", &labels, set(spec.cpu_shares));
    m.put(
        "container_spec_memory_limit_bytes",
        &labels,
        set(spec.memory_limit_in_bytes),
    );
    m.put(
        "container_spec_memory_swap_limit_bytes",
        &labels,
        set(spec.memory_swap_limit_in_bytes),
    );
    cri::ContainerMetrics {
        container_id: r.id.clone(),
        metrics: m.out,
    }
}
