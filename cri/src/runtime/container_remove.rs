//! RemoveContainer: stopped first, then its rootfs, writable layer and record; its image layers
//! go back to GC.

use berth_podsandbox::Pods;
use k8s_cri::v1::{RemoveContainerRequest, RemoveContainerResponse};
use tonic::Status;

use crate::service::container_error;

/// CRI: removing an unknown container succeeds.
pub(super) async fn remove_container(
    pods: &Pods,
    r: RemoveContainerRequest,
) -> Result<RemoveContainerResponse, Status> {
    crate::metrics::record_container(&r.container_id);
    if let Some(id) = pods.containers.resolve(&r.container_id) {
        pods.remove_container(id).await.map_err(container_error)?;
    }
    Ok(RemoveContainerResponse {})
}
