//! StopContainer: the stop signal, SIGKILL after the timeout.

use std::time::Duration;

use berth_podsandbox::Pods;
use k8s_cri::v1::{StopContainerRequest, StopContainerResponse};
use tonic::Status;

use crate::service::container_error;

/// CRI: stopping an unknown or stopped container succeeds.
pub(super) async fn stop_container(
    pods: &Pods,
    r: StopContainerRequest,
) -> Result<StopContainerResponse, Status> {
    crate::metrics::record_container(&r.container_id);
    if let Some(id) = pods.containers.resolve(&r.container_id) {
        let timeout = Duration::from_secs(r.timeout.max(0) as u64);
        pods.stop_container(id, timeout)
            .await
            .map_err(container_error)?;
    }
    Ok(StopContainerResponse {})
}
