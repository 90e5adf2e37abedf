//! Redaction of credentials in a log entry: header values, cookies, query parameters and body
//! fields whose name is on a deny-list are replaced by one fixed marker.
//!
//! Header names are compared case-insensitively. Query and body field names are compared
//! case-insensitively with `-` and `_` ignored, so `api_key`, `Api-Key` and `APIKEY` are one
//! name. Parsed values (query map, JSON/form/XML body trees) are redacted by key;
//! raw text (`body_raw`, an unparseable or truncated `body`, the query inside `url`) is redacted
//! by a lexical scan for `name` followed by `:`/`=` or an XML element `<name>`. When the scan finds
//! fewer secrets in a body's raw text than the tree redaction found in the parsed body, the raw
//! text is replaced as a whole, so nothing redacted in `body` survives in `body_raw`.

use std::borrow::Cow;

use crate::parse::form::query_unescape;
use crate::value::Value;

/// The next `>` at or after a position, remembered so that the lexical scan over text such as
/// `<token <token <token …` searches each byte once (the scan only moves forward).
#[derive(Default)]
struct NextGt {
    valid: bool,
    searched_from: usize,
    found: Option<usize>,
}

impl NextGt {
    fn at_or_after(&mut self, text: &[u8], from: usize) -> Option<usize> {
        // The remembered answer holds for any `from` between the last search start and the `>`
        // it found (or the end of the text when there was none).
        let holds =
            self.valid && from >= self.searched_from && self.found.is_none_or(|at| at >= from);
        if !holds {
            self.found = text[from..]
                .iter()
                .position(|&b| b == b'>')
                .map(|p| from + p);
            self.searched_from = from;
            self.valid = true;
        }
        self.found
    }
}

/// What every redacted value becomes.
pub const REDACTED: &str = "[REDACTED]";

/// Header names redacted by default (request and response).
pub const DEFAULT_HEADERS: &[&str] = &[
    "Authorization",
    "Proxy-Authorization",
    "Cookie",
    "Set-Cookie",
    "X-Api-Key",
    "X-Auth-Token",
    "X-Amz-Security-Token",
    "X-CSRF-Token",
    "X-XSRF-Token",
];

/// Query parameter and body field names redacted by default.
pub const DEFAULT_KEYS: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "secret",
    "client_secret",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "auth_token",
    "session_token",
    "security_token",
    "csrf_token",
    "xsrf_token",
    "api_key",
    "apikey",
    "x_api_key",
    "private_key",
    "authorization",
    "proxy_authorization",
    "credentials",
    "x_amz_signature",
    "x_amz_security_token",
];

/// The deny-lists in normalised form (lowercase, without `-` and `_`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redaction {
    headers: Vec<Box<[u8]>>,
    keys: Vec<Box<[u8]>>,
    /// Longest and shortest key, so the lexical scan skips other words without normalising.
    longest_key: usize,
    shortest_key: usize,
    /// 1 for every byte a key (or a word normalising to one) may start with.
    first_bytes: [u8; 256],
    /// For each normalised length up to the longest key, the set of bytes a key of that length
    /// ends with (a 256-bit set): most words of a body (`items`, `tags`, `name`) fail this
    /// before the binary search of the list.
    last_bytes: Box<[[u64; 4]]>,
}

fn normalise(name: &[u8]) -> Box<[u8]> {
    name.iter()
        .filter(|&&b| b != b'-' && b != b'_')
        .map(u8::to_ascii_lowercase)
        .collect()
}

/// Longest name compared; longer names are never on a list (checked when the lists are built).
const MAX_NAME: usize = 64;

/// Whether `name`, normalised into a stack buffer, is on the sorted `list`: a binary search,
/// no allocation, after the normalised word's length and last byte are checked against
/// `last_bytes` (see [`Redaction`]). Called for every word of a body's raw text, so kept cheap.
fn on_list(list: &[Box<[u8]>], last_bytes: &[[u64; 4]], name: &[u8]) -> bool {
    let mut buf = [0u8; MAX_NAME];
    let mut n = 0;
    for &b in name {
        if b == b'-' || b == b'_' {
            continue;
        }
        if n == MAX_NAME {
            return false;
        }
        buf[n] = b.to_ascii_lowercase();
        n += 1;
    }
    let Some(last) = n.checked_sub(1).map(|i| usize::from(buf[i])) else {
        return false;
    };
    match last_bytes.get(n) {
        Some(set) if set[last / 64] & (1 << (last % 64)) != 0 => {}
        _ => return false,
    }
    list.binary_search_by(|k| k.as_ref().cmp(&buf[..n])).is_ok()
}

impl Redaction {
    /// The default lists plus `extra_headers` (`REDACT_HEADERS`) and `extra_keys`
    /// (`REDACT_KEYS`).
    pub fn new<S: AsRef<str>>(extra_headers: &[S], extra_keys: &[S]) -> Self {
        let mut headers: Vec<Box<[u8]>> = DEFAULT_HEADERS
            .iter()
            .copied()
            .chain(extra_headers.iter().map(AsRef::as_ref))
            .map(|h| {
                h.trim()
                    .to_ascii_lowercase()
                    .into_bytes()
                    .into_boxed_slice()
            })
            .filter(|n| !n.is_empty())
            .collect();
        headers.sort();
        headers.dedup();
        let mut keys: Vec<Box<[u8]>> = DEFAULT_KEYS
            .iter()
            .map(|k| normalise(k.as_bytes()))
            .chain(extra_keys.iter().map(|k| normalise(k.as_ref().as_bytes())))
            .filter(|n| !n.is_empty() && n.len() <= MAX_NAME)
            .collect();
        keys.sort();
        keys.dedup();
        let longest_key = keys.iter().map(|k| k.len()).max().unwrap_or(0);
        let shortest_key = keys.iter().map(|k| k.len()).min().unwrap_or(0);
        let mut first_bytes = [0u8; 256];
        for k in &keys {
            first_bytes[usize::from(k[0])] = 1;
        }
        // A word may start with the characters normalisation drops.
        first_bytes[usize::from(b'-')] = 1;
        first_bytes[usize::from(b'_')] = 1;
        let mut last_bytes = vec![[0u64; 4]; longest_key + 1].into_boxed_slice();
        for k in &keys {
            if let (Some(set), Some(&b)) = (last_bytes.get_mut(k.len()), k.last()) {
                set[usize::from(b) / 64] |= 1 << (b % 64);
            }
        }
        Self {
            headers,
            keys,
            longest_key,
            shortest_key,
            first_bytes,
            last_bytes,
        }
    }

    /// The header deny-list, lowercase.
    pub fn headers(&self) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .map(|h| std::str::from_utf8(h).unwrap_or(""))
    }

    /// The key deny-list, normalised.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys
            .iter()
            .map(|k| std::str::from_utf8(k).unwrap_or(""))
    }

    /// Whether a header of this name has its values redacted.
    pub fn is_sensitive_header(&self, name: &[u8]) -> bool {
        // Every header of every line is checked: the length comparison rejects most at once.
        self.headers
            .iter()
            .any(|h| h.len() == name.len() && h.eq_ignore_ascii_case(name))
    }

    /// Whether a query parameter or body field of this name has its value redacted (an XML
    /// attribute's leading `@` is ignored).
    pub fn is_sensitive_key(&self, name: &[u8]) -> bool {
        let name = name.strip_prefix(b"@").unwrap_or(name);
        // Most names (every key of a body, every word of its raw text) are shorter than every
        // key on the list, far longer, or start with a letter none starts with: rejected before
        // normalising.
        match name.first() {
            None => false,
            Some(&first) => {
                name.len() >= self.shortest_key
                    && name.len() <= self.longest_key + 8
                    && self.first_bytes[usize::from(first.to_ascii_lowercase())] != 0
                    && on_list(&self.keys, &self.last_bytes, name)
            }
        }
    }

    /// Replaces, at any depth, the value of every object member whose key is sensitive.
    /// Returns how many values were replaced. Iterative: bodies may be 10,000 levels deep.
    pub fn redact_value(&self, value: &mut Value<'_>) -> usize {
        let mut count = 0;
        // Scalars are handled in place and only containers are pushed, so a flat body needs no
        // allocation here.
        let mut stack: Vec<&mut Value<'_>> = Vec::new();
        let mut next = Some(value);
        while let Some(v) = next.take().or_else(|| stack.pop()) {
            match v {
                Value::Object(members) => {
                    for (key, child) in members.iter_mut() {
                        if self.is_sensitive_key(key) {
                            let old = std::mem::replace(child, marker());
                            old.drop_iteratively();
                            count += 1;
                        } else if let Value::Str(text) = child {
                            count += self.redact_str(text);
                        } else if matches!(child, Value::Object(_) | Value::Array(_)) {
                            stack.push(child);
                        }
                    }
                }
                Value::Array(items) => {
                    for item in items.iter_mut() {
                        if let Value::Str(text) = item {
                            count += self.redact_str(text);
                        } else if matches!(item, Value::Object(_) | Value::Array(_)) {
                            stack.push(item);
                        }
                    }
                }
                // Text inside a value (a JSON or form body held in a string field).
                Value::Str(text) => count += self.redact_str(text),
                _ => {}
            }
        }
        count
    }

    /// Lexical redaction of one string value in place.
    fn redact_str(&self, text: &mut Cow<'_, [u8]>) -> usize {
        let (redacted, n) = self.redact_text(text);
        if let Cow::Owned(t) = redacted {
            *text = Cow::Owned(t);
        }
        n
    }

    /// Redacts the values of sensitive parameters in a raw query string (`a=1&token=x`); keys
    /// are compared after percent-decoding.
    pub fn redact_query<'a>(&self, query: &'a [u8]) -> Cow<'a, [u8]> {
        let sensitive = |part: &[u8]| {
            let key = match part.iter().position(|&b| b == b'=') {
                Some(eq) => &part[..eq],
                None => return false,
            };
            match query_unescape(key) {
                Ok(k) => self.is_sensitive_key(&k),
                Err(_) => self.is_sensitive_key(key),
            }
        };
        if !query.split(|&b| b == b'&').any(sensitive) {
            return Cow::Borrowed(query);
        }
        let mut out = Vec::with_capacity(query.len());
        for (i, part) in query.split(|&b| b == b'&').enumerate() {
            if i > 0 {
                out.push(b'&');
            }
            if sensitive(part) {
                let eq = part.iter().position(|&b| b == b'=').unwrap_or(part.len());
                out.extend_from_slice(&part[..=eq.min(part.len() - 1)]);
                out.extend_from_slice(REDACTED.as_bytes());
            } else {
                out.extend_from_slice(part);
            }
        }
        Cow::Owned(out)
    }

    /// Redacts the query part of a logged `url` (`host:port/path?query`).
    pub fn redact_url<'a>(&self, url: Cow<'a, [u8]>) -> Cow<'a, [u8]> {
        let Some(q) = url.iter().position(|&b| b == b'?') else {
            return url;
        };
        match self.redact_query(&url[q + 1..]) {
            Cow::Borrowed(_) => url,
            Cow::Owned(query) => {
                let mut out = Vec::with_capacity(q + 1 + query.len());
                out.extend_from_slice(&url[..=q]);
                out.extend_from_slice(&query);
                Cow::Owned(out)
            }
        }
    }

    /// Lexical redaction of raw text (JSON, form or XML, possibly truncated): the value after a
    /// sensitive `name` followed by `:` or `=`, or the text of an element `<name …>`. Returns the
    /// text (borrowed when nothing was found) and how many values were replaced. Linear in the
    /// input.
    pub fn redact_text<'a>(&self, text: &'a [u8]) -> (Cow<'a, [u8]>, usize) {
        let mut out: Option<Vec<u8>> = None;
        let mut copied = 0;
        let mut count = 0;
        let mut i = 0;
        let mut gt = NextGt::default();
        while i < text.len() {
            if !is_word(text[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < text.len() && is_word(text[i]) {
                i += 1;
            }
            let word = &text[start..i];
            if !self.is_sensitive_key(word) {
                continue;
            }
            let Some((from, to)) = value_span(text, start, i, &mut gt) else {
                continue;
            };
            let buf = out.get_or_insert_with(|| Vec::with_capacity(text.len()));
            buf.extend_from_slice(&text[copied..from]);
            buf.extend_from_slice(REDACTED.as_bytes());
            copied = to;
            count += 1;
            i = to.max(i);
        }
        match out {
            Some(mut buf) => {
                buf.extend_from_slice(&text[copied..]);
                (Cow::Owned(buf), count)
            }
            None => (Cow::Borrowed(text), 0),
        }
    }
}

/// The marker as a value.
pub fn marker<'a>() -> Value<'a> {
    Value::Str(Cow::Borrowed(REDACTED.as_bytes()))
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn skip_ws(text: &[u8], mut i: usize) -> usize {
    while i < text.len() && matches!(text[i], b' ' | b'\t' | b'\r' | b'\n') {
        i += 1;
    }
    i
}

/// The byte range of the value that follows a sensitive word at `text[start..end]`, if the word is
/// used as a name there.
fn value_span(text: &[u8], start: usize, end: usize, gt: &mut NextGt) -> Option<(usize, usize)> {
    // `<name attr="…">value</name>`: the element's text up to the next `<`.
    if start > 0 && text[start - 1] == b'<' {
        let close = gt.at_or_after(text, end)?;
        if text[close - 1] == b'/' {
            return None;
        }
        let from = close + 1;
        let to = from
            + text[from..]
                .iter()
                .position(|&b| b == b'<')
                .unwrap_or(text.len() - from);
        return (to > from).then_some((from, to));
    }
    // `"name": value`, `name=value`, `'name' = value`, and JSON inside a JSON string
    // (`\"name\":\"value\"`, e.g. an app echoing a request body).
    let mut i = end;
    if matches!(text.get(i), Some(b'"' | b'\'')) {
        i += 1;
    } else if text.get(i) == Some(&b'\\') && text.get(i + 1) == Some(&b'"') {
        i += 2;
    }
    i = skip_ws(text, i);
    if !matches!(text.get(i), Some(b':' | b'=')) {
        return None;
    }
    i = skip_ws(text, i + 1);
    if text.get(i) == Some(&b'\\') && text.get(i + 1) == Some(&b'"') {
        let from = i + 2;
        let to = text[from..]
            .windows(2)
            .position(|w| w == b"\\\"")
            .map_or(text.len(), |p| from + p);
        return Some((from, to));
    }
    match text.get(i)? {
        &q @ (b'"' | b'\'') => {
            let from = i + 1;
            let mut j = from;
            while j < text.len() && text[j] != q {
                j += if text[j] == b'\\' { 2 } else { 1 };
            }
            Some((from, j.min(text.len())))
        }
        b'{' | b'[' => {
            // A nested object or array under a sensitive name: up to its matching bracket.
            let mut depth = 0usize;
            let mut j = i;
            let mut in_str = false;
            while j < text.len() {
                let b = text[j];
                if in_str {
                    if b == b'\\' {
                        j += 1;
                    } else if b == b'"' {
                        in_str = false;
                    }
                } else if b == b'"' {
                    in_str = true;
                } else if b == b'{' || b == b'[' {
                    depth += 1;
                } else if b == b'}' || b == b']' {
                    depth -= 1;
                    if depth == 0 {
                        return Some((i, j + 1));
                    }
                }
                j += 1;
            }
            Some((i, text.len()))
        }
        _ => {
            let from = i;
            let to = from
                + text[from..]
                    .iter()
                    .position(|&b| {
                        matches!(
                            b,
                            b'&' | b',' | b';' | b'}' | b']' | b'<' | b'"' | b' ' | b'\r' | b'\n'
                        )
                    })
                    .unwrap_or(text.len() - from);
            (to > from).then_some((from, to))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::json::parse_first;

    fn r() -> Redaction {
        Redaction::new(&["X-Custom-Secret"], &["pin"])
    }

    #[test]
    fn names_ignore_case_dash_and_underscore() {
        let r = r();
        assert!(r.is_sensitive_header(b"authorization"));
        assert!(r.is_sensitive_header(b"X-Custom-Secret"));
        assert!(!r.is_sensitive_header(b"Content-Type"));
        for k in [
            "Password",
            "api-key",
            "API_KEY",
            "apiKey",
            "@token",
            "PIN",
            "Client-Secret",
        ] {
            assert!(r.is_sensitive_key(k.as_bytes()), "{k}");
        }
        for k in ["tokens", "passwords_hint", "user", "key"] {
            assert!(!r.is_sensitive_key(k.as_bytes()), "{k}");
        }
    }

    #[test]
    fn tree_redaction_any_depth_keeps_shape_keys() {
        let parsed = parse_first(
            br#"{"a":[{"b":{"Password":"p1","ok":1}}],"token":{"x":"y"},"n":{"api_key":5}}"#,
        )
        .expect("json");
        let mut v = parsed.value().clone();
        assert_eq!(r().redact_value(&mut v), 3);
        let mut out = Vec::new();
        v.write_json(&mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            r#"{"a":[{"b":{"Password":"[REDACTED]","ok":1}}],"n":{"api_key":"[REDACTED]"},"token":"[REDACTED]"}"#
        );
    }

    #[test]
    fn text_redaction_json_form_xml_truncated() {
        let cases: &[(&str, &str, usize)] = &[
            (
                r#"{"user":"a","password" : "s3\"cr3t","n":{"token":[1,{"x":"y"}]},"pin":1234}"#,
                r#"{"user":"a","password" : "[REDACTED]","n":{"token":[REDACTED]},"pin":[REDACTED]}"#,
                3,
            ),
            (
                "user=a&password=s3cr3t&pwd=x",
                "user=a&password=[REDACTED]&pwd=[REDACTED]",
                2,
            ),
            (
                r#"<a><password kind="x">s3cr3t</password><token/><b api_key="k"/></a>"#,
                r#"<a><password kind="x">[REDACTED]</password><token/><b api_key="[REDACTED]"/></a>"#,
                2,
            ),
            (
                r#"{"token":"abc...(truncated)"#,
                r#"{"token":"[REDACTED]"#,
                1,
            ),
            ("no secrets here: tokens=1", "no secrets here: tokens=1", 0),
            (
                r#"{"body":"{\"password\":\"hunter2\",\"u\":1}"}"#,
                r#"{"body":"{\"password\":\"[REDACTED]\",\"u\":1}"}"#,
                1,
            ),
        ];
        for (input, want, n) in cases {
            let (got, count) = r().redact_text(input.as_bytes());
            assert_eq!(String::from_utf8_lossy(&got), *want, "{input}");
            assert_eq!(count, *n, "{input}");
        }
    }

    #[test]
    fn query_and_url() {
        let r = r();
        assert_eq!(
            r.redact_query(b"a=1&access%5Ftoken=zz&token&b=2").as_ref(),
            b"a=1&access%5Ftoken=[REDACTED]&token&b=2"
        );
        assert!(matches!(r.redact_query(b"a=1"), Cow::Borrowed(_)));
        assert_eq!(
            r.redact_url(Cow::Borrowed(b"h:80/p?x=1&Token=abc"))
                .as_ref(),
            b"h:80/p?x=1&Token=[REDACTED]"
        );
    }
}
