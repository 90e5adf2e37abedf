//! Decoding the first JSON value of a body exactly as Go's `json.Decoder` with `UseNumber` does.
//!
//! Go semantics reproduced: leading whitespace skipped; only the first value is read and any
//! bytes after it are ignored (`{"a":1}garbage`, `123abc` and `01` all succeed, the last as `0`);
//! numbers keep their literal text; invalid UTF-8 inside strings becomes U+FFFD; unpaired UTF-16
//! surrogate escapes become U+FFFD; duplicate keys keep the last value; nesting deeper than
//! 10 000 is an error. The parser is iterative, so depth never touches the call stack.

use std::borrow::Cow;

use crate::value::{Parsed, Value};

/// Deepest nesting Go's scanner accepts (`maxNestingDepth`).
pub const MAX_DEPTH: usize = 10_000;

const REPLACEMENT: &[u8] = "\u{fffd}".as_bytes();

/// Why a body is not JSON (the body is then logged as raw text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// Input ended inside a value.
    #[error("unexpected end of JSON input")]
    Eof,
    /// A byte that the grammar does not allow at this position.
    #[error("invalid character at offset {0}")]
    Syntax(usize),
    /// Nesting deeper than [`MAX_DEPTH`].
    #[error("exceeded max depth")]
    TooDeep,
}

enum Container<'a> {
    Array(Vec<Value<'a>>),
    Object(Vec<(Cow<'a, [u8]>, Value<'a>)>, Cow<'a, [u8]>),
}

struct Cursor<'a> {
    src: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn skip_ws(&mut self) {
        while let Some(&b) = self.src.get(self.pos) {
            if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn peek(&self) -> Result<u8, JsonError> {
        self.src.get(self.pos).copied().ok_or(JsonError::Eof)
    }

    fn expect(&mut self, want: u8) -> Result<(), JsonError> {
        match self.peek()? {
            b if b == want => {
                self.pos += 1;
                Ok(())
            }
            _ => Err(JsonError::Syntax(self.pos)),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), JsonError> {
        for &w in word {
            match self.src.get(self.pos) {
                None => return Err(JsonError::Eof),
                Some(&b) if b == w => self.pos += 1,
                Some(_) => return Err(JsonError::Syntax(self.pos)),
            }
        }
        Ok(())
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.src.get(self.pos), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<&'a [u8], JsonError> {
        let start = self.pos;
        if self.src.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        match self.peek()? {
            b'0' => self.pos += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return Err(JsonError::Syntax(self.pos)),
        }
        if self.src.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            self.peek()?;
            if self.digits() == 0 {
                return Err(JsonError::Syntax(self.pos));
            }
        }
        if matches!(self.src.get(self.pos), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.src.get(self.pos), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            self.peek()?;
            if self.digits() == 0 {
                return Err(JsonError::Syntax(self.pos));
            }
        }
        Ok(&self.src[start..self.pos])
    }

    /// Reads a string starting at the opening quote; borrows when no decoding is needed.
    fn string(&mut self) -> Result<Cow<'a, [u8]>, JsonError> {
        self.expect(b'"')?;
        let start = self.pos;
        let mut clean = true;
        loop {
            let b = self.peek()?;
            match b {
                b'"' => break,
                b'\\' => {
                    clean = false;
                    self.pos += 1;
                    match self.peek()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.pos += 1,
                        b'u' => {
                            self.pos += 1;
                            for _ in 0..4 {
                                if !self.peek()?.is_ascii_hexdigit() {
                                    return Err(JsonError::Syntax(self.pos));
                                }
                                self.pos += 1;
                            }
                        }
                        _ => return Err(JsonError::Syntax(self.pos)),
                    }
                }
                0..=0x1f => return Err(JsonError::Syntax(self.pos)),
                0x80.. => {
                    clean = false;
                    self.pos += 1;
                }
                _ => self.pos += 1,
            }
        }
        let raw = &self.src[start..self.pos];
        self.pos += 1;
        if clean || (std::str::from_utf8(raw).is_ok() && !raw.contains(&b'\\')) {
            return Ok(Cow::Borrowed(raw));
        }
        Ok(Cow::Owned(unquote(raw)))
    }
}

fn hex4(s: &[u8]) -> Option<u32> {
    let s = s.get(..4)?;
    let mut v = 0u32;
    for &c in s {
        v = v * 16 + (c as char).to_digit(16)?;
    }
    Some(v)
}

/// Decodes escapes and replaces invalid UTF-8, like Go's `unquote`.
fn unquote(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'\\' {
            let esc = raw[i + 1];
            i += 2;
            let simple = match esc {
                b'"' => Some(b'"'),
                b'\\' => Some(b'\\'),
                b'/' => Some(b'/'),
                b'b' => Some(0x08),
                b'f' => Some(0x0c),
                b'n' => Some(b'\n'),
                b'r' => Some(b'\r'),
                b't' => Some(b'\t'),
                _ => None,
            };
            if let Some(c) = simple {
                out.push(c);
                continue;
            }
            // `\uXXXX`, validated by the scanner.
            let mut cp = hex4(&raw[i..]).unwrap_or(0xfffd);
            i += 4;
            if (0xD800..0xE000).contains(&cp) {
                let low = if raw.get(i) == Some(&b'\\') && raw.get(i + 1) == Some(&b'u') {
                    hex4(&raw[i + 2..])
                } else {
                    None
                };
                match low {
                    Some(lo)
                        if (0xD800..0xDC00).contains(&cp) && (0xDC00..0xE000).contains(&lo) =>
                    {
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        i += 6;
                    }
                    _ => cp = 0xfffd,
                }
            }
            let ch = char::from_u32(cp).unwrap_or('\u{fffd}');
            let mut buf = [0u8; 4];
            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        if b < 0x80 {
            out.push(b);
            i += 1;
            continue;
        }
        // Copy the longest valid UTF-8 run up to the next escape; replace bad bytes one by one.
        let end = raw[i..]
            .iter()
            .position(|&c| c == b'\\')
            .map_or(raw.len(), |p| i + p);
        match std::str::from_utf8(&raw[i..end]) {
            Ok(s) => {
                out.extend_from_slice(s.as_bytes());
                i = end;
            }
            Err(e) => {
                let good = e.valid_up_to();
                out.extend_from_slice(&raw[i..i + good]);
                i += good;
                let bad = e.error_len().unwrap_or(end - i);
                for _ in 0..bad {
                    out.extend_from_slice(REPLACEMENT);
                }
                i += bad;
            }
        }
    }
    out
}

/// Decodes the first JSON value in `src`. Trailing bytes are ignored, as Go's `Decoder` does.
pub fn parse_first(src: &[u8]) -> Result<Parsed<'_>, JsonError> {
    let mut cur = Cursor { src, pos: 0 };
    let mut stack: Vec<Container<'_>> = Vec::new();
    let mut max_depth = 0usize;
    loop {
        // Parse one value (or open a container).
        cur.skip_ws();
        let mut done: Value<'_> = match cur.peek()? {
            b'{' => {
                cur.pos += 1;
                if stack.len() >= MAX_DEPTH {
                    return Err(JsonError::TooDeep);
                }
                cur.skip_ws();
                if cur.peek()? == b'}' {
                    cur.pos += 1;
                    Value::Object(Vec::new())
                } else {
                    let key = cur.string()?;
                    cur.skip_ws();
                    cur.expect(b':')?;
                    stack.push(Container::Object(Vec::new(), key));
                    max_depth = max_depth.max(stack.len());
                    continue;
                }
            }
            b'[' => {
                cur.pos += 1;
                if stack.len() >= MAX_DEPTH {
                    return Err(JsonError::TooDeep);
                }
                cur.skip_ws();
                if cur.peek()? == b']' {
                    cur.pos += 1;
                    Value::Array(Vec::new())
                } else {
                    stack.push(Container::Array(Vec::new()));
                    max_depth = max_depth.max(stack.len());
                    continue;
                }
            }
            b'"' => Value::Str(cur.string()?),
            b't' => {
                cur.literal(b"true")?;
                Value::Bool(true)
            }
            b'f' => {
                cur.literal(b"false")?;
                Value::Bool(false)
            }
            b'n' => {
                cur.literal(b"null")?;
                Value::Null
            }
            b'-' | b'0'..=b'9' => Value::Number(cur.number()?),
            _ => return Err(JsonError::Syntax(cur.pos)),
        };
        // Attach the finished value to its parent, closing parents as far as the input says.
        loop {
            let Some(top) = stack.last_mut() else {
                // Empty containers count as one level, like any other.
                let depth = max_depth.max(usize::from(matches!(
                    done,
                    Value::Array(_) | Value::Object(_)
                )));
                return Ok(Parsed::new(done, depth));
            };
            match top {
                Container::Array(items) => items.push(done),
                Container::Object(members, key) => members.push((std::mem::take(key), done)),
            }
            cur.skip_ws();
            let b = cur.peek()?;
            let closing = match (&*top, b) {
                (_, b',') => {
                    cur.pos += 1;
                    if let Container::Object(_, key) = top {
                        cur.skip_ws();
                        *key = cur.string()?;
                        cur.skip_ws();
                        cur.expect(b':')?;
                    }
                    false
                }
                (Container::Array(_), b']') | (Container::Object(..), b'}') => {
                    cur.pos += 1;
                    true
                }
                _ => return Err(JsonError::Syntax(cur.pos)),
            };
            if !closing {
                break;
            }
            done = match stack.pop() {
                Some(Container::Array(items)) => Value::Array(items),
                Some(Container::Object(members, _)) => Value::object_from(members),
                None => unreachable!("stack checked non-empty above"),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(src: &str) -> Result<String, JsonError> {
        let parsed = parse_first(src.as_bytes())?;
        let mut out = Vec::new();
        parsed.value().write_json(&mut out);
        Ok(String::from_utf8(out).expect("writer emits UTF-8"))
    }

    #[test]
    fn first_value_only() {
        assert_eq!(roundtrip(r#"{"a":1}garbage"#).as_deref(), Ok(r#"{"a":1}"#));
        assert_eq!(roundtrip("123abc").as_deref(), Ok("123"));
        assert_eq!(roundtrip("01").as_deref(), Ok("0"));
        assert_eq!(roundtrip("truex").as_deref(), Ok("true"));
        assert_eq!(roundtrip(r#""s" tail"#).as_deref(), Ok(r#""s""#));
        assert_eq!(roundtrip("  [1, 2 ]  [3]").as_deref(), Ok("[1,2]"));
    }

    #[test]
    fn numbers_verbatim() {
        assert_eq!(
            roundtrip("[1.0,1e3,-0,1E+2,123456789012345678901234567890]").as_deref(),
            Ok("[1.0,1e3,-0,1E+2,123456789012345678901234567890]")
        );
    }

    #[test]
    fn errors() {
        for bad in [
            "",
            "   ",
            "{",
            "[1,",
            r#"{"a"}"#,
            r#"{"a":}"#,
            "tru",
            "-",
            "1.",
            "1.x",
            "1e",
            "[1 2]",
            r#"{"a":1,}"#,
            "\u{feff}{}",
            "'x'",
            r#""\x""#,
            "\"a\u{1}\"",
            "nul",
        ] {
            assert!(parse_first(bad.as_bytes()).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn strings_decoded_and_reescaped() {
        assert_eq!(
            roundtrip(r#""\u003c\/\u00e9\n""#).as_deref(),
            Ok("\"\\u003c/é\\n\"")
        );
        assert_eq!(roundtrip(r#""\ud83d\ude00""#).as_deref(), Ok("\"😀\""));
        assert_eq!(
            roundtrip(r#""\ud800\u0041""#).as_deref(),
            Ok("\"\u{fffd}A\"")
        );
        assert_eq!(roundtrip(r#""\udc00""#).as_deref(), Ok("\"\u{fffd}\""));
    }

    #[test]
    fn invalid_utf8_in_strings_becomes_raw_replacement_char() {
        let parsed = parse_first(b"{\"k\xff\":\"a\xe2\x82b\"}").expect("parses");
        let mut out = Vec::new();
        parsed.value().write_json(&mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "{\"k\u{fffd}\":\"a\u{fffd}\u{fffd}b\"}"
        );
    }

    #[test]
    fn duplicate_keys_last_wins() {
        assert_eq!(
            roundtrip(r#"{"b":1,"a":2,"b":{"x":3}}"#).as_deref(),
            Ok(r#"{"a":2,"b":{"x":3}}"#)
        );
    }

    #[test]
    fn depth_limit_matches_go() {
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse_first(ok.as_bytes()).is_ok());
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert_eq!(parse_first(deep.as_bytes()).err(), Some(JsonError::TooDeep));
        // 100k levels, unterminated: an error, and no stack overflow.
        let bomb = "{\"a\":".repeat(100_000);
        assert!(parse_first(bomb.as_bytes()).is_err());
    }
}
