//! Container metric families.

use berth_runtime::monitor::protocol::ExitRecord;

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// Container metric families. Operation durations are the CRI layer's
/// `berth_cri_operation_duration_seconds{operation="CreateContainer"|…}`.
#[derive(Debug, Clone, Default)]
pub struct ContainerMetrics {
    by_state: prometheus_client::metrics::family::Family<
        StateLabel,
        prometheus_client::metrics::gauge::Gauge,
    >,
    oom_kills: prometheus_client::metrics::counter::Counter,
    log_bytes: prometheus_client::metrics::counter::Counter,
}

impl ContainerMetrics {
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> ContainerMetrics {
        let m = ContainerMetrics::default();
        registry.register(
            "berth_containers",
            "Containers by state (created, running, exited)",
            m.by_state.clone(),
        );
        registry.register(
            "berth_container_oom_kills",
            "Containers whose exit was an OOM kill",
            m.oom_kills.clone(),
        );
        registry.register(
            "berth_container_log_bytes",
            "CRI log bytes written by pod monitors, counted when a container's exit is seen",
            m.log_bytes.clone(),
        );
        m
    }

    /// A container's exit, seen for the first time.
    pub(super) fn observe_exit(&self, exit: &ExitRecord) {
        if exit.reason == "OOMKilled" {
            self.oom_kills.inc();
        }
        self.log_bytes.inc_by(exit.log_bytes);
    }

    pub(super) fn set_count(&self, state: &'static str, n: usize) {
        self.by_state
            .get_or_create(&StateLabel { state })
            .set(n as i64);
    }
}
