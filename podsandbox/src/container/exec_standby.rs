//! The ExecSync standby: one `berthd init exec-standby` kept waiting, so that the next ExecSync
//! hands it its command instead of starting an executor (the spawn, the exec of our binary and
//! its start-up, and the read of the cgroup hierarchies: about a quarter of an ExecSync of
//! `true`). A new standby starts up as soon as one is handed its command, beside that exec
//! (which is one process after another, leaving the other CPUs idle); an agent's first ExecSync
//! starts the first (`crate::standby` keeps it). Only ExecSync uses it: a streaming exec's stdio
//! is the session's.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

use super::exec::{exec_args, report_path, Running, Started};
use crate::standby::Standby;

pub(crate) struct ExecSpare {
    /// The agent's state dir, on the standby's command line: whose it is.
    state: PathBuf,
    standby: Arc<Standby<Waiting>>,
}

/// A started `berthd init exec-standby`, reading its request from `request`.
struct Waiting {
    child: Child,
    request: ChildStdin,
    stdout: ChildStdout,
    stderr: ChildStderr,
}

impl ExecSpare {
    pub(crate) fn new(state: &Path, enabled: bool, waiting: Gauge) -> ExecSpare {
        ExecSpare {
            state: state.to_path_buf(),
            standby: Standby::new(
                "standby executor",
                "the next ExecSync starts its own",
                enabled,
                waiting,
            ),
        }
    }

    /// Hands `cmd` in container `id` to the standby, when one waits: the executor as
    /// [`super::exec::start`] gives it, with stdin /dev/null and stdout and stderr piped. None
    /// when none waits, or the one that waited could not take it (it is let go); the caller
    /// starts an executor then.
    pub(super) async fn hand(
        &self,
        state_root: &Path,
        id: &str,
        cmd: &[String],
    ) -> Option<Started> {
        // No command, or one no process could be given: the usual start's to refuse.
        if cmd.is_empty() {
            return None;
        }
        let report = report_path(state_root, id);
        let request = berth_runtime::executor::standby_request(&exec_args(
            state_root, id, &report, None, cmd,
        ))?;
        let Waiting {
            child,
            request: mut pipe,
            stdout,
            stderr,
        } = self.standby.take()?;
        let _ = std::fs::remove_file(&report);
        // Read to its end by the standby: it goes on once this end is dropped.
        let sent = pipe.write_all(&request).await;
        drop(pipe);
        if let Err(e) = sent {
            tracing::warn!(error = %e, "the standby executor did not take its ExecSync: one is started for it");
            // Dropped as a cancelled exec is: told to stop, reaped in the background.
            drop(Running::new(child, report));
            return None;
        }
        Some(Started {
            running: Running::new(child, report),
            stdin: None,
            stdout: Some(stdout),
            stderr: Some(stderr),
        })
    }

    /// Starts a standby in the background, unless one waits or is being started (or they are
    /// off).
    pub(crate) fn refill(&self) {
        let state = self.state.clone();
        self.standby.refill(move || async move { start(&state) });
    }
}

/// `berthd init exec-standby <state>`, in a process group of its own as every executor.
fn start(state: &Path) -> std::io::Result<Waiting> {
    let berthd = std::env::current_exe()?;
    let mut child = Command::new(berthd)
        .args(["init", "exec-standby"])
        .arg(state)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let missing = || std::io::Error::other("a stdio pipe is missing");
    Ok(Waiting {
        request: child.stdin.take().ok_or_else(missing)?,
        stdout: child.stdout.take().ok_or_else(missing)?,
        stderr: child.stderr.take().ok_or_else(missing)?,
        child,
    })
}
