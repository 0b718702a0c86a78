//! `berthd monitor`: one small single-threaded process per pod sandbox.
//!
//! It detaches from the agent (own session, re-parented to init by a fork), becomes a child
//! subreaper, creates and pins the pod's namespaces, applies hostname and sysctls, then reports
//! `ready <pid>` on the stdout pipe the agent reads and serves a control socket until told to
//! stop. It outlives agent restarts. The containers it starts are re-parented to it;
//! `supervise` keeps their stdio, logs (`log`, `timestamp`) and exits; `protocol` is what it
//! and the agent say. A standby monitor (`run_standby`) is started before its pod and told
//! which pod on stdin, saving RunPodSandbox the exec; `title` then renames it for its pod.

mod attach;
pub mod log;
mod namespaces;
pub mod protocol;
mod serve;
mod supervise;
mod timestamp;
mod title;

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::unistd::{fork, ForkResult};

pub use namespaces::{unpin_all, unpin_all_but};
use protocol::{error_line, ready_line, MonitorConfig};

/// Entry point of `berthd monitor <config>`; returns the exit code. Must run before any thread
/// is started (it forks and unshares).
pub fn run(config_path: &Path) -> i32 {
    let config = match load_config(config_path) {
        Ok(c) => c,
        Err(e) => {
            report(&error_line(&e));
            return 1;
        }
    };
    if !detach() {
        return 0; // the agent reaps this one; init adopts the child
    }
    serve_pod(&config, false)
}

/// Entry point of `berthd monitor-standby <state> <room>`: a monitor started before its pod, so
/// that RunPodSandbox need not wait for an exec. Once detached it says `standby <pid>` and
/// waits on stdin for one line, the path of its pod's config (under `<state>/pods`), then goes
/// on as `run` does. End of input (the agent is gone, or stopped keeping a standby) ends it.
/// `room` is spaces enough for its command line to become the one `run` would have. It makes
/// the network, IPC and UTS namespaces most pods ask for before it says so.
pub fn run_standby(state: &Path) -> i32 {
    if !detach() {
        return 0;
    }
    let premade = namespaces::Premade::make();
    report(&protocol::standby_line(std::process::id()));
    // What the start-up touched (argument parsing, the loader's work) is not needed again.
    let stdin = std::io::stdin();
    let _ = crate::trim::trim_then_wait(&mut [nix::poll::PollFd::new(
        stdin.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )]);
    let mut line = String::new();
    match stdin.read_line(&mut line) {
        Ok(n) if n > 0 && line.ends_with('\n') => {}
        _ => return 0,
    }
    let config_path = Path::new(line.trim_end_matches('\n'));
    if !config_path.starts_with(state.join("pods")) {
        report(&error_line(&format!(
            "monitor config {} is not under {}",
            config_path.display(),
            state.join("pods").display()
        )));
        return 1;
    }
    let config = match load_config(config_path) {
        Ok(c) => c,
        Err(e) => {
            report(&error_line(&e));
            return 1;
        }
    };
    let exe = std::env::args_os().next().unwrap_or_default();
    title::retitle(&[
        exe.as_bytes(),
        b"monitor",
        config_path.as_os_str().as_bytes(),
    ]);
    // Its stdin was the agent's pipe; a fresh monitor's is /dev/null, and its stderr the pod's
    // monitor log.
    if let Ok(null) = std::fs::File::open("/dev/null") {
        // SAFETY: dup2 onto stdin with a valid open fd; no Rust object owns fd 0.
        unsafe { libc::dup2(null.as_raw_fd(), 0) };
    }
    redirect(&config.pod_dir.join(protocol::LOG_FILE), &[2]);
    let premade = match premade.map(|p| p.fit(&config)).transpose() {
        Ok(premade) => premade.is_some(),
        Err(e) => {
            report(&error_line(&format!("pod {}: {e}", config.sandbox_id)));
            return 1;
        }
    };
    serve_pod(&config, premade)
}

fn load_config(path: &Path) -> Result<MonitorConfig, String> {
    std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| format!("monitor config {}: {e}", path.display()))
}

/// Leaves the agent: a session of our own (so the agent's terminal or process group never
/// signals us), then a fork whose parent exits at once, re-parenting the child to init. True in
/// that child, which leads a session of its own too. And `/` as the working directory: the
/// agent's may be removed while the pod lives, and libcontainer asks for the working directory
/// (`getcwd`, which then fails) in every create and start.
fn detach() -> bool {
    let _ = nix::unistd::chdir("/");
    let _ = nix::unistd::setsid();
    // SAFETY: the process is single-threaded here (called first thing from main), so the child
    // may run arbitrary code after fork.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { .. }) => false,
        Ok(ForkResult::Child) => {
            let _ = nix::unistd::setsid();
            true
        }
        Err(e) => {
            report(&error_line(&format!("fork: {e}")));
            std::process::exit(1);
        }
    }
}

/// A detached monitor with its config: sets the pod up, reports, and serves until stopped.
/// `premade`: as for [`serve::setup`].
fn serve_pod(config: &MonitorConfig, premade: bool) -> i32 {
    // Known before anything can fail, so that an agent giving up on us can find and end us.
    let _ = std::fs::write(
        config.pod_dir.join(protocol::PID_FILE),
        std::process::id().to_string(),
    );
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag and no pointers.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        report(&error_line(&format!(
            "become subreaper: {}",
            std::io::Error::last_os_error()
        )));
        return 1;
    }
    match serve::setup(config, premade) {
        Ok(monitor) => {
            report(&ready_line(std::process::id()));
            redirect(&config.pod_dir.join(protocol::LOG_FILE), &[1, 2]);
            monitor.serve()
        }
        Err(e) => {
            report(&error_line(&format!("pod {}: {e}", config.sandbox_id)));
            let _ = unpin_all(&config.pod_dir);
            1
        }
    }
}

/// One line to the agent on stdout (a pipe it reads until EOF).
fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}

/// From now on the descriptors `fds` (stdout, stderr) go to the pod's monitor log; stdout's
/// move closes the agent's pipe.
fn redirect(log: &Path, fds: &[i32]) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log);
    let fd = match &file {
        Ok(f) => f.as_raw_fd(),
        Err(_) => return,
    };
    for &target in fds {
        // SAFETY: dup2 onto a standard descriptor with a valid open fd; no Rust object owns it.
        unsafe { libc::dup2(fd, target) };
    }
}
