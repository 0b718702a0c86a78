//! ContainerStats and ListContainerStats, the agent's half: a sample of a container's cgroup
//! (`berth_runtime::cgroups::stats`), its CPU rate over the last second or more, and its writable
//! layer's size, which is measured off the RPC path by [`Containers::refresh_layer_usage`] and
//! only read from the cache here (walking an upper dir can take seconds).

use berth_common::fs::DiskUsage;
use berth_runtime::cgroups::detail::{self, CgroupDetail};
use berth_runtime::cgroups::stats::{self, CgroupStats};
use berth_runtime::cgroups::update::Layout;

use super::record::{ContainerRecord, ContainerState};
use super::Containers;

/// One sample of a container's usage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerUsage {
    /// When the cgroup was read, Unix nanoseconds.
    pub timestamp: i64,
    pub cgroup: CgroupStats,
    /// CPU use over the last second or more, in billionths of a core; `None` for the first
    /// sample of a container (kubelet then computes it from two of its own).
    pub nano_cores: Option<u64>,
    /// The writable layer as last measured, and when.
    pub writable_layer: Option<(DiskUsage, i64)>,
}

/// What ListPodSandboxMetrics reports of a container beyond its [`ContainerUsage`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerDetail {
    pub cgroup: CgroupDetail,
    /// The filesystem its writable layer is on; `None` if it could not be read.
    pub filesystem: Option<LayerFilesystem>,
    /// The writable layer: as last measured in the background, or measured now if it never
    /// was (a container started within the last refresh interval has a small one).
    pub writable_layer: DiskUsage,
}

/// The filesystem holding a container's writable layer, as `statvfs` gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerFilesystem {
    /// `major:minor` of the device.
    pub device: String,
    pub capacity_bytes: u64,
    pub available_bytes: u64,
    pub inodes: u64,
    pub inodes_free: u64,
}

impl LayerFilesystem {
    fn of(path: &std::path::Path) -> Option<LayerFilesystem> {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(path).ok()?.dev();
        let vfs = nix::sys::statvfs::statvfs(path).ok()?;
        let block = vfs.fragment_size();
        Some(LayerFilesystem {
            device: format!("{}:{}", libc::major(dev), libc::minor(dev)),
            capacity_bytes: vfs.blocks().saturating_mul(block),
            available_bytes: vfs.blocks_available().saturating_mul(block),
            inodes: vfs.files(),
            inodes_free: vfs.files_free(),
        })
    }
}

/// The shortest time a CPU rate is measured over.
const MIN_RATE_WINDOW_NS: i64 = 1_000_000_000;

/// A CPU sample: when, and the cumulative CPU time then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CpuSample {
    pub at: i64,
    pub cpu_ns: u64,
}

/// A container's CPU rate: the sample it was last measured from, and the rate then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CpuRate {
    pub base: CpuSample,
    pub rate: Option<u64>,
}

/// CPU time used between two samples per second of wall time, in nano-cores (1e9 = one core
/// busy). `None` unless time went forward; a counter that went back (a new cgroup) counts 0.
pub(super) fn nano_cores(previous: CpuSample, now: CpuSample) -> Option<u64> {
    let wall = now.at.checked_sub(previous.at).filter(|d| *d > 0)? as u128;
    let cpu = now.cpu_ns.saturating_sub(previous.cpu_ns) as u128;
    u64::try_from(cpu * 1_000_000_000 / wall).ok()
}

impl Containers {
    /// A sample of `record`'s usage now. A container without a cgroup, or whose cgroup has just
    /// gone, is a sample without values.
    pub fn usage(&self, record: &ContainerRecord) -> ContainerUsage {
        let timestamp = berth_common::time::now_nanos();
        let cgroup = self
            .layout(record)
            .map(|layout| stats::read_in(&layout))
            .unwrap_or_default();
        let nano_cores = cgroup.cpu_usage_ns.and_then(|cpu_ns| {
            let now = CpuSample {
                at: timestamp,
                cpu_ns,
            };
            let mut samples = self.cpu_samples.lock().unwrap_or_else(|e| e.into_inner());
            match samples.get_mut(&record.id) {
                None => {
                    samples.insert(
                        record.id.clone(),
                        CpuRate {
                            base: now,
                            rate: None,
                        },
                    );
                    None
                }
                // Calls in quick succession (`crictl stats` then `crictl stats -o json`) get
                // the rate measured over the last second or more, not over a few microseconds.
                Some(r) if now.at - r.base.at < MIN_RATE_WINDOW_NS => r.rate,
                Some(r) => {
                    r.rate = nano_cores(r.base, now);
                    r.base = now;
                    r.rate
                }
            }
        });
        let writable_layer = self
            .layer_usage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&record.id)
            .copied();
        ContainerUsage {
            timestamp,
            cgroup,
            nano_cores,
            writable_layer,
        }
    }

    /// The rest of what the CRI metrics report of `record`. Blocking: it also counts the open
    /// descriptors of the container's processes.
    pub fn detail(&self, record: &ContainerRecord) -> ContainerDetail {
        ContainerDetail {
            cgroup: self
                .layout(record)
                .map(|layout| detail::read_detail(&layout))
                .unwrap_or_default(),
            filesystem: LayerFilesystem::of(&record.layer_dir),
            writable_layer: self.layer_usage_now(record),
        }
    }

    fn layer_usage_now(&self, record: &ContainerRecord) -> DiskUsage {
        let cached = self
            .layer_usage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&record.id)
            .map(|(usage, _)| *usage);
        cached.unwrap_or_else(|| {
            let usage = berth_common::fs::disk_usage(&record.layer_dir.join("upper"));
            self.layer_usage
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(record.id.clone(), (usage, berth_common::time::now_nanos()));
            usage
        })
    }

    /// Where a running container's cgroup files are. Probed once: it does not change in a
    /// container's life.
    fn layout(&self, record: &ContainerRecord) -> Option<Layout> {
        let cgroup = record
            .cgroup
            .as_deref()
            .filter(|_| record.state() == ContainerState::Running)?;
        let layout = self
            .layouts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(record.id.clone())
            .or_insert_with(|| Layout::probe(cgroup))
            .clone();
        Some(layout)
    }

    /// Measures every container's writable layer (its overlay upper dir) into the cache that
    /// [`Containers::usage`] reads, and forgets removed containers. Blocking and slow on big
    /// layers: the agent runs it in the background.
    pub fn refresh_layer_usage(&self) {
        let layers: Vec<(String, std::path::PathBuf)> = self
            .lock()
            .values()
            .map(|r| (r.id.clone(), r.layer_dir.join("upper")))
            .collect();
        let mut measured = std::collections::HashMap::new();
        for (id, upper) in layers {
            let usage = berth_common::fs::disk_usage(&upper);
            measured.insert(id, (usage, berth_common::time::now_nanos()));
        }
        *self.layer_usage.lock().unwrap_or_else(|e| e.into_inner()) = measured;
        let ids: std::collections::HashSet<String> = self.lock().keys().cloned().collect();
        self.cpu_samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id, _| ids.contains(id));
        self.layouts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id, _| ids.contains(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(at: i64, cpu_ns: u64) -> CpuSample {
        CpuSample { at, cpu_ns }
    }

    #[test]
    fn nano_cores_is_cpu_time_over_wall_time() {
        // One core busy for a second.
        assert_eq!(
            nano_cores(at(0, 0), at(1_000_000_000, 1_000_000_000)),
            Some(1_000_000_000)
        );
        // Two cores for half a second.
        assert_eq!(
            nano_cores(at(10, 5), at(500_000_010, 1_000_000_005)),
            Some(2_000_000_000)
        );
        assert_eq!(nano_cores(at(5, 0), at(5, 100)), None, "no time passed");
        assert_eq!(nano_cores(at(9, 0), at(5, 100)), None, "time went back");
        assert_eq!(
            nano_cores(at(0, 900), at(1_000, 100)),
            Some(0),
            "a new cgroup"
        );
    }
}
