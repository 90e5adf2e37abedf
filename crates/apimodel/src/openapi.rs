//! The OpenAPI 3.1 document and the `/routes` statistics rendered from the model.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value as Json};

use crate::schema::Node;
use crate::{Content, Model, Route};

/// Methods OpenAPI 3.1 has a path-item field for; other methods appear in `/routes` only.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The names of `{…}` segments of a template, `*` of a rest parameter removed.
fn template_params(template: &str) -> Vec<&str> {
    template
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| name.trim_end_matches('*'))
        .collect()
}

/// The OpenAPI path key of a template (`{path*}` → `{path}`).
fn path_key(template: &str) -> String {
    template.replace("*}", "}")
}

fn content(c: &Content) -> Json {
    let mut m = Map::new();
    for (media, node) in &c.media {
        let mut entry = Map::new();
        entry.insert("schema".into(), node.to_schema());
        let example = c.examples.iter().find(|(m, _)| m == media);
        if let Some(ex) = example.and_then(|(_, ex)| serde_json::from_str::<Json>(ex).ok()) {
            entry.insert("example".into(), ex);
        }
        m.insert(media.clone(), Json::Object(entry));
    }
    Json::Object(m)
}

fn operation(r: &Route) -> Json {
    let mut op = Map::new();
    let mut params = Vec::new();
    for name in template_params(&r.template) {
        let schema = r
            .params
            .iter()
            .find(|(n, _)| n == name)
            .map_or_else(|| json!({"type": "string"}), |(_, node)| param_schema(node));
        params.push(json!({"name": name, "in": "path", "required": true, "schema": schema}));
    }
    for (name, count, node) in &r.query {
        params.push(json!({
            "name": name,
            "in": "query",
            "required": *count == r.count,
            "schema": param_schema(node),
        }));
    }
    if !params.is_empty() {
        op.insert("parameters".into(), Json::Array(params));
    }
    if !r.request.media.is_empty() {
        op.insert(
            "requestBody".into(),
            json!({
                "required": r.request.with_body == r.count,
                "content": content(&r.request),
            }),
        );
    }
    let mut responses = Map::new();
    for (status, resp) in &r.responses {
        let mut m = Map::new();
        m.insert(
            "description".into(),
            Json::from(format!("Observed {} times", resp.count)),
        );
        if !resp.content.media.is_empty() {
            m.insert("content".into(), content(&resp.content));
        }
        responses.insert(status.to_string(), Json::Object(m));
    }
    if responses.is_empty() {
        responses.insert("default".into(), json!({"description": "Not observed"}));
    }
    op.insert("responses".into(), Json::Object(responses));
    op.insert("x-waygate-observed".into(), Json::from(r.count));
    Json::Object(op)
}

/// A parameter's schema: its observed type when it had one, else `string`.
fn param_schema(node: &Node) -> Json {
    let s = node.to_schema();
    if s.get("type").is_some_and(Json::is_string) {
        s
    } else {
        json!({"type": "string"})
    }
}

impl Model {
    /// The OpenAPI 3.1 document of everything observed.
    pub fn openapi(&self) -> Json {
        let routes = self.snapshot();
        let mut paths: BTreeMap<String, Map<String, Json>> = BTreeMap::new();
        for r in &routes {
            let method = r.method.to_ascii_lowercase();
            if !METHODS.contains(&method.as_str()) || !r.template.starts_with('/') {
                continue;
            }
            paths
                .entry(path_key(&r.template))
                .or_default()
                .insert(method, operation(r));
        }
        let paths: Map<String, Json> = paths
            .into_iter()
            .map(|(k, v)| (k, Json::Object(v)))
            .collect();
        json!({
            "openapi": "3.1.0",
            "info": {
                "title": self.options().app_name,
                "version": "observed",
                "description": "Inferred by cwproxy from observed traffic: names and types only.",
            },
            "paths": paths,
        })
    }

    /// Per-route statistics: requests, status counts, p50/p99 latency (recent samples),
    /// distinct shapes, first and last seen; plus routes evicted and the model's size.
    pub fn routes(&self) -> Json {
        let routes = self.snapshot();
        let list: Vec<Json> = routes
            .iter()
            .map(|r| {
                let statuses: Map<String, Json> = r
                    .responses
                    .iter()
                    .map(|(s, resp)| (s.to_string(), Json::from(resp.count)))
                    .collect();
                json!({
                    "method": r.method,
                    "template": r.template,
                    "requests": r.count,
                    "statuses": statuses,
                    "p50_ms": r.latency_ms(50),
                    "p99_ms": r.latency_ms(99),
                    "shapes": r.shapes.len(),
                    "first_seen_ms": r.first_ms,
                    "last_seen_ms": r.last_ms,
                })
            })
            .collect();
        json!({
            "routes": list,
            "evicted": self.evicted(),
            "model_bytes": self.bytes(),
            "memory_limit": self.options().memory_limit,
        })
    }
}
