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
    if let Some(host) = plain_host(trimmed) {
        return Ok(normalize(host));
    }
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

/// The host of the common form — a name or IPv4 address of letters, digits, dots and hyphens,
/// with at most a numeric port — found without the general authority parser (a per-request
/// cost on the server's hot path). `None` for anything else, which the full parse decides.
fn plain_host(text: &str) -> Option<&str> {
    let (host, port) = match text.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (text, None),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-');
    let port_ok = port.is_none_or(|p| {
        (1..=5).contains(&p.len())
            && p.bytes().all(|c| c.is_ascii_digit())
            && p.parse::<u16>().is_ok()
    });
    (host_ok && port_ok).then_some(host)
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
    fn plain_hosts_take_the_short_path_and_agree_with_the_full_parse() {
        for h in [
            "route1",
            "Route1.:8080",
            "a-b.example.com:1",
            "10.0.0.1:65535",
            "x.",
        ] {
            assert!(plain_host(h).is_some(), "{h}");
            let full: http::uri::Authority = h.parse().unwrap();
            assert_eq!(plain_host(h), Some(full.host()), "{h}");
        }
        for h in [
            "r:", "r:65536", "r:1:2", "[::1]:80", "a_b", "r:+1", ":80", "r:123456",
        ] {
            assert!(plain_host(h).is_none(), "{h}");
        }
    }

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
