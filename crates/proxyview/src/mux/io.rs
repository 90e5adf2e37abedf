//! The session task: the one owner of the WebSocket. Each turn it reads every message
//! available (up to a budget), decodes the frames and dispatches them, runs the heartbeat, then
//! writes everything the streams queued since its last turn as one WebSocket message.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tokio_websockets::{Message, WebSocketStream};

use super::state::Shared;
use super::{lock, Heartbeat};
use crate::protocol::{Frame, FrameError, MAX_WS_MESSAGE};

/// The session task: owns the WebSocket, decodes and dispatches inbound frames, writes queued
/// frames, runs the heartbeat.
pub(super) struct Io<S> {
    pub(super) ws: WebSocketStream<S>,
    pub(super) shared: Arc<Shared>,
    /// Start of a frame split across WebSocket messages.
    pub(super) inbuf: BytesMut,
    pub(super) hb: Heartbeat,
    pub(super) tick: tokio::time::Interval,
    pub(super) last_rx: Instant,
    pub(super) last_ping: Instant,
    pub(super) pings: u64,
    pub(super) stop: Pin<Box<WaitForCancellationFutureOwned>>,
}

/// Messages read per turn before writing (keeps answers flowing under a flood of requests).
pub(super) const READ_BUDGET: usize = 64;
/// Queued outbound bytes beyond which the peer counts as not reading. Data is bounded by the
/// session window (8 MiB); only heads, resets and credit could pile up past it, and only when
/// the peer stopped reading while still answering pings.
pub(super) const MAX_OUTBOX: usize = 64 * 1024 * 1024;

impl<S: AsyncRead + AsyncWrite + Unpin> Io<S> {
    pub(super) async fn run(mut self) {
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

    pub(super) fn feed(&mut self, payload: Bytes) -> Result<(), String> {
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

    pub(super) fn poll_turn(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
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

pub(super) fn protocol_error(e: &FrameError) -> String {
    format!("protocol error from the peer: {e}")
}
