//! RemovePodSandbox: its containers (stopped and removed), then the sandbox. Idempotent; an
//! unknown sandbox is already removed.

use berth_podsandbox::Pods;
use k8s_cri::v1::{RemovePodSandboxRequest, RemovePodSandboxResponse};
use tonic::Status;

use crate::service::pod_error;

pub(super) async fn remove_pod_sandbox(
    pods: &Pods,
    request: RemovePodSandboxRequest,
) -> Result<RemovePodSandboxResponse, Status> {
    crate::metrics::record_pod(&request.pod_sandbox_id);
    if let Some(id) = pods.sandboxes.resolve(&request.pod_sandbox_id) {
        pods.remove_pod(&id).await.map_err(pod_error)?;
    }
    Ok(RemovePodSandboxResponse {})
}
