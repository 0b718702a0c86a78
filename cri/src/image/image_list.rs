//! ListImages: every image, or the one a filter names.

use std::sync::Arc;

use berth_image::Images;
use k8s_cri::v1::{ListImagesRequest, ListImagesResponse};
use tonic::Status;

use super::cri_image;

pub(super) fn list_images(
    images: &Arc<Images>,
    request: ListImagesRequest,
) -> Result<ListImagesResponse, Status> {
    let wanted = request
        .filter
        .and_then(|f| f.image)
        .map(|s| s.image)
        .filter(|s| !s.trim().is_empty());
    let records = match wanted {
        Some(query) => images.resolve(&query).into_iter().collect(),
        None => images.list(),
    };
    Ok(ListImagesResponse {
        images: records.iter().map(cri_image).collect(),
    })
}
