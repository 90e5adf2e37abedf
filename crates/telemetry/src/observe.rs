//! A hook for consumers that learn from traffic (the API model of cwproxy's admin listener):
//! the telemetry worker hands each parsed exchange to an [`Observer`] before redaction, so the
//! observer sees real types and formats, and runs off the request path on the worker thread.

use std::time::Duration;

use crate::entry::Entry;
use crate::hash::EntryHashes;
use crate::route::Template;

/// One exchange as the telemetry worker parsed it.
#[derive(Debug)]
pub struct Observation<'e, 'a> {
    /// The entry before redaction (bodies parsed, queries split).
    pub entry: &'e Entry<'a>,
    /// Its structural hashes.
    pub hashes: &'e EntryHashes,
    /// The route template of the path, `None` when the path is its own template.
    pub template: Option<&'e Template<'e>>,
    /// The `Endpoint` cap (`ENDPOINT_LIMIT`) is reached and this path is not among the admitted
    /// values: it is reported as [`crate::route::OVERFLOW_ENDPOINT`].
    pub endpoint_overflow: bool,
    /// The redaction lists of the line (`None` when `LOG_REDACT=off`), for anything the
    /// observer shows of values.
    pub redaction: Option<&'e crate::redact::Redaction>,
    /// Request `Content-Type`, if any.
    pub request_content_type: Option<&'e [u8]>,
    /// Response `Content-Type`, if any.
    pub response_content_type: Option<&'e [u8]>,
    /// Duration of the exchange.
    pub elapsed: Duration,
    /// Milliseconds since the Unix epoch at the end of the exchange.
    pub timestamp_ms: i64,
}

/// Learns from exchanges on the telemetry worker thread. Implementations must be quick and must
/// not block; they may append whole lines (each ending in `\n`) to `out`, which are written and
/// delivered to the sinks like traffic lines.
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// Called once per traffic exchange, before its line is rendered.
    fn observe(&self, observation: &Observation<'_, '_>, out: &mut Vec<u8>);
}
