//! UpdateRuntimeConfig: kubelet pushes the node's pod CIDR.

use k8s_cri::v1::{UpdateRuntimeConfigRequest, UpdateRuntimeConfigResponse};
use tonic::Status;

use crate::Shared;

pub(super) fn update_runtime_config(
    shared: &Shared,
    request: UpdateRuntimeConfigRequest,
) -> Result<UpdateRuntimeConfigResponse, Status> {
    let pod_cidr = request
        .runtime_config
        .and_then(|c| c.network_config)
        .map(|n| n.pod_cidr)
        .unwrap_or_default();
    // CRI: an empty CIDR means "nothing to change".
    if pod_cidr.is_empty() {
        return Ok(UpdateRuntimeConfigResponse {});
    }
    let mut current = shared
        .pod_cidr
        .write()
        .map_err(|_| Status::internal("berth: pod CIDR lock poisoned"))?;
    if *current != pod_cidr {
        tracing::info!(pod_cidr = %pod_cidr, "pod CIDR updated by kubelet");
        *current = pod_cidr;
    }
    Ok(UpdateRuntimeConfigResponse {})
}
