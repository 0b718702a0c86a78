//! ListContainers: filters on id prefix, pod sandbox id prefix, state and labels.

use berth_podsandbox::Pods;
use k8s_cri::v1::*;
use tonic::Status;

use super::container_convert::{cri_container, cri_state};

pub(super) fn list_containers(
    pods: &Pods,
    r: ListContainersRequest,
) -> Result<ListContainersResponse, Status> {
    let f = r.filter.unwrap_or_default();
    let containers = pods
        .containers
        .fold_exits()
        .into_iter()
        .filter(|x| f.id.is_empty() || x.id.starts_with(&f.id))
        .filter(|x| f.pod_sandbox_id.is_empty() || x.sandbox_id.starts_with(&f.pod_sandbox_id))
        .filter(|x| {
            f.state
                .as_ref()
                .is_none_or(|s| s.state == cri_state(x.state()))
        })
        .filter(|x| {
            f.label_selector
                .iter()
                .all(|(k, v)| x.config.labels.get(k) == Some(v))
        })
        .map(|x| cri_container(&x))
        .collect();
    Ok(ListContainersResponse { containers })
}
