//! The container's mounts: the default filesystems, the pod's /etc files and /dev/shm, and the
//! config's bind mounts, combined the way containerd's `WithMounts` does.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Mount as OciMount;

use super::input::{
    CgroupV1Hierarchy, ContainerSpec, Mount, NamespaceMode, Propagation, SandboxInfo, UserNamespace,
};
use super::paths::clean_path;
use super::SpecError;

/// The mounts in order, and the propagation the root mount needs for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    pub mounts: Vec<OciMount>,
    /// `Some("slave")` / `Some("shared")` when a bind mount needs it. Written without the `r`:
    /// libcontainer 0.7 accepts only `shared`, `slave`, `private` and `unbindable` here (and
    /// applies them recursively anyway).
    pub rootfs_propagation: Option<String>,
}

fn oci_mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> OciMount {
    let mut mount = OciMount::default();
    mount.set_destination(PathBuf::from(destination));
    mount.set_typ(Some(typ.to_string()));
    mount.set_source(Some(PathBuf::from(source)));
    mount.set_options(Some(options.iter().map(|o| o.to_string()).collect()));
    mount
}

/// containerd's default mounts, without `/run` (CRI drops it) and with the read-only cgroupfs it
/// adds. A privileged container gets sysfs and cgroupfs writable.
pub fn default_mounts(privileged: bool) -> Vec<OciMount> {
    let ro_unless_privileged = if privileged { "rw" } else { "ro" };
    vec![
        oci_mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        oci_mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        oci_mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        oci_mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        oci_mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        oci_mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", ro_unless_privileged],
        ),
        oci_mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &[
                "nosuid",
                "noexec",
                "nodev",
                "relatime",
                ro_unless_privileged,
            ],
        ),
    ]
}

/// The v1 controllers libcontainer makes a container's cgroup in: a hierarchy of others has no
/// directory of the container's to show.
const CONTAINER_CONTROLLERS: &[&str] = &[
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
];

/// `/sys/fs/cgroup` on a v1 (or hybrid) host, laid out as runc does: a tmpfs, and in it the
/// container's own cgroup (`container_cgroup`, below each hierarchy's root) bound under the
/// hierarchy's name, and under each of its controllers' names when it has several (runc links
/// those), read-only unless privileged. libcontainer's own layout for a `cgroup` mount bound them
/// writable, so a container could raise its own limits or allow itself devices, and it looked
/// the container's pid up in the host's /proc, which fails for a container in its pod's PID
/// namespace whenever the host has no process of that pid.
pub fn cgroup_v1_mounts(
    hierarchies: &[CgroupV1Hierarchy],
    container_cgroup: &Path,
    privileged: bool,
) -> Vec<OciMount> {
    let mode = if privileged { "rw" } else { "ro" };
    let mut mounts = vec![oci_mount(
        "/sys/fs/cgroup",
        "tmpfs",
        "tmpfs",
        &["nosuid", "noexec", "nodev", "mode=755"],
    )];
    let relative = container_cgroup
        .strip_prefix("/")
        .unwrap_or(container_cgroup);
    let mut taken: Vec<String> = hierarchies
        .iter()
        .filter_map(|h| Some(h.mountpoint.file_name()?.to_string_lossy().into_owned()))
        .collect();
    for h in hierarchies {
        let Some(name) = h.mountpoint.file_name().map(|n| n.to_string_lossy()) else {
            continue;
        };
        if h.controllers.is_empty()
            || !h
                .controllers
                .iter()
                .all(|c| CONTAINER_CONTROLLERS.contains(&c.as_str()))
        {
            continue;
        }
        let source = h.mountpoint.join(relative);
        let mut names = vec![name.to_string()];
        for c in &h.controllers {
            if !taken.contains(c) {
                taken.push(c.clone());
                names.push(c.clone());
            }
        }
        for name in names {
            mounts.push(oci_mount(
                &format!("/sys/fs/cgroup/{name}"),
                "bind",
                &source.to_string_lossy(),
                &["rbind", "rprivate", "nosuid", "noexec", "nodev", mode],
            ));
        }
    }
    mounts
}

/// The pod's files and /dev/shm, each unless the config mounts that path itself.
/// /etc files are read-only when the rootfs is; with the host's IPC namespace the host's
/// /dev/shm is bound, and a pod without a shm dir leaves the default private tmpfs.
fn sandbox_mounts(config: &ContainerSpec, sandbox: &SandboxInfo) -> Vec<Mount> {
    let readonly = config.security.readonly_rootfs;
    let host_ipc = config.security.namespace_options.ipc == NamespaceMode::Node;
    let shm = if host_ipc {
        Some(PathBuf::from("/dev/shm"))
    } else {
        sandbox.shm.clone()
    };
    let wanted = [
        ("/etc/hostname", sandbox.hostname_file.clone(), readonly),
        ("/etc/hosts", sandbox.hosts.clone(), readonly),
        ("/etc/resolv.conf", sandbox.resolv_conf.clone(), readonly),
        ("/dev/shm", shm, false),
    ];
    wanted
        .into_iter()
        .filter_map(|(container_path, host_path, readonly)| {
            Some(Mount {
                container_path: PathBuf::from(container_path),
                host_path: host_path?,
                readonly,
                ..Mount::default()
            })
        })
        .filter(|m| {
            !config
                .mounts
                .iter()
                .any(|c| clean_path(&c.container_path) == m.container_path)
        })
        .collect()
}

/// The container's own bind mounts, checked before anything is made: absolute destinations,
/// and recursive read-only only with readonly and private propagation.
pub fn check_binds(mounts: &[Mount], userns: Option<&UserNamespace>) -> Result<(), SpecError> {
    for m in mounts {
        let invalid = |reason: &str| {
            Err(SpecError::InvalidMount {
                path: m.container_path.clone(),
                reason: reason.into(),
            })
        };
        if !m.container_path.is_absolute() {
            return invalid("the container path must be absolute");
        }
        // containerd's refusals: a submount propagating in could not be made read-only.
        if m.image.is_some() && !m.readonly {
            return invalid("an image volume is read-only: it needs readonly: true");
        }
        if m.recursive_read_only && !m.readonly {
            return invalid("a recursive read-only mount needs readonly: true");
        }
        if m.recursive_read_only && m.propagation != Propagation::Private {
            return invalid("a recursive read-only mount must have private propagation");
        }
        // The executor maps through the pod's own namespace: kubelet gives each mount the
        // pod's ranges.
        if !(m.uid_mappings.is_empty() && m.gid_mappings.is_empty()) {
            let Some(userns) = userns else {
                return invalid("an idmapped mount needs a pod with its own user namespace");
            };
            if m.uid_mappings != [userns.uids] || m.gid_mappings != [userns.gids] {
                return invalid("an idmapped mount's mappings must be the pod's user namespace's");
            }
        }
    }
    Ok(())
}

/// All mounts of the container: defaults not replaced by a bind mount (and none under /dev
/// when /dev itself is bound), then the bind mounts, shallower destinations first so a parent
/// never hides a child. Equal depths keep the config's order.
pub fn plan_mounts(
    config: &ContainerSpec,
    sandbox: &SandboxInfo,
    privileged: bool,
) -> Result<MountPlan, SpecError> {
    check_binds(&config.mounts, sandbox.userns.as_ref())?;
    let mut binds: Vec<Mount> = config.mounts.clone();
    binds.extend(sandbox_mounts(config, sandbox));
    binds.sort_by_key(|m| clean_path(&m.container_path).components().count());

    let bound: Vec<PathBuf> = binds
        .iter()
        .map(|m| clean_path(&m.container_path))
        .collect();
    let dev_bound = bound.iter().any(|p| p == Path::new("/dev"));
    let mut mounts: Vec<OciMount> = default_mounts(privileged)
        .into_iter()
        .filter(|m| {
            let dst = m.destination();
            let replaced = bound.iter().any(|b| b == dst);
            let under_bound_dev = dev_bound && dst.starts_with("/dev");
            !replaced && !under_bound_dev
        })
        .collect();

    let mut rootfs_propagation: Option<String> = None;
    for bind in &binds {
        let propagation = match bind.propagation {
            Propagation::Private => "rprivate",
            Propagation::HostToContainer => {
                if rootfs_propagation.as_deref() != Some("shared") {
                    rootfs_propagation = Some("slave".into());
                }
                "rslave"
            }
            Propagation::Bidirectional => {
                rootfs_propagation = Some("shared".into());
                "rshared"
            }
        };
        let mode = if bind.readonly { "ro" } else { "rw" };
        let mut mount = OciMount::default();
        mount.set_destination(clean_path(&bind.container_path));
        mount.set_typ(Some("bind".into()));
        mount.set_source(Some(bind.host_path.clone()));
        let mut options = vec!["rbind".to_string(), propagation.into(), mode.into()];
        // `ro` alone makes only the top mount read-only, as runc does.
        if bind.recursive_read_only {
            options.push("rro".into());
        }
        mount.set_options(Some(options));
        mounts.push(mount);
    }
    Ok(MountPlan {
        mounts,
        rootfs_propagation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::input::MountImage;

    fn sandbox() -> SandboxInfo {
        SandboxInfo {
            id: "pod1".into(),
            hostname_file: Some("/run/berth/pods/pod1/hostname".into()),
            hosts: Some("/run/berth/pods/pod1/hosts".into()),
            resolv_conf: Some("/run/berth/pods/pod1/resolv.conf".into()),
            shm: Some("/run/berth/pods/pod1/shm".into()),
            ..SandboxInfo::default()
        }
    }

    fn bind(container: &str, host: &str) -> Mount {
        Mount {
            container_path: container.into(),
            host_path: host.into(),
            ..Mount::default()
        }
    }

    fn with_mounts(mounts: Vec<Mount>) -> ContainerSpec {
        ContainerSpec {
            mounts,
            ..ContainerSpec::default()
        }
    }

    fn destinations(plan: &MountPlan) -> Vec<String> {
        plan.mounts
            .iter()
            .map(|m| m.destination().display().to_string())
            .collect()
    }

    fn find<'a>(plan: &'a MountPlan, destination: &str) -> &'a OciMount {
        plan.mounts
            .iter()
            .find(|m| m.destination() == Path::new(destination))
            .unwrap_or_else(|| panic!("no mount at {destination}"))
    }

    fn options(mount: &OciMount) -> Vec<String> {
        mount.options().clone().unwrap_or_default()
    }

    #[test]
    fn defaults_then_pod_files_then_shm_in_depth_order() {
        let plan = plan_mounts(&ContainerSpec::default(), &sandbox(), false).unwrap();
        assert_eq!(
            destinations(&plan),
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup",
                "/etc/hostname",
                "/etc/hosts",
                "/etc/resolv.conf",
                "/dev/shm",
            ]
        );
        let shm = find(&plan, "/dev/shm");
        assert_eq!(
            shm.source().as_deref(),
            Some(Path::new("/run/berth/pods/pod1/shm"))
        );
        assert_eq!(options(shm), ["rbind", "rprivate", "rw"]);
        assert_eq!(
            options(find(&plan, "/sys")),
            ["nosuid", "noexec", "nodev", "ro"]
        );
        assert_eq!(plan.rootfs_propagation, None);
    }

    #[test]
    fn pod_files_are_read_only_with_a_read_only_rootfs() {
        let mut config = ContainerSpec::default();
        config.security.readonly_rootfs = true;
        let plan = plan_mounts(&config, &sandbox(), false).unwrap();
        for path in ["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"] {
            assert_eq!(
                options(find(&plan, path)),
                ["rbind", "rprivate", "ro"],
                "{path}"
            );
        }
        assert_eq!(
            options(find(&plan, "/dev/shm")),
            ["rbind", "rprivate", "rw"]
        );
    }

    #[test]
    fn missing_pod_files_are_not_mounted() {
        let plan = plan_mounts(&ContainerSpec::default(), &SandboxInfo::default(), false).unwrap();
        assert!(!destinations(&plan).iter().any(|d| d.starts_with("/etc")));
        // The default private tmpfs stays at /dev/shm.
        assert_eq!(find(&plan, "/dev/shm").typ().as_deref(), Some("tmpfs"));
    }

    #[test]
    fn host_ipc_binds_the_host_dev_shm() {
        let mut config = ContainerSpec::default();
        config.security.namespace_options.ipc = NamespaceMode::Node;
        let plan = plan_mounts(&config, &sandbox(), false).unwrap();
        let shm = find(&plan, "/dev/shm");
        assert_eq!(shm.typ().as_deref(), Some("bind"));
        assert_eq!(shm.source().as_deref(), Some(Path::new("/dev/shm")));
    }

    #[test]
    fn config_mount_replaces_the_pod_file_and_the_default_mount() {
        let config = with_mounts(vec![
            bind("/etc/hosts/", "/my/hosts"),
            bind("/proc", "/my/proc"),
        ]);
        let plan = plan_mounts(&config, &sandbox(), false).unwrap();
        let hosts: Vec<_> = plan
            .mounts
            .iter()
            .filter(|m| m.destination() == Path::new("/etc/hosts"))
            .collect();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].source().as_deref(), Some(Path::new("/my/hosts")));
        assert_eq!(find(&plan, "/proc").typ().as_deref(), Some("bind"));
    }

    #[test]
    fn binding_dev_drops_every_default_under_dev() {
        let config = with_mounts(vec![bind("/dev", "/host/dev")]);
        let plan = plan_mounts(&config, &SandboxInfo::default(), false).unwrap();
        assert_eq!(
            destinations(&plan),
            ["/proc", "/sys", "/sys/fs/cgroup", "/dev"]
        );
    }

    #[test]
    fn bind_mounts_are_sorted_parents_before_children() {
        let config = with_mounts(vec![
            bind("/data/a/b", "/h/ab"),
            bind("/data", "/h/data"),
            bind("/data/a", "/h/a"),
            bind("/other", "/h/other"),
        ]);
        let plan = plan_mounts(&config, &SandboxInfo::default(), false).unwrap();
        let binds: Vec<_> = destinations(&plan).into_iter().skip(7).collect();
        assert_eq!(binds, ["/data", "/other", "/data/a", "/data/a/b"]);
    }

    #[test]
    fn propagation_and_readonly_become_mount_options() {
        let cases = [
            (
                Propagation::Private,
                false,
                ["rbind", "rprivate", "rw"],
                None,
            ),
            (
                Propagation::HostToContainer,
                true,
                ["rbind", "rslave", "ro"],
                Some("slave"),
            ),
            (
                Propagation::Bidirectional,
                false,
                ["rbind", "rshared", "rw"],
                Some("shared"),
            ),
        ];
        for (propagation, readonly, expected, rootfs) in cases {
            let config = with_mounts(vec![Mount {
                readonly,
                propagation,
                ..bind("/data", "/h")
            }]);
            let plan = plan_mounts(&config, &SandboxInfo::default(), false).unwrap();
            assert_eq!(options(find(&plan, "/data")), expected, "{propagation:?}");
            assert_eq!(
                plan.rootfs_propagation.as_deref(),
                rootfs,
                "{propagation:?}"
            );
        }
    }

    #[test]
    fn recursive_read_only_adds_rro_and_needs_readonly_and_private() {
        let rro = |readonly, propagation| {
            with_mounts(vec![Mount {
                readonly,
                recursive_read_only: true,
                propagation,
                ..bind("/data", "/h")
            }])
        };
        let plan = plan_mounts(
            &rro(true, Propagation::Private),
            &SandboxInfo::default(),
            false,
        )
        .unwrap();
        assert_eq!(
            options(find(&plan, "/data")),
            ["rbind", "rprivate", "ro", "rro"]
        );
        for (readonly, propagation, why) in [
            (false, Propagation::Private, "readonly"),
            (true, Propagation::HostToContainer, "private"),
            (true, Propagation::Bidirectional, "private"),
        ] {
            let e = plan_mounts(&rro(readonly, propagation), &SandboxInfo::default(), false)
                .unwrap_err();
            assert!(
                e.to_string().contains(why) && e.to_string().contains("/data"),
                "{e}"
            );
        }
    }

    #[test]
    fn an_image_volume_must_be_read_only() {
        let volume = |readonly| {
            vec![Mount {
                readonly,
                image: Some(MountImage {
                    reference: "sha256:abc".into(),
                    id: "sha256:abc".into(),
                    sub_path: String::new(),
                }),
                ..bind("/mnt/img", "")
            }]
        };
        assert!(check_binds(&volume(true), None).is_ok());
        let e = check_binds(&volume(false), None).unwrap_err();
        assert!(
            e.to_string().contains("read-only") && e.to_string().contains("/mnt/img"),
            "{e}"
        );
    }

    #[test]
    fn an_idmapped_mount_takes_the_pod_user_namespace_ranges() {
        let pod = crate::spec::IdMapping {
            container_id: 0,
            host_id: 1000,
            length: 100000,
        };
        let userns = UserNamespace {
            uids: pod,
            gids: pod,
        };
        let mapped = |uids: Vec<crate::spec::IdMapping>| {
            vec![Mount {
                uid_mappings: uids,
                gid_mappings: vec![pod],
                ..bind("/data", "/srv/data")
            }]
        };
        assert!(check_binds(&mapped(vec![pod]), Some(&userns)).is_ok());
        let e = check_binds(&mapped(vec![pod]), None).unwrap_err();
        assert!(e.to_string().contains("own user namespace"), "{e}");
        let other = crate::spec::IdMapping {
            host_id: 5000,
            ..pod
        };
        let e = check_binds(&mapped(vec![other]), Some(&userns)).unwrap_err();
        assert!(e.to_string().contains("must be the pod's"), "{e}");
        assert!(check_binds(&[bind("/data", "/srv/data")], Some(&userns)).is_ok());
    }

    #[test]
    fn shared_root_propagation_wins_over_slave() {
        let config = with_mounts(vec![
            Mount {
                propagation: Propagation::Bidirectional,
                ..bind("/a", "/h/a")
            },
            Mount {
                propagation: Propagation::HostToContainer,
                ..bind("/b", "/h/b")
            },
        ]);
        let plan = plan_mounts(&config, &SandboxInfo::default(), false).unwrap();
        assert_eq!(plan.rootfs_propagation.as_deref(), Some("shared"));
    }

    #[test]
    fn relative_container_path_is_an_error() {
        let config = with_mounts(vec![bind("data", "/h")]);
        let err = plan_mounts(&config, &SandboxInfo::default(), false).unwrap_err();
        assert!(err.to_string().contains("data"), "{err}");
    }

    #[test]
    fn privileged_gets_writable_sysfs_and_cgroupfs() {
        let plan = plan_mounts(&ContainerSpec::default(), &SandboxInfo::default(), true).unwrap();
        assert_eq!(
            options(find(&plan, "/sys")),
            ["nosuid", "noexec", "nodev", "rw"]
        );
        assert!(options(find(&plan, "/sys/fs/cgroup")).contains(&"rw".to_string()));
    }
}
