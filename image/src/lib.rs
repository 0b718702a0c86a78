//! berth-image: the image service's storage and registry side.
//!
//! This crate will own the registry client (auth, mirrors), the content store, layer snapshots,
//! image metadata, garbage collection and ImageFsInfo. For now it holds the `[registry]` section
//! of berthd's configuration.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The `[registry]` configuration section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Directory of per-host configuration, containerd-style: `<config_path>/<host>/hosts.toml`.
    pub config_path: PathBuf,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            config_path: PathBuf::from("/etc/berth/certs.d"),
        }
    }
}
