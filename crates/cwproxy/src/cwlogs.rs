//! CloudWatch Logs `PutLogEvents` rules as plain data: the limits, the stream name, trimming of
//! oversized events and the split of pending events into valid batches. No I/O here, so every
//! rule is unit-tested (moto does not enforce them).

/// Most events in one `PutLogEvents` call.
pub const MAX_BATCH_EVENTS: usize = 10_000;
/// Most bytes in one call, counting each message's UTF-8 length plus [`EVENT_OVERHEAD`].
pub const MAX_BATCH_BYTES: usize = 1_048_576;
/// Bytes AWS adds to every event when checking [`MAX_BATCH_BYTES`].
pub const EVENT_OVERHEAD: usize = 26;
/// Largest event AWS accepts (256 KiB including the overhead); longer ones are trimmed.
pub const MAX_EVENT_BYTES: usize = 262_144 - EVENT_OVERHEAD;
/// Events of one batch must lie within this span (24 hours, exclusive).
pub const MAX_BATCH_SPAN_MS: i64 = 24 * 60 * 60 * 1000;
// Trimming is the same rule for stdout lines (`LOG_LINE_LIMIT`) and CloudWatch events: one
// implementation, in telemetry.
pub use telemetry::trim::{trim_event, TooLarge, TRUNCATED_MARKER};

/// Longest log group or stream name.
pub const MAX_NAME_LEN: usize = 512;

/// Checks a log group name against CloudWatch's rules (1–512 of `[A-Za-z0-9._/#-]`), so a bad
/// `LOG_GROUP_NAME` (or an `APP_NAME` with spaces in the default) is reported clearly up front.
pub fn validate_group_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "{name:?} is not a valid CloudWatch log group name: it must be 1 to {MAX_NAME_LEN} characters long"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | '#')))
    {
        return Err(format!(
            "{name:?} is not a valid CloudWatch log group name: {bad:?} is not allowed (only letters, digits and . - _ / #)"
        ));
    }
    Ok(())
}

/// One log event waiting to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEvent {
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The message (valid UTF-8: rendered JSON).
    pub message: String,
}

impl LogEvent {
    /// What the event counts against [`MAX_BATCH_BYTES`].
    pub fn cost(&self) -> usize {
        self.message.len() + EVENT_OVERHEAD
    }
}

/// `sanitize(APP_NAME-<kind>)-<pid>-<unix seconds>`: runs of characters outside
/// `[A-Za-z0-9._-]` become one `-`; an empty result becomes `cwproxy`.
pub fn stream_name(app_name: &str, kind: &str, pid: u32, unix_seconds: u64) -> String {
    let raw = format!("{app_name}-{kind}");
    let mut out = String::with_capacity(raw.len() + 24);
    let mut in_run = false;
    for c in raw.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
            out.push(c);
            in_run = false;
        } else if !in_run {
            out.push('-');
            in_run = true;
        }
    }
    if out.is_empty() {
        out.push_str("cwproxy");
    }
    let suffix = format!("-{pid}-{unix_seconds}");
    // ASCII only by now, so any byte index is a character boundary.
    out.truncate(MAX_NAME_LEN - suffix.len());
    out + &suffix
}

/// Sorts `events` by timestamp (stable: equal timestamps keep arrival order) and splits them into
/// batches that each obey the count, byte and span limits.
pub fn plan_batches(mut events: Vec<LogEvent>) -> Vec<Vec<LogEvent>> {
    events.sort_by_key(|e| e.timestamp_ms);
    let mut batches = Vec::new();
    let mut current: Vec<LogEvent> = Vec::new();
    let mut bytes = 0usize;
    for event in events {
        let cost = event.cost();
        let too_many = current.len() >= MAX_BATCH_EVENTS;
        let too_big = bytes + cost > MAX_BATCH_BYTES;
        let too_long = current
            .first()
            .is_some_and(|first| event.timestamp_ms - first.timestamp_ms >= MAX_BATCH_SPAN_MS);
        if !current.is_empty() && (too_many || too_big || too_long) {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += cost;
        current.push(event);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ev(ts: i64, len: usize) -> LogEvent {
        LogEvent {
            timestamp_ms: ts,
            message: "x".repeat(len),
        }
    }

    #[test]
    fn stream_name_sanitizes_like_the_spec_example() {
        assert_eq!(
            stream_name("orders api", "traffic", 4242, 1_700_000_000),
            "orders-api-traffic-4242-1700000000"
        );
        assert_eq!(stream_name("a//b  c", "health", 1, 2), "a-b-c-health-1-2");
        assert_eq!(stream_name("ü.x_y", "health", 1, 2), "-.x_y-health-1-2");
    }

    #[test]
    fn stream_names_are_capped_at_512() {
        let name = stream_name(&"a".repeat(600), "traffic", 7, 9);
        assert_eq!(name.len(), MAX_NAME_LEN);
        assert!(name.ends_with("aaa-7-9"));
    }

    #[test]
    fn group_names_are_validated() {
        assert!(validate_group_name("/app/log/orders-api_1.x#2").is_ok());
        let e = validate_group_name("/app/log/orders api").unwrap_err();
        assert!(e.contains("' ' is not allowed"), "{e}");
        assert!(validate_group_name("").is_err());
        assert!(validate_group_name(&"a".repeat(513)).is_err());
        assert!(validate_group_name(&"a".repeat(512)).is_ok());
    }

    #[test]
    fn batches_are_sorted_by_timestamp_stably() {
        let mut events = vec![ev(30, 1), ev(10, 2), ev(20, 3), ev(10, 4)];
        events[1].message = "first".into();
        events[3].message = "second".into();
        let batches = plan_batches(events);
        assert_eq!(batches.len(), 1);
        let ts: Vec<i64> = batches[0].iter().map(|e| e.timestamp_ms).collect();
        assert_eq!(ts, vec![10, 10, 20, 30]);
        assert_eq!(batches[0][0].message, "first");
        assert_eq!(batches[0][1].message, "second");
    }

    #[test]
    fn batches_hold_at_most_10000_events() {
        let batches = plan_batches((0..25_001).map(|i| ev(i, 1)).collect());
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![10_000, 10_000, 5_001]);
    }

    #[test]
    fn batches_respect_the_byte_limit_including_26_per_event() {
        // 1000-byte messages cost 1026: 1022 of them fit in 1,048,576 (1022*1026 = 1,048,572).
        let batches = plan_batches((0..3000).map(|i| ev(i, 1000)).collect());
        assert_eq!(batches[0].len(), 1022);
        for b in &batches {
            let bytes: usize = b.iter().map(LogEvent::cost).sum();
            assert!(bytes <= MAX_BATCH_BYTES, "{bytes}");
        }
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 3000);
        // An exact fit stays in one batch.
        let exact = MAX_BATCH_BYTES / 2 - EVENT_OVERHEAD;
        assert_eq!(plan_batches(vec![ev(1, exact), ev(2, exact)]).len(), 1);
        assert_eq!(plan_batches(vec![ev(1, exact), ev(2, exact + 1)]).len(), 2);
    }

    #[test]
    fn batches_never_span_24_hours() {
        let day = MAX_BATCH_SPAN_MS;
        let batches = plan_batches(vec![ev(0, 1), ev(day - 1, 1), ev(day, 1), ev(day + 5, 1)]);
        let ts: Vec<Vec<i64>> = batches
            .iter()
            .map(|b| b.iter().map(|e| e.timestamp_ms).collect())
            .collect();
        assert_eq!(ts, vec![vec![0, day - 1], vec![day, day + 5]]);
    }

    #[test]
    fn empty_input_gives_no_batches() {
        assert!(plan_batches(Vec::new()).is_empty());
    }
}
