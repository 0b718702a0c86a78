//! The CRI streaming server: `Exec`, `Attach` and `PortForward` hand out a URL on berth's own
//! HTTP server, and the client (kubelet's proxy, crictl, critest, kubectl through kubelet)
//! upgrades it to SPDY/3.1, or to WebSocket, to talk to the process or the port.
//!
//! This crate knows the protocols and nothing of pods: what a session runs is behind
//! [`Backend`], which the CRI layer implements with the agent's pods and containers.

pub mod metrics;
mod portforward;
mod remotecommand;
mod server;
pub mod spdy;
pub mod tokens;
mod websocket;

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

pub use metrics::StreamingMetrics;
pub use server::{Server, ServerHandle};
pub use tokens::TokenError;

/// `[streaming]`: the HTTP server the streaming RPCs' URLs point at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    /// `host:port` to listen on; port 0 picks a free one (the URLs carry the real port).
    pub address: String,
    /// How long a URL stays valid before its client connects.
    pub token_ttl_secs: u64,
    /// How long a client has to send its request's headers, and then to open all the
    /// streams its request needs.
    pub stream_creation_timeout_secs: u64,
    /// A session with nothing received for this long is closed.
    pub idle_timeout_secs: u64,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            address: "127.0.0.1:0".to_string(),
            token_ttl_secs: 60,
            stream_creation_timeout_secs: 30,
            idle_timeout_secs: 4 * 3600,
        }
    }
}

impl StreamingConfig {
    pub fn token_ttl(&self) -> Duration {
        Duration::from_secs(self.token_ttl_secs)
    }
    pub fn stream_creation_timeout(&self) -> Duration {
        Duration::from_secs(self.stream_creation_timeout_secs)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
}

/// A command to run in a running container, its stdio over the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// The running container's own stdio, over the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    pub container_id: String,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// TCP ports inside a ready pod's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForwardRequest {
    pub sandbox_id: String,
}

/// What a token stands for until its client connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(PortForwardRequest),
}

impl Request {
    pub fn verb(&self) -> &'static str {
        match self {
            Request::Exec(_) => "exec",
            Request::Attach(_) => "attach",
            Request::PortForward(_) => "portforward",
        }
    }
}

/// A terminal size from the client's resize stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct TerminalSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

impl TerminalSize {
    /// `(width, height)`, unless either is zero (clients send zeros; they mean nothing).
    pub fn usable(self) -> Option<(u16, u16)> {
        (self.width > 0 && self.height > 0).then_some((self.width, self.height))
    }
}

/// A process's stdio as the session carries it. `None` for a stream the request did not ask
/// for. `stdin` ending means the client closed its stdin; dropping `stdout`/`stderr` ends those
/// streams. Output is sent in the order it is queued. Terminal sizes are `(width, height)`.
pub struct ProcessIo {
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<mpsc::Sender<Bytes>>,
    pub stderr: Option<mpsc::Sender<Bytes>>,
    pub resize: Option<mpsc::Receiver<(u16, u16)>>,
}

/// What the sessions run: the agent's containers and pods.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Runs the command to its end; its exit code. Dropping the future (the client went away)
    /// must kill the process and everything it started.
    async fn exec(&self, request: ExecRequest, io: ProcessIo) -> Result<i32, String>;

    /// Relays the container's stdio until the container exits or (stdin_once) the client's
    /// stdin ends. Dropping the future detaches; the container runs on.
    async fn attach(&self, request: AttachRequest, io: ProcessIo) -> Result<(), String>;

    /// A connection to `localhost:port` as the pod sees it.
    async fn dial(&self, sandbox_id: &str, port: u16) -> Result<TcpStream, String>;
}
