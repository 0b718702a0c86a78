//! `HostInfo::probe`: the host facts spec generation depends on, read once at start.

use std::io;
use std::path::Path;

use oci_spec::runtime::Capability;

use super::input::{CgroupV1Hierarchy, HostInfo, SeccompProfile};
use super::security::capabilities_from_mask;
use crate::CgroupDriver;

impl HostInfo {
    /// Reads this process's capabilities and `oom_score_adj`, the node's hostname and the
    /// cgroup layout. Needs no privilege.
    pub fn probe(cgroup_driver: CgroupDriver) -> io::Result<HostInfo> {
        let status = std::fs::read_to_string("/proc/self/status")?;
        let capabilities = capabilities_from_mask(cap_eff(&status).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "no CapEff line in /proc/self/status",
            )
        })?);
        let own_adj: i32 = std::fs::read_to_string("/proc/self/oom_score_adj")?
            .trim()
            .parse()
            .map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("oom_score_adj: {e}"))
            })?;
        let hostname = nix::unistd::gethostname()
            .map_err(io::Error::from)?
            .to_string_lossy()
            .into_owned();
        let cgroup_v2 = nix::sys::statfs::statfs("/sys/fs/cgroup")
            .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
            .unwrap_or(false);
        let (swap_controller, hugetlb_controller) = if cgroup_v2 {
            let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
            let dir = Path::new("/sys/fs/cgroup").join(unified_path(&own).trim_start_matches('/'));
            let controllers =
                std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
            (
                dir.join("memory.swap.max").exists(),
                controllers.split_whitespace().any(|c| c == "hugetlb"),
            )
        } else {
            // libcontainer uses the v1 hierarchies on a hybrid host, so only they count.
            (
                Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists(),
                Path::new("/sys/fs/cgroup/hugetlb").is_dir(),
            )
        };
        let cgroup_v1 = if cgroup_v2 {
            Vec::new()
        } else {
            crate::cgroups::hierarchies()
                .into_iter()
                .filter(|h| !h.v2 && h.mountpoint.starts_with("/sys/fs/cgroup"))
                .filter(|h| !h.controllers.iter().any(|c| c.starts_with("name=")))
                .map(|h| CgroupV1Hierarchy {
                    mountpoint: h.mountpoint,
                    controllers: h.controllers,
                })
                .collect()
        };
        let min_oom_score_adj =
            min_oom_score_adj(own_adj, capabilities.contains(&Capability::SysResource));
        Ok(HostInfo {
            hostname,
            min_oom_score_adj,
            cgroup_driver,
            cgroup_v2,
            cgroup_v1,
            swap_controller,
            hugetlb_controller,
            capabilities,
            default_seccomp: SeccompProfile::Unset,
        })
    }
}

/// Whether the kernel has mount_setattr(2) (5.12 and later), which recursive read-only mounts
/// need: called with a descriptor that cannot be valid, it fails with EBADF, not ENOSYS.
pub fn recursive_read_only_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        // SAFETY: mount_setattr with dfd -1, an empty path and no attributes changes nothing.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                -1,
                c"".as_ptr(),
                0,
                std::ptr::null::<u8>(),
                0,
            )
        };
        r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
    })
}

/// The `CapEff:` mask of a /proc/<pid>/status text.
fn cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
}

/// The cgroup v2 path of a /proc/<pid>/cgroup text (its `0::` line).
fn unified_path(cgroup: &str) -> &str {
    cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/")
}

/// Without CAP_SYS_RESOURCE a process may raise its `oom_score_adj` but not lower it below the
/// value it started with; the executor inherits ours.
fn min_oom_score_adj(own: i32, sys_resource: bool) -> i32 {
    if sys_resource {
        -1000
    } else {
        own
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_eff_is_read_from_proc_status() {
        let status = "Name:\tberthd\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\n";
        assert_eq!(cap_eff(status), Some(0x1fffeffffff));
        assert_eq!(cap_eff("Name:\tx\n"), None);
    }

    #[test]
    fn min_oom_score_adj_is_our_own_without_cap_sys_resource() {
        assert_eq!(min_oom_score_adj(-500, false), -500);
        assert_eq!(min_oom_score_adj(-500, true), -1000);
        assert_eq!(min_oom_score_adj(0, false), 0);
    }

    #[test]
    fn unified_path_comes_from_the_zero_line() {
        assert_eq!(
            unified_path("1:memory:/a\n0::/system.slice/berth.service\n"),
            "/system.slice/berth.service"
        );
        assert_eq!(unified_path("1:memory:/a\n"), "/");
    }

    #[test]
    fn probe_reads_this_host() {
        let host = HostInfo::probe(CgroupDriver::Cgroupfs).unwrap();
        assert!(!host.hostname.is_empty());
        assert!((-1000..=1000).contains(&host.min_oom_score_adj));
    }
}
