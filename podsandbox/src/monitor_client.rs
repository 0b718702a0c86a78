//! The agent's one client of the per-pod monitor: start it (fork+exec of our own binary, or a
//! standby started ahead of its pod) and hear its start report, then JSON requests on its control socket (`protocol::Request`: ping,
//! shutdown and the container operations), then stop it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use berth_runtime::monitor::protocol::{
    self, short_socket_path, MonitorConfig, Request, Response, StartReport, SOCKET_FILE,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncBufReadExt;

use crate::sandbox::record::MonitorProcess;

/// How long a monitor may take to set the pod up and report.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a monitor may take to exit when asked.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a container request may take (Create runs the executor).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a ping or a shutdown request may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);

/// A monitor exec'd ahead of its pod (`berthd monitor-standby`), detached and waiting on its
/// stdin for the path of a pod's config. Dropping it closes that stdin: the monitor exits.
pub struct Standby {
    pid: u32,
    config: tokio::process::ChildStdin,
    reports: Reports,
}

type Reports = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>;

impl Standby {
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

/// How a monitor came to be: a standby handed its pod, or exec'd for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    Standby,
    Exec,
}

/// `berthd <args>` as the agent starts a monitor: fork+exec only (the agent is multi-threaded
/// and never runs code between the two), a clean environment, its reports on a pipe.
fn monitor_command(args: &[&std::ffi::OsStr]) -> Result<tokio::process::Command, String> {
    let exe = std::env::current_exe().map_err(|e| format!("find our own binary: {e}"))?;
    let mut command = tokio::process::Command::new(exe);
    command
        .args(args)
        .stdout(Stdio::piped())
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        // A crash or hold point named for the monitor or its executor reaches it (tests only;
        // see berth_common::crash).
        .envs(
            [berth_common::crash::ENV, berth_common::crash::HOLD_ENV]
                .into_iter()
                .filter_map(|key| std::env::var(key).ok().map(|v| (key, v))),
        );
    Ok(command)
}

/// Spawns `command` and returns its report lines. The process started exits at once (its
/// forked child is the monitor): it is reaped in the background.
fn spawn_reporting(
    mut command: tokio::process::Command,
) -> Result<(tokio::process::Child, Reports), String> {
    let mut child = command.spawn().map_err(|e| format!("start monitor: {e}"))?;
    let stdout = child.stdout.take().ok_or("monitor stdout not piped")?;
    Ok((child, tokio::io::BufReader::new(stdout).lines()))
}

fn reap(mut child: tokio::process::Child) {
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
}

/// The next report line: None at end of output (the monitor exited without one).
async fn next_report(reports: &mut Reports) -> Result<Option<String>, String> {
    match tokio::time::timeout(START_TIMEOUT, reports.next_line()).await {
        Err(_) => Err(format!(
            "monitor did not report within {}s",
            START_TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => Err(format!("read monitor report: {e}")),
        Ok(Ok(line)) => Ok(line),
    }
}

/// Starts a standby monitor for pods under `state` and waits until it waits for its pod.
pub async fn start_standby(state: &Path) -> Result<Standby, String> {
    // Room for `<exe> monitor <state>/pods/<64 hex>/monitor.json`, which it becomes.
    let room = " ".repeat(state.as_os_str().len() + 96);
    let mut command =
        monitor_command(&["monitor-standby".as_ref(), state.as_os_str(), room.as_ref()])?;
    command.stdin(Stdio::piped()).stderr(Stdio::null());
    let (mut child, mut reports) = spawn_reporting(command)?;
    let config = child.stdin.take().ok_or("monitor stdin not piped")?;
    reap(child);
    let line = next_report(&mut reports)
        .await?
        .ok_or("standby monitor exited without a report")?;
    match protocol::parse_report(&line) {
        Some(StartReport::Standby(pid)) => Ok(Standby {
            pid,
            config,
            reports,
        }),
        Some(StartReport::Failed(message)) => Err(message),
        _ => Err(format!("standby monitor said {line:?}")),
    }
}

/// Starts the monitor for a pod, from `standby` when there is one that takes it, and waits for
/// its report.
pub async fn start(
    config: &MonitorConfig,
    standby: Option<Standby>,
) -> Result<(MonitorProcess, Started), String> {
    let config_path = config.pod_dir.join(protocol::CONFIG_FILE);
    let json = serde_json::to_vec_pretty(config).map_err(|e| e.to_string())?;
    berth_common::atomic::write_atomic_unsynced(&config_path, &json)
        .map_err(|e| format!("write {}: {e}", config_path.display()))?;
    if let Some(standby) = standby {
        match hand_over(standby, &config_path).await {
            Ok(Some(line)) => return ready(&line).map(|m| (m, Started::Standby)),
            // Gone before it took the config (it writes its pid file first thing after): as
            // if there had been no standby.
            Ok(None) if !config.pod_dir.join(protocol::PID_FILE).exists() => {}
            Ok(None) => return Err(exited_without_report(config)),
            Err(e) => tracing::debug!(error = %e, "standby monitor not usable: starting one"),
        }
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config.pod_dir.join(protocol::LOG_FILE))
        .map_err(|e| format!("open monitor log: {e}"))?;
    let mut command = monitor_command(&["monitor".as_ref(), config_path.as_os_str()])?;
    command.stdin(Stdio::null()).stderr(log);
    let (child, mut reports) = spawn_reporting(command)?;
    let report = next_report(&mut reports).await;
    reap(child);
    match report? {
        Some(line) => ready(&line).map(|m| (m, Started::Exec)),
        None => Err(exited_without_report(config)),
    }
}

/// Tells a standby monitor its config; its next report, None if it exited without one.
async fn hand_over(standby: Standby, config_path: &Path) -> Result<Option<String>, String> {
    use std::os::unix::ffi::OsStrExt;
    use tokio::io::AsyncWriteExt;
    let Standby {
        mut config,
        mut reports,
        ..
    } = standby;
    let mut line = config_path.as_os_str().as_bytes().to_vec();
    line.push(b'\n');
    // A standby that died long ago has no reader: EPIPE.
    config
        .write_all(&line)
        .await
        .map_err(|e| format!("hand over the config: {e}"))?;
    drop(config);
    next_report(&mut reports).await
}

fn ready(line: &str) -> Result<MonitorProcess, String> {
    match protocol::parse_report(line) {
        Some(StartReport::Ready(pid)) => MonitorProcess::of(pid)
            .ok_or_else(|| format!("monitor {pid} reported ready but is gone")),
        Some(StartReport::Failed(message)) => Err(message),
        _ => Err(format!("monitor said {line:?}")),
    }
}

fn exited_without_report(config: &MonitorConfig) -> String {
    let log = std::fs::read_to_string(config.pod_dir.join(protocol::LOG_FILE)).unwrap_or_default();
    format!("monitor exited without a report: {}", log.trim())
}

/// Asks the monitor on its socket whether it is there; it answers with its pid.
pub fn ping(pod_dir: &Path) -> Option<u32> {
    let response = send(pod_dir, &Request::Ping, CONTROL_TIMEOUT).ok()?;
    response.pid.map(|p| p as u32)
}

/// Connects to the unix socket at `path` within `timeout`. A listener that stopped accepting
/// (a stopped or stuck monitor) fills its backlog, and a blocking connect then waits for ever.
fn connect(path: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let address = UnixAddr::new(path).map_err(std::io::Error::from)?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(std::io::Error::from)?;
    let deadline = Instant::now() + timeout;
    loop {
        match nix::sys::socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &address) {
            Ok(()) => break,
            // A unix socket's backlog is full: no connection until the listener accepts.
            Err(nix::errno::Errno::EAGAIN) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(nix::errno::Errno::EAGAIN) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the listener accepted nothing in {} ms",
                        timeout.as_millis()
                    ),
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Whether the pod's monitor is gone: the process the sandbox recorded is not running, or
/// nothing listens on its socket. A monitor that is there but slow to answer is not gone.
pub fn gone(pod_dir: &Path) -> bool {
    let recorded = crate::sandbox::record::SandboxRecord::load(pod_dir)
        .ok()
        .and_then(|r| r.monitor);
    if recorded.is_some_and(|m| !m.alive()) {
        return true;
    }
    let Ok((_dir, path)) = short_socket_path(pod_dir, SOCKET_FILE) else {
        return true;
    };
    match connect(&path, CONTROL_TIMEOUT) {
        Ok(_) => false,
        Err(e) => matches!(
            e.raw_os_error(),
            Some(libc::ECONNREFUSED) | Some(libc::ENOENT)
        ),
    }
}

/// One request to a pod's monitor; its refusal is the error.
pub fn request(pod_dir: &Path, request: &Request) -> Result<Response, String> {
    send(pod_dir, request, REQUEST_TIMEOUT)
}

fn send(pod_dir: &Path, request: &Request, timeout: Duration) -> Result<Response, String> {
    let (_dir, path) =
        short_socket_path(pod_dir, SOCKET_FILE).map_err(|e| format!("pod dir: {e}"))?;
    let stream =
        connect(&path, timeout).map_err(|e| format!("connect to the pod's monitor: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let line = serde_json::to_string(request).map_err(|e| e.to_string())?;
    writeln!(&stream, "{line}").map_err(|e| format!("write to the pod's monitor: {e}"))?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|e| format!("read from the pod's monitor: {e}"))?;
    let response: Response =
        serde_json::from_str(&answer).map_err(|e| format!("monitor answered {answer:?}: {e}"))?;
    accepted(response)
}

/// The monitor's answer, or its refusal as the error.
fn accepted(response: Response) -> Result<Response, String> {
    if response.ok {
        Ok(response)
    } else {
        Err(response
            .error
            .unwrap_or_else(|| "monitor refused".to_string()))
    }
}

/// An attach connection to a container, as the monitor answered it.
pub struct Attached {
    /// Carries the container's output as `AttachFrame`s until it ends.
    pub socket: UnixStream,
    /// The container's stdin (pipe write end or pty master), if it has one.
    pub stdin: Option<std::os::fd::OwnedFd>,
    /// Output that arrived with the answer.
    pub pending: Vec<u8>,
}

/// Attaches to container `id` (`Request::Attach`). Blocking.
pub fn attach(pod_dir: &Path, id: &str) -> Result<Attached, String> {
    use std::os::fd::AsFd;
    let (_dir, path) =
        short_socket_path(pod_dir, SOCKET_FILE).map_err(|e| format!("pod dir: {e}"))?;
    let socket = connect(&path, REQUEST_TIMEOUT)
        .map_err(|e| format!("connect to the pod's monitor: {e}"))?;
    socket
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .and_then(|()| socket.set_write_timeout(Some(REQUEST_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let line = serde_json::to_string(&Request::Attach { id: id.to_string() })
        .map_err(|e| e.to_string())?;
    writeln!(&socket, "{line}").map_err(|e| format!("write to the pod's monitor: {e}"))?;
    // The answer is one sendmsg with the descriptor; output may follow it at once, so bytes
    // past the newline are kept, never read past.
    let mut received = Vec::new();
    let mut stdin = None;
    while !received.contains(&b'\n') {
        let mut buf = [0u8; 4096];
        let (n, fd) = berth_runtime::terminal::receive_with_fd(socket.as_fd(), &mut buf)
            .map_err(|e| format!("read from the pod's monitor: {e}"))?;
        if stdin.is_none() {
            stdin = fd;
        }
        if n == 0 {
            return Err("the pod's monitor closed the connection".to_string());
        }
        received.extend_from_slice(&buf[..n]);
    }
    let end = received
        .iter()
        .position(|&b| b == b'\n')
        .expect("looked for");
    let pending = received.split_off(end + 1);
    let response: Response = serde_json::from_slice(&received).map_err(|e| {
        format!(
            "monitor answered {:?}: {e}",
            String::from_utf8_lossy(&received)
        )
    })?;
    accepted(response)?;
    socket.set_read_timeout(None).map_err(|e| e.to_string())?;
    Ok(Attached {
        socket,
        stdin,
        pending,
    })
}

/// Stops the monitor: a shutdown request, else SIGTERM, then SIGKILL after STOP_TIMEOUT.
/// Returns once the process is gone. Blocking.
pub fn stop(pod_dir: &Path, monitor: &MonitorProcess) {
    use std::os::fd::AsFd;
    // Its exit is seen the moment it happens, on a pidfd (a 5 ms poll made StopPodSandbox take
    // 0.5 ms or 5.4 ms by luck). Taken before the check: if the check finds our monitor, the
    // pidfd is its, not a later process's with the same pid.
    let pidfd = berth_runtime::pidfd_open(monitor.pid as i32);
    if !monitor.alive() {
        return;
    }
    let pid = Pid::from_raw(monitor.pid as i32);
    if send(pod_dir, &Request::Shutdown, CONTROL_TIMEOUT).is_err() {
        let _ = kill(pid, Signal::SIGTERM);
    }
    let exited = match &pidfd {
        Ok(fd) => berth_runtime::exits_within(fd.as_fd(), STOP_TIMEOUT),
        Err(_) => {
            let deadline = Instant::now() + STOP_TIMEOUT;
            while monitor.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            !monitor.alive()
        }
    };
    if !exited {
        let _ = kill(pid, Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Ends a monitor whose start was never reported (it hung, or the agent died meanwhile): the
/// pid it wrote first thing, checked against its command line, and its whole process group
/// (the pod's init is in it).
pub fn kill_unreported(pod_dir: &Path) {
    let Ok(pid) = std::fs::read_to_string(pod_dir.join(protocol::PID_FILE)) else {
        return;
    };
    let Ok(pid) = pid.trim().parse::<i32>() else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !String::from_utf8_lossy(&cmdline).contains(&*pod_dir.to_string_lossy()) {
        return;
    }
    // The monitor leads its own session and process group.
    let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener that accepts nothing (a SIGSTOPped monitor) with its backlog full: the
    /// connect gives up at its timeout instead of blocking the thread for ever.
    #[test]
    fn connecting_to_a_listener_that_accepts_nothing_times_out() {
        struct Gone(std::path::PathBuf);
        impl Drop for Gone {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let dir = std::env::temp_dir().join(format!("berth-connect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _gone = Gone(dir.clone());
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut held = Vec::new();
        let full = loop {
            match connect(&path, Duration::ZERO) {
                Ok(s) => held.push(s),
                Err(e) => break e,
            }
            assert!(held.len() < 100_000, "the backlog never filled");
        };
        assert_eq!(full.kind(), std::io::ErrorKind::TimedOut, "{full}");
        let started = Instant::now();
        let err = connect(&path, Duration::from_millis(100)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
        assert!(started.elapsed() >= Duration::from_millis(100));
        drop(held);
    }
}
