//! ExecSync, the agent's side: run a command in a container through `berthd init exec` and
//! collect its output; on timeout it is killed as a cancelled exec is (`exec`).
//!
//! Output read after the executor has exited is drained for at most [`DRAIN_GRACE`]: a
//! background process the command left behind may hold the pipes open indefinitely.

use std::io;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use super::exec::{self, ExecutorStdio, TERM_GRACE};
use super::exec_standby::ExecSpare;

/// stdout and stderr together keep at most this much; the rest is read and discarded. kubelet
/// takes replies of at most 16 MiB, and a reply it cannot take fails the probe instead of
/// showing its output: the cap leaves room for the reply's framing.
pub const OUTPUT_CAP: usize = 16 * 1024 * 1024 - 4096;
/// How long output is still read after the executor has exited.
pub const DRAIN_GRACE: Duration = Duration::from_secs(1);

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
/// capturing stdout and stderr within [`OUTPUT_CAP`] together (excess is discarded but still drained), killing
/// the whole process tree on timeout (timeout 0 = none). No zombie or stray process may remain.
pub async fn exec_sync(
    berthd: &Path,
    state_root: &Path,
    id: &str,
    cmd: &[String],
    timeout: Duration,
) -> Result<ExecOutput, ExecError> {
    collect(start(berthd, state_root, id, cmd)?, id, timeout).await
}

/// [`exec_sync`], handed to the standby executor when one waits; a new one is started at once.
/// Returns whether the standby took it.
pub(super) async fn exec_sync_through(
    spare: &ExecSpare,
    berthd: &Path,
    state_root: &Path,
    id: &str,
    cmd: &[String],
    timeout: Duration,
) -> (bool, Result<ExecOutput, ExecError>) {
    let (standby, started) = match spare.hand(state_root, id, cmd).await {
        Some(started) => (true, Ok(started)),
        None => (false, start(berthd, state_root, id, cmd)),
    };
    // The next one starts up while this one runs: an exec is one process after another, and
    // leaves the other CPUs to it; it is ready for an ExecSync that comes right after.
    spare.refill();
    let result = match started {
        Ok(started) => collect(started, id, timeout).await,
        Err(e) => Err(e),
    };
    (standby, result)
}

/// `berthd init exec` with stdin /dev/null, stdout and stderr piped.
fn start(
    berthd: &Path,
    state_root: &Path,
    id: &str,
    cmd: &[String],
) -> Result<exec::Started, ExecError> {
    exec::start(
        berthd,
        state_root,
        id,
        cmd,
        None,
        ExecutorStdio {
            stdin: Stdio::null(),
            stdout: Stdio::piped(),
            stderr: Stdio::piped(),
        },
    )
}

/// The started exec's output and exit code, or its kill once `timeout` has passed.
async fn collect(
    started: exec::Started,
    id: &str,
    timeout: Duration,
) -> Result<ExecOutput, ExecError> {
    let exec::Started {
        mut running,
        mut stdout,
        mut stderr,
        ..
    } = started;
    let mut out = Vec::new();
    let mut err = Vec::new();
    let (mut out_buf, mut err_buf) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    // Stands for "never" where a deadline is not armed.
    let never = Instant::now() + Duration::from_secs(10 * 365 * 24 * 3600);
    // A timeout past any instant the clock can name is none (CRI's is an int64 of seconds).
    let mut deadline = if timeout.is_zero() {
        never
    } else {
        Instant::now()
            .checked_add(timeout)
            .unwrap_or(never)
            .min(never)
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
                Ok(n) if n > 0 => keep(&mut out, err.len(), &out_buf[..n]),
                _ => stdout = None,
            },
            n = read_some(&mut stderr, &mut err_buf) => match n {
                Ok(n) if n > 0 => keep(&mut err, out.len(), &err_buf[..n]),
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
    let exit_code = running.exit_code(id, status)?;
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

pub(super) async fn read_some<R: AsyncRead + Unpin>(
    r: &mut Option<R>,
    buf: &mut [u8],
) -> io::Result<usize> {
    match r {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Appends what still fits under [`OUTPUT_CAP`], which `other` (the other stream's output so
/// far) shares.
fn keep(into: &mut Vec<u8>, other: usize, bytes: &[u8]) {
    let room = OUTPUT_CAP.saturating_sub(into.len() + other);
    into.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_capped_but_the_rest_accepted() {
        let mut v = vec![0u8; OUTPUT_CAP - 3];
        keep(&mut v, 0, b"abcdef");
        assert_eq!(v.len(), OUTPUT_CAP);
        assert_eq!(&v[OUTPUT_CAP - 3..], b"abc");
        keep(&mut v, 0, b"more");
        assert_eq!(v.len(), OUTPUT_CAP);
    }

    #[test]
    fn both_streams_share_the_cap() {
        let mut err = vec![0u8; 10];
        keep(&mut err, OUTPUT_CAP - 12, b"abcdef");
        assert_eq!(err.len(), 12);
        keep(&mut err, OUTPUT_CAP - 12, b"x");
        assert_eq!(err.len(), 12);
    }
}
