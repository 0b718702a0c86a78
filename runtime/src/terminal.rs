//! Terminals libcontainer makes: the pty master it sends over a console socket (SCM_RIGHTS),
//! and the window size set on it. Used by the monitor for a tty container and by the agent for
//! a tty exec.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The one descriptor of the next message on a connected unix socket.
pub fn receive_fd(socket: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut buf = [0u8; 256];
    match receive_with_fd(socket, &mut buf)? {
        (_, Some(fd)) => Ok(fd),
        (_, None) => Err(io::Error::other("the message carried no descriptor")),
    }
}

/// The next message on a connected unix socket: the bytes it put in `buf`, and the first
/// descriptor it carried (SCM_RIGHTS; any others are closed).
pub fn receive_with_fd(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Option<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut first = None;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                // SAFETY: installed for us by the kernel just now and owned by nothing else;
                // all but the first are closed when dropped here.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                first.get_or_insert(owned);
            }
        }
    }
    Ok((msg.bytes, first))
}

/// Sends `bytes` on a connected unix socket, with `fd` as SCM_RIGHTS if given; the bytes sent.
pub fn send_with_fd(
    socket: BorrowedFd<'_>,
    bytes: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<usize> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&fds)];
    let control: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    Ok(sendmsg::<()>(
        socket.as_raw_fd(),
        &[io::IoSlice::new(bytes)],
        control,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?)
}

/// Sets the window size of the terminal `fd` (TIOCSWINSZ; the foreground process gets SIGWINCH).
pub fn set_window_size(fd: BorrowedFd<'_>, width: u16, height: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
