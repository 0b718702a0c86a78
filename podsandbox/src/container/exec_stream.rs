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
use tokio::io::{AsyncRead, AsyncWriteExt};
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
        stdout,
        stderr,
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
    let output = [
        boxed(stdout).zip(stdio.stdout),
        boxed(stderr).zip(stdio.stderr),
    ];
    let code = relay_until_exit(&mut running, id, output).await;
    if let Some(f) = feeding {
        f.abort();
    }
    code
}

type Reader = Box<dyn AsyncRead + Unpin + Send>;

fn boxed<R: AsyncRead + Unpin + Send + 'static>(r: Option<R>) -> Option<Reader> {
    r.map(|r| Box::new(r) as Reader)
}

/// Relays each output to its sender until the executor has exited and the output is read (at
/// most [`DRAIN_GRACE`] after the exit: a background process the command left may hold it
/// open); the exit code.
async fn relay_until_exit(
    running: &mut Running,
    id: &str,
    output: [Option<(Reader, mpsc::Sender<Bytes>)>; 2],
) -> Result<i32, ExecError> {
    let [first, second] = output;
    let (mut a, a_tx) = first.unzip();
    let (mut b, b_tx) = second.unzip();
    let (mut a_buf, mut b_buf) = (vec![0u8; 32 * 1024], vec![0u8; 32 * 1024]);
    let mut status = None;
    let mut drain_until = None;
    while status.is_none() || a.is_some() || b.is_some() {
        tokio::select! {
            n = read_some(&mut a, &mut a_buf) => {
                if !relay(n, &a_buf, a_tx.as_ref()).await {
                    a = None;
                }
            }
            n = read_some(&mut b, &mut b_buf) => {
                if !relay(n, &b_buf, b_tx.as_ref()).await {
                    b = None;
                }
            }
            s = running.wait(), if status.is_none() => {
                status = Some(s);
                drain_until = Some(Instant::now() + DRAIN_GRACE);
            }
            _ = sleep_until(drain_until) => break,
        }
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
    let name = console_socket_name(id);
    let console = state_root.join(&name);
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

/// The console socket's file name in the state root. It is bound through
/// `/proc/self/fd/<dir fd>/<name>`, which must fit sun_path (108 bytes) however long the
/// container id, our pid and the exec counter are.
fn console_socket_name(id: &str) -> String {
    let short_id: String = id.chars().take(12).collect();
    format!("{short_id}.tty-{}.sock", exec::exec_tag())
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
            fd_io::feed(&master, &mut rx).await;
        })
    });
    let resizing = stdio.resize.map(|sizes| {
        let master = master.clone();
        tokio::spawn(async move { fd_io::apply_resizes(&master, sizes).await })
    });
    // The master reads EIO once every holder of the slave has closed it: the end.
    let reader = fd_io::FdReader(master);
    let output = [boxed(Some(reader)).zip(stdio.stdout), None];
    let code = relay_until_exit(running, id, output).await;
    for task in [feeding, resizing].into_iter().flatten() {
        task.abort();
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_socket_path_fits_sun_path() {
        let id = "f".repeat(64);
        // The longest descriptor number a process may have, and our name for the socket.
        let path = format!("/proc/self/fd/{}/{}", u32::MAX, console_socket_name(&id));
        assert!(path.len() < 108, "{} bytes: {path}", path.len());
    }
}
