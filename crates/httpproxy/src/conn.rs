//! One client connection: requests read one after another (pipelined ones answered in order),
//! each forwarded as an exchange, until the client closes, a timeout, a refused request, a
//! protocol switch or the drain.

use std::panic::AssertUnwindSafe;

use bytes::BytesMut;
use futures_util::FutureExt;
use http::{HeaderMap, StatusCode};
use http1::server::{read_request_head, HeadFailure, HeadLimits};
use telemetry::Capture;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::exchange::{Draft, Slot};
use crate::forward::{local_response, Client, Next, BAD_REQUEST_BODY, INTERNAL_ERROR_BODY};
use crate::proxy::{Peer, Proxy};
use crate::request::{salvaged, Inbound};

/// Bytes read from a client before its first request head is complete.
const FIRST_READ: usize = 8 * 1024;
/// How long a refused client's remaining bytes are read and dropped before the connection
/// closes, so that the answer is not lost to a reset.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

impl Proxy {
    /// Serves one client connection until it ends; a connection that switches protocols is
    /// handed to the tunnel tracker.
    pub(crate) async fn serve_connection(
        &self,
        mut tcp: TcpStream,
        peer: Peer,
        drain: CancellationToken,
    ) {
        let s = &*self.shared;
        let limits = HeadLimits {
            max_bytes: s.config.max_header_bytes,
            max_fields: s.config.max_headers,
            header_timeout: s.config.header_read_timeout,
            idle_timeout: s.config.idle_timeout,
        };
        let mut buf = BytesMut::with_capacity(FIRST_READ);
        let mut first = true;
        loop {
            let (rd, wr) = tcp.split();
            let mut c = Client {
                rd,
                wr,
                buf: std::mem::take(&mut buf),
                read_ahead: limits.max_bytes,
                answered: false,
            };
            let head = tokio::select! {
                biased;
                () = drain.cancelled(), if c.buf.is_empty() => return,
                h = read_request_head(&mut c.rd, &mut c.buf, &limits, first, |_, n| n) => h,
            };
            first = false;
            let next = match head {
                Ok(n) => {
                    let head = c.buf.split_to(n).freeze();
                    let mut slot = Slot::new(std::sync::Arc::clone(&s.sink));
                    match Inbound::parse(&head) {
                        Ok(req) => {
                            let draining = drain.is_cancelled();
                            let run = AssertUnwindSafe(
                                self.exchange(&mut c, req, &peer, &mut slot, draining),
                            )
                            .catch_unwind()
                            .await;
                            match run {
                                Ok(next) => next,
                                Err(payload) => {
                                    let msg = panic_text(payload.as_ref());
                                    drop(payload);
                                    self.recover(&mut c, &mut slot, &msg).await
                                }
                            }
                        }
                        Err(refused) => {
                            let _ = refused;
                            self.refuse(&mut c, &head, &mut slot, StatusCode::BAD_REQUEST)
                                .await
                        }
                    }
                }
                Err(HeadFailure::Closed | HeadFailure::TimedOut) => return,
                Err(HeadFailure::Malformed) => {
                    let head = c.buf.split().freeze();
                    let mut slot = Slot::new(std::sync::Arc::clone(&s.sink));
                    self.refuse(&mut c, &head, &mut slot, StatusCode::BAD_REQUEST)
                        .await
                }
                Err(HeadFailure::TooLarge) => {
                    let head = c.buf.split().freeze();
                    let mut slot = Slot::new(std::sync::Arc::clone(&s.sink));
                    self.refuse(
                        &mut c,
                        &head,
                        &mut slot,
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    )
                    .await
                }
            };
            buf = std::mem::take(&mut c.buf);
            drop(c);
            match next {
                Next::KeepAlive if !drain.is_cancelled() || !buf.is_empty() => {}
                Next::KeepAlive => return,
                Next::Close => {
                    let _ = tcp.shutdown().await;
                    return;
                }
                Next::Linger => {
                    linger(&mut tcp).await;
                    return;
                }
                Next::Upgrade(upstream, up_buf) => {
                    self.spawn_tunnel(tcp, buf, upstream, up_buf);
                    return;
                }
            }
        }
    }

    /// Answers a request that was refused before it was forwarded, and records it with what
    /// could be read of it.
    async fn refuse(
        &self,
        c: &mut Client<'_>,
        head: &[u8],
        slot: &mut Slot,
        status: StatusCode,
    ) -> Next {
        let s = &*self.shared;
        let (method, uri) = salvaged(head);
        slot.fill(Draft::bare(
            method,
            uri,
            HeaderMap::new(),
            s.config.capture_limit,
        ));
        let text: &'static str = match status {
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "431 Request Header Fields Too Large",
            _ => BAD_REQUEST_BODY,
        };
        let (bytes, headers) = local_response(false, status, text, false);
        slot.finish(
            status.as_u16(),
            headers,
            None,
            Capture::new(s.config.capture_limit),
            text.len() as u64,
        );
        let _ = c.wr.write_all(&bytes).await;
        Next::Linger
    }

    /// After a panic in an exchange: a 500 if nothing was written yet, and the record.
    async fn recover(&self, c: &mut Client<'_>, slot: &mut Slot, msg: &str) -> Next {
        let s = &*self.shared;
        s.config
            .logger
            .log(format_args!("reverse proxy panic recovered: {msg}"));
        let (bytes, headers) = local_response(
            false,
            StatusCode::INTERNAL_SERVER_ERROR,
            INTERNAL_ERROR_BODY,
            false,
        );
        slot.finish(
            500,
            headers,
            None,
            Capture::new(s.config.capture_limit),
            INTERNAL_ERROR_BODY.len() as u64,
        );
        if !c.answered {
            let _ = c.wr.write_all(&bytes).await;
        }
        Next::Close
    }

    /// Relays bytes both ways between a client and an upstream that switched protocols, until
    /// either side closes or the server shuts the tunnels.
    fn spawn_tunnel(
        &self,
        mut client: TcpStream,
        client_buf: BytesMut,
        mut upstream: TcpStream,
        up_buf: BytesMut,
    ) {
        let close = self.shared.close_tunnels.clone();
        self.shared.tunnels.spawn(async move {
            let relay = async {
                if !client_buf.is_empty() {
                    upstream.write_all(&client_buf).await?;
                }
                if !up_buf.is_empty() {
                    client.write_all(&up_buf).await?;
                }
                tokio::io::copy_bidirectional(&mut client, &mut upstream).await
            };
            tokio::select! {
                _ = relay => {}
                () = close.cancelled() => {}
            }
        });
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Closes a connection gently: stop writing, then read and drop what the client still sends for
/// a moment, so that a reset does not destroy the answer it has not read yet.
async fn linger(tcp: &mut TcpStream) {
    let _ = tcp.shutdown().await;
    let mut scratch = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = tcp.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}
