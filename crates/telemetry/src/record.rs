//! What the proxies hand to telemetry: owned, plain records of one exchange or one health probe.
//!
//! Building a record on the request path costs a few moves and header-map clones; everything
//! expensive (body parsing, hashing, JSON) happens later on the telemetry worker.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method, Uri};

use crate::capture::Capture;

/// One proxied HTTP exchange, as seen by the proxy.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// Wall-clock time the request arrived (`request.time`).
    pub start: SystemTime,
    /// Wall-clock time the exchange ended (`response.time`).
    pub end: SystemTime,
    /// Monotonic duration of the exchange (`delay`, `Latency`).
    pub elapsed: Duration,
    /// Request method as received.
    pub method: Method,
    /// Request target as received (origin-form or absolute-form).
    pub uri: Uri,
    /// Whether the inbound connection was TLS (decides the default port and `X-Forwarded-Proto`).
    pub tls: bool,
    /// Inbound request headers exactly as received.
    pub request_headers: HeaderMap,
    /// Captured inbound request body.
    pub request_body: Capture,
    /// Final status logged: the upstream's, or the one produced locally (502, 500, 499).
    pub status: u16,
    /// Response headers sent to the client (upstream's after hop-by-hop removal, or local ones).
    pub response_headers: HeaderMap,
    /// Captured upstream response body; `None` when no upstream response was received.
    pub response_body: Option<Capture>,
    /// Bytes of a locally produced response body (e.g. 12 for `Bad Gateway\n`); used when
    /// `response_body` is `None`.
    pub local_response_bytes: u64,
    /// Overrides the `Endpoint` metric dimension (default: the decoded request path).
    pub endpoint: Option<String>,
    /// The tunnel agent that served the exchange (proxyview); written as `client_id` after
    /// `app_name`. Never set by cwproxy, whose lines keep the original schema.
    pub client_id: Option<String>,
}

/// One health probe result.
#[derive(Debug, Clone)]
pub struct HealthProbe {
    /// Full resolved URL, e.g. `http://127.0.0.1:8080/health` (also the `Endpoint` dimension).
    pub url: String,
    /// URL host name (no brackets).
    pub host: String,
    /// Explicit port of the URL.
    pub port: u16,
    /// URL path (`/` when empty).
    pub path: String,
    /// Raw query of the URL, without `?`.
    pub raw_query: String,
    /// Wall-clock probe start.
    pub start: SystemTime,
    /// Wall-clock time response headers arrived, or the error time.
    pub end: SystemTime,
    /// Time from probe start to response headers or error (`delay`, `HealthLatency`).
    pub latency: Duration,
    /// HTTP status; 0 on transport error.
    pub status: u16,
    /// Response headers (empty on error).
    pub headers: HeaderMap,
    /// Captured response body.
    pub body: Capture,
    /// Error text, logged as the body when the captured body is empty.
    pub error: Option<String>,
}

/// Milliseconds since the Unix epoch, as Go's `time.UnixMilli` (negative before 1970).
pub fn unix_millis(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => {
            let d = e.duration();
            // Go floors towards negative infinity for times before the epoch.
            let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            if d.as_nanos() % 1_000_000 == 0 {
                -ms
            } else {
                -ms - 1
            }
        }
    }
}
