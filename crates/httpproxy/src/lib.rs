//! Streaming HTTP/1.1 reverse-proxy core of the cwproxy sidecar, on the workspace's own HTTP/1
//! codec (`crates/http1`).
//!
//! One upstream on a keep-alive pool, bodies streamed both ways through bounded captures,
//! hop-by-hop removal and the `X-Forwarded-*` policy of Go's `httputil.ReverseProxy`,
//! WebSocket/`101` and `CONNECT` tunnels, an optional retry layer, panic isolation, header/idle
//! timeouts and a graceful drain. Every exchange is
//! handed to an [`ExchangeSink`] as a [`telemetry::Exchange`] exactly once, when it is over.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use httpproxy::{serve, ProxyConfig, Upstream};
//! let listener = tokio::net::TcpListener::bind("[::]:8081").await?;
//! let config = ProxyConfig::new(Upstream::Host { host: "127.0.0.1".into(), port: 8080 });
//! let sink = Arc::new(|exchange: telemetry::Exchange| drop(exchange));
//! serve(listener, config, sink, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

mod config;
mod conn;
mod exchange;
mod forward;
mod proxy;
mod request;
pub mod retry;
mod server;
mod wire;

pub use config::{
    ConfigError, ProxyConfig, Upstream, CAPTURE_LIMIT, DRAIN_TIMEOUT, HEADER_READ_TIMEOUT,
    IDLE_TIMEOUT, LOG_PREFIX, MAX_CONNECTIONS, MAX_HEADERS, MAX_HEADER_BYTES,
    UPSTREAM_CONNECT_TIMEOUT, UPSTREAM_POOL_IDLE_TIMEOUT, UPSTREAM_POOL_MAX_IDLE,
    UPSTREAM_RESPONSE_HEADER_TIMEOUT, UPSTREAM_TCP_KEEPALIVE,
};
pub use exchange::{ExchangeSink, STATUS_CLIENT_CLOSED};
pub use forward::{BAD_GATEWAY_BODY, BAD_REQUEST_BODY, INTERNAL_ERROR_BODY};
pub use proxy::{Peer, Proxy};
pub use retry::{parse_methods, parse_status_codes, RetryConfigError, RetryPolicy};
pub use server::{serve, ServeError};
