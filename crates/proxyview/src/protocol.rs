//! The whole tunnel protocol on one screen.
//!
//! 1. The agent opens `GET /connect` on the server's internal port with `Authorization: Bearer
//!    <token>` (or Proxyview's `auth-token: <token>`) and `client-id: <clientId>`. The server checks
//!    both **before** the upgrade: 401 on a bad token, 403 for a peer outside the allowlist.
//! 2. After `101 Switching Protocols` the agent sends one text message, [`Hello`]; the server answers
//!    with one text message, [`HelloAck`], accepting or rejecting each route with a reason.
//! 3. From then on the WebSocket carries only binary messages whose concatenated payloads are a
//!    sequence of [`Frame`]s (a message may hold many frames; a frame may span messages). The
//!    *server* opens one stream per caller request with a [`Frame::Head`]; the agent answers on the
//!    same stream with its own `Head`, then both sides send `Data` until one with `end` set. See
//!    the `mux` module for why this and not HTTP/2.
//! 4. A request head carries the caller's method, path and headers (hop-by-hop ones and the
//!    external token removed) plus the `proxyview-*` headers below, which the agent consumes. An
//!    upgrade (WebSocket) request has `upgrade` set; after a `101` answer the stream is a raw byte
//!    pipe in both directions.
//! 5. Flow control: a sender may have at most [`STREAM_WINDOW`] unacknowledged bytes on a stream
//!    and [`CONNECTION_WINDOW`] on the session; the receiver returns credit with `Window` as its
//!    consumer takes the data, so a caller that stops reading stops only its own stream.
//! 6. Liveness is `Ping`/`Pong` in both directions; a peer silent for the heartbeat interval plus
//!    timeout is dead, its in-flight streams fail with 502 and its routes are dropped if it still
//!    owns them.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, Method, StatusCode};

use serde::{Deserialize, Serialize};

/// Version of this protocol carried in [`Hello`]; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 2;

/// Path of the agent endpoint on the internal port.
pub const CONNECT_PATH: &str = "/connect";
/// Path of the liveness endpoint on the internal port (200 `ok`).
pub const HEALTH_PATH: &str = "/health";
/// Internal port: the operator page's JSON (`/` is the page itself).
pub const STATUS_PATH: &str = "/api/status";

/// Legacy agent header carrying the token (Proxyview's only form).
pub const AUTH_TOKEN_HEADER: HeaderName = HeaderName::from_static("auth-token");
/// Agent header carrying its `clientId`.
pub const CLIENT_ID_HEADER: HeaderName = HeaderName::from_static("client-id");

/// How often TLS certificate files are checked for changes by default (`tls.reloadSecs`).
pub const TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// First message of a session, agent → server (JSON text message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the agent.
    pub version: u32,
    /// Agent identity; must equal the `client-id` header when that was sent.
    pub client_id: String,
    /// Random per-process id: a reconnect with the same instance replaces the old session, a
    /// different instance of the same `clientId` joins it (round-robin).
    pub instance: String,
    /// Route names the agent serves, normalised (lowercase, no trailing dot).
    pub routes: Vec<String>,
    /// Route name → fingerprint of its target (backend and Host rule; see
    /// `config::Route::fingerprint`), so the server can tell two processes of one `clientId`
    /// that send one route to different backends. Absent from older agents.
    #[serde(default)]
    pub targets: std::collections::BTreeMap<String, String>,
}

/// Server's answer to [`Hello`] (JSON text message); the tunnel starts right after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HelloAck {
    /// [`PROTOCOL_VERSION`] of the server.
    pub version: u32,
    /// Server-side id of this session (appears in logs on both sides).
    pub session: u64,
    /// Routes now served by this session.
    pub accepted: Vec<String>,
    /// Routes refused, each with the reason.
    pub rejected: Vec<Rejected>,
    /// PING interval the agent should use too, so both ends detect a dead peer alike.
    pub heartbeat_interval_ms: u64,
    /// PING answer timeout the agent should use too.
    pub heartbeat_timeout_ms: u64,
    /// Problems the agent should log (e.g. a shared route with a different target).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// One refused route in [`HelloAck`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// The route name as sent.
    pub route: String,
    /// Why, in words an operator can act on.
    pub reason: String,
}

/// Header the server adds on every tunnelled request: the matched route name.
pub const ROUTE_HEADER: HeaderName = HeaderName::from_static(ROUTE_FIELD);
/// [`ROUTE_HEADER`] as bytes.
pub const ROUTE_FIELD: &str = "proxyview-route";
/// Header the server adds: the caller's address as the server believes it (after trusted proxies).
pub const PEER_HEADER: HeaderName = HeaderName::from_static(PEER_FIELD);
/// [`PEER_HEADER`] as bytes.
pub const PEER_FIELD: &str = "proxyview-peer";
/// Header the server adds: the caller's original `Host` (or absolute-form authority).
pub const HOST_HEADER: HeaderName = HeaderName::from_static(HOST_FIELD);
/// [`HOST_HEADER`] as bytes.
pub const HOST_FIELD: &str = "proxyview-host";
/// Header the server adds on an upgrade request: the protocol the caller asked for (`Upgrade`).
pub const UPGRADE_HEADER: HeaderName = HeaderName::from_static(UPGRADE_FIELD);
/// [`UPGRADE_HEADER`] as bytes.
pub const UPGRADE_FIELD: &str = "proxyview-upgrade";
/// Header the agent adds on responses it generated itself (not the backend's), with the cause.
pub const ERROR_HEADER: HeaderName = HeaderName::from_static("proxyview-error");

/// Values of [`ERROR_HEADER`].
pub mod agent_error {
    /// The agent has no such route (configuration drift).
    pub const NO_ROUTE: &str = "no-route";
    /// The backend refused or reset the connection, or DNS failed.
    pub const BACKEND_UNREACHABLE: &str = "backend-unreachable";
    /// The backend did not answer within the agent's response timeout.
    pub const BACKEND_TIMEOUT: &str = "backend-timeout";
}

/// Largest route name accepted (a DNS name).
pub const MAX_ROUTE_NAME_LEN: usize = 253;
/// Largest `clientId` accepted.
pub const MAX_CLIENT_ID_LEN: usize = 256;
/// Most routes one agent may register.
pub const MAX_ROUTES: usize = 1024;
/// Largest [`Hello`] / [`HelloAck`] text message.
pub const MAX_CONTROL_MESSAGE: usize = 256 * 1024;
/// Largest WebSocket message sent or accepted on the tunnel; the writer packs every frame queued
/// since its last write into one message up to this size.
pub const MAX_WS_MESSAGE: usize = 4 * 1024 * 1024;

/// Per-stream send window: bounds what one slow caller can park in memory.
pub const STREAM_WINDOW: u32 = 1024 * 1024;
/// Per-session send window: bounds one session's buffered data in total.
pub const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;
/// Largest `Data` payload in one frame.
pub const MAX_FRAME_SIZE: u32 = 64 * 1024;
/// Most concurrent streams an agent accepts on one session; more are reset as refused.
pub const MAX_CONCURRENT_STREAMS: usize = 4096;
/// Largest encoded `Head` payload (request line + headers).
pub const MAX_HEADER_LIST: u32 = 256 * 1024;
/// Receiver credit is returned once this many bytes were consumed (or the stream ends), so a bulk
/// transfer costs one `Window` frame per 32 KiB instead of one per chunk.
pub const WINDOW_UPDATE_THRESHOLD: u32 = 32 * 1024;

/// Length of a frame header: kind (u8), flags (u8), stream id (u32 BE), payload length (u32 BE).
pub const FRAME_HEADER_LEN: usize = 10;

/// One frame of the tunnel. Stream 0 is the session itself (`Window` credit, `Ping`, `Pong`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a stream (server → agent, request) or answers it (agent → server, response).
    /// `block` is a [`RequestHead`] or [`ResponseHead`] encoding.
    Head {
        /// Stream id (odd, chosen by the server).
        stream: u32,
        /// No `Data` follows in this direction.
        end: bool,
        /// Request only: the stream becomes a byte pipe after a `101` answer.
        upgrade: bool,
        /// The encoded head.
        block: Bytes,
    },
    /// Body bytes (or pipe bytes after an upgrade).
    Data {
        /// Stream id.
        stream: u32,
        /// Last frame of this direction.
        end: bool,
        /// Payload, at most [`MAX_FRAME_SIZE`] bytes.
        data: Bytes,
    },
    /// The receiver consumed `increment` bytes: the sender may send that much more.
    Window {
        /// Stream id, 0 for the session window.
        stream: u32,
        /// Bytes of credit returned.
        increment: u32,
    },
    /// Abandons a stream in both directions.
    Reset {
        /// Stream id.
        stream: u32,
        /// One of [`reset`].
        code: u8,
    },
    /// Liveness probe; answered with `Pong` carrying the same value.
    Ping(u64),
    /// Answer to `Ping`.
    Pong(u64),
}

/// Reasons carried by [`Frame::Reset`].
pub mod reset {
    /// The receiver no longer wants the stream (caller went away, response dropped).
    pub const CANCEL: u8 = 1;
    /// The agent refused to open the stream (too many streams).
    pub const REFUSED: u8 = 2;
    /// The stream broke: a body could not be read to its end.
    pub const BROKEN: u8 = 3;
}

const KIND_HEAD: u8 = 1;
const KIND_DATA: u8 = 2;
const KIND_WINDOW: u8 = 3;
const KIND_RESET: u8 = 4;
const KIND_PING: u8 = 5;
const KIND_PONG: u8 = 6;
const FLAG_END: u8 = 1;
const FLAG_UPGRADE: u8 = 2;

/// A frame that cannot be decoded; the session is closed with this reason.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Unknown frame kind byte.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A payload longer than the limit of its kind.
    #[error("frame of kind {kind} has {len} bytes (limit {limit})")]
    TooLong {
        /// Kind byte.
        kind: u8,
        /// Announced length.
        len: usize,
        /// Limit for that kind.
        limit: usize,
    },
    /// A fixed-size payload of the wrong size.
    #[error("frame of kind {kind} has {len} bytes, expected {expected}")]
    BadLength {
        /// Kind byte.
        kind: u8,
        /// Actual length.
        len: usize,
        /// Expected length.
        expected: usize,
    },
    /// A head block that does not decode.
    #[error("bad head: {0}")]
    BadHead(&'static str),
}

impl Frame {
    /// Appends the frame header for a payload of `len` bytes (the payload follows separately).
    fn put_header(out: &mut BytesMut, kind: u8, flags: u8, stream: u32, len: usize) {
        out.reserve(FRAME_HEADER_LEN + len);
        out.put_u8(kind);
        out.put_u8(flags);
        out.put_u32(stream);
        // Payload lengths are bounded by MAX_HEADER_LIST / MAX_FRAME_SIZE, far below u32::MAX.
        out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    }

    /// Appends a `Head` frame whose block `block` writes into `out` after the frame header
    /// (the same bytes as encoding `Frame::Head` with that block, without the block's own buffer).
    pub fn encode_head_with(
        out: &mut BytesMut,
        stream: u32,
        end: bool,
        upgrade: bool,
        block: impl FnOnce(&mut BytesMut),
    ) {
        let flags = (u8::from(end) * FLAG_END) | (u8::from(upgrade) * FLAG_UPGRADE);
        let at = out.len();
        Self::put_header(out, KIND_HEAD, flags, stream, 256);
        block(out);
        let len = out.len() - at - FRAME_HEADER_LEN;
        let len = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
        out[at + FRAME_HEADER_LEN - 4..at + FRAME_HEADER_LEN].copy_from_slice(&len);
    }

    /// Appends this frame's wire form to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Frame::Head {
                stream,
                end,
                upgrade,
                block,
            } => Self::encode_head_with(out, *stream, *end, *upgrade, |out| {
                out.extend_from_slice(block)
            }),
            Frame::Data { stream, end, data } => {
                Self::put_header(
                    out,
                    KIND_DATA,
                    u8::from(*end) * FLAG_END,
                    *stream,
                    data.len(),
                );
                out.extend_from_slice(data);
            }
            Frame::Window { stream, increment } => {
                Self::put_header(out, KIND_WINDOW, 0, *stream, 4);
                out.put_u32(*increment);
            }
            Frame::Reset { stream, code } => {
                Self::put_header(out, KIND_RESET, 0, *stream, 1);
                out.put_u8(*code);
            }
            Frame::Ping(v) => {
                Self::put_header(out, KIND_PING, 0, 0, 8);
                out.put_u64(*v);
            }
            Frame::Pong(v) => {
                Self::put_header(out, KIND_PONG, 0, 0, 8);
                out.put_u64(*v);
            }
        }
    }

    /// Takes one whole frame off the front of `buf`; `Ok(None)` when `buf` holds only part of
    /// one (nothing is consumed then).
    pub fn decode(buf: &mut Bytes) -> Result<Option<Frame>, FrameError> {
        if buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let kind = buf[0];
        let flags = buf[1];
        let stream = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]);
        let len = u32::from_be_bytes([buf[6], buf[7], buf[8], buf[9]]) as usize;
        let limit = match kind {
            KIND_HEAD => MAX_HEADER_LIST as usize,
            KIND_DATA => MAX_FRAME_SIZE as usize,
            KIND_WINDOW | KIND_RESET | KIND_PING | KIND_PONG => 8,
            other => return Err(FrameError::UnknownKind(other)),
        };
        if len > limit {
            return Err(FrameError::TooLong { kind, len, limit });
        }
        if buf.len() < FRAME_HEADER_LEN + len {
            return Ok(None);
        }
        buf.advance(FRAME_HEADER_LEN);
        let mut payload = buf.split_to(len);
        let fixed = |expected: usize| {
            if len == expected {
                Ok(())
            } else {
                Err(FrameError::BadLength {
                    kind,
                    len,
                    expected,
                })
            }
        };
        let end = flags & FLAG_END != 0;
        Ok(Some(match kind {
            KIND_HEAD => Frame::Head {
                stream,
                end,
                upgrade: flags & FLAG_UPGRADE != 0,
                block: payload,
            },
            KIND_DATA => Frame::Data {
                stream,
                end,
                data: payload,
            },
            KIND_WINDOW => {
                fixed(4)?;
                Frame::Window {
                    stream,
                    increment: payload.get_u32(),
                }
            }
            KIND_RESET => {
                fixed(1)?;
                Frame::Reset {
                    stream,
                    code: payload.get_u8(),
                }
            }
            KIND_PING => {
                fixed(8)?;
                Frame::Ping(payload.get_u64())
            }
            _ => {
                fixed(8)?;
                Frame::Pong(payload.get_u64())
            }
        }))
    }
}

/// A request head as carried in [`Frame::Head`]: `method`, `path`, then the headers.
/// Encoding: u8 length + method, u16 length + path-and-query, u16 header count, and per header
/// u16 length + name, u32 length + value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Request method.
    pub method: Method,
    /// Path and query as the caller sent it.
    pub path: PathAndQuery,
    /// Headers (no hop-by-hop ones).
    pub headers: HeaderMap,
}

/// A response head as carried in [`Frame::Head`]: u16 status, then the headers as in
/// [`RequestHead`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code.
    pub status: StatusCode,
    /// Headers (no hop-by-hop ones).
    pub headers: HeaderMap,
}

/// Writes the header count and the fields; the count is patched in afterwards so the fields
/// can come from any iterator (a header map, a filter over one plus extra fields, httparse).
/// With `lower`, names are lowercased on the way (request heads: the agent matches the names it
/// acts on, such as `content-length`, byte for byte).
fn put_fields<'a>(
    out: &mut BytesMut,
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    lower: bool,
) {
    let at = out.len();
    out.put_u16(0);
    let mut count = 0u16;
    for (name, value) in fields.take(usize::from(u16::MAX)) {
        let name = &name[..name.len().min(usize::from(u16::MAX))];
        out.put_u16(name.len() as u16);
        let at = out.len();
        out.extend_from_slice(name);
        if lower {
            out[at..].make_ascii_lowercase();
        }
        out.put_u32(value.len() as u32);
        out.extend_from_slice(value);
        count += 1;
    }
    out[at..at + 2].copy_from_slice(&count.to_be_bytes());
}

/// A request head read in place — method, path and header fields as byte slices of the block —
/// for the agent, which writes them straight into an HTTP/1.1 request instead of building a
/// header map. [`RawRequestHead::parse`] checks the whole block once, including that every name
/// is a token and no value holds CR, LF or NUL, so the fields can be copied onto the wire as is.
#[derive(Debug, Clone, Copy)]
pub struct RawRequestHead<'a> {
    /// Request method (a token).
    pub method: &'a [u8],
    /// Path and query (visible ASCII, no spaces).
    pub path: &'a [u8],
    fields: Fields<'a>,
}

impl<'a> RawRequestHead<'a> {
    /// Checks and splits a head block (the encoding of [`RequestHead`]).
    pub fn parse(block: &'a [u8]) -> Result<Self, FrameError> {
        let mut b = block;
        let n = usize::from(*split(&mut b, 1)?.first().unwrap_or(&0));
        let method = split(&mut b, n)?;
        if method.is_empty() || !method.iter().all(|&c| is_tchar(c)) {
            return Err(FrameError::BadHead("invalid method"));
        }
        let n = usize::from(split_u16(&mut b)?);
        let path = split(&mut b, n)?;
        if path.is_empty() || !path.iter().all(|&c| c > b' ' && c != 0x7f) {
            return Err(FrameError::BadHead("invalid path"));
        }
        Ok(Self {
            method,
            path,
            fields: Fields::checked(b)?,
        })
    }

    /// The header fields, in order, as `(name, value)`.
    pub fn fields(&self) -> Fields<'a> {
        self.fields
    }
}

/// A response head read in place, for the server, which writes the agent's fields straight
/// onto the caller's connection. [`RawResponseHead::parse`] checks every name is a token and no
/// value holds CR, LF or NUL: an agent must not be able to split the caller's response.
#[derive(Debug, Clone, Copy)]
pub struct RawResponseHead<'a> {
    /// Status code (100–999).
    pub status: u16,
    fields: Fields<'a>,
}

impl<'a> RawResponseHead<'a> {
    /// Checks and splits a head block (the encoding of [`ResponseHead`]).
    pub fn parse(block: &'a [u8]) -> Result<Self, FrameError> {
        let mut b = block;
        let status = split_u16(&mut b)?;
        if !(100..=999).contains(&status) {
            return Err(FrameError::BadHead("invalid status"));
        }
        Ok(Self {
            status,
            fields: Fields::checked(b)?,
        })
    }

    /// The header fields, in order, as `(name, value)`.
    pub fn fields(&self) -> Fields<'a> {
        self.fields
    }
}

/// Iterator over the header fields of a [`RawRequestHead`].
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    rest: &'a [u8],
    left: u16,
}

impl<'a> Fields<'a> {
    /// The field list at the start of `b` (count, then fields), each field checked, and
    /// nothing after it.
    fn checked(mut b: &'a [u8]) -> Result<Self, FrameError> {
        let fields = Fields {
            left: split_u16(&mut b)?,
            rest: b,
        };
        let mut walk = fields;
        while walk.left > 0 {
            let (name, value) = walk.next_checked()?;
            if name.is_empty() || !name.iter().all(|&c| is_tchar(c)) {
                return Err(FrameError::BadHead("invalid header name"));
            }
            if value.iter().any(|&c| c == b'\r' || c == b'\n' || c == 0) {
                return Err(FrameError::BadHead("invalid header value"));
            }
        }
        if !walk.rest.is_empty() {
            return Err(FrameError::BadHead("trailing bytes"));
        }
        Ok(fields)
    }

    fn next_checked(&mut self) -> Result<(&'a [u8], &'a [u8]), FrameError> {
        let n = usize::from(split_u16(&mut self.rest)?);
        let name = split(&mut self.rest, n)?;
        let len = split(&mut self.rest, 4)?;
        let n = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let value = split(&mut self.rest, n)?;
        self.left -= 1;
        Ok((name, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        // `parse` validated the block, so this cannot fail on one it returned.
        (self.left > 0).then(|| self.next_checked().ok()).flatten()
    }
}

/// Encodes a request head from its parts (the server's path: the caller's fields filtered and
/// the `proxyview-*` ones appended, without building a header map for it).
pub fn encode_request_head<'a>(
    method: &str,
    path: &str,
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> Bytes {
    let mut out = BytesMut::with_capacity(256);
    encode_request_head_into(&mut out, method, path, fields);
    out.freeze()
}

/// [`encode_request_head`] appended to `out` (the server writes it straight into the session's
/// outgoing buffer: no buffer of its own to allocate, fill, copy and free per request).
pub fn encode_request_head_into<'a>(
    out: &mut BytesMut,
    method: &str,
    path: &str,
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) {
    let m = method.as_bytes();
    out.put_u8(m.len().min(255) as u8);
    out.extend_from_slice(&m[..m.len().min(255)]);
    let p = path.as_bytes();
    out.put_u16(p.len().min(usize::from(u16::MAX)) as u16);
    out.extend_from_slice(&p[..p.len().min(usize::from(u16::MAX))]);
    put_fields(out, fields, true);
}

/// Encodes a response head from raw fields (the agent's path: a backend response parsed by
/// httparse goes into the tunnel without a header map). Same wire form as [`ResponseHead`].
/// A `BytesMut`, not `Bytes`: the head is only copied into the session's outgoing buffer, and
/// freezing a partly filled buffer costs a second allocation.
pub fn encode_response_head<'a>(
    status: u16,
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> BytesMut {
    let mut out = BytesMut::with_capacity(256);
    out.put_u16(status);
    put_fields(&mut out, fields, false);
    out
}

/// RFC 9110 `tchar`.
pub fn is_tchar(c: u8) -> bool {
    TCHAR[usize::from(c)]
}

const TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        c += 1;
    }
    t
};

fn split<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], FrameError> {
    if b.len() < n {
        return Err(FrameError::BadHead("truncated"));
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

fn split_u16(b: &mut &[u8]) -> Result<u16, FrameError> {
    let s = split(b, 2)?;
    Ok(u16::from_be_bytes([s[0], s[1]]))
}

impl RequestHead {
    /// The head's wire form.
    pub fn encode(&self) -> Bytes {
        encode_request_head(
            self.method.as_str(),
            self.path.as_str(),
            self.headers
                .iter()
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
        )
    }
}

impl ResponseHead {
    /// The head's wire form.
    pub fn encode(&self) -> Bytes {
        encode_response_head(
            self.status.as_u16(),
            self.headers
                .iter()
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
        )
        .freeze()
    }
}

/// Time for TCP connect + WebSocket handshake + Hello/HelloAck.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default interval between `Ping`s on an idle session (both directions).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);
/// Default time to wait for a `Pong` (or any frame) before declaring the peer dead.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(20);
/// Default wait for a response head, on the server (through the tunnel) and on the agent (backend).
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default longest silence of a backend in the middle of a response body (agent).
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Time a caller has to send a complete request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default longest wait for a caller to take bytes of its answer (nginx's `send_timeout`).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Default agent → backend TCP connect timeout.
pub const BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle time after which a pooled backend connection is closed.
pub const BACKEND_POOL_IDLE: Duration = Duration::from_secs(60);
/// First reconnect delay of the agent; doubled per failure up to [`RECONNECT_MAX`].
pub const RECONNECT_BASE: Duration = Duration::from_millis(100);
/// Ceiling of the agent's reconnect delay.
pub const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// A session that lived this long resets the agent's back-off.
pub const RECONNECT_STABLE: Duration = Duration::from_secs(30);
/// How long the server lets requests in flight finish after SIGTERM/SIGINT.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a rejected peer's unread bytes are drained after the 403, so the close is a FIN
/// the caller can read the answer before, not an RST that destroys it.
pub const REJECT_DRAIN: Duration = Duration::from_millis(500);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::{HeaderValue, Method};

    #[test]
    fn frames_round_trip_and_split_anywhere() {
        let frames = vec![
            Frame::Head {
                stream: 1,
                end: false,
                upgrade: true,
                block: Bytes::from_static(b"head"),
            },
            Frame::Data {
                stream: 1,
                end: true,
                data: Bytes::from(vec![7u8; 70_000].split_off(5_536)),
            },
            Frame::Window {
                stream: 0,
                increment: 99,
            },
            Frame::Reset {
                stream: 3,
                code: reset::CANCEL,
            },
            Frame::Ping(42),
            Frame::Pong(42),
        ];
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(&mut wire);
        }
        let wire = wire.freeze();
        for cut in [0, 1, 9, 10, 11, 20, 1000, wire.len() - 1] {
            let mut acc = BytesMut::new();
            let mut got = Vec::new();
            for part in [wire.slice(..cut), wire.slice(cut..)] {
                acc.extend_from_slice(&part);
                let mut b = acc.split().freeze();
                while let Some(f) = Frame::decode(&mut b).unwrap() {
                    got.push(f);
                }
                acc.extend_from_slice(&b);
            }
            assert_eq!(got, frames, "cut at {cut}");
        }
    }

    #[test]
    fn a_head_written_in_place_is_the_same_frame() {
        let block = crate::protocol::encode_request_head(
            "GET",
            "/x",
            [(&b"Accept"[..], &b"*/*"[..]), (b"x-long", &[b'v'; 600][..])].into_iter(),
        );
        // Written after other bytes (the outgoing buffer is rarely empty), the length field is
        // patched to the block's size: the decoder gets back exactly this frame, and no more.
        for (end, upgrade) in [(true, false), (false, true)] {
            let mut out = BytesMut::from(&b"before"[..]);
            Frame::encode_head_with(&mut out, 7, end, upgrade, |out| {
                out.extend_from_slice(&block)
            });
            out.extend_from_slice(b"after");
            let mut wire = out.freeze().slice(6..);
            let got = Frame::decode(&mut wire).unwrap();
            let want = Frame::Head {
                stream: 7,
                end,
                upgrade,
                block: block.clone(),
            };
            assert_eq!(got, Some(want));
            assert_eq!(&wire[..], b"after");
        }
    }

    #[test]
    fn oversized_and_unknown_frames_are_errors() {
        let mut b = BytesMut::new();
        b.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        b.extend_from_slice(&(MAX_FRAME_SIZE + 1).to_be_bytes());
        assert!(matches!(
            Frame::decode(&mut b.freeze()),
            Err(FrameError::TooLong { .. })
        ));
        let mut b = Bytes::from_static(&[99, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(Frame::decode(&mut b), Err(FrameError::UnknownKind(99)));
        let mut b = Bytes::from_static(&[3, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0]);
        assert!(matches!(
            Frame::decode(&mut b),
            Err(FrameError::BadLength { .. })
        ));
    }

    #[test]
    fn heads_round_trip_and_reject_garbage() {
        let mut headers = HeaderMap::new();
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        headers.insert("host", HeaderValue::from_static("svc"));
        let req = RequestHead {
            method: Method::from_bytes(b"PROPFIND").unwrap(),
            path: "/a/b?c=d".parse().unwrap(),
            headers: headers.clone(),
        };
        let enc = req.encode();
        let raw = RawRequestHead::parse(&enc).unwrap();
        assert_eq!(raw.method, b"PROPFIND");
        assert_eq!(raw.path, b"/a/b?c=d");
        let fields: Vec<(&[u8], &[u8])> = raw.fields().collect();
        let want: Vec<(&[u8], &[u8])> = req
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
            .collect();
        assert_eq!(fields, want);
        let resp = ResponseHead {
            status: StatusCode::IM_A_TEAPOT,
            headers,
        };
        let enc_resp = resp.encode();
        let raw_resp = RawResponseHead::parse(&enc_resp).unwrap();
        assert_eq!(raw_resp.status, 418);
        assert_eq!(raw_resp.fields().collect::<Vec<_>>(), want);
        for n in 0..enc.len() {
            assert!(RawRequestHead::parse(&enc[..n]).is_err(), "prefix {n}");
        }
        let mut bad = BytesMut::from(&resp.encode()[..]);
        bad[0] = 0;
        bad[1] = 5;
        assert!(RawResponseHead::parse(&bad).is_err());
    }
}
