//! Media type parsing with the acceptance rules of Go's `mime.ParseMediaType`.
//!
//! Only the media type is used, but a malformed parameter makes Go reject the whole header (and
//! cwproxy then logs the body as raw text), so the parameters are validated too.

fn is_tspecial(b: u8) -> bool {
    matches!(
        b,
        b'(' | b')'
            | b'<'
            | b'>'
            | b'@'
            | b','
            | b';'
            | b':'
            | b'\\'
            | b'"'
            | b'/'
            | b'['
            | b']'
            | b'?'
            | b'='
    )
}

fn is_token_char(b: u8) -> bool {
    b > 0x20 && b < 0x7f && !is_tspecial(b)
}

fn consume_token(s: &[u8]) -> (&[u8], &[u8]) {
    let end = s.iter().position(|&b| !is_token_char(b)).unwrap_or(s.len());
    s.split_at(end)
}

fn trim_left_space(s: &[u8]) -> &[u8] {
    // Go trims with unicode.IsSpace; header values are ASCII in practice, and non-ASCII bytes
    // are not token characters, so they fail parsing either way.
    let start = s
        .iter()
        .position(|&b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c))
        .unwrap_or(s.len());
    &s[start..]
}

fn trim_space(s: &[u8]) -> &[u8] {
    let s = trim_left_space(s);
    let end = s
        .iter()
        .rposition(|&b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c))
        .map_or(0, |p| p + 1);
    &s[..end]
}

/// Consumes a token or a quoted string; `None` when neither is present.
fn consume_value(s: &[u8]) -> Option<(&[u8], &[u8])> {
    if s.first() != Some(&b'"') {
        let (tok, rest) = consume_token(s);
        return if tok.is_empty() {
            None
        } else {
            Some((tok, rest))
        };
    }
    let mut i = 1;
    while i < s.len() {
        match s[i] {
            b'"' => return Some((&s[1..i], &s[i + 1..])),
            b'\\' if i + 1 < s.len() => i += 2,
            _ => i += 1,
        }
    }
    None
}

/// Returns the media type (`application/json`, case as sent) if Go would accept the header value.
pub fn media_type(value: &[u8]) -> Option<&[u8]> {
    let base_end = value.iter().position(|&b| b == b';').unwrap_or(value.len());
    let base = trim_space(&value[..base_end]);
    let (typ, rest) = consume_token(base);
    if typ.is_empty() {
        return None;
    }
    if !rest.is_empty() {
        let sub_rest = rest.strip_prefix(b"/")?;
        let (sub, rest) = consume_token(sub_rest);
        if sub.is_empty() || !rest.is_empty() {
            return None;
        }
    }
    let mut seen: Vec<&[u8]> = Vec::new();
    let mut v = &value[base_end..];
    loop {
        v = trim_left_space(v);
        if v.is_empty() {
            break;
        }
        // A param: `;` key `=` value.
        let parsed = (|| {
            let rest = trim_left_space(v.strip_prefix(b";")?);
            let (key, rest) = consume_token(rest);
            if key.is_empty() {
                return None;
            }
            let rest = trim_left_space(rest).strip_prefix(b"=")?;
            let rest = trim_left_space(rest);
            let (_, rest) = consume_value(rest)?;
            Some((key, rest))
        })();
        match parsed {
            Some((key, rest)) => {
                if seen.iter().any(|k| k.eq_ignore_ascii_case(key)) {
                    return None;
                }
                seen.push(key);
                v = rest;
            }
            // Trailing semicolons are tolerated.
            None if trim_space(v) == b";" => break,
            None => return None,
        }
    }
    Some(base)
}

#[cfg(test)]
mod tests {
    use super::media_type;

    #[test]
    fn accepts_like_go() {
        assert_eq!(
            media_type(b"application/json"),
            Some(&b"application/json"[..])
        );
        assert_eq!(
            media_type(b"Application/JSON; charset=utf-8"),
            Some(&b"Application/JSON"[..])
        );
        assert_eq!(
            media_type(b"text/xml;charset=\"utf-8\";"),
            Some(&b"text/xml"[..])
        );
        assert_eq!(media_type(b" json "), Some(&b"json"[..]));
    }

    #[test]
    fn rejects_like_go() {
        for bad in [
            &b""[..],
            b"/json",
            b"application/",
            b"application/json x",
            b"application/json; charset",
            b"a/b; x=1; x=2",
            b"a/b; =1",
            b"a/b; q=\"open",
        ] {
            assert_eq!(media_type(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
