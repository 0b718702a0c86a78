//! Capabilities and the masked and read-only /proc and /sys paths.

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

use super::input::{CapabilityChanges, SecurityContext};
use super::SpecError;

/// Docker's default set, which containerd gives every unprivileged container.
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Every capability the kernel knows, indexed by its bit number (linux/capability.h).
pub const CAPABILITY_BITS: [Capability; 41] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::LinuxImmutable,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetAdmin,
    Capability::NetRaw,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::SysModule,
    Capability::SysRawio,
    Capability::SysChroot,
    Capability::SysPtrace,
    Capability::SysPacct,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysNice,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Mknod,
    Capability::Lease,
    Capability::AuditWrite,
    Capability::AuditControl,
    Capability::Setfcap,
    Capability::MacOverride,
    Capability::MacAdmin,
    Capability::Syslog,
    Capability::WakeAlarm,
    Capability::BlockSuspend,
    Capability::AuditRead,
    Capability::Perfmon,
    Capability::Bpf,
    Capability::CheckpointRestore,
];

/// containerd's default masked paths (`populateDefaultUnixSpec`).
pub const DEFAULT_MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

/// containerd's default read-only paths.
pub const DEFAULT_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The capabilities whose bits are set in `mask` (a `CapEff:` line of /proc/<pid>/status).
pub fn capabilities_from_mask(mask: u64) -> Capabilities {
    CAPABILITY_BITS
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1u64 << bit) != 0)
        .map(|(_, cap)| *cap)
        .collect()
}

/// Parses a Kubernetes capability name: `NET_ADMIN`, `CAP_NET_ADMIN`, `net_admin`.
pub fn parse_capability(name: &str) -> Result<Capability, SpecError> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAPABILITY_BITS
        .iter()
        .find(|cap| cap.to_string() == bare)
        .copied()
        .ok_or_else(|| SpecError::UnknownCapability(name.to_string()))
}

fn is_all(name: &str) -> bool {
    name.trim().eq_ignore_ascii_case("ALL")
}

/// The capability sets, as containerd's `WithCapabilities` builds them from Docker's default
/// set: `add: [ALL]` first grants every capability we hold, `drop: [ALL]` then clears the set,
/// then single adds, then single drops (so `add: [ALL], drop: [CHOWN]` is all but CHOWN, and
/// `drop: [ALL], add: [NET_BIND_SERVICE]` is just that one). A privileged container gets every
/// capability we hold and ignores add/drop. Bounding, effective and permitted are equal;
/// inheritable and ambient stay empty (containerd since the CVE-2022-24769 fix), so a non-root
/// process keeps no capability across execve.
pub fn capabilities(
    changes: &CapabilityChanges,
    privileged: bool,
    host: &Capabilities,
) -> Result<LinuxCapabilities, SpecError> {
    let set: Capabilities = if privileged {
        host.clone()
    } else {
        let mut set: Capabilities = DEFAULT_CAPABILITIES.into_iter().collect();
        if changes.add.iter().any(|n| is_all(n)) {
            set = host.clone();
        }
        if changes.drop.iter().any(|n| is_all(n)) {
            set.clear();
        }
        for name in changes.add.iter().filter(|n| !is_all(n)) {
            set.insert(parse_capability(name)?);
        }
        for name in changes.drop.iter().filter(|n| !is_all(n)) {
            set.remove(&parse_capability(name)?);
        }
        set
    };
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(set.clone()));
    caps.set_effective(Some(set.clone()));
    caps.set_permitted(Some(set));
    caps.set_inheritable(Some(Capabilities::new()));
    caps.set_ambient(Some(Capabilities::new()));
    Ok(caps)
}

/// Masked paths: none for a privileged container, the config's list when it gives one (even
/// empty: `procMount: Unmasked`), else containerd's defaults.
pub fn masked_paths(security: &SecurityContext) -> Vec<String> {
    paths(security, &security.masked_paths, &DEFAULT_MASKED_PATHS)
}

/// Read-only paths, by the same rules as [`masked_paths`].
pub fn readonly_paths(security: &SecurityContext) -> Vec<String> {
    paths(security, &security.readonly_paths, &DEFAULT_READONLY_PATHS)
}

fn paths(
    security: &SecurityContext,
    given: &Option<Vec<String>>,
    defaults: &[&str],
) -> Vec<String> {
    if security.privileged {
        return Vec::new();
    }
    match given {
        Some(list) => list.clone(),
        None => defaults.iter().map(|p| p.to_string()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_host_caps() -> Capabilities {
        CAPABILITY_BITS.into_iter().collect()
    }

    fn changes(add: &[&str], drop: &[&str]) -> CapabilityChanges {
        CapabilityChanges {
            add: add.iter().map(|s| s.to_string()).collect(),
            drop: drop.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn effective(add: &[&str], drop: &[&str]) -> Capabilities {
        let caps = capabilities(&changes(add, drop), false, &all_host_caps()).unwrap();
        let set = caps.effective().clone().unwrap();
        assert_eq!(caps.bounding().as_ref(), Some(&set));
        assert_eq!(caps.permitted().as_ref(), Some(&set));
        set
    }

    #[test]
    fn default_set_is_dockers_fourteen() {
        let set = effective(&[], &[]);
        assert_eq!(
            set,
            DEFAULT_CAPABILITIES.into_iter().collect::<Capabilities>()
        );
        assert_eq!(set.len(), 14);
    }

    #[test]
    fn add_and_drop_accept_names_with_or_without_cap_prefix() {
        let set = effective(&["NET_ADMIN", "cap_sys_time"], &["CAP_CHOWN", "kill"]);
        assert!(set.contains(&Capability::NetAdmin));
        assert!(set.contains(&Capability::SysTime));
        assert!(!set.contains(&Capability::Chown));
        assert!(!set.contains(&Capability::Kill));
        assert_eq!(set.len(), 14);
    }

    #[test]
    fn add_all_then_drop_one_is_everything_else() {
        let set = effective(&["ALL"], &["CHOWN"]);
        assert_eq!(set.len(), 40);
        assert!(!set.contains(&Capability::Chown));
    }

    #[test]
    fn drop_all_then_add_one_is_just_that_one() {
        let set = effective(&["NET_BIND_SERVICE"], &["all"]);
        assert_eq!(set, [Capability::NetBindService].into_iter().collect());
        assert!(effective(&["ALL"], &["ALL"]).is_empty());
    }

    #[test]
    fn add_all_grants_only_what_the_host_holds() {
        let host = capabilities_from_mask(0x1fffeffffff);
        let caps = capabilities(&changes(&["ALL"], &[]), false, &host).unwrap();
        let set = caps.effective().clone().unwrap();
        assert!(!set.contains(&Capability::SysResource));
        assert_eq!(set.len(), 40);
    }

    #[test]
    fn unknown_capability_is_an_error_naming_it() {
        let err = capabilities(&changes(&["NET_FLY"], &[]), false, &all_host_caps()).unwrap_err();
        assert!(err.to_string().contains("NET_FLY"), "{err}");
    }

    #[test]
    fn privileged_gets_every_host_capability_and_ignores_drops() {
        let caps = capabilities(&changes(&[], &["ALL"]), true, &all_host_caps()).unwrap();
        assert_eq!(caps.bounding().clone().unwrap().len(), 41);
        assert_eq!(caps.permitted().clone().unwrap().len(), 41);
    }

    #[test]
    fn inheritable_and_ambient_are_empty() {
        let caps = capabilities(&changes(&["ALL"], &[]), false, &all_host_caps()).unwrap();
        assert_eq!(caps.inheritable().as_ref(), Some(&Capabilities::new()));
        assert_eq!(caps.ambient().as_ref(), Some(&Capabilities::new()));
    }

    #[test]
    fn capability_mask_maps_kernel_bits() {
        let set = capabilities_from_mask((1 << 0) | (1 << 21) | (1 << 40));
        let expected: Capabilities = [
            Capability::Chown,
            Capability::SysAdmin,
            Capability::CheckpointRestore,
        ]
        .into_iter()
        .collect();
        assert_eq!(set, expected);
        assert_eq!(capabilities_from_mask(u64::MAX).len(), 41);
    }

    #[test]
    fn every_capability_name_round_trips() {
        for cap in CAPABILITY_BITS {
            assert_eq!(parse_capability(&format!("CAP_{cap}")).unwrap(), cap);
        }
    }

    #[test]
    fn default_paths_unless_the_config_gives_its_own() {
        let mut security = SecurityContext::default();
        assert_eq!(masked_paths(&security), DEFAULT_MASKED_PATHS);
        assert_eq!(readonly_paths(&security), DEFAULT_READONLY_PATHS);
        security.masked_paths = Some(vec!["/proc/kcore".into()]);
        security.readonly_paths = Some(vec![]);
        assert_eq!(masked_paths(&security), ["/proc/kcore"]);
        assert!(readonly_paths(&security).is_empty());
        security.privileged = true;
        assert!(masked_paths(&security).is_empty());
        assert!(readonly_paths(&security).is_empty());
    }
}
