//! CreateContainer: the image's layers, the pod's namespaces and files, a generated spec, and
//! the container built (not started) by the pod's monitor.

use std::sync::Arc;

use k8s_cri::v1::{CreateContainerRequest, CreateContainerResponse};
use tonic::Status;

use super::container_convert::{container_error, container_spec, sandbox_info};
use crate::Backends;

pub(super) async fn create_container(
    backends: &Arc<Backends>,
    request: CreateContainerRequest,
) -> Result<CreateContainerResponse, Status> {
    let sandbox_id = backends
        .sandboxes
        .resolve(&request.pod_sandbox_id)
        .ok_or_else(|| {
            Status::not_found(format!(
                "berth: pod sandbox {:?} not found",
                request.pod_sandbox_id
            ))
        })?;
    crate::metrics::record_pod(&sandbox_id);
    let pod = backends
        .sandboxes
        .get(&sandbox_id)
        .ok_or_else(|| Status::not_found(format!("berth: pod sandbox {sandbox_id} not found")))?;
    if pod.state != berth_podsandbox::sandbox::record::SandboxState::Ready {
        return Err(Status::failed_precondition(format!(
            "berth: pod sandbox {sandbox_id} is not ready"
        )));
    }
    let config = request
        .config
        .ok_or_else(|| Status::invalid_argument("berth: CreateContainer needs a config"))?;
    let image_name = config
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .filter(|i| !i.is_empty())
        .ok_or_else(|| Status::invalid_argument("berth: container config names no image"))?;
    let image = backends.images.resolve(&image_name).ok_or_else(|| {
        Status::not_found(format!(
            "berth: image {image_name:?} not found: pull it first"
        ))
    })?;
    let image_json = backends
        .images
        .config_json(&image)
        .map_err(|e| Status::internal(format!("berth: image {image_name}: {e}")))?;
    let image_config = oci_spec::image::ImageConfiguration::from_reader(&image_json[..])
        .map(|c| berth_runtime::spec::ImageConfig::from(&c))
        .map_err(|e| Status::internal(format!("berth: image {image_name}: config: {e}")))?;
    let spec = container_spec(config, &pod.spec.log_directory)?;
    let pod_dir = backends.sandboxes.pod_dir_path(&sandbox_id);
    let input = berth_podsandbox::container::CreateInput {
        sandbox_id: sandbox_id.clone(),
        sandbox: sandbox_info(&pod, &pod_dir),
        pod_dir,
        config: spec,
        image: image_name,
        image_id: image.id.to_string(),
        image_config,
        layers: image
            .chain_ids
            .iter()
            .map(|c| backends.images.snapshot_dir(c))
            .collect(),
    };
    let containers = backends.containers.clone();
    let id = tokio::task::spawn_blocking(move || containers.create(input))
        .await
        .map_err(|e| Status::internal(format!("berth: create task: {e}")))?
        .map_err(container_error)?;
    // Its layers stay, whatever happens to the image, until the container is removed.
    backends.images.lease(&id, image.chain_ids.clone());
    crate::metrics::record_container(&id);
    Ok(CreateContainerResponse { container_id: id })
}
