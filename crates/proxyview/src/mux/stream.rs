//! One stream's two halves and what they share with the session task: the frames that arrived
//! for it (a [`Mailbox`] the session fills and the receiver drains) and the send credit the peer
//! granted. A half dropped before its end resets the stream; credit comes back to the peer only
//! as the consumer takes the bytes.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::{Notify, Semaphore};

use super::mailbox::Mailbox;
use super::state::Shared;
use super::{CopyError, StreamError};
use crate::protocol::{reset, Frame, MAX_FRAME_SIZE, STREAM_WINDOW, WINDOW_UPDATE_THRESHOLD};

pub(super) enum Inbound {
    Head { block: Bytes, end: bool },
    Data { data: Bytes, end: bool },
    Reset(u8),
}

/// What the session task and a stream's two halves share: the frames that arrived for the
/// stream, and the send credit the peer granted, in one allocation per stream.
pub(super) struct StreamShared {
    pub(super) inbox: Mailbox<Inbound>,
    pub(super) credit: Semaphore,
    /// Set when the stream is reset (either end) or the session ends; `cancel` wakes the
    /// waiters. A flag rather than a child `CancellationToken`, whose tree node and locks under
    /// the session's token cost more than the rest of a stream's cancellation.
    pub(super) cancelled: AtomicBool,
    pub(super) cancel: Notify,
}

impl StreamShared {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            inbox: Mailbox::default(),
            credit: Semaphore::new(STREAM_WINDOW as usize),
            cancelled: AtomicBool::new(false),
            cancel: Notify::new(),
        })
    }

    pub(super) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.cancel.notify_waiters();
    }

    pub(super) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Resolves once [`Self::cancel`] has run.
    pub(super) async fn cancelled(&self) {
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

/// Sending side of a stream.
pub struct SendHalf {
    pub(super) id: u32,
    pub(super) shared: Arc<Shared>,
    pub(super) stream: Arc<StreamShared>,
    pub(super) done: bool,
}

impl SendHalf {
    pub(super) fn error(&self) -> StreamError {
        if self.shared.closed.is_cancelled() {
            self.shared.closed_error()
        } else {
            StreamError::Reset(reset::CANCEL)
        }
    }

    /// Resets the stream because its body source failed; the error to return for it.
    pub(super) fn broken(&mut self, why: &'static str) -> StreamError {
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
    pub(super) id: u32,
    pub(super) shared: Arc<Shared>,
    pub(super) stream: Arc<StreamShared>,
    /// Peer's direction finished (or failed): nothing more to read.
    pub(super) ended: bool,
    /// Ended by a reset or session failure rather than by `end`.
    pub(super) failed: bool,
    pub(super) head_seen: bool,
    pub(super) pending_credit: u32,
}

impl RecvHalf {
    pub(super) fn new(
        id: u32,
        shared: Arc<Shared>,
        stream: Arc<StreamShared>,
        ended: bool,
    ) -> Self {
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

    pub(super) fn consumed(&mut self, n: u32) {
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
