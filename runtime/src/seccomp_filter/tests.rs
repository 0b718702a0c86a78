use oci_spec::runtime::{
    Capabilities, Capability, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSyscallBuilder,
};

use super::*;
use crate::spec::seccomp::runtime_default;

fn default_profile() -> LinuxSeccomp {
    runtime_default(
        &[Capability::Chown, Capability::Kill]
            .into_iter()
            .collect::<Capabilities>(),
        std::env::consts::ARCH,
    )
}

/// Runs `check` in a forked child that has loaded `program` (under no_new_privs); the child's
/// exit code is what `check` returned.
fn in_filtered_child(program: &[libc::sock_filter], check: fn() -> i32) -> i32 {
    // SAFETY: the child only makes raw syscalls (no allocation, no locks) and then _exits.
    match unsafe { libc::fork() } {
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        0 => {
            // SAFETY: prctl and _exit take plain integers.
            unsafe {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    libc::_exit(100);
                }
                if install(program, 0).is_err() {
                    libc::_exit(101);
                }
                libc::_exit(check())
            }
        }
        pid => {
            let mut status = 0;
            // SAFETY: waits for our own child.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(libc::WIFEXITED(status), "child status {status:#x}");
            libc::WEXITSTATUS(status)
        }
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[test]
fn runtime_default_loads_and_denies_a_user_namespace_with_eperm_but_allows_getpid() {
    let program = parse(&compile(&default_profile()).unwrap()).unwrap();
    let code = in_filtered_child(&program, || {
        // SAFETY: plain syscalls.
        unsafe {
            if libc::getpid() <= 0 {
                return 1;
            }
            if libc::unshare(libc::CLONE_NEWUSER) == 0 {
                return 2;
            }
            if errno() != libc::EPERM {
                return 3;
            }
            0
        }
    });
    assert_eq!(code, 0);
}

#[test]
fn clone3_gets_enosys_so_libc_falls_back_to_clone() {
    let program = parse(&compile(&default_profile()).unwrap()).unwrap();
    let code = in_filtered_child(&program, || {
        // SAFETY: a null clone_args is refused before anything is cloned.
        unsafe {
            libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize);
        }
        if errno() == libc::ENOSYS {
            0
        } else {
            1
        }
    });
    assert_eq!(code, 0);
}

#[test]
fn rules_with_the_default_action_and_names_no_kernel_knows_are_skipped() {
    let mut profile = LinuxSeccomp::default();
    profile
        .set_default_action(LinuxSeccompAction::ScmpActAllow)
        .set_syscalls(Some(vec![
            LinuxSyscallBuilder::default()
                .names(vec!["getpid".to_string()])
                .action(LinuxSeccompAction::ScmpActAllow)
                .build()
                .unwrap(),
            LinuxSyscallBuilder::default()
                .names(vec!["no_such_call".to_string(), "mkdirat".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(libc::EACCES as u32)
                .build()
                .unwrap(),
        ]));
    let program = parse(&compile(&profile).unwrap()).unwrap();
    let code = in_filtered_child(&program, || {
        // SAFETY: mkdirat on a path that cannot be made anyway.
        let r = unsafe { libc::mkdirat(libc::AT_FDCWD, c"/proc/berth-never".as_ptr(), 0o700) };
        match (r, errno()) {
            (-1, libc::EACCES) => 0,
            _ => 1,
        }
    });
    assert_eq!(code, 0);
}

#[test]
fn parse_refuses_a_partial_instruction_an_empty_and_an_overlong_program() {
    assert!(parse(&[0u8; 12]).unwrap_err().contains("whole number"));
    assert!(parse(&[]).unwrap_err().contains("whole number"));
    assert!(parse(&vec![0u8; 8 * 4097]).unwrap_err().contains("4096"));
    assert_eq!(parse(&[0u8; 16]).unwrap().len(), 2);
}

#[test]
fn flags_follow_the_profile() {
    let mut profile = default_profile();
    assert_eq!(flags(&profile), 0);
    profile.set_flags(Some(vec![
        LinuxSeccompFilterFlag::SeccompFilterFlagLog,
        LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow,
    ]));
    assert_eq!(
        flags(&profile),
        (libc::SECCOMP_FILTER_FLAG_LOG | libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW) as libc::c_uint
    );
}

#[test]
fn a_profile_with_a_notify_action_is_left_to_libcontainer() {
    let mut profile = default_profile();
    assert!(precompilable(&profile));
    let mut syscalls = profile.syscalls().clone().unwrap();
    syscalls.push(
        LinuxSyscallBuilder::default()
            .names(vec!["mkdir".to_string()])
            .action(LinuxSeccompAction::ScmpActNotify)
            .build()
            .unwrap(),
    );
    profile.set_syscalls(Some(syscalls));
    assert!(!precompilable(&profile));
}

#[test]
fn the_cache_compiles_each_profile_once() {
    let cache = FilterCache::default();
    let first = default_profile();
    let mut second = default_profile();
    second.set_default_errno_ret(Some(libc::EACCES as u32));
    let (a, how) = cache.program(&first).unwrap();
    assert_eq!(how, Lookup::Compiled);
    let (b, how) = cache.program(&first).unwrap();
    assert_eq!(how, Lookup::Cached);
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(cache.program(&second).unwrap().1, Lookup::Compiled);
}
