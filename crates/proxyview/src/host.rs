//! Turning a caller's request into the route name it asks for.

use http::{header, HeaderMap, Uri};

/// Why no route name could be taken from a request (all answered with 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Neither an absolute-form target nor a `Host` header.
    #[error("request has no Host header")]
    Missing,
    /// More than one `Host` header (RFC 9112 §3.2 requires a 400).
    #[error("request has more than one Host header")]
    Duplicate,
    /// The Host value is not a valid authority.
    #[error("Host header {0:?} is not a valid host[:port]")]
    Invalid(String),
}

/// The normalised host of a request: the authority of an absolute-form target if present, else the
/// single `Host` header; port and brackets stripped, lowercased, one trailing dot removed.
pub fn request_host(uri: &Uri, headers: &HeaderMap) -> Result<String, HostError> {
    if let Some(auth) = uri.authority() {
        return Ok(normalize(auth.host()));
    }
    let mut values = headers.get_all(header::HOST).iter();
    let value = values.next().ok_or(HostError::Missing)?;
    if values.next().is_some() {
        return Err(HostError::Duplicate);
    }
    let text = value
        .to_str()
        .map_err(|_| HostError::Invalid(String::from_utf8_lossy(value.as_bytes()).into_owned()))?;
    normalize_authority(text)
}

/// Normalises a raw `host[:port]` string (as found in a Host header).
pub fn normalize_authority(text: &str) -> Result<String, HostError> {
    let trimmed = text.trim();
    if trimmed.is_empty() || trimmed.contains(['@', '/', '?', '#']) {
        return Err(HostError::Invalid(text.to_string()));
    }
    let auth: http::uri::Authority = trimmed
        .parse()
        .map_err(|_| HostError::Invalid(text.to_string()))?;
    if auth.host().is_empty() {
        return Err(HostError::Invalid(text.to_string()));
    }
    Ok(normalize(auth.host()))
}

fn normalize(host: &str) -> String {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    host.to_ascii_lowercase()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn host_of(target: &str, hosts: &[&str]) -> Result<String, HostError> {
        let uri: Uri = target.parse().unwrap();
        let mut h = HeaderMap::new();
        for v in hosts {
            h.append(header::HOST, HeaderValue::from_str(v).unwrap());
        }
        request_host(&uri, &h)
    }

    /// The matching table: every form a caller may use for the route `route1`.
    #[test]
    fn host_matching_table() {
        let ok = |t: &str, h: &[&str], want: &str| {
            assert_eq!(host_of(t, h).as_deref(), Ok(want), "{t} {h:?}")
        };
        ok("/", &["route1"], "route1");
        ok("/", &["route1:80"], "route1");
        ok("/", &["route1:1234"], "route1");
        ok("/", &["ROUTE1"], "route1");
        ok("/", &["Route1.:8080"], "route1");
        ok("/", &["route1."], "route1");
        ok("/x?y", &["  route1  "], "route1");
        ok("http://route1/x", &["other"], "route1");
        ok("http://Route1:99/x", &[], "route1");
        ok("/", &["[::1]:8080"], "::1");
        ok("/", &["127.0.0.1:8080"], "127.0.0.1");
        ok("/", &["a.b.example.com"], "a.b.example.com");
        assert_eq!(host_of("/", &[]), Err(HostError::Missing));
        assert_eq!(host_of("/", &["a", "b"]), Err(HostError::Duplicate));
        assert!(matches!(host_of("/", &["a/b"]), Err(HostError::Invalid(_))));
        assert!(matches!(
            host_of("/", &["user@a"]),
            Err(HostError::Invalid(_))
        ));
        assert!(matches!(host_of("/", &[":80"]), Err(HostError::Invalid(_))));
    }
}
