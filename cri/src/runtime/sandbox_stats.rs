//! PodSandboxStats: one ready pod's cgroup, network and processes, with its containers' stats.

use berth_podsandbox::sandbox::record::SandboxState;
use berth_podsandbox::Pods;
use k8s_cri::v1::{PodSandboxStatsRequest, PodSandboxStatsResponse};
use tonic::Status;

use super::sandbox_convert::cri_sandbox_stats;
use crate::service::find_sandbox;

pub(super) async fn pod_sandbox_stats(
    pods: &Pods,
    r: PodSandboxStatsRequest,
) -> Result<PodSandboxStatsResponse, Status> {
    crate::metrics::record_pod(&r.pod_sandbox_id);
    let record = find_sandbox(pods, &r.pod_sandbox_id)?;
    // As containerd: a pod that is not ready has nothing to measure (Unavailable).
    if record.state != SandboxState::Ready {
        return Err(Status::unavailable(format!(
            "berth: pod sandbox {} is not ready: no stats",
            record.id
        )));
    }
    let sampled = pods.sandbox_usage(vec![record], false).await;
    Ok(PodSandboxStatsResponse {
        stats: sampled.first().map(cri_sandbox_stats),
    })
}
