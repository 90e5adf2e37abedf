//! Who presents which credential, read the same way on both of the server's ports: the proxy
//! token of a request (legacy `auth-token` field or a bearer `Authorization`), the admin page's
//! Basic password, which fields carry a credential and so never reach the agent or the access
//! log, and which peers are trusted proxies whose X-Forwarded fields are kept. Pure functions
//! over header fields, so the callers' port, the agents' port and the cluster's peer link share
//! one rule each.

use std::net::IpAddr;

use base64::Engine as _;
use http::header::{HeaderMap, HeaderName};

use crate::config::Allowlist;
use crate::protocol;

/// Whether `ip` is a trusted proxy whose X-Forwarded fields are kept: unlike the peer
/// allowlists ([`crate::config::peer_allowed`]), no list means no one is trusted.
pub(crate) fn trusted_proxy(list: Option<&Allowlist>, ip: IpAddr) -> bool {
    list.is_some_and(|l| l.allows(ip))
}

/// The proxy token a request presents: the first legacy token field (`legacy`) when there is
/// one, else (when `bearer` allows it) the token of a bearer `Authorization`. The legacy field
/// wins so that a caller which authenticates with it can still send its own
/// `Authorization: Bearer` to the backend. One rule for both ports.
pub(crate) fn presented_token<'a, I>(
    fields: impl Fn() -> I,
    legacy: &str,
    bearer: bool,
) -> Option<&'a [u8]>
where
    I: Iterator<Item = (&'a [u8], &'a [u8])>,
{
    let first = |want: &[u8]| {
        fields()
            .find(|(n, _)| n.eq_ignore_ascii_case(want))
            .map(|(_, v)| v.trim_ascii())
    };
    first(legacy.as_bytes()).or_else(|| {
        bearer
            .then(|| first(b"authorization").and_then(bearer_token))
            .flatten()
    })
}

/// The password of a Basic `Authorization` value (`Basic base64(user:password)`).
pub(crate) fn basic_password(value: &[u8]) -> Option<Vec<u8>> {
    let b64 = (value.len() > 6 && value[..6].eq_ignore_ascii_case(b"basic "))
        .then(|| value[6..].trim_ascii())?;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let colon = raw.iter().position(|&c| c == b':')?;
    Some(raw[colon + 1..].to_vec())
}

/// The token of a bearer `Authorization` value (`Bearer <token>`, the scheme in any case).
pub(crate) fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    (value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer "))
        .then(|| value[7..].trim_ascii())
}

/// A header map's fields as `(name, value)` pairs.
pub(crate) fn map_pairs(h: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    h.iter().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
}

/// The request headers as logged: the caller's proxy token never reaches the log.
pub(crate) fn logged_headers(h: &HeaderMap, credential: Option<Credentials>) -> HeaderMap {
    match credential {
        None => h.clone(),
        Some(c) => h
            .iter()
            .filter(|(n, _)| !c.matches(n))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect(),
    }
}

/// The fields of one request that carry the caller's proxy token: `auth-token` always, and
/// `Authorization` only when it is the bearer token [`presented_token`] read (no `auth-token`
/// present, bearer accepted); any other `Authorization` belongs to the backend. One rule for
/// what the agent and the access log never see.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Credentials {
    pub(crate) bearer: bool,
}

impl Credentials {
    pub(crate) fn matches(self, n: &HeaderName) -> bool {
        self.matches_name(n.as_str().as_bytes())
    }

    /// [`Credentials::matches`] for a raw field name, any case.
    pub(crate) fn matches_name(self, n: &[u8]) -> bool {
        n.eq_ignore_ascii_case(protocol::AUTH_TOKEN_HEADER.as_str().as_bytes())
            || (self.bearer && n.eq_ignore_ascii_case(b"authorization"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::header::{self, HeaderValue};

    #[test]
    fn token_sources_and_stripping() {
        let mut h = HeaderMap::new();
        h.insert("auth-token", HeaderValue::from_static("legacy"));
        let legacy = "auth-token";
        assert_eq!(
            presented_token(|| map_pairs(&h), legacy, true),
            Some(&b"legacy"[..])
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer  tok "),
        );
        assert_eq!(
            presented_token(|| map_pairs(&h), legacy, true),
            Some(&b"legacy"[..]),
            "auth-token wins; the bearer is the backend's"
        );
        h.remove("auth-token");
        assert_eq!(
            presented_token(|| map_pairs(&h), legacy, true),
            Some(&b"tok"[..])
        );
        assert_eq!(presented_token(|| map_pairs(&h), legacy, false), None);
        h.insert("auth-token", HeaderValue::from_static("legacy"));
        h.insert("x-other", HeaderValue::from_static("1"));
        let kept = |h: &HeaderMap, bearer: bool| {
            let c = Credentials { bearer };
            h.keys()
                .filter(|n| !c.matches(n))
                .map(|n| n.as_str().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(kept(&h, true), ["x-other"]);
        assert_eq!(
            kept(&h, false),
            ["authorization", "x-other"],
            "non-bearer Authorization belongs to the backend"
        );
    }
}
