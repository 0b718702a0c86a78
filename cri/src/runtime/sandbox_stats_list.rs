//! ListPodSandboxStats: the stats of every ready pod the filter selects (id prefix, labels).

use berth_podsandbox::sandbox::record::SandboxState;
use berth_podsandbox::Pods;
use k8s_cri::v1::{ListPodSandboxStatsRequest, ListPodSandboxStatsResponse};
use tonic::Status;

use super::sandbox_convert::cri_sandbox_stats;
use crate::service::sandbox_selected;

pub(super) async fn list_pod_sandbox_stats(
    pods: &Pods,
    r: ListPodSandboxStatsRequest,
) -> Result<ListPodSandboxStatsResponse, Status> {
    let f = r.filter.unwrap_or_default();
    let selected: Vec<_> = pods
        .sandboxes
        .list()
        .into_iter()
        .filter(|s| s.state == SandboxState::Ready)
        .filter(|s| sandbox_selected(s, &f.id, &f.label_selector))
        .collect();
    let stats = pods
        .sandbox_usage(selected, false)
        .await
        .iter()
        .map(cri_sandbox_stats)
        .collect();
    Ok(ListPodSandboxStatsResponse { stats })
}
