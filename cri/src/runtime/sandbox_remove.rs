//! RemovePodSandbox: its containers (stopped and removed), then the sandbox. Idempotent; an
//! unknown sandbox is already removed.

use std::sync::Arc;

use k8s_cri::v1::{RemovePodSandboxRequest, RemovePodSandboxResponse};
use tonic::Status;

use super::container_lifecycle::stop_pod_containers;
use super::sandbox_convert::sandbox_error;
use crate::Backends;

pub(super) async fn remove_pod_sandbox(
    backends: &Arc<Backends>,
    request: RemovePodSandboxRequest,
) -> Result<RemovePodSandboxResponse, Status> {
    crate::metrics::record_pod(&request.pod_sandbox_id);
    if let Some(id) = backends.sandboxes.resolve(&request.pod_sandbox_id) {
        stop_pod_containers(backends, &id, true).await?;
        backends
            .sandboxes
            .remove(&id)
            .await
            .map_err(sandbox_error)?;
    }
    Ok(RemovePodSandboxResponse {})
}
