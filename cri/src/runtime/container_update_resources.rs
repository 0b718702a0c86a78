//! UpdateContainerResources: synchronous, as kubelet's CPU manager and in-place resize expect;
//! the live cgroup and the record are written on the blocking pool.

use berth_podsandbox::Pods;
use k8s_cri::v1::{UpdateContainerResourcesRequest, UpdateContainerResourcesResponse};
use tonic::Status;

use crate::service::{container_error, container_id};

pub(super) async fn update_container_resources(
    pods: &Pods,
    r: UpdateContainerResourcesRequest,
) -> Result<UpdateContainerResourcesResponse, Status> {
    crate::metrics::record_container(&r.container_id);
    let id = container_id(pods, &r.container_id)?;
    // No Linux resources: nothing changes, but the container must still be there and running.
    let resources = super::container_convert::resources(r.linux.unwrap_or_default());
    pods.update_container_resources(id, resources)
        .await
        .map_err(container_error)?;
    Ok(UpdateContainerResourcesResponse {})
}
