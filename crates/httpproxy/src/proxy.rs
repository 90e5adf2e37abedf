//! The proxy: its upstream pool, policy and sink, shared by every connection.

use std::net::SocketAddr;
use std::sync::Arc;

use http1::client::{Pool, PoolConfig};
use http1::rules::ForwardedPolicy;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ConfigError, ProxyConfig};
use crate::exchange::ExchangeSink;
use crate::retry::RetryPolicy;

/// The client side of one connection, prepared once per connection.
#[derive(Debug, Clone)]
pub struct Peer {
    addr: SocketAddr,
    /// The address as `X-Forwarded-For` names it: IPv4-mapped IPv6 shown as IPv4, no port.
    ip_text: Box<str>,
}

impl Peer {
    /// The TCP peer `addr` of a client connection.
    pub fn new(addr: SocketAddr) -> Self {
        Peer {
            addr,
            ip_text: addr.ip().to_canonical().to_string().into_boxed_str(),
        }
    }

    /// The peer address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn ip_text(&self) -> &[u8] {
        self.ip_text.as_bytes()
    }
}

/// The reverse proxy: a pooled upstream client plus everything one exchange needs.
#[derive(Clone)]
pub struct Proxy {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) pool: Pool,
    pub(crate) retry: RetryPolicy,
    pub(crate) forwarded: ForwardedPolicy,
    pub(crate) sink: Arc<dyn ExchangeSink>,
    pub(crate) config: ProxyConfig,
    pub(crate) tunnels: TaskTracker,
    pub(crate) close_tunnels: CancellationToken,
}

impl Proxy {
    /// Builds the proxy and its upstream connection pool. Needs no runtime until used.
    pub fn new(config: ProxyConfig, sink: Arc<dyn ExchangeSink>) -> Result<Self, ConfigError> {
        let authority = config.validate()?;
        let pool = Pool::new(PoolConfig {
            addr: authority.to_string(),
            connect_timeout: config.connect_timeout,
            tcp_keepalive: Some(config.tcp_keepalive),
            idle_timeout: config.pool_idle_timeout,
            max_idle: config.pool_max_idle,
        });
        let retry = config.retry.clone().normalized();
        Ok(Proxy {
            shared: Arc::new(Shared {
                pool,
                retry,
                forwarded: ForwardedPolicy::GO_REVERSE_PROXY,
                sink,
                config,
                tunnels: TaskTracker::new(),
                close_tunnels: CancellationToken::new(),
            }),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &ProxyConfig {
        &self.shared.config
    }
}
