//! Moving bytes between a stream and something else until an end: a hyper body, another
//! stream (the cluster's peer link), a socket's read half, or both directions of an upgraded
//! connection. Each stops waiting once the other side gave up, so nothing is held for a peer
//! that left.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{RecvHalf, SendHalf, StreamError};

/// Sends `body` on `send` to its end (trailers are not carried); a body error resets the
/// stream. Stops waiting for the body when the peer resets the stream or the session ends, so
/// a caller that stalls mid-upload holds nothing once the other side gave up.
pub async fn send_body<B>(mut body: B, send: &mut SendHalf) -> Result<(), StreamError>
where
    B: Body<Data = Bytes> + Unpin,
{
    use http_body_util::BodyExt as _;
    let stream = send.stream.clone();
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            () = stream.cancelled() => return Err(send.error()),
        };
        match frame {
            None => return send.send_data(Bytes::new(), true).await,
            Some(Err(_)) => return Err(send.broken("body failed")),
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data() {
                    let end = body.is_end_stream();
                    send.send_data(data, end).await?;
                    if end {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Relays one stream's body into another to its end (a cluster peer link spliced onto an
/// agent's stream); a source that fails or is reset resets `send`. Stops waiting for the source
/// when `send`'s stream is reset or its session ends.
pub async fn relay(mut recv: RecvHalf, send: &mut SendHalf) -> Result<(), StreamError> {
    let stream = send.stream.clone();
    loop {
        let chunk = tokio::select! {
            c = recv.chunk() => c,
            () = stream.cancelled() => return Err(send.error()),
        };
        match chunk {
            None => return send.send_data(Bytes::new(), true).await,
            Some(Err(_)) => return Err(send.broken("relayed body failed")),
            Some(Ok(data)) => send.send_data(data, false).await?,
        }
    }
}

/// Why [`send_until_eof`] (or a body read by `http1`) stopped before the end: `Broken` when
/// reading failed or the stream is gone (the stream is reset either way), `Idle` when the reader
/// yielded nothing for the idle timeout.
pub use http1::CopyError;

/// Sends what is in `buf`, then everything `r` yields until its EOF, then the stream's end;
/// with `idle`, a reader silent that long is given up on.
pub async fn send_until_eof<R>(
    r: &mut R,
    buf: &mut BytesMut,
    send: &mut SendHalf,
    idle: Option<Duration>,
) -> Result<(), CopyError>
where
    R: AsyncRead + Unpin,
{
    loop {
        if !buf.is_empty() {
            send.send_data(buf.split().freeze(), false)
                .await
                .map_err(|_| CopyError::Broken)?;
        }
        buf.reserve(16 * 1024);
        let read = match idle {
            None => r.read_buf(buf).await,
            Some(d) => tokio::time::timeout(d, r.read_buf(buf))
                .await
                .map_err(|_| CopyError::Idle)?,
        };
        if read.map_err(|_| CopyError::Broken)? == 0 {
            break;
        }
    }
    send.send_data(Bytes::new(), true)
        .await
        .map_err(|_| CopyError::Broken)
}

/// Pipes bytes between `io` and an upgraded stream until both directions ended.
pub async fn pipe<T>(io: T, send: &mut SendHalf, mut recv: RecvHalf)
where
    T: AsyncRead + AsyncWrite,
{
    let (mut r, mut w) = tokio::io::split(io);
    let mut buf = BytesMut::new();
    // No idle limit: an upgraded connection may rightly stay quiet for long.
    let up = async {
        send_until_eof(&mut r, &mut buf, send, None)
            .await
            .map_err(|_| ())
    };
    let down = async {
        while let Some(chunk) = recv.chunk().await {
            let chunk = chunk.map_err(|_| ())?;
            w.write_all(&chunk).await.map_err(|_| ())?;
        }
        w.shutdown().await.map_err(|_| ())
    };
    // Either side failing drops both halves, which resets the stream for the peer.
    let _ = tokio::try_join!(up, down);
}
