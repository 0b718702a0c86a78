//! The pod's namespaces: made by the monitor with unshare(2), pinned by bind-mounting the
//! nsfs files under the pod dir so they outlive every process.

use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use super::protocol::{ns_path, sysctl_namespace, sysctl_path, MonitorConfig};

/// Creates the namespaces `config` asks for in the calling (single-threaded) process.
pub(super) fn create(config: &MonitorConfig) -> Result<(), String> {
    let mut flags = CloneFlags::empty();
    if config.new_net {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if config.new_ipc {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    if config.new_uts {
        flags |= CloneFlags::CLONE_NEWUTS;
    }
    if !flags.is_empty() {
        unshare(flags).map_err(|e| format!("unshare namespaces: {e}"))?;
    }
    if let Some(hostname) = &config.hostname {
        if config.new_uts {
            nix::unistd::sethostname(hostname)
                .map_err(|e| format!("set hostname {hostname:?}: {e}"))?;
        }
    }
    Ok(())
}

/// Applies the pod's sysctls from inside its namespaces.
pub(super) fn apply_sysctls(config: &MonitorConfig) -> Result<(), String> {
    for (name, value) in &config.sysctls {
        let namespace =
            sysctl_namespace(name).ok_or_else(|| format!("sysctl {name} is not namespaced"))?;
        let own = match namespace {
            "net" => config.new_net,
            _ => config.new_ipc,
        };
        if !own {
            return Err(format!("sysctl {name} would change the host: the pod shares the host's {namespace} namespace"));
        }
        let path =
            sysctl_path(name).ok_or_else(|| format!("sysctl {name:?} is not a valid name"))?;
        std::fs::write(&path, value.as_bytes())
            .map_err(|e| format!("sysctl {name}={value}: {e}"))?;
    }
    Ok(())
}

/// Bind-mounts `/proc/<pid>/ns/<kind>` at `<pod_dir>/ns/<kind>`.
pub(super) fn pin(pod_dir: &Path, pid: u32, kind: &str) -> Result<(), String> {
    let target = ns_path(pod_dir, kind);
    std::fs::File::create(&target)
        .map_err(|e| format!("pin {kind} namespace: create {}: {e}", target.display()))?;
    let source = format!("/proc/{pid}/ns/{kind}");
    mount(
        Some(source.as_str()),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| {
        format!(
            "pin {kind} namespace: bind {source} on {}: {e}",
            target.display()
        )
    })
}

/// Unmounts every pinned namespace of a pod and removes the files; safe to repeat, and used
/// by the agent when the monitor is gone.
pub fn unpin_all(pod_dir: &Path) -> std::io::Result<()> {
    let dir = pod_dir.join(super::protocol::NS_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match umount2(&path, MntFlags::MNT_DETACH) {
            // EINVAL: not a mount point (never pinned, or already unpinned).
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => {
                return Err(std::io::Error::other(format!(
                    "unmount {}: {e}",
                    path.display()
                )))
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    let _ = std::fs::remove_dir(&dir);
    Ok(())
}
