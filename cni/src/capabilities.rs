//! Runtime capabilities: the per-attachment values a runtime hands to plugins that ask for them.
//!
//! The JSON shapes are the conventions libcni documents in CONVENTIONS.md and containerd's
//! go-cni sends: `portMappings`, `bandwidth`, `dns`. A plugin receives, as `runtimeConfig`, only
//! the capabilities its configuration enables (`"capabilities": {"portMappings": true}`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One host port forwarded to the pod (`portMappings` entry, as portmap reads it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// "tcp", "udp" or "sctp" (lowercase, as containerd sends).
    pub protocol: String,
    /// Host address to bind; empty for all.
    #[serde(rename = "hostIP", default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// Traffic shaping for the `bandwidth` plugin, in bits per second and bits. containerd sets a
/// burst of `u32::MAX` when only a rate is known (from the kubernetes.io/*-bandwidth annotations).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ingress_rate: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ingress_burst: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub egress_rate: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub egress_burst: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The pod's DNS settings (`dns` capability).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsCapability {
    #[serde(default)]
    pub servers: Vec<String>,
    #[serde(default)]
    pub searches: Vec<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

/// Everything a runtime may offer; an empty field is not offered at all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeCapabilities {
    pub port_mappings: Vec<PortMapping>,
    pub bandwidth: Option<Bandwidth>,
    pub dns: Option<DnsCapability>,
    /// Any other capability by its JSON name (e.g. "ips", "mac", "aliases").
    pub other: BTreeMap<String, Value>,
}

impl RuntimeCapabilities {
    /// All offered capabilities as a JSON object keyed by capability name.
    pub fn to_json(&self) -> Map<String, Value> {
        let mut map = Map::new();
        for (name, value) in &self.other {
            map.insert(name.clone(), value.clone());
        }
        if !self.port_mappings.is_empty() {
            map.insert("portMappings".into(), to_value(&self.port_mappings));
        }
        if let Some(bw) = &self.bandwidth {
            map.insert("bandwidth".into(), to_value(bw));
        }
        if let Some(dns) = &self.dns {
            map.insert("dns".into(), to_value(dns));
        }
        map
    }
}

fn to_value<T: Serialize>(v: &T) -> Value {
    // These types hold only strings and integers: serialization cannot fail.
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// libcni's `injectRuntimeConfig`: of the `offered` capabilities, those the plugin enables.
/// None in common means no `runtimeConfig` key at all.
pub(crate) fn runtime_config_for(
    plugin_capabilities: &BTreeSet<String>,
    offered: &Map<String, Value>,
) -> Option<Map<String, Value>> {
    let rc: Map<String, Value> = offered
        .iter()
        .filter(|(name, _)| plugin_capabilities.contains(*name))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    (!rc.is_empty()).then_some(rc)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn caps() -> RuntimeCapabilities {
        RuntimeCapabilities {
            port_mappings: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: "127.0.0.1".into(),
            }],
            bandwidth: Some(Bandwidth {
                ingress_rate: 1_000_000,
                ingress_burst: u32::MAX as u64,
                ..Default::default()
            }),
            dns: Some(DnsCapability {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["default.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            other: BTreeMap::new(),
        }
    }

    #[test]
    fn capabilities_serialize_in_the_conventional_shapes() {
        assert_eq!(
            Value::Object(caps().to_json()),
            json!({
                "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}],
                "bandwidth": {"ingressRate": 1_000_000, "ingressBurst": 4_294_967_295u64},
                "dns": {"servers": ["10.96.0.10"], "searches": ["default.svc.cluster.local"], "options": ["ndots:5"]}
            })
        );
    }

    #[test]
    fn empty_capabilities_offer_nothing() {
        assert!(RuntimeCapabilities::default().to_json().is_empty());
    }

    #[test]
    fn plugin_gets_only_the_capabilities_it_enables() {
        let offered = caps().to_json();
        let portmap: BTreeSet<String> = ["portMappings".to_string()].into();
        let rc = runtime_config_for(&portmap, &offered).unwrap();
        assert_eq!(rc.keys().collect::<Vec<_>>(), ["portMappings"]);

        let both: BTreeSet<String> = [
            "bandwidth".to_string(),
            "dns".to_string(),
            "ips".to_string(),
        ]
        .into();
        let rc = runtime_config_for(&both, &offered).unwrap();
        assert_eq!(rc.keys().collect::<Vec<_>>(), ["bandwidth", "dns"]);
    }

    #[test]
    fn plugin_without_matching_capabilities_gets_no_runtime_config() {
        let offered = caps().to_json();
        assert_eq!(runtime_config_for(&BTreeSet::new(), &offered), None);
        let unrelated: BTreeSet<String> = ["mac".to_string()].into();
        assert_eq!(runtime_config_for(&unrelated, &offered), None);
        let portmap: BTreeSet<String> = ["portMappings".to_string()].into();
        assert_eq!(runtime_config_for(&portmap, &Map::new()), None);
    }
}
