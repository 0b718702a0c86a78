//! PortForward: TCP ports inside a ready pod, streamed. The RPC checks the pod and returns the
//! streaming server's URL; each forwarded connection names its port on the stream itself.

use berth_podsandbox::sandbox::record::SandboxState;
use berth_podsandbox::Pods;
use berth_streaming::{PortForwardRequest as StreamForward, Request, Server};
use k8s_cri::v1::{PortForwardRequest, PortForwardResponse};
use tonic::Status;

use super::streaming_url;
use crate::service::find_sandbox;

pub(super) fn port_forward(
    pods: &Pods,
    server: &Server,
    r: PortForwardRequest,
) -> Result<PortForwardResponse, Status> {
    if r.pod_sandbox_id.is_empty() {
        return Err(Status::invalid_argument(
            "berth: PortForward: pod_sandbox_id is required",
        ));
    }
    if let Some(bad) = r.port.iter().find(|&&p| !(1..=65535).contains(&p)) {
        return Err(Status::invalid_argument(format!(
            "berth: PortForward: port {bad} is not a TCP port"
        )));
    }
    let record = find_sandbox(pods, &r.pod_sandbox_id)?;
    if record.state != SandboxState::Ready {
        return Err(Status::failed_precondition(format!(
            "berth: pod sandbox {} is not ready",
            record.id
        )));
    }
    let url = streaming_url(
        server,
        Request::PortForward(StreamForward {
            sandbox_id: record.id,
        }),
    )?;
    Ok(PortForwardResponse { url })
}
