//! What ExecSync and streaming exec share: `berthd init exec` started (a fork+exec, never a
//! bare fork: the agent is multi-threaded), killed with everything it started when the caller
//! gives up, and its report file turned into an exit code.
//!
//! Killing: the agent sends SIGTERM to the executor, whose handler SIGKILLs the exec'd process's
//! process group at once (the executor is its parent, so the pid is never a recycled one), sweeps
//! its session, reaps it and exits. If the executor has not gone within a second (stuck in
//! libcontainer), the agent SIGKILLs the exec'd process's group itself (pid from the report file's
//! `pid <n>` line) and the executor's own process group (the executor and any clone of it that has
//! not exec'd yet). A dropped (cancelled) call ends the same way, in a background task.

use std::ffi::OsStr;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

use super::exec_sync::ExecError;

/// How long the executor gets to kill the exec'd process after SIGTERM before we do it.
pub(super) const TERM_GRACE: Duration = Duration::from_secs(1);

/// An executor just started, with the ends of whichever stdio pipes were asked for.
pub(super) struct Started {
    pub running: Running,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
}

/// The executor's stdio: the exec'd process's, unless it has a terminal.
pub(super) struct ExecutorStdio {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

/// Starts `berthd init exec` for `cmd` in container `id` (libcontainer state under
/// `state_root`), with a terminal sent to `console` if given.
pub(super) fn start(
    berthd: &Path,
    state_root: &Path,
    id: &str,
    cmd: &[String],
    console: Option<&Path>,
    stdio: ExecutorStdio,
) -> Result<Started, ExecError> {
    if cmd.is_empty() {
        return Err(ExecError::Failed(format!(
            "exec in container {id}: no command"
        )));
    }
    let report = report_path(state_root, id);
    let _ = std::fs::remove_file(&report);
    let mut child = Command::new(berthd)
        .arg("init")
        .args(exec_args(state_root, id, &report, console, cmd))
        .stdin(stdio.stdin)
        .stdout(stdio.stdout)
        .stderr(stdio.stderr)
        // Its own group: the fallback kill reaches it and its not-yet-exec'd clones, nothing else.
        .process_group(0)
        .spawn()
        .map_err(|e| ExecError::Failed(format!("run {} init exec: {e}", berthd.display())))?;
    Ok(Started {
        stdin: child.stdin.take(),
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
        running: Running::new(child, report),
    })
}

/// What follows `berthd init` for an exec: `exec <root> <id> <report> [--tty <console socket>]
/// -- <cmd>…`, as the executor (`berth_runtime::executor`) reads it.
pub(super) fn exec_args<'a>(
    state_root: &'a Path,
    id: &'a str,
    report: &'a Path,
    console: Option<&'a Path>,
    cmd: &'a [String],
) -> Vec<&'a OsStr> {
    let mut args = vec![
        OsStr::new("exec"),
        state_root.as_os_str(),
        OsStr::new(id),
        report.as_os_str(),
    ];
    if let Some(console) = console {
        args.extend([OsStr::new("--tty"), console.as_os_str()]);
    }
    args.push(OsStr::new("--"));
    args.extend(cmd.iter().map(OsStr::new));
    args
}

/// The executor until it has been reaped. Dropped earlier (a cancelled call), it is told to kill
/// the exec'd process and a background task waits for it. The report file goes in both cases.
pub(super) struct Running {
    child: Option<Child>,
    report: PathBuf,
}

impl Running {
    /// The executor `child`, reporting to `report`.
    pub(super) fn new(child: Child, report: PathBuf) -> Running {
        Running {
            child: Some(child),
            report,
        }
    }

    /// Waits for the executor to exit and reaps it.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        let Some(child) = self.child.as_mut() else {
            return Err(io::Error::other("already reaped"));
        };
        let status = child.wait().await;
        if status.is_ok() {
            self.child = None;
        }
        status
    }

    /// Asks the executor to kill the exec'd process (see `executor::exec`).
    pub fn terminate(&self) {
        if let Some(child) = &self.child {
            terminate(child);
        }
    }

    /// The executor did not do it: SIGKILL the exec'd process's group and the executor's group.
    pub fn kill_all(&self) {
        if let Some(child) = &self.child {
            kill_all(child, &self.report);
        }
    }

    /// The exec'd process's exit code from the report, once the executor has exited with
    /// `status`. A report without an outcome means the executor died (killed from outside?)
    /// before it could reap: whatever it started must not run on unseen.
    pub fn exit_code(&self, id: &str, status: io::Result<ExitStatus>) -> Result<i32, ExecError> {
        let line = std::fs::read_to_string(&self.report).unwrap_or_default();
        if let Err(None) = parse_report(&line) {
            kill_reported(&line);
        }
        parse_report(&line).map_err(|e| {
            let status = match &status {
                Ok(s) => exit_description(*s),
                Err(e) => format!("unknown status ({e})"),
            };
            ExecError::Failed(format!(
                "exec in container {id}: {}",
                e.unwrap_or_else(|| format!("berthd init exec {status} without a report"))
            ))
        })
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

/// A file of our own beside libcontainer's state (`<root>/<id>.exec-<tag>.<suffix>`).
pub(super) fn exec_file(state_root: &Path, id: &str, suffix: &str) -> PathBuf {
    state_root.join(format!("{id}.exec-{}.{suffix}", exec_tag()))
}

/// `<our pid>-<n>`: unique among the execs of this agent and of any other on the host.
pub(super) fn exec_tag() -> String {
    let n = NEXT_EXEC.fetch_add(1, Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

pub(super) fn report_path(state_root: &Path, id: &str) -> PathBuf {
    exec_file(state_root, id, "report")
}

fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
}

fn kill_all(child: &Child, report: &Path) {
    kill_reported(&std::fs::read_to_string(report).unwrap_or_default());
    // Not yet reaped, so its pid still names its group.
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(-(pid as i32)), Signal::SIGKILL);
    }
}

/// The report's last line: where the exec stands (`pid <n>`, then `exited <code>` or
/// `error: …` appended after it).
fn last_line(report: &str) -> &str {
    report.lines().last().unwrap_or_default().trim()
}

/// SIGKILLs the process group of the exec'd process when the report's last line (`pid <n>`)
/// says it has started and not been reaped. (Its pid is not reused in between: pids are handed
/// out cyclically.)
fn kill_reported(report: &str) {
    if let Some(pid) = reported_pid(report) {
        let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
    }
}

/// The exec'd process's pid while the report ends at it.
fn reported_pid(report: &str) -> Option<i32> {
    last_line(report)
        .strip_prefix("pid ")
        .and_then(|p| p.parse::<i32>().ok())
        .filter(|&p| p > 1)
}

/// The exit code from the executor's last report line; `Err(Some(msg))` for `error: msg`.
fn parse_report(text: &str) -> Result<i32, Option<String>> {
    let line = last_line(text);
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
        // The outcome is appended after the pid.
        assert_eq!(parse_report("pid 42\nexited 7\n"), Ok(7));
        assert_eq!(
            parse_report("pid 42\nerror: wait: gone\n"),
            Err(Some("wait: gone".into()))
        );
    }

    /// The pid is killed only while it is the report's last word: once the outcome follows it,
    /// the process is reaped and its pid may be another's.
    #[test]
    fn only_a_report_that_ends_at_the_pid_names_a_process_to_kill() {
        assert_eq!(reported_pid("pid 42\n"), Some(42));
        assert_eq!(reported_pid("pid 42\nexited 0\n"), None);
        assert_eq!(reported_pid("pid 42\nerror: wait: gone\n"), None);
        assert_eq!(reported_pid("pid 1\n"), None);
        assert_eq!(reported_pid(""), None);
    }
}
