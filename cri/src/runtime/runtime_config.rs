//! RuntimeConfig: the cgroup driver kubelet must use to lay out pod cgroups.

use berth_runtime::CgroupDriver as ConfiguredDriver;
use k8s_cri::v1::{
    CgroupDriver, LinuxRuntimeConfiguration, RuntimeConfigRequest, RuntimeConfigResponse,
};
use tonic::Status;

use crate::Shared;

pub(super) fn runtime_config(
    shared: &Shared,
    _request: RuntimeConfigRequest,
) -> Result<RuntimeConfigResponse, Status> {
    let cgroup_driver = match shared.options.cgroup_driver {
        ConfiguredDriver::Cgroupfs => CgroupDriver::Cgroupfs,
        ConfiguredDriver::Systemd => CgroupDriver::Systemd,
    };
    Ok(RuntimeConfigResponse {
        linux: Some(LinuxRuntimeConfiguration {
            cgroup_driver: cgroup_driver as i32,
        }),
    })
}
