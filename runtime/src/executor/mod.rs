//! `berthd init`: the OCI executor. A fresh single-threaded process per operation that drives
//! youki's libcontainer, which clones the *calling* process and changes process-wide state
//! (cwd, dumpable, oom_score_adj): so it never runs inside the agent or the monitor.
//!
//! `berthd init create <state root> <id> <bundle> <console socket|-> <report file>`: builds the container from
//!   `<bundle>/config.json`; its init inherits our stdin/stdout/stderr (the monitor's pipes)
//!   and waits for `start`. Writes `<pid>` (or `error: …`) to the report file.
//! `berthd init start <state root> <id> <report file>`: lets the init exec the entrypoint.
//! `berthd init delete <state root> <id> <report file>`: removes libcontainer's state and the
//!   container's cgroups (the process must be gone).
//! `berthd init exec …` runs a process in a running container (`exec`, without libcontainer:
//!   `enter` forks it into the container); once the process runs it execs
//!   `berthd init wait <pid> <report file>`, a fresh image that only waits.
//! `berthd init exec-standby <state dir>`: an exec started ahead of its request (the agent's
//!   ExecSync standby): it reads `exec …`'s arguments from stdin ([`standby_request`]), then
//!   runs as that exec with /dev/null for stdin. Its stdin closed without a request, it exits
//!   quietly.

mod caps;
mod enter;
mod exec;
mod filtered;

use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use oci_spec::runtime::Spec;

/// Entry point; returns the exit code. Must be called before any thread exists.
pub fn run(args: &[String]) -> i32 {
    // What an exec becomes once its process runs (see `exec::wait_for`): it keeps SIGTERM
    // blocked until its handler is installed.
    if let [op, pid, report] = args {
        if op == "wait" {
            return exec::wait_for(pid, Path::new(report));
        }
    }
    reset_signals();
    // `exec-standby <state dir>`: the agent's state dir only names whose standby it is.
    if let [op, _] = args {
        if op == "exec-standby" {
            return match standby() {
                Ok(Some(request)) => run(&request),
                Ok(None) => 0,
                Err(e) => {
                    eprintln!("berthd init exec-standby: {e}");
                    2
                }
            };
        }
    }
    let (op, rest) = match args.split_first() {
        Some((op, rest)) => (op.as_str(), rest),
        None => return usage(),
    };
    let report = match rest.last() {
        Some(r) => PathBuf::from(r),
        None => return usage(),
    };
    let result = match (op, rest) {
        ("create", [root, id, bundle, console, _]) => {
            let console = (console != "-").then(|| PathBuf::from(console));
            create(Path::new(root), id, Path::new(bundle), console).map(|pid| pid.to_string())
        }
        ("start", [root, id, _]) => start(Path::new(root), id).map(|()| "started".to_string()),
        ("delete", [root, id, _]) => delete(Path::new(root), id).map(|()| "deleted".to_string()),
        // `exec <root> <id> <report> [--tty <console socket>] -- <cmd>…` reports and exits as
        // the exec'd process does.
        ("exec", [root, id, report, cmd @ ..]) => {
            let (console, cmd) = match cmd {
                [flag, console, rest @ ..] if flag == "--tty" => (Some(Path::new(console)), rest),
                _ => (None, cmd),
            };
            let cmd = match cmd {
                [sep, rest @ ..] if sep == "--" => rest,
                _ => cmd,
            };
            return exec::run(Path::new(root), id, Path::new(report), console, cmd);
        }
        _ => return usage(),
    };
    let (line, code) = match result {
        Ok(line) => (line, 0),
        Err(e) => (format!("error: {}", e.replace('\n', " ")), 1),
    };
    if let Err(e) = write_report(&report, &line) {
        eprintln!("berthd init: write report {}: {e}", report.display());
        return 2;
    }
    code
}

/// What a request to a standby is: `exec`'s arguments, each ended by a NUL. None when an
/// argument holds a NUL itself (no process could get it as an argument either).
pub fn standby_request(args: &[&std::ffi::OsStr]) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let mut request = Vec::new();
    for arg in args {
        let bytes = arg.as_bytes();
        if bytes.contains(&0) {
            return None;
        }
        request.extend_from_slice(bytes);
        request.push(0);
    }
    Some(request)
}

/// A standby's request, back into arguments: only an `exec <root> <id> <report> -- <cmd>…`,
/// without a terminal, is taken.
fn parse_standby_request(bytes: &[u8]) -> Option<Vec<String>> {
    let body = bytes.strip_suffix(&[0])?;
    let args: Vec<String> = body
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    (args.len() > 5 && args[0] == "exec" && args[4] == "--").then_some(args)
}

/// The standby's wait: what does not depend on the request is done first (the cgroup
/// hierarchies, from a mountinfo that grows with every pod), then it trims and waits for the
/// request, reads it to its end, and stdin becomes /dev/null, as an ExecSync's has. None: stdin
/// closed without a request (the agent is gone, or let us go).
fn standby() -> Result<Option<Vec<String>>, String> {
    use std::io::Read;
    use std::os::fd::{AsFd, AsRawFd};
    let _ = crate::cgroups::hierarchies();
    // What start-up touched is given back while it waits, maybe for long: the file pages come
    // back from the page cache as the request's work faults them in.
    let stdin = std::io::stdin();
    let _ = crate::trim::trim_then_wait(&mut [nix::poll::PollFd::new(
        stdin.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )]);
    let mut request = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut request)
        .map_err(|e| format!("read the request: {e}"))?;
    if request.is_empty() {
        return Ok(None);
    }
    let args = parse_standby_request(&request)
        .ok_or_else(|| format!("not an exec request ({} bytes)", request.len()))?;
    let null = std::fs::File::open("/dev/null").map_err(|e| format!("open /dev/null: {e}"))?;
    nix::unistd::dup2(null.as_raw_fd(), 0).map_err(|e| format!("stdin from /dev/null: {e}"))?;
    Ok(Some(args))
}

/// Containers inherit our signal state through libcontainer's clone: give them a clean one.
/// The monitor blocks SIGCHLD/SIGTERM/SIGINT for its signalfd and Rust ignores SIGPIPE; a
/// container must see neither (a shell that traps TERM would never get it).
fn reset_signals() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for signal in Signal::iterator() {
        if matches!(signal, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing SIG_DFL runs no code of ours in a signal context.
        let _ = unsafe { sigaction(signal, &default) };
    }
    let _ = SigSet::empty().thread_set_mask();
}

fn usage() -> i32 {
    eprintln!("usage: berthd init create|start|delete <state root> <id> [<bundle>] <report file>");
    2
}

fn write_report(path: &Path, line: &str) -> std::io::Result<()> {
    berth_common::atomic::write_atomic_unsynced(path, format!("{line}\n").as_bytes())
}

fn create(root: &Path, id: &str, bundle: &Path, console: Option<PathBuf>) -> Result<i32, String> {
    berth_common::crash::point("executor-create");
    std::fs::create_dir_all(root).map_err(|e| format!("create {}: {e}", root.display()))?;
    // This process stays in the monitor's cgroups: libcontainer moves the container's
    // intermediate process into the container's own. (Its v1 /sys/fs/cgroup emulation, which
    // needed the parent in the root cgroup, is never asked for: the spec lays that out itself.)
    let spec = Spec::load(bundle.join("config.json")).ok();
    // The systemd driver's cgroupsPath (`slice:prefix:name`) has libcontainer make the
    // container's scope over D-Bus instead of its cgroup directories.
    let systemd = spec
        .as_ref()
        .and_then(|s| s.linux().as_ref().and_then(|l| l.cgroups_path().clone()))
        .is_some_and(|p| crate::cgroups::systemd::is_systemd_form(&p));
    // A spec that does not load is libcontainer's to report.
    let filtered = match &spec {
        Some(spec) => {
            filtered::prepare(bundle, spec).map_err(|e| format!("container {id}: {e}"))?
        }
        None => None,
    };
    let mut builder = ContainerBuilder::new(id.to_string(), SyscallType::Linux)
        .with_root_path(root)
        .and_then(|b| b.validate_id())
        .map_err(|e| format!("container {id}: {e}"))?
        .with_console_socket(console);
    let bundle = match filtered {
        Some((copy, executor)) => {
            builder = builder.with_executor(executor);
            copy
        }
        None => bundle.to_path_buf(),
    };
    let container = builder
        .as_init(bundle)
        .with_systemd(systemd)
        .with_detach(true)
        .build()
        .map_err(|e| format!("create container {id}: {e}"))?;
    container
        .pid()
        .map(|p| p.as_raw())
        .ok_or_else(|| format!("container {id}: created without a pid"))
}

fn load(root: &Path, id: &str) -> Result<Container, String> {
    Container::load(root.join(id)).map_err(|e| format!("load container {id}: {e}"))
}

/// Starts a created container: tells its init, waiting in the create's notify socket, to go
/// on, and records it running. Nothing here needs a fresh process (no namespace, cgroup or
/// credential changes, and berth's specs carry no hooks), so the pod monitor runs it itself.
pub(crate) fn start(root: &Path, id: &str) -> Result<(), String> {
    load(root, id)?
        .start()
        .map_err(|e| format!("start container {id}: {e}"))
}

fn delete(root: &Path, id: &str) -> Result<(), String> {
    match load(root, id) {
        Ok(mut c) => c
            .delete(true)
            .map_err(|e| format!("delete container {id}: {e}")),
        // Never created, or already deleted.
        Err(_) if !root.join(id).exists() => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    #[test]
    fn a_standby_request_gives_back_the_exec_arguments_it_was_made_of() {
        let args = [
            "exec",
            "/run/b/pods/p/runc",
            "c1",
            "/run/b/r.report",
            "--",
            "ls",
            "--tty",
            "",
        ];
        let request = standby_request(&args.map(OsStr::new)).unwrap();
        assert_eq!(parse_standby_request(&request).unwrap(), args);
    }

    #[test]
    fn a_standby_takes_only_whole_exec_requests_without_a_terminal() {
        // An argument with a NUL in it cannot be sent (nor exec'd).
        assert_eq!(
            standby_request(&[OsStr::new("exec"), OsStr::new("a\0b")]),
            None
        );
        for bad in [
            &b"exec\0root\0id"[..],
            b"create\0root\0id\0bundle\0-\0report\0",
            b"exec\0root\0id\0report\0--tty\0sock\0--\0sh\0",
            b"exec\0root\0id\0report\0--\0",
            b"\0",
        ] {
            assert_eq!(parse_standby_request(bad), None, "{bad:?}");
        }
    }
}
