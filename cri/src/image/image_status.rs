//! ImageStatus: one image by id, short id, name, tag or digest reference. CRI: an unknown image
//! is not an error but an empty response.

use std::collections::HashMap;
use std::sync::Arc;

use berth_image::Images;
use k8s_cri::v1::{ImageStatusRequest, ImageStatusResponse};
use tonic::Status;

use super::{cri_image, image_status_error, requested_image};

pub(super) fn image_status(
    images: &Arc<Images>,
    request: ImageStatusRequest,
) -> Result<ImageStatusResponse, Status> {
    let query = requested_image(request.image.as_ref())?;
    let Some(record) = images.resolve(query) else {
        return Ok(ImageStatusResponse::default());
    };
    let mut info = HashMap::new();
    if request.verbose {
        let config = images.config_json(&record).map_err(image_status_error)?;
        let config: serde_json::Value = serde_json::from_slice(&config)
            .map_err(|e| Status::internal(format!("berth: image config: {e}")))?;
        // The same shape containerd returns, which `crictl inspecti` prints.
        let verbose = serde_json::json!({
            "imageSpec": config,
            "chainID": record.chain_ids.last().map(|c| c.to_string()).unwrap_or_default(),
            "manifest": record.manifest.to_string(),
            "index": record.index.as_ref().map(|i| i.to_string()),
        });
        info.insert("info".to_string(), verbose.to_string());
    }
    Ok(ImageStatusResponse {
        image: Some(cri_image(&record)),
        info,
    })
}
