//! Multiplexing: many request streams over the one WebSocket, each with its own flow-control
//! window, in the frame protocol of [`crate::protocol`].
//!
//! # Why an own frame protocol and not HTTP/2 or yamux
//!
//! Per request the tunnel carries one head each way and maybe some body bytes. HTTP/2 over the
//! WebSocket costs more than that work: HPACK encoding and decoding of every head, h2's locked
//! stream store, and a task per stream on both ends. The frames here are a fraction of that work.
//!
//! A yamux stream would still need an HTTP/1 codec per stream on both ends. The frames here are
//! the minimum the tunnel needs: a head (method, path, headers / status, headers) in a compact
//! length-prefixed form, data, per-stream and per-session credit, reset, ping.
//!
//! # How one session runs
//!
//! One task per session owns the WebSocket. It reads every message available, decodes the
//! frames and hands each to its stream through an unbounded channel (bounded in practice by flow
//! control), then writes everything the streams queued since its last turn as **one** WebSocket
//! message, so under load many heads and answers share one write and one read. Streams never
//! touch the socket: they append encoded frames to a shared buffer and wake the session task.
//!
//! Flow control: each stream may have [`STREAM_WINDOW`] bytes in flight and the session
//! [`CONNECTION_WINDOW`]. Credit is returned only when the consumer (the caller's socket, the
//! backend's socket) takes the bytes, so a caller that stops reading stops *its* stream while the
//! others keep the rest of the session window; memory per session is bounded by the session
//! window whatever the callers do (tests `slow_caller_does_not_stall_a_fast_one`,
//! `big_bodies_stream_both_ways_with_flat_rss`).
//!
//! Window sizes: a stream moves at most one window per round trip, so the window bounds a
//! download at window ÷ RTT: HTTP/2's default 64 KiB allows ~3 MB/s on a 20 ms path, the 1 MiB
//! per stream here ~50 MB/s (`bench/proxyview/rtt.sh` measures it), while a caller that stops
//! reading parks at most 1 MiB.
//!
//! # Where things are
//!
//! - this module: the public face (`Session`, `Heartbeat`, `Role`, `StreamError`);
//! - [`stream`]: a stream's two halves (`SendHalf`, `RecvHalf`, `Accepted`);
//! - [`state`]: what a session's task and its streams share, and frame dispatch;
//! - [`io`]: the session task that owns the WebSocket;
//! - [`relay`]: copying a stream's bytes to and from bodies, sockets and other streams;
//! - [`mailbox`]: the queue the stream inboxes (and the agent's workers) use.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_websockets::WebSocketStream;

use crate::protocol::{Frame, CONNECTION_WINDOW};
use io::Io;
use state::{Entry, Shared, Streams};
use stream::StreamShared;

mod io;
mod mailbox;
mod relay;
mod state;
mod stream;

pub(crate) use mailbox::Mailbox;
pub use relay::{pipe, relay, send_body, send_until_eof, CopyError};
pub use stream::{Accepted, RecvHalf, SendHalf};

/// Heartbeat settings shared by both ends of a session.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat {
    /// A `Ping` is sent when nothing arrived for this long.
    pub interval: Duration,
    /// The peer is dead when nothing arrived for `interval + timeout`.
    pub timeout: Duration,
}

/// Which end of the session this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opens streams (the proxyview server, one per caller request).
    Opener,
    /// Accepts streams (the agent).
    Acceptor,
}

/// Why a stream operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StreamError {
    /// The session ended (peer gone, heartbeat timeout, protocol error, local close).
    #[error("tunnel session closed: {0}")]
    SessionClosed(Arc<str>),
    /// The peer abandoned the stream.
    #[error("stream reset by the peer (code {0})")]
    Reset(u8),
    /// The peer sent something this end cannot use on this stream.
    #[error("bad frame on the stream: {0}")]
    Protocol(&'static str),
}

/// Locks `m`; a panic elsewhere while it was held leaves data that is still usable here.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes each stream the peer opens. It runs on the session task, so it must hand the stream
/// on (to a task) rather than serve it.
pub type OnAccept = Box<dyn FnMut(Accepted) + Send>;

/// Handle on one tunnel session; cheap to clone.
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.shared.role)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Session {
    /// Starts the session task on `ws` (whose Hello/HelloAck exchange is done). The acceptor
    /// also gets the channel of streams the peer opens; it ends when the session does.
    pub fn start<S>(
        ws: WebSocketStream<S>,
        role: Role,
        hb: Heartbeat,
    ) -> (Session, Option<mpsc::UnboundedReceiver<Accepted>>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match role {
            Role::Acceptor => {
                let (tx, rx) = mpsc::unbounded_channel();
                let on_accept: OnAccept = Box::new(move |a| {
                    let _ = tx.send(a);
                });
                (Self::run(ws, hb, Some(on_accept)), Some(rx))
            }
            Role::Opener => (Self::run(ws, hb, None), None),
        }
    }

    /// Starts an acceptor session that hands each stream the peer opens to `on_accept`.
    pub fn start_acceptor<S>(ws: WebSocketStream<S>, hb: Heartbeat, on_accept: OnAccept) -> Session
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::run(ws, hb, Some(on_accept))
    }

    /// The acceptor is the end that takes the peer's streams: the one given `on_accept`.
    fn run<S>(ws: WebSocketStream<S>, hb: Heartbeat, on_accept: Option<OnAccept>) -> Session
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let role = match on_accept {
            Some(_) => Role::Acceptor,
            None => Role::Opener,
        };
        let shared = Arc::new(Shared {
            role,
            out: Mutex::new(BytesMut::with_capacity(16 * 1024)),
            waker: AtomicWaker::new(),
            streams: Mutex::new(Streams {
                map: HashMap::default(),
                closed: false,
            }),
            conn_credit: Semaphore::new(CONNECTION_WINDOW as usize),
            recv_budget: AtomicI64::new(i64::from(CONNECTION_WINDOW)),
            conn_pending: AtomicU32::new(0),
            next_id: AtomicU32::new(1),
            closed: CancellationToken::new(),
            reason: OnceLock::new(),
            accept: Mutex::new(on_accept),
            tx_bytes: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
        });
        // Checked a few times per interval, so a ping leaves soon after `interval` of silence
        // (checking once per interval would send it only after up to twice that).
        let period = (hb.interval.min(hb.timeout) / 4).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let io = Io {
            ws,
            shared: shared.clone(),
            inbuf: BytesMut::new(),
            hb,
            tick,
            last_rx: Instant::now(),
            last_ping: Instant::now(),
            pings: 0,
            stop: Box::pin(shared.closed.clone().cancelled_owned()),
        };
        tokio::spawn(io.run());
        Session { shared }
    }

    /// Opens a stream with a request head; `end` when no body follows.
    pub fn open(
        &self,
        head: Bytes,
        end: bool,
        upgrade: bool,
    ) -> Result<(SendHalf, RecvHalf), StreamError> {
        self.open_with(end, upgrade, |out| out.extend_from_slice(&head))
    }

    /// Opens a stream whose request head `encode` writes straight into the session's outgoing
    /// buffer (under its lock: `encode` must only write).
    pub fn open_with(
        &self,
        end: bool,
        upgrade: bool,
        encode: impl FnOnce(&mut BytesMut),
    ) -> Result<(SendHalf, RecvHalf), StreamError> {
        let sh = &self.shared;
        let st = StreamShared::new();
        let id = {
            let mut s = lock(&sh.streams);
            if s.closed {
                return Err(sh.closed_error());
            }
            let mut id = sh.next_id.fetch_add(2, Ordering::Relaxed);
            while id == 0 || s.map.contains_key(&id) {
                id = sh.next_id.fetch_add(2, Ordering::Relaxed);
            }
            s.map.insert(
                id,
                Entry {
                    stream: st.clone(),
                    recv_done: false,
                    send_done: end,
                    recv_discarded: false,
                },
            );
            id
        };
        sh.queue_with(|out| Frame::encode_head_with(out, id, end, upgrade, encode));
        Ok((
            SendHalf {
                id,
                shared: sh.clone(),
                stream: st.clone(),
                done: end,
            },
            RecvHalf::new(id, sh.clone(), st, false),
        ))
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    /// Waits for the end of the session and returns why it ended.
    pub async fn closed(&self) -> Arc<str> {
        self.shared.closed.cancelled().await;
        match self.shared.closed_error() {
            StreamError::SessionClosed(r) => r,
            other => Arc::from(other.to_string()),
        }
    }

    /// Ends the session (streams in flight fail).
    pub fn close(&self, reason: &str) {
        self.shared.fail_all(reason);
    }

    /// Streams currently open (diagnostics, tests).
    pub fn open_streams(&self) -> usize {
        lock(&self.shared.streams).map.len()
    }

    /// Tunnel payload bytes (sent, received) so far.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.shared.tx_bytes.load(Ordering::Relaxed),
            self.shared.rx_bytes.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests;
