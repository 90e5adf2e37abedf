//! Turning a caller's request into the route name it asks for.

use http::Uri;

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
    /// A request target that is neither origin-form nor a URI with an authority.
    #[error("request target {0:?} is not a path or an absolute URI with a host")]
    Target(String),
}

/// Where a request goes: its route name, the path sent on, and the authority the caller used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed<'a> {
    /// The normalised host: the route name.
    pub host: String,
    /// Path and query (origin form), `/` when an absolute-form target has none.
    pub path: &'a str,
    /// The authority as the caller wrote it (`Host` value or the target's authority).
    pub authority: &'a str,
}

/// Routes a request by the authority of an absolute-form target if there is one, else by its
/// single `Host` field; port and brackets stripped, lowercased, one trailing dot removed.
pub fn route<'a>(
    target: &'a str,
    mut hosts: impl Iterator<Item = &'a [u8]>,
) -> Result<Routed<'a>, HostError> {
    if !target.starts_with('/') && target != "*" {
        let uri: Uri = target
            .parse()
            .map_err(|_| HostError::Target(target.to_string()))?;
        let auth = uri
            .authority()
            .ok_or_else(|| HostError::Target(target.to_string()))?;
        let host = normalize(auth.host());
        // The authority and the path and query as sent (no re-serialisation).
        let at = target.find("://").map_or(0, |i| i + 3);
        if !target[at..].starts_with(auth.as_str()) {
            return Err(HostError::Target(target.to_string()));
        }
        let authority = &target[at..at + auth.as_str().len()];
        let path = match &target[at + auth.as_str().len()..] {
            "" => "/",
            p if p.starts_with('/') => p,
            _ => return Err(HostError::Target(target.to_string())),
        };
        return Ok(Routed {
            host,
            path,
            authority,
        });
    }
    let value = hosts.next().ok_or(HostError::Missing)?;
    if hosts.next().is_some() {
        return Err(HostError::Duplicate);
    }
    let text = std::str::from_utf8(value)
        .map_err(|_| HostError::Invalid(String::from_utf8_lossy(value).into_owned()))?;
    Ok(Routed {
        host: normalize_authority(text)?,
        path: target,
        authority: text.trim(),
    })
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

    fn host_of(target: &str, hosts: &[&str]) -> Result<String, HostError> {
        route(target, hosts.iter().map(|h| h.as_bytes())).map(|r| r.host)
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
        assert!(matches!(host_of("x y", &[]), Err(HostError::Target(_))));
    }

    #[test]
    fn path_and_authority_are_kept_as_sent() {
        let r = route("http://Route1:99/x?y=1", [].into_iter()).unwrap();
        assert_eq!(
            (r.host.as_str(), r.path, r.authority),
            ("route1", "/x?y=1", "Route1:99")
        );
        let r = route("http://route1", [].into_iter()).unwrap();
        assert_eq!((r.path, r.authority), ("/", "route1"));
        let r = route("route1:443", [].into_iter()).unwrap();
        assert_eq!(
            (r.host.as_str(), r.path, r.authority),
            ("route1", "/", "route1:443")
        );
        let r = route("/p", [b" Route1:8080 ".as_slice()].into_iter()).unwrap();
        assert_eq!(
            (r.host.as_str(), r.path, r.authority),
            ("route1", "/p", "Route1:8080")
        );
    }
}
