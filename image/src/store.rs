//! Image metadata: one JSON record per image under `<root>/images/<id hex>.json`, written
//! atomically, loaded into memory at start. Tags and repo digests index into the records.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::digest::{ChainId, Digest};
use crate::reference::Reference;

/// What berth knows about one image. The id is the config digest, as with containerd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub id: Digest,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// Compressed size: config plus layers, as the manifest gives them.
    pub size: u64,
    /// The manifest (for this platform) and, when pulled through an index, the index.
    pub manifest: Digest,
    pub index: Option<Digest>,
    /// Compressed layer blobs, bottom first.
    pub layers: Vec<Digest>,
    /// Snapshot names, bottom first.
    pub chain_ids: Vec<ChainId>,
    /// The config's `User` (`uid`, `uid:gid`, `name`, `name:group`, or empty).
    pub user: String,
    /// Unix time in nanoseconds of the pull that last touched this record.
    pub pulled_at: i64,
}

impl ImageRecord {
    /// Every blob this image keeps alive.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        std::iter::once(&self.id)
            .chain(std::iter::once(&self.manifest))
            .chain(self.index.iter())
            .chain(self.layers.iter())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("image metadata {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("image metadata {path}: {message}")]
    Corrupt { path: PathBuf, message: String },
}

#[derive(Debug)]
pub struct ImageStore {
    dir: PathBuf,
    images: RwLock<BTreeMap<Digest, ImageRecord>>,
}

impl ImageStore {
    /// Opens (creating) `root/images` and loads every record. A record that does not parse is
    /// an error: guessing would lose images.
    pub fn open(root: &Path) -> Result<ImageStore, StoreError> {
        let dir = root.join("images");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut images = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                // A temp file from an interrupted write.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            let record: ImageRecord =
                serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            images.insert(record.id.clone(), record);
        }
        Ok(ImageStore {
            dir,
            images: RwLock::new(images),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Digest, ImageRecord>> {
        self.images.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<Digest, ImageRecord>> {
        self.images.write().unwrap_or_else(|e| e.into_inner())
    }

    fn persist(&self, record: &ImageRecord) -> Result<(), StoreError> {
        let path = self.dir.join(format!("{}.json", record.id.hex()));
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        berth_common::atomic::write_atomic(&path, &bytes)
            .map_err(|source| StoreError::Io { path, source })
    }

    fn unpersist(&self, id: &Digest) -> Result<(), StoreError> {
        let path = self.dir.join(format!("{}.json", id.hex()));
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StoreError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }

    pub fn list(&self) -> Vec<ImageRecord> {
        self.read().values().cloned().collect()
    }

    pub fn get(&self, id: &Digest) -> Option<ImageRecord> {
        self.read().get(id).cloned()
    }

    /// Finds an image by id (`sha256:<hex>` or bare hex), unique id prefix, or any reference
    /// form kubelet and crictl use (`busybox`, `name:tag`, `name@digest`).
    pub fn resolve(&self, query: &str) -> Option<ImageRecord> {
        let images = self.read();
        let query = query.trim();
        if let Ok(id) = query.parse::<Digest>() {
            return images.get(&id).cloned();
        }
        let hex = query.strip_prefix("sha256:").unwrap_or(query);
        if hex.len() == 64 {
            if let Ok(id) = format!("sha256:{hex}").parse::<Digest>() {
                if let Some(r) = images.get(&id) {
                    return Some(r.clone());
                }
            }
        }
        if let Ok(reference) = Reference::parse(query) {
            let wanted_digest = reference.digest.as_ref().map(|d| reference.with_digest(d));
            let wanted_tag = reference.tagged();
            let found = images.values().find(|r| match &wanted_digest {
                Some(d) => r.repo_digests.contains(d),
                None => wanted_tag.as_ref().is_some_and(|t| r.repo_tags.contains(t)),
            });
            if let Some(r) = found {
                return Some(r.clone());
            }
        }
        // A short id, as `crictl images` prints it: only when it names exactly one image.
        if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut matches = images.values().filter(|r| r.id.hex().starts_with(hex));
            if let (Some(r), None) = (matches.next(), matches.next()) {
                return Some(r.clone());
            }
        }
        None
    }

    /// Records a pulled image: merges with an existing record of the same id, and moves the tag
    /// away from any other image that had it (that image keeps its id and digests).
    pub fn put(&self, mut record: ImageRecord) -> Result<ImageRecord, StoreError> {
        let mut images = self.write();
        let mut changed_others = Vec::new();
        for other in images.values_mut() {
            if other.id == record.id {
                continue;
            }
            let before = other.repo_tags.len();
            other.repo_tags.retain(|t| !record.repo_tags.contains(t));
            if other.repo_tags.len() != before {
                changed_others.push(other.clone());
            }
        }
        if let Some(existing) = images.get(&record.id) {
            for t in &existing.repo_tags {
                if !record.repo_tags.contains(t) {
                    record.repo_tags.push(t.clone());
                }
            }
            for d in &existing.repo_digests {
                if !record.repo_digests.contains(d) {
                    record.repo_digests.push(d.clone());
                }
            }
        }
        record.repo_tags.sort();
        record.repo_digests.sort();
        self.persist(&record)?;
        for other in &changed_others {
            self.persist(other)?;
            images.insert(other.id.clone(), other.clone());
        }
        images.insert(record.id.clone(), record.clone());
        Ok(record)
    }

    /// Forgets an image and all its names.
    pub fn remove(&self, id: &Digest) -> Result<Option<ImageRecord>, StoreError> {
        let mut images = self.write();
        if !images.contains_key(id) {
            return Ok(None);
        }
        self.unpersist(id)?;
        Ok(images.remove(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(config: &[u8], tags: &[&str]) -> ImageRecord {
        let id = Digest::of(config);
        ImageRecord {
            id: id.clone(),
            repo_tags: tags.iter().map(|s| s.to_string()).collect(),
            repo_digests: vec![format!(
                "docker.io/library/busybox@{}",
                Digest::of(b"manifest")
            )],
            size: 10,
            manifest: Digest::of(b"manifest"),
            index: None,
            layers: vec![],
            chain_ids: vec![],
            user: String::new(),
            pulled_at: 0,
        }
    }

    #[test]
    fn records_survive_reopen_and_resolve_by_every_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let r = store
            .put(record(b"c1", &["docker.io/library/busybox:latest"]))
            .unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let id = r.id.to_string();
        for q in [
            id.as_str(),
            r.id.hex(),
            &r.id.hex()[..12],
            "busybox",
            "busybox:latest",
            "docker.io/library/busybox:latest",
            &format!("busybox@{}", Digest::of(b"manifest")),
        ] {
            assert_eq!(store.resolve(q).map(|x| x.id), Some(r.id.clone()), "{q}");
        }
        assert!(store.resolve("busybox:other").is_none());
        assert!(store.resolve("abc").is_none());
    }

    #[test]
    fn a_tag_moves_to_the_newer_image() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let old = store
            .put(record(b"old", &["docker.io/library/busybox:latest"]))
            .unwrap();
        let new = store
            .put(record(b"new", &["docker.io/library/busybox:latest"]))
            .unwrap();
        assert_eq!(store.resolve("busybox").unwrap().id, new.id);
        assert!(store.get(&old.id).unwrap().repo_tags.is_empty());
        let reopened = ImageStore::open(dir.path()).unwrap();
        assert!(reopened.get(&old.id).unwrap().repo_tags.is_empty());
    }

    #[test]
    fn tags_accumulate_on_the_same_image_and_remove_forgets_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        store
            .put(record(b"same", &["docker.io/library/a:1"]))
            .unwrap();
        let r = store
            .put(record(b"same", &["docker.io/library/a:2"]))
            .unwrap();
        assert_eq!(
            r.repo_tags,
            ["docker.io/library/a:1", "docker.io/library/a:2"]
        );
        assert!(store.remove(&r.id).unwrap().is_some());
        assert!(store.remove(&r.id).unwrap().is_none());
        assert!(ImageStore::open(dir.path()).unwrap().list().is_empty());
    }
}
