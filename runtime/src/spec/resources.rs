//! Cgroup limits, the OOM score and the cgroup path.

use std::collections::HashMap;
use std::path::PathBuf;

use oci_spec::runtime::{LinuxCpu, LinuxHugepageLimit, LinuxMemory, LinuxResources};

use super::input::{HostInfo, Resources};
use super::SpecError;
use crate::CgroupDriver;

fn non_negative(what: &str, value: i64) -> Result<u64, SpecError> {
    u64::try_from(value)
        .map_err(|_| SpecError::InvalidResource(format!("{what} {value} is negative")))
}

/// CPU, memory, hugepage and unified limits as containerd's `WithResources` sets them: zero
/// leaves a limit unset; with a memory limit and no swap limit, swap is capped at the memory
/// limit so the container does not swap; hugepage limits are dropped when the host has no
/// hugetlb controller (containerd's default `tolerate_missing_hugetlb_controller`).
/// Device rules are added by `devices`.
pub fn resources(r: &Resources, host: &HostInfo) -> Result<LinuxResources, SpecError> {
    let mut cpu = LinuxCpu::default();
    if r.cpu_period != 0 {
        cpu.set_period(Some(non_negative("cpu_period", r.cpu_period)?));
    }
    if r.cpu_quota != 0 {
        cpu.set_quota(Some(r.cpu_quota));
    }
    if r.cpu_shares != 0 {
        cpu.set_shares(Some(non_negative("cpu_shares", r.cpu_shares)?));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.set_cpus(Some(r.cpuset_cpus.clone()));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.set_mems(Some(r.cpuset_mems.clone()));
    }

    let mut memory = LinuxMemory::default();
    if r.memory_limit_in_bytes < 0 {
        return Err(SpecError::InvalidResource(format!(
            "memory_limit_in_bytes {} is negative",
            r.memory_limit_in_bytes
        )));
    }
    if r.memory_limit_in_bytes != 0 {
        memory.set_limit(Some(r.memory_limit_in_bytes));
    }
    if host.swap_controller {
        // -1 (unlimited swap) passes through, as in containerd.
        if r.memory_swap_limit_in_bytes != 0 {
            memory.set_swap(Some(r.memory_swap_limit_in_bytes));
        } else if r.memory_limit_in_bytes != 0 {
            memory.set_swap(Some(r.memory_limit_in_bytes));
        }
    }

    let mut out = LinuxResources::default();
    if cpu != LinuxCpu::default() {
        out.set_cpu(Some(cpu));
    }
    if memory != LinuxMemory::default() {
        out.set_memory(Some(memory));
    }
    if host.hugetlb_controller && !r.hugepage_limits.is_empty() {
        let mut limits = Vec::new();
        for h in &r.hugepage_limits {
            let limit = i64::try_from(h.limit).map_err(|_| {
                SpecError::InvalidResource(format!("hugepage limit {} is too large", h.limit))
            })?;
            let mut l = LinuxHugepageLimit::default();
            l.set_page_size(h.page_size.clone());
            l.set_limit(limit);
            limits.push(l);
        }
        out.set_hugepage_limits(Some(limits));
    }
    if !r.unified.is_empty() {
        let unified: HashMap<String, String> = r.unified.clone().into_iter().collect();
        out.set_unified(Some(unified));
    }
    Ok(out)
}

/// The container's `oom_score_adj`: the requested value, raised to the lowest the host lets us
/// set (as containerd's `restrict_oom_score_adj`), so the executor's write never fails.
pub fn oom_score_adj(requested: i64, host_min: i32) -> Result<i32, SpecError> {
    if !(-1000..=1000).contains(&requested) {
        return Err(SpecError::InvalidResource(format!(
            "oom_score_adj {requested} is outside -1000..=1000"
        )));
    }
    // In range, so the conversion cannot fail.
    let requested = requested as i32;
    Ok(requested.max(host_min.clamp(-1000, 1000)))
}

/// The container's cgroup. cgroupfs: `<cgroup_parent>/<id>` as an absolute path (containerd's
/// `getCgroupsPath`); a pod without a parent puts its containers under `/berth`. systemd:
/// `<slice>:berth:<id>`, the scope `berth-<id>.scope` in the pod's slice (`system.slice` for a
/// pod without one).
pub fn cgroups_path(
    driver: CgroupDriver,
    cgroup_parent: &str,
    container_id: &str,
) -> Result<PathBuf, SpecError> {
    match driver {
        CgroupDriver::Systemd => {
            let slice = if cgroup_parent.is_empty() {
                crate::cgroups::systemd::DEFAULT_SLICE
            } else {
                cgroup_parent
            };
            crate::cgroups::systemd::slice_path(slice).map_err(SpecError::InvalidResource)?;
            let slice =
                crate::cgroups::systemd::slice_name(slice).map_err(SpecError::InvalidResource)?;
            Ok(PathBuf::from(crate::cgroups::systemd::oci_path(
                slice,
                crate::cgroups::systemd::CONTAINER_PREFIX,
                container_id,
            )))
        }
        CgroupDriver::Cgroupfs => {
            let parent = if cgroup_parent.is_empty() {
                "berth"
            } else {
                cgroup_parent
            };
            Ok(PathBuf::from("/").join(parent).join(container_id))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::spec::input::HugepageLimit;

    fn host(swap: bool, hugetlb: bool) -> HostInfo {
        HostInfo {
            hostname: "node".into(),
            min_oom_score_adj: -1000,
            cgroup_driver: CgroupDriver::Cgroupfs,
            cgroup_v2: false,
            cgroup_v1: Vec::new(),
            swap_controller: swap,
            hugetlb_controller: hugetlb,
            capabilities: Default::default(),
            default_seccomp: Default::default(),
        }
    }

    #[test]
    fn zero_values_leave_every_limit_unset() {
        let got = resources(&Resources::default(), &host(true, true)).unwrap();
        assert_eq!(got, LinuxResources::default());
    }

    #[test]
    fn cpu_limits_and_cpusets_are_copied() {
        let r = Resources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            cpuset_cpus: "0-1".into(),
            cpuset_mems: "0".into(),
            ..Resources::default()
        };
        let got = resources(&r, &host(false, false)).unwrap();
        let cpu = got.cpu().clone().unwrap();
        assert_eq!(cpu.period(), Some(100_000));
        assert_eq!(cpu.quota(), Some(50_000));
        assert_eq!(cpu.shares(), Some(512));
        assert_eq!(cpu.cpus().as_deref(), Some("0-1"));
        assert_eq!(cpu.mems().as_deref(), Some("0"));
        assert!(got.memory().is_none());
    }

    #[test]
    fn memory_limit_caps_swap_at_the_same_value() {
        // (limit, swap limit, host can limit swap, expected limit, expected swap)
        let cases = [
            (1 << 20, 0, true, Some(1 << 20), Some(1 << 20)),
            (1 << 20, 0, false, Some(1 << 20), None),
            (1 << 20, 2 << 20, true, Some(1 << 20), Some(2 << 20)),
            (1 << 20, -1, true, Some(1 << 20), Some(-1)),
            (0, 0, true, None, None),
        ];
        for (limit, swap, swap_controller, want_limit, want_swap) in cases {
            let r = Resources {
                memory_limit_in_bytes: limit,
                memory_swap_limit_in_bytes: swap,
                ..Resources::default()
            };
            let got = resources(&r, &host(swap_controller, false)).unwrap();
            let memory = got.memory().unwrap_or_default();
            assert_eq!(memory.limit(), want_limit, "limit {limit} swap {swap}");
            assert_eq!(memory.swap(), want_swap, "limit {limit} swap {swap}");
        }
    }

    #[test]
    fn hugepage_limits_need_the_hugetlb_controller() {
        let r = Resources {
            hugepage_limits: vec![HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 20,
            }],
            ..Resources::default()
        };
        let got = resources(&r, &host(false, true)).unwrap();
        let limits = got.hugepage_limits().clone().unwrap();
        assert_eq!(limits.len(), 1);
        assert_eq!(limits[0].page_size(), "2MB");
        assert_eq!(limits[0].limit(), 4 << 20);
        let got = resources(&r, &host(false, false)).unwrap();
        assert!(got.hugepage_limits().is_none());
    }

    #[test]
    fn unified_keys_are_copied() {
        let r = Resources {
            unified: BTreeMap::from([("memory.high".to_string(), "1000000".to_string())]),
            ..Resources::default()
        };
        let got = resources(&r, &host(false, false)).unwrap();
        assert_eq!(got.unified().clone().unwrap()["memory.high"], "1000000");
    }

    #[test]
    fn negative_limits_are_rejected() {
        for r in [
            Resources {
                cpu_shares: -2,
                ..Resources::default()
            },
            Resources {
                cpu_period: -1,
                ..Resources::default()
            },
            Resources {
                memory_limit_in_bytes: -1,
                ..Resources::default()
            },
        ] {
            let err = resources(&r, &host(true, true)).unwrap_err();
            assert!(matches!(err, SpecError::InvalidResource(_)), "{err}");
        }
    }

    #[test]
    fn oom_score_adj_is_clamped_to_the_host_minimum() {
        // (requested, host minimum, expected)
        let cases = [
            (-997, 0, 0),
            (-1000, -500, -500),
            (1000, 0, 1000),
            (999, 0, 999),
            (-997, -1000, -997),
            (0, 0, 0),
        ];
        for (requested, min, expected) in cases {
            assert_eq!(
                oom_score_adj(requested, min).unwrap(),
                expected,
                "{requested} {min}"
            );
        }
    }

    #[test]
    fn oom_score_adj_outside_the_kernel_range_is_rejected() {
        assert!(oom_score_adj(1001, 0).is_err());
        assert!(oom_score_adj(-1001, -1000).is_err());
    }

    #[test]
    fn cgroupfs_path_is_parent_slash_id() {
        let cases = [
            ("/kubepods/burstable/pod1", "/kubepods/burstable/pod1/c1"),
            ("kubepods/pod1", "/kubepods/pod1/c1"),
            ("", "/berth/c1"),
        ];
        for (parent, expected) in cases {
            let got = cgroups_path(CgroupDriver::Cgroupfs, parent, "c1").unwrap();
            assert_eq!(got, PathBuf::from(expected), "{parent:?}");
        }
    }

    #[test]
    fn systemd_cgroups_path_is_a_berth_scope_in_the_pods_slice() {
        let got = cgroups_path(CgroupDriver::Systemd, "kubepods-pod1.slice", "c1").unwrap();
        assert_eq!(got, PathBuf::from("kubepods-pod1.slice:berth:c1"));
        let got = cgroups_path(
            CgroupDriver::Systemd,
            "/kubepods.slice/kubepods-pod1.slice",
            "c1",
        );
        assert_eq!(got.unwrap(), PathBuf::from("kubepods-pod1.slice:berth:c1"));
        let got = cgroups_path(CgroupDriver::Systemd, "", "c1").unwrap();
        assert_eq!(got, PathBuf::from("system.slice:berth:c1"));
        let err = cgroups_path(CgroupDriver::Systemd, "/kubepods/pod1", "c1").unwrap_err();
        assert!(err.to_string().contains("slice"), "{err}");
    }
}
