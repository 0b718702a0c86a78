//! The layer unpacker against the real kernel: overlay form, metadata, compression, replacement,
//! and containment of hostile tars. Needs root (chown, mknod, trusted.* xattrs, overlay mounts).
//!
//! Every test works in its own `/tmp/berth-unpack-<pid>-<n>-…` holding `dest/` (the unpack
//! target), `sentinel/` (a sibling that must stay exactly as it was) and `blobs/`; all of it,
//! and any probe a broken unpacker left on the host, is removed on drop even when a test fails.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use berth_e2e::TempDir;
use berth_image::unpack::{unpack_layer, Compression, UnpackError, UnpackStats};
use sha2::{Digest, Sha256};

// ---------- tar building ----------

#[derive(Clone)]
enum Kind {
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
struct Ent {
    name: Vec<u8>,
    kind: Kind,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    pax: Vec<(String, Vec<u8>)>,
}

const MTIME: u64 = 1_704_067_200; // 2024-01-01

fn ent(name: &str, kind: Kind, mode: u32) -> Ent {
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
fn dir(name: &str) -> Ent {
    ent(name, Kind::Dir, 0o755)
}
fn file(name: &str, data: &[u8]) -> Ent {
    ent(name, Kind::File(data.to_vec()), 0o644)
}
fn symlink(name: &str, target: &str) -> Ent {
    ent(name, Kind::Symlink(target.as_bytes().to_vec()), 0o777)
}
fn hardlink(name: &str, target: &str) -> Ent {
    ent(name, Kind::Hardlink(target.as_bytes().to_vec()), 0o644)
}

impl Ent {
    fn mode(mut self, mode: u32) -> Ent {
        self.mode = mode;
        self
    }
    fn owner(mut self, uid: u64, gid: u64) -> Ent {
        self.uid = uid;
        self.gid = gid;
        self
    }
    fn mtime(mut self, mtime: u64) -> Ent {
        self.mtime = mtime;
        self
    }
    fn pax(mut self, key: &str, value: &[u8]) -> Ent {
        self.pax.push((key.to_string(), value.to_vec()));
        self
    }
}

/// `"<len> <key>=<value>\n"`, where `<len>` counts the whole record including itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
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

fn set_raw(field: &mut [u8], value: &[u8]) {
    assert!(
        value.len() <= field.len(),
        "test name too long for a raw header"
    );
    field.fill(0);
    field[..value.len()].copy_from_slice(value);
}

fn tar_of(entries: &[Ent]) -> Vec<u8> {
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

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn diff_id(tar: &[u8]) -> String {
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
struct Scratch {
    dir: TempDir,
    sentinel_before: Tree,
    probes: Vec<PathBuf>,
}

impl Scratch {
    fn new() -> Scratch {
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

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn dest(&self) -> PathBuf {
        self.root().join("dest")
    }

    /// Another empty unpack target beside `dest`.
    fn extra_dest(&self, name: &str) -> PathBuf {
        let path = self.root().join(name);
        fs::create_dir(&path).unwrap();
        path
    }

    /// A unique name for a host path that must never appear.
    fn probe(&mut self, host_dir: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "berth-unpack-probe-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.probes.push(Path::new(host_dir).join(&name));
        name
    }

    fn blob(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.root().join("blobs").join(name);
        fs::write(&path, bytes).unwrap();
        path
    }

    fn unpack_into(
        &self,
        dest: &Path,
        entries: &[Ent],
    ) -> Result<(UnpackStats, String), UnpackError> {
        let tar = tar_of(entries);
        let name = format!("{}.tar", dest.file_name().unwrap().to_string_lossy());
        unpack_layer(&self.blob(&name, &tar), Compression::None, dest)
    }

    fn unpack(&self, entries: &[Ent]) -> Result<(UnpackStats, String), UnpackError> {
        self.unpack_into(&self.dest(), entries)
    }

    /// Nothing outside the unpack targets changed: the sentinel is byte- and
    /// metadata-identical, the temp root holds only what the test made, no probe exists.
    fn assert_contained(&self, extra_dests: &[&str]) {
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
struct Node {
    kind: char,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    nlink: u64,
    rdev: u64,
    content: Option<String>,
    link: Option<PathBuf>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

type Tree = BTreeMap<PathBuf, Node>;

/// Every node under `root` (and `root` itself if asked), never following symlinks.
fn tree(root: &Path, include_root: bool) -> Tree {
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

fn node(path: &Path) -> Node {
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

fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
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

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    xattrs(path).remove(name)
}

fn major_minor(rdev: u64) -> (u64, u64) {
    (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev))
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

fn expect_rejected(result: Result<(UnpackStats, String), UnpackError>, entry: &str) -> String {
    let err = result.expect_err("unpack must fail");
    let msg = err.to_string();
    assert!(
        msg.contains(entry),
        "error {msg:?} does not name entry {entry:?}"
    );
    msg
}

// ---------- containment ----------

#[test]
fn unpack_contains_dotdot_and_absolute_paths() {
    let mut s = Scratch::new();
    let up = s.probe("/tmp");
    let abs = s.probe("/etc");
    s.unpack(&[
        file(&format!("../../{up}"), b"escaped?\n"),
        file(&format!("/etc/{abs}"), b"escaped?\n"),
        file("../sentinel/pwned", b"x"),
        file("a/../../../sentinel/pwned2", b"x"),
        dir("../sentinel/newdir/").mode(0o777),
        file("./../sentinel/keep", b"overwritten?\n").mode(0o4777),
    ])
    .unwrap();
    let d = s.dest();
    assert!(d.join(&up).is_file());
    assert!(d.join("etc").join(&abs).is_file());
    assert!(d.join("sentinel/pwned").is_file());
    assert!(d.join("sentinel/pwned2").is_file());
    assert!(d.join("sentinel/newdir").is_dir());
    assert_eq!(
        fs::read(d.join("sentinel/keep")).unwrap(),
        b"overwritten?\n"
    );
    s.assert_contained(&[]);
}

#[test]
fn unpack_contains_symlink_escape() {
    let mut s = Scratch::new();
    let etc = s.probe("/etc");
    let tmp = s.probe("/tmp");
    let abs_sentinel = s.root().join("sentinel");
    s.unpack(&[
        symlink("evil", "../sentinel"),
        file("evil/pwned", b"x"),
        symlink("abs", abs_sentinel.to_str().unwrap()),
        file("abs/pwned", b"x"),
        symlink("etcl", "/etc"),
        file(&format!("etcl/{etc}"), b"x"),
        symlink("up", "../../.."),
        file(&format!("up/tmp/{tmp}"), b"x"),
        symlink("a", "b"),
        symlink("b", "../../sentinel"),
        file("a/chained", b"x"),
        dir("evil/newdir/").mode(0o777).owner(4242, 4242),
        ent("evil/null", Kind::Char(1, 3), 0o666),
        ent("evil/fifo", Kind::Fifo, 0o666),
        file("evil/keep", b"through the link?\n"),
    ])
    .unwrap();
    let d = s.dest();
    // Symlinks are stored verbatim and followed only inside dest.
    assert_eq!(
        fs::read_link(d.join("evil")).unwrap(),
        Path::new("../sentinel")
    );
    assert_eq!(fs::read_link(d.join("abs")).unwrap(), abs_sentinel);
    for landed in ["sentinel/pwned", "sentinel/chained", "sentinel/keep"] {
        assert!(d.join(landed).is_file(), "{landed}");
    }
    assert!(d
        .join(abs_sentinel.strip_prefix("/").unwrap())
        .join("pwned")
        .is_file());
    assert!(d.join("etc").join(&etc).is_file());
    assert!(d.join("tmp").join(&tmp).is_file());
    assert_eq!(node(&d.join("sentinel/newdir")).uid, 4242);
    assert_eq!(node(&d.join("sentinel/null")).kind, 'c');
    assert_eq!(node(&d.join("sentinel/fifo")).kind, 'p');
    s.assert_contained(&[]);
}

#[test]
fn unpack_never_chmods_chowns_or_times_through_symlinks() {
    let s = Scratch::new();
    s.unpack(&[
        // A directory entry over a symlink replaces the link; it does not chmod its target.
        symlink("s", "../sentinel"),
        dir("s/").mode(0o777).owner(4242, 4242).mtime(5),
        // A file over a symlink replaces the link; it does not write through it.
        symlink("k", "../sentinel/keep"),
        file("k", b"x").mode(0o4777).owner(4242, 4242),
        // A symlink's owner and times are its own.
        symlink("o", "../sentinel/keep").owner(4242, 4242).mtime(7),
        // Directory times are set at the end; a directory replaced by a symlink meanwhile
        // must not lend its times to the link's target.
        dir("t/").mtime(9),
        symlink("t", "../sentinel"),
    ])
    .unwrap();
    let d = s.dest();
    let sd = node(&d.join("s"));
    assert_eq!(
        (sd.kind, sd.mode, sd.uid, sd.mtime.0),
        ('d', 0o777, 4242, 5)
    );
    let k = node(&d.join("k"));
    assert_eq!((k.kind, k.mode, k.uid), ('f', 0o4777, 4242));
    let o = node(&d.join("o"));
    assert_eq!((o.kind, o.uid, o.mtime.0), ('l', 4242, 7));
    assert_eq!(node(&d.join("t")).kind, 'l');
    s.assert_contained(&[]);
}

#[test]
fn unpack_rejects_hardlink_escape() {
    let s = Scratch::new();
    let passwd_links = fs::metadata("/etc/passwd").unwrap().nlink();
    let cases: [(&str, Vec<Ent>); 4] = [
        ("abs", vec![hardlink("hl", "/etc/passwd")]),
        ("rel", vec![hardlink("hl", "../../sentinel/keep")]),
        (
            "via-symlink",
            vec![symlink("evil", "../sentinel"), hardlink("hl", "evil/keep")],
        ),
        (
            "via-abs-symlink",
            vec![symlink("evil", "/etc"), hardlink("hl", "evil/passwd")],
        ),
    ];
    for (name, entries) in &cases {
        let dest = s.extra_dest(name);
        let msg = expect_rejected(s.unpack_into(&dest, entries), "hl");
        assert!(msg.contains("hard link"), "{name}: {msg}");
        assert!(!exists(&dest.join("hl")), "{name}: link created");
    }
    assert_eq!(
        fs::metadata(s.root().join("sentinel/keep"))
            .unwrap()
            .nlink(),
        1
    );
    assert_eq!(fs::metadata("/etc/passwd").unwrap().nlink(), passwd_links);
    s.assert_contained(&["abs", "rel", "via-symlink", "via-abs-symlink"]);
}

#[test]
fn unpack_contains_device_nodes_named_with_dotdot() {
    let mut s = Scratch::new();
    let probe = s.probe("/tmp");
    s.unpack(&[
        ent(&format!("../../{probe}"), Kind::Char(1, 3), 0o666),
        ent("../sentinel/blk", Kind::Block(7, 0), 0o660),
        ent("/../../sentinel/fifo", Kind::Fifo, 0o600),
        ent("../sentinel/keep", Kind::Char(1, 5), 0o666),
    ])
    .unwrap();
    let d = s.dest();
    let null = node(&d.join(&probe));
    assert_eq!((null.kind, major_minor(null.rdev)), ('c', (1, 3)));
    let blk = node(&d.join("sentinel/blk"));
    assert_eq!(
        (blk.kind, major_minor(blk.rdev), blk.mode),
        ('b', (7, 0), 0o660)
    );
    assert_eq!(node(&d.join("sentinel/fifo")).kind, 'p');
    assert_eq!(node(&d.join("sentinel/keep")).kind, 'c');
    s.assert_contained(&[]);
}

#[test]
fn unpack_contains_whiteouts_and_opaque_markers() {
    let s = Scratch::new();
    s.unpack(&[
        file("../sentinel/.wh.keep", b""),
        symlink("evil", "../sentinel"),
        file("evil/.wh.sub", b""),
        file("evil/.wh..wh..opq", b""),
    ])
    .unwrap();
    let d = s.dest();
    let keep = node(&d.join("sentinel/keep"));
    assert_eq!((keep.kind, keep.rdev), ('c', 0));
    assert_eq!(node(&d.join("sentinel/sub")).kind, 'c');
    assert_eq!(
        xattr(&d.join("sentinel"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );

    // A whiteout of "." or ".." names no file and is refused, not applied to a parent.
    for (name, entry) in [("dot", "sub/.wh.."), ("dotdot", "sub/.wh...")] {
        let dest = s.extra_dest(name);
        expect_rejected(
            s.unpack_into(&dest, &[dir("sub/"), file(entry, b"")]),
            entry,
        );
        assert!(dest.join("sub").is_dir());
    }
    s.assert_contained(&["dot", "dotdot"]);
}

// ---------- overlay form and metadata ----------

#[test]
fn unpack_converts_whiteouts_and_opaque_dirs_to_overlay_form() {
    let s = Scratch::new();
    s.unpack(&[
        dir("a/"),
        file("a/.wh.gone", b"").owner(0, 0),
        file("b/.wh..wh..opq", b""), // before its directory: the directory is made
        file("b/new", b"new\n"),
        dir("c/").mode(0o750),
        file("c/file", b"c\n"),
        file("c/.wh..wh..opq", b""), // after content of the same layer: the content stays
        dir(".wh..wh.plnk/"),        // aufs bookkeeping: not part of the filesystem
        file(".wh..wh.plnk/123.456", b"aufs"),
        file("a/.wh..wh.aufs", b""),
    ])
    .unwrap();
    let d = s.dest();
    let gone = node(&d.join("a/gone"));
    assert_eq!((gone.kind, gone.rdev, gone.uid, gone.gid), ('c', 0, 0, 0));
    assert_eq!(
        xattr(&d.join("b"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(fs::read(d.join("b/new")).unwrap(), b"new\n");
    assert_eq!(
        xattr(&d.join("c"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(node(&d.join("c")).mode, 0o750);
    assert!(d.join("c/file").is_file());
    assert_eq!(xattr(&d.join("a"), "trusted.overlay.opaque"), None);
    let names: Vec<PathBuf> = tree(&d, false).into_keys().collect();
    assert!(
        names.iter().all(|p| !p.to_string_lossy().contains(".wh.")),
        "whiteout names left in the tree: {names:?}"
    );
    s.assert_contained(&[]);
}

#[test]
fn unpack_keeps_owners_modes_times_xattrs_and_links() {
    let s = Scratch::new();
    let entries = [
        dir("./").mode(0o700).owner(999, 999), // the layer root: ignored, as containerd does
        dir("d/")
            .mode(0o2775)
            .owner(1000, 1001)
            .mtime(1_500_000_000),
        dir("tmp/").mode(0o1777),
        file("d/suid", b"#!/bin/sh\n").mode(0o4755).owner(0, 0),
        file("d/f", b"hello\n")
            .mode(0o640)
            .owner(1234, 5678)
            .pax("mtime", b"1600000000.25")
            .pax("SCHILY.xattr.user.berth", b"hello"),
        file("d/wide", b"")
            .owner(0, 0)
            .pax("uid", b"3000000")
            .pax("gid", b"3000001")
            .mode(0o777),
        hardlink("d/hl", "d/f"),
        symlink("d/sl", "/etc/passwd")
            .owner(1234, 5678)
            .mtime(1_400_000_000),
        ent("d/fifo", Kind::Fifo, 0o600),
        ent("d/null", Kind::Char(1, 3), 0o666),
        ent("d/loop", Kind::Block(7, 0), 0o660),
        dir("d/sub/").pax("SCHILY.xattr.user.dir", b"1"),
        file("d/sub/x", b"x"),
    ];
    let d = s.dest();
    let root_before = node(&d);
    let (stats, _) = s.unpack(&entries).unwrap();
    assert_eq!(
        stats,
        UnpackStats {
            entries: entries.len() as u64,
            bytes: 10 + 6 + 1
        }
    );

    let root = node(&d);
    assert_eq!(
        (root.mode, root.uid),
        (root_before.mode, root_before.uid),
        "the layer root entry must not change dest"
    );
    let dd = node(&d.join("d"));
    assert_eq!((dd.mode, dd.uid, dd.gid), (0o2775, 1000, 1001));
    assert_eq!(
        dd.mtime,
        (1_500_000_000, 0),
        "directory mtime must survive entries made inside it"
    );
    assert_eq!(node(&d.join("tmp")).mode, 0o1777);
    assert_eq!(node(&d.join("d/suid")).mode, 0o4755);

    let f = node(&d.join("d/f"));
    assert_eq!((f.kind, f.mode, f.uid, f.gid), ('f', 0o640, 1234, 5678));
    assert_eq!(f.mtime, (1_600_000_000, 250_000_000));
    assert_eq!(
        f.xattrs.get("user.berth").map(Vec::as_slice),
        Some(&b"hello"[..])
    );
    assert_eq!(fs::read(d.join("d/f")).unwrap(), b"hello\n");
    assert_eq!(f.nlink, 2);
    let hl = fs::symlink_metadata(d.join("d/hl")).unwrap();
    assert_eq!(hl.ino(), fs::symlink_metadata(d.join("d/f")).unwrap().ino());

    let wide = node(&d.join("d/wide"));
    assert_eq!(
        (wide.uid, wide.gid, wide.mode),
        (3_000_000, 3_000_001, 0o777)
    );

    let sl = node(&d.join("d/sl"));
    assert_eq!(sl.link.as_deref(), Some(Path::new("/etc/passwd")));
    assert_eq!((sl.uid, sl.gid, sl.mtime.0), (1234, 5678, 1_400_000_000));

    let fifo = node(&d.join("d/fifo"));
    assert_eq!((fifo.kind, fifo.mode), ('p', 0o600));
    let null = node(&d.join("d/null"));
    assert_eq!(
        (null.kind, null.mode, major_minor(null.rdev)),
        ('c', 0o666, (1, 3))
    );
    let lp = node(&d.join("d/loop"));
    assert_eq!(
        (lp.kind, lp.mode, major_minor(lp.rdev)),
        ('b', 0o660, (7, 0))
    );
    assert_eq!(
        xattr(&d.join("d/sub"), "user.dir").as_deref(),
        Some(&b"1"[..])
    );
    s.assert_contained(&[]);
}

#[test]
fn unpack_gives_same_tree_and_diff_id_for_gzip_zstd_and_plain() {
    let s = Scratch::new();
    let tar = tar_of(&[
        dir("etc/").mtime(1_600_000_000),
        dir("usr/"),
        dir("dev/"),
        file("etc/motd", b"hello\n")
            .owner(12, 34)
            .pax("SCHILY.xattr.user.k", b"v"),
        hardlink("etc/motd2", "etc/motd"),
        symlink("etc/link", "motd"),
        dir("usr/bin/").mode(0o700),
        file("usr/bin/big", &vec![7u8; 300_000]).mode(0o755),
        file("usr/.wh.gone", b""),
        ent("dev/null", Kind::Char(1, 3), 0o666),
    ]);
    let want = diff_id(&tar);
    let gz = gzip(&tar);
    // Two gzip members back to back: still one stream to a reader.
    let (head, tail) = tar.split_at(4096);
    let multi = [gzip(head), gzip(tail)].concat();
    let zst = zstd::encode_all(tar.as_slice(), 3).unwrap();
    let cases = [
        ("plain", Compression::None, tar.clone()),
        ("gzip", Compression::Gzip, gz),
        ("gzip-multi", Compression::Gzip, multi),
        ("zstd", Compression::Zstd, zst),
    ];
    let mut trees = Vec::new();
    for (name, compression, bytes) in &cases {
        assert_eq!(Compression::sniff(&bytes[..4]), *compression, "{name}");
        let dest = s.extra_dest(name);
        let (stats, diff) = unpack_layer(&s.blob(name, bytes), *compression, &dest).unwrap();
        assert_eq!(diff, want, "{name}");
        assert_eq!(
            stats,
            UnpackStats {
                entries: 10,
                bytes: 300_006
            },
            "{name}"
        );
        trees.push((name, tree(&dest, false)));
    }
    let (first, reference) = &trees[0];
    assert_eq!(reference.len(), 10, "{reference:#?}");
    for (name, t) in &trees[1..] {
        assert_eq!(t, reference, "{name} differs from {first}");
    }
    s.assert_contained(&["plain", "gzip", "gzip-multi", "zstd"]);
}

#[test]
fn unpack_replaces_earlier_entries_at_the_same_path() {
    let s = Scratch::new();
    s.unpack(&[
        file("x", b"one"),
        file("x", b"two"),
        file("d", b"a file first"),
        dir("d/"),
        file("d/in", b"in"),
        dir("e/"),
        file("e/deep/er/f", b"f"),
        file("e", b"a file now"),
        symlink("s", "../sentinel/keep"),
        file("s", b"not through the link"),
        dir("m/").mode(0o700),
        file("m/keep", b"kept"),
        dir("m/").mode(0o755).owner(7, 7), // directories merge: contents stay, metadata updates
        file("h", b"old"),
        hardlink("h2", "h"),
        file("h", b"new"),
        hardlink("h", "h"), // GNU tar's way of listing a file twice
    ])
    .unwrap();
    let d = s.dest();
    assert_eq!(fs::read(d.join("x")).unwrap(), b"two");
    assert_eq!(fs::read(d.join("d/in")).unwrap(), b"in");
    assert_eq!(fs::read(d.join("e")).unwrap(), b"a file now");
    assert_eq!(node(&d.join("s")).kind, 'f');
    assert_eq!(fs::read(d.join("s")).unwrap(), b"not through the link");
    assert_eq!(fs::read(d.join("m/keep")).unwrap(), b"kept");
    let m = node(&d.join("m"));
    assert_eq!((m.mode, m.uid), (0o755, 7));
    assert_eq!(fs::read(d.join("h")).unwrap(), b"new");
    assert_eq!(fs::read(d.join("h2")).unwrap(), b"old");
    s.assert_contained(&[]);
}

#[test]
fn unpack_reports_corrupt_blobs_without_panicking() {
    let s = Scratch::new();
    let tar = tar_of(&[dir("a/"), file("a/big", &vec![1u8; 200_000])]);
    let gz = gzip(&tar);
    let mut bad_sum = tar.clone();
    bad_sum[600] ^= 0xff; // inside the second header
    let noise: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let cases = [
        (
            "truncated-gzip",
            Compression::Gzip,
            gz[..gz.len() / 2].to_vec(),
        ),
        ("noise-gzip", Compression::Gzip, noise.clone()),
        ("noise-zstd", Compression::Zstd, noise.clone()),
        ("noise-tar", Compression::None, noise),
        ("bad-checksum", Compression::None, bad_sum),
    ];
    for (name, compression, bytes) in &cases {
        let dest = s.extra_dest(name);
        let err = unpack_layer(&s.blob(name, bytes), *compression, &dest).expect_err(name);
        assert!(err.to_string().contains("layer"), "{name}: {err}");
    }
    let missing = unpack_layer(
        &s.root().join("blobs/missing"),
        Compression::None,
        &s.dest(),
    )
    .unwrap_err();
    assert!(matches!(missing, UnpackError::OpenBlob { .. }), "{missing}");
    s.assert_contained(&[
        "truncated-gzip",
        "noise-gzip",
        "noise-zstd",
        "noise-tar",
        "bad-checksum",
    ]);
}

// ---------- overlayfs ----------

/// Unmounts on drop, so a failing assertion does not leave a mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn overlay_mount_shows_merged_view_with_whiteouts_and_opaque_dirs() {
    let s = Scratch::new();
    let lower = s.extra_dest("lower");
    let upper = s.extra_dest("upper");
    let merged = s.extra_dest("merged");
    s.unpack_into(
        &lower,
        &[
            dir("a/"),
            file("a/keep", b"keep\n"),
            file("a/gone", b"gone\n"),
            dir("b/"),
            file("b/old", b"old\n"),
            file("b/sub/deep", b"deep\n"),
            file("c", b"c\n"),
            file("d/x", b"x\n"),
        ],
    )
    .unwrap();
    s.unpack_into(
        &upper,
        &[
            file("a/.wh.gone", b""),
            file("b/.wh..wh..opq", b""),
            file("b/new", b"new\n"),
            file(".wh.c", b""),
            file(".wh.d", b""),
            file("e/new", b"e\n"),
        ],
    )
    .unwrap();

    let options = format!("lowerdir={}:{}", upper.display(), lower.display());
    nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(options.as_str()),
    )
    .expect("mount overlay");
    let mounted = Mounted(merged.clone());

    let list = |p: &Path| -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(list(&merged), ["a", "b", "e"]);
    assert_eq!(list(&merged.join("a")), ["keep"]);
    assert_eq!(
        list(&merged.join("b")),
        ["new"],
        "opaque b hides the lower layer's b"
    );
    assert_eq!(fs::read(merged.join("a/keep")).unwrap(), b"keep\n");
    assert_eq!(fs::read(merged.join("e/new")).unwrap(), b"e\n");
    assert!(!exists(&merged.join("c")));
    assert!(!exists(&merged.join("d/x")));
    drop(mounted);
    s.assert_contained(&["lower", "upper", "merged"]);
}
