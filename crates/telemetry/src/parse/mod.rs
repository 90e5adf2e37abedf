//! Body parsing: the `body` value of a log entry, chosen by `Content-Type` as cwproxy does.

pub mod form;
pub mod json;
pub mod media;
pub mod xml;

use std::borrow::Cow;

use crate::value::{Parsed, Value};
use form::Pair;

/// Suffix appended to raw text of a body that did not fit the capture limit.
pub const TRUNCATED_SUFFIX: &str = "...(truncated)";

/// The raw text of a captured body (`body_raw`): the bytes, plus the truncation marker.
pub fn raw_text(bytes: &[u8], truncated: bool) -> Cow<'_, [u8]> {
    if truncated {
        let mut raw = Vec::with_capacity(bytes.len() + TRUNCATED_SUFFIX.len());
        raw.extend_from_slice(bytes);
        raw.extend_from_slice(TRUNCATED_SUFFIX.as_bytes());
        Cow::Owned(raw)
    } else {
        Cow::Borrowed(bytes)
    }
}

/// Parses a captured body: `null` when empty, raw text when truncated or not parseable, else the
/// JSON value (first value only), the form map, or the XML mapping.
pub fn parse_body<'a>(content_type: Option<&[u8]>, bytes: &'a [u8], truncated: bool) -> Parsed<'a> {
    if bytes.is_empty() {
        return Parsed::new(Value::Null, 0);
    }
    let raw = || Parsed::new(Value::Str(raw_text(bytes, truncated)), 0);
    if truncated {
        return raw();
    }
    let Some(media) = content_type.and_then(media::media_type) else {
        return raw();
    };
    let is = |want: &str| media.eq_ignore_ascii_case(want.as_bytes());
    let xml_suffix = media.len() >= 4 && media[media.len() - 4..].eq_ignore_ascii_case(b"+xml");
    if is("application/json") {
        if let Ok(parsed) = json::parse_first(bytes) {
            return parsed;
        }
    } else if is("application/x-www-form-urlencoded") {
        let (pairs, err) = form::parse_query(bytes);
        if err.is_none() {
            return Parsed::new(multimap_value(pairs), 1);
        }
    } else if is("application/xml") || is("text/xml") || xml_suffix {
        if let Ok(parsed) = xml::parse(bytes) {
            return parsed;
        }
    }
    raw()
}

/// Normalises (key, value) pairs the way cwproxy's `NormalizeValues` does: one value → string,
/// several → sorted array; keys sorted.
pub fn multimap_value<'a>(mut pairs: Vec<Pair<'a>>) -> Value<'a> {
    pairs.sort();
    let mut members: Vec<(Cow<'a, [u8]>, Value<'a>)> = Vec::new();
    let mut iter = pairs.into_iter().peekable();
    while let Some((key, value)) = iter.next() {
        if iter.peek().is_some_and(|(k, _)| *k == key) {
            let mut values = vec![Value::Str(value)];
            while let Some((_, v)) = iter.next_if(|(k, _)| *k == key) {
                values.push(Value::Str(v));
            }
            members.push((key, Value::Array(values)));
        } else {
            members.push((key, Value::Str(value)));
        }
    }
    Value::Object(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(ct: &str, bytes: &[u8], truncated: bool) -> String {
        let parsed = parse_body(Some(ct.as_bytes()), bytes, truncated);
        let mut out = Vec::new();
        parsed.value().write_json(&mut out);
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn parse_body_matches_go() {
        assert_eq!(
            body("application/json", br#"{"field":"value"}"#, false),
            r#"{"field":"value"}"#
        );
        assert_eq!(
            body("application/x-www-form-urlencoded", b"b=2&a=1&a=0", false),
            r#"{"a":["0","1"],"b":"2"}"#
        );
        assert_eq!(
            body(
                "application/problem+xml",
                br#"<status code="200"><ok>true</ok></status>"#,
                false
            ),
            r#"{"status":{"@code":"200","ok":"true"}}"#
        );
        assert_eq!(
            body("application/xml", b"<broken>", false),
            r#""\u003cbroken\u003e""#
        );
        assert_eq!(
            body("application/json", br#"{"partial":"#, true),
            r#""{\"partial\":...(truncated)""#
        );
        assert_eq!(body("text/plain", b"hi", false), r#""hi""#);
        assert_eq!(body("application/problem+json", b"{}", false), r#""{}""#);
        assert_eq!(body("application/json", b"null", false), "null");
        assert_eq!(body("application/json", b"{bad", false), r#""{bad""#);
        assert_eq!(
            body("application/x-www-form-urlencoded", b"a=%zz", false),
            r#""a=%zz""#
        );
        assert_eq!(body("bad type;", b"x", false), r#""x""#);
        let none = parse_body(None, b"x", false);
        assert_eq!(none.value(), &Value::Str(Cow::Borrowed(&b"x"[..])));
        assert_eq!(
            parse_body(Some(b"application/json"), b"", false).value(),
            &Value::Null
        );
    }

    #[test]
    fn xml_depth_65_falls_back_to_raw() {
        let deep = "<a>".repeat(65) + &"</a>".repeat(65);
        let parsed = parse_body(Some(b"text/xml"), deep.as_bytes(), false);
        assert!(matches!(parsed.value(), Value::Str(_)));
    }
}
