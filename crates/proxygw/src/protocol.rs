//! The ctl IPC wire format (spec §8): a Unix stream of packets `{id, method, body}`, framed as newline-delimited
//! JSON or as a CBOR sequence. Everything a reader needs to speak the protocol is in this file.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest packet accepted in either codec; a status of thousands of targets fits many times over.
pub const MAX_PACKET_BYTES: usize = 1 << 20;
/// Default time `proxygwctl` waits for the daemon before giving up (the original waited forever).
pub const DEFAULT_CLIENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Most connections the ctl server serves at once; more wait in the kernel backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection idle this long between packets is closed, so a stuck client cannot pin a slot forever.
pub const CONNECTION_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Method IDs (Go `iota` order of the original). Odd IDs below 32768 are responses.
pub mod method {
    /// Empty body; ignored.
    pub const EMPTY: u16 = 0;
    /// `{"msg": string}`.
    pub const ERROR_RESPONSE: u16 = 1;
    /// `{}`.
    pub const STATUS_REQUEST: u16 = 2;
    /// [`super::StatusResponse`].
    pub const STATUS_RESPONSE: u16 = 3;
    /// Plugin host protocol (not served).
    pub const PLUGIN_INIT_REQUEST: u16 = 4;
    /// Plugin host protocol (not served).
    pub const PLUGIN_INIT_RESPONSE: u16 = 5;
    /// Plugin host protocol (not served).
    pub const NEW_TARGET_REQUEST: u16 = 6;
    /// Plugin host protocol (not served).
    pub const NEW_TARGET_RESPONSE: u16 = 7;
    /// `{"name"}`: warm a target (served; the original answered "unsupported").
    pub const WARM_TARGET_REQUEST: u16 = 8;
    /// `{}`.
    pub const WARM_TARGET_RESPONSE: u16 = 9;
    /// `{"name"}`: drain a target now (served).
    pub const DRAIN_TARGET_REQUEST: u16 = 10;
    /// `{}`.
    pub const DRAIN_TARGET_RESPONSE: u16 = 11;
    /// Plugin host protocol (not served).
    pub const CLOSE_TARGET_REQUEST: u16 = 12;
    /// Plugin host protocol (not served).
    pub const CLOSE_TARGET_RESPONSE: u16 = 13;
    /// Plugin host protocol (not served).
    pub const NEW_FRONTEND_REQUEST: u16 = 14;
    /// Plugin host protocol (not served).
    pub const NEW_FRONTEND_RESPONSE: u16 = 15;
    /// `{"name"}`: start a stopped frontend (served).
    pub const START_FRONTEND_REQUEST: u16 = 16;
    /// `{}`.
    pub const START_FRONTEND_RESPONSE: u16 = 17;
    /// `{"name"}`: stop a frontend (served).
    pub const STOP_FRONTEND_REQUEST: u16 = 18;
    /// `{}`.
    pub const STOP_FRONTEND_RESPONSE: u16 = 19;
    /// Plugin host protocol (not served).
    pub const CLOSE_FRONTEND_REQUEST: u16 = 20;
    /// Plugin host protocol (not served).
    pub const CLOSE_FRONTEND_RESPONSE: u16 = 21;
    /// `{}`: re-read the daemon's config and apply it (served; not in the original).
    pub const RELOAD_REQUEST: u16 = 22;
    /// `{}`.
    pub const RELOAD_RESPONSE: u16 = 23;
    /// Notification `{"name"}` from an out-of-process plugin (read and discarded).
    pub const FRONTEND_SHOULD_WARM_NOTIFICATION: u16 = 32768;

    /// True for response methods: below 32768 and odd.
    pub fn is_response(m: u16) -> bool {
        m < 32768 && m % 2 == 1
    }
}

/// The two framings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// One compact JSON object per line (the reader accepts any whitespace between values).
    Json,
    /// A CBOR sequence (RFC 8742) of self-delimiting maps with text keys.
    Cbor,
}

impl Codec {
    /// By name, case-insensitive and trimmed; `None` for anything else (including "").
    pub fn by_name(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "json" => Some(Self::Json),
            "cbor" => Some(Self::Cbor),
            _ => None,
        }
    }
}

/// Transport protocol in a status body: `"tcp"`/`"udp"` in JSON, 6/17 in CBOR (as the Go original's CBOR encoder
/// emits it); both forms are accepted on input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireProtocol(pub crate::config::Protocol);

impl Serialize for WireProtocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(self.0.as_str())
        } else {
            s.serialize_u8(self.0.number())
        }
    }
}

impl<'de> Deserialize<'de> for WireProtocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = WireProtocol;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"tcp\", \"udp\", 6 or 17")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<WireProtocol, E> {
                crate::config::Protocol::parse(v)
                    .map(WireProtocol)
                    .map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<WireProtocol, E> {
                u8::try_from(v)
                    .ok()
                    .and_then(crate::config::Protocol::from_number)
                    .map(WireProtocol)
                    .ok_or_else(|| E::custom(format!("invalid Protocol {v}")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<WireProtocol, E> {
                self.visit_u64(
                    u64::try_from(v).map_err(|_| E::custom(format!("invalid Protocol {v}")))?,
                )
            }
        }
        d.deserialize_any(V)
    }
}

/// Body of [`method::ERROR_RESPONSE`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Human-readable error.
    pub msg: String,
}

/// Body of the Warm/Drain target and Start/Stop frontend requests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameBody {
    /// Target or frontend name.
    pub name: String,
}

/// An empty body `{}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmptyBody {}

/// Body of [`method::STATUS_RESPONSE`]; key order and omissions exactly as the original's Go structs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResponse {
    /// True once the engine has shut down.
    pub closed: bool,
    /// Sorted by name; omitted when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetStatus>,
    /// Sorted by name; omitted when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frontends: Vec<FrontendStatus>,
}

/// One target in a status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetStatus {
    /// Target name.
    pub name: String,
    /// `namespace:kind`.
    pub kind: String,
    /// inactive, warming, active, draining or closed.
    pub state: String,
    /// Last failure; omitted when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_error: String,
    /// Sorted by name; omitted when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointInfo>,
    /// Wake counters (not in the original: its clients ignore the field; `proxygwctl status` prints them only
    /// with `--counters`, so its default output keeps the original's bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wakes: Option<WakeCounters>,
}

/// How often a target was woken, failed to start, or had wakes refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeCounters {
    /// Starts (inactive → warming) caused by a frontend, ctl or a restart.
    pub started: u64,
    /// Starts that failed, and active backends that exited by themselves.
    pub failed_starts: u64,
    /// Wake signals refused because the client is not in the frontend's `wake_allow`.
    pub refused_allow: u64,
    /// Wake signals refused by the target's `wake_rate`.
    pub refused_rate: u64,
    /// Wake signals held back while a failed target backs off (it starts when the backoff ends).
    pub deferred_backoff: u64,
    /// Time left in the current backoff (Go duration), omitted when none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backoff: String,
}

/// One endpoint in a target status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointInfo {
    /// Endpoint name.
    pub name: String,
    /// tcp/udp.
    pub protocol: WireProtocol,
    /// Backend `addr:port`.
    pub address: String,
}

/// One frontend in a status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendStatus {
    /// Frontend name.
    pub name: String,
    /// `namespace:kind`.
    pub kind: String,
    /// stopped, starting, running, stopping or closed.
    pub state: String,
    /// Last failure; omitted when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_error: String,
    /// tcp/udp.
    pub protocol: WireProtocol,
    /// Listen `addr:port`.
    pub listen: String,
    /// Target name.
    pub target_name: String,
    /// Endpoint name.
    pub endpoint_name: String,
    /// Backend `addr:port` (no underscore, as in the original).
    pub proxyaddress: String,
    /// A dual-home frontend's endpoint of the other address family (not in the original, whose
    /// frontends had one endpoint); omitted otherwise, so single-endpoint output keeps its bytes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dual_endpoint_name: String,
    /// The backend `addr:port` of [`Self::dual_endpoint_name`]; omitted when that is.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dual_proxyaddress: String,
}

/// A decoded packet whose body is still in its codec's generic form.
#[derive(Clone, Debug)]
pub struct Packet {
    /// Request id; 0 marks a notification.
    pub id: u32,
    /// Method ID.
    pub method: u16,
    /// The body, decoded lazily by type.
    pub body: RawBody,
}

/// A body in its codec's generic value form.
#[derive(Clone, Debug)]
pub enum RawBody {
    /// From the JSON codec.
    Json(serde_json::Value),
    /// From the CBOR codec.
    Cbor(ciborium::Value),
}

impl Packet {
    /// Decodes the body as `T`; a missing or `null` body counts as `{}`.
    pub fn body<T: serde::de::DeserializeOwned>(&self) -> Result<T, ProtocolError> {
        match &self.body {
            RawBody::Json(serde_json::Value::Null) => serde_json::from_value(serde_json::json!({})),
            RawBody::Json(v) => serde_json::from_value(v.clone()),
            RawBody::Cbor(ciborium::Value::Null) => serde_json::from_value(serde_json::json!({})),
            RawBody::Cbor(v) => {
                return v
                    .deserialized()
                    .map_err(|e| ProtocolError::Body(self.method, e.to_string()))
            }
        }
        .map_err(|e| ProtocolError::Body(self.method, e.to_string()))
    }
}

/// Wire errors.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Socket error.
    #[error("ipc i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The byte stream is not a valid packet.
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// The body does not match the method's type.
    #[error("invalid body for method {0}: {1}")]
    Body(u16, String),
    /// A packet over [`MAX_PACKET_BYTES`].
    #[error("packet larger than {MAX_PACKET_BYTES} bytes")]
    TooLarge,
}

#[derive(Serialize)]
struct Envelope<'a, B: Serialize> {
    id: u32,
    method: u16,
    body: &'a B,
}

#[derive(Deserialize)]
struct JsonEnvelope {
    #[serde(default)]
    id: u32,
    #[serde(default)]
    method: u16,
    #[serde(default)]
    body: serde_json::Value,
}

#[derive(Deserialize)]
struct CborEnvelope {
    #[serde(default)]
    id: u32,
    #[serde(default)]
    method: u16,
    #[serde(default = "cbor_null")]
    body: ciborium::Value,
}

fn cbor_null() -> ciborium::Value {
    ciborium::Value::Null
}

/// Encodes one packet in `codec`'s framing.
pub fn encode<B: Serialize>(
    codec: Codec,
    id: u32,
    method: u16,
    body: &B,
) -> Result<Vec<u8>, ProtocolError> {
    let env = Envelope { id, method, body };
    match codec {
        Codec::Json => {
            let mut out = go_json(&env, false)?.into_bytes();
            out.push(b'\n');
            Ok(out)
        }
        Codec::Cbor => {
            let mut out = Vec::new();
            ciborium::into_writer(&env, &mut out)
                .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
            Ok(out)
        }
    }
}

/// Serializes JSON the way Go's `encoding/json` does by default: `<`, `>`, `&`, U+2028 and U+2029 escaped.
/// `indent` gives `SetIndent("", "  ")` output (without the trailing newline).
pub fn go_json<T: Serialize + ?Sized>(v: &T, indent: bool) -> Result<String, ProtocolError> {
    let s = if indent {
        serde_json::to_string_pretty(v)
    } else {
        serde_json::to_string(v)
    }
    .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    // These characters can only occur inside JSON strings, so a plain replace is exact.
    Ok(s.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029"))
}

/// Reads packets from a byte stream in either codec, bounded by [`MAX_PACKET_BYTES`].
///
/// A packet's end is found by a resumable scan ([`Boundary`]) that looks at each byte once, and the decoder
/// runs only when a whole value has arrived, so a packet trickled one byte at a time costs linear time. Once a
/// packet's first byte is in, the rest must arrive within [`PACKET_READ_TIMEOUT`].
pub struct PacketReader<R> {
    inner: R,
    codec: Codec,
    buf: Vec<u8>,
    scan: Boundary,
}

/// Longest a peer may take to send the rest of a packet it has begun; the wait *between* packets is the
/// caller's (the ctl server's [`CONNECTION_IDLE_TIMEOUT`]).
pub const PACKET_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl<R: AsyncRead + Unpin> PacketReader<R> {
    /// Wraps a stream.
    pub fn new(inner: R, codec: Codec) -> Self {
        Self {
            inner,
            codec,
            buf: Vec::new(),
            scan: Boundary::default(),
        }
    }

    /// The next packet, `None` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<Packet>, ProtocolError> {
        let mut deadline = None;
        loop {
            if self.scan.is_fresh() && self.codec == Codec::Json {
                // Whitespace between JSON packets is framing, not part of the next one.
                match self.buf.iter().position(|b| !b.is_ascii_whitespace()) {
                    Some(s) => drop(self.buf.drain(..s)),
                    None => self.buf.clear(),
                }
            }
            if !self.buf.is_empty() {
                deadline.get_or_insert_with(|| tokio::time::Instant::now() + PACKET_READ_TIMEOUT);
                if self.scan.complete(self.codec, &self.buf) {
                    // The scan ends only where a whole value is, so "incomplete" here is garbage, and
                    // parsing it again after every read would bring back the quadratic cost.
                    let Some((p, used)) = self.try_parse()? else {
                        return Err(ProtocolError::Malformed("packet ends early".into()));
                    };
                    self.buf.drain(..used);
                    self.scan = Boundary::default();
                    return Ok(Some(p));
                }
            }
            if self.buf.len() > MAX_PACKET_BYTES {
                return Err(ProtocolError::TooLarge);
            }
            let mut chunk = [0u8; 8192];
            let n = match deadline {
                None => self.inner.read(&mut chunk).await?,
                Some(d) => tokio::time::timeout_at(d, self.inner.read(&mut chunk))
                    .await
                    .map_err(|_| {
                        ProtocolError::Malformed(format!(
                            "incomplete packet after {PACKET_READ_TIMEOUT:?}"
                        ))
                    })??,
            };
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                // A top-level scalar has no closing byte; the end of the stream closes it.
                if let Some((p, used)) = self.try_parse()? {
                    self.buf.drain(..used);
                    self.scan = Boundary::default();
                    return Ok(Some(p));
                }
                return Err(ProtocolError::Malformed(
                    "connection closed inside a packet".into(),
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// A packet and the bytes it used, or `None` if the buffer holds only part of one.
    fn try_parse(&self) -> Result<Option<(Packet, usize)>, ProtocolError> {
        match self.codec {
            Codec::Json => {
                let mut it = serde_json::Deserializer::from_slice(&self.buf)
                    .into_iter::<serde_json::Value>();
                match it.next() {
                    None => Ok(None),
                    Some(Err(e)) if e.is_eof() => Ok(None),
                    Some(Err(e)) => Err(ProtocolError::Malformed(e.to_string())),
                    Some(Ok(v)) => {
                        let used = it.byte_offset();
                        let env: JsonEnvelope = serde_json::from_value(v)
                            .map_err(|e| ProtocolError::Malformed(format!("envelope: {e}")))?;
                        Ok(Some((
                            Packet {
                                id: env.id,
                                method: env.method,
                                body: RawBody::Json(env.body),
                            },
                            used,
                        )))
                    }
                }
            }
            Codec::Cbor => {
                let mut cur = std::io::Cursor::new(&self.buf[..]);
                match ciborium::from_reader::<ciborium::Value, _>(&mut cur) {
                    Ok(v) => {
                        let used = cur.position() as usize;
                        let env: CborEnvelope = v
                            .deserialized()
                            .map_err(|e| ProtocolError::Malformed(format!("envelope: {e}")))?;
                        Ok(Some((
                            Packet {
                                id: env.id,
                                method: env.method,
                                body: RawBody::Cbor(env.body),
                            },
                            used,
                        )))
                    }
                    Err(ciborium::de::Error::Io(_)) => Ok(None),
                    Err(e) => Err(ProtocolError::Malformed(e.to_string())),
                }
            }
        }
    }
}

/// Deepest CBOR nesting the scan follows; deeper input is handed to the decoder, which rejects it.
const MAX_SCAN_DEPTH: usize = 256;

/// Resumable search for the end of the first value in a packet buffer: it remembers how far it has looked, so
/// each byte is examined once however the packet is split into reads. It only finds where a value *could* end;
/// the decoder still validates it (a wrong guess is an ordinary parse error or "incomplete", never a hang).
#[derive(Debug, Default)]
struct Boundary {
    /// Bytes already examined.
    pos: usize,
    /// JSON: open `{`/`[` count; CBOR: unused.
    depth: u32,
    /// JSON: inside a string, and after a backslash in one.
    in_str: bool,
    esc: bool,
    /// CBOR: items still expected by each open container (`None`: indefinite, ended by a break byte).
    open: Vec<Option<u64>>,
    /// Set once a value's end has been seen.
    done: bool,
}

impl Boundary {
    fn is_fresh(&self) -> bool {
        self.pos == 0
    }

    /// True once `buf` holds the end of its first value (or bytes no value can contain).
    fn complete(&mut self, codec: Codec, buf: &[u8]) -> bool {
        if !self.done {
            self.done = match codec {
                Codec::Json => self.json(buf),
                Codec::Cbor => self.cbor(buf),
            };
        }
        self.done
    }

    fn json(&mut self, buf: &[u8]) -> bool {
        while let Some(&b) = buf.get(self.pos) {
            self.pos += 1;
            if self.in_str {
                if self.esc {
                    self.esc = false;
                } else if b == b'\\' {
                    self.esc = true;
                } else if b == b'"' {
                    self.in_str = false;
                    if self.depth == 0 {
                        return true;
                    }
                }
                continue;
            }
            match b {
                b'"' => self.in_str = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return true;
                    }
                }
                // A top-level number or literal ends at the first byte that cannot continue it.
                _ if self.depth == 0 && (b.is_ascii_whitespace() || b",:".contains(&b)) => {
                    return true;
                }
                _ => {}
            }
        }
        false
    }

    fn cbor(&mut self, buf: &[u8]) -> bool {
        loop {
            let Some(&ib) = buf.get(self.pos) else {
                return false;
            };
            let (major, ai) = (ib >> 5, ib & 0x1f);
            if ib == 0xff {
                if let Some(None) = self.open.last() {
                    self.pos += 1;
                    self.open.pop();
                    if self.item_done() {
                        return true;
                    }
                    continue;
                }
                return true; // a stray break: let the decoder say so
            }
            let head = match ai {
                0..=23 => 1,
                24 => 2,
                25 => 3,
                26 => 5,
                27 => 9,
                31 if (2..=5).contains(&major) => 1,
                _ => return true, // reserved or invalid: let the decoder say so
            };
            let Some(hdr) = buf.get(self.pos..self.pos + head) else {
                return false;
            };
            let arg = if ai < 24 {
                u64::from(ai)
            } else {
                hdr[1..].iter().fold(0u64, |a, &b| (a << 8) | u64::from(b))
            };
            let indefinite = ai == 31;
            match major {
                2 | 3 if !indefinite => {
                    let end = u64::try_from(self.pos + head)
                        .ok()
                        .and_then(|p| p.checked_add(arg));
                    match end.and_then(|e| usize::try_from(e).ok()) {
                        Some(e) if e <= buf.len() => self.pos = e,
                        // Wait: a length past the packet limit ends in TooLarge once the buffer passes it.
                        _ => return false,
                    }
                }
                2..=5 if indefinite || arg > 0 => {
                    if self.open.len() >= MAX_SCAN_DEPTH {
                        return true;
                    }
                    self.pos += head;
                    let items = if major == 5 {
                        arg.saturating_mul(2)
                    } else {
                        arg
                    };
                    self.open.push((!indefinite).then_some(items));
                    continue;
                }
                // A tag's item follows it and completes it.
                6 => {
                    self.pos += head;
                    continue;
                }
                _ => self.pos += head,
            }
            if self.item_done() {
                return true;
            }
        }
    }

    /// Counts one finished CBOR item against the open containers; true when the top-level item is finished.
    fn item_done(&mut self) -> bool {
        loop {
            match self.open.last_mut() {
                None => return true,
                Some(None) => return false,
                Some(Some(n)) => {
                    *n -= 1;
                    if *n > 0 {
                        return false;
                    }
                    self.open.pop();
                }
            }
        }
    }
}

/// Writes one packet and flushes.
pub async fn write_packet<W: AsyncWrite + Unpin, B: Serialize>(
    w: &mut W,
    codec: Codec,
    id: u32,
    method: u16,
    body: &B,
) -> Result<(), ProtocolError> {
    let bytes = encode(codec, id, method, body)?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;

    fn sample() -> StatusResponse {
        StatusResponse {
            closed: false,
            targets: vec![TargetStatus {
                name: "backend".into(),
                kind: "static:cmd".into(),
                state: "inactive".into(),
                last_error: "a <b> & c".into(),
                endpoints: vec![EndpointInfo {
                    name: "http".into(),
                    protocol: WireProtocol(Protocol::Tcp),
                    address: "127.0.0.1:8080".into(),
                }],
                wakes: None,
            }],
            frontends: vec![FrontendStatus {
                name: "public-http".into(),
                kind: "static:always".into(),
                state: "running".into(),
                last_error: String::new(),
                protocol: WireProtocol(Protocol::Udp),
                listen: "0.0.0.0:8088".into(),
                target_name: "backend".into(),
                endpoint_name: "http".into(),
                proxyaddress: "127.0.0.1:8080".into(),
                dual_endpoint_name: String::new(),
                dual_proxyaddress: String::new(),
            }],
        }
    }

    #[test]
    fn method_ids_match_the_original() {
        assert_eq!(method::STATUS_REQUEST, 2);
        assert_eq!(method::CLOSE_FRONTEND_RESPONSE, 21);
        assert!(method::is_response(method::STATUS_RESPONSE));
        assert!(!method::is_response(
            method::FRONTEND_SHOULD_WARM_NOTIFICATION
        ));
        assert!(!method::is_response(method::WARM_TARGET_REQUEST));
    }

    #[test]
    fn json_status_is_go_shaped() {
        let bytes = encode(Codec::Json, 1, method::STATUS_RESPONSE, &sample()).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(
            text,
            concat!(
                "{\"id\":1,\"method\":3,\"body\":{\"closed\":false,",
                "\"targets\":[{\"name\":\"backend\",\"kind\":\"static:cmd\",\"state\":\"inactive\",",
                "\"last_error\":\"a \\u003cb\\u003e \\u0026 c\",",
                "\"endpoints\":[{\"name\":\"http\",\"protocol\":\"tcp\",\"address\":\"127.0.0.1:8080\"}]}],",
                "\"frontends\":[{\"name\":\"public-http\",\"kind\":\"static:always\",\"state\":\"running\",",
                "\"protocol\":\"udp\",\"listen\":\"0.0.0.0:8088\",\"target_name\":\"backend\",",
                "\"endpoint_name\":\"http\",\"proxyaddress\":\"127.0.0.1:8080\"}]}}\n"
            )
        );
    }

    #[tokio::test]
    async fn both_codecs_round_trip_a_status() {
        for codec in [Codec::Json, Codec::Cbor] {
            let mut bytes = encode(codec, 7, method::STATUS_RESPONSE, &sample()).unwrap();
            bytes.extend(encode(codec, 8, method::STATUS_REQUEST, &EmptyBody {}).unwrap());
            let mut r = PacketReader::new(&bytes[..], codec);
            let p = r.next().await.unwrap().unwrap();
            assert_eq!((p.id, p.method), (7, 3));
            assert_eq!(p.body::<StatusResponse>().unwrap(), sample());
            let p = r.next().await.unwrap().unwrap();
            assert_eq!((p.id, p.method), (8, 2));
            assert!(r.next().await.unwrap().is_none());
        }
    }

    #[test]
    fn cbor_protocol_is_numeric_and_both_forms_decode() {
        let bytes = encode(Codec::Cbor, 1, 3, &sample()).unwrap();
        let v: ciborium::Value = ciborium::from_reader(&bytes[..]).unwrap();
        let text = format!("{v:?}");
        assert!(text.contains("Integer(Integer(6))"), "{text}");
        let p: WireProtocol = serde_json::from_str("17").unwrap();
        assert_eq!(p.0, Protocol::Udp);
        let p: WireProtocol = serde_json::from_str("\"tcp\"").unwrap();
        assert_eq!(p.0, Protocol::Tcp);
    }

    #[tokio::test]
    async fn json_reader_accepts_any_whitespace_and_split_reads() {
        let text = b"  {\"id\":1,\n \"method\":2,\"body\":{}}\n\n{\"id\":2,\"method\":8,\"body\":{\"name\":\"x\"}}";
        let mut r = PacketReader::new(&text[..], Codec::Json);
        assert_eq!(r.next().await.unwrap().unwrap().id, 1);
        let p = r.next().await.unwrap().unwrap();
        assert_eq!(p.body::<NameBody>().unwrap().name, "x");
        assert!(r.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn garbage_and_truncation_are_errors_not_hangs() {
        let mut r = PacketReader::new(&b"{\"id\":1,\"meth"[..], Codec::Json);
        assert!(matches!(r.next().await, Err(ProtocolError::Malformed(_))));
        let mut r = PacketReader::new(&b"]]"[..], Codec::Json);
        assert!(matches!(r.next().await, Err(ProtocolError::Malformed(_))));
        let mut r = PacketReader::new(&b"{\"id\":-1}"[..], Codec::Json);
        assert!(matches!(r.next().await, Err(ProtocolError::Malformed(_))));
        let mut r = PacketReader::new(&[0xffu8, 0x00][..], Codec::Cbor);
        assert!(r.next().await.is_err());
        // A null or missing body is `{}` (the original panicked or dropped the connection).
        let mut r = PacketReader::new(
            &b"{\"id\":1,\"method\":2,\"body\":null}{\"id\":2,\"method\":2}"[..],
            Codec::Json,
        );
        assert!(r.next().await.unwrap().unwrap().body::<EmptyBody>().is_ok());
        assert!(r.next().await.unwrap().unwrap().body::<EmptyBody>().is_ok());
    }

    /// Hands out one byte per read, the worst split a peer can choose.
    struct Trickle<'a>(&'a [u8]);

    impl tokio::io::AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if let Some((&b, rest)) = self.0.split_first() {
                buf.put_slice(&[b]);
                self.0 = rest;
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn packets_split_into_single_bytes_decode_in_linear_time() {
        // Every split of real packets in both codecs, including nested, indefinite-length and tagged CBOR.
        let mut cbor_extra = Vec::new();
        ciborium::into_writer(
            &ciborium::Value::Map(vec![
                ("id".into(), 9.into()),
                ("method".into(), 2.into()),
                (
                    "body".into(),
                    ciborium::Value::Tag(
                        1,
                        Box::new(ciborium::Value::Array(vec![
                            ciborium::Value::Float(1.5),
                            ciborium::Value::Bytes(vec![1; 300]),
                            ciborium::Value::Map(vec![]),
                        ])),
                    ),
                ),
            ]),
            &mut cbor_extra,
        )
        .unwrap();
        // An indefinite-length map with an indefinite text string: {_ "id": 4, "method": 2, "body": (_ "", "")}.
        cbor_extra.extend([
            0xbf, 0x62, b'i', b'd', 0x04, 0x66, b'm', b'e', b't', b'h', b'o', b'd', 0x02, 0x64,
            b'b', b'o', b'd', b'y', 0x7f, 0x60, 0x60, 0xff, 0xff,
        ]);
        for (codec, extra) in [(Codec::Json, b"  7 ".to_vec()), (Codec::Cbor, cbor_extra)] {
            let mut bytes = encode(codec, 7, method::STATUS_RESPONSE, &sample()).unwrap();
            bytes.extend(&extra);
            bytes.extend(encode(codec, 8, method::STATUS_REQUEST, &EmptyBody {}).unwrap());
            let mut r = PacketReader::new(Trickle(&bytes), codec);
            let p = r.next().await.unwrap().unwrap();
            assert_eq!(p.body::<StatusResponse>().unwrap(), sample());
            if codec == Codec::Cbor {
                assert_eq!(r.next().await.unwrap().unwrap().id, 9);
                assert_eq!(r.next().await.unwrap().unwrap().id, 4);
            } else {
                // A bare scalar is read whole, then refused as an envelope.
                assert!(r.next().await.is_err());
                continue;
            }
            assert_eq!(r.next().await.unwrap().unwrap().id, 8);
            assert!(r.next().await.unwrap().is_none());
        }
        // 256 KiB trickled one byte per read: a reader that re-parsed the whole buffer after every
        // byte would be quadratic, seconds at this size (figures: bench/proxygw/README.md).
        let name = "n".repeat(256 << 10);
        for codec in [Codec::Json, Codec::Cbor] {
            let bytes = encode(
                codec,
                3,
                method::WARM_TARGET_REQUEST,
                &NameBody { name: name.clone() },
            )
            .unwrap();
            let t = std::time::Instant::now();
            let p = PacketReader::new(Trickle(&bytes), codec)
                .next()
                .await
                .unwrap()
                .unwrap();
            assert_eq!(p.body::<NameBody>().unwrap().name.len(), name.len());
            assert!(
                t.elapsed() < std::time::Duration::from_secs(3),
                "{codec:?}: {:?}",
                t.elapsed()
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_started_packet_must_finish_within_the_read_deadline() {
        let (mut tx, rx) = tokio::io::duplex(64);
        tx.write_all(b"{\"id\":1,").await.unwrap();
        let mut r = PacketReader::new(rx, Codec::Json);
        let t = tokio::time::Instant::now();
        let e = r.next().await.unwrap_err().to_string();
        assert!(e.contains("incomplete packet after 10s"), "{e}");
        assert_eq!(t.elapsed(), PACKET_READ_TIMEOUT);
        // Before a packet begins, the reader waits as long as the caller lets it.
        let (_tx, rx) = tokio::io::duplex(64);
        let mut r = PacketReader::new(rx, Codec::Json);
        assert!(tokio::time::timeout(PACKET_READ_TIMEOUT * 3, r.next())
            .await
            .is_err());
        drop(tx);
    }

    #[tokio::test]
    async fn oversized_packets_are_rejected() {
        let mut big = b"{\"id\":\"".to_vec();
        big.resize(MAX_PACKET_BYTES + 10, b'a');
        let mut r = PacketReader::new(&big[..], Codec::Json);
        assert!(matches!(r.next().await, Err(ProtocolError::TooLarge)));
    }
}
