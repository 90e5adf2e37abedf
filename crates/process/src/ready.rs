//! Waiting until a TCP address accepts connections.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};

/// Pause between two connection attempts.
pub const READY_RETRY: Duration = Duration::from_millis(50);

/// The address did not accept a connection in time.
#[derive(Debug, thiserror::Error)]
#[error("{addr} did not accept a TCP connection within {timeout:?} (last error: {last})")]
pub struct ReadyError {
    /// The address probed.
    pub addr: SocketAddr,
    /// The time allowed.
    pub timeout: Duration,
    /// The last connect error seen.
    pub last: io::Error,
}

/// Try to connect to `addr` until it succeeds or `limit` passes; the probe connection is closed at once.
pub async fn wait_tcp_ready(addr: SocketAddr, limit: Duration) -> Result<(), ReadyError> {
    let deadline = Instant::now() + limit;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let last = match timeout(remaining, TcpStream::connect(addr)).await {
            Ok(Ok(_stream)) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ReadyError {
                addr,
                timeout: limit,
                last,
            });
        }
        sleep(READY_RETRY.min(remaining)).await;
    }
}
