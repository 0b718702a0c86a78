//! Idmapped mounts (mount_setattr with `MOUNT_ATTR_IDMAP`) for pods with their own user
//! namespace: the image's layers and the volumes, owned by host root, show through such a
//! mount as owned by the pod's root, while what the pod writes keeps the mapped ids on disk.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::spec::UserNamespace;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
}

/// A detached copy of the mount at `source` (with its submounts when `recursive`, as a
/// recursive bind), idmapped through the user namespace `userns`. Nothing is mounted until
/// [`attach`].
pub fn idmapped_clone(
    source: &Path,
    userns: BorrowedFd<'_>,
    recursive: bool,
) -> io::Result<OwnedFd> {
    let tree = clone_tree(source, recursive)?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let flags = libc::AT_EMPTY_PATH as libc::c_uint | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: mount_setattr reads `attr` (of the size given) and an empty NUL-terminated path.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tree)
}

/// A detached copy of the mount at `source`, as a bind (recursive or not) would make it.
pub fn clone_tree(source: &Path, recursive: bool) -> io::Result<OwnedFd> {
    let path = c_path(source)?;
    open_tree(
        libc::AT_FDCWD,
        &path,
        if recursive { AT_RECURSIVE } else { 0 },
    )
}

/// A detached recursive copy of the mount tree at the open path `at` (an `O_PATH` descriptor,
/// say, resolved where a path string could not be trusted).
pub fn clone_tree_at(at: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    open_tree(
        at.as_raw_fd(),
        c"",
        AT_RECURSIVE | libc::AT_EMPTY_PATH as libc::c_uint,
    )
}

/// open_tree(2) with `OPEN_TREE_CLONE | O_CLOEXEC` and `flags`.
fn open_tree(
    dirfd: libc::c_int,
    path: &std::ffi::CStr,
    flags: libc::c_uint,
) -> io::Result<OwnedFd> {
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | flags;
    // SAFETY: open_tree reads a NUL-terminated path (relative to `dirfd`) and returns a new
    // descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, dirfd, path.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Mounts a detached tree from [`idmapped_clone`] or [`clone_tree`] on `target` (which must
/// exist, a directory or a file as the tree's root is).
pub fn attach(tree: BorrowedFd<'_>, target: &Path) -> io::Result<()> {
    let to = c_path(target)?;
    // SAFETY: move_mount reads two NUL-terminated paths; the descriptors are valid.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes `userns`'s ranges into the user namespace of process `pid`, from a process of the
/// parent namespace with CAP_SETUID and CAP_SETGID there (setgroups stays allowed).
pub fn write_maps(pid: i32, userns: &UserNamespace) -> io::Result<()> {
    let write = |file: &str, line: String| {
        std::fs::write(format!("/proc/{pid}/{file}"), line.as_bytes())
            .map_err(|e| io::Error::new(e.kind(), format!("write {file} of {pid}: {e}")))
    };
    write("uid_map", userns.uids.map_line())?;
    write("gid_map", userns.gids.map_line())
}

/// A user namespace with `userns`'s mapping that lives as long as the returned value: a child
/// that unshared one and waits. For probes and tests; a pod's is made by its monitor.
pub struct ScratchUserNamespace {
    child: libc::pid_t,
    ns: File,
}

impl ScratchUserNamespace {
    pub fn new(userns: &UserNamespace) -> io::Result<ScratchUserNamespace> {
        let (ready_read, ready_write) = pipe()?;
        // SAFETY: the child calls only async-signal-safe functions (unshare, write, pause,
        // _exit), so forking a threaded process is fine.
        let child = unsafe { libc::fork() };
        if child < 0 {
            return Err(io::Error::last_os_error());
        }
        if child == 0 {
            // SAFETY: see above; the byte is on this stack. Ended by SIGKILL in `drop`.
            unsafe {
                let ok: u8 = (libc::unshare(libc::CLONE_NEWUSER) == 0) as u8;
                libc::write(ready_write.as_raw_fd(), &ok as *const u8 as *const _, 1);
                loop {
                    libc::pause();
                }
            }
        }
        drop(ready_write);
        let mut scratch = ScratchUserNamespace {
            child,
            ns: File::open("/dev/null")?,
        };
        let mut ok = [0u8; 1];
        let n = nix::unistd::read(ready_read.as_raw_fd(), &mut ok).map_err(io::Error::from)?;
        if n != 1 || ok[0] != 1 {
            return Err(io::Error::other(
                "unshare(CLONE_NEWUSER) failed in the child",
            ));
        }
        write_maps(child, userns)?;
        scratch.ns = File::open(format!("/proc/{child}/ns/user"))?;
        Ok(scratch)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.ns.as_fd()
    }
}

impl Drop for ScratchUserNamespace {
    fn drop(&mut self) {
        let child = nix::unistd::Pid::from_raw(self.child);
        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(child, None);
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// Whether `dir`'s filesystem takes idmapped mounts (the check critest makes before it asks
/// for a pod user namespace): a scratch namespace and one idmapped clone of `dir`.
pub fn supported_at(dir: &Path) -> io::Result<()> {
    let range = crate::spec::IdMapping {
        container_id: 0,
        host_id: 65536,
        length: 65536,
    };
    let scratch = ScratchUserNamespace::new(&UserNamespace {
        uids: range,
        gids: range,
    })?;
    idmapped_clone(dir, scratch.fd(), false).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn an_idmapped_clone_shows_root_files_as_the_mapped_root() {
        if !nix::unistd::geteuid().is_root() {
            panic!("this test needs root (idmapped mounts)");
        }
        let dir = std::env::temp_dir().join(format!("berth-idmap-{}", std::process::id()));
        let source = dir.join("source");
        let target = dir.join("target");
        std::fs::create_dir_all(&source).unwrap();
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(source.join("file"), b"x").unwrap();
        let range = crate::spec::IdMapping {
            container_id: 0,
            host_id: 200000,
            length: 65536,
        };
        let scratch = ScratchUserNamespace::new(&UserNamespace {
            uids: range,
            gids: range,
        })
        .unwrap();
        let tree = idmapped_clone(&source, scratch.fd(), true).unwrap();
        attach(tree.as_fd(), &target).unwrap();
        let owner = std::fs::metadata(target.join("file")).map(|m| (m.uid(), m.gid()));
        let unmounted = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(owner.unwrap(), (200000, 200000));
        unmounted.unwrap();
        supported_at(Path::new("/tmp")).unwrap();
    }
}
