//! The systemd cgroup driver. kubelet names a pod's cgroup as a slice
//! (`kubepods-burstable-pod<uid>.slice`); each container runs in a transient scope unit in it
//! (`berth-<id>.scope`, made by libcontainer over D-Bus with the container's resources), and
//! the pod's monitor in one of its own (`berth-monitor-<pod id>.scope`), so that neither is in
//! berthd's service and a restart of the unit leaves them be. Everything that reads or writes a
//! cgroup afterwards (stats, updates, OOM, killing) uses the scope's cgroupfs path, which this
//! module derives from the names.

use std::path::{Path, PathBuf};

/// The prefix of a container's scope: `berth-<container id>.scope`.
pub const CONTAINER_PREFIX: &str = "berth";
/// The prefix of a pod monitor's scope: `berth-monitor-<sandbox id>.scope`.
pub const MONITOR_PREFIX: &str = "berth-monitor";
/// Where a pod without a cgroup parent puts its units, as containerd does.
pub const DEFAULT_SLICE: &str = "system.slice";

/// Where systemd's manager answers D-Bus: the system bus, and its own private socket (which
/// libcgroups uses when there is no bus daemon).
const BUS_SOCKETS: [&str; 2] = ["/run/dbus/system_bus_socket", "/run/systemd/private"];

/// The systemd D-Bus socket that `fd` is connected to, if it is a connection to one.
pub fn bus_peer(fd: std::os::fd::BorrowedFd) -> Option<&'static str> {
    use std::os::fd::AsRawFd;
    let peer: nix::sys::socket::UnixAddr = nix::sys::socket::getpeername(fd.as_raw_fd()).ok()?;
    let path = peer.path()?;
    BUS_SOCKETS.into_iter().find(|s| Path::new(s) == path)
}

/// Whether systemd is this host's init, as sd_booted(3) decides.
pub fn booted() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// The slice a pod's cgroup parent names: the parent itself (`kubepods-pod1.slice`), or the last
/// component of a path of slices (`/kubepods.slice/kubepods-pod1.slice`, as critest and some
/// kubelets send it), as containerd reads it.
pub fn slice_name(parent: &str) -> Result<&str, String> {
    let name = parent
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("");
    if !name.ends_with(".slice") {
        return Err(format!(
            "cgroup parent {parent:?} is not a systemd slice: it must end in .slice"
        ));
    }
    Ok(name)
}

/// The cgroupfs path of slice `parent` ([`slice_name`]): each `-` in a slice's name opens a
/// level, so `kubepods-burstable-pod1.slice` is `/kubepods.slice/kubepods-burstable.slice/
/// kubepods-burstable-pod1.slice`, and `-.slice` is the root.
pub fn slice_path(parent: &str) -> Result<PathBuf, String> {
    let name = slice_name(parent)?;
    let invalid = |why: &str| format!("cgroup parent {parent:?} is not a systemd slice: {why}");
    let stem = name
        .strip_suffix(".slice")
        .ok_or_else(|| invalid("it must end in .slice"))?;
    if stem == "-" {
        return Ok(PathBuf::from("/"));
    }
    if stem.is_empty() {
        return Err(invalid("no name before .slice"));
    }
    let mut path = PathBuf::from("/");
    let mut prefix = String::new();
    for part in stem.split('-') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(invalid("empty or dot component"));
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
        prefix.push('-');
    }
    Ok(path)
}

/// The OCI `cgroupsPath` that asks libcontainer for scope `<prefix>-<name>.scope` in `slice`
/// (`slice:prefix:name`, runc's systemd form).
pub fn oci_path(slice: &str, prefix: &str, name: &str) -> String {
    format!("{slice}:{prefix}:{name}")
}

/// The cgroupfs path of an OCI `cgroupsPath`: the scope's directory for the systemd form
/// (`slice:prefix:name`), the path itself for cgroupfs.
pub fn fs_path(oci: &Path) -> Result<PathBuf, String> {
    let text = oci.to_string_lossy();
    let parts: Vec<&str> = text.split(':').collect();
    match parts.as_slice() {
        [_] => Ok(Path::new("/").join(oci)),
        [slice, prefix, name] => {
            let slice = if slice.is_empty() {
                DEFAULT_SLICE
            } else {
                slice
            };
            Ok(slice_path(slice)?.join(format!("{prefix}-{name}.scope")))
        }
        _ => Err(format!(
            "cgroupsPath {text:?} is neither a path nor slice:prefix:name"
        )),
    }
}

/// Whether an OCI `cgroupsPath` is in the systemd form.
pub fn is_systemd_form(oci: &Path) -> bool {
    oci.to_string_lossy().split(':').count() == 3
}

/// Moves process `pid` into a new transient scope `<prefix>-<name>.scope` in `slice` (made over
/// D-Bus, with the accounting runc turns on and `Delegate=yes`), and waits until it is there.
/// The scope goes away by itself once its last process has exited.
pub fn join_new_scope(slice: &str, prefix: &str, name: &str, pid: i32) -> Result<(), String> {
    use libcgroups::common::CgroupManager;
    with_manager(slice, prefix, name, |m| {
        m.add_task(nix::unistd::Pid::from_raw(pid))
            .map_err(|e| format!("start systemd scope {prefix}-{name}.scope in {slice}: {e}"))
    })
}

/// Runs `call` with libcgroups' systemd manager for scope `<prefix>-<name>.scope` in `slice`,
/// then closes the D-Bus connections the manager left open: the one way berth uses it.
/// libcgroups never closes its socket (youki#3629), and a connection nobody reads fills:
/// systemd writes every unit signal down every connection on its private socket, and once more
/// than 1024 messages wait it stops dispatching its bus queue, so that `systemctl daemon-reload`
/// and every job waiter on the node hang. berth holds no bus connection of its own, so every
/// one open after `call` is one it left; the calls go one at a time so that none is closed under
/// another. (A process spawned meanwhile may inherit one, as libcgroups does not set
/// close-on-exec, until it exits.)
fn with_manager<T>(
    slice: &str,
    prefix: &str,
    name: &str,
    call: impl FnOnce(&mut libcgroups::systemd::manager::Manager) -> Result<T, String>,
) -> Result<T, String> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    // The manager is dropped (its socket left open) before the sweep.
    let out = manager(slice, prefix, name).and_then(|mut m| call(&mut m));
    for fd in bus_connections() {
        // SAFETY: `fd` is a connection libcgroups opened and dropped without closing; nothing
        // else in this process refers to it.
        unsafe { libc::close(fd) };
    }
    out
}

/// This process's descriptors that are connections to systemd's D-Bus sockets.
fn bus_connections() -> Vec<std::os::fd::RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd| {
            // SAFETY: the descriptor is only asked for its peer; a number that is no longer
            // open (the directory's own) fails with EBADF.
            bus_peer(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }).is_some()
        })
        .collect()
}

/// libcgroups' systemd manager for scope `<prefix>-<name>.scope` in `slice`, on the system bus.
fn manager(
    slice: &str,
    prefix: &str,
    name: &str,
) -> Result<libcgroups::systemd::manager::Manager, String> {
    libcgroups::systemd::manager::Manager::new(
        PathBuf::from("/sys/fs/cgroup"),
        PathBuf::from(oci_path(slice, prefix, name)),
        name.to_string(),
        true,
        std::time::Duration::from_secs(5),
    )
    .map_err(|e| format!("systemd scope {prefix}-{name}.scope in {slice}: {e}"))
}

/// The slice and name of a container scope from its cgroupfs path
/// (`…/<slice>/berth-<name>.scope`).
pub fn scope_of(fs_path: &Path) -> Option<(String, String)> {
    let unit = fs_path.file_name()?.to_str()?;
    let name = unit
        .strip_suffix(".scope")?
        .strip_prefix(CONTAINER_PREFIX)?
        .strip_prefix('-')?;
    let slice = fs_path.parent()?.file_name()?.to_str()?;
    slice
        .ends_with(".slice")
        .then(|| (slice.to_string(), name.to_string()))
}

/// Sets `resources` as the properties of the container scope at `fs_path` (MemoryMax=,
/// CPUWeight=, CPUQuota…, unified keys), over D-Bus. systemd writes a unit's properties back
/// into its cgroup whenever it reloads, so an update written only to the files would be undone.
pub fn set_scope_resources(
    fs_path: &Path,
    resources: &oci_spec::runtime::LinuxResources,
) -> Result<(), String> {
    use libcgroups::common::{CgroupManager, ControllerOpt};
    let (slice, name) = scope_of(fs_path)
        .ok_or_else(|| format!("{} is not a berth container scope", fs_path.display()))?;
    let unit = format!("{CONTAINER_PREFIX}-{name}.scope");
    with_manager(&slice, CONTAINER_PREFIX, &name, |m| {
        m.apply(&ControllerOpt {
            resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        })
        .map_err(|e| format!("set the properties of {unit}: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_open_a_level_at_each_dash() {
        assert_eq!(
            slice_path("kubepods-burstable-pod1.slice").unwrap(),
            Path::new("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice")
        );
        assert_eq!(
            slice_path("system.slice").unwrap(),
            Path::new("/system.slice")
        );
        assert_eq!(slice_path("-.slice").unwrap(), Path::new("/"));
        // A path of slices names its last one.
        assert_eq!(
            slice_path("/kubepods.slice/kubepods-pod1.slice/").unwrap(),
            Path::new("/kubepods.slice/kubepods-pod1.slice")
        );
        assert_eq!(slice_path("/test.slice").unwrap(), Path::new("/test.slice"));
        for bad in [
            "kubepods",
            ".slice",
            "a--b.slice",
            "-a.slice",
            "a-.slice",
            "/kubepods/pod1",
            "a/..",
            "..-x.slice",
            "/",
        ] {
            assert!(slice_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_scope_path_gives_back_its_slice_and_container() {
        let path = Path::new("/kubepods.slice/kubepods-pod1.slice/berth-c1.scope");
        assert_eq!(
            scope_of(path),
            Some(("kubepods-pod1.slice".into(), "c1".into()))
        );
        assert_eq!(scope_of(Path::new("/kubepods/pod1/c1")), None);
        assert_eq!(scope_of(Path::new("/x/berth-c1.scope")), None);
    }

    #[test]
    fn oci_paths_name_the_scope_directory() {
        let oci = oci_path("kubepods-pod1.slice", CONTAINER_PREFIX, "c1");
        assert_eq!(oci, "kubepods-pod1.slice:berth:c1");
        assert!(is_systemd_form(Path::new(&oci)));
        assert_eq!(
            fs_path(Path::new(&oci)).unwrap(),
            Path::new("/kubepods.slice/kubepods-pod1.slice/berth-c1.scope")
        );
        assert_eq!(
            fs_path(Path::new(":berth:c1")).unwrap(),
            Path::new("/system.slice/berth-c1.scope")
        );
        assert!(!is_systemd_form(Path::new("/kubepods/pod1/c1")));
        assert_eq!(
            fs_path(Path::new("/kubepods/pod1/c1")).unwrap(),
            Path::new("/kubepods/pod1/c1")
        );
        assert!(fs_path(Path::new("a:b")).is_err());
        assert!(fs_path(Path::new("nope:berth:c1")).is_err());
    }
}
