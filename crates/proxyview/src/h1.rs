//! HTTP/1.1 message bodies between a TCP connection and a tunnel stream, in both directions.
//! The agent reads its backends' response bodies and writes callers' request bodies with these;
//! the server reads callers' request bodies and writes agents' response bodies. One decoder and
//! one encoder for chunked framing, so both ends of the tunnel agree on it byte for byte.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use telemetry::Capture;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

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
