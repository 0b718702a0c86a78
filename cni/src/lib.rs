//! berth-cni: pod networking through CNI plugins.
//!
//! This crate will own conflist loading and watching, plugin invocation (ADD/DEL/CHECK) and the
//! per-sandbox result cache. For now it holds the `[cni]` section of berthd's configuration.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The `[cni]` configuration section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CniConfig {
    /// Directory holding the network configuration (`*.conflist`, `*.conf`), read like libcni.
    pub conf_dir: PathBuf,
    /// Directories searched, in order, for plugin executables.
    pub bin_dirs: Vec<PathBuf>,
}

impl Default for CniConfig {
    fn default() -> Self {
        Self {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            // Debian's containernetworking-plugins installs into /usr/lib/cni.
            bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
        }
    }
}
