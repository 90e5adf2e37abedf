//! The accept loop around [`Proxy`]: connection cap, graceful drain, then the tunnels closed.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ConfigError;
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

impl Proxy {
    /// Serves `listener` until `shutdown` resolves; see [`serve`].
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let cfg = &self.shared.config;
        let tracker = TaskTracker::new();
        let drain = CancellationToken::new();
        let force = CancellationToken::new();
        let permits = Arc::new(Semaphore::new(cfg.max_connections));
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
            let proxy = self.clone();
            let (drain, force) = (drain.clone(), force.clone());
            tracker.spawn(async move {
                let _permit = permit;
                tokio::select! {
                    () = proxy.serve_connection(stream, Peer::new(addr), drain) => {}
                    () = force.cancelled() => {}
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
