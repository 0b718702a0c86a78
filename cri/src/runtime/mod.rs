//! The CRI RuntimeService: one file per RPC.

mod container_attach;
pub(crate) mod container_convert;
mod container_create;
pub mod container_events;
mod container_exec;
mod container_execsync;
mod container_list;
mod container_log_reopen;
mod container_remove;
mod container_start;
mod container_stats;
mod container_stats_list;
mod container_status;
mod container_stop;
mod container_update_resources;
mod metric_descriptors;
mod runtime_config;
mod sandbox_convert;
mod sandbox_list;
mod sandbox_metrics_list;
mod sandbox_portforward;
mod sandbox_remove;
mod sandbox_run;
mod sandbox_stats;
mod sandbox_stats_list;
mod sandbox_status;
mod sandbox_stop;
mod status;
mod update_runtime_config;
mod version;

use k8s_cri::v1::runtime_service_server::RuntimeService as CriRuntimeService;
use k8s_cri::v1::*;
use tonic::{Request, Response, Status};

use crate::unimplemented::cri_service;
use crate::RuntimeService;

use container_events::EventStream;

cri_service! {
    impl CriRuntimeService for RuntimeService {
        type GetContainerEventsStream = EventStream;

        async fn version(
            &self,
            request: Request<VersionRequest>,
        ) -> Result<Response<VersionResponse>, Status> {
            version::version(request.into_inner()).map(Response::new)
        }

        async fn status(
            &self,
            request: Request<StatusRequest>,
        ) -> Result<Response<StatusResponse>, Status> {
            let runtime = self.pods.sandboxes.runtime_ready();
            let network = self.pods.sandboxes.network_ready();
            status::status(&self.shared, runtime, network, request.into_inner()).map(Response::new)
        }

        async fn runtime_config(
            &self,
            request: Request<RuntimeConfigRequest>,
        ) -> Result<Response<RuntimeConfigResponse>, Status> {
            runtime_config::runtime_config(&self.shared, request.into_inner()).map(Response::new)
        }

        async fn update_runtime_config(
            &self,
            request: Request<UpdateRuntimeConfigRequest>,
        ) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
            update_runtime_config::update_runtime_config(&self.shared, request.into_inner())
                .map(Response::new)
        }

        async fn run_pod_sandbox(
            &self,
            request: Request<RunPodSandboxRequest>,
        ) -> Result<Response<RunPodSandboxResponse>, Status> {
            sandbox_run::run_pod_sandbox(&self.pods.sandboxes, self.shared.options.user_namespaces, request.into_inner()).await.map(Response::new)
        }

        async fn stop_pod_sandbox(
            &self,
            request: Request<StopPodSandboxRequest>,
        ) -> Result<Response<StopPodSandboxResponse>, Status> {
            sandbox_stop::stop_pod_sandbox(&self.pods, request.into_inner()).await.map(Response::new)
        }

        async fn remove_pod_sandbox(
            &self,
            request: Request<RemovePodSandboxRequest>,
        ) -> Result<Response<RemovePodSandboxResponse>, Status> {
            sandbox_remove::remove_pod_sandbox(&self.pods, request.into_inner()).await.map(Response::new)
        }

        async fn pod_sandbox_status(
            &self,
            request: Request<PodSandboxStatusRequest>,
        ) -> Result<Response<PodSandboxStatusResponse>, Status> {
            sandbox_status::pod_sandbox_status(&self.pods, request.into_inner()).map(Response::new)
        }

        async fn list_pod_sandbox(
            &self,
            request: Request<ListPodSandboxRequest>,
        ) -> Result<Response<ListPodSandboxResponse>, Status> {
            sandbox_list::list_pod_sandbox(&self.pods.sandboxes, request.into_inner()).map(Response::new)
        }

        async fn create_container(
            &self,
            request: Request<CreateContainerRequest>,
        ) -> Result<Response<CreateContainerResponse>, Status> {
            let sub_paths = request.extensions().get::<crate::newer_fields::MountSubPaths>().cloned();
            container_create::create_container(&self.pods, request.into_inner(), sub_paths).await.map(Response::new)
        }

        async fn start_container(
            &self,
            request: Request<StartContainerRequest>,
        ) -> Result<Response<StartContainerResponse>, Status> {
            container_start::start_container(&self.pods, request.into_inner()).await.map(Response::new)
        }

        async fn stop_container(
            &self,
            request: Request<StopContainerRequest>,
        ) -> Result<Response<StopContainerResponse>, Status> {
            container_stop::stop_container(&self.pods, request.into_inner()).await.map(Response::new)
        }

        async fn remove_container(
            &self,
            request: Request<RemoveContainerRequest>,
        ) -> Result<Response<RemoveContainerResponse>, Status> {
            container_remove::remove_container(&self.pods, request.into_inner()).await.map(Response::new)
        }

        async fn reopen_container_log(
            &self,
            request: Request<ReopenContainerLogRequest>,
        ) -> Result<Response<ReopenContainerLogResponse>, Status> {
            container_log_reopen::reopen_container_log(&self.pods, request.into_inner())
                .await
                .map(Response::new)
        }

        async fn container_status(
            &self,
            request: Request<ContainerStatusRequest>,
        ) -> Result<Response<ContainerStatusResponse>, Status> {
            container_status::container_status(&self.pods, request.into_inner()).map(|(answer, volumes)| {
                let mut response = Response::new(answer);
                if !volumes.0.is_empty() {
                    response.extensions_mut().insert(volumes);
                }
                response
            })
        }

        async fn list_containers(
            &self,
            request: Request<ListContainersRequest>,
        ) -> Result<Response<ListContainersResponse>, Status> {
            container_list::list_containers(&self.pods, request.into_inner()).map(Response::new)
        }

        async fn update_container_resources(
            &self,
            request: Request<UpdateContainerResourcesRequest>,
        ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
            container_update_resources::update_container_resources(&self.pods, request.into_inner())
                .await
                .map(Response::new)
        }

        async fn exec_sync(
            &self,
            request: Request<ExecSyncRequest>,
        ) -> Result<Response<ExecSyncResponse>, Status> {
            container_execsync::exec_sync(&self.pods, request.into_inner()).await.map(Response::new)
        }

        async fn container_stats(
            &self,
            request: Request<ContainerStatsRequest>,
        ) -> Result<Response<ContainerStatsResponse>, Status> {
            container_stats::container_stats(&self.pods, request.into_inner()).await.map(Response::new)
        }

        async fn list_container_stats(
            &self,
            request: Request<ListContainerStatsRequest>,
        ) -> Result<Response<ListContainerStatsResponse>, Status> {
            container_stats_list::list_container_stats(&self.pods, request.into_inner())
                .await
                .map(Response::new)
        }

        async fn pod_sandbox_stats(
            &self,
            request: Request<PodSandboxStatsRequest>,
        ) -> Result<Response<PodSandboxStatsResponse>, Status> {
            sandbox_stats::pod_sandbox_stats(&self.pods, request.into_inner()).await.map(Response::new)
        }

        async fn list_pod_sandbox_stats(
            &self,
            request: Request<ListPodSandboxStatsRequest>,
        ) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
            sandbox_stats_list::list_pod_sandbox_stats(&self.pods, request.into_inner())
                .await
                .map(Response::new)
        }

        async fn list_metric_descriptors(
            &self,
            request: Request<ListMetricDescriptorsRequest>,
        ) -> Result<Response<ListMetricDescriptorsResponse>, Status> {
            Ok(Response::new(metric_descriptors::list_metric_descriptors(request.into_inner())))
        }

        async fn list_pod_sandbox_metrics(
            &self,
            request: Request<ListPodSandboxMetricsRequest>,
        ) -> Result<Response<ListPodSandboxMetricsResponse>, Status> {
            Ok(Response::new(
                sandbox_metrics_list::list_pod_sandbox_metrics(&self.pods, request.into_inner()).await,
            ))
        }

        async fn get_container_events(
            &self,
            request: Request<GetEventsRequest>,
        ) -> Result<Response<EventStream>, Status> {
            Ok(Response::new(container_events::get_container_events(&self.pods, request.into_inner())))
        }

        async fn exec(
            &self,
            request: Request<ExecRequest>,
        ) -> Result<Response<ExecResponse>, Status> {
            container_exec::exec(&self.pods, &self.streaming, request.into_inner()).map(Response::new)
        }

        async fn attach(
            &self,
            request: Request<AttachRequest>,
        ) -> Result<Response<AttachResponse>, Status> {
            container_attach::attach(&self.pods, &self.streaming, request.into_inner()).map(Response::new)
        }

        async fn port_forward(
            &self,
            request: Request<PortForwardRequest>,
        ) -> Result<Response<PortForwardResponse>, Status> {
            sandbox_portforward::port_forward(&self.pods, &self.streaming, request.into_inner())
                .map(Response::new)
        }
    }
    unimplemented {
        checkpoint_container => CheckpointContainer(CheckpointContainerRequest) -> CheckpointContainerResponse;
    }
}

/// The streaming server's URL for `request`, or why there is none.
fn streaming_url(
    server: &berth_streaming::Server,
    request: berth_streaming::Request,
) -> Result<String, Status> {
    server.url_for(request).map_err(|e| match e {
        berth_streaming::TokenError::TooMany => Status::resource_exhausted(format!("berth: {e}")),
        berth_streaming::TokenError::Random(_) => Status::internal(format!("berth: {e}")),
    })
}
