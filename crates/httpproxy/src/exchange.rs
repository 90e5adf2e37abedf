//! The hand-off to telemetry: one [`telemetry::Exchange`] per exchange, built when the response
//! ends, fails, or the client goes away, and passed to the caller's [`ExchangeSink`].

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use http::{HeaderMap, Method, Uri};
use telemetry::diag::Diag;
use telemetry::{Capture, Exchange};

/// The request capture, shared between the upstream-bound body and the exchange record.
pub(crate) type SharedCapture = Arc<Mutex<Capture>>;

pub(crate) fn push_capture(capture: &SharedCapture, chunk: &[u8]) {
    // A poisoned lock only means another capture writer panicked; the bytes are still plain data.
    let mut guard = capture.lock().unwrap_or_else(|e| e.into_inner());
    guard.push(chunk);
}

/// Status logged when the client went away before the response was complete (nginx's convention).
pub const STATUS_CLIENT_CLOSED: u16 = 499;

/// Receives every completed exchange, including health-path requests (suppression is the caller's
/// policy). Called exactly once per exchange from the connection task: it must not block.
pub trait ExchangeSink: Send + Sync + 'static {
    /// Takes one finished exchange.
    fn exchange(&self, exchange: Exchange);
}

impl<F> ExchangeSink for F
where
    F: Fn(Exchange) + Send + Sync + 'static,
{
    fn exchange(&self, exchange: Exchange) {
        self(exchange)
    }
}

/// What is known about an exchange before the upstream answers.
pub(crate) struct Draft {
    pub(crate) start: SystemTime,
    pub(crate) started: Instant,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) request_headers: HeaderMap,
    pub(crate) request_capture: Option<SharedCapture>,
    pub(crate) capture_limit: usize,
}

impl Draft {
    pub(crate) fn into_exchange(
        self,
        status: u16,
        response_headers: HeaderMap,
        response_body: Option<Capture>,
        local_response_bytes: u64,
    ) -> Exchange {
        let request_body = match self.request_capture {
            Some(shared) => {
                let mut guard = shared.lock().unwrap_or_else(|e| e.into_inner());
                std::mem::replace(&mut *guard, Capture::new(self.capture_limit))
            }
            None => Capture::new(self.capture_limit),
        };
        Exchange {
            start: self.start,
            end: SystemTime::now(),
            elapsed: self.started.elapsed(),
            method: self.method,
            uri: self.uri,
            tls: false,
            request_headers: self.request_headers,
            request_body,
            status,
            response_headers,
            response_body,
            local_response_bytes,
            endpoint: None,
            client_id: None,
        }
    }
}

/// How a streamed response ended.
pub(crate) enum Outcome<'a> {
    /// The upstream body ended and was fully handed to the client connection.
    Complete,
    /// Reading the upstream body failed mid-stream; the client connection is aborted.
    UpstreamBodyError(&'a hyper::Error),
    /// The client connection went away first.
    ClientGone,
}

/// Everything needed to report a streamed response once it is over.
pub(crate) struct Finish {
    pub(crate) draft: Draft,
    pub(crate) status: u16,
    pub(crate) response_headers: HeaderMap,
    pub(crate) sink: Arc<dyn ExchangeSink>,
    pub(crate) logger: Diag,
}

impl Finish {
    pub(crate) fn complete(self, outcome: Outcome<'_>, response_capture: Capture) {
        let status = match outcome {
            Outcome::Complete => self.status,
            Outcome::UpstreamBodyError(e) => {
                self.logger
                    .log(format_args!("reverse proxy upstream error: {e}"));
                502
            }
            Outcome::ClientGone => STATUS_CLIENT_CLOSED,
        };
        let exchange =
            self.draft
                .into_exchange(status, self.response_headers, Some(response_capture), 0);
        self.sink.exchange(exchange);
    }
}
