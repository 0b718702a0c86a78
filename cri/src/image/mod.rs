//! The CRI ImageService: one file per RPC, over `berth_image::Images`.

mod image_list;
mod image_pull;
mod image_remove;
mod image_status;
mod imagefs_info;

use k8s_cri::v1::image_service_server::ImageService as CriImageService;
use k8s_cri::v1::*;
use tonic::{Request, Response, Status};

use berth_image::{ImageError, ImageRecord};

use crate::ImageService;

#[tonic::async_trait]
impl CriImageService for ImageService {
    async fn list_images(
        &self,
        request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        image_list::list_images(&self.images, request.into_inner()).map(Response::new)
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        image_status::image_status(&self.images, request.into_inner()).map(Response::new)
    }

    async fn pull_image(
        &self,
        request: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        image_pull::pull_image(&self.images, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        image_remove::remove_image(&self.images, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn image_fs_info(
        &self,
        request: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        imagefs_info::image_fs_info(&self.images, request.into_inner())
            .await
            .map(Response::new)
    }
}

/// The image reference a request names; CRI requires one.
fn requested_image(spec: Option<&ImageSpec>) -> Result<&str, Status> {
    match spec.map(|s| s.image.trim()) {
        Some(image) if !image.is_empty() => Ok(image),
        _ => Err(Status::invalid_argument(
            "berth: image spec with a non-empty image is required",
        )),
    }
}

/// A stored image as CRI describes it.
fn cri_image(record: &ImageRecord) -> Image {
    let (uid, username) = image_user(&record.user);
    Image {
        id: record.id.to_string(),
        repo_tags: record.repo_tags.clone(),
        repo_digests: record.repo_digests.clone(),
        size: record.size,
        uid: uid.map(|value| Int64Value { value }),
        username,
        spec: Some(ImageSpec {
            image: record.id.to_string(),
            ..Default::default()
        }),
        pinned: false,
    }
}

/// The config's `User` split as kubelet wants it: a numeric user is a uid, anything else a
/// username; the group part is ignored. (kubelet checks runAsNonRoot with these.)
fn image_user(user: &str) -> (Option<i64>, String) {
    let name = user.split(':').next().unwrap_or("").trim();
    if name.is_empty() {
        return (None, String::new());
    }
    match name.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, name.to_string()),
    }
}

/// Maps image errors to gRPC codes a human (and kubelet) can act on.
fn image_status_error(e: ImageError) -> Status {
    use berth_image::registry::RegistryError;
    let message = format!("berth: {e}");
    match &e {
        ImageError::InvalidReference(_) | ImageError::Credentials(_) => {
            Status::invalid_argument(message)
        }
        ImageError::NotFound { .. } => Status::not_found(message),
        ImageError::Unauthorized { .. } => Status::permission_denied(message),
        ImageError::Registry { source, .. } => match source.last() {
            RegistryError::Stalled { .. } => Status::deadline_exceeded(message),
            RegistryError::Content(_) => Status::data_loss(message),
            RegistryError::Invalid { .. } => Status::failed_precondition(message),
            _ => Status::unavailable(message),
        },
        ImageError::Manifest { .. } | ImageError::Hosts(_) => Status::failed_precondition(message),
        ImageError::Layer { .. } => Status::unavailable(message),
        ImageError::Store(_) | ImageError::Content(_) | ImageError::Io { .. } => {
            Status::internal(message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_user_is_a_uid_or_a_name() {
        assert_eq!(image_user(""), (None, String::new()));
        assert_eq!(image_user("1000"), (Some(1000), String::new()));
        assert_eq!(image_user("1000:1000"), (Some(1000), String::new()));
        assert_eq!(image_user("nobody"), (None, "nobody".to_string()));
        assert_eq!(
            image_user("www-data:www-data"),
            (None, "www-data".to_string())
        );
    }

    #[test]
    fn empty_image_spec_is_invalid() {
        assert_eq!(
            requested_image(None).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let empty = ImageSpec::default();
        assert_eq!(
            requested_image(Some(&empty)).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
