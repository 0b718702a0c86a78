//! berth-cri: the CRI v1 `RuntimeService` and `ImageService` over gRPC.
//!
//! This crate is the edge: it translates CRI messages into calls on `berth_podsandbox::Pods`
//! (and `berth_image::Images` for the ImageService), none of which knows gRPC, and maps their
//! errors to gRPC status codes. One file per RPC, named as in containerd's
//! `internal/cri/server` (`runtime/container_start.rs`, `image/image_pull.rs`, …); `service`
//! holds what the handlers share (ids resolved or NotFound, CreateContainer's inputs, error
//! codes); `metrics` is the tower layer that gives every RPC a tracing span and its metrics.
//! The streaming server (Exec/Attach/PortForward) and the stats and event handlers go beside
//! them.

pub mod authority;
mod image;
pub mod metrics;
mod newer_fields;
mod runtime;
mod service;
pub mod streaming;
mod unimplemented;

use std::sync::{Arc, RwLock};

use berth_image::Images;
use berth_podsandbox::Pods;
use berth_runtime::CgroupDriver;
use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tonic::transport::server::Router;
use tonic::transport::Server;

pub use metrics::{CriMetrics, ObserveLayer};

/// CRI messages may be large (ListContainers on a busy node); kubelet allows 16 MiB.
const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// What the CRI services need to know about the agent they run in.
#[derive(Debug, Clone)]
pub struct CriOptions {
    /// Reported by `RuntimeConfig`.
    pub cgroup_driver: CgroupDriver,
    /// The effective configuration as JSON, returned by a verbose `Status`.
    pub config_json: String,
    /// Whether pods may have their own user namespace (idmapped mounts work under the root dir).
    pub user_namespaces: bool,
}

/// State shared by every RPC handler.
#[derive(Debug)]
pub(crate) struct Shared {
    options: CriOptions,
    /// The pod CIDR kubelet last pushed with UpdateRuntimeConfig ("" until then).
    pod_cidr: RwLock<String>,
}

/// The CRI RuntimeService implementation.
#[derive(Clone)]
pub struct RuntimeService {
    shared: Arc<Shared>,
    pods: Arc<Pods>,
    streaming: Arc<berth_streaming::Server>,
}

/// The CRI ImageService implementation.
#[derive(Clone)]
pub struct ImageService {
    images: Arc<Images>,
}

/// Builds the tonic router serving both CRI services, wrapped in the metrics and tracing layer.
pub fn router(
    options: CriOptions,
    pods: Arc<Pods>,
    streaming: Arc<berth_streaming::Server>,
    metrics: Arc<CriMetrics>,
) -> Router<
    tower::layer::util::Stack<
        newer_fields::NewerFieldsLayer,
        tower::layer::util::Stack<ObserveLayer, tower::layer::util::Identity>,
    >,
> {
    let shared = Arc::new(Shared {
        options,
        pod_cidr: RwLock::new(String::new()),
    });
    let runtime = RuntimeServiceServer::new(RuntimeService {
        shared,
        pods: pods.clone(),
        streaming,
    })
    .max_decoding_message_size(MAX_MESSAGE_SIZE)
    .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let image = ImageServiceServer::new(ImageService {
        images: pods.images.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_SIZE)
    .max_encoding_message_size(MAX_MESSAGE_SIZE);
    Server::builder()
        .layer(ObserveLayer::new(metrics))
        .layer(newer_fields::NewerFieldsLayer)
        .add_service(runtime)
        .add_service(image)
}
