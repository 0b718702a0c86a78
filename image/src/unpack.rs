//! Layer unpacking: one OCI layer blob into a directory, in overlayfs form.
//!
//! Containment is by construction, not by checking names: every parent directory is resolved with
//! `openat2(RESOLVE_IN_ROOT)` against an fd on `dest` (symlinks in the layer are followed as if
//! `dest` were `/`, and `..` stops at it), or created by a walk that does the same one component at
//! a time; the entry itself is then made with `*at` calls on its final name that never follow it.
//! Whatever the tar says, nothing outside `dest` is created, written, chmod-ed, chown-ed or linked.
//!
//! Entry semantics follow containerd's applier (`archive/tar.go`): names are cleaned lexically
//! under `/`, an entry that resolves to the root itself is ignored, a later entry replaces an
//! earlier one at the same path unless both are directories (then the metadata merges), missing
//! parents are made 0755 and owned by us, hard links point at entries of the same layer.

use std::collections::{HashMap, VecDeque};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags};
use sha2::{Digest, Sha256};

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// From an OCI or Docker layer media type, including the non-distributable (foreign) ones.
    /// Parameters after `;` are ignored. An unknown type gives `None`.
    pub fn from_media_type(mt: &str) -> Option<Compression> {
        let mt = mt.split(';').next().unwrap_or_default().trim();
        let mt = mt.to_ascii_lowercase();
        match mt.as_str() {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// By magic bytes, for registries whose media types lie: `1f 8b` is gzip, `28 b5 2f fd`
    /// is zstd, anything else is taken as a plain tar.
    pub fn sniff(first_bytes: &[u8]) -> Compression {
        if first_bytes.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if first_bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// What one unpack did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Tar entries read (extension headers not counted).
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer blob {}: cannot open: {source}", path.display())]
    OpenBlob { path: PathBuf, source: io::Error },
    #[error("unpack destination {}: cannot open: {source}", path.display())]
    OpenDest { path: PathBuf, source: io::Error },
    #[error("layer blob {}: reading the tar stream {position} failed: {source}", path.display())]
    Stream {
        path: PathBuf,
        /// "at the start" or `after entry "<path>"`.
        position: String,
        source: io::Error,
    },
    #[error("layer entry {entry:?}: {step} failed: {source}")]
    Entry {
        entry: String,
        step: String,
        source: io::Error,
    },
    #[error("layer entry {entry:?}: {reason}")]
    Rejected { entry: String, reason: String },
}

/// Unpacks one layer blob (a compressed file on disk) into `dest` (an existing, empty directory)
/// in overlayfs form, and computes the sha256 of the *uncompressed* tar stream, the layer's
/// diff id, as it goes. Blocking; callers run it in `spawn_blocking`. Needs root (or
/// CAP_CHOWN, CAP_FOWNER, CAP_MKNOD and CAP_SYS_ADMIN for `trusted.*` xattrs).
pub fn unpack_layer(
    blob: &Path,
    compression: Compression,
    dest: &Path,
) -> Result<(UnpackStats, String), UnpackError> {
    let open_blob = |source| UnpackError::OpenBlob {
        path: blob.to_path_buf(),
        source,
    };
    let file = File::open(blob).map_err(open_blob)?;
    let root = nix::fcntl::open(
        dest,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(owned)
    .map_err(|e| UnpackError::OpenDest {
        path: dest.to_path_buf(),
        source: e.into(),
    })?;

    const BUF: usize = 128 * 1024;
    let decompressed: Box<dyn Read> = match compression {
        Compression::None => Box::new(BufReader::with_capacity(BUF, file)),
        // Multi-member: gzip writers may emit several members, and Go's reader accepts them.
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
            BUF, file,
        ))),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(file).map_err(open_blob)?),
    };
    let stream_err = |last: &Option<String>, source| UnpackError::Stream {
        path: blob.to_path_buf(),
        position: match last {
            Some(name) => format!("after entry {name:?}"),
            None => "at the start".to_string(),
        },
        source,
    };

    // The tar crate keeps PAX and GNU long-name headers in memory while it reads them; those are
    // the only parts of a layer not streamed.
    let mut archive = tar::Archive::new(HashingReader {
        inner: decompressed,
        hasher: Sha256::new(),
    });
    let mut unpacker = Unpacker {
        root,
        stats: UnpackStats::default(),
        dir_times: HashMap::new(),
    };
    let mut last: Option<String> = None;
    for entry in archive.entries().map_err(|e| stream_err(&last, e))? {
        let mut entry = entry.map_err(|e| stream_err(&last, e))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        unpacker.apply(&mut entry, &name)?;
        last = Some(name);
    }
    // The diff id covers the whole uncompressed stream, end-of-archive blocks and padding too.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| stream_err(&last, e))?;
    unpacker.apply_dir_times()?;
    let digest = rest.hasher.finalize();
    Ok((unpacker.stats, format!("sha256:{}", hex(&digest))))
}

/// Hashes everything read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Owner, mode, times and xattrs of one entry, from its header and PAX records.
struct Meta {
    uid: Uid,
    gid: Gid,
    mode: Mode,
    mtime: TimeSpec,
    xattrs: Vec<(CString, Vec<u8>)>,
}

struct Unpacker {
    root: OwnedFd,
    stats: UnpackStats,
    /// Directory times, applied after all entries: creating entries inside changes them.
    dir_times: HashMap<Vec<u8>, (TimeSpec, String)>,
}

impl Unpacker {
    fn apply<R: Read>(
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
                self.stats.bytes += copy_data(entry, &mut file, name)?;
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
    fn apply_dir_times(&self) -> Result<(), UnpackError> {
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
fn copy_data<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    file: &mut File,
    name: &str,
) -> Result<u64, UnpackError> {
    let fail = |step: &str, source| UnpackError::Entry {
        entry: name.to_string(),
        step: step.to_string(),
        source,
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fail("read file data", e)),
        };
        file.write_all(&buf[..n])
            .map_err(|e| fail("write file data", e))?;
        total += n as u64;
    }
}

/// Owner, then mode (chown clears setuid/setgid), then xattrs (chown clears
/// security.capability), on an open file or directory.
fn set_fd_meta(fd: BorrowedFd<'_>, meta: &Meta, name: &str) -> Result<(), UnpackError> {
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
fn set_at_meta(
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

fn chown_at(parent: BorrowedFd<'_>, base: &CStr, uid: Uid, gid: Gid) -> io::Result<()> {
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
enum Target<'a> {
    Fd(BorrowedFd<'a>),
    /// Named in a directory we hold; the name itself is not followed.
    At(BorrowedFd<'a>, &'a CStr),
}

fn set_xattr(target: Target<'_>, key: &CStr, value: &[u8]) -> io::Result<()> {
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
fn replace_existing(parent: BorrowedFd<'_>, base: &CStr, new_is_dir: bool) -> io::Result<()> {
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
fn remove_all_at(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
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

fn open_dir_nofollow(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(owned)
    .map_err(Into::into)
}

fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open and nothing else owns or closes it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "name contains a NUL byte"))
}

/// A tar entry name as path components, cleaned lexically under `/` as containerd does: empty
/// and `.` parts vanish, `..` drops the previous part and never climbs above the root.
fn clean_components(name: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    for part in name.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            part => out.push(part),
        }
    }
    out
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}

/// What an entry's final name means in an OCI layer.
#[derive(Debug, PartialEq, Eq)]
enum Name<'a> {
    Plain,
    /// `.wh..wh..opq`: the directory hides everything below it in lower layers.
    Opaque,
    /// `.wh.<name>`: `<name>` is deleted.
    Whiteout(&'a [u8]),
    /// Other `.wh..wh.` names (aufs hard-link bookkeeping): not part of the filesystem.
    AufsMeta,
    /// `.wh.`, `.wh..`, `.wh...`: a whiteout of nothing or of a directory's own links.
    BadWhiteout,
}

fn classify_name(base: &[u8]) -> Name<'_> {
    if base == b".wh..wh..opq" {
        Name::Opaque
    } else if base.starts_with(b".wh..wh.") {
        Name::AufsMeta
    } else if let Some(hidden) = base.strip_prefix(b".wh.") {
        match hidden {
            b"" | b"." | b".." => Name::BadWhiteout,
            _ => Name::Whiteout(hidden),
        }
    } else {
        Name::Plain
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

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_map_to_compression() {
        let cases = [
            (
                "application/vnd.oci.image.layer.v1.tar",
                Some(Compression::None),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Some(Compression::Gzip),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                Some(Compression::Zstd),
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Some(Compression::Gzip),
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
                Some(Compression::Zstd),
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar",
                Some(Compression::None),
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Some(Compression::Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Some(Compression::Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.zstd",
                Some(Compression::Zstd),
            ),
            (
                "Application/VND.OCI.image.layer.v1.tar+gzip; foo=bar",
                Some(Compression::Gzip),
            ),
            ("application/vnd.oci.image.config.v1+json", None),
            ("application/vnd.oci.image.layer.v1.tar+bzip2", None),
            ("", None),
        ];
        for (mt, want) in cases {
            assert_eq!(Compression::from_media_type(mt), want, "{mt}");
        }
    }

    #[test]
    fn sniff_recognises_magic_bytes() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0x24]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"etc/\0\0\0"), Compression::None);
        assert_eq!(Compression::sniff(&[0x1f]), Compression::None);
        assert_eq!(Compression::sniff(&[]), Compression::None);
    }

    #[test]
    fn names_are_cleaned_lexically_under_the_root() {
        let cases: [(&str, &[&str]); 9] = [
            ("etc/passwd", &["etc", "passwd"]),
            ("./usr/bin/", &["usr", "bin"]),
            ("/etc/shadow", &["etc", "shadow"]),
            ("../../etc/x", &["etc", "x"]),
            ("a/../../b", &["b"]),
            ("a//b/./c/..", &["a", "b"]),
            ("./", &[]),
            ("..", &[]),
            ("", &[]),
        ];
        for (name, want) in cases {
            let got: Vec<&[u8]> = clean_components(name.as_bytes());
            let want: Vec<&[u8]> = want.iter().map(|s| s.as_bytes()).collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn whiteout_names_are_classified() {
        assert_eq!(classify_name(b"passwd"), Name::Plain);
        assert_eq!(classify_name(b".whiteout"), Name::Plain);
        assert_eq!(classify_name(b".wh..wh..opq"), Name::Opaque);
        assert_eq!(classify_name(b".wh..wh.plnk"), Name::AufsMeta);
        assert_eq!(classify_name(b".wh..wh.aufs"), Name::AufsMeta);
        assert_eq!(classify_name(b".wh.gone"), Name::Whiteout(b"gone"));
        assert_eq!(classify_name(b".wh..hidden"), Name::Whiteout(b".hidden"));
        assert_eq!(classify_name(b".wh."), Name::BadWhiteout);
        assert_eq!(classify_name(b".wh.."), Name::BadWhiteout);
        assert_eq!(classify_name(b".wh..."), Name::BadWhiteout);
    }

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

    #[test]
    fn hashing_reader_hashes_everything_read() {
        let data = b"hello tar stream".repeat(1000);
        let mut reader = HashingReader {
            inner: data.as_slice(),
            hasher: Sha256::new(),
        };
        let mut small = [0u8; 7];
        let n = reader.read(&mut small).unwrap();
        io::copy(&mut reader, &mut io::sink()).unwrap();
        assert!(n > 0);
        assert_eq!(hex(&reader.hasher.finalize()), hex(&Sha256::digest(&data)));
    }

    #[test]
    fn hex_is_lowercase_and_padded() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
    }
}
