//! The layer unpacker against the real kernel: overlay form, metadata, compression, replacement,
//! and the overlay mount of the result (containment is `unpack_containment.rs`). Needs root
//! (chown, mknod, trusted.* xattrs, overlay mounts).
//!
//! Every test works in its own `/tmp/berth-unpack-<pid>-<n>-…` holding `dest/` (the unpack
//! target), `sentinel/` (a sibling that must stay exactly as it was) and `blobs/`; all of it,
//! and any probe a broken unpacker left on the host, is removed on drop even when a test fails.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_e2e::unpack_fixture::*;
use berth_image::unpack::{
    unpack_layer, unpack_stream, Compression, UnpackError, UnpackLimits, UnpackStats,
};

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
        let (stats, diff) = unpack_layer(
            &s.blob(name, bytes),
            *compression,
            &dest,
            UnpackLimits::default(),
        )
        .unwrap();
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

/// A blob as a download may hand it over: a byte at a time.
struct ByteAtATime<'a>(&'a [u8]);

impl std::io::Read for ByteAtATime<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.0.len()).min(1);
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

impl std::io::BufRead for ByteAtATime<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        Ok(&self.0[..self.0.len().min(1)])
    }

    fn consume(&mut self, n: usize) {
        self.0 = &self.0[n..];
    }
}

/// A layer whose media type names no compression is told by its first bytes, however few the
/// first chunk of its download holds.
#[test]
fn a_streamed_layer_of_unknown_compression_is_sniffed_from_its_first_bytes() {
    let s = Scratch::new();
    let tar = tar_of(&[dir("etc/"), file("etc/motd", b"hello\n")]);
    let want = diff_id(&tar);
    let cases = [
        ("plain", tar.clone()),
        ("gzip", gzip(&tar)),
        ("zstd", zstd::encode_all(tar.as_slice(), 3).unwrap()),
    ];
    for (name, bytes) in &cases {
        let dest = s.extra_dest(name);
        let (_, diff) = unpack_stream(
            ByteAtATime(bytes),
            None,
            &dest,
            UnpackLimits::default(),
            Path::new(name),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(diff, want, "{name}");
        assert_eq!(
            fs::read(dest.join("etc/motd")).unwrap(),
            b"hello\n",
            "{name}"
        );
    }
    s.assert_contained(&["plain", "gzip", "zstd"]);
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
        let err = unpack_layer(
            &s.blob(name, bytes),
            *compression,
            &dest,
            UnpackLimits::default(),
        )
        .expect_err(name);
        assert!(err.to_string().contains("layer"), "{name}: {err}");
    }
    let missing = unpack_layer(
        &s.root().join("blobs/missing"),
        Compression::None,
        &s.dest(),
        UnpackLimits::default(),
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
