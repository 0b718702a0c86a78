//! `*at` syscall helpers: metadata, xattrs, removal and opening, on names in a directory fd,
//! never following the final name.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FchmodatFlags, Mode, UtimensatFlags};
use nix::unistd::{Gid, Uid, UnlinkatFlags};

use super::entry::Meta;
use super::UnpackError;

/// Owner, then mode (chown clears setuid/setgid), then xattrs (chown clears
/// security.capability), on an open file or directory.
pub(super) fn set_fd_meta(fd: BorrowedFd<'_>, meta: &Meta, name: &str) -> Result<(), UnpackError> {
    let fail = |step: &str, source: io::Error| UnpackError::Entry {
        entry: name.to_string(),
        step: step.to_string(),
        source,
    };
    nix::unistd::fchown(fd.as_raw_fd(), Some(meta.uid), Some(meta.gid))
        .map_err(|e| fail("set owner", e.into()))?;
    nix::sys::stat::fchmod(fd.as_raw_fd(), meta.mode).map_err(|e| fail("set mode", e.into()))?;
    set_xattrs(Target::Fd(fd), &meta.xattrs, false, name)
}

/// The same for an entry that cannot be opened (symlink, FIFO, device), by name in its parent.
pub(super) fn set_at_meta(
    parent: BorrowedFd<'_>,
    base: &CStr,
    meta: &Meta,
    is_symlink: bool,
    name: &str,
) -> Result<(), UnpackError> {
    let fail = |step: &str, source: io::Error| UnpackError::Entry {
        entry: name.to_string(),
        step: step.to_string(),
        source,
    };
    chown_at(parent, base, meta.uid, meta.gid).map_err(|e| fail("set owner", e))?;
    if !is_symlink {
        // glibc does this without following (O_PATH + /proc, or fchmodat2).
        nix::sys::stat::fchmodat(
            Some(parent.as_raw_fd()),
            base,
            meta.mode,
            FchmodatFlags::NoFollowSymlink,
        )
        .map_err(|e| fail("set mode", e.into()))?;
    }
    set_xattrs(Target::At(parent, base), &meta.xattrs, is_symlink, name)?;
    nix::sys::stat::utimensat(
        Some(parent.as_raw_fd()),
        base,
        &meta.mtime,
        &meta.mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| fail("set times", e.into()))
}

pub(super) fn chown_at(parent: BorrowedFd<'_>, base: &CStr, uid: Uid, gid: Gid) -> io::Result<()> {
    nix::unistd::fchownat(
        Some(parent.as_raw_fd()),
        base,
        Some(uid),
        Some(gid),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(io::Error::from)
}

fn set_xattrs(
    target: Target<'_>,
    xattrs: &[(CString, Vec<u8>)],
    is_symlink: bool,
    name: &str,
) -> Result<(), UnpackError> {
    for (key, value) in xattrs {
        match set_xattr(target, key, value) {
            Ok(()) => {}
            // As containerd: a filesystem without xattrs (or user.* on a symlink) loses them.
            Err(e)
                if e.raw_os_error() == Some(libc::ENOTSUP)
                    || (is_symlink && e.raw_os_error() == Some(libc::EPERM)) =>
            {
                tracing::debug!(entry = name, xattr = ?key, error = %e, "xattr not supported here; skipped");
            }
            Err(source) => {
                return Err(UnpackError::Entry {
                    entry: name.to_string(),
                    step: format!("set xattr {}", key.to_string_lossy()),
                    source,
                })
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
pub(super) enum Target<'a> {
    Fd(BorrowedFd<'a>),
    /// Named in a directory we hold; the name itself is not followed.
    At(BorrowedFd<'a>, &'a CStr),
}

pub(super) fn set_xattr(target: Target<'_>, key: &CStr, value: &[u8]) -> io::Result<()> {
    let rc = match target {
        // SAFETY: `key` is NUL-terminated, `value` is a live slice of the length passed, and the
        // kernel only reads both during the call.
        Target::Fd(fd) => unsafe {
            libc::fsetxattr(
                fd.as_raw_fd(),
                key.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        },
        Target::At(dir, base) => {
            // There is no setxattrat before Linux 6.13: name the entry through the directory's
            // fd link, which lands exactly on that directory; lsetxattr does not follow `base`.
            let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
            path.extend_from_slice(base.to_bytes());
            let path = cstring(&path)?;
            // SAFETY: `path` and `key` are NUL-terminated, `value` is a live slice of the length
            // passed, and the kernel only reads them during the call.
            unsafe {
                libc::lsetxattr(
                    path.as_ptr(),
                    key.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            }
        }
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Clears the way for a new entry at `base`: anything there goes, except a directory when the
/// new entry is a directory too (then the two merge).
pub(super) fn replace_existing(
    parent: BorrowedFd<'_>,
    base: &CStr,
    new_is_dir: bool,
) -> io::Result<()> {
    match nix::sys::stat::fstatat(Some(parent.as_raw_fd()), base, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if new_is_dir && st.st_mode & libc::S_IFMT == libc::S_IFDIR => Ok(()),
        Ok(_) => remove_all_at(parent, base),
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes `name` in `parent` and, if it is a directory, everything below it, never following
/// a symlink. Iterative with names on a stack (not fds), so a deep tree cannot exhaust the
/// stack or the fd table.
pub(super) fn remove_all_at(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let bytes = name.to_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a single path component",
        ));
    }
    match nix::unistd::unlinkat(Some(parent.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::EISDIR) => {}
        Err(e) => return Err(e.into()),
    }
    let mut stack: Vec<CString> = vec![name.to_owned()];
    let mut cur = open_dir_nofollow(parent, name)?;
    loop {
        let mut subdir = None;
        {
            let mut dir = nix::dir::Dir::openat(
                Some(cur.as_raw_fd()),
                c".",
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            for child in dir.iter() {
                let child = child?;
                let child = child.file_name();
                if child == c"." || child == c".." {
                    continue;
                }
                match nix::unistd::unlinkat(
                    Some(cur.as_raw_fd()),
                    child,
                    UnlinkatFlags::NoRemoveDir,
                ) {
                    Ok(()) | Err(Errno::ENOENT) => {}
                    Err(Errno::EISDIR) => {
                        subdir = Some(child.to_owned());
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if let Some(child) = subdir {
            cur = open_dir_nofollow(cur.as_fd(), &child)?;
            stack.push(child);
            continue;
        }
        // `cur` is empty now: remove it from its parent and carry on there.
        let done = stack.pop().unwrap_or_default();
        if stack.is_empty() {
            drop(cur);
            return nix::unistd::unlinkat(Some(parent.as_raw_fd()), name, UnlinkatFlags::RemoveDir)
                .map_err(Into::into);
        }
        let up = open_dir_nofollow(cur.as_fd(), c"..")?;
        nix::unistd::unlinkat(
            Some(up.as_raw_fd()),
            done.as_c_str(),
            UnlinkatFlags::RemoveDir,
        )?;
        cur = up;
    }
}

pub(super) fn open_dir_nofollow(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(owned)
    .map_err(Into::into)
}

pub(super) fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open and nothing else owns or closes it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

pub(super) fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "name contains a NUL byte"))
}
