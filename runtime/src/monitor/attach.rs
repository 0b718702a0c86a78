//! Attachers: agent connections that get a container's output as the monitor logs it.
//!
//! The monitor is one thread that must never wait on a client: each attacher has a bounded
//! backlog written as its socket takes it (polled for POLLOUT), and one that falls
//! [`BACKLOG_LIMIT`] behind is dropped (its session ends; the log has everything). Stdin does
//! not pass through here: the attacher got its own descriptor for it.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use super::protocol::AttachFrame;

/// Output an attacher may have unread before it is dropped.
pub(super) const BACKLOG_LIMIT: usize = 8 * 1024 * 1024;

pub(super) struct Attacher {
    pub id: u64,
    socket: UnixStream,
    backlog: Vec<u8>,
    /// The container's output has ended: go once the backlog is written.
    closing: bool,
}

impl Attacher {
    /// `socket` must be non-blocking.
    pub fn new(id: u64, socket: UnixStream) -> Attacher {
        Attacher {
            id,
            socket,
            backlog: Vec::new(),
            closing: false,
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    pub fn wants_write(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Queues output and writes what the socket takes; false: drop this attacher.
    pub fn send(&mut self, stderr: bool, data: &[u8]) -> bool {
        AttachFrame::encode(stderr, data, &mut self.backlog);
        self.flush() && self.backlog.len() <= BACKLOG_LIMIT
    }

    /// No more output will come.
    pub fn close(&mut self) {
        self.closing = true;
    }

    /// Writes what it can; false: drop this attacher (gone, or done and closing).
    pub fn flush(&mut self) -> bool {
        while !self.backlog.is_empty() {
            match self.socket.write(&self.backlog) {
                Ok(0) => return false,
                Ok(n) => {
                    self.backlog.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        !self.closing
    }

    /// The agent wrote or hung up: it sends nothing, so this is EOF (or an error); false: drop.
    pub fn readable(&mut self) -> bool {
        let mut buf = [0u8; 256];
        loop {
            match self.socket.read(&mut buf) {
                Ok(0) => return false,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
    }
}
