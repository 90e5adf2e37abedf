//! The `DRIFT` line: one per part of an exchange whose shape is new on a learned route, with the
//! changes as a short JSON Patch-like list and an EMF `SchemaDrift` count in `app/traffic` with
//! the dimension sets `{AppName}` and `{AppName,Endpoint,Method}` (`Endpoint` is the template).
//!
//! A change is merged into the model as it is reported, so the same change on the same route
//! never produces a second line.

use telemetry::emf::{self, Datum, EmfScratch, MetricEventKind};
use telemetry::json;

use crate::schema::{Change, MAX_CHANGES};

/// The EMF namespace of the drift metric (the traffic metrics' namespace).
pub const NAMESPACE: &str = "app/traffic";
/// The metric name.
pub const METRIC: &str = "SchemaDrift";

/// What one DRIFT line says.
#[derive(Debug)]
pub struct DriftLine<'a> {
    /// `app_name`.
    pub app_name: &'a str,
    /// `method`.
    pub method: &'a str,
    /// `template`.
    pub template: &'a str,
    /// `status` of the exchange.
    pub status: u16,
    /// `part`: `request` or `response`.
    pub part: &'a str,
    /// `changes` (at most [`MAX_CHANGES`]; `more` counts the rest).
    pub changes: &'a [Change],
    /// `old_hash`: the body hash of this part in the route's previous exchange.
    pub old_hash: Option<&'a [u8]>,
    /// `new_hash`: the body hash of this part now.
    pub new_hash: Option<&'a [u8]>,
    /// EMF timestamp.
    pub timestamp_ms: i64,
}

fn member(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    out.push(b',');
    json::write_key(out, key.as_bytes());
    json::write_str(out, value);
}

/// Appends the line (with its newline) to `out`.
pub fn write_line(out: &mut Vec<u8>, d: &DriftLine<'_>, scratch: &mut EmfScratch) {
    let start = out.len();
    out.extend_from_slice(b"{\"_t\":\"DRIFT\"");
    member(out, "app_name", d.app_name.as_bytes());
    member(out, "method", d.method.as_bytes());
    member(out, "template", d.template.as_bytes());
    out.extend_from_slice(format!(",\"status\":{}", d.status).as_bytes());
    member(out, "part", d.part.as_bytes());
    out.extend_from_slice(b",\"changes\":");
    let shown: Vec<serde_json::Value> = d
        .changes
        .iter()
        .take(MAX_CHANGES)
        .map(Change::to_json)
        .collect();
    // Serialising a Vec of JSON values into a Vec<u8> cannot fail.
    let _ = serde_json::to_writer(&mut *out, &shown);
    if d.changes.len() > MAX_CHANGES {
        out.extend_from_slice(format!(",\"more\":{}", d.changes.len() - MAX_CHANGES).as_bytes());
    }
    if let Some(h) = d.old_hash {
        member(out, "old_hash", h);
    }
    if let Some(h) = d.new_hash {
        member(out, "new_hash", h);
    }
    out.push(b'}');
    let app: [(&str, &[u8]); 1] = [("AppName", d.app_name.as_bytes())];
    let route: [(&str, &[u8]); 3] = [
        ("AppName", d.app_name.as_bytes()),
        ("Endpoint", d.template.as_bytes()),
        ("Method", d.method.as_bytes()),
    ];
    let data = [
        Datum {
            name: METRIC,
            unit: "Count",
            value: 1.0,
            dims: &app,
        },
        Datum {
            name: METRIC,
            unit: "Count",
            value: 1.0,
            dims: &route,
        },
    ];
    let kind = MetricEventKind::Traffic {
        app_name: d.app_name,
    };
    if emf::append_to_entry(out, start, &data, NAMESPACE, d.timestamp_ms, kind, scratch).is_err() {
        // Unencodable dimensions (an empty AppName) fail before anything is appended: the line
        // stays, without metrics.
        out.push(b'\n');
    }
}
