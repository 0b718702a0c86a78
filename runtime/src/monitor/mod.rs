//! `berthd monitor`: one small single-threaded process per pod sandbox.
//!
//! It detaches from the agent (own session, re-parented to init by a fork), becomes a child
//! subreaper, creates and pins the pod's namespaces, applies hostname and sysctls, then reports
//! `ready <pid>` on the stdout pipe the agent reads and serves a control socket until told to
//! stop. It outlives agent restarts. The containers it starts are re-parented to it; `supervise`
//! keeps their stdio, logs (`log`, `timestamp`) and exits; `protocol` is what it and the agent say.

mod attach;
pub mod log;
mod namespaces;
pub mod protocol;
mod serve;
mod supervise;
mod timestamp;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::unistd::{fork, ForkResult};

pub use namespaces::unpin_all;
use protocol::{error_line, ready_line, MonitorConfig};

/// Entry point of `berthd monitor <config>`; returns the exit code. Must run before any thread
/// is started (it forks and unshares).
pub fn run(config_path: &Path) -> i32 {
    let config: MonitorConfig = match std::fs::read(config_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            report(&error_line(&format!(
                "monitor config {}: {e}",
                config_path.display()
            )));
            return 1;
        }
    };
    // A session of our own, so the agent's terminal or process group never signals us.
    let _ = nix::unistd::setsid();
    // SAFETY: the process is single-threaded here (called first thing from main), so the child
    // may run arbitrary code after fork.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { .. }) => return 0, // the agent reaps this one; init adopts the child
        Ok(ForkResult::Child) => {}
        Err(e) => {
            report(&error_line(&format!("fork: {e}")));
            return 1;
        }
    }
    let _ = nix::unistd::setsid();
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
    match serve::setup(&config) {
        Ok(monitor) => {
            report(&ready_line(std::process::id()));
            redirect_output(&config.pod_dir.join(protocol::LOG_FILE));
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

/// From now on stdout and stderr go to the pod's monitor log, closing the agent's pipe.
fn redirect_output(log: &Path) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log);
    let fd = match &file {
        Ok(f) => f.as_raw_fd(),
        Err(_) => return,
    };
    // SAFETY: dup2 onto the standard descriptors with a valid open fd; no Rust object owns 1 or 2.
    unsafe {
        libc::dup2(fd, 1);
        libc::dup2(fd, 2);
    }
}
