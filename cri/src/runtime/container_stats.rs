//! ContainerStats: one container's CPU, memory, swap and writable layer, sampled now.

use berth_podsandbox::Pods;
use k8s_cri::v1::{ContainerStatsRequest, ContainerStatsResponse};
use tonic::Status;

use super::container_convert::cri_container_stats;
use crate::service::find_container;

pub(super) async fn container_stats(
    pods: &Pods,
    r: ContainerStatsRequest,
) -> Result<ContainerStatsResponse, Status> {
    crate::metrics::record_container(&r.container_id);
    let record = find_container(pods, &r.container_id)?;
    let sampled = pods.container_usage(vec![record]).await;
    Ok(ContainerStatsResponse {
        stats: sampled
            .first()
            .map(|(record, usage)| cri_container_stats(record, usage)),
    })
}
