//! ContainerStatus: the record, with the exit the monitor recorded.

use std::collections::HashMap;

use berth_podsandbox::Pods;
use k8s_cri::v1::*;
use tonic::Status;

use super::container_convert::cri_container_status;
use crate::newer_fields::{ImageVolumeFields, StatusImageVolumes};
use crate::service::find_container;

/// The answer, and what its image volumes report beyond the bindings
/// (`crate::newer_fields` encodes it in).
pub(super) fn container_status(
    pods: &Pods,
    r: ContainerStatusRequest,
) -> Result<(ContainerStatusResponse, StatusImageVolumes), Status> {
    crate::metrics::record_container(&r.container_id);
    let record = find_container(pods, &r.container_id)?;
    let mut info = HashMap::new();
    if r.verbose {
        let verbose = serde_json::json!({
            "pid": record.pid,
            "sandboxID": record.sandbox_id,
            "config": record.config,
            "exit": record.exit,
        });
        info.insert("info".to_string(), verbose.to_string());
    }
    let volumes = record
        .config
        .mounts
        .iter()
        .filter_map(|m| {
            m.image.as_ref().map(|image| ImageVolumeFields {
                container_path: m.container_path.display().to_string(),
                image_ref: image.id.clone(),
                sub_path: image.sub_path.clone(),
            })
        })
        .collect();
    Ok((
        ContainerStatusResponse {
            status: Some(cri_container_status(&record)),
            info,
        },
        StatusImageVolumes(volumes),
    ))
}
