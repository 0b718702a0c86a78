//! CRI container config → OCI runtime spec, as pure functions.
//!
//! [`generate`] composes small rules, one module each, that follow containerd's CRI plugin
//! (`internal/cri/server/container_create*.go`, `internal/cri/opts/spec*.go`) unless a comment
//! says otherwise: `command` (argv, env, cwd), `user`, `mounts`, `namespaces`, `resources`,
//! `devices`, `security`. The output is what `berthd init` hands to libcontainer 0.7 as
//! `config.json`; nothing here touches the host except the probes in `host` and `devices`.

pub mod command;
pub mod devices;
mod host;
pub use host::recursive_read_only_supported;
pub mod apparmor;
pub mod input;
pub mod mounts;
pub mod namespaces;
pub mod paths;
pub mod resources;
pub mod seccomp;
pub mod security;
pub mod user;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Linux, Process, Root, Spec, User};

pub use input::{
    AppArmorProfile, CapabilityChanges, CgroupV1Hierarchy, ContainerMetadata, ContainerSpec,
    Device, DeviceKind, DeviceNode, EnvVar, HostInfo, HugepageLimit, IdMapping, ImageConfig, Mount,
    MountImage, NamespaceMode, NamespaceOptions, Propagation, Resources, SandboxInfo,
    SeccompProfile, SecurityContext, SpecInput, SupplementalGroupsPolicy, UserNamespace,
};

/// The runtime-spec version written into `ociVersion` (libcontainer accepts any 1.x).
pub const OCI_VERSION: &str = "1.2.0";

/// Why a container's spec cannot be generated; each message names what the config got wrong.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("no command: the container config has no command or args and the image has no Entrypoint or Cmd")]
    NoCommand,
    #[error("user {name:?} not found: {}", if *no_file { "the image has no /etc/passwd" } else { "not in the image's /etc/passwd" })]
    UnknownUser { name: String, no_file: bool },
    #[error("group {name:?} not found: {}", if *no_file { "the image has no /etc/group" } else { "not in the image's /etc/group" })]
    UnknownGroup { name: String, no_file: bool },
    #[error("user group is specified without user: run_as_group needs run_as_user, run_as_username, or an image user given as a uid")]
    GroupWithoutUser,
    #[error("invalid user: {0}")]
    InvalidUser(String),
    #[error("unknown capability {0:?}")]
    UnknownCapability(String),
    #[error("mount {}: {reason}", path.display())]
    InvalidMount { path: PathBuf, reason: String },
    #[error("device {}: {reason}", path.display())]
    InvalidDevice { path: PathBuf, reason: String },
    #[error("{0}")]
    MissingNamespace(String),
    #[error("invalid resources: {0}")]
    InvalidResource(String),
    #[error("privileged container in pod {0}, which is not privileged")]
    PrivilegedNotAllowed(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("seccomp profile {}: {reason}", path.display())]
    InvalidSeccomp { path: PathBuf, reason: String },
}

/// Annotations containerd sets on every container, which tools (and NRI plugins) look for.
const ANNOTATION_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const ANNOTATION_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
const ANNOTATION_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";

/// The OCI spec of one container. Pure: every host fact comes in through `input`.
pub fn generate(input: &SpecInput<'_>) -> Result<Spec, SpecError> {
    let config = input.config;
    let security = &config.security;
    let sandbox = input.sandbox;
    let host = input.host;
    // containerd: "no privileged container allowed in sandbox".
    if security.privileged && !sandbox.privileged {
        return Err(SpecError::PrivilegedNotAllowed(sandbox.id.clone()));
    }

    let hostname = if sandbox.hostname.is_empty() {
        &host.hostname
    } else {
        &sandbox.hostname
    };
    let resolved = user::resolve_user(
        security,
        &input.image.user,
        input.etc_passwd,
        input.etc_group,
    )?;
    let mut process_user = User::default();
    process_user.set_uid(resolved.uid);
    process_user.set_gid(resolved.gid);
    process_user.set_additional_gids(Some(resolved.additional_gids));

    let mut process = Process::default();
    process.set_terminal(Some(config.tty));
    process.set_console_size(None);
    process.set_user(process_user);
    process.set_args(Some(command::process_args(
        &config.command,
        &config.args,
        input.image,
    )?));
    process.set_env(Some(command::process_env(
        &input.image.env,
        &config.envs,
        hostname,
        config.tty,
    )));
    process.set_cwd(command::working_dir(
        &config.working_dir,
        &input.image.working_dir,
    ));
    let capabilities = security::capabilities(
        &security.capabilities,
        security.privileged,
        &host.capabilities,
    )?;
    let bounding = capabilities.bounding().clone().unwrap_or_default();
    process.set_capabilities(Some(capabilities));
    // containerd removes the default RLIMIT_NOFILE: the container inherits the runtime's.
    process.set_rlimits(None);
    // Only ever `Some(true)`: libcontainer loads a seccomp filter late (after dropping
    // capabilities, where only no_new_privs allows it) whenever the field is present at all.
    process.set_no_new_privileges(security.no_new_privs.then_some(true));
    process.set_oom_score_adj(Some(resources::oom_score_adj(
        config.resources.oom_score_adj,
        host.min_oom_score_adj,
    )?));
    process.set_apparmor_profile(input.apparmor_profile.map(str::to_string));
    process.set_selinux_label(None);

    let mut plan = mounts::plan_mounts(config, sandbox, security.privileged)?;
    let cgroups_path = resources::cgroups_path(
        host.cgroup_driver,
        &sandbox.cgroup_parent,
        input.container_id,
    )?;
    if !host.cgroup_v2 {
        cgroup_v1_layout(&mut plan, host, &cgroups_path, security.privileged);
    }
    let (device_nodes, device_rules) =
        devices::devices(&config.devices, input.device_nodes, security.privileged)?;
    let mut linux_resources = resources::resources(&config.resources, host)?;
    linux_resources.set_devices(Some(device_rules));

    let mut linux = Linux::default();
    // The pod's user namespace exists already (the executor joins it): its mapping is stated
    // for what reads the spec, not written again.
    let mapping = |m: &IdMapping| -> Result<Vec<oci_spec::runtime::LinuxIdMapping>, SpecError> {
        oci_spec::runtime::LinuxIdMappingBuilder::default()
            .container_id(m.container_id)
            .host_id(m.host_id)
            .size(m.length)
            .build()
            .map(|one| vec![one])
            .map_err(|e| SpecError::Unsupported(format!("id mapping {m:?}: {e}")))
    };
    linux.set_uid_mappings(
        sandbox
            .userns
            .as_ref()
            .map(|u| mapping(&u.uids))
            .transpose()?,
    );
    linux.set_gid_mappings(
        sandbox
            .userns
            .as_ref()
            .map(|u| mapping(&u.gids))
            .transpose()?,
    );
    linux.set_sysctl(None);
    linux.set_resources(Some(linux_resources));
    linux.set_cgroups_path(Some(cgroups_path));
    linux.set_namespaces(Some(namespaces::namespaces(
        &security.namespace_options,
        sandbox,
        input.target_pid_namespace,
        host.cgroup_v2,
        security.privileged,
    )?));
    linux.set_devices(Some(device_nodes));
    linux.set_seccomp(seccomp::for_container(
        &security.seccomp,
        &host.default_seccomp,
        security.privileged,
        &bounding,
        input.seccomp_localhost,
    )?);
    linux.set_rootfs_propagation(plan.rootfs_propagation);
    linux.set_masked_paths(Some(security::masked_paths(security)));
    linux.set_readonly_paths(Some(security::readonly_paths(security)));
    linux.set_mount_label(None);

    let mut root = Root::default();
    root.set_path(input.rootfs.to_path_buf());
    root.set_readonly(Some(security.readonly_rootfs));

    let mut annotations: HashMap<String, String> = config.annotations.clone().into_iter().collect();
    annotations.insert(ANNOTATION_CONTAINER_TYPE.into(), "container".into());
    annotations.insert(ANNOTATION_SANDBOX_ID.into(), sandbox.id.clone());
    annotations.insert(
        ANNOTATION_CONTAINER_NAME.into(),
        config.metadata.name.clone(),
    );

    let mut spec = Spec::default();
    spec.set_version(OCI_VERSION.to_string());
    spec.set_root(Some(root));
    spec.set_mounts(Some(plan.mounts));
    spec.set_process(Some(process));
    // The container shares the pod's UTS namespace; its hostname is the pod's.
    spec.set_hostname(None);
    spec.set_domainname(None);
    spec.set_hooks(None);
    spec.set_annotations(Some(annotations));
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// On a v1 host, the default `cgroup` mount at `/sys/fs/cgroup` (unless a bind replaced it)
/// becomes berth's own layout of the container's cgroups (`mounts::cgroup_v1_mounts`).
fn cgroup_v1_layout(
    plan: &mut mounts::MountPlan,
    host: &HostInfo,
    cgroups_path: &Path,
    privileged: bool,
) {
    let Some(at) = plan.mounts.iter().position(|m| {
        m.destination() == Path::new("/sys/fs/cgroup") && m.typ().as_deref() == Some("cgroup")
    }) else {
        return;
    };
    // On v1 libcontainer's cgroup manager is its cgroupfs one whatever the driver: the
    // container's cgroup is `<hierarchy>/<cgroupsPath>` (a systemd-form path too, as a name).
    let layout = mounts::cgroup_v1_mounts(&host.cgroup_v1, cgroups_path, privileged);
    plan.mounts.splice(at..=at, layout);
}

#[cfg(test)]
mod tests;
