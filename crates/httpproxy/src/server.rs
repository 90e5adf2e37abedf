//! The HTTP/1.1 server around [`Proxy`]: accept loop, per-connection header/idle timeouts,
//! connection cap, graceful drain.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ConfigError;
use crate::conn::{ConnState, InFlight};
use crate::exchange::ExchangeSink;
use crate::proxy::{Peer, Proxy};
use crate::ProxyConfig;

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Time connections get to close after the drain budget is exhausted and they are cut.
const FORCE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Why [`serve`] stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Requests were still running when the drain budget ran out; their connections were cut.
    #[error("context deadline exceeded: {open} connection(s) still busy after the {budget:?} drain budget")]
    DrainTimeout {
        /// Connections still open when the budget ran out.
        open: usize,
        /// The drain budget.
        budget: Duration,
    },
}

/// Serves `listener` until `shutdown` resolves, then stops accepting, lets in-flight requests
/// finish within `config.drain_timeout`, closes upgraded tunnels and returns.
pub async fn serve(
    listener: TcpListener,
    config: ProxyConfig,
    sink: Arc<dyn ExchangeSink>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let proxy = Proxy::new(config, sink)?;
    proxy.serve(listener, shutdown).await
}

/// A client socket that notes when the first byte of a request head arrives.
struct WatchedIo {
    inner: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.on_read();
        }
        res
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Proxy<Incoming> {
    /// Serves `listener` until `shutdown` resolves; see [`serve`].
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let cfg = &self.shared.config;
        let mut builder = http1::Builder::new();
        builder
            .header_read_timeout(None)
            .keep_alive(true)
            .max_buf_size(cfg.max_header_bytes.saturating_add(4096).max(8192))
            .max_header_size(cfg.max_header_bytes);
        if cfg.max_headers != crate::config::MAX_HEADERS {
            // Only when asked: a custom count moves hyper's header index array to the heap.
            builder.max_headers(cfg.max_headers);
        }
        let tracker = TaskTracker::new();
        let drain = CancellationToken::new();
        let force = CancellationToken::new();
        let permits = Arc::new(Semaphore::new(cfg.max_connections));
        let (header_timeout, idle_timeout) = (cfg.header_read_timeout, cfg.idle_timeout);
        let mut shutdown = pin!(shutdown);
        loop {
            let permit = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                p = Arc::clone(&permits).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let (stream, addr) = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                r = listener.accept() => match r {
                    Ok(pair) => pair,
                    Err(e) => {
                        cfg.logger.log(format_args!("http: Accept error: {e}; retrying in {ACCEPT_BACKOFF:?}"));
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let state = Arc::new(ConnState::new());
            let io = TokioIo::new(WatchedIo {
                inner: stream,
                state: Arc::clone(&state),
            });
            let peer = Peer::new(addr);
            let proxy = self.clone();
            let svc_state = Arc::clone(&state);
            let svc = service_fn(move |req: Request<Incoming>| {
                let guard = InFlight::enter(&svc_state);
                let proxy = proxy.clone();
                let peer = peer.clone();
                async move {
                    let resp = proxy.handle(req, &peer).await;
                    Ok::<_, Infallible>(resp.map(|b| b.with_in_flight(Some(guard))))
                }
            });
            let conn = builder.serve_connection(io, svc).with_upgrades();
            let (drain, force) = (drain.clone(), force.clone());
            tracker.spawn(async move {
                let _permit = permit;
                let mut conn = pin!(conn);
                let mut draining = false;
                loop {
                    tokio::select! {
                        // Client-side protocol errors and resets are the client's business: hyper
                        // already answered what it could (400, 431), nothing to log.
                        _ = conn.as_mut() => break,
                        _ = drain.cancelled(), if !draining => {
                            draining = true;
                            conn.as_mut().graceful_shutdown();
                        }
                        _ = force.cancelled() => break,
                        _ = state.expired(header_timeout, idle_timeout) => break,
                    }
                }
            });
        }
        drop(listener);
        drain.cancel();
        tracker.close();
        let drained = tokio::time::timeout(cfg.drain_timeout, tracker.wait())
            .await
            .is_ok();
        let open = tracker.len();
        force.cancel();
        self.shared.close_tunnels.cancel();
        if !drained {
            let _ = tokio::time::timeout(FORCE_CLOSE_GRACE, tracker.wait()).await;
            return Err(ServeError::DrainTimeout {
                open,
                budget: cfg.drain_timeout,
            });
        }
        Ok(())
    }
}
