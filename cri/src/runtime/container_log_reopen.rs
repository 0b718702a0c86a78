//! ReopenContainerLog: the pod's monitor opens the container's log path anew, after kubelet
//! rotated the file.

use berth_podsandbox::Pods;
use k8s_cri::v1::{ReopenContainerLogRequest, ReopenContainerLogResponse};
use tonic::Status;

use crate::service::{container_error, container_id};

pub(super) async fn reopen_container_log(
    pods: &Pods,
    r: ReopenContainerLogRequest,
) -> Result<ReopenContainerLogResponse, Status> {
    let id = container_id(pods, &r.container_id)?;
    pods.reopen_container_log(id)
        .await
        .map_err(container_error)?;
    Ok(ReopenContainerLogResponse {})
}
