//! What a proxy owns in a message, in one place: the hop-by-hop fields it removes, the fields a
//! message's `Connection` names, and the framing shapes it refuses because two parsers could
//! read them differently (request smuggling, RFC 9112 §6.3, §11.2).

use bytes::BytesMut;

use crate::head::{put_field, HeadFields};

/// Fields that describe one hop's connection, never forwarded (RFC 9110 §7.6.1), plus
/// `Trailer` (the proxy re-frames bodies, so the announcement would be wrong) and `Upgrade`
/// (an upgrade is negotiated hop by hop; the proxy writes its own on a `101`).
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether the field `name` (any case) is in [`HOP_BY_HOP`].
pub fn is_hop_by_hop_name(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| h.as_bytes().eq_ignore_ascii_case(name))
}

/// Whether a field of a message is not forwarded: hop-by-hop, named by the message's
/// `Connection` (`named`, from [`HeadFields::named`]), or a `Content-Length` beside a
/// `Transfer-Encoding` (the coding wins; forwarding both would let the next hop choose).
pub fn is_dropped(name: &[u8], fields: &HeadFields, named: &[&[u8]]) -> bool {
    is_hop_by_hop_name(name)
        || (fields.has_codings() && name.eq_ignore_ascii_case(b"content-length"))
        || named.iter().any(|t| t.eq_ignore_ascii_case(name))
}

/// Refuses a request head whose body framing two parsers could read differently: a transfer
/// coding other than one final `chunked`, `chunked` together with `Content-Length`, or more
/// than one `Content-Length` value, even agreeing ones (RFC 9112 §6.3 allows merging them, but
/// the next hop may not: Go's servers refuse `3, 3`). An invalid or conflicting
/// `Content-Length` is refused earlier, by [`HeadFields::read`]. The answer is 400 and the
/// connection closes.
pub fn check_request_framing(f: &HeadFields) -> Result<(), &'static str> {
    if f.lengths > 1 {
        return Err("more than one Content-Length value");
    }
    if f.has_codings() && !f.only_chunked() {
        return Err("unsupported Transfer-Encoding (only a final chunked)");
    }
    if f.only_chunked() && f.length.is_some() {
        return Err("both Transfer-Encoding and Content-Length");
    }
    Ok(())
}

/// A message (a response, which may not be refused) carries both `Transfer-Encoding` and
/// `Content-Length`: it is read by its coding, and its connection is not reused afterwards.
pub fn is_ambiguous(f: &HeadFields) -> bool {
    f.has_codings() && f.length.is_some()
}

/// What becomes of an inbound `X-Forwarded-For` chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedFor {
    /// Every inbound value is kept, in order, joined into one field, and the peer appended (Go's
    /// `httputil.ReverseProxy`).
    Append,
    /// The inbound chain is dropped; the field names the peer alone (a proxy at the edge that
    /// trusts nothing in front of it).
    Replace,
}

/// How a proxy sets the forwarding fields of a request it passes on. The proxies of the
/// workspace differ in this policy, not in the mechanism: each states its policy as a value and
/// the outbound head is written by [`ForwardedPolicy::write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardedPolicy {
    /// `X-Forwarded-For`.
    pub for_chain: ForwardedFor,
    /// `X-Forwarded-Host` is set to the request's `Host` (empty without one); an inbound value
    /// is dropped.
    pub host: bool,
    /// `X-Forwarded-Proto` is set to this; an inbound value is dropped.
    pub proto: Option<&'static str>,
    /// An inbound `Forwarded` (RFC 7239) is dropped: its claims would contradict the fields above.
    pub drop_forwarded: bool,
}

impl ForwardedPolicy {
    /// Go's `httputil.ReverseProxy` with `SetXForwarded` over plain HTTP (the cwproxy sidecar).
    pub const GO_REVERSE_PROXY: Self = Self {
        for_chain: ForwardedFor::Append,
        host: true,
        proto: Some("http"),
        drop_forwarded: true,
    };

    /// Whether an inbound field is replaced by this policy (not copied as it came).
    pub fn rewrites(&self, name: &[u8]) -> bool {
        name.eq_ignore_ascii_case(b"x-forwarded-for")
            || (self.host && name.eq_ignore_ascii_case(b"x-forwarded-host"))
            || (self.proto.is_some() && name.eq_ignore_ascii_case(b"x-forwarded-proto"))
            || (self.drop_forwarded && name.eq_ignore_ascii_case(b"forwarded"))
    }

    /// Writes the forwarding fields: `prior_for` are the inbound `X-Forwarded-For` values, `peer`
    /// the client's address as text, `host` the request's `Host`.
    pub fn write<'a>(
        &self,
        out: &mut BytesMut,
        prior_for: impl IntoIterator<Item = &'a [u8]>,
        peer: &[u8],
        host: Option<&[u8]>,
    ) {
        out.extend_from_slice(b"x-forwarded-for: ");
        if self.for_chain == ForwardedFor::Append {
            for v in prior_for {
                out.extend_from_slice(v);
                out.extend_from_slice(b", ");
            }
        }
        out.extend_from_slice(peer);
        out.extend_from_slice(b"\r\n");
        if self.host {
            put_field(out, b"x-forwarded-host", host.unwrap_or_default());
        }
        if let Some(proto) = self.proto {
            put_field(out, b"x-forwarded-proto", proto.as_bytes());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn read(fields: &[(&str, &str)]) -> HeadFields {
        HeadFields::read(
            fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
            |_, _| {},
        )
        .unwrap()
    }

    #[test]
    fn hop_by_hop_names_in_any_case() {
        for n in HOP_BY_HOP {
            assert!(is_hop_by_hop_name(n.to_uppercase().as_bytes()));
            assert!(is_hop_by_hop_name(n.as_bytes()));
        }
        assert!(!is_hop_by_hop_name(b"content-length"));
        assert!(!is_hop_by_hop_name(b"te2"));
    }

    #[test]
    fn smuggling_shapes_are_refused_and_plain_framing_passes() {
        let ok = |f: &[(&str, &str)]| check_request_framing(&read(f));
        assert_eq!(ok(&[("content-length", "3")]), Ok(()));
        assert_eq!(ok(&[("transfer-encoding", "chunked")]), Ok(()));
        assert!(ok(&[("transfer-encoding", "chunked"), ("content-length", "3")]).is_err());
        assert!(ok(&[("transfer-encoding", "gzip, chunked")]).is_err());
        assert!(ok(&[("content-length", "3, 3")]).is_err());
        assert!(ok(&[("content-length", "3"), ("content-length", "3")]).is_err());
        assert!(ok(&[("transfer-encoding", "chunked, identity")]).is_err());
        assert!(ok(&[
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked")
        ])
        .is_err());
        let te_cl = read(&[("transfer-encoding", "chunked"), ("content-length", "3")]);
        assert!(is_ambiguous(&te_cl));
        assert!(is_dropped(b"Content-Length", &te_cl, &[]));
        assert!(!is_dropped(
            b"content-length",
            &read(&[("content-length", "3")]),
            &[]
        ));
        assert!(is_dropped(b"X-A", &read(&[]), &[b"x-a"]));
    }

    #[test]
    fn forwarded_policy_appends_the_chain_and_owns_its_fields() {
        let p = ForwardedPolicy::GO_REVERSE_PROXY;
        let mut out = BytesMut::new();
        p.write(
            &mut out,
            [&b"198.51.100.10"[..], b"10.0.0.1, 10.0.0.2"],
            b"203.0.113.9",
            Some(b"svc"),
        );
        assert_eq!(
            &out[..],
            b"x-forwarded-for: 198.51.100.10, 10.0.0.1, 10.0.0.2, 203.0.113.9\r\n\
x-forwarded-host: svc\r\nx-forwarded-proto: http\r\n"
        );
        for n in [
            "X-Forwarded-For",
            "x-forwarded-host",
            "X-FORWARDED-PROTO",
            "forwarded",
        ] {
            assert!(p.rewrites(n.as_bytes()), "{n}");
        }
        assert!(!p.rewrites(b"x-real-ip"));
        let edge = ForwardedPolicy {
            for_chain: ForwardedFor::Replace,
            host: false,
            proto: None,
            drop_forwarded: false,
        };
        let mut out = BytesMut::new();
        edge.write(&mut out, [&b"1.2.3.4"[..]], b"::1", None);
        assert_eq!(&out[..], b"x-forwarded-for: ::1\r\n");
        assert!(!edge.rewrites(b"forwarded"));
    }
}
