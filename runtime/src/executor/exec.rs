//! `berthd init exec <state root> <id> <report file> [--tty <console socket>] -- <cmd> [args…]`:
//! runs a process inside the running container `<id>` and waits for it.
//!
//! The process is the container's own `process` from its bundle's `config.json` (user, groups,
//! env, cwd, capabilities, rlimits, no_new_privs, AppArmor, as its init got them) with `args`
//! replaced: what containerd hands `runc exec --process`. libcontainer's tenant builder joins
//! the init's namespaces and cgroup. Without `--tty` the process inherits our stdin, stdout and
//! stderr; with it, libcontainer opens a pty in the container (its controlling terminal) and
//! sends the master to the console socket, where the caller listens.
//!
//! The report file is rewritten atomically at each step: `pid <n>` (host pid) as soon as the
//! process has exec'd, then `exited <code>` (128 + signal when killed), or `error: …`. Our own
//! exit code is the process's, or 255 when it could not be started.
//!
//! SIGTERM kills the exec'd process: its whole process group (libcontainer makes it a session
//! leader, so every descendant that did not move to another group), then whatever is left in its
//! session. Then we report and exit as usual. This is how the agent ends an exec on timeout:
//! we are its parent, so the pid cannot be reused before we have killed and reaped it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;

use super::write_report;

/// Exit code when the process could not be started (the report says why).
const FAILED: i32 = 255;

/// The exec'd process while it may be signalled: set once it has exec'd, cleared before it is
/// reaped (so a late SIGTERM never hits a recycled pid).
static CHILD: AtomicI32 = AtomicI32::new(0);
/// A SIGTERM arrived.
static TERMINATED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigterm(_: libc::c_int) {
    TERMINATED.store(true, Ordering::SeqCst);
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe; a negative pid names the process group.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
}

/// Runs the exec; returns our exit code. `cmd` is what follows `--`.
pub(super) fn run(
    root: &Path,
    id: &str,
    report: &Path,
    console: Option<&Path>,
    cmd: &[String],
) -> i32 {
    // SA_RESTART: libcontainer's reads and our waits must not fail with EINTR; the handler does
    // the killing itself and clones inherit it only until they exec.
    let action = SigAction::new(
        SigHandler::Handler(on_sigterm),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only touches atomics and calls kill(2), both async-signal-safe.
    if let Err(e) = unsafe { sigaction(Signal::SIGTERM, &action) } {
        return fail(report, &format!("install SIGTERM handler: {e}"));
    }
    let pid = match start(root, id, report, console, cmd) {
        Ok(pid) => pid,
        Err(e) => return fail(report, &e),
    };
    CHILD.store(pid.as_raw(), Ordering::SeqCst);
    if let Err(e) = write_report(report, &format!("pid {pid}")) {
        // The agent cannot kill it on timeout without the pid: do not let it run unseen.
        let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
        let _ = waitpid(pid, None);
        eprintln!("berthd init: write report {}: {e}", report.display());
        return FAILED;
    }
    // A SIGTERM that came while libcontainer was still building found no pid to kill.
    if TERMINATED.load(Ordering::SeqCst) {
        let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
    }
    let code = wait(pid);
    if let Err(e) = write_report(report, &format!("exited {code}")) {
        eprintln!("berthd init: write report {}: {e}", report.display());
    }
    code
}

fn fail(report: &Path, error: &str) -> i32 {
    let line = format!("error: {}", error.replace('\n', " "));
    if let Err(e) = write_report(report, &line) {
        eprintln!("berthd init: write report {}: {e}", report.display());
    }
    FAILED
}

/// Builds the tenant process; returns its host pid once it has exec'd `cmd`.
fn start(
    root: &Path,
    id: &str,
    report: &Path,
    console: Option<&Path>,
    cmd: &[String],
) -> Result<Pid, String> {
    if cmd.is_empty() {
        return Err("exec: no command".into());
    }
    let container = super::load(root, id)?;
    let config = container.bundle().join("config.json");
    let spec = Spec::load(&config).map_err(|e| format!("load {}: {e}", config.display()))?;
    let mut process = spec
        .process()
        .clone()
        .ok_or_else(|| format!("container {id}: its spec has no process"))?;
    process
        .set_args(Some(cmd.to_vec()))
        .set_terminal(Some(console.is_some()));
    let process_file = PathBuf::from(format!("{}.process.json", report.display()));
    let written = serde_json::to_vec(&process)
        .map_err(|e| e.to_string())
        .and_then(|bytes| std::fs::write(&process_file, bytes).map_err(|e| e.to_string()));
    if let Err(e) = written {
        return Err(format!("write {}: {e}", process_file.display()));
    }
    let built = ContainerBuilder::new(id.to_string(), SyscallType::Linux)
        .with_root_path(root)
        .and_then(|b| b.validate_id())
        .and_then(|b| {
            // libcontainer takes a console socket only for a "detached" terminal; the process
            // is our child and waited for either way.
            b.with_console_socket(console)
                .as_tenant()
                .with_process(Some(&process_file))
                .with_detach(console.is_some())
                .build()
        })
        .map_err(|e| format!("exec in container {id}: {e}"));
    let _ = std::fs::remove_file(&process_file);
    built
}

/// Waits for the process to exit and reaps it; returns its code, or 128 + the signal.
fn wait(pid: Pid) -> i32 {
    // WNOWAIT: the process stays a zombie (its pid and group reserved) while a timeout kill may
    // still target it; after a SIGTERM its session is swept before it is reaped.
    let code = loop {
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(WaitStatus::Exited(_, code)) => break code,
            Ok(WaitStatus::Signaled(_, signal, _)) => break 128 + signal as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break FAILED,
        }
    };
    if TERMINATED.load(Ordering::SeqCst) {
        kill_session(pid);
    }
    CHILD.store(0, Ordering::SeqCst);
    while let Err(nix::errno::Errno::EINTR) = waitpid(pid, None) {}
    code
}

/// SIGKILLs every process left in the session `leader` started (descendants that moved to a
/// process group of their own). One that started a new session itself escapes, as it would
/// from runc.
fn kill_session(leader: Pid) {
    for _ in 0..10 {
        let members = session_members(leader.as_raw());
        if members.is_empty() {
            return;
        }
        for pid in members {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Live processes (not zombies) whose session id is `sid`, as /proc (our PID namespace) sees them.
fn session_members(sid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // Fields after the parenthesised command name: state ppid pgrp session …
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.len() > 3 && fields[0] != "Z" && fields[3] == sid.to_string()
        })
        .collect()
}
