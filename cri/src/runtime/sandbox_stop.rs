//! StopPodSandbox: its containers first, then network, monitor, namespaces. Idempotent; an
//! unknown sandbox is already stopped.

use berth_podsandbox::Pods;
use k8s_cri::v1::{StopPodSandboxRequest, StopPodSandboxResponse};
use tonic::Status;

use crate::service::pod_error;

pub(super) async fn stop_pod_sandbox(
    pods: &Pods,
    request: StopPodSandboxRequest,
) -> Result<StopPodSandboxResponse, Status> {
    crate::metrics::record_pod(&request.pod_sandbox_id);
    if let Some(id) = pods.sandboxes.resolve(&request.pod_sandbox_id) {
        pods.stop_pod(&id).await.map_err(pod_error)?;
    }
    Ok(StopPodSandboxResponse {})
}
