//! ListMetricDescriptors: the cadvisor families berth reports through ListPodSandboxMetrics,
//! with their help, type and label keys. One table serves both RPCs, so a metric can never carry
//! a different number of label values than its descriptor has keys (kubelet drops those).
//! Labels as containerd's: `pod, namespace, container, id, image`, then the family's own.
//! Not reported (as containerd, and critest allows it): hugetlb, pressure, `spec_cpu_quota`,
//! `spec_memory_reservation_limit_bytes`, `ulimits_soft`.

use k8s_cri::v1 as cri;

/// The labels every family starts with.
pub(super) const BASE_LABELS: [&str; 5] = ["pod", "namespace", "container", "id", "image"];

pub(super) struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: cri::MetricType,
    /// Label keys after [`BASE_LABELS`].
    pub extra: &'static [&'static str],
}

const fn counter(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        help,
        kind: cri::MetricType::Counter,
        extra: &[],
    }
}

const fn gauge(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        help,
        kind: cri::MetricType::Gauge,
        extra: &[],
    }
}

const fn with(family: Family, extra: &'static [&'static str]) -> Family {
    Family { extra, ..family }
}

const INTERFACE: &[&str] = &["interface"];
const DEVICE: &[&str] = &["device"];

pub(super) const FAMILIES: &[Family] = &[
    counter(
        "container_cpu_usage_seconds_total",
        "Cumulative CPU time consumed in seconds.",
    ),
    counter(
        "container_cpu_user_seconds_total",
        "Cumulative user CPU time consumed in seconds.",
    ),
    counter(
        "container_cpu_system_seconds_total",
        "Cumulative system CPU time consumed in seconds.",
    ),
    counter(
        "container_cpu_cfs_periods_total",
        "Number of elapsed enforcement period intervals.",
    ),
    counter(
        "container_cpu_cfs_throttled_periods_total",
        "Number of throttled period intervals.",
    ),
    counter(
        "container_cpu_cfs_throttled_seconds_total",
        "Total time duration the container has been throttled.",
    ),
    gauge(
        "container_memory_cache",
        "Number of bytes of page cache memory.",
    ),
    gauge("container_memory_rss", "Size of RSS in bytes."),
    gauge(
        "container_memory_kernel_usage",
        "Size of kernel memory allocated in bytes.",
    ),
    gauge(
        "container_memory_mapped_file",
        "Size of memory mapped files in bytes.",
    ),
    gauge("container_memory_swap", "Container swap usage in bytes."),
    gauge(
        "container_memory_failcnt",
        "Number of memory usage hits limits.",
    ),
    gauge(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
    ),
    gauge(
        "container_memory_max_usage_bytes",
        "Maximum memory usage recorded in bytes.",
    ),
    gauge(
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
    ),
    with(
        counter(
            "container_memory_failures_total",
            "Cumulative count of memory allocation failures.",
        ),
        &["failure_type", "scope"],
    ),
    counter(
        "container_oom_events_total",
        "Count of out of memory events observed for the container.",
    ),
    with(
        gauge("container_fs_inodes_free", "Number of available Inodes."),
        DEVICE,
    ),
    with(
        gauge("container_fs_inodes_total", "Number of Inodes."),
        DEVICE,
    ),
    with(
        gauge(
            "container_fs_limit_bytes",
            "Number of bytes that can be consumed by the container on this filesystem.",
        ),
        DEVICE,
    ),
    with(
        gauge(
            "container_fs_usage_bytes",
            "Number of bytes that are consumed by the container on this filesystem.",
        ),
        DEVICE,
    ),
    with(
        counter(
            "container_fs_reads_bytes_total",
            "Cumulative count of bytes read.",
        ),
        DEVICE,
    ),
    with(
        counter(
            "container_fs_reads_total",
            "Cumulative count of reads completed.",
        ),
        DEVICE,
    ),
    with(
        counter(
            "container_fs_writes_bytes_total",
            "Cumulative count of bytes written.",
        ),
        DEVICE,
    ),
    with(
        counter(
            "container_fs_writes_total",
            "Cumulative count of writes completed.",
        ),
        DEVICE,
    ),
    with(
        counter(
            "container_blkio_device_usage_total",
            "Blkio device bytes usage.",
        ),
        &["device", "major", "minor", "operation"],
    ),
    with(
        counter(
            "container_network_receive_bytes_total",
            "Cumulative count of bytes received.",
        ),
        INTERFACE,
    ),
    with(
        counter(
            "container_network_receive_packets_total",
            "Cumulative count of packets received.",
        ),
        INTERFACE,
    ),
    with(
        counter(
            "container_network_receive_packets_dropped_total",
            "Cumulative count of packets dropped while receiving.",
        ),
        INTERFACE,
    ),
    with(
        counter(
            "container_network_receive_errors_total",
            "Cumulative count of errors encountered while receiving.",
        ),
        INTERFACE,
    ),
    with(
        counter(
            "container_network_transmit_bytes_total",
            "Cumulative count of bytes transmitted.",
        ),
        INTERFACE,
    ),
    with(
        counter(
            "container_network_transmit_packets_total",
            "Cumulative count of packets transmitted.",
        ),
        INTERFACE,
    ),
    with(
        counter(
            "container_network_transmit_packets_dropped_total",
            "Cumulative count of packets dropped while transmitting.",
        ),
        INTERFACE,
    ),
    with(
        counter(
            "container_network_transmit_errors_total",
            "Cumulative count of errors encountered while transmitting.",
        ),
        INTERFACE,
    ),
    gauge(
        "container_processes",
        "Number of processes running inside the container.",
    ),
    gauge(
        "container_file_descriptors",
        "Number of open file descriptors for the container.",
    ),
    gauge(
        "container_sockets",
        "Number of open sockets for the container.",
    ),
    gauge(
        "container_threads",
        "Number of threads running inside the container.",
    ),
    gauge(
        "container_threads_max",
        "Maximum number of threads allowed inside the container, infinity if value is zero.",
    ),
    gauge(
        "container_last_seen",
        "Last time a container was seen by the exporter.",
    ),
    gauge(
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds.",
    ),
    gauge("container_spec_cpu_period", "CPU period of the container."),
    gauge("container_spec_cpu_shares", "CPU share of the container."),
    gauge(
        "container_spec_memory_limit_bytes",
        "Memory limit for the container.",
    ),
    gauge(
        "container_spec_memory_swap_limit_bytes",
        "Memory swap limit for the container.",
    ),
];

impl Family {
    pub fn label_keys(&self) -> Vec<String> {
        BASE_LABELS
            .iter()
            .chain(self.extra)
            .map(|k| k.to_string())
            .collect()
    }
}

/// The family named `name`. Every name berth reports is in the table (a unit test checks).
pub(super) fn family(name: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| f.name == name)
}

pub(super) fn list_metric_descriptors(
    _request: cri::ListMetricDescriptorsRequest,
) -> cri::ListMetricDescriptorsResponse {
    cri::ListMetricDescriptorsResponse {
        descriptors: FAMILIES
            .iter()
            .map(|f| cri::MetricDescriptor {
                name: f.name.to_string(),
                help: f.help.to_string(),
                label_keys: f.label_keys(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_described_once_and_every_reported_name_has_a_family() {
        let mut names: Vec<_> = FAMILIES.iter().map(|f| f.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), FAMILIES.len(), "a family is described twice");
        // The names ListPodSandboxMetrics reports, read from its source.
        let source = include_str!("sandbox_metrics_list.rs");
        let reported: Vec<&str> = source
            .split('"')
            .filter(|s| s.starts_with("container_") && !s.contains(' '))
            .collect();
        assert!(reported.len() > 30, "{reported:?}");
        for name in reported {
            assert!(
                family(name).is_some(),
                "{name} is reported but not described"
            );
        }
        for f in FAMILIES {
            assert!(
                !f.help.is_empty() && f.label_keys().len() >= 5,
                "{}",
                f.name
            );
        }
    }
}
