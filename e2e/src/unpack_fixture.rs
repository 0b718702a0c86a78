//! Shared by the unpacker suites (`e2e/tests/unpack*.rs`): tars built byte for byte (so hostile
//! names can be written), a scratch area with a sentinel sibling that must stay untouched, and
//! trees read back without following symlinks.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use berth_image::unpack::{unpack_layer, Compression, UnpackError, UnpackLimits, UnpackStats};
use sha2::{Digest, Sha256};

use crate::TempDir;

// ---------- tar building ----------

#[derive(Clone)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

/// One tar entry. Names and link targets go into the header byte for byte, so hostile ones
/// (`../x`, `/etc/x`) that `Builder::append_data` refuses can be written.
#[derive(Clone)]
pub struct Ent {
    pub name: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub pax: Vec<(String, Vec<u8>)>,
}

pub const MTIME: u64 = 1_704_067_200; // 2024-01-01

pub fn ent(name: &str, kind: Kind, mode: u32) -> Ent {
    Ent {
        name: name.as_bytes().to_vec(),
        kind,
        mode,
        uid: 0,
        gid: 0,
        mtime: MTIME,
        pax: Vec::new(),
    }
}
pub fn dir(name: &str) -> Ent {
    ent(name, Kind::Dir, 0o755)
}
pub fn file(name: &str, data: &[u8]) -> Ent {
    ent(name, Kind::File(data.to_vec()), 0o644)
}
pub fn symlink(name: &str, target: &str) -> Ent {
    ent(name, Kind::Symlink(target.as_bytes().to_vec()), 0o777)
}
pub fn hardlink(name: &str, target: &str) -> Ent {
    ent(name, Kind::Hardlink(target.as_bytes().to_vec()), 0o644)
}

impl Ent {
    pub fn mode(mut self, mode: u32) -> Ent {
        self.mode = mode;
        self
    }
    pub fn owner(mut self, uid: u64, gid: u64) -> Ent {
        self.uid = uid;
        self.gid = gid;
        self
    }
    pub fn mtime(mut self, mtime: u64) -> Ent {
        self.mtime = mtime;
        self
    }
    pub fn pax(mut self, key: &str, value: &[u8]) -> Ent {
        self.pax.push((key.to_string(), value.to_vec()));
        self
    }
}

/// `"<len> <key>=<value>\n"`, where `<len>` counts the whole record including itself.
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut out = format!("{len} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

pub fn set_raw(field: &mut [u8], value: &[u8]) {
    assert!(
        value.len() <= field.len(),
        "test name too long for a raw header"
    );
    field.fill(0);
    field[..value.len()].copy_from_slice(value);
}

pub fn tar_of(entries: &[Ent]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for e in entries {
        if !e.pax.is_empty() {
            let data: Vec<u8> = e.pax.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
            let mut h = tar::Header::new_gnu();
            set_raw(&mut h.as_old_mut().name, b"PaxHeaders/entry");
            h.set_entry_type(tar::EntryType::XHeader);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            builder.append(&h, data.as_slice()).unwrap();
        }
        let mut h = tar::Header::new_gnu();
        set_raw(&mut h.as_old_mut().name, &e.name);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        h.set_size(0);
        let mut data: &[u8] = &[];
        match &e.kind {
            Kind::Dir => h.set_entry_type(tar::EntryType::Directory),
            Kind::File(bytes) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(bytes.len() as u64);
                data = bytes;
            }
            Kind::Symlink(target) | Kind::Hardlink(target) => {
                let link = matches!(e.kind, Kind::Hardlink(_));
                h.set_entry_type(if link {
                    tar::EntryType::Link
                } else {
                    tar::EntryType::Symlink
                });
                set_raw(&mut h.as_old_mut().linkname, target);
            }
            Kind::Char(major, minor) | Kind::Block(major, minor) => {
                let char = matches!(e.kind, Kind::Char(..));
                h.set_entry_type(if char {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
            }
            Kind::Fifo => h.set_entry_type(tar::EntryType::Fifo),
        }
        h.set_cksum();
        builder.append(&h, data).unwrap();
    }
    builder.into_inner().unwrap()
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

pub fn diff_id(tar: &[u8]) -> String {
    let digest = Sha256::digest(tar);
    format!(
        "sha256:{}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

// ---------- the scratch area ----------

/// The test's temp root with `dest/`, `sentinel/` and `blobs/`. Host paths a broken unpacker
/// might have written (`probe`) are checked absent and removed on drop too.
pub struct Scratch {
    pub dir: TempDir,
    pub sentinel_before: Tree,
    pub probes: Vec<PathBuf>,
}

impl Default for Scratch {
    fn default() -> Scratch {
        Scratch::new()
    }
}

impl Scratch {
    pub fn new() -> Scratch {
        let dir = TempDir::new("berth-unpack");
        let root = dir.path();
        for d in ["dest", "blobs", "sentinel", "sentinel/sub"] {
            fs::create_dir(root.join(d)).unwrap();
        }
        fs::write(root.join("sentinel/keep"), b"sentinel\n").unwrap();
        let old = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        for p in ["sentinel/keep", "sentinel/sub", "sentinel"] {
            fs::File::open(root.join(p))
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        let sentinel_before = tree(&root.join("sentinel"), true);
        Scratch {
            dir,
            sentinel_before,
            probes: Vec::new(),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn dest(&self) -> PathBuf {
        self.root().join("dest")
    }

    /// Another empty unpack target beside `dest`.
    pub fn extra_dest(&self, name: &str) -> PathBuf {
        let path = self.root().join(name);
        fs::create_dir(&path).unwrap();
        path
    }

    /// A unique name for a host path that must never appear.
    pub fn probe(&mut self, host_dir: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "berth-unpack-probe-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.probes.push(Path::new(host_dir).join(&name));
        name
    }

    pub fn blob(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.root().join("blobs").join(name);
        fs::write(&path, bytes).unwrap();
        path
    }

    pub fn unpack_into(
        &self,
        dest: &Path,
        entries: &[Ent],
    ) -> Result<(UnpackStats, String), UnpackError> {
        let tar = tar_of(entries);
        let name = format!("{}.tar", dest.file_name().unwrap().to_string_lossy());
        unpack_layer(
            &self.blob(&name, &tar),
            Compression::None,
            dest,
            UnpackLimits::default(),
        )
    }

    pub fn unpack(&self, entries: &[Ent]) -> Result<(UnpackStats, String), UnpackError> {
        self.unpack_into(&self.dest(), entries)
    }

    /// Nothing outside the unpack targets changed: the sentinel is byte- and
    /// metadata-identical, the temp root holds only what the test made, no probe exists.
    pub fn assert_contained(&self, extra_dests: &[&str]) {
        assert_eq!(
            tree(&self.root().join("sentinel"), true),
            self.sentinel_before,
            "sentinel changed"
        );
        let mut names: Vec<String> = fs::read_dir(self.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut want: Vec<String> = ["blobs", "dest", "sentinel"]
            .iter()
            .chain(extra_dests)
            .map(|s| s.to_string())
            .collect();
        want.sort();
        assert_eq!(names, want, "unexpected entries in the temp root");
        for probe in &self.probes {
            assert!(
                fs::symlink_metadata(probe).is_err(),
                "{} was created outside dest",
                probe.display()
            );
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for probe in &self.probes {
            if let Ok(meta) = fs::symlink_metadata(probe) {
                let _ = if meta.is_dir() {
                    fs::remove_dir_all(probe)
                } else {
                    fs::remove_file(probe)
                };
            }
        }
    }
}

// ---------- looking at trees ----------

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub nlink: u64,
    pub rdev: u64,
    pub content: Option<String>,
    pub link: Option<PathBuf>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

pub type Tree = BTreeMap<PathBuf, Node>;

/// Every node under `root` (and `root` itself if asked), never following symlinks.
pub fn tree(root: &Path, include_root: bool) -> Tree {
    let mut out = Tree::new();
    if include_root {
        out.insert(PathBuf::new(), node(root));
    }
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            let n = node(&path);
            if n.kind == 'd' {
                todo.push(path.clone());
            }
            out.insert(path.strip_prefix(root).unwrap().to_path_buf(), n);
        }
    }
    out
}

pub fn node(path: &Path) -> Node {
    let meta = fs::symlink_metadata(path).unwrap();
    let ft = meta.file_type();
    let kind = match () {
        _ if ft.is_dir() => 'd',
        _ if ft.is_file() => 'f',
        _ if ft.is_symlink() => 'l',
        _ if ft.is_char_device() => 'c',
        _ if ft.is_block_device() => 'b',
        _ if ft.is_fifo() => 'p',
        _ => '?',
    };
    Node {
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
        nlink: meta.nlink(),
        rdev: meta.rdev(),
        content: ft.is_file().then(|| diff_id(&fs::read(path).unwrap())),
        link: ft.is_symlink().then(|| fs::read_link(path).unwrap()),
        xattrs: xattrs(path),
    }
}

pub fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let cpath = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 64 * 1024];
    // SAFETY: `cpath` is NUL-terminated and `names` is a writable buffer of the length passed.
    let n = unsafe { libc::llistxattr(cpath.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(
        n >= 0,
        "llistxattr {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    let mut out = BTreeMap::new();
    for name in names[..n as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
    {
        let cname = CString::new(name).unwrap();
        let mut value = vec![0u8; 64 * 1024];
        // SAFETY: both strings are NUL-terminated and `value` is writable for the length passed.
        let len = unsafe {
            libc::lgetxattr(
                cpath.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        assert!(
            len >= 0,
            "lgetxattr {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        value.truncate(len as usize);
        out.insert(String::from_utf8_lossy(name).into_owned(), value);
    }
    out
}

pub fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    xattrs(path).remove(name)
}

pub fn major_minor(rdev: u64) -> (u64, u64) {
    (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev))
}

pub fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

pub fn expect_rejected(result: Result<(UnpackStats, String), UnpackError>, entry: &str) -> String {
    let err = result.expect_err("unpack must fail");
    let msg = err.to_string();
    assert!(
        msg.contains(entry),
        "error {msg:?} does not name entry {entry:?}"
    );
    msg
}
