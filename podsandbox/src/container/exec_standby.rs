//! The ExecSync standby: one `berthd init exec-standby` kept waiting, so that the next ExecSync
//! hands it its command instead of starting an executor (the spawn, the exec of our binary and
//! its start-up, and the read of the cgroup hierarchies: about a quarter of an ExecSync of
//! `true`). A new standby starts up as soon as one is handed its command, beside that exec
//! (which is one process after another, leaving the other CPUs idle); an agent's first ExecSync
//! starts the first. It belongs to this agent: it exits when the agent's end of its stdin
//! closes, whatever ends the agent. Only ExecSync uses it: a streaming exec's stdio is the
//! session's.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

use super::exec::{report_path, Running, Started};

pub(crate) struct ExecSpare {
    /// The agent's state dir, on the standby's command line: whose it is.
    state: PathBuf,
    slot: Mutex<Slot>,
    /// `berth_exec_standby_waiting`: 1 while the slot is `Ready`.
    waiting: Gauge,
}

enum Slot {
    /// `[runtime] exec_standby = false`.
    Off,
    Empty,
    Starting,
    Ready(Box<Standby>),
}

/// A started `berthd init exec-standby`, reading its request from `request`.
struct Standby {
    child: Child,
    request: ChildStdin,
    stdout: ChildStdout,
    stderr: ChildStderr,
}

impl ExecSpare {
    pub(crate) fn new(state: &Path, enabled: bool, waiting: Gauge) -> Arc<ExecSpare> {
        Arc::new(ExecSpare {
            state: state.to_path_buf(),
            slot: Mutex::new(if enabled { Slot::Empty } else { Slot::Off }),
            waiting,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self) -> Option<Standby> {
        let mut slot = self.lock();
        match std::mem::replace(&mut *slot, Slot::Empty) {
            Slot::Ready(standby) => {
                self.waiting.set(0);
                Some(*standby)
            }
            other => {
                *slot = other;
                None
            }
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
        let report = report_path(state_root, id);
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("exec"),
            state_root.as_os_str(),
            OsStr::new(id),
            report.as_os_str(),
            OsStr::new("--"),
        ];
        args.extend(cmd.iter().map(OsStr::new));
        // No command, or one no process could be given: the usual start's to refuse.
        if cmd.is_empty() {
            return None;
        }
        let request = berth_runtime::executor::standby_request(&args)?;
        let Standby {
            child,
            request: mut pipe,
            stdout,
            stderr,
        } = self.take()?;
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
    pub(crate) fn refill(self: &Arc<Self>) {
        {
            let mut slot = self.lock();
            if !matches!(*slot, Slot::Empty) {
                return;
            }
            *slot = Slot::Starting;
        }
        let spare = self.clone();
        tokio::spawn(async move {
            let started = start(&spare.state);
            let mut slot = spare.lock();
            *slot = match started {
                Ok(standby) => {
                    tracing::debug!(pid = standby.child.id(), "standby executor waiting");
                    spare.waiting.set(1);
                    Slot::Ready(Box::new(standby))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "standby executor did not start: the next ExecSync starts its own");
                    Slot::Empty
                }
            };
        });
    }
}

/// `berthd init exec-standby <state>`, in a process group of its own as every executor.
fn start(state: &Path) -> std::io::Result<Standby> {
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
    Ok(Standby {
        request: child.stdin.take().ok_or_else(missing)?,
        stdout: child.stdout.take().ok_or_else(missing)?,
        stderr: child.stderr.take().ok_or_else(missing)?,
        child,
    })
}
