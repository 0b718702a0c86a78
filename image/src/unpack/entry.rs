//! One tar entry applied to the destination, with parents resolved (or created) inside it.

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use super::fsops::{
    chown_at, cstring, open_dir_nofollow, owned, remove_all_at, replace_existing, set_at_meta,
    set_fd_meta, set_xattr, Target,
};
use super::names::{classify_name, clean_components, join, Name};
use super::{UnpackError, UnpackLimits, UnpackStats};

/// Owner, mode, times and xattrs of one entry, from its header and PAX records.
pub(super) struct Meta {
    pub(super) uid: Uid,
    pub(super) gid: Gid,
    pub(super) mode: Mode,
    pub(super) mtime: TimeSpec,
    pub(super) xattrs: Vec<(CString, Vec<u8>)>,
}

pub(super) struct Unpacker {
    pub(super) root: OwnedFd,
    pub(super) stats: UnpackStats,
    /// Directory times, applied after all entries: creating entries inside changes them.
    pub(super) dir_times: HashMap<Vec<u8>, (TimeSpec, String)>,
    pub(super) limits: UnpackLimits,
    /// File content so far, holes included, against `limits.max_bytes`.
    pub(super) logical_bytes: u64,
    /// Bytes written since the free space was last looked at.
    pub(super) unchecked_bytes: u64,
}

/// How many bytes may be written between two looks at the free space.
const FREE_SPACE_CHECK_BYTES: u64 = 64 << 20;

impl Unpacker {
    pub(super) fn apply<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        self.stats.entries += 1;
        let raw_path = entry.path_bytes().into_owned();
        let comps = clean_components(&raw_path);
        let Some((&base, parent)) = comps.split_last() else {
            return Ok(()); // the layer root itself; its attributes belong to the snapshot
        };
        let fail = |step: &str| {
            let step = step.to_string();
            move |source: io::Error| UnpackError::Entry {
                entry: name.to_string(),
                step,
                source,
            }
        };
        let reject = |reason: &str| UnpackError::Rejected {
            entry: name.to_string(),
            reason: reason.to_string(),
        };

        // aufs keeps hard-link bookkeeping in top-level `.wh..wh.*` directories.
        if parent.iter().any(|c| c.starts_with(b".wh..wh.")) {
            return Ok(());
        }
        match classify_name(base) {
            Name::Plain => {}
            Name::AufsMeta => return Ok(()),
            Name::BadWhiteout => return Err(reject("whiteout names no file")),
            Name::Opaque => {
                let dir = self
                    .ensure_dir(parent)
                    .map_err(fail("create opaque directory"))?;
                return set_xattr(Target::Fd(dir.as_fd()), c"trusted.overlay.opaque", b"y")
                    .map_err(fail("set trusted.overlay.opaque"));
            }
            Name::Whiteout(hidden) => {
                let meta = read_meta(entry).map_err(fail("read header"))?;
                let dir = self
                    .ensure_dir(parent)
                    .map_err(fail("resolve parent directory"))?;
                let hidden = cstring(hidden).map_err(fail("read whiteout name"))?;
                remove_all_at(dir.as_fd(), &hidden).map_err(fail("remove whited-out entry"))?;
                // overlayfs: a 0/0 character device hides the lower layers' entry of that name.
                nix::sys::stat::mknodat(
                    Some(dir.as_raw_fd()),
                    hidden.as_c_str(),
                    SFlag::S_IFCHR,
                    Mode::empty(),
                    0,
                )
                .map_err(|e| fail("create whiteout device")(e.into()))?;
                // Owner and times from the header, so a layer always unpacks to the same tree.
                chown_at(dir.as_fd(), &hidden, meta.uid, meta.gid)
                    .map_err(fail("set whiteout owner"))?;
                return nix::sys::stat::utimensat(
                    Some(dir.as_raw_fd()),
                    hidden.as_c_str(),
                    &meta.mtime,
                    &meta.mtime,
                    UtimensatFlags::NoFollowSymlink,
                )
                .map_err(|e| fail("set whiteout times")(e.into()));
            }
        }

        let meta = read_meta(entry).map_err(fail("read header"))?;
        let parent_fd = self
            .ensure_dir(parent)
            .map_err(fail("resolve parent directory"))?;
        let parent_fd = parent_fd.as_fd();
        let base = cstring(base).map_err(fail("read name"))?;
        // Old tars mark directories as regular files ending in '/'.
        let is_dir =
            kind.is_dir() || (entry.header().as_bytes()[156] == 0 && raw_path.ends_with(b"/"));

        if kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| reject("hard link without a target"))?;
            let target_comps = clean_components(&target);
            // GNU tar stores a file given twice as a hard link to itself: it is already there.
            if target_comps == comps {
                return Ok(());
            }
            let Some((&target_base, target_parent)) = target_comps.split_last() else {
                return Err(reject("hard link to the layer root"));
            };
            let target_base = cstring(target_base).map_err(fail("read hard link target"))?;
            let target_dir = self
                .open_in_root(&join(target_parent), OFlag::O_PATH | OFlag::O_DIRECTORY)
                .map_err(fail("resolve hard link target"))?;
            replace_existing(parent_fd, &base, false).map_err(fail("remove existing entry"))?;
            // No AT_SYMLINK_FOLLOW: a symlink target is linked itself, never what it points to.
            // The inode keeps the metadata of its own entry.
            return nix::unistd::linkat(
                Some(target_dir.as_raw_fd()),
                target_base.as_c_str(),
                Some(parent_fd.as_raw_fd()),
                base.as_c_str(),
                AtFlags::empty(),
            )
            .map_err(|e| fail("create hard link")(e.into()));
        }

        replace_existing(parent_fd, &base, is_dir).map_err(fail("remove existing entry"))?;
        let path_key = join(&comps);
        match kind {
            _ if is_dir => {
                match nix::sys::stat::mkdirat(
                    Some(parent_fd.as_raw_fd()),
                    base.as_c_str(),
                    Mode::S_IRWXU,
                ) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(fail("create directory")(e.into())),
                }
                let dir = open_dir_nofollow(parent_fd, &base).map_err(fail("open directory"))?;
                set_fd_meta(dir.as_fd(), &meta, name)?;
                self.dir_times
                    .insert(path_key, (meta.mtime, name.to_string()));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let fd = nix::fcntl::openat(
                    Some(parent_fd.as_raw_fd()),
                    base.as_c_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::S_IRUSR | Mode::S_IWUSR,
                )
                .map(owned)
                .map_err(|e| fail("create file")(e.into()))?;
                let mut file = File::from(fd);
                self.stats.bytes += self.copy_data(entry, &mut file, name)?;
                set_fd_meta(file.as_fd(), &meta, name)?;
                nix::sys::stat::futimens(file.as_raw_fd(), &meta.mtime, &meta.mtime)
                    .map_err(|e| fail("set times")(e.into()))?;
            }
            tar::EntryType::Symlink => {
                // Stored verbatim: the target is only ever interpreted by a container's lookups.
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| reject("symlink without a target"))?;
                let target = cstring(&target).map_err(fail("read symlink target"))?;
                nix::unistd::symlinkat(
                    target.as_c_str(),
                    Some(parent_fd.as_raw_fd()),
                    base.as_c_str(),
                )
                .map_err(|e| fail("create symlink")(e.into()))?;
                set_at_meta(parent_fd, &base, &meta, true, name)?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let header = entry.header();
                let (sflag, dev) = match kind {
                    tar::EntryType::Fifo => (SFlag::S_IFIFO, 0),
                    _ => {
                        let major = header.device_major().map_err(fail("read device number"))?;
                        let minor = header.device_minor().map_err(fail("read device number"))?;
                        let dev = nix::sys::stat::makedev(
                            u64::from(major.unwrap_or(0)),
                            u64::from(minor.unwrap_or(0)),
                        );
                        let sflag = if kind == tar::EntryType::Char {
                            SFlag::S_IFCHR
                        } else {
                            SFlag::S_IFBLK
                        };
                        (sflag, dev)
                    }
                };
                nix::sys::stat::mknodat(
                    Some(parent_fd.as_raw_fd()),
                    base.as_c_str(),
                    sflag,
                    Mode::empty(),
                    dev,
                )
                .map_err(|e| fail("create device node")(e.into()))?;
                set_at_meta(parent_fd, &base, &meta, false, name)?;
            }
            other => {
                return Err(reject(&format!(
                    "unsupported entry type {:?}",
                    other.as_byte() as char
                )));
            }
        }
        Ok(())
    }

    /// Applies the recorded directory times, skipping directories a later entry replaced.
    pub(super) fn apply_dir_times(&self) -> Result<(), UnpackError> {
        for (path, (mtime, name)) in &self.dir_times {
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
            let dir = match self.open_in_root(path, flags) {
                Ok(dir) => dir,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
                    ) =>
                {
                    continue
                }
                Err(source) => {
                    return Err(UnpackError::Entry {
                        entry: name.clone(),
                        step: "reopen directory to set times".to_string(),
                        source,
                    })
                }
            };
            nix::sys::stat::futimens(dir.as_raw_fd(), mtime, mtime).map_err(|e| {
                UnpackError::Entry {
                    entry: name.clone(),
                    step: "set times".to_string(),
                    source: e.into(),
                }
            })?;
        }
        Ok(())
    }

    /// Opens `path` (cleaned components joined by '/', empty for the root) with `dest` as the
    /// root of resolution: `..` stops at it, absolute symlinks start from it.
    fn open_in_root(&self, path: &[u8], flags: OFlag) -> io::Result<OwnedFd> {
        let path = if path.is_empty() {
            b".".as_slice()
        } else {
            path
        };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        // EAGAIN: a concurrent rename or mount raced a ".." step; the kernel asks for a retry.
        let mut attempts = 0;
        loop {
            match nix::fcntl::openat2(self.root.as_raw_fd(), path, how) {
                Ok(fd) => return Ok(owned(fd)),
                Err(Errno::EAGAIN) if attempts < 16 => attempts += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Opens the directory at `comps`, creating what is missing (0755, owned by us).
    fn ensure_dir(&self, comps: &[&[u8]]) -> io::Result<OwnedFd> {
        match self.open_in_root(&join(comps), OFlag::O_RDONLY | OFlag::O_DIRECTORY) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => self.create_dirs(comps),
            other => other,
        }
    }

    /// The slow path of `ensure_dir`: walks one component at a time from the root, following
    /// symlinks itself with the same rules as RESOLVE_IN_ROOT (absolute targets restart at the
    /// root, `..` never leaves it), and makes each missing directory.
    fn create_dirs(&self, comps: &[&[u8]]) -> io::Result<OwnedFd> {
        const MAX_SYMLINKS: u32 = 40; // the kernel's MAXSYMLINKS
        let mut todo: VecDeque<Vec<u8>> = comps.iter().map(|c| c.to_vec()).collect();
        let mut cur = self.open_in_root(b"", OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        let mut depth = 0usize;
        let mut symlinks = 0;
        while let Some(comp) = todo.pop_front() {
            match comp.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    // `cur` is a real directory below the root, so its ".." is inside too.
                    if depth > 0 {
                        cur = open_dir_nofollow(cur.as_fd(), c"..")?;
                        depth -= 1;
                    }
                    continue;
                }
                _ => {}
            }
            let name = cstring(&comp)?;
            let stat = nix::sys::stat::fstatat(
                Some(cur.as_raw_fd()),
                name.as_c_str(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            );
            match stat.map(|st| SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())) {
                Ok(SFlag::S_IFDIR) => {}
                Ok(SFlag::S_IFLNK) => {
                    symlinks += 1;
                    if symlinks > MAX_SYMLINKS {
                        return Err(Errno::ELOOP.into());
                    }
                    let target = nix::fcntl::readlinkat(Some(cur.as_raw_fd()), name.as_c_str())?;
                    let target = target.as_bytes();
                    if target.starts_with(b"/") {
                        cur = self.open_in_root(b"", OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
                        depth = 0;
                    }
                    for part in target.split(|b| *b == b'/').rev() {
                        todo.push_front(part.to_vec());
                    }
                    continue;
                }
                Ok(_) => return Err(Errno::ENOTDIR.into()),
                Err(Errno::ENOENT) => {
                    nix::sys::stat::mkdirat(Some(cur.as_raw_fd()), name.as_c_str(), Mode::S_IRWXU)?;
                    let dir = open_dir_nofollow(cur.as_fd(), &name)?;
                    // Explicitly, so the result does not depend on the process umask.
                    nix::sys::stat::fchmod(dir.as_raw_fd(), Mode::from_bits_truncate(0o755))?;
                    cur = dir;
                    depth += 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            cur = open_dir_nofollow(cur.as_fd(), &name)?;
            depth += 1;
        }
        Ok(cur)
    }
}

/// Owner from the header (the tar crate has already applied PAX `uid`/`gid`).
fn owner(header: &tar::Header) -> io::Result<(Uid, Gid)> {
    let id = |v: u64| {
        u32::try_from(v)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("id {v} out of range")))
    };
    Ok((
        Uid::from_raw(id(header.uid()?)?),
        Gid::from_raw(id(header.gid()?)?),
    ))
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Meta> {
    let header = entry.header();
    let (uid, gid) = owner(header)?;
    let mode = Mode::from_bits_truncate(header.mode()? & 0o7777);
    let mut mtime = (i64::try_from(header.mtime()?).unwrap_or(i64::MAX), 0);
    let mut xattrs = Vec::new();
    if let Some(records) = entry.pax_extensions()? {
        for record in records {
            let record = record?;
            let (key, value) = (record.key_bytes(), record.value_bytes());
            if key == b"mtime" {
                mtime = parse_pax_time(value)
                    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad PAX mtime"))?;
            } else if let Some(xattr) = key.strip_prefix(b"SCHILY.xattr.") {
                // overlayfs metadata (opaque, redirect, metacopy, origin) is ours to write, from
                // whiteouts; a layer carrying its own could redirect lookups between layers.
                if !xattr.starts_with(b"trusted.overlay.") {
                    xattrs.push((cstring(xattr)?, value.to_vec()));
                }
            }
        }
    }
    Ok(Meta {
        uid,
        gid,
        mode,
        mtime: TimeSpec::new(mtime.0, mtime.1),
        xattrs,
    })
}

/// Copies the entry's data into `file`, streaming. Returns the bytes written.
impl Unpacker {
    /// Copies a regular file's content, leaving runs of zeros (a sparse entry's holes among
    /// them) as holes, within the layer's byte cap and the disk's free-space floor.
    fn copy_data<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        file: &mut File,
        name: &str,
    ) -> Result<u64, UnpackError> {
        let fail = |step: &str, source| UnpackError::Entry {
            entry: name.to_string(),
            step: step.to_string(),
            source,
        };
        // The entry's size (a sparse file's real size) is known before a byte is read.
        let size = entry.size();
        let cap = self.limits.max_bytes;
        if size > cap.saturating_sub(self.logical_bytes) {
            return Err(UnpackError::Rejected {
                entry: name.to_string(),
                reason: format!(
                    "{size} bytes would take the layer past its {cap} bytes (max_layer_bytes)"
                ),
            });
        }
        self.logical_bytes += size;
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        let mut hole = false;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(fail("read file data", e)),
            };
            total += n as u64;
            if total > size {
                return Err(UnpackError::Rejected {
                    entry: name.to_string(),
                    reason: format!("more content than its {size} bytes"),
                });
            }
            if buf[..n].iter().all(|&b| b == 0) {
                file.seek(io::SeekFrom::Current(n as i64))
                    .map_err(|e| fail("skip a hole", e))?;
                hole = true;
                continue;
            }
            file.write_all(&buf[..n])
                .map_err(|e| fail("write file data", e))?;
            self.unchecked_bytes += n as u64;
            if self.unchecked_bytes >= FREE_SPACE_CHECK_BYTES {
                self.check_free_space(name)?;
            }
        }
        if hole {
            // A trailing hole is only there once the length says so.
            file.set_len(total).map_err(|e| fail("set length", e))?;
        }
        Ok(total)
    }

    /// Fails once the filesystem being unpacked into has less than `min_free_bytes` left.
    pub(super) fn check_free_space(&mut self, name: &str) -> Result<(), UnpackError> {
        self.unchecked_bytes = 0;
        let fs = nix::sys::statvfs::fstatvfs(&self.root).map_err(|e| UnpackError::FreeSpace {
            path: PathBuf::from(name),
            source: e.into(),
        })?;
        let free = fs.blocks_available() as u64 * fs.fragment_size() as u64;
        let floor = self.limits.min_free_bytes;
        if free < floor {
            return Err(UnpackError::Rejected {
                entry: name.to_string(),
                reason: format!(
                    "the snapshot filesystem has {free} bytes free, under its floor of {floor} (min_free_bytes)"
                ),
            });
        }
        Ok(())
    }
}

/// A PAX time (`"1700000000"`, `"1700000000.5"`, `"-1.25"`) as seconds and nanoseconds, the
/// nanoseconds in 0..1e9 as timespec wants them. Digits past nanoseconds are dropped.
fn parse_pax_time(value: &[u8]) -> Option<(i64, i64)> {
    let text = std::str::from_utf8(value).ok()?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    if secs.is_empty()
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut nanos = 0i64;
    for i in 0..9 {
        nanos = nanos * 10 + frac.as_bytes().get(i).map_or(0, |d| i64::from(d - b'0'));
    }
    if !negative {
        Some((secs, nanos))
    } else if nanos == 0 {
        Some((-secs, 0))
    } else {
        Some((-secs - 1, 1_000_000_000 - nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_parse_with_fractions_and_signs() {
        assert_eq!(parse_pax_time(b"1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(
            parse_pax_time(b"1700000000.5"),
            Some((1_700_000_000, 500_000_000))
        );
        assert_eq!(parse_pax_time(b"1.1234567891"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time(b"-3"), Some((-3, 0)));
        assert_eq!(parse_pax_time(b""), None);
        assert_eq!(parse_pax_time(b".5"), None);
        assert_eq!(parse_pax_time(b"12a"), None);
        assert_eq!(parse_pax_time(b"1.-5"), None);
        assert_eq!(parse_pax_time(b"99999999999999999999999"), None);
    }
}
