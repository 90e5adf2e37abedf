//! One exchange: the request to the upstream on a pooled connection (retried when the policy
//! allows), the response back to the client as it arrives, and the exchange record.
//!
//! The request body is sent while the upstream's answer is awaited, so an upstream that answers
//! early (a 413 before the upload ends) is heard; the response-header timeout runs from the end
//! of the request body, as Go's `ResponseHeaderTimeout` does, so a slow upload is never cut by
//! it. While the answer is awaited the client's socket is watched too: a client that leaves is
//! recorded as 499 at once, not when the upstream eventually answers.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use http1::body::{BodySink, CopyError, Reader};
use http1::client::{read_response_head, ResponseHeadError};
use http1::head::{date_field, pairs, parse_response, status_line};
use http1::{put_field, rules, HeadFields};
use telemetry::Capture;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::exchange::{Draft, Slot, STATUS_CLIENT_CLOSED};
use crate::proxy::{Peer, Proxy};
use crate::request::{BodyKind, Inbound};
use crate::wire::{relay_to_eof, Collect, Watched, WireSink};

/// Body of the 502 sent when the upstream cannot be reached (Go `http.Error` adds the newline).
pub const BAD_GATEWAY_BODY: &str = "Bad Gateway\n";
/// Body of the 500 sent when the handler panics.
pub const INTERNAL_ERROR_BODY: &str = "Internal Server Error\n";
/// Body of the 400 sent for requests rejected before forwarding.
pub const BAD_REQUEST_BODY: &str = "Bad Request\n";

/// Largest response head accepted from the upstream (as the request side: no field count limit
/// below it).
pub(crate) const MAX_RESPONSE_HEAD: usize = 1 << 20;
/// Longest an upstream may send nothing in the middle of a response body, and a client in the
/// middle of a request body. Long, because event streams may be quiet for minutes; a bound all
/// the same, so no exchange waits forever.
pub(crate) const BODY_IDLE: Duration = Duration::from_secs(3600);

/// The client side of the connection during one exchange.
pub(crate) struct Client<'a> {
    pub(crate) rd: ReadHalf<'a>,
    pub(crate) wr: WriteHalf<'a>,
    /// Bytes read from the client and not yet used (a request body, the next request).
    pub(crate) buf: BytesMut,
    /// Most bytes read ahead while the upstream is awaited.
    pub(crate) read_ahead: usize,
    /// The read buffer for the upstream's answer, kept from one exchange to the next so that
    /// its memory is reused.
    pub(crate) up_buf: BytesMut,
    /// Something has been written to the client for this exchange: a failure can now only cut
    /// the connection, no longer answer it.
    pub(crate) answered: bool,
}

/// What becomes of the client connection after an exchange.
pub(crate) enum Next {
    KeepAlive,
    Close,
    /// Close after reading and dropping what the client still sends for a moment: it was
    /// answered before its request was read whole, and closing at once could reset the answer
    /// away before the client reads it.
    Linger,
    /// Switched protocols: bytes flow both ways between the client and this upstream connection
    /// (with what was already read from it).
    Upgrade(TcpStream, BytesMut),
}

/// A response head from the upstream.
struct Response {
    status: u16,
    /// The fields passed on (hop-by-hop ones removed; `Trailer` kept for a chunked answer).
    headers: HeaderMap,
    fields: HeadFields,
    http10: bool,
    /// The protocol switched to, on a `101`.
    upgrade: Option<HeaderValue>,
}

/// The upstream's answer: its connection, its head, what was read past the head, and whether
/// the request body was sent whole.
struct Answer {
    tcp: TcpStream,
    resp: Response,
    up_buf: BytesMut,
    body_sent: bool,
}

/// Why an exchange got no answer from the upstream.
enum NoAnswer {
    ClientGone,
    BadBody,
    /// Answered 502; the text is logged.
    Gateway(String),
}

/// How an attempt failed before a response head arrived.
enum Failure {
    /// The client left (or broke its request body off): recorded as 499, nothing answered.
    ClientGone,
    /// The request body's framing broke: answered 400.
    BadBody,
    /// The upstream could not be reached or did not answer properly; `fresh_retry`: it failed on
    /// a reused connection before any byte of an answer, so a new connection may be tried.
    Upstream { msg: String, fresh_retry: bool },
    /// No answer within the response-header timeout.
    Timeout,
}

/// The request body as it will be sent: not at all, from memory (replayable), or streamed from
/// the client.
enum Upload {
    None,
    Buffered(Bytes),
    Stream(BodyKind),
}

impl Proxy {
    /// Runs one exchange for `req`; the record goes to the sink through `slot` exactly once.
    pub(crate) async fn exchange(
        &self,
        c: &mut Client<'_>,
        mut req: Inbound,
        peer: &Peer,
        slot: &mut Slot,
        draining: bool,
    ) -> Next {
        let s = &*self.shared;
        let kind = req.body();
        let tunnel_req = req.upgrade.is_some() || req.method == Method::CONNECT;
        let kind = if tunnel_req && kind != BodyKind::Chunked {
            BodyKind::None
        } else {
            kind
        };
        let mut req_capture = Capture::new(s.config.capture_limit);
        slot.fill(Draft::new(&mut req, s.config.capture_limit));

        #[cfg(test)]
        if slot.request_headers().contains_key("x-test-panic") {
            panic!("test panic requested");
        }

        if req.expect_continue
            && !req.http10
            && kind != BodyKind::None
            && c.buf.is_empty()
            && c.wr
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            slot.client_gone(req_capture);
            return Next::Close;
        }

        let replayable = s.retry.enabled()
            && !tunnel_req
            && s.retry.retries_method(&req.method)
            && match kind {
                BodyKind::None => true,
                BodyKind::Length(n) => n <= s.retry.body_buffer_bytes as u64,
                BodyKind::Chunked => false,
            };
        let mut upload = match self
            .read_upload(c, kind, replayable, &mut req_capture)
            .await
        {
            Ok(u) => u,
            Err(Failure::BadBody) => return self.bad_request(c, &req, slot, req_capture).await,
            Err(_) => {
                slot.client_gone(req_capture);
                return Next::Close;
            }
        };
        let wire_kind = match &upload {
            Upload::None => BodyKind::None,
            Upload::Buffered(b) if b.is_empty() => BodyKind::None,
            Upload::Buffered(b) => BodyKind::Length(b.len() as u64),
            Upload::Stream(k) => *k,
        };
        let head = req
            .upstream_head(
                slot.request_headers(),
                &s.forwarded,
                peer.ip_text(),
                wire_kind,
            )
            .freeze();

        let answer = match self
            .answer(c, &head, &mut upload, replayable, &mut req_capture)
            .await
        {
            Ok(a) => a,
            Err(NoAnswer::ClientGone) => {
                slot.client_gone(req_capture);
                return Next::Close;
            }
            Err(NoAnswer::BadBody) => return self.bad_request(c, &req, slot, req_capture).await,
            Err(NoAnswer::Gateway(msg)) => {
                return self.bad_gateway(c, &req, slot, req_capture, &msg).await
            }
        };
        self.respond(c, req, slot, req_capture, answer, draining)
            .await
    }

    /// Reads a replayable request body into memory, or checks a chunked one's first chunk; other
    /// bodies are streamed during the attempt.
    async fn read_upload(
        &self,
        c: &mut Client<'_>,
        kind: BodyKind,
        replayable: bool,
        req_capture: &mut Capture,
    ) -> Result<Upload, Failure> {
        match kind {
            BodyKind::None => Ok(Upload::None),
            BodyKind::Length(n) if replayable => {
                let mut sink = Collect {
                    data: BytesMut::with_capacity(usize::try_from(n).unwrap_or(0)),
                    capture: req_capture,
                };
                let mut rd = Watched {
                    inner: &mut c.rd,
                    gone: false,
                };
                let mut reader = Reader {
                    rd: &mut rd,
                    buf: &mut c.buf,
                    idle: BODY_IDLE,
                    tap: None,
                };
                reader
                    .forward_bytes(n, true, &mut sink)
                    .await
                    .map_err(|_| Failure::ClientGone)?;
                Ok(Upload::Buffered(sink.data.freeze()))
            }
            // A body broken from its first chunk is refused before the upstream sees anything.
            BodyKind::Chunked => first_chunk_ok(c).await.map(|()| Upload::Stream(kind)),
            BodyKind::Length(_) => Ok(Upload::Stream(kind)),
        }
    }

    /// The upstream's answer after the attempts the retry policy allows (one fresh connection
    /// more when a reused one was found closed before any answer byte).
    async fn answer(
        &self,
        c: &mut Client<'_>,
        head: &Bytes,
        upload: &mut Upload,
        replayable: bool,
        req_capture: &mut Capture,
    ) -> Result<Answer, NoAnswer> {
        let s = &*self.shared;
        let max_attempts = if replayable { s.retry.max_attempts } else { 1 };
        let mut attempt = 1u32;
        let mut fresh_tried = false;
        loop {
            let more = attempt < max_attempts;
            let conn = if fresh_tried {
                s.pool
                    .connect()
                    .await
                    .map(|tcp| http1::client::Conn { tcp, reused: false })
            } else {
                s.pool.get().await
            };
            let mut conn = match conn {
                Ok(conn) => conn,
                Err(e) => {
                    if more && s.retry.retry_transport_errors {
                        tokio::time::sleep(s.retry.backoff(attempt)).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(NoAnswer::Gateway(e.to_string()));
                }
            };
            let mut up_buf = std::mem::take(&mut c.up_buf);
            up_buf.clear();
            let result = self
                .attempt(c, &mut conn, head, upload, &mut up_buf, req_capture)
                .await;
            match result {
                Ok((resp, body_sent)) => {
                    if more && s.retry.retries_status(resp.status) {
                        drop(conn);
                        tokio::time::sleep(s.retry.backoff(attempt)).await;
                        attempt += 1;
                        continue;
                    }
                    return Ok(Answer {
                        tcp: conn.tcp,
                        resp,
                        up_buf,
                        body_sent,
                    });
                }
                Err(Failure::ClientGone) => return Err(NoAnswer::ClientGone),
                Err(Failure::BadBody) => return Err(NoAnswer::BadBody),
                Err(Failure::Upstream { msg, fresh_retry }) => {
                    let replay = !matches!(upload, Upload::Stream(_));
                    if fresh_retry && replay && !fresh_tried {
                        fresh_tried = true;
                        continue;
                    }
                    fresh_tried = false;
                    if more && s.retry.retry_transport_errors {
                        tokio::time::sleep(s.retry.backoff(attempt)).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(NoAnswer::Gateway(msg));
                }
                Err(Failure::Timeout) => {
                    return Err(NoAnswer::Gateway(
                        "timeout awaiting response headers".to_owned(),
                    ))
                }
            }
        }
    }

    /// One try on one connection: the head and body up, the response head back.
    async fn attempt(
        &self,
        c: &mut Client<'_>,
        conn: &mut http1::client::Conn,
        head: &Bytes,
        upload: &mut Upload,
        up_buf: &mut BytesMut,
        req_capture: &mut Capture,
    ) -> Result<(Response, bool), Failure> {
        let s = &*self.shared;
        let reused = conn.reused;
        let (mut up_rd, mut up_wr) = conn.tcp.split();
        let upstream_err = |what: &str| Failure::Upstream {
            msg: what.to_owned(),
            fresh_retry: false,
        };
        let mut body_sent = true;
        match upload {
            Upload::None | Upload::Buffered(_) => {
                let data = match upload {
                    Upload::Buffered(b) => b.clone(),
                    _ => Bytes::new(),
                };
                let r = if data.len() <= 16 * 1024 {
                    let mut out = BytesMut::with_capacity(head.len() + data.len());
                    out.extend_from_slice(head);
                    out.extend_from_slice(&data);
                    up_wr.write_all(&out).await
                } else {
                    match up_wr.write_all(head).await {
                        Ok(()) => up_wr.write_all(&data).await,
                        Err(e) => Err(e),
                    }
                };
                if let Err(e) = r {
                    return Err(Failure::Upstream {
                        msg: format!("write: {e}"),
                        fresh_retry: reused,
                    });
                }
            }
            Upload::Stream(kind) => {
                let kind = *kind;
                // The body goes up while the answer is awaited; an answer before the body's
                // end ends the upload.
                let mut rd = Watched {
                    inner: &mut c.rd,
                    gone: false,
                };
                let mut sink = WireSink {
                    wr: &mut up_wr,
                    out: BytesMut::from(&head[..]),
                    chunked: kind == BodyKind::Chunked,
                    capture: req_capture,
                    trailers: None,
                    failed: false,
                };
                let up = async {
                    let mut reader = Reader {
                        rd: &mut rd,
                        buf: &mut c.buf,
                        idle: BODY_IDLE,
                        tap: None,
                    };
                    match kind {
                        BodyKind::Length(n) => reader.forward_bytes(n, true, &mut sink).await,
                        BodyKind::Chunked => reader.forward_chunked(&mut sink).await,
                        BodyKind::None => sink.send(Bytes::new(), true).await,
                    }
                };
                let early = tokio::select! {
                    r = up => Err(r),
                    h = read_response_head(&mut up_rd, up_buf, MAX_RESPONSE_HEAD, |_, n| n) => Ok(h),
                };
                match early {
                    Ok(head) => {
                        // Answered before the request body ended: the rest of it is not read,
                        // so neither connection is reused.
                        body_sent = false;
                        let n = head.map_err(|e| response_failure(e, false))?;
                        let resp = parse_response_head(up_buf, n).map_err(upstream_err)?;
                        return Ok((resp, body_sent));
                    }
                    Err(Ok(())) => {}
                    Err(Err(_)) if sink.failed => {
                        // The upstream stopped taking the body; its answer, if any, explains.
                        body_sent = false;
                    }
                    Err(Err(_)) if rd.gone => return Err(Failure::ClientGone),
                    Err(Err(_)) => return Err(Failure::BadBody),
                }
            }
        }
        // The response-header timeout runs from the end of the request body.
        let deadline = Instant::now() + s.config.response_header_timeout;
        loop {
            let n = tokio::select! {
                h = read_response_head(&mut up_rd, up_buf, MAX_RESPONSE_HEAD, |_, n| n) => {
                    h.map_err(|e| response_failure(e, reused))?
                }
                gone = client_leaves(c) => {
                    if gone {
                        return Err(Failure::ClientGone);
                    }
                    continue;
                }
                () = tokio::time::sleep_until(deadline) => return Err(Failure::Timeout),
            };
            let resp = parse_response_head(up_buf, n).map_err(upstream_err)?;
            if (100..200).contains(&resp.status) && resp.status != 101 {
                // Interim answers (100 Continue, 103) are this hop's; the final one follows.
                continue;
            }
            return Ok((resp, body_sent));
        }
    }

    /// Sends the response head and body to the client, records the exchange, and returns the
    /// upstream connection to the pool when it ended cleanly.
    #[allow(clippy::too_many_arguments)]
    async fn respond(
        &self,
        c: &mut Client<'_>,
        req: Inbound,
        slot: &mut Slot,
        req_capture: Capture,
        answer: Answer,
        draining: bool,
    ) -> Next {
        let s = &*self.shared;
        let Answer {
            mut tcp,
            resp,
            mut up_buf,
            body_sent,
        } = answer;
        let status = resp.status;
        let tunnel = if status == 101 {
            let Some(asked) = &req.upgrade else {
                return self
                    .bad_gateway(
                        c,
                        &req,
                        slot,
                        req_capture,
                        "backend tried to switch protocol when none was requested",
                    )
                    .await;
            };
            let offered = resp.upgrade.clone();
            if !offered
                .as_ref()
                .is_some_and(|o| o.as_bytes().eq_ignore_ascii_case(asked.as_bytes()))
            {
                let msg = format!(
                    "backend tried to switch protocol {offered:?} when {asked:?} was requested"
                );
                return self.bad_gateway(c, &req, slot, req_capture, &msg).await;
            }
            true
        } else {
            req.method == Method::CONNECT && (200..300).contains(&status)
        };
        let (up_framing, out_framing) = framings(&req, &resp, tunnel);
        let keep =
            !tunnel && !draining && body_sent && req.keep_alive() && out_framing != Framing::Close;
        let mut out = BytesMut::with_capacity(256 + up_buf.len().min(16 * 1024));
        client_head(&mut out, &req, &resp, out_framing, keep, tunnel);
        c.answered = true;

        if tunnel {
            let written = c.wr.write_all(&out).await;
            if written.is_err() {
                slot.client_gone(req_capture);
                return Next::Close;
            }
            slot.finish(
                status,
                resp.headers,
                Some(Capture::new(s.config.capture_limit)),
                req_capture,
                0,
            );
            return Next::Upgrade(tcp, up_buf);
        }

        let mut resp_capture = Capture::new(s.config.capture_limit);
        let (mut up_rd, _) = tcp.split();
        let mut sink = WireSink {
            wr: &mut c.wr,
            out,
            chunked: out_framing == Framing::Chunked,
            capture: &mut resp_capture,
            trailers: None,
            failed: false,
        };
        let mut reader = Reader {
            rd: &mut up_rd,
            buf: &mut up_buf,
            idle: BODY_IDLE,
            tap: None,
        };
        let relayed = match up_framing {
            Framing::None => sink.send(Bytes::new(), true).await,
            Framing::Length(0) => sink.send(Bytes::new(), true).await,
            Framing::Length(n) => reader.forward_bytes(n, true, &mut sink).await,
            Framing::Chunked => reader.forward_chunked(&mut sink).await,
            Framing::Close => relay_to_eof(&mut reader, &mut sink).await,
        };
        let client_failed = sink.failed;
        drop(sink);
        let leftover = !up_buf.is_empty();
        c.up_buf = up_buf;
        match relayed {
            Ok(()) => {
                let reusable = body_sent
                    && up_framing != Framing::Close
                    && !resp.fields.close
                    && !rules::is_ambiguous(&resp.fields)
                    && (!resp.http10 || resp.fields.keep_alive)
                    && !leftover;
                if reusable {
                    s.pool.put(tcp);
                }
                slot.finish(status, resp.headers, Some(resp_capture), req_capture, 0);
                if keep {
                    Next::KeepAlive
                } else if body_sent {
                    Next::Close
                } else {
                    Next::Linger
                }
            }
            Err(_) if client_failed => {
                slot.finish(
                    STATUS_CLIENT_CLOSED,
                    resp.headers,
                    Some(resp_capture),
                    req_capture,
                    0,
                );
                Next::Close
            }
            Err(e) => {
                let what = match e {
                    CopyError::Idle => "timeout reading the response body",
                    CopyError::Broken => "unexpected EOF",
                };
                s.config
                    .logger
                    .log(format_args!("reverse proxy upstream error: {what}"));
                // Cut, not ended: the client can tell the body is incomplete.
                slot.finish(502, resp.headers, Some(resp_capture), req_capture, 0);
                Next::Close
            }
        }
    }

    async fn bad_request(
        &self,
        c: &mut Client<'_>,
        req: &Inbound,
        slot: &mut Slot,
        req_capture: Capture,
    ) -> Next {
        self.local(
            c,
            req,
            slot,
            req_capture,
            StatusCode::BAD_REQUEST,
            BAD_REQUEST_BODY,
        )
        .await
    }

    async fn bad_gateway(
        &self,
        c: &mut Client<'_>,
        req: &Inbound,
        slot: &mut Slot,
        req_capture: Capture,
        err: &str,
    ) -> Next {
        self.shared
            .config
            .logger
            .log(format_args!("reverse proxy upstream error: {err}"));
        self.local(
            c,
            req,
            slot,
            req_capture,
            StatusCode::BAD_GATEWAY,
            BAD_GATEWAY_BODY,
        )
        .await
    }

    /// Answers with a plain-text status of the proxy's own and records it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn local(
        &self,
        c: &mut Client<'_>,
        req: &Inbound,
        slot: &mut Slot,
        req_capture: Capture,
        status: StatusCode,
        text: &'static str,
    ) -> Next {
        let (bytes, headers) = local_response(req.http10, status, text);
        slot.finish(
            status.as_u16(),
            headers,
            None,
            req_capture,
            text.len() as u64,
        );
        if c.answered || c.wr.write_all(&bytes).await.is_err() {
            return Next::Close;
        }
        c.answered = true;
        // The request's body may not have been read: let the answer arrive before a reset.
        Next::Linger
    }
}

/// A complete plain-text answer of the proxy's own (the connection closes after it), and the
/// fields it carries (for the record).
pub(crate) fn local_response(
    http10: bool,
    status: StatusCode,
    text: &str,
) -> (BytesMut, HeaderMap) {
    const FIELDS: [(&str, &str); 2] = [
        ("content-type", "text/plain; charset=utf-8"),
        ("x-content-type-options", "nosniff"),
    ];
    let headers = FIELDS
        .iter()
        .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
        .collect();
    let out = http1::head::local_response(http10, status.as_u16(), &FIELDS, text.as_bytes(), true);
    (out, headers)
}

/// How a body is delimited on one hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    Close,
}

/// How the response body is delimited from the upstream, and how it is sent to the client:
/// chunked when its length is unknown (an HTTP/1.0 client: until the connection closes).
fn framings(req: &Inbound, resp: &Response, tunnel: bool) -> (Framing, Framing) {
    let status = resp.status;
    let no_body = req.method == Method::HEAD
        || (100..200).contains(&status)
        || status == 204
        || status == 304
        || tunnel;
    let up = if no_body {
        Framing::None
    } else if resp.fields.has_codings() {
        if resp.fields.chunked_last {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else if let Some(n) = resp.fields.length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    let out = match up {
        Framing::Chunked | Framing::Close if req.http10 => Framing::Close,
        Framing::Close => Framing::Chunked,
        f => f,
    };
    (up, out)
}

/// Writes the response head for the client: the upstream's fields that this hop passes on,
/// `Date` when the upstream sent none, and this hop's framing and connection fields.
fn client_head(
    out: &mut BytesMut,
    req: &Inbound,
    resp: &Response,
    framing: Framing,
    keep: bool,
    tunnel: bool,
) {
    status_line(out, req.http10, resp.status);
    let mut has_date = false;
    for (name, value) in &resp.headers {
        if name == header::TRAILER && framing != Framing::Chunked {
            continue;
        }
        if name == header::CONTENT_LENGTH && matches!(framing, Framing::Chunked | Framing::Close) {
            continue;
        }
        has_date |= name == header::DATE;
        put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !has_date {
        date_field(out);
    }
    if let (true, Some(up)) = (resp.status == 101, &resp.upgrade) {
        out.extend_from_slice(b"connection: Upgrade\r\n");
        put_field(out, b"upgrade", up.as_bytes());
    } else if !keep && !tunnel {
        out.extend_from_slice(b"connection: close\r\n");
    } else if keep && req.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Waits until the client's socket has something to say while the upstream is awaited:
/// `true` when it closed (or failed), `false` when it sent bytes (kept for the next request).
async fn client_leaves(c: &mut Client<'_>) -> bool {
    if c.buf.len() >= c.read_ahead {
        // Enough read ahead: stop watching rather than buffer without bound.
        std::future::pending::<()>().await;
    }
    c.buf.reserve(4096);
    matches!(c.rd.read_buf(&mut c.buf).await, Ok(0) | Err(_))
}

/// Reads until the first chunk-size line of a chunked body is complete and checks it.
async fn first_chunk_ok(c: &mut Client<'_>) -> Result<(), Failure> {
    loop {
        match httparse::parse_chunk_size(&c.buf) {
            Ok(httparse::Status::Complete(_)) => return Ok(()),
            Ok(httparse::Status::Partial) if c.buf.len() < http1::MAX_CHUNK_LINE => {}
            _ => return Err(Failure::BadBody),
        }
        c.buf.reserve(4096);
        match tokio::time::timeout(BODY_IDLE, c.rd.read_buf(&mut c.buf)).await {
            Ok(Ok(0) | Err(_)) | Err(_) => return Err(Failure::ClientGone),
            Ok(Ok(_)) => {}
        }
    }
}

fn response_failure(e: ResponseHeadError, reused: bool) -> Failure {
    match e {
        ResponseHeadError::Closed { any } => Failure::Upstream {
            msg: "EOF".to_owned(),
            fresh_retry: reused && !any,
        },
        ResponseHeadError::Malformed => Failure::Upstream {
            msg: "malformed HTTP response".to_owned(),
            fresh_retry: false,
        },
        ResponseHeadError::TooLarge => Failure::Upstream {
            msg: format!("server response headers exceeded {MAX_RESPONSE_HEAD} bytes; aborted"),
            fresh_retry: false,
        },
    }
}

/// Takes the response head of `n` bytes off `up_buf` and keeps what this hop passes on.
fn parse_response_head(up_buf: &mut BytesMut, n: usize) -> Result<Response, &'static str> {
    // A copy the size of the head, not a slice of the read buffer (see `conn.rs`).
    let head = Bytes::copy_from_slice(&up_buf[..n]);
    up_buf.advance(n);
    let parsed = parse_response(&head, usize::MAX, |resp, _| {
        let status = resp.code.ok_or("malformed HTTP response")?;
        let fields = HeadFields::read(pairs(resp.headers), |_, _| {})?;
        let named = fields.named(pairs(resp.headers));
        let mut headers = HeaderMap::with_capacity(resp.headers.len());
        let mut upgrade = None;
        for h in resp.headers.iter() {
            let n = h.name.as_bytes();
            if n.eq_ignore_ascii_case(b"upgrade") {
                upgrade = HeaderValue::from_maybe_shared(head.slice_ref(h.value)).ok();
            }
            // Hop-by-hop fields go (a `Content-Length` beside a coding with them); `Trailer`
            // stays, for the chunked answer that carries the trailers on.
            if rules::is_dropped(n, &fields, &named) && !n.eq_ignore_ascii_case(b"trailer") {
                continue;
            }
            let name = HeaderName::from_bytes(n).map_err(|_| "malformed MIME header")?;
            let value = HeaderValue::from_maybe_shared(head.slice_ref(h.value))
                .map_err(|_| "malformed MIME header")?;
            headers.append(name, value);
        }
        Ok(Response {
            status,
            headers,
            fields,
            http10: resp.version == Some(0),
            upgrade: if fields.upgrade { upgrade } else { None },
        })
    });
    match parsed {
        Ok(Some(r)) => r,
        _ => Err("malformed HTTP response"),
    }
}
