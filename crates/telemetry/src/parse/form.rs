//! `application/x-www-form-urlencoded` and URL query decoding with Go's `url.ParseQuery` rules.

use std::borrow::Cow;

/// A decoded (key, value) pair; borrowed unless decoding changed it.
pub type Pair<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

/// Why a form body is not decodable (it is then logged as raw text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    /// A `;` inside a key-value pair (Go rejects semicolon separators since 1.17).
    #[error("invalid semicolon separator in query")]
    Semicolon,
    /// A `%` not followed by two hex digits.
    #[error("invalid URL escape")]
    Escape,
}

/// Decodes `%XX` and `+` like Go's `QueryUnescape`; borrows when nothing needs decoding.
pub fn query_unescape(s: &[u8]) -> Result<Cow<'_, [u8]>, FormError> {
    if !s.iter().any(|&b| b == b'%' || b == b'+') {
        return Ok(Cow::Borrowed(s));
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' => {
                let hi = s.get(i + 1).and_then(|&c| (c as char).to_digit(16));
                let lo = s.get(i + 2).and_then(|&c| (c as char).to_digit(16));
                match (hi, lo) {
                    (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                    _ => return Err(FormError::Escape),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(Cow::Owned(out))
}

/// Decodes a query string into (key, value) pairs in source order.
///
/// Returns the pairs that decoded and the first error, like Go: request queries use the pairs
/// and ignore the error (`URL.Query()`), form bodies fall back to raw text on any error.
pub fn parse_query(query: &[u8]) -> (Vec<Pair<'_>>, Option<FormError>) {
    if query.is_empty() {
        return (Vec::new(), None);
    }
    let mut pairs = Vec::with_capacity(query.iter().filter(|&&b| b == b'&').count() + 1);
    let mut first_err = None;
    for part in query.split(|&b| b == b'&') {
        if part.contains(&b';') {
            first_err.get_or_insert(FormError::Semicolon);
            continue;
        }
        if part.is_empty() {
            continue;
        }
        let (k, v) = match part.iter().position(|&b| b == b'=') {
            Some(eq) => (&part[..eq], &part[eq + 1..]),
            None => (part, &b""[..]),
        };
        match (query_unescape(k), query_unescape(v)) {
            (Ok(k), Ok(v)) => pairs.push((k, v)),
            (Err(e), _) | (_, Err(e)) => {
                first_err.get_or_insert(e);
            }
        }
    }
    (pairs, first_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &str) -> (Vec<(String, String)>, Option<FormError>) {
        let (p, e) = parse_query(q.as_bytes());
        let p = p
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect();
        (p, e)
    }

    #[test]
    fn go_parse_query() {
        let (p, e) = pairs("a=1&b=x+y%21&a=2&&c&=v");
        assert_eq!(e, None);
        assert_eq!(
            p,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y!".into()),
                ("a".into(), "2".into()),
                ("c".into(), "".into()),
                ("".into(), "v".into()),
            ]
        );
    }

    #[test]
    fn errors_keep_good_pairs() {
        let (p, e) = pairs("a=1;b=2&c=%zz&d=4&e=%4");
        assert_eq!(e, Some(FormError::Semicolon));
        assert_eq!(p, vec![("d".into(), "4".into())]);
        assert_eq!(pairs("x=%g1").1, Some(FormError::Escape));
    }
}
