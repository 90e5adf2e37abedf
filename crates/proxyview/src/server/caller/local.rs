//! Answers the callers' port writes itself rather than relaying from an agent: refusals of a
//! head that cannot be routed (400, 401, 404, 431, 502, 504), as complete HTTP/1.1 responses
//! with their log record, or Proxyview's own 404 page for every failure in legacy mode; and the
//! close that follows an answer, which lingers so the answer is read before the socket goes.

use bytes::BytesMut;
use http::{HeaderName, HeaderValue, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::log::LogCtx;
use crate::protocol;
use crate::server::state::Server;
use http1::head::local_response;
use http1::SendLimit;

/// Proxyview's exact error page, used for every failure in legacy mode.
pub const LEGACY_404_BODY: &str = "Resource was not found.";

/// Why a head is refused before it is routed (answered, then the connection is closed).
pub(super) struct Refused {
    pub(super) status: StatusCode,
    pub(super) msg: &'static str,
}

impl Server {
    /// A locally generated error response (and its log record), as bytes to write.
    pub(super) fn fail(
        &self,
        log: Option<LogCtx>,
        status: StatusCode,
        msg: &str,
        close: bool,
        http10: bool,
    ) -> BytesMut {
        self.answer_locally(log, status, PLAIN, msg, close, http10)
    }

    /// 401 with the challenge for the caller's proxy token.
    pub(super) fn fail_unauthorized(
        &self,
        log: Option<LogCtx>,
        close: bool,
        http10: bool,
    ) -> BytesMut {
        let msg = "missing or wrong auth-token / Authorization: Bearer";
        self.answer_locally(
            log,
            StatusCode::UNAUTHORIZED,
            UNAUTHORIZED,
            msg,
            close,
            http10,
        )
    }

    fn answer_locally(
        &self,
        log: Option<LogCtx>,
        status: StatusCode,
        fields: &'static [(&'static str, &'static str)],
        msg: &str,
        close: bool,
        http10: bool,
    ) -> BytesMut {
        let (status, fields, body) = local_answer(self.cfg.legacy_errors, status, fields, msg);
        if let (Some(l), Some(sink)) = (log, &self.sink) {
            let headers = fields
                .iter()
                .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
                .collect();
            sink.emit(l.record(status.as_u16(), headers, None, body.len() as u64));
        }
        local_response(http10, status.as_u16(), fields, body.as_bytes(), close)
    }
}

/// The fields of local answers (besides the framing, `date` and `connection`).
const PLAIN: &[(&str, &str)] = &[("content-type", "text/plain; charset=utf-8")];
const UNAUTHORIZED: &[(&str, &str)] = &[
    ("content-type", "text/plain; charset=utf-8"),
    ("www-authenticate", "Bearer realm=\"proxyview\""),
];
/// Proxyview's 404 page's fields.
const LEGACY: &[(&str, &str)] = &[
    ("content-type", "text/plain"),
    ("cache-control", "no-cache"),
    ("pragma", "no-cache"),
];

pub(super) fn refused_bad() -> Refused {
    Refused {
        status: StatusCode::BAD_REQUEST,
        msg: "malformed request head",
    }
}

pub(super) fn refused(status: StatusCode, msg: &'static str) -> Refused {
    Refused { status, msg }
}

/// Answers a head that could not be taken (parse error, too large) and closes.
pub(super) async fn finish_with<S: AsyncRead + AsyncWrite + Unpin>(
    mut tcp: S,
    r: &Refused,
    send_timeout: std::time::Duration,
) {
    let b = local(false, r.status, r.msg, true, false);
    if SendLimit::new(&mut tcp, send_timeout)
        .write_all(&b)
        .await
        .is_ok()
    {
        linger_close(tcp).await;
    }
}

/// Closes after an answer: a FIN first, then what the caller still sends is read and dropped
/// for a moment, so the kernel does not turn the close into an RST that destroys the answer
/// before the caller read it.
pub(super) async fn linger_close<S: AsyncRead + AsyncWrite + Unpin>(mut tcp: S) {
    let _ = tokio::time::timeout(protocol::REJECT_DRAIN, async {
        tcp.shutdown().await?;
        let mut sink = [0u8; 4096];
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// A local error answer's status, fields and body: `proxyview: msg`, or Proxyview's 404 page
/// for every failure in legacy mode.
fn local_answer(
    legacy: bool,
    status: StatusCode,
    fields: &'static [(&'static str, &'static str)],
    msg: &str,
) -> (StatusCode, &'static [(&'static str, &'static str)], String) {
    if legacy {
        (StatusCode::NOT_FOUND, LEGACY, LEGACY_404_BODY.to_string())
    } else {
        (status, fields, format!("proxyview: {msg}\n"))
    }
}

/// [`local_answer`] with plain fields, as bytes (answers that are not logged).
pub(super) fn local(
    legacy: bool,
    status: StatusCode,
    msg: &str,
    close: bool,
    http10: bool,
) -> BytesMut {
    let (status, fields, body) = local_answer(legacy, status, PLAIN, msg);
    local_response(http10, status.as_u16(), fields, body.as_bytes(), close)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn local_answers_are_complete_http_responses() {
        let b = local(false, StatusCode::NOT_FOUND, "no agent", true, false);
        let text = String::from_utf8(b.to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("\r\ncontent-length: 20\r\n"), "{text}");
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
        assert!(text.contains("\r\ndate: "), "{text}");
        assert!(text.ends_with("\r\n\r\nproxyview: no agent\n"), "{text}");
        let b = local(true, StatusCode::BAD_GATEWAY, "x", false, true);
        let text = String::from_utf8(b.to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.0 404 Not Found\r\n"), "{text}");
        assert!(text.contains("\r\nconnection: keep-alive\r\n"), "{text}");
        assert!(text.ends_with(LEGACY_404_BODY), "{text}");
    }
}
