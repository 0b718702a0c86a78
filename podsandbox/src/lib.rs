//! berth-podsandbox: the agent's view of a pod and everything in it.
//!
//! `sandbox` builds, stops and removes pod sandboxes (namespaces through the per-pod monitor,
//! pod files, /dev/shm, CNI networking, one record per pod); `container` manages the containers
//! in them (records, rootfs and bundle, lifecycle through the monitor, resource updates, ExecSync).
//! `monitor_client` is the agent's one way to talk to a pod's monitor; `pods` composes sandboxes,
//! containers and images (snapshot leases, a pod's containers taken down with it). Nothing here
//! knows gRPC.

pub mod container;
pub mod events;
pub mod monitor_client;
pub mod pods;
pub mod sandbox;
mod standby;

pub use container::{ContainerMetrics, Containers};
pub use events::{EventKind, EventMetrics, Events, PodEvent, Subscription};
pub use pods::{ContainerSample, PodError, PodUsage, Pods};
pub use sandbox::{PodNetwork, SandboxError, SandboxMetrics, Sandboxes};
