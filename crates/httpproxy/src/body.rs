//! Streaming bodies: the request body sent upstream (tee'd into the request capture, optionally
//! replayed or stitched behind a buffered prefix) and the response body sent to the client (tee'd
//! into the response capture, reporting the exchange exactly once when it ends or is dropped).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use telemetry::Capture;

use crate::conn::InFlight;
use crate::exchange::{push_capture, Finish, Outcome, SharedCapture};

/// Boxed error type of the bodies handled here.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An inbound body whose data frames are copied into the request capture.
pub(crate) struct TeeBody<B> {
    pub(crate) inner: B,
    pub(crate) capture: Option<SharedCapture>,
}

impl<B> TeeBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    pub(crate) fn poll_tee(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(capture)) = (frame.data_ref(), &self.capture) {
                    push_capture(capture, data);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    /// The next frame, for callers outside a poll context (buffering, first-frame peek).
    pub(crate) async fn next_frame(&mut self) -> Option<Result<Frame<Bytes>, BoxError>> {
        std::future::poll_fn(|cx| self.poll_tee(cx)).await
    }
}

/// The body of an upstream request.
pub(crate) enum UpstreamBody<B> {
    /// No body.
    Empty,
    /// A fully buffered (replayable) body and its trailers.
    Buffered {
        /// Data not yet sent.
        data: Option<Bytes>,
        /// Trailers not yet sent.
        trailers: Option<HeaderMap>,
    },
    /// A streamed body, after the bytes already read from it.
    Stream {
        /// Bytes read before streaming started (buffer attempt or first-frame check).
        prefix: Option<Bytes>,
        /// The rest of the inbound body.
        inner: TeeBody<B>,
    },
}

impl<B> Body for UpstreamBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Empty => Poll::Ready(None),
            UpstreamBody::Buffered { data, trailers } => {
                if let Some(d) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            UpstreamBody::Stream { prefix, inner } => {
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                inner.poll_tee(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
            UpstreamBody::Stream { prefix, inner } => {
                prefix.is_none() && inner.inner.is_end_stream()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            UpstreamBody::Stream { prefix, inner } => {
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let h = inner.inner.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(h.lower().saturating_add(extra));
                if let Some(u) = h.upper() {
                    out.set_upper(u.saturating_add(extra));
                }
                out
            }
        }
    }
}

/// The body of a response sent to the client.
pub struct ProxyBody {
    kind: Kind,
    /// Keeps the client connection "busy" (no idle timeout) until the body is gone.
    _in_flight: Option<InFlight>,
}

// Boxing the big variant would cost an allocation per exchange; the body lives inline in hyper's
// connection state, where one large value is cheap.
#[allow(clippy::large_enum_variant)]
enum Kind {
    /// Upstream body tee'd into the response capture; reports the exchange when done.
    Upstream {
        inner: hyper::body::Incoming,
        capture: Capture,
        finish: Option<Finish>,
    },
    /// A locally produced body (502, 500, 400) or nothing (101).
    Local(Option<Bytes>),
}

impl ProxyBody {
    pub(crate) fn upstream(inner: hyper::body::Incoming, capture: Capture, finish: Finish) -> Self {
        ProxyBody {
            kind: Kind::Upstream {
                inner,
                capture,
                finish: Some(finish),
            },
            _in_flight: None,
        }
    }

    pub(crate) fn local(bytes: Option<Bytes>) -> Self {
        ProxyBody {
            kind: Kind::Local(bytes),
            _in_flight: None,
        }
    }

    pub(crate) fn with_in_flight(mut self, guard: Option<InFlight>) -> Self {
        self._in_flight = guard;
        self
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream {
                inner,
                capture,
                finish,
            } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        capture.push(data);
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    if let Some(f) = finish.take() {
                        f.complete(Outcome::UpstreamBodyError(&e), std::mem::take(capture));
                    }
                    // Returning the error makes hyper abort the client connection instead of
                    // ending the message cleanly: the client can tell the body is incomplete.
                    Poll::Ready(Some(Err(e.into())))
                }
                Poll::Ready(None) => {
                    if let Some(f) = finish.take() {
                        f.complete(Outcome::Complete, std::mem::take(capture));
                    }
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Local(b) => b.is_none(),
            Kind::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Local(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let Kind::Upstream {
            inner,
            capture,
            finish,
        } = &mut self.kind
        {
            if let Some(f) = finish.take() {
                // hyper drops bodies it never polls (HEAD, 204, 304, empty): those ended normally.
                let outcome = if inner.is_end_stream() {
                    Outcome::Complete
                } else {
                    Outcome::ClientGone
                };
                f.complete(outcome, std::mem::take(capture));
            }
        }
    }
}
