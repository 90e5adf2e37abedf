//! The agent (`proxyview client`): keeps one tunnel to the server, re-registering after every
//! reconnect, and forwards each tunnelled request to its route's `value:port` over a pooled
//! HTTP/1.1 client. Upgrades (WebSocket) become raw byte pipes to the backend.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Response, StatusCode};
use http_body::Body as _;
use netpolicy::{Backoff, Jitter};
use rand::Rng as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::{info, warn};

use crate::backend::{self, BackendError, ExchangeError, Outcome, Pool, RequestBody};
use crate::config::{ClientConfig, Route, ServerUrl};
use crate::http_util::{self, full, PvBody};
use crate::mux::{self, lock, Heartbeat};
use crate::protocol::{self, agent_error, Hello, HelloAck, RawRequestHead, ResponseHead};
use crate::wsio;

/// Why a session ended before or instead of serving.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Retrying cannot help (bad token, refused identity): the process should exit.
    #[error("{0}")]
    Fatal(String),
    /// Network or server trouble: reconnect after a back-off.
    #[error("{0}")]
    Retry(String),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Agent state shared by every stream of every session.
pub struct Agent {
    cfg: ClientConfig,
    routes: HashMap<String, Backend>,
    instance: String,
    /// Index into `cfg.servers` of the endpoint the next session dials.
    current: std::sync::atomic::AtomicUsize,
    #[cfg(feature = "tls")]
    tls: Option<tokio_rustls::TlsConnector>,
}

/// A route plus what every request to it needs, computed once instead of per request.
struct Backend {
    route: Route,
    /// `Host` sent to the backend unless the route preserves the caller's.
    host: Box<[u8]>,
    /// Keep-alive connections to `value:port`.
    pool: Arc<Pool>,
}

impl Backend {
    fn new(route: &Route, connect_timeout: Duration) -> anyhow::Result<Self> {
        let addr = route.authority();
        // Validated here so a bad `value` fails at start, not on the first request.
        addr.parse::<Authority>().map_err(|e| {
            anyhow::anyhow!(
                "route {:?}: {addr:?} is not a valid backend authority: {e}",
                route.name
            )
        })?;
        let host = if route.port == 80 {
            route.value.as_str()
        } else {
            addr.as_str()
        };
        if host.bytes().any(|c| c <= b' ' || c == 0x7f) {
            anyhow::bail!("route {:?}: {host:?} cannot be a Host header", route.name);
        }
        let host = host.as_bytes().into();
        let pool = Pool::new(addr, connect_timeout);
        Ok(Self {
            route: route.clone(),
            host,
            pool,
        })
    }
}

/// Runs the agent until a fatal error (401/403, identity refused); transient failures reconnect
/// with exponential back-off and jitter.
pub async fn run(cfg: ClientConfig) -> anyhow::Result<()> {
    let agent = Arc::new(Agent::new(cfg)?);
    let weak = Arc::downgrade(&agent);
    let _sweeper = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        let mut tick = tokio::time::interval(protocol::BACKEND_POOL_IDLE / 4);
        loop {
            tick.tick().await;
            let Some(agent) = weak.upgrade() else { break };
            for b in agent.routes.values() {
                b.pool.sweep();
            }
        }
    }));
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        match agent.clone().session().await {
            Err(SessionError::Fatal(msg)) => anyhow::bail!("{msg}"),
            Err(SessionError::Retry(msg)) => warn!(error = %msg, "tunnel down"),
            Ok(()) => info!("tunnel closed"),
        }
        if started.elapsed() >= protocol::RECONNECT_STABLE {
            failures = 0;
        }
        // Cluster (`proxyview.urls`): the next session dials the next node.
        agent.advance();
        let delay = backoff(failures);
        failures = failures.saturating_add(1);
        info!(delay_ms = delay.as_millis() as u64, "reconnecting");
        tokio::time::sleep(delay).await;
    }
}

/// Delay before reconnect attempt `n`: base·2ⁿ capped, then a random point in its upper half, so
/// agents cut off together do not come back in lock-step.
pub fn backoff(n: u32) -> Duration {
    Backoff::new(protocol::RECONNECT_BASE, protocol::RECONNECT_MAX)
        .jitter(Jitter::UpperHalf)
        .delay(n)
}

impl Agent {
    /// Builds the agent (pooled backend client, TLS settings).
    pub fn new(cfg: ClientConfig) -> anyhow::Result<Self> {
        let routes = cfg
            .routes
            .iter()
            .map(|r| Ok((r.name.clone(), Backend::new(r, cfg.connect_timeout)?)))
            .collect::<anyhow::Result<_>>()?;
        let instance = format!("{:016x}", rand::rng().random::<u64>());
        #[cfg(feature = "tls")]
        let tls = if cfg.servers.iter().any(|s| s.tls) {
            Some(crate::tls::connector(cfg.ca_file.as_deref())?)
        } else {
            None
        };
        Ok(Self {
            cfg,
            routes,
            instance,
            current: std::sync::atomic::AtomicUsize::new(0),
            #[cfg(feature = "tls")]
            tls,
        })
    }

    /// The endpoint the next session dials.
    fn url(&self) -> &ServerUrl {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        self.cfg.servers.get(i).unwrap_or(&self.cfg.server)
    }

    /// Moves to the next endpoint of `proxyview.urls` (a no-op with one).
    fn advance(&self) {
        let n = self.cfg.servers.len().max(1);
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        self.current
            .store((i + 1) % n, std::sync::atomic::Ordering::Relaxed);
    }

    async fn dial(&self) -> Result<Box<dyn Io>, SessionError> {
        let url = self.url();
        let tcp = tokio::time::timeout(
            protocol::HANDSHAKE_TIMEOUT,
            TcpStream::connect((url.host.as_str(), url.port)),
        )
        .await
        .map_err(|_| {
            SessionError::Retry(format!("connect to {}:{} timed out", url.host, url.port))
        })?
        .map_err(|e| {
            SessionError::Retry(format!("cannot connect to {}:{}: {e}", url.host, url.port))
        })?;
        let _ = tcp.set_nodelay(true);
        if !url.tls {
            return Ok(Box::new(tcp));
        }
        #[cfg(feature = "tls")]
        {
            let Some(tls) = &self.tls else {
                return Err(SessionError::Fatal("wss:// without a TLS connector".into()));
            };
            let name = rustls::pki_types::ServerName::try_from(url.host.clone()).map_err(|e| {
                SessionError::Fatal(format!("proxyview.url host {:?}: {e}", url.host))
            })?;
            let stream = tokio::time::timeout(protocol::HANDSHAKE_TIMEOUT, tls.connect(name, tcp))
                .await
                .map_err(|_| SessionError::Retry("TLS handshake timed out".into()))?
                .map_err(|e| {
                    SessionError::Retry(format!("TLS handshake with {} failed: {e}", url.host))
                })?;
            Ok(Box::new(stream))
        }
        #[cfg(not(feature = "tls"))]
        Err(SessionError::Fatal("wss:// needs the tls feature".into()))
    }

    /// One session: dial, authenticate, register, then serve streams until the tunnel ends.
    pub async fn session(self: Arc<Self>) -> Result<(), SessionError> {
        let io = self.dial().await?;
        let uri = self.url().uri();
        let bad = |e: tokio_websockets::Error| {
            SessionError::Fatal(format!("cannot build the handshake: {e}"))
        };
        let bearer = HeaderValue::from_str(&format!("Bearer {}", self.cfg.token.expose()))
            .map_err(|_| {
                SessionError::Fatal("proxyview.token has characters not allowed in a header".into())
            })?;
        let client_id = HeaderValue::from_str(&self.cfg.client_id).map_err(|_| {
            SessionError::Fatal("clientId has characters not allowed in a header".into())
        })?;
        let builder = tokio_websockets::ClientBuilder::new()
            .uri(&uri)
            .map_err(|e| SessionError::Fatal(format!("proxyview.url {uri:?}: {e}")))?
            .add_header(header::AUTHORIZATION, bearer)
            .map_err(bad)?
            .add_header(protocol::CLIENT_ID_HEADER, client_id)
            .map_err(bad)?
            .limits(
                tokio_websockets::Limits::default()
                    .max_payload_len(Some(protocol::MAX_CONTROL_MESSAGE)),
            );
        let (mut ws, _) = tokio::time::timeout(protocol::HANDSHAKE_TIMEOUT, builder.connect_on(io))
            .await
            .map_err(|_| SessionError::Retry(format!("WebSocket handshake with {uri} timed out")))?
            .map_err(|e| classify_handshake_error(&uri, e))?;
        let hello = Hello {
            version: protocol::PROTOCOL_VERSION,
            client_id: self.cfg.client_id.clone(),
            instance: self.instance.clone(),
            routes: self.cfg.routes.iter().map(|r| r.name.clone()).collect(),
            targets: self
                .cfg
                .routes
                .iter()
                .map(|r| (r.name.clone(), r.fingerprint()))
                .collect(),
        };
        let text = serde_json::to_string(&hello).map_err(|e| SessionError::Fatal(e.to_string()))?;
        wsio::send_control(&mut ws, text)
            .await
            .map_err(SessionError::Retry)?;
        let ack =
            match tokio::time::timeout(protocol::HANDSHAKE_TIMEOUT, wsio::read_control(&mut ws))
                .await
            {
                Err(_) => return Err(SessionError::Retry("no HelloAck from the server".into())),
                // 1008 = the server refused this identity; retrying the same config cannot help.
                Ok(Err(e)) if e.contains("(1008)") => {
                    return Err(SessionError::Fatal(format!(
                        "server refused the agent: {e}"
                    )))
                }
                Ok(Err(e)) => return Err(SessionError::Retry(e)),
                Ok(Ok(t)) => serde_json::from_str::<HelloAck>(&t).map_err(|e| {
                    SessionError::Retry(format!("bad HelloAck from the server: {e}"))
                })?,
            };
        for r in &ack.rejected {
            warn!(route = %r.route, reason = %r.reason, "route rejected by the server");
        }
        for w in &ack.warnings {
            warn!(warning = %w, "server warning");
        }
        if ack.accepted.is_empty() {
            return Err(SessionError::Retry(
                "the server accepted none of this agent's routes".into(),
            ));
        }
        info!(session = ack.session, accepted = ?ack.accepted, "tunnel up");
        ws.limits_mut()
            .set_max_payload_len(Some(protocol::MAX_WS_MESSAGE));
        let hb = Heartbeat {
            interval: Duration::from_millis(ack.heartbeat_interval_ms.max(100)),
            timeout: Duration::from_millis(ack.heartbeat_timeout_ms.max(100)),
        };
        let workers = Workers::new(self.clone());
        let tunnel = mux::Session::start_acceptor(ws, hb, Box::new(move |a| workers.dispatch(a)));
        let reason = tunnel.closed().await;
        Err(SessionError::Retry(format!("tunnel failed: {reason}")))
    }

    /// One tunnelled request: forward it to the route's backend and the answer back.
    async fn serve_stream(self: Arc<Self>, a: mux::Accepted) {
        let mux::Accepted {
            head,
            end,
            upgrade,
            mut send,
            recv,
        } = a;
        let cancelled = send.cancelled_owned();
        tokio::select! {
            () = self.forward(&head, end, upgrade, recv, &mut send) => {}
            // The caller went away (reset) or the session ended: stop talking to the backend.
            () = cancelled => {}
        }
    }

    /// The backend and the HTTP/1.1 request for a tunnelled head, or why there is none (the
    /// head is unusable or names a route this agent does not have: a 502 `no-route`).
    fn prepare(
        &self,
        block: &[u8],
        end: bool,
        upgrade: bool,
    ) -> Result<(&Backend, BytesMut, backend::Request), String> {
        let bad_head = |e: &dyn std::fmt::Display| format!("bad request head from the server: {e}");
        let head = RawRequestHead::parse(block).map_err(|e| bad_head(&e))?;
        let meta = Meta::read(&head);
        let route_name = std::str::from_utf8(meta.route).unwrap_or("");
        let Some(backend) = self.routes.get(route_name) else {
            return Err(format!("agent has no route {route_name:?}"));
        };
        let upgrade = if upgrade { meta.upgrade } else { None };
        let (out, body) =
            write_request_head(&head, &meta, backend, end, upgrade).map_err(|w| bad_head(&w))?;
        let req = backend::Request {
            body,
            head_method: head.method == b"HEAD",
            upgrade: upgrade.is_some(),
            retryable: body == RequestBody::None && is_idempotent(head.method),
            timeout: self.cfg.response_timeout,
            idle: self.cfg.body_idle_timeout,
        };
        Ok((backend, out, req))
    }

    async fn forward(
        &self,
        block: &[u8],
        end: bool,
        upgrade: bool,
        recv: mux::RecvHalf,
        send: &mut mux::SendHalf,
    ) {
        let (backend, req_head, req) = match self.prepare(block, end, upgrade) {
            Ok(x) => x,
            Err(msg) => {
                let r = agent_fail(StatusCode::BAD_GATEWAY, agent_error::NO_ROUTE, &msg);
                let _ = respond(r, send).await;
                return;
            }
        };
        let r = match backend.pool.exchange(&req_head, &req, recv, send).await {
            Ok(Outcome::Done) => return,
            Ok(Outcome::Upgraded(tcp, recv)) => return mux::pipe(tcp, send, recv).await,
            // Dropping the stream's send half (our caller does) resets it.
            Err(ExchangeError::Broken) => return,
            Err(ExchangeError::Failed(e)) => {
                // The detail (with the backend's address) stays in this log; the caller gets
                // the cause only.
                warn!(route = %backend.route.name, error = %e, "backend request failed");
                let (status, kind) = match e {
                    BackendError::Timeout { .. } => {
                        (StatusCode::GATEWAY_TIMEOUT, agent_error::BACKEND_TIMEOUT)
                    }
                    _ => (StatusCode::BAD_GATEWAY, agent_error::BACKEND_UNREACHABLE),
                };
                agent_fail(status, kind, &e.public())
            }
        };
        let _ = respond(r, send).await;
    }
}

/// Long-lived tasks that serve tunnelled streams one after another. Handing a stream to an
/// idle worker is one wake-up; a task per stream would cost an allocation (over-aligned, so
/// malloc's slow path), a spawn and a free per request.
/// One pool per session; the session drops it when it ends, which lets idle workers go.
struct Workers {
    agent: Arc<Agent>,
    idle: Arc<Mutex<Idle>>,
}

#[derive(Default)]
struct Idle {
    slots: Vec<Arc<Slot>>,
    closed: bool,
    /// Workers running or waiting.
    live: usize,
}

/// Workers left waiting after a burst; the rest end when their stream does.
const MAX_IDLE_WORKERS: usize = 64;

/// Where a waiting worker's next stream is put (one at a time).
type Slot = mux::Mailbox<mux::Accepted>;

impl Workers {
    fn new(agent: Arc<Agent>) -> Self {
        Self {
            agent,
            idle: Arc::default(),
        }
    }

    /// Gives `a` to an idle worker, or to a new one when all are busy.
    fn dispatch(&self, a: mux::Accepted) {
        let slot = {
            let mut idle = lock(&self.idle);
            let slot = idle.slots.pop();
            if slot.is_none() {
                idle.live += 1;
            }
            slot
        };
        match slot {
            Some(slot) => slot.push(a),
            None => {
                let (agent, idle) = (self.agent.clone(), self.idle.clone());
                // Boxed: the task then moves a pointer, not the whole (kilobytes) state
                // machine through spawn's layers.
                tokio::spawn(Box::pin(worker(agent, idle, a)));
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let slots = {
            let mut idle = lock(&self.idle);
            idle.closed = true;
            std::mem::take(&mut idle.slots)
        };
        for s in slots {
            s.close();
        }
    }
}

async fn worker(agent: Arc<Agent>, idle: Arc<Mutex<Idle>>, mut job: mux::Accepted) {
    let slot = Arc::new(Slot::default());
    loop {
        agent.clone().serve_stream(job).await;
        {
            let mut idle = lock(&idle);
            if idle.closed || idle.slots.len() >= MAX_IDLE_WORKERS {
                break;
            }
            idle.slots.push(slot.clone());
        }
        match std::future::poll_fn(|cx| slot.poll_recv(cx)).await {
            Some(next) => job = next,
            None => break,
        }
    }
    lock(&idle).live -= 1;
}

/// Sends a response (head, then body) on the stream.
async fn respond(r: Response<PvBody>, send: &mut mux::SendHalf) -> Result<(), mux::StreamError> {
    let (parts, body) = r.into_parts();
    let end = body.is_end_stream();
    let head = ResponseHead {
        status: parts.status,
        headers: parts.headers,
    };
    send.send_head(&head.encode(), end)?;
    if end {
        return Ok(());
    }
    mux::send_body(body, send).await
}

/// RFC 9110 §9.2.2: may be sent again after a connection failure.
fn is_idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
    )
}

/// What the agent takes from a tunnelled request head besides the caller's own fields.
#[derive(Debug, Default)]
struct Meta<'a> {
    /// `proxyview-route`: which backend.
    route: &'a [u8],
    /// `proxyview-peer`: the caller's address, appended to `X-Forwarded-For`.
    peer: Option<&'a [u8]>,
    /// `proxyview-host`: the caller's Host.
    host: Option<&'a [u8]>,
    /// `proxyview-upgrade`: the protocol an upgrade asks for.
    upgrade: Option<&'a [u8]>,
    /// The caller sent `X-Forwarded-For` (to be extended).
    xff: bool,
    /// The caller sent `X-Forwarded-Host` (kept as is).
    xfh: bool,
    /// The caller sent `X-Forwarded-Proto` (kept as is).
    xfp: bool,
    /// The caller's `Content-Length`.
    length: Option<&'a [u8]>,
}

impl<'a> Meta<'a> {
    fn read(head: &RawRequestHead<'a>) -> Self {
        let mut m = Meta::default();
        for (name, value) in head.fields() {
            if http_util::is_internal_name(name) {
                if name == protocol::ROUTE_FIELD.as_bytes() {
                    m.route = value;
                } else if name == protocol::PEER_FIELD.as_bytes() {
                    m.peer = Some(value);
                } else if name == protocol::HOST_FIELD.as_bytes() {
                    m.host = Some(value);
                } else if name == protocol::UPGRADE_FIELD.as_bytes() {
                    m.upgrade = Some(value);
                }
                continue;
            }
            match name {
                b"x-forwarded-for" => m.xff = true,
                b"x-forwarded-host" => m.xfh = true,
                b"x-forwarded-proto" => m.xfp = true,
                b"content-length" => m.length = Some(value),
                _ => {}
            }
        }
        m
    }
}

/// Writes the backend's HTTP/1.1 request head: the caller's fields minus tunnel metadata and
/// hop-by-hop ones, Host rewritten (unless the route preserves it), `X-Forwarded-*` added, and
/// the body's framing. Returns the head and how the body follows it.
fn write_request_head(
    head: &RawRequestHead<'_>,
    meta: &Meta<'_>,
    backend: &Backend,
    end: bool,
    upgrade: Option<&[u8]>,
) -> Result<(BytesMut, RequestBody), &'static str> {
    let mut out = BytesMut::with_capacity(256);
    out.extend_from_slice(head.method);
    out.extend_from_slice(b" ");
    out.extend_from_slice(head.path);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut field = |name: &[u8], value: &[u8]| http1::put_field(&mut out, name, value);
    for (name, value) in head.fields() {
        let skip = http_util::is_internal_name(name)
            || name == b"host"
            || (name == b"x-forwarded-for" && meta.peer.is_some())
            || (name == b"content-length" && upgrade.is_some())
            || http1::rules::is_hop_by_hop_name(name);
        if !skip {
            field(name, value);
        }
    }
    let host = match (meta.host, backend.route.preserve_host) {
        (Some(h), true) => h,
        _ => &backend.host,
    };
    field(b"host", host);
    if let Some(peer) = meta.peer {
        if meta.xff {
            // Every X-Forwarded-For line the caller sent, in order, then the caller itself.
            let mut v = Vec::with_capacity(64);
            for (name, value) in head.fields() {
                if name == b"x-forwarded-for" && !value.trim_ascii().is_empty() {
                    v.extend_from_slice(value.trim_ascii());
                    v.extend_from_slice(b", ");
                }
            }
            v.extend_from_slice(peer);
            field(b"x-forwarded-for", &v);
        } else {
            field(b"x-forwarded-for", peer);
        }
    }
    if !meta.xfh {
        if let Some(h) = meta.host {
            field(b"x-forwarded-host", h);
        }
    }
    if !meta.xfp {
        field(b"x-forwarded-proto", b"http");
    }
    let body = if let Some(proto) = upgrade {
        field(b"connection", b"upgrade");
        field(b"upgrade", proto);
        RequestBody::None
    } else if end {
        if meta.length.is_none() && matches!(head.method, b"POST" | b"PUT" | b"PATCH") {
            field(b"content-length", b"0");
        }
        RequestBody::None
    } else if let Some(n) = meta.length {
        let n = std::str::from_utf8(n)
            .ok()
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or("invalid content-length")?;
        RequestBody::Length(n)
    } else {
        field(b"transfer-encoding", b"chunked");
        RequestBody::Chunked
    };
    out.extend_from_slice(b"\r\n");
    Ok((out, body))
}

fn agent_fail(status: StatusCode, kind: &'static str, msg: &str) -> Response<PvBody> {
    let mut r = Response::new(full(format!("proxyview agent: {msg}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(protocol::ERROR_HEADER, HeaderValue::from_static(kind));
    r
}

fn classify_handshake_error(uri: &str, e: tokio_websockets::Error) -> SessionError {
    use tokio_websockets::upgrade::Error as U;
    match e {
        tokio_websockets::Error::Upgrade(U::DidNotSwitchProtocols(401)) => SessionError::Fatal(format!(
            "server {uri} answered 401: the agent token was refused; check proxyview.token (and the server's agents: entry for this clientId)"
        )),
        tokio_websockets::Error::Upgrade(U::DidNotSwitchProtocols(403)) => SessionError::Fatal(format!(
            "server {uri} answered 403: this agent's address is not in the server's internal.whitelistedIps"
        )),
        other => SessionError::Retry(format!("WebSocket handshake with {uri} failed: {other}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::RouteKind;
    use http::HeaderMap;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        for n in 0..40 {
            let d = backoff(n);
            let exp = (100u64 << n.min(20)).min(30_000);
            assert!(
                d.as_millis() as u64 >= exp / 2 && d.as_millis() as u64 <= exp,
                "{n}: {d:?}"
            );
        }
    }

    fn backend_head(fields: &[(&str, &str)], preserve_host: bool, end: bool) -> String {
        let route = Route {
            name: "r".into(),
            value: "svc".into(),
            port: 8083,
            kind: RouteKind::Cname,
            preserve_host,
        };
        let mut headers = HeaderMap::new();
        for (n, v) in fields {
            headers.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let block = protocol::RequestHead {
            method: http::Method::POST,
            path: "/p?q=1".parse().unwrap(),
            headers,
        }
        .encode();
        let head = RawRequestHead::parse(&block).unwrap();
        let meta = Meta::read(&head);
        let backend = Backend::new(&route, Duration::from_secs(1)).unwrap();
        let (out, _) = write_request_head(&head, &meta, &backend, end, None).unwrap();
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn headers_for_backend() {
        let h = backend_head(
            &[
                ("proxyview-peer", "10.0.0.9"),
                ("proxyview-host", "R:8080"),
                ("proxyview-route", "r"),
                ("x-forwarded-for", "1.2.3.4"),
                ("accept", "*/*"),
                ("x-forwarded-for", "5.6.7.8"),
                ("content-length", "3"),
            ],
            false,
            false,
        );
        assert_eq!(
            h,
            "POST /p?q=1 HTTP/1.1\r\naccept: */*\r\ncontent-length: 3\r\nhost: svc:8083\r\n\
             x-forwarded-for: 1.2.3.4, 5.6.7.8, 10.0.0.9\r\nx-forwarded-host: R:8080\r\n\
             x-forwarded-proto: http\r\n\r\n"
        );
        let h = backend_head(&[("proxyview-host", "r")], true, true);
        assert!(h.contains("\r\nhost: r\r\n"), "{h}");
        assert!(
            h.contains("\r\ncontent-length: 0\r\n"),
            "empty POST gets a length: {h}"
        );
        let h = backend_head(
            &[("proxyview-host", "r"), ("x-forwarded-proto", "https")],
            false,
            false,
        );
        assert!(h.contains("transfer-encoding: chunked\r\n"), "{h}");
        assert!(h.contains("x-forwarded-proto: https\r\n"), "{h}");
        assert!(!h.contains("x-forwarded-proto: http\r\n"), "{h}");
    }

    #[tokio::test]
    async fn workers_serve_a_burst_then_keep_a_bounded_few_and_end_with_the_session() {
        // A keep-alive backend that answers every request after 50 ms, so the burst overlaps.
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let (addr, _) = backend::tests::slow_backend(ok, false, Duration::from_millis(50)).await;
        let port = addr.rsplit_once(':').unwrap().1;
        let yaml = format!(
            "clientId: t\nroutes: [{{name: r1, value: 127.0.0.1, port: {port}, type: ip}}]\nproxyview: {{url: 127.0.0.1:1, token: x}}\n"
        );
        let cfg = ClientConfig::from_yaml(std::path::Path::new("t.yaml"), &yaml).unwrap();
        let agent = Arc::new(Agent::new(cfg).unwrap());
        let (server_ws, client_ws) = mux::tests::ws_pair();
        let (opener, _) = mux::Session::start(server_ws, mux::Role::Opener, mux::tests::HB);
        let workers = Workers::new(agent);
        let idle = workers.idle.clone();
        let acceptor = mux::Session::start_acceptor(
            client_ws,
            mux::tests::HB,
            Box::new(move |a| workers.dispatch(a)),
        );
        let mut headers = HeaderMap::new();
        headers.insert(protocol::ROUTE_FIELD, HeaderValue::from_static("r1"));
        let block = protocol::RequestHead {
            method: http::Method::GET,
            path: "/".parse().unwrap(),
            headers,
        }
        .encode();
        let burst = 150;
        let mut calls = Vec::new();
        for _ in 0..burst {
            let (_send, mut recv) = opener.open(block.clone(), true, false).unwrap();
            calls.push(tokio::spawn(async move {
                let (head, _) = recv.head().await.unwrap();
                let mut body = Vec::new();
                while let Some(c) = recv.chunk().await {
                    body.extend_from_slice(&c.unwrap());
                }
                (head, body)
            }));
        }
        for c in calls {
            let (head, body) = tokio::time::timeout(Duration::from_secs(10), c)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(protocol::RawResponseHead::parse(&head).unwrap().status, 200);
            assert_eq!(body, b"ok");
        }
        async fn settled(idle: &Mutex<Idle>, want: impl Fn(&Idle) -> bool) -> bool {
            for _ in 0..200 {
                if want(&lock(idle)) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            false
        }
        // The burst needed many workers at once; afterwards at most MAX_IDLE_WORKERS wait.
        let counts = || {
            let i = lock(&idle);
            (i.live, i.slots.len())
        };
        assert!(
            settled(&idle, |i| i.live <= MAX_IDLE_WORKERS
                && i.slots.len() == i.live)
            .await,
            "(live, idle) workers after the burst: {:?}",
            counts()
        );
        assert!(counts().0 > 1, "a burst of {burst} ran on one worker");
        acceptor.close("test");
        assert!(
            settled(&idle, |i| i.live == 0).await,
            "(live, idle) workers after the session ended: {:?}",
            counts()
        );
    }
}
