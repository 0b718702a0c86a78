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

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use sha2::{Digest, Sha256};

mod entry;
mod fsops;
mod names;

use entry::Unpacker;
use fsops::owned;

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

/// What one layer may take from the disk. Holes (GNU sparse entries, runs of zeros) are never
/// written, so what a layer writes is at most its uncompressed stream; these bound the stream a
/// small compressed blob can expand to (a gzip or zstd bomb) and the disk it may leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Bytes of file content (as the files read back, holes included) one layer may hold.
    pub max_bytes: u64,
    /// Free bytes the snapshot filesystem must keep: the unpack fails when fewer are left.
    pub min_free_bytes: u64,
}

/// `[registry] max_layer_bytes`: 64 GiB, above the largest single layers of real images.
pub const DEFAULT_MAX_LAYER_BYTES: u64 = 64 << 30;
/// `[registry] min_free_bytes`: 512 MiB.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 512 << 20;

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_bytes: DEFAULT_MAX_LAYER_BYTES,
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
        }
    }
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
    #[error("unpack destination {}: cannot read its free space: {source}", path.display())]
    FreeSpace { path: PathBuf, source: io::Error },
}

/// Unpacks one layer blob (a compressed file on disk) into `dest` (an existing, empty directory)
/// in overlayfs form, and computes the sha256 of the *uncompressed* tar stream, the layer's
/// diff id, as it goes. Blocking; callers run it in `spawn_blocking`. Needs root (or
/// CAP_CHOWN, CAP_FOWNER, CAP_MKNOD and CAP_SYS_ADMIN for `trusted.*` xattrs).
pub fn unpack_layer(
    blob: &Path,
    compression: Compression,
    dest: &Path,
    limits: UnpackLimits,
) -> Result<(UnpackStats, String), UnpackError> {
    let file = File::open(blob).map_err(|source| UnpackError::OpenBlob {
        path: blob.to_path_buf(),
        source,
    })?;
    const BUF: usize = 128 * 1024;
    unpack_stream(
        BufReader::with_capacity(BUF, file),
        Some(compression),
        dest,
        limits,
        blob,
    )
}

/// [`unpack_layer`] from a blob's bytes as they come (`blob` names it in errors). Its
/// compression, when `None`, is told by its first bytes ([`Compression::sniff`]).
pub fn unpack_stream<'a>(
    source: impl BufRead + 'a,
    compression: Option<Compression>,
    dest: &Path,
    limits: UnpackLimits,
    blob: &Path,
) -> Result<(UnpackStats, String), UnpackError> {
    let open_blob = |source| UnpackError::OpenBlob {
        path: blob.to_path_buf(),
        source,
    };
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
    // Sniffed from its first 4 bytes, which a download's first chunk need not hold: they are
    // read whole, then put back in front of the rest.
    let (compression, source): (Compression, Box<dyn BufRead + 'a>) = match compression {
        Some(c) => (c, Box::new(source)),
        None => {
            let mut head = Vec::with_capacity(4);
            let mut source = source;
            (&mut source)
                .take(4)
                .read_to_end(&mut head)
                .map_err(open_blob)?;
            (
                Compression::sniff(&head),
                Box::new(io::Cursor::new(head).chain(source)),
            )
        }
    };
    let decompressed: Box<dyn Read + 'a> = match compression {
        Compression::None => Box::new(source),
        // Multi-member: gzip writers may emit several members, and Go's reader accepts them.
        // The `bufread` decoder inflates straight out of the source's buffer; the `read` one
        // would copy it into a second buffer of its own first (9% of a pull's CPU).
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(source)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(source).map_err(open_blob)?)
        }
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
        limits,
        logical_bytes: 0,
        unchecked_bytes: 0,
    };
    unpacker.check_free_space("")?;
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

/// A blob's bytes as they arrive from its download, chunk by chunk, for [`unpack_stream`] on a
/// blocking thread. The stream ends when the sending side is dropped.
pub struct ChunkReader {
    chunks: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    chunk: bytes::Bytes,
}

impl ChunkReader {
    pub fn new(chunks: tokio::sync::mpsc::Receiver<bytes::Bytes>) -> ChunkReader {
        ChunkReader {
            chunks,
            chunk: bytes::Bytes::new(),
        }
    }
}

impl BufRead for ChunkReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.chunk.is_empty() {
            match self.chunks.blocking_recv() {
                Some(chunk) => self.chunk = chunk,
                None => break,
            }
        }
        Ok(&self.chunk)
    }

    fn consume(&mut self, n: usize) {
        let n = n.min(self.chunk.len());
        bytes::Buf::advance(&mut self.chunk, n);
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
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
