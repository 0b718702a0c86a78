//! CRI config pieces and calls the suites and the bench make again and again.

use k8s_cri::v1::{
    ContainerConfig, CreateContainerRequest, ImageSpec, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    ListPodSandboxRequest, NamespaceMode, NamespaceOption, PodSandbox, PodSandboxConfig,
    PullImageRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StatusRequest,
};

use crate::{ImageClient, RuntimeClient};

/// RunPodSandbox with the default handler: the sandbox id, or the agent's answer.
pub async fn try_run_pod(
    c: &mut RuntimeClient,
    config: PodSandboxConfig,
) -> Result<String, tonic::Status> {
    c.run_pod_sandbox(RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: String::new(),
    })
    .await
    .map(|r| r.into_inner().pod_sandbox_id)
}

/// RemovePodSandbox (and so the pod's containers), which must succeed.
pub async fn remove_pod(c: &mut RuntimeClient, pod: &str) {
    c.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("RemovePodSandbox {pod}: {e}"));
}

/// ListPodSandbox without a filter, which must succeed.
pub async fn list_pods(c: &mut RuntimeClient) -> Vec<PodSandbox> {
    c.list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .unwrap_or_else(|e| panic!("ListPodSandbox: {e}"))
        .into_inner()
        .items
}

/// RunPodSandbox that must succeed.
pub async fn run_pod(c: &mut RuntimeClient, config: PodSandboxConfig) -> String {
    try_run_pod(c, config)
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}"))
}

/// PullImage of `reference`, which must succeed: the image ref it answers (the image id).
pub async fn pull(images: &mut ImageClient, reference: &str) -> String {
    images
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: reference.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("PullImage {reference}: {e}"))
        .into_inner()
        .image_ref
}

/// CreateContainer then StartContainer in `pod`, both of which must succeed: the container id.
pub async fn create_started(
    c: &mut RuntimeClient,
    pod: &str,
    pod_config: &PodSandboxConfig,
    config: ContainerConfig,
) -> String {
    let id = c
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {e}"))
        .into_inner()
        .container_id;
    c.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer {id}: {e}"));
    id
}

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

/// Waits (polling Status, at most 30 s) until the agent reports NetworkReady: it has seen a
/// CNI conflist a test just wrote.
pub async fn wait_network_ready(c: &mut RuntimeClient) {
    wait_network(c, true).await
}

/// Waits (polling Status, at most 30 s) until NetworkReady is `ready`.
pub async fn wait_network(c: &mut RuntimeClient, want: bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = c
            .status(StatusRequest { verbose: false })
            .await
            .unwrap()
            .into_inner();
        let ready = status.status.is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.r#type == "NetworkReady" && c.status)
        });
        if ready == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "NetworkReady never became {want}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
