//! Attach (kubectl attach, crictl attach): the running container's own stdio, through its pod's
//! monitor, which holds it. The monitor sends the output as it logs it (the log misses
//! nothing while attached) and hands us a copy of the container's stdin; several attachers may
//! be on at once. With `stdin_once` (and no tty) the container's stdin is closed when the
//! attacher's stdin ends. Dropping the future detaches; the container runs on.

use std::io;

use berth_runtime::monitor::protocol::{AttachFrame, Request};
use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

use super::exec_stream::ExecStdio;
use super::fd_io;
use super::record::ContainerRecord;
use crate::monitor_client;

/// Aborts the tasks of an attach session when it ends, however it ends.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Relays container `record`'s stdio until its output ends.
pub async fn attach(record: &ContainerRecord, stdio: ExecStdio) -> Result<(), String> {
    let pod_dir = record.pod_dir.clone();
    let id = record.id.clone();
    let attached = tokio::task::spawn_blocking(move || monitor_client::attach(&pod_dir, &id))
        .await
        .map_err(|e| format!("attach: {e}"))??;
    let failed = |e: io::Error| format!("attach to container {}: {e}", record.id);
    attached.socket.set_nonblocking(true).map_err(failed)?;
    let mut socket = tokio::net::UnixStream::from_std(attached.socket).map_err(failed)?;
    let tty = record.config.tty;
    let stdin_fd = attached
        .stdin
        .map(fd_io::register)
        .transpose()
        .map_err(failed)?;
    let mut tasks = Tasks(Vec::new());
    if let (Some(fd), Some(mut rx)) = (stdin_fd.clone(), stdio.stdin) {
        let close_after = record.config.stdin_once && !tty;
        let pod_dir = record.pod_dir.clone();
        let id = record.id.clone();
        tasks.0.push(tokio::spawn(async move {
            if !fd_io::feed(&fd, &mut rx).await {
                return;
            }
            drop(fd);
            if close_after {
                // Our copy is closed (the task's); the monitor's goes too, so the container
                // reads EOF.
                let request = Request::CloseStdin { id };
                let _ = tokio::task::spawn_blocking(move || {
                    monitor_client::request(&pod_dir, &request)
                })
                .await;
            }
        }));
    }
    if let (Some(fd), Some(sizes), true) = (stdin_fd.clone(), stdio.resize, tty) {
        tasks.0.push(tokio::spawn(async move {
            fd_io::apply_resizes(&fd, sizes).await
        }));
    }
    // Only the tasks hold the container's stdin from here.
    drop(stdin_fd);
    let mut pending = attached.pending;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while let Some(frame) = AttachFrame::decode(&mut pending)
            .map_err(|e| format!("attach to container {}: {e}", record.id))?
        {
            let to = if frame.stderr {
                stdio.stderr.as_ref()
            } else {
                stdio.stdout.as_ref()
            };
            // A client that did not ask for a stream does not get it; one that stopped
            // reading is detached by its session.
            if let Some(to) = to {
                let _ = to.send(Bytes::from(frame.data)).await;
            }
        }
        match socket.read(&mut buf).await {
            // The container's output has ended (it exited) or the monitor went.
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}
