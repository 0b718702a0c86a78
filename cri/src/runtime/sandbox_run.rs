//! RunPodSandbox: returns only when the sandbox is Ready.

use berth_podsandbox::Sandboxes;
use k8s_cri::v1::{RunPodSandboxRequest, RunPodSandboxResponse};
use std::sync::Arc;
use tonic::Status;

use super::sandbox_convert::sandbox_spec;
use crate::service::sandbox_error;

pub(super) async fn run_pod_sandbox(
    sandboxes: &Arc<Sandboxes>,
    user_namespaces: bool,
    request: RunPodSandboxRequest,
) -> Result<RunPodSandboxResponse, Status> {
    let config = request
        .config
        .ok_or_else(|| Status::invalid_argument("berth: RunPodSandbox needs a config"))?;
    let spec = sandbox_spec(config, request.runtime_handler)?;
    if spec.userns.is_some() && !user_namespaces {
        return Err(Status::invalid_argument(
            "berth: user namespace: this node has no idmapped mounts under berth's root, so pods cannot have their own (the Status RPC does not offer them)",
        ));
    }
    let id = sandboxes.run(spec).await.map_err(sandbox_error)?;
    crate::metrics::record_pod(&id);
    Ok(RunPodSandboxResponse { pod_sandbox_id: id })
}
