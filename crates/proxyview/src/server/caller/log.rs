//! The access-log side of one caller request: what is remembered from the request head until
//! the answer is known, and the record written then. A request the caller abandons before its
//! answer is still logged (499) when its context is dropped, so no answered or abandoned request
//! goes unrecorded.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use telemetry::{Capture, Exchange};

use crate::access_log::{AccessRecord, AccessSink, CAPTURE_LIMIT};
use crate::auth::{logged_headers, Credentials};
use crate::http_util;
use crate::protocol::RawResponseHead;
use crate::router::Session;
use crate::server::state::Server;
use http1::rules;

/// Status logged when the caller went away before a response head was sent (nginx's convention,
/// as cwproxy logs it).
pub const CLIENT_CLOSED: u16 = 499;

/// What the server remembers about a request until its log record is written.
pub(super) struct LogCtx {
    sink: Arc<dyn AccessSink>,
    done: bool,
    start: SystemTime,
    t0: Instant,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    /// The request body as captured while it goes up (shared with the upload).
    pub(super) request: Arc<Mutex<Capture>>,
    /// The route served (`unmatched` in the record while none is).
    pub(super) endpoint: Option<String>,
    client_id: Option<String>,
    session: Option<u64>,
    tls: bool,
}

impl LogCtx {
    /// The context of a request just read, its proxy token (`credential`) left out.
    pub(super) fn new(
        sink: Arc<dyn AccessSink>,
        method: &str,
        target: &str,
        fields: &[httparse::Header<'_>],
        credential: Option<Credentials>,
        tls: bool,
    ) -> Self {
        Self {
            sink,
            done: false,
            start: SystemTime::now(),
            t0: Instant::now(),
            method: Method::from_bytes(method.as_bytes()).unwrap_or_default(),
            uri: log_uri(target),
            headers: logged_headers(&header_map(fields), credential),
            request: Arc::new(Mutex::new(Capture::new(CAPTURE_LIMIT))),
            endpoint: None,
            client_id: None,
            session: None,
            tls,
        }
    }

    pub(super) fn served_by(mut self, s: &Session) -> Self {
        self.client_id = Some(s.client_id.clone());
        self.session = Some(s.id);
        self
    }

    pub(super) fn record(
        mut self,
        status: u16,
        response_headers: HeaderMap,
        response_body: Option<Capture>,
        local: u64,
    ) -> AccessRecord {
        self.take_record(status, response_headers, response_body, local)
    }

    fn take_record(
        &mut self,
        status: u16,
        response_headers: HeaderMap,
        response_body: Option<Capture>,
        local: u64,
    ) -> AccessRecord {
        self.done = true;
        let request_body =
            std::mem::take(&mut *self.request.lock().unwrap_or_else(|p| p.into_inner()));
        AccessRecord {
            exchange: Exchange {
                start: self.start,
                end: SystemTime::now(),
                elapsed: self.t0.elapsed(),
                method: self.method.clone(),
                uri: std::mem::take(&mut self.uri),
                tls: self.tls,
                request_headers: std::mem::take(&mut self.headers),
                request_body,
                status,
                response_headers,
                response_body,
                local_response_bytes: local,
                endpoint: Some(self.endpoint.take().unwrap_or_else(|| "unmatched".into())),
                client_id: self.client_id.clone(),
            },
            client_id: self.client_id.take(),
            session: self.session,
        }
    }
}

impl Drop for LogCtx {
    fn drop(&mut self) {
        if !self.done {
            let rec = self.take_record(CLIENT_CLOSED, HeaderMap::new(), None, 0);
            self.sink.emit(rec);
        }
    }
}

impl Server {
    /// Logs an answer that came from the agent: its head as the caller got it.
    pub(super) fn emit_raw(&self, l: LogCtx, head: RawResponseHead<'_>, body: Option<Capture>) {
        let Some(sink) = &self.sink else { return };
        let mut headers = HeaderMap::new();
        for (n, v) in head.fields().filter(|(n, _)| reaches_caller(n)) {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) {
                headers.append(n, v);
            }
        }
        sink.emit(l.record(head.status, headers, body, 0));
    }
}

/// Whether a field of the agent's response head goes on to the caller (and so into the access
/// log, which records the head as the caller got it): not hop-by-hop, not tunnel metadata.
pub(super) fn reaches_caller(name: &[u8]) -> bool {
    !rules::is_hop_by_hop_name(name) && !http_util::is_internal_name(name)
}

/// The request's fields as a header map (only built when the access log is on).
fn header_map(fields: &[httparse::Header<'_>]) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(fields.len());
    for f in fields {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(f.name.as_bytes()),
            HeaderValue::from_bytes(f.value),
        ) {
            h.append(n, v);
        }
    }
    h
}

/// The request target as a URI for the access log; a target the URI grammar refuses is logged
/// with its bytes percent-encoded rather than lost.
fn log_uri(target: &str) -> Uri {
    if let Ok(u) = target.parse::<Uri>() {
        return u;
    }
    let mut s = String::with_capacity(target.len() * 3);
    for b in target.bytes() {
        if b.is_ascii_alphanumeric() || b"/?=&-._~%:@!$'()*+,;".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s.parse().unwrap_or_else(|_| Uri::from_static("/"))
}
