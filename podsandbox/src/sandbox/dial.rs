//! Port-forward's connection into a pod: `localhost:<port>` as the pod sees it, tcp4 then tcp6.
//!
//! A socket belongs to the network namespace it was made in, whatever thread later uses it: so
//! it is made on a thread of its own that has joined the pod's namespace and then ends (never a
//! tokio worker or a pooled blocking thread, which would stay in the pod's namespace).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use tokio::net::TcpStream;

use super::Sandboxes;

impl Sandboxes {
    /// Connects to `localhost:port` in pod `id`'s network namespace (the host's for a
    /// host-network pod).
    pub async fn dial(&self, id: &str, port: u16) -> io::Result<TcpStream> {
        let record = self.get(id).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("pod sandbox {id} not found"),
            )
        })?;
        if record.spec.host_network() {
            return connect_localhost_async(port).await;
        }
        let netns = self.netns_path(id);
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("berth-dial".into())
            .spawn(move || {
                let _ = tx.send(connect_in(&netns, port));
            })?;
        let std_stream = rx
            .await
            .map_err(|_| io::Error::other("the dialling thread died"))??;
        TcpStream::from_std(std_stream)
    }
}

fn localhost(port: u16) -> [SocketAddr; 2] {
    [
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
    ]
}

async fn connect_localhost_async(port: u16) -> io::Result<TcpStream> {
    let [v4, v6] = localhost(port);
    match TcpStream::connect(v4).await {
        Ok(s) => Ok(s),
        Err(e4) => TcpStream::connect(v6).await.map_err(|_| e4),
    }
}

/// On the calling thread (which it moves into `netns` for good): a non-blocking stream.
fn connect_in(netns: &Path, port: u16) -> io::Result<std::net::TcpStream> {
    let ns = std::fs::File::open(netns).map_err(|e| with_path(e, netns))?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| io::Error::other(format!("join {}: {e}", netns.display())))?;
    let [v4, v6] = localhost(port);
    let stream = match std::net::TcpStream::connect(v4) {
        Ok(s) => s,
        Err(e4) => std::net::TcpStream::connect(v6).map_err(|_| e4)?,
    };
    stream.set_nonblocking(true)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", PathBuf::from(path).display()))
}
