//! proxyview: a reverse HTTP tunnel. Agents next to private services dial out to the server over a
//! WebSocket; the server routes each caller request by its normalised Host to the agent that
//! registered that route, through multiplexed, flow-controlled streams carried inside the
//! WebSocket. Reads Proxyview's YAML configs unchanged.

pub mod access_log;
pub mod agent;
pub mod auth;
pub mod backend;
pub mod cluster;
pub mod config;
pub mod host;
pub mod http_util;
pub mod mux;
pub mod protocol;
pub mod router;
pub mod server;
pub mod stats;
#[cfg(feature = "tls")]
pub mod tls;
pub mod wsio;
