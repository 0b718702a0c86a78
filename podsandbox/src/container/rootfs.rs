//! CreateContainer's build: the rootfs (an overlay of the image's snapshots with a writable
//! upper dir), the bundle with its generated `config.json`, and the container built (not
//! started) by the pod's monitor.

use std::path::{Path, PathBuf};

use berth_runtime::monitor::protocol::Request;
use berth_runtime::spec::{self, ContainerSpec, ImageConfig, SandboxInfo, SpecInput};
use nix::mount::{mount, MsFlags};

use super::metrics::UserNamespaceMount;
use super::record::{ContainerError, ContainerRecord, ProcessUser, EXIT_FILE};
use super::Containers;
use crate::monitor_client;

/// The most of an image's /etc/passwd or /etc/group that CreateContainer reads.
pub const IMAGE_FILE_CAP: u64 = 8 << 20;

/// The image's file `path` (relative, say `etc/passwd`) in the container's `rootfs`, resolved as
/// if `rootfs` were `/` (an absolute symlink or `..` cannot leave it; openat2 RESOLVE_IN_ROOT),
/// opened without blocking (a FIFO), and read only if it is a regular file of at most
/// [`IMAGE_FILE_CAP`] bytes: the image decides what the path is, the agent must not hang on it
/// or read a device forever. `None` if the image has no such file.
pub fn read_image_file(rootfs: &Path, path: &str) -> Result<Option<String>, String> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let shown = format!("/{path}");
    let root =
        std::fs::File::open(rootfs).map_err(|e| format!("open {}: {e}", rootfs.display()))?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = match openat2(root.as_raw_fd(), path, how) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) | Err(nix::errno::Errno::ENOTDIR) => return Ok(None),
        Err(e) => return Err(format!("image file {shown}: {e}")),
    };
    // SAFETY: openat2 just returned this descriptor; nothing else owns it.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let meta = file
        .metadata()
        .map_err(|e| format!("image file {shown}: {e}"))?;
    if !meta.file_type().is_file() {
        return Err(format!("image file {shown} is not a regular file"));
    }
    if meta.len() > IMAGE_FILE_CAP {
        return Err(format!(
            "image file {shown} is larger than {} MiB",
            IMAGE_FILE_CAP >> 20
        ));
    }
    let mut bytes = Vec::new();
    // A file that grows after the check is still cut at the cap.
    file.take(IMAGE_FILE_CAP)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("read image file {shown}: {e}"))?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Everything `create` needs, gathered by the CRI layer.
pub struct CreateInput {
    pub sandbox_id: String,
    pub pod_dir: PathBuf,
    pub sandbox: SandboxInfo,
    pub config: ContainerSpec,
    pub image: String,
    pub image_id: String,
    pub image_config: ImageConfig,
    /// The image's unpacked layers, bottom first.
    pub layers: Vec<PathBuf>,
    /// Image volumes: the index of the mount in `config.mounts`, and its image's layers,
    /// bottom first.
    pub image_volumes: Vec<(usize, Vec<PathBuf>)>,
}

/// Where a container's image volumes are mounted: `<container state dir>/volumes/<index>`.
const VOLUMES_DIR: &str = "volumes";

/// overlayfs's `lowerdir=` option for `layers` (bottom first): its first entry is the top layer.
fn lowerdir(layers: &[PathBuf]) -> String {
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    format!("lowerdir={}", lower.join(":"))
}

/// Mounts an image volume read-only at `<dir>/volumes/<index>`: the one layer bound, or an
/// overlay of its layers with no upper dir.
fn mount_image_volume(dir: &Path, index: usize, layers: &[PathBuf]) -> Result<PathBuf, String> {
    let target = dir.join(VOLUMES_DIR).join(index.to_string());
    std::fs::create_dir_all(&target).map_err(|e| format!("create {}: {e}", target.display()))?;
    let mounted = match layers {
        [] => return Err("the image has no layers".into()),
        [only] => mount(
            Some(only.as_path()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .and_then(|()| {
            mount(
                None::<&str>,
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
        }),
        _ => {
            let options = lowerdir(layers);
            mount(
                Some("overlay"),
                &target,
                Some("overlay"),
                MsFlags::MS_RDONLY,
                Some(options.as_str()),
            )
        }
    };
    mounted.map_err(|e| format!("mount the image volume at {}: {e}", target.display()))?;
    Ok(target)
}

/// An empty directory or file at `target` (its parents made), for a mount of that kind.
fn mount_point(target: &Path, dir: bool) -> Result<(), String> {
    let made = if dir {
        std::fs::create_dir_all(target)
    } else {
        target
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::File::create(target).map(drop))
    };
    made.map_err(|e| format!("create {}: {e}", target.display()))
}

enum SubPathError {
    /// What the request asked for cannot be: InvalidArgument.
    Invalid(String),
    Failed(String),
}

/// An image volume's `image_sub_path`, resolved inside the volume mounted at `volume` as if it
/// were `/` (the image's symlinks and `..` cannot leave it: openat2 RESOLVE_IN_ROOT), and
/// mounted on its own at `<volume>.sub`, a copy of the mount tree at what it resolved to.
/// Handing libcontainer the joined path instead would have it follow the image's symlinks on
/// the host.
fn mount_sub_path(volume: &Path, sub_path: &str) -> Result<PathBuf, SubPathError> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    let relative = Path::new(sub_path);
    if relative.is_absolute()
        || relative
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(SubPathError::Invalid(format!(
            "image_sub_path {sub_path:?} must be relative, without \"..\""
        )));
    }
    let root = std::fs::File::open(volume)
        .map_err(|e| SubPathError::Failed(format!("open {}: {e}", volume.display())))?;
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = match openat2(std::os::fd::AsRawFd::as_raw_fd(&root), relative, how) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) | Err(nix::errno::Errno::ENOTDIR) => {
            return Err(SubPathError::Invalid(format!(
                "image_sub_path {sub_path:?} does not exist in the image"
            )))
        }
        Err(e) => {
            return Err(SubPathError::Failed(format!(
                "image_sub_path {sub_path:?}: {e}"
            )))
        }
    };
    // SAFETY: openat2 just returned this descriptor; nothing else owns it.
    let at = unsafe { OwnedFd::from_raw_fd(fd) };
    let is_dir = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&at))
        .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
        .map_err(|e| SubPathError::Failed(format!("image_sub_path {sub_path:?}: {e}")))?;
    let mut target = volume.as_os_str().to_owned();
    target.push(".sub");
    let target = PathBuf::from(target);
    mount_point(&target, is_dir).map_err(SubPathError::Failed)?;
    berth_runtime::idmap::clone_tree_at(at.as_fd())
        .and_then(|tree| berth_runtime::idmap::attach(tree.as_fd(), &target))
        .map_err(|e| SubPathError::Failed(format!("mount image_sub_path {sub_path:?}: {e}")))?;
    Ok(target)
}

/// Where the idmapped copies of the image's layers are mounted while the rootfs overlay of a
/// container in a user namespace is made: `<container state dir>/idmapped-layers/<n>`.
const IDMAPPED_LAYERS_DIR: &str = "idmapped-layers";

/// Unmounts whatever the agent mounted in the container's `dir`: image volumes, prepared binds
/// and idmapped layers.
pub(super) fn unmount_bundle_mounts(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir.join(VOLUMES_DIR)) {
        for entry in entries.flatten() {
            // A bind of a layer stays mounted until every one of its mounts is gone.
            while nix::mount::umount2(&entry.path(), nix::mount::MntFlags::MNT_DETACH).is_ok() {}
        }
    }
    // Left only by a create a crash cut short between the layers' mounts and the overlay's.
    unmount_idmapped_layers(dir);
}

/// The pod's user namespace, open, with its mapping: what idmaps a container's mounts.
struct PodUserNamespace {
    ns: std::fs::File,
    ranges: spec::UserNamespace,
}

impl PodUserNamespace {
    fn of(sandbox: &SandboxInfo) -> Result<Option<PodUserNamespace>, String> {
        let (Some(path), Some(ranges)) = (&sandbox.user_ns, sandbox.userns) else {
            return Ok(None);
        };
        let ns = std::fs::File::open(path)
            .map_err(|e| format!("open the pod's user namespace {}: {e}", path.display()))?;
        Ok(Some(PodUserNamespace { ns, ranges }))
    }

    /// Idmapped copies of `layers` mounted under `<dir>/idmapped-layers`, in the same order:
    /// overlayfs takes idmapped lower layers (not an idmapped overlay), so the image's files
    /// show as the pod's, while the upper dir records the mapped ids as written.
    fn map_layers(
        &self,
        dir: &Path,
        layers: &[PathBuf],
        metrics: &super::metrics::ContainerMetrics,
    ) -> Result<Vec<PathBuf>, String> {
        use std::os::fd::AsFd;
        let mut mapped = Vec::with_capacity(layers.len());
        for (n, layer) in layers.iter().enumerate() {
            let target = dir.join(IDMAPPED_LAYERS_DIR).join(n.to_string());
            std::fs::create_dir_all(&target)
                .map_err(|e| format!("create {}: {e}", target.display()))?;
            berth_runtime::idmap::idmapped_clone(layer, self.ns.as_fd(), false)
                .and_then(|tree| berth_runtime::idmap::attach(tree.as_fd(), &target))
                .map_err(|e| format!("idmapped mount of layer {}: {e}", layer.display()))?;
            metrics.user_namespace_mount(UserNamespaceMount::Layer);
            mapped.push(target);
        }
        Ok(mapped)
    }

    /// Every bind mount of the container made here, from the host, at `<dir>/volumes/<index>`
    /// (idmapped when kubelet gave it the pod's ranges): the container's root has no privilege
    /// over the host's directories, and could neither reach nor idmap their sources itself.
    fn prepare_binds(
        &self,
        dir: &Path,
        mounts: &mut [spec::Mount],
        metrics: &super::metrics::ContainerMetrics,
    ) -> Result<(), String> {
        use std::os::fd::AsFd;
        for (index, m) in mounts.iter_mut().enumerate() {
            if m.image.is_some() {
                continue; // already at <dir>/volumes/<index>, mounted by the agent
            }
            let target = dir.join(VOLUMES_DIR).join(index.to_string());
            let source = &m.host_path;
            mount_point(&target, source.is_dir())?;
            let (tree, kind) = if m.uid_mappings.is_empty() {
                (
                    berth_runtime::idmap::clone_tree(source, true),
                    UserNamespaceMount::Plain,
                )
            } else {
                (
                    berth_runtime::idmap::idmapped_clone(source, self.ns.as_fd(), true),
                    UserNamespaceMount::Idmapped,
                )
            };
            tree.and_then(|tree| berth_runtime::idmap::attach(tree.as_fd(), &target))
                .map_err(|e| format!("mount {}: {e}", source.display()))?;
            metrics.user_namespace_mount(kind);
            m.host_path = target;
        }
        Ok(())
    }
}

/// Detaches the idmapped layers once the overlay holds its own references to them.
fn unmount_idmapped_layers(dir: &Path) {
    let layers = dir.join(IDMAPPED_LAYERS_DIR);
    let Ok(entries) = std::fs::read_dir(&layers) else {
        return;
    };
    for entry in entries.flatten() {
        let _ = nix::mount::umount2(&entry.path(), nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(entry.path());
    }
    let _ = std::fs::remove_dir(&layers);
}

impl Containers {
    /// The container's seccomp profile compiled (once per profile) beside its `config.json`,
    /// for the executor to load as it is; a profile berth leaves to libcontainer gets none.
    fn write_seccomp_program(
        &self,
        id: &str,
        dir: &Path,
        spec: &oci_spec::runtime::Spec,
    ) -> Result<(), ContainerError> {
        use berth_runtime::seccomp_filter::{precompilable, FILTER_FILE};
        let Some(profile) = spec
            .linux()
            .as_ref()
            .and_then(|l| l.seccomp().as_ref())
            .filter(|p| precompilable(p))
        else {
            return Ok(());
        };
        let (program, lookup) = self
            .seccomp_programs
            .program(profile)
            .map_err(|e| ContainerError::InvalidArgument(format!("container {id}: {e}")))?;
        self.metrics.seccomp_program(lookup);
        let file = dir.join(FILTER_FILE);
        std::fs::write(&file, &program[..]).map_err(|e| {
            self.failed(
                id,
                "write the seccomp program",
                format!("{}: {e}", file.display()),
            )
        })
    }

    pub(super) fn build(
        &self,
        id: &str,
        dir: &Path,
        layer_dir: &Path,
        rootfs: &Path,
        input: &CreateInput,
    ) -> Result<ContainerRecord, ContainerError> {
        let fail = |step: &'static str| move |e: String| self.failed(id, step, e);
        let invalid = |e: &dyn std::fmt::Display| {
            ContainerError::InvalidArgument(format!("container {id}: {e}"))
        };
        // What the request alone decides is checked before anything is mounted.
        spec::mounts::check_binds(&input.config.mounts, input.sandbox.userns.as_ref())
            .map_err(|e| invalid(&e))?;
        let seccomp_localhost = spec::seccomp::load_localhost(&input.config.security.seccomp)
            .map_err(|e| invalid(&e))?;
        let apparmor = spec::apparmor::resolve(
            &input.config.security.apparmor,
            input.config.security.privileged,
        )
        .map_err(|e| invalid(&e))?;
        for d in [
            rootfs.to_path_buf(),
            layer_dir.join("upper"),
            layer_dir.join("work"),
        ] {
            std::fs::create_dir_all(&d).map_err(|e| fail("create dirs")(e.to_string()))?;
        }
        let userns = PodUserNamespace::of(&input.sandbox).map_err(fail("user namespace"))?;
        // The container's state dir is root's alone: its rootfs mount holds what the container
        // wrote, setuid binaries included. A container in a user namespace sets up its mounts
        // as the pod's root, which is no one on the host, so that root's group may pass
        // through to the rootfs and prepared mounts; the executor reads the rest as host root.
        berth_common::fs::closed_dir(dir, userns.as_ref().map(|u| u.ranges.root_on_host().1))
            .map_err(|e| fail("create dirs")(e.to_string()))?;
        if input.layers.is_empty() {
            return Err(fail("rootfs")("the image has no layers".to_string()));
        }
        let lowers = match &userns {
            Some(userns) => {
                let (uid, gid) = userns.ranges.root_on_host();
                std::os::unix::fs::chown(layer_dir.join("upper"), Some(uid), Some(gid))
                    .map_err(|e| fail("rootfs")(format!("chown the upper dir: {e}")))?;
                userns
                    .map_layers(dir, &input.layers, &self.metrics)
                    .map_err(|e| {
                        unmount_idmapped_layers(dir);
                        fail("rootfs")(e)
                    })?
            }
            None => input.layers.clone(),
        };
        let options = format!(
            "{},upperdir={},workdir={}",
            lowerdir(&lowers),
            layer_dir.join("upper").display(),
            layer_dir.join("work").display()
        );
        let mounted = mount(
            Some("overlay"),
            rootfs,
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        );
        if userns.is_some() {
            unmount_idmapped_layers(dir);
        }
        mounted.map_err(|e| fail("mount rootfs")(e.to_string()))?;
        berth_common::crash::point("container-rootfs");
        let image_file = |path: &str| {
            read_image_file(rootfs, path)
                .map_err(|e| ContainerError::InvalidArgument(format!("container {id}: {e}")))
        };
        let passwd = image_file("etc/passwd")?;
        let group = image_file("etc/group")?;
        let log_path = if input.config.log_path.is_empty() {
            // No log directory from kubelet: keep the output beside the container's state.
            dir.join("log")
        } else {
            PathBuf::from(&input.config.log_path)
        };
        if let Some(parent) = log_path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| fail("log directory")(e.to_string()))?;
        }
        let mut config = input.config.clone();
        config.log_path = log_path.display().to_string();
        for (index, layers) in &input.image_volumes {
            let mut target =
                mount_image_volume(dir, *index, layers).map_err(fail("image volume"))?;
            let sub_path = config.mounts.get(*index).and_then(|m| m.image.as_ref());
            if let Some(sub_path) = sub_path
                .map(|i| i.sub_path.as_str())
                .filter(|p| !p.is_empty())
            {
                target = mount_sub_path(&target, sub_path).map_err(|e| match e {
                    SubPathError::Invalid(e) => invalid(&e),
                    SubPathError::Failed(e) => fail("image volume")(e),
                })?;
            }
            if let Some(m) = config.mounts.get_mut(*index) {
                m.host_path = target;
            }
        }
        // As containerd: rslave/rshared only make sense from a slave/shared source mount.
        check_propagation(&input.config.mounts).map_err(ContainerError::InvalidArgument)?;
        // As containerd: a bind mount's missing host directory is created.
        for m in &config.mounts {
            if !m.host_path.exists() {
                std::fs::create_dir_all(&m.host_path).map_err(|e| {
                    fail("mount source")(format!("create {}: {e}", m.host_path.display()))
                })?;
            }
        }
        if let Some(userns) = &userns {
            userns
                .prepare_binds(dir, &mut config.mounts, &self.metrics)
                .map_err(fail("mount source"))?;
        }
        let devices =
            spec::devices::nodes_for(&config).map_err(|e| fail("devices")(e.to_string()))?;
        let generated = spec::generate(&SpecInput {
            container_id: id,
            rootfs,
            config: &config,
            sandbox: &input.sandbox,
            image: &input.image_config,
            etc_passwd: passwd.as_deref(),
            etc_group: group.as_deref(),
            device_nodes: &devices,
            target_pid_namespace: None,
            seccomp_localhost: seccomp_localhost.as_ref(),
            apparmor_profile: apparmor.as_deref(),
            host: &self.host,
        })
        .map_err(|e| invalid(&e))?;
        let user = generated.process().as_ref().map(|p| ProcessUser {
            uid: p.user().uid(),
            gid: p.user().gid(),
            additional_gids: p.user().additional_gids().clone().unwrap_or_default(),
        });
        // The record keeps the cgroup's cgroupfs path under either driver: stats, updates, OOM
        // and killing read and write it there.
        let cgroup = generated
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().clone())
            .map(|p| berth_runtime::cgroups::systemd::fs_path(&p))
            .transpose()
            .map_err(|e| invalid(&e))?;
        generated
            .save(dir.join("config.json"))
            .map_err(|e| fail("write config.json")(e.to_string()))?;
        self.write_seccomp_program(id, dir, &generated)?;
        let mut record = ContainerRecord {
            id: id.to_string(),
            sandbox_id: input.sandbox_id.clone(),
            pod_dir: input.pod_dir.clone(),
            config,
            image: input.image.clone(),
            image_id: input.image_id.clone(),
            stop_signal: input.image_config.stop_signal.clone(),
            log_path: log_path.clone(),
            cgroup: cgroup.clone(),
            pid: 0,
            created_at: berth_common::time::now_nanos(),
            started_at: 0,
            exit: None,
            layer_dir: layer_dir.to_path_buf(),
            user,
            layers: input.layers.clone(),
            volume_layers: input
                .image_volumes
                .iter()
                .flat_map(|(_, layers)| layers.iter().cloned())
                .collect(),
        };
        self.save(&record)?;
        let response = monitor_client::request(
            &input.pod_dir,
            &Request::Create {
                id: id.to_string(),
                bundle: dir.to_path_buf(),
                log_path,
                exit_file: dir.join(EXIT_FILE),
                cgroup,
                stdin: record.config.stdin,
                tty: record.config.tty,
            },
        )
        .map_err(fail("create in the pod's monitor"))?;
        berth_common::crash::point("container-created");
        record.pid = response.pid.unwrap_or(0);
        self.save(&record)?;
        Ok(record)
    }
}

/// Refuses HostToContainer (rslave) and Bidirectional (rshared) mounts whose source is not on a
/// slave or shared mount, with containerd's reasoning: nothing would propagate.
fn check_propagation(mounts: &[spec::Mount]) -> Result<(), String> {
    let wanted: Vec<&spec::Mount> = mounts
        .iter()
        .filter(|m| m.propagation != spec::Propagation::Private)
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("read mountinfo: {e}"))?;
    for m in wanted {
        let (mountpoint, tags) = mount_of(&info, &m.host_path);
        let ok = match m.propagation {
            spec::Propagation::Bidirectional => tags.iter().any(|t| t.starts_with("shared:")),
            _ => tags
                .iter()
                .any(|t| t.starts_with("shared:") || t.starts_with("master:")),
        };
        if !ok {
            return Err(format!(
                "path {} is mounted on {mountpoint} but it is not a {} mount",
                m.host_path.display(),
                if m.propagation == spec::Propagation::Bidirectional {
                    "shared"
                } else {
                    "shared or slave"
                }
            ));
        }
    }
    Ok(())
}

/// The mount point holding `path` (the longest matching one) and its propagation tags.
fn mount_of(mountinfo: &str, path: &Path) -> (String, Vec<String>) {
    let mut best: (String, Vec<String>) = ("/".to_string(), Vec::new());
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let Some(point) = fields.get(4) else { continue };
        if path.starts_with(point) && point.len() >= best.0.len() {
            best = (
                point.to_string(),
                fields[6..sep].iter().map(|s| s.to_string()).collect(),
            );
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn propagation_needs_a_shared_or_slave_source() {
        let info = "\
20 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 20 0:5 / /private rw - tmpfs tmpfs rw
31 20 0:6 / /slave rw master:7 - tmpfs tmpfs rw
";
        assert_eq!(mount_of(info, Path::new("/private/x")).0, "/private");
        assert_eq!(mount_of(info, Path::new("/slave/y")).1, ["master:7"]);
        assert_eq!(mount_of(info, Path::new("/home/z")).1, ["shared:1"]);
    }
}
