//! ImageFsInfo: bytes and inodes the image store uses, for kubelet's image GC and eviction.

use std::sync::Arc;

use berth_image::Images;
use k8s_cri::v1::{
    FilesystemIdentifier, FilesystemUsage, ImageFsInfoRequest, ImageFsInfoResponse, UInt64Value,
};
use tonic::Status;

pub(super) async fn image_fs_info(
    images: &Arc<Images>,
    _request: ImageFsInfoRequest,
) -> Result<ImageFsInfoResponse, Status> {
    let images = images.clone();
    let usage = tokio::task::spawn_blocking(move || images.fs_usage())
        .await
        .map_err(|e| Status::internal(format!("berth: image fs usage task failed: {e}")))?;
    let fs = FilesystemUsage {
        timestamp: usage.timestamp_nanos,
        fs_id: Some(FilesystemIdentifier {
            mountpoint: usage.mountpoint.display().to_string(),
        }),
        used_bytes: Some(UInt64Value {
            value: usage.used_bytes,
        }),
        inodes_used: Some(UInt64Value {
            value: usage.inodes_used,
        }),
    };
    // Images and container layers share one filesystem (no split image fs).
    Ok(ImageFsInfoResponse {
        image_filesystems: vec![fs.clone()],
        container_filesystems: vec![fs],
    })
}
