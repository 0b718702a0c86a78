//! The streaming HTTP server: `GET`/`POST /{exec,attach,portforward}/{token}`, upgraded to
//! SPDY/3.1 (the protocol negotiated by `X-Stream-Protocol-Version`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request as HttpRequest, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::metrics::{RejectLabels, SessionLabels};
use crate::remotecommand::{self, Run, Version};
use crate::spdy::{Limits, Session};
use crate::tokens::{TokenError, Tokens};
use crate::{portforward, websocket, Backend, Request, StreamingConfig, StreamingMetrics};

/// Port-forward's one SPDY protocol (the version does not apply to it).
const PORT_FORWARD_PROTOCOLS: &[(&str, Version)] = &[("portforward.k8s.io", Version::V4)];

/// What every session needs.
#[derive(Clone)]
pub(crate) struct Context {
    pub backend: Arc<dyn Backend>,
    pub config: StreamingConfig,
    pub metrics: StreamingMetrics,
}

impl Context {
    pub(crate) fn reject(&self, reason: &'static str) {
        self.metrics
            .rejected
            .get_or_create(&RejectLabels { reason })
            .inc();
    }
}

/// The streaming server: hands out URLs, serves them.
pub struct Server {
    ctx: Context,
    tokens: Tokens<Request>,
    base: String,
    address: SocketAddr,
}

/// The accept loop, running until dropped.
pub struct ServerHandle(JoinHandle<()>);

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Server {
    /// Binds `config.address` and starts serving.
    pub async fn start(
        config: StreamingConfig,
        backend: Arc<dyn Backend>,
        metrics: StreamingMetrics,
    ) -> std::io::Result<(Arc<Server>, ServerHandle)> {
        let listener = TcpListener::bind(&config.address).await?;
        let address = listener.local_addr()?;
        let server = Arc::new(Server {
            tokens: Tokens::new(config.token_ttl()),
            ctx: Context {
                backend,
                config,
                metrics,
            },
            base: format!("http://{address}"),
            address,
        });
        let accepting = tokio::spawn(accept_loop(listener, server.clone()));
        Ok((server, ServerHandle(accepting)))
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The URL the client connects to for `request` (valid once, for the token TTL).
    pub fn url_for(&self, request: Request) -> Result<String, TokenError> {
        let verb = request.verb();
        let token = self.tokens.insert(request)?;
        Ok(format!("{}/{verb}/{token}", self.base))
    }
}

async fn accept_loop(listener: TcpListener, server: Arc<Server>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!("streaming server: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let server = server.clone();
        // A client has as long to send its request's headers (slowloris) as to open its streams.
        let header_timeout = server.ctx.config.stream_creation_timeout();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(server.handle(req)) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades()
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, "streaming connection: {e}");
            }
        });
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Every value of a (possibly repeated, possibly comma-separated) header, in order.
fn header_values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect()
}

/// The first protocol the client offers that we speak (the client lists its preference first).
fn negotiate<'a, T: Copy>(offered: &[&str], ours: &'a [(&'a str, T)]) -> Option<(&'a str, T)> {
    offered
        .iter()
        .find_map(|o| ours.iter().find(|(name, _)| name == o).copied())
}

impl Server {
    fn handle(self: &Arc<Self>, mut req: HttpRequest<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::POST {
            self.ctx.reject("method");
            return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and POST");
        }
        let path = req.uri().path().to_string();
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (verb, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let request = match self.tokens.take(token) {
            Some(r) if r.verb() == verb => r,
            _ => {
                self.ctx.reject("unknown_token");
                return plain(StatusCode::NOT_FOUND, "unknown or expired streaming token");
            }
        };
        if websocket::is_websocket(req.headers()) {
            return self.upgrade_websocket(req, request);
        }
        let upgrade = header_values(req.headers(), "upgrade");
        if !upgrade.iter().any(|u| u.eq_ignore_ascii_case("SPDY/3.1")) {
            self.ctx.reject("protocol");
            return plain(
                StatusCode::BAD_REQUEST,
                "berth streams over SPDY/3.1 or WebSocket: send Connection: Upgrade with Upgrade: SPDY/3.1 or websocket",
            );
        }
        let offered = header_values(req.headers(), "x-stream-protocol-version");
        let ours: &[(&str, Version)] = match request {
            Request::PortForward(_) => PORT_FORWARD_PROTOCOLS,
            _ => Version::SPDY,
        };
        let chosen = match negotiate(&offered, ours) {
            Some(c) => Some(c),
            // A client that names no protocol gets the oldest remotecommand one.
            None if offered.is_empty() && !matches!(request, Request::PortForward(_)) => None,
            None => return self.refuse_protocols("stream", &offered, ours),
        };
        let version = chosen.map(|(_, v)| v).unwrap_or(Version::V1);
        let mut response = self.switch(
            &mut req,
            request,
            Transport::Spdy,
            move |server, io, request| async move { server.serve(io, request, version).await },
        );
        if let Some((name, _)) = chosen {
            response.headers_mut().insert(
                "X-Stream-Protocol-Version",
                HeaderValue::from_str(name).expect("a protocol name is a header value"),
            );
        }
        response
    }

    fn upgrade_websocket(
        self: &Arc<Self>,
        mut req: HttpRequest<Incoming>,
        request: Request,
    ) -> Response<Full<Bytes>> {
        let Some(accept) = websocket::accept_key(req.headers()) else {
            self.ctx.reject("protocol");
            return plain(
                StatusCode::BAD_REQUEST,
                "a WebSocket upgrade needs Sec-WebSocket-Key",
            );
        };
        let offered = header_values(req.headers(), "sec-websocket-protocol");
        let ours: &'static [(&'static str, bool)] = match request {
            Request::PortForward(_) => websocket::PORT_FORWARD_PROTOCOLS,
            _ => websocket::REMOTE_COMMAND,
        };
        let Some((chosen, can_close)) = negotiate(&offered, ours) else {
            return self.refuse_protocols("WebSocket", &offered, ours);
        };
        let mut response = self.switch(
            &mut req,
            request,
            Transport::WebSocket,
            move |server, io, request| async move {
                match request {
                    Request::Exec(r) => {
                        websocket::serve_remote(&server.ctx, io, Run::Exec(r), can_close).await
                    }
                    Request::Attach(r) => {
                        websocket::serve_remote(&server.ctx, io, Run::Attach(r), can_close).await
                    }
                    Request::PortForward(r) => {
                        let limits = server.limits();
                        websocket::serve_port_forward(&server.ctx, io, r.sandbox_id, limits).await
                    }
                }
            },
        );
        let h = response.headers_mut();
        h.insert(
            "Sec-WebSocket-Accept",
            HeaderValue::from_str(&accept).expect("base64 is a header value"),
        );
        h.insert("Sec-WebSocket-Protocol", HeaderValue::from_static(chosen));
        response
    }

    /// Answers 101 with the transport's `Upgrade`, and once hyper hands over the connection runs
    /// `serve` on it: one session, counted in the metrics, in a span naming its container.
    fn switch<F, Fut>(
        self: &Arc<Self>,
        req: &mut HttpRequest<Incoming>,
        request: Request,
        transport: Transport,
        serve: F,
    ) -> Response<Full<Bytes>>
    where
        F: FnOnce(Arc<Server>, TokioIo<hyper::upgrade::Upgraded>, Request) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let on_upgrade = hyper::upgrade::on(req);
        let server = self.clone();
        let verb = request.verb();
        let span = tracing::info_span!("stream", verb, container = %request.target());
        tokio::spawn(
            async move {
                let io = match on_upgrade.await {
                    Ok(upgraded) => TokioIo::new(upgraded),
                    Err(e) => return tracing::debug!("upgrade failed: {e}"),
                };
                let _counted = server.start_session(verb, transport.label());
                serve(server.clone(), io, request).await;
            }
            .instrument(span),
        );
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = response.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(
            header::UPGRADE,
            HeaderValue::from_static(transport.upgrade()),
        );
        response
    }

    /// 403 naming the protocols we would have taken, as kubelet's server answers.
    fn refuse_protocols<T>(
        &self,
        kind: &str,
        offered: &[&str],
        ours: &[(&'static str, T)],
    ) -> Response<Full<Bytes>> {
        self.ctx.reject("protocol");
        let mut response = plain(
            StatusCode::FORBIDDEN,
            &format!("none of the offered {kind} protocols {offered:?} is supported"),
        );
        for (name, _) in ours {
            response.headers_mut().append(
                "X-Accepted-Stream-Protocol-Versions",
                HeaderValue::from_static(name),
            );
        }
        response
    }

    fn limits(&self) -> Limits {
        Limits {
            idle_timeout: self.ctx.config.idle_timeout(),
            ..Limits::default()
        }
    }

    /// Counts a session in the metrics; the guard counts its end.
    fn start_session(&self, verb: &'static str, protocol: &'static str) -> SessionGuard {
        let labels = SessionLabels { verb, protocol };
        let m = &self.ctx.metrics;
        m.sessions.get_or_create(&labels).inc();
        m.active.get_or_create(&labels).inc();
        SessionGuard {
            metrics: m.clone(),
            labels,
            started: Instant::now(),
        }
    }

    async fn serve<IO>(&self, io: IO, request: Request, version: Version)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let (session, incoming) = Session::start(io, self.limits());
        match request {
            Request::Exec(r) => {
                remotecommand::serve_spdy(&self.ctx, session, incoming, Run::Exec(r), version).await
            }
            Request::Attach(r) => {
                remotecommand::serve_spdy(&self.ctx, session, incoming, Run::Attach(r), version)
                    .await
            }
            Request::PortForward(r) => {
                portforward::serve_spdy(&self.ctx, session, incoming, r.sandbox_id).await
            }
        }
    }
}

/// What an upgraded connection speaks.
#[derive(Debug, Clone, Copy)]
enum Transport {
    Spdy,
    WebSocket,
}

impl Transport {
    /// The `protocol` label of the session metrics.
    fn label(self) -> &'static str {
        match self {
            Transport::Spdy => "spdy",
            Transport::WebSocket => "websocket",
        }
    }

    /// The `Upgrade` header of the 101 answer.
    fn upgrade(self) -> &'static str {
        match self {
            Transport::Spdy => "SPDY/3.1",
            Transport::WebSocket => "websocket",
        }
    }
}

/// A session being served, for the metrics: ends when dropped, however the session ends.
struct SessionGuard {
    metrics: StreamingMetrics,
    labels: SessionLabels,
    started: Instant,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.metrics.active.get_or_create(&self.labels).dec();
        self.metrics
            .duration
            .get_or_create(&self.labels)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Request {
    /// The container or pod a session is about, for its span.
    fn target(&self) -> &str {
        match self {
            Request::Exec(r) => &r.container_id,
            Request::Attach(r) => &r.container_id,
            Request::PortForward(r) => &r.sandbox_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_first_supported_protocol_wins() {
        let ours = Version::SPDY;
        assert_eq!(
            negotiate(&["v5.channel.k8s.io", "v4.channel.k8s.io"], ours),
            Some(("v5.channel.k8s.io", Version::V4))
        );
        assert_eq!(
            negotiate(&["v9.channel.k8s.io", "v3.channel.k8s.io"], ours),
            Some(("v3.channel.k8s.io", Version::V3))
        );
        assert_eq!(negotiate(&["SPDY/3.1+portforward.k8s.io"], ours), None);
    }

    #[test]
    fn protocol_headers_may_repeat_or_list() {
        let mut h = HeaderMap::new();
        h.append(
            "x-stream-protocol-version",
            HeaderValue::from_static("v4.channel.k8s.io"),
        );
        h.append(
            "x-stream-protocol-version",
            HeaderValue::from_static("v3.channel.k8s.io, channel.k8s.io"),
        );
        assert_eq!(
            header_values(&h, "x-stream-protocol-version"),
            ["v4.channel.k8s.io", "v3.channel.k8s.io", "channel.k8s.io"]
        );
    }
}
