//! UpdateContainerResources: synchronous, as kubelet's CPU manager and in-place resize expect;
//! the runtime crate writes the live cgroup and the record on the blocking pool.

use std::sync::Arc;

use berth_podsandbox::container::Containers;
use k8s_cri::v1::*;
use tonic::Status;

use super::container_convert::container_error;

pub(super) async fn update_container_resources(
    c: &Arc<Containers>,
    r: UpdateContainerResourcesRequest,
) -> Result<UpdateContainerResourcesResponse, Status> {
    crate::metrics::record_container(&r.container_id);
    let id = c.resolve(&r.container_id).ok_or_else(|| {
        Status::not_found(format!("berth: container {:?} not found", r.container_id))
    })?;
    // No Linux resources: nothing changes, but the container must still be there and running.
    let resources = super::container_convert::resources(r.linux.unwrap_or_default());
    let containers = c.clone();
    tokio::task::spawn_blocking(move || containers.update_resources(&id, resources))
        .await
        .map_err(|e| Status::internal(format!("berth: container task: {e}")))?
        .map_err(container_error)?;
    Ok(UpdateContainerResourcesResponse {})
}
