//! ListContainerStats: the stats of every container the filter selects (id prefix, pod sandbox
//! id prefix, labels). Unknown ids select nothing; that is an empty list, not an error.

use berth_podsandbox::Pods;
use k8s_cri::v1::{ListContainerStatsRequest, ListContainerStatsResponse};
use tonic::Status;

use super::container_convert::cri_container_stats;
use crate::service::container_selected;

pub(super) async fn list_container_stats(
    pods: &Pods,
    r: ListContainerStatsRequest,
) -> Result<ListContainerStatsResponse, Status> {
    let f = r.filter.unwrap_or_default();
    let selected: Vec<_> = pods
        .containers
        .fold_exits()
        .into_iter()
        .filter(|x| container_selected(x, &f.id, &f.pod_sandbox_id, &f.label_selector))
        .collect();
    let stats = pods
        .container_usage(selected)
        .await
        .iter()
        .map(|(record, usage)| cri_container_stats(record, usage))
        .collect();
    Ok(ListContainerStatsResponse { stats })
}
