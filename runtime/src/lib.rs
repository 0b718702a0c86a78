//! berth-runtime: what runs in the per-pod monitor and in the executor, and the pure parts
//! both need.
//!
//! `monitor` is `berthd monitor` (a single-threaded poll loop: pinned namespaces, container
//! stdio, the CRI log writer, exit records, its control-socket protocol); `executor` is
//! `berthd init` (youki's libcontainer in a fresh single-threaded process); `spec` turns a CRI
//! container config, the image config and the pod into an OCI spec (pure, table-tested);
//! `cgroups` finds hierarchies, makes and removes cgroups and writes new limits. This crate
//! has no async runtime, so nothing here can start a thread pool by accident: the agent's side
//! of pods and containers is `berth-podsandbox`. It also holds the `[runtime]` config section.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The `[runtime]` configuration section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// How container cgroups are created and named; reported to kubelet by the RuntimeConfig RPC.
    pub cgroup_driver: CgroupDriver,
    /// The seccomp profile of a container that asks for none (kubelet's default is unconfined).
    pub default_seccomp: DefaultSeccomp,
    /// Keep one pod monitor exec'd ahead of the next RunPodSandbox (`berthd monitor-standby`),
    /// which then skips the monitor's exec.
    pub monitor_standby: bool,
    /// Keep one executor started ahead of the next ExecSync (`berthd init exec-standby`), which
    /// then skips the executor's spawn and start-up.
    pub exec_standby: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            cgroup_driver: CgroupDriver::default(),
            default_seccomp: DefaultSeccomp::default(),
            monitor_standby: true,
            exec_standby: true,
        }
    }
}

/// `[runtime] default_seccomp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum DefaultSeccomp {
    /// No filter, as kubelet's own default.
    #[default]
    #[serde(rename = "unconfined")]
    Unconfined,
    /// Berth's RuntimeDefault profile for every container that names none.
    #[serde(rename = "runtime/default")]
    RuntimeDefault,
}

impl DefaultSeccomp {
    /// The profile spec generation applies to a container that asks for none.
    pub fn profile(self) -> spec::SeccompProfile {
        match self {
            DefaultSeccomp::Unconfined => spec::SeccompProfile::Unconfined,
            DefaultSeccomp::RuntimeDefault => spec::SeccompProfile::RuntimeDefault,
        }
    }
}

/// The cgroup driver, as kubelet names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    /// Cgroups are directories made directly under `/sys/fs/cgroup`.
    #[default]
    Cgroupfs,
    /// Cgroups are systemd units: pods in slices, containers and monitors in scopes
    /// (`cgroups::systemd`).
    Systemd,
}

impl CgroupDriver {
    /// The name kubelet and the config file use.
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupDriver::Cgroupfs => "cgroupfs",
            CgroupDriver::Systemd => "systemd",
        }
    }
}

impl fmt::Display for CgroupDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A pidfd for `pid` (close-on-exec): signals and namespace joins through it reach that process
/// or fail, never a later one that got its pid.
pub fn pidfd_open(pid: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether the process behind `pidfd` exits within `limit`. A signal that interrupts the wait
/// (a SIGTERM whose handler killed the process) does not end it: look again.
pub fn exits_within(pidfd: std::os::fd::BorrowedFd<'_>, limit: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let timeout = nix::poll::PollTimeout::try_from(left.as_millis() as i32)
            .unwrap_or(nix::poll::PollTimeout::ZERO);
        let mut fds = [nix::poll::PollFd::new(pidfd, nix::poll::PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, timeout) {
            Ok(n) if n > 0 => return true,
            Err(nix::errno::Errno::EINTR) => continue,
            _ => return false,
        }
    }
}

pub mod cgroups;
pub mod executor;
pub mod idmap;
pub mod monitor;
pub mod seccomp_filter;
pub mod spec;
pub mod terminal;
mod trim;
