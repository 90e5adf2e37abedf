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
/// Marker appended to a body shortened to fit [`MAX_EVENT_BYTES`] (the capture marker).
pub const TRUNCATED_MARKER: &str = "...(truncated)";

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

/// Why an event could not be made to fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CloudWatch log event of {len} bytes cannot be trimmed below {max} bytes")]
pub struct TooLarge {
    /// Length after every body was shortened.
    pub len: usize,
    /// The limit.
    pub max: usize,
}

/// A member value's byte range inside the event.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    is_string: bool,
}

/// Makes `message` fit in `max` bytes by shortening `body_raw` and `body` of `request` and
/// `response` (largest first) and appending [`TRUNCATED_MARKER`]; the result stays valid JSON with
/// every other member unchanged. Messages already short enough are returned as they are.
pub fn trim_event(message: String, max: usize) -> Result<String, TooLarge> {
    if message.len() <= max {
        return Ok(message);
    }
    let mut msg = message;
    // Re-scan after each edit: spans move.
    // Four bodies at most (request/response × body/body_raw), each cut once; spare rounds.
    for _ in 0..8 {
        if msg.len() <= max {
            return Ok(msg);
        }
        let spans = body_spans(msg.as_bytes());
        let Some(span) = spans
            .into_iter()
            .filter(|s| s.end - s.start > shortened_len_floor())
            .max_by_key(|s| s.end - s.start)
        else {
            break;
        };
        let excess = msg.len() - max;
        let value_len = span.end - span.start;
        let keep = value_len.saturating_sub(excess + TRUNCATED_MARKER.len() + 2 + 16);
        let replacement = shorten_value(&msg[span.start..span.end], span.is_string, keep);
        msg.replace_range(span.start..span.end, &replacement);
    }
    if msg.len() <= max {
        Ok(msg)
    } else {
        Err(TooLarge {
            len: msg.len(),
            max,
        })
    }
}

/// A value is not worth shortening below the marker plus quotes.
fn shortened_len_floor() -> usize {
    TRUNCATED_MARKER.len() + 2
}

/// A JSON string holding the first ~`keep` bytes of `value`'s content, then the marker.
fn shorten_value(value: &str, is_string: bool, keep: usize) -> String {
    let mut out = String::with_capacity(keep + TRUNCATED_MARKER.len() + 2);
    out.push('"');
    if is_string {
        // Inside the quotes the text is already escaped JSON: cut at a character boundary that
        // is not inside an escape sequence.
        let inner = &value[1..value.len() - 1];
        out.push_str(&inner[..escaped_cut(inner, keep)]);
    } else {
        // An object/array/number: its text becomes a string, escaped (each byte may grow up to
        // six times, so cut first by a sixth and then re-check).
        let mut escaped = String::new();
        let mut budget = keep;
        loop {
            escaped.clear();
            let cut = floor_char_boundary(value, budget);
            escape_into(&value[..cut], &mut escaped);
            if escaped.len() <= keep || budget == 0 {
                break;
            }
            budget = budget.saturating_sub((escaped.len() - keep).max(1));
        }
        out.push_str(&escaped);
    }
    out.push_str(TRUNCATED_MARKER);
    out.push('"');
    out
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The largest cut ≤ `keep` in escaped JSON string content that does not split an escape.
fn escaped_cut(inner: &str, keep: usize) -> usize {
    let bytes = inner.as_bytes();
    let mut i = 0;
    let mut last_ok = 0;
    while i < bytes.len() {
        if i > keep {
            break;
        }
        last_ok = i;
        let step = if bytes[i] == b'\\' {
            if bytes.get(i + 1) == Some(&b'u') {
                6
            } else {
                2
            }
        } else {
            utf8_len(bytes[i])
        };
        i += step;
    }
    if i <= keep && i <= bytes.len() {
        last_ok = i.min(bytes.len());
    }
    last_ok
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// JSON string escaping in the Go style of the rest of the line (HTML-safe).
fn escape_into(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

/// Spans of `body` and `body_raw` inside the top-level `request` and `response` objects.
fn body_spans(json: &[u8]) -> Vec<Span> {
    let mut spans = Vec::new();
    let mut s = Scanner { b: json, i: 0 };
    let Some(top) = s.members() else {
        return spans;
    };
    for (key, start, end) in top {
        if key != b"request" && key != b"response" {
            continue;
        }
        let mut inner = Scanner { b: json, i: start };
        let Some(members) = inner.members() else {
            continue;
        };
        debug_assert!(inner.i <= end);
        for (k, vs, ve) in members {
            if k == b"body" || k == b"body_raw" {
                spans.push(Span {
                    start: vs,
                    end: ve,
                    is_string: json.get(vs) == Some(&b'"'),
                });
            }
        }
    }
    spans
}

/// A minimal JSON scanner over trusted, compact output (ours): finds member value ranges.
struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

type Member<'a> = (&'a [u8], usize, usize);

impl<'a> Scanner<'a> {
    fn ws(&mut self) {
        while self.b.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    /// Members of the object starting at `self.i`: (raw key, value start, value end).
    fn members(&mut self) -> Option<Vec<Member<'a>>> {
        self.ws();
        if self.b.get(self.i) != Some(&b'{') {
            return None;
        }
        self.i += 1;
        let mut out = Vec::new();
        loop {
            self.ws();
            match self.b.get(self.i)? {
                b'}' => {
                    self.i += 1;
                    return Some(out);
                }
                b',' => self.i += 1,
                b'"' => {
                    let ks = self.i + 1;
                    self.skip_string()?;
                    let key = &self.b[ks..self.i - 1];
                    self.ws();
                    if self.b.get(self.i) != Some(&b':') {
                        return None;
                    }
                    self.i += 1;
                    self.ws();
                    let vs = self.i;
                    self.skip_value()?;
                    out.push((key, vs, self.i));
                }
                _ => return None,
            }
        }
    }

    fn skip_string(&mut self) -> Option<()> {
        self.i += 1;
        loop {
            match self.b.get(self.i)? {
                b'\\' => self.i += 2,
                b'"' => {
                    self.i += 1;
                    return Some(());
                }
                _ => self.i += 1,
            }
        }
    }

    fn skip_value(&mut self) -> Option<()> {
        match self.b.get(self.i)? {
            b'"' => self.skip_string(),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.b.get(self.i)? {
                        b'"' => {
                            self.skip_string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                while self
                    .b
                    .get(self.i)
                    .is_some_and(|c| !matches!(c, b',' | b'}' | b']'))
                {
                    self.i += 1;
                }
                Some(())
            }
        }
    }
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

    fn big_event(body_len: usize) -> String {
        let body = "a<".repeat(body_len / 2);
        format!(
            "{{\"_q\":\"x GET / 200 1.000ms\",\"_t\":\"TRAFFIC\",\"request\":{{\"time\":1,\"body\":null}},\"response\":{{\"time\":2,\"status\":200,\"body\":{{\"k\":\"{b}\",\"n\":[1,2]}},\"body_raw\":\"{b}\",\"body_hash\":\"abcdef\"}},\"_aws\":{{\"Timestamp\":2}},\"Latency\":1}}",
            b = body.replace('<', "\\u003c")
        )
    }

    #[test]
    fn small_events_are_not_touched() {
        let e = big_event(100);
        assert_eq!(trim_event(e.clone(), MAX_EVENT_BYTES).unwrap(), e);
    }

    #[test]
    fn oversized_events_are_trimmed_to_valid_json_with_the_marker() {
        let e = big_event(300_000);
        assert!(e.len() > MAX_EVENT_BYTES);
        let t = trim_event(e, MAX_EVENT_BYTES).unwrap();
        assert!(t.len() <= MAX_EVENT_BYTES, "{}", t.len());
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        let raw = v["response"]["body_raw"].as_str().unwrap();
        assert!(raw.ends_with(TRUNCATED_MARKER));
        assert!(raw.starts_with("a<a<"));
        // Everything else is unchanged.
        assert_eq!(v["_q"], "x GET / 200 1.000ms");
        assert_eq!(v["response"]["body_hash"], "abcdef");
        assert_eq!(v["Latency"], 1);
        assert_eq!(v["_aws"]["Timestamp"], 2);
        assert!(v["request"]["body"].is_null());
    }

    #[test]
    fn trimming_reaches_small_limits_by_shortening_body_too() {
        let e = big_event(20_000);
        let t = trim_event(e, 2_000).unwrap();
        assert!(t.len() <= 2_000, "{}", t.len());
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        assert!(v["response"]["body"]
            .as_str()
            .unwrap()
            .ends_with(TRUNCATED_MARKER));
        assert!(v["response"]["body_raw"]
            .as_str()
            .unwrap()
            .ends_with(TRUNCATED_MARKER));
    }

    #[test]
    fn cuts_never_split_escapes_or_characters() {
        let inner = "ab\\u003cé\\n";
        for keep in 0..inner.len() + 2 {
            let cut = escaped_cut(inner, keep);
            assert!(cut <= keep, "keep {keep} cut {cut}");
            let s = format!("\"{}\"", &inner[..cut]);
            serde_json::from_str::<String>(&s).unwrap();
        }
    }

    #[test]
    fn events_without_bodies_that_are_too_large_are_reported() {
        let e = format!("{{\"_t\":\"HEALTH\",\"x\":\"{}\"}}", "a".repeat(1000));
        let err = trim_event(e, 100).unwrap_err();
        assert_eq!(err.max, 100);
    }
}
