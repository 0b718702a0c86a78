//! Attach: a running container's own stdio, streamed. The RPC checks the request and returns
//! the streaming server's URL; the session goes through the pod's monitor, which holds the
//! container's stdio (`berth_podsandbox::container::attach`).

use berth_podsandbox::Pods;
use berth_streaming::{AttachRequest as StreamAttach, Request, Server};
use k8s_cri::v1::{AttachRequest, AttachResponse};
use tonic::Status;

use super::container_exec::{check_stdio, running_container};
use super::streaming_url;

pub(super) fn attach(
    pods: &Pods,
    server: &Server,
    r: AttachRequest,
) -> Result<AttachResponse, Status> {
    crate::metrics::record_container(&r.container_id);
    check_stdio(
        "Attach",
        &r.container_id,
        r.tty,
        r.stdin,
        r.stdout,
        r.stderr,
    )?;
    let record = running_container(pods, &r.container_id)?;
    let url = streaming_url(
        server,
        Request::Attach(StreamAttach {
            container_id: record.id,
            tty: r.tty,
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr,
        }),
    )?;
    Ok(AttachResponse { url })
}
