//! CRI config pieces the suites and the bench build again and again.

use k8s_cri::v1::{
    LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
};

/// Namespace options as kubelet sends them.
pub fn namespaces(
    network: NamespaceMode,
    pid: NamespaceMode,
    ipc: NamespaceMode,
) -> NamespaceOption {
    NamespaceOption {
        network: network as i32,
        pid: pid as i32,
        ipc: ipc as i32,
        ..Default::default()
    }
}

/// A pod's `linux` section with just these namespace options.
pub fn pod_linux(options: NamespaceOption) -> LinuxPodSandboxConfig {
    LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(options),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container's `linux` section with just these namespace options.
pub fn container_linux(options: NamespaceOption) -> LinuxContainerConfig {
    LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            namespace_options: Some(options),
            ..Default::default()
        }),
        ..Default::default()
    }
}
