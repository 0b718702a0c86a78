//! StartContainer, StopContainer, RemoveContainer, ReopenContainerLog: thin wrappers that run
//! the runtime crate's blocking operations on the blocking pool.

use std::sync::Arc;
use std::time::Duration;

use berth_podsandbox::container::{ContainerError, Containers};
use k8s_cri::v1::*;
use tonic::Status;

use super::container_convert::container_error;
use crate::Backends;

async fn blocking<T: Send + 'static>(
    containers: &Arc<Containers>,
    f: impl FnOnce(&Containers) -> Result<T, ContainerError> + Send + 'static,
) -> Result<T, Status> {
    let containers = containers.clone();
    tokio::task::spawn_blocking(move || f(&containers))
        .await
        .map_err(|e| Status::internal(format!("berth: container task: {e}")))?
        .map_err(container_error)
}

pub(super) async fn start_container(
    c: &Arc<Containers>,
    r: StartContainerRequest,
) -> Result<StartContainerResponse, Status> {
    crate::metrics::record_container(&r.container_id);
    let id = c.resolve(&r.container_id).ok_or_else(|| {
        Status::not_found(format!("berth: container {:?} not found", r.container_id))
    })?;
    blocking(c, move |c| c.start(&id)).await?;
    Ok(StartContainerResponse {})
}

/// CRI: stopping an unknown or stopped container succeeds.
pub(super) async fn stop_container(
    c: &Arc<Containers>,
    r: StopContainerRequest,
) -> Result<StopContainerResponse, Status> {
    crate::metrics::record_container(&r.container_id);
    if let Some(id) = c.resolve(&r.container_id) {
        let timeout = Duration::from_secs(r.timeout.max(0) as u64);
        blocking(c, move |c| c.stop(&id, timeout)).await?;
    }
    Ok(StopContainerResponse {})
}

/// CRI: removing an unknown container succeeds. Its image layers are released to GC.
pub(super) async fn remove_container(
    b: &Arc<Backends>,
    r: RemoveContainerRequest,
) -> Result<RemoveContainerResponse, Status> {
    crate::metrics::record_container(&r.container_id);
    if let Some(id) = b.containers.resolve(&r.container_id) {
        let held = id.clone();
        blocking(&b.containers, move |c| c.remove(&id)).await?;
        release(b, held).await;
    }
    Ok(RemoveContainerResponse {})
}

pub(super) async fn reopen_container_log(
    c: &Arc<Containers>,
    r: ReopenContainerLogRequest,
) -> Result<ReopenContainerLogResponse, Status> {
    let id = c.resolve(&r.container_id).ok_or_else(|| {
        Status::not_found(format!("berth: container {:?} not found", r.container_id))
    })?;
    blocking(c, move |c| c.reopen_log(&id)).await?;
    Ok(ReopenContainerLogResponse {})
}

/// Gives a removed container's image layers back to GC.
async fn release(b: &Arc<Backends>, id: String) {
    let images = b.images.clone();
    let _ = tokio::task::spawn_blocking(move || images.release(&id)).await;
}

/// Stops and removes every container of a pod (StopPodSandbox / RemovePodSandbox).
pub(super) async fn stop_pod_containers(
    b: &Arc<Backends>,
    sandbox_id: &str,
    remove: bool,
) -> Result<(), Status> {
    for id in b.containers.in_sandbox(sandbox_id) {
        let held = id.clone();
        blocking(&b.containers, move |c| {
            c.stop(&id, Duration::ZERO)?;
            if remove {
                c.remove(&id)?;
            }
            Ok(())
        })
        .await?;
        if remove {
            release(b, held).await;
        }
    }
    Ok(())
}
