//! The image service's metric families.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Debug, Clone)]
pub struct ImageMetrics {
    pulls: Family<Outcome, Counter>,
    pub(crate) bytes_pulled: Counter,
    pub(crate) pull_duration: Histogram,
    pub(crate) layers_reused: Counter,
    pub(crate) layers_pulled: Counter,
}

impl Default for ImageMetrics {
    fn default() -> Self {
        Self {
            pulls: Family::default(),
            bytes_pulled: Counter::default(),
            // 10 ms … ~5.5 min.
            pull_duration: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            layers_reused: Counter::default(),
            layers_pulled: Counter::default(),
        }
    }
}

impl ImageMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "berth_image_pulls",
            "Image pulls by outcome (success, not_found, auth, error)",
            m.pulls.clone(),
        );
        registry.register(
            "berth_image_pull_bytes",
            "Bytes downloaded from registries",
            m.bytes_pulled.clone(),
        );
        registry.register(
            "berth_image_pull_duration_seconds",
            "Time to pull an image, successful pulls only",
            m.pull_duration.clone(),
        );
        registry.register(
            "berth_image_layers_reused",
            "Layers a pull found already unpacked",
            m.layers_reused.clone(),
        );
        registry.register(
            "berth_image_layers_unpacked",
            "Layers a pull downloaded and unpacked",
            m.layers_pulled.clone(),
        );
        m
    }

    pub(crate) fn pull_outcome(&self, outcome: &'static str) {
        self.pulls.get_or_create(&Outcome { outcome }).inc();
    }
}
