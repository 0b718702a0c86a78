//! PodSandboxStatus: state, IPs, namespaces, and the pod's containers with the time it was read
//! (what kubelet's evented PLEG takes); `verbose` adds the monitor, netns and CNI result.

use std::collections::HashMap;

use berth_podsandbox::Pods;
use k8s_cri::v1::{PodSandboxStatusRequest, PodSandboxStatusResponse};
use tonic::Status;

use super::container_convert::cri_container_status;
use super::sandbox_convert::cri_status;

pub(super) fn pod_sandbox_status(
    pods: &Pods,
    request: PodSandboxStatusRequest,
) -> Result<PodSandboxStatusResponse, Status> {
    let sandboxes = &pods.sandboxes;
    crate::metrics::record_pod(&request.pod_sandbox_id);
    let record = sandboxes
        .resolve(&request.pod_sandbox_id)
        .and_then(|id| sandboxes.get(&id))
        .ok_or_else(|| {
            Status::not_found(format!(
                "berth: pod sandbox {:?} not found",
                request.pod_sandbox_id
            ))
        })?;
    let mut info = HashMap::new();
    if request.verbose {
        let verbose = serde_json::json!({
            "monitorPid": record.monitor.map(|m| m.pid),
            "netns": (!record.spec.host_network()).then(|| sandboxes.netns_path(&record.id)),
            "cniResult": record.network.cni_result,
            "spec": record.spec,
        });
        info.insert("info".to_string(), verbose.to_string());
    }
    let timestamp = berth_common::time::now_nanos();
    let containers_statuses = pods
        .containers
        .in_sandbox(&record.id)
        .iter()
        .filter_map(|id| pods.containers.fold_exit(id))
        .map(|c| cri_container_status(&c))
        .collect();
    Ok(PodSandboxStatusResponse {
        status: Some(cri_status(&record)),
        info,
        containers_statuses,
        timestamp,
    })
}
