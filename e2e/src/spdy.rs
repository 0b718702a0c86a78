//! A SPDY/3.1 *client* for the streaming tests, written apart from berth's server (its own
//! frame reading, its own zlib streams and dictionary text), doing what client-go's
//! remotecommand and port-forward clients do: the HTTP upgrade, streams opened one at a time
//! waiting for each reply, data both ways, PINGs. It can also send what no real client sends.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;
use tokio::sync::mpsc;

/// SPDY/3's header dictionary as its spec prints it: length-prefixed words (`|` separated
/// here), then a run of text.
const WORDS: &str = "options|head|post|put|delete|trace|accept|accept-charset|accept-encoding|\
accept-language|accept-ranges|age|allow|authorization|cache-control|connection|content-base|\
content-encoding|content-language|content-length|content-location|content-md5|content-range|\
content-type|date|etag|expect|expires|from|host|if-match|if-modified-since|if-none-match|\
if-range|if-unmodified-since|last-modified|location|max-forwards|pragma|proxy-authenticate|\
proxy-authorization|range|referer|retry-after|server|te|trailer|transfer-encoding|upgrade|\
user-agent|vary|via|warning|www-authenticate|method|get|status|200 OK|version|HTTP/1.1|url|\
public|set-cookie|keep-alive|origin";
const TEXT: &str = "100101201202205206300302303304305306307402405406407408409410411412413414\
415416417502504505203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad \
Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 \
Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, \
Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,application/xml,application/\
xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=\
iso-8859-1,utf-,*,enq=0.";

fn dictionary() -> Vec<u8> {
    let mut d = Vec::new();
    for w in WORDS.split('|') {
        d.extend((w.len() as u32).to_be_bytes());
        d.extend(w.bytes());
    }
    d.extend(TEXT.bytes());
    assert_eq!(d.len(), 1423, "the SPDY/3 dictionary is 1423 bytes");
    d
}

/// The answer to the HTTP upgrade request.
#[derive(Debug)]
pub struct Upgraded {
    pub status: u16,
    /// Header names lowercase, in order, repeated as sent.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Upgraded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `http://host:port/path` → (host:port, /path).
fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    (authority.to_string(), path.to_string())
}

/// Sends the upgrade request for `url` offering `protocols`; the connection if the answer is 101.
pub async fn upgrade(
    url: &str,
    method: &str,
    protocols: &[&str],
) -> io::Result<(Upgraded, Option<TcpStream>)> {
    let (authority, path) = split_url(url);
    let mut tcp = TcpStream::connect(&authority).await?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
    );
    for p in protocols {
        request.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    request.push_str("Content-Length: 0\r\n\r\n");
    tcp.write_all(request.as_bytes()).await?;
    // Byte by byte up to the blank line: SPDY frames may follow it at once.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if tcp.read(&mut b).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "no HTTP answer",
            ));
        }
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let mut lines = text.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line in {text:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if status == 101 {
        return Ok((
            Upgraded {
                status,
                headers,
                body: String::new(),
            },
            Some(tcp),
        ));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    tcp.read_exact(&mut body).await?;
    Ok((
        Upgraded {
            status,
            headers,
            body: String::from_utf8_lossy(&body).to_string(),
        },
        None,
    ))
}

/// What happens on a stream, as the server sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Reply,
    Data(Vec<u8>),
    Fin,
    Reset(u32),
}

type StreamTable = Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Event>>>>;

/// The client end of one SPDY session.
pub struct Client {
    writer: Arc<tokio::sync::Mutex<(WriteHalf, Compress)>>,
    streams: StreamTable,
    next_id: u32,
    /// PING ids the server echoed, GOAWAYs it sent.
    pub pongs: mpsc::UnboundedReceiver<u32>,
    pub goaway: Arc<Mutex<Option<u32>>>,
    /// Set once the server closed the connection.
    pub closed: tokio::sync::watch::Receiver<bool>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

pub struct ClientStream {
    pub id: u32,
    events: mpsc::UnboundedReceiver<Event>,
    writer: Arc<tokio::sync::Mutex<(WriteHalf, Compress)>>,
}

impl ClientStream {
    pub async fn send(&self, data: &[u8]) -> io::Result<()> {
        for chunk in data.chunks(16 * 1024) {
            write_data(&self.writer, self.id, chunk, false).await?;
        }
        Ok(())
    }

    /// Half-closes our side (an empty DATA frame with FIN).
    pub async fn close(&self) -> io::Result<()> {
        write_data(&self.writer, self.id, &[], true).await
    }

    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Everything the server sends until it ends the stream, and the RST_STREAM status if it
    /// reset it rather than FIN it (client-go reads a reset as the end of the data too).
    pub async fn read_until_closed(&mut self) -> (Vec<u8>, Option<u32>) {
        let mut out = Vec::new();
        loop {
            match self.events.recv().await {
                Some(Event::Data(d)) => out.extend(d),
                Some(Event::Fin) | None => return (out, None),
                Some(Event::Reset(s)) => return (out, Some(s)),
                Some(Event::Reply) => {}
            }
        }
    }

    /// Everything the server sends until its FIN (Ok) or RST_STREAM (Err with the status).
    pub async fn read_to_end(&mut self) -> Result<Vec<u8>, u32> {
        match self.read_until_closed().await {
            (data, None) => Ok(data),
            (_, Some(status)) => Err(status),
        }
    }
}

async fn write_data(
    writer: &tokio::sync::Mutex<(WriteHalf, Compress)>,
    id: u32,
    data: &[u8],
    fin: bool,
) -> io::Result<()> {
    let mut frame = Vec::with_capacity(8 + data.len());
    frame.extend(id.to_be_bytes());
    frame.push(fin as u8);
    frame.extend(&(data.len() as u32).to_be_bytes()[1..]);
    frame.extend(data);
    writer.lock().await.0.write_all(&frame).await
}

fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80, 0x03];
    f.extend(kind.to_be_bytes());
    f.push(flags);
    f.extend(&(body.len() as u32).to_be_bytes()[1..]);
    f.extend(body);
    f
}

fn deflate(z: &mut Compress, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut raw = Vec::new();
    raw.extend((headers.len() as u32).to_be_bytes());
    for (n, v) in headers {
        raw.extend((n.len() as u32).to_be_bytes());
        raw.extend(n.bytes());
        raw.extend((v.len() as u32).to_be_bytes());
        raw.extend(v.bytes());
    }
    let mut out = Vec::with_capacity(raw.len() * 2 + 128);
    z.compress_vec(&raw, &mut out, FlushCompress::Sync).unwrap();
    assert!(out.len() < out.capacity(), "header block fits");
    out
}

impl Client {
    /// A session over `io`: the upgraded TCP connection, or a tunnel through WebSocket.
    pub fn new<IO: AsyncRead + AsyncWrite + Send + 'static>(io: IO) -> Client {
        let (read, write) = tokio::io::split(io);
        let (read, write): (ReadHalf, WriteHalf) = (Box::new(read), Box::new(write));
        let mut z = Compress::new(Compression::fast(), true);
        z.set_dictionary(&dictionary()).unwrap();
        let streams: StreamTable = Arc::default();
        let (pong_tx, pongs) = mpsc::unbounded_channel();
        let goaway = Arc::new(Mutex::new(None));
        let (closed_tx, closed) = tokio::sync::watch::channel(false);
        let writer = Arc::new(tokio::sync::Mutex::new((write, z)));
        let reader = tokio::spawn(read_frames(
            read,
            streams.clone(),
            pong_tx,
            goaway.clone(),
            closed_tx,
        ));
        Client {
            writer,
            streams,
            next_id: 1,
            pongs,
            goaway,
            closed,
            reader,
        }
    }

    /// Opens a stream and waits for the server's answer: the stream, or the RST status.
    pub async fn open(&mut self, headers: &[(&str, &str)]) -> Result<ClientStream, u32> {
        let id = self.next_id;
        self.next_id += 2;
        self.open_as(id, headers).await
    }

    /// Opens a stream with an id of the caller's choosing (even, reused: what a bad client does).
    pub async fn open_as(
        &mut self,
        id: u32,
        headers: &[(&str, &str)],
    ) -> Result<ClientStream, u32> {
        let (tx, mut events) = mpsc::unbounded_channel();
        self.streams.lock().unwrap().insert(id, tx);
        {
            let mut w = self.writer.lock().await;
            let block = deflate(&mut w.1, headers);
            let mut body = Vec::new();
            body.extend(id.to_be_bytes());
            body.extend(0u32.to_be_bytes());
            body.extend([0, 0]);
            body.extend(block);
            w.0.write_all(&control(1, 0, &body))
                .await
                .map_err(|_| 0u32)?;
        }
        match events.recv().await {
            Some(Event::Reply) => Ok(ClientStream {
                id,
                events,
                writer: self.writer.clone(),
            }),
            Some(Event::Reset(s)) => Err(s),
            // The connection went first.
            None => Err(0),
            other => panic!("stream {id}: expected a reply, got {other:?}"),
        }
    }

    pub async fn ping(&self, id: u32) -> io::Result<()> {
        let frame = control(6, 0, &id.to_be_bytes());
        self.writer.lock().await.0.write_all(&frame).await
    }

    /// Bytes as they are, for frames no client should send.
    pub async fn send_raw(&self, bytes: &[u8]) -> io::Result<()> {
        self.writer.lock().await.0.write_all(bytes).await
    }

    /// Waits until the server has closed the connection.
    pub async fn wait_closed(&mut self) {
        let _ = self.closed.wait_for(|c| *c).await;
    }
}

async fn read_frames(
    mut read: ReadHalf,
    streams: StreamTable,
    pongs: mpsc::UnboundedSender<u32>,
    goaway: Arc<Mutex<Option<u32>>>,
    closed: tokio::sync::watch::Sender<bool>,
) {
    let mut z = Decompress::new(true);
    let dict = dictionary();
    let send = |id: u32, e: Event| {
        if let Some(tx) = streams.lock().unwrap().get(&id) {
            let _ = tx.send(e);
        }
    };
    loop {
        let mut head = [0u8; 8];
        if read.read_exact(&mut head).await.is_err() {
            break;
        }
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        let mut body = vec![0u8; len];
        if read.read_exact(&mut body).await.is_err() {
            break;
        }
        let flags = head[4];
        if head[0] & 0x80 == 0 {
            let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            if !body.is_empty() {
                send(id, Event::Data(body));
            }
            if flags & 1 != 0 {
                send(id, Event::Fin);
            }
            continue;
        }
        let word = |i: usize| u32::from_be_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]);
        match u16::from_be_bytes([head[2], head[3]]) {
            2 => {
                let id = word(0) & 0x7fff_ffff;
                // Inflate the block (checking the server's zlib stream), then the reply.
                let mut out = Vec::with_capacity(4096);
                if let Err(e) = z.decompress_vec(&body[4..], &mut out, FlushDecompress::Sync) {
                    assert!(e.needs_dictionary().is_some(), "SYN_REPLY headers: {e}");
                    z.set_dictionary(&dict).unwrap();
                    let used = z.total_in() as usize;
                    z.decompress_vec(&body[4 + used..], &mut out, FlushDecompress::Sync)
                        .expect("SYN_REPLY headers inflate with the dictionary");
                }
                send(id, Event::Reply);
                if flags & 1 != 0 {
                    send(id, Event::Fin);
                }
            }
            3 => send(word(0) & 0x7fff_ffff, Event::Reset(word(4))),
            6 => {
                let _ = pongs.send(word(0));
            }
            7 => *goaway.lock().unwrap() = Some(word(4)),
            _ => {}
        }
    }
    // Every stream ends with the connection.
    streams.lock().unwrap().clear();
    let _ = closed.send(true);
}

/// What a remotecommand session (exec or attach) sends and gets, as client-go's v4 client does it.
#[derive(Debug, Default, Clone)]
pub struct Session {
    /// Sent on the stdin stream, which is then closed unless `keep_stdin_open`.
    pub stdin: Option<Vec<u8>>,
    pub keep_stdin_open: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
    /// Sent on the resize stream as `{"Width":w,"Height":h}` lines.
    pub resize: Vec<(u16, u16)>,
}

#[derive(Debug)]
pub struct Outcome {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The error stream's `metav1.Status` (`Success` when it was empty).
    pub status: serde_json::Value,
}

impl Outcome {
    /// The exit code the status reports, as kubectl reads it.
    pub fn exit_code(&self) -> i32 {
        if self.status["status"] == "Success" {
            return 0;
        }
        self.status["details"]["causes"][0]["message"]
            .as_str()
            .and_then(|m| m.parse().ok())
            .unwrap_or(-1)
    }
}

/// The streams a session needs, opened in client-go's order.
pub struct SessionStreams {
    pub client: Client,
    pub error: ClientStream,
    pub stdin: Option<ClientStream>,
    pub stdout: Option<ClientStream>,
    pub stderr: Option<ClientStream>,
    pub resize: Option<ClientStream>,
}

/// Upgrades `url` with v4 and opens the streams `s` asks for.
pub async fn open_session(url: &str, s: &Session) -> SessionStreams {
    let (answer, tcp) = upgrade(url, "POST", &["v4.channel.k8s.io"]).await.unwrap();
    assert_eq!(answer.status, 101, "{answer:?}");
    assert_eq!(
        answer.header("x-stream-protocol-version"),
        Some("v4.channel.k8s.io")
    );
    let mut client = Client::new(tcp.unwrap());
    let error = open_kind(&mut client, "error", true).await.unwrap();
    let stdin = open_kind(&mut client, "stdin", s.stdin.is_some()).await;
    let stdout = open_kind(&mut client, "stdout", s.stdout).await;
    let stderr = open_kind(&mut client, "stderr", s.stderr).await;
    let resize = open_kind(&mut client, "resize", s.tty).await;
    SessionStreams {
        client,
        error,
        stdin,
        stdout,
        stderr,
        resize,
    }
}

async fn open_kind(client: &mut Client, kind: &str, wanted: bool) -> Option<ClientStream> {
    if !wanted {
        return None;
    }
    let opened = client.open(&[("streamtype", kind)]).await;
    Some(opened.unwrap_or_else(|rst| panic!("{kind} stream refused with {rst}")))
}

/// Runs a whole session: opens the streams, sends stdin and resizes, reads to the end.
pub async fn run_session(url: &str, s: &Session) -> Outcome {
    let streams = open_session(url, s).await;
    finish_session(streams, s).await
}

pub async fn finish_session(mut streams: SessionStreams, s: &Session) -> Outcome {
    if let Some(resize) = &streams.resize {
        for (w, h) in &s.resize {
            resize
                .send(format!("{{\"Width\":{w},\"Height\":{h}}}\n").as_bytes())
                .await
                .unwrap();
        }
    }
    let stdin = streams.stdin.take();
    let data = s.stdin.clone().unwrap_or_default();
    let keep_open = s.keep_stdin_open;
    let feed = async move {
        if let Some(stdin) = &stdin {
            stdin.send(&data).await.unwrap();
            if !keep_open {
                stdin.close().await.unwrap();
            }
        }
        stdin
    };
    let read = |stream: Option<ClientStream>| async move {
        match stream {
            Some(mut st) => st.read_until_closed().await.0,
            None => Vec::new(),
        }
    };
    // A session that never ends is a failure, not a hung test.
    let (_stdin, stdout, stderr, error) =
        tokio::time::timeout(std::time::Duration::from_secs(120), async {
            tokio::join!(
                feed,
                read(streams.stdout.take()),
                read(streams.stderr.take()),
                streams.error.read_until_closed()
            )
        })
        .await
        .expect("the session ends within 2 minutes");
    // berth FINs the error stream; containerd's server may reset it once written.
    let (error, _) = error;
    let status = if error.is_empty() {
        serde_json::json!({"status": "Success"})
    } else {
        serde_json::from_slice(&error)
            .unwrap_or_else(|e| panic!("error stream {:?}: {e}", String::from_utf8_lossy(&error)))
    };
    Outcome {
        stdout,
        stderr,
        status,
    }
}
