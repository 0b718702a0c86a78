//! The sandbox's record: `<state>/pods/<id>/sandbox.json`, written atomically before and after
//! each state change, so a restarted agent replays it instead of guessing.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::spec::SandboxSpec;

pub const RECORD_FILE: &str = "sandbox.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    /// Being built: a record left in this state by a crash is rolled back at start.
    Creating,
    Ready,
    NotReady,
}

/// The monitor process, identified by pid and start time so a reused pid is not mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorProcess {
    pub pid: u32,
    pub start_time: u64,
}

impl MonitorProcess {
    pub fn of(pid: u32) -> Option<MonitorProcess> {
        start_time(pid).map(|start_time| MonitorProcess { pid, start_time })
    }

    /// The process still exists and is the one we started.
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }
}

/// Field 22 of /proc/<pid>/stat (start time in clock ticks since boot); None for a zombie.
fn start_time(pid: u32) -> Option<u64> {
    let fields = berth_common::procfs::stat_fields(pid)?;
    if fields.first().is_some_and(|state| state == "Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NetworkStatus {
    /// Primary first.
    pub ips: Vec<String>,
    /// The CNI result as JSON, for verbose status.
    pub cni_result: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub spec: SandboxSpec,
    pub state: SandboxState,
    /// Unix nanoseconds.
    pub created_at: i64,
    pub monitor: Option<MonitorProcess>,
    pub network: NetworkStatus,
    /// Whether the network was set up (CNI ADD succeeded) and not yet torn down.
    pub network_attached: bool,
    /// Whether the pod's /dev/shm tmpfs is mounted.
    pub shm_mounted: bool,
    /// cgroup directories berth made for the pod (kubelet usually makes them itself); removed
    /// with the sandbox.
    #[serde(default)]
    pub cgroups_created: Vec<PathBuf>,
}

impl SandboxRecord {
    pub fn dir(state: &Path, id: &str) -> PathBuf {
        state.join("pods").join(id)
    }

    pub fn save(&self, pod_dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        berth_common::atomic::write_atomic_unsynced(&pod_dir.join(RECORD_FILE), &bytes)
    }

    pub fn load(pod_dir: &Path) -> std::io::Result<SandboxRecord> {
        let bytes = std::fs::read(pod_dir.join(RECORD_FILE))?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = MonitorProcess::of(std::process::id()).unwrap();
        assert!(me.alive());
        let impostor = MonitorProcess {
            pid: me.pid,
            start_time: me.start_time + 1,
        };
        assert!(!impostor.alive());
    }
}
