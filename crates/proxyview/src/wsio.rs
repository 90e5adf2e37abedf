//! The control messages of a session (Hello / HelloAck / Close) on the raw WebSocket, before the
//! frame tunnel of [`crate::mux`] takes it over.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_websockets::{Message, WebSocketStream};

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
