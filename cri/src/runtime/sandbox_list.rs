//! ListPodSandbox: filters on id (prefix, as crictl passes it), state and labels.

use std::sync::Arc;

use berth_podsandbox::Sandboxes;
use k8s_cri::v1::{ListPodSandboxRequest, ListPodSandboxResponse, PodSandbox};
use tonic::Status;

use super::sandbox_convert::{cri_metadata, cri_state};
use crate::service::sandbox_selected;

pub(super) fn list_pod_sandbox(
    sandboxes: &Arc<Sandboxes>,
    request: ListPodSandboxRequest,
) -> Result<ListPodSandboxResponse, Status> {
    let filter = request.filter.unwrap_or_default();
    let items = sandboxes
        .list()
        .into_iter()
        .filter(|r| sandbox_selected(r, &filter.id, &filter.label_selector))
        .filter(|r| {
            filter
                .state
                .as_ref()
                .is_none_or(|s| s.state == cri_state(r.state))
        })
        .map(|r| PodSandbox {
            id: r.id.clone(),
            metadata: Some(cri_metadata(&r)),
            state: cri_state(r.state),
            created_at: r.created_at,
            labels: r.spec.labels.clone().into_iter().collect(),
            annotations: r.spec.annotations.clone().into_iter().collect(),
            runtime_handler: r.spec.runtime_handler.clone(),
        })
        .collect();
    Ok(ListPodSandboxResponse { items })
}
