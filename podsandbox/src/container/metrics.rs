//! Container metric families.

use berth_common::metrics::{HowLabel, OutcomeLabel, StateLabel};
use berth_runtime::monitor::protocol::ExitRecord;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Container metric families. Operation durations are the CRI layer's
/// `berth_cri_operation_duration_seconds{operation="CreateContainer"|…}`.
#[derive(Debug, Clone, Default)]
pub struct ContainerMetrics {
    by_state: Family<StateLabel, Gauge>,
    oom_kills: Counter,
    log_bytes: Counter,
    orphans_killed: Counter,
    rolled_back: Counter,
    unclaimed_layers: Counter,
    seccomp_programs: Family<OutcomeLabel, Counter>,
    user_namespace_mounts: Family<MountKindLabel, Counter>,
    exec_sync_starts: Family<HowLabel, Counter>,
    exec_standby_waiting: Gauge,
}

/// `{kind="…"}` of `berth_container_user_namespace_mounts_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MountKindLabel {
    kind: &'static str,
}

/// What CreateContainer mounts from the host for a container in a pod user namespace.
#[derive(Debug, Clone, Copy)]
pub(super) enum UserNamespaceMount {
    /// An idmapped copy of an image layer, for the rootfs overlay.
    Layer,
    /// A bind mount kubelet gave the pod's ranges.
    Idmapped,
    /// A bind mount without ranges, cloned as it is.
    Plain,
}

impl ContainerMetrics {
    pub fn register(registry: &mut Registry) -> ContainerMetrics {
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
        registry.register(
            "berth_container_orphans_killed",
            "Containers whose pod monitor was gone, ended by the agent through their cgroup",
            m.orphans_killed.clone(),
        );
        registry.register(
            "berth_container_rollbacks",
            "Containers whose create a crash cut short, taken back at the agent's start",
            m.rolled_back.clone(),
        );
        registry.register(
            "berth_container_unclaimed_layers_removed",
            "Writable layers no container record claimed (lost with the state dir, as in a reboot), removed at the agent's start",
            m.unclaimed_layers.clone(),
        );
        registry.register(
            "berth_container_seccomp_programs",
            "Seccomp programs CreateContainer wrote, by outcome: compiled (a profile's first use) or cached",
            m.seccomp_programs.clone(),
        );
        registry.register(
            "berth_container_user_namespace_mounts",
            "Mounts CreateContainer made from the host for containers in a pod user namespace, by kind: layer (an idmapped image layer), idmapped (a volume with the pod's ranges) or plain",
            m.user_namespace_mounts.clone(),
        );
        registry.register(
            "berth_exec_sync_starts",
            "ExecSync executors, by how they started: standby (started ahead, handed the command) or exec (standbys are off, or none was waiting)",
            m.exec_sync_starts.clone(),
        );
        registry.register(
            "berth_exec_standby_waiting",
            "1 while a standby executor waits, started, for the next ExecSync, else 0",
            m.exec_standby_waiting.clone(),
        );
        m
    }

    pub(super) fn exec_sync_started(&self, standby: bool) {
        let how = if standby { "standby" } else { "exec" };
        self.exec_sync_starts.get_or_create(&HowLabel { how }).inc();
    }

    /// The gauge the ExecSync standby slot keeps: 1 while a standby waits.
    pub(super) fn exec_standby_waiting(&self) -> Gauge {
        self.exec_standby_waiting.clone()
    }

    pub(super) fn user_namespace_mount(&self, kind: UserNamespaceMount) {
        let kind = match kind {
            UserNamespaceMount::Layer => "layer",
            UserNamespaceMount::Idmapped => "idmapped",
            UserNamespaceMount::Plain => "plain",
        };
        self.user_namespace_mounts
            .get_or_create(&MountKindLabel { kind })
            .inc();
    }

    pub(super) fn orphan_killed(&self) {
        self.orphans_killed.inc();
    }

    pub(super) fn seccomp_program(&self, lookup: berth_runtime::seccomp_filter::Lookup) {
        let outcome = match lookup {
            berth_runtime::seccomp_filter::Lookup::Compiled => "compiled",
            berth_runtime::seccomp_filter::Lookup::Cached => "cached",
        };
        self.seccomp_programs
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    pub(super) fn rolled_back(&self) {
        self.rolled_back.inc();
    }

    pub(super) fn unclaimed_layer_removed(&self) {
        self.unclaimed_layers.inc();
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
