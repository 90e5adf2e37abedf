//! Per-request access log: the server builds one [`telemetry::Exchange`] per proxied request (with
//! `endpoint` = route name) and hands it, with the serving agent's `clientId`, to an [`AccessSink`].
//!
//! Bodies are observed while they stream ([`Tap`]): every byte is counted, at most
//! `capture_limit` bytes are kept, and the record is emitted when the response body ends, fails,
//! or is dropped because the caller went away. Nothing on the request path waits for the sink.

use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use telemetry::{Capture, Exchange};
use tokio::sync::mpsc;

use crate::http_util::{BoxError, PvBody};

/// Bytes of each body kept for the log line (the rest is counted, not kept).
pub const CAPTURE_LIMIT: usize = 4 * 1024;
/// Records queued for the writer before new ones are dropped (and counted).
pub const QUEUE_DEPTH: usize = 4096;

/// One proxied exchange plus the tunnel facts `Exchange` has no field for.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    /// The exchange, `endpoint` set to the route name.
    pub exchange: Exchange,
    /// `clientId` of the agent that served it (`None` when no agent was reached).
    pub client_id: Option<String>,
    /// Server session id of that agent.
    pub session: Option<u64>,
}

/// Where access records go; must never block.
pub trait AccessSink: Send + Sync {
    /// Takes one record.
    fn emit(&self, record: AccessRecord);
}

impl<F: Fn(AccessRecord) + Send + Sync> AccessSink for F {
    fn emit(&self, record: AccessRecord) {
        self(record)
    }
}

/// Writes one JSON line per record to stdout from a background task; a full queue drops records
/// and counts them rather than slowing requests down.
#[derive(Debug)]
pub struct JsonLines {
    tx: mpsc::Sender<AccessRecord>,
    dropped: Arc<AtomicU64>,
}

impl JsonLines {
    /// Starts the writer task (needs a Tokio runtime).
    pub fn stdout() -> Arc<Self> {
        let (tx, mut rx) = mpsc::channel::<AccessRecord>(QUEUE_DEPTH);
        let dropped = Arc::new(AtomicU64::new(0));
        let d = dropped.clone();
        tokio::task::spawn_blocking(move || {
            let stdout = std::io::stdout();
            let mut line = Vec::with_capacity(1024);
            while let Some(rec) = rx.blocking_recv() {
                line.clear();
                encode(&rec, d.swap(0, Ordering::Relaxed), &mut line);
                let mut out = stdout.lock();
                // One write per line so concurrent writers never interleave within a line.
                if out.write_all(&line).and_then(|()| out.flush()).is_err() {
                    return;
                }
            }
        });
        Arc::new(Self { tx, dropped })
    }
}

impl AccessSink for JsonLines {
    fn emit(&self, record: AccessRecord) {
        if self.tx.try_send(record).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The line written by [`JsonLines`]: a flat JSON object with the exchange's main facts.
pub fn encode(rec: &AccessRecord, dropped_before: u64, out: &mut Vec<u8>) {
    let ex = &rec.exchange;
    let header = |name: &str| {
        ex.request_headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let mut v = serde_json::json!({
        "time": telemetry::record::unix_millis(ex.start),
        "endpoint": ex.endpoint,
        "clientId": rec.client_id,
        "session": rec.session,
        "method": ex.method.as_str(),
        "uri": ex.uri.to_string(),
        "host": header("host"),
        "userAgent": header("user-agent"),
        "status": ex.status,
        "latencyMs": ex.elapsed.as_secs_f64() * 1000.0,
        "requestBytes": ex.request_body.total(),
        "responseBytes": ex.response_body.as_ref().map_or(ex.local_response_bytes, Capture::total),
    });
    if dropped_before > 0 {
        v["droppedBefore"] = dropped_before.into();
    }
    if serde_json::to_writer(&mut *out, &v).is_ok() {
        out.push(b'\n');
    }
}

/// A body wrapper that feeds every chunk to a [`Capture`] and runs `finish` exactly once: at end of
/// stream, on error, or when dropped early.
pub struct Tap {
    inner: PvBody,
    capture: Arc<Mutex<Capture>>,
    finish: Option<Box<dyn FnOnce(bool) + Send>>,
}

impl Tap {
    /// Wraps `inner`, pushing its bytes into `capture`; `finish(complete)` runs once at the end.
    pub fn new(
        inner: PvBody,
        capture: Arc<Mutex<Capture>>,
        finish: Option<Box<dyn FnOnce(bool) + Send>>,
    ) -> Self {
        Self {
            inner,
            capture,
            finish,
        }
    }

    fn done(&mut self, complete: bool) {
        if let Some(f) = self.finish.take() {
            f(complete);
        }
    }
}

impl Body for Tap {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.capture
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(d);
                }
            }
            Poll::Ready(None) => self.done(true),
            Poll::Ready(Some(Err(_))) => self.done(false),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let complete = self.inner.is_end_stream();
        self.done(complete);
    }
}
