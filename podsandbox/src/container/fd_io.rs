//! Async reads and writes on a descriptor tokio has no type for: a pty master, or a pipe end
//! a monitor passed us.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, ReadBuf};

/// A registered descriptor read as a tokio `AsyncRead` (a pty master's output).
pub(super) struct FdReader(pub Arc<AsyncFd<OwnedFd>>);

impl AsyncRead for FdReader {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        loop {
            let mut ready = std::task::ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match ready
                .try_io(|fd| nix::unistd::read(fd.as_raw_fd(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return std::task::Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return std::task::Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Makes `fd` non-blocking and registers it with the runtime.
pub(super) fn register(fd: OwnedFd) -> io::Result<Arc<AsyncFd<OwnedFd>>> {
    nix::fcntl::fcntl(
        fd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open (and the same) for as
    // long as it is registered, and is closed only after deregistration.
    let registered = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
    Ok(Arc::new(registered))
}

pub(super) async fn write_all(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let mut ready = fd.writable().await?;
        match ready.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from)) {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

/// Writes what arrives on `rx` to `fd` until `rx` ends (true) or a write fails (false: the
/// process's stdin is gone).
pub(super) async fn feed(
    fd: &AsyncFd<OwnedFd>,
    rx: &mut tokio::sync::mpsc::Receiver<bytes::Bytes>,
) -> bool {
    while let Some(data) = rx.recv().await {
        if write_all(fd, &data).await.is_err() {
            return false;
        }
    }
    true
}

/// Sets each `(width, height)` from `sizes` on the terminal `fd` (a pty master).
pub(super) async fn apply_resizes(
    fd: &AsyncFd<OwnedFd>,
    mut sizes: tokio::sync::mpsc::Receiver<(u16, u16)>,
) {
    while let Some((width, height)) = sizes.recv().await {
        let _ = berth_runtime::terminal::set_window_size(
            std::os::fd::AsFd::as_fd(fd.get_ref()),
            width,
            height,
        );
    }
}
