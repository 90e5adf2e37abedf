//! The API a proxy fronts, learned from its traffic: per (method, route template) the path and
//! query parameters, request bodies per content type and responses per status, each with a JSON
//! Schema inferred from the bodies the telemetry worker already parsed ([`schema`]).
//!
//! [`Model`] is a telemetry [`Observer`]: it is updated on the telemetry worker thread, never on
//! the request path. It renders an OpenAPI 3.1 document ([`Model::openapi`]), per-route
//! statistics ([`Model::routes`]) and, once a route is learned, one `DRIFT` line with an EMF
//! `SchemaDrift` metric per new shape ([`drift`]). Only names and types are kept, never values.
//! Memory is bounded per schema (see [`schema`]), per route ([`MAX_ROUTE_BYTES`]) and for the
//! whole model ([`Options::memory_limit`]): beyond it the rarest, then oldest routes are evicted
//! and counted.

pub mod drift;
pub mod openapi;
pub mod schema;
pub mod state;

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use telemetry::observe::{Observation, Observer};
use telemetry::redact::Redaction;
use telemetry::value::Value;

use crate::schema::{Change, Merge, Node};

/// Default `MODEL_MEMORY_LIMIT`: 16 MiB.
pub const DEFAULT_MEMORY_LIMIT: usize = 16 << 20;
/// Default `DRIFT_LEARN`: observations of a route before new shapes count as drift.
pub const DEFAULT_DRIFT_LEARN: u64 = 100;
/// Most bytes one route's schemas may take.
pub const MAX_ROUTE_BYTES: usize = 256 << 10;
/// Most query parameters, content types per part and statuses kept per route.
pub const MAX_KEYS: usize = 64;
/// Latency samples kept per route (the most recent ones) for p50/p99.
pub const LATENCY_SAMPLES: usize = 64;
/// Distinct exchange shapes (global hashes) counted per route.
pub const MAX_SHAPES: usize = 64;

/// How the model behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// `APP_NAME`: the document title and the drift metric's `AppName`.
    pub app_name: String,
    /// Approximate most bytes of the whole model (`MODEL_MEMORY_LIMIT`).
    pub memory_limit: usize,
    /// Observations of a route before drift is reported (`DRIFT_LEARN`); `None`: no drift lines.
    pub drift_learn: Option<u64>,
    /// Keep one redacted example per body schema (`OPENAPI_EXAMPLES=on`).
    pub examples: bool,
}

/// Most bytes of one example body; larger bodies get no example.
pub const MAX_EXAMPLE_BYTES: usize = 2048;

/// One body schema per content type.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Content {
    /// Lower-case media type (`application/json`); `*/*` when the message had none.
    pub media: Vec<(String, Node)>,
    /// Messages of this part that had a body.
    pub with_body: u64,
    /// One redacted example per media type (`OPENAPI_EXAMPLES=on`), as JSON text.
    #[serde(default)]
    pub examples: Vec<(String, String)>,
}

/// What was seen of one status code.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    /// Times seen.
    pub count: u64,
    /// Bodies.
    pub content: Content,
}

/// One (method, template) route.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Route {
    /// Request method.
    pub method: String,
    /// Route template (`/users/{userId}`).
    pub template: String,
    /// Exchanges seen.
    pub count: u64,
    /// First and last exchange, ms since the Unix epoch.
    pub first_ms: i64,
    /// See `first_ms`.
    pub last_ms: i64,
    /// Path parameters in template order, typed from observed values.
    pub params: Vec<(String, Node)>,
    /// Query parameters by name: requests that had it, and its type.
    pub query: Vec<(String, u64, Node)>,
    /// Request bodies.
    pub request: Content,
    /// Responses by status.
    pub responses: Vec<(u16, Response)>,
    /// Distinct exchange shapes (global hash), at most [`MAX_SHAPES`].
    pub shapes: Vec<[u8; 6]>,
    /// Most recent latencies in microseconds (a ring).
    #[serde(skip)]
    latencies_us: Vec<u32>,
    #[serde(skip)]
    next_latency: usize,
    /// Body hashes of the last request and response, the `old_hash` of a drift line.
    pub last_hashes: [Option<[u8; 6]>; 2],
    /// Approximate bytes of this route.
    pub bytes: usize,
}

impl Route {
    fn new(method: &str, template: &str, now_ms: i64) -> Self {
        Self {
            method: method.to_owned(),
            template: template.to_owned(),
            first_ms: now_ms,
            last_ms: now_ms,
            bytes: std::mem::size_of::<Self>() + method.len() * 2 + template.len() * 2 + 64,
            ..Self::default()
        }
    }

    /// Whether shapes new to this route count as drift.
    pub fn learned(&self, drift_learn: u64) -> bool {
        self.count >= drift_learn
    }

    /// Latency percentile `p` (0–100) in milliseconds over the recent samples.
    pub fn latency_ms(&self, p: usize) -> Option<f64> {
        if self.latencies_us.is_empty() {
            return None;
        }
        let mut v = self.latencies_us.clone();
        v.sort_unstable();
        let i = ((v.len() - 1) * p.min(100) + 50) / 100;
        Some(f64::from(v[i]) / 1000.0)
    }
}

/// The model behind one lock; see the crate docs.
#[derive(Debug)]
pub struct Model {
    opts: Options,
    /// Redaction for examples when the line has none (`LOG_REDACT=off`).
    default_redaction: Redaction,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    routes: HashMap<String, Route>,
    /// Reused lookup key `METHOD template`.
    key: String,
    bytes: usize,
    evicted: u64,
    /// Routes seen at least `drift_learn` times.
    learned: usize,
    emf: telemetry::emf::EmfScratch,
}

/// Which part of an exchange a change is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The request.
    Request,
    /// The response.
    Response,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Request => "request",
            Part::Response => "response",
        }
    }
}

/// Changes of one part of one exchange, reported as one DRIFT line.
#[derive(Debug, Default)]
struct Drift {
    changes: Vec<Change>,
}

/// The media type of a `Content-Type` value, trimmed (compared case-insensitively); `*/*` when
/// absent, empty or implausibly long.
fn media_of(content_type: Option<&[u8]>) -> &[u8] {
    let Some(ct) = content_type else {
        return b"*/*";
    };
    let base = ct.split(|&b| b == b';').next().unwrap_or_default();
    let base = base.trim_ascii();
    if base.is_empty() || base.len() > 100 {
        b"*/*"
    } else {
        base
    }
}

/// Merges a body into its content type's schema; a new content type on a learned route is a
/// change of its own (its properties are not reported one by one).
/// A redacted copy of an object or array body as JSON text: the same key rule as the log
/// line's redaction (the default lists when `LOG_REDACT=off`), so an example never shows more
/// than a redacted line would. Scalars and raw text get none (no key to judge them by).
fn example_of(body: &Value<'_>, redaction: &Redaction) -> Option<String> {
    if !matches!(body, Value::Object(_) | Value::Array(_)) {
        return None;
    }
    let mut raw = Vec::new();
    body.write_json(&mut raw);
    if raw.len() > MAX_EXAMPLE_BYTES {
        return None;
    }
    // serde_json's recursion limit (128) bounds the depth; deeper bodies get no example.
    let mut v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    redact_json(&mut v, redaction);
    Some(v.to_string())
}

fn redact_json(v: &mut serde_json::Value, r: &Redaction) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if r.is_sensitive_key(k.as_bytes()) {
                    *child = serde_json::Value::from(telemetry::redact::REDACTED);
                } else {
                    redact_json(child, r);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|c| redact_json(c, r)),
        _ => {}
    }
}

#[allow(clippy::too_many_arguments)]
fn merge_body(
    content: &mut Content,
    content_type: Option<&[u8]>,
    body: &Value<'_>,
    learned: bool,
    budget: usize,
    examples: Option<&Redaction>,
    changes: &mut Vec<Change>,
) -> usize {
    if matches!(body, Value::Null) {
        return 0;
    }
    content.with_body += 1;
    let media = media_of(content_type);
    let mut added = 0;
    let idx = match content
        .media
        .iter()
        .position(|(m, _)| m.as_bytes().eq_ignore_ascii_case(media))
    {
        Some(i) => i,
        None => {
            if content.media.len() >= MAX_KEYS {
                return 0;
            }
            let media = String::from_utf8_lossy(media).to_ascii_lowercase();
            if learned {
                changes.push(Change {
                    op: "content-type",
                    path: format!("/{media}"),
                    types: None,
                });
            }
            added += media.len() + std::mem::size_of::<(String, Node)>();
            content.media.push((media, Node::default()));
            content.media.len() - 1
        }
    };
    if let Some(r) = examples {
        let media = &content.media[idx].0;
        if !content.examples.iter().any(|(m, _)| m == media) {
            if let Some(ex) = example_of(body, r) {
                if added + ex.len() + media.len() <= budget {
                    added += ex.len() + media.len() + std::mem::size_of::<(String, String)>();
                    content.examples.push((media.clone(), ex));
                }
            }
        }
    }
    let node = &mut content.media[idx].1;
    let report = learned && !node.is_empty();
    let mut m = Merge::new(report, budget.saturating_sub(added));
    node.merge(body, 0, &mut m);
    changes.extend(m.changes);
    added + m.added_bytes
}

impl Model {
    /// An empty model.
    pub fn new(opts: Options) -> Self {
        Self {
            opts,
            default_redaction: Redaction::new::<&str>(&[], &[]),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Its options.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a model that is still consistent enough to
        // serve (every update is a sequence of independent merges), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Approximate bytes of the model.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Routes evicted so far to stay under the memory limit.
    pub fn evicted(&self) -> u64 {
        self.lock().evicted
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.lock().routes.len()
    }

    /// True when no route was seen.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of every route, sorted by template then method.
    pub fn snapshot(&self) -> Vec<Route> {
        let inner = self.lock();
        let mut routes: Vec<Route> = inner.routes.values().cloned().collect();
        drop(inner);
        routes.sort_by(|a, b| (&a.template, &a.method).cmp(&(&b.template, &b.method)));
        routes
    }

    /// Adds loaded routes (see [`state`]); routes already present are kept.
    pub fn restore(&self, routes: Vec<Route>) {
        let mut inner = self.lock();
        for mut r in routes {
            let key = format!("{} {}", r.method, r.template);
            if inner.routes.contains_key(&key) {
                continue;
            }
            r.bytes = r.bytes.max(std::mem::size_of::<Route>());
            inner.bytes += r.bytes;
            if self.opts.drift_learn.is_some_and(|n| r.learned(n)) {
                inner.learned += 1;
            }
            inner.routes.insert(key, r);
        }
        inner.evict(self.opts.memory_limit, self.opts.drift_learn);
    }

    /// Updates the model with one exchange; appends DRIFT lines to `out`.
    pub fn update(&self, o: &Observation<'_, '_>, out: &mut Vec<u8>) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let rq = &o.entry.request;
        // Paths beyond the `ENDPOINT_LIMIT` cap share one route, as they share one metric; its
        // shapes are a mix of unrelated paths, so it never reports drift.
        let template = match (o.endpoint_overflow, o.template) {
            (true, _) => std::borrow::Cow::Borrowed(telemetry::route::OVERFLOW_ENDPOINT),
            (false, Some(t)) => std::borrow::Cow::Borrowed(t.template.as_str()),
            (false, None) => String::from_utf8_lossy(&rq.path),
        };
        let learn = self.opts.drift_learn.filter(|_| !o.endpoint_overflow);
        inner.key.clear();
        inner.key.push_str(rq.method);
        inner.key.push(' ');
        inner.key.push_str(&template);
        let mut drifts: [Drift; 2] = Default::default();
        let examples = self
            .opts
            .examples
            .then(|| o.redaction.unwrap_or(&self.default_redaction));
        if !inner.routes.contains_key(inner.key.as_str()) {
            if learn.is_some() && inner.learned > 0 {
                drifts[0].changes.push(Change {
                    op: "route",
                    path: template.to_string(),
                    types: None,
                });
            }
            let route = Route::new(rq.method, &template, o.timestamp_ms);
            inner.bytes += route.bytes;
            inner.routes.insert(inner.key.clone(), route);
        }
        let Some(route) = inner.routes.get_mut(inner.key.as_str()) else {
            return;
        };
        let learned = learn.is_some_and(|n| route.learned(n));
        let budget = MAX_ROUTE_BYTES.saturating_sub(route.bytes);
        let mut added = 0;
        route.count += 1;
        if learn == Some(route.count) {
            inner.learned += 1;
        }
        route.last_ms = route.last_ms.max(o.timestamp_ms);
        let us = u32::try_from(o.elapsed.as_micros()).unwrap_or(u32::MAX);
        if route.latencies_us.len() < LATENCY_SAMPLES {
            route.latencies_us.push(us);
        } else {
            route.latencies_us[route.next_latency] = us;
        }
        route.next_latency = (route.next_latency + 1) % LATENCY_SAMPLES;
        if let Some(t) = o.template {
            for (name, value) in &t.params {
                match route.params.iter_mut().find(|(n, _)| n == name) {
                    Some((_, node)) => node.merge_text(value),
                    None => {
                        let mut node = Node::default();
                        node.merge_text(value);
                        added += name.len() + std::mem::size_of::<(String, Node)>();
                        route.params.push((name.clone(), node));
                    }
                }
            }
        }
        let pairs = rq.queries.pairs();
        let mut i = 0;
        while i < pairs.len() {
            let key = &pairs[i].0;
            let n = pairs[i..].iter().take_while(|(k, _)| k == key).count();
            let name = String::from_utf8_lossy(key);
            let idx = match route.query.iter().position(|(q, _, _)| *q == name) {
                Some(idx) => Some(idx),
                None if route.query.len() < MAX_KEYS => {
                    added += name.len() + std::mem::size_of::<(String, u64, Node)>();
                    route.query.push((name.into_owned(), 0, Node::default()));
                    Some(route.query.len() - 1)
                }
                None => None,
            };
            if let Some(idx) = idx {
                let q = &mut route.query[idx];
                q.1 += 1;
                for (_, v) in &pairs[i..i + n] {
                    q.2.merge_text(v);
                }
            }
            i += n;
        }
        added += merge_body(
            &mut route.request,
            o.request_content_type,
            rq.body.value.value(),
            learned,
            budget.saturating_sub(added),
            examples,
            &mut drifts[0].changes,
        );
        let status = o.entry.response.status;
        let ridx = match route.responses.iter().position(|(s, _)| *s == status) {
            Some(i) => Some(i),
            None if route.responses.len() < MAX_KEYS => {
                if learned {
                    drifts[1].changes.push(Change {
                        op: "status",
                        path: format!("/{status}"),
                        types: None,
                    });
                }
                added += std::mem::size_of::<(u16, Response)>();
                route.responses.push((status, Response::default()));
                route.responses.sort_by_key(|(s, _)| *s);
                route.responses.iter().position(|(s, _)| *s == status)
            }
            None => None,
        };
        if let Some(ridx) = ridx {
            let resp = &mut route.responses[ridx].1;
            resp.count += 1;
            // A new status's first body is part of that change, not a list of new properties.
            let body_learned = learned && resp.count > 1;
            added += merge_body(
                &mut resp.content,
                o.response_content_type,
                o.entry.response.body.value.value(),
                body_learned,
                budget.saturating_sub(added),
                examples,
                &mut drifts[1].changes,
            );
        }
        let global = o.hashes.global;
        if route.shapes.len() < MAX_SHAPES {
            if let Err(at) = route.shapes.binary_search(&global) {
                added += global.len();
                route.shapes.insert(at, global);
            }
        }
        let new_hashes = [o.hashes.request_body, o.hashes.response_body];
        let old_hashes = std::mem::replace(&mut route.last_hashes, new_hashes);
        route.bytes += added;
        inner.bytes += added;
        for (part, drift) in [Part::Request, Part::Response].into_iter().zip(&drifts) {
            if drift.changes.is_empty() {
                continue;
            }
            let i = usize::from(part == Part::Response);
            drift::write_line(
                out,
                &drift::DriftLine {
                    app_name: &self.opts.app_name,
                    method: rq.method,
                    template: &template,
                    status,
                    part: part.name(),
                    changes: &drift.changes,
                    old_hash: old_hashes[i].as_ref().map(|h| &h[..]),
                    new_hash: new_hashes[i].as_ref().map(|h| &h[..]),
                    timestamp_ms: o.timestamp_ms,
                },
                &mut inner.emf,
            );
        }
        if inner.bytes > self.opts.memory_limit {
            inner.evict(self.opts.memory_limit, learn);
        }
    }
}

impl Inner {
    /// Evicts the rarest, then least recently seen routes until the model is at 90 % of `limit`
    /// (a margin, so a flood does not sort the routes on every new one).
    fn evict(&mut self, limit: usize, drift_learn: Option<u64>) {
        if self.bytes <= limit {
            return;
        }
        let target = limit / 10 * 9;
        let mut order: Vec<(u64, i64, String)> = self
            .routes
            .iter()
            .map(|(k, r)| (r.count, r.last_ms, k.clone()))
            .collect();
        order.sort_unstable();
        for (_, _, key) in order {
            if self.bytes <= target {
                break;
            }
            if let Some(r) = self.routes.remove(&key) {
                self.bytes = self.bytes.saturating_sub(r.bytes);
                self.evicted += 1;
                if drift_learn.is_some_and(|n| r.learned(n)) {
                    self.learned -= 1;
                }
            }
        }
    }
}

impl Observer for Model {
    fn observe(&self, observation: &Observation<'_, '_>, out: &mut Vec<u8>) {
        self.update(observation, out);
    }
}
