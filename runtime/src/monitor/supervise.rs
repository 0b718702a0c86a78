//! The containers a pod monitor supervises: built and started through `berthd init`, their
//! init processes re-parented to the monitor (its subreaper), their stdout/stderr read into CRI
//! log files, their exits recorded atomically.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use super::attach::Attacher;
use super::log::{FailureNotes, LogWriter, Stream};
use super::protocol::ExitRecord;

struct Supervised {
    pid: i32,
    stdout: Option<std::fs::File>,
    stderr: Option<std::fs::File>,
    log: LogWriter,
    log_failures: FailureNotes,
    exit_file: PathBuf,
    cgroup: Option<PathBuf>,
    /// The files that count the cgroup's OOM kills ([`oom_files`]; none without a cgroup), and
    /// the pod cgroup's v2 `memory.events` above them ([`parent_events`]), made once at create.
    oom_files: Vec<PathBuf>,
    pod_events: Option<PathBuf>,
    exited: bool,
    /// An OOM kill seen in the cgroup's `memory.events` while the container ran (v2).
    oom_seen: bool,
    /// The write end of the container's stdin pipe, held open so reads block instead of EOF.
    stdin: Option<OwnedFd>,
    tty: bool,
    attachers: Vec<Attacher>,
}

/// What one wake-up of the poll loop reads from one stream at most: a container that writes
/// faster than its log is written must not keep the loop from the control socket, the signals
/// and the other containers (a pipe holds 64 KiB by default).
const READ_BUDGET: usize = 128 * 1024;

/// How long the processes a container's init left behind may take to go after SIGKILL.
const KILL_ALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The containers of one pod, by id.
pub(super) struct Supervisor {
    /// libcontainer's state root for this pod.
    root: PathBuf,
    by_id: HashMap<String, Supervised>,
    /// Where the agent hears of exits as they are recorded.
    exit_notice: Option<PathBuf>,
    next_attacher: u64,
    /// cgroup v2: a watch on each container's `memory.events`. The systemd driver's scopes are
    /// removed by systemd as soon as their last process exits, which can be before the monitor
    /// has reaped the init and read the file: an OOM kill is noted when its event comes instead
    /// (the kernel sends at most one per 10 ms a file, so the last may be lost with the scope:
    /// `pod_oom_kills` covers that).
    oom_watch: Option<Inotify>,
    /// v2: each pod cgroup's `memory.events` ([`parent_events`]) with its `oom_kill` count when
    /// last read while every running container under it still had its own file: kills counted
    /// since are those of a container whose cgroup went before the monitor reaped its init
    /// (the systemd driver's scope is removed as soon as it is empty). Each such reap that finds
    /// its init SIGKILLed takes one.
    pod_oom_kills: HashMap<PathBuf, u64>,
}

/// Runs the executor (`berthd init <op> …`) to completion and returns its report line. The
/// monitor is single-threaded, so instead of exec'ing the binary again it forks and runs the
/// executor in the child, which is what `berthd init` would do after its own start-up: a fresh
/// single-threaded process for libcontainer, saving an exec per create and start. `None` for a
/// standard descriptor means /dev/null.
fn executor(
    args: &[&std::ffi::OsStr],
    report: &Path,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
) -> Result<String, String> {
    use std::os::fd::AsRawFd;
    let _ = std::fs::remove_file(report);
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("open /dev/null: {e}"))?;
    let mut argv: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    argv.push(report.display().to_string());
    let monitor = nix::unistd::getpid();
    // SAFETY: the monitor is single-threaded, so the child may run any code; it ends with
    // _exit and never returns into the monitor's loop.
    let child = match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            // The executor goes with its monitor. Left running, one whose monitor was killed
            // would go on building the container (its cgroups, its init) after the agent has
            // rolled the create back, and nobody would take that down. A monitor that died
            // before the prctl is seen in getppid.
            // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and no pointers.
            unsafe {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0
                    || nix::unistd::getppid() != monitor
                {
                    libc::_exit(1)
                }
            }
            let fd = |f: &Option<OwnedFd>| {
                f.as_ref()
                    .map(|f| f.as_raw_fd())
                    .unwrap_or(null.as_raw_fd())
            };
            // SAFETY: dup2 onto the standard descriptors of this child, which owns no Rust
            // object for them, and close_range of the rest, whose owners (the monitor's
            // objects, copied by fork) are never used or dropped here: _exit skips the
            // monitor's destructors and atexit handlers.
            unsafe {
                libc::dup2(fd(&stdin), 0);
                libc::dup2(fd(&stdout), 1);
                libc::dup2(fd(&stderr), 2);
                // Nothing else of the monitor's goes with the executor: a created container's
                // init waits for its start holding what it inherited, and with the monitor's
                // listening socket a dead monitor's pod would still accept connections.
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                let code = crate::executor::run(&argv);
                libc::_exit(code)
            }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => child,
        Err(e) => return Err(format!("fork the executor: {e}")),
    };
    // Our copies of the child's ends go now, so the container holds the only writers.
    drop((stdin, stdout, stderr, null));
    let status = loop {
        match waitpid(child, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other,
        }
    };
    let succeeded = matches!(status, Ok(WaitStatus::Exited(_, 0)));
    let line = std::fs::read_to_string(report).unwrap_or_default();
    let _ = std::fs::remove_file(report);
    let line = line.trim().to_string();
    match line.strip_prefix("error: ") {
        Some(e) => Err(e.to_string()),
        None if succeeded => Ok(line),
        None => Err(format!("the executor ended with {status:?} and no report")),
    }
}

/// The files that count a cgroup's OOM kills: v2 `memory.events`, v1 `memory.oom_control`.
fn oom_files(cgroup: &Path) -> Vec<PathBuf> {
    let relative = cgroup.strip_prefix("/").unwrap_or(cgroup);
    crate::cgroups::hierarchies()
        .into_iter()
        .filter_map(|h| {
            let file = if h.v2 {
                "memory.events"
            } else if h.controllers.iter().any(|c| c == "memory") {
                "memory.oom_control"
            } else {
                return None;
            };
            Some(h.mountpoint.join(relative).join(file))
        })
        .collect()
}

/// The `oom_kill` count of a `memory.events` or `memory.oom_control` file; `None` when it cannot
/// be read (its cgroup is gone).
fn oom_kill_count(file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.strip_prefix("oom_kill "))
            .filter_map(|n| n.trim().parse::<u64>().ok())
            .sum(),
    )
}

/// The OOM kills a container's memory cgroup recorded, from its [`oom_files`]; `None` when no
/// such file can be read any more (or it has none).
fn oom_kills(files: &[PathBuf]) -> Option<u64> {
    files.iter().filter_map(|f| oom_kill_count(f)).max()
}

/// v2: the `memory.events` of the cgroup above the container's, the pod's (its slice under the
/// systemd driver), from the container's [`oom_files`]. Its counts are hierarchical: they
/// include the kills in every container of the pod, also once a container's own cgroup is gone.
/// (v1 counts each cgroup's kills alone.)
fn parent_events(files: &[PathBuf]) -> Option<PathBuf> {
    let own = files.iter().find(|f| f.ends_with("memory.events"))?;
    Some(own.parent()?.parent()?.join("memory.events"))
}

/// For a container whose cgroup is gone: whether its pod cgroup (`pod_events`) counted a kill
/// since [`Supervisor::pod_oom_kills`] last read it, which is then this container's and counted
/// as explained.
fn take_unexplained_kill(seen: &mut HashMap<PathBuf, u64>, pod_events: Option<&Path>) -> bool {
    let Some(parent) = pod_events else {
        return false;
    };
    let Some(now) = oom_kill_count(parent) else {
        return false;
    };
    let seen = seen.entry(parent.to_path_buf()).or_insert(now);
    let unexplained = now > *seen;
    if unexplained {
        *seen += 1;
    }
    unexplained
}

impl Supervisor {
    pub(super) fn new(root: PathBuf, exit_notice: Option<PathBuf>) -> Supervisor {
        Supervisor {
            root,
            by_id: HashMap::new(),
            exit_notice,
            next_attacher: 0,
            oom_watch: None,
            pod_oom_kills: HashMap::new(),
        }
    }

    /// Watches `memory.events` of a container's v2 cgroup (among its [`oom_files`]), making the
    /// inotify instance on first use. Best effort: without the watch the file is still read when
    /// the init exits.
    fn watch_oom(&mut self, files: &[PathBuf]) {
        let Some(events) = files
            .iter()
            .find(|f| f.ends_with("memory.events") && f.exists())
        else {
            return;
        };
        if self.oom_watch.is_none() {
            match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
                Ok(inotify) => self.oom_watch = Some(inotify),
                Err(e) => {
                    eprintln!("monitor: inotify: {e}");
                    return;
                }
            }
        }
        if let Some(inotify) = &self.oom_watch {
            // The kernel drops the watch when the cgroup goes (IN_IGNORED).
            if let Err(e) = inotify.add_watch(events.as_path(), AddWatchFlags::IN_MODIFY) {
                eprintln!("monitor: watch {}: {e}", events.display());
            }
        }
    }

    /// The inotify descriptor to poll, once a container is watched.
    pub(super) fn oom_watch_fd(&self) -> Option<BorrowedFd<'_>> {
        self.oom_watch.as_ref().map(|inotify| inotify.as_fd())
    }

    /// Reads the watch's events, then every running container's OOM count: one that counts a
    /// kill has it noted for its exit record.
    pub(super) fn oom_events(&mut self) {
        if let Some(inotify) = &self.oom_watch {
            while inotify.read_events().is_ok_and(|e| !e.is_empty()) {}
        }
        self.note_oom_kills();
    }

    /// Notes an OOM kill for each running container whose own count shows one, then reads each
    /// pod cgroup's count into [`Supervisor::pod_oom_kills`] where every running container
    /// under it still has its own count to explain its kills by: nothing goes into the pod's
    /// count unexplained (a container's own notification may come only after its cgroup has
    /// gone, or never).
    fn note_oom_kills(&mut self) {
        // The pod's count first: a kill between the two reads then shows in the container's own
        // count and not yet in the pod's, never the other way round.
        let mut parents: HashMap<PathBuf, Option<u64>> = HashMap::new();
        for c in self.by_id.values().filter(|c| !c.exited) {
            if let Some(parent) = &c.pod_events {
                parents
                    .entry(parent.clone())
                    .or_insert_with_key(|p| oom_kill_count(p));
            }
        }
        for c in self.by_id.values_mut().filter(|c| !c.exited) {
            let kills = oom_kills(&c.oom_files);
            if kills.is_some_and(|n| n > 0) {
                c.oom_seen = true;
            }
            if let (None, Some(parent)) = (kills, &c.pod_events) {
                parents.insert(parent.clone(), None);
            }
        }
        for (parent, count) in parents {
            if let Some(n) = count {
                self.pod_oom_kills.insert(parent, n);
            }
        }
    }

    fn report_path(&self, id: &str, op: &str) -> PathBuf {
        self.root.join(format!("{id}.{op}.report"))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn create(
        &mut self,
        id: &str,
        bundle: &Path,
        log_path: &Path,
        exit_file: PathBuf,
        cgroup: Option<PathBuf>,
        stdin: bool,
        tty: bool,
    ) -> Result<i32, String> {
        if self.by_id.contains_key(id) {
            return Err(format!("container {id} already exists in this pod"));
        }
        std::fs::create_dir_all(&self.root)
            .map_err(|e| format!("create {}: {e}", self.root.display()))?;
        let log = LogWriter::open(log_path)
            .map_err(|e| format!("open log {}: {e}", log_path.display()))?;
        let (stdin_for_container, stdin_held) = if stdin && !tty {
            let (r, w) = cloexec_pipe().map_err(|e| format!("pipe: {e}"))?;
            (Some(r), Some(w))
        } else {
            (None, None)
        };
        // With a terminal the container's stdio is the pty's slave: libcontainer sends us the
        // master over a console socket, and everything it prints is the stdout stream.
        let console = if tty {
            let name = format!("{id}.console.sock");
            let path = self.root.join(&name);
            let _ = std::fs::remove_file(&path);
            let (_dir, short) = super::protocol::short_socket_path(&self.root, &name)
                .map_err(|e| format!("console socket: {e}"))?;
            let listener = std::os::unix::net::UnixListener::bind(short)
                .map_err(|e| format!("bind console socket {}: {e}", path.display()))?;
            Some((listener, path))
        } else {
            None
        };
        let console_arg = console
            .as_ref()
            .map(|(_, p)| p.clone().into_os_string())
            .unwrap_or_else(|| "-".into());
        let (pipes, stdout, stderr) = if tty {
            (None, None, None)
        } else {
            let (out_r, out_w) = cloexec_pipe().map_err(|e| format!("pipe: {e}"))?;
            let (err_r, err_w) = cloexec_pipe().map_err(|e| format!("pipe: {e}"))?;
            (Some((out_r, err_r)), Some(out_w), Some(err_w))
        };
        let report = self.report_path(id, "create");
        let result = executor(
            &[
                "create".as_ref(),
                self.root.as_os_str(),
                id.as_ref(),
                bundle.as_os_str(),
                console_arg.as_os_str(),
            ],
            &report,
            stdin_for_container,
            stdout,
            stderr,
        );
        let pid: i32 = result?
            .parse()
            .map_err(|_| "berthd init create reported no pid".to_string())?;
        let nonblocking = |fd: OwnedFd| {
            let _ = nix::fcntl::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            );
            std::fs::File::from(fd)
        };
        let (stdout, stderr) = match (pipes, console) {
            (Some((out_r, err_r)), _) => (Some(nonblocking(out_r)), Some(nonblocking(err_r))),
            (None, Some((listener, path))) => {
                let master = receive_terminal(&listener);
                let _ = std::fs::remove_file(&path);
                (Some(nonblocking(master?)), None)
            }
            (None, None) => (None, None),
        };
        let oom_files = cgroup.as_deref().map(oom_files).unwrap_or_default();
        self.watch_oom(&oom_files);
        self.by_id.insert(
            id.to_string(),
            Supervised {
                pid,
                stdout,
                stderr,
                log,
                log_failures: FailureNotes::default(),
                exit_file,
                cgroup,
                pod_events: parent_events(&oom_files),
                oom_files,
                exited: false,
                oom_seen: false,
                stdin: stdin_held,
                tty,
                attachers: Vec::new(),
            },
        );
        self.note_oom_kills();
        Ok(pid)
    }

    pub(super) fn start(&mut self, id: &str) -> Result<(), String> {
        if !self.by_id.contains_key(id) {
            return Err(format!("container {id} is not in this pod"));
        }
        // In the monitor itself, not a forked executor: a start is a connect, a write and a
        // state file (see `executor::start`), and a fork of the monitor, its page faults and
        // its exit cost more than that. A panic in it fails this start, not the monitor.
        let root = self.root.clone();
        std::panic::catch_unwind(|| crate::executor::start(&root, id))
            .unwrap_or_else(|_| Err(format!("start container {id}: the start panicked")))
    }

    pub(super) fn signal(&mut self, id: &str, signal: i32) -> Result<(), String> {
        // A stop's SIGKILL may end a container whose cgroup then goes before the reap: kills the
        // pod cgroup counted before it are not its own.
        self.note_oom_kills();
        let c = self
            .by_id
            .get(id)
            .ok_or_else(|| format!("container {id} is not in this pod"))?;
        if c.exited {
            return Ok(());
        }
        let signal = Signal::try_from(signal).map_err(|e| format!("signal {signal}: {e}"))?;
        match kill(Pid::from_raw(c.pid), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(format!("signal container {id}: {e}")),
        }
    }

    pub(super) fn reopen_log(&mut self, id: &str) -> Result<(), String> {
        let c = self
            .by_id
            .get_mut(id)
            .ok_or_else(|| format!("container {id} is not in this pod"))?;
        c.log.reopen().map_err(|e| format!("reopen log: {e}"))
    }

    /// libcontainer's state and cgroups go; the monitor forgets the container.
    pub(super) fn delete(&mut self, id: &str) -> Result<(), String> {
        if let Some(c) = self.by_id.get(id) {
            if !c.exited {
                return Err(format!("container {id} is still running"));
            }
        }
        let report = self.report_path(id, "delete");
        executor(
            &["delete".as_ref(), self.root.as_os_str(), id.as_ref()],
            &report,
            None,
            None,
            None,
        )?;
        self.by_id.remove(id);
        Ok(())
    }

    /// Called for every reaped child: records the exit of a container's init.
    pub(super) fn reaped(&mut self, status: WaitStatus) {
        let (pid, exit_code, signal) = match status {
            WaitStatus::Exited(pid, code) => (pid, code, None),
            WaitStatus::Signaled(pid, sig, _) => (pid, 128 + sig as i32, Some(sig as i32)),
            _ => return,
        };
        // An OOM kill counts in memory.events before its victim exits: its event is queued.
        self.oom_events();
        // An exited container stays here until deleted, and its pid may be a new init's now.
        let Some((id, c)) = self
            .by_id
            .iter_mut()
            .find(|(_, c)| c.pid == pid.as_raw() && !c.exited)
        else {
            return;
        };
        c.exited = true;
        // Read first: under the systemd driver the container's scope, with its memory.events,
        // goes as soon as it is empty, and the kill's notification may come after the reap (the
        // kernel rate-limits cgroup file notifications to one per 10 ms).
        let oom = c.oom_seen
            || match oom_kills(&c.oom_files) {
                Some(n) => n > 0,
                // Gone with its cgroup: an OOM kill ends the init with SIGKILL.
                None => {
                    signal == Some(libc::SIGKILL)
                        && take_unexplained_kill(&mut self.pod_oom_kills, c.pod_events.as_deref())
                }
            };
        // As containerd: with the host's or the pod's PID namespace, what the init left behind
        // would run on unseen; it goes with the init, before the exit is recorded.
        if let Some(cgroup) = &c.cgroup {
            if let Err(e) = crate::cgroups::kill_all(cgroup, KILL_ALL_TIMEOUT) {
                eprintln!("monitor: container {id}: {e}");
            }
        }
        // Whatever the container wrote before it died goes to the log before the record.
        drain(c);
        let mut record = ExitRecord::new(exit_code, signal, berth_common::time::now_nanos(), oom);
        record.log_bytes = c.log.bytes_written();
        match serde_json::to_vec(&record) {
            Ok(bytes) => {
                // Unsynced: the exit file lives in the state dir, on tmpfs.
                let written = berth_common::atomic::write_atomic_unsynced(&c.exit_file, &bytes);
                match written {
                    Err(e) => eprintln!("monitor: container {id}: write exit record: {e}"),
                    Ok(()) => {
                        // Only once the file is there: the agent reads it when told.
                        if let Some(socket) = &self.exit_notice {
                            let _ = super::protocol::send_exit_notice(socket, id);
                        }
                    }
                }
            }
            Err(e) => eprintln!("monitor: container {id}: exit record: {e}"),
        }
    }

    /// The pipe ends to poll, with which container and stream each belongs to.
    pub(super) fn readable(&self) -> Vec<(BorrowedFd<'_>, String, Stream)> {
        let mut out = Vec::new();
        for (id, c) in &self.by_id {
            if let Some(f) = &c.stdout {
                out.push((f.as_fd(), id.clone(), Stream::Stdout));
            }
            if let Some(f) = &c.stderr {
                out.push((f.as_fd(), id.clone(), Stream::Stderr));
            }
        }
        out
    }

    /// Reads at most [`READ_BUDGET`] bytes of what a pipe has into the container's log (the
    /// poll loop comes back for the rest); at EOF the stream is closed.
    pub(super) fn read(&mut self, id: &str, stream: Stream) {
        if let Some(c) = self.by_id.get_mut(id) {
            read_stream(c, stream, READ_BUDGET);
        }
    }

    /// What an attacher gets to write the container's stdin with: a copy of the pipe's write
    /// end, or of the pty master. Refused for a container that has exited.
    pub(super) fn stdin_for_attach(&self, id: &str) -> Result<Option<OwnedFd>, String> {
        let c = self
            .by_id
            .get(id)
            .ok_or_else(|| format!("container {id} is not in this pod"))?;
        if c.exited || (c.stdout.is_none() && c.stderr.is_none()) {
            return Err(format!("container {id} is not running"));
        }
        let fd = match (&c.stdin, c.tty, &c.stdout) {
            (Some(pipe), _, _) => Some(pipe.try_clone()),
            (None, true, Some(master)) => Some(master.as_fd().try_clone_to_owned()),
            _ => None,
        };
        fd.transpose()
            .map_err(|e| format!("container {id}: copy its stdin: {e}"))
    }

    /// Starts sending the container's output to `socket` (non-blocking).
    pub(super) fn add_attacher(&mut self, id: &str, socket: std::os::unix::net::UnixStream) {
        if let Some(c) = self.by_id.get_mut(id) {
            self.next_attacher += 1;
            c.attachers.push(Attacher::new(self.next_attacher, socket));
        }
    }

    pub(super) fn close_stdin(&mut self, id: &str) -> Result<(), String> {
        let c = self
            .by_id
            .get_mut(id)
            .ok_or_else(|| format!("container {id} is not in this pod"))?;
        c.stdin = None;
        Ok(())
    }

    /// Every attacher socket to poll: container, attacher id, and whether it has output queued.
    pub(super) fn attachers(&self) -> Vec<(BorrowedFd<'_>, String, u64, bool)> {
        self.by_id
            .iter()
            .flat_map(|(id, c)| {
                c.attachers
                    .iter()
                    .map(move |a| (a.fd(), id.clone(), a.id, a.wants_write()))
            })
            .collect()
    }

    /// An attacher's socket is ready: write its backlog, notice it hung up.
    pub(super) fn attacher_ready(&mut self, id: &str, attacher: u64, readable: bool) {
        if let Some(c) = self.by_id.get_mut(id) {
            c.attachers
                .retain_mut(|a| a.id != attacher || ((!readable || a.readable()) && a.flush()));
        }
    }
}

/// The pty master libcontainer sent on the console socket during create.
fn receive_terminal(listener: &std::os::unix::net::UnixListener) -> Result<OwnedFd, String> {
    use std::os::fd::AsFd;
    let _ = listener.set_nonblocking(true);
    let (stream, _) = listener
        .accept()
        .map_err(|e| format!("the container sent no terminal: {e}"))?;
    crate::terminal::receive_fd(stream.as_fd()).map_err(|e| format!("receive the terminal: {e}"))
}

/// Reads a stream into the log until it would block or `budget` bytes are read.
fn read_stream(c: &mut Supervised, stream: Stream, budget: usize) {
    let mut buf = [0u8; 32 * 1024];
    let mut read = 0;
    while read < budget {
        let file = match stream {
            Stream::Stdout => c.stdout.as_mut(),
            Stream::Stderr => c.stderr.as_mut(),
        };
        let Some(file) = file else { return };
        match file.read(&mut buf) {
            Ok(0) => return end_stream(c, stream),
            Ok(n) => {
                read += n;
                let note = match c.log.write(stream, &buf[..n], SystemTime::now()) {
                    Ok(()) => c.log_failures.succeeded(),
                    Err(e) => c.log_failures.failed(std::time::Instant::now(), &e),
                };
                if let Some(note) = note {
                    eprintln!("monitor: {note}");
                }
                let stderr = stream == Stream::Stderr;
                c.attachers.retain_mut(|a| a.send(stderr, &buf[..n]));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // A pty master reads EIO once the last slave is closed: the stream is over.
            Err(_) => return end_stream(c, stream),
        }
    }
}

/// A stream reached its end; once both have, attachers go when their backlog is written.
fn end_stream(c: &mut Supervised, stream: Stream) {
    let _ = c.log.close_stream(stream, SystemTime::now());
    match stream {
        Stream::Stdout => c.stdout = None,
        Stream::Stderr => c.stderr = None,
    }
    if c.stdout.is_none() && c.stderr.is_none() {
        for a in &mut c.attachers {
            a.close();
        }
        c.attachers.retain_mut(|a| a.flush());
    }
}

/// Everything left in the pipes, once the container's processes are gone.
fn drain(c: &mut Supervised) {
    read_stream(c, Stream::Stdout, usize::MAX);
    read_stream(c, Stream::Stderr, usize::MAX);
}

/// A pipe whose ends are not inherited by anything the monitor starts later: one container's
/// log pipe must not leak into the next container (std dup2s the ends a child should get onto
/// its 0/1/2, which clears the flag there).
fn cloexec_pipe() -> nix::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Removes its directory on drop, when the test fails too.
    struct Gone(PathBuf);

    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A temp dir of this test's own.
    fn scratch(name: &str) -> (PathBuf, Gone) {
        let dir = std::env::temp_dir().join(format!("berth-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        (dir.clone(), Gone(dir))
    }

    fn supervised(dir: &Path, id: &str, pid: i32, exited: bool) -> Supervised {
        Supervised {
            pid,
            stdout: None,
            stderr: None,
            log: LogWriter::open(&dir.join(format!("{id}.log"))).unwrap(),
            log_failures: FailureNotes::default(),
            exit_file: dir.join(format!("{id}.exit")),
            cgroup: None,
            oom_files: Vec::new(),
            pod_events: None,
            exited,
            oom_seen: false,
            stdin: None,
            tty: false,
            attachers: Vec::new(),
        }
    }

    /// An exited container stays supervised until it is deleted; its pid may meanwhile be
    /// reused by a new container's init, whose exit must be recorded for the new container and
    /// never over the old one's record.
    #[test]
    fn a_reused_pid_records_the_exit_of_the_live_container_only() {
        let (dir, _gone) = scratch("reaped");
        let mut s = Supervisor::new(dir.clone(), None);
        // Several old ones, so that map order cannot hide the fault.
        for i in 0..8 {
            let old = format!("old{i}");
            std::fs::write(dir.join(format!("{old}.exit")), "first exit").unwrap();
            s.by_id
                .insert(old.clone(), supervised(&dir, &old, 4242, true));
        }
        s.by_id
            .insert("new".into(), supervised(&dir, "new", 4242, false));
        s.reaped(WaitStatus::Exited(Pid::from_raw(4242), 7));
        for i in 0..8 {
            let old = std::fs::read_to_string(dir.join(format!("old{i}.exit"))).unwrap();
            assert_eq!(old, "first exit", "old{i}'s exit was overwritten");
        }
        let new: ExitRecord =
            serde_json::from_slice(&std::fs::read(dir.join("new.exit")).unwrap()).unwrap();
        assert_eq!(new.exit_code, 7);
        assert!(s.by_id["new"].exited);
    }

    /// A container writing without pause must not hold the poll loop: one wake-up reads a
    /// bounded amount from a stream and leaves the rest for the next turn, after the control
    /// socket, the signals and the other containers have had theirs.
    #[test]
    fn one_wake_up_reads_a_bounded_amount_from_a_flooding_stream() {
        use std::io::Write;
        let (dir, _gone) = scratch("flood");
        let (r, w) = cloexec_pipe().unwrap();
        nix::fcntl::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&w),
            nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20),
        )
        .unwrap();
        nix::fcntl::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&w),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        let mut writer = std::fs::File::from(w);
        let line = b"a line the flood repeats\n";
        let mut queued = 0;
        while writer.write(line).is_ok_and(|n| n == line.len()) {
            queued += line.len();
        }
        assert!(
            queued > 2 * READ_BUDGET,
            "only {queued} bytes fit in the pipe"
        );
        let mut reader = std::fs::File::from(r.try_clone().unwrap());
        let mut s = Supervisor::new(dir.clone(), None);
        nix::fcntl::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&r),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        let mut c = supervised(&dir, "c", 1, false);
        c.stdout = Some(std::fs::File::from(r));
        s.by_id.insert("c".into(), c);
        s.read("c", Stream::Stdout);
        let mut left = vec![0u8; 2 << 20];
        let n = reader.read(&mut left).unwrap_or(0);
        assert!(
            n >= queued - READ_BUDGET,
            "one wake-up read {} of {queued} bytes",
            queued - n
        );
    }
}
