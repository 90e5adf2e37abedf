//! Log entries (`_t` TRAFFIC and HEALTH) in cwproxy's member order and omission rules, and the
//! metric sets that accompany them.

use std::borrow::Cow;
use std::time::Duration;

use crate::capture::Capture;
use crate::decode::{self, Decoded, Encoding};
use crate::emf::{self, Datum, EmfError, MetricEventKind};
use crate::hash::{EntryHashes, Scratch};
use crate::json;
use crate::multimap::Multimap;
use crate::observe::{Observation, Observer};
use crate::output::{is_binary, BinaryBodies, OutputOptions};
use crate::parse::{self, raw_text, TRUNCATED_SUFFIX};
use crate::record::{unix_millis, Exchange, HealthProbe};
use crate::redact::{self, Redaction};
use crate::route;
use crate::value::{Parsed, Value};

/// Namespace of traffic metrics.
pub const TRAFFIC_NAMESPACE: &str = "app/traffic";
/// Namespace of health metrics.
pub const HEALTH_NAMESPACE: &str = "app/health";

/// The category written in `_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// A proxied exchange.
    Traffic,
    /// A health probe.
    Health,
}

impl Category {
    fn as_str(self) -> &'static str {
        match self {
            Category::Traffic => "TRAFFIC",
            Category::Health => "HEALTH",
        }
    }
}

/// A body as logged: the parsed value and, for traffic, the raw text.
#[derive(Debug)]
pub struct BodyPart<'a> {
    /// `body`.
    pub value: Parsed<'a>,
    /// `body_raw`, omitted when `None` or empty.
    pub raw: Option<Cow<'a, [u8]>>,
}

impl BodyPart<'static> {
    /// A null body with no raw text.
    pub fn null() -> Self {
        Self {
            value: Parsed::new(Value::Null, 0),
            raw: None,
        }
    }
}

impl<'a> BodyPart<'a> {
    /// Parses captured bytes by content type; `with_raw` adds `body_raw` (traffic entries).
    pub fn parse(
        content_type: Option<&[u8]>,
        bytes: &'a [u8],
        truncated: bool,
        with_raw: bool,
    ) -> Self {
        Self::parse_as(
            content_type,
            bytes,
            truncated,
            with_raw,
            BinaryBodies::Escape,
        )
    }

    /// [`Self::parse`] with a choice of form for binary bodies: a compact body is one short
    /// string of the same shape (so `body_hash` is unchanged) and has no `body_raw`.
    pub fn parse_as(
        content_type: Option<&[u8]>,
        bytes: &'a [u8],
        truncated: bool,
        with_raw: bool,
        binary: BinaryBodies,
    ) -> Self {
        let value = parse::parse_body(content_type, bytes, truncated);
        if binary == BinaryBodies::Compact
            && matches!(value.value(), Value::Str(_))
            && is_binary(bytes, truncated)
        {
            let mut text = format!("[binary {} bytes]", bytes.len());
            if truncated {
                text.push_str(TRUNCATED_SUFFIX);
            }
            return Self {
                value: Parsed::new(Value::Str(Cow::Owned(text.into_bytes())), 0),
                raw: None,
            };
        }
        let raw = (with_raw && !bytes.is_empty()).then(|| raw_text(bytes, truncated));
        Self { value, raw }
    }

    /// Redacts sensitive fields of the parsed body by key, and the raw text lexically; when the
    /// lexical pass finds fewer secrets than the parsed body held, the raw text is replaced as a
    /// whole, so nothing redacted in `body` survives in `body_raw`.
    fn redact(&mut self, r: &Redaction) {
        let value = self.value.value_mut();
        let in_tree = if let Value::Str(text) = value {
            let (redacted, n) = r.redact_text(text);
            if let Cow::Owned(t) = redacted {
                *text = Cow::Owned(t);
            }
            n
        } else {
            r.redact_value(value)
        };
        if let Some(raw) = self.raw.as_mut() {
            let (redacted, n) = r.redact_text(raw);
            let redacted = match redacted {
                Cow::Owned(t) => Some(t),
                Cow::Borrowed(_) => None,
            };
            if n < in_tree {
                *raw = Cow::Borrowed(redact::REDACTED.as_bytes());
            } else if let Some(t) = redacted {
                *raw = Cow::Owned(t);
            }
        }
    }
}

/// The `request` object.
#[derive(Debug)]
pub struct RequestPart<'a> {
    /// `time`: ms since epoch of the start.
    pub time_ms: i64,
    /// `host`.
    pub host: Cow<'a, [u8]>,
    /// `port`.
    pub port: i64,
    /// `path` (decoded).
    pub path: Cow<'a, [u8]>,
    /// `method`.
    pub method: &'a str,
    /// `url`.
    pub url: Cow<'a, [u8]>,
    /// `queries`.
    pub queries: Multimap<'a>,
    /// `cookies`.
    pub cookies: Multimap<'a>,
    /// `headers`.
    pub headers: Multimap<'a>,
    /// `body`, `body_raw`.
    pub body: BodyPart<'a>,
}

/// The `response` object.
#[derive(Debug)]
pub struct ResponsePart<'a> {
    /// `time`: ms since epoch of the end.
    pub time_ms: i64,
    /// `status`.
    pub status: u16,
    /// `headers`.
    pub headers: Multimap<'a>,
    /// `set_cookies`.
    pub set_cookies: Multimap<'a>,
    /// `body`, `body_raw`.
    pub body: BodyPart<'a>,
}

/// One log entry ready to be written.
#[derive(Debug)]
pub struct Entry<'a> {
    /// `_t`.
    pub category: Category,
    /// `app_name` (and the start of `_q`); omitted for health entries.
    pub app_name: &'a str,
    /// `client_id` (proxyview's agent), omitted when `None`.
    pub client_id: Option<&'a str>,
    /// Pre-rendered `aws_meta` object, if any metadata was detected.
    pub aws_meta: Option<&'a [u8]>,
    /// Exact duration behind `delay` and the summary.
    pub delay: Duration,
    /// `request`.
    pub request: RequestPart<'a>,
    /// `response`.
    pub response: ResponsePart<'a>,
}

fn millis_f64(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1e6
}

impl Entry<'_> {
    /// Timestamp for EMF and CloudWatch: response time, else request time, else now.
    pub fn timestamp_ms(&self) -> i64 {
        if self.response.time_ms > 0 {
            self.response.time_ms
        } else if self.request.time_ms > 0 {
            self.request.time_ms
        } else {
            unix_millis(std::time::SystemTime::now())
        }
    }

    /// Appends the entry as one JSON object (no newline). `scratch` is reused for signatures.
    pub fn write_json(&self, out: &mut Vec<u8>, scratch: &mut Scratch) {
        let hashes = self.hashes(scratch);
        self.write_json_hashed(out, &hashes);
    }

    /// Replaces sensitive values everywhere in the entry: header values on the lists, every
    /// cookie and set-cookie value, sensitive query parameters (in `queries` and `url`) and body
    /// fields. Hashes describe shapes, which redaction keeps, but callers compute them first
    /// anyway ([`Self::hashes`]) so they stay identical whatever redaction does.
    pub fn redact(&mut self, r: &Redaction) {
        let rq = &mut self.request;
        rq.headers.redact(|k| r.is_sensitive_header(k));
        rq.cookies.redact(|_| true);
        rq.queries.redact(|k| r.is_sensitive_key(k));
        rq.url = r.redact_url(std::mem::take(&mut rq.url));
        rq.body.redact(r);
        let rs = &mut self.response;
        rs.headers.redact(|k| r.is_sensitive_header(k));
        rs.set_cookies.redact(|_| true);
        rs.body.redact(r);
    }

    /// Appends the entry as one JSON object with hashes computed beforehand.
    pub fn write_json_hashed(&self, out: &mut Vec<u8>, hashes: &EntryHashes) {
        out.push(b'{');
        if self.category == Category::Traffic {
            out.extend_from_slice(b"\"_q\":\"");
            // Go trims the whole summary; only the app name can contribute leading space.
            let name = self.app_name.trim_start();
            if !name.is_empty() {
                json::write_str_body(out, name.as_bytes());
                out.push(b' ');
            }
            json::write_str_body(
                out,
                if self.request.method.is_empty() {
                    b"UNKNOWN"
                } else {
                    self.request.method.as_bytes()
                },
            );
            out.push(b' ');
            json::write_str_body(out, &self.request.path);
            out.push(b' ');
            json::write_u64(out, u64::from(self.response.status));
            out.push(b' ');
            json::write_duration_ms3(out, self.delay);
            out.extend_from_slice(b"ms");
            out.extend_from_slice(b"\",");
        }
        out.extend_from_slice(b"\"_t\":\"");
        out.extend_from_slice(self.category.as_str().as_bytes());
        out.push(b'"');
        if self.category == Category::Traffic && !self.app_name.is_empty() {
            out.extend_from_slice(b",\"app_name\":");
            json::write_str(out, self.app_name.as_bytes());
        }
        if let Some(client_id) = self.client_id {
            out.extend_from_slice(b",\"client_id\":");
            json::write_str(out, client_id.as_bytes());
        }
        if let Some(meta) = self.aws_meta {
            out.extend_from_slice(b",\"aws_meta\":");
            out.extend_from_slice(meta);
        }
        out.extend_from_slice(b",\"global_hash\":\"");
        out.extend_from_slice(&hashes.global);
        out.extend_from_slice(b"\",\"delay\":");
        json::write_duration_ms3(out, self.delay);

        let rq = &self.request;
        out.extend_from_slice(b",\"request\":{\"time\":");
        json::write_i64(out, rq.time_ms);
        out.extend_from_slice(b",\"host\":");
        json::write_str(out, &rq.host);
        out.extend_from_slice(b",\"port\":");
        json::write_i64(out, rq.port);
        out.extend_from_slice(b",\"path\":");
        json::write_str(out, &rq.path);
        out.extend_from_slice(b",\"method\":");
        json::write_str(out, rq.method.as_bytes());
        out.extend_from_slice(b",\"url\":");
        json::write_str(out, &rq.url);
        out.extend_from_slice(b",\"queries\":");
        rq.queries.write_json(out);
        if let Some(h) = hashes.queries {
            out.extend_from_slice(b",\"queries_hash\":\"");
            out.extend_from_slice(&h);
            out.push(b'"');
        }
        out.extend_from_slice(b",\"cookies\":");
        rq.cookies.write_json(out);
        out.extend_from_slice(b",\"headers\":");
        rq.headers.write_json(out);
        write_body(out, &rq.body, hashes.request_body);

        let rs = &self.response;
        out.extend_from_slice(b"},\"response\":{\"time\":");
        json::write_i64(out, rs.time_ms);
        out.extend_from_slice(b",\"status\":");
        json::write_u64(out, u64::from(rs.status));
        out.extend_from_slice(b",\"headers\":");
        rs.headers.write_json(out);
        out.extend_from_slice(b",\"set_cookies\":");
        rs.set_cookies.write_json(out);
        write_body(out, &rs.body, hashes.response_body);
        out.extend_from_slice(b"}}");
    }

    /// The entry's structural hashes.
    pub fn hashes(&self, scratch: &mut Scratch) -> EntryHashes {
        EntryHashes::compute(
            |out| self.request.queries.signature(out),
            !self.request.queries.is_empty(),
            self.request.body.value.value(),
            self.response.body.value.value(),
            &mut scratch.signature,
            &mut scratch.cache,
        )
    }

    /// Appends the entry with its metrics embedded as EMF, then any overflow metric-only events,
    /// each line terminated by `\n` (the stdout form).
    pub fn write_with_metrics(
        &self,
        out: &mut Vec<u8>,
        scratch: &mut Scratch,
        data: &[Datum<'_>],
    ) -> Result<(), EmfError> {
        let hashes = self.hashes(scratch);
        self.write_with_metrics_hashed(out, scratch, data, &hashes)
    }

    /// [`Self::write_with_metrics`] with hashes computed beforehand.
    pub fn write_with_metrics_hashed(
        &self,
        out: &mut Vec<u8>,
        scratch: &mut Scratch,
        data: &[Datum<'_>],
        hashes: &EntryHashes,
    ) -> Result<(), EmfError> {
        let start = out.len();
        self.write_json_hashed(out, hashes);
        let (namespace, kind) = match self.category {
            Category::Traffic => (
                TRAFFIC_NAMESPACE,
                MetricEventKind::Traffic {
                    app_name: self.app_name,
                },
            ),
            Category::Health => (HEALTH_NAMESPACE, MetricEventKind::Health),
        };
        if data.is_empty() {
            out.push(b'\n');
            return Ok(());
        }
        let result = emf::append_to_entry(
            out,
            start,
            data,
            namespace,
            self.timestamp_ms(),
            kind,
            &mut scratch.emf,
        );
        if result.is_err() {
            // Never lose the log line because its metrics were unencodable: write it plain.
            out.truncate(start);
            self.write_json_hashed(out, hashes);
            out.push(b'\n');
        }
        result
    }
}

fn write_body(out: &mut Vec<u8>, body: &BodyPart<'_>, hash: Option<[u8; 6]>) {
    out.extend_from_slice(b",\"body\":");
    body.value.value().write_json(out);
    if let Some(raw) = body.raw.as_deref().filter(|r| !r.is_empty()) {
        out.extend_from_slice(b",\"body_raw\":");
        json::write_str(out, raw);
    }
    if let Some(h) = hash {
        out.extend_from_slice(b",\"body_hash\":\"");
        out.extend_from_slice(&h);
        out.push(b'"');
    }
}

/// Inserts a newline after the `_q` member, the CloudWatch form of a traffic event (spec §4.2):
/// events that do not start with `{"_q":` are returned unchanged.
pub fn cloudwatch_form(event: &[u8]) -> Cow<'_, [u8]> {
    if !event.starts_with(b"{\"_q\":") {
        return Cow::Borrowed(event);
    }
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in event.iter().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' if in_string => escaped = true,
            b'"' => in_string = !in_string,
            b',' if !in_string => {
                let mut with_newline = Vec::with_capacity(event.len() + 1);
                with_newline.extend_from_slice(&event[..=i]);
                with_newline.push(b'\n');
                with_newline.extend_from_slice(&event[i + 1..]);
                return Cow::Owned(with_newline);
            }
            _ => {}
        }
    }
    Cow::Borrowed(event)
}

/// Host and port of an inbound request as cwproxy logs them: the absolute-form authority or the
/// `Host` header, split; without a valid numeric port the whole value (brackets stripped) is the
/// host and the port is 80, or 443 on TLS.
pub fn split_host_port<'a>(host: &'a [u8], tls: bool) -> (Cow<'a, [u8]>, i64) {
    let default_port = if tls { 443 } else { 80 };
    let strip = |h: &'a [u8]| -> Cow<'a, [u8]> {
        let h = h.strip_prefix(b"[").unwrap_or(h);
        let h = h.strip_suffix(b"]").unwrap_or(h);
        Cow::Borrowed(h)
    };
    // net.SplitHostPort: `[v6]:port`, or `host:port` with exactly one colon.
    let split = if host.first() == Some(&b'[') {
        host.iter().position(|&b| b == b']').and_then(|end| {
            let rest = &host[end + 1..];
            rest.strip_prefix(b":").map(|port| (&host[1..end], port))
        })
    } else {
        match host.iter().filter(|&&b| b == b':').count() {
            1 => host
                .iter()
                .position(|&b| b == b':')
                .map(|i| (&host[..i], &host[i + 1..])),
            _ => None,
        }
    };
    match split {
        Some((h, port)) => match std::str::from_utf8(port)
            .ok()
            .and_then(|p| p.parse::<i64>().ok())
        {
            Some(p) => (Cow::Borrowed(h), p),
            None => (Cow::Borrowed(host), default_port),
        },
        None => (strip(host), default_port),
    }
}

/// Go's `net.JoinHostPort`: brackets around hosts that contain a colon.
pub fn join_host_port(host: &[u8], port: i64, out: &mut Vec<u8>) {
    if host.contains(&b':') {
        out.push(b'[');
        out.extend_from_slice(host);
        out.push(b']');
    } else {
        out.extend_from_slice(host);
    }
    out.push(b':');
    json::write_i64(out, port);
}

/// Percent-decodes a URL path like Go's `url.PathUnescape`; undecodable paths are kept as sent.
pub fn decode_path(raw: &[u8]) -> Cow<'_, [u8]> {
    if raw.is_empty() {
        return Cow::Borrowed(b"/");
    }
    if !raw.contains(&b'%') {
        return Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hex = |j: usize| raw.get(j).and_then(|&c| (c as char).to_digit(16));
            match (hex(i + 1), hex(i + 2)) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => return Cow::Borrowed(raw),
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    Cow::Owned(out)
}

/// Process-wide values every entry carries.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// `APP_NAME`.
    pub app_name: String,
    /// Pre-rendered `aws_meta` object.
    pub aws_meta: Option<Vec<u8>>,
}

/// Metric values of one traffic exchange, kept beside the entry so the data points can borrow
/// them.
struct TrafficMetrics {
    latency: f64,
    request_size: f64,
    response_size: f64,
    status_bucket: Option<&'static str>,
}

fn content_type(headers: &http::HeaderMap) -> Option<&[u8]> {
    headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.as_bytes())
}

/// Renders one proxied exchange as its stdout line(s) with `app/traffic` EMF, as the original.
pub fn render_traffic(
    ctx: &Context,
    ex: &Exchange,
    out: &mut Vec<u8>,
    scratch: &mut Scratch,
) -> Result<(), EmfError> {
    render_traffic_with(ctx, &OutputOptions::ORIGINAL, ex, out, scratch)
}

/// A captured body decoded per its `Content-Encoding`, when `decode` is on and it decodes.
fn decoded(headers: &http::HeaderMap, capture: &Capture, decode: bool) -> Option<Decoded> {
    if !decode {
        return None;
    }
    let encoding = Encoding::from_header(headers.get(http::header::CONTENT_ENCODING)?.as_bytes())?;
    decode::decode(
        encoding,
        capture.bytes(),
        capture.truncated(),
        capture.limit(),
    )
}

/// The bytes to parse: decoded ones when there are, else the capture's.
fn body_source<'a>(capture: &'a Capture, decoded: Option<&'a Decoded>) -> (&'a [u8], bool) {
    match decoded {
        Some(d) => (&d.bytes, d.truncated),
        None => (capture.bytes(), capture.truncated()),
    }
}

/// Renders one proxied exchange with `opts` (redaction, templates, decoding, binary form).
/// The line bound is applied by the caller over the whole rendered text ([`crate::trim`]).
pub fn render_traffic_with(
    ctx: &Context,
    opts: &OutputOptions,
    ex: &Exchange,
    out: &mut Vec<u8>,
    scratch: &mut Scratch,
) -> Result<(), EmfError> {
    render_traffic_observed(ctx, opts, ex, out, scratch, None)
}

/// [`render_traffic_with`] that also hands the parsed exchange to `observer` (before redaction),
/// which may append lines of its own before the traffic line.
pub fn render_traffic_observed(
    ctx: &Context,
    opts: &OutputOptions,
    ex: &Exchange,
    out: &mut Vec<u8>,
    scratch: &mut Scratch,
    observer: Option<&dyn Observer>,
) -> Result<(), EmfError> {
    // Go's r.Host: the absolute-form authority wins over the Host header.
    let host_value: &[u8] = match ex.uri.authority() {
        Some(a) => a.as_str().as_bytes(),
        None => ex
            .request_headers
            .get(http::header::HOST)
            .map_or(&b""[..], |v| v.as_bytes()),
    };
    let (host, port) = split_host_port(host_value, ex.tls);
    let path = decode_path(
        if ex.method == http::Method::CONNECT && ex.uri.path_and_query().is_none() {
            b""
        } else {
            ex.uri.path().as_bytes()
        },
    );
    let raw_query = ex.uri.query().unwrap_or("").as_bytes();
    let mut url = Vec::with_capacity(host.len() + path.len() + raw_query.len() + 8);
    join_host_port(&host, port, &mut url);
    url.extend_from_slice(&path);
    if !raw_query.is_empty() {
        url.push(b'?');
        url.extend_from_slice(raw_query);
    }
    let chunked = ex
        .request_headers
        .contains_key(http::header::TRANSFER_ENCODING);
    let request_skip: &[&str] = if chunked {
        &["host", "transfer-encoding", "trailer"]
    } else {
        &["host"]
    };

    let request_decoded = decoded(&ex.request_headers, &ex.request_body, opts.decode_bodies);
    let (request_bytes, request_truncated) =
        body_source(&ex.request_body, request_decoded.as_ref());
    let response_decoded = ex
        .response_body
        .as_ref()
        .and_then(|c| decoded(&ex.response_headers, c, opts.decode_bodies));
    let response_body = match &ex.response_body {
        Some(c) => {
            let (bytes, truncated) = body_source(c, response_decoded.as_ref());
            BodyPart::parse_as(
                content_type(&ex.response_headers),
                bytes,
                truncated,
                true,
                opts.binary_bodies,
            )
        }
        None => BodyPart::null(),
    };
    let mut entry = Entry {
        category: Category::Traffic,
        app_name: &ctx.app_name,
        client_id: ex.client_id.as_deref(),
        aws_meta: ctx.aws_meta.as_deref(),
        delay: ex.elapsed,
        request: RequestPart {
            time_ms: unix_millis(ex.start),
            host,
            port,
            path,
            method: ex.method.as_str(),
            url: Cow::Owned(url),
            queries: Multimap::from_query(raw_query),
            cookies: Multimap::from_cookie_headers(&ex.request_headers),
            headers: Multimap::from_headers(&ex.request_headers, request_skip),
            body: BodyPart::parse_as(
                content_type(&ex.request_headers),
                request_bytes,
                request_truncated,
                true,
                opts.binary_bodies,
            ),
        },
        response: ResponsePart {
            time_ms: unix_millis(ex.end),
            status: ex.status,
            headers: Multimap::from_headers(
                &ex.response_headers,
                &["set-cookie", "transfer-encoding"],
            ),
            set_cookies: Multimap::from_set_cookie_headers(&ex.response_headers),
            body: response_body,
        },
    };
    let m = TrafficMetrics {
        latency: millis_f64(ex.elapsed),
        request_size: ex.request_body.total() as f64,
        response_size: ex
            .response_body
            .as_ref()
            .map_or(ex.local_response_bytes, |c| c.total()) as f64,
        status_bucket: match ex.status {
            200..=299 => Some("2XXStatusCode"),
            400..=499 => Some("4XXStatusCode"),
            500..=599 => Some("5XXStatusCode"),
            _ => None,
        },
    };
    let hashes = entry.hashes(scratch);
    let templated = match ex.endpoint {
        Some(_) => None,
        None => route::template(&entry.request.path, &opts.templates),
    };
    // The `ENDPOINT_LIMIT` cap decides before the observer runs, so both see one bounded set.
    let overflow = {
        let endpoint: &[u8] = match (ex.endpoint.as_deref(), &templated) {
            (Some(e), _) => e.as_bytes(),
            (None, Some(t)) => t.template.as_bytes(),
            (None, None) => entry.request.path.as_ref(),
        };
        scratch.endpoints.admit(endpoint, opts.endpoint_limit) != endpoint
    };
    if let Some(observer) = observer {
        // Before redaction, so the observer sees real types; it stores no values.
        observer.observe(
            &Observation {
                entry: &entry,
                hashes: &hashes,
                template: templated.as_ref(),
                endpoint_overflow: overflow,
                redaction: opts.redaction.as_ref(),
                request_content_type: content_type(&ex.request_headers),
                response_content_type: content_type(&ex.response_headers),
                elapsed: ex.elapsed,
                timestamp_ms: unix_millis(ex.end),
            },
            out,
        );
    }
    let templated = templated.map(|t| t.template);
    if let Some(r) = &opts.redaction {
        entry.redact(r);
    }
    let endpoint: &[u8] = match (overflow, ex.endpoint.as_deref(), &templated) {
        (true, _, _) => route::OVERFLOW_ENDPOINT.as_bytes(),
        (false, Some(e), _) => e.as_bytes(),
        (false, None, Some(t)) => t.as_bytes(),
        (false, None, None) => entry.request.path.as_ref(),
    };
    let app_dims: [(&str, &[u8]); 1] = [("AppName", ctx.app_name.as_bytes())];
    let route_dims: [(&str, &[u8]); 3] = [
        ("AppName", ctx.app_name.as_bytes()),
        ("Endpoint", endpoint),
        ("Method", ex.method.as_str().as_bytes()),
    ];
    let mut data: [Datum<'_>; 10] = [Datum {
        name: "",
        unit: "",
        value: 0.0,
        dims: &[],
    }; 10];
    let mut n = 0;
    for dims in [&app_dims[..], &route_dims[..]] {
        for (name, unit, value) in [
            ("RequestCount", "Count", 1.0),
            ("Latency", "Milliseconds", m.latency),
            ("RequestBodySize", "Bytes", m.request_size),
            ("ResponseBodySize", "Bytes", m.response_size),
        ] {
            data[n] = Datum {
                name,
                unit,
                value,
                dims,
            };
            n += 1;
        }
        if let Some(bucket) = m.status_bucket {
            data[n] = Datum {
                name: bucket,
                unit: "Count",
                value: 1.0,
                dims,
            };
            n += 1;
        }
    }
    entry.write_with_metrics_hashed(out, scratch, &data[..n], &hashes)
}

/// Renders one health probe as its stdout line(s) with `app/health` EMF, as the original.
pub fn render_health(
    ctx: &Context,
    probe: &HealthProbe,
    out: &mut Vec<u8>,
    scratch: &mut Scratch,
) -> Result<(), EmfError> {
    render_health_with(ctx, &OutputOptions::ORIGINAL, probe, out, scratch)
}

/// Renders one health probe with `opts` (redaction, decoding, binary form; the `Endpoint` of
/// a health metric is its configured URL, never templated).
pub fn render_health_with(
    ctx: &Context,
    opts: &OutputOptions,
    probe: &HealthProbe,
    out: &mut Vec<u8>,
    scratch: &mut Scratch,
) -> Result<(), EmfError> {
    let probe_decoded = decoded(&probe.headers, &probe.body, opts.decode_bodies);
    let (probe_bytes, probe_truncated) = body_source(&probe.body, probe_decoded.as_ref());
    let body = if probe.body.bytes().is_empty() {
        match &probe.error {
            Some(err) => BodyPart {
                value: Parsed::new(Value::Str(Cow::Borrowed(err.as_bytes())), 0),
                raw: None,
            },
            None => BodyPart::null(),
        }
    } else {
        BodyPart::parse_as(
            content_type(&probe.headers),
            probe_bytes,
            probe_truncated,
            false,
            opts.binary_bodies,
        )
    };
    let mut entry = Entry {
        category: Category::Health,
        app_name: &ctx.app_name,
        client_id: None,
        aws_meta: ctx.aws_meta.as_deref(),
        delay: probe.latency,
        request: RequestPart {
            time_ms: unix_millis(probe.start),
            host: Cow::Borrowed(probe.host.as_bytes()),
            port: i64::from(probe.port),
            path: Cow::Borrowed(if probe.path.is_empty() {
                b"/"
            } else {
                probe.path.as_bytes()
            }),
            method: "GET",
            url: Cow::Borrowed(probe.url.as_bytes()),
            queries: Multimap::from_query(probe.raw_query.as_bytes()),
            cookies: Multimap::default(),
            headers: Multimap::default(),
            body: BodyPart::null(),
        },
        response: ResponsePart {
            time_ms: unix_millis(probe.end),
            status: probe.status,
            headers: Multimap::from_headers(&probe.headers, &["transfer-encoding"]),
            set_cookies: Multimap::from_set_cookie_headers(&probe.headers),
            body,
        },
    };
    let up = if (200..400).contains(&probe.status) {
        1.0
    } else {
        0.0
    };
    let dims: [(&str, &[u8]); 2] = [
        ("AppName", ctx.app_name.as_bytes()),
        ("Endpoint", probe.url.as_bytes()),
    ];
    let data = [
        Datum {
            name: "HealthStatus",
            unit: "Count",
            value: up,
            dims: &dims,
        },
        Datum {
            name: "HealthLatency",
            unit: "Milliseconds",
            value: millis_f64(probe.latency),
            dims: &dims,
        },
    ];
    let hashes = entry.hashes(scratch);
    if let Some(r) = &opts.redaction {
        entry.redact(r);
    }
    entry.write_with_metrics_hashed(out, scratch, &data, &hashes)
}
