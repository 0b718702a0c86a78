//! RemovePodSandbox: idempotent; an unknown sandbox is already removed.

use std::sync::Arc;

use berth_podsandbox::Sandboxes;
use k8s_cri::v1::{RemovePodSandboxRequest, RemovePodSandboxResponse};
use tonic::Status;

use super::sandbox_convert::sandbox_error;

pub(super) async fn remove_pod_sandbox(
    sandboxes: &Arc<Sandboxes>,
    request: RemovePodSandboxRequest,
) -> Result<RemovePodSandboxResponse, Status> {
    crate::metrics::record_pod(&request.pod_sandbox_id);
    if let Some(id) = sandboxes.resolve(&request.pod_sandbox_id) {
        sandboxes.remove(&id).await.map_err(sandbox_error)?;
    }
    Ok(RemovePodSandboxResponse {})
}
