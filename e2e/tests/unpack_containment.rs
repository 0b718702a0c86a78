//! The layer unpacker against hostile tars: nothing lands outside the target, whatever the names,
//! links, devices and whiteouts say. Needs root (chown, mknod, trusted.* xattrs, overlay mounts).
//!
//! Every test works in its own `/tmp/berth-unpack-<pid>-<n>-…` holding `dest/` (the unpack
//! target), `sentinel/` (a sibling that must stay exactly as it was) and `blobs/`; all of it,
//! and any probe a broken unpacker left on the host, is removed on drop even when a test fails.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use berth_e2e::unpack_fixture::*;
use berth_image::unpack::{unpack_layer, Compression, UnpackError, UnpackLimits};

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

// ---------- what a layer may take from the disk ----------

/// A tar holding one GNU sparse file `name` of `size` bytes whose only data is `data` at
/// `offset`; the rest is holes.
fn sparse_tar(name: &str, size: u64, offset: u64, data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_path(name).unwrap();
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(data.len() as u64);
    let gnu = h.as_gnu_mut().unwrap();
    gnu.set_real_size(size);
    gnu.sparse[0].set_offset(offset);
    gnu.sparse[0].set_length(data.len() as u64);
    gnu.sparse[1].set_offset(size);
    gnu.sparse[1].set_length(0);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, data).unwrap();
    b.into_inner().unwrap()
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}

/// A GNU sparse file's holes stay holes: 1 GiB with 4 KiB of data reads back the same and takes
/// a few KiB of disk, not a GiB of written zeros.
#[test]
fn sparse_files_keep_their_holes() {
    let s = Scratch::new();
    let (size, offset) = (1u64 << 30, 512u64 << 20);
    let data = vec![7u8; 4096];
    let blob = s.blob("sparse.tar", &sparse_tar("big", size, offset, &data));
    unpack_layer(&blob, Compression::None, &s.dest(), UnpackLimits::default()).unwrap();
    let path = s.dest().join("big");
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), size);
    assert!(
        meta.blocks() * 512 < 1 << 20,
        "{} bytes on disk for 4 KiB of data",
        meta.blocks() * 512
    );
    assert_eq!(read_at(&path, offset, 4096), data);
    assert_eq!(read_at(&path, 0, 4096), vec![0u8; 4096]);
    assert_eq!(read_at(&path, size - 4096, 4096), vec![0u8; 4096]);
}

/// A few hundred bytes of tar that list a 100 GiB sparse file are refused before anything is
/// read, under the default per-layer cap.
#[test]
fn a_file_larger_than_the_layer_cap_is_refused_before_it_is_read() {
    let s = Scratch::new();
    let blob = s.blob(
        "huge.tar",
        &sparse_tar("huge", 100 << 30, 512, &vec![1u8; 512]),
    );
    let limits = UnpackLimits::default();
    assert!(limits.max_bytes < 100 << 30);
    let err = unpack_layer(&blob, Compression::None, &s.dest(), limits).unwrap_err();
    assert!(
        matches!(err, UnpackError::Rejected { .. }) && err.to_string().contains("max_layer_bytes"),
        "{err}"
    );
    assert!(fs::metadata(s.dest().join("huge")).map_or(true, |m| m.blocks() == 0));
}

/// A zstd bomb: 40 KiB that unpack to 512 files of 1 MiB each. The layer's bytes are counted
/// across its files, and the unpack stops at the cap with nothing past it written.
#[test]
fn a_zstd_bomb_stops_at_the_layer_cap() {
    let s = Scratch::new();
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    {
        let mut b = tar::Builder::new(&mut encoder);
        for i in 0..512 {
            let mut h = tar::Header::new_gnu();
            h.set_path(format!("f{i}")).unwrap();
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_size(1 << 20);
            h.set_cksum();
            b.append(&h, std::io::repeat(b'x').take(1 << 20)).unwrap();
        }
        b.finish().unwrap();
    }
    let bomb = encoder.finish().unwrap();
    assert!(bomb.len() < 256 << 10, "{} bytes", bomb.len());
    let blob = s.blob("bomb.tar.zst", &bomb);
    let limits = UnpackLimits {
        max_bytes: 64 << 20,
        ..UnpackLimits::default()
    };
    let err = unpack_layer(&blob, Compression::Zstd, &s.dest(), limits).unwrap_err();
    assert!(err.to_string().contains("max_layer_bytes"), "{err}");
    let written: u64 = fs::read_dir(s.dest())
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(written <= 64 << 20, "{written} bytes written past the cap");
}

/// Unpacking stops, with an error that says why, when the snapshot filesystem's free space
/// falls below the configured floor.
#[test]
fn a_layer_is_refused_when_the_disk_is_nearly_full() {
    let s = Scratch::new();
    let blob = s.blob("some.tar", &tar_of(&[file("a", b"some data")]));
    let free = nix::sys::statvfs::statvfs(&s.dest()).unwrap();
    let free = free.blocks_available() as u64 * free.fragment_size() as u64;
    let limits = UnpackLimits {
        min_free_bytes: free + (1 << 30),
        ..UnpackLimits::default()
    };
    let err = unpack_layer(&blob, Compression::None, &s.dest(), limits).unwrap_err();
    assert!(err.to_string().contains("min_free_bytes"), "{err}");
    assert!(!s.dest().join("a").exists());
}
