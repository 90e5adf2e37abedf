//! Small HTTP helpers shared by the server and the agent: body type, hop-by-hop headers, upgrades.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
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

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Whether the field `name` (any case) is hop-by-hop (RFC 9110 §7.6.1) or `Upgrade`.
pub fn is_hop_by_hop_name(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"upgrade")
        || HOP_BY_HOP
            .iter()
            .any(|h| h.as_str().as_bytes().eq_ignore_ascii_case(name))
}

/// The comma-separated tokens of a list-valued field, trimmed, empty ones skipped.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&c| c == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
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
        .flat_map(|v| tokens(v.as_bytes()))
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
    fn hop_by_hop_names_in_any_case() {
        for n in HOP_BY_HOP.iter().chain([&header::UPGRADE]) {
            assert!(is_hop_by_hop_name(n.as_str().to_uppercase().as_bytes()));
            assert!(is_hop_by_hop_name(n.as_str().as_bytes()));
        }
        assert!(!is_hop_by_hop_name(b"content-length"));
    }

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
