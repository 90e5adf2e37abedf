//! A connection's write side that fails with `TimedOut` when the peer takes no bytes for a
//! limit (nginx's `send_timeout`): a peer that stops reading would otherwise hold its
//! connection, and whatever the proxy holds for it, for as long as it likes.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWrite;

/// Wraps a write side; each wait for the peer to take bytes may last at most `limit`. The timer
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
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

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
}
