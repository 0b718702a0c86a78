//! berth-podsandbox: pod sandbox lifecycle.
//!
//! This crate will own sandbox ids and name reservation, the pod's pinned namespaces, hostname,
//! resolv.conf, hosts and shm, the client of the per-pod monitor, and sandbox state. It is empty
//! until the pod sandbox issue lands; the CRI server answers its RPCs with `Unimplemented`.
