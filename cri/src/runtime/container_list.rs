//! ListContainers: filters on id prefix, pod sandbox id prefix, state and labels.

use berth_podsandbox::Pods;
use k8s_cri::v1::*;
use tonic::Status;

use super::container_convert::{cri_container, cri_state};
use crate::service::container_selected;

pub(super) fn list_containers(
    pods: &Pods,
    r: ListContainersRequest,
) -> Result<ListContainersResponse, Status> {
    let f = r.filter.unwrap_or_default();
    let containers = pods
        .containers
        .fold_exits()
        .into_iter()
        .filter(|x| container_selected(x, &f.id, &f.pod_sandbox_id, &f.label_selector))
        .filter(|x| {
            f.state
                .as_ref()
                .is_none_or(|s| s.state == cri_state(x.state()))
        })
        .map(|x| cri_container(&x))
        .collect();
    Ok(ListContainersResponse { containers })
}
