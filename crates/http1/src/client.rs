//! The client side: keep-alive connections to one upstream, and reading its response heads.
//!
//! A pool is a plain stack of idle connections: the most recently used one is taken first (its
//! buffers are warm), and one the upstream closed while idle is noticed from its socket's
//! readiness and dropped instead of being handed out.

use std::io;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::head::{parse_response, HeadError};

/// How a pool connects and how long it keeps idle connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// `host:port` of the upstream (a name is resolved at each connect).
    pub addr: String,
    /// Longest a TCP connect may take.
    pub connect_timeout: Duration,
    /// TCP keep-alive probe interval on upstream connections (`None`: the system's default).
    pub tcp_keepalive: Option<Duration>,
    /// Idle connections older than this are closed rather than reused.
    pub idle_timeout: Duration,
    /// Most idle connections kept; more are closed when returned.
    pub max_idle: usize,
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The connect did not finish within the connect timeout.
    #[error("dial tcp {addr}: i/o timeout")]
    Timeout {
        /// The upstream address.
        addr: String,
    },
    /// The connect failed (refused, unreachable, name not resolved).
    #[error("dial tcp {addr}: {source}")]
    Io {
        /// The upstream address.
        addr: String,
        /// The socket error.
        source: io::Error,
    },
}

/// A connection from the pool, and whether it had served an exchange before (a reused
/// connection can turn out to have been closed by the upstream just as it was taken).
#[derive(Debug)]
pub struct Conn {
    /// The socket.
    pub tcp: TcpStream,
    /// It came from the idle stack.
    pub reused: bool,
}

/// Keep-alive connections to one upstream.
#[derive(Debug)]
pub struct Pool {
    config: PoolConfig,
    idle: Mutex<Vec<(TcpStream, Instant)>>,
}

impl Pool {
    /// An empty pool.
    pub fn new(config: PoolConfig) -> Self {
        Self {
            config,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The pool's settings.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    fn idle(&self) -> MutexGuard<'_, Vec<(TcpStream, Instant)>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle connection the upstream has not closed, else a new one.
    pub async fn get(&self) -> Result<Conn, ConnectError> {
        match self.take_idle() {
            Some(tcp) => Ok(Conn { tcp, reused: true }),
            None => Ok(Conn {
                tcp: self.connect().await?,
                reused: false,
            }),
        }
    }

    /// An idle connection the upstream has not closed, if any.
    pub fn take_idle(&self) -> Option<TcpStream> {
        let now = Instant::now();
        let mut idle = self.idle();
        while let Some((tcp, since)) = idle.pop() {
            if now.duration_since(since) < self.config.idle_timeout && still_open(&tcp) {
                return Some(tcp);
            }
        }
        None
    }

    /// A new connection (connect timeout, no Nagle, keep-alive probes).
    pub async fn connect(&self) -> Result<TcpStream, ConnectError> {
        let addr = &self.config.addr;
        let tcp = match tokio::time::timeout(self.config.connect_timeout, TcpStream::connect(addr))
            .await
        {
            Err(_) => return Err(ConnectError::Timeout { addr: addr.clone() }),
            Ok(Err(source)) => {
                return Err(ConnectError::Io {
                    addr: addr.clone(),
                    source,
                })
            }
            Ok(Ok(t)) => t,
        };
        let _ = tcp.set_nodelay(true);
        if let Some(interval) = self.config.tcp_keepalive {
            let ka = socket2::TcpKeepalive::new()
                .with_time(interval)
                .with_interval(interval);
            let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&ka);
        }
        Ok(tcp)
    }

    /// Returns a connection whose last exchange ended cleanly, for the next one.
    pub fn put(&self, tcp: TcpStream) {
        let mut idle = self.idle();
        if idle.len() < self.config.max_idle {
            idle.push((tcp, Instant::now()));
        }
    }

    /// Drops idle connections that timed out or that the upstream closed (call periodically, so
    /// a quiet proxy does not hold upstream sockets forever).
    pub fn sweep(&self) {
        let now = Instant::now();
        let limit = self.config.idle_timeout;
        self.idle()
            .retain(|(tcp, since)| now.duration_since(*since) < limit && still_open(tcp));
    }

    /// Idle connections currently held.
    pub fn len(&self) -> usize {
        self.idle().len()
    }

    /// Whether no idle connection is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether an idle connection is still usable: its socket has not become readable (an upstream
/// that closes sends FIN; one that sends unasked bytes is not speaking HTTP/1.1 to us).
/// Readiness is tokio's cached state, so the common case costs no system call.
pub fn still_open(tcp: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match tcp.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        // Readiness may be stale (the last response was read without draining the socket to
        // WouldBlock): one non-blocking read settles it.
        Poll::Ready(Ok(())) => matches!(
            tcp.try_read(&mut [0u8; 1]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        ),
    }
}

/// Why no response head could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseHeadError {
    /// The upstream closed the connection (or it failed) before a complete head; `any` says
    /// whether any byte of a response had arrived.
    Closed {
        /// Some bytes of a response had arrived.
        any: bool,
    },
    /// Not HTTP/1.x syntax.
    Malformed,
    /// Longer than the byte limit.
    TooLarge,
}

/// Reads from `rd` into `buf` until `buf` starts with a complete response head, then hands it
/// and its length to `f`. No field count limit below `max_bytes`. Unbounded in time: the caller
/// bounds the wait (the response-header timeout runs from the end of the request body).
pub async fn read_response_head<R, T>(
    rd: &mut R,
    buf: &mut BytesMut,
    max_bytes: usize,
    f: impl FnOnce(&httparse::Response<'_, '_>, usize) -> T,
) -> Result<T, ResponseHeadError>
where
    R: AsyncRead + Unpin,
{
    let mut f = Some(f);
    loop {
        if !buf.is_empty() {
            let window = &buf[..buf.len().min(max_bytes)];
            let mut parse = f.take();
            match parse_response(window, usize::MAX, |resp, n| {
                parse.take().map(|p| p(resp, n))
            }) {
                Ok(Some(Some(t))) => return Ok(t),
                Ok(Some(None)) => return Err(ResponseHeadError::Malformed),
                Ok(None) if buf.len() >= max_bytes => return Err(ResponseHeadError::TooLarge),
                Ok(None) => f = parse,
                Err(HeadError::TooManyFields) => return Err(ResponseHeadError::TooLarge),
                Err(HeadError::Malformed) => return Err(ResponseHeadError::Malformed),
            }
        }
        buf.reserve(crate::READ_CHUNK);
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => {
                return Err(ResponseHeadError::Closed {
                    any: !buf.is_empty(),
                })
            }
            Ok(_) => {}
        }
    }
}
