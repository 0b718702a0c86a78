//! The token server: issues RS256 JWTs for the registry (Docker token spec, GET and OAuth2 POST
//! forms), signed with `openssl`.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};

use super::http::{param, parse_form, read_request, respond, HttpRequest};
use super::{sha256_digest, TOKEN_ISSUER, TOKEN_SERVICE};

const TOKEN_LIFETIME_SECS: u64 = 300;

/// Issues RS256 JWTs for the registry, on its own loopback port, in a background thread.
pub(super) struct TokenServer {
    address: String,
    pub(super) cert: PathBuf,
    pub(super) state: Arc<TokenState>,
    thread: Option<JoinHandle<()>>,
}

pub(super) struct TokenState {
    users: Vec<(String, String)>,
    key: PathBuf,
    /// The signing certificate, base64 DER, for the JWT header's `x5c`.
    x5c: String,
    pub(super) requests: AtomicUsize,
    /// Refresh token → user, for `grant_type=refresh_token`.
    refresh_tokens: Mutex<HashMap<String, String>>,
    issued: AtomicUsize,
    stop: AtomicBool,
}

impl TokenServer {
    pub(super) fn start(dir: &Path, users: &[(&str, &str)]) -> TokenServer {
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

    pub(super) fn realm(&self) -> String {
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
