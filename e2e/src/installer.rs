//! The installer image: `deploy/installer/install.sh` and what it installs (berthd, its unit,
//! the default config) under `/opt/berth`, on busybox, as an OCI image built with the test
//! images' own code ([`crate::images`]): no Docker daemon, and the same inputs always give the
//! same digest (fixed mtimes and owners, sorted entries, deterministic gzip, fixed `created`).
//!
//! Its input is a release directory as `make dist` lays it out; `berth-installer-image` writes
//! the image as an OCI image layout, which `skopeo copy oci:<dir>:<tag> docker://…` pushes to
//! any registry.

use std::io;
use std::path::Path;

use serde_json::json;

use crate::images::{BuiltImage, ImageBuilder, Layer, DEFAULT_PATH, OCI_INDEX};

/// The files of a release directory the image carries, with their modes in the image.
pub const PAYLOAD: [(&str, u32); 4] = [
    ("berthd", 0o755),
    ("install.sh", 0o755),
    ("berthd.service", 0o644),
    ("config.toml", 0o644),
];

/// Where the payload sits in the image; the entrypoint is `<PREFIX>/install.sh`.
pub const PREFIX: &str = "opt/berth";

/// The installer image for the release directory `dist`, labelled with `version`.
pub fn image(dist: &Path, version: &str) -> io::Result<ImageBuilder> {
    let mut payload = Layer::new().dir(PREFIX, 0o755);
    for (name, mode) in PAYLOAD {
        let path = dist.join(name);
        let bytes = std::fs::read(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        payload = payload.file(&format!("{PREFIX}/{name}"), &bytes, mode);
    }
    Ok(ImageBuilder::new()
        .layer(Layer::busybox())
        .layer(payload)
        .env(DEFAULT_PATH)
        .entrypoint([format!("/{PREFIX}/install.sh")])
        .cmd(["install"])
        .label("org.opencontainers.image.title", "berth-installer")
        .label("org.opencontainers.image.version", version))
}

/// Writes `image` as an OCI image layout in `dir` (made if missing), its manifest named `tag`
/// in `index.json`.
pub fn write_layout(image: &BuiltImage, dir: &Path, tag: &str) -> io::Result<()> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let put = |digest: &str, bytes: &[u8]| {
        let hex = digest.trim_start_matches("sha256:");
        std::fs::write(blobs.join(hex), bytes)
    };
    for layer in &image.layers {
        put(&layer.digest, &layer.bytes)?;
    }
    put(&image.config_digest, &image.config)?;
    put(&image.manifest_digest, &image.manifest)?;
    std::fs::write(
        dir.join("oci-layout"),
        json!({ "imageLayoutVersion": "1.0.0" }).to_string(),
    )?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": image.media_type,
            "digest": image.manifest_digest,
            "size": image.manifest.len(),
            "platform": image.platform.to_json(),
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string())
}
