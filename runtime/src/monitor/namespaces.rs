//! The pod's namespaces: made by the monitor with unshare(2), pinned by bind-mounting the
//! nsfs files under the pod dir so they outlive every process.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{fork, ForkResult, Pid};

use super::protocol::{ns_path, sysctl_namespace, sysctl_path, MonitorConfig};
use crate::spec::UserNamespace;

/// The network, IPC and UTS namespaces, each with the name of its file under `/proc/<pid>/ns`.
const OWN_KINDS: [(CloneFlags, &str); 3] = [
    (CloneFlags::CLONE_NEWNET, "net"),
    (CloneFlags::CLONE_NEWIPC, "ipc"),
    (CloneFlags::CLONE_NEWUTS, "uts"),
];

/// Whether `config` asks for a namespace of its own of `kind` (one of [`OWN_KINDS`]).
fn wants(config: &MonitorConfig, kind: CloneFlags) -> bool {
    if kind == CloneFlags::CLONE_NEWNET {
        config.new_net
    } else if kind == CloneFlags::CLONE_NEWIPC {
        config.new_ipc
    } else {
        config.new_uts
    }
}

/// New network, IPC and UTS namespaces a standby monitor made while it waited for its pod
/// (unshare(2) of a network namespace alone takes ~1 ms on the bench VM, on RunPodSandbox's
/// path otherwise), with the namespaces it had before, for a pod that shares those.
pub(super) struct Premade {
    before: Vec<(CloneFlags, OwnedFd)>,
}

impl Premade {
    /// Moves the calling (single-threaded) process into new namespaces; None, and nothing
    /// changed, when it cannot.
    pub(super) fn make() -> Option<Premade> {
        let before = OWN_KINDS
            .iter()
            .map(|&(flag, kind)| {
                std::fs::File::open(format!("/proc/self/ns/{kind}")).map(|f| (flag, f.into()))
            })
            .collect::<std::io::Result<Vec<_>>>()
            .ok()?;
        let all = OWN_KINDS
            .iter()
            .fold(CloneFlags::empty(), |flags, &(flag, _)| flags | flag);
        unshare(all).ok()?;
        Some(Premade { before })
    }

    /// Keeps the namespaces `config` asks for and goes back to the ones it had for the others;
    /// to all of them for a pod with a user namespace, whose own are made under it. Then
    /// [`create`] makes none.
    pub(super) fn fit(self, config: &MonitorConfig) -> Result<(), String> {
        for (flag, before) in self.before {
            if config.userns.is_none() && wants(config, flag) {
                continue;
            }
            nix::sched::setns(before, flag)
                .map_err(|e| format!("leave the standby's {flag:?} namespace: {e}"))?;
        }
        Ok(())
    }
}

/// Creates the namespaces `config` asks for in the calling (single-threaded) process, unless
/// they are `premade` ([`Premade::fit`]), and names its host.
pub(super) fn create(config: &MonitorConfig, premade: bool) -> Result<(), String> {
    let flags = OWN_KINDS
        .iter()
        .filter(|&&(flag, _)| !premade && wants(config, flag))
        .fold(CloneFlags::empty(), |flags, &(flag, _)| flags | flag);
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

/// Pins the network, IPC and UTS namespaces `config` asked for from process `pid`.
pub(super) fn pin_own(config: &MonitorConfig, pid: u32) -> Result<(), String> {
    for (flag, kind) in OWN_KINDS {
        if wants(config, flag) {
            pin(&config.pod_dir, pid, kind)?;
        }
    }
    Ok(())
}

/// The pod's namespaces under a user namespace of its own. The monitor stays in the host's (it
/// makes cgroups and runs the executor as host root), so a child ("holder") unshares the user
/// namespace, waits for the monitor to write its mapping, becomes its root and makes the
/// others, which the user namespace then owns: the pod's root may change its network, and
/// mount its /proc and /sys. The monitor pins them from the holder, then lets it go; the pod
/// init the holder forks (returned, for its PID namespace to be pinned) is the monitor's.
pub(super) fn create_in_userns(
    config: &MonitorConfig,
    userns: &UserNamespace,
    spawn_pod_init: fn() -> Result<Pid, String>,
) -> Result<Option<Pid>, String> {
    let pipe = || nix::unistd::pipe().map_err(|e| format!("pipe: {e}"));
    let (from_holder, to_monitor) = pipe()?;
    let (from_monitor, to_holder) = pipe()?;
    // SAFETY: the monitor is single-threaded, so the child may run arbitrary code after fork.
    let holder = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop((from_holder, to_holder));
            let code = holder(config, to_monitor, from_monitor, spawn_pod_init);
            // SAFETY: _exit skips destructors and atexit handlers, which are the monitor's.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => return Err(format!("fork the user namespace holder: {e}")),
    };
    drop((to_monitor, from_monitor));
    let mut reports = std::io::BufReader::new(std::fs::File::from(from_holder));
    let mut to_holder = std::fs::File::from(to_holder);
    let result = (|| {
        expect_report(&mut reports, "unshared")?;
        crate::idmap::write_maps(holder.as_raw(), userns)
            .map_err(|e| format!("user namespace mapping: {e}"))?;
        to_holder
            .write_all(b"m")
            .map_err(|e| format!("user namespace holder: {e}"))?;
        let init = expect_report(&mut reports, "ready")?
            .parse::<i32>()
            .ok()
            .filter(|pid| *pid > 0)
            .map(Pid::from_raw);
        let pinned = pin(&config.pod_dir, holder.as_raw() as u32, "user")
            .and_then(|()| pin_own(config, holder.as_raw() as u32));
        if let Err(e) = pinned {
            if let Some(init) = init {
                super::serve::kill_init(init);
            }
            return Err(e);
        }
        Ok(init)
    })();
    // The holder leaves once its pipe closes (or is killed if it hangs on an error).
    drop(to_holder);
    if result.is_err() {
        let _ = nix::sys::signal::kill(holder, nix::sys::signal::Signal::SIGKILL);
    }
    let _ = nix::sys::wait::waitpid(holder, None);
    result
}

/// Reads the holder's next line, `<word> <detail>`; `error <message>` or EOF is its failure.
fn expect_report(reports: &mut impl std::io::BufRead, word: &str) -> Result<String, String> {
    let mut line = String::new();
    let _ = reports.read_line(&mut line);
    let line = line.trim_end();
    match line.split_once(' ').unwrap_or((line, "")) {
        (got, detail) if got == word => Ok(detail.to_string()),
        ("error", message) => Err(message.to_string()),
        _ => Err(format!(
            "the user namespace holder ended before it was {word}"
        )),
    }
}

/// The holder's side: returns its exit code.
fn holder(
    config: &MonitorConfig,
    to_monitor: OwnedFd,
    from_monitor: OwnedFd,
    spawn_pod_init: fn() -> Result<Pid, String>,
) -> i32 {
    let mut out = std::fs::File::from(to_monitor);
    let mut input = std::fs::File::from(from_monitor);
    let mut report = |line: String| {
        let _ = out.write_all(format!("{line}\n").as_bytes());
    };
    if let Err(e) = unshare(CloneFlags::CLONE_NEWUSER) {
        report(format!("error unshare the user namespace: {e}"));
        return 1;
    }
    report("unshared".into());
    let mut byte = [0u8; 1];
    if !matches!(input.read(&mut byte), Ok(1)) {
        return 1;
    }
    let setup = || -> Result<Option<Pid>, String> {
        let root = nix::unistd::Uid::from_raw(0);
        let root_group = nix::unistd::Gid::from_raw(0);
        nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
        nix::unistd::setresgid(root_group, root_group, root_group)
            .map_err(|e| format!("become the user namespace's root group: {e}"))?;
        nix::unistd::setresuid(root, root, root)
            .map_err(|e| format!("become the user namespace's root: {e}"))?;
        create(config, false)?;
        apply_sysctls(config)?;
        config.pod_pid.then(spawn_pod_init).transpose()
    };
    match setup() {
        Ok(init) => report(format!("ready {}", init.map_or(0, |p| p.as_raw()))),
        Err(e) => {
            report(format!("error {e}"));
            return 1;
        }
    }
    // Alive until the monitor has pinned what we made.
    let _ = input.read(&mut byte);
    0
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
    unpin(pod_dir, None)
}

/// [`unpin_all`], but the pin named `kept` (e.g. `net`, for a CNI DEL still running) stays.
pub fn unpin_all_but(pod_dir: &Path, kept: &str) -> std::io::Result<()> {
    unpin(pod_dir, Some(kept))
}

fn unpin(pod_dir: &Path, kept: Option<&str>) -> std::io::Result<()> {
    let dir = pod_dir.join(super::protocol::NS_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if kept.is_some_and(|k| entry.file_name() == k) {
            continue;
        }
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
    // Not empty while a pin is kept.
    let _ = std::fs::remove_dir(&dir);
    Ok(())
}
