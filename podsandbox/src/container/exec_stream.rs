//! Streaming exec (kubectl exec, crictl exec): a command in a running container with its stdio
//! relayed as it happens, through `berthd init exec` like ExecSync, with no timeout. With a tty
//! the executor has libcontainer open a pty in the container and send the master to a console
//! socket we listen on; resizes are applied to it. The caller dropping the future (its client
//! went away) kills the process and all it started.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::exec::{self, ExecutorStdio, Running};
use super::exec_sync::{read_some, ExecError, DRAIN_GRACE};
use super::fd_io;

/// How long libcontainer gets to send the terminal once the executor has started.
const TERMINAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The exec'd process's stdio as the caller sees it; `None` for what the client did not ask
/// for. `stdin` ending closes the process's stdin (without a tty). Sizes are `(width, height)`.
pub struct ExecStdio {
    pub tty: bool,
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<mpsc::Sender<Bytes>>,
    pub stderr: Option<mpsc::Sender<Bytes>>,
    pub resize: Option<mpsc::Receiver<(u16, u16)>>,
}

/// Runs `cmd` in container `id` to its end; its exit code (128 + signal if killed).
pub async fn exec_stream(
    berthd: &Path,
    state_root: &Path,
    id: &str,
    cmd: &[String],
    stdio: ExecStdio,
) -> Result<i32, ExecError> {
    if stdio.tty {
        exec_tty(berthd, state_root, id, cmd, stdio).await
    } else {
        exec_pipes(berthd, state_root, id, cmd, stdio).await
    }
}

fn piped_if(wanted: bool) -> Stdio {
    if wanted {
        Stdio::piped()
    } else {
        Stdio::null()
    }
}

async fn exec_pipes(
    berthd: &Path,
    state_root: &Path,
    id: &str,
    cmd: &[String],
    stdio: ExecStdio,
) -> Result<i32, ExecError> {
    let exec::Started {
        mut running,
        stdin,
        mut stdout,
        mut stderr,
    } = exec::start(
        berthd,
        state_root,
        id,
        cmd,
        None,
        ExecutorStdio {
            stdin: piped_if(stdio.stdin.is_some()),
            stdout: piped_if(stdio.stdout.is_some()),
            stderr: piped_if(stdio.stderr.is_some()),
        },
    )?;
    // Stdin runs on its own: a process that never reads it must not hold up its output.
    let feeding = stdin.zip(stdio.stdin).map(|(mut pipe, mut rx)| {
        tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                if pipe.write_all(&data).await.is_err() {
                    return;
                }
            }
            // The client's stdin ended: so does the process's (the pipe closes on drop).
        })
    });
    let (out_tx, err_tx) = (stdio.stdout, stdio.stderr);
    let (mut out_buf, mut err_buf) = (vec![0u8; 32 * 1024], vec![0u8; 32 * 1024]);
    let mut status = None;
    let mut drain_until = None;
    while status.is_none() || stdout.is_some() || stderr.is_some() {
        tokio::select! {
            n = read_some(&mut stdout, &mut out_buf) => {
                if !relay(n, &out_buf, out_tx.as_ref()).await {
                    stdout = None;
                }
            }
            n = read_some(&mut stderr, &mut err_buf) => {
                if !relay(n, &err_buf, err_tx.as_ref()).await {
                    stderr = None;
                }
            }
            s = running.wait(), if status.is_none() => {
                status = Some(s);
                // A background process the command left may hold the pipes open.
                drain_until = Some(Instant::now() + DRAIN_GRACE);
            }
            _ = sleep_until(drain_until) => break,
        }
    }
    if let Some(f) = feeding {
        f.abort();
    }
    let status = status.unwrap_or_else(|| Err(io::Error::other("not waited for")));
    running.exit_code(id, status)
}

/// Forwards what a read gave; false at EOF, on error, or when the caller stopped listening.
async fn relay(read: io::Result<usize>, buf: &[u8], to: Option<&mpsc::Sender<Bytes>>) -> bool {
    match (read, to) {
        (Ok(n), Some(to)) if n > 0 => to.send(Bytes::copy_from_slice(&buf[..n])).await.is_ok(),
        _ => false,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn exec_tty(
    berthd: &Path,
    state_root: &Path,
    id: &str,
    cmd: &[String],
    stdio: ExecStdio,
) -> Result<i32, ExecError> {
    let failed = |what: &str, e: io::Error| {
        ExecError::Failed(format!("exec in container {id}: {what}: {e}"))
    };
    let console = exec::exec_file(state_root, id, "console.sock");
    let name = console
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("console.sock")
        .to_string();
    // sun_path is short; the state root may not be.
    let (_dir, short) = berth_runtime::monitor::protocol::short_socket_path(state_root, &name)
        .map_err(|e| failed("console socket", e))?;
    let _ = std::fs::remove_file(&console);
    let listener = UnixListener::bind(&short).map_err(|e| failed("bind console socket", e))?;
    let _unlink = Unlink(&console);
    let exec::Started { mut running, .. } = exec::start(
        berthd,
        state_root,
        id,
        cmd,
        Some(&console),
        ExecutorStdio {
            stdin: Stdio::null(),
            stdout: Stdio::null(),
            stderr: Stdio::null(),
        },
    )?;
    let master = tokio::select! {
        accepted = tokio::time::timeout(TERMINAL_TIMEOUT, listener.accept()) => {
            let (socket, _) = accepted
                .map_err(|_| ExecError::Failed(format!("exec in container {id}: no terminal arrived")))?
                .map_err(|e| failed("accept the terminal", e))?;
            socket.readable().await.map_err(|e| failed("receive the terminal", e))?;
            let std_socket = socket.into_std().map_err(|e| failed("receive the terminal", e))?;
            std_socket.set_nonblocking(false).map_err(|e| failed("receive the terminal", e))?;
            berth_runtime::terminal::receive_fd(std_socket.as_fd())
                .map_err(|e| failed("receive the terminal", e))?
        }
        // It failed before it got as far as the terminal: the report says why.
        status = running.wait() => return running.exit_code(id, status),
    };
    drop(listener);
    relay_terminal(&mut running, id, master, stdio).await
}

/// Removes the console socket's path when the exec ends, however it ends.
struct Unlink<'a>(&'a Path);

impl Drop for Unlink<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

/// Relays the pty master until the process has exited and its output is read.
async fn relay_terminal(
    running: &mut Running,
    id: &str,
    master: OwnedFd,
    stdio: ExecStdio,
) -> Result<i32, ExecError> {
    let failed = |e: io::Error| ExecError::Failed(format!("exec in container {id}: terminal: {e}"));
    let master = fd_io::register(master).map_err(failed)?;
    let feeding = stdio.stdin.map(|mut rx| {
        let master = master.clone();
        tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                if fd_io::write_all(&master, &data).await.is_err() {
                    return;
                }
            }
        })
    });
    let resizing = stdio.resize.map(|mut rx| {
        let master = master.clone();
        tokio::spawn(async move {
            while let Some((width, height)) = rx.recv().await {
                let _ = berth_runtime::terminal::set_window_size(
                    master.get_ref().as_fd(),
                    width,
                    height,
                );
            }
        })
    });
    let out = stdio.stdout;
    let mut buf = vec![0u8; 32 * 1024];
    let mut reading = true;
    let mut status = None;
    let mut drain_until = None;
    while status.is_none() || reading {
        tokio::select! {
            n = fd_io::read(&master, &mut buf), if reading => {
                // EIO once every holder of the slave has closed it.
                if !relay(n, &buf, out.as_ref()).await {
                    reading = false;
                }
            }
            s = running.wait(), if status.is_none() => {
                status = Some(s);
                drain_until = Some(Instant::now() + DRAIN_GRACE);
            }
            _ = sleep_until(drain_until) => break,
        }
    }
    for task in [feeding, resizing].into_iter().flatten() {
        task.abort();
    }
    let status = status.unwrap_or_else(|| Err(io::Error::other("not waited for")));
    running.exit_code(id, status)
}
