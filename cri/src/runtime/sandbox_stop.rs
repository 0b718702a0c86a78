//! StopPodSandbox: idempotent; an unknown sandbox is already stopped.

use std::sync::Arc;

use berth_podsandbox::Sandboxes;
use k8s_cri::v1::{StopPodSandboxRequest, StopPodSandboxResponse};
use tonic::Status;

use super::sandbox_convert::sandbox_error;

pub(super) async fn stop_pod_sandbox(
    sandboxes: &Arc<Sandboxes>,
    request: StopPodSandboxRequest,
) -> Result<StopPodSandboxResponse, Status> {
    crate::metrics::record_pod(&request.pod_sandbox_id);
    if let Some(id) = sandboxes.resolve(&request.pod_sandbox_id) {
        sandboxes.stop(&id).await.map_err(sandbox_error)?;
    }
    Ok(StopPodSandboxResponse {})
}
