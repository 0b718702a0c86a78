//! A loopback HTTP proxy in front of a real test registry that injects the faults a real
//! registry cannot be made to produce on cue: a connection closed mid-blob, a 500, a stall.
//! (A wrong digest is produced for real, by corrupting the registry's own storage.)

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What happens to blob GETs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Pass everything through.
    None,
    /// Send the response head and half the body, then close the connection.
    CloseMidBody,
    /// Answer 500 with a registry-style error body.
    ServerError,
    /// Send the head and a few bytes of body, then nothing for a long time.
    Stall,
    /// Send the head and half of a body larger than 64 KiB (a layer, not a config), then
    /// nothing for a long time; smaller bodies pass.
    StallHalfway,
    /// Answer 500 with a body that never ends (64 KiB a millisecond, until the client goes:
    /// fast enough to find an unbounded read, slow enough not to take the host's memory).
    EndlessError,
}

struct State {
    fault: Mutex<Fault>,
    blob_requests: AtomicUsize,
    /// Every request head seen, as sent.
    heads: Mutex<Vec<String>>,
    stop: AtomicBool,
}

/// The proxy; stops on drop (its listener thread exits at the next connection or poll).
pub struct FaultProxy {
    address: String,
    state: Arc<State>,
}

impl FaultProxy {
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fault proxy");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let address = listener.local_addr().expect("proxy address").to_string();
        let state = Arc::new(State {
            fault: Mutex::new(Fault::None),
            blob_requests: AtomicUsize::new(0),
            heads: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let upstream = upstream.to_string();
        let thread_state = state.clone();
        std::thread::spawn(move || {
            while !thread_state.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let state = thread_state.clone();
                        let upstream = upstream.clone();
                        std::thread::spawn(move || {
                            let _ = serve(client, &upstream, &state);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FaultProxy { address, state }
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn set(&self, fault: Fault) {
        *self.state.fault.lock().unwrap() = fault;
    }

    /// The heads of every request seen so far (request line and headers).
    pub fn requests(&self) -> Vec<String> {
        self.state.heads.lock().unwrap().clone()
    }

    /// Blob GETs seen so far.
    pub fn blob_requests(&self) -> usize {
        self.state.blob_requests.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads one request head (up to the blank line).
fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
        if head.len() > 64 * 1024 {
            return Err(std::io::Error::other("request head too large"));
        }
    }
    Ok(head)
}

/// One request per connection: rewrite it to close after the answer, forward, maybe break it.
fn serve(mut client: TcpStream, upstream: &str, state: &State) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    let head = read_head(&mut client)?;
    let text = String::from_utf8_lossy(&head).into_owned();
    state.heads.lock().unwrap().push(text.clone());
    let request_line = text.lines().next().unwrap_or("").to_string();
    let is_blob_get = request_line.starts_with("GET ") && request_line.contains("/blobs/sha256:");
    let fault = if is_blob_get {
        state.blob_requests.fetch_add(1, Ordering::Relaxed);
        *state.fault.lock().unwrap()
    } else {
        Fault::None
    };
    if fault == Fault::ServerError {
        let body = r#"{"errors":[{"code":"UNKNOWN","message":"injected failure"}]}"#;
        write!(
            client,
            "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return Ok(());
    }
    if fault == Fault::EndlessError {
        write!(
            client,
            "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{{\"errors\":[{{\"code\":\"UNKNOWN\",\"message\":\""
        )?;
        let chunk = vec![b'x'; 64 * 1024];
        while !state.stop.load(Ordering::Relaxed) {
            client.write_all(&chunk)?;
            std::thread::sleep(Duration::from_millis(1));
        }
        return Ok(());
    }
    // Forward with the connection closed after one answer, so we can copy until EOF.
    let mut forwarded = String::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        if line.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        forwarded.push_str(line);
        forwarded.push_str("\r\n");
    }
    forwarded.push_str("Connection: close\r\n\r\n");
    let mut server = TcpStream::connect(upstream)?;
    server.write_all(forwarded.as_bytes())?;
    // Request bodies (pushes) are not proxied: the tests push to the registry directly.
    let mut response = Vec::new();
    server.read_to_end(&mut response)?;
    let body_start = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(response.len());
    let half = body_start + (response.len() - body_start) / 2;
    // Where the answer stops, for the faults that stall there.
    let stall_at = match fault {
        Fault::CloseMidBody => {
            client.write_all(&response[..half])?;
            client.flush()?;
            let _ = client.shutdown(Shutdown::Both);
            return Ok(());
        }
        Fault::Stall => (body_start + 16).min(response.len()),
        Fault::StallHalfway if response.len() - body_start > 64 * 1024 => half,
        _ => return client.write_all(&response),
    };
    client.write_all(&response[..stall_at])?;
    client.flush()?;
    std::thread::sleep(Duration::from_secs(120));
    Ok(())
}
