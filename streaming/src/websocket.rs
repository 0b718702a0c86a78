//! The WebSocket transports: kubelet's `v5.channel.k8s.io` (and `v4.channel.k8s.io`) for exec
//! and attach, where each binary message's first byte names its channel (0 stdin, 1 stdout,
//! 2 stderr, 3 error, 4 resize; v5 adds `[255, n]` to close channel n), and
//! `SPDY/3.1+portforward.k8s.io` for port-forward, SPDY frames carried in binary messages (so
//! the SPDY session runs over it unchanged).

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::HeaderMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::remotecommand::{outcome_message, Run, Version};
use crate::server::Context;
use crate::spdy::{Limits, Session};
use crate::{portforward, ProcessIo, TerminalSize};

pub(crate) const V5: &str = "v5.channel.k8s.io";
pub(crate) const V4: &str = "v4.channel.k8s.io";
pub(crate) const PORT_FORWARD: &str = "SPDY/3.1+portforward.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

pub(crate) const PORT_FORWARD_PROTOCOLS: &[(&str, bool)] = &[(PORT_FORWARD, true)];

/// The channel protocols berth serves over WebSocket, by whether they can close stdin.
pub(crate) const REMOTE_COMMAND: &[(&str, bool)] = &[(V5, true), (V4, false)];

/// A WebSocket upgrade request (RFC 6455: `Upgrade: websocket` and a key).
pub(crate) fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
        })
}

/// `Sec-WebSocket-Accept` for the client's key.
pub(crate) fn accept_key(headers: &HeaderMap) -> Option<String> {
    let key = headers.get("sec-websocket-key")?;
    Some(tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

async fn websocket<IO>(io: IO) -> WebSocketStream<IO>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    WebSocketStream::from_raw_socket(io, Role::Server, None).await
}

/// Serves exec or attach over the channel protocol to its end.
pub(crate) async fn serve_remote<IO>(ctx: &Context, io: IO, run: Run, can_close: bool)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // The channel protocol has its resize channel whatever the version.
    let (verb, wanted) = (run.verb(), run.wanted(Version::V4));
    let (mut sink, mut source) = websocket(io).await.split();
    let (stdin_tx, stdin_rx) = wanted.stdin.then(|| mpsc::channel::<Bytes>(16)).unzip();
    let (resize_tx, resize_rx) = wanted
        .resize
        .then(|| mpsc::channel::<(u16, u16)>(4))
        .unzip();
    let (stdout_tx, mut stdout_rx) = wanted.stdout.then(|| mpsc::channel::<Bytes>(16)).unzip();
    let (stderr_tx, mut stderr_rx) = wanted.stderr.then(|| mpsc::channel::<Bytes>(16)).unzip();
    let bytes_in = ctx.metrics.bytes(verb, "in");
    let bytes_out = ctx.metrics.bytes(verb, "out");
    // Reading runs on its own, so a process that does not read stdin never holds up output.
    let mut reader = tokio::spawn(async move {
        let mut stdin_tx = stdin_tx;
        while let Some(Ok(message)) = source.next().await {
            let data = match message {
                Message::Binary(data) if !data.is_empty() => data,
                Message::Close(_) => break,
                _ => continue,
            };
            match data[0] {
                STDIN => {
                    bytes_in.inc_by(data.len() as u64 - 1);
                    if let Some(tx) = &stdin_tx {
                        if tx.send(data.slice(1..)).await.is_err() {
                            stdin_tx = None;
                        }
                    }
                }
                RESIZE => {
                    let size = serde_json::from_slice::<TerminalSize>(&data[1..]).ok();
                    if let (Some(tx), Some(size)) =
                        (&resize_tx, size.and_then(TerminalSize::usable))
                    {
                        let _ = tx.send(size).await;
                    }
                }
                CLOSE if can_close && data.get(1) == Some(&STDIN) => stdin_tx = None,
                _ => {}
            }
        }
    });
    let io = ProcessIo {
        stdin: stdin_rx,
        stdout: stdout_tx,
        stderr: stderr_tx,
        resize: resize_rx,
    };
    let job = run.run(ctx, io);
    tokio::pin!(job);
    let mut outcome = None;
    // Output as it comes, until the job is done and its output drained (the senders dropped).
    loop {
        let done = outcome.is_some() && stdout_rx.is_none() && stderr_rx.is_none();
        if done {
            break;
        }
        let message = tokio::select! {
            o = &mut job, if outcome.is_none() => {
                outcome = Some(o);
                continue;
            }
            data = recv(&mut stdout_rx) => match data {
                Some(d) => framed(STDOUT, &d),
                None => { stdout_rx = None; continue; }
            },
            data = recv(&mut stderr_rx) => match data {
                Some(d) => framed(STDERR, &d),
                None => { stderr_rx = None; continue; }
            },
            // The client went away: dropping the job kills an exec, detaches an attach.
            _ = &mut reader => return,
        };
        bytes_out.inc_by(message.len() as u64 - 1);
        if sink.send(Message::Binary(message)).await.is_err() {
            reader.abort();
            return;
        }
    }
    let outcome = outcome.expect("loop ends with an outcome");
    if let Some(status) = outcome_message(&outcome, Version::V4) {
        let _ = sink.send(Message::Binary(framed(ERROR, &status))).await;
    }
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })))
        .await;
    // The client answers the close; then the connection goes.
    let _ = tokio::time::timeout(Duration::from_secs(10), &mut reader).await;
    reader.abort();
}

async fn recv(rx: &mut Option<mpsc::Receiver<Bytes>>) -> Option<Bytes> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn framed(channel: u8, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(channel);
    out.extend_from_slice(data);
    Bytes::from(out)
}

/// Serves port-forward with the SPDY session running over the WebSocket's binary messages.
pub(crate) async fn serve_port_forward<IO>(
    ctx: &Context,
    io: IO,
    sandbox_id: String,
    limits: Limits,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut source) = websocket(io).await.split();
    // The session's side of an in-memory pipe; two pumps carry it to and from the messages.
    let (session_io, pipe) = tokio::io::duplex(256 * 1024);
    let (mut from_session, mut to_session) = tokio::io::split(pipe);
    let inbound = tokio::spawn(async move {
        while let Some(Ok(message)) = source.next().await {
            let data = match message {
                Message::Binary(data) => data,
                Message::Close(_) => break,
                _ => continue,
            };
            if to_session.write_all(&data).await.is_err() {
                break;
            }
        }
        // EOF for the session: the client is gone.
        let _ = to_session.shutdown().await;
    });
    let outbound = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from_session.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let data = Bytes::copy_from_slice(&buf[..n]);
                    if sink.send(Message::Binary(data)).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    });
    let (session, incoming) = Session::start(session_io, limits);
    portforward::serve_spdy(ctx, session, incoming, sandbox_id).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), outbound).await;
    inbound.abort();
}
