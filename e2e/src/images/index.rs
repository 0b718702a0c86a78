//! OCI indexes and Docker manifest lists over several images.

use serde_json::json;

use crate::registry::TestRegistry;

use super::{BuiltImage, Format, ImageBuilder, Platform, PushedImage};

/// Builds an OCI index (or Docker manifest list) over several images.
#[derive(Debug, Clone)]
pub struct IndexBuilder {
    images: Vec<ImageBuilder>,
    format: Format,
}

impl Default for IndexBuilder {
    fn default() -> Self {
        IndexBuilder::new()
    }
}

impl IndexBuilder {
    pub fn new() -> IndexBuilder {
        IndexBuilder {
            images: Vec::new(),
            format: Format::Oci,
        }
    }

    /// linux/arm64/v8 (listed first), linux/amd64, linux/arm/v7: busybox for the host's
    /// platform (amd64 here), [`ImageBuilder::dummy`] for the others.
    pub fn multi_platform() -> IndexBuilder {
        let host = Platform::host();
        [
            Platform::linux("arm64", Some("v8")),
            Platform::linux("amd64", None),
            Platform::linux("arm", Some("v7")),
        ]
        .into_iter()
        .fold(IndexBuilder::new(), |index, platform| {
            let image = if platform == host {
                ImageBuilder::busybox().platform(platform)
            } else {
                ImageBuilder::dummy(platform)
            };
            index.image(image)
        })
    }

    /// Adds an image; its builder's platform goes into the index entry.
    pub fn image(mut self, image: ImageBuilder) -> IndexBuilder {
        self.images.push(image);
        self
    }

    /// A Docker manifest list of schema 2 manifests instead of an OCI index.
    pub fn docker(mut self) -> IndexBuilder {
        self.format = Format::Docker;
        self
    }

    /// Pushes every image by digest, then the index under `reference`.
    pub fn push(&self, registry: &TestRegistry, repo: &str, reference: &str) -> PushedIndex {
        let built: Vec<BuiltImage> = self
            .images
            .iter()
            .map(|image| image.clone().format(self.format).build())
            .collect();
        let images: Vec<PushedImage> = built
            .iter()
            .map(|image| image.push(registry, repo, &image.manifest_digest))
            .collect();
        let index = json!({
            "schemaVersion": 2,
            "mediaType": self.format.index_type(),
            "manifests": built.iter().map(BuiltImage::descriptor).collect::<Vec<_>>(),
        });
        let index = serde_json::to_vec(&index).expect("index JSON");
        let media_type = self.format.index_type().to_string();
        let digest = registry.push_manifest(repo, reference, &media_type, &index);
        PushedIndex {
            registry: registry.address(),
            repo: repo.to_string(),
            reference: reference.to_string(),
            media_type,
            digest,
            size: index.len() as u64,
            index,
            images,
        }
    }
}

/// What an index push stored; `images` in index order.
#[derive(Debug, Clone)]
pub struct PushedIndex {
    pub registry: String,
    pub repo: String,
    pub reference: String,
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    pub index: Vec<u8>,
    pub images: Vec<PushedImage>,
}

impl PushedIndex {
    pub fn image_ref(&self) -> String {
        format!("{}/{}:{}", self.registry, self.repo, self.reference)
    }

    /// The image listed for `platform`.
    pub fn image_for(&self, platform: &Platform) -> Option<&PushedImage> {
        self.images.iter().find(|image| &image.platform == platform)
    }
}
