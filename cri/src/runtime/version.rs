//! Version: who we are. kubelet calls it first and checks `runtime_api_version`.

use k8s_cri::v1::{VersionRequest, VersionResponse};
use tonic::Status;

/// The kubelet runtime API version field (CRI keeps it at "0.1.0").
const KUBE_API_VERSION: &str = "0.1.0";
pub(crate) const RUNTIME_NAME: &str = "berth";
pub(crate) const RUNTIME_API_VERSION: &str = "v1";

pub(super) fn version(_request: VersionRequest) -> Result<VersionResponse, Status> {
    Ok(VersionResponse {
        version: KUBE_API_VERSION.to_string(),
        runtime_name: RUNTIME_NAME.to_string(),
        runtime_version: env!("CARGO_PKG_VERSION").to_string(),
        runtime_api_version: RUNTIME_API_VERSION.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_berth_and_cri_v1() {
        let v = version(VersionRequest::default()).unwrap();
        assert_eq!(v.runtime_name, "berth");
        assert_eq!(v.runtime_api_version, "v1");
        assert_eq!(v.version, "0.1.0");
        assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));
    }
}
