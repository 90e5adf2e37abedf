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

/// Reusable index buffers for EMF assembly, so a warm renderer allocates nothing here.
#[derive(Debug, Default)]
pub struct EmfScratch {
    /// Datum indices, batch after batch.
    order: Vec<usize>,
    /// End offset in `order` of each batch.
    ends: Vec<usize>,
    /// (datum, dimension) of each distinct dimension key of one batch.
    dims: Vec<(usize, usize)>,
    /// First datum of each distinct metric name of one batch.
    metrics: Vec<usize>,
    /// One representative datum per dimension-key set.
    groups: Vec<usize>,
    /// Datum indices of one directive.
    members: Vec<usize>,
}

impl EmfScratch {
    fn dim_value<'a>(&self, data: &[Datum<'a>], key: &str) -> Option<&'a [u8]> {
        self.dims
            .iter()
            .map(|&(i, j)| data[i].dims[j])
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    fn metric<'d, 'a>(&self, data: &'d [Datum<'a>], name: &str) -> Option<&'d Datum<'a>> {
        self.metrics
            .iter()
            .map(|&i| &data[i])
            .find(|m| m.name == name)
    }

    /// Whether `d` can join the current batch, as cwproxy's `canAdd`.
    fn can_add(&self, data: &[Datum<'_>], d: &Datum<'_>, reserved: &[&str]) -> bool {
        if d.name.is_empty() || self.metrics.len() >= MAX_METRICS || reserved.contains(&d.name) {
            return false;
        }
        if self.dim_value(data, d.name).is_some() {
            return false;
        }
        if let Some(existing) = self.metric(data, d.name) {
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
                && self.metric(data, k).is_none()
                && self.dim_value(data, k).is_none_or(|e| e == *v)
        })
    }

    /// Adds datum `i` to the current batch, keeping the distinct dimension keys and metric names.
    fn add(&mut self, data: &[Datum<'_>], i: usize) {
        self.order.push(i);
        if self.metric(data, data[i].name).is_none() {
            self.metrics.push(i);
        }
        for (j, (k, _)) in data[i].dims.iter().enumerate() {
            if self.dim_value(data, k).is_none() {
                self.dims.push((i, j));
            }
        }
    }
}

/// Splits data points into EMF-compatible batches in order, as cwproxy's `partitionDatums`,
/// filling `scratch.order` / `scratch.ends`.
fn partition(
    data: &[Datum<'_>],
    reserved: &[&str],
    scratch: &mut EmfScratch,
) -> Result<(), EmfError> {
    scratch.order.clear();
    scratch.ends.clear();
    scratch.dims.clear();
    scratch.metrics.clear();
    for (i, d) in data.iter().enumerate() {
        if !scratch.can_add(data, d, reserved) {
            if scratch.metrics.is_empty() {
                return Err(EmfError::Unencodable(d.name.to_owned()));
            }
            scratch.ends.push(scratch.order.len());
            scratch.dims.clear();
            scratch.metrics.clear();
            if !scratch.can_add(data, d, reserved) {
                return Err(EmfError::Unencodable(d.name.to_owned()));
            }
        }
        scratch.add(data, i);
    }
    if !scratch.metrics.is_empty() {
        scratch.ends.push(scratch.order.len());
    }
    Ok(())
}

/// Sorted dimension keys of a datum, on the stack (at most [`MAX_DIMENSIONS`] after validation).
fn sorted_keys<'a>(d: &Datum<'a>, buf: &mut [&'a str; MAX_DIMENSIONS]) -> usize {
    let n = d.dims.len().min(MAX_DIMENSIONS);
    for (slot, (k, _)) in buf.iter_mut().zip(d.dims.iter()) {
        *slot = k;
    }
    buf[..n].sort_unstable();
    n
}

/// Writes `,"Dim":"v",...,"Metric":1,...,"_aws":{...}` for the batch `order` (indices into `data`).
fn write_members(
    out: &mut Vec<u8>,
    data: &[Datum<'_>],
    batch: &[usize],
    namespace: &str,
    timestamp: i64,
    s: &mut EmfScratch,
) {
    // Root dimension members: union over the batch, sorted by key.
    s.dims.clear();
    s.metrics.clear();
    for &i in batch {
        for (j, (k, _)) in data[i].dims.iter().enumerate() {
            if !s.dims.iter().any(|&(a, b)| data[a].dims[b].0 == *k) {
                s.dims.push((i, j));
            }
        }
        if !s.metrics.iter().any(|&m| data[m].name == data[i].name) {
            s.metrics.push(i);
        }
    }
    s.dims
        .sort_unstable_by(|&(a, b), &(c, d)| data[a].dims[b].0.cmp(data[c].dims[d].0));
    for &(i, j) in &s.dims {
        let (k, v) = data[i].dims[j];
        out.push(b',');
        json::write_key(out, k.as_bytes());
        json::write_str(out, v);
    }
    // Root metric members: the first datum of each name, sorted by name.
    s.metrics
        .sort_unstable_by(|&a, &b| data[a].name.cmp(data[b].name));
    for &i in &s.metrics {
        out.push(b',');
        json::write_key(out, data[i].name.as_bytes());
        json::write_f64(out, data[i].value);
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
    s.groups.clear();
    for &i in batch {
        if !s.groups.iter().any(|&g| same_keys(&data[g], &data[i])) {
            s.groups.push(i);
        }
    }
    // Comparing sorted key lists element-wise equals comparing their NUL-joined strings, since
    // NUL sorts below every byte a key can contain.
    s.groups.sort_unstable_by(|&a, &b| {
        let (mut ka, mut kb) = ([""; MAX_DIMENSIONS], [""; MAX_DIMENSIONS]);
        let (na, nb) = (
            sorted_keys(&data[a], &mut ka),
            sorted_keys(&data[b], &mut kb),
        );
        ka[..na].cmp(&kb[..nb])
    });

    out.extend_from_slice(b",\"_aws\":{\"Timestamp\":");
    json::write_i64(out, timestamp);
    out.extend_from_slice(b",\"CloudWatchMetrics\":[");
    for (gi, &g) in s.groups.iter().enumerate() {
        if gi > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"Namespace\":");
        json::write_str(out, namespace.as_bytes());
        out.extend_from_slice(b",\"Dimensions\":[[");
        let mut keys = [""; MAX_DIMENSIONS];
        let n = sorted_keys(&data[g], &mut keys);
        for (j, k) in keys[..n].iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            json::write_str(out, k.as_bytes());
        }
        out.extend_from_slice(b"]],\"Metrics\":[");
        // The first datum of each name in this key set gives the directive its unit.
        s.members.clear();
        for &i in batch {
            if same_keys(&data[g], &data[i])
                && !s.members.iter().any(|&m| data[m].name == data[i].name)
            {
                s.members.push(i);
            }
        }
        s.members
            .sort_unstable_by(|&a, &b| data[a].name.cmp(data[b].name));
        for (j, &m) in s.members.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"Name\":");
            json::write_str(out, data[m].name.as_bytes());
            if !data[m].unit.is_empty() {
                out.extend_from_slice(b",\"Unit\":");
                json::write_str(out, data[m].unit.as_bytes());
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
    scratch: &mut EmfScratch,
) -> Result<(), EmfError> {
    if out.len() <= base_start || out.last() != Some(&b'}') {
        return Err(EmfError::NotAnObject);
    }
    partition(data, RESERVED_LOG_KEYS, scratch)?;
    let order = std::mem::take(&mut scratch.order);
    let ends = std::mem::take(&mut scratch.ends);
    let mut start = 0;
    for (n, &end) in ends.iter().enumerate() {
        let batch = &order[start..end];
        if n == 0 {
            out.pop();
            write_members(out, data, batch, namespace, timestamp, scratch);
            out.extend_from_slice(b"}\n");
        } else {
            write_metric_event(out, data, batch, namespace, timestamp, kind, scratch);
            out.push(b'\n');
        }
        start = end;
    }
    if ends.is_empty() {
        out.push(b'\n');
    }
    scratch.order = order;
    scratch.ends = ends;
    Ok(())
}

fn write_metric_event(
    out: &mut Vec<u8>,
    data: &[Datum<'_>],
    batch: &[usize],
    namespace: &str,
    timestamp: i64,
    kind: MetricEventKind<'_>,
    scratch: &mut EmfScratch,
) {
    out.push(b'{');
    match kind {
        MetricEventKind::Traffic { app_name } => {
            let mut names: Vec<&str> = batch.iter().map(|&i| data[i].name).collect();
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
    write_members(out, data, batch, namespace, timestamp, scratch);
    out.push(b'}');
}

/// Writes metric-only events (one line each) for data points that accompany no log entry.
pub fn write_metric_events(
    out: &mut Vec<u8>,
    data: &[Datum<'_>],
    namespace: &str,
    timestamp: i64,
    kind: MetricEventKind<'_>,
    scratch: &mut EmfScratch,
) -> Result<(), EmfError> {
    partition(data, RESERVED_METRIC_KEYS, scratch)?;
    let order = std::mem::take(&mut scratch.order);
    let ends = std::mem::take(&mut scratch.ends);
    let mut start = 0;
    for &end in &ends {
        write_metric_event(
            out,
            data,
            &order[start..end],
            namespace,
            timestamp,
            kind,
            scratch,
        );
        out.push(b'\n');
        start = end;
    }
    scratch.order = order;
    scratch.ends = ends;
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
                append_to_entry(
                    &mut out,
                    0,
                    &d,
                    "ns",
                    1,
                    MetricEventKind::Health,
                    &mut EmfScratch::default()
                )
                .is_err(),
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
            let err = append_to_entry(
                &mut out,
                0,
                d,
                "ns",
                1,
                MetricEventKind::Health,
                &mut EmfScratch::default(),
            )
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
            append_to_entry(
                &mut out,
                0,
                &d,
                "ns",
                1,
                MetricEventKind::Health,
                &mut EmfScratch::default()
            ),
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
        write_metric_events(
            &mut out,
            &d,
            "app/health",
            7,
            MetricEventKind::Health,
            &mut EmfScratch::default(),
        )
        .expect("ok");
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
            &mut EmfScratch::default(),
        )
        .expect("ok");
        let lines: Vec<&str> = s(&out).lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("{\"_t\":\"TRAFFIC\",\"AppName\":\"x\",\"M\":1,"));
        assert!(lines[1].starts_with("{\"_q\":\"x METRIC M\",\"_t\":\"TRAFFIC\",\"app_name\":\"x\",\"AppName\":\"x\",\"M\":2,"));
    }
}
