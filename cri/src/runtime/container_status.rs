//! ContainerStatus: the record, with the exit the monitor recorded.

use std::collections::HashMap;

use berth_podsandbox::Pods;
use k8s_cri::v1::*;
use tonic::Status;

use super::container_convert::cri_container_status;
use crate::service::find_container;

pub(super) fn container_status(
    pods: &Pods,
    r: ContainerStatusRequest,
) -> Result<ContainerStatusResponse, Status> {
    crate::metrics::record_container(&r.container_id);
    let record = find_container(pods, &r.container_id)?;
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
