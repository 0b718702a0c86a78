//! `berth_cni_operation_duration_seconds{operation, plugin, outcome}`: one sample per plugin
//! call, so a slow IPAM or a failing portmap shows up by name.

use std::time::Duration;

use berth_common::metrics::operation_histogram;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::error::Verb;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    operation: &'static str,
    plugin: String,
    outcome: &'static str,
}

/// The CNI metric families. Clones share the same series.
#[derive(Clone, Debug)]
pub struct CniMetrics {
    durations: Family<Labels, Histogram, fn() -> Histogram>,
}

impl CniMetrics {
    /// Creates the families and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> CniMetrics {
        let metrics = CniMetrics {
            durations: Family::new_with_constructor(operation_histogram),
        };
        registry.register(
            "berth_cni_operation_duration_seconds",
            "Time a CNI plugin call took, by operation (ADD, DEL, CHECK), plugin and outcome",
            metrics.durations.clone(),
        );
        metrics
    }

    pub(crate) fn observe(&self, verb: Verb, plugin: &str, success: bool, took: Duration) {
        self.durations
            .get_or_create(&Labels {
                operation: verb.as_str(),
                plugin: plugin.to_string(),
                outcome: if success { "success" } else { "error" },
            })
            .observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_exported_by_operation_plugin_and_outcome() {
        let mut registry = Registry::default();
        let metrics = CniMetrics::register(&mut registry);
        metrics.observe(Verb::Add, "bridge", true, Duration::from_millis(30));
        metrics.observe(Verb::Del, "portmap", false, Duration::from_millis(2));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"berth_cni_operation_duration_seconds_count{operation="ADD",plugin="bridge",outcome="success"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"berth_cni_operation_duration_seconds_count{operation="DEL",plugin="portmap",outcome="error"} 1"#),
            "{text}"
        );
    }
}
