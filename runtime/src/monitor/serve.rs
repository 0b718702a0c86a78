//! The monitor's life after setup: reap children (it is their subreaper), answer the control
//! socket, stop on SIGTERM or a `shutdown` request.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use super::namespaces;
use super::protocol::{MonitorConfig, Request, Response};
use super::supervise::Supervisor;

pub(super) struct Monitor {
    listener: UnixListener,
    signals: SignalFd,
    /// PID 1 of the pod's PID namespace, when the pod shares one.
    pod_init: Option<Pid>,
    containers: Supervisor,
    /// Whether code ran since the last `trim` that the idle loop will not run again.
    untrimmed: bool,
}

/// How long the monitor stays idle after setup, a request, a reap or an attach before it gives
/// back the pages they touched (`trim`).
const TRIM_AFTER_IDLE_MS: u16 = 1000;

fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set
}

/// Namespaces, pins, sysctls, the pod init and the control socket. Errors name the step.
/// `premade`: the namespaces `config` asks for are the process's already ([`namespaces::Premade`]).
pub(super) fn setup(config: &MonitorConfig, premade: bool) -> Result<Monitor, String> {
    let mask = handled_signals();
    mask.thread_block()
        .map_err(|e| format!("block signals: {e}"))?;
    if let Some(slice) = &config.systemd_slice {
        crate::cgroups::systemd::join_new_scope(
            slice,
            crate::cgroups::systemd::MONITOR_PREFIX,
            &config.sandbox_id,
            std::process::id() as i32,
        )?;
    } else if let Some(cgroup) = &config.cgroup {
        crate::cgroups::join_self(cgroup)?;
    }
    let ns_dir = config.pod_dir.join(super::protocol::NS_DIR);
    std::fs::create_dir_all(&ns_dir).map_err(|e| format!("create {}: {e}", ns_dir.display()))?;
    let pod_init = match &config.userns {
        Some(userns) => namespaces::create_in_userns(config, userns, spawn_pod_init)?,
        None => {
            namespaces::create(config, premade)?;
            namespaces::apply_sysctls(config)?;
            namespaces::pin_own(config, std::process::id())?;
            config.pod_pid.then(spawn_pod_init).transpose()?
        }
    };
    if let Some(init) = pod_init {
        if let Err(e) = namespaces::pin(&config.pod_dir, init.as_raw() as u32, "pid") {
            kill_init(init);
            return Err(e);
        }
    }
    let socket = config.socket();
    let _ = std::fs::remove_file(&socket);
    let (_dir, short) =
        super::protocol::short_socket_path(&config.pod_dir, super::protocol::SOCKET_FILE)
            .map_err(|e| format!("open {}: {e}", config.pod_dir.display()))?;
    let bound = UnixListener::bind(&short)
        .map_err(|e| format!("bind {}: {e}", socket.display()))
        .and_then(|listener| {
            SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
                .map(|signals| (listener, signals))
                .map_err(|e| format!("signalfd: {e}"))
        });
    let (listener, signals) = match bound {
        Ok(b) => b,
        Err(e) => {
            if let Some(init) = pod_init {
                kill_init(init);
            }
            return Err(e);
        }
    };
    Ok(Monitor {
        listener,
        signals,
        pod_init,
        containers: Supervisor::new(
            config.pod_dir.join(super::protocol::RUNC_DIR),
            config.exit_notice.clone(),
        ),
        untrimmed: true,
    })
}

pub(super) fn kill_init(init: Pid) {
    let _ = kill(init, Signal::SIGKILL);
    let _ = waitpid(init, None);
}

/// Starts PID 1 of a new PID namespace for the pod. The monitor itself stays in the host's
/// namespace: its children (`berthd init`) must be too, or the containers they leave behind
/// would be re-parented to the pod's init instead of to the monitor (their subreaper) and their
/// exits would never reach it. So an intermediate child unshares the PID namespace, forks the
/// init (which the monitor adopts once the intermediate exits) and reports its pid.
fn spawn_pod_init() -> Result<Pid, String> {
    let (read, write) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: single-threaded; the child only unshares, forks and writes a pid.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(read);
            let code = match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID) {
                // SAFETY: the intermediate is single-threaded too.
                Ok(()) => match unsafe { fork() } {
                    Ok(ForkResult::Child) => {
                        drop(write);
                        pod_init_loop()
                    }
                    Ok(ForkResult::Parent { child }) => {
                        let _ = nix::unistd::write(&write, child.as_raw().to_string().as_bytes());
                        0
                    }
                    Err(_) => 1,
                },
                Err(_) => 1,
            };
            // SAFETY: _exit skips Rust destructors and atexit handlers, which belong to the parent.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(write);
            let mut buf = String::new();
            let _ = std::io::Read::read_to_string(&mut std::fs::File::from(read), &mut buf);
            let _ = waitpid(child, None);
            buf.trim()
                .parse::<i32>()
                .map(Pid::from_raw)
                .map_err(|_| "could not start the pod's init in a new PID namespace".to_string())
        }
        Err(e) => Err(format!("fork: {e}")),
    }
}

/// PID 1 of a shared pod PID namespace: reap whatever is re-parented to us, forever.
fn pod_init_loop() -> ! {
    // Hold nothing of the monitor's: no pipe to the agent, no socket, no log.
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto the standard descriptors and close_range above them; no Rust
        // object of this process uses those descriptors afterwards.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(null.as_raw_fd(), 1);
            libc::dup2(null.as_raw_fd(), 2);
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        }
        std::mem::forget(null);
    }
    // SAFETY: PR_SET_NAME with a NUL-terminated static name.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"berth-pod-init".as_ptr(), 0, 0, 0) };
    let mask = handled_signals();
    loop {
        let _ = mask.wait();
        while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
    }
}

impl Monitor {
    /// Runs until SIGTERM/SIGINT or a shutdown request; returns the exit code.
    pub(super) fn serve(mut self) -> i32 {
        loop {
            let streams: Vec<_> = self
                .containers
                .readable()
                .into_iter()
                .map(|(fd, id, stream)| (fd.try_clone_to_owned(), id, stream))
                .collect();
            let attachers: Vec<_> = self
                .containers
                .attachers()
                .into_iter()
                .map(|(fd, id, n, write)| (fd.try_clone_to_owned(), id, n, write))
                .collect();
            let (listener_ready, signal_ready, ready_streams, ready_attachers, oom_ready) = {
                let mut fds = vec![
                    PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
                ];
                for (fd, _, _) in &streams {
                    if let Ok(fd) = fd {
                        fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                    }
                }
                let first_attacher = fds.len();
                for (fd, _, _, write) in &attachers {
                    if let Ok(fd) = fd {
                        let mut flags = PollFlags::POLLIN;
                        if *write {
                            flags |= PollFlags::POLLOUT;
                        }
                        fds.push(PollFd::new(fd.as_fd(), flags));
                    }
                }
                let oom_watch = self.containers.oom_watch_fd().map(|fd| {
                    fds.push(PollFd::new(fd, PollFlags::POLLIN));
                    fds.len() - 1
                });
                let timeout = match self.untrimmed {
                    true => PollTimeout::from(TRIM_AFTER_IDLE_MS),
                    false => PollTimeout::NONE,
                };
                let polled = match poll(&mut fds, timeout) {
                    // Idle since the last piece of work: give back what it touched, and wait on.
                    Ok(0) => {
                        self.untrimmed = false;
                        crate::trim::trim_then_wait(&mut fds).map(|_| ())
                    }
                    done => done.map(|_| ()),
                };
                match polled {
                    Ok(()) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        eprintln!("monitor: poll: {e}");
                        return 1;
                    }
                }
                let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
                let ready_streams: Vec<_> = streams
                    .iter()
                    .filter(|(fd, _, _)| fd.is_ok())
                    .zip(fds.iter().skip(2))
                    .filter(|(_, fd)| ready(fd))
                    .map(|((_, id, stream), _)| (id.clone(), *stream))
                    .collect();
                let ready_attachers: Vec<_> = attachers
                    .iter()
                    .filter(|(fd, _, _, _)| fd.is_ok())
                    .zip(fds.iter().skip(first_attacher))
                    .filter(|(_, fd)| ready(fd))
                    .map(|((_, id, n, _), fd)| {
                        let readable = fd.revents().is_some_and(|r| {
                            r.intersects(
                                PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR,
                            )
                        });
                        (id.clone(), *n, readable)
                    })
                    .collect();
                (
                    ready(&fds[0]),
                    ready(&fds[1]),
                    ready_streams,
                    ready_attachers,
                    oom_watch.is_some_and(|i| ready(&fds[i])),
                )
            };
            // Log lines are the steady work of the loop: everything else runs code it keeps
            // until the next trim.
            self.untrimmed |=
                oom_ready || signal_ready || listener_ready || !ready_attachers.is_empty();
            if oom_ready {
                self.containers.oom_events();
            }
            for (id, n, readable) in ready_attachers {
                self.containers.attacher_ready(&id, n, readable);
            }
            for (id, stream) in ready_streams {
                self.containers.read(&id, stream);
            }
            if signal_ready {
                while let Ok(Some(info)) = self.signals.read_signal() {
                    match Signal::try_from(info.ssi_signo as i32) {
                        Ok(Signal::SIGCHLD) => self.reap(),
                        Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => return self.stop(),
                        _ => {}
                    }
                }
            }
            if listener_ready {
                if let Ok((stream, _)) = self.listener.accept() {
                    if self.answer(stream) {
                        return self.stop();
                    }
                }
            }
        }
    }

    /// Collects every exited child; container inits get their exit recorded.
    fn reap(&mut self) {
        while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
            self.containers.reaped(status);
        }
    }

    /// Answers one control connection; true when it asked the monitor to shut down.
    fn answer(&mut self, stream: UnixStream) -> bool {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
        let mut line = String::new();
        if BufReader::new(&stream).read_line(&mut line).is_err() {
            return false;
        }
        let (response, shutdown) = match serde_json::from_str::<Request>(line.trim()) {
            Ok(Request::Shutdown) => (Response::success(None), true),
            Ok(Request::Attach { id }) => {
                self.attach(&id, stream);
                return false;
            }
            Ok(request) => (self.handle(request), false),
            Err(e) => (Response::failure(format!("bad request: {e}")), false),
        };
        let mut out = &stream;
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string(&response).unwrap_or_default()
        );
        shutdown
    }

    fn handle(&mut self, request: Request) -> Response {
        let result = match request {
            Request::Create {
                id,
                bundle,
                log_path,
                exit_file,
                cgroup,
                stdin,
                tty,
            } => {
                let created = self
                    .containers
                    .create(&id, &bundle, &log_path, exit_file, cgroup, stdin, tty);
                berth_common::crash::point("monitor-created");
                created.map(Some)
            }
            Request::Start { id } => self.containers.start(&id).map(|()| None),
            Request::Signal { id, signal } => self.containers.signal(&id, signal).map(|()| None),
            Request::ReopenLog { id } => self.containers.reopen_log(&id).map(|()| None),
            Request::Delete { id } => self.containers.delete(&id).map(|()| None),
            Request::CloseStdin { id } => self.containers.close_stdin(&id).map(|()| None),
            Request::Ping => Ok(Some(std::process::id() as i32)),
            // Handled by `answer`, which must reply before the monitor goes, or keeps the
            // connection.
            Request::Shutdown | Request::Attach { .. } => Ok(None),
        };
        // A container may have exited while we were busy: record it now.
        self.reap();
        match result {
            Ok(pid) => Response::success(pid),
            Err(e) => Response::failure(e),
        }
    }

    /// Answers an attach request, with the container's stdin descriptor if it has one, and
    /// keeps the connection for its output.
    fn attach(&mut self, id: &str, stream: UnixStream) {
        let stdin = self.containers.stdin_for_attach(id);
        let response = match &stdin {
            Ok(_) => Response::success(None),
            Err(e) => Response::failure(e.clone()),
        };
        let line = format!("{}\n", serde_json::to_string(&response).unwrap_or_default());
        let fd = match &stdin {
            Ok(Some(fd)) => Some(std::os::fd::AsFd::as_fd(fd)),
            _ => None,
        };
        let sent =
            crate::terminal::send_with_fd(std::os::fd::AsFd::as_fd(&stream), line.as_bytes(), fd)
                .ok();
        // Our copy of the descriptor goes now; the attacher has its own.
        drop(stdin);
        if response.ok && sent == Some(line.len()) && stream.set_nonblocking(true).is_ok() {
            self.containers.add_attacher(id, stream);
        }
    }

    fn stop(&mut self) -> i32 {
        if let Some(init) = self.pod_init.take() {
            let _ = kill(init, Signal::SIGKILL);
            let _ = waitpid(init, None);
        }
        0
    }
}
