//! Queries, cookies and headers as sorted (key, value) pairs, written the way cwproxy normalises
//! them: a key with one value maps to a string, a key with several to a sorted array.

use std::borrow::Cow;

use http::HeaderMap;

use crate::json;
use crate::parse::form::{self, Pair};

/// Sorted (key, value) pairs; keys may repeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Multimap<'a> {
    pairs: Vec<Pair<'a>>,
}

impl<'a> Multimap<'a> {
    /// Builds the map from pairs in any order.
    pub fn from_pairs(mut pairs: Vec<Pair<'a>>) -> Self {
        pairs.sort_unstable();
        Self { pairs }
    }

    /// Query parameters as Go's `URL.Query()` sees them (undecodable pairs are skipped).
    pub fn from_query(raw_query: &'a [u8]) -> Self {
        Self::from_pairs(form::parse_query(raw_query).0)
    }

    /// Headers with Go-canonical names (`content-type` → `Content-Type`), minus `skip`.
    pub fn from_headers(headers: &'a HeaderMap, skip: &[&str]) -> Self {
        let mut pairs = Vec::with_capacity(headers.len());
        for (name, value) in headers.iter() {
            if !skip.contains(&name.as_str()) {
                pairs.push((
                    canonical_header_name(name.as_str()),
                    Cow::Borrowed(value.as_bytes()),
                ));
            }
        }
        Self::from_pairs(pairs)
    }

    /// Request cookies from every `Cookie` header, as Go's `Request.Cookies()` parses them.
    pub fn from_cookie_headers(headers: &'a HeaderMap) -> Self {
        let mut pairs = Vec::new();
        if let Some(first) = headers.get(http::header::COOKIE) {
            pairs.reserve(first.as_bytes().iter().filter(|&&b| b == b';').count() + 1);
        }
        for line in headers.get_all(http::header::COOKIE) {
            for part in trim(line.as_bytes()).split(|&b| b == b';') {
                let part = trim(part);
                if part.is_empty() {
                    continue;
                }
                let (name, value) = match part.iter().position(|&b| b == b'=') {
                    Some(eq) => (trim(&part[..eq]), &part[eq + 1..]),
                    None => (part, &b""[..]),
                };
                if let (true, Some(value)) = (is_cookie_name(name), cookie_value(value)) {
                    pairs.push((Cow::Borrowed(name), Cow::Borrowed(value)));
                }
            }
        }
        Self::from_pairs(pairs)
    }

    /// Response cookies from every `Set-Cookie` header (name and value; attributes dropped).
    pub fn from_set_cookie_headers(headers: &'a HeaderMap) -> Self {
        let mut pairs = Vec::new();
        for line in headers.get_all(http::header::SET_COOKIE) {
            let first = trim(line.as_bytes())
                .split(|&b| b == b';')
                .next()
                .unwrap_or_default();
            let first = trim(first);
            let Some(eq) = first.iter().position(|&b| b == b'=') else {
                continue;
            };
            let name = trim(&first[..eq]);
            if let (true, Some(value)) = (is_cookie_name(name), cookie_value(&first[eq + 1..])) {
                pairs.push((Cow::Borrowed(name), Cow::Borrowed(value)));
            }
        }
        Self::from_pairs(pairs)
    }

    /// Replaces the value of every pair whose key is `sensitive` with the redaction marker;
    /// returns how many were replaced. Order stays sorted: equal keys get equal values.
    pub fn redact(&mut self, mut sensitive: impl FnMut(&[u8]) -> bool) -> usize {
        let mut n = 0;
        for (key, value) in &mut self.pairs {
            if sensitive(key) {
                *value = Cow::Borrowed(crate::redact::REDACTED.as_bytes());
                n += 1;
            }
        }
        n
    }

    /// The pairs, sorted by key then value.
    pub fn pairs(&self) -> &[Pair<'a>] {
        &self.pairs
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Groups of (key, values) in key order.
    fn groups(&self) -> impl Iterator<Item = (&[u8], &[Pair<'a>])> {
        let mut rest: &[Pair<'a>] = &self.pairs;
        std::iter::from_fn(move || {
            let (key, _) = rest.first()?;
            let n = rest.iter().take_while(|(k, _)| k == key).count();
            let (group, tail) = rest.split_at(n);
            rest = tail;
            Some((key.as_ref(), group))
        })
    }

    /// Writes the normalised JSON object.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (i, (key, group)) in self.groups().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json::write_key(out, key);
            if let [(_, only)] = group {
                json::write_str(out, only);
            } else {
                out.push(b'[');
                for (j, (_, v)) in group.iter().enumerate() {
                    if j > 0 {
                        out.push(b',');
                    }
                    json::write_str(out, v);
                }
                out.push(b']');
            }
        }
        out.push(b'}');
    }

    /// Appends the structural signature (`o{k:v;}`, several values `a[v,]`).
    pub fn signature(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"o{");
        for (key, group) in self.groups() {
            out.extend_from_slice(key);
            out.push(b':');
            out.extend_from_slice(if group.len() == 1 { b"v" } else { b"a[v,]" });
            out.push(b';');
        }
        out.push(b'}');
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .map_or(start, |p| p + 1);
    &s[start..end]
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_cookie_name(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&b| is_token(b))
}

/// Go's `parseCookieValue` with double quotes allowed: strips one pair of quotes, then every
/// byte must be a valid cookie-value byte.
fn cookie_value(raw: &[u8]) -> Option<&[u8]> {
    let raw = if raw.len() > 1 && raw[0] == b'"' && raw[raw.len() - 1] == b'"' {
        &raw[1..raw.len() - 1]
    } else {
        raw
    };
    raw.iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b';' && b != b'\\')
        .then_some(raw)
}

/// Go's canonical MIME header key of a lowercase HTTP/1 header name; common names need no
/// allocation.
pub fn canonical_header_name(lower: &str) -> Cow<'static, [u8]> {
    let common: &'static str = match lower {
        "accept" => "Accept",
        "accept-encoding" => "Accept-Encoding",
        "accept-language" => "Accept-Language",
        "authorization" => "Authorization",
        "cache-control" => "Cache-Control",
        "connection" => "Connection",
        "content-encoding" => "Content-Encoding",
        "content-length" => "Content-Length",
        "content-type" => "Content-Type",
        "cookie" => "Cookie",
        "date" => "Date",
        "etag" => "Etag",
        "expires" => "Expires",
        "last-modified" => "Last-Modified",
        "location" => "Location",
        "origin" => "Origin",
        "referer" => "Referer",
        "server" => "Server",
        "set-cookie" => "Set-Cookie",
        "user-agent" => "User-Agent",
        "vary" => "Vary",
        "x-content-type-options" => "X-Content-Type-Options",
        "x-forwarded-for" => "X-Forwarded-For",
        "x-forwarded-host" => "X-Forwarded-Host",
        "x-forwarded-proto" => "X-Forwarded-Proto",
        "x-request-id" => "X-Request-Id",
        _ => "",
    };
    if !common.is_empty() {
        return Cow::Borrowed(common.as_bytes());
    }
    let mut upper = true;
    let name = lower
        .bytes()
        .map(|b| {
            let c = if upper {
                b.to_ascii_uppercase()
            } else {
                b.to_ascii_lowercase()
            };
            upper = b == b'-';
            c
        })
        .collect();
    Cow::Owned(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn json(m: &Multimap<'_>) -> String {
        let mut out = Vec::new();
        m.write_json(&mut out);
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn single_string_several_sorted_array() {
        let m = Multimap::from_query(b"b=2&a=z&a=y&c");
        assert_eq!(json(&m), r#"{"a":["y","z"],"b":"2","c":""}"#);
        let mut sig = Vec::new();
        m.signature(&mut sig);
        assert_eq!(sig, b"o{a:a[v,];b:v;c:v;}");
        assert_eq!(json(&Multimap::default()), "{}");
    }

    #[test]
    fn headers_canonical_and_skipped() {
        let mut h = HeaderMap::new();
        h.append("content-type", HeaderValue::from_static("application/json"));
        h.append("x-custom-thing", HeaderValue::from_static("b"));
        h.append("x-custom-thing", HeaderValue::from_static("a"));
        h.append("host", HeaderValue::from_static("example.com"));
        h.append("etag", HeaderValue::from_static("\"1\""));
        let m = Multimap::from_headers(&h, &["host"]);
        assert_eq!(
            json(&m),
            r#"{"Content-Type":"application/json","Etag":"\"1\"","X-Custom-Thing":["a","b"]}"#
        );
    }

    #[test]
    fn cookies_like_go() {
        let mut h = HeaderMap::new();
        h.append(
            "cookie",
            HeaderValue::from_static("session=abc; theme=\"dark\"; bad name=x; flag; a=1"),
        );
        h.append("cookie", HeaderValue::from_static("a=2;;b=x\\y"));
        assert_eq!(
            json(&Multimap::from_cookie_headers(&h)),
            r#"{"a":["1","2"],"flag":"","session":"abc","theme":"dark"}"#
        );
    }

    #[test]
    fn set_cookies_like_go() {
        let mut h = HeaderMap::new();
        h.append(
            "set-cookie",
            HeaderValue::from_static("session=xyz; Path=/; HttpOnly"),
        );
        h.append("set-cookie", HeaderValue::from_static("noequals; Path=/"));
        h.append("set-cookie", HeaderValue::from_static("id=\"q\""));
        assert_eq!(
            json(&Multimap::from_set_cookie_headers(&h)),
            r#"{"id":"q","session":"xyz"}"#
        );
    }
}
