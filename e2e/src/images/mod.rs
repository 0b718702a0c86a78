//! Test images built from Debian's static busybox, pushed into a [`TestRegistry`].
//!
//! Layers are tars written here byte by byte (ustar headers, fixed mtime, root-owned unless
//! said otherwise, entries sorted with parents first), so the same inputs always give the same
//! digests, and so hostile layers (`../escape`, absolute paths, links out of the rootfs, device
//! nodes) can be expressed at all. Config and manifests are JSON from `serde_json`, in OCI or
//! Docker schema 2 form; indexes list several platforms of which only the host's runs.
//!
//! ```ignore
//! let registry = TestRegistry::start();
//! let image = ImageBuilder::busybox()
//!     .layer(Layer::files(&[("etc/motd", b"hi\n", 0o644)]))
//!     .user("1000:1000")
//!     .compression(Compression::Zstd)
//!     .push(&registry, "test/motd", "v1");
//! ```

use std::fmt;
use std::io::Write as _;

use serde_json::{json, Map, Value};

use crate::registry::{sha256_digest, TestRegistry};

mod index;
mod layer;
mod tar;

pub use index::{IndexBuilder, PushedIndex};
pub use layer::{random_bytes, BuiltLayer, Hostile, Layer};
pub use tar::{write_tar, Entry, EntryKind};

/// Debian's `busybox-static`.
pub const BUSYBOX: &str = "/bin/busybox";
/// The mtime of every tar entry (2024-01-01T00:00:00Z), and the config's `created`.
pub const MTIME: u64 = 1_704_067_200;
pub const CREATED: &str = "2024-01-01T00:00:00Z";
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Total random payload of [`ImageBuilder::large`], spread over [`LARGE_LAYERS`] layers.
pub const LARGE_BYTES: usize = 50 * 1024 * 1024;
pub const LARGE_LAYERS: usize = 6;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// How layer tars are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

impl Compression {
    pub fn compress(self, tar: &[u8]) -> Vec<u8> {
        match self {
            Compression::Gzip => {
                // flate2 writes mtime 0 and no file name: the output depends on the input only.
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(tar).expect("gzip in memory");
                gz.finish().expect("gzip in memory")
            }
            Compression::Zstd => zstd::stream::encode_all(tar, 3).expect("zstd in memory"),
            Compression::None => tar.to_vec(),
        }
    }

    /// The layer media type. Docker schema 2 has no zstd type; such layers use OCI's.
    pub fn media_type(self, format: Format) -> &'static str {
        match (self, format) {
            (Compression::Gzip, Format::Oci) => OCI_LAYER_GZIP,
            (Compression::Zstd, _) => OCI_LAYER_ZSTD,
            (Compression::None, Format::Oci) => OCI_LAYER,
            (Compression::Gzip, Format::Docker) => DOCKER_LAYER_GZIP,
            (Compression::None, Format::Docker) => DOCKER_LAYER,
        }
    }
}

/// OCI image-spec media types, or Docker's schema 2 (manifest list for indexes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Oci,
    Docker,
}

impl Format {
    pub fn manifest_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_MANIFEST,
            Format::Docker => DOCKER_MANIFEST,
        }
    }

    pub fn index_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_INDEX,
            Format::Docker => DOCKER_MANIFEST_LIST,
        }
    }

    pub fn config_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_CONFIG,
            Format::Docker => DOCKER_CONFIG,
        }
    }
}

/// Where an image runs: `os/architecture[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn linux(architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: "linux".to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// The machine the tests run on, in OCI's names (busybox from the host runs only here).
    pub fn host() -> Platform {
        match std::env::consts::ARCH {
            "x86_64" => Platform::linux("amd64", None),
            "aarch64" => Platform::linux("arm64", Some("v8")),
            "arm" => Platform::linux("arm", Some("v7")),
            "x86" => Platform::linux("386", None),
            "powerpc64" => Platform::linux("ppc64le", None),
            other => Platform::linux(other, None),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut platform = json!({ "architecture": self.architecture, "os": self.os });
        if let Some(variant) = &self.variant {
            platform["variant"] = json!(variant);
        }
        platform
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(variant) => write!(f, "/{variant}"),
            None => Ok(()),
        }
    }
}

/// Builds one image: layers, platform, the runtime part of the config, compression, format.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    layers: Vec<Layer>,
    config: Map<String, Value>,
    platform: Platform,
    compression: Compression,
    format: Format,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        ImageBuilder::new()
    }
}

impl ImageBuilder {
    /// No layers, empty config, host platform, gzip, OCI.
    pub fn new() -> ImageBuilder {
        ImageBuilder {
            layers: Vec::new(),
            config: Map::new(),
            platform: Platform::host(),
            compression: Compression::Gzip,
            format: Format::Oci,
        }
    }

    /// The busybox rootfs as one layer, `Env` [PATH], `Cmd` ["sh"].
    pub fn busybox() -> ImageBuilder {
        ImageBuilder::new()
            .layer(Layer::busybox())
            .env(DEFAULT_PATH)
            .cmd(["sh"])
    }

    /// Three layers: busybox; `etc/motd` = "layer 2\n" and `etc/layer2`; `etc/motd` =
    /// "layer 3\n" and `etc/layer3` (so the top layer's motd wins).
    pub fn multi_layer() -> ImageBuilder {
        ImageBuilder::busybox()
            .layer(Layer::files(&[
                ("etc/motd", b"layer 2\n", 0o644),
                ("etc/layer2", b"2\n", 0o644),
            ]))
            .layer(Layer::files(&[
                ("etc/motd", b"layer 3\n", 0o644),
                ("etc/layer3", b"3\n", 0o644),
            ]))
    }

    /// Busybox, a lower layer with `etc/removed.txt`, `etc/kept.txt`, `opaque/old.txt` and
    /// `opaque/sub/deep.txt`, and an upper layer with `etc/.wh.removed.txt`,
    /// `opaque/.wh..wh..opq` and `opaque/new.txt`. Unpacked, `etc/kept.txt` stays,
    /// `etc/removed.txt` is gone and `opaque/` holds only `new.txt`.
    pub fn whiteouts() -> ImageBuilder {
        let lower = Layer::files(&[
            ("etc/removed.txt", b"removed\n", 0o644),
            ("etc/kept.txt", b"kept\n", 0o644),
            ("opaque/old.txt", b"old\n", 0o644),
            ("opaque/sub/deep.txt", b"deep\n", 0o644),
        ]);
        let upper = Layer::new()
            .whiteout("etc/removed.txt")
            .opaque("opaque")
            .file("opaque/new.txt", b"new\n", 0o644);
        ImageBuilder::busybox().layer(lower).layer(upper)
    }

    /// Busybox plus [`Layer::passwd`], so `User` can name `tester` or `nobody`.
    pub fn with_passwd() -> ImageBuilder {
        ImageBuilder::busybox().layer(Layer::passwd())
    }

    /// Busybox plus one [`Hostile`] layer.
    pub fn hostile(kind: Hostile) -> ImageBuilder {
        ImageBuilder::busybox().layer(kind.layer())
    }

    /// About [`LARGE_BYTES`] of pseudo-random (incompressible) data in [`LARGE_LAYERS`] layers,
    /// the first also holding the busybox rootfs, so it runs. For pull benchmarks.
    pub fn large() -> ImageBuilder {
        let per_layer = LARGE_BYTES / LARGE_LAYERS;
        let busybox =
            Layer::busybox().file("data/random-1.bin", &random_bytes(per_layer, 1), 0o644);
        (2..=LARGE_LAYERS as u64).fold(
            ImageBuilder::new()
                .layer(busybox)
                .env(DEFAULT_PATH)
                .cmd(["sh"]),
            |image, seed| image.layer(Layer::random(per_layer, seed)),
        )
    }

    /// A small image for a platform that cannot run here: one file `platform` naming it.
    pub fn dummy(platform: Platform) -> ImageBuilder {
        let name = format!("{platform}\n");
        ImageBuilder::new()
            .layer(Layer::files(&[("platform", name.as_bytes(), 0o644)]))
            .cmd(["/platform"])
            .platform(platform)
    }

    pub fn layer(mut self, layer: Layer) -> ImageBuilder {
        self.layers.push(layer);
        self
    }

    /// Sets one key of the config's `config` object (`Cmd`, `Labels`, `ExposedPorts`, …).
    pub fn config_field(mut self, key: &str, value: Value) -> ImageBuilder {
        self.config.insert(key.to_string(), value);
        self
    }

    pub fn cmd<S: Into<String>>(self, args: impl IntoIterator<Item = S>) -> ImageBuilder {
        let args: Vec<String> = args.into_iter().map(Into::into).collect();
        self.config_field("Cmd", json!(args))
    }

    pub fn entrypoint<S: Into<String>>(self, args: impl IntoIterator<Item = S>) -> ImageBuilder {
        let args: Vec<String> = args.into_iter().map(Into::into).collect();
        self.config_field("Entrypoint", json!(args))
    }

    /// Appends `KEY=value` to `Env`.
    pub fn env(mut self, var: &str) -> ImageBuilder {
        let env = self
            .config
            .entry("Env")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(vars) = env {
            vars.push(json!(var));
        }
        self
    }

    /// `User`: `uid`, `uid:gid`, `name` or `name:group`.
    pub fn user(self, user: &str) -> ImageBuilder {
        self.config_field("User", json!(user))
    }

    pub fn working_dir(self, dir: &str) -> ImageBuilder {
        self.config_field("WorkingDir", json!(dir))
    }

    pub fn stop_signal(self, signal: &str) -> ImageBuilder {
        self.config_field("StopSignal", json!(signal))
    }

    pub fn label(mut self, key: &str, value: &str) -> ImageBuilder {
        let labels = self
            .config
            .entry("Labels")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(labels) = labels {
            labels.insert(key.to_string(), json!(value));
        }
        self
    }

    pub fn platform(mut self, platform: Platform) -> ImageBuilder {
        self.platform = platform;
        self
    }

    /// The compression of every layer that does not set its own (default gzip).
    pub fn compression(mut self, compression: Compression) -> ImageBuilder {
        self.compression = compression;
        self
    }

    /// OCI (default) or Docker schema 2 media types.
    pub fn format(mut self, format: Format) -> ImageBuilder {
        self.format = format;
        self
    }

    /// Docker schema 2: `application/vnd.docker.distribution.manifest.v2+json`.
    pub fn docker(self) -> ImageBuilder {
        self.format(Format::Docker)
    }

    /// Layers, config and manifest, with their digests; nothing pushed yet.
    pub fn build(&self) -> BuiltImage {
        let layers: Vec<BuiltLayer> = self
            .layers
            .iter()
            .map(|layer| layer.build(self.compression, self.format))
            .collect();
        let mut config = self.platform.to_json();
        let config_object = config.as_object_mut().expect("platform is an object");
        config_object.insert("created".into(), json!(CREATED));
        config_object.insert("config".into(), Value::Object(self.config.clone()));
        config_object.insert(
            "rootfs".into(),
            json!({ "type": "layers", "diff_ids": layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>() }),
        );
        let history: Vec<Value> = (1..=layers.len())
            .map(|i| json!({ "created": CREATED, "created_by": format!("berth-e2e layer {i}") }))
            .collect();
        config_object.insert("history".into(), json!(history));
        let config = serde_json::to_vec(&config).expect("config JSON");
        let config_digest = sha256_digest(&config);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": self.format.manifest_type(),
            "config": {
                "mediaType": self.format.config_type(),
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": layers
                .iter()
                .map(|l| json!({ "mediaType": l.media_type, "digest": l.digest, "size": l.size }))
                .collect::<Vec<_>>(),
        });
        let manifest = serde_json::to_vec(&manifest).expect("manifest JSON");
        BuiltImage {
            media_type: self.format.manifest_type().to_string(),
            manifest_digest: sha256_digest(&manifest),
            manifest,
            config_digest,
            config,
            layers,
            platform: self.platform.clone(),
        }
    }

    /// Builds and pushes to `repo` under `reference` (a tag).
    pub fn push(&self, registry: &TestRegistry, repo: &str, reference: &str) -> PushedImage {
        self.build().push(registry, repo, reference)
    }
}

/// An image's blobs and JSON, built but not pushed.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub media_type: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layers: Vec<BuiltLayer>,
    pub platform: Platform,
}

impl BuiltImage {
    /// Pushes layers, config, then the manifest under `reference` (a tag or the digest).
    pub fn push(&self, registry: &TestRegistry, repo: &str, reference: &str) -> PushedImage {
        for layer in &self.layers {
            registry.push_blob(repo, &layer.bytes);
        }
        registry.push_blob(repo, &self.config);
        registry.push_manifest(repo, reference, &self.media_type, &self.manifest);
        PushedImage {
            registry: registry.address(),
            repo: repo.to_string(),
            reference: reference.to_string(),
            media_type: self.media_type.clone(),
            manifest_digest: self.manifest_digest.clone(),
            size: self.manifest.len() as u64,
            manifest: self.manifest.clone(),
            config_digest: self.config_digest.clone(),
            config: self.config.clone(),
            diff_ids: self.layers.iter().map(|l| l.diff_id.clone()).collect(),
            layers: self
                .layers
                .iter()
                .map(|l| LayerDescriptor {
                    media_type: l.media_type.clone(),
                    digest: l.digest.clone(),
                    size: l.size,
                    diff_id: l.diff_id.clone(),
                })
                .collect(),
            platform: self.platform.clone(),
        }
    }

    /// The descriptor an index lists for this image.
    pub(super) fn descriptor(&self) -> Value {
        json!({
            "mediaType": self.media_type,
            "digest": self.manifest_digest,
            "size": self.manifest.len(),
            "platform": self.platform.to_json(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDescriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    pub diff_id: String,
}

/// What a push stored, to compare a pull against.
#[derive(Debug, Clone)]
pub struct PushedImage {
    /// `127.0.0.1:PORT` of the registry.
    pub registry: String,
    pub repo: String,
    pub reference: String,
    pub media_type: String,
    pub manifest_digest: String,
    /// Manifest size in bytes.
    pub size: u64,
    pub manifest: Vec<u8>,
    pub config_digest: String,
    pub config: Vec<u8>,
    pub diff_ids: Vec<String>,
    pub layers: Vec<LayerDescriptor>,
    pub platform: Platform,
}

impl PushedImage {
    /// `127.0.0.1:PORT/repo:tag` (or `…@sha256:…` if pushed by digest).
    pub fn image_ref(&self) -> String {
        let separator = if self.reference.contains(':') {
            '@'
        } else {
            ':'
        };
        format!(
            "{}/{}{separator}{}",
            self.registry, self.repo, self.reference
        )
    }

    /// `127.0.0.1:PORT/repo@sha256:…`.
    pub fn digest_ref(&self) -> String {
        format!("{}/{}@{}", self.registry, self.repo, self.manifest_digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_inputs_give_same_digests() {
        let a = ImageBuilder::multi_layer()
            .compression(Compression::Zstd)
            .build();
        let b = ImageBuilder::multi_layer()
            .compression(Compression::Zstd)
            .build();
        assert_eq!(a.manifest_digest, b.manifest_digest);
        assert_eq!(random_bytes(100, 7), random_bytes(100, 7));
        assert_ne!(random_bytes(100, 7), random_bytes(100, 8));
    }
}
