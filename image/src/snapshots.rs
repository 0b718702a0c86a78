//! Layer snapshots: each layer unpacked once, in overlayfs form, into
//! `<root>/snapshots/<chain-id hex>/fs`, with its disk usage beside it in `usage.json`.
//! A snapshot appears by renaming a finished temp dir, so a crash never leaves half of one.

use std::path::{Path, PathBuf};

use crate::digest::ChainId;
use berth_common::atomic::unique;

const TMP_PREFIX: &str = "tmp-";

/// Bytes (allocated blocks) and inodes a snapshot uses.
pub use berth_common::fs::{disk_usage, DiskUsage as Usage};

#[derive(Debug, Clone)]
pub struct Snapshotter {
    root: PathBuf,
}

impl Snapshotter {
    /// Opens (creating) `root/snapshots`, removing temp dirs a crash left behind.
    pub fn open(root: &Path) -> std::io::Result<Snapshotter> {
        let root = root.join("snapshots");
        berth_common::fs::private_dir(&root)?;
        for entry in std::fs::read_dir(&root)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(Snapshotter { root })
    }

    /// The directory the snapshots live in (ImageFsInfo's mountpoint).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The unpacked layer: an overlayfs lowerdir.
    pub fn fs(&self, chain: &ChainId) -> PathBuf {
        self.root.join(chain.hex()).join("fs")
    }

    pub fn exists(&self, chain: &ChainId) -> bool {
        self.root.join(chain.hex()).join("usage.json").exists()
    }

    /// A fresh temp dir with an empty `fs/` to unpack into.
    pub fn prepare(&self) -> std::io::Result<PreparedSnapshot> {
        let dir = self
            .root
            .join(format!("{TMP_PREFIX}{}-{:x}", std::process::id(), unique()));
        std::fs::create_dir_all(dir.join("fs"))?;
        Ok(PreparedSnapshot { dir: Some(dir) })
    }

    /// Makes a prepared snapshot the one for `chain`.
    pub fn commit(
        &self,
        mut prepared: PreparedSnapshot,
        chain: &ChainId,
        usage: Usage,
    ) -> std::io::Result<()> {
        let dir = prepared
            .dir
            .take()
            .ok_or_else(|| std::io::Error::other("snapshot already committed"))?;
        let result = (|| {
            let json = serde_json::to_vec(&usage).map_err(std::io::Error::other)?;
            berth_common::atomic::write_atomic(&dir.join("usage.json"), &json)?;
            std::fs::rename(&dir, self.root.join(chain.hex()))
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    pub fn usage(&self, chain: &ChainId) -> Usage {
        std::fs::read(self.root.join(chain.hex()).join("usage.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn remove(&self, chain: &ChainId) -> std::io::Result<()> {
        match self.retire(chain)? {
            Some(doomed) => std::fs::remove_dir_all(doomed),
            None => Ok(()),
        }
    }

    /// Takes snapshot `chain` out of sight with one rename, to a temp dir that a crash leaves
    /// to be cleaned at start (never a snapshot that looks whole), and returns that dir for the
    /// caller to delete; None when there was no such snapshot.
    pub fn retire(&self, chain: &ChainId) -> std::io::Result<Option<PathBuf>> {
        let dir = self.root.join(chain.hex());
        let doomed = self.root.join(format!("{TMP_PREFIX}rm-{:x}", unique()));
        match std::fs::rename(&dir, &doomed) {
            Ok(()) => Ok(Some(doomed)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn list(&self) -> Vec<ChainId> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| format!("sha256:{}", e.file_name().to_str()?).parse().ok())
            .collect()
    }
}

/// A temp snapshot dir; removed on drop unless committed.
#[derive(Debug)]
pub struct PreparedSnapshot {
    dir: Option<PathBuf>,
}

impl PreparedSnapshot {
    pub fn fs(&self) -> PathBuf {
        self.dir.as_ref().map(|d| d.join("fs")).unwrap_or_default()
    }
}

impl Drop for PreparedSnapshot {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
