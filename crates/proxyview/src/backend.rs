//! The agent's backend side: one HTTP/1.1 exchange per tunnelled request on keep-alive
//! connections to the route's `value:port`, written and parsed here rather than by hyper.
//!
//! Why not hyper's client: the agent never needs a request or response *object*. The request
//! head arrives already parsed and checked by the server, so the agent copies its fields
//! onto the wire (see `agent::write_request_head`); the response head is parsed with httparse
//! (the parser hyper itself uses) straight into the tunnel's head encoding, and body bytes go
//! from the socket buffer into `Data` frames without a body type in between. hyper's client would
//! add a spawned connection task, a dispatcher hand-off in each direction, and a header map
//! built, filtered and serialised twice per request, about as much work again as the rest of the
//! agent's.
//!
//! Each route's connections are kept by the workspace's pool (`http1::client::Pool`, as the
//! cwproxy sidecar's): the most recently used one is taken first, one the backend closed while
//! idle is dropped, and a request that finds its reused connection closed before any answer
//! byte is sent again on a new one when it is safe to (no body, idempotent method).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::ReadHalf;
use tokio::net::TcpStream;
use tokio::time::Instant;

use tracing::warn;

use crate::mux::{self, RecvHalf, SendHalf};
use crate::protocol::{self, BACKEND_POOL_IDLE};
use http1::head::{pairs, HeadError};
use http1::{rules, HeadFields, Reader, READ_CHUNK};

/// Largest response head accepted from a backend: what the tunnel protocol carries in one head
/// ([`protocol::MAX_HEADER_LIST`]).
pub const MAX_RESPONSE_HEAD: usize = protocol::MAX_HEADER_LIST as usize;
/// Most header fields accepted in a backend response head: no count limit below the byte limit,
/// so an app that sets many cookies or links works behind the tunnel as behind cwproxy.
pub const MAX_RESPONSE_HEADERS: usize = usize::MAX;

/// Why a backend exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// TCP connect did not finish in time.
    #[error("connect to {0} timed out")]
    ConnectTimeout(String),
    /// TCP connect failed (refused, unreachable, DNS).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The backend authority.
        addr: String,
        /// The socket error.
        source: io::Error,
    },
    /// Reading or writing the connection failed.
    #[error("backend {addr}: {source}")]
    Io {
        /// The backend authority.
        addr: String,
        /// The socket error.
        source: io::Error,
    },
    /// The backend closed the connection before its response was complete.
    #[error("backend {0} closed the connection before a complete response")]
    Closed(String),
    /// The response is not valid HTTP/1.x.
    #[error("backend {addr} sent an invalid response: {what}")]
    Malformed {
        /// The backend authority.
        addr: String,
        /// What is wrong with it.
        what: &'static str,
    },
    /// No response head within the response timeout.
    #[error("backend {addr} sent no response within {timeout:?}")]
    Timeout {
        /// The backend authority.
        addr: String,
        /// The response timeout.
        timeout: Duration,
    },
}

impl BackendError {
    /// The cause as the caller may read it: each cause once, and never the backend's address
    /// (the agent's private network is none of the caller's business; the agent logs the
    /// [`Display`](std::fmt::Display) form, which names it).
    pub fn public(&self) -> String {
        match self {
            Self::ConnectTimeout(_) => "connecting to the backend timed out".into(),
            Self::Connect { source, .. } => format!("cannot connect to the backend: {source}"),
            Self::Io { source, .. } => format!("the backend connection failed: {source}"),
            Self::Closed(_) => {
                "the backend closed the connection before a complete response".into()
            }
            Self::Malformed { what, .. } => format!("the backend sent an invalid response: {what}"),
            Self::Timeout { timeout, .. } => {
                format!("the backend sent no response within {timeout:?}")
            }
        }
    }
}

/// How the request body goes to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBody {
    /// No body.
    None,
    /// Exactly this many bytes (the caller's `Content-Length`).
    Length(u64),
    /// `Transfer-Encoding: chunked` (the caller's length is not known).
    Chunked,
}

/// How one request is to be sent (its head is passed alongside, already serialised).
#[derive(Debug, Clone, Copy)]
pub struct Request {
    /// The request body's framing.
    pub body: RequestBody,
    /// A `HEAD` request (its response has no body whatever its headers say).
    pub head_method: bool,
    /// Asks for an upgrade: a `101` answer turns the connection into a byte pipe.
    pub upgrade: bool,
    /// May be sent again on a new connection if a reused one turns out closed (idempotent
    /// method, no body).
    pub retryable: bool,
    /// How long the response head may take (from when the request starts).
    pub timeout: Duration,
    /// How long the backend may send nothing in the middle of a response body before the
    /// stream is abandoned (a stalled backend must not hold the caller forever).
    pub idle: Duration,
}

/// How an exchange ended.
pub enum Outcome {
    /// The response went to the caller in full.
    Done,
    /// The backend switched protocols and its `101` went to the caller: the connection and the
    /// caller's side of the stream are to be piped together.
    Upgraded(TcpStream, RecvHalf),
}

/// Why an exchange ended without a complete response.
#[derive(Debug)]
pub enum ExchangeError {
    /// Nothing reached the caller yet: answer with an error response.
    Failed(BackendError),
    /// The response head went to the caller and then the exchange broke: the stream can only
    /// be reset.
    Broken,
}

impl From<mux::CopyError> for Attempt {
    fn from(e: mux::CopyError) -> Self {
        match e {
            mux::CopyError::Idle => Attempt::Idle,
            mux::CopyError::Broken => Attempt::Broken,
        }
    }
}

impl From<BackendError> for ExchangeError {
    fn from(e: BackendError) -> Self {
        Self::Failed(e)
    }
}

/// Keep-alive connections to one backend: the workspace's pool (`http1::client::Pool`) and the
/// exchange on top of it.
pub struct Pool {
    addr: String,
    conns: http1::client::Pool,
}

impl Pool {
    /// A pool for `addr` (`host:port`).
    pub fn new(addr: String, connect_timeout: Duration) -> Arc<Self> {
        let conns = http1::client::Pool::new(http1::client::PoolConfig {
            addr: addr.clone(),
            connect_timeout,
            tcp_keepalive: None,
            idle_timeout: BACKEND_POOL_IDLE,
            max_idle: usize::MAX,
        });
        Arc::new(Self { addr, conns })
    }

    /// Sends `head` (a complete HTTP/1.1 request head, blank line included) and the body read
    /// from `recv` as `req` says, and forwards the response to `send`: the head as soon as it
    /// is parsed, then the body as it arrives.
    pub async fn exchange(
        &self,
        head: &[u8],
        req: &Request,
        mut recv: RecvHalf,
        send: &mut SendHalf,
    ) -> Result<Outcome, ExchangeError> {
        let deadline = Instant::now() + req.timeout;
        let (mut tcp, mut reused) = match (!req.upgrade).then(|| self.take_idle()).flatten() {
            Some(tcp) => (tcp, true),
            None => (self.connect().await?, false),
        };
        loop {
            match self
                .attempt(&mut tcp, head, req, deadline, &mut recv, send)
                .await
            {
                Ok(Reuse::Yes) => {
                    self.conns.put(tcp);
                    return Ok(Outcome::Done);
                }
                Ok(Reuse::No) => return Ok(Outcome::Done),
                Ok(Reuse::Upgraded) => return Ok(Outcome::Upgraded(tcp, recv)),
                Err(Attempt::Stale(_)) if reused && req.retryable => {
                    // Closed by the backend while idle, just before we wrote: nothing was sent.
                    tcp = self.connect().await?;
                    reused = false;
                }
                Err(Attempt::Stale(e)) | Err(Attempt::Failed(e)) => {
                    return Err(ExchangeError::Failed(e))
                }
                Err(Attempt::Broken) => return Err(ExchangeError::Broken),
                Err(Attempt::Idle) => {
                    warn!(
                        backend = %self.addr,
                        idle = ?req.idle,
                        "backend sent nothing in the middle of a response body; stream reset"
                    );
                    return Err(ExchangeError::Broken);
                }
            }
        }
    }

    async fn attempt(
        &self,
        tcp: &mut TcpStream,
        head: &[u8],
        req: &Request,
        deadline: Instant,
        recv: &mut RecvHalf,
        send: &mut SendHalf,
    ) -> Result<Reuse, Attempt> {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let (mut rd, mut wr) = tcp.split();
        if let Err(e) = wr.write_all(head).await {
            return Err(Attempt::Stale(self.io(e)));
        }
        let mut upload_done = req.body == RequestBody::None;
        let upload = async {
            let delimit = match req.body {
                RequestBody::None => return Ok(()),
                RequestBody::Length(n) => http1::Framing::Length(n),
                RequestBody::Chunked => http1::Framing::Chunked,
            };
            http1::write_body(&mut wr, recv, delimit, BytesMut::new(), None).await
        };
        tokio::pin!(upload);
        let download = self.download(&mut rd, &mut buf, req, deadline, send);
        tokio::pin!(download);
        let reuse = loop {
            tokio::select! {
                r = &mut upload, if !upload_done => match r {
                    Ok(()) => upload_done = true,
                    // The caller's body broke (reset, bad length): the backend got half a request.
                    Err(_) => return Err(Attempt::Broken),
                },
                r = &mut download => break r?,
            }
        };
        Ok(match reuse {
            // A response that came before the whole request was written leaves the connection
            // mid-request; it cannot carry another one.
            Reuse::Yes if !upload_done => Reuse::No,
            r => r,
        })
    }

    /// Reads the response: its head (skipping `1xx` interim answers) within the deadline, then
    /// its body, forwarding both to `send`.
    async fn download(
        &self,
        rd: &mut ReadHalf<'_>,
        buf: &mut BytesMut,
        req: &Request,
        deadline: Instant,
        send: &mut SendHalf,
    ) -> Result<Reuse, Attempt> {
        let mut got_any = false;
        let head = loop {
            let head = tokio::time::timeout_at(deadline, async {
                loop {
                    if !buf.is_empty() {
                        if let Some(h) =
                            parse_head(buf, req).map_err(|what| self.malformed(what))?
                        {
                            return Ok(h);
                        }
                        if buf.len() >= MAX_RESPONSE_HEAD {
                            return Err(self.malformed("response head larger than 64 KiB"));
                        }
                    }
                    buf.reserve(READ_CHUNK);
                    match rd.read_buf(buf).await {
                        Ok(0) if !got_any => return Err(Attempt::Stale(self.closed())),
                        Ok(0) => return Err(Attempt::Failed(self.closed())),
                        Ok(_) => got_any = true,
                        Err(e) if !got_any => return Err(Attempt::Stale(self.io(e))),
                        Err(e) => return Err(Attempt::Failed(self.io(e))),
                    }
                }
            })
            .await
            .map_err(|_| {
                Attempt::Failed(BackendError::Timeout {
                    addr: self.addr.clone(),
                    timeout: req.timeout,
                })
            })??;
            buf.advance(head.len);
            if head.framing != Framing::Interim {
                break head;
            }
        };
        let end = head.framing == Framing::Empty;
        send.send_head(&head.block, end)
            .map_err(|_| Attempt::Broken)?;
        if head.framing == Framing::Switch {
            if !buf.is_empty() {
                let early = buf.split().freeze();
                send.send_data(early, false)
                    .await
                    .map_err(|_| Attempt::Broken)?;
            }
            return Ok(Reuse::Upgraded);
        }
        let mut body = Reader {
            rd,
            buf,
            idle: req.idle,
            tap: None,
        };
        match head.framing {
            Framing::Length(n) => body.forward_bytes(n, true, send).await?,
            Framing::Chunked => body.forward_chunked(send).await?,
            // Delimited by the backend closing the connection.
            Framing::Close => mux::send_until_eof(body.rd, body.buf, send, Some(body.idle)).await?,
            Framing::Empty | Framing::Interim | Framing::Switch => {}
        }
        // (`keep_alive` is false for a close-delimited body.) Bytes after the response that
        // nobody asked for: the connection is out of step.
        Ok(if head.keep_alive && buf.is_empty() {
            Reuse::Yes
        } else {
            Reuse::No
        })
    }

    /// An idle connection the backend has not closed, if any.
    fn take_idle(&self) -> Option<TcpStream> {
        self.conns.take_idle()
    }

    /// A new connection to the backend (connect timeout, no Nagle).
    pub async fn connect(&self) -> Result<TcpStream, BackendError> {
        self.conns.connect().await.map_err(|e| match e {
            http1::client::ConnectError::Timeout { .. } => {
                BackendError::ConnectTimeout(self.addr.clone())
            }
            http1::client::ConnectError::Io { source, .. } => BackendError::Connect {
                addr: self.addr.clone(),
                source,
            },
        })
    }

    /// Drops idle connections that timed out or that the backend closed (called periodically,
    /// so an agent without traffic does not hold backend sockets forever).
    pub fn sweep(&self) {
        self.conns.sweep();
    }

    /// The backend's `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Idle connections currently held.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether the pool holds no idle connection.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn io(&self, source: io::Error) -> BackendError {
        BackendError::Io {
            addr: self.addr.clone(),
            source,
        }
    }

    fn closed(&self) -> BackendError {
        BackendError::Closed(self.addr.clone())
    }

    fn malformed(&self, what: &'static str) -> Attempt {
        Attempt::Failed(BackendError::Malformed {
            addr: self.addr.clone(),
            what,
        })
    }
}

enum Reuse {
    Yes,
    No,
    Upgraded,
}

enum Attempt {
    /// Failed before any response byte arrived (or the head could not be written): on a reused
    /// connection, the backend had closed it.
    Stale(BackendError),
    /// Failed before the response head went to the caller.
    Failed(BackendError),
    /// Failed after it.
    Broken,
    /// The backend sent nothing for the idle timeout after the head went to the caller.
    Idle,
}

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// A `1xx` other than `101`: another head follows.
    Interim,
    /// `101` to an upgrade request.
    Switch,
    /// No body (`HEAD`, `204`, `304`, `Content-Length: 0`).
    Empty,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the backend closes.
    Close,
}

struct Head {
    /// Bytes of the head in the read buffer.
    len: usize,
    framing: Framing,
    keep_alive: bool,
    /// The head in the tunnel's encoding (hop-by-hop fields removed).
    block: BytesMut,
}

/// Parses a response head at the start of `buf`: `None` until it is complete.
fn parse_head(buf: &[u8], req: &Request) -> Result<Option<Head>, &'static str> {
    match http1::head::parse_response(buf, MAX_RESPONSE_HEADERS, |r, len| head_from(r, len, req)) {
        Ok(Some(head)) => head,
        Ok(None) => Ok(None),
        Err(HeadError::TooManyFields) => Err("response head too large"),
        Err(HeadError::Malformed) => Err("malformed response head"),
    }
}

fn head_from(
    r: &httparse::Response<'_, '_>,
    len: usize,
    req: &Request,
) -> Result<Option<Head>, &'static str> {
    let status = r.code.unwrap_or(0);
    let http11 = r.version == Some(1);
    let fields = HeadFields::read(pairs(r.headers), |_, _| {})?;
    let te = fields.has_codings();
    let length = fields.length;
    let framing = match status {
        101 if req.upgrade => Framing::Switch,
        101 => return Err("switched protocols on a request that asked for no upgrade"),
        100..=199 => Framing::Interim,
        204 | 304 => Framing::Empty,
        _ if req.head_method => Framing::Empty,
        // Only a final `chunked` delimits the body; anything after it means "until close".
        _ if fields.chunked_last => Framing::Chunked,
        _ if te => Framing::Close,
        _ => match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        },
    };
    // Both lengths on one message is a smuggling pattern: answer it, then drop the connection.
    let keep_alive = !fields.close
        && (http11 || fields.keep_alive)
        && !rules::is_ambiguous(&fields)
        && framing != Framing::Close;
    let named = fields.named(pairs(r.headers));
    let block = protocol::encode_response_head(
        status,
        r.headers
            .iter()
            .filter(|f| !rules::is_dropped(f.name.as_bytes(), &fields, &named))
            .map(|f| (f.name.as_bytes(), f.value)),
    );
    Ok(Some(Head {
        len,
        framing,
        keep_alive,
        block,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use bytes::Bytes;

    fn req(head_method: bool, upgrade: bool) -> Request {
        Request {
            body: RequestBody::None,
            head_method,
            upgrade,
            retryable: true,
            timeout: Duration::from_secs(1),
            idle: Duration::from_secs(1),
        }
    }

    fn framing(raw: &str) -> Result<Framing, &'static str> {
        parse_head(raw.as_bytes(), &req(false, false)).map(|h| h.unwrap().framing)
    }

    #[test]
    fn response_framing() {
        let ok = "HTTP/1.1 200 OK\r\n";
        assert_eq!(
            framing(&format!("{ok}content-length: 5\r\n\r\n")),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            framing(&format!("{ok}content-length: 0\r\n\r\n")),
            Ok(Framing::Empty)
        );
        assert_eq!(
            framing(&format!("{ok}transfer-encoding: gzip, chunked\r\n\r\n")),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            framing(&format!("{ok}transfer-encoding: chunked, gzip\r\n\r\n")),
            Ok(Framing::Close)
        );
        assert_eq!(framing(&format!("{ok}\r\n")), Ok(Framing::Close));
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n"),
            Ok(Framing::Empty)
        );
        assert_eq!(
            framing("HTTP/1.1 100 Continue\r\n\r\n"),
            Ok(Framing::Interim)
        );
        assert_eq!(
            framing(&format!("{ok}content-length: 5, 5\r\n\r\n")),
            Ok(Framing::Length(5))
        );
        assert!(framing(&format!(
            "{ok}content-length: 5\r\ncontent-length: 6\r\n\r\n"
        ))
        .is_err());
        assert!(framing(&format!("{ok}content-length: -1\r\n\r\n")).is_err());
        assert!(framing(&format!("{ok}content-length: 99999999999999999999\r\n\r\n")).is_err());
        assert!(framing("HTTP/1.1 101 Switching Protocols\r\n\r\n").is_err());
        let head = parse_head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
            &req(true, false),
        )
        .unwrap()
        .unwrap();
        assert_eq!(head.framing, Framing::Empty, "HEAD has no body");
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-le", &req(false, false))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn heads_with_many_fields_parse_whole() {
        let head = |n: usize| {
            let mut h = String::from("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n");
            for i in 1..n {
                h.push_str(&format!("x-f{i}: {i}\r\n"));
            }
            h + "\r\n"
        };
        let h = parse_head(head(100).as_bytes(), &req(false, false))
            .unwrap()
            .unwrap();
        let decoded = protocol::RawResponseHead::parse(&h.block).unwrap();
        let fields: Vec<_> = decoded.fields().collect();
        assert_eq!(fields.len(), 100);
        assert_eq!(fields[99], (&b"x-f99"[..], &b"99"[..]));
        let many = parse_head(head(500).as_bytes(), &req(false, false))
            .unwrap()
            .unwrap();
        let decoded = protocol::RawResponseHead::parse(&many.block).unwrap();
        assert_eq!(decoded.fields().count(), 500);
    }

    #[test]
    fn keep_alive_and_hop_by_hop() {
        let h = parse_head(
            b"HTTP/1.1 200 OK\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nX-Kept: y\r\ncontent-length: 1\r\n\r\n",
            &req(false, false),
        )
        .unwrap()
        .unwrap();
        assert!(!h.keep_alive);
        let decoded = protocol::RawResponseHead::parse(&h.block).unwrap();
        assert_eq!(decoded.status, 200);
        let fields: Vec<_> = decoded.fields().collect();
        assert_eq!(
            fields,
            [(&b"X-Kept"[..], &b"y"[..]), (b"content-length", b"1")]
        );
        let h10 = parse_head(
            b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n",
            &req(false, false),
        )
        .unwrap()
        .unwrap();
        assert!(!h10.keep_alive, "HTTP/1.0 without keep-alive closes");
        let smuggle = parse_head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
            &req(false, false),
        )
        .unwrap()
        .unwrap();
        assert_eq!(smuggle.framing, Framing::Chunked);
        assert!(!smuggle.keep_alive);
        let decoded = protocol::RawResponseHead::parse(&smuggle.block).unwrap();
        assert_eq!(decoded.fields().count(), 0);
    }

    use crate::mux;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::net::TcpListener;

    /// A backend that answers every request with `answer`; `close_after_one` closes each
    /// connection after its first answer without saying so (as a backend's idle timeout would).
    /// Requests are taken to end at a blank line, or after `0\r\n\r\n` when chunked.
    async fn backend(answer: &'static [u8], close_after_one: bool) -> (String, Arc<AtomicUsize>) {
        slow_backend(answer, close_after_one, Duration::ZERO).await
    }

    /// [`backend`] that waits `delay` before each answer.
    pub(crate) async fn slow_backend(
        answer: &'static [u8],
        close_after_one: bool,
        delay: Duration,
    ) -> (String, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let n = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                n.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        let head = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
                        let end = match head {
                            Some(h) if buf[..h].windows(7).any(|w| w == b"chunked") => buf[h..]
                                .windows(5)
                                .position(|w| w == b"0\r\n\r\n")
                                .map(|i| h + i + 5),
                            h => h,
                        };
                        if let Some(i) = end {
                            buf.drain(..i);
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            if s.write_all(answer).await.is_err() || close_after_one {
                                return;
                            }
                            continue;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    /// Sends one request through `pool` over an in-memory tunnel and returns the status and body
    /// the caller side receives.
    async fn call(
        pool: &Pool,
        head: &[u8],
        body: RequestBody,
        upload: &[&[u8]],
    ) -> Result<(u16, Vec<u8>), String> {
        let (opener, mut accepted) = mux::tests::pair();
        let (mut caller_send, mut caller_recv) = opener
            .open(Bytes::from_static(b"x"), upload.is_empty(), false)
            .unwrap();
        for (i, c) in upload.iter().enumerate() {
            caller_send
                .send_data(Bytes::copy_from_slice(c), i + 1 == upload.len())
                .await
                .unwrap();
        }
        let a = accepted.recv().await.unwrap();
        let mut send = a.send;
        let req = Request {
            body,
            head_method: false,
            upgrade: false,
            retryable: body == RequestBody::None,
            timeout: Duration::from_secs(2),
            idle: Duration::from_millis(300),
        };
        let r = pool.exchange(head, &req, a.recv, &mut send).await;
        match r {
            Ok(Outcome::Done) => {}
            Ok(Outcome::Upgraded(..)) => return Err("upgraded".into()),
            Err(ExchangeError::Failed(e)) => return Err(e.to_string()),
            Err(ExchangeError::Broken) => return Err("broken".into()),
        }
        let (block, _) = caller_recv.head().await.unwrap();
        let status = protocol::RawResponseHead::parse(&block).unwrap().status;
        let mut got = Vec::new();
        while let Some(c) = caller_recv.chunk().await {
            got.extend_from_slice(&c.unwrap());
        }
        Ok((status, got))
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: b\r\n\r\n";
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    #[tokio::test]
    async fn keep_alive_connection_is_reused() {
        let (addr, accepted) = backend(OK, false).await;
        let pool = Pool::new(addr, Duration::from_secs(2));
        for _ in 0..5 {
            assert_eq!(
                call(&pool, GET, RequestBody::None, &[]).await.unwrap(),
                (200, b"ok".to_vec())
            );
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.len(), 1);
    }

    #[tokio::test]
    async fn connection_closed_by_the_backend_is_replaced() {
        let (addr, accepted) = backend(OK, true).await;
        let pool = Pool::new(addr, Duration::from_secs(2));
        for _ in 0..3 {
            assert_eq!(
                call(&pool, GET, RequestBody::None, &[]).await.unwrap(),
                (200, b"ok".to_vec())
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        pool.sweep();
        assert!(pool.is_empty(), "closed connections are dropped");
    }

    #[tokio::test]
    async fn chunked_response_is_decoded_and_the_connection_reused() {
        let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nx-trailer: t\r\n\r\n";
        let (addr, accepted) = backend(answer, false).await;
        let pool = Pool::new(addr, Duration::from_secs(2));
        for _ in 0..2 {
            assert_eq!(
                call(&pool, GET, RequestBody::None, &[]).await.unwrap(),
                (200, b"hello!".to_vec())
            );
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn chunked_upload_reaches_the_backend_framed() {
        let answer = b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n";
        let (addr, accepted) = backend(answer, false).await;
        let pool = Pool::new(addr, Duration::from_secs(2));
        let head = b"POST / HTTP/1.1\r\nhost: b\r\ntransfer-encoding: chunked\r\n\r\n";
        for _ in 0..2 {
            let r = call(&pool, head, RequestBody::Chunked, &[b"abc", b"defg"])
                .await
                .unwrap();
            assert_eq!(r, (201, Vec::new()));
        }
        // The backend only answers once it saw the terminating chunk, and the connection is
        // reused, so the framing it read was complete and exact.
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn close_delimited_body_is_forwarded_to_eof() {
        let answer = b"HTTP/1.1 200 OK\r\n\r\nuntil the end";
        let (addr, _) = backend(answer, true).await;
        let pool = Pool::new(addr, Duration::from_secs(2));
        let r = call(&pool, GET, RequestBody::None, &[]).await.unwrap();
        assert_eq!(r, (200, b"until the end".to_vec()));
        assert!(
            pool.is_empty(),
            "a close-delimited body ends the connection"
        );
    }

    #[tokio::test]
    async fn truncated_response_breaks_the_stream() {
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort";
        let (addr, _) = backend(answer, true).await;
        let pool = Pool::new(addr, Duration::from_secs(2));
        assert_eq!(
            call(&pool, GET, RequestBody::None, &[]).await,
            Err("broken".into())
        );
        assert!(pool.is_empty());
    }

    #[tokio::test]
    async fn backend_stalled_mid_body_is_abandoned_after_the_idle_timeout() {
        // Head and 5 of 10 body bytes, then silence with the connection open.
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello";
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let _hold = tokio::spawn(async move {
            let mut keep = Vec::new();
            while let Ok((mut s, _)) = l.accept().await {
                let mut b = [0u8; 1024];
                let _ = s.read(&mut b).await;
                let _ = s.write_all(answer).await;
                keep.push(s);
            }
        });
        let pool = Pool::new(addr, Duration::from_secs(2));
        let t0 = Instant::now();
        // `call` gives the exchange a 300 ms idle timeout and a 2 s head timeout.
        let r = tokio::time::timeout(
            Duration::from_secs(3),
            call(&pool, GET, RequestBody::None, &[]),
        )
        .await
        .expect("the exchange must give up on a stalled backend");
        assert_eq!(r, Err("broken".into()));
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "{took:?}"
        );
        assert!(pool.is_empty(), "the stalled connection is not reused");
    }

    #[tokio::test]
    async fn malformed_and_silent_backends_are_errors_naming_the_backend() {
        let (addr, _) = backend(b"HTTP/1.1 abc\r\n\r\n", false).await;
        let pool = Pool::new(addr.clone(), Duration::from_secs(2));
        let e = call(&pool, GET, RequestBody::None, &[]).await.unwrap_err();
        assert!(e.contains(&addr) && e.contains("invalid response"), "{e}");

        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let _hold = tokio::spawn(async move {
            let mut keep = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                keep.push(s);
            }
        });
        let pool = Pool::new(addr.clone(), Duration::from_secs(2));
        let (opener, mut accepted) = mux::tests::pair();
        let (_caller_send, _caller_recv) =
            opener.open(Bytes::from_static(b"x"), true, false).unwrap();
        let a = accepted.recv().await.unwrap();
        let mut send = a.send;
        let req = Request {
            body: RequestBody::None,
            head_method: false,
            upgrade: false,
            retryable: true,
            timeout: Duration::from_millis(200),
            idle: Duration::from_secs(1),
        };
        match pool.exchange(GET, &req, a.recv, &mut send).await {
            Err(ExchangeError::Failed(e @ BackendError::Timeout { .. })) => {
                assert!(e.to_string().contains(&addr), "{e}")
            }
            _ => panic!("expected a timeout"),
        }
    }

    #[tokio::test]
    async fn refused_connect_is_a_connect_error() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let pool = Pool::new(addr.clone(), Duration::from_secs(2));
        let e = call(&pool, GET, RequestBody::None, &[]).await.unwrap_err();
        assert!(e.starts_with(&format!("cannot connect to {addr}")), "{e}");
    }
}
