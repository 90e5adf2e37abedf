//! The agent (`proxyview client`): keeps one tunnel to the server, re-registering after every
//! reconnect, and forwards each tunnelled request to its route's `value:port` over a pooled
//! HTTP/1.1 client. Upgrades (WebSocket) become raw byte pipes to the backend.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper_util::rt::TokioIo;
use rand::Rng as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::config::{ClientConfig, Route};
use crate::http_util::{self, boxed, empty, full, PvBody};
use crate::mux::{self, Heartbeat};
use crate::pool::Pool;
use crate::protocol::{self, agent_error, Hello, HelloAck, RequestHead, ResponseHead};
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
    #[cfg(feature = "tls")]
    tls: Option<tokio_rustls::TlsConnector>,
}

/// A route plus what every request to it needs, computed once instead of per request.
struct Backend {
    route: Route,
    /// `Host` sent to the backend unless the route preserves the caller's.
    host: HeaderValue,
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
        let host = HeaderValue::from_str(host).map_err(|_| {
            anyhow::anyhow!("route {:?}: {host:?} cannot be a Host header", route.name)
        })?;
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
        let delay = backoff(failures);
        failures = failures.saturating_add(1);
        info!(delay_ms = delay.as_millis() as u64, "reconnecting");
        tokio::time::sleep(delay).await;
    }
}

/// Delay before reconnect attempt `n`: base·2ⁿ capped, then a random point in its upper half, so
/// agents cut off together do not come back in lock-step.
pub fn backoff(n: u32) -> Duration {
    let cap = protocol::RECONNECT_MAX.as_millis() as u64;
    let exp = (protocol::RECONNECT_BASE.as_millis() as u64)
        .saturating_mul(1u64 << n.min(20))
        .min(cap);
    let jittered = rand::rng().random_range(exp / 2..=exp);
    Duration::from_millis(jittered)
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
        let tls = if cfg.server.tls {
            Some(crate::tls::connector(cfg.ca_file.as_deref())?)
        } else {
            None
        };
        Ok(Self {
            cfg,
            routes,
            instance,
            #[cfg(feature = "tls")]
            tls,
        })
    }

    async fn dial(&self) -> Result<Box<dyn Io>, SessionError> {
        let url = &self.cfg.server;
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
        let uri = self.cfg.server.uri();
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
        let (tunnel, accepted) = mux::Session::start(ws, mux::Role::Acceptor, hb);
        if let Some(mut accepted) = accepted {
            while let Some(a) = accepted.recv().await {
                tokio::spawn(self.clone().serve_stream(a));
            }
        }
        let reason = tunnel.closed().await;
        Err(SessionError::Retry(format!("tunnel failed: {reason}")))
    }

    /// One tunnelled request: forward it, send the answer back, then its body or the pipe.
    async fn serve_stream(self: Arc<Self>, a: mux::Accepted) {
        let mux::Accepted {
            head,
            end: _,
            upgrade,
            mut send,
            recv,
        } = a;
        let head = match RequestHead::decode(head) {
            Ok(h) => h,
            Err(e) => {
                let r = agent_fail(
                    StatusCode::BAD_GATEWAY,
                    agent_error::NO_ROUTE,
                    &format!("bad request head from the server: {e}"),
                );
                let _ = respond(r, &mut send).await;
                return;
            }
        };
        let cancelled = send.cancelled_owned();
        let forwarded = tokio::select! {
            r = self.forward(head, upgrade, recv) => r,
            // The caller went away (reset) or the session ended: stop waiting on the backend.
            () = cancelled => return,
        };
        match forwarded {
            Forwarded::Response(r) => {
                let _ = respond(r, &mut send).await;
            }
            Forwarded::Upgraded {
                response,
                backend,
                recv,
            } => {
                let (parts, _) = response.into_parts();
                let head = ResponseHead {
                    status: parts.status,
                    headers: parts.headers,
                };
                if send.send_head(head.encode(), false).is_ok() {
                    match backend.await {
                        Ok(up) => mux::pipe(TokioIo::new(up), send, recv).await,
                        Err(e) => debug!(error = %e, "backend upgrade failed"),
                    }
                }
            }
        }
    }

    async fn forward(&self, head: RequestHead, upgrade: bool, recv: mux::RecvHalf) -> Forwarded {
        let RequestHead {
            method,
            path,
            mut headers,
        } = head;
        let route_name = headers
            .get(protocol::ROUTE_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let Some(backend) = self.routes.get(route_name) else {
            return Forwarded::Response(agent_fail(
                StatusCode::BAD_GATEWAY,
                agent_error::NO_ROUTE,
                &format!("agent has no route {route_name:?}"),
            ));
        };
        let proto = upgrade
            .then(|| {
                headers
                    .get(protocol::UPGRADE_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            })
            .flatten();
        prepare_headers(&mut headers, backend);
        let route = &backend.route;
        match proto {
            Some(proto) => {
                self.forward_upgrade(backend, method, path, headers, &proto, recv)
                    .await
            }
            None => {
                let body = if recv.is_end_stream() {
                    empty()
                } else {
                    boxed(recv)
                };
                let mut out = Request::new(body);
                *out.method_mut() = method;
                *out.uri_mut() = Uri::from(path);
                *out.version_mut() = Version::HTTP_11;
                *out.headers_mut() = headers;
                Forwarded::Response(
                    match tokio::time::timeout(self.cfg.response_timeout, backend.pool.send(out))
                        .await
                    {
                        Err(_) => agent_fail(
                            StatusCode::GATEWAY_TIMEOUT,
                            agent_error::BACKEND_TIMEOUT,
                            &format!(
                                "backend {} sent no response within {:?}",
                                route.authority(),
                                self.cfg.response_timeout
                            ),
                        ),
                        Ok(Err(e)) => {
                            debug!(route = %route.name, error = ?e, "backend request failed");
                            agent_fail(
                                StatusCode::BAD_GATEWAY,
                                agent_error::BACKEND_UNREACHABLE,
                                &error_chain(&e),
                            )
                        }
                        Ok(Ok(resp)) => {
                            let (mut parts, body) = resp.into_parts();
                            http_util::strip_hop_by_hop(&mut parts.headers);
                            Response::from_parts(parts, boxed(body))
                        }
                    },
                )
            }
        }
    }

    async fn forward_upgrade(
        &self,
        backend: &Backend,
        method: Method,
        path: PathAndQuery,
        mut headers: HeaderMap,
        proto: &str,
        recv: mux::RecvHalf,
    ) -> Forwarded {
        let unreachable = |msg: String| {
            Forwarded::Response(agent_fail(
                StatusCode::BAD_GATEWAY,
                agent_error::BACKEND_UNREACHABLE,
                &msg,
            ))
        };
        let mut sender = match backend.pool.connect_for_upgrade().await {
            Ok(s) => s,
            Err(e) => return unreachable(e.to_string()),
        };
        http_util::set_upgrade(&mut headers, proto);
        let mut req = Request::new(empty());
        *req.method_mut() = method;
        *req.uri_mut() = Uri::from(path);
        *req.headers_mut() = headers;
        let mut resp =
            match tokio::time::timeout(self.cfg.response_timeout, sender.send_request(req)).await {
                Err(_) => {
                    return Forwarded::Response(agent_fail(
                        StatusCode::GATEWAY_TIMEOUT,
                        agent_error::BACKEND_TIMEOUT,
                        "backend did not answer the upgrade",
                    ))
                }
                Ok(Err(e)) => return unreachable(format!("backend {}: {e}", backend.pool.addr())),
                Ok(Ok(r)) => r,
            };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let (mut parts, body) = resp.into_parts();
            http_util::strip_hop_by_hop(&mut parts.headers);
            return Forwarded::Response(Response::from_parts(parts, boxed(body)));
        }
        let backend = hyper::upgrade::on(&mut resp);
        let (mut parts, _) = resp.into_parts();
        http_util::strip_hop_by_hop(&mut parts.headers);
        Forwarded::Upgraded {
            response: Response::from_parts(parts, empty()),
            backend,
            recv,
        }
    }
}

/// What forwarding one request produced.
enum Forwarded {
    /// An ordinary response (or an error the agent generated).
    Response(Response<PvBody>),
    /// The backend switched protocols: the `101` to send, then a byte pipe.
    Upgraded {
        response: Response<PvBody>,
        backend: hyper::upgrade::OnUpgrade,
        recv: mux::RecvHalf,
    },
}

/// Sends a response (head, then body) on the stream.
async fn respond(r: Response<PvBody>, send: &mut mux::SendHalf) -> Result<(), mux::StreamError> {
    let (parts, body) = r.into_parts();
    let end = body.is_end_stream();
    let head = ResponseHead {
        status: parts.status,
        headers: parts.headers,
    };
    send.send_head(head.encode(), end)?;
    if end {
        return Ok(());
    }
    mux::send_body(body, send).await
}

/// Turns the tunnelled request's headers into the backend's: metadata consumed, Host rewritten
/// (unless the route preserves it), `X-Forwarded-*` added.
fn prepare_headers(h: &mut HeaderMap, backend: &Backend) {
    let peer = h.remove(protocol::PEER_HEADER);
    let original_host = h.remove(protocol::HOST_HEADER);
    h.remove(protocol::ROUTE_HEADER);
    http_util::strip_internal(h);
    http_util::strip_hop_by_hop(h);
    let host = match (&original_host, backend.route.preserve_host) {
        (Some(o), true) => o.clone(),
        _ => backend.host.clone(),
    };
    h.insert(header::HOST, host);
    if let Some(peer) = peer {
        let xff = match h.get(http_util::X_FORWARDED_FOR) {
            Some(prev) if !prev.as_bytes().trim_ascii().is_empty() => {
                let mut v = Vec::with_capacity(prev.len() + 2 + peer.len());
                v.extend_from_slice(prev.as_bytes());
                v.extend_from_slice(b", ");
                v.extend_from_slice(peer.as_bytes());
                HeaderValue::from_bytes(&v).ok()
            }
            _ => Some(peer),
        };
        if let Some(v) = xff {
            h.insert(http_util::X_FORWARDED_FOR, v);
        }
    }
    if !h.contains_key(http_util::X_FORWARDED_HOST) {
        if let Some(v) = original_host {
            h.insert(http_util::X_FORWARDED_HOST, v);
        }
    }
    if !h.contains_key(http_util::X_FORWARDED_PROTO) {
        h.insert(
            http_util::X_FORWARDED_PROTO,
            HeaderValue::from_static("http"),
        );
    }
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

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
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

    #[test]
    fn headers_for_backend() {
        let route = Route {
            name: "r".into(),
            value: "svc".into(),
            port: 8083,
            kind: RouteKind::Cname,
            preserve_host: false,
        };
        let mut h = HeaderMap::new();
        h.insert(protocol::PEER_HEADER, HeaderValue::from_static("10.0.0.9"));
        h.insert(protocol::HOST_HEADER, HeaderValue::from_static("R:8080"));
        h.insert(protocol::ROUTE_HEADER, HeaderValue::from_static("r"));
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        prepare_headers(
            &mut h,
            &Backend::new(&route, Duration::from_secs(1)).unwrap(),
        );
        assert_eq!(h["host"], "svc:8083");
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        assert_eq!(h["x-forwarded-host"], "R:8080");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key(protocol::ROUTE_HEADER));
        let mut h = HeaderMap::new();
        h.insert(protocol::HOST_HEADER, HeaderValue::from_static("r"));
        let keep = Route {
            preserve_host: true,
            ..route
        };
        prepare_headers(
            &mut h,
            &Backend::new(&keep, Duration::from_secs(1)).unwrap(),
        );
        assert_eq!(h["host"], "r");
    }
}
