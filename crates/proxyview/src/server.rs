//! The server: an internal port where agents open their tunnel, an external port where callers
//! send HTTP/1.1 requests that are routed by Host into the tunnel of the agent serving that route.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::access_log::AccessSink;
use crate::auth::{basic_password, map_pairs, presented_token};
use crate::config::{normalize_route_name, peer_allowed, Secret, ServerConfig};
use crate::http_util::{full, text, PvBody};
use crate::mux::{self, Heartbeat};
use crate::protocol::{self, Hello, HelloAck, Rejected};
use crate::router::{Router, Session};

mod acme;
mod caller;
mod state;
pub mod tls;
use crate::wsio;
use caller::CallerIo;
pub use caller::{CLIENT_CLOSED, LEGACY_404_BODY};
pub use state::Server;

/// Addresses the server actually bound (ports may have been 0 in the config).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// Agent-facing listener.
    pub internal: SocketAddr,
    /// Caller-facing listener.
    pub external: SocketAddr,
    /// Plain-HTTP port that redirects to the external TLS port (`external.tls.redirectPort`).
    pub redirect: Option<SocketAddr>,
}

impl Server {
    /// Builds the server; `sink` receives access records when the config enables them.
    pub fn new(cfg: ServerConfig, sink: Option<Arc<dyn AccessSink>>) -> anyhow::Result<Arc<Self>> {
        let router = Arc::new(Router::new(cfg.agents.clone()));
        let sink = if cfg.access_log { sink } else { None };
        // Cluster hook: the registry client is built here, contacted only once started.
        let cluster = match &cfg.cluster {
            Some(c) => Some(crate::cluster::Cluster::new(c.clone(), cfg.agents.clone())?),
            None => None,
        };
        Ok(Arc::new(Self {
            cfg,
            router,
            sink,
            next_session: AtomicU64::new(1),
            stopping: tokio::sync::watch::Sender::new(false),
            connections: tokio_util::task::TaskTracker::new(),
            cluster,
        }))
    }

    /// This node's cluster membership (`cluster:`), if any.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.as_ref()
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

    /// Loads the TLS certificates, binds the listeners and spawns their accept loops.
    pub async fn start(self: &Arc<Self>) -> anyhow::Result<Bound> {
        use anyhow::Context as _;
        let load = |t: &Option<crate::config::TlsSettings>| {
            t.as_ref().map(tls::ServerTls::load).transpose()
        };
        let internal_tls = load(&self.cfg.internal_tls)?;
        let external_tls = load(&self.cfg.external_tls)?;
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
        let redirect_port = self.cfg.external_tls.as_ref().and_then(|t| t.redirect_port);
        let redirect = match redirect_port {
            Some(p) => {
                let addr = SocketAddr::new(self.cfg.host, p);
                Some(TcpListener::bind(addr).await.with_context(|| {
                    format!("cannot listen on external.tls.redirectPort {addr}")
                })?)
            }
            None => None,
        };
        let bound = Bound {
            internal: internal.local_addr()?,
            external: external.local_addr()?,
            redirect: redirect.as_ref().map(TcpListener::local_addr).transpose()?,
        };
        for t in internal_tls.iter().chain(external_tls.iter()) {
            t.spawn_reloader(self.stopping.subscribe());
        }
        if let (Some(t), Some(a)) = (
            &external_tls,
            self.cfg.external_tls.as_ref().and_then(|t| t.acme.clone()),
        ) {
            let s = self.clone();
            acme::spawn(
                a,
                t.store().clone(),
                move || s.router.routes().into_iter().map(|(r, _)| r).collect(),
                self.stopping.subscribe(),
            );
        }
        if let Some(c) = &self.cluster {
            c.spawn(Arc::downgrade(&self.router));
        }
        let s = self.clone();
        tokio::spawn(async move { s.accept_loop(internal, Port::Internal, internal_tls).await });
        let s = self.clone();
        tokio::spawn(async move { s.accept_loop(external, Port::External, external_tls).await });
        if let Some(l) = redirect {
            let s = self.clone();
            let https_port = bound.external.port();
            tokio::spawn(async move { s.accept_loop(l, Port::Redirect(https_port), None).await });
        }
        Ok(bound)
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        port: Port,
        tls: Option<tls::ServerTls>,
    ) {
        let allow = match port {
            Port::Internal => self.cfg.internal_allow.clone(),
            Port::External | Port::Redirect(_) => self.cfg.external_allow.clone(),
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
            let acceptor = tls.as_ref().map(|t| t.acceptor().clone());
            self.connections.spawn(async move {
                match acceptor {
                    None => s.serve_connection(tcp, peer, port).await,
                    Some(acc) => {
                        // Bounded like a request head: a silent or half-open client costs
                        // this task until then, nothing more.
                        match tokio::time::timeout(s.cfg.header_read_timeout, acc.accept(tcp)).await
                        {
                            Ok(Ok(io)) => s.serve_connection(io, peer, port).await,
                            Ok(Err(e)) => debug!(%peer, ?port, error = %e, "TLS handshake failed"),
                            Err(_) => debug!(%peer, ?port, "TLS handshake timed out"),
                        }
                    }
                }
            });
        }
    }

    async fn serve_connection<S: CallerIo>(self: Arc<Self>, tcp: S, peer: SocketAddr, port: Port) {
        match port {
            Port::External => return self.serve_caller(tcp, peer).await,
            Port::Redirect(https) => {
                return tls::redirect(tcp, https, self.cfg.header_read_timeout).await
            }
            Port::Internal => {}
        }
        // The agents' port stays on hyper: it sees one upgrade per agent session.
        let s = self.clone();
        let svc = service_fn(move |req| {
            let s = s.clone();
            async move { Ok::<_, Infallible>(s.handle_internal(peer, req)) }
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
            p @ (protocol::STATUS_PATH | "/") => return self.admin(p, &req),
            crate::cluster::peer::PATH if self.cluster.is_some() => {
                if let Some(c) = &self.cluster {
                    return crate::cluster::peer::accept(&self.router, c.settings(), peer, req);
                }
            }
            _ => return text(StatusCode::NOT_FOUND, "Unknown resource!"),
        }
        let presented = presented_token(
            || map_pairs(req.headers()),
            protocol::AUTH_TOKEN_HEADER.as_str(),
            true,
        );
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
        if !presented.is_some_and(|t| expected.matches(t)) {
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
        let key = match wsio::websocket_key(&req) {
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
        wsio::switching_protocols(&key)
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
            targets: hello.targets.clone(),
            peer,
            since: SystemTime::now(),
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
        if let Some(c) = &self.cluster {
            c.claim(&self.router, &hello.client_id, &mut reg).await;
        }
        rejected.append(&mut reg.rejected);
        let ack = HelloAck {
            version: protocol::PROTOCOL_VERSION,
            session: id,
            accepted: reg.accepted.clone(),
            rejected: rejected.clone(),
            heartbeat_interval_ms: millis(self.cfg.heartbeat_interval),
            heartbeat_timeout_ms: millis(self.cfg.heartbeat_timeout),
            warnings: reg.warnings.clone(),
        };
        for w in &reg.warnings {
            warn!(session = id, client = %hello.client_id, %peer, warning = %w, "agent registration");
        }
        let sent = match serde_json::to_string(&ack) {
            Ok(t) => wsio::send_control(&mut ws, t).await,
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = sent {
            warn!(session = id, error = %e, "cannot acknowledge agent");
            self.drop_session(id);
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
        self.drop_session(id);
    }

    /// The operator page (`/`) and its data (`/api/status`), behind `admin.token` (else the
    /// internal token): as a bearer, `auth-token`, or the password of HTTP Basic auth (any user
    /// name), which is what a browser sends after its login prompt, for the page and its fetches.
    fn admin(&self, path: &str, req: &Request<Incoming>) -> Response<PvBody> {
        let token = self
            .cfg
            .admin_token
            .as_ref()
            .unwrap_or(&self.cfg.internal_token);
        let basic = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| basic_password(v.as_bytes()));
        let presented = basic.as_deref().or_else(|| {
            presented_token(
                || map_pairs(req.headers()),
                protocol::AUTH_TOKEN_HEADER.as_str(),
                true,
            )
        });
        if !presented.is_some_and(|t| token.matches(t)) {
            let mut r = text(
                StatusCode::UNAUTHORIZED,
                "proxyview: admin token required\n",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"proxyview admin\", charset=\"UTF-8\""),
            );
            return r;
        }
        let (body, kind) = if path == "/" {
            (ADMIN_PAGE.to_string(), "text/html; charset=utf-8")
        } else {
            // Cluster hook: node, peers and registry health beside the table (absent without
            // `cluster:`, so the single-node JSON is unchanged).
            let status = StatusJson {
                table: self.router.status(),
                cluster: self.cluster.as_ref().map(|c| c.status()),
            };
            match serde_json::to_string(&status) {
                Ok(j) => (j, "application/json"),
                Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
            }
        };
        let mut r = Response::new(full(body));
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }

    /// Removes a session's routes; a route it leaves unserved goes to an agent that was refused
    /// it (logged here, the one place sessions end).
    fn drop_session(&self, id: u64) {
        for (route, client) in self.router.remove_session(id) {
            info!(%route, %client, "route handed to a waiting agent");
        }
        if let Some(c) = &self.cluster {
            c.changed();
        }
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    Internal,
    External,
    /// The plain port that redirects to the external TLS port (its number here).
    Redirect(u16),
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `/api/status`: the route table, and the cluster's part when there is one.
#[derive(serde::Serialize)]
struct StatusJson {
    #[serde(flatten)]
    table: crate::router::Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<crate::cluster::ClusterStatus>,
}

/// The operator page: one self-contained file (inline CSS and JS, no external assets).
const ADMIN_PAGE: &str = include_str!("server/admin.html");

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
    fn status_json_without_cluster_is_the_tables_own() {
        let router = Router::new(Vec::new());
        let plain = serde_json::to_string(&router.status()).unwrap();
        let wrapped = serde_json::to_string(&StatusJson {
            table: router.status(),
            cluster: None,
        })
        .unwrap();
        assert_eq!(plain, wrapped);
    }
}
