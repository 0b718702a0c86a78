//! StartContainer: only a created container starts.

use berth_podsandbox::Pods;
use k8s_cri::v1::{StartContainerRequest, StartContainerResponse};
use tonic::Status;

use crate::service::{container_error, container_id};

pub(super) async fn start_container(
    pods: &Pods,
    r: StartContainerRequest,
) -> Result<StartContainerResponse, Status> {
    crate::metrics::record_container(&r.container_id);
    let id = container_id(pods, &r.container_id)?;
    pods.start_container(id).await.map_err(container_error)?;
    Ok(StartContainerResponse {})
}
