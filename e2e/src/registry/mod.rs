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
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::{free_port, TempDir};

mod http;
mod token;

pub use http::{basic_auth, http_request, parse_form, percent_encode, HttpResponse};

use http::{split_url, url_path};
use token::TokenServer;

/// Debian's `docker-registry` package (distribution 2.8).
const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Ports come from `free_port()`, which can race with other tests: retry on "address in use".
const BIND_ATTEMPTS: usize = 5;

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

    /// This registry's storage served over HTTPS by a second docker-registry with `cert` and
    /// `key` (PEM), for TLS tests; pushes still go to this one, over plain HTTP.
    pub fn tls_twin(&self, cert: &Path, key: &Path) -> TlsTwin {
        let dir = TempDir::new("berth-registry-tls");
        let config = dir.path().join("config.yml");
        let storage = self.dir().join("storage");
        let log = dir.path().join("registry.log");
        for attempt in 1..=BIND_ATTEMPTS {
            let address = format!("127.0.0.1:{}", free_port());
            let text = format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {address}\n  tls:\n    certificate: {}\n    key: {}\n",
                storage.display(),
                cert.display(),
                key.display()
            );
            std::fs::write(&config, text).expect("write registry config");
            let mut child = spawn_registry(&config, &log);
            let deadline = Instant::now() + READY_TIMEOUT;
            let listening = format!("listening on {address}");
            loop {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains(&listening) {
                    return TlsTwin {
                        child,
                        address,
                        _dir: dir,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    assert!(
                        text.contains("address already in use") && attempt < BIND_ATTEMPTS,
                        "TLS docker-registry did not start:\n{text}"
                    );
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "TLS docker-registry: no answer:\n{text}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        unreachable!("asserted above")
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

/// A docker-registry serving another's storage over HTTPS; killed on drop.
pub struct TlsTwin {
    child: Child,
    pub address: String,
    _dir: TempDir,
}

impl Drop for TlsTwin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
}
