//! Test images built from Debian's static busybox, pushed into a [`TestRegistry`].
//!
//! Layers are tars written here byte by byte (ustar headers, fixed mtime, root-owned unless
//! said otherwise, entries sorted with parents first), so the same inputs always give the same
//! digests, and so hostile layers (`../escape`, absolute paths, links out of the rootfs, device
//! nodes) can be expressed at all. Config and manifests are JSON from `serde_json`, in OCI or
//! Docker schema 2 form; indexes list several platforms of which only the host's runs.
//!
//! ```ignore
//! let registry = TestRegistry::start();
//! let image = ImageBuilder::busybox()
//!     .layer(Layer::files(&[("etc/motd", b"hi\n", 0o644)]))
//!     .user("1000:1000")
//!     .compression(Compression::Zstd)
//!     .push(&registry, "test/motd", "v1");
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::sync::OnceLock;

use serde_json::{json, Map, Value};

use crate::registry::{sha256_digest, TestRegistry};

/// Debian's `busybox-static`.
pub const BUSYBOX: &str = "/bin/busybox";
/// The mtime of every tar entry (2024-01-01T00:00:00Z), and the config's `created`.
pub const MTIME: u64 = 1_704_067_200;
pub const CREATED: &str = "2024-01-01T00:00:00Z";
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Total random payload of [`ImageBuilder::large`], spread over [`LARGE_LAYERS`] layers.
pub const LARGE_BYTES: usize = 50 * 1024 * 1024;
pub const LARGE_LAYERS: usize = 6;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// How layer tars are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

impl Compression {
    pub fn compress(self, tar: &[u8]) -> Vec<u8> {
        match self {
            Compression::Gzip => {
                // flate2 writes mtime 0 and no file name: the output depends on the input only.
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(tar).expect("gzip in memory");
                gz.finish().expect("gzip in memory")
            }
            Compression::Zstd => zstd::stream::encode_all(tar, 3).expect("zstd in memory"),
            Compression::None => tar.to_vec(),
        }
    }

    /// The layer media type. Docker schema 2 has no zstd type; such layers use OCI's.
    pub fn media_type(self, format: Format) -> &'static str {
        match (self, format) {
            (Compression::Gzip, Format::Oci) => OCI_LAYER_GZIP,
            (Compression::Zstd, _) => OCI_LAYER_ZSTD,
            (Compression::None, Format::Oci) => OCI_LAYER,
            (Compression::Gzip, Format::Docker) => DOCKER_LAYER_GZIP,
            (Compression::None, Format::Docker) => DOCKER_LAYER,
        }
    }
}

/// OCI image-spec media types, or Docker's schema 2 (manifest list for indexes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Oci,
    Docker,
}

impl Format {
    pub fn manifest_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_MANIFEST,
            Format::Docker => DOCKER_MANIFEST,
        }
    }

    pub fn index_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_INDEX,
            Format::Docker => DOCKER_MANIFEST_LIST,
        }
    }

    pub fn config_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_CONFIG,
            Format::Docker => DOCKER_CONFIG,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tar entries and layers.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    Hardlink(String),
    CharDevice { major: u32, minor: u32 },
    BlockDevice { major: u32, minor: u32 },
    Fifo,
}

/// One tar entry. The path is written exactly as given (no cleaning), so it may be hostile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Entry {
    fn new(path: &str, kind: EntryKind, mode: u32) -> Entry {
        Entry {
            path: path.trim_end_matches('/').to_string(),
            kind,
            mode,
            uid: 0,
            gid: 0,
        }
    }

    pub fn file(path: &str, data: &[u8], mode: u32) -> Entry {
        Entry::new(path, EntryKind::File(data.to_vec()), mode)
    }

    pub fn dir(path: &str, mode: u32) -> Entry {
        Entry::new(path, EntryKind::Dir, mode)
    }

    pub fn symlink(path: &str, target: &str) -> Entry {
        Entry::new(path, EntryKind::Symlink(target.to_string()), 0o777)
    }

    pub fn hardlink(path: &str, target: &str) -> Entry {
        Entry::new(path, EntryKind::Hardlink(target.to_string()), 0o644)
    }

    pub fn char_device(path: &str, major: u32, minor: u32) -> Entry {
        Entry::new(path, EntryKind::CharDevice { major, minor }, 0o666)
    }

    pub fn owned(mut self, uid: u32, gid: u32) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }
}

/// Writes `entries` as a ustar archive, in the order given, ending with two zero blocks.
pub fn write_tar<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        let mut header = [0u8; 512];
        let (typeflag, link, size, device) = match &entry.kind {
            EntryKind::File(data) => (b'0', "", data.len(), (0, 0)),
            EntryKind::Hardlink(target) => (b'1', target.as_str(), 0, (0, 0)),
            EntryKind::Symlink(target) => (b'2', target.as_str(), 0, (0, 0)),
            EntryKind::CharDevice { major, minor } => (b'3', "", 0, (*major, *minor)),
            EntryKind::BlockDevice { major, minor } => (b'4', "", 0, (*major, *minor)),
            EntryKind::Dir => (b'5', "", 0, (0, 0)),
            EntryKind::Fifo => (b'6', "", 0, (0, 0)),
        };
        let path = match entry.kind {
            EntryKind::Dir => format!("{}/", entry.path),
            _ => entry.path.clone(),
        };
        let (prefix, name) = split_ustar_path(&path);
        header[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut header[100..108], entry.mode as u64);
        octal(&mut header[108..116], entry.uid as u64);
        octal(&mut header[116..124], entry.gid as u64);
        octal(&mut header[124..136], size as u64);
        octal(&mut header[136..148], MTIME);
        header[156] = typeflag;
        assert!(link.len() <= 100, "tar link target too long: {link}");
        header[157..157 + link.len()].copy_from_slice(link.as_bytes());
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        octal(&mut header[329..337], device.0 as u64);
        octal(&mut header[337..345], device.1 as u64);
        header[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
        // The checksum is taken with its own field as spaces.
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|&b| b as u32).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&header);
        if let EntryKind::File(data) = &entry.kind {
            out.extend_from_slice(data);
            out.resize(out.len().next_multiple_of(512), 0);
        }
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// ustar keeps up to 100 bytes in `name` and 155 more in `prefix`, split at a `/`.
fn split_ustar_path(path: &str) -> (&str, &str) {
    if path.len() <= 100 {
        return ("", path);
    }
    let body = path.trim_end_matches('/');
    (1..body.len())
        .filter(|&i| body.as_bytes()[i] == b'/')
        .find(|&i| i <= 155 && path.len() - i - 1 <= 100)
        .map(|i| (&path[..i], &path[i + 1..]))
        .unwrap_or_else(|| panic!("tar path too long for ustar: {path}"))
}

fn octal(field: &mut [u8], value: u64) {
    let digits = format!("{value:0width$o}", width = field.len() - 1);
    assert!(
        digits.len() < field.len(),
        "{value} does not fit a tar field"
    );
    field[..digits.len()].copy_from_slice(digits.as_bytes());
    field[digits.len()] = 0;
}

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

// ---------------------------------------------------------------------------------------------
// Images.

/// Where an image runs: `os/architecture[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn linux(architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: "linux".to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// The machine the tests run on, in OCI's names (busybox from the host runs only here).
    pub fn host() -> Platform {
        match std::env::consts::ARCH {
            "x86_64" => Platform::linux("amd64", None),
            "aarch64" => Platform::linux("arm64", Some("v8")),
            "arm" => Platform::linux("arm", Some("v7")),
            "x86" => Platform::linux("386", None),
            "powerpc64" => Platform::linux("ppc64le", None),
            other => Platform::linux(other, None),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut platform = json!({ "architecture": self.architecture, "os": self.os });
        if let Some(variant) = &self.variant {
            platform["variant"] = json!(variant);
        }
        platform
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(variant) => write!(f, "/{variant}"),
            None => Ok(()),
        }
    }
}

/// Builds one image: layers, platform, the runtime part of the config, compression, format.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    layers: Vec<Layer>,
    config: Map<String, Value>,
    platform: Platform,
    compression: Compression,
    format: Format,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        ImageBuilder::new()
    }
}

impl ImageBuilder {
    /// No layers, empty config, host platform, gzip, OCI.
    pub fn new() -> ImageBuilder {
        ImageBuilder {
            layers: Vec::new(),
            config: Map::new(),
            platform: Platform::host(),
            compression: Compression::Gzip,
            format: Format::Oci,
        }
    }

    /// The busybox rootfs as one layer, `Env` [PATH], `Cmd` ["sh"].
    pub fn busybox() -> ImageBuilder {
        ImageBuilder::new()
            .layer(Layer::busybox())
            .env(DEFAULT_PATH)
            .cmd(["sh"])
    }

    /// Three layers: busybox; `etc/motd` = "layer 2\n" and `etc/layer2`; `etc/motd` =
    /// "layer 3\n" and `etc/layer3` (so the top layer's motd wins).
    pub fn multi_layer() -> ImageBuilder {
        ImageBuilder::busybox()
            .layer(Layer::files(&[
                ("etc/motd", b"layer 2\n", 0o644),
                ("etc/layer2", b"2\n", 0o644),
            ]))
            .layer(Layer::files(&[
                ("etc/motd", b"layer 3\n", 0o644),
                ("etc/layer3", b"3\n", 0o644),
            ]))
    }

    /// Busybox, a lower layer with `etc/removed.txt`, `etc/kept.txt`, `opaque/old.txt` and
    /// `opaque/sub/deep.txt`, and an upper layer with `etc/.wh.removed.txt`,
    /// `opaque/.wh..wh..opq` and `opaque/new.txt`. Unpacked, `etc/kept.txt` stays,
    /// `etc/removed.txt` is gone and `opaque/` holds only `new.txt`.
    pub fn whiteouts() -> ImageBuilder {
        let lower = Layer::files(&[
            ("etc/removed.txt", b"removed\n", 0o644),
            ("etc/kept.txt", b"kept\n", 0o644),
            ("opaque/old.txt", b"old\n", 0o644),
            ("opaque/sub/deep.txt", b"deep\n", 0o644),
        ]);
        let upper = Layer::new()
            .whiteout("etc/removed.txt")
            .opaque("opaque")
            .file("opaque/new.txt", b"new\n", 0o644);
        ImageBuilder::busybox().layer(lower).layer(upper)
    }

    /// Busybox plus [`Layer::passwd`], so `User` can name `tester` or `nobody`.
    pub fn with_passwd() -> ImageBuilder {
        ImageBuilder::busybox().layer(Layer::passwd())
    }

    /// Busybox plus one [`Hostile`] layer.
    pub fn hostile(kind: Hostile) -> ImageBuilder {
        ImageBuilder::busybox().layer(kind.layer())
    }

    /// About [`LARGE_BYTES`] of pseudo-random (incompressible) data in [`LARGE_LAYERS`] layers,
    /// the first also holding the busybox rootfs, so it runs. For pull benchmarks.
    pub fn large() -> ImageBuilder {
        let per_layer = LARGE_BYTES / LARGE_LAYERS;
        let busybox =
            Layer::busybox().file("data/random-1.bin", &random_bytes(per_layer, 1), 0o644);
        (2..=LARGE_LAYERS as u64).fold(
            ImageBuilder::new()
                .layer(busybox)
                .env(DEFAULT_PATH)
                .cmd(["sh"]),
            |image, seed| image.layer(Layer::random(per_layer, seed)),
        )
    }

    /// A small image for a platform that cannot run here: one file `platform` naming it.
    pub fn dummy(platform: Platform) -> ImageBuilder {
        let name = format!("{platform}\n");
        ImageBuilder::new()
            .layer(Layer::files(&[("platform", name.as_bytes(), 0o644)]))
            .cmd(["/platform"])
            .platform(platform)
    }

    pub fn layer(mut self, layer: Layer) -> ImageBuilder {
        self.layers.push(layer);
        self
    }

    /// Sets one key of the config's `config` object (`Cmd`, `Labels`, `ExposedPorts`, …).
    pub fn config_field(mut self, key: &str, value: Value) -> ImageBuilder {
        self.config.insert(key.to_string(), value);
        self
    }

    pub fn cmd<S: Into<String>>(self, args: impl IntoIterator<Item = S>) -> ImageBuilder {
        let args: Vec<String> = args.into_iter().map(Into::into).collect();
        self.config_field("Cmd", json!(args))
    }

    pub fn entrypoint<S: Into<String>>(self, args: impl IntoIterator<Item = S>) -> ImageBuilder {
        let args: Vec<String> = args.into_iter().map(Into::into).collect();
        self.config_field("Entrypoint", json!(args))
    }

    /// Appends `KEY=value` to `Env`.
    pub fn env(mut self, var: &str) -> ImageBuilder {
        let env = self
            .config
            .entry("Env")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(vars) = env {
            vars.push(json!(var));
        }
        self
    }

    /// `User`: `uid`, `uid:gid`, `name` or `name:group`.
    pub fn user(self, user: &str) -> ImageBuilder {
        self.config_field("User", json!(user))
    }

    pub fn working_dir(self, dir: &str) -> ImageBuilder {
        self.config_field("WorkingDir", json!(dir))
    }

    pub fn stop_signal(self, signal: &str) -> ImageBuilder {
        self.config_field("StopSignal", json!(signal))
    }

    pub fn label(mut self, key: &str, value: &str) -> ImageBuilder {
        let labels = self
            .config
            .entry("Labels")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(labels) = labels {
            labels.insert(key.to_string(), json!(value));
        }
        self
    }

    pub fn platform(mut self, platform: Platform) -> ImageBuilder {
        self.platform = platform;
        self
    }

    /// The compression of every layer that does not set its own (default gzip).
    pub fn compression(mut self, compression: Compression) -> ImageBuilder {
        self.compression = compression;
        self
    }

    /// OCI (default) or Docker schema 2 media types.
    pub fn format(mut self, format: Format) -> ImageBuilder {
        self.format = format;
        self
    }

    /// Docker schema 2: `application/vnd.docker.distribution.manifest.v2+json`.
    pub fn docker(self) -> ImageBuilder {
        self.format(Format::Docker)
    }

    /// Layers, config and manifest, with their digests; nothing pushed yet.
    pub fn build(&self) -> BuiltImage {
        let layers: Vec<BuiltLayer> = self
            .layers
            .iter()
            .map(|layer| layer.build(self.compression, self.format))
            .collect();
        let mut config = self.platform.to_json();
        let config_object = config.as_object_mut().expect("platform is an object");
        config_object.insert("created".into(), json!(CREATED));
        config_object.insert("config".into(), Value::Object(self.config.clone()));
        config_object.insert(
            "rootfs".into(),
            json!({ "type": "layers", "diff_ids": layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>() }),
        );
        let history: Vec<Value> = (1..=layers.len())
            .map(|i| json!({ "created": CREATED, "created_by": format!("berth-e2e layer {i}") }))
            .collect();
        config_object.insert("history".into(), json!(history));
        let config = serde_json::to_vec(&config).expect("config JSON");
        let config_digest = sha256_digest(&config);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": self.format.manifest_type(),
            "config": {
                "mediaType": self.format.config_type(),
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": layers
                .iter()
                .map(|l| json!({ "mediaType": l.media_type, "digest": l.digest, "size": l.size }))
                .collect::<Vec<_>>(),
        });
        let manifest = serde_json::to_vec(&manifest).expect("manifest JSON");
        BuiltImage {
            media_type: self.format.manifest_type().to_string(),
            manifest_digest: sha256_digest(&manifest),
            manifest,
            config_digest,
            config,
            layers,
            platform: self.platform.clone(),
        }
    }

    /// Builds and pushes to `repo` under `reference` (a tag).
    pub fn push(&self, registry: &TestRegistry, repo: &str, reference: &str) -> PushedImage {
        self.build().push(registry, repo, reference)
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

/// An image's blobs and JSON, built but not pushed.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub media_type: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layers: Vec<BuiltLayer>,
    pub platform: Platform,
}

impl BuiltImage {
    /// Pushes layers, config, then the manifest under `reference` (a tag or the digest).
    pub fn push(&self, registry: &TestRegistry, repo: &str, reference: &str) -> PushedImage {
        for layer in &self.layers {
            registry.push_blob(repo, &layer.bytes);
        }
        registry.push_blob(repo, &self.config);
        registry.push_manifest(repo, reference, &self.media_type, &self.manifest);
        PushedImage {
            registry: registry.address(),
            repo: repo.to_string(),
            reference: reference.to_string(),
            media_type: self.media_type.clone(),
            manifest_digest: self.manifest_digest.clone(),
            size: self.manifest.len() as u64,
            manifest: self.manifest.clone(),
            config_digest: self.config_digest.clone(),
            config: self.config.clone(),
            diff_ids: self.layers.iter().map(|l| l.diff_id.clone()).collect(),
            layers: self
                .layers
                .iter()
                .map(|l| LayerDescriptor {
                    media_type: l.media_type.clone(),
                    digest: l.digest.clone(),
                    size: l.size,
                    diff_id: l.diff_id.clone(),
                })
                .collect(),
            platform: self.platform.clone(),
        }
    }

    /// The descriptor an index lists for this image.
    fn descriptor(&self) -> Value {
        json!({
            "mediaType": self.media_type,
            "digest": self.manifest_digest,
            "size": self.manifest.len(),
            "platform": self.platform.to_json(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDescriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    pub diff_id: String,
}

/// What a push stored, to compare a pull against.
#[derive(Debug, Clone)]
pub struct PushedImage {
    /// `127.0.0.1:PORT` of the registry.
    pub registry: String,
    pub repo: String,
    pub reference: String,
    pub media_type: String,
    pub manifest_digest: String,
    /// Manifest size in bytes.
    pub size: u64,
    pub manifest: Vec<u8>,
    pub config_digest: String,
    pub config: Vec<u8>,
    pub diff_ids: Vec<String>,
    pub layers: Vec<LayerDescriptor>,
    pub platform: Platform,
}

impl PushedImage {
    /// `127.0.0.1:PORT/repo:tag` (or `…@sha256:…` if pushed by digest).
    pub fn image_ref(&self) -> String {
        let separator = if self.reference.contains(':') {
            '@'
        } else {
            ':'
        };
        format!(
            "{}/{}{separator}{}",
            self.registry, self.repo, self.reference
        )
    }

    /// `127.0.0.1:PORT/repo@sha256:…`.
    pub fn digest_ref(&self) -> String {
        format!("{}/{}@{}", self.registry, self.repo, self.manifest_digest)
    }
}

/// Builds an OCI index (or Docker manifest list) over several images.
#[derive(Debug, Clone)]
pub struct IndexBuilder {
    images: Vec<ImageBuilder>,
    format: Format,
}

impl Default for IndexBuilder {
    fn default() -> Self {
        IndexBuilder::new()
    }
}

impl IndexBuilder {
    pub fn new() -> IndexBuilder {
        IndexBuilder {
            images: Vec::new(),
            format: Format::Oci,
        }
    }

    /// linux/arm64/v8 (listed first), linux/amd64, linux/arm/v7: busybox for the host's
    /// platform (amd64 here), [`ImageBuilder::dummy`] for the others.
    pub fn multi_platform() -> IndexBuilder {
        let host = Platform::host();
        [
            Platform::linux("arm64", Some("v8")),
            Platform::linux("amd64", None),
            Platform::linux("arm", Some("v7")),
        ]
        .into_iter()
        .fold(IndexBuilder::new(), |index, platform| {
            let image = if platform == host {
                ImageBuilder::busybox().platform(platform)
            } else {
                ImageBuilder::dummy(platform)
            };
            index.image(image)
        })
    }

    /// Adds an image; its builder's platform goes into the index entry.
    pub fn image(mut self, image: ImageBuilder) -> IndexBuilder {
        self.images.push(image);
        self
    }

    /// A Docker manifest list of schema 2 manifests instead of an OCI index.
    pub fn docker(mut self) -> IndexBuilder {
        self.format = Format::Docker;
        self
    }

    /// Pushes every image by digest, then the index under `reference`.
    pub fn push(&self, registry: &TestRegistry, repo: &str, reference: &str) -> PushedIndex {
        let built: Vec<BuiltImage> = self
            .images
            .iter()
            .map(|image| image.clone().format(self.format).build())
            .collect();
        let images: Vec<PushedImage> = built
            .iter()
            .map(|image| image.push(registry, repo, &image.manifest_digest))
            .collect();
        let index = json!({
            "schemaVersion": 2,
            "mediaType": self.format.index_type(),
            "manifests": built.iter().map(BuiltImage::descriptor).collect::<Vec<_>>(),
        });
        let index = serde_json::to_vec(&index).expect("index JSON");
        let media_type = self.format.index_type().to_string();
        let digest = registry.push_manifest(repo, reference, &media_type, &index);
        PushedIndex {
            registry: registry.address(),
            repo: repo.to_string(),
            reference: reference.to_string(),
            media_type,
            digest,
            size: index.len() as u64,
            index,
            images,
        }
    }
}

/// What an index push stored; `images` in index order.
#[derive(Debug, Clone)]
pub struct PushedIndex {
    pub registry: String,
    pub repo: String,
    pub reference: String,
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    pub index: Vec<u8>,
    pub images: Vec<PushedImage>,
}

impl PushedIndex {
    pub fn image_ref(&self) -> String {
        format!("{}/{}:{}", self.registry, self.repo, self.reference)
    }

    /// The image listed for `platform`.
    pub fn image_for(&self, platform: &Platform) -> Option<&PushedImage> {
        self.images.iter().find(|image| &image.platform == platform)
    }
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
    fn long_paths_use_the_ustar_prefix() {
        let path = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        let tar = write_tar([&Entry::file(&path, b"x", 0o644)]);
        let mut archive = tar::Archive::new(tar.as_slice());
        let entry = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().display().to_string(), path);
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

    #[test]
    fn same_inputs_give_same_digests() {
        let a = ImageBuilder::multi_layer()
            .compression(Compression::Zstd)
            .build();
        let b = ImageBuilder::multi_layer()
            .compression(Compression::Zstd)
            .build();
        assert_eq!(a.manifest_digest, b.manifest_digest);
        assert_eq!(random_bytes(100, 7), random_bytes(100, 7));
        assert_ne!(random_bytes(100, 7), random_bytes(100, 8));
    }
}
