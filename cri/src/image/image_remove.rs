//! RemoveImage: forget the image with all its tags and free what nothing else uses.
//! CRI: removing an image that does not exist succeeds.

use std::sync::Arc;

use berth_image::Images;
use k8s_cri::v1::{RemoveImageRequest, RemoveImageResponse};
use tonic::Status;

use super::{image_status_error, requested_image};

pub(super) async fn remove_image(
    images: &Arc<Images>,
    request: RemoveImageRequest,
) -> Result<RemoveImageResponse, Status> {
    let query = requested_image(request.image.as_ref())?.to_string();
    let images = images.clone();
    let removed = tokio::task::spawn_blocking(move || images.remove(&query))
        .await
        .map_err(|e| Status::internal(format!("berth: remove image task failed: {e}")))?
        .map_err(image_status_error)?;
    if let Some(r) = removed {
        tracing::info!(id = %r.id, tags = ?r.repo_tags, "image removed");
    }
    Ok(RemoveImageResponse {})
}
