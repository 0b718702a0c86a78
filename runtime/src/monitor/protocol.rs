//! What the agent and a pod monitor say to each other: the monitor's start configuration
//! (a JSON file in the pod dir), its one-line start report, and the control socket's lines.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Files in a pod's directory (`<state>/pods/<id>/`).
pub const CONFIG_FILE: &str = "monitor.json";
pub const SOCKET_FILE: &str = "monitor.sock";
pub const LOG_FILE: &str = "monitor.log";
/// The monitor's pid, written first thing after it detached.
pub const PID_FILE: &str = "monitor.pid";
pub const NS_DIR: &str = "ns";
/// Where libcontainer keeps the pod's containers' state (runc's `--root`).
pub const RUNC_DIR: &str = "runc";
/// The agent's datagram socket in its state dir, to which a monitor sends the id of each
/// container whose exit it has just recorded (the agent folds it at once instead of polling).
pub const EXIT_NOTICE_SOCKET: &str = "exits.sock";

/// How the monitor must set the pod up before it reports ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorConfig {
    pub sandbox_id: String,
    pub pod_dir: PathBuf,
    /// New namespaces for the pod; false means the host's (NamespaceMode NODE).
    pub new_net: bool,
    pub new_ipc: bool,
    pub new_uts: bool,
    /// One PID namespace for the whole pod (NamespaceMode POD), with our own init in it.
    pub pod_pid: bool,
    /// Set in the new UTS namespace.
    pub hostname: Option<String>,
    /// Namespaced sysctls, applied inside the pod's namespaces (`net.ipv4.ip_forward` → value).
    pub sysctls: Vec<(String, String)>,
    /// The monitor's cgroup (cgroupfs path: a leaf of the pod's), which it joins so the pod is
    /// charged for it.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// systemd driver: the pod's slice, in which the monitor makes its own scope
    /// (`berth-monitor-<sandbox id>.scope`) instead of joining `cgroup`.
    #[serde(default)]
    pub systemd_slice: Option<String>,
    /// The agent's [`EXIT_NOTICE_SOCKET`], told of every exit the monitor records.
    #[serde(default)]
    pub exit_notice: Option<PathBuf>,
    /// The pod's own user namespace: made first, with this mapping, and owning the others.
    #[serde(default)]
    pub userns: Option<crate::spec::UserNamespace>,
}

impl MonitorConfig {
    pub fn socket(&self) -> PathBuf {
        self.pod_dir.join(SOCKET_FILE)
    }
}

/// A path to `name` in `dir` short enough for a unix socket (sun_path holds 108 bytes, and a
/// pod dir under a long state dir exceeds that): `/proc/self/fd/<fd of dir>/<name>`. The
/// returned file must stay open while the path is used.
pub fn short_socket_path(dir: &Path, name: &str) -> std::io::Result<(std::fs::File, PathBuf)> {
    use std::os::fd::AsRawFd;
    let dir_file = std::fs::File::open(dir)?;
    let path = PathBuf::from(format!("/proc/self/fd/{}/{name}", dir_file.as_raw_fd()));
    Ok((dir_file, path))
}

/// [`short_socket_path`] for a socket's full path.
pub fn short_path_of(socket: &Path) -> std::io::Result<(std::fs::File, PathBuf)> {
    let dir = socket.parent().unwrap_or(Path::new("/"));
    let name = socket
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| std::io::Error::other(format!("{}: no socket name", socket.display())))?;
    short_socket_path(dir, name)
}

/// Tells the agent listening on `socket` that container `id` has exited (its exit file is
/// written). Never blocks and never fails the caller: an agent that is down, or too busy to take
/// the datagram, folds the exit file when it next looks, as it does at start-up.
pub fn send_exit_notice(socket: &Path, id: &str) -> std::io::Result<()> {
    let (_dir, short) = short_path_of(socket)?;
    let sender = std::os::unix::net::UnixDatagram::unbound()?;
    sender.set_nonblocking(true)?;
    sender.send_to(id.as_bytes(), short).map(|_| ())
}

/// Where a pinned namespace of the pod lives: `<pod_dir>/ns/<kind>` (`net`, `ipc`, `uts`, `pid`).
pub fn ns_path(pod_dir: &Path, kind: &str) -> PathBuf {
    pod_dir.join(NS_DIR).join(kind)
}

/// The monitor's first stdout line: `ready <pid>` or `error: <message>`. A standby monitor
/// (`berthd monitor-standby`) says `standby <pid>` first, once it waits for its pod.
pub fn ready_line(pid: u32) -> String {
    format!("ready {pid}\n")
}

pub fn standby_line(pid: u32) -> String {
    format!("standby {pid}\n")
}

pub fn error_line(message: &str) -> String {
    format!("error: {}\n", message.replace('\n', " "))
}

/// The start report, parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum StartReport {
    Standby(u32),
    Ready(u32),
    Failed(String),
}

pub fn parse_report(line: &str) -> Option<StartReport> {
    let line = line.trim_end();
    if let Some(pid) = line.strip_prefix("ready ") {
        return pid.parse().ok().map(StartReport::Ready);
    }
    if let Some(pid) = line.strip_prefix("standby ") {
        return pid.parse().ok().map(StartReport::Standby);
    }
    line.strip_prefix("error: ")
        .map(|m| StartReport::Failed(m.to_string()))
}

/// What the agent asks a monitor on its control socket: one JSON object per line, answered by
/// one [`Response`] line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Are you there? Answered with the monitor's pid.
    Ping,
    /// Kill the pod's init (if any) and exit; answered before the monitor goes.
    Shutdown,
    /// Build the container from `<bundle>/config.json` with `berthd init create`; its stdout and
    /// stderr go to pipes the monitor reads into `log_path` in the CRI format.
    Create {
        id: String,
        bundle: PathBuf,
        log_path: PathBuf,
        /// Where the monitor writes the exit record (atomically) when the container exits.
        exit_file: PathBuf,
        /// The container's cgroup (cgroupfs path), to read OOM kills from before it goes.
        cgroup: Option<PathBuf>,
        /// Give the container an open stdin pipe (CRI `stdin`), held by the monitor; without it
        /// stdin is /dev/null.
        #[serde(default)]
        stdin: bool,
        /// Run the container on a pseudo-terminal (CRI `tty`); its output is one stream.
        #[serde(default)]
        tty: bool,
    },
    Start {
        id: String,
    },
    Signal {
        id: String,
        signal: i32,
    },
    ReopenLog {
        id: String,
    },
    /// Remove libcontainer's state and the container's cgroups; the process must be gone.
    Delete {
        id: String,
    },
    /// Attach to a running container: the answer carries (SCM_RIGHTS) a descriptor for its
    /// stdin, if it has one (the pipe's write end, or the pty master with a tty), and the
    /// connection then carries the container's output as [`AttachFrame`]s, as it is logged,
    /// until the container's output ends (the monitor closes it) or the agent closes it.
    Attach {
        id: String,
    },
    /// Close the container's stdin (the monitor's end of the pipe): `stdin_once` after the
    /// first attacher's stdin ended. Reads see EOF once every attacher's copy is closed too.
    CloseStdin {
        id: String,
    },
}

/// Output on an attach connection: `kind` (1 stdout, 2 stderr), a big-endian u32 length, the
/// bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachFrame {
    pub stderr: bool,
    pub data: Vec<u8>,
}

const ATTACH_HEADER: usize = 5;

impl AttachFrame {
    pub fn encode(stderr: bool, data: &[u8], out: &mut Vec<u8>) {
        out.push(if stderr { 2 } else { 1 });
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
    }

    /// The next whole frame at the front of `buf` (removed from it); `Ok(None)` until one has
    /// arrived whole; an error for bytes that are not frames.
    pub fn decode(buf: &mut Vec<u8>) -> Result<Option<AttachFrame>, String> {
        if buf.len() < ATTACH_HEADER {
            return Ok(None);
        }
        let stderr = match buf[0] {
            1 => false,
            2 => true,
            k => return Err(format!("attach frame of unknown kind {k}")),
        };
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len > 1 << 20 {
            return Err(format!("attach frame of {len} bytes"));
        }
        if buf.len() < ATTACH_HEADER + len {
            return Ok(None);
        }
        let data = buf[ATTACH_HEADER..ATTACH_HEADER + len].to_vec();
        buf.drain(..ATTACH_HEADER + len);
        Ok(Some(AttachFrame { stderr, data }))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Response {
    pub ok: bool,
    /// The container's init (Create), or the monitor itself (Ping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn success(pid: Option<i32>) -> Response {
        Response {
            ok: true,
            pid,
            error: None,
        }
    }

    pub fn failure(error: String) -> Response {
        Response {
            ok: false,
            pid: None,
            error: Some(error),
        }
    }
}

/// How a container ended, written by the monitor when it reaps the container's init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit code, or 128 + signal for a killed process (as containerd reports it).
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// Unix nanoseconds.
    pub finished_at: i64,
    /// `Completed`, `Error` or `OOMKilled`, as kubelet expects.
    pub reason: String,
    /// Log bytes the monitor wrote for this container over its life.
    #[serde(default)]
    pub log_bytes: u64,
}

impl ExitRecord {
    pub fn new(
        exit_code: i32,
        signal: Option<i32>,
        finished_at: i64,
        oom_killed: bool,
    ) -> ExitRecord {
        let reason = if oom_killed {
            "OOMKilled"
        } else if exit_code == 0 {
            "Completed"
        } else {
            "Error"
        };
        ExitRecord {
            exit_code,
            signal,
            finished_at,
            reason: reason.to_string(),
            log_bytes: 0,
        }
    }
}

/// Which sysctls may be set in a pod, and in which namespace they live (as kubelet allows:
/// the namespaced ones only).
pub fn sysctl_namespace(name: &str) -> Option<&'static str> {
    if name.starts_with("net.") {
        Some("net")
    } else if name.starts_with("kernel.shm")
        || name.starts_with("kernel.msg")
        || name == "kernel.sem"
        || name.starts_with("fs.mqueue.")
    {
        Some("ipc")
    } else {
        None
    }
}

/// `/proc/sys/...` for a sysctl name; dots are separators, slashes are kept as given
/// (`net.ipv4.conf.eth0/1.forwarding`). None for names that could escape /proc/sys.
pub fn sysctl_path(name: &str) -> Option<PathBuf> {
    if name.is_empty() || name.contains("..") || name.starts_with('.') || name.starts_with('/') {
        return None;
    }
    let valid = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
    if !valid {
        return None;
    }
    Some(Path::new("/proc/sys").join(name.replace('.', "/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip() {
        assert_eq!(parse_report(&ready_line(42)), Some(StartReport::Ready(42)));
        assert_eq!(
            parse_report(&standby_line(43)),
            Some(StartReport::Standby(43))
        );
        assert_eq!(
            parse_report(&error_line("unshare: EPERM\nmore")),
            Some(StartReport::Failed("unshare: EPERM more".to_string()))
        );
        assert_eq!(parse_report("garbage"), None);
    }

    #[test]
    fn attach_frames_round_trip_whatever_the_reads_cut() {
        let mut wire = Vec::new();
        AttachFrame::encode(false, b"out", &mut wire);
        AttachFrame::encode(true, b"", &mut wire);
        AttachFrame::encode(true, b"err", &mut wire);
        for cut in 0..=wire.len() {
            let mut buf = wire[..cut].to_vec();
            let mut got = Vec::new();
            while let Some(f) = AttachFrame::decode(&mut buf).unwrap() {
                got.push(f);
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(f) = AttachFrame::decode(&mut buf).unwrap() {
                got.push(f);
            }
            assert_eq!(got.len(), 3, "cut at {cut}");
            assert_eq!(
                got[2],
                AttachFrame {
                    stderr: true,
                    data: b"err".to_vec()
                }
            );
            assert!(buf.is_empty());
        }
        assert!(AttachFrame::decode(&mut vec![9, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn only_namespaced_sysctls_are_allowed() {
        assert_eq!(sysctl_namespace("net.ipv4.ip_forward"), Some("net"));
        assert_eq!(sysctl_namespace("kernel.shmmax"), Some("ipc"));
        assert_eq!(sysctl_namespace("kernel.sem"), Some("ipc"));
        assert_eq!(sysctl_namespace("fs.mqueue.msg_max"), Some("ipc"));
        assert_eq!(sysctl_namespace("kernel.hostname"), None);
        assert_eq!(sysctl_namespace("vm.swappiness"), None);
    }

    #[test]
    fn sysctl_paths_stay_in_proc_sys() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap(),
            Path::new("/proc/sys/net/ipv4/ip_forward")
        );
        assert!(sysctl_path("net/../../etc").is_none());
        assert!(sysctl_path("net.ipv4 x").is_none());
        assert!(sysctl_path("").is_none());
    }
}
