//! Metric pieces several crates share: label sets and histogram buckets.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

/// `{state="…"}`: objects by state (`berth_sandboxes`, `berth_containers`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

/// `{outcome="…"}`: operations by how they ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// `{how="standby"|"exec"}`: helpers by how they started, handed their work as a standby or
/// exec'd for it (`berth_monitor_starts_total`, `berth_exec_sync_starts_total`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HowLabel {
    pub how: &'static str,
}

/// Durations from 1 ms to ~65 s in 17 doubling steps: a sub-millisecond Version through a
/// CNI plugin that runs into its 60 s timeout or a large image pull.
pub fn operation_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}
