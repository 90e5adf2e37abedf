//! The server: an internal port where agents open their tunnel, an external port where callers
//! send HTTP/1.1 requests that are routed by Host into the tunnel of the agent serving that route.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use telemetry::{Capture, Exchange};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::access_log::{AccessRecord, AccessSink, Tap, CAPTURE_LIMIT};
use crate::config::{normalize_route_name, peer_allowed, Allowlist, Secret, ServerConfig};
use crate::host::request_host;
use crate::http_util::{self, boxed, empty, full, PvBody};
use crate::mux::{self, Heartbeat};
use crate::protocol::ResponseHead;
use crate::protocol::{self, Hello, HelloAck, Rejected};
use crate::router::{Router, Session};
use crate::wsio;
use std::future::Future;
use std::pin::Pin;

/// Proxyview's exact error page, used for every failure in legacy mode.
pub const LEGACY_404_BODY: &str = "Resource was not found.";

/// Shared server state.
pub struct Server {
    cfg: ServerConfig,
    router: Router,
    sink: Option<Arc<dyn AccessSink>>,
    next_session: AtomicU64,
    stopping: tokio::sync::watch::Sender<bool>,
    connections: tokio_util::task::TaskTracker,
}

/// Addresses the server actually bound (ports may have been 0 in the config).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// Agent-facing listener.
    pub internal: SocketAddr,
    /// Caller-facing listener.
    pub external: SocketAddr,
}

impl Server {
    /// Builds the server; `sink` receives access records when the config enables them.
    pub fn new(cfg: ServerConfig, sink: Option<Arc<dyn AccessSink>>) -> Arc<Self> {
        let router = Router::new(cfg.agents.clone());
        let sink = if cfg.access_log { sink } else { None };
        Arc::new(Self {
            cfg,
            router,
            sink,
            next_session: AtomicU64::new(1),
            stopping: tokio::sync::watch::Sender::new(false),
            connections: tokio_util::task::TaskTracker::new(),
        })
    }

    /// The route table (for diagnostics).
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Stops accepting, lets requests in flight finish for at most `grace`, and returns whether
    /// every connection ended in time. Agent sessions are not drained: agents reconnect.
    pub async fn shutdown(&self, grace: std::time::Duration) -> bool {
        self.stopping.send_replace(true);
        self.connections.close();
        tokio::time::timeout(grace, self.connections.wait())
            .await
            .is_ok()
    }

    /// Binds both listeners and spawns their accept loops.
    pub async fn start(self: &Arc<Self>) -> anyhow::Result<Bound> {
        use anyhow::Context as _;
        let internal = TcpListener::bind(self.cfg.internal_addr())
            .await
            .with_context(|| {
                format!(
                    "cannot listen on internal.port {}",
                    self.cfg.internal_addr()
                )
            })?;
        let external = TcpListener::bind(self.cfg.external_addr())
            .await
            .with_context(|| {
                format!(
                    "cannot listen on external.port {}",
                    self.cfg.external_addr()
                )
            })?;
        let bound = Bound {
            internal: internal.local_addr()?,
            external: external.local_addr()?,
        };
        let s = self.clone();
        tokio::spawn(async move { s.accept_loop(internal, Port::Internal).await });
        let s = self.clone();
        tokio::spawn(async move { s.accept_loop(external, Port::External).await });
        Ok(bound)
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, port: Port) {
        let allow = match port {
            Port::Internal => self.cfg.internal_allow.clone(),
            Port::External => self.cfg.external_allow.clone(),
        };
        let mut stopping = self.stopping.subscribe();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                // Dropping the listener makes new connections fail at once during the drain.
                () = async { let _ = stopping.wait_for(|s| *s).await; } => return,
            };
            let (tcp, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            if !peer_allowed(allow.as_ref(), peer.ip()) {
                debug!(%peer, ?port, "peer not in whitelistedIps");
                tokio::spawn(reject_peer(
                    tcp,
                    self.cfg.legacy_errors && port == Port::External,
                ));
                continue;
            }
            let _ = tcp.set_nodelay(true);
            let s = self.clone();
            self.connections
                .spawn(async move { s.serve_connection(tcp, peer, port).await });
        }
    }

    async fn serve_connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, port: Port) {
        let s = self.clone();
        // Formatted once per connection: it goes into every request's head.
        let peer_ip: Arc<str> = peer.ip().to_string().into();
        let svc = service_fn(move |req| {
            let s = s.clone();
            let peer_ip = peer_ip.clone();
            async move {
                Ok::<_, Infallible>(match port {
                    Port::Internal => s.handle_internal(peer, req),
                    Port::External => s.handle_external(peer, &peer_ip, req).await,
                })
            }
        });
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(self.cfg.header_read_timeout)
            .max_buf_size(256 * 1024);
        let conn = b.serve_connection(TokioIo::new(tcp), svc).with_upgrades();
        tokio::pin!(conn);
        let mut stopping = self.stopping.subscribe();
        let r = tokio::select! {
            r = conn.as_mut() => r,
            () = async { let _ = stopping.wait_for(|s| *s).await; } => {
                // Finish the request in flight (if any), then close instead of keeping alive.
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = r {
            debug!(%peer, error = %e, "connection ended with error");
        }
    }

    // -----------------------------------------------------------------------------------------
    // Internal port: agents.

    fn handle_internal(
        self: &Arc<Self>,
        peer: SocketAddr,
        mut req: Request<Incoming>,
    ) -> Response<PvBody> {
        match req.uri().path() {
            protocol::HEALTH_PATH => return text(StatusCode::OK, "ok\n"),
            protocol::CONNECT_PATH => {}
            _ => return text(StatusCode::NOT_FOUND, "Unknown resource!"),
        }
        let presented = presented_token(req.headers(), &protocol::AUTH_TOKEN_HEADER);
        let header_client = req
            .headers()
            .get(protocol::CLIENT_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let expected: &Secret = match header_client.as_deref().and_then(|c| self.router.policy(c)) {
            Some(p) => &p.token,
            None => &self.cfg.internal_token,
        };
        if !presented.is_some_and(|t| expected.matches(t.as_bytes())) {
            info!(%peer, client = ?header_client, "agent rejected: bad or missing token");
            let mut r = text(
                StatusCode::UNAUTHORIZED,
                "UnAuthenticated: bad or missing agent token\n",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"proxyview\""),
            );
            return r;
        }
        let key = match websocket_key(&req) {
            Ok(k) => k,
            Err(msg) => return text(StatusCode::BAD_REQUEST, msg),
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        let s = self.clone();
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(up) => {
                    let ws = tokio_websockets::ServerBuilder::new()
                        .limits(
                            tokio_websockets::Limits::default()
                                .max_payload_len(Some(protocol::MAX_CONTROL_MESSAGE)),
                        )
                        .serve(TokioIo::new(up));
                    s.run_session(ws, header_client, peer).await;
                }
                Err(e) => debug!(%peer, error = %e, "agent upgrade failed"),
            }
        });
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(v) = HeaderValue::from_str(&accept_key(&key)) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        r
    }

    async fn run_session<S>(
        self: Arc<Self>,
        mut ws: tokio_websockets::WebSocketStream<S>,
        header_client: Option<String>,
        peer: SocketAddr,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let hello =
            match tokio::time::timeout(protocol::HANDSHAKE_TIMEOUT, wsio::read_control(&mut ws))
                .await
            {
                Ok(Ok(text)) => {
                    serde_json::from_str::<Hello>(&text).map_err(|e| format!("bad Hello: {e}"))
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(format!("no Hello within {:?}", protocol::HANDSHAKE_TIMEOUT)),
            };
        let hello = match hello.and_then(|h| self.check_hello(h, header_client.as_deref())) {
            Ok(h) => h,
            Err(reason) => {
                info!(%peer, %reason, "agent session refused");
                wsio::close_with(&mut ws, 1008, &reason).await;
                return;
            }
        };
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(Session {
            id,
            client_id: hello.client_id.clone(),
            instance: hello.instance.clone(),
            sender: OnceLock::new(),
            evicted: Notify::new(),
        });
        let mut routes = Vec::new();
        let mut rejected = Vec::new();
        for (i, r) in hello.routes.iter().enumerate() {
            match normalize_route_name(&format!("routes[{i}]"), r) {
                Ok(n) => routes.push(n),
                Err(e) => rejected.push(Rejected {
                    route: r.clone(),
                    reason: e.to_string(),
                }),
            }
        }
        let mut reg = self.router.register(&session, &routes);
        rejected.append(&mut reg.rejected);
        let ack = HelloAck {
            version: protocol::PROTOCOL_VERSION,
            session: id,
            accepted: reg.accepted.clone(),
            rejected: rejected.clone(),
            heartbeat_interval_ms: millis(self.cfg.heartbeat_interval),
            heartbeat_timeout_ms: millis(self.cfg.heartbeat_timeout),
        };
        let sent = match serde_json::to_string(&ack) {
            Ok(t) => wsio::send_control(&mut ws, t).await,
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = sent {
            warn!(session = id, error = %e, "cannot acknowledge agent");
            self.router.remove_session(id);
            return;
        }
        ws.limits_mut()
            .set_max_payload_len(Some(protocol::MAX_WS_MESSAGE));
        let hb = Heartbeat {
            interval: self.cfg.heartbeat_interval,
            timeout: self.cfg.heartbeat_timeout,
        };
        let (tunnel, _) = mux::Session::start(ws, mux::Role::Opener, hb);
        let _ = session.sender.set(tunnel.clone());
        info!(
            session = id, client = %hello.client_id, %peer,
            accepted = ?reg.accepted, rejected = ?rejected, "agent connected"
        );
        tokio::select! {
            reason = tunnel.closed() => {
                info!(session = id, client = %hello.client_id, %reason, "agent disconnected");
            }
            () = session.evicted.notified() => {
                info!(session = id, client = %hello.client_id, "agent session replaced by a reconnect");
                tunnel.close("replaced by a newer session of the same agent");
            }
        }
        self.router.remove_session(id);
    }

    fn check_hello(&self, h: Hello, header_client: Option<&str>) -> Result<Hello, String> {
        if h.version != protocol::PROTOCOL_VERSION {
            return Err(format!(
                "protocol version {} not supported (server speaks {})",
                h.version,
                protocol::PROTOCOL_VERSION
            ));
        }
        if h.client_id.trim().is_empty() || h.client_id.len() > protocol::MAX_CLIENT_ID_LEN {
            return Err("clientId is empty or too long".into());
        }
        if h.routes.len() > protocol::MAX_ROUTES {
            return Err(format!("more than {} routes", protocol::MAX_ROUTES));
        }
        match header_client {
            Some(c) if c != h.client_id => {
                return Err(format!("client-id header {c:?} differs from Hello clientId {:?}", h.client_id))
            }
            None if self.router.policy(&h.client_id).is_some() => {
                return Err(format!(
                    "clientId {:?} has its own token in the server's agents: section; send it with a client-id header",
                    h.client_id
                ))
            }
            _ => {}
        }
        Ok(h)
    }

    // -----------------------------------------------------------------------------------------
    // External port: callers.

    async fn handle_external(
        self: &Arc<Self>,
        peer: SocketAddr,
        peer_ip: &str,
        mut req: Request<Incoming>,
    ) -> Response<PvBody> {
        // Which fields hold the caller's proxy token: kept from both the log and the agent.
        let credential = self
            .cfg
            .external_token
            .is_some()
            .then(|| Credentials::of(req.headers()));
        let mut log = self.sink.as_ref().map(|sink| LogCtx {
            sink: sink.clone(),
            done: false,
            start: SystemTime::now(),
            t0: Instant::now(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: logged_headers(req.headers(), credential),
            request: Arc::new(Mutex::new(Capture::new(CAPTURE_LIMIT))),
            endpoint: None,
            client_id: None,
            session: None,
        });
        let host = match request_host(req.uri(), req.headers()) {
            Ok(h) => h,
            Err(e) => return self.fail(log, StatusCode::BAD_REQUEST, &e.to_string()),
        };
        if let Some(token) = &self.cfg.external_token {
            if !presented_token(req.headers(), &protocol::AUTH_TOKEN_HEADER)
                .is_some_and(|t| token.matches(t.as_bytes()))
            {
                let mut r = self.fail(
                    log,
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong auth-token / Authorization: Bearer",
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"proxyview\""),
                );
                return r;
            }
        }
        let candidates = self.router.candidates(&host);
        if candidates.is_empty() {
            return self.fail(
                log,
                StatusCode::NOT_FOUND,
                &format!("no agent serves host {host:?}"),
            );
        }
        if let Some(l) = log.as_mut() {
            l.endpoint = Some(host.clone());
        }
        let proto = http_util::upgrade_protocol(req.headers());
        let caller_upgrade = proto.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let headers = parts.headers;
        let original_host = parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| headers.get(header::HOST).and_then(|v| v.to_str().ok()))
            .unwrap_or_default();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        // The caller's fields minus what must not reach the agent, then the tunnel metadata —
        // encoded straight from the caller's map rather than edited in it first.
        let drop_forwarded = !peer_allowed_opt(self.cfg.trusted_proxies.as_ref(), peer.ip());
        let named = http_util::connection_named(&headers);
        let keep = |n: &HeaderName| {
            let dropped = n == header::HOST
                || http_util::is_internal_name(n.as_str().as_bytes())
                || http_util::is_hop_by_hop(n)
                || named.contains(n)
                || credential.is_some_and(|c| c.matches(n))
                || (drop_forwarded
                    && (n == http_util::X_FORWARDED_FOR
                        || n == http_util::X_FORWARDED_HOST
                        || n == http_util::X_FORWARDED_PROTO
                        || n == header::FORWARDED));
            !dropped
        };
        let meta = [
            (protocol::ROUTE_FIELD, host.as_str()),
            (protocol::PEER_FIELD, peer_ip),
            (protocol::HOST_FIELD, original_host),
            (
                protocol::UPGRADE_FIELD,
                proto.as_deref().unwrap_or_default(),
            ),
        ];
        let head = protocol::encode_request_head(
            parts.method.as_str(),
            path,
            headers
                .iter()
                .filter(|(n, _)| keep(n))
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
                .chain(
                    meta.iter()
                        .filter(|(_, v)| !v.is_empty())
                        .map(|(n, v)| (n.as_bytes(), v.as_bytes())),
                ),
        );
        // An upgrade request's body is the pipe that follows the 101, never a request body.
        let body = boxed(body);
        let upgrade = proto.is_some();
        let end = !upgrade && body.is_end_stream();
        let body = match &log {
            Some(l) if !end => boxed(Tap::new(body, l.request.clone(), None)),
            _ => body,
        };

        let mut opened = None;
        for s in candidates {
            let Some(tunnel) = s.sender.get() else {
                continue;
            };
            match tunnel.open(head.clone(), end, upgrade) {
                Ok(halves) => {
                    opened = Some((halves, s));
                    break;
                }
                Err(e) => {
                    // Nothing reached the agent: drop the dead session, try the next one.
                    debug!(session = s.id, error = %e, "session not usable, failing over");
                    self.router.remove_session(s.id);
                }
            }
        }
        let Some(((send, mut recv), session)) = opened else {
            return self.fail(
                log,
                StatusCode::BAD_GATEWAY,
                &format!("no live agent session for host {host:?}"),
            );
        };
        let log = log.map(|l| l.served_by(&session));
        // The request body goes up while the response head is awaited; a body still being sent
        // when the head arrives (an early answer) finishes in its own task.
        type Upload = Pin<Box<dyn Future<Output = ()> + Send>>;
        let (mut upload, pipe_send): (Option<Upload>, _) = if upgrade {
            (None, Some(send))
        } else if end {
            (None, None)
        } else {
            let mut send = send;
            let up: Upload = Box::pin(async move {
                let _ = mux::send_body(body, &mut send).await;
            });
            (Some(up), None)
        };
        let deadline = tokio::time::Instant::now() + self.cfg.response_timeout;
        let answer = tokio::time::timeout_at(deadline, async {
            match upload.as_mut() {
                None => recv.head().await,
                Some(up) => {
                    tokio::select! {
                        h = recv.head() => h,
                        () = up.as_mut() => {
                            upload = None;
                            recv.head().await
                        }
                    }
                }
            }
        })
        .await;
        if let Some(up) = upload {
            tokio::spawn(up);
        }
        let (block, resp_end) = match answer {
            Err(_) => {
                return self.fail(
                    log,
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!(
                        "no response from the agent within {:?}",
                        self.cfg.response_timeout
                    ),
                )
            }
            Ok(Err(e)) => {
                return self.fail(
                    log,
                    StatusCode::BAD_GATEWAY,
                    &format!("tunnel to agent {:?} failed: {e}", session.client_id),
                )
            }
            Ok(Ok(x)) => x,
        };
        let ResponseHead {
            status,
            headers: mut rheaders,
        } = match ResponseHead::decode(block) {
            Ok(h) => h,
            Err(e) => {
                return self.fail(
                    log,
                    StatusCode::BAD_GATEWAY,
                    &format!(
                        "agent {:?} sent a bad response head: {e}",
                        session.client_id
                    ),
                )
            }
        };
        if status == StatusCode::SWITCHING_PROTOCOLS && !upgrade {
            return self.fail(
                log,
                StatusCode::BAD_GATEWAY,
                &format!(
                    "agent {:?} switched protocols on a request that asked for no upgrade",
                    session.client_id
                ),
            );
        }
        let agent_error = rheaders.remove(protocol::ERROR_HEADER);
        if agent_error.is_some() && self.cfg.legacy_errors {
            return self.fail(log, status, "agent error");
        }
        http_util::strip_hop_by_hop(&mut rheaders);
        http_util::strip_internal(&mut rheaders);
        if let (Some(p), Some(caller_up), Some(mut send)) = (&proto, caller_upgrade, pipe_send) {
            if status != StatusCode::SWITCHING_PROTOCOLS {
                // The backend refused the upgrade: close our (empty) direction cleanly, so the
                // answer's body still streams instead of being cut by a reset.
                let _ = send.send_data(bytes::Bytes::new(), true).await;
            } else {
                tokio::spawn(async move {
                    match caller_up.await {
                        Ok(up) => mux::pipe(TokioIo::new(up), &mut send, recv).await,
                        Err(e) => debug!(error = %e, "upgrade pass-through failed"),
                    }
                });
                http_util::set_upgrade(&mut rheaders, p);
                let mut r = Response::new(empty());
                *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                *r.headers_mut() = rheaders;
                if let Some(l) = log {
                    self.emit(l, &r, None, 0);
                }
                return r;
            }
        }
        let body = if resp_end { empty() } else { boxed(recv) };
        let mut parts = Response::new(()).into_parts().0;
        parts.status = status;
        parts.headers = rheaders;
        let body = match log {
            None => body,
            Some(l) => {
                let capture = Arc::new(Mutex::new(Capture::new(CAPTURE_LIMIT)));
                let sink = self.sink.clone();
                let (status, rheaders) = (parts.status, parts.headers.clone());
                let cap = capture.clone();
                let finish: Box<dyn FnOnce(bool) + Send> = Box::new(move |_complete| {
                    if let Some(sink) = sink {
                        let resp_cap =
                            std::mem::take(&mut *cap.lock().unwrap_or_else(|p| p.into_inner()));
                        sink.emit(l.record(status.as_u16(), rheaders, Some(resp_cap), 0));
                    }
                });
                boxed(Tap::new(body, capture, Some(finish)))
            }
        };
        Response::from_parts(parts, body)
    }

    /// A locally generated error response (and its log record).
    fn fail(&self, log: Option<LogCtx>, status: StatusCode, msg: &str) -> Response<PvBody> {
        let r = if self.cfg.legacy_errors {
            legacy_404()
        } else {
            text(status, &format!("proxyview: {msg}\n"))
        };
        if let Some(l) = log {
            let len = if self.cfg.legacy_errors {
                LEGACY_404_BODY.len()
            } else {
                msg.len() + 12
            };
            self.emit(l, &r, None, len as u64);
        }
        r
    }

    fn emit(&self, l: LogCtx, r: &Response<PvBody>, body: Option<Capture>, local: u64) {
        if let Some(sink) = &self.sink {
            sink.emit(l.record(r.status().as_u16(), r.headers().clone(), body, local));
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    Internal,
    External,
}

/// What the server remembers about a request until its log record is written.
struct LogCtx {
    sink: Arc<dyn AccessSink>,
    done: bool,
    start: SystemTime,
    t0: Instant,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    request: Arc<Mutex<Capture>>,
    endpoint: Option<String>,
    client_id: Option<String>,
    session: Option<u64>,
}

impl LogCtx {
    fn served_by(mut self, s: &Session) -> Self {
        self.client_id = Some(s.client_id.clone());
        self.session = Some(s.id);
        self
    }

    fn record(
        mut self,
        status: u16,
        response_headers: HeaderMap,
        response_body: Option<Capture>,
        local: u64,
    ) -> AccessRecord {
        self.take_record(status, response_headers, response_body, local)
    }

    fn take_record(
        &mut self,
        status: u16,
        response_headers: HeaderMap,
        response_body: Option<Capture>,
        local: u64,
    ) -> AccessRecord {
        self.done = true;
        let request_body =
            std::mem::take(&mut *self.request.lock().unwrap_or_else(|p| p.into_inner()));
        AccessRecord {
            exchange: Exchange {
                start: self.start,
                end: SystemTime::now(),
                elapsed: self.t0.elapsed(),
                method: self.method.clone(),
                uri: std::mem::take(&mut self.uri),
                tls: false,
                request_headers: std::mem::take(&mut self.headers),
                request_body,
                status,
                response_headers,
                response_body,
                local_response_bytes: local,
                endpoint: Some(self.endpoint.take().unwrap_or_else(|| "unmatched".into())),
                client_id: self.client_id.clone(),
            },
            client_id: self.client_id.take(),
            session: self.session,
        }
    }
}

/// Status logged when the caller went away before a response head was sent (nginx's convention,
/// as cwproxy logs it).
pub const CLIENT_CLOSED: u16 = 499;

impl Drop for LogCtx {
    fn drop(&mut self) {
        if !self.done {
            let rec = self.take_record(CLIENT_CLOSED, HeaderMap::new(), None, 0);
            self.sink.emit(rec);
        }
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn peer_allowed_opt(list: Option<&Allowlist>, ip: IpAddr) -> bool {
    list.is_some_and(|l| l.allows(ip))
}

/// The token from `Authorization: Bearer …`, else from the legacy header.
fn presented_token<'a>(h: &'a HeaderMap, legacy: &HeaderName) -> Option<&'a str> {
    let bearer = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    bearer.or_else(|| h.get(legacy).and_then(|v| v.to_str().ok()).map(str::trim))
}

/// The request headers as logged: the caller's proxy token never reaches the log.
fn logged_headers(h: &HeaderMap, credential: Option<Credentials>) -> HeaderMap {
    match credential {
        None => h.clone(),
        Some(c) => h
            .iter()
            .filter(|(n, _)| !c.matches(n))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect(),
    }
}

/// The fields of one request that carry the caller's proxy token: `auth-token` always, and
/// `Authorization` when it is a bearer token (ours; other schemes belong to the backend). One
/// rule for what the agent and the access log never see.
#[derive(Debug, Clone, Copy)]
struct Credentials {
    bearer: bool,
}

impl Credentials {
    fn of(h: &HeaderMap) -> Self {
        let bearer = h
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer "));
        Self { bearer }
    }

    fn matches(self, n: &HeaderName) -> bool {
        n == protocol::AUTH_TOKEN_HEADER || (self.bearer && n == header::AUTHORIZATION)
    }
}

fn websocket_key(req: &Request<Incoming>) -> Result<String, &'static str> {
    if req.method() != Method::GET {
        return Err("/connect needs GET with a WebSocket upgrade\n");
    }
    if !http_util::upgrade_protocol(req.headers())
        .is_some_and(|p| p.eq_ignore_ascii_case("websocket"))
    {
        return Err("/connect needs Connection: upgrade and Upgrade: websocket\n");
    }
    if req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err("/connect needs Sec-WebSocket-Version: 13\n");
    }
    req.headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .ok_or("/connect needs Sec-WebSocket-Key\n")
}

/// RFC 6455 §4.2.2: base64(SHA-1(key ++ GUID)).
fn accept_key(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

fn text(status: StatusCode, body: &str) -> Response<PvBody> {
    let mut r = Response::new(full(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Proxyview's 404 page, byte for byte.
pub fn legacy_404() -> Response<PvBody> {
    let mut r = Response::new(full(LEGACY_404_BODY));
    *r.status_mut() = StatusCode::NOT_FOUND;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

/// Answers a peer outside the allowlist without parsing or forwarding anything it sent: its
/// first bytes are read and discarded (so an HTTP client is reading by then), then 403 and a FIN;
/// the rest is drained briefly so the kernel does not turn our close into an RST that destroys
/// the answer.
/// In legacy mode the connection is just closed, as Proxyview did.
async fn reject_peer(mut tcp: TcpStream, silent: bool) {
    if silent {
        return;
    }
    let body = "proxyview: your address is not allowed\n";
    let head = format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut sink = [0u8; 4096];
    // Discard (never parse) what the peer sent first, so the answer follows its request.
    let _ = tokio::time::timeout(protocol::HEADER_READ_TIMEOUT, tcp.read(&mut sink)).await;
    let _ = tokio::time::timeout(protocol::REJECT_DRAIN, async {
        tcp.write_all(head.as_bytes()).await?;
        tcp.shutdown().await?;
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn token_sources_and_stripping() {
        let mut h = HeaderMap::new();
        h.insert("auth-token", HeaderValue::from_static("legacy"));
        assert_eq!(
            presented_token(&h, &protocol::AUTH_TOKEN_HEADER),
            Some("legacy")
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer  tok "),
        );
        assert_eq!(
            presented_token(&h, &protocol::AUTH_TOKEN_HEADER),
            Some("tok")
        );
        h.insert("x-other", HeaderValue::from_static("1"));
        let kept = |h: &HeaderMap| {
            let c = Credentials::of(h);
            h.keys()
                .filter(|n| !c.matches(n))
                .map(|n| n.as_str().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(kept(&h), ["x-other"]);
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(
            kept(&h),
            ["authorization"],
            "non-bearer Authorization belongs to the backend"
        );
    }
}
