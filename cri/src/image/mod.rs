//! The CRI ImageService: nothing is built yet; every RPC answers `Unimplemented`.

use k8s_cri::v1::image_service_server::ImageService as CriImageService;
use k8s_cri::v1::*;

use crate::unimplemented::cri_service;
use crate::ImageService;

cri_service! {
    impl CriImageService for ImageService {}
    unimplemented {
        list_images => ListImages(ListImagesRequest) -> ListImagesResponse;
        image_status => ImageStatus(ImageStatusRequest) -> ImageStatusResponse;
        pull_image => PullImage(PullImageRequest) -> PullImageResponse;
        remove_image => RemoveImage(RemoveImageRequest) -> RemoveImageResponse;
        image_fs_info => ImageFsInfo(ImageFsInfoRequest) -> ImageFsInfoResponse;
    }
}
