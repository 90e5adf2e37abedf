//! CloudWatch Embedded Metric Format, assembled exactly as cwproxy does (spec §5.3).
//!
//! Data points are partitioned into batches that each fit one EMF object (≤ 100 metrics, no name
//! clashes, one value per dimension key); the first batch is embedded in the log event, each
//! further batch becomes a metric-only event.

use crate::json;

/// Root keys a metric or dimension may not use in a log event.
pub const RESERVED_LOG_KEYS: &[&str] = &[
    "_aws", "_q", "_t", "app_name", "aws_meta", "delay", "request", "response",
];
/// Root keys a metric or dimension may not use in a metric-only event.
pub const RESERVED_METRIC_KEYS: &[&str] = &["_aws", "_q", "_t", "app_name", "aws_meta"];
/// Most metrics one EMF object may carry.
pub const MAX_METRICS: usize = 100;
/// Most dimensions one metric may have.
pub const MAX_DIMENSIONS: usize = 30;

/// One metric data point with its dimensions (keys unique within a datum).
#[derive(Debug, Clone, Copy)]
pub struct Datum<'a> {
    /// Metric name, e.g. `Latency`.
    pub name: &'a str,
    /// CloudWatch unit (`Count`, `Milliseconds`, `Bytes`); empty omits it.
    pub unit: &'a str,
    /// Value.
    pub value: f64,
    /// Dimension key/value pairs.
    pub dims: &'a [(&'a str, &'a [u8])],
}

/// A data point that cannot be expressed in EMF.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmfError {
    /// Empty or reserved name, too many dimensions, or an empty/reserved dimension key.
    #[error("metric {0:?} cannot be encoded as EMF")]
    Unencodable(String),
    /// The base log entry does not end with `}`.
    #[error("log entry is not a JSON object")]
    NotAnObject,
}

struct Batch<'d, 'a> {
    data: Vec<&'d Datum<'a>>,
    distinct_metrics: usize,
}

impl<'d, 'a> Batch<'d, 'a> {
    fn new(capacity: usize) -> Self {
        Self {
            data: Vec::with_capacity(capacity),
            distinct_metrics: 0,
        }
    }

    fn metric(&self, name: &str) -> Option<&Datum<'a>> {
        self.data.iter().find(|d| d.name == name).copied()
    }

    fn dim_value(&self, key: &str) -> Option<&'a [u8]> {
        self.data
            .iter()
            .flat_map(|d| d.dims.iter())
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }

    fn can_add(&self, d: &Datum<'_>, reserved: &[&str]) -> bool {
        if d.name.is_empty() || self.distinct_metrics >= MAX_METRICS || reserved.contains(&d.name) {
            return false;
        }
        if self.dim_value(d.name).is_some() {
            return false;
        }
        if let Some(existing) = self.metric(d.name) {
            if existing.value != d.value || existing.unit != d.unit {
                return false;
            }
        }
        if d.dims.len() > MAX_DIMENSIONS {
            return false;
        }
        d.dims.iter().all(|(k, v)| {
            !k.is_empty()
                && !reserved.contains(k)
                && self.metric(k).is_none()
                && self.dim_value(k).is_none_or(|existing| existing == *v)
        })
    }

    fn add(&mut self, d: &'d Datum<'a>) {
        if self.metric(d.name).is_none() {
            self.distinct_metrics += 1;
        }
        self.data.push(d);
    }
}

/// Splits data points into EMF-compatible batches, in order, as cwproxy's `partitionDatums`.
fn partition<'d, 'a>(
    data: &'d [Datum<'a>],
    reserved: &[&str],
) -> Result<Vec<Batch<'d, 'a>>, EmfError> {
    let mut batches = Vec::with_capacity(1);
    let mut current = Batch::new(data.len());
    for d in data {
        if !current.can_add(d, reserved) {
            if current.data.is_empty() {
                return Err(EmfError::Unencodable(d.name.to_owned()));
            }
            batches.push(std::mem::replace(&mut current, Batch::new(data.len())));
            if !current.can_add(d, reserved) {
                return Err(EmfError::Unencodable(d.name.to_owned()));
            }
        }
        current.add(d);
    }
    if !current.data.is_empty() {
        batches.push(current);
    }
    Ok(batches)
}

/// Writes `,"Dim":"v",...,"Metric":1,...,"_aws":{...}` for one batch.
fn write_members(out: &mut Vec<u8>, batch: &Batch<'_, '_>, namespace: &str, timestamp: i64) {
    // Root dimension members: union over the batch, sorted by key.
    let mut dims: Vec<(&str, &[u8])> = batch
        .data
        .iter()
        .flat_map(|d| d.dims.iter().copied())
        .collect();
    dims.sort_unstable_by(|a, b| a.0.cmp(b.0));
    dims.dedup_by(|a, b| a.0 == b.0);
    for (k, v) in &dims {
        out.push(b',');
        json::write_key(out, k.as_bytes());
        json::write_str(out, v);
    }
    // Root metric members: first occurrence of each name, sorted by name.
    let mut metrics: Vec<&Datum<'_>> = batch.data.clone();
    metrics.sort_unstable_by(|a, b| a.name.cmp(b.name));
    metrics.dedup_by(|a, b| a.name == b.name);
    for m in &metrics {
        out.push(b',');
        json::write_key(out, m.name.as_bytes());
        json::write_f64(out, m.value);
    }

    // One directive per distinct set of dimension keys, ordered by the NUL-joined sorted keys.
    // Keys are unique within a datum, so two datums share a set when they have the same number
    // of keys and one's keys all appear in the other's.
    let same_keys = |a: &Datum<'_>, b: &Datum<'_>| {
        a.dims.len() == b.dims.len()
            && a.dims
                .iter()
                .all(|(k, _)| b.dims.iter().any(|(k2, _)| k2 == k))
    };
    let mut groups: Vec<(Vec<&str>, Vec<&Datum<'_>>)> = Vec::with_capacity(4);
    for d in &batch.data {
        match groups
            .iter_mut()
            .find(|(_, members)| same_keys(members[0], d))
        {
            Some((_, members)) => {
                if !members.iter().any(|m| m.name == d.name) {
                    members.push(d);
                }
            }
            None => {
                let mut keys: Vec<&str> = d.dims.iter().map(|(k, _)| *k).collect();
                keys.sort_unstable();
                let mut members = Vec::with_capacity(batch.data.len());
                members.push(*d);
                groups.push((keys, members));
            }
        }
    }
    // Comparing key lists element-wise equals comparing their NUL-joined strings, since NUL sorts
    // below every byte a key can contain.
    groups.sort_unstable_by(|a, b| a.0.cmp(&b.0));

    out.extend_from_slice(b",\"_aws\":{\"Timestamp\":");
    json::write_i64(out, timestamp);
    out.extend_from_slice(b",\"CloudWatchMetrics\":[");
    for (i, (keys, members)) in groups.iter_mut().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"Namespace\":");
        json::write_str(out, namespace.as_bytes());
        out.extend_from_slice(b",\"Dimensions\":[[");
        for (j, k) in keys.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            json::write_str(out, k.as_bytes());
        }
        out.extend_from_slice(b"]],\"Metrics\":[");
        members.sort_unstable_by(|a, b| a.name.cmp(b.name));
        for (j, m) in members.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"Name\":");
            json::write_str(out, m.name.as_bytes());
            if !m.unit.is_empty() {
                out.extend_from_slice(b",\"Unit\":");
                json::write_str(out, m.unit.as_bytes());
            }
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
    }
    out.extend_from_slice(b"]}");
}

/// Which kind of event a metric-only event accompanies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricEventKind<'a> {
    /// Traffic: carries `_q` (`<app> METRIC <names>`), `_t` and `app_name`.
    Traffic {
        /// The application name.
        app_name: &'a str,
    },
    /// Health: carries only `_t`.
    Health,
}

/// Appends EMF to a log entry that occupies `out[base_start..]` and writes any overflow batches as
/// further metric-only events, each on its own line.
///
/// `out[base_start..]` must hold exactly one JSON object without a trailing newline; a newline is
/// written after it and after each extra event.
pub fn append_to_entry(
    out: &mut Vec<u8>,
    base_start: usize,
    data: &[Datum<'_>],
    namespace: &str,
    timestamp: i64,
    kind: MetricEventKind<'_>,
) -> Result<(), EmfError> {
    if out.len() <= base_start || out.last() != Some(&b'}') {
        return Err(EmfError::NotAnObject);
    }
    let batches = partition(data, RESERVED_LOG_KEYS)?;
    let mut batches = batches.into_iter();
    if let Some(first) = batches.next() {
        out.pop();
        write_members(out, &first, namespace, timestamp);
        out.push(b'}');
    }
    out.push(b'\n');
    for batch in batches {
        write_metric_event(out, &batch, namespace, timestamp, kind);
        out.push(b'\n');
    }
    Ok(())
}

fn write_metric_event(
    out: &mut Vec<u8>,
    batch: &Batch<'_, '_>,
    namespace: &str,
    timestamp: i64,
    kind: MetricEventKind<'_>,
) {
    out.push(b'{');
    match kind {
        MetricEventKind::Traffic { app_name } => {
            let mut names: Vec<&str> = batch.data.iter().map(|d| d.name).collect();
            names.sort_unstable();
            names.dedup();
            let mut summary = String::new();
            if !app_name.trim().is_empty() {
                summary.push_str(app_name);
                summary.push(' ');
            }
            summary.push_str("METRIC");
            if !names.is_empty() {
                summary.push(' ');
                summary.push_str(&names.join(","));
            }
            out.extend_from_slice(b"\"_q\":");
            json::write_str(out, summary.as_bytes());
            out.extend_from_slice(b",\"_t\":\"TRAFFIC\",\"app_name\":");
            json::write_str(out, app_name.as_bytes());
        }
        MetricEventKind::Health => out.extend_from_slice(b"\"_t\":\"HEALTH\""),
    }
    write_members(out, batch, namespace, timestamp);
    out.push(b'}');
}

/// Writes metric-only events (one line each) for data points that accompany no log entry.
pub fn write_metric_events(
    out: &mut Vec<u8>,
    data: &[Datum<'_>],
    namespace: &str,
    timestamp: i64,
    kind: MetricEventKind<'_>,
) -> Result<(), EmfError> {
    for batch in partition(data, RESERVED_METRIC_KEYS)? {
        write_metric_event(out, &batch, namespace, timestamp, kind);
        out.push(b'\n');
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(out: &[u8]) -> &str {
        std::str::from_utf8(out).expect("utf8")
    }

    #[test]
    fn rejects_invalid_definitions() {
        let many: Vec<(&str, &[u8])> = (0..31).map(|_| ("k", &b"v"[..])).collect();
        let names = ["", "_aws"];
        for name in names {
            let d = [Datum {
                name,
                unit: "Count",
                value: 1.0,
                dims: &[],
            }];
            let mut out = b"{}".to_vec();
            assert!(
                append_to_entry(&mut out, 0, &d, "ns", 1, MetricEventKind::Health).is_err(),
                "{name:?}"
            );
        }
        let reserved_dim = [Datum {
            name: "M",
            unit: "",
            value: 1.0,
            dims: &[("_q", b"x")],
        }];
        let too_many = [Datum {
            name: "M",
            unit: "",
            value: 1.0,
            dims: &many,
        }];
        for d in [&reserved_dim[..], &too_many[..]] {
            let mut out = b"{}".to_vec();
            let err = append_to_entry(&mut out, 0, d, "ns", 1, MetricEventKind::Health)
                .expect_err("rejected");
            assert!(err.to_string().contains("cannot be encoded as EMF"));
        }
    }

    #[test]
    fn rejects_non_object_base() {
        let mut out = b"[]".to_vec();
        let d = [Datum {
            name: "M",
            unit: "",
            value: 1.0,
            dims: &[],
        }];
        assert_eq!(
            append_to_entry(&mut out, 0, &d, "ns", 1, MetricEventKind::Health),
            Err(EmfError::NotAnObject)
        );
    }

    #[test]
    fn health_metric_only_event() {
        let dims: &[(&str, &[u8])] = &[("AppName", b"orders"), ("Endpoint", b"http://x:80/h")];
        let d = [Datum {
            name: "HealthLatency",
            unit: "Milliseconds",
            value: 2.5,
            dims,
        }];
        let mut out = Vec::new();
        write_metric_events(&mut out, &d, "app/health", 7, MetricEventKind::Health).expect("ok");
        assert_eq!(
            s(&out),
            "{\"_t\":\"HEALTH\",\"AppName\":\"orders\",\"Endpoint\":\"http://x:80/h\",\"HealthLatency\":2.5,\"_aws\":{\"Timestamp\":7,\"CloudWatchMetrics\":[{\"Namespace\":\"app/health\",\"Dimensions\":[[\"AppName\",\"Endpoint\"]],\"Metrics\":[{\"Name\":\"HealthLatency\",\"Unit\":\"Milliseconds\"}]}]}}\n"
        );
    }

    #[test]
    fn conflicting_values_start_a_new_batch() {
        let a: &[(&str, &[u8])] = &[("AppName", b"x")];
        let d = [
            Datum {
                name: "M",
                unit: "Count",
                value: 1.0,
                dims: a,
            },
            Datum {
                name: "M",
                unit: "Count",
                value: 2.0,
                dims: a,
            },
        ];
        let mut out = b"{\"_t\":\"TRAFFIC\"}".to_vec();
        append_to_entry(
            &mut out,
            0,
            &d,
            "app/traffic",
            5,
            MetricEventKind::Traffic { app_name: "x" },
        )
        .expect("ok");
        let lines: Vec<&str> = s(&out).lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("{\"_t\":\"TRAFFIC\",\"AppName\":\"x\",\"M\":1,"));
        assert!(lines[1].starts_with("{\"_q\":\"x METRIC M\",\"_t\":\"TRAFFIC\",\"app_name\":\"x\",\"AppName\":\"x\",\"M\":2,"));
    }
}
