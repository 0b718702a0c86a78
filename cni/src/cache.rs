//! The on-disk cache of final ADD results, one file per attachment, like libcni's
//! `/var/lib/cni/results/<net>-<id>-<ifname>`: CHECK and DEL hand the cached result to plugins as
//! `prevResult`, and the runtime reads the pod's IPs from it after a restart.
//!
//! An attachment is two files. `<id>-<ifname>.json`, the record, is written durably before
//! the ADD runs and not rewritten: the network and attachment its DEL needs after a reboot
//! (which keeps the plugins' leases on disk). `<id>-<ifname>.result`, the final result, is
//! written after the ADD without an fsync (which cost ~0.6 ms of RunPodSandbox): a process
//! crash keeps it, and a power cut, which may take it, takes the pods with it, so that the only
//! call left for it is that DEL, which runs without a `prevResult` as libcni's does when its
//! cache has none.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::CniError;
use crate::invoke::Attachment;
use crate::network::Network;
use crate::result::CniResult;
use crate::RuntimeCapabilities;

const KIND: &str = "berthCniResultV1";
/// The extension of a result kept beside its record (the record's is `.json`).
const RESULT_EXT: &str = "result";

/// Result files under one directory, owned by the caller (e.g. `<state>/cni/results`).
#[derive(Debug, Clone)]
pub struct ResultCache {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    kind: String,
    container_id: String,
    if_name: String,
    result: Value,
    /// What a DEL needs once the pod's own files are gone (a reboot empties `state`, not the
    /// cache's `root`): the network as it was at ADD (a conflist), and the attachment's netns,
    /// CNI_ARGS and offered capabilities. Absent in records of an attachment saved without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    network: Option<Value>,
    #[serde(default)]
    netns: PathBuf,
    #[serde(default)]
    args: Vec<(String, String)>,
    #[serde(default)]
    capability_args: Map<String, Value>,
}

impl ResultCache {
    /// A cache in `dir`; the directory is created (0700) on the first save.
    pub fn new(dir: impl Into<PathBuf>) -> ResultCache {
        ResultCache { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file holding the result of `container_id`'s `ifname`.
    pub fn path(&self, container_id: &str, ifname: &str) -> Result<PathBuf, CniError> {
        // Both are validated before any plugin runs; checked again here because they name a file.
        if !crate::network::is_valid_name(container_id) || !crate::invoke::is_valid_ifname(ifname) {
            return Err(CniError::Cache {
                path: self.dir.clone(),
                message: format!("invalid key {container_id:?}/{ifname:?}"),
            });
        }
        Ok(self.dir.join(format!("{container_id}-{ifname}.json")))
    }

    /// The file holding the final result of an attachment saved with
    /// [`ResultCache::save_attachment`], beside its record.
    fn result_path(&self, container_id: &str, ifname: &str) -> Result<PathBuf, CniError> {
        Ok(self.path(container_id, ifname)?.with_extension(RESULT_EXT))
    }

    /// Stores `result` atomically and durably, in the record itself (as agents before the
    /// result file did): temp file, fsync, rename, fsync of the directory.
    pub fn save(
        &self,
        container_id: &str,
        ifname: &str,
        result: &CniResult,
    ) -> Result<(), CniError> {
        self.remove_result(container_id, ifname)?;
        self.write(Record {
            kind: KIND.to_string(),
            container_id: container_id.to_string(),
            if_name: ifname.to_string(),
            result: result.raw().clone(),
            network: None,
            netns: PathBuf::new(),
            args: Vec::new(),
            capability_args: Map::new(),
        })
    }

    /// The network and the attachment an ADD is about to run with, written durably before it,
    /// so that [`ResultCache::load_attachment`] can give a DEL everything it needs from this
    /// file alone, even when the process and every other record of the ADD are lost half-way
    /// (a reboot keeps what the plugins leased on disk). Its result goes beside it
    /// ([`ResultCache::save_result`]); a result an earlier ADD of the same attachment left goes.
    pub fn save_attachment(
        &self,
        network: &Network,
        attachment: &Attachment,
    ) -> Result<(), CniError> {
        self.remove_result(&attachment.container_id, &attachment.ifname)?;
        self.write(Record {
            kind: KIND.to_string(),
            container_id: attachment.container_id.clone(),
            if_name: attachment.ifname.clone(),
            result: Value::Null,
            network: Some(network.to_conflist()),
            netns: attachment.netns.clone(),
            args: attachment.args.clone(),
            capability_args: attachment.capabilities.to_json(),
        })
    }

    /// The network and attachment saved with `container_id`'s `ifname` by
    /// [`ResultCache::save_attachment`]; None when there is no such file or it was saved
    /// without them.
    pub fn load_attachment(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<(Network, Attachment)>, CniError> {
        let Some((path, record)) = self.read(container_id, ifname)? else {
            return Ok(None);
        };
        let Some(network) = record.network else {
            return Ok(None);
        };
        let network = serde_json::to_vec(&network)
            .map_err(|e| e.to_string())
            .and_then(|b| Network::from_conflist_bytes(&b))
            .map_err(|e| cache_error(&path, format!("saved network: {e}")))?;
        let attachment = Attachment {
            container_id: record.container_id,
            netns: record.netns,
            ifname: record.if_name,
            args: record.args,
            // Offered again exactly as they were at ADD, by their JSON names.
            capabilities: RuntimeCapabilities {
                other: record.capability_args.into_iter().collect(),
                ..Default::default()
            },
        };
        Ok(Some((network, attachment)))
    }

    /// The final result of the attachment saved with [`ResultCache::save_attachment`], beside
    /// its record: atomic, not durable (see the module's doc).
    pub fn save_result(
        &self,
        container_id: &str,
        ifname: &str,
        result: &CniResult,
    ) -> Result<(), CniError> {
        let path = self.result_path(container_id, ifname)?;
        let bytes = serde_json::to_vec(result.raw()).map_err(|e| cache_error(&path, e))?;
        berth_common::atomic::write_atomic_unsynced_with_mode(&path, &bytes, 0o600)
            .map_err(|e| cache_error(&path, e))
    }

    fn remove_result(&self, container_id: &str, ifname: &str) -> Result<(), CniError> {
        let path = self.result_path(container_id, ifname)?;
        remove_if_present(&path)
    }

    fn write(&self, record: Record) -> Result<(), CniError> {
        let path = self.path(&record.container_id, &record.if_name)?;
        let bytes = serde_json::to_vec(&record).map_err(|e| cache_error(&path, e))?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| cache_error(&self.dir, e))?;
        berth_common::atomic::write_atomic_with_mode(&path, &bytes, 0o600)
            .map_err(|e| cache_error(&path, e))
    }

    /// The cached result, or None when there is none: from the result file, else from the
    /// record (an older agent's). A result file a power cut left empty or torn counts as none.
    pub fn load(&self, container_id: &str, ifname: &str) -> Result<Option<CniResult>, CniError> {
        let result_path = self.result_path(container_id, ifname)?;
        match std::fs::read(&result_path) {
            Ok(bytes) => match CniResult::from_slice(&bytes) {
                Ok(result) => return Ok(Some(result)),
                Err(e) => {
                    tracing::warn!(file = %result_path.display(), "unreadable CNI result: {e}; as if there were none")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(cache_error(&result_path, e)),
        }
        let Some((path, record)) = self.read(container_id, ifname)? else {
            return Ok(None);
        };
        if record.result.is_null() {
            // An ADD that never finished.
            return Ok(None);
        }
        CniResult::from_json(record.result)
            .map(Some)
            .map_err(|e| cache_error(&path, e))
    }

    /// The record of `container_id`'s `ifname` with its file's path; None when there is none.
    fn read(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<(PathBuf, Record)>, CniError> {
        let path = self.path(container_id, ifname)?;
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(cache_error(&path, e)),
        };
        let record = read_record(&bytes).map_err(|e| cache_error(&path, e))?;
        Ok(Some((path, record)))
    }

    /// Forgets the attachment, its result first (a crash between the two leaves the record,
    /// which [`ResultCache::list`] finds, never a result alone); a missing one is fine.
    pub fn remove(&self, container_id: &str, ifname: &str) -> Result<(), CniError> {
        self.remove_result(container_id, ifname)?;
        remove_if_present(&self.path(container_id, ifname)?)
    }

    /// Every cached attachment as (container id, interface name), for restart reconciliation.
    /// Unreadable files are skipped with a warning.
    pub fn list(&self) -> Result<Vec<(String, String)>, CniError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(cache_error(&self.dir, e)),
        };
        let mut found = Vec::new();
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| read_record(&b))
            {
                Ok(record) => found.push((record.container_id, record.if_name)),
                Err(e) => {
                    tracing::warn!(file = %path.display(), "unreadable CNI result cache file: {e}")
                }
            }
        }
        found.sort();
        Ok(found)
    }
}

fn remove_if_present(path: &Path) -> Result<(), CniError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(cache_error(path, e)),
    }
}

fn read_record(bytes: &[u8]) -> Result<Record, String> {
    let record: Record = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if record.kind != KIND {
        return Err(format!("unknown record kind {:?}", record.kind));
    }
    Ok(record)
}

fn cache_error(path: &Path, e: impl ToString) -> CniError {
    CniError::Cache {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::tests::{BRIDGE_040, BRIDGE_100};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn save_load_remove_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(dir.path().join("results"));
        assert_eq!(cache.load("abc123", "eth0").unwrap(), None);
        let result = CniResult::from_slice(BRIDGE_100.as_bytes()).unwrap();
        cache.save("abc123", "eth0", &result).unwrap();
        assert_eq!(cache.load("abc123", "eth0").unwrap(), Some(result));
        assert_eq!(
            cache.list().unwrap(),
            vec![("abc123".to_string(), "eth0".to_string())]
        );

        // Overwrite keeps one file and leaves no temp file behind.
        let older = CniResult::from_slice(BRIDGE_040.as_bytes()).unwrap();
        cache.save("abc123", "eth0", &older).unwrap();
        assert_eq!(cache.load("abc123", "eth0").unwrap(), Some(older));
        assert_eq!(names_in(cache.dir()), ["abc123-eth0.json"]);

        cache.remove("abc123", "eth0").unwrap();
        cache.remove("abc123", "eth0").unwrap();
        assert_eq!(cache.load("abc123", "eth0").unwrap(), None);
        assert!(cache.list().unwrap().is_empty());
    }

    #[test]
    fn keys_that_would_escape_the_dir_are_refused() {
        let cache = ResultCache::new("/nonexistent");
        assert!(cache.path("../etc", "eth0").is_err());
        assert!(cache.path("abc", "a/b").is_err());
        assert!(cache.path("", "eth0").is_err());
    }

    #[test]
    fn corrupt_cache_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(dir.path());
        std::fs::write(dir.path().join("abc-eth0.json"), b"{").unwrap();
        let err = cache.load("abc", "eth0").unwrap_err().to_string();
        assert!(err.contains("abc-eth0.json"), "{err}");
        assert!(cache.list().unwrap().is_empty());
    }

    /// A reboot empties `state`, where the pod kept the network its ADD ran on: the DEL after
    /// it runs from the cache file alone, with the same network, netns, CNI_ARGS and
    /// capabilities.
    #[test]
    fn an_attachment_saved_with_its_network_loads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(dir.path());
        let network = Network::from_conflist_bytes(
            br#"{"cniVersion": "1.0.0", "name": "podnet", "disableCheck": true, "plugins": [
                {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}},
                {"type": "portmap", "capabilities": {"portMappings": true}}]}"#,
        )
        .unwrap();
        let mut attachment =
            Attachment::new("abc123", "/run/berth/pods/abc123/ns/net").with_pod("ns", "p", "u1");
        attachment.capabilities.port_mappings = vec![crate::PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: String::new(),
        }];
        let result = CniResult::from_slice(BRIDGE_100.as_bytes()).unwrap();
        cache.save_attachment(&network, &attachment).unwrap();
        assert_eq!(
            cache.load("abc123", "eth0").unwrap(),
            None,
            "an ADD not finished"
        );
        assert!(cache.load_attachment("abc123", "eth0").unwrap().is_some());
        cache.save_result("abc123", "eth0", &result).unwrap();
        let (n, a) = cache.load_attachment("abc123", "eth0").unwrap().unwrap();
        assert_eq!((n.name.as_str(), n.disable_check), ("podnet", true));
        assert_eq!(n.plugins, network.plugins);
        assert_eq!(
            (&a.container_id, &a.netns, &a.ifname, &a.args),
            (
                &attachment.container_id,
                &attachment.netns,
                &attachment.ifname,
                &attachment.args
            )
        );
        assert_eq!(a.capabilities.to_json(), attachment.capabilities.to_json());
        assert_eq!(cache.load("abc123", "eth0").unwrap(), Some(result.clone()));

        // A result saved without them (an older agent's) has none to give.
        cache.save("def456", "eth0", &result).unwrap();
        assert!(cache.load_attachment("def456", "eth0").unwrap().is_none());
        assert!(cache.load_attachment("nothing", "eth0").unwrap().is_none());
    }

    fn podnet() -> (Network, Attachment) {
        let network = Network::from_conflist_bytes(
            br#"{"cniVersion": "1.0.0", "name": "podnet", "plugins": [{"type": "bridge"}]}"#,
        )
        .unwrap();
        (
            network,
            Attachment::new("abc123", "/run/berth/pods/abc123/ns/net"),
        )
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    /// The record written before the ADD is the one a DEL reads after a reboot: the result
    /// goes beside it (0600, as the record), and the record is not written again.
    #[test]
    fn the_result_goes_beside_the_record_written_before_the_add() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(dir.path());
        let (network, attachment) = podnet();
        cache.save_attachment(&network, &attachment).unwrap();
        let record = dir.path().join("abc123-eth0.json");
        let before = (
            std::fs::read(&record).unwrap(),
            std::fs::metadata(&record).unwrap().ino(),
        );
        let result = CniResult::from_slice(BRIDGE_100.as_bytes()).unwrap();
        cache.save_result("abc123", "eth0", &result).unwrap();
        assert_eq!(
            (
                std::fs::read(&record).unwrap(),
                std::fs::metadata(&record).unwrap().ino()
            ),
            before,
            "the record is untouched"
        );
        assert_eq!(
            names_in(dir.path()),
            ["abc123-eth0.json", "abc123-eth0.result"]
        );
        let mode = std::fs::metadata(dir.path().join("abc123-eth0.result"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(cache.load("abc123", "eth0").unwrap(), Some(result));
        assert_eq!(
            cache.list().unwrap(),
            vec![("abc123".to_string(), "eth0".to_string())],
            "one attachment"
        );
        cache.remove("abc123", "eth0").unwrap();
        assert!(names_in(dir.path()).is_empty());
    }

    /// A power cut may take the result file or leave it empty: the record still gives its DEL
    /// the network and attachment, with no prevResult, and a new ADD's record drops a result
    /// an earlier one left.
    #[test]
    fn a_result_lost_or_torn_is_none_and_the_record_still_serves_del() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(dir.path());
        let (network, attachment) = podnet();
        cache.save_attachment(&network, &attachment).unwrap();
        let result = CniResult::from_slice(BRIDGE_100.as_bytes()).unwrap();
        cache.save_result("abc123", "eth0", &result).unwrap();
        let result_file = dir.path().join("abc123-eth0.result");
        for torn in [&b""[..], &b"{\"cniVersion\": \"1.0"[..]] {
            std::fs::write(&result_file, torn).unwrap();
            assert_eq!(cache.load("abc123", "eth0").unwrap(), None);
            assert!(cache.load_attachment("abc123", "eth0").unwrap().is_some());
        }
        std::fs::remove_file(&result_file).unwrap();
        assert_eq!(cache.load("abc123", "eth0").unwrap(), None);
        assert!(cache.load_attachment("abc123", "eth0").unwrap().is_some());

        cache.save_result("abc123", "eth0", &result).unwrap();
        cache.save_attachment(&network, &attachment).unwrap();
        assert_eq!(cache.load("abc123", "eth0").unwrap(), None, "a new ADD's");
        assert_eq!(names_in(dir.path()), ["abc123-eth0.json"]);
    }
}
