//! The whole tunnel protocol on one screen.
//!
//! 1. The agent opens `GET /connect` on the server's internal port with `Authorization: Bearer
//!    <token>` (or Proxyview's `auth-token: <token>`) and `client-id: <clientId>`. The server checks
//!    both **before** the upgrade: 401 on a bad token, 403 for a peer outside the allowlist.
//! 2. After `101 Switching Protocols` the agent sends one text message, [`Hello`]; the server answers
//!    with one text message, [`HelloAck`], accepting or rejecting each route with a reason.
//! 3. From then on the WebSocket carries only binary messages whose concatenated payloads are an
//!    HTTP/2 connection with the roles reversed: the *server* is the HTTP/2 client (it opens one
//!    stream per caller request), the *agent* is the HTTP/2 server. See [`crate::mux`] for why.
//! 4. Each stream is an ordinary HTTP/2 request for `http://<route><path>` carrying the caller's
//!    headers (hop-by-hop ones and the external token removed) plus the `proxyview-*` headers below,
//!    which the agent consumes. Upgrades (WebSocket) travel as RFC 8441 extended CONNECT streams.
//! 5. Liveness is HTTP/2 PING in both directions; a peer that does not answer within the timeout is
//!    dead, its in-flight streams fail with 502 and its routes are dropped if it still owns them.

use std::time::Duration;

use http::HeaderName;

use serde::{Deserialize, Serialize};

/// Version of this protocol carried in [`Hello`]; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// Path of the agent endpoint on the internal port.
pub const CONNECT_PATH: &str = "/connect";
/// Path of the liveness endpoint on the internal port (200 `ok`).
pub const HEALTH_PATH: &str = "/health";

/// Legacy agent header carrying the token (Proxyview's only form).
pub const AUTH_TOKEN_HEADER: HeaderName = HeaderName::from_static("auth-token");
/// Agent header carrying its `clientId`.
pub const CLIENT_ID_HEADER: HeaderName = HeaderName::from_static("client-id");

/// First message of a session, agent → server (JSON text message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the agent.
    pub version: u32,
    /// Agent identity; must equal the `client-id` header when that was sent.
    pub client_id: String,
    /// Random per-process id: a reconnect with the same instance replaces the old session, a
    /// different instance of the same `clientId` joins it (round-robin).
    pub instance: String,
    /// Route names the agent serves, normalised (lowercase, no trailing dot).
    pub routes: Vec<String>,
}

/// Server's answer to [`Hello`] (JSON text message); the tunnel starts right after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HelloAck {
    /// [`PROTOCOL_VERSION`] of the server.
    pub version: u32,
    /// Server-side id of this session (appears in logs on both sides).
    pub session: u64,
    /// Routes now served by this session.
    pub accepted: Vec<String>,
    /// Routes refused, each with the reason.
    pub rejected: Vec<Rejected>,
    /// PING interval the agent should use too, so both ends detect a dead peer alike.
    pub heartbeat_interval_ms: u64,
    /// PING answer timeout the agent should use too.
    pub heartbeat_timeout_ms: u64,
}

/// One refused route in [`HelloAck`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// The route name as sent.
    pub route: String,
    /// Why, in words an operator can act on.
    pub reason: String,
}

/// Header the server adds on every tunnelled request: the matched route name.
pub const ROUTE_HEADER: HeaderName = HeaderName::from_static("proxyview-route");
/// Header the server adds: the caller's address as the server believes it (after trusted proxies).
pub const PEER_HEADER: HeaderName = HeaderName::from_static("proxyview-peer");
/// Header the server adds: the caller's original `Host` (or absolute-form authority).
pub const HOST_HEADER: HeaderName = HeaderName::from_static("proxyview-host");
/// Header the server adds on an extended CONNECT: the caller's original method (usually GET).
pub const METHOD_HEADER: HeaderName = HeaderName::from_static("proxyview-method");
/// Header the agent adds on responses it generated itself (not the backend's), with the cause.
pub const ERROR_HEADER: HeaderName = HeaderName::from_static("proxyview-error");

/// Values of [`ERROR_HEADER`].
pub mod agent_error {
    /// The agent has no such route (configuration drift).
    pub const NO_ROUTE: &str = "no-route";
    /// The backend refused or reset the connection, or DNS failed.
    pub const BACKEND_UNREACHABLE: &str = "backend-unreachable";
    /// The backend did not answer within the agent's response timeout.
    pub const BACKEND_TIMEOUT: &str = "backend-timeout";
}

/// Largest route name accepted (a DNS name).
pub const MAX_ROUTE_NAME_LEN: usize = 253;
/// Largest `clientId` accepted.
pub const MAX_CLIENT_ID_LEN: usize = 256;
/// Most routes one agent may register.
pub const MAX_ROUTES: usize = 1024;
/// Largest [`Hello`] / [`HelloAck`] text message.
pub const MAX_CONTROL_MESSAGE: usize = 256 * 1024;
/// Largest WebSocket message accepted on the tunnel; HTTP/2 never writes more than a frame plus
/// its buffered headers in one go, so this is a sanity bound, not a throughput knob.
pub const MAX_WS_MESSAGE: usize = 4 * 1024 * 1024;

/// Initial HTTP/2 per-stream receive window: bounds what one slow caller can park in memory.
pub const STREAM_WINDOW: u32 = 1024 * 1024;
/// Initial HTTP/2 per-connection receive window: bounds one session's buffered data in total.
pub const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;
/// HTTP/2 max frame size on the tunnel (fewer, larger WebSocket messages for bulk data).
pub const MAX_FRAME_SIZE: u32 = 64 * 1024;
/// Most concurrent streams an agent accepts on one session.
pub const MAX_CONCURRENT_STREAMS: u32 = 4096;
/// HTTP/2 header list limit on the tunnel.
pub const MAX_HEADER_LIST: u32 = 256 * 1024;

/// Time for TCP connect + WebSocket handshake + Hello/HelloAck.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default interval between HTTP/2 PINGs on an idle session (both directions).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);
/// Default time to wait for a PING answer before declaring the peer dead.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(20);
/// Default wait for a response head, on the server (through the tunnel) and on the agent (backend).
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time a caller has to send a complete request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default agent → backend TCP connect timeout.
pub const BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle time after which a pooled backend connection is closed.
pub const BACKEND_POOL_IDLE: Duration = Duration::from_secs(60);
/// First reconnect delay of the agent; doubled per failure up to [`RECONNECT_MAX`].
pub const RECONNECT_BASE: Duration = Duration::from_millis(100);
/// Ceiling of the agent's reconnect delay.
pub const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// A session that lived this long resets the agent's back-off.
pub const RECONNECT_STABLE: Duration = Duration::from_secs(30);
/// How long the server lets requests in flight finish after SIGTERM/SIGINT.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a rejected peer's unread bytes are drained after the 403, so the close is a FIN
/// the caller can read the answer before, not an RST that destroys it.
pub const REJECT_DRAIN: Duration = Duration::from_millis(500);
