//! What a proxy owns in a message, in one place: the hop-by-hop fields it removes, the fields a
//! message's `Connection` names, and the framing shapes it refuses because two parsers could
//! read them differently (request smuggling, RFC 9112 §6.3, §11.2).

use crate::head::HeadFields;

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
}
