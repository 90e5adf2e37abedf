//! The server side of a connection: waiting for the next request head with the two timeouts
//! every HTTP/1.1 server applies (an idle keep-alive connection may wait long for its next
//! request; a head that has begun must be complete soon), within a byte limit.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::time::Instant;

use crate::head::{parse_request, HeadError};

/// Bounds on reading one request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Largest head accepted, request line included; a longer one is [`HeadFailure::TooLarge`].
    pub max_bytes: usize,
    /// Most fields accepted (`usize::MAX`: only `max_bytes` bounds them).
    pub max_fields: usize,
    /// Longest a head may take from its first byte (from the connection's start for the first
    /// request, as Go's `ReadHeaderTimeout`).
    pub header_timeout: Duration,
    /// Longest a kept-alive connection may wait for the first byte of its next request.
    pub idle_timeout: Duration,
}

/// Why no request head could be read. `Closed` and `TimedOut` end the connection without an
/// answer; the others are answered (400, 431) before it closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadFailure {
    /// The client closed the connection, or it failed, or it stayed idle past the idle timeout
    /// with no byte of a new request.
    Closed,
    /// A head had begun and was not complete within the header timeout.
    TimedOut,
    /// Not HTTP/1.x syntax.
    Malformed,
    /// Longer than the byte limit.
    TooLarge,
}

/// Reads from `rd` into `buf` until `buf` starts with a complete request head, then hands the
/// parsed head and its length to `f` (which must copy out what it keeps: the head borrows
/// `buf`). `first`: this is the connection's first request, so the header timeout runs from now.
pub async fn read_request_head<R, T>(
    rd: &mut R,
    buf: &mut BytesMut,
    limits: &HeadLimits,
    first: bool,
    f: impl FnOnce(&httparse::Request<'_, '_>, usize) -> T,
) -> Result<T, HeadFailure>
where
    R: AsyncRead + Unpin,
{
    let start = Instant::now();
    let mut head_deadline = first.then(|| start + limits.header_timeout);
    let idle_deadline = start + limits.idle_timeout;
    let mut f = Some(f);
    loop {
        if !buf.is_empty() {
            head_deadline.get_or_insert_with(|| Instant::now() + limits.header_timeout);
            let Some(parse) = f.take() else {
                return Err(HeadFailure::Malformed);
            };
            let window = &buf[..buf.len().min(limits.max_bytes)];
            let mut parse = Some(parse);
            match parse_request(window, limits.max_fields, |req, n| {
                parse.take().map(|p| p(req, n))
            }) {
                Ok(Some(Some(t))) => return Ok(t),
                Ok(Some(None)) => return Err(HeadFailure::Malformed),
                Ok(None) if buf.len() >= limits.max_bytes => return Err(HeadFailure::TooLarge),
                Ok(None) => f = parse,
                Err(HeadError::TooManyFields) => return Err(HeadFailure::TooLarge),
                Err(HeadError::Malformed) => return Err(HeadFailure::Malformed),
            }
        }
        let deadline = head_deadline.unwrap_or(idle_deadline);
        buf.reserve(crate::READ_CHUNK.min(limits.max_bytes.saturating_sub(buf.len()).max(1)));
        match tokio::time::timeout_at(deadline, rd.read_buf(buf)).await {
            Err(_) if buf.is_empty() && !first => return Err(HeadFailure::Closed),
            Err(_) => return Err(HeadFailure::TimedOut),
            Ok(Ok(0) | Err(_)) => return Err(HeadFailure::Closed),
            Ok(Ok(_)) => {}
        }
    }
}

/// The request line's method and target of a head that could not be parsed whole (too large,
/// or broken after its first line), so that the answer to it can still be logged with them.
pub fn salvage_request_line(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = buf.iter().position(|&b| b == b'\n')?;
    let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
    let mut parts = line.splitn(3, |&b| b == b' ');
    let method = parts.next().filter(|m| !m.is_empty())?;
    let target = parts.next().filter(|t| !t.is_empty())?;
    Some((method, target))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    fn limits(max_bytes: usize) -> HeadLimits {
        HeadLimits {
            max_bytes,
            max_fields: usize::MAX,
            header_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(600),
        }
    }

    async fn read(
        input: &[u8],
        lim: HeadLimits,
        first: bool,
    ) -> Result<(usize, usize), HeadFailure> {
        let (mut a, mut b) = tokio::io::duplex(1 << 22);
        a.write_all(input).await.unwrap();
        let mut buf = BytesMut::new();
        let r = read_request_head(&mut b, &mut buf, &lim, first, |req, n| {
            (req.headers.len(), n)
        })
        .await;
        drop(a);
        r
    }

    #[tokio::test]
    async fn many_fields_fit_when_only_bytes_are_limited() {
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..500 {
            head.extend_from_slice(format!("x-f{i}: v\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        let (fields, n) = read(&head, limits(1 << 20), true).await.unwrap();
        assert_eq!((fields, n), (500, head.len()));
        assert_eq!(
            read(&head, limits(4096), true).await,
            Err(HeadFailure::TooLarge)
        );
        let capped = HeadLimits {
            max_fields: 100,
            ..limits(1 << 20)
        };
        assert_eq!(read(&head, capped, true).await, Err(HeadFailure::TooLarge));
    }

    #[tokio::test]
    async fn timeouts_tell_a_silent_idle_connection_from_a_stalled_head() {
        let (_a, mut b) = tokio::io::duplex(64);
        let mut buf = BytesMut::new();
        let lim = limits(1024);
        let t = std::time::Instant::now();
        let r = read_request_head(&mut b, &mut buf, &lim, false, |_, n| n).await;
        assert_eq!(r, Err(HeadFailure::Closed));
        assert!(
            t.elapsed() >= Duration::from_millis(550),
            "{:?}",
            t.elapsed()
        );
        let r = read_request_head(&mut b, &mut buf, &lim, true, |_, n| n).await;
        assert_eq!(r, Err(HeadFailure::TimedOut));
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(b"GET / HT").await.unwrap();
        let t = std::time::Instant::now();
        let r = read_request_head(&mut b, &mut buf, &lim, false, |_, n| n).await;
        assert_eq!(r, Err(HeadFailure::TimedOut));
        assert!(
            t.elapsed() < Duration::from_millis(550),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn request_line_is_salvaged_from_a_broken_head() {
        assert_eq!(
            salvage_request_line(b"GET /x HTTP/1.1\r\nbad\0\r\n"),
            Some((&b"GET"[..], &b"/x"[..]))
        );
        assert_eq!(salvage_request_line(b"GET /x"), None);
    }
}
