//! Pod networking through CNI: the network config comes from the watched conf dir; ADD with
//! kubelet's CNI_ARGS and runtime capabilities; DEL with the network and result saved at ADD,
//! so removal works even after the config changed or the netns is gone.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_cni::{
    Attachment, Bandwidth, CniConfig, CniInvoker, CniMetrics, DnsCapability, Network,
    NetworkWatcher, PortMapping, ResultCache, RuntimeCapabilities,
};

use super::record::{NetworkStatus, SandboxRecord};
use super::undo::Undo;

const IFNAME: &str = "eth0";
/// The network an attachment was made on, kept in the pod dir for its DEL.
const SAVED_NETWORK: &str = "cni-network";

pub struct PodNetwork {
    watcher: NetworkWatcher,
    invoker: Arc<CniInvoker>,
}

impl PodNetwork {
    /// Watches `config.conf_dir`; results are cached under `<root>/cni/results`, which a
    /// reboot keeps (as it keeps the plugins' own files, host-local's leases), each with the
    /// network and attachment its DEL needs (see [`PodNetwork::release_orphans`]). Results an
    /// older agent kept under `<state>/cni/results` move there.
    pub fn new(config: &CniConfig, root: &Path, state: &Path, metrics: CniMetrics) -> PodNetwork {
        let cache = ResultCache::new(root.join("cni/results"));
        // A result being written when the last agent was killed.
        berth_common::atomic::remove_stale_temps(cache.dir());
        move_results(&state.join("cni/results"), cache.dir());
        PodNetwork {
            watcher: NetworkWatcher::start(config.conf_dir.clone()),
            invoker: Arc::new(CniInvoker::from_config(config, cache).with_metrics(metrics)),
        }
    }

    /// Whether a valid network config exists, and why not.
    pub fn ready(&self) -> Result<(), String> {
        self.watcher.status().map(|_| ())
    }

    /// Brings up `lo`, runs CNI ADD, and registers the DEL in `undo` before doing so.
    pub(crate) async fn attach(
        &self,
        record: &SandboxRecord,
        netns: &Path,
        undo: &mut Undo,
    ) -> Result<NetworkStatus, String> {
        let network = self.watcher.status()?;
        let pod_dir = netns
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("/"));
        let saved = save_network(&network, pod_dir)?;
        let attachment = attachment(record, netns);
        berth_cni::loopback_up(netns)
            .await
            .map_err(|e| format!("bring up lo: {e}"))?;
        {
            let invoker = self.invoker.clone();
            let network = network.clone();
            let attachment = attachment.clone();
            undo.push_async("CNI DEL", move || async move {
                if let Err(e) = invoker.del(&network, &attachment).await {
                    tracing::warn!(error = %e, "rollback: CNI DEL failed");
                }
            });
        }
        let result = self
            .invoker
            .add(&network, &attachment)
            .await
            .map_err(|e| e.to_string())?;
        let ips = result.pod_ips(IFNAME);
        let ips = ips
            .primary
            .iter()
            .chain(ips.additional.iter())
            .map(|ip| ip.to_string())
            .collect();
        tracing::debug!(pod_id = %record.id, network = %network.name, saved = %saved.display(), "CNI ADD done");
        Ok(NetworkStatus {
            ips,
            cni_result: Some(result.raw().clone()),
        })
    }

    /// CNI DEL with the network saved at ADD (or the current one if that is unreadable).
    pub(crate) async fn detach(&self, record: &SandboxRecord, netns: &Path) -> Result<(), String> {
        let pod_dir = netns
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("/"));
        let network = match load_saved(pod_dir) {
            Some(n) => Arc::new(n),
            None => self.current_network()?,
        };
        self.invoker
            .del(&network, &attachment(record, netns))
            .await
            .map_err(|e| e.to_string())
    }

    /// CNI DEL of every cached attachment whose sandbox is not in `known`: after a reboot,
    /// which empties `state` and with it every pod record, or a crash between ADD and the
    /// record. Each DEL runs with the network and attachment saved beside its result (a result
    /// saved without them gets the current network and no netns); one that fails stays
    /// cached, for the next start to try again. Returns how many were released.
    pub(crate) async fn release_orphans(&self, known: &HashSet<String>) -> usize {
        let cache = self.invoker.cache();
        let cached = match cache.list() {
            Ok(cached) => cached,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the CNI results: none released");
                return 0;
            }
        };
        let mut released = 0;
        for (id, ifname) in cached.into_iter().filter(|(id, _)| !known.contains(id)) {
            let outcome = async {
                let (network, mut attachment) = match cache
                    .load_attachment(&id, &ifname)
                    .map_err(|e| e.to_string())?
                {
                    Some(saved) => saved,
                    None => (
                        (*self.current_network()?).clone(),
                        Attachment::new(id.clone(), PathBuf::new()),
                    ),
                };
                attachment.ifname = ifname.clone();
                self.invoker
                    .del(&network, &attachment)
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            match outcome {
                Ok(()) => {
                    tracing::info!(pod_id = %id, "CNI DEL of an attachment no pod has (the pod was lost with the state dir)");
                    released += 1;
                }
                Err(e) => {
                    tracing::warn!(pod_id = %id, error = %e, "CNI DEL of an attachment no pod has failed: kept for the next start")
                }
            }
        }
        released
    }

    /// The network config in the conf dir now: a DEL's last resort when the one its ADD ran
    /// with was not kept.
    fn current_network(&self) -> Result<Arc<Network>, String> {
        self.watcher
            .status()
            .map_err(|e| format!("no network config to run DEL with: {e}"))
    }

    /// Drops the cached result of an attachment we give up on.
    pub(crate) fn forget(&self, record: &SandboxRecord) {
        let _ = self.invoker.cache().remove(&record.id, IFNAME);
    }
}

/// Moves the result files in `old` (an older agent's cache) into `new`, leaving none of them
/// in both, and removes `old` once empty.
fn move_results(old: &Path, new: &Path) {
    let Ok(entries) = std::fs::read_dir(old) else {
        return;
    };
    for entry in entries.flatten() {
        let target = new.join(entry.file_name());
        let moved = std::fs::create_dir_all(new)
            .and_then(|()| std::fs::read(entry.path()))
            .and_then(|bytes| berth_common::atomic::write_atomic_with_mode(&target, &bytes, 0o600))
            .and_then(|()| std::fs::remove_file(entry.path()));
        if let Err(e) = moved {
            tracing::warn!(file = %entry.path().display(), error = %e, "cannot move a CNI result under root");
        }
    }
    let _ = std::fs::remove_dir(old);
}

fn saved_path(pod_dir: &Path, source: &Path) -> PathBuf {
    let ext = source
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("conflist");
    pod_dir.join(format!("{SAVED_NETWORK}.{ext}"))
}

fn save_network(network: &Network, pod_dir: &Path) -> Result<PathBuf, String> {
    let target = saved_path(pod_dir, &network.source);
    let bytes = std::fs::read(&network.source)
        .map_err(|e| format!("read {}: {e}", network.source.display()))?;
    berth_common::atomic::write_atomic_unsynced(&target, &bytes)
        .map_err(|e| format!("save network config: {e}"))?;
    Ok(target)
}

fn load_saved(pod_dir: &Path) -> Option<Network> {
    let entries = std::fs::read_dir(pod_dir).ok()?;
    entries
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(SAVED_NETWORK))
        .and_then(|e| Network::from_file(&e.path()).ok())
}

fn attachment(record: &SandboxRecord, netns: &Path) -> Attachment {
    let m = &record.spec.metadata;
    let mut att = Attachment::new(record.id.clone(), netns).with_pod(&m.namespace, &m.name, &m.uid);
    att.capabilities = capabilities(record);
    att
}

/// portMappings from the pod's port mappings, bandwidth from kubelet's annotations, dns from
/// its DNS config.
fn capabilities(record: &SandboxRecord) -> RuntimeCapabilities {
    let spec = &record.spec;
    let port_mappings = spec
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .filter_map(|p| {
            Some(PortMapping {
                host_port: u16::try_from(p.host_port).ok()?,
                container_port: u16::try_from(p.container_port).ok()?,
                protocol: p.protocol.clone(),
                host_ip: p.host_ip.clone(),
            })
        })
        .collect();
    let ingress = spec
        .annotations
        .get("kubernetes.io/ingress-bandwidth")
        .and_then(|q| parse_bits(q));
    let egress = spec
        .annotations
        .get("kubernetes.io/egress-bandwidth")
        .and_then(|q| parse_bits(q));
    let bandwidth = (ingress.is_some() || egress.is_some()).then(|| Bandwidth {
        // As containerd: the rate from the annotation, a burst as large as the plugin allows.
        ingress_rate: ingress.unwrap_or(0),
        ingress_burst: ingress.map(|_| u32::MAX as u64).unwrap_or(0),
        egress_rate: egress.unwrap_or(0),
        egress_burst: egress.map(|_| u32::MAX as u64).unwrap_or(0),
    });
    let dns = spec.dns.as_ref().map(|d| DnsCapability {
        servers: d.servers.clone(),
        searches: d.searches.clone(),
        options: d.options.clone(),
    });
    RuntimeCapabilities {
        port_mappings,
        bandwidth,
        dns,
        ..Default::default()
    }
}

/// A Kubernetes quantity in bits per second: `10M`, `1Gi`, `500k`, `1000`.
fn parse_bits(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        _ => return None,
    };
    Some((number * factor) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidth_quantities_parse_like_kubernetes() {
        assert_eq!(parse_bits("10M"), Some(10_000_000));
        assert_eq!(parse_bits("1Gi"), Some(1 << 30));
        assert_eq!(parse_bits("500k"), Some(500_000));
        assert_eq!(parse_bits("1000"), Some(1000));
        assert_eq!(parse_bits("1.5M"), Some(1_500_000));
        assert_eq!(parse_bits("10X"), None);
    }

    /// An agent that kept its results in `state` is upgraded with pods running: their results
    /// move under `root`, none left in both places, and the old directory goes.
    #[test]
    fn results_kept_in_state_move_under_root() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (
            dir.path().join("state/cni/results"),
            dir.path().join("root/cni/results"),
        );
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("abc-eth0.json"), "{}").unwrap();
        std::fs::write(old.join("def-eth0.json"), "[]").unwrap();
        move_results(&old, &new);
        assert!(!old.exists());
        assert_eq!(
            std::fs::read_to_string(new.join("abc-eth0.json")).unwrap(),
            "{}"
        );
        assert_eq!(
            std::fs::read_to_string(new.join("def-eth0.json")).unwrap(),
            "[]"
        );
        move_results(&old, &new);
        assert_eq!(std::fs::read_dir(&new).unwrap().count(), 2);
    }
}
