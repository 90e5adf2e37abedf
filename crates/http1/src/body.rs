//! Message bodies between a byte stream and whatever carries them on the other side of the
//! proxy. The other side is a [`BodySink`] (where a body read here goes) or a [`BodySource`]
//! (where a body written here comes from): a tunnel stream, a channel, another connection. One
//! decoder and one encoder for chunked framing, so every hop agrees on it byte for byte.

use std::fmt::Write as _;
use std::future::Future;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::{MAX_CHUNK_LINE, READ_CHUNK};

/// Largest trailer section kept (the field lines together); a longer one breaks the body.
pub const MAX_TRAILERS: usize = 64 * 1024;

/// Below this, body bytes are copied next to what is already waiting to be written (a head, a
/// chunk header) so that they leave in one write; above it they are written on their own.
const COALESCE: usize = 16 * 1024;

/// How a body is delimited on the wire (RFC 9112 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes.
    Close,
}

/// Why a body stopped before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyError {
    /// Reading or writing failed, the framing was broken, or the other side is gone.
    Broken,
    /// The peer sent nothing for the idle limit in the middle of the body.
    Idle,
}

/// Sees a copy of a body's data as it passes (an access log's capture).
pub type Tap<'a> = dyn Fn(&[u8]) + Sync + 'a;

/// Where a body read from a connection goes.
pub trait BodySink {
    /// Takes the next piece of the body; `end` marks the last (possibly empty) one.
    fn send(
        &mut self,
        data: Bytes,
        end: bool,
    ) -> impl Future<Output = Result<(), CopyError>> + Send;

    /// Takes a chunked body's trailer section (its field lines, each ending in CRLF, without the
    /// final empty line) just before the body's end is sent. Sinks that do not forward trailers
    /// keep the default, which drops them.
    fn trailers(&mut self, section: Bytes) {
        let _ = section;
    }
}

/// Where a body written to a connection comes from.
pub trait BodySource {
    /// The next piece of the body, `None` at its end.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, CopyError>>>;
}

/// A connection's read side while a body is read from it, with the bytes read ahead.
pub struct Reader<'a, R> {
    /// The socket.
    pub rd: &'a mut R,
    /// Bytes read and not yet used (the start of the body, or of whatever follows it).
    pub buf: &'a mut BytesMut,
    /// Longest the peer may send nothing in the middle of the body.
    pub idle: Duration,
    /// Sees a copy of the body's data (an access log's capture).
    pub tap: Option<&'a Tap<'a>>,
}

impl<R: AsyncRead + Unpin> Reader<'_, R> {
    /// Reads more, waiting at most the idle limit; EOF is an error (the framing said more was
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
    pub async fn forward_bytes<S: BodySink>(
        &mut self,
        mut n: u64,
        end: bool,
        send: &mut S,
    ) -> Result<(), CopyError> {
        while n > 0 {
            if self.buf.is_empty() {
                self.fill().await?;
            }
            let take = self.buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            let data = self.buf.split_to(take).freeze();
            n -= take as u64;
            if let Some(tap) = self.tap {
                tap(&data);
            }
            send.send(data, end && n == 0).await?;
        }
        Ok(())
    }

    /// Decodes a chunked body (RFC 9112 §7.1), forwarding the data, the trailer section (to
    /// [`BodySink::trailers`], when there is one) and then the body's end.
    pub async fn forward_chunked<S: BodySink>(&mut self, send: &mut S) -> Result<(), CopyError> {
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
            // The limit is on the line, not on what one read happened to bring: a long line
            // that arrived whole is refused like one that arrives in pieces.
            if used > MAX_CHUNK_LINE {
                return Err(CopyError::Broken);
            }
            self.buf.advance(used);
            if size == 0 {
                break;
            }
            self.forward_bytes(size, false, send).await?;
            self.expect_crlf().await?;
        }
        // Trailer section: field lines up to an empty line.
        let mut section = BytesMut::new();
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
            if line >= MAX_CHUNK_LINE {
                return Err(CopyError::Broken);
            }
            if line == 0 {
                self.buf.advance(2);
                break;
            }
            if section.len() + line > MAX_TRAILERS {
                return Err(CopyError::Broken);
            }
            section.extend_from_slice(&self.buf[..line + 2]);
            self.buf.advance(line + 2);
        }
        if !section.is_empty() {
            send.trailers(section.freeze());
        }
        send.send(Bytes::new(), true).await
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
/// precedes it, so a head and a small body cost one system call. Fails if the source breaks or
/// carries more or fewer bytes than a `Length` framing promised. `tap` sees a copy of the
/// body's data.
pub async fn write_body<W, S>(
    wr: &mut W,
    recv: &mut S,
    framing: Framing,
    mut out: BytesMut,
    tap: Option<&Tap<'_>>,
) -> Result<(), CopyError>
where
    W: AsyncWrite + Unpin,
    S: BodySource,
{
    let mut left = match framing {
        Framing::Length(n) => Some(n),
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
                std::future::poll_fn(|cx| recv.poll_chunk(cx)).await
            }
        };
        let Some(chunk) = next else { break };
        let data = chunk?;
        if let Some(tap) = tap {
            tap(&data);
        }
        if let Some(n) = &mut left {
            // More than the declared length would be read by the peer as the next message.
            *n = n.checked_sub(data.len() as u64).ok_or(CopyError::Broken)?;
        } else if framing == Framing::Chunked {
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
        if framing == Framing::Chunked {
            out.extend_from_slice(b"\r\n");
        }
    }
    match left {
        Some(0) | None => {}
        Some(_) => return Err(CopyError::Broken),
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        wr.write_all(&out).await.map_err(|_| CopyError::Broken)?;
    }
    Ok(())
}
