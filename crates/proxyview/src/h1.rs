//! HTTP/1.1 message bodies between a TCP connection and a tunnel stream, in both directions.
//! The agent reads its backends' response bodies and writes callers' request bodies with these;
//! the server reads callers' request bodies and writes agents' response bodies. One decoder and
//! one encoder for chunked framing, so both ends of the tunnel agree on it byte for byte.

use std::fmt::Write as _;
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use telemetry::Capture;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::http_util;
use crate::mux::{CopyError, RecvHalf, SendHalf};

/// Longest chunk-size line (with extensions) or trailer line accepted in a chunked body.
pub const MAX_CHUNK_LINE: usize = 4096;
/// How much is read from a socket at a time.
pub const READ_CHUNK: usize = 16 * 1024;
/// Below this, body bytes are copied next to what is already waiting to be written (a head, a
/// chunk header) so that they leave in one write; above it they are written on their own.
const COALESCE: usize = 16 * 1024;

/// How a body is delimited on the wire (RFC 9112 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delimit {
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes.
    Close,
}

/// A connection's read side while a body is read from it, with the bytes read ahead.
pub struct Reader<'a, R> {
    /// The socket.
    pub rd: &'a mut R,
    /// Bytes read and not yet used (the start of the body, or of whatever follows it).
    pub buf: &'a mut BytesMut,
    /// Longest the peer may send nothing in the middle of the body.
    pub idle: Duration,
    /// Receives a copy of the body's data (the access log's capture).
    pub capture: Option<&'a Mutex<Capture>>,
}

impl<R: AsyncRead + Unpin> Reader<'_, R> {
    /// Reads more, waiting at most the idle timeout; EOF is an error (the framing said more was
    /// coming).
    async fn fill(&mut self) -> Result<(), CopyError> {
        self.buf.reserve(READ_CHUNK);
        match tokio::time::timeout(self.idle, self.rd.read_buf(self.buf)).await {
            Err(_) => Err(CopyError::Idle),
            Ok(Ok(0) | Err(_)) => Err(CopyError::Broken),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// Forwards `n` body bytes (the buffer first, then the socket); `end` marks the last.
    pub async fn forward_bytes(
        &mut self,
        mut n: u64,
        end: bool,
        send: &mut SendHalf,
    ) -> Result<(), CopyError> {
        while n > 0 {
            if self.buf.is_empty() {
                self.fill().await?;
            }
            let take = self.buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            let data = self.buf.split_to(take).freeze();
            n -= take as u64;
            if let Some(c) = self.capture {
                c.lock().unwrap_or_else(|p| p.into_inner()).push(&data);
            }
            send.send_data(data, end && n == 0)
                .await
                .map_err(|_| CopyError::Broken)?;
        }
        Ok(())
    }

    /// Decodes a chunked body (RFC 9112 §7.1), forwarding the data and then the stream's end;
    /// trailers are read and dropped.
    pub async fn forward_chunked(&mut self, send: &mut SendHalf) -> Result<(), CopyError> {
        loop {
            let (used, size) = loop {
                match httparse::parse_chunk_size(self.buf) {
                    Ok(httparse::Status::Complete(x)) => break x,
                    Ok(httparse::Status::Partial) if self.buf.len() < MAX_CHUNK_LINE => {
                        self.fill().await?
                    }
                    _ => return Err(CopyError::Broken),
                }
            };
            self.buf.advance(used);
            if size == 0 {
                break;
            }
            self.forward_bytes(size, false, send).await?;
            self.expect_crlf().await?;
        }
        // Trailer section: field lines up to an empty line.
        loop {
            let line = loop {
                if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                if self.buf.len() >= MAX_CHUNK_LINE {
                    return Err(CopyError::Broken);
                }
                self.fill().await?;
            };
            self.buf.advance(line + 2);
            if line == 0 {
                break;
            }
        }
        send.send_data(Bytes::new(), true)
            .await
            .map_err(|_| CopyError::Broken)
    }

    async fn expect_crlf(&mut self) -> Result<(), CopyError> {
        while self.buf.len() < 2 {
            self.fill().await?;
        }
        if &self.buf[..2] != b"\r\n" {
            return Err(CopyError::Broken);
        }
        self.buf.advance(2);
        Ok(())
    }
}

/// Writes `out` (bytes already due, such as a message head) and then the body read from `recv`
/// in the given framing. Data that has already arrived is gathered into one write with what
/// precedes it, so a head and a small body cost one system call. Fails if the stream breaks or
/// carries more or fewer bytes than a `Length` framing promised. `capture` gets a copy of the
/// body's data.
pub async fn write_body<W>(
    wr: &mut W,
    recv: &mut RecvHalf,
    delimit: Delimit,
    mut out: BytesMut,
    capture: Option<&Mutex<Capture>>,
) -> Result<(), CopyError>
where
    W: AsyncWrite + Unpin,
{
    let mut left = match delimit {
        Delimit::Length(n) => Some(n),
        _ => None,
    };
    loop {
        let ready = recv.poll_chunk(&mut Context::from_waker(Waker::noop()));
        let next = match ready {
            Poll::Ready(c) => c,
            Poll::Pending => {
                if !out.is_empty() {
                    wr.write_all(&out).await.map_err(|_| CopyError::Broken)?;
                    out.clear();
                }
                recv.chunk().await
            }
        };
        let Some(chunk) = next else { break };
        let data = chunk.map_err(|_| CopyError::Broken)?;
        if let Some(c) = capture {
            c.lock().unwrap_or_else(|p| p.into_inner()).push(&data);
        }
        if let Some(n) = &mut left {
            // More than the declared length would be read by the peer as the next message.
            *n = n.checked_sub(data.len() as u64).ok_or(CopyError::Broken)?;
        } else if delimit == Delimit::Chunked {
            let _ = write!(out, "{:x}\r\n", data.len());
        }
        if out.len() + data.len() <= COALESCE {
            out.extend_from_slice(&data);
        } else {
            if !out.is_empty() {
                wr.write_all(&out).await.map_err(|_| CopyError::Broken)?;
                out.clear();
            }
            wr.write_all(&data).await.map_err(|_| CopyError::Broken)?;
        }
        if delimit == Delimit::Chunked {
            out.extend_from_slice(b"\r\n");
        }
    }
    match left {
        Some(0) | None => {}
        Some(_) => return Err(CopyError::Broken),
    }
    if delimit == Delimit::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        wr.write_all(&out).await.map_err(|_| CopyError::Broken)?;
    }
    Ok(())
}

/// A `Content-Length` value: decimal digits only, no sign, fits in a `u64`.
pub fn parse_length(t: &[u8]) -> Option<u64> {
    if t.is_empty() || t.len() > 19 || !t.iter().all(u8::is_ascii_digit) {
        return None;
    }
    t.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// What a message head's own fields say about its body and its connection (RFC 9112 §6, §9.6),
/// read in one pass. Both ends read heads with it: the agent its backends' responses, the server
/// callers' requests and agents' responses. Each decides from these what its side accepts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HeadFields {
    /// `Content-Length` (every value listed agreed).
    pub length: Option<u64>,
    /// How many transfer codings were listed.
    pub codings: usize,
    /// The last transfer coding listed is `chunked`.
    pub chunked_last: bool,
    /// `Connection: close`.
    pub close: bool,
    /// `Connection: keep-alive`.
    pub keep_alive: bool,
    /// `Connection: upgrade`.
    pub upgrade: bool,
    /// `Connection` also names other fields (see [`HeadFields::named`]).
    pub names_fields: bool,
}

impl HeadFields {
    /// Reads `(name, value)` pairs; fields other than these framing ones go to `other`. An
    /// invalid or conflicting `Content-Length` is an error.
    pub fn read<'a>(
        fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
        mut other: impl FnMut(&'a [u8], &'a [u8]),
    ) -> Result<Self, &'static str> {
        let mut f = Self::default();
        for (name, value) in fields {
            if name.eq_ignore_ascii_case(b"content-length") {
                for t in http_util::tokens(value) {
                    let n = parse_length(t).ok_or("invalid Content-Length")?;
                    if f.length.is_some_and(|m| m != n) {
                        return Err("conflicting Content-Length values");
                    }
                    f.length = Some(n);
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                for t in http_util::tokens(value) {
                    f.codings += 1;
                    f.chunked_last = t.eq_ignore_ascii_case(b"chunked");
                }
            } else if name.eq_ignore_ascii_case(b"connection") {
                for t in http_util::tokens(value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        f.close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        f.keep_alive = true;
                    } else if t.eq_ignore_ascii_case(b"upgrade") {
                        f.upgrade = true;
                    } else {
                        f.names_fields = true;
                    }
                }
            } else {
                other(name, value);
            }
        }
        Ok(f)
    }

    /// `Transfer-Encoding` is present.
    pub fn has_codings(&self) -> bool {
        self.codings > 0
    }

    /// The body is delimited by `chunked` alone (one coding, and it is `chunked`).
    pub fn only_chunked(&self) -> bool {
        self.codings == 1 && self.chunked_last
    }

    /// The tokens of the message's `Connection` fields when they name other fields (those
    /// fields are hop-by-hop for this message); empty, without a pass, when they do not.
    pub fn named<'a>(
        &self,
        fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Vec<&'a [u8]> {
        if !self.names_fields {
            return Vec::new();
        }
        fields
            .into_iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
            .flat_map(|(_, v)| http_util::tokens(v))
            .collect()
    }
}

/// Appends one `name: value` field line of a message head.
pub fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A connection's write side that fails with `TimedOut` when the peer takes no bytes for
/// `limit` (nginx's `send_timeout`): a caller that stops reading would otherwise hold its
/// connection, its tunnel stream and the stream's window for as long as it likes. The timer
/// exists only while a write waits, so writes the socket takes at once cost nothing extra.
pub struct SendLimit<W> {
    inner: W,
    limit: Duration,
    /// Created at the first write that has to wait; re-armed at each later wait.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    waiting: bool,
}

impl<W> SendLimit<W> {
    /// Wraps `inner`; each wait for the peer to take bytes may last at most `limit`.
    pub fn new(inner: W, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            timer: None,
            waiting: false,
        }
    }

    /// The inner write returned `Pending`: start or check the clock.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if !self.waiting {
            self.waiting = true;
            let deadline = tokio::time::Instant::now() + self.limit;
            match &mut self.timer {
                Some(t) => t.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let expired = self
            .timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready());
        if expired {
            return Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer took no bytes for {:?}", self.limit),
            ));
        }
        Poll::Pending
    }

    fn settle<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.waiting = false;
                Poll::Ready(r)
            }
            Poll::Pending => self.stalled(cx).map(Err),
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for SendLimit<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.settle(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.settle(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.settle(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.settle(cx, r)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn read(fields: &[(&str, &str)]) -> Result<HeadFields, &'static str> {
        HeadFields::read(
            fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
            |_, _| {},
        )
    }

    #[tokio::test]
    async fn a_peer_that_stops_reading_times_the_writer_out_and_a_slow_one_does_not() {
        let limit = Duration::from_millis(150);
        // Stops reading: the writer fails once the pipe is full and the limit passed.
        let (mut w, _r) = tokio::io::duplex(64);
        let mut w = SendLimit::new(&mut w, limit);
        let t0 = std::time::Instant::now();
        let e = tokio::time::timeout(limit * 10, w.write_all(&[7u8; 1024]))
            .await
            .expect("the stalled write never gave up")
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(t0.elapsed() >= limit, "{:?}", t0.elapsed());
        // Reads slowly but never pauses for the limit: the whole write goes through, although
        // it takes several limits in all.
        let (mut w, mut r) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut b = [0u8; 64];
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                match r.read(&mut b).await {
                    Ok(0) | Err(_) => break got,
                    Ok(n) => got.extend_from_slice(&b[..n]),
                }
            }
        });
        let t0 = std::time::Instant::now();
        {
            let mut w = SendLimit::new(&mut w, limit);
            w.write_all(&[9u8; 640]).await.unwrap();
            w.shutdown().await.unwrap();
        }
        drop(w);
        assert!(t0.elapsed() > limit * 2, "{:?}", t0.elapsed());
        assert_eq!(reader.await.unwrap(), vec![9u8; 640]);
    }

    #[test]
    fn framing_and_connection_fields_in_one_pass() {
        let f = read(&[
            ("Connection", "keep-alive, X-Secret, Upgrade"),
            ("content-length", "5, 5"),
            ("x-other", "1"),
        ])
        .unwrap();
        assert_eq!(f.length, Some(5));
        assert!(f.keep_alive && f.upgrade && f.names_fields && !f.close);
        let fields = [("connection", "close"), ("connection", "x-a , ,x-b")];
        let f = read(&fields).unwrap();
        assert!(f.close);
        let named = f.named(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        assert_eq!(named, [&b"close"[..], b"x-a", b"x-b"]);
        assert!(read(&[("connection", "close")])
            .unwrap()
            .named([(&b"connection"[..], &b"close"[..])])
            .is_empty());
    }

    #[test]
    fn transfer_codings_and_lengths() {
        let f = read(&[("transfer-encoding", "gzip, chunked")]).unwrap();
        assert!(f.has_codings() && f.chunked_last && !f.only_chunked());
        let f = read(&[("Transfer-Encoding", "chunked")]).unwrap();
        assert!(f.only_chunked());
        let f = read(&[
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked"),
        ])
        .unwrap();
        assert!(f.chunked_last && !f.only_chunked());
        let f = read(&[("transfer-encoding", "chunked, gzip")]).unwrap();
        assert!(f.has_codings() && !f.chunked_last);
        assert_eq!(
            read(&[("content-length", "x")]),
            Err("invalid Content-Length")
        );
        assert_eq!(
            read(&[("content-length", "1"), ("Content-Length", "2")]),
            Err("conflicting Content-Length values")
        );
        let mut others = Vec::new();
        HeadFields::read([(&b"date"[..], &b"d"[..])], |n, v| others.push((n, v))).unwrap();
        assert_eq!(others, [(&b"date"[..], &b"d"[..])]);
    }
}
