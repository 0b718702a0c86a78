//! A container's seccomp filter, compiled once by the agent and loaded by the executor.
//!
//! libcontainer builds the filter from the spec's profile inside the container's init, with
//! libseccomp, every time: 5-13 ms for berth's `RuntimeDefault` on x86_64 (two architectures),
//! the whole of what seccomp cost a container start. The agent compiles each distinct profile
//! once ([`FilterCache`]) and writes the program beside the bundle's `config.json` as
//! [`FILTER_FILE`]; the executor hands libcontainer the spec without the profile and loads the
//! program itself ([`install`]), which is a single `seccomp(2)` call. Profiles with a notify
//! action (they need libcontainer's listener) are left to libcontainer ([`precompilable`]).

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::sync::{Arc, Mutex};

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

/// The compiled program's file in a container's bundle.
pub const FILTER_FILE: &str = "seccomp.bpf";

/// The kernel's limit on a filter's length (`BPF_MAXINSNS`).
const MAX_INSTRUCTIONS: usize = 4096;
/// One `struct sock_filter`: u16 code, u8 jt, u8 jf, u32 k.
const INSTRUCTION_BYTES: usize = 8;

/// Whether berth compiles `profile` itself: not when it has a notify action, which only
/// libcontainer's listener can serve (nor the flag that goes with one).
pub fn precompilable(profile: &LinuxSeccomp) -> bool {
    let notify = profile.default_action() == LinuxSeccompAction::ScmpActNotify
        || profile
            .syscalls()
            .iter()
            .flatten()
            .any(|s| s.action() == LinuxSeccompAction::ScmpActNotify);
    let wait_killable = profile
        .flags()
        .iter()
        .flatten()
        .any(|f| *f == LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv);
    !notify && !wait_killable
}

/// `profile` compiled to the BPF program the kernel runs (native byte order), with the same
/// meaning libcontainer gives it: unknown syscall names are skipped, rules whose action is the
/// default are dropped, comparisons on one argument index given twice become separate rules.
/// The program is a binary tree over the syscall numbers (libseccomp's optimize level 2), so
/// a call is found in ~9 comparisons instead of a walk down the list.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<u8>, String> {
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new(default).map_err(|e| format!("seccomp filter: {e}"))?;
    ctx.set_ctl_optimize(2)
        .map_err(|e| format!("seccomp filter: optimize: {e}"))?;
    for &arch in profile.architectures().iter().flatten() {
        let arch = architecture(arch)?;
        ctx.add_arch(arch)
            .map_err(|e| format!("seccomp filter: architecture {arch:?}: {e}"))?;
    }
    for rule in profile.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret())?;
        if act == default {
            continue;
        }
        let comparisons: Vec<ScmpArgCompare> = rule
            .args()
            .iter()
            .flatten()
            .map(|a| {
                ScmpArgCompare::new(a.index() as u32, operator(a.op(), a.value_two()), a.value())
            })
            .collect();
        let mut indexes: Vec<usize> = rule.args().iter().flatten().map(|a| a.index()).collect();
        indexes.sort_unstable();
        let repeated = indexes.windows(2).any(|w| w[0] == w[1]);
        for name in rule.names() {
            // A name this libseccomp or kernel does not know: nothing to allow or deny.
            let Ok(syscall) = ScmpSyscall::from_name(name) else {
                continue;
            };
            let added = if comparisons.is_empty() {
                ctx.add_rule(act, syscall).map(|_| ())
            } else if repeated {
                comparisons.iter().try_for_each(|c| {
                    ctx.add_rule_conditional(act, syscall, std::slice::from_ref(c))
                        .map(|_| ())
                })
            } else {
                ctx.add_rule_conditional(act, syscall, &comparisons)
                    .map(|_| ())
            };
            added.map_err(|e| format!("seccomp filter: rule for {name}: {e}"))?;
        }
    }
    let memfd = nix::sys::memfd::memfd_create(
        c"berth-seccomp",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )
    .map_err(|e| format!("seccomp filter: memfd: {e}"))?;
    let mut file = std::fs::File::from(memfd);
    ctx.export_bpf(&file)
        .map_err(|e| format!("seccomp filter: export: {e}"))?;
    let mut program = Vec::new();
    file.rewind()
        .and_then(|()| file.read_to_end(&mut program))
        .map_err(|e| format!("seccomp filter: read the program back: {e}"))?;
    parse(&program)?;
    Ok(program)
}

/// The instructions of a compiled program, checked for a whole number of them within the
/// kernel's limit.
pub fn parse(program: &[u8]) -> Result<Vec<libc::sock_filter>, String> {
    if program.is_empty() || !program.len().is_multiple_of(INSTRUCTION_BYTES) {
        return Err(format!(
            "seccomp program of {} bytes is not a whole number of instructions",
            program.len()
        ));
    }
    if program.len() / INSTRUCTION_BYTES > MAX_INSTRUCTIONS {
        return Err(format!(
            "seccomp program of {} instructions is longer than the kernel's {MAX_INSTRUCTIONS}",
            program.len() / INSTRUCTION_BYTES
        ));
    }
    Ok(program
        .chunks_exact(INSTRUCTION_BYTES)
        .map(|i| libc::sock_filter {
            code: u16::from_ne_bytes([i[0], i[1]]),
            jt: i[2],
            jf: i[3],
            k: u32::from_ne_bytes([i[4], i[5], i[6], i[7]]),
        })
        .collect())
}

/// The `seccomp(2)` flags the profile asks for (libseccomp sets the same ones when it loads).
pub fn flags(profile: &LinuxSeccomp) -> libc::c_uint {
    profile
        .flags()
        .iter()
        .flatten()
        .map(|f| match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            // Only with a listener, which `precompilable` leaves to libcontainer.
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => 0,
        } as libc::c_uint)
        .fold(0, |a, f| a | f)
}

/// Loads `program` on the calling thread. The caller holds CAP_SYS_ADMIN or has set
/// no_new_privs, as `seccomp(2)` requires.
pub fn install(program: &[libc::sock_filter], flags: libc::c_uint) -> std::io::Result<()> {
    let fprog = libc::sock_fprog {
        len: program.len() as libc::c_ushort,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: fprog points at `program`, which outlives the call; the kernel copies it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The agent's compiled programs, by profile. A pod's containers mostly share one profile, so
/// only the first container of each compiles; the cache forgets everything when it reaches
/// [`FilterCache::CAPACITY`] profiles (Localhost profiles can be many).
#[derive(Debug, Default)]
pub struct FilterCache {
    programs: Mutex<HashMap<String, Arc<[u8]>>>,
}

/// Whether [`FilterCache::program`] found the program or compiled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Cached,
    Compiled,
}

impl FilterCache {
    pub const CAPACITY: usize = 64;

    pub fn program(&self, profile: &LinuxSeccomp) -> Result<(Arc<[u8]>, Lookup), String> {
        let key = serde_json::to_string(profile).map_err(|e| format!("seccomp profile: {e}"))?;
        if let Some(p) = self.lock().get(&key) {
            return Ok((p.clone(), Lookup::Cached));
        }
        // Compiled outside the lock: two creates of a new profile may both compile it once.
        let program: Arc<[u8]> = compile(profile)?.into();
        let mut programs = self.lock();
        if programs.len() >= Self::CAPACITY {
            programs.clear();
        }
        programs.insert(key, program.clone());
        Ok((program, Lookup::Compiled))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<[u8]>>> {
        self.programs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn action(action: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction, String> {
    let errno = errno.map_or(libc::EPERM, |e| e as i32);
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(
            u16::try_from(errno)
                .map_err(|_| format!("seccomp: trace value {errno} is not a u16"))?,
        ),
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActNotify => ScmpAction::Notify,
    })
}

fn operator(op: LinuxSeccompOperator, second: Option<u64>) -> ScmpCompareOp {
    match op {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(second.unwrap_or(0)),
    }
}

fn architecture(arch: Arch) -> Result<ScmpArch, String> {
    Ok(match arch {
        Arch::ScmpArchNative => ScmpArch::Native,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchMips => ScmpArch::Mips,
        Arch::ScmpArchMips64 => ScmpArch::Mips64,
        Arch::ScmpArchMips64n32 => ScmpArch::Mips64N32,
        Arch::ScmpArchMipsel => ScmpArch::Mipsel,
        Arch::ScmpArchMipsel64 => ScmpArch::Mipsel64,
        Arch::ScmpArchMipsel64n32 => ScmpArch::Mipsel64N32,
        Arch::ScmpArchPpc => ScmpArch::Ppc,
        Arch::ScmpArchPpc64 => ScmpArch::Ppc64,
        Arch::ScmpArchPpc64le => ScmpArch::Ppc64Le,
        Arch::ScmpArchS390 => ScmpArch::S390,
        Arch::ScmpArchS390x => ScmpArch::S390X,
        Arch::ScmpArchRiscv64 => ScmpArch::Riscv64,
        Arch::ScmpArchParisc => ScmpArch::Parisc,
        Arch::ScmpArchParisc64 => ScmpArch::Parisc64,
        Arch::ScmpArchLoongarch64 => ScmpArch::Loongarch64,
        Arch::ScmpArchM68k => ScmpArch::M68k,
        Arch::ScmpArchSh => ScmpArch::Sh,
        Arch::ScmpArchSheb => ScmpArch::Sheb,
        #[allow(unreachable_patterns)]
        other => return Err(format!("seccomp: architecture {other:?} is not supported")),
    })
}

#[cfg(test)]
mod tests;
