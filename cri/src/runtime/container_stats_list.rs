//! ListContainerStats: the stats of every container the filter selects (id prefix, pod sandbox
//! id prefix, labels). Unknown ids select nothing; that is an empty list, not an error.

use berth_podsandbox::Pods;
use k8s_cri::v1::{ListContainerStatsRequest, ListContainerStatsResponse};
use tonic::Status;

use super::container_convert::cri_container_stats;

pub(super) async fn list_container_stats(
    pods: &Pods,
    r: ListContainerStatsRequest,
) -> Result<ListContainerStatsResponse, Status> {
    let f = r.filter.unwrap_or_default();
    let selected: Vec<_> = pods
        .containers
        .fold_exits()
        .into_iter()
        .filter(|x| f.id.is_empty() || x.id.starts_with(&f.id))
        .filter(|x| f.pod_sandbox_id.is_empty() || x.sandbox_id.starts_with(&f.pod_sandbox_id))
        .filter(|x| {
            f.label_selector
                .iter()
                .all(|(k, v)| x.config.labels.get(k) == Some(v))
        })
        .collect();
    let stats = pods
        .container_usage(selected)
        .await
        .iter()
        .map(|(record, usage)| cri_container_stats(record, usage))
        .collect();
    Ok(ListContainerStatsResponse { stats })
}
