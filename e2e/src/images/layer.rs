//! Image layers: sorted trees, exact (possibly hostile) entry lists, raw tars and blobs.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::registry::sha256_digest;

use super::tar::{write_tar, Entry};
use super::{Compression, Format, BUSYBOX};

/// A relative path without `.`/`..`/empty components: one we add parent dirs for.
fn is_clean(path: &str) -> bool {
    !path.starts_with('/')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

#[derive(Debug, Clone)]
enum Content {
    /// Sorted by path, parent directories added (0755) where missing.
    Tree(BTreeMap<String, Entry>),
    /// Written exactly as given, in order.
    Exact(Vec<Entry>),
    /// An uncompressed tar, as given.
    Tar(Vec<u8>),
    /// Pushed byte for byte with this media type; `diff_id` goes into the config as given.
    Blob {
        bytes: Vec<u8>,
        media_type: String,
        diff_id: String,
    },
}

/// One image layer: its content, and optionally its own compression.
#[derive(Debug, Clone)]
pub struct Layer {
    content: Content,
    compression: Option<Compression>,
}

impl Default for Layer {
    fn default() -> Self {
        Layer::new()
    }
}

impl Layer {
    /// An empty layer; add entries with [`Layer::file`] and friends.
    pub fn new() -> Layer {
        Layer {
            content: Content::Tree(BTreeMap::new()),
            compression: None,
        }
    }

    /// Regular files `(path, contents, mode)`, with their parent directories.
    pub fn files(files: &[(&str, &[u8], u32)]) -> Layer {
        files
            .iter()
            .fold(Layer::new(), |layer, (path, data, mode)| {
                layer.file(path, data, *mode)
            })
    }

    /// Entries written exactly in this order, no parents added: for hostile or odd layers.
    pub fn exact(entries: Vec<Entry>) -> Layer {
        Layer {
            content: Content::Exact(entries),
            compression: None,
        }
    }

    /// A layer whose uncompressed tar is `tar` (any bytes); compressed like the others.
    pub fn tar(tar: Vec<u8>) -> Layer {
        Layer {
            content: Content::Tar(tar),
            compression: None,
        }
    }

    /// A layer blob pushed exactly as `bytes`, with this media type and config `diff_id`.
    pub fn blob(bytes: Vec<u8>, media_type: &str, diff_id: &str) -> Layer {
        Layer {
            content: Content::Blob {
                bytes,
                media_type: media_type.to_string(),
                diff_id: diff_id.to_string(),
            },
            compression: None,
        }
    }

    /// The busybox rootfs: `bin/busybox`, a `bin/<applet> -> busybox` symlink for every applet
    /// of `busybox --list`, and the usual top-level directories (`tmp` 1777, `root` 0700).
    pub fn busybox() -> Layer {
        let (binary, applets) = busybox_files();
        let mut layer = Layer::new();
        for dir in [
            "bin", "dev", "etc", "home", "proc", "sys", "usr", "usr/bin", "var",
        ] {
            layer = layer.dir(dir, 0o755);
        }
        layer = layer.dir("root", 0o700).dir("tmp", 0o1777);
        layer = layer.file("bin/busybox", binary, 0o755);
        for applet in applets.iter().filter(|a| a.as_str() != "busybox") {
            layer = layer.symlink(&format!("bin/{applet}"), "busybox");
        }
        layer
    }

    /// `/etc/passwd` and `/etc/group` with root (0), tester (1000, also in group `extra` 2000)
    /// and nobody (65534), and tester's home `/home/tester` owned 1000:1000.
    pub fn passwd() -> Layer {
        Layer::new()
            .file(
                "etc/passwd",
                b"root:x:0:0:root:/root:/bin/sh\n\
                  tester:x:1000:1000:tester:/home/tester:/bin/sh\n\
                  nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
                0o644,
            )
            .file(
                "etc/group",
                b"root:x:0:\ntester:x:1000:\nextra:x:2000:tester\nnobody:x:65534:\n",
                0o644,
            )
            .entry(Entry::dir("home/tester", 0o755).owned(1000, 1000))
    }

    /// One file `data/random-<seed>.bin` of `size` deterministic pseudo-random bytes.
    pub fn random(size: usize, seed: u64) -> Layer {
        Layer::new().file(
            &format!("data/random-{seed}.bin"),
            &random_bytes(size, seed),
            0o644,
        )
    }

    /// Adds `entry` (replacing one at the same path); in a sorted layer, with its parents.
    pub fn entry(mut self, entry: Entry) -> Layer {
        match &mut self.content {
            Content::Tree(tree) => {
                if is_clean(&entry.path) {
                    // Every proper prefix `a`, `a/b`, … of `a/b/c` is a parent directory.
                    let slashes = entry.path.match_indices('/').map(|(i, _)| i);
                    for parent in slashes.map(|i| &entry.path[..i]) {
                        tree.entry(parent.to_string())
                            .or_insert_with(|| Entry::dir(parent, 0o755));
                    }
                }
                tree.insert(entry.path.clone(), entry);
            }
            Content::Exact(entries) => entries.push(entry),
            Content::Tar(_) | Content::Blob { .. } => panic!("cannot add entries to a raw layer"),
        }
        self
    }

    pub fn file(self, path: &str, data: &[u8], mode: u32) -> Layer {
        self.entry(Entry::file(path, data, mode))
    }

    pub fn dir(self, path: &str, mode: u32) -> Layer {
        self.entry(Entry::dir(path, mode))
    }

    pub fn symlink(self, path: &str, target: &str) -> Layer {
        self.entry(Entry::symlink(path, target))
    }

    pub fn hardlink(self, path: &str, target: &str) -> Layer {
        self.entry(Entry::hardlink(path, target))
    }

    /// Deletes `path` of a lower layer: an empty `<dir>/.wh.<name>`.
    pub fn whiteout(self, path: &str) -> Layer {
        let whiteout = match path.rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/.wh.{name}"),
            None => format!(".wh.{path}"),
        };
        self.file(&whiteout, b"", 0o644)
    }

    /// Hides everything lower layers have in `dir`: `<dir>/.wh..wh..opq`.
    pub fn opaque(self, dir: &str) -> Layer {
        self.dir(dir, 0o755)
            .file(&format!("{dir}/.wh..wh..opq"), b"", 0o644)
    }

    /// Compresses this layer so, whatever the image's default.
    pub fn compression(mut self, compression: Compression) -> Layer {
        self.compression = Some(compression);
        self
    }

    /// The uncompressed tar (for a raw blob: its bytes).
    pub fn uncompressed(&self) -> Vec<u8> {
        match &self.content {
            Content::Tree(tree) => write_tar(tree.values()),
            Content::Exact(entries) => write_tar(entries),
            Content::Tar(tar) => tar.clone(),
            Content::Blob { bytes, .. } => bytes.clone(),
        }
    }

    pub fn build(&self, default: Compression, format: Format) -> BuiltLayer {
        if let Content::Blob {
            bytes,
            media_type,
            diff_id,
        } = &self.content
        {
            return BuiltLayer {
                media_type: media_type.clone(),
                digest: sha256_digest(bytes),
                size: bytes.len() as u64,
                diff_id: diff_id.clone(),
                bytes: bytes.clone(),
            };
        }
        let compression = self.compression.unwrap_or(default);
        let tar = self.uncompressed();
        let bytes = compression.compress(&tar);
        BuiltLayer {
            media_type: compression.media_type(format).to_string(),
            digest: sha256_digest(&bytes),
            size: bytes.len() as u64,
            diff_id: sha256_digest(&tar),
            bytes,
        }
    }
}

/// The busybox binary and its applet names, read once.
fn busybox_files() -> &'static (Vec<u8>, Vec<String>) {
    static FILES: OnceLock<(Vec<u8>, Vec<String>)> = OnceLock::new();
    FILES.get_or_init(|| {
        let binary = std::fs::read(BUSYBOX)
            .unwrap_or_else(|e| panic!("read {BUSYBOX}: {e} (install Debian's busybox-static)"));
        let list = std::process::Command::new(BUSYBOX)
            .arg("--list")
            .output()
            .unwrap_or_else(|e| panic!("{BUSYBOX} --list: {e}"));
        let applets = String::from_utf8_lossy(&list.stdout)
            .lines()
            .map(str::trim)
            .filter(|a| !a.is_empty() && !a.contains('/'))
            .map(str::to_string)
            .collect();
        (binary, applets)
    })
}

/// `size` bytes of xorshift64* output from `seed`: incompressible, and the same every run.
pub fn random_bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(size);
    out
}

/// Layers a safe unpacker must refuse or confine: each entry tries to leave the rootfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// A file `../escape`.
    ParentEscape,
    /// A file `/abs`.
    AbsolutePath,
    /// A symlink `evil -> /`, then a file `evil/tmp/x` written through it.
    SymlinkEscape,
    /// A hardlink `passwd` to `/etc/passwd`.
    HardlinkEscape,
    /// A character device (1:3, like /dev/null) at `../dev`.
    DeviceNode,
}

impl Hostile {
    pub const ALL: [Hostile; 5] = [
        Hostile::ParentEscape,
        Hostile::AbsolutePath,
        Hostile::SymlinkEscape,
        Hostile::HardlinkEscape,
        Hostile::DeviceNode,
    ];

    /// A short name, usable in repository names.
    pub fn name(self) -> &'static str {
        match self {
            Hostile::ParentEscape => "parent-escape",
            Hostile::AbsolutePath => "absolute-path",
            Hostile::SymlinkEscape => "symlink-escape",
            Hostile::HardlinkEscape => "hardlink-escape",
            Hostile::DeviceNode => "device-node",
        }
    }

    pub fn layer(self) -> Layer {
        Layer::exact(match self {
            Hostile::ParentEscape => vec![Entry::file("../escape", b"escaped\n", 0o644)],
            Hostile::AbsolutePath => vec![Entry::file("/abs", b"absolute\n", 0o644)],
            Hostile::SymlinkEscape => vec![
                Entry::symlink("evil", "/"),
                Entry::file("evil/tmp/x", b"through the symlink\n", 0o644),
            ],
            Hostile::HardlinkEscape => vec![Entry::hardlink("passwd", "/etc/passwd")],
            Hostile::DeviceNode => vec![Entry::char_device("../dev", 1, 3)],
        })
    }
}

/// A layer blob ready to push.
#[derive(Debug, Clone)]
pub struct BuiltLayer {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    /// sha256 of the uncompressed tar, as listed in the config's `rootfs.diff_ids`.
    pub diff_id: String,
    pub bytes: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_headers_have_valid_checksums_and_sorted_parents() {
        let layer = Layer::files(&[("b/c.txt", b"c", 0o600), ("a.txt", b"a", 0o644)]);
        let tar = layer.uncompressed();
        let mut archive = tar::Archive::new(tar.as_slice());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["a.txt", "b/", "b/c.txt"]);
    }

    #[test]
    fn whiteouts_and_opaque_dirs_are_named_as_the_spec_says() {
        let tar = Layer::new()
            .whiteout("etc/gone")
            .opaque("var/x")
            .uncompressed();
        let mut archive = tar::Archive::new(tar.as_slice());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "etc/",
                "etc/.wh.gone",
                "var/",
                "var/x/",
                "var/x/.wh..wh..opq"
            ]
        );
    }
}
