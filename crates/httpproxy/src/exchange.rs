//! The hand-off to telemetry: one [`telemetry::Exchange`] per exchange, built when the response
//! ends, fails, or the client goes away, and passed to the caller's [`ExchangeSink`].

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{HeaderMap, Method, Uri};
use telemetry::{Capture, Exchange};

use crate::request::Inbound;

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
    start: SystemTime,
    started: Instant,
    method: Method,
    uri: Uri,
    request_headers: HeaderMap,
    capture_limit: usize,
}

impl Draft {
    /// The draft of `req`'s exchange; it takes the inbound fields (the record keeps them as
    /// they came), which the exchange then reads through [`Slot::request_headers`].
    pub(crate) fn new(req: &mut Inbound, capture_limit: usize) -> Self {
        let headers = std::mem::take(&mut req.headers);
        Self::bare(req.method.clone(), req.uri.clone(), headers, capture_limit)
    }

    /// A request refused before it could be parsed whole.
    pub(crate) fn bare(
        method: Method,
        uri: Uri,
        request_headers: HeaderMap,
        capture_limit: usize,
    ) -> Self {
        Draft {
            start: SystemTime::now(),
            started: Instant::now(),
            method,
            uri,
            request_headers,
            capture_limit,
        }
    }
}

/// Where an exchange's draft waits for its outcome. It is reported exactly once: by
/// [`Slot::finish`], or as 499 when the connection goes away first (the slot is dropped with
/// the connection's task, e.g. when a drain runs out of time).
pub(crate) struct Slot {
    draft: Option<Draft>,
    sink: Arc<dyn ExchangeSink>,
}

impl Slot {
    pub(crate) fn new(sink: Arc<dyn ExchangeSink>) -> Self {
        Slot { draft: None, sink }
    }

    pub(crate) fn fill(&mut self, draft: Draft) {
        self.draft = Some(draft);
    }

    /// The inbound fields of the exchange in the slot (empty once it is reported).
    pub(crate) fn request_headers(&self) -> &HeaderMap {
        static EMPTY: std::sync::OnceLock<HeaderMap> = std::sync::OnceLock::new();
        match &self.draft {
            Some(d) => &d.request_headers,
            None => EMPTY.get_or_init(HeaderMap::new),
        }
    }

    /// Reports the exchange with this outcome.
    pub(crate) fn finish(
        &mut self,
        status: u16,
        response_headers: HeaderMap,
        response_body: Option<Capture>,
        request_body: Capture,
        local_response_bytes: u64,
    ) {
        let Some(d) = self.draft.take() else { return };
        self.sink.exchange(Exchange {
            start: d.start,
            end: SystemTime::now(),
            elapsed: d.started.elapsed(),
            method: d.method,
            uri: d.uri,
            tls: false,
            request_headers: d.request_headers,
            request_body,
            status,
            response_headers,
            response_body,
            local_response_bytes,
            endpoint: None,
            client_id: None,
        });
    }

    /// Reports the exchange as abandoned by the client.
    pub(crate) fn client_gone(&mut self, request_body: Capture) {
        self.finish(
            STATUS_CLIENT_CLOSED,
            HeaderMap::new(),
            None,
            request_body,
            0,
        );
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(d) = &self.draft {
            let limit = d.capture_limit;
            self.client_gone(Capture::new(limit));
        }
    }
}
