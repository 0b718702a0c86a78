//! berth-common: the ground floor every berth crate stands on. Small helpers that would
//! otherwise be written once per crate: atomic file writes (durable, or unsynced for tmpfs),
//! ids and their prefix resolution, CRI timestamps, `/proc` figures, shared metric labels and buckets. No
//! threads and no async runtime, so the monitor and the executor use it too.

pub mod atomic;
pub mod crash;
pub mod fs;
pub mod ids;
pub mod metrics;
pub mod notify;
pub mod procfs;
pub mod time;
