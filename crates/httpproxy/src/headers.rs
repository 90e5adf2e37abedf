//! Header rewriting of spec §3 step 4: hop-by-hop removal and the `X-Forwarded-*` rules of Go's
//! `httputil.ReverseProxy` in Rewrite mode plus cwproxy's re-added `X-Forwarded-For` chain.

use std::net::IpAddr;

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `Forwarded` (RFC 7239).
pub const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// `Proxy-Connection` (non-standard, still sent by some clients).
pub const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// `Keep-Alive`.
pub const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Hop-by-hop headers removed in both directions (Go `hopHeaders`), except `Trailer`, handled apart.
const HOP_HEADERS: [HeaderName; 8] = [
    header::CONNECTION,
    PROXY_CONNECTION,
    KEEP_ALIVE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether any value of `name` contains `token` as a comma-separated, case-insensitive token.
pub(crate) fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// The protocol a request or response asks to switch to: the `Upgrade` value when `Connection`
/// names `upgrade` (Go `upgradeType`).
pub(crate) fn upgrade_type(headers: &HeaderMap) -> Option<HeaderValue> {
    if !has_token(headers, &header::CONNECTION, "upgrade") {
        return None;
    }
    headers.get(header::UPGRADE).cloned()
}

/// Removes the headers named in `Connection` and the fixed hop-by-hop list. `Trailer` is kept in
/// both directions: Go drops it but re-announces the trailers it forwards, and hyper only sends
/// announced trailers.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(first) = headers.get(header::CONNECTION) {
        // Fast path: a lone `keep-alive`/`close` names no header worth a second map scan.
        let simple = headers.get_all(header::CONNECTION).iter().count() == 1
            && (first.as_bytes().eq_ignore_ascii_case(b"keep-alive")
                || first.as_bytes().eq_ignore_ascii_case(b"close"));
        if !simple {
            let values: Vec<HeaderValue> = headers
                .get_all(header::CONNECTION)
                .iter()
                .cloned()
                .collect();
            for value in values {
                for token in value.as_bytes().split(|b| *b == b',') {
                    let token = token.trim_ascii();
                    if token.is_empty() {
                        continue;
                    }
                    if let Ok(name) = HeaderName::from_bytes(token) {
                        headers.remove(name);
                    }
                }
            }
        }
    }
    for name in HOP_HEADERS {
        headers.remove(name);
    }
}

/// Whether an upgrade token is printable ASCII (Go rejects others with 400).
pub(crate) fn is_printable(value: &HeaderValue) -> bool {
    value.as_bytes().iter().all(|b| (0x20..0x7f).contains(b))
}

/// The peer IP as sent in `X-Forwarded-For`: IPv4-mapped IPv6 shown as IPv4, no port, no brackets.
pub(crate) fn peer_ip_value(ip: IpAddr) -> HeaderValue {
    let ip = ip.to_canonical();
    // An IP's text is always a valid header value.
    HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static(""))
}

/// Rewrites inbound request headers into the outbound ones, in place (spec §3 step 4).
///
/// `upgrade` is the inbound upgrade type, if any; `peer_ip` the preformatted client IP.
pub(crate) fn rewrite_request(
    headers: &mut HeaderMap,
    upgrade: Option<&HeaderValue>,
    peer_ip: &HeaderValue,
) {
    let te_trailers = has_token(headers, &header::TE, "trailers");
    remove_hop_by_hop(headers);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(up) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, up.clone());
    }
    headers.remove(FORWARDED);
    headers.remove(X_FORWARDED_HOST);
    headers.remove(X_FORWARDED_PROTO);
    // cwproxy re-adds every inbound X-Forwarded-For value, then Go's SetXForwarded appends the peer.
    let xff = match headers.entry(X_FORWARDED_FOR) {
        header::Entry::Vacant(_) => peer_ip.clone(),
        header::Entry::Occupied(entry) => {
            let (_, prior) = entry.remove_entry_mult();
            let mut buf = BytesMut::new();
            for (i, v) in prior.enumerate() {
                if i > 0 {
                    buf.put_slice(b", ");
                }
                buf.put_slice(v.as_bytes());
            }
            buf.put_slice(b", ");
            buf.put_slice(peer_ip.as_bytes());
            // Joined valid values with ", " stay valid (no control bytes are added).
            HeaderValue::from_maybe_shared(buf.freeze()).unwrap_or_else(|_| peer_ip.clone())
        }
    };
    headers.insert(X_FORWARDED_FOR, xff);
    let host = headers
        .get(header::HOST)
        .cloned()
        .unwrap_or(HeaderValue::from_static(""));
    headers.insert(X_FORWARDED_HOST, host);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn forwarded_chain_and_hop_by_hop() {
        let mut h = map(&[
            ("host", "service.internal"),
            ("x-forwarded-for", "198.51.100.10"),
            ("x-forwarded-for", "10.0.0.1, 10.0.0.2"),
            ("x-forwarded-host", "evil"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=1.2.3.4"),
            ("connection", "keep-alive, X-Custom"),
            ("x-custom", "drop me"),
            ("keep-alive", "timeout=5"),
            ("te", "gzip, trailers"),
            ("proxy-authorization", "secret"),
            ("accept", "*/*"),
        ]);
        let peer = peer_ip_value("203.0.113.9".parse().unwrap());
        rewrite_request(&mut h, None, &peer);
        assert_eq!(
            h["x-forwarded-for"],
            "198.51.100.10, 10.0.0.1, 10.0.0.2, 203.0.113.9"
        );
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-host"], "service.internal");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["host"], "service.internal");
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["accept"], "*/*");
        for gone in [
            "forwarded",
            "connection",
            "x-custom",
            "keep-alive",
            "trailer",
            "proxy-authorization",
            "user-agent",
        ] {
            assert!(!h.contains_key(gone), "{gone} kept");
        }
    }

    #[test]
    fn peer_only_and_ipv6() {
        let mut h = map(&[("host", "[::1]:8081")]);
        let peer = peer_ip_value("::1".parse().unwrap());
        rewrite_request(&mut h, None, &peer);
        assert_eq!(h["x-forwarded-for"], "::1");
        assert_eq!(h["x-forwarded-host"], "[::1]:8081");
        let mapped = peer_ip_value("::ffff:192.0.2.1".parse().unwrap());
        assert_eq!(mapped, "192.0.2.1");
    }

    #[test]
    fn no_host_gives_empty_forwarded_host() {
        let mut h = HeaderMap::new();
        rewrite_request(&mut h, None, &peer_ip_value("127.0.0.1".parse().unwrap()));
        assert_eq!(h["x-forwarded-host"], "");
    }

    #[test]
    fn upgrade_kept() {
        let mut h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("host", "h"),
        ]);
        let up = upgrade_type(&h);
        assert_eq!(up.as_ref().unwrap(), "websocket");
        rewrite_request(
            &mut h,
            up.as_ref(),
            &peer_ip_value("127.0.0.1".parse().unwrap()),
        );
        assert_eq!(h["connection"], "Upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert!(upgrade_type(&map(&[("upgrade", "websocket")])).is_none());
    }

    #[test]
    fn response_keeps_trailer_announcement() {
        let mut h = map(&[
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("content-type", "a/b"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h["trailer"], "x-sum");
        assert!(!h.contains_key("transfer-encoding"));
    }
}
