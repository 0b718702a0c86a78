//! ContainerStatus and ListContainers.

use std::collections::HashMap;
use std::sync::Arc;

use berth_podsandbox::container::Containers;
use k8s_cri::v1::*;
use tonic::Status;

use super::container_convert::find_container;
use super::container_convert::{cri_container, cri_container_status, cri_state};

pub(super) fn container_status(
    c: &Arc<Containers>,
    r: ContainerStatusRequest,
) -> Result<ContainerStatusResponse, Status> {
    crate::metrics::record_container(&r.container_id);
    let record = find_container(c, &r.container_id)?;
    let mut info = HashMap::new();
    if r.verbose {
        let verbose = serde_json::json!({
            "pid": record.pid,
            "sandboxID": record.sandbox_id,
            "config": record.config,
            "exit": record.exit,
        });
        info.insert("info".to_string(), verbose.to_string());
    }
    Ok(ContainerStatusResponse {
        status: Some(cri_container_status(&record)),
        info,
    })
}

pub(super) fn list_containers(
    c: &Arc<Containers>,
    r: ListContainersRequest,
) -> Result<ListContainersResponse, Status> {
    let f = r.filter.unwrap_or_default();
    let containers = c
        .list()
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
