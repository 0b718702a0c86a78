//! ListPodSandboxStats: the stats of every ready pod the filter selects (id prefix, labels).

use berth_podsandbox::sandbox::record::SandboxState;
use berth_podsandbox::Pods;
use k8s_cri::v1::{ListPodSandboxStatsRequest, ListPodSandboxStatsResponse};
use tonic::Status;

use super::sandbox_convert::cri_sandbox_stats;

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
        .filter(|s| s.id.starts_with(&f.id))
        .filter(|s| {
            f.label_selector
                .iter()
                .all(|(k, v)| s.spec.labels.get(k) == Some(v))
        })
        .collect();
    let stats = pods
        .sandbox_usage(selected)
        .await
        .iter()
        .map(cri_sandbox_stats)
        .collect();
    Ok(ListPodSandboxStatsResponse { stats })
}
