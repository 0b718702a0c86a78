//! PullImage: fetch an image for this platform and return its id (as containerd does).

use std::sync::Arc;

use berth_image::{Credentials, ImageError, Images};
use k8s_cri::v1::{PullImageRequest, PullImageResponse};
use tonic::Status;

use super::{image_status_error, requested_image};

pub(super) async fn pull_image(
    images: &Arc<Images>,
    request: PullImageRequest,
) -> Result<PullImageResponse, Status> {
    let reference = requested_image(request.image.as_ref())?.to_string();
    let credentials = match &request.auth {
        Some(a) => Credentials::from_auth_config(
            &a.username,
            &a.password,
            &a.auth,
            &a.identity_token,
            &a.registry_token,
        )
        .map_err(|e| image_status_error(ImageError::Credentials(e)))?,
        None => Credentials::default(),
    };
    tracing::info!(image = %reference, authenticated = !credentials.is_anonymous(), "pulling");
    // The pull runs as its own task: if kubelet gives up on the RPC, the download still
    // finishes and its retry finds the layers in place.
    let task_images = images.clone();
    let task_reference = reference.clone();
    let record = tokio::spawn(async move { task_images.pull(&task_reference, credentials).await })
        .await
        .map_err(|e| Status::internal(format!("berth: pull {reference}: task failed: {e}")))?
        .map_err(image_status_error)?;
    tracing::info!(image = %reference, id = %record.id, "pulled");
    Ok(PullImageResponse {
        image_ref: record.id.to_string(),
    })
}
