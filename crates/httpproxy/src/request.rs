//! A request head as the proxy keeps it: parsed once from the client's bytes into what the
//! exchange record needs (method, target, the inbound fields), and written to the upstream from
//! those with this hop's rules applied.

use std::fmt::Write as _;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Uri;
use http::Method;
use http1::head::{pairs, parse_request, HeadError};
use http1::rules::{self, ForwardedPolicy};
use http1::{put_field, HeadFields};

/// The longest request-target `http::Uri` holds; a longer target is forwarded whole and
/// logged cut to this length.
const MAX_LOGGED_TARGET: usize = u16::MAX as usize - 1;

/// How a request's body follows its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyKind {
    None,
    Length(u64),
    Chunked,
}

/// One request head from a client.
#[derive(Debug)]
pub(crate) struct Inbound {
    pub(crate) method: Method,
    /// The target as the exchange record shows it.
    pub(crate) uri: Uri,
    /// The target sent upstream: origin-form (an absolute-form target's path and query), or the
    /// authority of a `CONNECT`, or `*`.
    pub(crate) path: Bytes,
    pub(crate) http10: bool,
    /// The inbound fields as they came, except that an absolute-form target's authority
    /// replaces `Host` (RFC 9112 §3.2.2), so the log and the application see the same host.
    /// Moved into the exchange's draft when the exchange begins.
    pub(crate) headers: HeaderMap,
    pub(crate) fields: HeadFields,
    /// Fields the inbound `Connection` names (hop-by-hop for this request).
    named: Vec<Bytes>,
    pub(crate) expect_continue: bool,
    /// `TE` lists `trailers` (the only `TE` value passed on, as Go does).
    te_trailers: bool,
    /// The protocol asked for by `Connection: upgrade` + `Upgrade`.
    pub(crate) upgrade: Option<HeaderValue>,
}

/// Why a request head is answered with 400 instead of being forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refused(pub(crate) &'static str);

impl Inbound {
    /// Parses a complete head (as found by `http1::server::read_request_head`).
    pub(crate) fn parse(head: &Bytes) -> Result<Self, Refused> {
        match parse_request(head, usize::MAX, |req, _| Self::from_parsed(head, req)) {
            Ok(Some(r)) => r,
            Ok(None) | Err(HeadError::Malformed | HeadError::TooManyFields) => {
                Err(Refused("malformed request head"))
            }
        }
    }

    fn from_parsed(head: &Bytes, req: &httparse::Request<'_, '_>) -> Result<Self, Refused> {
        let method = req
            .method
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .ok_or(Refused("invalid method"))?;
        let target = req.path.ok_or(Refused("no request target"))?;
        let http10 = req.version == Some(0);
        let mut headers = HeaderMap::with_capacity(req.headers.len());
        let (mut expect_continue, mut te_trailers, mut upgrade_value) = (false, false, None);
        for h in req.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| Refused("invalid field name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice_ref(h.value))
                .map_err(|_| Refused("invalid field value"))?;
            if name == header::EXPECT {
                expect_continue = h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
            } else if name == header::TE {
                te_trailers |=
                    http1::head::tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"trailers"));
            } else if name == header::UPGRADE {
                upgrade_value = Some(value.clone());
            }
            headers.append(name, value);
        }
        let fields = HeadFields::read(pairs(req.headers), |_, _| {}).map_err(Refused)?;
        rules::check_request_framing(&fields).map_err(Refused)?;
        let named = fields
            .named(pairs(req.headers))
            .into_iter()
            .map(|t| head.slice_ref(t))
            .collect();
        let upgrade = if fields.upgrade { upgrade_value } else { None };
        if let Some(up) = &upgrade {
            if !up.as_bytes().iter().all(|b| (0x20..0x7f).contains(b)) {
                // Go: "client tried to switch to invalid protocol".
                return Err(Refused("invalid Upgrade protocol"));
            }
        }
        let target_bytes = head.slice_ref(target.as_bytes());
        let (uri, path) = if method == Method::CONNECT || target == "*" || target.starts_with('/') {
            (log_uri(&target_bytes)?, target_bytes)
        } else {
            // Absolute form: the authority replaces Host; the path goes upstream.
            let uri = Uri::from_maybe_shared(target_bytes.clone())
                .map_err(|_| Refused("invalid request target"))?;
            let authority = uri
                .authority()
                .ok_or(Refused("request target has no authority"))?;
            let host = HeaderValue::from_str(authority.as_str())
                .map_err(|_| Refused("invalid request target"))?;
            headers.insert(header::HOST, host);
            let pq = uri.path_and_query().map_or("/", |p| p.as_str());
            let path = if pq.is_empty() || !pq.starts_with('/') {
                Bytes::from(format!("/{pq}"))
            } else {
                Bytes::copy_from_slice(pq.as_bytes())
            };
            (uri, path)
        };
        Ok(Self {
            method,
            uri,
            path,
            http10,
            headers,
            fields,
            named,
            expect_continue,
            te_trailers,
            upgrade,
        })
    }

    /// How the body follows the head.
    pub(crate) fn body(&self) -> BodyKind {
        match self.fields.length {
            _ if self.fields.only_chunked() => BodyKind::Chunked,
            None | Some(0) => BodyKind::None,
            Some(n) => BodyKind::Length(n),
        }
    }

    /// The client wants the connection kept after this exchange.
    pub(crate) fn keep_alive(&self) -> bool {
        !self.fields.close && (!self.http10 || self.fields.keep_alive)
    }

    /// The head sent upstream: hop-by-hop fields (and those `Connection` names) removed, the
    /// forwarding fields set by `policy`, the body framed as `body` says.
    pub(crate) fn upstream_head(
        &self,
        headers: &HeaderMap,
        policy: &ForwardedPolicy,
        peer_ip: &[u8],
        body: BodyKind,
    ) -> BytesMut {
        let mut out = BytesMut::with_capacity(512);
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.extend_from_slice(b" ");
        out.extend_from_slice(&self.path);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in headers {
            let n = name.as_str().as_bytes();
            if rules::is_hop_by_hop_name(n)
                || policy.rewrites(n)
                || name == header::CONTENT_LENGTH
                || self.named.iter().any(|t| t.eq_ignore_ascii_case(n))
            {
                continue;
            }
            put_field(&mut out, n, value.as_bytes());
        }
        if self.te_trailers {
            out.extend_from_slice(b"te: trailers\r\n");
        }
        if let Some(up) = &self.upgrade {
            out.extend_from_slice(b"connection: Upgrade\r\n");
            put_field(&mut out, b"upgrade", up.as_bytes());
        }
        policy.write(
            &mut out,
            headers
                .get_all(header::HeaderName::from_static("x-forwarded-for"))
                .iter()
                .map(HeaderValue::as_bytes),
            peer_ip,
            headers.get(header::HOST).map(HeaderValue::as_bytes),
        );
        match body {
            BodyKind::None => {}
            BodyKind::Length(n) => {
                let _ = write!(out, "content-length: {n}\r\n");
            }
            BodyKind::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// The target as the exchange record keeps it. `http::Uri` holds at most 64 KiB; a longer
/// target (heads may be 1 MiB) is cut at that length for the record only.
fn log_uri(target: &Bytes) -> Result<Uri, Refused> {
    let mut end = target.len().min(MAX_LOGGED_TARGET);
    // Not inside a UTF-8 sequence (`http::Uri` takes bytes above ASCII in paths).
    while end > 0 && end < target.len() && (target[end] as i8) < -0x40 {
        end -= 1;
    }
    Uri::from_maybe_shared(target.slice(..end)).map_err(|_| Refused("invalid request target"))
}

/// The method and target of a request that was refused before it could be parsed whole, for
/// its exchange record: `-` and `/` when even the request line is unreadable.
pub(crate) fn salvaged(buf: &[u8]) -> (Method, Uri) {
    let (m, t) = http1::server::salvage_request_line(buf).unwrap_or((b"-", b"/"));
    let method =
        Method::from_bytes(m).unwrap_or_else(|_| Method::from_bytes(b"-").unwrap_or_default());
    let t = &t[..t.len().min(MAX_LOGGED_TARGET)];
    let uri = Uri::try_from(t).unwrap_or_else(|_| Uri::from_static("/"));
    (method, uri)
}
