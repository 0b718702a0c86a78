//! `berthd health`: the probe a script, a unit or an installer runs. It asks the agent on the
//! configured socket for its Version and Status, over the CRI as kubelet would, within a
//! timeout, and answers with an exit status and one line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{StatusRequest, VersionRequest};
use tonic::transport::{Endpoint, Uri};

use crate::config::Config;

pub fn run(config_path: Option<PathBuf>, timeout: Duration) -> ExitCode {
    let config = match Config::load(config_path.as_deref()) {
        Ok(config) => config,
        Err(e) => return crate::fail(e),
    };
    let socket = config.grpc.address;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return crate::fail(format!("cannot start the async runtime: {e}")),
    };
    let asked = runtime.block_on(async { tokio::time::timeout(timeout, ask(&socket)).await });
    match asked {
        Ok(Ok(line)) => crate::output(&format!("berthd: ok: {line}\n")),
        Ok(Err(e)) => crate::fail(format!("{}: {e}", socket.display())),
        Err(_) => crate::fail(format!(
            "{}: no answer in {} s",
            socket.display(),
            timeout.as_secs()
        )),
    }
}

/// Version and Status from the agent on `socket`: the line to print, or why it is not healthy.
async fn ask(socket: &Path) -> Result<String, String> {
    let path = socket.to_path_buf();
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| format!("cannot connect: {}", source_of(&e)))?;
    let mut client = RuntimeServiceClient::new(channel);
    let version = client
        .version(VersionRequest::default())
        .await
        .map_err(|e| format!("Version: {}", e.message()))?
        .into_inner();
    let status = client
        .status(StatusRequest::default())
        .await
        .map_err(|e| format!("Status: {}", e.message()))?
        .into_inner()
        .status
        .unwrap_or_default();
    let condition = |kind: &str| status.conditions.iter().find(|c| c.r#type == kind);
    let runtime_ready = condition("RuntimeReady").is_some_and(|c| c.status);
    let network = match condition("NetworkReady") {
        Some(c) if c.status => "NetworkReady".to_string(),
        Some(c) => format!("NetworkReady false ({}: {})", c.reason, c.message),
        None => "NetworkReady unknown".to_string(),
    };
    let line = format!(
        "{} {} on {}",
        version.runtime_name,
        version.runtime_version,
        socket.display()
    );
    if !runtime_ready {
        let why = condition("RuntimeReady")
            .map(|c| format!("{}: {}", c.reason, c.message))
            .unwrap_or_default();
        return Err(format!("{line}: not RuntimeReady ({why}); {network}"));
    }
    Ok(format!("{line}: RuntimeReady, {network}"))
}

/// The innermost cause of a transport error (the OS's word on a socket that is not there).
fn source_of(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}
