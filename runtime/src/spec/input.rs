//! What spec generation is given. The CRI layer translates `ContainerConfig` into
//! [`ContainerSpec`]; the sandbox, image and host facts come from their own crates or from a
//! probe, so nothing here knows CRI message types.
//!
//! Numbers keep CRI's convention where it has one: a zero resource value means "not set".

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Capabilities;
use serde::{Deserialize, Serialize};

use crate::CgroupDriver;

/// A container as kubelet asks for it (CRI `ContainerConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub metadata: ContainerMetadata,
    /// Replaces the image's Entrypoint (and drops its Cmd) when not empty.
    pub command: Vec<String>,
    /// Replaces the image's Cmd when not empty.
    pub args: Vec<String>,
    /// Empty: the image's WorkingDir, else `/`.
    pub working_dir: String,
    pub envs: Vec<EnvVar>,
    pub mounts: Vec<Mount>,
    pub devices: Vec<Device>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub log_path: String,
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    pub resources: Resources,
    pub security: SecurityContext,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ContainerMetadata {
    pub name: String,
    pub attempt: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EnvVar {
    pub key: String,
    pub value: String,
}

/// A bind mount from the host (CRI `Mount`). `selinux_relabel` is carried but not acted on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute path inside the container.
    pub container_path: PathBuf,
    /// Used as given: the caller resolves symlinks and creates a missing directory first, as
    /// containerd does before it writes the spec.
    pub host_path: PathBuf,
    pub readonly: bool,
    /// Read-only all the way down: submounts of the source too (`rro`, mount_setattr with
    /// AT_RECURSIVE). Needs `readonly` and private propagation.
    #[serde(default)]
    pub recursive_read_only: bool,
    pub propagation: Propagation,
    pub selinux_relabel: bool,
    /// An image volume: this image mounted read-only. The agent mounts it and fills in
    /// `host_path` before the spec is generated.
    #[serde(default)]
    pub image: Option<MountImage>,
    /// An idmapped mount (kubelet sets these for a pod with its own user namespace): the
    /// source's owners as seen through the mapping. Empty: a plain bind.
    #[serde(default)]
    pub uid_mappings: Vec<IdMapping>,
    #[serde(default)]
    pub gid_mappings: Vec<IdMapping>,
}

/// One range of a user namespace's (or an idmapped mount's) mapping: `length` ids from
/// `container_id` inside are `host_id`… outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IdMapping {
    pub container_id: u32,
    pub host_id: u32,
    pub length: u32,
}

impl IdMapping {
    /// The line `/proc/<pid>/uid_map` takes.
    pub fn map_line(&self) -> String {
        format!("{} {} {}\n", self.container_id, self.host_id, self.length)
    }

    /// The host id `id` inside stands for, if the range holds it.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        let offset = id.checked_sub(self.container_id)?;
        (offset < self.length).then(|| self.host_id + offset)
    }
}

/// A pod's own user namespace (CRI `UserNamespace`, mode POD): one range each for users and
/// groups, container id 0 mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UserNamespace {
    pub uids: IdMapping,
    pub gids: IdMapping,
}

impl UserNamespace {
    /// The host uid and gid of the namespace's root (container id 0, which [`check`] ensures
    /// is mapped).
    ///
    /// [`check`]: UserNamespace::check
    pub fn root_on_host(&self) -> (u32, u32) {
        (
            self.uids.to_host(0).unwrap_or(0),
            self.gids.to_host(0).unwrap_or(0),
        )
    }

    /// Checks what the kernel and the CRI ask of a pod's mapping; the message says what is wrong.
    pub fn check(uids: &[IdMapping], gids: &[IdMapping]) -> Result<UserNamespace, String> {
        let one = |kind: &str, list: &[IdMapping]| -> Result<IdMapping, String> {
            let [m] = list else {
                return Err(format!(
                    "a pod's user namespace takes exactly one {kind} mapping, got {}",
                    list.len()
                ));
            };
            if m.length == 0 {
                return Err(format!("the {kind} mapping has length 0"));
            }
            if m.container_id.checked_add(m.length - 1).is_none()
                || m.host_id.checked_add(m.length - 1).is_none()
            {
                return Err(format!("the {kind} mapping {m:?} overflows 32 bits"));
            }
            if m.to_host(0).is_none() {
                return Err(format!(
                    "the {kind} mapping {m:?} leaves container id 0 unmapped"
                ));
            }
            Ok(*m)
        };
        Ok(UserNamespace {
            uids: one("uid", uids)?,
            gids: one("gid", gids)?,
        })
    }
}

/// The image of an image volume.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MountImage {
    /// As the CRI named it (kubelet passes the id PullImage returned).
    pub reference: String,
    /// The image id it resolved to.
    pub id: String,
    /// `image_sub_path`: only this path inside the image is mounted ("" the whole image).
    #[serde(default)]
    pub sub_path: String,
}

/// CRI `MountPropagation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Propagation {
    /// `rprivate`.
    #[default]
    Private,
    /// `rslave`: mounts made on the host later appear in the container.
    HostToContainer,
    /// `rshared`: mounts propagate both ways.
    Bidirectional,
}

/// A host device made available in the container (CRI `Device`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Device {
    pub container_path: PathBuf,
    /// A device node; its numbers come from a matching [`DeviceNode`] given to `generate`.
    pub host_path: PathBuf,
    /// Cgroup access: any of `r`, `w`, `m`.
    pub permissions: String,
}

/// A device node on the host, as `stat(2)` describes it (see `devices::stat_device`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceNode {
    pub path: PathBuf,
    pub kind: DeviceKind,
    pub major: i64,
    pub minor: i64,
    /// Permission bits, without the file type.
    pub file_mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Char,
    Block,
}

/// CRI `LinuxContainerResources`; zero means "not set" for every number but `oom_score_adj`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    pub memory_limit_in_bytes: i64,
    pub oom_score_adj: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    pub hugepage_limits: Vec<HugepageLimit>,
    /// cgroup v2 files and values, copied as they are.
    pub unified: BTreeMap<String, String>,
    pub memory_swap_limit_in_bytes: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HugepageLimit {
    /// For example `2MB`, `1GB`.
    pub page_size: String,
    pub limit: u64,
}

/// CRI `LinuxContainerSecurityContext`, the parts berth acts on so far.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SecurityContext {
    pub capabilities: CapabilityChanges,
    pub privileged: bool,
    pub namespace_options: NamespaceOptions,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_username: Option<String>,
    pub readonly_rootfs: bool,
    pub supplemental_groups: Vec<i64>,
    pub supplemental_groups_policy: SupplementalGroupsPolicy,
    pub no_new_privs: bool,
    /// The seccomp profile asked for (`seccomp`, else the deprecated `seccomp_profile_path`).
    #[serde(default)]
    pub seccomp: SeccompProfile,
    /// The AppArmor profile asked for (`apparmor`, else the deprecated `apparmor_profile`).
    #[serde(default)]
    pub apparmor: AppArmorProfile,
    /// `None`: containerd's default list. `Some(vec![])`: nothing masked (`procMount: Unmasked`).
    pub masked_paths: Option<Vec<String>>,
    /// `None`: containerd's default list. `Some(vec![])`: nothing read-only.
    pub readonly_paths: Option<Vec<String>>,
}

/// A container's seccomp profile as the CRI asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompProfile {
    /// Nothing asked: `[runtime] default_seccomp` decides.
    #[default]
    Unset,
    Unconfined,
    /// Berth's own default profile (`spec::seccomp::runtime_default`).
    RuntimeDefault,
    /// An OCI-format JSON profile at this host path (absolute).
    Localhost(PathBuf),
}

/// A container's AppArmor profile as the CRI asks for it (`apparmor::decide` makes it a name).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppArmorProfile {
    /// Nothing asked: berth's default where AppArmor is enabled, as containerd.
    #[default]
    Unset,
    Unconfined,
    /// berth's own default profile (`apparmor::DEFAULT_PROFILE`).
    RuntimeDefault,
    /// A profile already loaded on the host, by name.
    Localhost(String),
}

impl std::fmt::Display for AppArmorProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppArmorProfile::Unset => f.write_str("(unset)"),
            AppArmorProfile::Unconfined => f.write_str("unconfined"),
            AppArmorProfile::RuntimeDefault => f.write_str("runtime/default"),
            AppArmorProfile::Localhost(name) => write!(f, "localhost/{name}"),
        }
    }
}

/// Capability names as Kubernetes writes them: with or without `CAP_`, any case, or `ALL`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CapabilityChanges {
    pub add: Vec<String>,
    pub drop: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NamespaceOptions {
    pub network: NamespaceMode,
    pub pid: NamespaceMode,
    pub ipc: NamespaceMode,
    /// For `pid: Target`: the container whose PID namespace to join. The caller resolves it to
    /// a namespace path (`SpecInput::target_pid_namespace`).
    pub target_id: String,
}

/// CRI `NamespaceMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceMode {
    #[default]
    Pod,
    Container,
    Node,
    Target,
}

/// CRI `SupplementalGroupsPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SupplementalGroupsPolicy {
    /// The groups that list the user in the image's /etc/group, plus `supplemental_groups`.
    #[default]
    Merge,
    /// Only `supplemental_groups` (and the primary group).
    Strict,
}

/// What the container takes from its pod sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SandboxInfo {
    pub id: String,
    /// The pod's hostname, for the `HOSTNAME` variable; empty: the node's.
    pub hostname: String,
    /// The pod's files, bind-mounted at the same names under /etc; `None`: the pod has none.
    pub resolv_conf: Option<PathBuf>,
    pub hosts: Option<PathBuf>,
    pub hostname_file: Option<PathBuf>,
    /// The pod's /dev/shm tmpfs; `None` when the pod uses the host's IPC namespace.
    pub shm: Option<PathBuf>,
    /// Pinned namespaces of the pod; `None`: the pod uses the host's.
    pub net_ns: Option<PathBuf>,
    pub ipc_ns: Option<PathBuf>,
    pub uts_ns: Option<PathBuf>,
    /// Only when the pod shares one PID namespace among its containers.
    pub pid_ns: Option<PathBuf>,
    /// From the pod config; the container's cgroup goes under it.
    pub cgroup_parent: String,
    /// Whether the pod may run privileged containers.
    pub privileged: bool,
    /// The pod's own user namespace, pinned at `user_ns`; `None`: the host's.
    #[serde(default)]
    pub userns: Option<UserNamespace>,
    #[serde(default)]
    pub user_ns: Option<PathBuf>,
}

/// The parts of the image's config a container starts from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    pub working_dir: String,
    /// `uid`, `uid:gid`, `name` or `name:group`; empty: root.
    pub user: String,
    /// Not part of the spec: StopContainer uses it.
    pub stop_signal: String,
}

impl From<&oci_spec::image::Config> for ImageConfig {
    fn from(config: &oci_spec::image::Config) -> ImageConfig {
        ImageConfig {
            entrypoint: config.entrypoint().clone().unwrap_or_default(),
            cmd: config.cmd().clone().unwrap_or_default(),
            env: config.env().clone().unwrap_or_default(),
            working_dir: config.working_dir().clone().unwrap_or_default(),
            user: config.user().clone().unwrap_or_default(),
            stop_signal: config.stop_signal().clone().unwrap_or_default(),
        }
    }
}

impl From<&oci_spec::image::ImageConfiguration> for ImageConfig {
    fn from(image: &oci_spec::image::ImageConfiguration) -> ImageConfig {
        image
            .config()
            .as_ref()
            .map(ImageConfig::from)
            .unwrap_or_default()
    }
}

/// A v1 controller hierarchy as the host mounts it: `/sys/fs/cgroup/cpu,cpuacct`, with the
/// controllers `cpu` and `cpuacct`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupV1Hierarchy {
    pub mountpoint: PathBuf,
    pub controllers: Vec<String>,
}

/// Facts about the host that change what is allowed; see `HostInfo::probe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// The node's hostname, for pods that give none.
    pub hostname: String,
    /// The lowest `oom_score_adj` our processes may set: our own value when we lack
    /// CAP_SYS_RESOURCE (lowering it needs that capability), else -1000.
    pub min_oom_score_adj: i32,
    pub cgroup_driver: CgroupDriver,
    /// `/sys/fs/cgroup` is cgroup2 alone (not hybrid): containers get a cgroup namespace.
    pub cgroup_v2: bool,
    /// The v1 controller hierarchies mounted under `/sys/fs/cgroup` (none on a v2 host); named
    /// ones (`name=systemd`) are left out.
    pub cgroup_v1: Vec<CgroupV1Hierarchy>,
    /// Memory+swap can be limited (`memory.memsw.*` on v1, `memory.swap.max` on v2).
    pub swap_controller: bool,
    /// The hugetlb controller is where the executor will look for it.
    pub hugetlb_controller: bool,
    /// Our effective capabilities: what a privileged container or `add: [ALL]` gets.
    pub capabilities: Capabilities,
    /// What a container that asks for no seccomp profile gets (`[runtime] default_seccomp`).
    pub default_seccomp: SeccompProfile,
}

/// Everything `generate` reads, borrowed from the caller.
#[derive(Debug, Clone, Copy)]
pub struct SpecInput<'a> {
    pub container_id: &'a str,
    /// The container's root filesystem on the host (absolute).
    pub rootfs: &'a Path,
    pub config: &'a ContainerSpec,
    pub sandbox: &'a SandboxInfo,
    pub image: &'a ImageConfig,
    /// The container's /etc/passwd and /etc/group; `None` when the image has no such file.
    pub etc_passwd: Option<&'a str>,
    pub etc_group: Option<&'a str>,
    /// Host device nodes: at least those `config.devices` name, and for a privileged container
    /// every node of the host's /dev (see `devices::nodes_for`).
    pub device_nodes: &'a [DeviceNode],
    /// For `pid: Target`: the target container's PID namespace (`/proc/<pid>/ns/pid`).
    pub target_pid_namespace: Option<&'a Path>,
    /// The parsed file of a `Localhost` seccomp profile (`seccomp::parse_profile`).
    pub seccomp_localhost: Option<&'a oci_spec::runtime::LinuxSeccomp>,
    /// The AppArmor profile to run under (`apparmor::resolve`), or `None` for unconfined.
    pub apparmor_profile: Option<&'a str>,
    pub host: &'a HostInfo,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(container_id: u32, host_id: u32, length: u32) -> IdMapping {
        IdMapping {
            container_id,
            host_id,
            length,
        }
    }

    #[test]
    fn a_pod_mapping_is_one_range_with_container_id_0() {
        let good = range(0, 1000, 100000);
        let userns = UserNamespace::check(&[good], &[good]).unwrap();
        assert_eq!(userns.uids.to_host(0), Some(1000));
        assert_eq!(userns.gids.to_host(99999), Some(100999));
        assert_eq!(userns.gids.to_host(100000), None);
        assert_eq!(good.map_line(), "0 1000 100000\n");

        let two = UserNamespace::check(&[good, range(0, 2000, 100000)], &[good]);
        assert!(two.unwrap_err().contains("exactly one uid mapping, got 2"));
        let none = UserNamespace::check(&[good], &[]);
        assert!(none.unwrap_err().contains("exactly one gid mapping, got 0"));
        let unmapped = UserNamespace::check(&[range(1, 1000, 100000)], &[good]);
        assert!(unmapped.unwrap_err().contains("container id 0 unmapped"));
        let empty = UserNamespace::check(&[range(0, 1000, 0)], &[good]);
        assert!(empty.unwrap_err().contains("length 0"));
        let overflow = UserNamespace::check(&[range(0, u32::MAX, 2)], &[good]);
        assert!(overflow.unwrap_err().contains("overflows"));
    }
}
