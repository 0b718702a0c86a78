//! berth-runtime: containers.
//!
//! This crate will own CRI ContainerConfig → OCI spec generation, the executor (`berthd init`),
//! the per-pod monitor, cgroups, stats and the CRI log writer. For now it holds the `[runtime]`
//! section of berthd's configuration.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The `[runtime]` configuration section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// How container cgroups are created and named; reported to kubelet by the RuntimeConfig RPC.
    pub cgroup_driver: CgroupDriver,
}

/// The cgroup driver, as kubelet names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    /// Cgroups are directories made directly under `/sys/fs/cgroup`.
    #[default]
    Cgroupfs,
    /// Cgroups are systemd units (slices and scopes). Not supported yet: berth has no systemd client.
    Systemd,
}

impl fmt::Display for CgroupDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgroupDriver::Cgroupfs => "cgroupfs",
            CgroupDriver::Systemd => "systemd",
        })
    }
}

pub mod cgroups;
pub mod executor;
pub mod monitor;
pub mod spec;
