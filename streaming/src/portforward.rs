//! Port-forward sessions over SPDY: for each connection the client forwards it opens an error
//! stream and a data stream with the same `port` and `requestid`; once both are there the
//! data is copied to and from `localhost:<port>` in the pod.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::server::Context;
use crate::spdy::{header, IncomingStream, Session};

/// An error stream waits this long for its data stream (and the other way round).
const PAIRING_TIMEOUT: Duration = Duration::from_secs(30);
/// After one direction of a forwarded connection ends, how long the other may go on.
const HALF_CLOSE_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Error,
    Data,
}

/// Which pair a stream belongs to: its `requestid`, or without one (old clients) the error
/// stream's id, which its data stream's id is two more than.
fn pair_key(stream: &IncomingStream, kind: Kind) -> String {
    match header(&stream.headers, "requestid") {
        Some(id) => id.to_string(),
        None => match kind {
            Kind::Error => stream.id.to_string(),
            Kind::Data => stream.id.saturating_sub(2).to_string(),
        },
    }
}

/// The port a stream names: 1–65535.
fn parse_port(stream: &IncomingStream) -> Option<u16> {
    header(&stream.headers, "port")?
        .parse::<u16>()
        .ok()
        .filter(|&p| p > 0)
}

struct Pending {
    error: Option<IncomingStream>,
    data: Option<IncomingStream>,
    port: u16,
    since: Instant,
}

pub(crate) async fn serve_spdy(
    ctx: &Context,
    mut session: Session,
    mut incoming: mpsc::Receiver<IncomingStream>,
    sandbox_id: String,
) {
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut forwards = tokio::task::JoinSet::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    loop {
        let stream = tokio::select! {
            s = incoming.recv() => match s {
                Some(s) => s,
                None => break,
            },
            _ = sweep.tick() => {
                let now = Instant::now();
                let stale: Vec<String> = pending
                    .iter()
                    .filter(|(_, p)| now - p.since > PAIRING_TIMEOUT)
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in stale {
                    let p = pending.remove(&key).expect("listed");
                    for s in [p.error, p.data].into_iter().flatten() {
                        s.writer.reset(crate::spdy::frame::rst::CANCEL).await;
                    }
                }
                continue;
            }
            Some(_) = forwards.join_next(), if !forwards.is_empty() => continue,
        };
        let kind = match header(&stream.headers, "streamtype") {
            Some("error") => Kind::Error,
            Some("data") => Kind::Data,
            _ => {
                stream.writer.refuse().await;
                continue;
            }
        };
        let Some(port) = parse_port(&stream) else {
            stream.writer.refuse().await;
            continue;
        };
        let key = pair_key(&stream, kind);
        let entry = pending.entry(key.clone()).or_insert_with(|| Pending {
            error: None,
            data: None,
            port,
            since: Instant::now(),
        });
        let slot = match kind {
            Kind::Error => &mut entry.error,
            Kind::Data => &mut entry.data,
        };
        if slot.is_some() || entry.port != port {
            // A second stream of a kind for one request, or a pair that disagrees on the port.
            stream.writer.refuse().await;
            continue;
        }
        if stream.writer.reply().await.is_err() {
            break;
        }
        *slot = Some(stream);
        if entry.error.is_some() && entry.data.is_some() {
            let p = pending.remove(&key).expect("present");
            let (error, data) = (p.error.expect("paired"), p.data.expect("paired"));
            let ctx = ctx.clone();
            let sandbox = sandbox_id.clone();
            forwards.spawn(async move { forward(&ctx, &sandbox, p.port, error, data).await });
        }
    }
    // The client closed the connection: its forwarded connections go with it.
    forwards.shutdown().await;
    session.close(Duration::from_secs(1)).await;
}

/// Copies one forwarded connection both ways; an error reaches the client as text on the
/// error stream.
async fn forward(
    ctx: &Context,
    sandbox: &str,
    port: u16,
    error: IncomingStream,
    data: IncomingStream,
) {
    let tcp = match ctx.backend.dial(sandbox, port).await {
        Ok(tcp) => tcp,
        Err(e) => {
            let message =
                format!("failed to connect to localhost:{port} inside pod {sandbox}: {e}");
            tracing::debug!("{message}");
            let _ = error.writer.write(Bytes::from(message)).await;
            let _ = error.writer.finish().await;
            let _ = data.writer.finish().await;
            return;
        }
    };
    let (mut from_pod, mut to_pod) = tcp.into_split();
    let bytes_in = ctx.metrics.bytes("portforward", "in");
    let bytes_out = ctx.metrics.bytes("portforward", "out");
    let mut reader = data.reader;
    let client_to_pod = async move {
        while let Some(chunk) = reader.read().await {
            bytes_in.inc_by(chunk.len() as u64);
            if to_pod.write_all(&chunk).await.is_err() {
                return;
            }
        }
        // The client's FIN: the pod's side reads EOF.
        let _ = to_pod.shutdown().await;
    };
    let writer = data.writer.clone();
    let pod_to_client = async move {
        // Read straight into buffers that become the frames' payloads: no copy on the way.
        let mut buf = bytes::BytesMut::new();
        loop {
            buf.reserve(crate::spdy::session::MAX_DATA_FRAME);
            match from_pod.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    bytes_out.inc_by(n as u64);
                    if writer.write(buf.split().freeze()).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = writer.finish().await;
    };
    tokio::pin!(client_to_pod, pod_to_client);
    tokio::select! {
        _ = &mut client_to_pod => {
            let _ = tokio::time::timeout(HALF_CLOSE_GRACE, pod_to_client).await;
        }
        _ = &mut pod_to_client => {
            let _ = tokio::time::timeout(HALF_CLOSE_GRACE, client_to_pod).await;
        }
    }
    let _ = data.writer.finish().await;
    let _ = error.writer.finish().await;
}
