//! What berth records about a container, and the states CRI reports.

use std::path::PathBuf;

use berth_runtime::monitor::protocol::ExitRecord;
use berth_runtime::spec::ContainerSpec;
use serde::{Deserialize, Serialize};

pub(super) const RECORD_FILE: &str = "container.json";
pub(super) const EXIT_FILE: &str = "exit.json";

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("container {0} not found")]
    NotFound(String),
    /// The image a create was building on was removed before its layers were leased.
    #[error("image {0} not found: removed while the container was being created")]
    ImageGone(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("container {id}: {step}: {message}")]
    Failed {
        id: String,
        step: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

/// What berth records about a container (`<state>/containers/<id>/container.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    pub pod_dir: PathBuf,
    pub config: ContainerSpec,
    /// The image as the user named it, and its id.
    pub image: String,
    pub image_id: String,
    pub stop_signal: String,
    pub log_path: PathBuf,
    pub cgroup: Option<PathBuf>,
    pub pid: i32,
    pub created_at: i64,
    pub started_at: i64,
    /// From the monitor's exit file, once the container has exited.
    pub exit: Option<ExitRecord>,
    /// Where the container's writable layer lives (`<root>/containers/<id>`).
    pub layer_dir: PathBuf,
    /// The identity the container's process runs with, as resolved into the spec.
    #[serde(default)]
    pub user: Option<ProcessUser>,
    /// The image snapshots (overlay lower dirs) the rootfs is built on, bottom first.
    #[serde(default)]
    pub layers: Vec<PathBuf>,
    /// The snapshots its image volumes are mounted from, leased like `layers`.
    #[serde(default)]
    pub volume_layers: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

impl ContainerRecord {
    /// The record in container dir `dir` as last written, if it is there and readable.
    pub(super) fn load(dir: &std::path::Path) -> Option<ContainerRecord> {
        let bytes = std::fs::read(dir.join(RECORD_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// What is known of container `id` when only its dirs are there: where they are.
    pub(super) fn unrecorded(id: &str, root: &std::path::Path) -> ContainerRecord {
        ContainerRecord {
            id: id.to_string(),
            sandbox_id: String::new(),
            pod_dir: PathBuf::new(),
            config: ContainerSpec::default(),
            image: String::new(),
            image_id: String::new(),
            stop_signal: String::new(),
            log_path: PathBuf::new(),
            cgroup: None,
            pid: 0,
            created_at: 0,
            started_at: 0,
            exit: None,
            layer_dir: root.join("containers").join(id),
            user: None,
            layers: Vec::new(),
            volume_layers: Vec::new(),
        }
    }

    pub fn state(&self) -> ContainerState {
        if self.exit.is_some() {
            ContainerState::Exited
        } else if self.started_at > 0 {
            ContainerState::Running
        } else {
            ContainerState::Created
        }
    }
}
