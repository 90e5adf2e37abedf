//! Proxy configuration: upstream address, limits and timeouts, with the Go cwproxy values as defaults.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::uri::Authority;
use telemetry::diag::Diag;

use crate::retry::RetryPolicy;

/// Time a client has to send a complete request head (Go `ReadHeaderTimeout`).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time an idle keep-alive client connection is kept open (Go `IdleTimeout`).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest request head accepted; bigger heads get `431` (Go `MaxHeaderBytes`).
pub const MAX_HEADER_BYTES: usize = 1 << 20;
/// Most header fields accepted in one request head: no count limit, only [`MAX_HEADER_BYTES`]
/// (as the Go original).
pub const MAX_HEADERS: usize = usize::MAX;
/// Concurrent client connections; further accepts wait until one closes.
pub const MAX_CONNECTIONS: usize = 10_000;
/// Upstream TCP connect timeout (Go dialer `Timeout`).
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Upstream TCP keep-alive probe interval (Go dialer `KeepAlive`).
pub const UPSTREAM_TCP_KEEPALIVE: Duration = Duration::from_secs(30);
/// Time the upstream has to send response headers (Go `ResponseHeaderTimeout`).
pub const UPSTREAM_RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle pooled upstream connections are closed after this (Go `IdleConnTimeout`).
pub const UPSTREAM_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle pooled upstream connections kept (Go `MaxIdleConns` and `MaxIdleConnsPerHost`).
pub const UPSTREAM_POOL_MAX_IDLE: usize = 256;
/// Time in-flight requests get to finish after shutdown starts.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bytes kept per captured body (`CAPTURE_BODY_LIMIT`).
pub const CAPTURE_LIMIT: usize = 64 * 1024;
/// Default name in diagnostic lines (`<time> cwproxy: <message>`, Go's `log` format).
pub const LOG_PREFIX: &str = "cwproxy";

/// Where requests are forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// A concrete socket address (inspector mode, tests), e.g. `[::1]:8080`.
    Addr(SocketAddr),
    /// A host name or IP literal (brackets optional for IPv6) and a port, e.g. `APP_HOST`/`APP_PORT`.
    Host {
        /// Host name or IP literal.
        host: String,
        /// TCP port.
        port: u16,
    },
}

impl Upstream {
    /// The `host:port` authority used on the wire (IPv6 literals bracketed).
    pub fn authority(&self) -> Result<Authority, ConfigError> {
        let text = match self {
            Upstream::Addr(addr) => addr.to_string(),
            Upstream::Host { host, port } => {
                let bare = host.trim_start_matches('[').trim_end_matches(']');
                if bare.is_empty() {
                    return Err(ConfigError::UpstreamHost(host.clone()));
                }
                match bare.parse::<IpAddr>() {
                    Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
                    _ => format!("{bare}:{port}"),
                }
            }
        };
        text.parse::<Authority>()
            .map_err(|_| ConfigError::UpstreamHost(text.clone()))
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.authority() {
            Ok(a) => write!(f, "http://{a}"),
            Err(_) => write!(f, "http://<invalid>"),
        }
    }
}

/// Errors in a [`ProxyConfig`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The upstream host cannot form a valid `host:port` authority.
    #[error("upstream host {0:?} is not a valid host")]
    UpstreamHost(String),
    /// The upstream port is 0.
    #[error("upstream port must be between 1 and 65535")]
    UpstreamPort,
    /// A limit that must be positive is zero.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
}

/// Everything the proxy needs; [`ProxyConfig::new`] fills in the Go cwproxy defaults.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Upstream every request goes to.
    pub upstream: Upstream,
    /// Bytes kept per captured request and response body (0 means [`CAPTURE_LIMIT`]).
    pub capture_limit: usize,
    /// Upstream retry policy (normalized when the proxy is built).
    pub retry: RetryPolicy,
    /// See [`HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// See [`IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// See [`MAX_HEADER_BYTES`].
    pub max_header_bytes: usize,
    /// See [`MAX_HEADERS`].
    pub max_headers: usize,
    /// See [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// See [`UPSTREAM_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// See [`UPSTREAM_TCP_KEEPALIVE`].
    pub tcp_keepalive: Duration,
    /// See [`UPSTREAM_RESPONSE_HEADER_TIMEOUT`].
    pub response_header_timeout: Duration,
    /// See [`UPSTREAM_POOL_IDLE_TIMEOUT`].
    pub pool_idle_timeout: Duration,
    /// See [`UPSTREAM_POOL_MAX_IDLE`].
    pub pool_max_idle: usize,
    /// See [`DRAIN_TIMEOUT`].
    pub drain_timeout: Duration,
    /// Where diagnostics such as `reverse proxy upstream error: ...` go.
    pub logger: Diag,
}

impl ProxyConfig {
    /// Defaults of the Go cwproxy for `upstream`, with the seed's retry policy (2 attempts).
    pub fn new(upstream: Upstream) -> Self {
        ProxyConfig {
            upstream,
            capture_limit: CAPTURE_LIMIT,
            retry: RetryPolicy::default(),
            header_read_timeout: HEADER_READ_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            max_header_bytes: MAX_HEADER_BYTES,
            max_headers: MAX_HEADERS,
            max_connections: MAX_CONNECTIONS,
            connect_timeout: UPSTREAM_CONNECT_TIMEOUT,
            tcp_keepalive: UPSTREAM_TCP_KEEPALIVE,
            response_header_timeout: UPSTREAM_RESPONSE_HEADER_TIMEOUT,
            pool_idle_timeout: UPSTREAM_POOL_IDLE_TIMEOUT,
            pool_max_idle: UPSTREAM_POOL_MAX_IDLE,
            drain_timeout: DRAIN_TIMEOUT,
            logger: Diag::new(LOG_PREFIX),
        }
    }

    pub(crate) fn validate(&self) -> Result<Authority, ConfigError> {
        let port = match &self.upstream {
            Upstream::Addr(a) => a.port(),
            Upstream::Host { port, .. } => *port,
        };
        if port == 0 {
            return Err(ConfigError::UpstreamPort);
        }
        if self.max_connections == 0 {
            return Err(ConfigError::Zero("max_connections"));
        }
        if self.max_headers == 0 {
            return Err(ConfigError::Zero("max_headers"));
        }
        self.upstream.authority()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn authority_brackets_ipv6() {
        let a = Upstream::Host {
            host: "[::1]".into(),
            port: 8080,
        };
        assert_eq!(a.authority().unwrap().as_str(), "[::1]:8080");
        let b = Upstream::Host {
            host: "::1".into(),
            port: 8080,
        };
        assert_eq!(b.authority().unwrap().as_str(), "[::1]:8080");
        let c = Upstream::Addr("[::1]:9".parse().unwrap());
        assert_eq!(c.authority().unwrap().as_str(), "[::1]:9");
        let d = Upstream::Host {
            host: "app.internal".into(),
            port: 80,
        };
        assert_eq!(d.authority().unwrap().as_str(), "app.internal:80");
    }

    #[test]
    fn rejects_bad_upstreams() {
        let bad = Upstream::Host {
            host: "a b".into(),
            port: 1,
        };
        assert!(matches!(bad.authority(), Err(ConfigError::UpstreamHost(_))));
        let zero = ProxyConfig::new(Upstream::Host {
            host: "x".into(),
            port: 0,
        });
        assert_eq!(zero.validate(), Err(ConfigError::UpstreamPort));
    }
}
