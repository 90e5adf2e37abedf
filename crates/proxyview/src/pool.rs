//! The agent's backend connections: HTTP/1.1 keep-alive connections per route, reused while idle.
//!
//! hyper-util's pooled client did the same job with more machinery (a connector service, a pool
//! keyed by scheme and authority, a checkout future and a put-back on drop) — about 8k
//! instructions per request on the agent's hot path. A route always has one backend, so the pool
//! here is a plain list per route: a request takes the first connection that is ready (hyper
//! says so once the previous response was read to its end), opens one when none is, and keeps
//! connections until the backend closes them or they sat idle for [`BACKEND_POOL_IDLE`].

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::http_util::PvBody;
use crate::protocol::BACKEND_POOL_IDLE;

/// Why a backend request failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// TCP connect did not finish in time.
    #[error("connect to {0} timed out")]
    ConnectTimeout(String),
    /// TCP connect failed (refused, unreachable, DNS).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The backend authority.
        addr: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// The HTTP exchange failed (reset, malformed response, closed mid-response).
    #[error("backend {addr}: {source}")]
    Http {
        /// The backend authority.
        addr: String,
        /// hyper's error.
        source: hyper::Error,
    },
}

struct Conn {
    sender: SendRequest<PvBody>,
    last_used: Instant,
}

impl Conn {
    /// Open, and either busy or idle for less than [`BACKEND_POOL_IDLE`].
    fn worth_keeping(&self, now: Instant) -> bool {
        !self.sender.is_closed()
            && (!self.sender.is_ready() || now.duration_since(self.last_used) < BACKEND_POOL_IDLE)
    }
}

/// Keep-alive connections to one backend.
pub struct Pool {
    addr: String,
    connect_timeout: Duration,
    conns: Mutex<Vec<Conn>>,
}

impl Pool {
    /// A pool for `addr` (`host:port`).
    pub fn new(addr: String, connect_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            addr,
            connect_timeout,
            conns: Mutex::new(Vec::new()),
        })
    }

    fn conns(&self) -> MutexGuard<'_, Vec<Conn>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `req` on an idle connection, or on a new one; a pooled connection the backend
    /// closed before the request went out is replaced once, transparently.
    pub async fn send(&self, mut req: Request<PvBody>) -> Result<Response<Incoming>, BackendError> {
        if let Some(fut) = self.dispatch_idle(&mut req) {
            match fut.await {
                Ok(r) => return Ok(r),
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => {
                        return Err(BackendError::Http {
                            addr: self.addr.clone(),
                            source: e.into_error(),
                        })
                    }
                },
            }
        }
        let mut sender = self.connect().await?;
        let fut = sender.send_request(req);
        self.conns().push(Conn {
            sender,
            last_used: Instant::now(),
        });
        fut.await.map_err(|source| BackendError::Http {
            addr: self.addr.clone(),
            source,
        })
    }

    /// Hands `req` to the first ready connection (dispatch happens before the lock is released,
    /// so no two requests pick the same one). `None` when none is ready.
    #[allow(clippy::type_complexity)]
    fn dispatch_idle(
        &self,
        req: &mut Request<PvBody>,
    ) -> Option<
        impl std::future::Future<
            Output = Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<PvBody>>>,
        >,
    > {
        let now = Instant::now();
        let mut conns = self.conns();
        conns.retain(|c| c.worth_keeping(now));
        let c = conns.iter_mut().rev().find(|c| c.sender.is_ready())?;
        c.last_used = now;
        let r = std::mem::replace(req, Request::new(crate::http_util::empty()));
        Some(c.sender.try_send_request(r))
    }

    /// A new HTTP/1.1 connection to the backend (connect timeout, no Nagle), with its
    /// connection task still to be run by the caller.
    async fn handshake(
        &self,
    ) -> Result<
        (
            SendRequest<PvBody>,
            hyper::client::conn::http1::Connection<TokioIo<TcpStream>, PvBody>,
        ),
        BackendError,
    > {
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.addr))
            .await
        {
            Err(_) => return Err(BackendError::ConnectTimeout(self.addr.clone())),
            Ok(Err(source)) => {
                return Err(BackendError::Connect {
                    addr: self.addr.clone(),
                    source,
                })
            }
            Ok(Ok(t)) => t,
        };
        let _ = tcp.set_nodelay(true);
        hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|source| BackendError::Http {
                addr: self.addr.clone(),
                source,
            })
    }

    async fn connect(&self) -> Result<SendRequest<PvBody>, BackendError> {
        let (sender, conn) = self.handshake().await?;
        tokio::spawn(async move {
            // Ends when the backend closes or the pool drops the sender while idle.
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// A connection of its own (never pooled) for one upgrade request: after a `101` it
    /// becomes the byte pipe, reached through `hyper::upgrade::on` on the response.
    pub async fn connect_for_upgrade(&self) -> Result<SendRequest<PvBody>, BackendError> {
        let (sender, conn) = self.handshake().await?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    /// Drops connections idle for longer than [`BACKEND_POOL_IDLE`] (called periodically, so
    /// an agent without traffic does not hold backend sockets forever).
    pub fn sweep(&self) {
        let now = Instant::now();
        self.conns().retain(|c| c.worth_keeping(now));
    }

    /// The backend's `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Connections currently held (busy or idle).
    pub fn len(&self) -> usize {
        self.conns().len()
    }

    /// Whether the pool holds no connection.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    /// A backend answering `ok` to every request; `close_after_one` closes each connection
    /// after its first answer without saying so (as a backend's idle timeout would).
    async fn backend(close_after_one: bool) -> (String, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let n = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                n.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        while let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..i + 4);
                            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if s.write_all(ok).await.is_err() || close_after_one {
                                return;
                            }
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    async fn get(pool: &Pool) -> Result<String, BackendError> {
        let mut req = Request::new(crate::http_util::empty());
        req.headers_mut()
            .insert(http::header::HOST, http::HeaderValue::from_static("b"));
        let resp = pool.send(req).await?;
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Ok(String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn keep_alive_connection_is_reused() {
        let (addr, accepted) = backend(false).await;
        let pool = Pool::new(addr, Duration::from_secs(2));
        for _ in 0..5 {
            assert_eq!(get(&pool).await.unwrap(), "ok");
            tokio::task::yield_now().await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.len(), 1);
    }

    #[tokio::test]
    async fn connection_closed_by_the_backend_is_replaced() {
        let (addr, accepted) = backend(true).await;
        let pool = Pool::new(addr, Duration::from_secs(2));
        for _ in 0..3 {
            assert_eq!(get(&pool).await.unwrap(), "ok");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        pool.sweep();
        assert!(pool.is_empty(), "closed connections are dropped");
    }

    #[tokio::test]
    async fn refused_connect_is_a_connect_error() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let pool = Pool::new(addr, Duration::from_secs(2));
        assert!(matches!(
            get(&pool).await,
            Err(BackendError::Connect { .. })
        ));
    }
}
