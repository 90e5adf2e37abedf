//! The external port: callers' HTTP/1.1 connections, read and written here rather than by
//! hyper's server.
//!
//! Why: the server only moves a request head into the tunnel and the agent's response head
//! back out. The request is parsed by httparse straight into the tunnel's head encoding, and the
//! agent's head is checked and written to the caller as it came, with the body framing, `Date`
//! and `Connection` fields this hop owns; a general server would build and re-serialise a header
//! map each way (cost figures: `bench/proxyview/README.md`).
//!
//! What the port keeps from hyper: keep-alive and pipelining (requests are answered one after
//! the other, in order), `Expect: 100-continue`, length and chunked request bodies, chunked or
//! close-delimited responses of unknown length, HTTP/1.0 callers, upgrades, the header-read
//! timeout (also the keep-alive idle limit, as in hyper), 400 and 431 for bad or oversized heads,
//! and graceful drain. Ambiguous framing (both `Transfer-Encoding` and `Content-Length`, a coding
//! other than a final `chunked`, conflicting lengths) is refused with 400: the request-smuggling
//! patterns of RFC 9112 §6.3.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use telemetry::{Capture, Exchange};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tracing::debug;

use super::state::Server;
use crate::access_log::CAPTURE_LIMIT;
use crate::access_log::{AccessRecord, AccessSink};
use crate::auth::{bearer_token, logged_headers, presented_token, trusted_proxy, Credentials};
use crate::host;
use crate::http_util;
use crate::mux::{self, RecvHalf, SendHalf};
use crate::protocol::{self, RawResponseHead};
use crate::router::Session;
use crate::stats::Probe;
use http1::head::{date_field, pairs, parse_request as parse_head, status_line, HeadError};
use http1::{
    put_field, rules, CopyError, Framing as Delimit, HeadFields, Reader, SendLimit, READ_CHUNK,
};

/// Proxyview's exact error page, used for every failure in legacy mode.
pub const LEGACY_404_BODY: &str = "Resource was not found.";

/// What the server remembers about a request until its log record is written.
struct LogCtx {
    sink: Arc<dyn AccessSink>,
    done: bool,
    start: SystemTime,
    t0: Instant,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    request: Arc<Mutex<Capture>>,
    endpoint: Option<String>,
    client_id: Option<String>,
    session: Option<u64>,
    tls: bool,
}

impl LogCtx {
    fn served_by(mut self, s: &Session) -> Self {
        self.client_id = Some(s.client_id.clone());
        self.session = Some(s.id);
        self
    }

    fn record(
        mut self,
        status: u16,
        response_headers: HeaderMap,
        response_body: Option<Capture>,
        local: u64,
    ) -> AccessRecord {
        self.take_record(status, response_headers, response_body, local)
    }

    fn take_record(
        &mut self,
        status: u16,
        response_headers: HeaderMap,
        response_body: Option<Capture>,
        local: u64,
    ) -> AccessRecord {
        self.done = true;
        let request_body =
            std::mem::take(&mut *self.request.lock().unwrap_or_else(|p| p.into_inner()));
        AccessRecord {
            exchange: Exchange {
                start: self.start,
                end: SystemTime::now(),
                elapsed: self.t0.elapsed(),
                method: self.method.clone(),
                uri: std::mem::take(&mut self.uri),
                tls: self.tls,
                request_headers: std::mem::take(&mut self.headers),
                request_body,
                status,
                response_headers,
                response_body,
                local_response_bytes: local,
                endpoint: Some(self.endpoint.take().unwrap_or_else(|| "unmatched".into())),
                client_id: self.client_id.clone(),
            },
            client_id: self.client_id.take(),
            session: self.session,
        }
    }
}

/// Status logged when the caller went away before a response head was sent (nginx's convention,
/// as cwproxy logs it).
pub const CLIENT_CLOSED: u16 = 499;

impl Drop for LogCtx {
    fn drop(&mut self) {
        if !self.done {
            let rec = self.take_record(CLIENT_CLOSED, HeaderMap::new(), None, 0);
            self.sink.emit(rec);
        }
    }
}

/// Largest request head accepted: 256 KiB, the read buffer hyper's server used, so callers that
/// worked through the hyper-based port still fit.
pub const MAX_REQUEST_HEAD: usize = 256 * 1024;
/// Most header fields accepted in a request head (hyper's default).
pub const MAX_REQUEST_HEADERS: usize = 100;

/// How a request's body follows its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    None,
    Length(u64),
    Chunked,
}

/// A request head's framing and connection fields, read in one pass.
/// What the server needs from a request head's fields besides routing, read in one pass.
#[derive(Debug)]
struct Framing {
    fields: HeadFields,
    expect_continue: bool,
    /// `Authorization` carries a bearer token.
    bearer: bool,
    /// An `auth-token` field is present (then it is the proxy token, and a bearer
    /// `Authorization` is the backend's).
    legacy_token: bool,
}

/// Why a head is refused before it is routed (answered, then the connection is closed).
struct Refused {
    status: StatusCode,
    msg: &'static str,
}

impl Framing {
    fn read(fields: &[httparse::Header<'_>]) -> Result<Self, Refused> {
        let bad = |msg| Refused {
            status: StatusCode::BAD_REQUEST,
            msg,
        };
        let (mut expect_continue, mut bearer, mut legacy_token) = (false, false, false);
        let f = HeadFields::read(pairs(fields), |name, value| {
            if name.eq_ignore_ascii_case(b"expect") {
                expect_continue = value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
            } else if name.eq_ignore_ascii_case(b"authorization") {
                bearer = bearer_token(value).is_some();
            } else if name.eq_ignore_ascii_case(protocol::AUTH_TOKEN_HEADER.as_str().as_bytes()) {
                legacy_token = true;
            }
        })
        .map_err(bad)?;
        rules::check_request_framing(&f).map_err(bad)?;
        Ok(Self {
            fields: f,
            expect_continue,
            bearer,
            legacy_token,
        })
    }

    fn body(&self) -> BodyKind {
        match self.fields.length {
            _ if self.fields.only_chunked() => BodyKind::Chunked,
            None | Some(0) => BodyKind::None,
            Some(n) => BodyKind::Length(n),
        }
    }
}

/// What to do with one parsed request (owned: the read buffer is free again).
enum Step {
    /// Answer locally with these bytes (a complete response).
    Answer {
        bytes: BytesMut,
        /// Bytes of unread request body to skip before the next request (when kept alive).
        skip: usize,
        keep_alive: bool,
    },
    /// The request went into a tunnel stream.
    Forward(Box<Forward>),
}

/// A request on its way through the tunnel.
struct Forward {
    send: SendHalf,
    recv: RecvHalf,
    session: Arc<Session>,
    body: BodyKind,
    keep_alive: bool,
    http10: bool,
    expect_continue: bool,
    head_method: bool,
    upgrade: Option<String>,
    log: Option<LogCtx>,
    probe: Probe,
}

/// Why the caller's side of an exchange stopped being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallerSide {
    /// The request body could not be sent up (the caller broke off, or the stream was reset).
    UploadFailed,
    /// The caller closed the connection or it failed.
    Gone,
}

/// How a forwarded exchange left the connection.
enum Next {
    KeepAlive,
    Close,
    Upgrade(SendHalf, RecvHalf),
}

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
        // a timer per request cost more than the rest of the request head's handling.
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

    /// Routes and checks one request and opens its tunnel stream, or says what to answer.
    /// `buffered`: bytes read past the head (the start of the body, or of the next request).
    fn prepare(
        &self,
        req: &httparse::Request<'_, '_>,
        peer: SocketAddr,
        peer_ip: &str,
        buffered: usize,
        tls: bool,
    ) -> Step {
        let method = req.method.unwrap_or("GET");
        let target = req.path.unwrap_or("/");
        let http10 = req.version == Some(0);
        let fields: &[httparse::Header<'_>] = req.headers;
        let framing = match Framing::read(fields) {
            Ok(f) => f,
            Err(r) => {
                return Step::Answer {
                    bytes: local(self.cfg.legacy_errors, r.status, r.msg, true, http10),
                    skip: 0,
                    keep_alive: false,
                }
            }
        };
        let keep_alive = !framing.fields.close && (!http10 || framing.fields.keep_alive);
        let body = framing.body();
        // After a local answer the connection can carry another request only if the body of
        // this one is already here to skip; otherwise the answer says it closes.
        let (answer_keep, skip) = match body {
            BodyKind::None => (keep_alive, 0),
            BodyKind::Length(n) if n <= buffered as u64 => (keep_alive, n as usize),
            BodyKind::Length(_) | BodyKind::Chunked => (false, 0),
        };
        // Which fields hold the caller's proxy token: kept from both the log and the agent.
        // A bearer is ours only when it is what `presented_token` reads: no `auth-token`.
        let credential = self.cfg.external_token.is_some().then_some(Credentials {
            bearer: self.cfg.external_bearer && framing.bearer && !framing.legacy_token,
        });
        let log = self.sink.as_ref().map(|sink| LogCtx {
            sink: sink.clone(),
            done: false,
            start: SystemTime::now(),
            t0: Instant::now(),
            method: Method::from_bytes(method.as_bytes()).unwrap_or_default(),
            uri: log_uri(target),
            headers: logged_headers(&header_map(fields), credential),
            request: Arc::new(Mutex::new(Capture::new(CAPTURE_LIMIT))),
            endpoint: None,
            client_id: None,
            session: None,
            tls,
        });
        let answer = |log: Option<LogCtx>, status: StatusCode, msg: &str| Step::Answer {
            bytes: self.fail(log, status, msg, !answer_keep, http10),
            skip,
            keep_alive: answer_keep,
        };
        if target.bytes().any(|c| !(0x21..0x7f).contains(&c)) {
            return answer(
                log,
                StatusCode::BAD_REQUEST,
                "request target is not visible ASCII",
            );
        }
        // Route name and the path sent on: absolute-form targets carry the authority.
        let hosts = fields
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("host"))
            .map(|h| h.value);
        let routed = match host::route(target, hosts) {
            Ok(r) => r,
            Err(e) => return answer(log, StatusCode::BAD_REQUEST, &e.to_string()),
        };
        let (host, path, original_host) = (routed.host, routed.path, routed.authority);
        if let Some(token) = &self.cfg.external_token {
            let presented = presented_token(
                || pairs(fields),
                protocol::AUTH_TOKEN_HEADER.as_str(),
                self.cfg.external_bearer,
            );
            if !presented.is_some_and(|t| token.matches(t)) {
                return Step::Answer {
                    bytes: self.fail_unauthorized(log, !answer_keep, http10),
                    skip,
                    keep_alive: answer_keep,
                };
            }
        }
        let (candidates, stats) = self.router.candidates(&host);
        // Cluster hook: a route no local agent serves may be served by another node.
        let (candidates, stats) = match (&self.cluster, stats) {
            (Some(c), None) => c.candidates(&host),
            (_, stats) => (candidates, stats),
        };
        let Some(stats) = stats else {
            return answer(
                log,
                StatusCode::NOT_FOUND,
                &format!("no agent serves host {host:?}"),
            );
        };
        let probe = Probe::start(stats);
        let mut log = log;
        if let Some(l) = log.as_mut() {
            l.endpoint = Some(host.clone());
        }
        let upgrade = if framing.fields.upgrade {
            fields
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("upgrade"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_string)
        } else {
            None
        };
        // The caller's fields minus what must not reach the agent, then the tunnel metadata.
        let drop_forwarded = !trusted_proxy(self.cfg.trusted_proxies.as_ref(), peer.ip());
        let named = framing.fields.named(pairs(fields));
        let keep = |n: &[u8]| {
            let dropped = n.eq_ignore_ascii_case(b"host")
                || http_util::is_internal_name(n)
                || rules::is_hop_by_hop_name(n)
                || named.iter().any(|t| t.eq_ignore_ascii_case(n))
                || credential.is_some_and(|c| c.matches_name(n))
                || (drop_forwarded
                    && (n.eq_ignore_ascii_case(b"x-forwarded-for")
                        || n.eq_ignore_ascii_case(b"x-forwarded-host")
                        || n.eq_ignore_ascii_case(b"x-forwarded-proto")
                        || n.eq_ignore_ascii_case(b"forwarded")));
            !dropped
        };
        // Over TLS the agent must say https; a trusted proxy's own X-Forwarded-Proto is kept.
        let https = tls
            && (drop_forwarded
                || !fields
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case("x-forwarded-proto")));
        let meta = [
            ("x-forwarded-proto", if https { "https" } else { "" }),
            (protocol::ROUTE_FIELD, host.as_str()),
            (protocol::PEER_FIELD, peer_ip),
            (protocol::HOST_FIELD, original_host),
            (
                protocol::UPGRADE_FIELD,
                upgrade.as_deref().unwrap_or_default(),
            ),
        ];
        // Written straight into the chosen session's outgoing buffer (again if that session
        // turns out dead and the next one is tried).
        let encode = |out: &mut BytesMut| {
            protocol::encode_request_head_into(
                out,
                method,
                path,
                fields
                    .iter()
                    .filter(|h| keep(h.name.as_bytes()))
                    .map(|h| (h.name.as_bytes(), h.value))
                    .chain(
                        meta.iter()
                            .filter(|(_, v)| !v.is_empty())
                            .map(|(n, v)| (n.as_bytes(), v.as_bytes())),
                    ),
            )
        };
        // An upgrade request's body is the pipe that follows the 101, never a request body.
        let body = if upgrade.is_some() {
            BodyKind::None
        } else {
            body
        };
        let end = upgrade.is_none() && body == BodyKind::None;
        for s in candidates {
            let Some(tunnel) = s.sender.get() else {
                continue;
            };
            match tunnel.open_with(end, upgrade.is_some(), encode) {
                Ok((send, recv)) => {
                    let log = log.map(|l| l.served_by(&s));
                    return Step::Forward(Box::new(Forward {
                        send,
                        recv,
                        session: s,
                        body,
                        keep_alive,
                        http10,
                        expect_continue: framing.expect_continue && !http10,
                        head_method: method == "HEAD",
                        upgrade,
                        log,
                        probe,
                    }));
                }
                Err(e) => {
                    // Nothing reached the agent: drop the dead session, try the next one.
                    debug!(session = s.id, error = %e, "session not usable, failing over");
                    self.drop_session(s.id);
                }
            }
        }
        probe.answered(502);
        answer(
            log,
            StatusCode::BAD_GATEWAY,
            &format!("no live agent session for host {host:?}"),
        )
    }

    /// Sends the request body up while the answer is awaited, then writes the answer.
    async fn forward<S: CallerIo>(
        &self,
        tcp: &mut S,
        buf: &mut BytesMut,
        fwd: Forward,
        mut timer: Pin<&mut tokio::time::Sleep>,
    ) -> Next {
        let Forward {
            send,
            mut recv,
            session,
            body,
            mut keep_alive,
            http10,
            expect_continue,
            head_method,
            upgrade,
            mut log,
            probe,
        } = fwd;
        let (mut rd, wr) = tcp.halves();
        let mut wr = SendLimit::new(wr, self.cfg.send_timeout);
        if expect_continue
            && body != BodyKind::None
            && wr
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return Next::Close;
        }
        let (mut up_send, mut pipe_send) = match upgrade {
            Some(_) => (None, Some(send)),
            None => (Some(send), None),
        };
        let capture = log.as_ref().map(|l| l.request.clone());
        let uploaded = AtomicBool::new(body == BodyKind::None);
        // The caller's side of the connection while the exchange lasts: the request body goes
        // up, then the socket is watched, so a caller that hangs up is noticed at once (the
        // stream is reset and the agent stops the backend request) and bytes of a pipelined
        // next request are kept.
        let reading = async {
            if let Some(mut send) = up_send.take() {
                let cancelled = send.cancelled_owned();
                let tap = capture.as_deref().map(crate::access_log::tap);
                let mut reader = Reader {
                    rd: &mut rd,
                    buf: &mut *buf,
                    idle: protocol::DEFAULT_BODY_IDLE_TIMEOUT,
                    tap: tap.as_ref().map(|t| t as _),
                };
                let work = async {
                    match body {
                        BodyKind::None => Ok(()),
                        BodyKind::Length(n) => reader.forward_bytes(n, true, &mut send).await,
                        BodyKind::Chunked => reader.forward_chunked(&mut send).await,
                    }
                };
                // The agent gave up on the stream (answered early, reset): stop waiting for the
                // caller's bytes. Dropping `send` unfinished resets the stream.
                let r = tokio::select! {
                    r = work => r,
                    () = cancelled => Err(CopyError::Broken),
                };
                if r.is_err() {
                    return CallerSide::UploadFailed;
                }
                uploaded.store(true, Ordering::Relaxed);
            }
            loop {
                if buf.len() >= MAX_REQUEST_HEAD {
                    // Enough read ahead: the rest waits in the socket.
                    std::future::pending::<()>().await;
                }
                buf.reserve(READ_CHUNK);
                match rd.read_buf(&mut *buf).await {
                    Ok(n) if n > 0 => {}
                    _ => return CallerSide::Gone,
                }
            }
        };
        tokio::pin!(reading);
        let mut reading_done = false;

        timer
            .as_mut()
            .reset(tokio::time::Instant::now() + self.cfg.response_timeout);
        let answer = loop {
            tokio::select! {
                r = &mut reading, if !reading_done => {
                    // The caller hung up: nobody to answer (the log records 499).
                    if r == CallerSide::Gone {
                        return Next::Close;
                    }
                    reading_done = true;
                }
                h = recv.head() => break Ok(h),
                () = timer.as_mut() => break Err(()),
            }
        };
        // After a local answer the connection stays only if the request was read in full.
        let keep = keep_alive && uploaded.load(Ordering::Relaxed);
        let fail = |log, status: StatusCode, msg: &str| {
            probe.answered(status.as_u16());
            self.fail(log, status, msg, !keep, http10)
        };
        let (block, resp_end) = match answer {
            Err(_) => {
                let b = fail(
                    log.take(),
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!(
                        "no response from the agent within {:?}",
                        self.cfg.response_timeout
                    ),
                );
                return write_local(&mut wr, &b, keep).await;
            }
            Ok(Err(e)) => {
                let b = fail(
                    log.take(),
                    StatusCode::BAD_GATEWAY,
                    &format!("tunnel to agent {:?} failed: {e}", session.client_id),
                );
                return write_local(&mut wr, &b, keep).await;
            }
            Ok(Ok(x)) => x,
        };
        let head = match RawResponseHead::parse(&block) {
            Ok(h) => h,
            Err(e) => {
                let b = fail(
                    log.take(),
                    StatusCode::BAD_GATEWAY,
                    &format!(
                        "agent {:?} sent a bad response head: {e}",
                        session.client_id
                    ),
                );
                return write_local(&mut wr, &b, keep).await;
            }
        };
        let status = head.status;
        probe.answered(status);
        let switching = status == 101;
        if switching && upgrade.is_none() {
            let b = fail(
                log.take(),
                StatusCode::BAD_GATEWAY,
                &format!(
                    "agent {:?} switched protocols on a request that asked for no upgrade",
                    session.client_id
                ),
            );
            return write_local(&mut wr, &b, keep).await;
        }
        let (mut has_date, mut agent_error) = (false, false);
        let fields = HeadFields::read(head.fields(), |n, _| {
            if n.eq_ignore_ascii_case(b"date") {
                has_date = true;
            } else if n.eq_ignore_ascii_case(protocol::ERROR_HEADER.as_str().as_bytes()) {
                agent_error = true;
            }
        });
        let Ok(HeadFields { length, .. }) = fields else {
            let b = fail(
                log.take(),
                StatusCode::BAD_GATEWAY,
                &format!(
                    "agent {:?} sent an invalid or conflicting Content-Length",
                    session.client_id
                ),
            );
            return write_local(&mut wr, &b, keep).await;
        };
        if agent_error && self.cfg.legacy_errors {
            let b = fail(log.take(), StatusCode::NOT_FOUND, "agent error");
            return write_local(&mut wr, &b, keep).await;
        }
        if let (Some(_), false) = (&upgrade, switching) {
            // The backend refused the upgrade: close our (empty) direction cleanly, so the
            // answer's body still streams instead of being cut by a reset.
            if let Some(mut send) = pipe_send.take() {
                let _ = send.send_data(Bytes::new(), true).await;
            }
        }
        let no_body = head_method
            || switching
            || (100..200).contains(&status)
            || status == 204
            || status == 304;
        let delimit = if no_body {
            None
        } else if resp_end {
            Some(Delimit::Length(length.unwrap_or(0)))
        } else if let Some(n) = length {
            Some(Delimit::Length(n))
        } else if http10 {
            Some(Delimit::Close)
        } else {
            Some(Delimit::Chunked)
        };
        if delimit == Some(Delimit::Close) || *self.stopping.borrow() {
            keep_alive = false;
        }
        let mut out = BytesMut::with_capacity(512);
        status_line(&mut out, http10, status);
        for (n, v) in head.fields().filter(|(n, _)| reaches_caller(n)) {
            put_field(&mut out, n, v);
        }
        match delimit {
            Some(Delimit::Length(0)) if length.is_none() => {
                put_field(&mut out, b"content-length", b"0")
            }
            Some(Delimit::Chunked) => put_field(&mut out, b"transfer-encoding", b"chunked"),
            _ => {}
        }
        if !has_date {
            date_field(&mut out);
        }
        if switching {
            put_field(&mut out, b"connection", b"upgrade");
            put_field(
                &mut out,
                b"upgrade",
                upgrade.as_deref().unwrap_or_default().as_bytes(),
            );
        } else if !keep_alive {
            put_field(&mut out, b"connection", b"close");
        } else if http10 {
            put_field(&mut out, b"connection", b"keep-alive");
        }
        out.extend_from_slice(b"\r\n");

        if switching {
            let sent = wr.write_all(&out).await;
            if let Some(l) = log.take() {
                self.emit_raw(l, head, None);
            }
            return match (sent, pipe_send.take()) {
                (Ok(()), Some(send)) => Next::Upgrade(send, recv),
                _ => Next::Close,
            };
        }
        let resp_capture = log
            .as_ref()
            .map(|_| Mutex::new(Capture::new(CAPTURE_LIMIT)));
        let written = {
            let write = async {
                match delimit {
                    None => wr.write_all(&out).await.map_err(|_| CopyError::Broken),
                    Some(d) => {
                        let tap = resp_capture.as_ref().map(crate::access_log::tap);
                        let tap = tap.as_ref().map(|t| t as _);
                        http1::write_body(&mut wr, &mut recv, d, out, tap).await
                    }
                }
            };
            tokio::pin!(write);
            loop {
                tokio::select! {
                    r = &mut write => break r,
                    r = &mut reading, if !reading_done => {
                        if r == CallerSide::Gone {
                            break Err(CopyError::Broken);
                        }
                        reading_done = true;
                    }
                }
            }
        };
        if let Some(l) = log.take() {
            let cap = resp_capture.map(|c| c.into_inner().unwrap_or_else(|p| p.into_inner()));
            self.emit_raw(l, head, cap);
        }
        // A request body the backend answered before reading in full is not read to its end
        // here: the connection closes (after a short drain) instead of carrying another request.
        if written.is_ok() && keep_alive && uploaded.load(Ordering::Relaxed) {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    /// A locally generated error response (and its log record), as bytes to write.
    fn fail(
        &self,
        log: Option<LogCtx>,
        status: StatusCode,
        msg: &str,
        close: bool,
        http10: bool,
    ) -> BytesMut {
        self.answer_locally(log, status, PLAIN, msg, close, http10)
    }

    /// 401 with the challenge for the caller's proxy token.
    fn fail_unauthorized(&self, log: Option<LogCtx>, close: bool, http10: bool) -> BytesMut {
        let msg = "missing or wrong auth-token / Authorization: Bearer";
        self.answer_locally(
            log,
            StatusCode::UNAUTHORIZED,
            UNAUTHORIZED,
            msg,
            close,
            http10,
        )
    }

    fn answer_locally(
        &self,
        log: Option<LogCtx>,
        status: StatusCode,
        fields: &'static [(&'static str, &'static str)],
        msg: &str,
        close: bool,
        http10: bool,
    ) -> BytesMut {
        let (status, fields, body) = local_answer(self.cfg.legacy_errors, status, fields, msg);
        if let (Some(l), Some(sink)) = (log, &self.sink) {
            let headers = fields
                .iter()
                .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
                .collect();
            sink.emit(l.record(status.as_u16(), headers, None, body.len() as u64));
        }
        local_response(http10, status, fields, body.as_bytes(), close)
    }

    /// Logs an answer that came from the agent: its head as the caller got it.
    fn emit_raw(&self, l: LogCtx, head: RawResponseHead<'_>, body: Option<Capture>) {
        let Some(sink) = &self.sink else { return };
        let mut headers = HeaderMap::new();
        for (n, v) in head.fields().filter(|(n, _)| reaches_caller(n)) {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) {
                headers.append(n, v);
            }
        }
        sink.emit(l.record(head.status, headers, body, 0));
    }
}

/// The fields of local answers (besides the framing, `date` and `connection`).
const PLAIN: &[(&str, &str)] = &[("content-type", "text/plain; charset=utf-8")];
const UNAUTHORIZED: &[(&str, &str)] = &[
    ("content-type", "text/plain; charset=utf-8"),
    ("www-authenticate", "Bearer realm=\"proxyview\""),
];
/// Proxyview's 404 page's fields.
const LEGACY: &[(&str, &str)] = &[
    ("content-type", "text/plain"),
    ("cache-control", "no-cache"),
    ("pragma", "no-cache"),
];

/// Parses a request head at the start of `buf` and hands it to `f`: `None` until complete.
/// Most heads have a handful of fields, so a small table is tried first and only a head that
/// overflows it is parsed again with the full one.
fn parse_request<T>(
    buf: &[u8],
    f: impl FnOnce(&httparse::Request<'_, '_>, usize) -> T,
) -> Result<Option<T>, Refused> {
    parse_head(buf, MAX_REQUEST_HEADERS, f).map_err(|e| match e {
        HeadError::TooManyFields => Refused {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            msg: "more than 100 header fields",
        },
        HeadError::Malformed => refused_bad(),
    })
}

fn refused_bad() -> Refused {
    Refused {
        status: StatusCode::BAD_REQUEST,
        msg: "malformed request head",
    }
}

fn refused(status: StatusCode, msg: &'static str) -> Refused {
    Refused { status, msg }
}

/// Answers a head that could not be taken (parse error, too large) and closes.
async fn finish_with<S: AsyncRead + AsyncWrite + Unpin>(
    mut tcp: S,
    r: &Refused,
    send_timeout: std::time::Duration,
) {
    let b = local(false, r.status, r.msg, true, false);
    if SendLimit::new(&mut tcp, send_timeout)
        .write_all(&b)
        .await
        .is_ok()
    {
        linger_close(tcp).await;
    }
}

/// Writes a local answer in the middle of a forwarded exchange.
async fn write_local<W: tokio::io::AsyncWrite + Unpin>(wr: &mut W, b: &[u8], keep: bool) -> Next {
    match wr.write_all(b).await {
        Ok(()) if keep => Next::KeepAlive,
        _ => Next::Close,
    }
}

/// Closes after an answer: a FIN first, then what the caller still sends is read and dropped
/// for a moment, so the kernel does not turn the close into an RST that destroys the answer
/// before the caller read it.
async fn linger_close<S: AsyncRead + AsyncWrite + Unpin>(mut tcp: S) {
    let _ = tokio::time::timeout(protocol::REJECT_DRAIN, async {
        tcp.shutdown().await?;
        let mut sink = [0u8; 4096];
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// A local error answer's status, fields and body: `proxyview: msg`, or Proxyview's 404 page
/// for every failure in legacy mode.
fn local_answer(
    legacy: bool,
    status: StatusCode,
    fields: &'static [(&'static str, &'static str)],
    msg: &str,
) -> (StatusCode, &'static [(&'static str, &'static str)], String) {
    if legacy {
        (StatusCode::NOT_FOUND, LEGACY, LEGACY_404_BODY.to_string())
    } else {
        (status, fields, format!("proxyview: {msg}\n"))
    }
}

/// [`local_answer`] with plain fields, as bytes (answers that are not logged).
fn local(legacy: bool, status: StatusCode, msg: &str, close: bool, http10: bool) -> BytesMut {
    let (status, fields, body) = local_answer(legacy, status, PLAIN, msg);
    local_response(http10, status, fields, body.as_bytes(), close)
}

fn local_response(
    http10: bool,
    status: StatusCode,
    fields: &[(&str, &str)],
    body: &[u8],
    close: bool,
) -> BytesMut {
    let mut out = BytesMut::with_capacity(256 + body.len());
    status_line(&mut out, http10, status.as_u16());
    for (n, v) in fields {
        put_field(&mut out, n.as_bytes(), v.as_bytes());
    }
    put_field(
        &mut out,
        b"content-length",
        body.len().to_string().as_bytes(),
    );
    date_field(&mut out);
    if close {
        put_field(&mut out, b"connection", b"close");
    } else if http10 {
        put_field(&mut out, b"connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// The request's fields as a header map (only built when the access log is on).
fn header_map(fields: &[httparse::Header<'_>]) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(fields.len());
    for f in fields {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(f.name.as_bytes()),
            HeaderValue::from_bytes(f.value),
        ) {
            h.append(n, v);
        }
    }
    h
}

/// The request target as a URI for the access log; a target the URI grammar refuses is logged
/// with its bytes percent-encoded rather than lost.
fn log_uri(target: &str) -> Uri {
    if let Ok(u) = target.parse::<Uri>() {
        return u;
    }
    let mut s = String::with_capacity(target.len() * 3);
    for b in target.bytes() {
        if b.is_ascii_alphanumeric() || b"/?=&-._~%:@!$'()*+,;".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s.parse().unwrap_or_else(|_| Uri::from_static("/"))
}

/// Whether a field of the agent's response head goes on to the caller (and so into the access
/// log, which records the head as the caller got it): not hop-by-hop, not tunnel metadata.
fn reaches_caller(name: &[u8]) -> bool {
    !rules::is_hop_by_hop_name(name) && !http_util::is_internal_name(name)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn with_fields<T>(head: &str, f: impl FnOnce(&[httparse::Header<'_>]) -> T) -> T {
        let mut few = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut few);
        assert!(req.parse(head.as_bytes()).unwrap().is_complete(), "{head}");
        f(req.headers)
    }

    #[test]
    fn the_callers_token_is_found_and_a_bearer_marks_authorization_as_ours() {
        let head = "GET / HTTP/1.1\r\nauth-token: legacy\r\nAuthorization: Bearer  tok \r\n\r\n";
        with_fields(head, |f| {
            assert_eq!(
                presented_token(|| pairs(f), "auth-token", true),
                Some(&b"legacy"[..])
            );
            let fr = Framing::read(f).ok().unwrap();
            assert!(fr.bearer && fr.legacy_token);
        });
        let head = "GET / HTTP/1.1\r\nAuthorization: Bearer  tok \r\n\r\n";
        with_fields(head, |f| {
            assert_eq!(
                presented_token(|| pairs(f), "auth-token", true),
                Some(&b"tok"[..])
            );
            let fr = Framing::read(f).ok().unwrap();
            assert!(fr.bearer && !fr.legacy_token);
        });
        let head = "GET / HTTP/1.1\r\nAUTH-TOKEN: legacy\r\nAuthorization: Basic abc\r\n\r\n";
        with_fields(head, |f| {
            assert_eq!(
                presented_token(|| pairs(f), "auth-token", true),
                Some(&b"legacy"[..])
            );
            assert!(!Framing::read(f).ok().unwrap().bearer);
        });
    }

    #[test]
    fn ambiguous_request_framing_is_refused() {
        let status = |fields: &str| {
            let head = format!("POST / HTTP/1.1\r\n{fields}\r\n");
            with_fields(&head, |f| {
                Framing::read(f).map(|f| f.body()).map_err(|r| r.msg)
            })
        };
        assert_eq!(status("content-length: 5\r\n"), Ok(BodyKind::Length(5)));
        // An agreeing list is refused too: the backend might not merge it (http1::rules).
        assert_eq!(
            status("content-length: 5, 5\r\n"),
            Err("more than one Content-Length value")
        );
        assert_eq!(status("content-length: 0\r\n"), Ok(BodyKind::None));
        assert_eq!(
            status("transfer-encoding: chunked\r\n"),
            Ok(BodyKind::Chunked)
        );
        assert_eq!(status(""), Ok(BodyKind::None));
        for bad in [
            "content-length: 5\r\ncontent-length: 6\r\n",
            "content-length: -1\r\n",
            "content-length: 5\r\ntransfer-encoding: chunked\r\n",
            "transfer-encoding: gzip\r\n",
            "transfer-encoding: chunked, gzip\r\n",
            "transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n",
        ] {
            assert!(status(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn local_answers_are_complete_http_responses() {
        let b = local(false, StatusCode::NOT_FOUND, "no agent", true, false);
        let text = String::from_utf8(b.to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("\r\ncontent-length: 20\r\n"), "{text}");
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
        assert!(text.contains("\r\ndate: "), "{text}");
        assert!(text.ends_with("\r\n\r\nproxyview: no agent\n"), "{text}");
        let b = local(true, StatusCode::BAD_GATEWAY, "x", false, true);
        let text = String::from_utf8(b.to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.0 404 Not Found\r\n"), "{text}");
        assert!(text.contains("\r\nconnection: keep-alive\r\n"), "{text}");
        assert!(text.ends_with(LEGACY_404_BODY), "{text}");
    }
}
