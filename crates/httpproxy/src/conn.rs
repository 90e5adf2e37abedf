//! One client connection: requests read one after another (pipelined ones answered in order),
//! each forwarded as an exchange, until the client closes, a timeout, a refused request, a
//! protocol switch or the drain.

use std::panic::AssertUnwindSafe;

use bytes::{Buf, Bytes, BytesMut};
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
        let mut up_buf = BytesMut::new();
        let mut first = true;
        loop {
            let (rd, wr) = tcp.split();
            let mut c = Client {
                rd,
                wr,
                buf: std::mem::take(&mut buf),
                read_ahead: limits.max_bytes,
                up_buf: std::mem::take(&mut up_buf),
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
                    // A copy the size of the head: the record keeps its fields until the
                    // telemetry thread has written it, and a slice would pin the connection's
                    // whole read buffer that long (and make the next read allocate a new one).
                    let head = Bytes::copy_from_slice(&c.buf[..n]);
                    c.buf.advance(n);
                    match Inbound::parse(&head) {
                        Ok(req) => {
                            let mut slot = Slot::new(std::sync::Arc::clone(&s.sink));
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
                        Err(_) => self.refuse(&mut c, &head, StatusCode::BAD_REQUEST).await,
                    }
                }
                Err(HeadFailure::Closed | HeadFailure::TimedOut) => return,
                Err(failure) => {
                    let status = if failure == HeadFailure::TooLarge {
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
                    } else {
                        StatusCode::BAD_REQUEST
                    };
                    let head = c.buf.split();
                    self.refuse(&mut c, &head, status).await
                }
            };
            buf = std::mem::take(&mut c.buf);
            up_buf = std::mem::take(&mut c.up_buf);
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
    async fn refuse(&self, c: &mut Client<'_>, head: &[u8], status: StatusCode) -> Next {
        let s = &*self.shared;
        let mut slot = Slot::new(std::sync::Arc::clone(&s.sink));
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
        let (bytes, headers) = local_response(false, status, text);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::retry::RetryPolicy;
    use crate::{ProxyConfig, Upstream, INTERNAL_ERROR_BODY as INTERNAL_ERROR_TEXT};
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::Mutex as StdMutex;
    use std::time::Duration;
    use telemetry::diag::Diag;
    use telemetry::Exchange;

    /// Time a test may wait for a condition.
    const TEST_WAIT: Duration = Duration::from_secs(10);
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn ok_upstream() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut got = Vec::new();
                    loop {
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                        while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            got.drain(..end + 4);
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn panic_becomes_500_and_server_keeps_serving() {
        let up = ok_upstream().await;
        let seen: Arc<StdMutex<Vec<Exchange>>> = Arc::default();
        let logs: Arc<StdMutex<Vec<String>>> = Arc::default();
        let mut cfg = ProxyConfig::new(Upstream::Addr(up));
        cfg.retry = RetryPolicy::disabled();
        let l2 = logs.clone();
        cfg.logger = Diag::with_target(
            crate::LOG_PREFIX,
            Arc::new(move |line: &str| {
                let msg = line.split_once(": ").map_or(line, |(_, m)| m);
                l2.lock()
                    .unwrap()
                    .push(msg.trim_end_matches('\n').to_owned());
            }),
        );
        let s2 = seen.clone();
        let proxy =
            Proxy::new(cfg, Arc::new(move |e: Exchange| s2.lock().unwrap().push(e))).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            proxy
                .serve(listener, async {
                    let _ = rx.await;
                })
                .await
        });

        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(
            b"GET /boom HTTP/1.1\r\nHost: x\r\nX-Test-Panic: 1\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut out = String::new();
        tokio::time::timeout(TEST_WAIT, c.read_to_string(&mut out))
            .await
            .unwrap()
            .unwrap();
        assert!(out.starts_with("HTTP/1.1 500"), "{out}");
        assert!(out.ends_with("\r\n\r\nInternal Server Error\n"), "{out}");
        assert!(out
            .to_ascii_lowercase()
            .contains("content-type: text/plain; charset=utf-8"));

        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /fine HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tokio::time::timeout(TEST_WAIT, c.read_to_string(&mut out))
            .await
            .unwrap()
            .unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.ends_with("ok"), "{out}");

        tokio::time::sleep(Duration::from_millis(100)).await;
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].status, 500);
        assert_eq!(seen[0].uri.path(), "/boom");
        assert_eq!(
            seen[0].local_response_bytes,
            INTERNAL_ERROR_TEXT.len() as u64
        );
        assert_eq!(seen[1].status, 200);
        assert!(logs
            .lock()
            .unwrap()
            .iter()
            .any(|l| l == "reverse proxy panic recovered: test panic requested"));
        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
