//! berth-common: the ground floor every berth crate stands on. Small helpers that would
//! otherwise be written once per crate: atomic file writes, ids and their prefix resolution.
//! std only, so the monitor and the executor can use it too.

pub mod atomic;
pub mod ids;
