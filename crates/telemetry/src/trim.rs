//! Trimming of an oversized log line to a byte limit: `body_raw` and `body` of `request` and
//! `response` are shortened (largest first) and marked with the capture marker, every other
//! member is kept. One rule for stdout lines (`LOG_LINE_LIMIT`) and CloudWatch events.

/// Marker appended to a shortened body (the capture marker).
pub const TRUNCATED_MARKER: &str = crate::parse::TRUNCATED_SUFFIX;

/// Why an event could not be made to fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("log event of {len} bytes cannot be trimmed below {max} bytes")]
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
        let mut escaped = Vec::new();
        let mut budget = keep;
        loop {
            escaped.clear();
            let cut = floor_char_boundary(value, budget);
            // The line's own escaping (Go's HTML-safe rules), so the trimmed text reads alike.
            crate::json::write_str_body(&mut escaped, &value.as_bytes()[..cut]);
            if escaped.len() <= keep || budget == 0 {
                break;
            }
            budget = budget.saturating_sub((escaped.len() - keep).max(1));
        }
        // Escaping valid UTF-8 yields valid UTF-8: the lossy conversion never replaces anything.
        out.push_str(&String::from_utf8_lossy(&escaped));
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
        assert_eq!(trim_event(e.clone(), 262_118).unwrap(), e);
    }

    #[test]
    fn oversized_events_are_trimmed_to_valid_json_with_the_marker() {
        let e = big_event(300_000);
        assert!(e.len() > 262_118);
        let t = trim_event(e, 262_118).unwrap();
        assert!(t.len() <= 262_118, "{}", t.len());
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
