//! Small HTTP helpers shared by the server and the agent: the hyper body type of the agents'
//! port, the tunnel's own field names, upgrades. The HTTP/1.1 rules themselves are in `http1`.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

/// Error type carried by every body in the tunnel.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The one body type used on every hop (streams, never buffers).
pub type PvBody = UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> PvBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> PvBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Boxes any streaming body.
pub fn boxed<B>(body: B) -> PvBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A plain-text answer of the agents' port.
pub(crate) fn text(status: StatusCode, body: &str) -> Response<PvBody> {
    let mut r = Response::new(full(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Whether `name` is one of the tunnel's own `proxyview-*` fields (any case), which callers
/// and backends must not be able to set.
pub fn is_internal_name(name: &[u8]) -> bool {
    name.len() >= INTERNAL_PREFIX.len()
        && name[..INTERNAL_PREFIX.len()].eq_ignore_ascii_case(INTERNAL_PREFIX.as_bytes())
}

const INTERNAL_PREFIX: &str = "proxyview-";

/// The requested protocol when a request asks for an HTTP/1.1 upgrade (`Connection: upgrade` +
/// `Upgrade: <proto>`), e.g. `websocket`.
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<String> {
    let wants = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| http1::head::tokens(v.as_bytes()))
        .any(|t| t.eq_ignore_ascii_case(b"upgrade"));
    if !wants {
        return None;
    }
    let proto = headers.get(header::UPGRADE)?.to_str().ok()?.trim();
    (!proto.is_empty()).then(|| proto.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn upgrade_detection() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(upgrade_protocol(&h), None);
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert_eq!(upgrade_protocol(&h).as_deref(), Some("websocket"));
    }
}
