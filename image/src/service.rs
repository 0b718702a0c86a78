//! The image service as the CRI layer sees it: pull, list, status, remove, filesystem usage.
//! It composes the registry client, content store, snapshotter and image store.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedMutexGuard, Semaphore};

use crate::auth::Credentials;
use crate::content::ContentStore;
use crate::digest::{chain_ids, ChainId, Digest};
use crate::manifest::{self, Descriptor, Kind};
use crate::metrics::ImageMetrics;
use crate::reference::Reference;
use crate::registry::{BlobSink, Clients, RegistryError, Session};
use crate::snapshots::{disk_usage, PreparedSnapshot, Snapshotter};
use crate::store::{ImageRecord, ImageStore};
use crate::unpack::{unpack_stream, ChunkReader, Compression, UnpackLimits};
use crate::RegistryConfig;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    InvalidReference(#[from] crate::reference::InvalidReference),
    #[error("pull {reference}: not found: {source}")]
    NotFound {
        reference: String,
        source: RegistryError,
    },
    #[error("pull {reference}: {source}")]
    Unauthorized {
        reference: String,
        source: RegistryError,
    },
    #[error("pull {reference}: {source}")]
    Registry {
        reference: String,
        source: RegistryError,
    },
    #[error("pull {reference}: {source}")]
    Manifest {
        reference: String,
        source: manifest::ManifestError,
    },
    #[error("pull {reference}: layer {layer}: {message}")]
    Layer {
        reference: String,
        layer: Digest,
        message: String,
    },
    #[error("invalid credentials: {0}")]
    Credentials(String),
    #[error("registry host config: {0}")]
    Hosts(#[from] crate::hosts::HostsError),
    #[error("image store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("content store: {0}")]
    Content(#[from] crate::content::ContentError),
    #[error("image storage {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Locks by name (a blob digest, a chain id) so that concurrent pulls download and unpack each
/// thing once: the second waits for the first, then finds the result in place.
#[derive(Debug, Default)]
struct KeyedLocks {
    map: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    async fn lock(&self, key: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, w| w.strong_count() > 0);
            match map.get(key).and_then(Weak::upgrade) {
                Some(l) => l,
                None => {
                    let l = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key.to_string(), Arc::downgrade(&l));
                    l
                }
            }
        };
        lock.lock_owned().await
    }
}

/// Names (blobs, snapshots) that in-progress pulls rely on, so GC leaves them alone.
#[derive(Debug, Default)]
struct InUse {
    counts: Mutex<HashMap<Digest, usize>>,
}

struct InUseGuard<'a> {
    in_use: &'a InUse,
    names: Vec<Digest>,
}

impl InUse {
    fn hold(&self, names: impl IntoIterator<Item = Digest>) -> InUseGuard<'_> {
        let names: Vec<Digest> = names.into_iter().collect();
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        for n in &names {
            *counts.entry(n.clone()).or_default() += 1;
        }
        InUseGuard {
            in_use: self,
            names,
        }
    }
}

impl Drop for InUseGuard<'_> {
    fn drop(&mut self) {
        let mut counts = self.in_use.counts.lock().unwrap_or_else(|e| e.into_inner());
        for n in &self.names {
            if let Some(c) = counts.get_mut(n) {
                *c -= 1;
                if *c == 0 {
                    counts.remove(n);
                }
            }
        }
    }
}

/// Bytes and inodes the image store uses, for ImageFsInfo.
#[derive(Debug, Clone)]
pub struct FsUsage {
    pub mountpoint: PathBuf,
    pub used_bytes: u64,
    pub inodes_used: u64,
    pub timestamp_nanos: i64,
}

pub struct Images {
    config: RegistryConfig,
    root: PathBuf,
    content: ContentStore,
    snapshots: Snapshotter,
    store: ImageStore,
    clients: Clients,
    locks: KeyedLocks,
    in_use: InUse,
    downloads: Semaphore,
    /// Held while GC decides and deletes, and by pulls while they mark what they use.
    gc: Mutex<()>,
    /// Snapshots containers are built on, by container: GC never removes them, whatever
    /// happens to their image (RemoveImage must not break a running container's rootfs).
    leases: Mutex<HashMap<String, Vec<ChainId>>>,
    metrics: ImageMetrics,
}

impl Images {
    /// Opens the image storage under `root` and removes what no image references (leftovers of
    /// a crash between storing content and recording the image).
    /// `leases` are the snapshots existing containers use (see [`Images::lease`]).
    pub fn open(
        root: &Path,
        config: RegistryConfig,
        metrics: ImageMetrics,
        leases: HashMap<String, Vec<ChainId>>,
    ) -> Result<Images, ImageError> {
        let io = |source| ImageError::Io {
            path: root.to_path_buf(),
            source,
        };
        let images = Images {
            content: ContentStore::open(root)?,
            snapshots: Snapshotter::open(root).map_err(io)?,
            store: ImageStore::open(root)?,
            clients: Clients::default(),
            locks: KeyedLocks::default(),
            in_use: InUse::default(),
            downloads: Semaphore::new(config.max_concurrent_downloads.max(1)),
            gc: Mutex::new(()),
            leases: Mutex::new(leases),
            root: root.to_path_buf(),
            config,
            metrics,
        };
        images.collect_garbage();
        Ok(images)
    }

    /// Registry host files are read on every pull; the TLS clients built from them are kept.
    /// This forgets those clients, so the next pull reads its `ca` files again (SIGHUP).
    pub fn forget_registry_clients(&self) {
        self.clients.clear();
    }

    pub fn list(&self) -> Vec<ImageRecord> {
        self.store.list()
    }

    pub fn resolve(&self, query: &str) -> Option<ImageRecord> {
        self.store.resolve(query)
    }

    /// The image's config JSON (for verbose status and, later, container creation).
    pub fn config_json(&self, record: &ImageRecord) -> Result<Vec<u8>, ImageError> {
        Ok(self.content.read(&record.id)?)
    }

    /// Removes an image and all its names, then frees what nothing references any more.
    /// Returns None when no image matched (CRI: RemoveImage is idempotent).
    pub fn remove(&self, query: &str) -> Result<Option<ImageRecord>, ImageError> {
        let Some(record) = self.store.resolve(query) else {
            return Ok(None);
        };
        let removed = self.store.remove(&record.id)?;
        self.collect_garbage();
        Ok(removed)
    }

    /// Keeps `chains` (a container's layers) out of GC until [`Images::release`].
    pub fn lease(&self, holder: &str, chains: Vec<ChainId>) {
        let _gc = self.gc.lock().unwrap_or_else(|e| e.into_inner());
        self.leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(holder.to_string(), chains);
    }

    /// Ends a container's lease and frees what only it kept alive (the layers of an image
    /// removed while the container ran). Blocking.
    pub fn release(&self, holder: &str) {
        let had = {
            let _gc = self.gc.lock().unwrap_or_else(|e| e.into_inner());
            self.leases
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(holder)
        };
        if had.is_some() {
            self.collect_garbage();
        }
    }

    /// Deletes blobs and snapshots no image record, running pull or container refers to.
    /// Blocking. The lock is held while GC decides, unlinks blobs and renames snapshots out of
    /// sight; the snapshots' files (seconds for a big image) are deleted after it, since pulls
    /// take the lock from async code.
    pub fn collect_garbage(&self) {
        for doomed in self.retire_garbage() {
            #[cfg(test)]
            tests::WHILE_DELETING.with(|h| h.get().map(|h| h(self)));
            if let Err(e) = std::fs::remove_dir_all(&doomed) {
                tracing::warn!(dir = %doomed.display(), error = %e, "GC: cannot delete snapshot");
            }
        }
    }

    /// GC's decisions, under its lock: unreferenced blobs are deleted and unreferenced
    /// snapshots retired; returns the retired snapshots' dirs.
    fn retire_garbage(&self) -> Vec<PathBuf> {
        let _gc = self.gc.lock().unwrap_or_else(|e| e.into_inner());
        let mut live: HashSet<Digest> = HashSet::new();
        for r in self.store.list() {
            live.extend(r.blobs().cloned());
            live.extend(r.chain_ids.iter().cloned());
        }
        live.extend(
            self.leases
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .flatten()
                .cloned(),
        );
        live.extend(
            self.in_use
                .counts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .cloned(),
        );
        for (blob, _) in self.content.list() {
            if !live.contains(&blob) {
                if let Err(e) = self.content.delete(&blob) {
                    tracing::warn!(blob = %blob, error = %e, "GC: cannot delete blob");
                }
            }
        }
        let mut doomed = Vec::new();
        for chain in self.snapshots.list() {
            if !live.contains(&chain) {
                match self.snapshots.retire(&chain) {
                    Ok(dir) => doomed.extend(dir),
                    Err(e) => {
                        tracing::warn!(snapshot = %chain, error = %e, "GC: cannot remove snapshot")
                    }
                }
            }
        }
        doomed
    }

    /// Used bytes and inodes of the image store: snapshots (as unpacked) plus blobs.
    pub fn fs_usage(&self) -> FsUsage {
        let mut used_bytes = 0;
        let mut inodes_used = 0;
        for chain in self.snapshots.list() {
            let u = self.snapshots.usage(&chain);
            used_bytes += u.bytes;
            inodes_used += u.inodes;
        }
        for (_, size) in self.content.list() {
            used_bytes += size;
            inodes_used += 1;
        }
        FsUsage {
            mountpoint: self.root.clone(),
            used_bytes,
            inodes_used,
            timestamp_nanos: berth_common::time::now_nanos(),
        }
    }

    /// Pulls `reference` for this host's platform and records it. Returns the image record.
    pub async fn pull(
        &self,
        reference: &str,
        credentials: Credentials,
    ) -> Result<ImageRecord, ImageError> {
        let started = Instant::now();
        let result = self.pull_inner(reference, credentials).await;
        let outcome = match &result {
            Ok(_) => {
                self.metrics
                    .pull_duration
                    .observe(started.elapsed().as_secs_f64());
                "success"
            }
            Err(ImageError::NotFound { .. }) => "not_found",
            Err(ImageError::Unauthorized { .. }) => "auth",
            Err(_) => "error",
        };
        self.metrics.pull_outcome(outcome);
        result
    }

    async fn pull_inner(
        &self,
        input: &str,
        credentials: Credentials,
    ) -> Result<ImageRecord, ImageError> {
        let reference = Reference::parse(input)?;
        let shown = reference.to_string();
        let registry_error = |source: RegistryError| {
            if source.is_not_found() {
                ImageError::NotFound {
                    reference: shown.clone(),
                    source,
                }
            } else if source.is_auth() {
                ImageError::Unauthorized {
                    reference: shown.clone(),
                    source,
                }
            } else {
                ImageError::Registry {
                    reference: shown.clone(),
                    source,
                }
            }
        };
        let manifest_error = |source| ImageError::Manifest {
            reference: shown.clone(),
            source,
        };
        let hosts = crate::hosts::hosts_for(&self.config.config_path, &reference.registry)?;
        let session = Session::new(
            &self.clients,
            hosts,
            &reference.repository,
            credentials,
            Duration::from_secs(self.config.pull_progress_timeout_secs.max(1)),
        );

        // Manifest, through the index when there is one.
        let top = session
            .manifest(&reference.manifest_reference())
            .await
            .map_err(registry_error)?;
        let (index, manifest) =
            match manifest::kind(&top.media_type, &top.bytes).map_err(manifest_error)? {
                Kind::Manifest => (None, top),
                Kind::Index => {
                    let index = manifest::parse_index(&top.bytes).map_err(manifest_error)?;
                    let chosen = manifest::select_platform(&index, &manifest::host_platform())
                        .map_err(manifest_error)?;
                    let m = session
                        .manifest(chosen.digest.as_str())
                        .await
                        .map_err(registry_error)?;
                    (Some(top), m)
                }
            };
        let parsed = manifest::parse_manifest(&manifest.bytes).map_err(manifest_error)?;
        let _using = {
            let _gc = self.gc.lock().unwrap_or_else(|e| e.into_inner());
            let mut names = vec![manifest.digest.clone(), parsed.config.digest.clone()];
            names.extend(index.iter().map(|i| i.digest.clone()));
            names.extend(parsed.layers.iter().map(|l| l.digest.clone()));
            self.in_use.hold(names)
        };

        // Config.
        self.ensure_blob(&session, &parsed.config)
            .await
            .map_err(registry_error)?;
        let config_bytes = self.content.read(&parsed.config.digest)?;
        let config = manifest::parse_config(&config_bytes).map_err(manifest_error)?;
        let diff_ids = config.rootfs.diff_ids;
        if diff_ids.len() != parsed.layers.len() {
            return Err(manifest_error(manifest::ManifestError::Malformed {
                what: "image config",
                message: format!(
                    "{} diff_ids for {} layers",
                    diff_ids.len(),
                    parsed.layers.len()
                ),
            }));
        }
        let chains = chain_ids(&diff_ids);
        let _using_snapshots = {
            let _gc = self.gc.lock().unwrap_or_else(|e| e.into_inner());
            self.in_use.hold(chains.iter().cloned())
        };

        // Layers: downloads and unpacks run concurrently; each layer's snapshot is independent
        // in overlay form, so order does not matter.
        let layers = parsed.layers.iter().zip(diff_ids.iter()).zip(chains.iter());
        let results = futures_util::future::join_all(layers.map(|((layer, diff_id), chain)| {
            self.ensure_layer(&session, layer, diff_id, chain, &shown)
        }))
        .await;
        for r in results {
            r?;
        }

        // Everything is stored: now the record, which makes it an image.
        self.content
            .write_bytes(&manifest.digest, &manifest.bytes)?;
        if let Some(index) = &index {
            self.content.write_bytes(&index.digest, &index.bytes)?;
        }
        let repo_digest = reference.with_digest(&index.as_ref().unwrap_or(&manifest).digest);
        let record = ImageRecord {
            id: parsed.config.digest.clone(),
            // CRI, as containerd: a reference with a digest records no tag.
            repo_tags: if reference.digest.is_none() {
                reference.tagged().into_iter().collect()
            } else {
                vec![]
            },
            repo_digests: vec![repo_digest],
            size: parsed.config.size + parsed.layers.iter().map(|l| l.size).sum::<u64>(),
            manifest: manifest.digest.clone(),
            index: index.as_ref().map(|i| i.digest.clone()),
            layers: parsed.layers.iter().map(|l| l.digest.clone()).collect(),
            chain_ids: chains,
            user: config.config.and_then(|c| c.user).unwrap_or_default(),
            pulled_at: berth_common::time::now_nanos(),
        };
        Ok(self.store.put(record)?)
    }

    /// Downloads a blob unless it is stored; concurrent callers wait for one download.
    async fn ensure_blob(
        &self,
        session: &Session<'_>,
        descriptor: &Descriptor,
    ) -> Result<(), RegistryError> {
        let _lock = self
            .locks
            .lock(&format!("blob {}", descriptor.digest.as_str()))
            .await;
        if self.content.contains(&descriptor.digest) {
            return Ok(());
        }
        let _slot = self
            .downloads
            .acquire()
            .await
            .map_err(|_| RegistryError::NoHost("pull"))?;
        let bytes = &self.metrics.bytes_pulled;
        let size = (descriptor.size > 0).then_some(descriptor.size);
        session
            .blob(&self.content, &descriptor.digest, size, &|n| {
                bytes.inc_by(n);
            })
            .await
    }

    /// Makes sure the snapshot `chain` exists: download the layer if needed, unpack, check the
    /// uncompressed digest against the config's diff id, then commit.
    async fn ensure_layer(
        &self,
        session: &Session<'_>,
        layer: &Descriptor,
        diff_id: &Digest,
        chain: &ChainId,
        shown: &str,
    ) -> Result<(), ImageError> {
        let layer_error = |message: String| ImageError::Layer {
            reference: shown.to_string(),
            layer: layer.digest.clone(),
            message,
        };
        // One unpack per chain id: a concurrent pull of the same layer waits here and finds
        // the snapshot. (Keys of their own: an uncompressed base layer's chain id is its diff
        // id is its blob digest.)
        let _lock = self
            .locks
            .lock(&format!("snapshot {}", chain.as_str()))
            .await;
        if self.snapshots.exists(chain) {
            self.metrics.layers_reused.inc();
            return Ok(());
        }
        let compression = Compression::from_media_type(&layer.media_type);
        let limits = UnpackLimits {
            max_bytes: self.config.max_layer_bytes,
            min_free_bytes: self.config.min_free_bytes,
        };
        let task_error = |e: tokio::task::JoinError| layer_error(format!("unpack task: {e}"));
        // The temp snapshot is made and filled on a blocking thread, never on a runtime worker.
        let unpacking = if self.content.contains(&layer.digest) {
            // A layer blob that is stored (an older agent kept them) is unpacked from its file.
            let blob = self.content.path(&layer.digest);
            let snapshots = self.snapshots.clone();
            tokio::task::spawn_blocking(move || {
                let file = std::fs::File::open(&blob)
                    .map_err(|e| format!("unpack: open {}: {e}", blob.display()))?;
                let source = std::io::BufReader::with_capacity(128 * 1024, file);
                unpack_into_temp(&snapshots, source, compression, limits, &blob)
            })
        } else {
            // Otherwise it is unpacked as it downloads, and not stored: the snapshot is what
            // containers use, and a pull that finds it never needs the blob.
            let _slot = self
                .downloads
                .acquire()
                .await
                .map_err(|_| layer_error("the agent is shutting down".to_string()))?;
            let sink = IntoSnapshot {
                snapshots: &self.snapshots,
                digest: &layer.digest,
                size: (layer.size > 0).then_some(layer.size),
                compression,
                limits,
            };
            let bytes = &self.metrics.bytes_pulled;
            session
                .blob_into(&sink, &layer.digest, sink.size, &|n| {
                    bytes.inc_by(n);
                })
                .await
                .map_err(|e| layer_error(e.to_string()))?
        };
        let (prepared, actual) = unpacking.await.map_err(task_error)?.map_err(layer_error)?;
        // Checked, then committed (or, failing, deleted with all it was filled with) on a
        // blocking thread too.
        let snapshots = self.snapshots.clone();
        let (diff_id, chain) = (diff_id.clone(), chain.clone());
        tokio::task::spawn_blocking(move || {
            if actual != diff_id.as_str() {
                return Err(format!(
                    "uncompressed content has digest {actual}, but the image config says {diff_id}"
                ));
            }
            let usage = disk_usage(&prepared.fs());
            snapshots
                .commit(prepared, &chain, usage)
                .map_err(|e| format!("commit snapshot: {e}"))
        })
        .await
        .map_err(task_error)?
        .map_err(layer_error)?;
        self.metrics.layers_pulled.inc();
        Ok(())
    }

    /// The chain id of a snapshot dir given by [`Images::snapshot_dir`].
    pub fn chain_of_snapshot_dir(dir: &Path) -> Option<ChainId> {
        let hex = dir.parent()?.file_name()?.to_str()?;
        format!("sha256:{hex}").parse().ok()
    }

    /// Where a snapshot's files are (overlay lowerdir) — for container rootfs mounts.
    pub fn snapshot_dir(&self, chain: &ChainId) -> PathBuf {
        self.snapshots.fs(chain)
    }
}

/// A fresh temp snapshot with `source`, a layer blob, unpacked into it, and the diff id it had.
fn unpack_into_temp(
    snapshots: &Snapshotter,
    source: impl std::io::BufRead,
    compression: Option<Compression>,
    limits: UnpackLimits,
    blob: &Path,
) -> Result<(PreparedSnapshot, String), String> {
    let prepared = snapshots
        .prepare()
        .map_err(|e| format!("prepare snapshot: {e}"))?;
    let (_, diff_id) = unpack_stream(source, compression, &prepared.fs(), limits, blob)
        .map_err(|e| format!("unpack: {e}"))?;
    Ok((prepared, diff_id))
}

type UnpackTask = tokio::task::JoinHandle<Result<(PreparedSnapshot, String), String>>;

/// A layer unpacked into a temp snapshot as it downloads. Each attempt is an unpack of its own
/// on a blocking thread, fed through a channel; finishing checks the blob's digest and size
/// and hands back the unpack to wait for.
struct IntoSnapshot<'a> {
    snapshots: &'a Snapshotter,
    digest: &'a Digest,
    size: Option<u64>,
    compression: Option<Compression>,
    limits: UnpackLimits,
}

struct Unpacking {
    chunks: tokio::sync::mpsc::Sender<bytes::Bytes>,
    hasher: sha2::Sha256,
    written: u64,
    task: UnpackTask,
}

/// Chunks queued between a download and its unpack: a few MiB at most.
const UNPACK_QUEUE: usize = 8;

impl BlobSink for IntoSnapshot<'_> {
    type Attempt = Unpacking;
    type Done = UnpackTask;

    async fn begin(&self) -> Result<Unpacking, RegistryError> {
        let (chunks, received) = tokio::sync::mpsc::channel(UNPACK_QUEUE);
        let snapshots = self.snapshots.clone();
        let (compression, limits) = (self.compression, self.limits);
        let blob = PathBuf::from(self.digest.as_str());
        let task = tokio::task::spawn_blocking(move || {
            let source = ChunkReader::new(received);
            unpack_into_temp(&snapshots, source, compression, limits, &blob)
        });
        Ok(Unpacking {
            chunks,
            hasher: <sha2::Sha256 as sha2::Digest>::new(),
            written: 0,
            task,
        })
    }

    async fn take(
        &self,
        unpacking: &mut Unpacking,
        chunk: bytes::Bytes,
    ) -> Result<(), RegistryError> {
        sha2::Digest::update(&mut unpacking.hasher, &chunk);
        unpacking.written += chunk.len() as u64;
        // An unpack that failed reads no more, but the blob is still hashed to its end: a
        // corrupt download is reported as one, not as the unpack error it caused.
        let _ = unpacking.chunks.send(chunk).await;
        Ok(())
    }

    async fn finish(&self, unpacking: Unpacking) -> Result<UnpackTask, RegistryError> {
        let Unpacking {
            chunks,
            hasher,
            written,
            task,
        } = unpacking;
        drop(chunks);
        if let Err(e) = crate::content::verify(self.digest, self.size, hasher, written) {
            discard(task).await;
            return Err(e.into());
        }
        Ok(task)
    }

    async fn abandon(&self, unpacking: Unpacking) {
        drop(unpacking.chunks);
        discard(unpacking.task).await;
    }
}

/// Waits for an unpack whose blob failed, and deletes what it made, off the runtime.
async fn discard(task: UnpackTask) {
    if let Ok(Ok((prepared, _))) = task.await {
        let _ = tokio::task::spawn_blocking(move || drop(prepared)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    thread_local! {
        /// Called as GC deletes a snapshot's files: what a test checks meanwhile.
        pub(super) static WHILE_DELETING: Cell<Option<fn(&Images)>> = const { Cell::new(None) };
    }

    /// Pulls take GC's lock in async code, and a big image's files take seconds to delete: GC
    /// decides and takes snapshots out of sight under the lock, and deletes them after it.
    #[test]
    fn gc_deletes_snapshots_with_its_lock_released() {
        static FREE: AtomicUsize = AtomicUsize::new(0);
        static HELD: AtomicUsize = AtomicUsize::new(0);
        let root = tempfile::tempdir().unwrap();
        let images = Images::open(
            root.path(),
            RegistryConfig::default(),
            ImageMetrics::default(),
            HashMap::new(),
        )
        .unwrap();
        let snapshot = root.path().join("snapshots").join("ab".repeat(32));
        std::fs::create_dir_all(snapshot.join("fs/etc")).unwrap();
        std::fs::write(snapshot.join("fs/etc/hostname"), "x").unwrap();
        std::fs::write(snapshot.join("usage.json"), "{}").unwrap();
        WHILE_DELETING.with(|h| {
            h.set(Some(|images: &Images| {
                let counter = match images.gc.try_lock() {
                    Ok(_) => &FREE,
                    Err(_) => &HELD,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }))
        });
        images.collect_garbage();
        WHILE_DELETING.with(|h| h.set(None));
        assert_eq!(
            (FREE.load(Ordering::Relaxed), HELD.load(Ordering::Relaxed)),
            (1, 0),
            "(deletions with the lock free, with it held)"
        );
        let left: Vec<_> = std::fs::read_dir(root.path().join("snapshots"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
