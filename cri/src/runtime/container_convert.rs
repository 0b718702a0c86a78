//! CRI container messages ↔ `berth_runtime` types; errors → gRPC status.

use std::collections::HashMap;
use std::path::PathBuf;

use berth_podsandbox::container::{ContainerRecord, ContainerState};
use berth_podsandbox::sandbox::record::SandboxRecord;
use berth_podsandbox::sandbox::spec::NamespaceMode as PodMode;
use berth_runtime::spec as rspec;
use k8s_cri::v1 as cri;
use tonic::Status;

fn mode(m: i32) -> rspec::NamespaceMode {
    match cri::NamespaceMode::try_from(m) {
        Ok(cri::NamespaceMode::Container) => rspec::NamespaceMode::Container,
        Ok(cri::NamespaceMode::Node) => rspec::NamespaceMode::Node,
        Ok(cri::NamespaceMode::Target) => rspec::NamespaceMode::Target,
        _ => rspec::NamespaceMode::Pod,
    }
}

/// The container's log file: `log_path` under the pod's `log_directory` (empty if either is).
/// `log_path` must stay inside: an absolute one, or one with `..`, would have the monitor
/// write (as root) wherever the caller likes.
fn log_file(log_directory: &str, log_path: &str) -> Result<String, Status> {
    if log_directory.is_empty() || log_path.is_empty() {
        return Ok(String::new());
    }
    let relative = std::path::Path::new(log_path);
    let escapes = relative.components().any(|c| {
        !matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    });
    if escapes {
        return Err(Status::invalid_argument(format!(
            "berth: log_path {log_path:?} must be a relative path inside the pod's log directory"
        )));
    }
    Ok(PathBuf::from(log_directory)
        .join(relative)
        .display()
        .to_string())
}

/// The seccomp profile a container asks for: the `seccomp` field, else the deprecated
/// `seccomp_profile_path` (`runtime/default`, `docker/default`, `unconfined`,
/// `localhost/<absolute path>`), else unset.
fn seccomp_profile(
    profile: Option<&cri::SecurityProfile>,
    deprecated: &str,
) -> Result<rspec::SeccompProfile, Status> {
    use cri::security_profile::ProfileType;
    if let Some(p) = profile {
        return match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => Ok(rspec::SeccompProfile::RuntimeDefault),
            Ok(ProfileType::Unconfined) => Ok(rspec::SeccompProfile::Unconfined),
            Ok(ProfileType::Localhost) if p.localhost_ref.is_empty() => Err(
                Status::invalid_argument("berth: a Localhost seccomp profile needs localhost_ref"),
            ),
            Ok(ProfileType::Localhost) => Ok(rspec::SeccompProfile::Localhost(PathBuf::from(
                &p.localhost_ref,
            ))),
            Err(_) => Err(Status::invalid_argument(format!(
                "berth: unknown seccomp profile type {}",
                p.profile_type
            ))),
        };
    }
    match deprecated {
        "" => Ok(rspec::SeccompProfile::Unset),
        "runtime/default" | "docker/default" => Ok(rspec::SeccompProfile::RuntimeDefault),
        "unconfined" => Ok(rspec::SeccompProfile::Unconfined),
        other => match other.strip_prefix("localhost/") {
            Some(path) if !path.is_empty() => Ok(rspec::SeccompProfile::Localhost(PathBuf::from(path))),
            _ => Err(Status::invalid_argument(format!(
                "berth: seccomp_profile_path {other:?} is not runtime/default, unconfined or localhost/<path>"
            ))),
        },
    }
}

/// The AppArmor profile a container asks for: the `apparmor` field, else the deprecated
/// `apparmor_profile` (`runtime/default`, `unconfined`, `localhost/<name>`), else unset. A
/// localhost reference may carry the `localhost/` prefix (critest's does); it is the name after.
fn apparmor_profile(
    profile: Option<&cri::SecurityProfile>,
    deprecated: &str,
) -> Result<rspec::AppArmorProfile, Status> {
    use cri::security_profile::ProfileType;
    let localhost = |name: &str| {
        let name = name.strip_prefix("localhost/").unwrap_or(name);
        if name.is_empty() {
            Err(Status::invalid_argument(
                "berth: a Localhost AppArmor profile needs a profile name",
            ))
        } else {
            Ok(rspec::AppArmorProfile::Localhost(name.to_string()))
        }
    };
    if let Some(p) = profile {
        return match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => Ok(rspec::AppArmorProfile::RuntimeDefault),
            Ok(ProfileType::Unconfined) => Ok(rspec::AppArmorProfile::Unconfined),
            Ok(ProfileType::Localhost) => localhost(&p.localhost_ref),
            Err(_) => Err(Status::invalid_argument(format!(
                "berth: unknown AppArmor profile type {}",
                p.profile_type
            ))),
        };
    }
    match deprecated {
        "" => Ok(rspec::AppArmorProfile::Unset),
        "runtime/default" => Ok(rspec::AppArmorProfile::RuntimeDefault),
        "unconfined" => Ok(rspec::AppArmorProfile::Unconfined),
        other if other.starts_with("localhost/") => localhost(other),
        other => Err(Status::invalid_argument(format!(
            "berth: apparmor_profile {other:?} is not runtime/default, unconfined or localhost/<name>"
        ))),
    }
}

/// kubelet's `ContainerConfig` as the runtime crate's input. The log path becomes absolute:
/// the pod's log directory joined with the container's relative path.
pub(crate) fn container_spec(
    config: cri::ContainerConfig,
    log_directory: &str,
) -> Result<rspec::ContainerSpec, Status> {
    let metadata = config
        .metadata
        .ok_or_else(|| Status::invalid_argument("berth: container config needs metadata"))?;
    if metadata.name.is_empty() {
        return Err(Status::invalid_argument(
            "berth: container config needs a name",
        ));
    }
    let linux = config.linux.unwrap_or_default();
    let r = linux.resources.unwrap_or_default();
    let s = linux.security_context.unwrap_or_default();
    let ns = s.namespace_options.clone().unwrap_or_default();
    // Deprecated, and still what older kubelets and crictl configs send.
    #[allow(deprecated)]
    let seccomp = seccomp_profile(s.seccomp.as_ref(), &s.seccomp_profile_path)?;
    #[allow(deprecated)]
    let apparmor = apparmor_profile(s.apparmor.as_ref(), &s.apparmor_profile)?;
    let caps = s.capabilities.clone().unwrap_or_default();
    let log_path = log_file(log_directory, &config.log_path)?;
    Ok(rspec::ContainerSpec {
        metadata: rspec::ContainerMetadata {
            name: metadata.name,
            attempt: metadata.attempt,
        },
        command: config.command,
        args: config.args,
        working_dir: config.working_dir,
        envs: config
            .envs
            .into_iter()
            .map(|kv| rspec::EnvVar {
                key: kv.key,
                value: kv.value,
            })
            .collect(),
        mounts: config
            .mounts
            .into_iter()
            .map(|m| rspec::Mount {
                container_path: m.container_path.into(),
                host_path: m.host_path.into(),
                readonly: m.readonly,
                recursive_read_only: m.recursive_read_only,
                image: m
                    .image
                    .filter(|i| !i.image.is_empty())
                    .map(|i| rspec::MountImage {
                        reference: i.image,
                        id: String::new(),
                        sub_path: String::new(),
                    }),
                propagation: match cri::MountPropagation::try_from(m.propagation) {
                    Ok(cri::MountPropagation::PropagationHostToContainer) => {
                        rspec::Propagation::HostToContainer
                    }
                    Ok(cri::MountPropagation::PropagationBidirectional) => {
                        rspec::Propagation::Bidirectional
                    }
                    _ => rspec::Propagation::Private,
                },
                selinux_relabel: m.selinux_relabel,
                uid_mappings: super::sandbox_convert::id_mappings(&m.uid_mappings),
                gid_mappings: super::sandbox_convert::id_mappings(&m.gid_mappings),
            })
            .collect(),
        devices: config
            .devices
            .into_iter()
            .map(|d| rspec::Device {
                container_path: d.container_path.into(),
                host_path: d.host_path.into(),
                permissions: d.permissions,
            })
            .collect(),
        labels: config.labels.into_iter().collect(),
        annotations: config.annotations.into_iter().collect(),
        log_path,
        stdin: config.stdin,
        stdin_once: config.stdin_once,
        tty: config.tty,
        resources: resources(r),
        security: rspec::SecurityContext {
            capabilities: rspec::CapabilityChanges {
                add: caps.add_capabilities,
                drop: caps.drop_capabilities,
            },
            privileged: s.privileged,
            namespace_options: rspec::NamespaceOptions {
                network: mode(ns.network),
                pid: mode(ns.pid),
                ipc: mode(ns.ipc),
                target_id: ns.target_id,
            },
            run_as_user: s.run_as_user.map(|v| v.value),
            run_as_group: s.run_as_group.map(|v| v.value),
            run_as_username: (!s.run_as_username.is_empty()).then_some(s.run_as_username),
            readonly_rootfs: s.readonly_rootfs,
            supplemental_groups: s.supplemental_groups,
            supplemental_groups_policy: match cri::SupplementalGroupsPolicy::try_from(
                s.supplemental_groups_policy,
            ) {
                Ok(cri::SupplementalGroupsPolicy::Strict) => {
                    rspec::SupplementalGroupsPolicy::Strict
                }
                _ => rspec::SupplementalGroupsPolicy::Merge,
            },
            no_new_privs: s.no_new_privs,
            seccomp,
            apparmor,
            masked_paths: (!s.masked_paths.is_empty()).then_some(s.masked_paths),
            readonly_paths: (!s.readonly_paths.is_empty()).then_some(s.readonly_paths),
        },
    })
}

/// CRI resources as the runtime crate's (used by CreateContainer and UpdateContainerResources).
pub(crate) fn resources(r: cri::LinuxContainerResources) -> rspec::Resources {
    rspec::Resources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus,
        cpuset_mems: r.cpuset_mems,
        hugepage_limits: r
            .hugepage_limits
            .into_iter()
            .map(|h| rspec::HugepageLimit {
                page_size: h.page_size,
                limit: h.limit,
            })
            .collect(),
        unified: r.unified.into_iter().collect(),
        memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
    }
}

/// What a container takes from its pod.
pub(crate) fn sandbox_info(pod: &SandboxRecord, pod_dir: &std::path::Path) -> rspec::SandboxInfo {
    let ns = |kind: &str, own: bool| own.then(|| pod_dir.join("ns").join(kind));
    let host_net = pod.spec.namespaces.network == PodMode::Node;
    let host_ipc = pod.spec.namespaces.ipc == PodMode::Node;
    rspec::SandboxInfo {
        id: pod.id.clone(),
        hostname: pod.spec.hostname.clone(),
        resolv_conf: Some(pod_dir.join("resolv.conf")),
        hosts: Some(pod_dir.join("hosts")),
        hostname_file: Some(pod_dir.join("hostname")),
        shm: (!host_ipc).then(|| pod_dir.join("shm")),
        net_ns: ns("net", !host_net),
        ipc_ns: ns("ipc", !host_ipc),
        uts_ns: ns("uts", !host_net),
        pid_ns: ns("pid", pod.spec.namespaces.pid == PodMode::Pod),
        cgroup_parent: pod.spec.cgroup_parent.clone(),
        privileged: pod.spec.privileged,
        userns: pod.spec.userns,
        user_ns: ns("user", pod.spec.userns.is_some()),
    }
}

pub(crate) fn cri_state(s: ContainerState) -> i32 {
    (match s {
        ContainerState::Created => cri::ContainerState::ContainerCreated,
        ContainerState::Running => cri::ContainerState::ContainerRunning,
        ContainerState::Exited => cri::ContainerState::ContainerExited,
        ContainerState::Unknown => cri::ContainerState::ContainerUnknown,
    }) as i32
}

pub(crate) fn cri_metadata(r: &ContainerRecord) -> cri::ContainerMetadata {
    cri::ContainerMetadata {
        name: r.config.metadata.name.clone(),
        attempt: r.config.metadata.attempt,
    }
}

pub(crate) fn cri_container(r: &ContainerRecord) -> cri::Container {
    cri::Container {
        id: r.id.clone(),
        pod_sandbox_id: r.sandbox_id.clone(),
        metadata: Some(cri_metadata(r)),
        image: Some(cri::ImageSpec {
            image: r.image.clone(),
            ..Default::default()
        }),
        image_ref: r.image_id.clone(),
        state: cri_state(r.state()),
        created_at: r.created_at,
        labels: r
            .config
            .labels
            .clone()
            .into_iter()
            .collect::<HashMap<_, _>>(),
        annotations: r
            .config
            .annotations
            .clone()
            .into_iter()
            .collect::<HashMap<_, _>>(),
        image_id: r.image_id.clone(),
    }
}

pub(crate) fn cri_container_status(r: &ContainerRecord) -> cri::ContainerStatus {
    let exit = r.exit.as_ref();
    cri::ContainerStatus {
        id: r.id.clone(),
        metadata: Some(cri_metadata(r)),
        state: cri_state(r.state()),
        created_at: r.created_at,
        started_at: r.started_at,
        finished_at: exit.map(|e| e.finished_at).unwrap_or(0),
        exit_code: exit.map(|e| e.exit_code).unwrap_or(0),
        image: Some(cri::ImageSpec {
            image: r.image.clone(),
            ..Default::default()
        }),
        image_ref: r.image_id.clone(),
        reason: exit.map(|e| e.reason.clone()).unwrap_or_default(),
        message: String::new(),
        labels: r.config.labels.clone().into_iter().collect(),
        annotations: r.config.annotations.clone().into_iter().collect(),
        mounts: r
            .config
            .mounts
            .iter()
            .map(|m| cri::Mount {
                container_path: m.container_path.display().to_string(),
                host_path: m.host_path.display().to_string(),
                readonly: m.readonly,
                recursive_read_only: m.recursive_read_only,
                selinux_relabel: m.selinux_relabel,
                image: m.image.as_ref().map(|i| cri::ImageSpec {
                    image: i.reference.clone(),
                    ..Default::default()
                }),
                propagation: (match m.propagation {
                    rspec::Propagation::Private => cri::MountPropagation::PropagationPrivate,
                    rspec::Propagation::HostToContainer => {
                        cri::MountPropagation::PropagationHostToContainer
                    }
                    rspec::Propagation::Bidirectional => {
                        cri::MountPropagation::PropagationBidirectional
                    }
                }) as i32,
                ..Default::default()
            })
            .collect(),
        log_path: r.log_path.display().to_string(),
        resources: Some(cri::ContainerResources {
            linux: Some(cri::LinuxContainerResources {
                cpu_period: r.config.resources.cpu_period,
                cpu_quota: r.config.resources.cpu_quota,
                cpu_shares: r.config.resources.cpu_shares,
                memory_limit_in_bytes: r.config.resources.memory_limit_in_bytes,
                oom_score_adj: r.config.resources.oom_score_adj,
                cpuset_cpus: r.config.resources.cpuset_cpus.clone(),
                cpuset_mems: r.config.resources.cpuset_mems.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        image_id: r.image_id.clone(),
        user: r.user.as_ref().map(|u| cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: u.uid as i64,
                gid: u.gid as i64,
                supplemental_groups: u.additional_gids.iter().map(|g| *g as i64).collect(),
            }),
        }),
    }
}

pub(crate) fn cri_value(v: Option<u64>) -> Option<cri::UInt64Value> {
    v.map(|value| cri::UInt64Value { value })
}

/// A cgroup's CPU as CRI reports it; the timestamp is always set.
pub(crate) fn cri_cpu(
    timestamp: i64,
    cgroup: &berth_runtime::cgroups::stats::CgroupStats,
    nano_cores: Option<u64>,
) -> cri::CpuUsage {
    cri::CpuUsage {
        timestamp,
        usage_core_nano_seconds: cri_value(cgroup.cpu_usage_ns),
        usage_nano_cores: cri_value(nano_cores),
    }
}

/// A cgroup's memory as CRI reports it; the timestamp is always set.
pub(crate) fn cri_memory(
    timestamp: i64,
    cgroup: &berth_runtime::cgroups::stats::CgroupStats,
) -> cri::MemoryUsage {
    let memory = cgroup.memory.as_ref();
    cri::MemoryUsage {
        timestamp,
        working_set_bytes: cri_value(memory.map(|m| m.working_set_bytes)),
        available_bytes: cri_value(memory.and_then(|m| m.available_bytes())),
        usage_bytes: cri_value(memory.map(|m| m.usage_bytes)),
        rss_bytes: cri_value(memory.map(|m| m.rss_bytes)),
        page_faults: cri_value(memory.map(|m| m.page_faults)),
        major_page_faults: cri_value(memory.map(|m| m.major_page_faults)),
    }
}

/// A usage sample as CRI `ContainerStats`. CPU and memory always carry the sample's timestamp
/// (kubelet and critest need it non-zero); a value the cgroup did not give is left unset.
pub(crate) fn cri_container_stats(
    r: &ContainerRecord,
    usage: &berth_podsandbox::container::ContainerUsage,
) -> cri::ContainerStats {
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: r.id.clone(),
            metadata: Some(cri_metadata(r)),
            labels: r.config.labels.clone().into_iter().collect(),
            annotations: r.config.annotations.clone().into_iter().collect(),
        }),
        cpu: Some(cri_cpu(usage.timestamp, &usage.cgroup, usage.nano_cores)),
        memory: Some(cri_memory(usage.timestamp, &usage.cgroup)),
        writable_layer: usage
            .writable_layer
            .map(|(layer, measured_at)| cri::FilesystemUsage {
                timestamp: measured_at,
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: r.layer_dir.join("upper").display().to_string(),
                }),
                used_bytes: cri_value(Some(layer.bytes)),
                inodes_used: cri_value(Some(layer.inodes)),
            }),
        swap: Some(cri::SwapUsage {
            timestamp: usage.timestamp,
            swap_available_bytes: None,
            swap_usage_bytes: cri_value(usage.cgroup.swap_usage_bytes),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seccomp_field_wins_over_the_deprecated_path() {
        use cri::security_profile::ProfileType;
        let field = |t: ProfileType, r: &str| cri::SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.into(),
        };
        let localhost = |p: &str| rspec::SeccompProfile::Localhost(PathBuf::from(p));
        let cases = [
            (None, "", rspec::SeccompProfile::Unset),
            (
                None,
                "runtime/default",
                rspec::SeccompProfile::RuntimeDefault,
            ),
            (
                None,
                "docker/default",
                rspec::SeccompProfile::RuntimeDefault,
            ),
            (None, "unconfined", rspec::SeccompProfile::Unconfined),
            (None, "localhost//etc/p.json", localhost("/etc/p.json")),
            (
                Some(field(ProfileType::RuntimeDefault, "")),
                "unconfined",
                rspec::SeccompProfile::RuntimeDefault,
            ),
            (
                Some(field(ProfileType::Unconfined, "")),
                "runtime/default",
                rspec::SeccompProfile::Unconfined,
            ),
            (
                Some(field(ProfileType::Localhost, "/p.json")),
                "",
                localhost("/p.json"),
            ),
        ];
        for (profile, path, want) in cases {
            assert_eq!(
                seccomp_profile(profile.as_ref(), path).unwrap(),
                want,
                "{profile:?} {path}"
            );
        }
        for bad in ["localhost/", "default", "runtime/other"] {
            assert!(seccomp_profile(None, bad).is_err(), "{bad}");
        }
        assert!(seccomp_profile(Some(&field(ProfileType::Localhost, "")), "").is_err());
    }

    #[test]
    fn apparmor_comes_from_the_field_else_the_deprecated_string() {
        use cri::security_profile::ProfileType;
        let field = |t: ProfileType, r: &str| cri::SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.to_string(),
        };
        let local = |n: &str| rspec::AppArmorProfile::Localhost(n.to_string());
        let cases = [
            (None, "", rspec::AppArmorProfile::Unset),
            (
                None,
                "runtime/default",
                rspec::AppArmorProfile::RuntimeDefault,
            ),
            (None, "unconfined", rspec::AppArmorProfile::Unconfined),
            (None, "localhost/deny-write", local("deny-write")),
            // The field wins over a bogus deprecated string, as critest's "prefer new field".
            (
                Some(field(ProfileType::Localhost, "localhost/audit")),
                "localhost/non-existent",
                local("audit"),
            ),
            (
                Some(field(ProfileType::Localhost, "audit")),
                "",
                local("audit"),
            ),
            (
                Some(field(ProfileType::Unconfined, "")),
                "runtime/default",
                rspec::AppArmorProfile::Unconfined,
            ),
        ];
        for (profile, deprecated, want) in cases {
            assert_eq!(
                apparmor_profile(profile.as_ref(), deprecated).unwrap(),
                want,
                "{profile:?} {deprecated}"
            );
        }
        for bad in ["localhost/", "docker/default", "other"] {
            assert!(apparmor_profile(None, bad).is_err(), "{bad}");
        }
        assert!(apparmor_profile(Some(&field(ProfileType::Localhost, "")), "").is_err());
    }

    #[test]
    fn a_log_path_joins_the_pod_log_directory() {
        assert_eq!(
            log_file("/var/log/pods/ns_pod_uid", "app/0.log").unwrap(),
            "/var/log/pods/ns_pod_uid/app/0.log"
        );
        assert_eq!(log_file("", "app/0.log").unwrap(), "");
        assert_eq!(log_file("/var/log/pods/x", "").unwrap(), "");
    }

    #[test]
    fn a_log_path_that_leaves_the_directory_is_invalid() {
        for bad in ["/etc/passwd", "../../etc/cron.d/x", "app/../../x", ".."] {
            let e = log_file("/var/log/pods/x", bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(e.message().contains(bad), "{}", e.message());
        }
    }
}
