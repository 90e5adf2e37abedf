//! Multiplexing: many request streams over the one WebSocket, each with its own flow-control
//! window, in the frame protocol of [`crate::protocol`].
//!
//! # Why an own frame protocol and not HTTP/2 or yamux
//!
//! Per request the tunnel carries one head each way and maybe some body bytes. HTTP/2 over the
//! WebSocket costs more than that work: HPACK encoding and decoding of every head, h2's locked
//! stream store, and a task per stream on both ends. The frames here cost about a third of the
//! instructions per request (figures and their history: `bench/proxyview/README.md`).
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
//! Window sizes: a stream moves at most one window per round trip, so HTTP/2's default 64 KiB
//! capped a download at ~3 MB/s on a 20 ms path; 1 MiB per stream gave 36–38 MB/s there
//! (`bench/proxyview/rtt.sh`) while a caller that stops reading parks at most 1 MiB.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use futures_util::{Sink, Stream};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_websockets::{Message, WebSocketStream};

use crate::protocol::{
    reset, Frame, FrameError, CONNECTION_WINDOW, MAX_CONCURRENT_STREAMS, MAX_FRAME_SIZE,
    MAX_WS_MESSAGE, STREAM_WINDOW, WINDOW_UPDATE_THRESHOLD,
};

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

enum Inbound {
    Head { block: Bytes, end: bool },
    Data { data: Bytes, end: bool },
    Reset(u8),
}

/// What the session task and a stream's two halves share: the frames that arrived for the
/// stream, and the send credit the peer granted, in one allocation per stream.
struct StreamShared {
    inbox: Mailbox<Inbound>,
    credit: Semaphore,
    /// Set when the stream is reset (either end) or the session ends; `cancel` wakes the
    /// waiters. A flag rather than a child `CancellationToken`, whose tree node and locks under
    /// the session's token cost more than the rest of a stream's cancellation.
    cancelled: AtomicBool,
    cancel: Notify,
}

/// A queue one task reads and others fill, with the reader's waker: the stream inboxes here and
/// the agent's worker slots. A `std` mutex, held only to push or pop.
pub(crate) struct Mailbox<T> {
    inner: Mutex<MailboxState<T>>,
}

struct MailboxState<T> {
    queue: VecDeque<T>,
    /// Nothing more will be pushed.
    closed: bool,
    waker: Option<Waker>,
}

impl<T> Default for Mailbox<T> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(MailboxState {
                queue: VecDeque::new(),
                closed: false,
                waker: None,
            }),
        }
    }
}

impl<T> Mailbox<T> {
    /// Queues `item` and wakes the reader; dropped if the mailbox is closed.
    pub(crate) fn push(&self, item: T) {
        let waker = {
            let mut b = lock(&self.inner);
            if b.closed {
                return;
            }
            b.queue.push_back(item);
            b.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// No more items: the reader gets `None` once the queue is empty.
    pub(crate) fn close(&self) {
        let waker = {
            let mut b = lock(&self.inner);
            b.closed = true;
            b.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The next item; `None` once the mailbox is closed and empty.
    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut b = lock(&self.inner);
        if let Some(item) = b.queue.pop_front() {
            return Poll::Ready(Some(item));
        }
        if b.closed {
            return Poll::Ready(None);
        }
        match &mut b.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    fn try_recv(&self) -> Option<T> {
        lock(&self.inner).queue.pop_front()
    }
}

impl StreamShared {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            inbox: Mailbox::default(),
            credit: Semaphore::new(STREAM_WINDOW as usize),
            cancelled: AtomicBool::new(false),
            cancel: Notify::new(),
        })
    }

    fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.cancel.notify_waiters();
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Resolves once [`Self::cancel`] has run.
    async fn cancelled(&self) {
        loop {
            let notified = self.cancel.notified();
            tokio::pin!(notified);
            // Registered before the flag is read, so a cancel in between is not missed.
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

struct Entry {
    stream: Arc<StreamShared>,
    recv_done: bool,
    send_done: bool,
    /// The local receiver went away while this end still sends: the peer's data is dropped,
    /// and the stream is reset once our side has ended (so the peer stops sending).
    recv_discarded: bool,
}

impl Drop for Entry {
    /// Leaving the table means no frame will arrive any more: the receiver sees the end.
    fn drop(&mut self) {
        self.stream.inbox.close();
    }
}

/// A stream opened by the peer (agent side).
pub struct Accepted {
    /// The request head block ([`crate::protocol::RequestHead`]).
    pub head: Bytes,
    /// No request body follows.
    pub end: bool,
    /// The request asks for an upgrade (byte pipe after `101`).
    pub upgrade: bool,
    /// Sends the response.
    pub send: SendHalf,
    /// Receives the request body.
    pub recv: RecvHalf,
}

struct Streams {
    map: HashMap<u32, Entry, BuildHasherDefault<IdHasher>>,
    /// Set (under this lock) when the session ends, so no stream is added afterwards.
    closed: bool,
}

impl Streams {
    /// The peer's direction of `id` ended; the entry goes if ours has too.
    fn peer_ended(&mut self, id: u32) {
        if let Some(e) = self.map.get_mut(&id) {
            e.recv_done = true;
            if e.send_done {
                self.map.remove(&id);
            }
        }
    }
}

struct Shared {
    role: Role,
    out: Mutex<BytesMut>,
    waker: AtomicWaker,
    streams: Mutex<Streams>,
    conn_credit: Semaphore,
    /// Session-level receive budget: data the peer may still send before we return credit.
    recv_budget: AtomicI64,
    /// Consumed bytes whose session credit has not been returned yet.
    conn_pending: AtomicU32,
    next_id: AtomicU32,
    closed: CancellationToken,
    reason: OnceLock<Arc<str>>,
    /// Where the acceptor's new streams go; dropped when the session ends.
    accept: Mutex<Option<OnAccept>>,
    /// Tunnel bytes written and read (WebSocket payloads), for the operator page.
    tx_bytes: AtomicU64,
    rx_bytes: AtomicU64,
}

/// Locks `m`; a panic elsewhere while it was held leaves data that is still usable here.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn queue(&self, frame: &Frame) {
        self.queue_with(|out| frame.encode(out));
    }

    /// Appends what `encode` writes to the outgoing buffer (under its lock: `encode` must only
    /// write) and wakes the session task to send it.
    fn queue_with(&self, encode: impl FnOnce(&mut BytesMut)) {
        encode(&mut lock(&self.out));
        self.waker.wake();
    }

    fn closed_error(&self) -> StreamError {
        StreamError::SessionClosed(
            self.reason
                .get()
                .cloned()
                .unwrap_or_else(|| Arc::from("closed")),
        )
    }

    /// Marks our direction of `id` finished; the entry goes when the peer's is too. (The peer's
    /// end is marked by the session task as the frame arrives: [`Streams::peer_ended`].)
    fn finish_send(&self, id: u32) {
        let mut s = lock(&self.streams);
        let Some(e) = s.map.get_mut(&id) else { return };
        e.send_done = true;
        if e.recv_done {
            let discarded = e.recv_discarded;
            s.map.remove(&id);
            drop(s);
            if discarded && !self.closed.is_cancelled() {
                self.queue(&Frame::Reset {
                    stream: id,
                    code: reset::CANCEL,
                });
            }
        }
    }

    /// The local receiver of `id` went away before the peer's end: reset the stream, unless this
    /// end is still sending (an answer to a request whose body nobody read), in which case the
    /// peer's further data is dropped and the reset waits for our end.
    fn discard_recv(&self, id: u32) {
        let mut s = lock(&self.streams);
        let Some(e) = s.map.get_mut(&id) else { return };
        if e.send_done {
            drop(s);
            self.reset(id, reset::CANCEL);
        } else {
            e.recv_done = true;
            e.recv_discarded = true;
        }
    }

    /// Abandons `id` locally and tells the peer.
    fn reset(&self, id: u32, code: u8) {
        let removed = lock(&self.streams).map.remove(&id);
        if let Some(e) = removed {
            e.stream.credit.close();
            e.stream.cancel();
            if !self.closed.is_cancelled() {
                self.queue(&Frame::Reset { stream: id, code });
            }
        }
    }

    /// The consumer took `n` bytes: return session credit in batches.
    fn conn_consumed(&self, n: u32) {
        if n == 0 {
            return;
        }
        let total = self.conn_pending.fetch_add(n, Ordering::AcqRel) + n;
        if total >= WINDOW_UPDATE_THRESHOLD {
            self.flush_conn_credit();
        }
    }

    fn flush_conn_credit(&self) {
        let t = self.conn_pending.swap(0, Ordering::AcqRel);
        if t > 0 {
            self.recv_budget.fetch_add(i64::from(t), Ordering::AcqRel);
            self.queue(&Frame::Window {
                stream: 0,
                increment: t,
            });
        }
    }

    fn fail_all(&self, reason: &str) {
        let _ = self.reason.set(Arc::from(reason));
        let entries: Vec<Entry> = {
            let mut s = lock(&self.streams);
            s.closed = true;
            s.map.drain().map(|(_, e)| e).collect()
        };
        self.closed.cancel();
        self.conn_credit.close();
        for e in entries {
            e.stream.credit.close();
            e.stream.cancel();
            // Dropping the entry closes the inbox: receivers report the session's reason.
            drop(e);
        }
        *lock(&self.accept) = None;
    }

    fn dispatch(self: &Arc<Self>, frame: Frame) -> Result<(), String> {
        match frame {
            Frame::Head {
                stream,
                end,
                upgrade,
                block,
            } => match self.role {
                Role::Acceptor => {
                    accept(self, stream, end, upgrade, block);
                    Ok(())
                }
                Role::Opener => {
                    let mut s = lock(&self.streams);
                    if let Some(e) = s.map.get(&stream) {
                        e.stream.inbox.push(Inbound::Head { block, end });
                        if end {
                            s.peer_ended(stream);
                        }
                    }
                    Ok(())
                }
            },
            Frame::Data { stream, end, data } => {
                let len = data.len() as u32;
                if self.recv_budget.fetch_sub(i64::from(len), Ordering::AcqRel) < i64::from(len) {
                    return Err("peer sent beyond the session window".into());
                }
                let mut s = lock(&self.streams);
                match s.map.get_mut(&stream) {
                    Some(e) if !e.recv_done => {
                        e.stream.inbox.push(Inbound::Data { data, end });
                        if end {
                            s.peer_ended(stream);
                        }
                    }
                    _ => {
                        // A stream we already dropped: nobody consumes this, so its session
                        // credit comes back at once.
                        drop(s);
                        self.conn_consumed(len);
                    }
                }
                Ok(())
            }
            Frame::Window { stream, increment } => {
                let inc = increment as usize;
                if stream == 0 {
                    if self.conn_credit.available_permits() + inc > Semaphore::MAX_PERMITS {
                        return Err("session window overflow".into());
                    }
                    self.conn_credit.add_permits(inc);
                } else if let Some(e) = lock(&self.streams).map.get(&stream) {
                    if e.stream.credit.available_permits() + inc > Semaphore::MAX_PERMITS {
                        return Err("stream window overflow".into());
                    }
                    e.stream.credit.add_permits(inc);
                }
                Ok(())
            }
            Frame::Reset { stream, code } => {
                let removed = lock(&self.streams).map.remove(&stream);
                if let Some(e) = removed {
                    e.stream.inbox.push(Inbound::Reset(code));
                    e.stream.credit.close();
                    e.stream.cancel();
                }
                Ok(())
            }
            Frame::Ping(v) => {
                self.queue(&Frame::Pong(v));
                Ok(())
            }
            Frame::Pong(_) => Ok(()),
        }
    }
}

fn accept(shared: &Arc<Shared>, stream: u32, end: bool, upgrade: bool, block: Bytes) {
    let st = StreamShared::new();
    {
        let mut s = lock(&shared.streams);
        if s.closed {
            return;
        }
        if stream.is_multiple_of(2) || s.map.contains_key(&stream) {
            drop(s);
            shared.queue(&Frame::Reset {
                stream,
                code: reset::REFUSED,
            });
            return;
        }
        if s.map.len() >= MAX_CONCURRENT_STREAMS {
            drop(s);
            shared.queue(&Frame::Reset {
                stream,
                code: reset::REFUSED,
            });
            return;
        }
        s.map.insert(
            stream,
            Entry {
                stream: st.clone(),
                recv_done: end,
                send_done: false,
                recv_discarded: false,
            },
        );
    }
    let a = Accepted {
        head: block,
        end,
        upgrade,
        send: SendHalf {
            id: stream,
            shared: shared.clone(),
            stream: st.clone(),
            done: false,
        },
        recv: RecvHalf::new(stream, shared.clone(), st, end),
    };
    // Not delivered (session closing): dropping the halves resets the stream.
    if let Some(on_accept) = lock(&shared.accept).as_mut() {
        on_accept(a);
    }
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

/// Sending side of a stream.
pub struct SendHalf {
    id: u32,
    shared: Arc<Shared>,
    stream: Arc<StreamShared>,
    done: bool,
}

impl SendHalf {
    fn error(&self) -> StreamError {
        if self.shared.closed.is_cancelled() {
            self.shared.closed_error()
        } else {
            StreamError::Reset(reset::CANCEL)
        }
    }

    /// Resets the stream because its body source failed; the error to return for it.
    fn broken(&mut self, why: &'static str) -> StreamError {
        self.done = true;
        self.shared.reset(self.id, reset::BROKEN);
        StreamError::Protocol(why)
    }

    /// Sends the response head (acceptor); `end` when no body follows.
    pub fn send_head(&mut self, head: &[u8], end: bool) -> Result<(), StreamError> {
        if self.stream.is_cancelled() {
            return Err(self.error());
        }
        let id = self.id;
        self.shared.queue_with(|out| {
            Frame::encode_head_with(out, id, end, false, |out| out.extend_from_slice(head))
        });
        if end {
            self.done = true;
            self.shared.finish_send(self.id);
        }
        Ok(())
    }

    /// Sends `data` in frames of at most [`MAX_FRAME_SIZE`], waiting for credit; `end` closes
    /// this direction after it.
    pub async fn send_data(&mut self, mut data: Bytes, end: bool) -> Result<(), StreamError> {
        if self.done {
            return Ok(());
        }
        loop {
            let n = data.len().min(MAX_FRAME_SIZE as usize);
            if n == 0 && !end {
                return Ok(());
            }
            let n32 = n as u32;
            let Ok(stream_credit) = self.stream.credit.acquire_many(n32).await else {
                return Err(self.error());
            };
            let Ok(conn_credit) = self.shared.conn_credit.acquire_many(n32).await else {
                return Err(self.error());
            };
            if self.stream.is_cancelled() {
                // Dropping the permits hands the session credit back to the other streams.
                return Err(self.error());
            }
            // Spent: the peer returns it with Window frames as its consumer reads.
            stream_credit.forget();
            conn_credit.forget();
            let chunk = data.split_to(n);
            let last = data.is_empty();
            self.shared.queue(&Frame::Data {
                stream: self.id,
                end: end && last,
                data: chunk,
            });
            if last {
                break;
            }
        }
        if end {
            self.done = true;
            self.shared.finish_send(self.id);
        }
        Ok(())
    }

    /// Resolves when the peer reset the stream or the session ended.
    pub fn cancelled_owned(&self) -> impl Future<Output = ()> + Send + 'static {
        let stream = self.stream.clone();
        async move { stream.cancelled().await }
    }
}

impl Drop for SendHalf {
    fn drop(&mut self) {
        if !self.done {
            self.shared.reset(self.id, reset::BROKEN);
        }
    }
}

/// Receiving side of a stream; as an [`http_body::Body`] it yields the peer's data.
pub struct RecvHalf {
    id: u32,
    shared: Arc<Shared>,
    stream: Arc<StreamShared>,
    /// Peer's direction finished (or failed): nothing more to read.
    ended: bool,
    /// Ended by a reset or session failure rather than by `end`.
    failed: bool,
    head_seen: bool,
    pending_credit: u32,
}

impl RecvHalf {
    fn new(id: u32, shared: Arc<Shared>, stream: Arc<StreamShared>, ended: bool) -> Self {
        Self {
            id,
            shared,
            stream,
            ended,
            failed: false,
            head_seen: ended,
            pending_credit: 0,
        }
    }

    /// Waits for the peer's head (opener side): the block and whether a body follows.
    pub async fn head(&mut self) -> Result<(Bytes, bool), StreamError> {
        let r = match std::future::poll_fn(|cx| self.stream.inbox.poll_recv(cx)).await {
            Some(Inbound::Head { block, end }) => {
                self.head_seen = true;
                if end {
                    self.ended = true;
                }
                return Ok((block, end));
            }
            Some(Inbound::Reset(code)) => Err(StreamError::Reset(code)),
            Some(Inbound::Data { .. }) => Err(StreamError::Protocol("data before the head")),
            None => Err(self.shared.closed_error()),
        };
        self.ended = true;
        self.failed = true;
        r
    }

    fn consumed(&mut self, n: u32) {
        self.shared.conn_consumed(n);
        if self.ended {
            return;
        }
        self.pending_credit += n;
        if self.pending_credit >= WINDOW_UPDATE_THRESHOLD {
            let increment = std::mem::take(&mut self.pending_credit);
            self.shared.queue(&Frame::Window {
                stream: self.id,
                increment,
            });
        }
    }

    /// The next chunk of data; `None` at the end of the peer's direction.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, StreamError>>> {
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            let item = std::task::ready!(self.stream.inbox.poll_recv(cx));
            match item {
                Some(Inbound::Data { data, end }) => {
                    if end {
                        self.ended = true;
                    }
                    self.consumed(data.len() as u32);
                    if data.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Some(Inbound::Head { .. }) => {
                    self.ended = true;
                    self.failed = true;
                    self.shared.reset(self.id, reset::BROKEN);
                    return Poll::Ready(Some(Err(StreamError::Protocol("second head"))));
                }
                Some(Inbound::Reset(code)) => {
                    self.ended = true;
                    self.failed = true;
                    return Poll::Ready(Some(Err(StreamError::Reset(code))));
                }
                None => {
                    self.ended = true;
                    self.failed = true;
                    return Poll::Ready(Some(Err(self.shared.closed_error())));
                }
            }
        }
    }

    /// Async form of [`RecvHalf::poll_chunk`].
    pub async fn chunk(&mut self) -> Option<Result<Bytes, StreamError>> {
        std::future::poll_fn(|cx| self.poll_chunk(cx)).await
    }
}

impl Drop for RecvHalf {
    fn drop(&mut self) {
        if !self.ended {
            self.shared.discard_recv(self.id);
        }
        // Data that arrived but was never consumed still holds session credit.
        let mut unread = 0u32;
        while let Some(item) = self.stream.inbox.try_recv() {
            if let Inbound::Data { data, .. } = item {
                unread += data.len() as u32;
            }
        }
        self.shared.conn_consumed(unread);
    }
}

/// Sends `body` on `send` to its end (trailers are not carried); a body error resets the
/// stream. Stops waiting for the body when the peer resets the stream or the session ends, so
/// a caller that stalls mid-upload holds nothing once the other side gave up.
pub async fn send_body<B>(mut body: B, send: &mut SendHalf) -> Result<(), StreamError>
where
    B: Body<Data = Bytes> + Unpin,
{
    use http_body_util::BodyExt as _;
    let stream = send.stream.clone();
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            () = stream.cancelled() => return Err(send.error()),
        };
        match frame {
            None => return send.send_data(Bytes::new(), true).await,
            Some(Err(_)) => return Err(send.broken("body failed")),
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data() {
                    let end = body.is_end_stream();
                    send.send_data(data, end).await?;
                    if end {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Relays one stream's body into another to its end (a cluster peer link spliced onto an
/// agent's stream); a source that fails or is reset resets `send`. Stops waiting for the source
/// when `send`'s stream is reset or its session ends.
pub async fn relay(mut recv: RecvHalf, send: &mut SendHalf) -> Result<(), StreamError> {
    let stream = send.stream.clone();
    loop {
        let chunk = tokio::select! {
            c = recv.chunk() => c,
            () = stream.cancelled() => return Err(send.error()),
        };
        match chunk {
            None => return send.send_data(Bytes::new(), true).await,
            Some(Err(_)) => return Err(send.broken("relayed body failed")),
            Some(Ok(data)) => send.send_data(data, false).await?,
        }
    }
}

/// Hasher for the stream map. Its keys are stream ids from a counter (ours, or the
/// authenticated peer's), so SipHash's defence against chosen keys buys nothing, and it was a
/// visible share of each frame's cost; a multiplicative hash spreads sequential ids evenly.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Why [`send_until_eof`] (or a body read by `http1`) stopped before the end: `Broken` when
/// reading failed or the stream is gone (the stream is reset either way), `Idle` when the reader
/// yielded nothing for the idle timeout.
pub use http1::CopyError;

/// A stream's sending half takes the bodies `http1` reads from a connection.
impl http1::BodySink for SendHalf {
    async fn send(&mut self, data: Bytes, end: bool) -> Result<(), CopyError> {
        self.send_data(data, end)
            .await
            .map_err(|_| CopyError::Broken)
    }
}

/// A stream's receiving half feeds the bodies `http1` writes to a connection.
impl http1::BodySource for RecvHalf {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, CopyError>>> {
        RecvHalf::poll_chunk(self, cx).map(|c| c.map(|r| r.map_err(|_| CopyError::Broken)))
    }
}

/// Sends what is in `buf`, then everything `r` yields until its EOF, then the stream's end;
/// with `idle`, a reader silent that long is given up on.
pub async fn send_until_eof<R>(
    r: &mut R,
    buf: &mut BytesMut,
    send: &mut SendHalf,
    idle: Option<Duration>,
) -> Result<(), CopyError>
where
    R: AsyncRead + Unpin,
{
    loop {
        if !buf.is_empty() {
            send.send_data(buf.split().freeze(), false)
                .await
                .map_err(|_| CopyError::Broken)?;
        }
        buf.reserve(16 * 1024);
        let read = match idle {
            None => r.read_buf(buf).await,
            Some(d) => tokio::time::timeout(d, r.read_buf(buf))
                .await
                .map_err(|_| CopyError::Idle)?,
        };
        if read.map_err(|_| CopyError::Broken)? == 0 {
            break;
        }
    }
    send.send_data(Bytes::new(), true)
        .await
        .map_err(|_| CopyError::Broken)
}

/// Pipes bytes between `io` and an upgraded stream until both directions ended.
pub async fn pipe<T>(io: T, send: &mut SendHalf, mut recv: RecvHalf)
where
    T: AsyncRead + AsyncWrite,
{
    let (mut r, mut w) = tokio::io::split(io);
    let mut buf = BytesMut::new();
    // No idle limit: an upgraded connection may rightly stay quiet for long.
    let up = async {
        send_until_eof(&mut r, &mut buf, send, None)
            .await
            .map_err(|_| ())
    };
    let down = async {
        while let Some(chunk) = recv.chunk().await {
            let chunk = chunk.map_err(|_| ())?;
            w.write_all(&chunk).await.map_err(|_| ())?;
        }
        w.shutdown().await.map_err(|_| ())
    };
    // Either side failing drops both halves, which resets the stream for the peer.
    let _ = tokio::try_join!(up, down);
}

/// The session task: owns the WebSocket, decodes and dispatches inbound frames, writes queued
/// frames, runs the heartbeat.
struct Io<S> {
    ws: WebSocketStream<S>,
    shared: Arc<Shared>,
    /// Start of a frame split across WebSocket messages.
    inbuf: BytesMut,
    hb: Heartbeat,
    tick: tokio::time::Interval,
    last_rx: Instant,
    last_ping: Instant,
    pings: u64,
    stop: Pin<Box<WaitForCancellationFutureOwned>>,
}

/// Messages read per turn before writing (keeps answers flowing under a flood of requests).
const READ_BUDGET: usize = 64;
/// Queued outbound bytes beyond which the peer counts as not reading. Data is bounded by the
/// session window (8 MiB); only heads, resets and credit could pile up past it, and only when
/// the peer stopped reading while still answering pings.
const MAX_OUTBOX: usize = 64 * 1024 * 1024;

impl<S: AsyncRead + AsyncWrite + Unpin> Io<S> {
    async fn run(mut self) {
        let result = std::future::poll_fn(|cx| self.poll_turn(cx)).await;
        let reason = match &result {
            Ok(()) => "closed locally".to_string(),
            Err(e) => e.clone(),
        };
        self.shared.fail_all(&reason);
        if result.is_ok() {
            // Tell a live peer we are going; never wait long for a dead one.
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                use futures_util::SinkExt as _;
                let _ = self.ws.send(Message::close(None, "")).await;
            })
            .await;
        }
    }

    fn feed(&mut self, payload: Bytes) -> Result<(), String> {
        let mut buf = if self.inbuf.is_empty() {
            payload
        } else {
            self.inbuf.extend_from_slice(&payload);
            self.inbuf.split().freeze()
        };
        loop {
            match Frame::decode(&mut buf) {
                Ok(Some(f)) => self.shared.dispatch(f)?,
                Ok(None) => break,
                Err(e) => return Err(protocol_error(&e)),
            }
        }
        if !buf.is_empty() {
            self.inbuf.extend_from_slice(&buf);
        }
        Ok(())
    }

    fn poll_turn(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        if self.stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        self.shared.waker.register(cx.waker());
        // Read everything available.
        let mut budget = READ_BUDGET;
        loop {
            if budget == 0 {
                cx.waker().wake_by_ref();
                break;
            }
            budget -= 1;
            match Pin::new(&mut self.ws).poll_next(cx) {
                Poll::Pending => break,
                Poll::Ready(None) => return Poll::Ready(Err("the peer closed the tunnel".into())),
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Err(format!("tunnel read failed: {e}")))
                }
                Poll::Ready(Some(Ok(msg))) => {
                    self.last_rx = Instant::now();
                    if msg.is_binary() {
                        let payload = Bytes::from(msg.into_payload());
                        self.shared
                            .rx_bytes
                            .fetch_add(payload.len() as u64, Ordering::Relaxed);
                        self.feed(payload)?;
                    } else if let Some((code, reason)) = msg.as_close() {
                        return Poll::Ready(Err(format!(
                            "the peer closed the tunnel ({}){}{reason}",
                            u16::from(code),
                            if reason.is_empty() { "" } else { ": " }
                        )));
                    } else if msg.is_text() {
                        return Poll::Ready(Err(
                            "text message inside the tunnel (expected binary frames)".into(),
                        ));
                    }
                }
            }
        }
        // Heartbeat.
        while self.tick.poll_tick(cx).is_ready() {
            let silent = self.last_rx.elapsed();
            if silent >= self.hb.interval + self.hb.timeout {
                return Poll::Ready(Err(format!(
                    "heartbeat: nothing from the peer for {} ms",
                    silent.as_millis()
                )));
            }
            if silent >= self.hb.interval && self.last_ping.elapsed() >= self.hb.interval {
                self.last_ping = Instant::now();
                self.pings += 1;
                self.shared.queue(&Frame::Ping(self.pings));
            }
        }
        // Write everything queued, one message per turn while the socket takes it.
        if lock(&self.shared.out).len() > MAX_OUTBOX {
            return Poll::Ready(Err(format!(
                "the peer stopped reading: more than {} MiB queued",
                MAX_OUTBOX >> 20
            )));
        }
        loop {
            if lock(&self.shared.out).is_empty() {
                break;
            }
            match Pin::new(&mut self.ws).poll_ready(cx) {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(Err(format!("tunnel write failed: {e}")))
                }
                Poll::Ready(Ok(())) => {}
            }
            let chunk = {
                let mut out = lock(&self.shared.out);
                let n = out.len().min(MAX_WS_MESSAGE);
                out.split_to(n).freeze()
            };
            self.shared
                .tx_bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if let Err(e) = Pin::new(&mut self.ws).start_send(Message::binary(chunk)) {
                return Poll::Ready(Err(format!("tunnel write failed: {e}")));
            }
        }
        if let Poll::Ready(Err(e)) = Pin::new(&mut self.ws).poll_flush(cx) {
            return Poll::Ready(Err(format!("tunnel write failed: {e}")));
        }
        Poll::Pending
    }
}

fn protocol_error(e: &FrameError) -> String {
    format!("protocol error from the peer: {e}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use crate::protocol::{RawRequestHead, RawResponseHead, RequestHead, ResponseHead};
    use http::{HeaderMap, HeaderValue, Method, StatusCode};

    pub(crate) const HB: Heartbeat = Heartbeat {
        interval: Duration::from_secs(30),
        timeout: Duration::from_secs(30),
    };

    /// An opener and an acceptor session joined by an in-memory WebSocket.
    pub(crate) fn pair() -> (Session, mpsc::UnboundedReceiver<Accepted>) {
        let (server_ws, client_ws) = ws_pair();
        let (opener, _) = Session::start(server_ws, Role::Opener, HB);
        let (_acceptor, accepted) = Session::start(client_ws, Role::Acceptor, HB);
        (opener, accepted.unwrap())
    }

    /// Both ends of an in-memory WebSocket (server side first).
    pub(crate) fn ws_pair() -> (
        WebSocketStream<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(256 * 1024);
        let max = Some(MAX_WS_MESSAGE);
        let server_ws = tokio_websockets::ServerBuilder::new()
            .limits(tokio_websockets::Limits::default().max_payload_len(max))
            .serve(a);
        let client_ws = tokio_websockets::ClientBuilder::new()
            .limits(tokio_websockets::Limits::default().max_payload_len(max))
            .take_over(b);
        (server_ws, client_ws)
    }

    /// Reads a stream to its end (each chunk within 5 s) and returns the byte count.
    async fn read_all(mut recv: RecvHalf, stalled: &str) -> usize {
        let mut got = 0;
        while let Some(c) = tokio::time::timeout(Duration::from_secs(5), recv.chunk())
            .await
            .expect(stalled)
        {
            got += c.unwrap().len();
        }
        got
    }

    #[tokio::test]
    async fn session_credit_comes_back_from_streams_dropped_unread() {
        let (opener, mut accepted) = pair();
        let block = Bytes::from(vec![1u8; 4 * 1024 * 1024]);
        // Three streams of 4 MiB (12 MiB > the 8 MiB session window) whose receivers are
        // dropped without reading: their credit must come back, or the fourth would hang.
        for i in 0..4 {
            let (mut send, _recv) = opener.open(Bytes::from_static(b"h"), false, false).unwrap();
            let a = tokio::time::timeout(Duration::from_secs(5), accepted.recv())
                .await
                .unwrap()
                .unwrap();
            let sender = tokio::spawn({
                let block = block.clone();
                async move { send.send_data(block, true).await }
            });
            if i < 3 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(a);
                let r = tokio::time::timeout(Duration::from_secs(5), sender)
                    .await
                    .expect("a dropped receiver must not leave the sender hanging");
                assert!(r.unwrap().is_err(), "the reset reaches the sender");
            } else {
                assert_eq!(read_all(a.recv, "session window leaked").await, block.len());
                sender.await.unwrap().unwrap();
            }
        }
        assert_eq!(opener.open_streams(), 0, "finished streams leave the table");
    }

    #[tokio::test]
    async fn a_body_upload_stops_waiting_when_the_peer_resets() {
        let (opener, mut accepted) = pair();
        let (mut send, _recv) = opener.open(Bytes::from_static(b"u"), false, false).unwrap();
        // A caller that sent its head and then nothing more, with the connection open.
        let stalled = http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<http_body::Frame<Bytes>, std::convert::Infallible>,
        >());
        let upload = tokio::spawn(async move { send_body(stalled, &mut send).await });
        let a = accepted.recv().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!upload.is_finished());
        // The agent gives up on the stream (its backend timed out, say).
        drop(a);
        let r = tokio::time::timeout(Duration::from_secs(2), upload)
            .await
            .expect("the upload must end when the peer resets the stream");
        assert!(r.unwrap().is_err());
    }

    #[tokio::test]
    async fn cancelled_resolves_on_a_peer_reset_and_on_session_close_only() {
        let (opener, mut accepted) = pair();
        let (send1, _r1) = opener.open(Bytes::from_static(b"a"), false, false).unwrap();
        let (send2, _r2) = opener.open(Bytes::from_static(b"b"), false, false).unwrap();
        let c1 = tokio::spawn(send1.cancelled_owned());
        let c2 = tokio::spawn(send2.cancelled_owned());
        let a1 = accepted.recv().await.unwrap();
        let _a2 = accepted.recv().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!c1.is_finished() && !c2.is_finished());
        // The peer abandons the first stream only.
        drop(a1);
        tokio::time::timeout(Duration::from_secs(2), c1)
            .await
            .expect("a reset must cancel the stream")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !c2.is_finished(),
            "another stream's reset cancelled this one"
        );
        opener.close("test");
        tokio::time::timeout(Duration::from_secs(2), c2)
            .await
            .expect("the session's end must cancel its streams")
            .unwrap();
        // A cancelled stream's future resolves at once when asked again.
        tokio::time::timeout(Duration::from_millis(100), send2.cancelled_owned())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_stream_that_stops_reading_does_not_stall_another() {
        let (opener, mut accepted) = pair();
        let (mut slow_send, _slow_recv) =
            opener.open(Bytes::from_static(b"s"), false, false).unwrap();
        let _slow = accepted.recv().await.unwrap();
        // Fill the slow stream's whole window; nobody reads it.
        let parked = tokio::spawn(async move {
            slow_send
                .send_data(Bytes::from(vec![0u8; 3 * STREAM_WINDOW as usize]), true)
                .await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (mut send, _recv) = opener.open(Bytes::from_static(b"f"), false, false).unwrap();
        let fast = accepted.recv().await.unwrap();
        let fast_sender = tokio::spawn(async move {
            send.send_data(Bytes::from(vec![2u8; 2 * STREAM_WINDOW as usize]), true)
                .await
        });
        let got = read_all(fast.recv, "fast stream stalled behind the slow one").await;
        assert_eq!(got, 2 * STREAM_WINDOW as usize);
        fast_sender.await.unwrap().unwrap();
        assert!(!parked.is_finished(), "the slow stream waits for credit");
    }

    #[tokio::test]
    async fn idle_session_stays_up_on_pings_and_a_silent_peer_is_dead() {
        // interval == timeout: the ping must leave well before interval + timeout of silence.
        let hb = Heartbeat {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(100),
        };
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (opener, _) = Session::start(
            tokio_websockets::ServerBuilder::new().serve(a),
            Role::Opener,
            hb,
        );
        let (acceptor, _acc) = Session::start(
            tokio_websockets::ClientBuilder::new().take_over(b),
            Role::Acceptor,
            hb,
        );
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(
            !opener.is_closed() && !acceptor.is_closed(),
            "pings keep an idle session up"
        );
        // A peer that stops answering (its session task gone, the socket kept open).
        let (c, _keep_open) = tokio::io::duplex(64 * 1024);
        let (lonely, _) = Session::start(
            tokio_websockets::ServerBuilder::new().serve(c),
            Role::Opener,
            hb,
        );
        let reason = tokio::time::timeout(Duration::from_secs(2), lonely.closed())
            .await
            .expect("a silent peer is declared dead");
        assert!(reason.contains("heartbeat"), "{reason}");
    }

    #[test]
    fn frames_round_trip_and_split_anywhere() {
        let frames = vec![
            Frame::Head {
                stream: 1,
                end: false,
                upgrade: true,
                block: Bytes::from_static(b"head"),
            },
            Frame::Data {
                stream: 1,
                end: true,
                data: Bytes::from(vec![7u8; 70_000].split_off(5_536)),
            },
            Frame::Window {
                stream: 0,
                increment: 99,
            },
            Frame::Reset {
                stream: 3,
                code: reset::CANCEL,
            },
            Frame::Ping(42),
            Frame::Pong(42),
        ];
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(&mut wire);
        }
        let wire = wire.freeze();
        for cut in [0, 1, 9, 10, 11, 20, 1000, wire.len() - 1] {
            let mut acc = BytesMut::new();
            let mut got = Vec::new();
            for part in [wire.slice(..cut), wire.slice(cut..)] {
                acc.extend_from_slice(&part);
                let mut b = acc.split().freeze();
                while let Some(f) = Frame::decode(&mut b).unwrap() {
                    got.push(f);
                }
                acc.extend_from_slice(&b);
            }
            assert_eq!(got, frames, "cut at {cut}");
        }
    }

    #[test]
    fn a_head_written_in_place_is_the_same_frame() {
        let block = crate::protocol::encode_request_head(
            "GET",
            "/x",
            [(&b"Accept"[..], &b"*/*"[..]), (b"x-long", &[b'v'; 600][..])].into_iter(),
        );
        // Written after other bytes (the outgoing buffer is rarely empty), the length field is
        // patched to the block's size: the decoder gets back exactly this frame, and no more.
        for (end, upgrade) in [(true, false), (false, true)] {
            let mut out = BytesMut::from(&b"before"[..]);
            Frame::encode_head_with(&mut out, 7, end, upgrade, |out| {
                out.extend_from_slice(&block)
            });
            out.extend_from_slice(b"after");
            let mut wire = out.freeze().slice(6..);
            let got = Frame::decode(&mut wire).unwrap();
            let want = Frame::Head {
                stream: 7,
                end,
                upgrade,
                block: block.clone(),
            };
            assert_eq!(got, Some(want));
            assert_eq!(&wire[..], b"after");
        }
    }

    #[test]
    fn oversized_and_unknown_frames_are_errors() {
        let mut b = BytesMut::new();
        b.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        b.extend_from_slice(&(MAX_FRAME_SIZE + 1).to_be_bytes());
        assert!(matches!(
            Frame::decode(&mut b.freeze()),
            Err(FrameError::TooLong { .. })
        ));
        let mut b = Bytes::from_static(&[99, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(Frame::decode(&mut b), Err(FrameError::UnknownKind(99)));
        let mut b = Bytes::from_static(&[3, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0]);
        assert!(matches!(
            Frame::decode(&mut b),
            Err(FrameError::BadLength { .. })
        ));
    }

    #[test]
    fn heads_round_trip_and_reject_garbage() {
        let mut headers = HeaderMap::new();
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        headers.insert("host", HeaderValue::from_static("svc"));
        let req = RequestHead {
            method: Method::from_bytes(b"PROPFIND").unwrap(),
            path: "/a/b?c=d".parse().unwrap(),
            headers: headers.clone(),
        };
        let enc = req.encode();
        let raw = RawRequestHead::parse(&enc).unwrap();
        assert_eq!(raw.method, b"PROPFIND");
        assert_eq!(raw.path, b"/a/b?c=d");
        let fields: Vec<(&[u8], &[u8])> = raw.fields().collect();
        let want: Vec<(&[u8], &[u8])> = req
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
            .collect();
        assert_eq!(fields, want);
        let resp = ResponseHead {
            status: StatusCode::IM_A_TEAPOT,
            headers,
        };
        let enc_resp = resp.encode();
        let raw_resp = RawResponseHead::parse(&enc_resp).unwrap();
        assert_eq!(raw_resp.status, 418);
        assert_eq!(raw_resp.fields().collect::<Vec<_>>(), want);
        for n in 0..enc.len() {
            assert!(RawRequestHead::parse(&enc[..n]).is_err(), "prefix {n}");
        }
        let mut bad = BytesMut::from(&resp.encode()[..]);
        bad[0] = 0;
        bad[1] = 5;
        assert!(RawResponseHead::parse(&bad).is_err());
    }
}
