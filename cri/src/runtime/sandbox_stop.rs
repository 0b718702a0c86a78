//! StopPodSandbox: its containers first, then network, monitor, namespaces. Idempotent; an
//! unknown sandbox is already stopped.

use std::sync::Arc;

use k8s_cri::v1::{StopPodSandboxRequest, StopPodSandboxResponse};
use tonic::Status;

use super::container_lifecycle::stop_pod_containers;
use super::sandbox_convert::sandbox_error;
use crate::Backends;

pub(super) async fn stop_pod_sandbox(
    backends: &Arc<Backends>,
    request: StopPodSandboxRequest,
) -> Result<StopPodSandboxResponse, Status> {
    crate::metrics::record_pod(&request.pod_sandbox_id);
    if let Some(id) = backends.sandboxes.resolve(&request.pod_sandbox_id) {
        stop_pod_containers(backends, &id, false).await?;
        backends.sandboxes.stop(&id).await.map_err(sandbox_error)?;
    }
    Ok(StopPodSandboxResponse {})
}
