//! Status: the RuntimeReady and NetworkReady conditions kubelet gates node readiness on.

use std::collections::HashMap;

use k8s_cri::v1::{
    RuntimeCondition, RuntimeFeatures, RuntimeHandler, RuntimeHandlerFeatures, RuntimeStatus,
    StatusRequest, StatusResponse,
};
use tonic::Status;

use crate::Shared;

const RUNTIME_READY: &str = "RuntimeReady";
const NETWORK_READY: &str = "NetworkReady";
/// The reason kubelet (and containerd) use while pod networking is not available.
const NETWORK_PLUGIN_NOT_READY: &str = "NetworkPluginNotReady";
/// Ours while pods cannot be made (containerd says `ContainerdNotReady`).
const RUNTIME_NOT_READY: &str = "BerthNotReady";

pub(super) fn status(
    shared: &Shared,
    runtime: Result<(), String>,
    network: Result<(), String>,
    request: StatusRequest,
) -> Result<StatusResponse, Status> {
    let conditions = vec![
        RuntimeCondition {
            r#type: RUNTIME_READY.to_string(),
            status: runtime.is_ok(),
            reason: if runtime.is_ok() {
                String::new()
            } else {
                RUNTIME_NOT_READY.to_string()
            },
            message: runtime.err().unwrap_or_default(),
        },
        // Until a valid CNI config exists kubelet keeps pods needing a network from starting.
        RuntimeCondition {
            r#type: NETWORK_READY.to_string(),
            status: network.is_ok(),
            reason: if network.is_ok() {
                String::new()
            } else {
                NETWORK_PLUGIN_NOT_READY.to_string()
            },
            message: network.err().unwrap_or_default(),
        },
    ];
    let mut info = HashMap::new();
    // CRI: info is only returned when verbose is set; each value is a JSON document.
    if request.verbose {
        info.insert("config".to_string(), shared.options.config_json.clone());
        let pod_cidr = shared
            .pod_cidr
            .read()
            .map(|c| c.clone())
            .unwrap_or_default();
        info.insert(
            "podCIDR".to_string(),
            serde_json::Value::String(pod_cidr).to_string(),
        );
    }
    Ok(StatusResponse {
        status: Some(RuntimeStatus { conditions }),
        info,
        // The default handler (""), as kubelet asks for when a pod names no RuntimeClass.
        runtime_handlers: vec![RuntimeHandler {
            name: String::new(),
            features: Some(RuntimeHandlerFeatures {
                recursive_read_only_mounts: berth_runtime::spec::recursive_read_only_supported(),
                user_namespaces: shared.options.user_namespaces,
            }),
        }],
        features: Some(RuntimeFeatures {
            supplemental_groups_policy: true,
        }),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::RwLock;

    use berth_runtime::CgroupDriver;

    use super::*;
    use crate::CriOptions;

    fn shared() -> Shared {
        Shared {
            options: CriOptions {
                cgroup_driver: CgroupDriver::Cgroupfs,
                config_json: r#"{"root":"/var/lib/berth"}"#.to_string(),
                user_namespaces: true,
            },
            pod_cidr: RwLock::new("10.1.0.0/16".to_string()),
        }
    }

    #[test]
    fn status_reports_runtime_ready_and_network_not_ready() {
        let s = status(
            &shared(),
            Ok(()),
            Err("no network config found in /x".to_string()),
            StatusRequest { verbose: false },
        )
        .unwrap();
        let conditions = s.status.unwrap().conditions;
        assert_eq!(conditions[0].r#type, "RuntimeReady");
        assert!(conditions[0].status);
        assert_eq!(conditions[1].r#type, "NetworkReady");
        assert!(!conditions[1].status);
        assert_eq!(conditions[1].reason, "NetworkPluginNotReady");
        assert!(s.info.is_empty());
    }

    #[test]
    fn verbose_status_returns_config_and_pod_cidr_as_json() {
        let s = status(&shared(), Ok(()), Ok(()), StatusRequest { verbose: true }).unwrap();
        let config: serde_json::Value = serde_json::from_str(&s.info["config"]).unwrap();
        assert_eq!(config["root"], "/var/lib/berth");
        assert_eq!(s.info["podCIDR"], "\"10.1.0.0/16\"");
    }
}
