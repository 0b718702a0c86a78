//! ExecSync, the agent's side: run a command in a container through `berthd init exec` (a
//! fork+exec, never a bare fork: the agent is multi-threaded) and collect its output.
//!
//! Timeout: the agent sends SIGTERM to the executor, whose handler SIGKILLs the exec'd process's
//! process group at once (the executor is its parent, so the pid is never a recycled one), sweeps
//! its session, reaps it and exits. If the executor has not gone within a second (stuck in
//! libcontainer), the agent SIGKILLs the exec'd process's group itself (pid from the report file's
//! `pid <n>` line) and the executor's own process group (the executor and any clone of it that has
//! not exec'd yet). A dropped (cancelled) call ends the same way, in a background task.
//!
//! Output read after the executor has exited is drained for at most [`DRAIN_GRACE`]: a
//! background process the command left behind may hold the pipes open indefinitely.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Each of stdout and stderr keeps at most this much; the rest is read and discarded.
pub const OUTPUT_CAP: usize = 16 * 1024 * 1024;
/// How long output is still read after the executor has exited.
pub const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// How long the executor gets to kill the exec'd process after SIGTERM before we do it.
const TERM_GRACE: Duration = Duration::from_secs(1);

/// What an exec'd command left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    /// The command ran longer than the timeout and was killed.
    #[error("command timed out after {0:?} and was killed")]
    TimedOut(Duration),
    /// The command could not be run (unknown container, binary not found, executor failure…).
    #[error("{0}")]
    Failed(String),
}

/// Runs `cmd` in container `id` (libcontainer state under `state_root`) with `berthd init exec`,
/// capturing stdout/stderr each capped at 16 MiB (excess is discarded but still drained), killing
/// the whole process tree on timeout (timeout 0 = none). No zombie or stray process may remain.
pub async fn exec_sync(
    berthd: &Path,
    state_root: &Path,
    id: &str,
    cmd: &[String],
    timeout: Duration,
) -> Result<ExecOutput, ExecError> {
    if cmd.is_empty() {
        return Err(ExecError::Failed(format!(
            "exec in container {id}: no command"
        )));
    }
    let report = report_path(state_root, id);
    let _ = std::fs::remove_file(&report);
    let mut child = Command::new(berthd)
        .arg("init")
        .arg("exec")
        .arg(state_root)
        .arg(id)
        .arg(&report)
        .arg("--")
        .args(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group: the fallback kill reaches it and its not-yet-exec'd clones, nothing else.
        .process_group(0)
        .spawn()
        .map_err(|e| ExecError::Failed(format!("run {} init exec: {e}", berthd.display())))?;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let mut running = Running {
        child: Some(child),
        report,
    };

    let mut out = Vec::new();
    let mut err = Vec::new();
    let (mut out_buf, mut err_buf) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    // Stands for "never" where a deadline is not armed.
    let never = Instant::now() + Duration::from_secs(10 * 365 * 24 * 3600);
    let mut deadline = if timeout.is_zero() {
        never
    } else {
        Instant::now() + timeout
    };
    let mut status: Option<io::Result<ExitStatus>> = None;
    let mut drain_deadline = never;
    let mut kill = Kill::NotYet;
    loop {
        if status.is_some() && stdout.is_none() && stderr.is_none() {
            break;
        }
        tokio::select! {
            n = read_some(&mut stdout, &mut out_buf) => match n {
                Ok(n) if n > 0 => keep(&mut out, &out_buf[..n]),
                _ => stdout = None,
            },
            n = read_some(&mut stderr, &mut err_buf) => match n {
                Ok(n) if n > 0 => keep(&mut err, &err_buf[..n]),
                _ => stderr = None,
            },
            s = running.wait(), if status.is_none() => {
                status = Some(s);
                drain_deadline = Instant::now() + DRAIN_GRACE;
            }
            _ = tokio::time::sleep_until(deadline), if status.is_none() && kill != Kill::Killed => {
                if kill == Kill::NotYet {
                    running.terminate();
                    kill = Kill::Terminated;
                    deadline = Instant::now() + TERM_GRACE;
                } else {
                    running.kill_all();
                    kill = Kill::Killed;
                }
            }
            _ = tokio::time::sleep_until(drain_deadline) => break,
        }
    }
    if kill != Kill::NotYet {
        return Err(ExecError::TimedOut(timeout));
    }
    let status = status.unwrap_or_else(|| Err(io::Error::other("not waited for")));
    let line = std::fs::read_to_string(&running.report).unwrap_or_default();
    if let Err(None) = parse_report(&line) {
        // The executor died (killed from outside?) before it could reap: whatever it started must
        // not run on unseen.
        kill_reported(&line);
    }
    let exit_code = parse_report(&line).map_err(|e| {
        let status = match &status {
            Ok(s) => exit_description(*s),
            Err(e) => format!("unknown status ({e})"),
        };
        ExecError::Failed(format!(
            "exec in container {id}: {}",
            e.unwrap_or_else(|| format!("berthd init exec {status} without a report"))
        ))
    })?;
    Ok(ExecOutput {
        stdout: out,
        stderr: err,
        exit_code,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    NotYet,
    /// SIGTERM sent to the executor.
    Terminated,
    /// SIGKILL sent to both process groups.
    Killed,
}

/// The executor until it has been reaped. Dropped earlier (a cancelled call), it is told to kill
/// the exec'd process and a background task waits for it. The report file goes in both cases.
struct Running {
    child: Option<Child>,
    report: PathBuf,
}

impl Running {
    /// Waits for the executor to exit and reaps it.
    async fn wait(&mut self) -> io::Result<ExitStatus> {
        let Some(child) = self.child.as_mut() else {
            return Err(io::Error::other("already reaped"));
        };
        let status = child.wait().await;
        if status.is_ok() {
            self.child = None;
        }
        status
    }

    fn terminate(&self) {
        if let Some(child) = &self.child {
            terminate(child);
        }
    }

    fn kill_all(&self) {
        if let Some(child) = &self.child {
            kill_all(child, &self.report);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            let _ = std::fs::remove_file(&self.report);
            return;
        };
        terminate(&child);
        let report = self.report.clone();
        let cleanup = async move {
            if tokio::time::timeout(TERM_GRACE, child.wait())
                .await
                .is_err()
            {
                kill_all(&child, &report);
                let _ = child.wait().await;
            }
            let _ = std::fs::remove_file(&report);
        };
        // Without a runtime (shutting down) tokio reaps the dropped child on its own; the exec'd
        // process was already told to die.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(cleanup);
        }
    }
}

static NEXT_EXEC: AtomicU64 = AtomicU64::new(0);

/// A report file of our own beside libcontainer's state (`<root>/<id>.exec-<pid>-<n>.report`).
fn report_path(state_root: &Path, id: &str) -> PathBuf {
    let n = NEXT_EXEC.fetch_add(1, Ordering::Relaxed);
    state_root.join(format!("{id}.exec-{}-{n}.report", std::process::id()))
}

async fn read_some<R: AsyncRead + Unpin>(r: &mut Option<R>, buf: &mut [u8]) -> io::Result<usize> {
    match r {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Appends what still fits under [`OUTPUT_CAP`].
fn keep(into: &mut Vec<u8>, bytes: &[u8]) {
    let room = OUTPUT_CAP.saturating_sub(into.len());
    into.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

/// Asks the executor to kill the exec'd process (see `executor::exec`).
fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
}

/// The executor did not do it: SIGKILL the exec'd process's group and the executor's group.
fn kill_all(child: &Child, report: &Path) {
    kill_reported(&std::fs::read_to_string(report).unwrap_or_default());
    // Not yet reaped, so its pid still names its group.
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(-(pid as i32)), Signal::SIGKILL);
    }
}

/// SIGKILLs the process group of the exec'd process when the report (`pid <n>`) says it has
/// started and not been reaped. (Its pid is not reused in between: pids are handed out cyclically.)
fn kill_reported(report: &str) {
    let pid = report
        .trim()
        .strip_prefix("pid ")
        .and_then(|p| p.parse::<i32>().ok());
    if let Some(pid) = pid.filter(|&p| p > 1) {
        let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
    }
}

/// The exit code from the executor's last report line; `Err(Some(msg))` for `error: msg`.
fn parse_report(text: &str) -> Result<i32, Option<String>> {
    let line = text.trim();
    if let Some(code) = line.strip_prefix("exited ") {
        return code
            .parse()
            .map_err(|_| Some(format!("bad report {line:?}")));
    }
    match line.strip_prefix("error: ") {
        Some(e) => Err(Some(e.to_string())),
        None => Err(None),
    }
}

fn exit_description(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => format!("ended with {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_gives_exit_code_or_error() {
        assert_eq!(parse_report("exited 3\n"), Ok(3));
        assert_eq!(parse_report("exited 137"), Ok(137));
        assert_eq!(
            parse_report("error: exec in container c: not found\n"),
            Err(Some("exec in container c: not found".into()))
        );
        // Only the pid: the executor died before the process was reaped.
        assert_eq!(parse_report("pid 42\n"), Err(None));
        assert_eq!(parse_report(""), Err(None));
    }

    #[test]
    fn output_is_capped_but_the_rest_accepted() {
        let mut v = vec![0u8; OUTPUT_CAP - 3];
        keep(&mut v, b"abcdef");
        assert_eq!(v.len(), OUTPUT_CAP);
        assert_eq!(&v[OUTPUT_CAP - 3..], b"abc");
        keep(&mut v, b"more");
        assert_eq!(v.len(), OUTPUT_CAP);
    }
}
