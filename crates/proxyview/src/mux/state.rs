//! A session's state, shared by its task and its streams: the stream table, the outgoing
//! buffer every stream appends encoded frames to, the session's send credit and receive
//! budget, and how each inbound frame changes them ([`Shared::dispatch`]).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::stream::{Inbound, StreamShared};
use super::{lock, Accepted, OnAccept, RecvHalf, Role, SendHalf, StreamError};
use crate::protocol::{reset, Frame, MAX_CONCURRENT_STREAMS, WINDOW_UPDATE_THRESHOLD};

pub(super) struct Entry {
    pub(super) stream: Arc<StreamShared>,
    pub(super) recv_done: bool,
    pub(super) send_done: bool,
    /// The local receiver went away while this end still sends: the peer's data is dropped,
    /// and the stream is reset once our side has ended (so the peer stops sending).
    pub(super) recv_discarded: bool,
}

impl Drop for Entry {
    /// Leaving the table means no frame will arrive any more: the receiver sees the end.
    fn drop(&mut self) {
        self.stream.inbox.close();
    }
}

pub(super) struct Streams {
    pub(super) map: HashMap<u32, Entry, BuildHasherDefault<IdHasher>>,
    /// Set (under this lock) when the session ends, so no stream is added afterwards.
    pub(super) closed: bool,
}

impl Streams {
    /// The peer's direction of `id` ended; the entry goes if ours has too.
    pub(super) fn peer_ended(&mut self, id: u32) {
        if let Some(e) = self.map.get_mut(&id) {
            e.recv_done = true;
            if e.send_done {
                self.map.remove(&id);
            }
        }
    }
}

pub(super) struct Shared {
    pub(super) role: Role,
    pub(super) out: Mutex<BytesMut>,
    pub(super) waker: AtomicWaker,
    pub(super) streams: Mutex<Streams>,
    pub(super) conn_credit: Semaphore,
    /// Session-level receive budget: data the peer may still send before we return credit.
    pub(super) recv_budget: AtomicI64,
    /// Consumed bytes whose session credit has not been returned yet.
    pub(super) conn_pending: AtomicU32,
    pub(super) next_id: AtomicU32,
    pub(super) closed: CancellationToken,
    pub(super) reason: OnceLock<Arc<str>>,
    /// Where the acceptor's new streams go; dropped when the session ends.
    pub(super) accept: Mutex<Option<OnAccept>>,
    /// Tunnel bytes written and read (WebSocket payloads), for the operator page.
    pub(super) tx_bytes: AtomicU64,
    pub(super) rx_bytes: AtomicU64,
}

impl Shared {
    pub(super) fn queue(&self, frame: &Frame) {
        self.queue_with(|out| frame.encode(out));
    }

    /// Appends what `encode` writes to the outgoing buffer (under its lock: `encode` must only
    /// write) and wakes the session task to send it.
    pub(super) fn queue_with(&self, encode: impl FnOnce(&mut BytesMut)) {
        encode(&mut lock(&self.out));
        self.waker.wake();
    }

    pub(super) fn closed_error(&self) -> StreamError {
        StreamError::SessionClosed(
            self.reason
                .get()
                .cloned()
                .unwrap_or_else(|| Arc::from("closed")),
        )
    }

    /// Marks our direction of `id` finished; the entry goes when the peer's is too. (The peer's
    /// end is marked by the session task as the frame arrives: [`Streams::peer_ended`].)
    pub(super) fn finish_send(&self, id: u32) {
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
    pub(super) fn discard_recv(&self, id: u32) {
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
    pub(super) fn reset(&self, id: u32, code: u8) {
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
    pub(super) fn conn_consumed(&self, n: u32) {
        if n == 0 {
            return;
        }
        let total = self.conn_pending.fetch_add(n, Ordering::AcqRel) + n;
        if total >= WINDOW_UPDATE_THRESHOLD {
            self.flush_conn_credit();
        }
    }

    pub(super) fn flush_conn_credit(&self) {
        let t = self.conn_pending.swap(0, Ordering::AcqRel);
        if t > 0 {
            self.recv_budget.fetch_add(i64::from(t), Ordering::AcqRel);
            self.queue(&Frame::Window {
                stream: 0,
                increment: t,
            });
        }
    }

    pub(super) fn fail_all(&self, reason: &str) {
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

    pub(super) fn dispatch(self: &Arc<Self>, frame: Frame) -> Result<(), String> {
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

pub(super) fn accept(shared: &Arc<Shared>, stream: u32, end: bool, upgrade: bool, block: Bytes) {
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

/// Hasher for the stream map. Its keys are stream ids from a counter (ours, or the
/// authenticated peer's), so SipHash's defence against chosen keys buys nothing while it would
/// be a visible share of each frame's cost; a multiplicative hash spreads sequential ids evenly.
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
