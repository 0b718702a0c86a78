//! CreateContainer: the image's layers, the pod's namespaces and files, a generated spec, and
//! the container built (not started) by the pod's monitor.

use berth_podsandbox::Pods;
use k8s_cri::v1::{CreateContainerRequest, CreateContainerResponse};
use tonic::Status;

use crate::service::{container_error, create_input, ready_sandbox};

pub(super) async fn create_container(
    pods: &Pods,
    request: CreateContainerRequest,
    sub_paths: Option<crate::newer_fields::MountSubPaths>,
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
    let mut input = create_input(pods, &pod, config, image_name)?;
    // `image_sub_path`, which the bindings cannot decode (crate::newer_fields).
    for (mount, path) in input
        .config
        .mounts
        .iter_mut()
        .zip(sub_paths.unwrap_or_default().0)
        .filter(|(_, path)| !path.is_empty())
    {
        match mount.image.as_mut() {
            Some(image) => image.sub_path = path,
            None => {
                return Err(Status::invalid_argument(format!(
                    "berth: mount {}: image_sub_path is only for an image volume",
                    mount.container_path.display()
                )))
            }
        }
    }
    let id = pods
        .create_container(input)
        .await
        .map_err(container_error)?;
    crate::metrics::record_container(&id);
    Ok(CreateContainerResponse { container_id: id })
}
