//! The calling thread's capability sets, read and written whole (capget/capset, version 3).

use oci_spec::runtime::{Capabilities, Capability};

use crate::spec::security::CAPABILITY_BITS;

/// Effective, permitted and inheritable sets as kernel bit masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sets {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
}

#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const VERSION_3: u32 = 0x2008_0522;

/// `cap`'s bit in a kernel mask (0 for one the kernel numbering does not know).
pub(super) fn bit(cap: &Capability) -> u64 {
    CAPABILITY_BITS
        .iter()
        .position(|c| c == cap)
        .map_or(0, |b| 1 << b)
}

/// The capabilities of `set` as a kernel bit mask.
pub(super) fn mask(set: &Option<Capabilities>) -> u64 {
    set.iter().flatten().fold(0, |m, cap| m | bit(cap))
}

pub(super) fn get() -> Result<Sets, String> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes two v3 data structs, which is what we pass.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } < 0 {
        return Err(format!("capget: {}", std::io::Error::last_os_error()));
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | u64::from(hi) << 32;
    Ok(Sets {
        effective: join(data[0].effective, data[1].effective),
        permitted: join(data[0].permitted, data[1].permitted),
        inheritable: join(data[0].inheritable, data[1].inheritable),
    })
}

pub(super) fn set(sets: Sets) -> Result<(), String> {
    let header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let half = |shift: u32| Data {
        effective: (sets.effective >> shift) as u32,
        permitted: (sets.permitted >> shift) as u32,
        inheritable: (sets.inheritable >> shift) as u32,
    };
    let data = [half(0), half(32)];
    // SAFETY: capset reads a v3 header and two data structs, which is what we pass.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } < 0 {
        return Err(format!("capset: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}
