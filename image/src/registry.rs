//! The registry client: the Docker Registry HTTP API v2 / OCI distribution protocol over
//! reqwest, trying each configured host in order, with anonymous, Basic and Bearer-token auth.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE,
};
use reqwest::{Client, Response, StatusCode};

use crate::auth::{parse_challenge, Challenge, Credentials};
use crate::content::{ContentStore, Ingest};
use crate::digest::Digest;
use crate::hosts::RegistryHost;

/// Manifest media types we accept, most preferred first.
pub const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
/// A manifest larger than this is refused (the distribution spec suggests 4 MiB).
const MAX_MANIFEST: usize = 4 * 1024 * 1024;
/// How much of an error body is read for its message.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// How long an error body may take to read.
const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest token server answer read (a JWT is a few KiB).
const MAX_TOKEN_ANSWER: usize = 1024 * 1024;

/// Where a blob goes while it downloads. Each host tried is an attempt of its own: `begin`
/// before its first byte, `take` for each chunk, then `finish` once the body has ended (which
/// may still refuse the blob, and then the next host is tried), or `abandon` when the download
/// failed.
pub trait BlobSink {
    type Attempt: Send;
    type Done;
    fn begin(&self) -> impl Future<Output = Result<Self::Attempt, RegistryError>> + Send;
    fn take(
        &self,
        attempt: &mut Self::Attempt,
        chunk: Bytes,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send;
    fn finish(
        &self,
        attempt: Self::Attempt,
    ) -> impl Future<Output = Result<Self::Done, RegistryError>> + Send;
    fn abandon(&self, attempt: Self::Attempt) -> impl Future<Output = ()> + Send;
}

/// Into the content store: an ingest per attempt, committed if digest and size match.
struct IntoStore<'a> {
    store: &'a ContentStore,
    digest: &'a Digest,
    size: Option<u64>,
}

impl BlobSink for IntoStore<'_> {
    type Attempt = Ingest;
    type Done = ();

    async fn begin(&self) -> Result<Ingest, RegistryError> {
        Ok(self.store.ingest().await?)
    }

    async fn take(&self, ingest: &mut Ingest, chunk: Bytes) -> Result<(), RegistryError> {
        Ok(ingest.write(&chunk).await?)
    }

    async fn finish(&self, ingest: Ingest) -> Result<(), RegistryError> {
        Ok(self.store.commit(ingest, self.digest, self.size).await?)
    }

    async fn abandon(&self, ingest: Ingest) {
        drop(ingest);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{url}: {status}{detail}")]
    Status {
        url: String,
        status: StatusCode,
        detail: String,
    },
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    #[error("{url}: no progress for {seconds}s")]
    Stalled { url: String, seconds: u64 },
    #[error("{url}: authentication failed: {message}")]
    Auth { url: String, message: String },
    #[error("{url}: {message}")]
    Invalid { url: String, message: String },
    #[error("{0}")]
    Content(#[from] crate::content::ContentError),
    #[error("no configured host may {0}")]
    NoHost(&'static str),
    /// Every host failed: the last one's error, and what the ones before it said (a mirror's
    /// TLS failure must not hide behind the server's DNS failure).
    #[error("{last} (before it: {})", earlier.join("; "))]
    Hosts {
        last: Box<RegistryError>,
        earlier: Vec<String>,
    },
}

impl RegistryError {
    /// The error that decides the kind: the last host's when several failed.
    pub fn last(&self) -> &RegistryError {
        match self {
            RegistryError::Hosts { last, .. } => last,
            e => e,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self.last(), RegistryError::Status { status, .. } if *status == StatusCode::NOT_FOUND)
    }

    pub fn is_auth(&self) -> bool {
        matches!(self.last(), RegistryError::Auth { .. })
            || matches!(self.last(), RegistryError::Status { status, .. }
                if *status == StatusCode::UNAUTHORIZED || *status == StatusCode::FORBIDDEN)
    }

    /// The outcome of trying hosts in order, given each one's failure.
    fn all_failed(mut failures: Vec<RegistryError>, none: RegistryError) -> RegistryError {
        match failures.len() {
            0 => none,
            1 => failures.remove(0),
            _ => {
                let last = failures.pop().expect("two or more");
                RegistryError::Hosts {
                    last: Box::new(last),
                    earlier: failures.iter().map(|e| e.to_string()).collect(),
                }
            }
        }
    }
}

/// HTTP clients, one per TLS setting (reqwest clients pool connections, so they are reused).
#[derive(Debug, Default)]
pub struct Clients {
    cache: Mutex<HashMap<(bool, Vec<PathBuf>), Client>>,
}

impl Clients {
    /// Drops every client: the next request builds its own, reading its CA files again.
    /// Requests under way keep the client they hold.
    pub fn clear(&self) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn for_host(&self, host: &RegistryHost) -> Result<Client, RegistryError> {
        let key = (host.skip_verify, host.ca.clone());
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let invalid = |message: String| RegistryError::Invalid {
            url: host.origin.clone(),
            message,
        };
        let mut builder = Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .danger_accept_invalid_certs(host.skip_verify);
        for ca in &host.ca {
            let pem =
                std::fs::read(ca).map_err(|e| invalid(format!("ca {}: {e}", ca.display())))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| invalid(format!("ca {}: {e}", ca.display())))?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder
            .build()
            .map_err(|e| invalid(format!("HTTP client: {e}")))?;
        cache.insert(key, client.clone());
        Ok(client)
    }
}

/// A fetched manifest or index.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: Digest,
}

/// One pull's conversation with a repository: hosts, credentials and the tokens obtained.
pub struct Session<'a> {
    clients: &'a Clients,
    hosts: Vec<RegistryHost>,
    repository: String,
    credentials: Credentials,
    /// Authorization header per host origin, learned from challenges.
    authorization: Mutex<HashMap<String, String>>,
    progress_timeout: Duration,
}

impl<'a> Session<'a> {
    pub fn new(
        clients: &'a Clients,
        hosts: Vec<RegistryHost>,
        repository: &str,
        credentials: Credentials,
        progress_timeout: Duration,
    ) -> Session<'a> {
        Session {
            clients,
            hosts,
            repository: repository.to_string(),
            credentials,
            authorization: Mutex::new(HashMap::new()),
            progress_timeout,
        }
    }

    /// Fetches a manifest by tag (hosts that may `resolve`) or digest (hosts that may `pull`),
    /// trying hosts in order. The digest of the bytes is checked when asked by digest.
    pub async fn manifest(&self, reference: &str) -> Result<FetchedManifest, RegistryError> {
        let by_digest = reference.parse::<Digest>().ok();
        let none = RegistryError::NoHost(if by_digest.is_some() {
            "pull"
        } else {
            "resolve"
        });
        let mut failures = Vec::new();
        for host in &self.hosts {
            let allowed = if by_digest.is_some() {
                host.capabilities.pull
            } else {
                host.capabilities.resolve
            };
            if !allowed {
                continue;
            }
            let url = host.url(&format!("/{}/manifests/{reference}", self.repository));
            match self.fetch_manifest(host, &url, by_digest.as_ref()).await {
                Ok(m) => return Ok(m),
                Err(e) => {
                    tracing::debug!(url, error = %e, "manifest fetch failed; trying the next host");
                    failures.push(e);
                }
            }
        }
        Err(RegistryError::all_failed(failures, none))
    }

    async fn fetch_manifest(
        &self,
        host: &RegistryHost,
        url: &str,
        expected: Option<&Digest>,
    ) -> Result<FetchedManifest, RegistryError> {
        let response = self
            .get(host, url, Some(&MANIFEST_TYPES.join(", ")))
            .await?;
        let media_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
            .unwrap_or_default();
        if response
            .content_length()
            .is_some_and(|l| l > MAX_MANIFEST as u64)
        {
            return Err(RegistryError::Invalid {
                url: url.to_string(),
                message: format!("manifest larger than {MAX_MANIFEST} bytes"),
            });
        }
        let bytes = self
            .read_capped(url, response, MAX_MANIFEST)
            .await?
            .ok_or_else(|| RegistryError::Invalid {
                url: url.to_string(),
                message: format!("manifest larger than {MAX_MANIFEST} bytes"),
            })?;
        let digest = Digest::of(&bytes);
        if let Some(expected) = expected {
            if &digest != expected {
                return Err(RegistryError::Invalid {
                    url: url.to_string(),
                    message: format!("manifest has digest {digest}, not the {expected} asked for"),
                });
            }
        }
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// Downloads a blob into the content store, trying hosts in order. `progress` is told of
    /// each chunk's size. A blob whose digest or size does not match is never stored.
    pub async fn blob(
        &self,
        store: &ContentStore,
        digest: &Digest,
        size: Option<u64>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), RegistryError> {
        let sink = IntoStore {
            store,
            digest,
            size,
        };
        self.blob_into(&sink, digest, size, progress).await
    }

    /// Downloads a blob into `sink`, trying hosts in order: each host's download is an attempt
    /// of its own, begun before its first byte, and finished, or abandoned when it fails. A
    /// blob longer than `size` fails as soon as it is.
    pub async fn blob_into<S: BlobSink + Sync>(
        &self,
        sink: &S,
        digest: &Digest,
        size: Option<u64>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<S::Done, RegistryError> {
        let mut failures = Vec::new();
        for host in self.hosts.iter().filter(|h| h.capabilities.pull) {
            let url = host.url(&format!("/{}/blobs/{digest}", self.repository));
            let result = async {
                let mut attempt = sink.begin().await?;
                match self
                    .download(host, &url, sink, &mut attempt, size, progress)
                    .await
                {
                    Ok(()) => sink.finish(attempt).await,
                    Err(e) => {
                        sink.abandon(attempt).await;
                        Err(e)
                    }
                }
            }
            .await;
            match result {
                Ok(done) => return Ok(done),
                Err(e) => {
                    tracing::debug!(url, error = %e, "blob fetch failed; trying the next host");
                    failures.push(e);
                }
            }
        }
        Err(RegistryError::all_failed(
            failures,
            RegistryError::NoHost("pull"),
        ))
    }

    async fn download<S: BlobSink + Sync>(
        &self,
        host: &RegistryHost,
        url: &str,
        sink: &S,
        attempt: &mut S::Attempt,
        size: Option<u64>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), RegistryError> {
        let response = self.get(host, url, None).await?;
        let mut stream = response.bytes_stream();
        let mut written = 0u64;
        while let Some(chunk) = self.next_chunk(url, &mut stream).await? {
            let n = chunk.len() as u64;
            written += n;
            if size.is_some_and(|s| written > s) {
                return Err(RegistryError::Invalid {
                    url: url.to_string(),
                    message: format!(
                        "blob is longer than the {} bytes the manifest says",
                        size.unwrap_or(0)
                    ),
                });
            }
            sink.take(attempt, chunk).await?;
            progress(n);
        }
        Ok(())
    }

    /// A whole body of at most `cap` bytes (`None` if it is longer: the rest is not read), each
    /// chunk within the progress timeout.
    async fn read_capped(
        &self,
        url: &str,
        response: Response,
        cap: usize,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        let mut bytes = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = self.next_chunk(url, &mut stream).await? {
            if bytes.len() + chunk.len() > cap {
                return Ok(None);
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Some(bytes))
    }

    /// `: CODE: message` from a registry's JSON error body, if it has one. The body is only
    /// read up to [`MAX_ERROR_BODY`] and for [`ERROR_BODY_TIMEOUT`]: it explains a failure, it
    /// must not prolong it (an endless one held a download slot and grew the agent by GiBs).
    async fn error_detail(&self, url: &str, response: Response) -> String {
        let read = self.read_capped(url, response, MAX_ERROR_BODY);
        let Ok(Ok(Some(body))) = tokio::time::timeout(ERROR_BODY_TIMEOUT, read).await else {
            return String::new();
        };
        error_detail(&body)
    }

    /// The next body chunk, failing when none arrives within the progress timeout.
    async fn next_chunk(
        &self,
        url: &str,
        stream: &mut (impl futures_util::Stream<Item = reqwest::Result<Bytes>> + Unpin),
    ) -> Result<Option<Bytes>, RegistryError> {
        match tokio::time::timeout(self.progress_timeout, stream.next()).await {
            Err(_) => Err(RegistryError::Stalled {
                url: url.to_string(),
                seconds: self.progress_timeout.as_secs(),
            }),
            Ok(None) => Ok(None),
            Ok(Some(Ok(chunk))) => Ok(Some(chunk)),
            Ok(Some(Err(e))) => Err(RegistryError::Transport {
                url: url.to_string(),
                message: error_chain(&e),
            }),
        }
    }

    /// GET with the host's headers and our credentials, answering one auth challenge.
    async fn get(
        &self,
        host: &RegistryHost,
        url: &str,
        accept: Option<&str>,
    ) -> Result<Response, RegistryError> {
        let client = self.clients.for_host(host)?;
        for attempt in 0..2 {
            let mut headers = HeaderMap::new();
            for (name, value) in &host.headers {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::try_from(name.as_str()),
                    HeaderValue::try_from(value.as_str()),
                ) {
                    headers.append(n, v);
                }
            }
            if let Some(accept) = accept {
                headers.insert(
                    ACCEPT,
                    HeaderValue::from_str(accept).unwrap_or(HeaderValue::from_static("*/*")),
                );
            }
            let auth = self.authorization_for(&host.origin);
            if let Some(auth) = auth.as_deref().and_then(|a| HeaderValue::from_str(a).ok()) {
                headers.insert(AUTHORIZATION, auth);
            }
            let send = client.get(url).headers(headers).send();
            let response = match tokio::time::timeout(self.progress_timeout, send).await {
                Err(_) => {
                    return Err(RegistryError::Stalled {
                        url: url.to_string(),
                        seconds: self.progress_timeout.as_secs(),
                    })
                }
                Ok(Err(e)) => {
                    return Err(RegistryError::Transport {
                        url: url.to_string(),
                        message: error_chain(&e),
                    })
                }
                Ok(Ok(r)) => r,
            };
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && attempt == 0 {
                let challenge = response
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_challenge);
                let authorization = self.answer(&client, url, challenge).await?;
                self.authorization
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(host.origin.clone(), authorization);
                continue;
            }
            if !status.is_success() {
                let detail = self.error_detail(url, response).await;
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                    return Err(RegistryError::Auth {
                        url: url.to_string(),
                        message: format!("{status}{detail}"),
                    });
                }
                return Err(RegistryError::Status {
                    url: url.to_string(),
                    status,
                    detail,
                });
            }
            return Ok(response);
        }
        unreachable!("the loop returns on its second attempt")
    }

    fn authorization_for(&self, origin: &str) -> Option<String> {
        if let Some(a) = self
            .authorization
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(origin)
        {
            return Some(a.clone());
        }
        (!self.credentials.registry_token.is_empty())
            .then(|| format!("Bearer {}", self.credentials.registry_token))
    }

    /// Turns a challenge into an Authorization header value.
    async fn answer(
        &self,
        client: &Client,
        url: &str,
        challenge: Option<Challenge>,
    ) -> Result<String, RegistryError> {
        let auth_error = |message: String| RegistryError::Auth {
            url: url.to_string(),
            message,
        };
        match challenge {
            None => Err(auth_error(
                "401 without a challenge we understand".to_string(),
            )),
            Some(Challenge::Basic) => self.credentials.basic().ok_or_else(|| {
                auth_error("registry wants Basic credentials and none were given".to_string())
            }),
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", self.repository));
                let token = self
                    .token(client, &realm, service.as_deref(), &scope)
                    .await
                    .map_err(auth_error)?;
                Ok(format!("Bearer {token}"))
            }
        }
    }

    /// Asks the token server: OAuth2 refresh-token POST with an identity token, else GET with
    /// Basic credentials (or anonymously).
    async fn token(
        &self,
        client: &Client,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<String, String> {
        let mut query: Vec<(&str, &str)> = vec![("scope", scope)];
        if let Some(s) = service {
            query.push(("service", s));
        }
        let request = if !self.credentials.identity_token.is_empty() {
            let mut form = query.clone();
            form.extend([
                ("grant_type", "refresh_token"),
                ("refresh_token", self.credentials.identity_token.as_str()),
                ("client_id", "berth"),
            ]);
            client.post(realm).form(&form)
        } else {
            let mut req = client.get(realm).query(&query);
            if let Some(basic) = self.credentials.basic() {
                req = req.header(AUTHORIZATION, basic);
            }
            req
        };
        let response = tokio::time::timeout(self.progress_timeout, request.send())
            .await
            .map_err(|_| {
                format!(
                    "token server {realm}: no answer in {}s",
                    self.progress_timeout.as_secs()
                )
            })?
            .map_err(|e| format!("token server {realm}: {}", error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!(
                "token server {realm}: {status}{}",
                self.error_detail(realm, response).await
            ));
        }
        let body = tokio::time::timeout(
            self.progress_timeout,
            self.read_capped(realm, response, MAX_TOKEN_ANSWER),
        )
        .await
        .map_err(|_| {
            format!(
                "token server {realm}: answer not read in {}s",
                self.progress_timeout.as_secs()
            )
        })?
        .map_err(|e| format!("token server {realm}: {e}"))?
        .ok_or_else(|| {
            format!("token server {realm}: answer larger than {MAX_TOKEN_ANSWER} bytes")
        })?;
        let body: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("token server {realm}: answer is not JSON: {e}"))?;
        body.get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .ok_or_else(|| format!("token server {realm}: answer has no token"))
    }
}

/// `: CODE: message` from a registry's JSON error body, if it has one.
fn error_detail(body: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let first = parsed
        .as_ref()
        .and_then(|v| v.get("errors"))
        .and_then(|e| e.get(0));
    match first {
        Some(e) => format!(
            " ({}: {})",
            e.get("code").and_then(|c| c.as_str()).unwrap_or("?"),
            e.get("message").and_then(|c| c.as_str()).unwrap_or("")
        ),
        None => String::new(),
    }
}

/// An error with its sources, which is where reqwest keeps the useful part.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn when_every_host_fails_each_failure_is_told_and_the_last_decides_the_kind() {
        let tls = RegistryError::Transport {
            url: "https://mirror/v2/x/manifests/1".into(),
            message: "invalid peer certificate: UnknownIssuer".into(),
        };
        let missing = RegistryError::Status {
            url: "https://server/v2/x/manifests/1".into(),
            status: StatusCode::NOT_FOUND,
            detail: String::new(),
        };
        let e = RegistryError::all_failed(vec![tls, missing], RegistryError::NoHost("resolve"));
        let text = e.to_string();
        assert!(
            text.contains("UnknownIssuer") && text.contains("404"),
            "{text}"
        );
        assert!(e.is_not_found());
        assert!(matches!(
            RegistryError::all_failed(Vec::new(), RegistryError::NoHost("pull")),
            RegistryError::NoHost("pull")
        ));
    }
}
