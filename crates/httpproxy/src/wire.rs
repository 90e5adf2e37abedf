//! The body plumbing of an exchange: a sink that writes a body to a socket in this hop's
//! framing, one that collects a body in memory, a read side that tells a client that left from
//! a broken body, and the relay of a body delimited by the connection's end.

use bytes::{Bytes, BytesMut};
use http1::body::{BodySink, CopyError, Reader};
use telemetry::Capture;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// A [`BodySink`] writing a body to a socket in the framing chosen for this hop, copying what
/// passes into a capture. Bytes already due (a head) leave with the first piece of the body.
pub(crate) struct WireSink<'a, W> {
    pub(crate) wr: &'a mut W,
    pub(crate) out: BytesMut,
    pub(crate) chunked: bool,
    pub(crate) capture: &'a mut Capture,
    pub(crate) trailers: Option<Bytes>,
    /// Writing failed: the far side of this sink is gone.
    pub(crate) failed: bool,
}

impl<W: AsyncWrite + Unpin + Send> WireSink<'_, W> {
    async fn flush_out(&mut self) -> Result<(), CopyError> {
        if !self.out.is_empty() {
            if self.wr.write_all(&self.out).await.is_err() {
                self.failed = true;
                return Err(CopyError::Broken);
            }
            self.out.clear();
        }
        Ok(())
    }
}

impl<W: AsyncWrite + Unpin + Send> BodySink for WireSink<'_, W> {
    async fn send(&mut self, data: Bytes, end: bool) -> Result<(), CopyError> {
        use std::fmt::Write as _;
        self.capture.push(&data);
        if self.chunked && !data.is_empty() {
            let _ = write!(self.out, "{:x}\r\n", data.len());
        }
        if self.out.len() + data.len() <= 16 * 1024 {
            self.out.extend_from_slice(&data);
        } else {
            self.flush_out().await?;
            if self.wr.write_all(&data).await.is_err() {
                self.failed = true;
                return Err(CopyError::Broken);
            }
        }
        if self.chunked && !data.is_empty() {
            self.out.extend_from_slice(b"\r\n");
        }
        if end && self.chunked {
            self.out.extend_from_slice(b"0\r\n");
            if let Some(t) = self.trailers.take() {
                self.out.extend_from_slice(&t);
            }
            self.out.extend_from_slice(b"\r\n");
        }
        self.flush_out().await
    }

    fn trailers(&mut self, section: Bytes) {
        self.trailers = Some(section);
    }
}

/// Collects a body in memory (a request made replayable for retries).
pub(crate) struct Collect<'a> {
    pub(crate) data: BytesMut,
    pub(crate) capture: &'a mut Capture,
}

impl BodySink for Collect<'_> {
    async fn send(&mut self, data: Bytes, _end: bool) -> Result<(), CopyError> {
        self.capture.push(&data);
        self.data.extend_from_slice(&data);
        Ok(())
    }
}

/// A read side that remembers whether it reached EOF or failed, so that a broken body can be
/// told from a client that went away.
pub(crate) struct Watched<R> {
    pub(crate) inner: R,
    pub(crate) gone: bool,
}

impl<R: AsyncRead + Unpin> AsyncRead for Watched<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        match &r {
            std::task::Poll::Ready(Ok(())) if buf.filled().len() == before => self.gone = true,
            std::task::Poll::Ready(Err(_)) => self.gone = true,
            _ => {}
        }
        r
    }
}

pub(crate) async fn relay_to_eof<R, S>(
    reader: &mut Reader<'_, R>,
    sink: &mut S,
) -> Result<(), CopyError>
where
    R: AsyncRead + Unpin,
    S: BodySink,
{
    loop {
        if !reader.buf.is_empty() {
            let data = reader.buf.split().freeze();
            sink.send(data, false).await?;
        }
        reader.buf.reserve(http1::READ_CHUNK);
        match tokio::time::timeout(reader.idle, reader.rd.read_buf(reader.buf)).await {
            Err(_) => return Err(CopyError::Idle),
            Ok(Err(_)) => return Err(CopyError::Broken),
            Ok(Ok(0)) => return sink.send(Bytes::new(), true).await,
            Ok(Ok(_)) => {}
        }
    }
}
