//! Message heads: parsing with `httparse`, the fields that decide framing and the connection,
//! and writing field lines, status lines and `Date`.

use std::time::SystemTime;

use bytes::BytesMut;

use crate::FEW_FIELDS;

/// Why a head could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Not HTTP/1.x syntax (httparse refused it: bare LF inside a line, obs-fold, a bad token…).
    Malformed,
    /// More header fields than the caller's limit.
    TooManyFields,
}

/// Parses a request head at the start of `buf` and hands it, with the head's length, to `f`:
/// `Ok(None)` until the head is complete. At most `max_fields` fields are accepted
/// (`usize::MAX`: no count limit). A small table is tried first; only a head that overflows it
/// is parsed again with one as long as the buffer has lines.
pub fn parse_request<T>(
    buf: &[u8],
    max_fields: usize,
    f: impl FnOnce(&httparse::Request<'_, '_>, usize) -> T,
) -> Result<Option<T>, HeadError> {
    let mut few = [httparse::EMPTY_HEADER; FEW_FIELDS];
    let mut req = httparse::Request::new(&mut few);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => return Ok(Some(f(&req, n))),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) if max_fields > FEW_FIELDS => {}
        Err(e) => return Err(head_error(e)),
    }
    let mut all = vec![httparse::EMPTY_HEADER; max_fields.min(line_count(buf))];
    let mut req = httparse::Request::new(&mut all);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => Ok(Some(f(&req, n))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(head_error(e)),
    }
}

/// [`parse_request`] for a response head.
pub fn parse_response<T>(
    buf: &[u8],
    max_fields: usize,
    f: impl FnOnce(&httparse::Response<'_, '_>, usize) -> T,
) -> Result<Option<T>, HeadError> {
    let mut few = [httparse::EMPTY_HEADER; FEW_FIELDS];
    let mut resp = httparse::Response::new(&mut few);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => return Ok(Some(f(&resp, n))),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) if max_fields > FEW_FIELDS => {}
        Err(e) => return Err(head_error(e)),
    }
    let mut all = vec![httparse::EMPTY_HEADER; max_fields.min(line_count(buf))];
    let mut resp = httparse::Response::new(&mut all);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => Ok(Some(f(&resp, n))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(head_error(e)),
    }
}

/// No head in `buf` has more fields than lines, so a table this long never overflows: with
/// `usize::MAX` as the field limit, only the byte limit of the caller's buffer bounds a head.
fn line_count(buf: &[u8]) -> usize {
    buf.iter().filter(|&&b| b == b'\n').count().max(1)
}

fn head_error(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooManyFields,
        _ => HeadError::Malformed,
    }
}

/// A parsed head's fields as `(name, value)` pairs.
pub fn pairs<'a>(
    fields: &'a [httparse::Header<'a>],
) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone {
    fields.iter().map(|h| (h.name.as_bytes(), h.value))
}

/// The comma-separated tokens of a list-valued field, trimmed, empty ones skipped.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&c| c == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// A `Content-Length` value: decimal digits only, no sign, fits in a `u64`.
pub fn parse_length(t: &[u8]) -> Option<u64> {
    if t.is_empty() || t.len() > 19 || !t.iter().all(u8::is_ascii_digit) {
        return None;
    }
    t.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// What a message head's own fields say about its body and its connection (RFC 9112 §6, §9.6),
/// read in one pass. Requests and responses are read with it alike; what each side accepts is
/// decided from these by [`crate::rules`] and the caller.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HeadFields {
    /// `Content-Length` (every value listed agreed).
    pub length: Option<u64>,
    /// How many `Content-Length` values were listed (in one field or several).
    pub lengths: usize,
    /// How many transfer codings were listed.
    pub codings: usize,
    /// The last transfer coding listed is `chunked`.
    pub chunked_last: bool,
    /// `Connection: close`.
    pub close: bool,
    /// `Connection: keep-alive`.
    pub keep_alive: bool,
    /// `Connection: upgrade`.
    pub upgrade: bool,
    /// `Connection` also names other fields (see [`HeadFields::named`]).
    pub names_fields: bool,
}

impl HeadFields {
    /// Reads `(name, value)` pairs; fields other than these framing ones go to `other`. An
    /// invalid or conflicting `Content-Length` is an error.
    pub fn read<'a>(
        fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
        mut other: impl FnMut(&'a [u8], &'a [u8]),
    ) -> Result<Self, &'static str> {
        let mut f = Self::default();
        for (name, value) in fields {
            if name.eq_ignore_ascii_case(b"content-length") {
                for t in tokens(value) {
                    let n = parse_length(t).ok_or("invalid Content-Length")?;
                    if f.length.is_some_and(|m| m != n) {
                        return Err("conflicting Content-Length values");
                    }
                    f.length = Some(n);
                    f.lengths += 1;
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                for t in tokens(value) {
                    f.codings += 1;
                    f.chunked_last = t.eq_ignore_ascii_case(b"chunked");
                }
            } else if name.eq_ignore_ascii_case(b"connection") {
                for t in tokens(value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        f.close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        f.keep_alive = true;
                    } else if t.eq_ignore_ascii_case(b"upgrade") {
                        f.upgrade = true;
                    } else {
                        f.names_fields = true;
                    }
                }
            } else {
                other(name, value);
            }
        }
        Ok(f)
    }

    /// `Transfer-Encoding` is present.
    pub fn has_codings(&self) -> bool {
        self.codings > 0
    }

    /// The body is delimited by `chunked` alone (one coding, and it is `chunked`).
    pub fn only_chunked(&self) -> bool {
        self.codings == 1 && self.chunked_last
    }

    /// The tokens of the message's `Connection` fields when they name other fields (those
    /// fields are hop-by-hop for this message); empty, without a pass, when they do not.
    pub fn named<'a>(
        &self,
        fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Vec<&'a [u8]> {
        if !self.names_fields {
            return Vec::new();
        }
        fields
            .into_iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
            .flat_map(|(_, v)| tokens(v))
            .collect()
    }
}

/// Appends one `name: value` field line of a message head.
pub fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends a status line, `HTTP/1.1 200 OK` (or `HTTP/1.0 …`); a code without a canonical
/// reason phrase gets `<none>`, as Go's servers write it.
pub fn status_line(out: &mut BytesMut, http10: bool, status: u16) {
    out.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    out.extend_from_slice(&[
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ]);
    out.extend_from_slice(b" ");
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("<none>");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends a `date` field for now; the text is formatted once a second per thread.
pub fn date_field(out: &mut BytesMut) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        put_field(out, b"date", text.as_bytes());
    });
}

/// A complete response of a proxy's own (a refusal, a 502): status line, `fields`, the body's
/// length, `Date`, `Connection` (`close`, or `keep-alive` for an HTTP/1.0 client kept), then
/// `body`.
pub fn local_response(
    http10: bool,
    status: u16,
    fields: &[(&str, &str)],
    body: &[u8],
    close: bool,
) -> BytesMut {
    use std::fmt::Write as _;
    let mut out = BytesMut::with_capacity(256 + body.len());
    status_line(&mut out, http10, status);
    for (n, v) in fields {
        put_field(&mut out, n.as_bytes(), v.as_bytes());
    }
    let _ = write!(out, "content-length: {}\r\n", body.len());
    date_field(&mut out);
    if close {
        put_field(&mut out, b"connection", b"close");
    } else if http10 {
        put_field(&mut out, b"connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn read(fields: &[(&str, &str)]) -> Result<HeadFields, &'static str> {
        HeadFields::read(
            fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
            |_, _| {},
        )
    }

    #[test]
    fn framing_and_connection_fields_in_one_pass() {
        let f = read(&[
            ("Connection", "keep-alive, X-Secret, Upgrade"),
            ("content-length", "5, 5"),
            ("x-other", "1"),
        ])
        .unwrap();
        assert_eq!(f.length, Some(5));
        assert!(f.keep_alive && f.upgrade && f.names_fields && !f.close);
        let fields = [("connection", "close"), ("connection", "x-a , ,x-b")];
        let f = read(&fields).unwrap();
        assert!(f.close);
        let named = f.named(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        assert_eq!(named, [&b"close"[..], b"x-a", b"x-b"]);
        assert!(read(&[("connection", "close")])
            .unwrap()
            .named([(&b"connection"[..], &b"close"[..])])
            .is_empty());
    }

    #[test]
    fn transfer_codings_and_lengths() {
        let f = read(&[("transfer-encoding", "gzip, chunked")]).unwrap();
        assert!(f.has_codings() && f.chunked_last && !f.only_chunked());
        let f = read(&[("Transfer-Encoding", "chunked")]).unwrap();
        assert!(f.only_chunked());
        let f = read(&[
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked"),
        ])
        .unwrap();
        assert!(f.chunked_last && !f.only_chunked());
        let f = read(&[("transfer-encoding", "chunked, gzip")]).unwrap();
        assert!(f.has_codings() && !f.chunked_last);
        assert_eq!(
            read(&[("content-length", "x")]),
            Err("invalid Content-Length")
        );
        assert_eq!(
            read(&[("content-length", "1"), ("Content-Length", "2")]),
            Err("conflicting Content-Length values")
        );
        let mut others = Vec::new();
        HeadFields::read([(&b"date"[..], &b"d"[..])], |n, v| others.push((n, v))).unwrap();
        assert_eq!(others, [(&b"date"[..], &b"d"[..])]);
    }

    #[test]
    fn a_head_past_the_small_table_is_parsed_again_up_to_the_limit() {
        let head = |n: usize| {
            let mut s = String::from("GET / HTTP/1.1\r\n");
            for i in 0..n {
                s.push_str(&format!("x-{i}: v\r\n"));
            }
            s + "\r\n"
        };
        let count = |h: &str, max| parse_request(h.as_bytes(), max, |r, _| r.headers.len());
        assert_eq!(count(&head(3), 100), Ok(Some(3)));
        assert_eq!(count(&head(100), 100), Ok(Some(100)));
        assert_eq!(count(&head(101), 100), Err(HeadError::TooManyFields));
        assert_eq!(count("GET / HTTP/1.1\r\nx: ", 100), Ok(None));
        assert_eq!(
            count("GET / HTTP/1.1\r\n x: y\r\n\r\n", 100),
            Err(HeadError::Malformed)
        );
        let r = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n", 8, |r, n| (r.code, n));
        assert_eq!(r, Ok(Some((Some(204), 27))));
    }

    #[test]
    fn status_lines_name_the_reason() {
        let mut out = BytesMut::new();
        status_line(&mut out, false, 431);
        status_line(&mut out, true, 299);
        assert_eq!(
            &out[..],
            b"HTTP/1.1 431 Request Header Fields Too Large\r\nHTTP/1.0 299 <none>\r\n"
        );
    }
}
