//! Route templates for the `Endpoint` metric dimension, and the cap on distinct values.
//!
//! A raw path as a dimension value makes every id a new metric (`/users/1`, `/users/2`, …). A
//! template folds them: user patterns first (`/orders/{orderId}/items`, `/files/{path*}`), then
//! the automatic rule, which replaces a segment that looks like an identifier — a number, a UUID,
//! long hex, a base64-like token, a date, an e-mail address — with `{name}`, the name derived
//! from the literal segment before it (`/users/42` → `/users/{userId}`, plural `s` dropped),
//! or `{id}` when there is none. Names repeated in one template get a number (`{id}`, `{id2}`),
//! so each parameter can be named unambiguously (an OpenAPI model is built on these).
//!
//! [`EndpointCap`] then bounds the distinct values per process: beyond the limit every new value
//! is reported as [`OVERFLOW_ENDPOINT`], so a scanner sending random paths costs a bounded set of
//! metrics and bounded memory.

use std::collections::HashSet;

/// The `Endpoint` value reported once the cap is reached.
pub const OVERFLOW_ENDPOINT: &str = "OTHER";

/// One segment of a user pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Literal(Box<[u8]>),
    Param(Box<str>),
    /// `{name*}`: the rest of the path (one or more segments); only last.
    Rest(Box<str>),
}

/// A user route pattern such as `/orders/{orderId}/items` or `/v1/files/{path*}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: Box<str>,
    segs: Vec<Seg>,
}

/// Why a pattern is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// It does not start with `/`.
    #[error("pattern {0:?} must start with '/'")]
    NoSlash(String),
    /// A `{…}` segment with an empty or non-identifier name, or text around the braces.
    #[error("pattern {0:?}: parameter segments must be exactly {{name}} or {{name*}} with name of letters, digits and _")]
    BadParam(String),
    /// `{name*}` not in the last segment.
    #[error("pattern {0:?}: {{name*}} may only be the last segment")]
    RestNotLast(String),
}

impl Pattern {
    /// Parses one pattern.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(PatternError::NoSlash(text.to_owned()));
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let mut segs = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            if part.contains('{') || part.contains('}') {
                let inner = part
                    .strip_prefix('{')
                    .and_then(|p| p.strip_suffix('}'))
                    .ok_or_else(|| PatternError::BadParam(text.to_owned()))?;
                let (name, rest) = match inner.strip_suffix('*') {
                    Some(n) => (n, true),
                    None => (inner, false),
                };
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(PatternError::BadParam(text.to_owned()));
                }
                if rest {
                    if i + 1 != parts.len() {
                        return Err(PatternError::RestNotLast(text.to_owned()));
                    }
                    segs.push(Seg::Rest(name.into()));
                } else {
                    segs.push(Seg::Param(name.into()));
                }
            } else {
                segs.push(Seg::Literal(part.as_bytes().into()));
            }
        }
        Ok(Self {
            text: text.into(),
            segs,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Parameter values if `path` matches.
    fn matches<'p>(&self, path: &'p [u8]) -> Option<Vec<(String, &'p [u8])>> {
        let rest = path.strip_prefix(b"/")?;
        let mut params = Vec::new();
        let mut parts = rest.split(|&b| b == b'/');
        let mut consumed = 1;
        for seg in &self.segs {
            match seg {
                Seg::Rest(name) => {
                    let tail = &path[consumed.min(path.len())..];
                    if tail.is_empty() {
                        return None;
                    }
                    params.push((name.to_string(), tail));
                    return Some(params);
                }
                _ => {
                    let part = parts.next()?;
                    consumed += part.len() + 1;
                    match seg {
                        Seg::Literal(l) => {
                            if l.as_ref() != part {
                                return None;
                            }
                        }
                        Seg::Param(name) => {
                            if part.is_empty() {
                                return None;
                            }
                            params.push((name.to_string(), part));
                        }
                        Seg::Rest(_) => {}
                    }
                }
            }
        }
        parts.next().is_none().then_some(params)
    }
}

/// How `Endpoint` values are derived from paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Templates {
    /// Apply the automatic identifier rule (after the patterns).
    pub auto: bool,
    /// User patterns, tried in order before the automatic rule.
    pub patterns: Vec<Pattern>,
}

impl Templates {
    /// Raw paths (the original's behaviour).
    pub const OFF: Templates = Templates {
        auto: false,
        patterns: Vec::new(),
    };

    /// True when paths are kept raw.
    pub fn is_off(&self) -> bool {
        !self.auto && self.patterns.is_empty()
    }
}

/// A path's route template and the parameters taken out of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template<'p> {
    /// The template, e.g. `/users/{userId}/orders`.
    pub template: String,
    /// (name, raw value) of each parameter in path order.
    pub params: Vec<(String, &'p [u8])>,
}

/// The template of `path` under `templates`; `None` when the path is kept as it is (templates
/// off, or no pattern matched and no segment looks like an identifier).
pub fn template<'p>(path: &'p [u8], templates: &Templates) -> Option<Template<'p>> {
    for p in &templates.patterns {
        if let Some(params) = p.matches(path) {
            return Some(Template {
                template: p.text.to_string(),
                params,
            });
        }
    }
    if !templates.auto {
        return None;
    }
    auto_template(path)
}

/// The automatic rule alone.
pub fn auto_template(path: &[u8]) -> Option<Template<'_>> {
    if !path.split(|&b| b == b'/').any(is_identifier) {
        return None;
    }
    let mut template = String::with_capacity(path.len() + 8);
    let mut params: Vec<(String, &[u8])> = Vec::new();
    let mut parent: Option<&[u8]> = None;
    for (i, seg) in path.split(|&b| b == b'/').enumerate() {
        if i > 0 {
            template.push('/');
        }
        if is_identifier(seg) {
            let mut name = param_name(parent);
            let base_len = name.len();
            let mut n = 1;
            while params.iter().any(|(p, _)| *p == name) {
                n += 1;
                name.truncate(base_len);
                name.push_str(&n.to_string());
            }
            template.push('{');
            template.push_str(&name);
            template.push('}');
            params.push((name, seg));
            parent = None;
        } else {
            template.push_str(&String::from_utf8_lossy(seg));
            parent = Some(seg);
        }
    }
    Some(Template { template, params })
}

/// `users` → `userId`, `categories` → `categoryId`, `addresses` → `addressId`, none → `id`.
fn param_name(parent: Option<&[u8]>) -> String {
    let Some(p) = parent.filter(|p| {
        p.first().is_some_and(u8::is_ascii_alphabetic)
            && p.iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && p.len() <= 40
    }) else {
        return "id".to_owned();
    };
    let s = String::from_utf8_lossy(p);
    let singular: &str = if let Some(stem) = s.strip_suffix("ies") {
        return camel(&format!("{stem}y"));
    } else if ["sses", "xes", "ches", "shes"]
        .iter()
        .any(|e| s.ends_with(e))
    {
        &s[..s.len() - 2]
    } else if s.ends_with("ss") {
        &s
    } else if let Some(stem) = s.strip_suffix('s') {
        stem
    } else {
        &s
    };
    camel(singular)
}

fn camel(word: &str) -> String {
    let mut out = String::with_capacity(word.len() + 2);
    let mut upper = false;
    for (i, c) in word.chars().enumerate() {
        if c == '-' || c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else if i == 0 {
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out.push_str("Id");
    out
}

/// Whether a path segment looks like an identifier rather than a route word.
pub fn is_identifier(seg: &[u8]) -> bool {
    if seg.is_empty() {
        return false;
    }
    // Numbers (also signed or decimal ids like `-1`, `3.14` are rare in routes: digits only).
    if seg.iter().all(u8::is_ascii_digit) {
        return true;
    }
    // UUID 8-4-4-4-12.
    if seg.len() == 36
        && seg.iter().enumerate().all(|(i, &b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        })
    {
        return true;
    }
    // Dates: YYYY-MM-DD.
    if seg.len() == 10
        && seg.iter().enumerate().all(|(i, &b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
    {
        return true;
    }
    // E-mail-like: local@domain.tld.
    if let Some(at) = seg.iter().position(|&b| b == b'@') {
        if at > 0 && seg[at + 1..].contains(&b'.') {
            return true;
        }
    }
    let digits = seg.iter().filter(|b| b.is_ascii_digit()).count();
    // Long hex (hashes, object ids): 16+ hex characters with at least one digit.
    if seg.len() >= 16 && digits > 0 && seg.iter().all(u8::is_ascii_hexdigit) {
        return true;
    }
    // Base64-like tokens: 16+ characters of the (URL-safe) base64 alphabet mixing letters and
    // digits, e.g. `dGhpcyBpcyBhIHRva2Vu`; words with dashes (`order-history-2024`) have too few
    // digits or too many dashes to qualify.
    if seg.len() >= 16
        && digits >= 2
        && seg.iter().any(u8::is_ascii_alphabetic)
        && seg
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+' | b'=' | b'~'))
        && seg.iter().filter(|&&b| b == b'-').count() * 4 < seg.len() / 4 + 1
    {
        return true;
    }
    false
}

/// Bounds the distinct `Endpoint` values of a process (one per rendering thread).
#[derive(Debug, Default)]
pub struct EndpointCap {
    seen: HashSet<Box<[u8]>>,
    overflowed: bool,
    notice_pending: bool,
}

impl EndpointCap {
    /// `endpoint` if it is already known or there is room (`limit` 0 = no cap), else
    /// [`OVERFLOW_ENDPOINT`]. The first overflow leaves a notice for [`Self::take_notice`].
    pub fn admit<'e>(&mut self, endpoint: &'e [u8], limit: usize) -> &'e [u8] {
        if limit == 0 || self.seen.contains(endpoint) {
            return endpoint;
        }
        if self.seen.len() < limit {
            self.seen.insert(endpoint.into());
            return endpoint;
        }
        if !self.overflowed {
            self.overflowed = true;
            self.notice_pending = true;
        }
        OVERFLOW_ENDPOINT.as_bytes()
    }

    /// True once, after the cap was first hit (the caller writes one stderr line).
    pub fn take_notice(&mut self) -> bool {
        std::mem::take(&mut self.notice_pending)
    }

    /// Distinct values admitted so far.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when nothing was admitted yet.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auto(p: &str) -> String {
        auto_template(p.as_bytes()).map_or_else(|| p.to_owned(), |t| t.template)
    }

    #[test]
    fn identifiers_become_named_parameters() {
        assert_eq!(auto("/users/123"), "/users/{userId}");
        assert_eq!(
            auto("/users/123/orders/9"),
            "/users/{userId}/orders/{orderId}"
        );
        assert_eq!(
            auto("/categories/0b3e2c9a-6f1d-4e8a-9b7c-1d2e3f4a5b6c"),
            "/categories/{categoryId}"
        );
        assert_eq!(auto("/a/1/2"), "/a/{aId}/{id}");
        assert_eq!(auto("/1/2"), "/{id}/{id2}");
        assert_eq!(
            auto("/commits/9f86d081884c7d659a2feaa0c55ad015"),
            "/commits/{commitId}"
        );
        assert_eq!(auto("/reports/2024-01-31"), "/reports/{reportId}");
        assert_eq!(auto("/members/alice@example.com"), "/members/{memberId}");
        assert_eq!(auto("/t/dGhpcyBpcyBhIHRva2Vu42"), "/t/{tId}");
        assert_eq!(auto("/addresses/7"), "/addresses/{addressId}");
        for kept in [
            "/",
            "/health",
            "/api/v1/users",
            "/order-history-2024",
            "/static/app.js",
            "/deadbeef",
        ] {
            assert_eq!(auto(kept), kept);
        }
        let t = auto_template(b"/users/42/x/7").expect("template");
        assert_eq!(
            t.params,
            vec![
                ("userId".to_owned(), &b"42"[..]),
                ("xId".to_owned(), &b"7"[..])
            ]
        );
    }

    #[test]
    fn patterns_take_precedence_then_auto() {
        let t = Templates {
            auto: true,
            patterns: vec![
                Pattern::parse("/orders/{orderId}/items").expect("ok"),
                Pattern::parse("/v1/files/{path*}").expect("ok"),
            ],
        };
        let tp = |p: &str| template(p.as_bytes(), &t).map(|t| (t.template, t.params.len()));
        assert_eq!(
            tp("/orders/abc/items"),
            Some(("/orders/{orderId}/items".into(), 1))
        );
        assert_eq!(
            tp("/v1/files/a/b/c.txt"),
            Some(("/v1/files/{path*}".into(), 1))
        );
        assert_eq!(tp("/v1/files/"), None);
        assert_eq!(tp("/orders/5"), Some(("/orders/{orderId}".into(), 1)));
        assert_eq!(tp("/orders/abc/items/x"), None);
        assert_eq!(template(b"/users/1", &Templates::OFF), None);
        for bad in ["orders", "/a/{}", "/a/x{id}", "/{p*}/x", "/{a-b}"] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cap_reports_overflow_once() {
        let mut cap = EndpointCap::default();
        assert_eq!(cap.admit(b"/a", 2), b"/a");
        assert_eq!(cap.admit(b"/b", 2), b"/b");
        assert_eq!(cap.admit(b"/a", 2), b"/a");
        assert_eq!(cap.admit(b"/c", 2), b"OTHER");
        assert!(cap.take_notice());
        assert_eq!(cap.admit(b"/d", 2), b"OTHER");
        assert!(!cap.take_notice());
        assert_eq!(cap.len(), 2);
        assert_eq!(cap.admit(b"/z", 0), b"/z");
    }
}
