//! seccomp: which filter a container gets, and berth's own default profile.
//!
//! `RuntimeDefault` is [`runtime_default`]: everything not listed fails with EPERM. The list is
//! written here as data, in the spirit of the runtimes' defaults: what ordinary programs call,
//! plus groups that only a container holding a capability gets (mounts and namespaces with
//! CAP_SYS_ADMIN, ptrace-like calls with CAP_SYS_PTRACE, …), `clone` without namespace flags
//! for everyone else, `clone3` answered with ENOSYS (so libc falls back to `clone`, whose flags a
//! filter can see), and `personality` only for the harmless personas. Unknown names are skipped
//! when the filter is built, so one list serves every kernel; the architectures are the native
//! one and its 32-bit compat ABI. `Localhost` is an OCI-format JSON profile read from an absolute
//! host path (as containerd reads it); `Unconfined` and privileged containers get no filter.

use std::path::Path;

use oci_spec::runtime::{
    Arch, Capabilities, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg,
    LinuxSeccompArgBuilder, LinuxSeccompOperator, LinuxSyscall,
};

use super::input::SeccompProfile;
use super::SpecError;

/// What every container under `RuntimeDefault` may call.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "arch_prctl",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "modify_ldt",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "ptrace",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socket",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Calls a container may make only while it holds the capability.
const BY_CAPABILITY: &[(Capability, &[&str])] = &[
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (
        Capability::SysModule,
        &["delete_module", "init_module", "finit_module"],
    ),
    (Capability::SysPacct, &["acct"]),
    (
        Capability::SysPtrace,
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
        ],
    ),
    (Capability::SysRawio, &["iopl", "ioperm"]),
    (
        Capability::SysTime,
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    (Capability::SysTtyConfig, &["vhangup"]),
    (
        Capability::SysNice,
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    (Capability::Syslog, &["syslog"]),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
    (Capability::DacReadSearch, &["open_by_handle_at"]),
];

/// The namespace flags `clone` may not carry without CAP_SYS_ADMIN (CLONE_NEWNS, NEWCGROUP,
/// NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME).
const CLONE_NAMESPACE_FLAGS: u64 = 0x0002_0000
    | 0x0200_0000
    | 0x0400_0000
    | 0x0800_0000
    | 0x1000_0000
    | 0x2000_0000
    | 0x4000_0000
    | 0x80;

/// The personas `personality` may switch to: Linux, UNAME26, PER_LINUX32, their mix, and a query.
const PERSONAS: [u64; 5] = [0x0, 0x0008, 0x20000, 0x20008, 0xffff_ffff];

const ENOSYS: u32 = 38;

fn rule(
    names: &[&str],
    action: LinuxSeccompAction,
    args: Vec<LinuxSeccompArg>,
    errno: Option<u32>,
) -> LinuxSyscall {
    let mut syscall = LinuxSyscall::default();
    syscall
        .set_names(names.iter().map(|n| n.to_string()).collect())
        .set_action(action)
        .set_errno_ret(errno)
        .set_args((!args.is_empty()).then_some(args));
    syscall
}

fn arg(index: usize, value: u64, value_two: u64, op: LinuxSeccompOperator) -> LinuxSeccompArg {
    LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .value_two(value_two)
        .op(op)
        .build()
        .expect("every field is set")
}

/// The native architecture and the compat ABI its kernel runs by default. Each architecture
/// more costs the filter's build (libseccomp, when the container starts) 3-7 ms here: x32 is
/// left out, as distribution kernels run it only with `syscall.x32=y`, and a filter without it
/// rejects x32 calls (libseccomp checks the x32 bit on x86_64).
fn architectures(arch: &str) -> Vec<Arch> {
    match arch {
        "x86_64" => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86],
        "aarch64" => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        "x86" => vec![Arch::ScmpArchX86],
        _ => vec![Arch::ScmpArchNative],
    }
}

/// Berth's `RuntimeDefault` for a container holding `caps` (its bounding set) on `arch`
/// (`std::env::consts::ARCH`).
pub fn runtime_default(caps: &Capabilities, arch: &str) -> LinuxSeccomp {
    let allow = LinuxSeccompAction::ScmpActAllow;
    let mut syscalls = vec![rule(ALLOWED, allow, Vec::new(), None)];
    for persona in PERSONAS {
        syscalls.push(rule(
            &["personality"],
            allow,
            vec![arg(0, persona, 0, LinuxSeccompOperator::ScmpCmpEq)],
            None,
        ));
    }
    let mut granted: Vec<&str> = BY_CAPABILITY
        .iter()
        .filter(|(cap, _)| caps.contains(cap))
        .flat_map(|(_, names)| names.iter().copied())
        .collect();
    granted.sort_unstable();
    granted.dedup();
    if !caps.contains(&Capability::SysAdmin) {
        syscalls.push(rule(
            &["clone"],
            allow,
            vec![arg(
                0,
                CLONE_NAMESPACE_FLAGS,
                0,
                LinuxSeccompOperator::ScmpCmpMaskedEq,
            )],
            None,
        ));
        syscalls.push(rule(
            &["clone3"],
            LinuxSeccompAction::ScmpActErrno,
            Vec::new(),
            Some(ENOSYS),
        ));
    }
    if !granted.is_empty() {
        syscalls.push(rule(&granted, allow, Vec::new(), None));
    }
    let mut profile = LinuxSeccomp::default();
    profile
        .set_default_action(LinuxSeccompAction::ScmpActErrno)
        .set_default_errno_ret(Some(1))
        .set_architectures(Some(architectures(arch)))
        .set_syscalls(Some(syscalls));
    profile
}

/// A `Localhost` profile's file text (OCI runtime-spec JSON, as containerd reads it; fields
/// it does not know, such as a Docker profile's comments, are ignored).
pub fn parse_profile(path: &Path, text: &str) -> Result<LinuxSeccomp, SpecError> {
    serde_json::from_str(text).map_err(|e| SpecError::InvalidSeccomp {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The profile a Localhost request names, read and parsed (`generate` itself reads nothing):
/// an absolute path to a readable, valid file. `None` for every other kind of profile.
pub fn load_localhost(profile: &SeccompProfile) -> Result<Option<LinuxSeccomp>, SpecError> {
    let SeccompProfile::Localhost(path) = profile else {
        return Ok(None);
    };
    let invalid = |reason: String| SpecError::InvalidSeccomp {
        path: path.clone(),
        reason,
    };
    if !path.is_absolute() {
        return Err(invalid(
            "a localhost profile must be an absolute path".into(),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
    parse_profile(path, &text).map(Some)
}

/// The filter for a container: `profile` (with `Unset` meaning `default`), none when privileged.
/// `loaded` is the Localhost profile's parsed file.
pub fn for_container(
    profile: &SeccompProfile,
    default: &SeccompProfile,
    privileged: bool,
    caps: &Capabilities,
    loaded: Option<&LinuxSeccomp>,
) -> Result<Option<LinuxSeccomp>, SpecError> {
    if privileged {
        return Ok(None);
    }
    let profile = match profile {
        SeccompProfile::Unset => default,
        p => p,
    };
    match profile {
        SeccompProfile::Unset | SeccompProfile::Unconfined => Ok(None),
        SeccompProfile::RuntimeDefault => Ok(Some(runtime_default(caps, std::env::consts::ARCH))),
        SeccompProfile::Localhost(path) => {
            loaded
                .cloned()
                .map(Some)
                .ok_or_else(|| SpecError::InvalidSeccomp {
                    path: path.clone(),
                    reason: "the profile was not loaded".into(),
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(list: &[Capability]) -> Capabilities {
        list.iter().copied().collect()
    }

    fn allowed_unconditionally(p: &LinuxSeccomp) -> Vec<String> {
        p.syscalls()
            .iter()
            .flatten()
            .filter(|s| s.action() == LinuxSeccompAction::ScmpActAllow && s.args().is_none())
            .flat_map(|s| s.names().clone())
            .collect()
    }

    #[test]
    fn runtime_default_denies_with_eperm_and_lists_no_name_twice_in_one_rule() {
        let p = runtime_default(
            &caps(&super::super::security::DEFAULT_CAPABILITIES),
            "x86_64",
        );
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(1));
        let mut names = ALLOWED.to_vec();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "ALLOWED has a duplicate");
        assert_eq!(
            p.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86][..])
        );
    }

    #[test]
    fn namespaces_and_mounts_need_cap_sys_admin() {
        let plain =
            allowed_unconditionally(&runtime_default(&caps(&[Capability::Chown]), "x86_64"));
        for name in [
            "unshare",
            "setns",
            "mount",
            "clone",
            "clone3",
            "sethostname",
        ] {
            assert!(
                !plain.iter().any(|n| n == name),
                "{name} allowed without CAP_SYS_ADMIN"
            );
        }
        let admin =
            allowed_unconditionally(&runtime_default(&caps(&[Capability::SysAdmin]), "x86_64"));
        for name in [
            "unshare",
            "setns",
            "mount",
            "clone",
            "clone3",
            "sethostname",
        ] {
            assert!(
                admin.iter().any(|n| n == name),
                "{name} refused with CAP_SYS_ADMIN"
            );
        }
    }

    #[test]
    fn without_cap_sys_admin_clone_is_filtered_by_flags_and_clone3_is_enosys() {
        let p = runtime_default(&caps(&[]), "x86_64");
        let rules = p.syscalls().clone().unwrap();
        let clone = rules
            .iter()
            .find(|r| r.names() == &["clone".to_string()])
            .unwrap();
        let a = &clone.args().as_ref().unwrap()[0];
        assert_eq!(
            (a.index(), a.value(), a.value_two(), a.op()),
            (
                0,
                CLONE_NAMESPACE_FLAGS,
                Some(0),
                LinuxSeccompOperator::ScmpCmpMaskedEq
            )
        );
        let clone3 = rules
            .iter()
            .find(|r| r.names() == &["clone3".to_string()])
            .unwrap();
        assert_eq!(
            (clone3.action(), clone3.errno_ret()),
            (LinuxSeccompAction::ScmpActErrno, Some(ENOSYS))
        );
    }

    #[test]
    fn capability_groups_follow_the_bounding_set() {
        let p = allowed_unconditionally(&runtime_default(
            &caps(&[Capability::SysPtrace, Capability::SysTime]),
            "aarch64",
        ));
        assert!(p.iter().any(|n| n == "process_vm_readv"));
        assert!(p.iter().any(|n| n == "clock_settime"));
        assert!(!p.iter().any(|n| n == "reboot"));
        assert!(!p.iter().any(|n| n == "init_module"));
        let arm = runtime_default(&caps(&[]), "aarch64");
        assert_eq!(
            arm.architectures().as_deref(),
            Some(&[Arch::ScmpArchAarch64, Arch::ScmpArchArm][..])
        );
    }

    #[test]
    fn a_localhost_profile_parses_from_oci_json_and_bad_ones_name_the_file() {
        let text = r#"{"defaultAction": "SCMP_ACT_ALLOW", "comment": "ignored",
            "syscalls": [{"names": ["chmod", "fchmodat"], "action": "SCMP_ACT_ERRNO"}]}"#;
        let p = parse_profile(Path::new("/p.json"), text).unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActAllow);
        assert_eq!(p.syscalls().as_ref().unwrap()[0].names().len(), 2);
        let e = parse_profile(Path::new("/etc/bad.json"), "{not json").unwrap_err();
        assert!(e.to_string().contains("/etc/bad.json"), "{e}");
        let relative = SeccompProfile::Localhost("profiles/p.json".into());
        assert!(load_localhost(&relative).is_err());
        assert!(load_localhost(&SeccompProfile::RuntimeDefault)
            .unwrap()
            .is_none());
    }

    #[test]
    fn unset_takes_the_configured_default_and_privileged_takes_none() {
        let all = caps(&[]);
        let unconfined = SeccompProfile::Unconfined;
        let default = SeccompProfile::RuntimeDefault;
        let unset = SeccompProfile::Unset;
        assert!(for_container(&unset, &unconfined, false, &all, None)
            .unwrap()
            .is_none());
        assert!(for_container(&unset, &default, false, &all, None)
            .unwrap()
            .is_some());
        assert!(for_container(&default, &unconfined, true, &all, None)
            .unwrap()
            .is_none());
        assert!(for_container(&unconfined, &default, false, &all, None)
            .unwrap()
            .is_none());
    }
}
