//! berth-cni: pod networking through CNI plugins, the way libcni does it.
//!
//! - [`load_network`] picks the network from `conf_dir` (first `.conflist`/`.conf`/`.json` by
//!   name that parses) and [`NetworkWatcher`] keeps it current, reporting why there is none.
//! - [`CniInvoker`] runs the plugins of a [`Network`] for an [`Attachment`]: ADD (in order, each
//!   given the previous result), CHECK and DEL (in reverse, tolerant of attachments already gone),
//!   with a cleared environment and a timeout. Final ADD results go to a [`ResultCache`].
//! - [`CniResult`] wraps what a plugin printed and answers the pod's IPs ([`PodIps`]).
//! - [`CniMetrics`] records `berth_cni_operation_duration_seconds`.
//!
//! Nothing here knows gRPC or CRI messages; the CRI layer translates into these types.

mod cache;
mod capabilities;
mod error;
mod invoke;
mod metrics;
mod netns;
mod network;
mod result;
mod watch;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use cache::ResultCache;
pub use capabilities::{Bandwidth, DnsCapability, PortMapping, RuntimeCapabilities};
pub use error::{CniError, PluginError, Verb};
pub use invoke::{Attachment, CniInvoker, DEFAULT_PLUGIN_TIMEOUT};
pub use metrics::CniMetrics;
pub use netns::{in_netns, loopback_up};
pub use network::{load_network, ConfigError, Network, PluginConf};
pub use result::{CniResult, PodIps};
pub use watch::{NetworkStatus, NetworkWatcher};

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
