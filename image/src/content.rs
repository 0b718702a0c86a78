//! The content store: blobs by digest under `<root>/content/blobs/sha256/<hex>`. A blob enters
//! only through an [`Ingest`] whose sha256 and size match, so a corrupt download is never stored.

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::digest::Digest;
use berth_common::atomic::unique;

#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("blob {expected}: content has digest {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("content store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ContentError + '_ {
    move |source| ContentError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

impl ContentStore {
    /// Opens (creating) the store under `root/content`, discarding unfinished ingests. The
    /// ingest directory is emptied, not made again: a full disk may have no room for a new
    /// directory, and the store opens without one (the first ingest makes it).
    pub fn open(root: &Path) -> Result<ContentStore, ContentError> {
        let blobs = root.join("content/blobs/sha256");
        let ingest = root.join("content/ingest");
        std::fs::create_dir_all(&blobs).map_err(io_error(&blobs))?;
        match std::fs::read_dir(&ingest) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
            Err(_) => {
                if let Err(e) = std::fs::create_dir_all(&ingest) {
                    tracing::warn!(dir = %ingest.display(), error = %e, "no ingest directory: the first pull makes it");
                }
            }
        }
        Ok(ContentStore { blobs, ingest })
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// The blob's size, if it is stored.
    pub fn size(&self, digest: &Digest) -> Option<u64> {
        std::fs::metadata(self.path(digest)).ok().map(|m| m.len())
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.size(digest).is_some()
    }

    /// Reads a (small) blob whole: manifests and configs.
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>, ContentError> {
        let path = self.path(digest);
        std::fs::read(&path).map_err(io_error(&path))
    }

    /// Stores bytes already in memory, checking their digest.
    pub fn write_bytes(&self, expected: &Digest, bytes: &[u8]) -> Result<(), ContentError> {
        let actual = Digest::of(bytes);
        if &actual != expected {
            return Err(ContentError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        if self.contains(expected) {
            return Ok(());
        }
        let path = self.path(expected);
        berth_common::atomic::write_atomic(&path, bytes).map_err(io_error(&path))
    }

    /// Starts writing a blob into a temp file.
    pub async fn ingest(&self) -> Result<Ingest, ContentError> {
        let path = self
            .ingest
            .join(format!("{}-{:x}", std::process::id(), unique()));
        let file = match tokio::fs::File::create(&path).await {
            // Not made at open (no room then).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tokio::fs::create_dir_all(&self.ingest)
                    .await
                    .map_err(io_error(&self.ingest))?;
                tokio::fs::File::create(&path).await
            }
            created => created,
        }
        .map_err(io_error(&path))?;
        Ok(Ingest {
            file: Some(file),
            path,
            hasher: Sha256::new(),
            written: 0,
        })
    }

    /// Moves a finished ingest into place once digest and size check out.
    pub async fn commit(
        &self,
        mut ingest: Ingest,
        expected: &Digest,
        size: Option<u64>,
    ) -> Result<(), ContentError> {
        let mut file = ingest.file.take().ok_or_else(|| ContentError::Io {
            path: ingest.path.clone(),
            source: std::io::Error::other("ingest already finished"),
        })?;
        file.flush().await.map_err(io_error(&ingest.path))?;
        file.sync_all().await.map_err(io_error(&ingest.path))?;
        drop(file);
        verify(
            expected,
            size,
            std::mem::take(&mut ingest.hasher),
            ingest.written,
        )?;
        let target = self.path(expected);
        tokio::fs::rename(&ingest.path, &target)
            .await
            .map_err(io_error(&target))?;
        Ok(())
    }

    pub fn delete(&self, digest: &Digest) -> Result<(), ContentError> {
        let path = self.path(digest);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Every stored blob with its size.
    pub fn list(&self) -> Vec<(Digest, u64)> {
        let Ok(entries) = std::fs::read_dir(&self.blobs) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let digest = format!("sha256:{}", e.file_name().to_str()?).parse().ok()?;
                Some((digest, e.metadata().ok()?.len()))
            })
            .collect()
    }
}

/// Checks a downloaded blob: `written` bytes that hashed to `hasher` are the blob `expected`,
/// of `size` bytes when the manifest gave one.
pub fn verify(
    expected: &Digest,
    size: Option<u64>,
    hasher: Sha256,
    written: u64,
) -> Result<(), ContentError> {
    let actual = Digest::from_hasher(hasher);
    if &actual != expected {
        return Err(ContentError::DigestMismatch {
            expected: expected.clone(),
            actual,
        });
    }
    match size {
        Some(size) if size != written => Err(ContentError::SizeMismatch {
            digest: expected.clone(),
            expected: size,
            actual: written,
        }),
        _ => Ok(()),
    }
}

/// A blob being written; removed unless committed.
#[derive(Debug)]
pub struct Ingest {
    file: Option<tokio::fs::File>,
    path: PathBuf,
    hasher: Sha256,
    written: u64,
}

impl Ingest {
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), ContentError> {
        let file = self.file.as_mut().ok_or_else(|| ContentError::Io {
            path: self.path.clone(),
            source: std::io::Error::other("ingest already finished"),
        })?;
        file.write_all(chunk).await.map_err(io_error(&self.path))?;
        self.hasher.update(chunk);
        self.written += chunk.len() as u64;
        Ok(())
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        // Committed ingests were renamed away; anything else is a failed download.
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_matching_content_is_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let good = Digest::of(b"hello");
        let mut i = store.ingest().await.unwrap();
        i.write(b"hel").await.unwrap();
        i.write(b"lo").await.unwrap();
        store.commit(i, &good, Some(5)).await.unwrap();
        assert_eq!(store.read(&good).unwrap(), b"hello");

        let other = Digest::of(b"other");
        let mut i = store.ingest().await.unwrap();
        i.write(b"tampered").await.unwrap();
        let err = store.commit(i, &other, None).await.unwrap_err();
        assert!(matches!(err, ContentError::DigestMismatch { .. }), "{err}");
        assert!(!store.contains(&other));
        // Nothing is left in the ingest dir.
        assert_eq!(
            std::fs::read_dir(dir.path().join("content/ingest"))
                .unwrap()
                .count(),
            0
        );
        assert_eq!(store.list(), vec![(good, 5)]);
    }

    #[tokio::test]
    async fn size_is_checked_too() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let d = Digest::of(b"abc");
        let mut i = store.ingest().await.unwrap();
        i.write(b"abc").await.unwrap();
        assert!(store.commit(i, &d, Some(4)).await.is_err());
        assert!(!store.contains(&d));
    }
}
