//! The WebSocket around a tunnel: the upgrade handshake on the internal port (agents and
//! cluster peers), then the control messages of a session (Hello / HelloAck / Close) on the raw
//! WebSocket, before the frame tunnel of [`crate::mux`] takes it over.

use base64::Engine as _;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_websockets::{Message, WebSocketStream};

use crate::http_util::{self, empty, PvBody};

/// The `Sec-WebSocket-Key` of a WebSocket upgrade request, or why the request is not one.
pub(crate) fn websocket_key(req: &Request<Incoming>) -> Result<String, &'static str> {
    if req.method() != Method::GET {
        return Err("/connect needs GET with a WebSocket upgrade\n");
    }
    if !http_util::upgrade_protocol(req.headers())
        .is_some_and(|p| p.eq_ignore_ascii_case("websocket"))
    {
        return Err("/connect needs Connection: upgrade and Upgrade: websocket\n");
    }
    if req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err("/connect needs Sec-WebSocket-Version: 13\n");
    }
    req.headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .ok_or("/connect needs Sec-WebSocket-Key\n")
}

/// RFC 6455 §4.2.2: base64(SHA-1(key ++ GUID)).
pub(crate) fn accept_key(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// The `101 Switching Protocols` answer to an upgrade request carrying `key`.
pub(crate) fn switching_protocols(key: &str) -> Response<PvBody> {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept_key(key)) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// Reads the next text message (a control message), skipping pings; a Close, a binary message or
/// end of stream is an error carrying the peer's close reason when there is one.
pub async fn read_control<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
) -> Result<String, String> {
    use futures_util::StreamExt;
    loop {
        match ws.next().await {
            None => return Err("connection closed before the control message".into()),
            Some(Err(e)) => return Err(format!("WebSocket error: {e}")),
            Some(Ok(m)) => {
                if let Some(t) = m.as_text() {
                    return Ok(t.to_string());
                }
                if let Some((code, reason)) = m.as_close() {
                    return Err(format!(
                        "peer closed the tunnel ({}): {reason}",
                        u16::from(code)
                    ));
                }
                if m.is_binary() {
                    return Err("binary message where a control message was expected".into());
                }
            }
        }
    }
}

/// Sends one text control message and flushes it.
pub async fn send_control<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    text: String,
) -> Result<(), String> {
    use futures_util::SinkExt;
    ws.send(Message::text(text))
        .await
        .map_err(|e| format!("cannot send control message: {e}"))
}

/// Sends a Close with `code` and `reason` (best effort: the peer may be gone already).
pub async fn close_with<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    code: u16,
    reason: &str,
) {
    use futures_util::SinkExt;
    if let Ok(code) = tokio_websockets::CloseCode::try_from(code) {
        let _ = ws.send(Message::close(Some(code), reason)).await;
    }
    let _ = ws.close().await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
