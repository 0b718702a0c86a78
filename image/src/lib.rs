//! berth-image: the image service's storage and registry side.
//!
//! Registry client with mirrors and auth (`registry`, `hosts`, `auth`), a content-addressed blob
//! store (`content`), layers unpacked once per chain id in overlayfs form (`snapshots`,
//! `unpack`), crash-safe image records (`store`), and the facade that composes them for the
//! CRI layer (`service::Images`). Nothing here knows gRPC.

pub mod auth;
pub mod content;
pub mod digest;
pub mod hosts;
pub mod manifest;
pub mod metrics;
pub mod reference;
pub mod registry;
pub mod service;
pub mod snapshots;
pub mod store;
pub mod unpack;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use auth::Credentials;
pub use digest::{ChainId, Digest};
pub use metrics::ImageMetrics;
pub use service::{FsUsage, ImageError, Images};
pub use store::ImageRecord;

/// The `[registry]` configuration section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Directory of per-host configuration, containerd-style: `<config_path>/<host>/hosts.toml`.
    pub config_path: PathBuf,
    /// Layers downloaded at once, across all pulls.
    pub max_concurrent_downloads: usize,
    /// A pull fails when no byte arrives for this long (unpacking counts as progress).
    pub pull_progress_timeout_secs: u64,
    /// File content one layer may unpack to, holes included (`unpack::UnpackLimits`).
    pub max_layer_bytes: u64,
    /// A pull fails when the snapshot filesystem has fewer free bytes than this.
    pub min_free_bytes: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            config_path: PathBuf::from("/etc/berth/certs.d"),
            max_concurrent_downloads: 3,
            pull_progress_timeout_secs: 300,
            max_layer_bytes: unpack::DEFAULT_MAX_LAYER_BYTES,
            min_free_bytes: unpack::DEFAULT_MIN_FREE_BYTES,
        }
    }
}
