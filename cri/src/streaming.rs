//! The streaming server's backend: what an exec, attach or port-forward session runs, on the
//! agent's pods and containers. The RPCs (`runtime/container_exec.rs`, `container_attach.rs`,
//! `sandbox_portforward.rs`) validate and hand out the URL; by the time the client connects
//! the container may have stopped, so it is checked again here.

use std::sync::Arc;

use berth_podsandbox::container::{ContainerState, ExecStdio};
use berth_podsandbox::Pods;
use berth_streaming::{AttachRequest, Backend, ExecRequest, ProcessIo};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

pub struct StreamBackend {
    pods: Arc<Pods>,
}

impl StreamBackend {
    pub fn new(pods: Arc<Pods>) -> Arc<StreamBackend> {
        Arc::new(StreamBackend { pods })
    }
}

#[tonic::async_trait]
impl Backend for StreamBackend {
    async fn exec(&self, request: ExecRequest, io: ProcessIo) -> Result<i32, String> {
        let record = self
            .pods
            .containers
            .fold_exit(&request.container_id)
            .ok_or_else(|| format!("container {} not found", request.container_id))?;
        if record.state() != ContainerState::Running {
            return Err(format!("container {} is not running", record.id));
        }
        let resize = io.resize.map(|mut sizes| {
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                while let Some(size) = sizes.recv().await {
                    if tx.send((size.width, size.height)).await.is_err() {
                        return;
                    }
                }
            });
            rx
        });
        let stdio = ExecStdio {
            tty: request.tty,
            stdin: io.stdin,
            stdout: io.stdout,
            stderr: io.stderr,
            resize,
        };
        self.pods
            .exec_stream(&record, &request.cmd, stdio)
            .await
            .map_err(|e| e.to_string())
    }

    async fn attach(&self, request: AttachRequest, _io: ProcessIo) -> Result<(), String> {
        // Attach RPCs answer Unimplemented, so no token for one is ever handed out.
        Err(format!(
            "attach to container {}: not implemented yet",
            request.container_id
        ))
    }

    async fn dial(&self, sandbox_id: &str, port: u16) -> Result<TcpStream, String> {
        self.pods
            .sandboxes
            .dial(sandbox_id, port)
            .await
            .map_err(|e| e.to_string())
    }
}
