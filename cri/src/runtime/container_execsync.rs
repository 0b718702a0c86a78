//! ExecSync: a command in a running container's namespaces and cgroup, through `berthd init
//! exec`; output captured (16 MiB less the reply's framing, both streams together), killed on
//! timeout.

use std::time::Duration;

use berth_podsandbox::container::{ContainerState, ExecError};
use berth_podsandbox::Pods;
use k8s_cri::v1::{ExecSyncRequest, ExecSyncResponse};
use tonic::Status;

use crate::service::find_container;

pub(super) async fn exec_sync(pods: &Pods, r: ExecSyncRequest) -> Result<ExecSyncResponse, Status> {
    crate::metrics::record_container(&r.container_id);
    let record = find_container(pods, &r.container_id)?;
    if record.state() != ContainerState::Running {
        return Err(Status::failed_precondition(format!(
            "berth: container {} is not running",
            record.id
        )));
    }
    if r.cmd.is_empty() {
        return Err(Status::invalid_argument("berth: ExecSync needs a command"));
    }
    let timeout = Duration::from_secs(r.timeout.max(0) as u64);
    match pods.exec_sync(&record, &r.cmd, timeout).await {
        Ok(out) => Ok(ExecSyncResponse {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
        }),
        Err(ExecError::TimedOut(d)) => Err(Status::deadline_exceeded(format!(
            "berth: ExecSync in container {}: command {:?} timed out after {}s and was killed",
            record.id,
            r.cmd,
            d.as_secs()
        ))),
        Err(ExecError::Failed(e)) => Err(Status::unknown(format!(
            "berth: ExecSync in container {}: {e}",
            record.id
        ))),
    }
}
