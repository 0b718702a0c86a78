//! The parts of OCI / Docker schema-2 manifests, indexes and image configs berth reads.
//! Deliberately lenient: unknown fields are ignored, as registries add their own.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The largest image config berth reads (it is read whole); real ones are a few KiB.
pub const MAX_CONFIG: u64 = 8 * 1024 * 1024;

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: Digest,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Index {
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// What a fetched document is, from its Content-Type or, failing that, its shape.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    Index,
    Manifest,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("unsupported manifest media type {0:?} (Docker schema 1 images are not supported)")]
    Unsupported(String),
    #[error("malformed {what}: {message}")]
    Malformed { what: &'static str, message: String },
    #[error("no manifest for {wanted} in the index (it has: {available})")]
    NoPlatform { wanted: String, available: String },
}

pub fn kind(media_type: &str, bytes: &[u8]) -> Result<Kind, ManifestError> {
    match media_type {
        OCI_INDEX | DOCKER_LIST => return Ok(Kind::Index),
        OCI_MANIFEST | DOCKER_MANIFEST => return Ok(Kind::Manifest),
        t if t.contains("manifest.v1") => return Err(ManifestError::Unsupported(t.to_string())),
        _ => {}
    }
    // Some registries answer application/json or nothing: look at the document.
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ManifestError::Malformed {
            what: "manifest",
            message: e.to_string(),
        })?;
    if let Some(t) = v.get("mediaType").and_then(|t| t.as_str()) {
        if t != media_type {
            return kind(t, bytes);
        }
    }
    if v.get("manifests").is_some() {
        Ok(Kind::Index)
    } else if v.get("layers").is_some() && v.get("config").is_some() {
        Ok(Kind::Manifest)
    } else {
        Err(ManifestError::Unsupported(media_type.to_string()))
    }
}

fn parse<'a, T: Deserialize<'a>>(what: &'static str, bytes: &'a [u8]) -> Result<T, ManifestError> {
    serde_json::from_slice(bytes).map_err(|e| ManifestError::Malformed {
        what,
        message: e.to_string(),
    })
}

pub fn parse_index(bytes: &[u8]) -> Result<Index, ManifestError> {
    parse("image index", bytes)
}

pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    let manifest: Manifest = parse("image manifest", bytes)?;
    let malformed = |message: String| ManifestError::Malformed {
        what: "image manifest",
        message,
    };
    // The download refuses a blob longer than its descriptor says: a size must be there.
    if manifest.config.size == 0 || manifest.config.size > MAX_CONFIG {
        return Err(malformed(format!(
            "config {} has size {} (must be 1 to {MAX_CONFIG})",
            manifest.config.digest, manifest.config.size
        )));
    }
    if let Some(layer) = manifest.layers.iter().find(|l| l.size == 0) {
        return Err(malformed(format!("layer {} has size 0", layer.digest)));
    }
    Ok(manifest)
}

/// The platform this agent runs containers for, in OCI terms.
pub fn host_platform() -> Platform {
    let (architecture, variant) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", Some("v8")),
        "arm" => ("arm", Some("v7")),
        "x86" => ("386", None),
        "powerpc64" => ("ppc64le", None),
        "s390x" => ("s390x", None),
        "riscv64" => ("riscv64", None),
        other => (other, None),
    };
    Platform {
        architecture: architecture.to_string(),
        os: "linux".to_string(),
        variant: variant.map(str::to_string),
    }
}

/// Picks the manifest for `platform`: same os and architecture; an exact variant wins, then an
/// entry without a variant (arm64 images often omit `v8`).
pub fn select_platform<'a>(
    index: &'a Index,
    platform: &Platform,
) -> Result<&'a Descriptor, ManifestError> {
    let candidates: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == platform.os && p.architecture == platform.architecture)
        })
        .collect();
    let variant = |d: &&Descriptor| d.platform.as_ref().and_then(|p| p.variant.clone());
    candidates
        .iter()
        .find(|d| variant(d) == platform.variant)
        .or_else(|| candidates.iter().find(|d| variant(d).is_none()))
        .or_else(|| candidates.first())
        .copied()
        .ok_or_else(|| ManifestError::NoPlatform {
            wanted: format!(
                "{}/{}{}",
                platform.os,
                platform.architecture,
                platform
                    .variant
                    .as_ref()
                    .map(|v| format!("/{v}"))
                    .unwrap_or_default()
            ),
            available: index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .map(|p| {
                    format!(
                        "{}/{}{}",
                        p.os,
                        p.architecture,
                        p.variant
                            .as_ref()
                            .map(|v| format!("/{v}"))
                            .unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The image config fields berth needs at pull time.
#[derive(Debug, Deserialize)]
pub struct ImageConfig {
    pub rootfs: RootFs,
    #[serde(default)]
    pub config: Option<ContainerConfig>,
}

#[derive(Debug, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ContainerConfig {
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

pub fn parse_config(bytes: &[u8]) -> Result<ImageConfig, ManifestError> {
    parse("image config", bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    fn index() -> Index {
        let json = format!(
            r#"{{"manifests":[
            {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"arm","os":"linux","variant":"v7"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"arm64","os":"linux"}}}}
            ]}}"#,
            d(1),
            d(2),
            d(3),
            d(4)
        );
        parse_index(json.as_bytes()).unwrap()
    }

    fn platform(arch: &str, variant: Option<&str>) -> Platform {
        Platform {
            architecture: arch.to_string(),
            os: "linux".to_string(),
            variant: variant.map(str::to_string),
        }
    }

    #[test]
    fn index_resolves_to_os_arch_and_variant() {
        let i = index();
        assert_eq!(
            select_platform(&i, &platform("amd64", None))
                .unwrap()
                .digest
                .to_string(),
            d(2)
        );
        assert_eq!(
            select_platform(&i, &platform("arm64", Some("v8")))
                .unwrap()
                .digest
                .to_string(),
            d(1)
        );
        assert_eq!(
            select_platform(&i, &platform("arm", Some("v7")))
                .unwrap()
                .digest
                .to_string(),
            d(3)
        );
        let err = select_platform(&i, &platform("s390x", None))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("linux/s390x") && err.contains("linux/arm64/v8"),
            "{err}"
        );
    }

    #[test]
    fn kind_comes_from_media_type_or_shape() {
        assert_eq!(kind(OCI_INDEX, b"{}").unwrap(), Kind::Index);
        assert_eq!(kind(DOCKER_MANIFEST, b"{}").unwrap(), Kind::Manifest);
        assert_eq!(
            kind("application/json", br#"{"manifests":[]}"#).unwrap(),
            Kind::Index
        );
        assert_eq!(
            kind("", br#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#).unwrap(),
            Kind::Manifest
        );
        assert!(kind(
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            b"{}"
        )
        .is_err());
    }

    fn manifest_with(config_size: u64, layer_size: u64) -> String {
        format!(
            r#"{{"config":{{"digest":"{}","size":{config_size}}},"layers":[{{"digest":"{}","size":{layer_size}}}]}}"#,
            d(1),
            d(2)
        )
    }

    /// A size of 0 would turn the download's length check off, and the config is read whole.
    #[test]
    fn manifests_with_a_blob_of_size_zero_or_a_huge_config_are_refused() {
        parse_manifest(manifest_with(500, 1000).as_bytes()).unwrap();
        for (config, layer, what) in [
            (0, 1000, "config"),
            (500, 0, "layer"),
            (MAX_CONFIG + 1, 1000, "config"),
        ] {
            let err = parse_manifest(manifest_with(config, layer).as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(what), "{config}/{layer}: {err}");
        }
    }

    #[test]
    fn config_user_and_diff_ids_are_read() {
        let c = parse_config(format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{}"]}},"config":{{"User":"1000:1000"}}}}"#, d(9)).as_bytes()).unwrap();
        assert_eq!(c.rootfs.diff_ids.len(), 1);
        assert_eq!(c.config.unwrap().user.as_deref(), Some("1000:1000"));
    }
}
