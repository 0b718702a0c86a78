//! CreateContainer: the image's layers, the pod's namespaces and files, a generated spec, and
//! the container built (not started) by the pod's monitor.

use berth_podsandbox::Pods;
use k8s_cri::v1::{CreateContainerRequest, CreateContainerResponse};
use tonic::Status;

use crate::service::{container_error, create_input, ready_sandbox};

pub(super) async fn create_container(
    pods: &Pods,
    request: CreateContainerRequest,
) -> Result<CreateContainerResponse, Status> {
    let pod = ready_sandbox(pods, &request.pod_sandbox_id)?;
    crate::metrics::record_pod(&pod.id);
    let config = request
        .config
        .ok_or_else(|| Status::invalid_argument("berth: CreateContainer needs a config"))?;
    let image_name = config
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .filter(|i| !i.is_empty())
        .ok_or_else(|| Status::invalid_argument("berth: container config names no image"))?;
    let input = create_input(pods, &pod, config, image_name)?;
    let id = pods
        .create_container(input)
        .await
        .map_err(container_error)?;
    crate::metrics::record_container(&id);
    Ok(CreateContainerResponse { container_id: id })
}
