//! The exec'd process, started by us rather than by libcontainer's tenant builder: a fork that
//! joins the running container and execs the command with the container's own `process`
//! (what `runc exec` does with containerd's process spec).
//!
//! Why not libcontainer: its tenant path cost 10-12 ms of CPU per exec here (two clones, a
//! dozen reads of /proc/self/mountinfo, ~1200 syscalls), left a `tenant-notify-*.sock` in the
//! container's state directory for every exec, and joined the cgroup by writing a pid to
//! `cgroup.procs`, which takes the kernel's global threadgroup lock and so waits for an RCU
//! grace period (6-18 ms on this 2-core VM) whenever no other migration ran just before. A
//! single-threaded process that writes `0` to a v1 hierarchy's `tasks` file moves only itself
//! and skips that lock (`cgroup_procs_write_start`), which is how the child joins here.
//!
//! Steps. Here, single-threaded: the init's pidfd (the process cannot be swapped for another
//! under us), its cgroups (read from /proc, and checked to be the container's), the console
//! socket connected, ourselves made non-dumpable (nothing in the container may ptrace us or open
//! our /proc/<pid>/exe), the init's PID namespace for our children. The child: the cgroups, the
//! other namespaces (one setns on the pidfd, so a user namespace is joined first), a session of
//! its own, the terminal, rlimits, oom_score_adj, the bounding set, groups, gid, uid, the
//! capability sets, the working directory, no_new_privs and the container's seccomp filter (loaded
//! before the credentials change when there is no no_new_privs, as runc does), then execve with
//! the container's env.
//! Any failure is written to a close-on-exec pipe; the pipe closing empty means it exec'd.

use std::ffi::{CString, OsStr};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::unistd::Pid;
use oci_spec::runtime::{
    Capabilities, LinuxCapabilities, LinuxNamespaceType, PosixRlimit, PosixRlimitType, Process,
    Spec,
};

use super::caps::mask;
use crate::cgroups::Hierarchy;

/// Exit code of a child that failed before its execve (it also wrote why to the pipe).
const CHILD_FAILED: i32 = 255;

/// What libcontainer's state.json says of the container.
#[derive(serde::Deserialize)]
struct State {
    pid: i32,
    bundle: PathBuf,
}

/// Everything the child needs, prepared before the fork.
struct Plan {
    init: OwnedFd,
    /// Namespaces of the init that are not already ours, joined by the child (the PID namespace
    /// is the parent's to join).
    namespaces: CloneFlags,
    /// `tasks` (v1) or `cgroup.procs` (v2) files of the init's cgroups that are not ours.
    cgroups: Vec<PathBuf>,
    console: Option<UnixStream>,
    process: Process,
    seccomp: Filter,
    argv: Vec<CString>,
    env: Vec<CString>,
}

/// Starts `cmd` in the running container `id` (libcontainer state under `root`) as the
/// container's process; returns its host pid once it has exec'd.
pub(super) fn spawn(
    root: &Path,
    id: &str,
    console: Option<&Path>,
    cmd: &[String],
) -> Result<Pid, String> {
    if cmd.is_empty() {
        return Err("exec: no command".into());
    }
    let plan = prepare(root, id, console, cmd)?;
    let (mut read_end, write_end) = pipe()?;
    // SAFETY: we are single-threaded (the executor starts no threads), so the child may do
    // anything the parent could, allocation included, until it execs or exits.
    match unsafe { libc::fork() } {
        -1 => Err(format!("fork: {}", std::io::Error::last_os_error())),
        0 => {
            drop(read_end);
            let error = child(&plan).unwrap_err();
            let mut pipe = std::fs::File::from(write_end);
            let _ = pipe.write_all(error.as_bytes());
            // SAFETY: _exit ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(CHILD_FAILED) }
        }
        pid => {
            drop(write_end);
            drop(plan);
            let pid = Pid::from_raw(pid);
            let mut error = String::new();
            let _ = read_end.read_to_string(&mut error);
            if error.is_empty() {
                return Ok(pid);
            }
            let _ = nix::sys::wait::waitpid(pid, None);
            Err(format!("exec in container {id}: {error}"))
        }
    }
}

fn pipe() -> Result<(std::fs::File, OwnedFd), String> {
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    Ok((std::fs::File::from(r), w))
}

fn prepare(root: &Path, id: &str, console: Option<&Path>, cmd: &[String]) -> Result<Plan, String> {
    let state_file = root.join(id).join("state.json");
    let state: State = std::fs::read(&state_file)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| format!("load container {id}: {}: {e}", state_file.display()))?;
    let config = state.bundle.join("config.json");
    let spec = Spec::load(&config).map_err(|e| format!("load {}: {e}", config.display()))?;
    // A container whose filter the agent compiled runs from libcontainer's copy of its spec.
    let (bundle, spec) = super::filtered::source_spec(&state.bundle, spec)?;
    let program = super::filtered::Program::of_bundle(&bundle, &spec)?;
    let mut process = spec
        .process()
        .clone()
        .ok_or_else(|| format!("container {id}: its spec has no process"))?;
    refuse_unsupported(&spec, &process)?;
    let not_running = |e: std::io::Error| format!("container {id} is not running: {e}");
    let init = crate::pidfd_open(state.pid).map_err(not_running)?;
    let cgroups = cgroups_to_join(state.pid, &spec, &crate::cgroups::hierarchies())
        .map_err(|e| format!("container {id} is not running: {e}"))?;
    let mut namespaces = CloneFlags::empty();
    for ns in spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
    {
        let (flag, name) = namespace(ns.typ());
        if !same_namespace(state.pid, name).map_err(not_running)? {
            namespaces |= flag;
        }
    }
    let console = console
        .map(|path| {
            crate::monitor::protocol::short_path_of(path)
                .and_then(|(_dir, short)| UnixStream::connect(short))
                .map_err(|e| format!("connect to console socket {}: {e}", path.display()))
        })
        .transpose()?;
    process.set_terminal(Some(console.is_some()));
    let argv = cstrings(cmd.iter().map(String::as_str))?;
    let env = cstrings(process.env().iter().flatten().map(String::as_str))?;
    // Nothing that joins the container may be inspected from inside it; execve of the
    // command makes the child dumpable again.
    nix::sys::prctl::set_dumpable(false).map_err(|e| format!("prctl(PR_SET_DUMPABLE): {e}"))?;
    if namespaces.contains(CloneFlags::CLONE_NEWPID) {
        nix::sched::setns(init.as_fd(), CloneFlags::CLONE_NEWPID)
            .map_err(|e| format!("join the PID namespace of container {id}: {e}"))?;
        namespaces.remove(CloneFlags::CLONE_NEWPID);
    }
    Ok(Plan {
        init,
        namespaces,
        cgroups,
        console,
        process,
        seccomp: match program {
            Some(program) => Filter::Compiled(program),
            None => match spec.linux().as_ref().and_then(|l| l.seccomp().clone()) {
                Some(profile) => Filter::Profile(profile),
                None => Filter::None,
            },
        },
        argv,
        env,
    })
}

/// What the container's spec asks of a process that this exec cannot give yet: refused, never
/// silently dropped.
fn refuse_unsupported(spec: &Spec, process: &Process) -> Result<(), String> {
    let linux = spec.linux().as_ref();
    let unsupported = [
        (
            "a seccomp notify action",
            linux
                .and_then(|l| l.seccomp().as_ref())
                .is_some_and(libcontainer::seccomp::is_notify),
        ),
        ("an SELinux label", process.selinux_label().is_some()),
        ("a scheduler policy", process.scheduler().is_some()),
        ("an I/O priority", process.io_priority().is_some()),
        ("exec CPU affinity", process.exec_cpu_affinity().is_some()),
    ];
    match unsupported.iter().find(|(_, set)| *set) {
        Some((what, _)) => Err(format!(
            "exec: the container's process has {what}, which berth's exec does not apply yet"
        )),
        None => Ok(()),
    }
}

fn cstrings<'a>(items: impl Iterator<Item = &'a str>) -> Result<Vec<CString>, String> {
    items
        .map(|s| CString::new(s).map_err(|_| format!("{s:?} holds a NUL byte")))
        .collect()
}

fn namespace(typ: LinuxNamespaceType) -> (CloneFlags, &'static str) {
    match typ {
        LinuxNamespaceType::Mount => (CloneFlags::CLONE_NEWNS, "mnt"),
        LinuxNamespaceType::Cgroup => (CloneFlags::CLONE_NEWCGROUP, "cgroup"),
        LinuxNamespaceType::Uts => (CloneFlags::CLONE_NEWUTS, "uts"),
        LinuxNamespaceType::Ipc => (CloneFlags::CLONE_NEWIPC, "ipc"),
        LinuxNamespaceType::User => (CloneFlags::CLONE_NEWUSER, "user"),
        LinuxNamespaceType::Pid => (CloneFlags::CLONE_NEWPID, "pid"),
        LinuxNamespaceType::Network => (CloneFlags::CLONE_NEWNET, "net"),
        // CLONE_NEWTIME shares its bit with CSIGNAL's range in nix: spell it out.
        LinuxNamespaceType::Time => (CloneFlags::from_bits_retain(0x80), "time"),
    }
}

/// Whether the init's namespace `name` is ours (the container shares the host's).
fn same_namespace(init: i32, name: &str) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let theirs = std::fs::metadata(format!("/proc/{init}/ns/{name}"))?;
    let ours = std::fs::metadata(format!("/proc/self/ns/{name}"))?;
    Ok((theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()))
}

/// The files through which the child joins the init's cgroups, for each hierarchy where the
/// init is elsewhere than we are. The init must be in the spec's cgroup (a pid reused by
/// another process is not).
fn cgroups_to_join(
    init: i32,
    spec: &Spec,
    hierarchies: &[Hierarchy],
) -> Result<Vec<PathBuf>, String> {
    let theirs =
        std::fs::read_to_string(format!("/proc/{init}/cgroup")).map_err(|e| e.to_string())?;
    let ours = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
    let wanted = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().clone())
        .map(|p| crate::cgroups::systemd::fs_path(&p))
        .transpose()?;
    join_files(&theirs, &ours, wanted.as_deref(), hierarchies)
}

/// [`cgroups_to_join`] on the texts of the two /proc/<pid>/cgroup files.
fn join_files(
    theirs: &str,
    ours: &str,
    wanted: Option<&Path>,
    hierarchies: &[Hierarchy],
) -> Result<Vec<PathBuf>, String> {
    let ours = crate::cgroups::proc_cgroup_lines(ours);
    let theirs = crate::cgroups::proc_cgroup_lines(theirs);
    if let Some(wanted) = wanted {
        let wanted = Path::new("/").join(wanted);
        if !theirs.iter().any(|(_, p)| Path::new(p) == wanted) {
            return Err(format!("its init is not in cgroup {}", wanted.display()));
        }
    }
    let mut files = Vec::new();
    for (controllers, path) in theirs {
        if ours.iter().any(|(c, p)| *c == controllers && *p == path) {
            continue;
        }
        let Some(h) = crate::cgroups::hierarchy_named(controllers, hierarchies) else {
            return Err(format!("no mounted cgroup hierarchy for {controllers:?}"));
        };
        // v2 has no per-thread move for a domain cgroup: `cgroup.procs`, the slower way.
        let file = if h.v2 { "cgroup.procs" } else { "tasks" };
        files.push(h.mountpoint.join(path.trim_start_matches('/')).join(file));
    }
    Ok(files)
}

type Step = Result<(), String>;

fn errno(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// The child's side; returns only on failure.
fn child(plan: &Plan) -> Result<std::convert::Infallible, String> {
    // Through the host's /proc, before the mount namespace changes: the kernel keeps the request
    // until execve, which enters the profile.
    if let Some(profile) = plan.process.apparmor_profile() {
        crate::spec::apparmor::change_on_exec(profile)?;
    }
    for file in &plan.cgroups {
        std::fs::write(file, "0").map_err(|e| format!("join cgroup {}: {e}", file.display()))?;
    }
    if !plan.namespaces.is_empty() {
        nix::sched::setns(plan.init.as_fd(), plan.namespaces)
            .map_err(|e| format!("join the container's namespaces: {e}"))?;
    }
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    let user = plan.process.user();
    if let Some(console) = &plan.console {
        terminal(console.as_fd(), user.uid(), user.gid())?;
    }
    for limit in plan.process.rlimits().iter().flatten() {
        set_rlimit(limit)?;
    }
    if let Some(adj) = plan.process.oom_score_adj() {
        // Lowering it needs CAP_SYS_RESOURCE, which a node may withhold: keep what we have.
        let _ = std::fs::write("/proc/self/oom_score_adj", adj.to_string());
    }
    let cwd = plan.process.cwd();
    let early_cwd = nix::unistd::chdir(cwd.as_path()).is_ok();
    let no_new_privs = plan.process.no_new_privileges() == Some(true);
    // Loading a filter needs CAP_SYS_ADMIN or no_new_privs: without the latter it goes in
    // while we are still root, as runc does (the rest of this setup must pass it).
    if !no_new_privs {
        load_seccomp(&plan.seccomp)?;
    }
    credentials(&plan.process)?;
    if !early_cwd {
        nix::unistd::chdir(cwd.as_path()).map_err(|e| format!("chdir {}: {e}", cwd.display()))?;
    }
    if no_new_privs {
        nix::sys::prctl::set_no_new_privs()
            .map_err(|e| format!("prctl(PR_SET_NO_NEW_PRIVS): {e}"))?;
        load_seccomp(&plan.seccomp)?;
    }
    exec(&plan.argv, &plan.env, &plan.process)
}

/// The container's seccomp filter: the program the agent compiled, or else its profile, which
/// libcontainer compiles here (a container created before berth compiled profiles).
enum Filter {
    None,
    Compiled(super::filtered::Program),
    Profile(oci_spec::runtime::LinuxSeccomp),
}

/// The container's seccomp filter on this process (and what it execs), if it has one.
fn load_seccomp(filter: &Filter) -> Step {
    match filter {
        Filter::None => Ok(()),
        Filter::Compiled(program) => program.install(),
        Filter::Profile(s) => libcontainer::seccomp::initialize_seccomp(s)
            .map(|_| ())
            .map_err(|e| format!("load the seccomp filter: {e}")),
    }
}

/// A pty from the container's /dev/ptmx: the master goes to the console socket, the slave
/// becomes our controlling terminal and stdio.
fn terminal(console: BorrowedFd<'_>, uid: u32, gid: u32) -> Step {
    let master = nix::fcntl::open(
        "/dev/ptmx",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("open /dev/ptmx: {e}"))?;
    // SAFETY: open returned a new descriptor that nothing else owns.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int; TIOCGPTPEER returns a new descriptor or -1.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(errno("unlock the pty"));
    }
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY,
        )
    };
    if slave < 0 {
        return Err(errno("open the pty's slave"));
    }
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    // The process may reopen its terminal (`tty`, an editor) as the user it runs as.
    nix::unistd::fchown(slave.as_raw_fd(), Some(uid.into()), Some(gid.into()))
        .map_err(|e| format!("chown the pty: {e}"))?;
    crate::terminal::send_with_fd(console, b"pty", Some(master.as_fd()))
        .map_err(|e| format!("send the pty to the console socket: {e}"))?;
    drop(master);
    // SAFETY: TIOCSCTTY takes an int argument; we lead a new session without a terminal.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(errno("make the pty our controlling terminal"));
    }
    for target in 0..3 {
        nix::unistd::dup2(slave.as_raw_fd(), target).map_err(|e| format!("dup2 the pty: {e}"))?;
    }
    Ok(())
}

fn set_rlimit(limit: &PosixRlimit) -> Step {
    let resource = match limit.typ() {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    };
    let value = libc::rlimit {
        rlim_cur: limit.soft(),
        rlim_max: limit.hard(),
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(resource, &value) } < 0 {
        return Err(errno(&format!("setrlimit {:?}", limit.typ())));
    }
    Ok(())
}

/// The bounding set, groups, gid and uid, then the capability sets, as runc applies them:
/// capabilities survive the uid change (PR_SET_KEEPCAPS) and are set explicitly after it.
fn credentials(process: &Process) -> Step {
    let caps = process.capabilities().clone().unwrap_or_else(|| {
        let none = Some(Capabilities::new());
        let mut c = LinuxCapabilities::default();
        c.set_bounding(none.clone())
            .set_effective(none.clone())
            .set_permitted(none.clone())
            .set_inheritable(none.clone())
            .set_ambient(none);
        c
    });
    let bounding = mask(caps.bounding());
    // Up to the last capability the kernel knows (PR_CAPBSET_READ fails past it).
    for bit in 0..64u64 {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_READ, bit, 0, 0, 0) } < 0 {
            break;
        }
        if bounding & (1 << bit) == 0
            && unsafe { libc::prctl(libc::PR_CAPBSET_DROP, bit, 0, 0, 0) } < 0
        {
            return Err(errno(&format!(
                "drop capability {bit} from the bounding set"
            )));
        }
    }
    let user = process.user();
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } < 0 {
        return Err(errno("prctl(PR_SET_KEEPCAPS)"));
    }
    let groups: Vec<nix::unistd::Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|&g| g.into())
        .collect();
    nix::unistd::setgroups(&groups).map_err(|e| format!("setgroups: {e}"))?;
    let (uid, gid) = (
        nix::unistd::Uid::from(user.uid()),
        nix::unistd::Gid::from(user.gid()),
    );
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("setgid {gid}: {e}"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("setuid {uid}: {e}"))?;
    if let Some(umask) = user.umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask));
    }
    super::caps::set(super::caps::Sets {
        effective: mask(caps.effective()),
        permitted: mask(caps.permitted()),
        inheritable: mask(caps.inheritable()),
    })?;
    let ambient = mask(caps.ambient());
    for bit in (0..64u64).filter(|b| ambient & (1 << b) != 0) {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, bit, 0, 0) } < 0 {
            return Err(errno(&format!("raise ambient capability {bit}")));
        }
    }
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) } < 0 {
        return Err(errno("prctl(PR_SET_KEEPCAPS)"));
    }
    Ok(())
}

/// execve of `argv[0]`, looked up in the container's PATH (the process's env) when it has no
/// slash, as runc does.
fn exec(
    argv: &[CString],
    env: &[CString],
    process: &Process,
) -> Result<std::convert::Infallible, String> {
    let Some(name) = argv.first() else {
        return Err("exec: no command".into());
    };
    let candidates: Vec<PathBuf> = if name.as_bytes().contains(&b'/') {
        vec![PathBuf::from(OsStr::from_bytes(name.as_bytes()))]
    } else {
        let path = process
            .env()
            .iter()
            .flatten()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .to_string();
        path.split(':')
            .map(|dir| {
                Path::new(if dir.is_empty() { "." } else { dir })
                    .join(OsStr::from_bytes(name.as_bytes()))
            })
            .collect()
    };
    let mut last = nix::errno::Errno::ENOENT;
    for candidate in &candidates {
        let Ok(file) = CString::new(candidate.as_os_str().as_bytes()) else {
            continue;
        };
        let Err(e) = nix::unistd::execve(&file, argv, env);
        // Keep looking past a directory that lacks it; remember a file we may not run.
        if e != nix::errno::Errno::ENOENT && e != nix::errno::Errno::ENOTDIR {
            last = e;
        }
    }
    let name = name.to_string_lossy();
    Err(match last {
        nix::errno::Errno::ENOENT if !name.contains('/') => {
            format!("exec: {name:?}: executable file not found in $PATH")
        }
        e => format!("exec: {name:?}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hierarchies() -> Vec<Hierarchy> {
        let v1 = |mount: &str, controllers: &[&str]| Hierarchy {
            mountpoint: PathBuf::from(mount),
            controllers: controllers.iter().map(|c| c.to_string()).collect(),
            v2: false,
        };
        vec![
            v1("/sys/fs/cgroup/cpu,cpuacct", &["cpu", "cpuacct"]),
            v1("/sys/fs/cgroup/memory", &["memory"]),
            v1("/sys/fs/cgroup/systemd", &["name=systemd"]),
            Hierarchy {
                mountpoint: PathBuf::from("/sys/fs/cgroup/unified"),
                controllers: Vec::new(),
                v2: true,
            },
        ]
    }

    const OURS: &str = "3:cpu,cpuacct:/\n2:memory:/\n1:name=systemd:/\n0::/\n";

    #[test]
    fn joins_each_v1_hierarchy_through_its_tasks_file_where_the_init_is_elsewhere() {
        let theirs = "3:cpu,cpuacct:/berth/c1\n2:memory:/berth/c1\n1:name=systemd:/\n0::/\n";
        let files = join_files(theirs, OURS, Some(Path::new("/berth/c1")), &hierarchies()).unwrap();
        assert_eq!(
            files,
            vec![
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/berth/c1/tasks"),
                PathBuf::from("/sys/fs/cgroup/memory/berth/c1/tasks"),
            ]
        );
    }

    #[test]
    fn v2_is_joined_through_cgroup_procs() {
        let files = join_files(
            "0::/kubepods/c1\n",
            "0::/\n",
            Some(Path::new("kubepods/c1")),
            &hierarchies(),
        )
        .unwrap();
        assert_eq!(
            files,
            vec![PathBuf::from(
                "/sys/fs/cgroup/unified/kubepods/c1/cgroup.procs"
            )]
        );
    }

    #[test]
    fn an_init_outside_the_spec_s_cgroup_is_not_the_container_s() {
        let theirs = "3:cpu,cpuacct:/other\n2:memory:/other\n1:name=systemd:/\n0::/\n";
        let e = join_files(theirs, OURS, Some(Path::new("/berth/c1")), &hierarchies()).unwrap_err();
        assert!(e.contains("/berth/c1"), "{e}");
    }

    #[test]
    fn a_hierarchy_that_is_not_mounted_is_an_error_naming_it() {
        let theirs = "4:pids:/berth/c1\n";
        let e = join_files(theirs, OURS, None, &hierarchies()).unwrap_err();
        assert!(e.contains("pids"), "{e}");
    }

    #[test]
    fn capability_masks_use_kernel_bit_numbers() {
        use oci_spec::runtime::Capability;
        let set: Capabilities = [
            Capability::Chown,
            Capability::NetAdmin,
            Capability::CheckpointRestore,
        ]
        .into();
        assert_eq!(mask(&Some(set)), 1 | 1 << 12 | 1 << 40);
        assert_eq!(mask(&None), 0);
    }
}
