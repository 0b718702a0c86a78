//! Sandbox metric families.

use berth_common::metrics::{HowLabel, OutcomeLabel, StateLabel};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::monitor_client::Started;

fn create_histogram() -> Histogram {
    // 5 ms … ~80 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

#[derive(Debug, Clone)]
pub struct SandboxMetrics {
    by_state: Family<StateLabel, Gauge>,
    create: Family<OutcomeLabel, Histogram, fn() -> Histogram>,
    rolled_back: prometheus_client::metrics::counter::Counter,
    orphan_networks: prometheus_client::metrics::counter::Counter,
    monitor_memory: Family<MemoryKindLabel, Gauge>,
    monitor_starts: Family<HowLabel, Counter>,
    standby_waiting: Gauge,
    dirs_deleting: Gauge,
    dir_delete_failures: Counter,
}

/// `{kind="rss"|"pss"}` of `berth_monitor_memory_bytes`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct MemoryKindLabel {
    kind: &'static str,
}

impl Default for SandboxMetrics {
    fn default() -> Self {
        Self {
            by_state: Family::default(),
            create: Family::new_with_constructor(create_histogram),
            rolled_back: Default::default(),
            orphan_networks: Default::default(),
            monitor_memory: Family::default(),
            monitor_starts: Family::default(),
            standby_waiting: Gauge::default(),
            dirs_deleting: Gauge::default(),
            dir_delete_failures: Counter::default(),
        }
    }
}

impl SandboxMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "berth_sandboxes",
            "Pod sandboxes by state (ready, notready)",
            m.by_state.clone(),
        );
        registry.register(
            "berth_sandbox_create_duration_seconds",
            "Time for RunPodSandbox to build a sandbox, by outcome",
            m.create.clone(),
        );
        registry.register(
            "berth_sandbox_rollbacks",
            "Sandboxes whose build a crash cut short, taken back at the agent's start",
            m.rolled_back.clone(),
        );
        registry.register(
            "berth_sandbox_orphan_networks_released",
            "Pod network attachments no sandbox record claimed (lost with the state dir, as in a reboot), released with CNI DEL at the agent's start",
            m.orphan_networks.clone(),
        );
        registry.register(
            "berth_monitor_memory_bytes",
            "Memory of the ready pods' monitors together, by kind: rss (resident, shared pages counted in every monitor) and pss (each shared page divided among the processes that map it); read every 10 s",
            m.monitor_memory.clone(),
        );
        registry.register(
            "berth_monitor_starts",
            "Pod monitors started, by how: standby (a monitor started ahead, handed the pod) or exec (started for the pod: standbys are off, or none was waiting)",
            m.monitor_starts.clone(),
        );
        registry.register(
            "berth_monitor_standby_waiting",
            "1 while a standby monitor waits, started, for the next pod (its RunPodSandbox hands it the pod), else 0",
            m.standby_waiting.clone(),
        );
        registry.register(
            "berth_sandbox_dirs_deleting",
            "Pod dirs RemovePodSandbox renamed into the trash whose files are still being deleted (it does not wait for that)",
            m.dirs_deleting.clone(),
        );
        registry.register(
            "berth_sandbox_dir_delete_failures",
            "Pod dirs in the trash whose deletion failed; the agent's next start tries again",
            m.dir_delete_failures.clone(),
        );
        m
    }

    pub(crate) fn monitor_started(&self, how: Started) {
        let how = match how {
            Started::Standby => "standby",
            Started::Exec => "exec",
        };
        self.monitor_starts.get_or_create(&HowLabel { how }).inc();
    }

    /// The gauge the standby slot keeps: 1 while a standby waits.
    pub(crate) fn standby_waiting(&self) -> Gauge {
        self.standby_waiting.clone()
    }

    pub(crate) fn set_monitor_memory(&self, rss: u64, pss: u64) {
        for (kind, bytes) in [("rss", rss), ("pss", pss)] {
            self.monitor_memory
                .get_or_create(&MemoryKindLabel { kind })
                .set(bytes as i64);
        }
    }

    pub(crate) fn dir_deleting(&self, by: i64) {
        self.dirs_deleting.inc_by(by);
    }

    pub(crate) fn dir_delete_failed(&self) {
        self.dir_delete_failures.inc();
    }

    pub(crate) fn rolled_back(&self) {
        self.rolled_back.inc();
    }

    pub(crate) fn orphan_networks_released(&self, n: usize) {
        self.orphan_networks.inc_by(n as u64);
    }

    pub(crate) fn set_counts(&self, ready: i64, not_ready: i64) {
        self.by_state
            .get_or_create(&StateLabel { state: "ready" })
            .set(ready);
        self.by_state
            .get_or_create(&StateLabel { state: "notready" })
            .set(not_ready);
    }

    pub(crate) fn observe_create(&self, seconds: f64, ok: bool) {
        let outcome = if ok { "success" } else { "error" };
        self.create
            .get_or_create(&OutcomeLabel { outcome })
            .observe(seconds);
    }
}
