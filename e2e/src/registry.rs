//! A private registry for tests: Debian's `docker-registry` (distribution 2.8) on a free loopback
//! port with its storage in a temporary directory, optionally behind token auth served by a small
//! token server of our own; plus the tiny HTTP/1.1 client the fixture and the tests speak with.
//!
//! Token auth follows the Docker token spec as distribution 2.8 verifies it
//! (`registry/auth/token/token.go`): an RS256 JWT whose header carries the signing certificate in
//! `x5c` (verified against `rootcertbundle`), with `iss`, `aud` (a single string, the service),
//! `exp`/`nbf` (60 s leeway) and the granted `access`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::{free_port, TempDir};

/// Debian's `docker-registry` package (distribution 2.8).
const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Ports come from `free_port()`, which can race with other tests: retry on "address in use".
const BIND_ATTEMPTS: usize = 5;
const IO_TIMEOUT: Duration = Duration::from_secs(60);
const TOKEN_LIFETIME_SECS: u64 = 300;

/// The `service` the token registry names in its challenges (the JWT `aud`).
pub const TOKEN_SERVICE: &str = "berth-test-registry";
/// The `iss` of every token the fixture's token server signs.
pub const TOKEN_ISSUER: &str = "berth-test-token-issuer";

/// Every manifest media type. distribution 2.8 answers a GET by tag with 404 for an OCI manifest
/// the client does not accept, and rewrites a Docker schema 2 one to schema 1.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// A running `docker-registry` with its own port and storage; killed and removed on drop.
pub struct TestRegistry {
    child: Child,
    address: String,
    config: PathBuf,
    /// Credentials the fixture itself pushes and reads with, and the tokens it got per scope.
    client: Option<ClientAuth>,
    token_server: Option<TokenServer>,
    dir: TempDir,
}

struct ClientAuth {
    user: String,
    password: String,
    tokens: Mutex<HashMap<String, String>>,
}

impl TestRegistry {
    /// A registry without authentication.
    pub fn start() -> TestRegistry {
        Self::launch(TempDir::new("berth-registry"), None, "")
    }

    /// A registry that demands Bearer tokens from the fixture's token server, which hands them to
    /// any of `users` (HTTP Basic on GET, or the OAuth2 password/refresh_token POST form). The
    /// fixture's own requests authenticate as the first user.
    pub fn start_with_token_auth(users: &[(&str, &str)]) -> TestRegistry {
        let (user, password) = *users
            .first()
            .expect("token auth needs at least one user: the fixture pushes as the first");
        let dir = TempDir::new("berth-registry");
        let server = TokenServer::start(dir.path(), users);
        let auth = format!(
            "auth:\n  token:\n    realm: {}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    \
             rootcertbundle: {}\n",
            server.realm(),
            server.cert.display()
        );
        let client = ClientAuth {
            user: user.to_string(),
            password: password.to_string(),
            tokens: Mutex::new(HashMap::new()),
        };
        Self::launch(dir, Some((server, client)), &auth)
    }

    fn launch(
        dir: TempDir,
        auth: Option<(TokenServer, ClientAuth)>,
        auth_yaml: &str,
    ) -> TestRegistry {
        let config = dir.path().join("config.yml");
        let storage = dir.path().join("storage");
        let secret = sha256_digest(format!("{:?}{:?}", dir.path(), SystemTime::now()).as_bytes());
        let (token_server, client) = match auth {
            Some((server, client)) => (Some(server), Some(client)),
            None => (None, None),
        };
        let write_config = |address: &str| {
            let text = format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
                 delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: {address}\n  secret: {}\n{auth_yaml}",
                storage.display(),
                &secret[7..]
            );
            std::fs::write(&config, text).expect("write registry config");
        };
        let address = format!("127.0.0.1:{}", free_port());
        write_config(&address);
        let child = spawn_registry(&config, &dir.path().join("registry.log"));
        let mut registry = TestRegistry {
            child,
            address,
            config: config.clone(),
            client,
            token_server,
            dir,
        };
        // From here on a panic drops `registry`, which kills the child and removes the dir.
        for attempt in 1.. {
            match registry.wait_ready() {
                Ok(()) => return registry,
                Err(log) if log.contains("address already in use") && attempt < BIND_ATTEMPTS => {
                    registry.address = format!("127.0.0.1:{}", free_port());
                    write_config(&registry.address);
                    registry.child = spawn_registry(&registry.config, &registry.log_path());
                }
                Err(log) => panic!("docker-registry did not start:\n{log}"),
            }
        }
        unreachable!()
    }

    /// Waits until our registry logs that it listens on its address (so whatever answers there
    /// is ours, not another test's that took the port first) and `GET /v2/` answers at all (200,
    /// or 401 with token auth); Err(log) if the registry exited or did not answer in time.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let listening = format!("listening on {}", self.address);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited with {status}:\n{}", self.log()));
            }
            if self.log().contains(&listening)
                && http_request(&self.address, "GET", "/v2/", &[], b"").is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no answer after {READY_TIMEOUT:?}:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `127.0.0.1:PORT`, the registry host of image references pushed here.
    pub fn address(&self) -> String {
        self.address.clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The temporary directory holding config, storage, log (and token key and cert).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The registry's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The token server's URL (`http://127.0.0.1:PORT/token`) for a token-auth registry.
    pub fn realm(&self) -> Option<String> {
        self.token_server.as_ref().map(TokenServer::realm)
    }

    /// The PEM certificate the registry trusts for token signatures, for a token-auth registry.
    pub fn token_cert(&self) -> Option<&Path> {
        self.token_server.as_ref().map(|s| s.cert.as_path())
    }

    /// How many requests reached the token server's `/token` (0 without token auth).
    pub fn token_requests(&self) -> usize {
        self.token_server
            .as_ref()
            .map_or(0, |s| s.state.requests.load(Ordering::SeqCst))
    }

    /// Sends a request to the registry, getting and presenting a Bearer token first if the
    /// registry wants one (scope `repository:<name>:pull,push`, as the first user).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<HttpResponse> {
        let Some(client) = &self.client else {
            return http_request(&self.address, method, path, headers, body);
        };
        // Ask for the token before sending: a registry answering 401 early to a large PUT
        // resets the connection while the body is still being written.
        let scope = scope_for(path);
        for fresh in [false, true] {
            let cached = client.tokens.lock().unwrap().get(&scope).cloned();
            let token = match cached {
                Some(token) if !fresh => token,
                _ => {
                    let realm = self.realm().expect("token auth has a realm");
                    let token = fetch_token(
                        &realm,
                        TOKEN_SERVICE,
                        &scope,
                        &client.user,
                        &client.password,
                    )?;
                    client
                        .tokens
                        .lock()
                        .unwrap()
                        .insert(scope.clone(), token.clone());
                    token
                }
            };
            let bearer = format!("Bearer {token}");
            let mut with_auth = headers.to_vec();
            with_auth.push(("Authorization", &bearer));
            let response = http_request(&self.address, method, path, &with_auth, body)?;
            if response.status != 401 || fresh {
                return Ok(response);
            }
        }
        unreachable!()
    }

    /// Whether the registry holds blob `digest` in `repo`.
    pub fn blob_exists(&self, repo: &str, digest: &str) -> bool {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let response = self.request("HEAD", &path, &[], b"").expect("HEAD blob");
        response.status == 200
    }

    /// Uploads `bytes` as a blob of `repo` (monolithic: POST, then PUT with the digest), unless
    /// it is already there; returns its digest.
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        if self.blob_exists(repo, &digest) {
            return digest;
        }
        let start = self
            .request("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], b"")
            .expect("POST blob upload");
        assert_eq!(
            start.status,
            202,
            "start upload to {repo}: {}",
            start.describe()
        );
        let location = start
            .header("location")
            .unwrap_or_else(|| panic!("upload to {repo}: no Location: {}", start.describe()));
        let location = url_path(location);
        let separator = if location.contains('?') { '&' } else { '?' };
        let target = format!("{location}{separator}digest={}", percent_encode(&digest));
        let put = self
            .request(
                "PUT",
                &target,
                &[("Content-Type", "application/octet-stream")],
                bytes,
            )
            .expect("PUT blob");
        assert_eq!(
            put.status,
            201,
            "upload {digest} to {repo}: {}",
            put.describe()
        );
        digest
    }

    /// Stores a manifest (or index) under `reference` (a tag or its digest); returns its digest.
    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let put = self
            .request("PUT", &path, &[("Content-Type", media_type)], bytes)
            .expect("PUT manifest");
        assert_eq!(put.status, 201, "PUT {path}: {}", put.describe());
        sha256_digest(bytes)
    }

    /// The manifest (or index) under `reference`: (media type, bytes).
    pub fn get_manifest(&self, repo: &str, reference: &str) -> (String, Vec<u8>) {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let get = self
            .request("GET", &path, &[("Accept", MANIFEST_ACCEPT)], b"")
            .expect("GET manifest");
        assert_eq!(get.status, 200, "GET {path}: {}", get.describe());
        let media_type = get.header("content-type").unwrap_or_default().to_string();
        (media_type, get.body)
    }

    /// Blob `digest` of `repo`.
    pub fn get_blob(&self, repo: &str, digest: &str) -> Vec<u8> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let get = self.request("GET", &path, &[], b"").expect("GET blob");
        assert_eq!(get.status, 200, "GET {path}: {}", get.describe());
        get.body
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        // SIGKILL to exactly our child's pid, then reap it; the TempDir field goes after this.
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.token_server.take();
        if std::thread::panicking() {
            eprintln!(
                "--- docker-registry log ({}) ---\n{}",
                self.log_path().display(),
                self.log()
            );
        }
    }
}

fn spawn_registry(config: &Path, log: &Path) -> Child {
    let out = File::create(log).expect("create registry log");
    let mut command = Command::new(REGISTRY_BIN);
    command
        .arg("serve")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup registry log"))
        .stderr(out);
    // distribution lets REGISTRY_* variables override the config file.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("REGISTRY_") {
            command.env_remove(key);
        }
    }
    command
        .spawn()
        .unwrap_or_else(|e| panic!("run {REGISTRY_BIN}: {e} (install Debian's docker-registry)"))
}

/// The token scope the fixture asks for: `repository:<name>:pull,push` for paths under a
/// repository, none for `/v2/` itself.
fn scope_for(path: &str) -> String {
    let path = path.split('?').next().unwrap_or(path);
    let rest = path.strip_prefix("/v2/").unwrap_or("");
    ["/manifests/", "/blobs/", "/tags/"]
        .iter()
        .filter_map(|marker| rest.rfind(marker))
        .min()
        .map(|end| format!("repository:{}:pull,push", &rest[..end]))
        .unwrap_or_default()
}

/// Gets a token from `realm` with HTTP Basic credentials (the GET form of the token spec).
pub fn fetch_token(
    realm: &str,
    service: &str,
    scope: &str,
    user: &str,
    password: &str,
) -> io::Result<String> {
    let (address, path) = split_url(realm);
    let mut target = format!("{path}?service={}", percent_encode(service));
    if !scope.is_empty() {
        target.push_str(&format!("&scope={}", percent_encode(scope)));
    }
    let authorization = basic_auth(user, password);
    let response = http_request(
        &address,
        "GET",
        &target,
        &[("Authorization", &authorization)],
        b"",
    )?;
    if response.status != 200 {
        return Err(io::Error::other(format!(
            "token from {realm}: {}",
            response.describe()
        )));
    }
    let body: Value = serde_json::from_slice(&response.body).map_err(io::Error::other)?;
    body.get("token")
        .or_else(|| body.get("access_token"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| io::Error::other(format!("token from {realm}: no token in {body}")))
}

/// `Basic <base64(user:password)>`.
pub fn basic_auth(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

/// The parameters of a `WWW-Authenticate: Bearer realm="…",service="…",scope="…"` challenge.
pub fn bearer_challenge(header: &str) -> Option<HashMap<String, String>> {
    let (scheme, mut rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = HashMap::new();
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        let Some((key, after)) = rest.split_once('=') else {
            return Some(params);
        };
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"')?;
                (&quoted[..end], &quoted[end + 1..])
            }
            None => after.split_once(',').unwrap_or((after, "")),
        };
        params.insert(key.trim().to_ascii_lowercase(), value.to_string());
        rest = after;
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 client and server pieces: Content-Length bodies, `Connection: close`, chunked answers.

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Status and (the start of) the body, for assertion messages.
    pub fn describe(&self) -> String {
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(2000)]).into_owned();
        format!("HTTP {} {body}", self.status)
    }
}

/// Sends one request to `address` (`host:port`) and reads the whole answer (the connection is
/// closed after it). `target` is the path with its query.
pub fn http_request(
    address: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nUser-Agent: berth-e2e\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw, method == "HEAD")
}

fn parse_response(raw: &[u8], head_only: bool) -> io::Result<HttpResponse> {
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad HTTP answer: {what}"),
        )
    };
    let end = find(raw, b"\r\n\r\n").ok_or_else(|| bad("no end of head"))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| bad("status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut response = HttpResponse {
        status,
        headers,
        body: Vec::new(),
    };
    let rest = &raw[end + 4..];
    if head_only || status == 204 || status == 304 || status < 200 {
        return Ok(response);
    }
    response.body = if response
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        dechunk(rest).ok_or_else(|| bad("chunked body"))?
    } else if let Some(length) = response.header("content-length") {
        let length: usize = length.parse().map_err(|_| bad("Content-Length"))?;
        rest.get(..length)
            .ok_or_else(|| bad("short body"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(response)
}

fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n")?;
        let size = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `http://host:port/path?q` → (`host:port`, `/path?q`); a bare path stays as it is.
fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    match rest.find('/') {
        Some(slash) => (rest[..slash].to_string(), rest[slash..].to_string()),
        None => (rest.to_string(), "/".to_string()),
    }
}

/// The path (and query) of a `Location`, which distribution makes absolute.
fn url_path(location: &str) -> String {
    if location.starts_with('/') {
        location.to_string()
    } else {
        split_url(location).1
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `application/x-www-form-urlencoded` (and query strings) into pairs, in order.
pub fn parse_form(s: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                    match u8::from_str_radix(hex, 16) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    s.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

struct HttpRequest {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_request(stream: &mut TcpStream) -> io::Result<HttpRequest> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 || buf.len() > 64 * 1024 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "incomplete request head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_string();
    let target = request_line.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut request = HttpRequest {
        method,
        target,
        headers,
        body: buf[end + 4..].to_vec(),
    };
    let length: usize = request
        .header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    while request.body.len() < length {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "short request body",
            ));
        }
        request.body.extend_from_slice(&chunk[..n]);
    }
    request.body.truncate(length);
    Ok(request)
}

fn respond(stream: &mut TcpStream, status: u16, headers: &[(&str, String)], body: &Value) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    };
    let body = body.to_string();
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
}

// ---------------------------------------------------------------------------------------------
// The token server.

/// Issues RS256 JWTs for the registry, on its own loopback port, in a background thread.
struct TokenServer {
    address: String,
    cert: PathBuf,
    state: Arc<TokenState>,
    thread: Option<JoinHandle<()>>,
}

struct TokenState {
    users: Vec<(String, String)>,
    key: PathBuf,
    /// The signing certificate, base64 DER, for the JWT header's `x5c`.
    x5c: String,
    requests: AtomicUsize,
    /// Refresh token → user, for `grant_type=refresh_token`.
    refresh_tokens: Mutex<HashMap<String, String>>,
    issued: AtomicUsize,
    stop: AtomicBool,
}

impl TokenServer {
    fn start(dir: &Path, users: &[(&str, &str)]) -> TokenServer {
        let key = dir.join("token-key.pem");
        let cert = dir.join("token-cert.pem");
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
            ])
            .args(["-subj", "/CN=berth test token issuer", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl (install Debian's openssl)");
        assert!(
            out.status.success(),
            "openssl req: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A PEM body is the base64 of the DER: exactly what `x5c` wants.
        let pem = std::fs::read_to_string(&cert).expect("read token cert");
        let x5c: String = pem
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
        let address = listener
            .local_addr()
            .expect("token server address")
            .to_string();
        let state = Arc::new(TokenState {
            users: users
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
            key,
            x5c,
            requests: AtomicUsize::new(0),
            refresh_tokens: Mutex::new(HashMap::new()),
            issued: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let shared = Arc::clone(&state);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let state = Arc::clone(&shared);
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    if let Ok(request) = read_request(&mut stream) {
                        let (status, headers, body) = state.answer(&request);
                        respond(&mut stream, status, &headers, &body);
                    }
                });
            }
        });
        TokenServer {
            address,
            cert,
            state,
            thread: Some(thread),
        }
    }

    fn realm(&self) -> String {
        format!("http://{}/token", self.address)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.address);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

type Answer = (u16, Vec<(&'static str, String)>, Value);

fn oauth_error(status: u16, error: &str, description: &str) -> Answer {
    let mut headers = Vec::new();
    if status == 401 {
        headers.push((
            "WWW-Authenticate",
            "Basic realm=\"berth-test-token\"".to_string(),
        ));
    }
    let body = json!({ "error": error, "error_description": description });
    (status, headers, body)
}

impl TokenState {
    fn answer(&self, request: &HttpRequest) -> Answer {
        let (path, query) = request
            .target
            .split_once('?')
            .unwrap_or((&request.target, ""));
        if path != "/token" {
            return (404, Vec::new(), json!({ "error": "not found" }));
        }
        self.requests.fetch_add(1, Ordering::SeqCst);
        let result = match request.method.as_str() {
            "GET" => self.answer_get(request, query),
            "POST" => self.answer_post(request),
            _ => return oauth_error(405, "invalid_request", "GET or POST"),
        };
        result.unwrap_or_else(|e| oauth_error(500, "server_error", &e.to_string()))
    }

    /// Docker token spec, GET form: HTTP Basic credentials, `service`, any number of `scope`s.
    fn answer_get(&self, request: &HttpRequest, query: &str) -> io::Result<Answer> {
        let params = parse_form(query);
        let Some(user) = request
            .header("authorization")
            .and_then(|h| self.basic_user(h))
        else {
            return Ok(oauth_error(
                401,
                "unauthorized",
                "valid HTTP Basic credentials required",
            ));
        };
        let service = param(&params, "service").unwrap_or(TOKEN_SERVICE);
        let scopes: Vec<&str> = params
            .iter()
            .filter(|(k, _)| k == "scope")
            .flat_map(|(_, v)| v.split_whitespace())
            .collect();
        let token = self.issue(&user, service, &scopes)?;
        let mut body =
            json!({ "token": token, "access_token": token, "expires_in": TOKEN_LIFETIME_SECS });
        if param(&params, "offline_token") == Some("true") {
            body["refresh_token"] = Value::String(self.new_refresh_token(&user));
        }
        Ok((200, Vec::new(), body))
    }

    /// OAuth2 form (what containerd tries first): `grant_type=password` with username and
    /// password, or `grant_type=refresh_token` with a refresh token issued here.
    fn answer_post(&self, request: &HttpRequest) -> io::Result<Answer> {
        let form = parse_form(&String::from_utf8_lossy(&request.body));
        let (user, refresh_token) = match param(&form, "grant_type") {
            Some("password") => {
                let user = param(&form, "username").unwrap_or_default();
                let password = param(&form, "password").unwrap_or_default();
                if !self.check(user, password) {
                    return Ok(oauth_error(
                        401,
                        "invalid_grant",
                        "wrong username or password",
                    ));
                }
                (user.to_string(), self.new_refresh_token(user))
            }
            Some("refresh_token") => {
                let token = param(&form, "refresh_token").unwrap_or_default();
                let user = self.refresh_tokens.lock().unwrap().get(token).cloned();
                let Some(user) = user else {
                    return Ok(oauth_error(401, "invalid_grant", "unknown refresh token"));
                };
                (user, token.to_string())
            }
            _ => {
                return Ok(oauth_error(
                    400,
                    "unsupported_grant_type",
                    "password or refresh_token",
                ));
            }
        };
        let service = param(&form, "service").unwrap_or(TOKEN_SERVICE);
        let scope = param(&form, "scope").unwrap_or_default();
        let scopes: Vec<&str> = scope.split_whitespace().collect();
        let token = self.issue(&user, service, &scopes)?;
        let body = json!({
            "access_token": token,
            "refresh_token": refresh_token,
            "expires_in": TOKEN_LIFETIME_SECS,
            "token_type": "Bearer",
            "scope": scope,
        });
        Ok((200, Vec::new(), body))
    }

    fn check(&self, user: &str, password: &str) -> bool {
        self.users.iter().any(|(u, p)| u == user && p == password)
    }

    /// The user named by valid `Basic` credentials.
    fn basic_user(&self, header: &str) -> Option<String> {
        let (scheme, encoded) = header.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
        let (user, password) = decoded.split_once(':')?;
        self.check(user, password).then(|| user.to_string())
    }

    fn unique(&self) -> String {
        let n = self.issued.fetch_add(1, Ordering::SeqCst);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        sha256_digest(format!("{}-{n}-{nanos}", std::process::id()).as_bytes())[7..39].to_string()
    }

    fn new_refresh_token(&self, user: &str) -> String {
        let token = format!("refresh-{}", self.unique());
        self.refresh_tokens
            .lock()
            .unwrap()
            .insert(token.clone(), user.to_string());
        token
    }

    /// A JWT granting every requested action on each `type:name:actions` scope.
    fn issue(&self, user: &str, service: &str, scopes: &[&str]) -> io::Result<String> {
        let access: Vec<Value> = scopes
            .iter()
            .filter_map(|scope| {
                let (kind, rest) = scope.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
                Some(json!({ "type": kind, "name": name, "actions": actions }))
            })
            .collect();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let header = json!({ "typ": "JWT", "alg": "RS256", "x5c": [self.x5c] });
        let claims = json!({
            "iss": TOKEN_ISSUER,
            "sub": user,
            "aud": service,
            "exp": now + TOKEN_LIFETIME_SECS,
            "nbf": now.saturating_sub(1),
            "iat": now,
            "jti": self.unique(),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.sign(signing_input.as_bytes())?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }

    /// RSASSA-PKCS1-v1_5 with SHA-256 (JWS `RS256`) by `openssl dgst -sign`.
    fn sign(&self, input: &[u8]) -> io::Result<Vec<u8>> {
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("openssl stdin"))?
            .write_all(input)?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "openssl dgst -sign: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(out.stdout)
    }
}

fn param<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_for_names_the_repository() {
        assert_eq!(scope_for("/v2/"), "");
        assert_eq!(
            scope_for("/v2/a/b/manifests/v1"),
            "repository:a/b:pull,push"
        );
        assert_eq!(
            scope_for("/v2/test/x/blobs/uploads/1234?_state=abc"),
            "repository:test/x:pull,push"
        );
    }

    #[test]
    fn bearer_challenge_parses_quoted_params() {
        let p = bearer_challenge(
            r#"Bearer realm="http://127.0.0.1:1/token",service="svc",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(p["realm"], "http://127.0.0.1:1/token");
        assert_eq!(p["service"], "svc");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        assert!(bearer_challenge("Basic realm=\"x\"").is_none());
    }

    #[test]
    fn form_round_trips_through_percent_encoding() {
        let s = "repository:a/b:pull,push x";
        let form = parse_form(&format!("scope={}&a=1+2&b=%zz", percent_encode(s)));
        assert_eq!(param(&form, "scope"), Some(s));
        assert_eq!(param(&form, "a"), Some("1 2"));
        assert_eq!(param(&form, "b"), Some("%zz"));
    }

    #[test]
    fn chunked_answers_are_joined() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let r = parse_response(raw, false).unwrap();
        assert_eq!(r.body, b"abcde");
    }
}
