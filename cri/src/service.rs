//! The glue every RuntimeService handler would otherwise repeat: ids resolved or NotFound, the
//! inputs CreateContainer gathers from the pod and the image, and the errors of the crates below
//! mapped to gRPC codes. Handlers stay one RPC each and thin.

use berth_podsandbox::container::{ContainerError, ContainerRecord, CreateInput};
use berth_podsandbox::sandbox::record::{SandboxRecord, SandboxState};
use berth_podsandbox::{PodError, Pods, SandboxError};
use k8s_cri::v1 as cri;
use tonic::Status;

use crate::runtime::container_convert::{container_spec, sandbox_info};

/// A container's full id from an id or a unique prefix, or NotFound.
pub(crate) fn container_id(pods: &Pods, query: &str) -> Result<String, Status> {
    pods.containers
        .resolve(query)
        .ok_or_else(|| Status::not_found(format!("berth: container {query:?} not found")))
}

/// A container's record by id or unique prefix, with any exit its monitor recorded folded in,
/// or NotFound.
pub(crate) fn find_container(pods: &Pods, query: &str) -> Result<ContainerRecord, Status> {
    pods.containers
        .resolve(query)
        .and_then(|id| pods.containers.fold_exit(&id))
        .ok_or_else(|| Status::not_found(format!("berth: container {query:?} not found")))
}

/// The filters ListContainers and ListContainerStats share: id prefix, pod sandbox id prefix
/// (empty matches all) and labels (all must match).
pub(crate) fn container_selected(
    r: &ContainerRecord,
    id: &str,
    pod_sandbox_id: &str,
    labels: &std::collections::HashMap<String, String>,
) -> bool {
    r.id.starts_with(id)
        && r.sandbox_id.starts_with(pod_sandbox_id)
        && labels
            .iter()
            .all(|(k, v)| r.config.labels.get(k) == Some(v))
}

/// A sandbox's full id from an id or a unique prefix, or NotFound.
pub(crate) fn sandbox_id(pods: &Pods, query: &str) -> Result<String, Status> {
    pods.sandboxes
        .resolve(query)
        .ok_or_else(|| Status::not_found(format!("berth: pod sandbox {query:?} not found")))
}

/// A sandbox's record by id or unique prefix, or NotFound.
pub(crate) fn find_sandbox(pods: &Pods, query: &str) -> Result<SandboxRecord, Status> {
    let id = sandbox_id(pods, query)?;
    pods.sandboxes
        .get(&id)
        .ok_or_else(|| Status::not_found(format!("berth: pod sandbox {id} not found")))
}

/// The filters ListPodSandbox and ListPodSandboxStats share: id prefix (empty matches all) and
/// labels (all must match).
pub(crate) fn sandbox_selected(
    r: &SandboxRecord,
    id: &str,
    labels: &std::collections::HashMap<String, String>,
) -> bool {
    r.id.starts_with(id) && labels.iter().all(|(k, v)| r.spec.labels.get(k) == Some(v))
}

/// A sandbox that containers can be created in: found, and Ready.
pub(crate) fn ready_sandbox(pods: &Pods, query: &str) -> Result<SandboxRecord, Status> {
    let pod = find_sandbox(pods, query)?;
    let id = &pod.id;
    if pod.state != SandboxState::Ready {
        return Err(Status::failed_precondition(format!(
            "berth: pod sandbox {id} is not ready"
        )));
    }
    Ok(pod)
}

/// What CreateContainer needs beyond the pod: the container's config translated, and the
/// image's config and unpacked layers.
pub(crate) fn create_input(
    pods: &Pods,
    pod: &SandboxRecord,
    config: cri::ContainerConfig,
    image_name: String,
) -> Result<CreateInput, Status> {
    let image = pods.images.resolve(&image_name).ok_or_else(|| {
        Status::not_found(format!(
            "berth: image {image_name:?} not found: pull it first"
        ))
    })?;
    let image_json = pods
        .images
        .config_json(&image)
        .map_err(|e| Status::internal(format!("berth: image {image_name}: {e}")))?;
    let image_config = oci_spec::image::ImageConfiguration::from_reader(&image_json[..])
        .map(|c| berth_runtime::spec::ImageConfig::from(&c))
        .map_err(|e| Status::internal(format!("berth: image {image_name}: config: {e}")))?;
    let mut spec = container_spec(config, &pod.spec.log_directory)?;
    // Image volumes: each image must be pulled (kubelet pulls it first, as for the rootfs).
    let mut image_volumes = Vec::new();
    for (index, mount) in spec.mounts.iter_mut().enumerate() {
        let Some(volume) = mount.image.as_mut() else {
            continue;
        };
        let found = pods.images.resolve(&volume.reference).ok_or_else(|| {
            Status::not_found(format!(
                "berth: image {:?} of the image volume at {} not found: pull it first",
                volume.reference,
                mount.container_path.display()
            ))
        })?;
        volume.id = found.id.to_string();
        image_volumes.push((
            index,
            found
                .chain_ids
                .iter()
                .map(|c| pods.images.snapshot_dir(c))
                .collect(),
        ));
    }
    let pod_dir = pods.sandboxes.pod_dir_path(&pod.id);
    Ok(CreateInput {
        sandbox_id: pod.id.clone(),
        sandbox: sandbox_info(pod, &pod_dir),
        pod_dir,
        config: spec,
        image: image_name,
        image_id: image.id.to_string(),
        image_config,
        layers: image
            .chain_ids
            .iter()
            .map(|c| pods.images.snapshot_dir(c))
            .collect(),
        image_volumes,
    })
}

pub(crate) fn container_error(e: ContainerError) -> Status {
    let message = format!("berth: {e}");
    match e {
        ContainerError::NotFound(_) | ContainerError::ImageGone(_) => Status::not_found(message),
        ContainerError::InvalidArgument(_) => Status::invalid_argument(message),
        ContainerError::FailedPrecondition(_) => Status::failed_precondition(message),
        ContainerError::Failed { .. } => Status::unknown(message),
    }
}

pub(crate) fn sandbox_error(e: SandboxError) -> Status {
    let message = format!("berth: {e}");
    match e {
        SandboxError::InvalidArgument(_) => Status::invalid_argument(message),
        SandboxError::NotFound(_) => Status::not_found(message),
        SandboxError::AlreadyExists(_) => Status::already_exists(message),
        SandboxError::Failed { .. } => Status::unknown(message),
    }
}

pub(crate) fn pod_error(e: PodError) -> Status {
    match e {
        PodError::Container(e) => container_error(e),
        PodError::Sandbox(e) => sandbox_error(e),
    }
}
