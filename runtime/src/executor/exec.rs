//! `berthd init exec <state root> <id> <report file> [--tty <console socket>] -- <cmd> [args…]`:
//! runs a process inside the running container `<id>` and waits for it.
//!
//! The process is the container's own `process` from its bundle's `config.json` (user, groups,
//! env, cwd, capabilities, rlimits, no_new_privs, as its init got them) with `args` replaced:
//! what containerd hands `runc exec --process`. `enter` forks it into the init's cgroups and
//! namespaces (our own code, not libcontainer's tenant builder: see there why). Without `--tty`
//! the process inherits our stdin, stdout and stderr; with it, the child opens a pty in the
//! container (its controlling terminal) and sends the master to the console socket, where the
//! caller listens.
//!
//! The report file says each step on a line of its own: `pid <n>` (host pid) as soon as the
//! process has exec'd, written whole (a new file, renamed in place), then `exited <code>` (128 +
//! signal when killed) or `error: …`, appended in one write. Its last line is where the exec
//! stands. (Rewriting the file for the outcome cost each exec more than its write: ext4 writes a
//! file's data back at once when a rename replaces it.) Our own exit code is the process's, or
//! 255 when it could not be started.
//!
//! SIGTERM kills the exec'd process: its whole process group (it is a session leader, so every
//! descendant that did not move to another group), then whatever is left in its session.
//! Then we report and exit as usual. This is how the agent ends an exec on timeout: we are its
//! parent, so the pid cannot be reused before we have killed and reaped it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

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

/// Installs `on_sigterm`. SA_RESTART: libcontainer's reads and our waits must not fail with
/// EINTR; the handler does the killing itself and clones inherit it only until they exec.
fn handle_sigterm() -> nix::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_sigterm),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only touches atomics and calls kill(2), both async-signal-safe.
    unsafe { sigaction(Signal::SIGTERM, &action) }.map(|_| ())
}

/// Runs the exec; returns our exit code. `cmd` is what follows `--`.
pub(super) fn run(
    root: &Path,
    id: &str,
    report: &Path,
    console: Option<&Path>,
    cmd: &[String],
) -> i32 {
    if let Err(e) = handle_sigterm() {
        return fail(report, &format!("install SIGTERM handler: {e}"));
    }
    let pid = match super::enter::spawn(root, id, console, cmd) {
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
    // A short command (a probe's ExecSync) is waited for here; one still running after
    // SLIM_AFTER (an interactive session) is waited for by a slimmer image of ourselves.
    if !exits_within(pid, SLIM_AFTER) {
        become_waiter(pid, report);
    }
    // Only if the exec of our own binary failed: wait here, as the waiter would.
    wait_and_report(pid, report)
}

/// How long an exec'd process runs before its executor slims down into `berthd init wait`.
const SLIM_AFTER: std::time::Duration = std::time::Duration::from_millis(200);

/// Whether `pid` (our child) exits within `limit`; it is not reaped.
fn exits_within(pid: Pid, limit: std::time::Duration) -> bool {
    use std::os::fd::AsFd;
    crate::pidfd_open(pid.as_raw()).is_ok_and(|pidfd| crate::exits_within(pidfd.as_fd(), limit))
}

/// `berthd init wait <pid> <report>`: what the executor becomes once the process runs. The
/// process stays our child across execve, and a fresh image of the binary holds a fraction of
/// the memory libcontainer left behind (an open `kubectl exec` costs that for its whole life).
/// SIGTERM is blocked across the execve and unblocked once the handler is back, so one sent
/// in between is not lost (nor is it the default action, which would orphan the process).
pub(super) fn wait_for(pid: &str, report: &Path) -> i32 {
    let Ok(pid) = pid.parse::<i32>() else {
        return fail(report, &format!("wait: bad pid {pid:?}"));
    };
    let pid = Pid::from_raw(pid);
    CHILD.store(pid.as_raw(), Ordering::SeqCst);
    if handle_sigterm().is_err() {
        // Without the handler a timeout could not kill it: do not let it run unseen.
        let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
    }
    let _ = SigSet::empty().thread_set_mask();
    // What ran to get here is not needed again while the process runs, maybe for hours: given
    // back, then the wait for its exit (its pidfd readable), so that nothing runs between the
    // two to map pages again. wait_and_report reaps it.
    match crate::pidfd_open(pid.as_raw()) {
        Ok(fd) => {
            let _ = crate::trim::trim_then_wait(&mut [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&fd),
                nix::poll::PollFlags::POLLIN,
            )]);
        }
        Err(_) => {
            crate::trim::trim();
        }
    }
    wait_and_report(pid, report)
}

fn wait_and_report(pid: Pid, report: &Path) -> i32 {
    let code = wait(pid);
    if let Err(e) = append_report(report, &format!("exited {code}")) {
        eprintln!("berthd init: write report {}: {e}", report.display());
    }
    code
}

/// Execs `berthd init wait <pid> <report>`; returns only if that failed (SIGTERM unblocked).
fn become_waiter(pid: Pid, report: &Path) {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let mut term = SigSet::empty();
    term.add(Signal::SIGTERM);
    let _ = term.thread_block();
    let args = [
        CString::new("berthd").ok(),
        CString::new("init").ok(),
        CString::new("wait").ok(),
        CString::new(pid.as_raw().to_string()).ok(),
        CString::new(report.as_os_str().as_bytes()).ok(),
    ];
    if let (Some(args), Ok(exe)) = (
        args.into_iter().collect::<Option<Vec<CString>>>(),
        CString::new("/proc/self/exe"),
    ) {
        let _ = nix::unistd::execv(&exe, &args);
    }
    let _ = term.thread_unblock();
}

/// The exec's outcome, appended to its report as one line in one write (after the `pid` line,
/// if there is one).
fn append_report(report: &Path, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(report)?
        .write_all(format!("{line}\n").as_bytes())
}

fn fail(report: &Path, error: &str) -> i32 {
    let line = format!("error: {}", error.replace('\n', " "));
    if let Err(e) = append_report(report, &line) {
        eprintln!("berthd init: write report {}: {e}", report.display());
    }
    FAILED
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
            // state ppid pgrp session …
            berth_common::procfs::stat_fields(pid as u32).is_some_and(|fields| {
                fields.len() > 3 && fields[0] != "Z" && fields[3] == sid.to_string()
            })
        })
        .collect()
}
