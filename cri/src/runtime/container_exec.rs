//! Exec: a command in a running container with its stdio streamed. The RPC only checks the
//! request and returns the streaming server's URL for it; the session runs when the client
//! connects (`berth_streaming`, `crate::streaming`).

use berth_podsandbox::container::{ContainerRecord, ContainerState};
use berth_podsandbox::Pods;
use berth_streaming::{ExecRequest as StreamExec, Request, Server};
use k8s_cri::v1::{ExecRequest, ExecResponse};
use tonic::Status;

use super::streaming_url;
use crate::service::find_container;

pub(super) fn exec(pods: &Pods, server: &Server, r: ExecRequest) -> Result<ExecResponse, Status> {
    crate::metrics::record_container(&r.container_id);
    check_stdio("Exec", &r.container_id, r.tty, r.stdin, r.stdout, r.stderr)?;
    if r.cmd.is_empty() {
        return Err(Status::invalid_argument("berth: Exec needs a command"));
    }
    let record = running_container(pods, &r.container_id)?;
    let url = streaming_url(
        server,
        Request::Exec(StreamExec {
            container_id: record.id,
            cmd: r.cmd,
            tty: r.tty,
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr,
        }),
    )?;
    Ok(ExecResponse { url })
}

/// The container, if it is running (Exec and Attach need it so, as containerd does).
pub(super) fn running_container(pods: &Pods, id: &str) -> Result<ContainerRecord, Status> {
    let record = find_container(pods, id)?;
    if record.state() != ContainerState::Running {
        return Err(Status::failed_precondition(format!(
            "berth: container {} is not running",
            record.id
        )));
    }
    Ok(record)
}

/// What Exec and Attach both refuse (kubelet's streaming server refuses the same).
pub(super) fn check_stdio(
    rpc: &str,
    container_id: &str,
    tty: bool,
    stdin: bool,
    stdout: bool,
    stderr: bool,
) -> Result<(), Status> {
    if container_id.is_empty() {
        return Err(Status::invalid_argument(format!(
            "berth: {rpc}: container_id is required"
        )));
    }
    if tty && stderr {
        return Err(Status::invalid_argument(format!(
            "berth: {rpc}: tty and stderr cannot both be true (a terminal has one output stream)"
        )));
    }
    if !(stdin || stdout || stderr) {
        return Err(Status::invalid_argument(format!(
            "berth: {rpc}: one of stdin, stdout, and stderr must be set"
        )));
    }
    Ok(())
}
