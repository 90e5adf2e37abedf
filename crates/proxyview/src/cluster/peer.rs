//! Peer links: how a node forwards a request for a route whose agent is on another node.
//!
//! A link is one WebSocket from this node to the other node's internal port (`/cluster/peer`),
//! authenticated with the cluster secret, carrying the tunnel's multiplexed stream protocol
//! ([`crate::mux`]). This node opens one stream per request exactly as it would on an agent's
//! tunnel; the owner node splices each stream onto a stream of its agent's tunnel, head and
//! bytes unchanged. So request and response bodies stream both ways with the tunnel's flow
//! control, upgrades (WebSocket) are the same byte pipe, and the forwarding node's caller code
//! (errors 502/504, access log, timeouts) is the one it uses for its own agents.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tracing::{debug, info};

use crate::auth;
use crate::config::ClusterSettings;
use crate::http_util::{self, PvBody};
use crate::mux::{self, Accepted, Heartbeat};
use crate::protocol::{self, RawRequestHead};
use crate::router::{Router, Session};
use crate::wsio;

/// Path of the peer endpoint on the internal port.
pub const PATH: &str = "/cluster/peer";
/// Field naming the dialling node.
pub const NODE_HEADER: &str = "proxyview-node";

/// Ids of the stand-in sessions of peer links: far above the router's, so the two never meet.
const FIRST_LINK_SESSION: u64 = 1 << 62;

fn heartbeat(cfg: &ClusterSettings) -> Heartbeat {
    Heartbeat {
        interval: cfg.heartbeat,
        timeout: cfg.heartbeat * super::LEASE_HEARTBEATS,
    }
}

#[derive(Default)]
struct LinkState {
    tunnel: Option<mux::Session>,
    addr: Option<SocketAddr>,
    /// A stand-in router session per clientId served through the link (the caller code logs
    /// and names the agent by it).
    sessions: HashMap<String, Arc<Session>>,
    last_error: Option<String>,
}

struct Link {
    advertise: String,
    state: Arc<Mutex<LinkState>>,
    _task: tokio_util::task::AbortOnDropHandle<()>,
}

/// One live peer in the operator status.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    /// Its node id.
    pub node: String,
    /// Where it is dialled.
    pub advertise: String,
    /// The link is up.
    pub connected: bool,
    /// Why the last dial failed.
    pub last_error: Option<String>,
}

/// The links to every other live node.
pub struct Links {
    cfg: ClusterSettings,
    map: Mutex<HashMap<String, Link>>,
    ids: Arc<AtomicU64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Links {
    /// No links yet.
    pub fn new(cfg: ClusterSettings) -> Self {
        Self {
            cfg,
            map: Mutex::new(HashMap::new()),
            ids: Arc::new(AtomicU64::new(FIRST_LINK_SESSION)),
        }
    }

    /// Keeps a link to each of `nodes` (id, advertise) and drops the others.
    pub fn follow(&self, nodes: Vec<(String, String)>) {
        let mut map = lock(&self.map);
        map.retain(|id, l| nodes.iter().any(|(n, a)| n == id && *a == l.advertise));
        for (node, advertise) in nodes {
            if map.contains_key(&node) {
                continue;
            }
            let state = Arc::new(Mutex::new(LinkState::default()));
            let task = tokio::spawn(keep_link(
                self.cfg.clone(),
                node.clone(),
                advertise.clone(),
                state.clone(),
            ));
            map.insert(
                node,
                Link {
                    advertise,
                    state,
                    _task: tokio_util::task::AbortOnDropHandle::new(task),
                },
            );
        }
    }

    /// The stand-in session for `client`'s agent on `node`, if the link is up.
    pub fn session(&self, node: &str, client: &str) -> Option<Arc<Session>> {
        let map = lock(&self.map);
        let link = map.get(node)?;
        let mut st = lock(&link.state);
        let tunnel = st.tunnel.clone().filter(|t| !t.is_closed())?;
        let addr = st.addr?;
        if let Some(s) = st.sessions.get(client) {
            return Some(s.clone());
        }
        let sender = OnceLock::new();
        let _ = sender.set(tunnel);
        let s = Arc::new(Session {
            id: self.ids.fetch_add(1, Ordering::Relaxed),
            client_id: client.to_string(),
            instance: node.to_string(),
            sender,
            evicted: Notify::new(),
            targets: Default::default(),
            peer: addr,
            since: SystemTime::now(),
        });
        st.sessions.insert(client.to_string(), s.clone());
        Some(s)
    }

    /// The links for the operator status.
    pub fn status(&self) -> Vec<PeerStatus> {
        let map = lock(&self.map);
        let mut v: Vec<PeerStatus> = map
            .iter()
            .map(|(n, l)| {
                let st = lock(&l.state);
                PeerStatus {
                    node: n.clone(),
                    advertise: l.advertise.clone(),
                    connected: st.tunnel.as_ref().is_some_and(|t| !t.is_closed()),
                    last_error: st.last_error.clone(),
                }
            })
            .collect();
        v.sort_by(|a, b| a.node.cmp(&b.node));
        v
    }
}

/// Dials `node` and keeps the link up (the agent's back-off, capped at one heartbeat) until the
/// node leaves the registry's node list (the task is aborted then).
async fn keep_link(
    cfg: ClusterSettings,
    node: String,
    advertise: String,
    state: Arc<Mutex<LinkState>>,
) {
    let mut failures = 0u32;
    loop {
        match dial(&cfg, &advertise).await {
            Ok((tunnel, addr)) => {
                failures = 0;
                {
                    let mut st = lock(&state);
                    st.tunnel = Some(tunnel.clone());
                    st.addr = Some(addr);
                    st.sessions.clear();
                    st.last_error = None;
                }
                info!(%node, %advertise, "cluster peer link up");
                let reason = tunnel.closed().await;
                info!(%node, %reason, "cluster peer link down");
                let mut st = lock(&state);
                st.tunnel = None;
                st.sessions.clear();
            }
            Err(e) => {
                debug!(%node, %advertise, error = %e, "cluster peer dial failed");
                lock(&state).last_error = Some(e);
            }
        }
        let delay = crate::agent::backoff(failures).min(cfg.heartbeat);
        failures = failures.saturating_add(1);
        tokio::time::sleep(delay).await;
    }
}

async fn dial(
    cfg: &ClusterSettings,
    advertise: &str,
) -> Result<(mux::Session, SocketAddr), String> {
    let tcp = tokio::time::timeout(super::registry::CALL_TIMEOUT, TcpStream::connect(advertise))
        .await
        .map_err(|_| format!("connect to {advertise} timed out"))?
        .map_err(|e| format!("cannot connect to {advertise}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let addr = tcp.peer_addr().map_err(|e| e.to_string())?;
    let uri = format!("ws://{advertise}{PATH}");
    let bearer = HeaderValue::from_str(&format!("Bearer {}", cfg.secret.expose()))
        .map_err(|_| "cluster.secret has characters not allowed in a header".to_string())?;
    let node = HeaderValue::from_str(&cfg.node_id)
        .map_err(|_| "cluster.nodeId has characters not allowed in a header".to_string())?;
    let builder = tokio_websockets::ClientBuilder::new()
        .uri(&uri)
        .map_err(|e| format!("{uri:?}: {e}"))?
        .add_header(header::AUTHORIZATION, bearer)
        .map_err(|e| e.to_string())?
        .add_header(http::HeaderName::from_static(NODE_HEADER), node)
        .map_err(|e| e.to_string())?
        .limits(
            tokio_websockets::Limits::default().max_payload_len(Some(protocol::MAX_WS_MESSAGE)),
        );
    let (ws, _) = tokio::time::timeout(protocol::HANDSHAKE_TIMEOUT, builder.connect_on(tcp))
        .await
        .map_err(|_| format!("WebSocket handshake with {uri} timed out"))?
        .map_err(|e| format!("WebSocket handshake with {uri} failed: {e}"))?;
    let (tunnel, _) = mux::Session::start(ws, mux::Role::Opener, heartbeat(cfg));
    Ok((tunnel, addr))
}

/// Answers `GET /cluster/peer` on the internal port: a node presenting the cluster secret as a
/// bearer gets a link whose streams are spliced onto this node's agents.
pub fn accept(
    router: &Arc<Router>,
    cfg: &ClusterSettings,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Response<PvBody> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| auth::bearer_token(v.as_bytes()));
    let node = req
        .headers()
        .get(NODE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if !presented.is_some_and(|t| cfg.secret.matches(t)) {
        info!(%peer, %node, "cluster peer refused: bad or missing cluster secret");
        return http_util::text(
            StatusCode::UNAUTHORIZED,
            "proxyview: cluster secret required\n",
        );
    }
    let key = match wsio::websocket_key(&req) {
        Ok(k) => k,
        Err(msg) => return http_util::text(StatusCode::BAD_REQUEST, msg),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let router = router.clone();
    let hb = heartbeat(cfg);
    tokio::spawn(async move {
        let up = match on_upgrade.await {
            Ok(up) => up,
            Err(e) => return debug!(%peer, error = %e, "cluster peer upgrade failed"),
        };
        let ws = tokio_websockets::ServerBuilder::new()
            .limits(
                tokio_websockets::Limits::default().max_payload_len(Some(protocol::MAX_WS_MESSAGE)),
            )
            .serve(TokioIo::new(up));
        let weak = Arc::downgrade(&router);
        drop(router);
        let tunnel = mux::Session::start_acceptor(
            ws,
            hb,
            Box::new(move |a| {
                if let Some(router) = weak.upgrade() {
                    tokio::spawn(relay(router, a));
                }
            }),
        );
        info!(%peer, %node, "cluster peer connected");
        let reason = tunnel.closed().await;
        info!(%peer, %node, %reason, "cluster peer disconnected");
    });
    wsio::switching_protocols(&key)
}

/// Splices one stream of a peer link onto a stream of the local agent serving its route: the
/// head as it came, then bytes both ways until each direction ends. A reset on either side
/// resets the other (dropping an unfinished half resets its stream).
async fn relay(router: Arc<Router>, a: Accepted) {
    let Accepted {
        head,
        end,
        upgrade,
        mut send,
        recv,
    } = a;
    let route = RawRequestHead::parse(&head).ok().and_then(|h| {
        h.fields()
            .find(|(n, _)| *n == protocol::ROUTE_FIELD.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    });
    let Some(route) = route else {
        return answer(send, 400, "bad request head on a cluster peer link").await;
    };
    let (candidates, _) = router.candidates(&route);
    let opened = candidates.iter().find_map(|s| {
        s.sender
            .get()
            .and_then(|t| t.open(head.clone(), end, upgrade).ok())
    });
    let Some((mut up, mut down)) = opened else {
        let msg = format!("no agent serves host {route:?} on this node any more");
        return answer(send, 404, &msg).await;
    };
    let cancelled = send.cancelled_owned();
    // Each direction to its end with the tunnel's own body copy; a half dropped unfinished
    // (error, reset) resets its stream.
    let upload = async move {
        if !end {
            let _ = mux::relay(recv, &mut up).await;
        }
    };
    let download = async move {
        let Ok((block, resp_end)) = down.head().await else {
            return;
        };
        if send.send_head(&block, resp_end).is_ok() && !resp_end {
            let _ = mux::relay(down, &mut send).await;
        }
    };
    tokio::select! {
        _ = async { tokio::join!(upload, download) } => {}
        () = cancelled => {}
    }
}

/// A local answer on a peer stream (the forwarding node passes it to its caller).
async fn answer(mut send: mux::SendHalf, status: u16, msg: &str) {
    let body = format!("proxyview: {msg}\n");
    let len = body.len().to_string();
    let error_field = protocol::ERROR_HEADER;
    let fields: [(&[u8], &[u8]); 3] = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", len.as_bytes()),
        (
            error_field.as_str().as_bytes(),
            protocol::agent_error::NO_ROUTE.as_bytes(),
        ),
    ];
    let head = protocol::encode_response_head(status, fields.into_iter());
    if send.send_head(&head, false).is_ok() {
        let _ = send.send_data(Bytes::from(body), true).await;
    }
}
