//! Port-forward's connection into a pod: `localhost:<port>` as the pod sees it, tcp4 then tcp6.
//!
//! A socket belongs to the network namespace it was made in, whatever thread later uses it: so
//! it is made through `berth_cni::in_netns`, on a thread of its own that has joined the pod's
//! namespace and then ends.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

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
        let std_stream = berth_cni::in_netns(&netns, move || connect_localhost(port)).await?;
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

/// A non-blocking stream to `localhost:port` in the calling thread's network namespace.
fn connect_localhost(port: u16) -> io::Result<std::net::TcpStream> {
    let [v4, v6] = localhost(port);
    let stream = match std::net::TcpStream::connect(v4) {
        Ok(s) => s,
        Err(e4) => std::net::TcpStream::connect(v6).map_err(|_| e4)?,
    };
    stream.set_nonblocking(true)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
