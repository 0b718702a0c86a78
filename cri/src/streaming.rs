//! The streaming server's backend: what an exec, attach or port-forward session runs, on the
//! agent's pods and containers. The RPCs (`runtime/container_exec.rs`, `container_attach.rs`,
//! `sandbox_portforward.rs`) validate and hand out the URL; by the time the client connects
//! the container may have stopped, so it is checked again here.

use std::sync::Arc;

use berth_podsandbox::container::{ContainerRecord, ContainerState, ExecStdio};
use berth_podsandbox::Pods;
use berth_streaming::{AttachRequest, Backend, ExecRequest, ProcessIo};
use tokio::net::TcpStream;

pub struct StreamBackend {
    pods: Arc<Pods>,
}

impl StreamBackend {
    pub fn new(pods: Arc<Pods>) -> Arc<StreamBackend> {
        Arc::new(StreamBackend { pods })
    }
}

impl StreamBackend {
    /// The container's record, if it is still running when the client connects.
    fn running(&self, id: &str) -> Result<ContainerRecord, String> {
        let record = self
            .pods
            .containers
            .fold_exit(id)
            .ok_or_else(|| format!("container {id} not found"))?;
        if record.state() != ContainerState::Running {
            return Err(format!("container {} is not running", record.id));
        }
        Ok(record)
    }
}

/// The session's stdio as the container side takes it.
fn exec_stdio(tty: bool, io: ProcessIo) -> ExecStdio {
    ExecStdio {
        tty,
        stdin: io.stdin,
        stdout: io.stdout,
        stderr: io.stderr,
        resize: io.resize,
    }
}

#[tonic::async_trait]
impl Backend for StreamBackend {
    async fn exec(&self, request: ExecRequest, io: ProcessIo) -> Result<i32, String> {
        let record = self.running(&request.container_id)?;
        let stdio = exec_stdio(request.tty, io);
        self.pods
            .exec_stream(&record, &request.cmd, stdio)
            .await
            .map_err(|e| e.to_string())
    }

    async fn attach(&self, request: AttachRequest, io: ProcessIo) -> Result<(), String> {
        let record = self.running(&request.container_id)?;
        let stdio = exec_stdio(record.config.tty, io);
        self.pods.attach(&record, stdio).await
    }

    async fn dial(&self, sandbox_id: &str, port: u16) -> Result<TcpStream, String> {
        self.pods
            .sandboxes
            .dial(sandbox_id, port)
            .await
            .map_err(|e| e.to_string())
    }
}
