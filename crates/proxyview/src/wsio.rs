//! A WebSocket seen as a byte stream: binary message payloads concatenated, so HTTP/2 can run on it.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_websockets::{Message, WebSocketStream};

use crate::protocol::MAX_WS_MESSAGE;

/// Adapts a [`WebSocketStream`] to [`AsyncRead`] + [`AsyncWrite`]; each write becomes one binary
/// message, reads yield binary payloads in order. Pings are answered by the WebSocket layer; a
/// Close or end of stream reads as EOF; a text message mid-tunnel is a protocol error.
pub struct WsIo<S> {
    ws: WebSocketStream<S>,
    pending: Bytes,
    closing: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// How long a shutdown may spend flushing to a peer that does not read (a dead peer).
pub const SHUTDOWN_FLUSH_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

impl<S> WsIo<S> {
    /// Wraps an established WebSocket whose control exchange (Hello/HelloAck) is done.
    pub fn new(ws: WebSocketStream<S>) -> Self {
        Self {
            ws,
            pending: Bytes::new(),
            closing: None,
        }
    }
}

fn ws_err(e: tokio_websockets::Error) -> io::Error {
    match e {
        tokio_websockets::Error::Io(e) => e,
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(ws_err(e))),
                Some(Ok(msg)) => {
                    if msg.is_binary() {
                        self.pending = Bytes::from(msg.into_payload());
                    } else if msg.is_close() {
                        return Poll::Ready(Ok(()));
                    } else if msg.is_text() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "text message inside the tunnel (expected binary HTTP/2 bytes)",
                        )));
                    }
                    // Ping/Pong: the WebSocket layer already queued the Pong; keep reading.
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(ws_err)?;
        let n = buf.len().min(MAX_WS_MESSAGE);
        Pin::new(&mut self.ws)
            .start_send(Message::binary(Bytes::copy_from_slice(&buf[..n])))
            .map_err(ws_err)?;
        Poll::Ready(Ok(n))
    }

    /// HTTP/2 writes a frame head and its payload as separate slices; gathering them into one
    /// message halves the WebSocket frames (and masking passes) per DATA frame.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(ws_err)?;
        let total: usize = bufs
            .iter()
            .map(|b| b.len())
            .sum::<usize>()
            .min(MAX_WS_MESSAGE);
        let mut out = bytes::BytesMut::with_capacity(total);
        for b in bufs {
            let room = total - out.len();
            if room == 0 {
                break;
            }
            out.extend_from_slice(&b[..b.len().min(room)]);
        }
        Pin::new(&mut self.ws)
            .start_send(Message::binary(out.freeze()))
            .map_err(ws_err)?;
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(ws_err)
    }

    /// Sends a Close frame and shuts the TCP write side without waiting for the peer's Close:
    /// the WebSocket layer's own close reads until the peer answers, which hangs forever on the
    /// dead peer a heartbeat timeout has just detected. Flushing is bounded for the same reason.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.closing.is_none() {
            self.closing = Some(Box::pin(tokio::time::sleep(SHUTDOWN_FLUSH_LIMIT)));
            if let Poll::Ready(Ok(())) = Pin::new(&mut self.ws).poll_ready(cx) {
                let _ = Pin::new(&mut self.ws).start_send(Message::close(None, ""));
            }
        }
        if Pin::new(&mut self.ws).poll_flush(cx).is_pending() {
            let expired = self
                .closing
                .as_mut()
                .is_some_and(|t| t.as_mut().poll(cx).is_ready());
            if !expired {
                return Poll::Pending;
            }
        }
        Pin::new(self.ws.get_mut()).poll_shutdown(cx)
    }
}

/// Reads the next text message (a control message), skipping pings; a Close, a binary message or
/// end of stream is an error carrying the peer's close reason when there is one.
pub async fn read_control<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
) -> Result<String, String> {
    use futures_util::StreamExt;
    loop {
        match ws.next().await {
            None => return Err("connection closed before the control message".into()),
            Some(Err(e)) => return Err(format!("WebSocket error: {e}")),
            Some(Ok(m)) => {
                if let Some(t) = m.as_text() {
                    return Ok(t.to_string());
                }
                if let Some((code, reason)) = m.as_close() {
                    return Err(format!(
                        "peer closed the tunnel ({}): {reason}",
                        u16::from(code)
                    ));
                }
                if m.is_binary() {
                    return Err("binary message where a control message was expected".into());
                }
            }
        }
    }
}

/// Sends one text control message and flushes it.
pub async fn send_control<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    text: String,
) -> Result<(), String> {
    use futures_util::SinkExt;
    ws.send(Message::text(text))
        .await
        .map_err(|e| format!("cannot send control message: {e}"))
}

/// Sends a Close with `code` and `reason` (best effort: the peer may be gone already).
pub async fn close_with<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    code: u16,
    reason: &str,
) {
    use futures_util::SinkExt;
    if let Ok(code) = tokio_websockets::CloseCode::try_from(code) {
        let _ = ws.send(Message::close(Some(code), reason)).await;
    }
    let _ = ws.close().await;
}
