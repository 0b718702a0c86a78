//! A server-side SPDY/3.1 session over any byte stream (a TCP connection after the HTTP upgrade,
//! or WebSocket messages for port-forward over WebSocket).
//!
//! Two tasks per session: the reader parses frames, answers PINGs, hands each new stream to the
//! application and feeds data into the stream's bounded queue (a full queue holds up reading, so
//! a client that sends faster than the process reads is slowed by TCP, not by memory); the writer
//! owns the outbound zlib stream and writes what the application and the reader queue. No
//! window-based flow control: the Go client neither sends nor honours WINDOW_UPDATE.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::frame::{goaway, rst, Decoder, Frame};
use super::headers::{Deflater, Headers, Inflater};

/// Data frames berth sends carry at most this much.
pub const MAX_DATA_FRAME: usize = 128 * 1024;

#[derive(Debug, Clone)]
pub struct Limits {
    /// The longest control frame accepted (data frames may be as long as SPDY allows).
    pub max_control_frame: usize,
    /// The most a header block may inflate to.
    pub max_header_block: usize,
    /// Streams open at once; more are refused with RST_STREAM.
    pub max_streams: usize,
    /// Data frames queued per stream before reading the connection waits.
    pub stream_queue: usize,
    /// The session ends after this long with nothing received (the Go client pings every 5 s).
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_control_frame: 1 << 20,
            max_header_block: 64 * 1024,
            max_streams: 1024,
            stream_queue: 16,
            idle_timeout: Duration::from_secs(4 * 3600),
        }
    }
}

enum Out {
    Frame(Frame),
    Reply {
        stream: u32,
    },
    /// Write out what came before, then close our side of the connection.
    Shutdown,
}

/// What one stream shares between its reader, its writers and the session.
struct StreamState {
    id: u32,
    /// The client reset it: nothing more is sent.
    reset: AtomicBool,
    /// We sent FIN (or RST): nothing more is sent.
    closed: AtomicBool,
    live: Arc<AtomicUsize>,
}

impl Drop for StreamState {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A stream the client opened. Answer it with [`StreamWriter::reply`] or
/// [`StreamWriter::refuse`] at once: the Go client opens the next stream only after the reply.
pub struct IncomingStream {
    pub id: u32,
    pub headers: Headers,
    pub reader: StreamReader,
    pub writer: StreamWriter,
}

/// The client's data on one stream, in order; `None` after its FIN or RST_STREAM.
pub struct StreamReader {
    rx: mpsc::Receiver<Bytes>,
}

impl StreamReader {
    pub async fn read(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }

    pub fn into_receiver(self) -> mpsc::Receiver<Bytes> {
        self.rx
    }
}

/// Sends on one stream. Clones share the stream; after FIN or RST nothing more is sent.
#[derive(Clone)]
pub struct StreamWriter {
    out: mpsc::Sender<Out>,
    state: Arc<StreamState>,
}

/// The connection is gone: nothing can be sent any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the SPDY session is closed")]
pub struct Closed;

impl StreamWriter {
    pub fn id(&self) -> u32 {
        self.state.id
    }

    /// SYN_REPLY with no headers: the stream is accepted.
    pub async fn reply(&self) -> Result<(), Closed> {
        let stream = self.state.id;
        self.out
            .send(Out::Reply { stream })
            .await
            .map_err(|_| Closed)
    }

    /// RST_STREAM(REFUSED_STREAM): not a stream this request wants.
    pub async fn refuse(&self) {
        self.reset(rst::REFUSED_STREAM).await;
    }

    /// Sends `data` in frames of at most [`MAX_DATA_FRAME`] bytes. Sending on a stream that is
    /// closed or reset drops the data (the client no longer wants it) without an error.
    pub async fn write(&self, mut data: Bytes) -> Result<(), Closed> {
        while !data.is_empty() {
            if self.is_done() {
                return Ok(());
            }
            let chunk = data.split_to(data.len().min(MAX_DATA_FRAME));
            self.send(Frame::Data {
                stream: self.state.id,
                fin: false,
                data: chunk,
            })
            .await?;
        }
        Ok(())
    }

    /// Half-closes our side with an empty FIN data frame (once).
    pub async fn finish(&self) -> Result<(), Closed> {
        if self.state.reset.load(Ordering::SeqCst) || self.state.closed.swap(true, Ordering::SeqCst)
        {
            return Ok(());
        }
        let stream = self.state.id;
        self.send(Frame::Data {
            stream,
            fin: true,
            data: Bytes::new(),
        })
        .await
    }

    /// RST_STREAM with `status` (once); the stream is finished both ways.
    pub async fn reset(&self, status: u32) {
        if self.state.reset.load(Ordering::SeqCst) || self.state.closed.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let stream = self.state.id;
        let _ = self.send(Frame::RstStream { stream, status }).await;
    }

    fn is_done(&self) -> bool {
        self.state.reset.load(Ordering::SeqCst) || self.state.closed.load(Ordering::SeqCst)
    }

    async fn send(&self, frame: Frame) -> Result<(), Closed> {
        self.out.send(Out::Frame(frame)).await.map_err(|_| Closed)
    }
}

/// How the session ended, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The client closed the connection (or sent GOAWAY).
    ClientClosed,
    /// Nothing arrived for the idle timeout.
    Idle,
    /// The client broke the protocol; we sent GOAWAY.
    ProtocolError(String),
    /// Reading or writing the connection failed.
    Io(String),
}

/// One session: the application's handle on the connection. Dropping it ends both tasks and
/// closes the connection.
pub struct Session {
    out: mpsc::Sender<Out>,
    ended: watch::Receiver<Option<End>>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

impl Session {
    /// Starts serving `io`; new streams arrive on the returned receiver.
    pub fn start<IO>(io: IO, limits: Limits) -> (Session, mpsc::Receiver<IncomingStream>)
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::channel(64);
        let (accept_tx, accept_rx) = mpsc::channel(8);
        let (ended_tx, ended) = watch::channel(None);
        let ended_tx = Arc::new(ended_tx);
        let writer = tokio::spawn(write_loop(write, out_rx, ended_tx.clone()));
        let reader = tokio::spawn(read_loop(read, limits, out_tx.clone(), accept_tx, ended_tx));
        (
            Session {
                out: out_tx,
                ended,
                reader,
                writer,
            },
            accept_rx,
        )
    }

    /// Waits until the client has closed the connection (or it failed).
    pub async fn ended(&self) -> End {
        let mut ended = self.ended.clone();
        let end = ended.wait_for(|e| e.is_some()).await.map(|e| e.clone());
        end.ok().flatten().unwrap_or(End::ClientClosed)
    }

    /// Sends GOAWAY: no new streams. Existing ones carry on.
    pub async fn go_away(&self) {
        let _ = self
            .out
            .send(Out::Frame(Frame::GoAway {
                last_good: 0,
                status: goaway::OK,
            }))
            .await;
    }

    /// Writes out everything queued so far and closes our side of the connection (waiting at
    /// most `limit` for a client that does not read).
    /// A session refused for a protocol error also lets the reader finish its [`linger`].
    pub async fn close(&mut self, limit: Duration) {
        if self.out.send(Out::Shutdown).await.is_ok() {
            let _ = tokio::time::timeout(limit, &mut self.writer).await;
        }
        let refused = matches!(*self.ended.borrow(), Some(End::ProtocolError(_)));
        if refused {
            let _ = tokio::time::timeout(LINGER, &mut self.reader).await;
        }
    }
}

fn set_end(ended: &watch::Sender<Option<End>>, end: End) {
    ended.send_if_modified(|e| {
        if e.is_none() {
            *e = Some(end);
            true
        } else {
            false
        }
    });
}

async fn write_loop<W: AsyncWrite>(
    write: W,
    mut out: mpsc::Receiver<Out>,
    ended: Arc<watch::Sender<Option<End>>>,
) {
    tokio::pin!(write);
    let mut deflater = Deflater::new();
    let mut batch = Batch::default();
    while let Some(first) = out.recv().await {
        let mut next = Some(first);
        let mut shutdown = false;
        // Coalesce what is already queued into one write.
        while let Some(item) = next.take() {
            match item {
                Out::Shutdown => {
                    shutdown = true;
                    break;
                }
                Out::Frame(f) => batch.push(f),
                Out::Reply { stream } => batch.push(Frame::SynReply {
                    stream,
                    fin: false,
                    headers: deflater.encode(&[]).into(),
                }),
            }
            if batch.len < 1024 * 1024 {
                next = out.try_recv().ok();
            }
        }
        if let Err(e) = batch.write_to(&mut write).await {
            set_end(&ended, End::Io(format!("write: {e}")));
            return;
        }
        if shutdown {
            break;
        }
    }
    let _ = write.flush().await;
    let _ = write.shutdown().await;
}

/// Frames waiting to be written in one go: small ones encoded into a buffer, a large data
/// frame's payload kept as it came (written with writev, not copied).
#[derive(Default)]
struct Batch {
    head: BytesMut,
    parts: Vec<Bytes>,
    len: usize,
}

impl Batch {
    fn push(&mut self, frame: Frame) {
        match frame {
            Frame::Data { stream, fin, data } if data.len() >= 4096 => {
                super::frame::encode_data_head(stream, fin, data.len(), &mut self.head);
                self.parts.push(self.head.split().freeze());
                self.len += 8 + data.len();
                self.parts.push(data);
            }
            frame => {
                let before = self.head.len();
                frame.encode(&mut self.head);
                self.len += self.head.len() - before;
            }
        }
    }

    async fn write_to<W: AsyncWrite>(
        &mut self,
        write: &mut std::pin::Pin<&mut W>,
    ) -> std::io::Result<()> {
        if !self.head.is_empty() {
            self.parts.push(self.head.split().freeze());
        }
        let mut parts = std::mem::take(&mut self.parts);
        let mut first = 0;
        while first < parts.len() {
            let slices: Vec<std::io::IoSlice<'_>> = parts[first..]
                .iter()
                .take(64)
                .map(|b| std::io::IoSlice::new(b))
                .collect();
            let mut n = write.write_vectored(&slices).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            while n > 0 {
                let part = &mut parts[first];
                if n >= part.len() {
                    n -= part.len();
                    first += 1;
                } else {
                    let _ = part.split_to(n);
                    n = 0;
                }
            }
        }
        parts.clear();
        self.parts = parts;
        self.len = 0;
        Ok(())
    }
}

/// A client stream the reader still takes data for.
struct Open {
    data: Option<mpsc::Sender<Bytes>>,
    state: Arc<StreamState>,
}

async fn read_loop<R: AsyncRead>(
    read: R,
    limits: Limits,
    out: mpsc::Sender<Out>,
    accept: mpsc::Sender<IncomingStream>,
    ended: Arc<watch::Sender<Option<End>>>,
) {
    tokio::pin!(read);
    let decoder = Decoder::new(limits.max_control_frame);
    let mut inflater = Inflater::new(limits.max_header_block);
    let live = Arc::new(AtomicUsize::new(0));
    let mut open: HashMap<u32, Open> = HashMap::new();
    let mut last_id = 0u32;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let rst = |stream: u32, status: u32| Out::Frame(Frame::RstStream { stream, status });
    let protocol_error = |why: String| async {
        let _ = out
            .send(Out::Frame(Frame::GoAway {
                last_good: 0,
                status: goaway::PROTOCOL_ERROR,
            }))
            .await;
        End::ProtocolError(why)
    };
    let end = 'session: loop {
        let frame = loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => break frame,
                Ok(None) => {}
                Err(e) => break 'session protocol_error(e.to_string()).await,
            }
            match tokio::time::timeout(limits.idle_timeout, read.read_buf(&mut buf)).await {
                Err(_) => break 'session End::Idle,
                Ok(Ok(0)) => break 'session End::ClientClosed,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => break 'session End::Io(format!("read: {e}")),
            }
        };
        match frame {
            Frame::SynStream {
                stream,
                fin,
                headers,
                ..
            } => {
                // The zlib stream carries over frames: a block that fails breaks the session.
                let headers = match inflater.decode(&headers) {
                    Ok(h) => h,
                    Err(e) => break 'session protocol_error(e.to_string()).await,
                };
                if stream == 0 || stream % 2 == 0 {
                    let _ = out.send(rst(stream, rst::PROTOCOL_ERROR)).await;
                    continue;
                }
                if stream <= last_id {
                    let _ = out.send(rst(stream, rst::STREAM_IN_USE)).await;
                    continue;
                }
                last_id = stream;
                if live.load(Ordering::SeqCst) >= limits.max_streams || accept.is_closed() {
                    let _ = out.send(rst(stream, rst::REFUSED_STREAM)).await;
                    continue;
                }
                live.fetch_add(1, Ordering::SeqCst);
                let state = Arc::new(StreamState {
                    id: stream,
                    reset: AtomicBool::new(false),
                    closed: AtomicBool::new(false),
                    live: live.clone(),
                });
                let (data_tx, data_rx) = mpsc::channel(limits.stream_queue);
                let incoming = IncomingStream {
                    id: stream,
                    headers,
                    reader: StreamReader { rx: data_rx },
                    writer: StreamWriter {
                        out: out.clone(),
                        state: state.clone(),
                    },
                };
                if !fin {
                    open.insert(
                        stream,
                        Open {
                            data: Some(data_tx),
                            state,
                        },
                    );
                }
                if accept.send(incoming).await.is_err() {
                    open.remove(&stream);
                    let _ = out.send(rst(stream, rst::REFUSED_STREAM)).await;
                }
            }
            Frame::Data { stream, fin, data } => {
                let Some(entry) = open.get_mut(&stream) else {
                    let status = if stream <= last_id && stream % 2 == 1 {
                        rst::STREAM_ALREADY_CLOSED
                    } else {
                        rst::INVALID_STREAM
                    };
                    let _ = out.send(rst(stream, status)).await;
                    continue;
                };
                if !data.is_empty() {
                    if let Some(tx) = &entry.data {
                        // The application stopped reading: the data is not wanted.
                        if tx.send(data).await.is_err() {
                            entry.data = None;
                        }
                    }
                }
                if fin {
                    open.remove(&stream);
                }
            }
            Frame::RstStream { stream, .. } => {
                if let Some(entry) = open.remove(&stream) {
                    entry.state.reset.store(true, Ordering::SeqCst);
                }
            }
            Frame::Ping { id } => {
                let _ = out.send(Out::Frame(Frame::Ping { id })).await;
            }
            Frame::GoAway { .. } => break 'session End::ClientClosed,
            Frame::Headers { headers, .. } => {
                if let Err(e) = inflater.decode(&headers) {
                    break 'session protocol_error(e.to_string()).await;
                }
            }
            Frame::SynReply { stream, .. } => {
                // The server opens no streams, so there is nothing a client could reply to.
                let _ = out.send(rst(stream, rst::PROTOCOL_ERROR)).await;
            }
            Frame::Settings | Frame::WindowUpdate { .. } | Frame::Unknown { .. } => {}
        }
    };
    for (_, entry) in open.drain() {
        entry.state.reset.store(true, Ordering::SeqCst);
    }
    let refused = matches!(end, End::ProtocolError(_));
    set_end(&ended, end);
    if refused {
        linger(read).await;
    }
}

/// After a GOAWAY for a protocol error: reads and drops what the client still sends, until it
/// closes, for at most [`LINGER`] or [`LINGER_BYTES`]. Closing a socket with unread data makes
/// the kernel answer with a reset, which can destroy the GOAWAY before the client has read it
/// (a client still writing a 1 MiB header block, on a slow machine).
async fn linger<R: AsyncRead>(mut read: std::pin::Pin<&mut R>) {
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    while total < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, read.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => total += n,
            _ => return,
        }
    }
}

const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 16 << 20;
