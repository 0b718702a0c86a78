//! PodSandboxStatus: state, IPs, namespaces; `verbose` adds the monitor, netns and CNI result.

use std::collections::HashMap;
use std::sync::Arc;

use berth_podsandbox::Sandboxes;
use k8s_cri::v1::{PodSandboxStatusRequest, PodSandboxStatusResponse};
use tonic::Status;

use super::sandbox_convert::cri_status;

pub(super) fn pod_sandbox_status(
    sandboxes: &Arc<Sandboxes>,
    request: PodSandboxStatusRequest,
) -> Result<PodSandboxStatusResponse, Status> {
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
    Ok(PodSandboxStatusResponse {
        status: Some(cri_status(&record)),
        info,
        containers_statuses: vec![],
        timestamp: 0,
    })
}
