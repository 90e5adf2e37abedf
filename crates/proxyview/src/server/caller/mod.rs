//! The external port: callers' HTTP/1.1 connections, read and written here rather than by
//! hyper's server.
//!
//! Why: the server only moves a request head into the tunnel and the agent's response head
//! back out. The request is parsed by httparse straight into the tunnel's head encoding, and the
//! agent's head is checked and written to the caller as it came, with the body framing, `Date`
//! and `Connection` fields this hop owns; a general server would build and re-serialise a header
//! map each way.
//!
//! What the port keeps from hyper: keep-alive and pipelining (requests are answered one after
//! the other, in order), `Expect: 100-continue`, length and chunked request bodies, chunked or
//! close-delimited responses of unknown length, HTTP/1.0 callers, upgrades, the header-read
//! timeout (also the keep-alive idle limit, as in hyper), 400 and 431 for bad or oversized heads,
//! and graceful drain. Ambiguous framing (both `Transfer-Encoding` and `Content-Length`, a coding
//! other than a final `chunked`, conflicting lengths) is refused with 400: the request-smuggling
//! patterns of RFC 9112 §6.3.
//!
//! The port's parts, each depending only on those after it:
//! - this module: the connection loop (keep-alive, pipelining, header timeout, drain, upgrade);
//! - [`forward`]: one exchange through the tunnel, from the request body to the response's end;
//! - [`request`]: one request head, from bytes to a routed, opened tunnel stream;
//! - [`local`]: answers the port writes itself, and the lingering close;
//! - [`log`]: the access-log context of a request.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tracing::debug;

use crate::mux;
use crate::server::state::Server;
use forward::Next;
use http1::{SendLimit, READ_CHUNK};
use local::{finish_with, linger_close, refused};
use request::{parse_request, Step, MAX_REQUEST_HEAD};

mod forward;
mod local;
mod log;
mod request;

pub use local::LEGACY_404_BODY;
pub use log::CLIENT_CLOSED;

/// A caller's connection: plain TCP, or TLS over it. Split into halves for the duration of one
/// exchange: TCP's borrowed halves cost nothing; TLS has one state for both directions, so its
/// halves share it through tokio's split (an uncontended lock per poll).
pub(super) trait CallerIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The connection is TLS (the agent then sends `X-Forwarded-Proto: https`).
    const TLS: bool;
    /// Read half for one exchange.
    type Rd<'a>: AsyncRead + Unpin + Send
    where
        Self: 'a;
    /// Write half for one exchange.
    type Wr<'a>: AsyncWrite + Unpin + Send
    where
        Self: 'a;
    /// Both halves, borrowed.
    fn halves(&mut self) -> (Self::Rd<'_>, Self::Wr<'_>);
}

impl CallerIo for TcpStream {
    const TLS: bool = false;
    type Rd<'a> = tokio::net::tcp::ReadHalf<'a>;
    type Wr<'a> = tokio::net::tcp::WriteHalf<'a>;
    fn halves(&mut self) -> (Self::Rd<'_>, Self::Wr<'_>) {
        self.split()
    }
}

impl CallerIo for tokio_rustls::server::TlsStream<TcpStream> {
    const TLS: bool = true;
    type Rd<'a> = tokio::io::ReadHalf<&'a mut Self>;
    type Wr<'a> = tokio::io::WriteHalf<&'a mut Self>;
    fn halves(&mut self) -> (Self::Rd<'_>, Self::Wr<'_>) {
        tokio::io::split(self)
    }
}

impl Server {
    /// Serves one caller connection until it closes, fails, times out, upgrades, or the server
    /// drains.
    pub(super) async fn serve_caller<S: CallerIo>(self: Arc<Self>, mut tcp: S, peer: SocketAddr) {
        let peer_ip = peer.ip().to_string();
        let mut buf = BytesMut::with_capacity(8 * 1024);
        let mut stopping = self.stopping.subscribe();
        // One timer per connection for each limit, re-armed per request: creating and dropping
        // a timer per request would cost more than the rest of the request head's handling.
        let header_timer = tokio::time::sleep(self.cfg.header_read_timeout);
        let response_timer = tokio::time::sleep(self.cfg.response_timeout);
        tokio::pin!(header_timer, response_timer);
        loop {
            // A complete head from the buffer, reading more as needed.
            // Later than the last deadline, so resetting costs no timer-wheel update.
            header_timer
                .as_mut()
                .reset(tokio::time::Instant::now() + self.cfg.header_read_timeout);
            let (step, len) = loop {
                if !buf.is_empty() {
                    match parse_request(&buf, |req, len| {
                        (
                            self.prepare(req, peer, &peer_ip, buf.len() - len, S::TLS),
                            len,
                        )
                    }) {
                        Ok(Some(x)) => break x,
                        Ok(None) if buf.len() < MAX_REQUEST_HEAD => {}
                        Ok(None) => {
                            let r = refused(
                                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                                "request head larger than 256 KiB",
                            );
                            return finish_with(tcp, &r, self.cfg.send_timeout).await;
                        }
                        Err(r) => return finish_with(tcp, &r, self.cfg.send_timeout).await,
                    }
                }
                if *stopping.borrow() && buf.is_empty() {
                    return;
                }
                buf.reserve(READ_CHUNK);
                let read = tokio::select! {
                    r = tcp.read_buf(&mut buf) => Ok(r),
                    () = header_timer.as_mut() => Err(()),
                    // Idle between requests: close now rather than at the end of the drain.
                    () = async { let _ = stopping.wait_for(|s| *s).await; }, if buf.is_empty() => return,
                };
                match read {
                    Ok(Ok(n)) if n > 0 => {}
                    Ok(Ok(_)) | Ok(Err(_)) => return,
                    Err(_) => {
                        debug!(%peer, "no complete request head within the header read timeout");
                        return;
                    }
                }
            };
            buf.advance(len);
            match step {
                Step::Answer {
                    bytes,
                    skip,
                    keep_alive,
                } => {
                    let mut wr = SendLimit::new(&mut tcp, self.cfg.send_timeout);
                    if wr.write_all(&bytes).await.is_err() {
                        return;
                    }
                    // `prepare` kept the connection only with the unread body all here.
                    if !keep_alive || skip > buf.len() {
                        return linger_close(tcp).await;
                    }
                    buf.advance(skip);
                }
                Step::Forward(fwd) => match self
                    .forward(&mut tcp, &mut buf, *fwd, response_timer.as_mut())
                    .await
                {
                    Next::KeepAlive => {}
                    Next::Close => return linger_close(tcp).await,
                    Next::Upgrade(mut send, recv) => {
                        if !buf.is_empty()
                            && send.send_data(buf.split().freeze(), false).await.is_err()
                        {
                            return;
                        }
                        // Not tracked by the drain: a WebSocket may stay open for hours, and
                        // the agent side ends it when the session goes.
                        tokio::spawn(async move { mux::pipe(tcp, &mut send, recv).await });
                        return;
                    }
                },
            }
        }
    }
}
