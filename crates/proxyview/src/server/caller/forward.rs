//! One forwarded exchange on the callers' port: the request body goes up the tunnel stream while
//! the agent's answer is awaited, the caller's socket is watched meanwhile (a caller that hangs
//! up resets the stream at once; bytes of a pipelined next request are kept), then the agent's
//! head is checked and written to the caller as it came, with the body framing, `Date` and
//! `Connection` fields this hop owns, and the body streamed after it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use telemetry::Capture;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::log::{reaches_caller, LogCtx};
use super::request::{BodyKind, Forward, MAX_REQUEST_HEAD};
use super::CallerIo;
use crate::access_log::CAPTURE_LIMIT;
use crate::mux::{RecvHalf, SendHalf, StreamError};
use crate::protocol::{self, RawResponseHead};
use crate::router::Session;
use crate::server::state::Server;
use http1::head::{date_field, status_line};
use http1::{put_field, CopyError, Framing as Delimit, HeadFields, Reader, SendLimit, READ_CHUNK};

/// The interim answer to `Expect: 100-continue`, sent before the body is read.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Why the caller's side of an exchange stopped being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallerSide {
    /// The request body could not be sent up (the caller broke off, or the stream was reset).
    UploadFailed,
    /// The caller closed the connection or it failed.
    Gone,
}

/// How a forwarded exchange left the connection.
pub(super) enum Next {
    KeepAlive,
    Close,
    Upgrade(SendHalf, RecvHalf),
}

/// What the checked response head of the agent says about the answer to write.
struct Checked {
    /// Its `Content-Length`.
    length: Option<u64>,
    /// It carries its own `Date`.
    has_date: bool,
}

impl Server {
    /// Sends the request body up while the answer is awaited, then writes the answer.
    pub(super) async fn forward<S: CallerIo>(
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
        let interim = expect_continue && body != BodyKind::None;
        if interim && wr.write_all(CONTINUE).await.is_err() {
            return Next::Close;
        }
        let (up_send, mut pipe_send) = match upgrade {
            Some(_) => (None, Some(send)),
            None => (Some(send), None),
        };
        let capture = log.as_ref().map(|l| l.request.clone());
        let uploaded = AtomicBool::new(body == BodyKind::None);
        let reading = caller_side(&mut rd, buf, up_send, body, capture.as_deref(), &uploaded);
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
        let mut fail = |(status, msg): (StatusCode, String)| {
            probe.answered(status.as_u16());
            self.fail(log.take(), status, &msg, !keep, http10)
        };
        let (block, resp_end) = match answer.map_err(|()| self.no_answer()) {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                return write_local(&mut wr, &fail(tunnel_failed(&session, e)), keep).await
            }
            Err(e) => return write_local(&mut wr, &fail(e), keep).await,
        };
        let head = match RawResponseHead::parse(&block) {
            Ok(h) => h,
            Err(e) => return write_local(&mut wr, &fail(bad_head(&session, e)), keep).await,
        };
        let status = head.status;
        probe.answered(status);
        let switching = status == 101;
        let Checked { length, has_date } = match self.check_head(&head, &session, upgrade.is_some())
        {
            Ok(c) => c,
            Err(e) => return write_local(&mut wr, &fail(e), keep).await,
        };
        if upgrade.is_some() && !switching {
            end_pipe(pipe_send.take()).await;
        }
        let delimit = delimit(head_method || switching, status, resp_end, length, http10);
        if delimit == Some(Delimit::Close) || *self.stopping.borrow() {
            keep_alive = false;
        }
        let out = caller_head(&head, http10, delimit, length, has_date, keep_alive, {
            switching.then(|| upgrade.as_deref().unwrap_or_default())
        });

        if switching {
            return self
                .switched(&mut wr, &out, head, log, pipe_send, recv)
                .await;
        }
        // Written in place, within this exchange's state: the response path moves no future.
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
            while_reading(write, reading.as_mut(), &mut reading_done).await
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

    /// Writes a 101's head (`out`), logs it, and hands the connection over to the byte pipe
    /// (or closes it when the head could not be written).
    async fn switched<W: AsyncWrite + Unpin>(
        &self,
        wr: &mut W,
        out: &[u8],
        head: RawResponseHead<'_>,
        log: Option<LogCtx>,
        pipe: Option<SendHalf>,
        recv: RecvHalf,
    ) -> Next {
        let sent = wr.write_all(out).await;
        if let Some(l) = log {
            self.emit_raw(l, head, None);
        }
        match (sent, pipe) {
            (Ok(()), Some(send)) => Next::Upgrade(send, recv),
            _ => Next::Close,
        }
    }

    /// The local answer when the agent sent no response head within the response timeout.
    fn no_answer(&self) -> (StatusCode, String) {
        let msg = format!(
            "no response from the agent within {:?}",
            self.cfg.response_timeout
        );
        (StatusCode::GATEWAY_TIMEOUT, msg)
    }

    /// Checks the agent's response head before any of it reaches the caller: what would be a
    /// bad answer is turned into a local 502 (or Proxyview's 404 for an agent error in legacy
    /// mode).
    fn check_head(
        &self,
        head: &RawResponseHead<'_>,
        session: &Session,
        asked_upgrade: bool,
    ) -> Result<Checked, (StatusCode, String)> {
        if head.status == 101 && !asked_upgrade {
            return Err((
                StatusCode::BAD_GATEWAY,
                format!(
                    "agent {:?} switched protocols on a request that asked for no upgrade",
                    session.client_id
                ),
            ));
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
            return Err((
                StatusCode::BAD_GATEWAY,
                format!(
                    "agent {:?} sent an invalid or conflicting Content-Length",
                    session.client_id
                ),
            ));
        };
        if agent_error && self.cfg.legacy_errors {
            return Err((StatusCode::NOT_FOUND, "agent error".to_string()));
        }
        Ok(Checked { length, has_date })
    }
}

/// The backend refused the upgrade: close our (empty) direction of the pipe cleanly, so the
/// answer's body still streams instead of being cut by a reset.
async fn end_pipe(send: Option<SendHalf>) {
    if let Some(mut send) = send {
        let _ = send.send_data(Bytes::new(), true).await;
    }
}

/// The local answer when the tunnel stream failed before the agent's head came.
fn tunnel_failed(session: &Session, e: StreamError) -> (StatusCode, String) {
    let msg = format!("tunnel to agent {:?} failed: {e}", session.client_id);
    (StatusCode::BAD_GATEWAY, msg)
}

/// The local answer when the agent's response head does not decode.
fn bad_head(session: &Session, e: impl std::fmt::Display) -> (StatusCode, String) {
    let msg = format!(
        "agent {:?} sent a bad response head: {e}",
        session.client_id
    );
    (StatusCode::BAD_GATEWAY, msg)
}

/// The caller's side of the connection while the exchange lasts: the request body goes up
/// (`send`, absent for an upgrade or when it already went), then the socket is watched, so a
/// caller that hangs up is noticed at once (the stream is reset and the agent stops the backend
/// request) and bytes of a pipelined next request are kept in `buf`.
async fn caller_side<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    send: Option<SendHalf>,
    body: BodyKind,
    capture: Option<&Mutex<Capture>>,
    uploaded: &AtomicBool,
) -> CallerSide {
    if let Some(mut send) = send {
        let cancelled = send.cancelled_owned();
        let tap = capture.map(crate::access_log::tap);
        let mut reader = Reader {
            rd: &mut *rd,
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
}

/// Drives `write` while the caller's side goes on being read; a caller gone breaks it off.
/// Both futures stay where they are pinned (moving them would copy their whole state).
async fn while_reading(
    mut write: Pin<&mut impl Future<Output = Result<(), CopyError>>>,
    mut reading: Pin<&mut impl Future<Output = CallerSide>>,
    reading_done: &mut bool,
) -> Result<(), CopyError> {
    loop {
        tokio::select! {
            r = write.as_mut() => break r,
            r = reading.as_mut(), if !*reading_done => {
                if r == CallerSide::Gone {
                    break Err(CopyError::Broken);
                }
                *reading_done = true;
            }
        }
    }
}

/// How the answer's body is delimited towards the caller (`None`: it has none, as for `HEAD`
/// and 101, `no_body`, and for 1xx, 204 and 304): the agent's length when there is one, else
/// chunked, or the close of the connection for HTTP/1.0.
fn delimit(
    no_body: bool,
    status: u16,
    resp_end: bool,
    length: Option<u64>,
    http10: bool,
) -> Option<Delimit> {
    if no_body || (100..200).contains(&status) || status == 204 || status == 304 {
        None
    } else if resp_end {
        Some(Delimit::Length(length.unwrap_or(0)))
    } else if let Some(n) = length {
        Some(Delimit::Length(n))
    } else if http10 {
        Some(Delimit::Close)
    } else {
        Some(Delimit::Chunked)
    }
}

/// The response head as the caller gets it: the agent's fields less hop-by-hop and tunnel
/// ones, then the framing, `Date` and `Connection` fields this hop owns (`upgrade`: the
/// protocol switched to, on a 101).
fn caller_head(
    head: &RawResponseHead<'_>,
    http10: bool,
    delimit: Option<Delimit>,
    length: Option<u64>,
    has_date: bool,
    keep_alive: bool,
    upgrade: Option<&str>,
) -> BytesMut {
    let mut out = BytesMut::with_capacity(512);
    status_line(&mut out, http10, head.status);
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
    if let Some(proto) = upgrade {
        put_field(&mut out, b"connection", b"upgrade");
        put_field(&mut out, b"upgrade", proto.as_bytes());
    } else if !keep_alive {
        put_field(&mut out, b"connection", b"close");
    } else if http10 {
        put_field(&mut out, b"connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
    out
}
/// Writes a local answer in the middle of a forwarded exchange.
pub(super) async fn write_local<W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut W,
    b: &[u8],
    keep: bool,
) -> Next {
    match wr.write_all(b).await {
        Ok(()) if keep => Next::KeepAlive,
        _ => Next::Close,
    }
}
