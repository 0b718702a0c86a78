//! Which namespaces the container creates and which of the pod's it joins.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};

use super::input::{NamespaceMode, NamespaceOptions, SandboxInfo};
use super::SpecError;

fn namespace(typ: LinuxNamespaceType, path: Option<PathBuf>) -> LinuxNamespace {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(typ);
    ns.set_path(path);
    ns
}

/// The container's namespaces:
/// - network, IPC, UTS: the pod's pinned ones; none listed (the host's) when the pod has none.
///   The pod decides, as in containerd, which always joins the sandbox's.
/// - PID: `Container` a new one, `Pod` the pod's pinned one, `Node` the host's (not listed),
///   `Target` the target container's, resolved by the caller.
/// - user: the pod's pinned one when it has its own (joined first by libcontainer, so the
///   others, which it owns, are joined as its root).
/// - mount: always new.
/// - cgroup: new on a pure cgroup v2 host for unprivileged containers (containerd's rule;
///   on v1 or hybrid hosts the container sees the host's cgroup paths, as with containerd).
pub fn namespaces(
    options: &NamespaceOptions,
    sandbox: &SandboxInfo,
    target_pid_namespace: Option<&Path>,
    cgroup_v2: bool,
    privileged: bool,
) -> Result<Vec<LinuxNamespace>, SpecError> {
    let mut out = Vec::new();
    if let Some(path) = &sandbox.user_ns {
        out.push(namespace(LinuxNamespaceType::User, Some(path.clone())));
    }
    match options.pid {
        NamespaceMode::Container => out.push(namespace(LinuxNamespaceType::Pid, None)),
        NamespaceMode::Pod => {
            let path = sandbox.pid_ns.clone().ok_or_else(|| {
                SpecError::MissingNamespace(format!(
                    "pod {} has no shared PID namespace to join",
                    sandbox.id
                ))
            })?;
            out.push(namespace(LinuxNamespaceType::Pid, Some(path)));
        }
        NamespaceMode::Node => {}
        NamespaceMode::Target => {
            let path = target_pid_namespace.ok_or_else(|| {
                SpecError::MissingNamespace(format!(
                    "PID namespace of target container {:?} was not resolved",
                    options.target_id
                ))
            })?;
            out.push(namespace(LinuxNamespaceType::Pid, Some(path.to_path_buf())));
        }
    }
    let joined = [
        (LinuxNamespaceType::Network, &sandbox.net_ns),
        (LinuxNamespaceType::Ipc, &sandbox.ipc_ns),
        (LinuxNamespaceType::Uts, &sandbox.uts_ns),
    ];
    for (typ, path) in joined {
        if let Some(path) = path {
            out.push(namespace(typ, Some(path.clone())));
        }
    }
    out.push(namespace(LinuxNamespaceType::Mount, None));
    if cgroup_v2 && !privileged {
        out.push(namespace(LinuxNamespaceType::Cgroup, None));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> SandboxInfo {
        SandboxInfo {
            id: "pod1".into(),
            net_ns: Some("/run/berth/pods/pod1/ns/net".into()),
            ipc_ns: Some("/run/berth/pods/pod1/ns/ipc".into()),
            uts_ns: Some("/run/berth/pods/pod1/ns/uts".into()),
            pid_ns: Some("/run/berth/pods/pod1/ns/pid".into()),
            ..SandboxInfo::default()
        }
    }

    fn options(pid: NamespaceMode) -> NamespaceOptions {
        NamespaceOptions {
            pid,
            ..NamespaceOptions::default()
        }
    }

    fn summary(namespaces: &[LinuxNamespace]) -> Vec<(String, Option<String>)> {
        namespaces
            .iter()
            .map(|ns| {
                (
                    ns.typ().to_string(),
                    ns.path().as_ref().map(|p| p.display().to_string()),
                )
            })
            .collect()
    }

    fn entry(typ: &str, path: Option<&str>) -> (String, Option<String>) {
        (typ.to_string(), path.map(str::to_string))
    }

    #[test]
    fn pod_namespaces_are_joined_by_path_and_mount_is_new() {
        let got = namespaces(
            &options(NamespaceMode::Container),
            &pod(),
            None,
            false,
            false,
        );
        assert_eq!(
            summary(&got.unwrap()),
            [
                entry("pid", None),
                entry("net", Some("/run/berth/pods/pod1/ns/net")),
                entry("ipc", Some("/run/berth/pods/pod1/ns/ipc")),
                entry("uts", Some("/run/berth/pods/pod1/ns/uts")),
                entry("mnt", None),
            ]
        );
    }

    #[test]
    fn a_pod_user_namespace_is_joined_first() {
        let userns_pod = SandboxInfo {
            user_ns: Some("/run/berth/pods/pod1/ns/user".into()),
            ..pod()
        };
        let got = namespaces(
            &options(NamespaceMode::Container),
            &userns_pod,
            None,
            false,
            false,
        )
        .unwrap();
        assert_eq!(
            summary(&got)[0],
            entry("user", Some("/run/berth/pods/pod1/ns/user"))
        );
        let without = namespaces(
            &options(NamespaceMode::Container),
            &pod(),
            None,
            false,
            false,
        );
        assert!(!summary(&without.unwrap())
            .iter()
            .any(|(typ, _)| typ == "user"));
    }

    #[test]
    fn host_namespaces_are_left_out() {
        let host_pod = SandboxInfo {
            id: "pod2".into(),
            ..SandboxInfo::default()
        };
        let got = namespaces(&options(NamespaceMode::Node), &host_pod, None, false, false);
        assert_eq!(summary(&got.unwrap()), [entry("mnt", None)]);
    }

    #[test]
    fn pid_mode_pod_joins_the_pods_pid_namespace() {
        let got = namespaces(&options(NamespaceMode::Pod), &pod(), None, false, false).unwrap();
        assert_eq!(
            summary(&got)[0],
            entry("pid", Some("/run/berth/pods/pod1/ns/pid"))
        );
    }

    #[test]
    fn pid_mode_pod_without_a_shared_pid_namespace_is_an_error() {
        let sandbox = SandboxInfo {
            pid_ns: None,
            ..pod()
        };
        let err = namespaces(&options(NamespaceMode::Pod), &sandbox, None, false, false);
        assert!(err.unwrap_err().to_string().contains("pod1"));
    }

    #[test]
    fn pid_mode_target_joins_the_resolved_namespace() {
        let target = NamespaceOptions {
            pid: NamespaceMode::Target,
            target_id: "c1".into(),
            ..NamespaceOptions::default()
        };
        let got = namespaces(
            &target,
            &pod(),
            Some(Path::new("/proc/42/ns/pid")),
            false,
            false,
        );
        assert_eq!(
            summary(&got.unwrap())[0],
            entry("pid", Some("/proc/42/ns/pid"))
        );
        let err = namespaces(&target, &pod(), None, false, false).unwrap_err();
        assert!(err.to_string().contains("c1"), "{err}");
    }

    #[test]
    fn cgroup_namespace_only_on_cgroup_v2_for_unprivileged_containers() {
        let has_cgroup = |v2, privileged| {
            namespaces(
                &options(NamespaceMode::Container),
                &pod(),
                None,
                v2,
                privileged,
            )
            .unwrap()
            .iter()
            .any(|ns| ns.typ() == LinuxNamespaceType::Cgroup)
        };
        assert!(has_cgroup(true, false));
        assert!(!has_cgroup(true, true));
        assert!(!has_cgroup(false, false));
    }
}
