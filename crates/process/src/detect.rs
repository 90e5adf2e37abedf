//! Polling a child's process tree until it listens on a TCP port.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::{sleep, Instant};

use crate::child::{Child, ExitStatus};
use crate::ports::{connect_addr, PortWatcher, DEFAULT_DETECT_TIMEOUT, DEFAULT_POLL_INTERVAL};

/// Settings for [`wait_for_listen_port`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectOptions {
    /// A port never to pick (cwproxy's own `PROXY_PORT`).
    pub exclude_port: Option<u16>,
    /// Time between two looks at the tree.
    pub poll_interval: Duration,
    /// Give up after this long.
    pub timeout: Duration,
}

impl Default for DetectOptions {
    fn default() -> Self {
        DetectOptions {
            exclude_port: None,
            poll_interval: DEFAULT_POLL_INTERVAL,
            timeout: DEFAULT_DETECT_TIMEOUT,
        }
    }
}

/// Why no port was detected.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// The child exited (and, for a clean exit, left nothing running in its group) before listening.
    #[error("{command:?} exited with {status} before a listening port was found")]
    ChildExited {
        /// The command as given.
        command: String,
        /// Its exit status.
        status: ExitStatus,
    },
    /// Nothing in the tree listened within the timeout. The child is left running; stop it.
    #[error("no listening TCP port found for {command:?} within {timeout:?}")]
    Timeout {
        /// The command as given.
        command: String,
        /// The timeout that elapsed.
        timeout: Duration,
    },
    /// `/proc` (or the platform equivalent) could not be read, or waiting for the child failed.
    #[error("inspect process tree of {command:?}: {source}")]
    Io {
        /// The command as given.
        command: String,
        /// The underlying error.
        source: io::Error,
    },
}

/// Poll `child`'s process tree until some process in it listens on TCP, and return the address to connect to.
///
/// The tree is the child, its descendants, and every process still in the child's process group (so a
/// server whose launcher forked and exited is found although it was re-parented away). The lowest port other
/// than `opts.exclude_port` wins; see [`connect_addr`] for the address. A child that exits non-zero or by a
/// signal fails at once; one that exits 0 fails only when nothing it started is left in its group.
pub async fn wait_for_listen_port(
    child: &mut Child,
    opts: &DetectOptions,
) -> Result<SocketAddr, DetectError> {
    let deadline = Instant::now() + opts.timeout;
    let mut watcher = PortWatcher::default();
    loop {
        let exited = child.try_wait().map_err(|source| DetectError::Io {
            command: child.command().to_owned(),
            source,
        })?;
        if let Some(status) = exited {
            if !status.success() || !child.group().is_alive() {
                return Err(DetectError::ChildExited {
                    command: child.command().to_owned(),
                    status,
                });
            }
        }
        let listeners = watcher
            .poll_scope(child.scope())
            .map_err(|source| DetectError::Io {
                command: child.command().to_owned(),
                source,
            })?;
        if let Some(addr) = connect_addr(&listeners, opts.exclude_port) {
            return Ok(addr);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(DetectError::Timeout {
                command: child.command().to_owned(),
                timeout: opts.timeout,
            });
        }
        // A zero interval would spin; one millisecond keeps a misconfiguration from eating a core.
        let nap = opts
            .poll_interval
            .max(Duration::from_millis(1))
            .min(deadline - now);
        if exited.is_some() {
            sleep(nap).await;
        } else {
            // Wake early on exit so a crash is reported without waiting for the next tick.
            tokio::select! {
                _ = sleep(nap) => {}
                _ = child.wait() => {}
            }
        }
    }
}
