//! One request head on the callers' port, from bytes to a tunnel stream: parsed by httparse,
//! its framing checked (the RFC 9112 §6.3 smuggling shapes are refused with 400), routed by
//! Host, its proxy token checked, and its fields, less what must not reach the agent, encoded
//! straight into the chosen agent session's outgoing buffer. What comes out is either a local
//! answer or an open stream ([`Step`]).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use http::StatusCode;
use tracing::debug;

use super::local::{refused_bad, Refused};
use super::log::LogCtx;
use crate::auth::{bearer_token, presented_token, trusted_proxy, Credentials};
use crate::host;
use crate::http_util;
use crate::mux::{RecvHalf, SendHalf};
use crate::protocol;
use crate::router::Session;
use crate::server::state::Server;
use crate::stats::{Probe, RouteStats};
use http1::head::{pairs, parse_request as parse_head, HeadError};
use http1::{rules, HeadFields};

/// Largest request head accepted: the tunnel protocol's head list limit
/// ([`crate::protocol::MAX_HEADER_LIST`], 256 KiB), which older agents also enforce.
pub const MAX_REQUEST_HEAD: usize = crate::protocol::MAX_HEADER_LIST as usize;
/// Most header fields accepted in a request head: no count limit below the byte limit (as the
/// cwproxy sidecar and Go's servers), so the workspace's binaries answer the same heads alike.
pub const MAX_REQUEST_HEADERS: usize = usize::MAX;

/// How a request's body follows its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyKind {
    None,
    Length(u64),
    Chunked,
}

/// What the server needs from a request head's fields besides routing, read in one pass.
#[derive(Debug)]
pub(super) struct Framing {
    fields: HeadFields,
    expect_continue: bool,
    /// `Authorization` carries a bearer token.
    bearer: bool,
    /// An `auth-token` field is present (then it is the proxy token, and a bearer
    /// `Authorization` is the backend's).
    legacy_token: bool,
}

impl Framing {
    pub(super) fn read(fields: &[httparse::Header<'_>]) -> Result<Self, Refused> {
        let bad = |msg| Refused {
            status: StatusCode::BAD_REQUEST,
            msg,
        };
        let (mut expect_continue, mut bearer, mut legacy_token) = (false, false, false);
        let f = HeadFields::read(pairs(fields), |name, value| {
            if name.eq_ignore_ascii_case(b"expect") {
                expect_continue = value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
            } else if name.eq_ignore_ascii_case(b"authorization") {
                bearer = bearer_token(value).is_some();
            } else if name.eq_ignore_ascii_case(protocol::AUTH_TOKEN_HEADER.as_str().as_bytes()) {
                legacy_token = true;
            }
        })
        .map_err(bad)?;
        rules::check_request_framing(&f).map_err(bad)?;
        Ok(Self {
            fields: f,
            expect_continue,
            bearer,
            legacy_token,
        })
    }

    pub(super) fn body(&self) -> BodyKind {
        match self.fields.length {
            _ if self.fields.only_chunked() => BodyKind::Chunked,
            None | Some(0) => BodyKind::None,
            Some(n) => BodyKind::Length(n),
        }
    }
}

/// What to do with one parsed request (owned: the read buffer is free again).
pub(super) enum Step {
    /// Answer locally with these bytes (a complete response).
    Answer {
        bytes: BytesMut,
        /// Bytes of unread request body to skip before the next request (when kept alive).
        skip: usize,
        keep_alive: bool,
    },
    /// The request went into a tunnel stream.
    Forward(Box<Forward>),
}

impl Step {
    /// The answer to a head refused before it is routed: Proxyview's 404 page in legacy mode,
    /// and the connection closes.
    fn refused(legacy: bool, r: &Refused, http10: bool) -> Self {
        Step::Answer {
            bytes: super::local::local(legacy, r.status, r.msg, true, http10),
            skip: 0,
            keep_alive: false,
        }
    }
}

/// A request on its way through the tunnel.
pub(super) struct Forward {
    pub(super) send: SendHalf,
    pub(super) recv: RecvHalf,
    pub(super) session: Arc<Session>,
    pub(super) body: BodyKind,
    pub(super) keep_alive: bool,
    pub(super) http10: bool,
    pub(super) expect_continue: bool,
    pub(super) head_method: bool,
    pub(super) upgrade: Option<String>,
    pub(super) log: Option<LogCtx>,
    pub(super) probe: Probe,
}

/// Parses a request head at the start of `buf` and hands it to `f`: `None` until complete.
/// Most heads have a handful of fields, so a small table is tried first and only a head that
/// overflows it is parsed again with the full one.
pub(super) fn parse_request<T>(
    buf: &[u8],
    f: impl FnOnce(&httparse::Request<'_, '_>, usize) -> T,
) -> Result<Option<T>, Refused> {
    parse_head(buf, MAX_REQUEST_HEADERS, f).map_err(|e| match e {
        HeadError::TooManyFields => Refused {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            msg: "more than 100 header fields",
        },
        HeadError::Malformed => refused_bad(),
    })
}

impl Server {
    /// Routes and checks one request and opens its tunnel stream, or says what to answer.
    /// `buffered`: bytes read past the head (the start of the body, or of the next request).
    pub(super) fn prepare(
        &self,
        req: &httparse::Request<'_, '_>,
        peer: SocketAddr,
        peer_ip: &str,
        buffered: usize,
        tls: bool,
    ) -> Step {
        let method = req.method.unwrap_or("GET");
        let target = req.path.unwrap_or("/");
        let http10 = req.version == Some(0);
        let fields: &[httparse::Header<'_>] = req.headers;
        let framing = match Framing::read(fields) {
            Ok(f) => f,
            Err(r) => return Step::refused(self.cfg.legacy_errors, &r, http10),
        };
        let keep_alive = !framing.fields.close && (!http10 || framing.fields.keep_alive);
        let body = framing.body();
        // After a local answer the connection can carry another request only if the body of
        // this one is already here to skip; otherwise the answer says it closes.
        let (answer_keep, skip) = match body {
            BodyKind::None => (keep_alive, 0),
            BodyKind::Length(n) if n <= buffered as u64 => (keep_alive, n as usize),
            BodyKind::Length(_) | BodyKind::Chunked => (false, 0),
        };
        // Which fields hold the caller's proxy token: kept from both the log and the agent.
        // A bearer is ours only when it is what `presented_token` reads: no `auth-token`.
        let credential = self.cfg.external_token.is_some().then_some(Credentials {
            bearer: self.cfg.external_bearer && framing.bearer && !framing.legacy_token,
        });
        let mut log = self
            .sink
            .as_ref()
            .map(|sink| LogCtx::new(sink.clone(), method, target, fields, credential, tls));
        let answer = |log: Option<LogCtx>, status: StatusCode, msg: &str| Step::Answer {
            bytes: self.fail(log, status, msg, !answer_keep, http10),
            skip,
            keep_alive: answer_keep,
        };
        if target.bytes().any(|c| !(0x21..0x7f).contains(&c)) {
            return answer(
                log,
                StatusCode::BAD_REQUEST,
                "request target is not visible ASCII",
            );
        }
        // Route name and the path sent on: absolute-form targets carry the authority.
        let hosts = fields
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("host"))
            .map(|h| h.value);
        let routed = match host::route(target, hosts) {
            Ok(r) => r,
            Err(e) => return answer(log, StatusCode::BAD_REQUEST, &e.to_string()),
        };
        if !self.token_accepted(fields) {
            return Step::Answer {
                bytes: self.fail_unauthorized(log, !answer_keep, http10),
                skip,
                keep_alive: answer_keep,
            };
        }
        let host = routed.host;
        let (candidates, stats) = self.candidates(&host);
        let Some(stats) = stats else {
            return answer(
                log,
                StatusCode::NOT_FOUND,
                &format!("no agent serves host {host:?}"),
            );
        };
        let probe = Probe::start(stats);
        if let Some(l) = log.as_mut() {
            l.endpoint = Some(host.clone());
        }
        let upgrade = upgrade_protocol(&framing, fields);
        let drop_forwarded = !trusted_proxy(self.cfg.trusted_proxies.as_ref(), peer.ip());
        let to_agent = AgentHead {
            method,
            path: routed.path,
            fields,
            named: framing.fields.named(pairs(fields)),
            credential,
            drop_forwarded,
            https: tls && (drop_forwarded || !has_field(fields, "x-forwarded-proto")),
            route: &host,
            peer_ip,
            original_host: routed.authority,
            upgrade: upgrade.as_deref().unwrap_or_default(),
        };
        // An upgrade request's body is the pipe that follows the 101, never a request body.
        let body = upgrade.as_ref().map_or(body, |_| BodyKind::None);
        let end = upgrade.is_none() && body == BodyKind::None;
        let Some((send, recv, session)) =
            self.open_stream(candidates, end, upgrade.is_some(), &to_agent)
        else {
            probe.answered(502);
            return answer(
                log,
                StatusCode::BAD_GATEWAY,
                &format!("no live agent session for host {host:?}"),
            );
        };
        let log = log.map(|l| l.served_by(&session));
        Step::Forward(Box::new(Forward {
            send,
            recv,
            session,
            body,
            keep_alive,
            http10,
            expect_continue: framing.expect_continue && !http10,
            head_method: method == "HEAD",
            upgrade,
            log,
            probe,
        }))
    }

    /// Whether the request presents the external port's proxy token (always, when none is set).
    fn token_accepted(&self, fields: &[httparse::Header<'_>]) -> bool {
        let Some(token) = &self.cfg.external_token else {
            return true;
        };
        let presented = presented_token(
            || pairs(fields),
            protocol::AUTH_TOKEN_HEADER.as_str(),
            self.cfg.external_bearer,
        );
        presented.is_some_and(|t| token.matches(t))
    }

    /// The agent sessions serving `host`, next first, and the route's figures; `None` figures
    /// when no agent serves it.
    fn candidates(&self, host: &str) -> (Vec<Arc<Session>>, Option<Arc<RouteStats>>) {
        let (candidates, stats) = self.router.candidates(host);
        // Cluster hook: a route no local agent serves may be served by another node.
        match (&self.cluster, stats) {
            (Some(c), None) => c.candidates(host),
            (_, stats) => (candidates, stats),
        }
    }

    /// Opens a stream on the first live session among `candidates`, its head encoded straight
    /// into that session's outgoing buffer (again if that session turns out dead and the next
    /// one is tried); a dead session is dropped on the way.
    fn open_stream(
        &self,
        candidates: Vec<Arc<Session>>,
        end: bool,
        upgrade: bool,
        head: &AgentHead<'_, '_>,
    ) -> Option<(SendHalf, RecvHalf, Arc<Session>)> {
        for s in candidates {
            let Some(tunnel) = s.sender.get() else {
                continue;
            };
            match tunnel.open_with(end, upgrade, |out| head.encode_into(out)) {
                Ok((send, recv)) => return Some((send, recv, s)),
                Err(e) => {
                    // Nothing reached the agent: drop the dead session, try the next one.
                    debug!(session = s.id, error = %e, "session not usable, failing over");
                    self.drop_session(s.id);
                }
            }
        }
        None
    }
}

/// Whether the head has a field `name` (any case).
fn has_field(fields: &[httparse::Header<'_>], name: &str) -> bool {
    fields.iter().any(|h| h.name.eq_ignore_ascii_case(name))
}

/// The protocol an upgrade request asks for (`Upgrade:`), when its `Connection` asks for one.
fn upgrade_protocol(framing: &Framing, fields: &[httparse::Header<'_>]) -> Option<String> {
    if !framing.fields.upgrade {
        return None;
    }
    fields
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("upgrade"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
}

/// The request head as the agent gets it: the caller's fields minus what must not reach the
/// agent, then the tunnel metadata.
struct AgentHead<'h, 'b> {
    method: &'h str,
    path: &'h str,
    fields: &'h [httparse::Header<'b>],
    /// Fields the caller's `Connection` names (hop-by-hop for this request).
    named: Vec<&'h [u8]>,
    credential: Option<Credentials>,
    /// The peer is no trusted proxy: its X-Forwarded fields are dropped.
    drop_forwarded: bool,
    /// Over TLS the agent must say https; a trusted proxy's own X-Forwarded-Proto is kept.
    https: bool,
    route: &'h str,
    peer_ip: &'h str,
    original_host: &'h str,
    upgrade: &'h str,
}

impl AgentHead<'_, '_> {
    /// Whether a caller's field goes on to the agent.
    fn keep(&self, n: &[u8]) -> bool {
        let dropped = n.eq_ignore_ascii_case(b"host")
            || http_util::is_internal_name(n)
            || rules::is_hop_by_hop_name(n)
            || self.named.iter().any(|t| t.eq_ignore_ascii_case(n))
            || self.credential.is_some_and(|c| c.matches_name(n))
            || (self.drop_forwarded
                && (n.eq_ignore_ascii_case(b"x-forwarded-for")
                    || n.eq_ignore_ascii_case(b"x-forwarded-host")
                    || n.eq_ignore_ascii_case(b"x-forwarded-proto")
                    || n.eq_ignore_ascii_case(b"forwarded")));
        !dropped
    }

    fn encode_into(&self, out: &mut BytesMut) {
        let meta = [
            ("x-forwarded-proto", if self.https { "https" } else { "" }),
            (protocol::ROUTE_FIELD, self.route),
            (protocol::PEER_FIELD, self.peer_ip),
            (protocol::HOST_FIELD, self.original_host),
            (protocol::UPGRADE_FIELD, self.upgrade),
        ];
        protocol::encode_request_head_into(
            out,
            self.method,
            self.path,
            self.fields
                .iter()
                .filter(|h| self.keep(h.name.as_bytes()))
                .map(|h| (h.name.as_bytes(), h.value))
                .chain(
                    meta.iter()
                        .filter(|(_, v)| !v.is_empty())
                        .map(|(n, v)| (n.as_bytes(), v.as_bytes())),
                ),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn with_fields<T>(head: &str, f: impl FnOnce(&[httparse::Header<'_>]) -> T) -> T {
        let mut few = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut few);
        assert!(req.parse(head.as_bytes()).unwrap().is_complete(), "{head}");
        f(req.headers)
    }

    #[test]
    fn the_callers_token_is_found_and_a_bearer_marks_authorization_as_ours() {
        let head = "GET / HTTP/1.1\r\nauth-token: legacy\r\nAuthorization: Bearer  tok \r\n\r\n";
        with_fields(head, |f| {
            assert_eq!(
                presented_token(|| pairs(f), "auth-token", true),
                Some(&b"legacy"[..])
            );
            let fr = Framing::read(f).ok().unwrap();
            assert!(fr.bearer && fr.legacy_token);
        });
        let head = "GET / HTTP/1.1\r\nAuthorization: Bearer  tok \r\n\r\n";
        with_fields(head, |f| {
            assert_eq!(
                presented_token(|| pairs(f), "auth-token", true),
                Some(&b"tok"[..])
            );
            let fr = Framing::read(f).ok().unwrap();
            assert!(fr.bearer && !fr.legacy_token);
        });
        let head = "GET / HTTP/1.1\r\nAUTH-TOKEN: legacy\r\nAuthorization: Basic abc\r\n\r\n";
        with_fields(head, |f| {
            assert_eq!(
                presented_token(|| pairs(f), "auth-token", true),
                Some(&b"legacy"[..])
            );
            assert!(!Framing::read(f).ok().unwrap().bearer);
        });
    }

    #[test]
    fn ambiguous_request_framing_is_refused() {
        let status = |fields: &str| {
            let head = format!("POST / HTTP/1.1\r\n{fields}\r\n");
            with_fields(&head, |f| {
                Framing::read(f).map(|f| f.body()).map_err(|r| r.msg)
            })
        };
        assert_eq!(status("content-length: 5\r\n"), Ok(BodyKind::Length(5)));
        // An agreeing list is refused too: the backend might not merge it (http1::rules).
        assert_eq!(
            status("content-length: 5, 5\r\n"),
            Err("more than one Content-Length value")
        );
        assert_eq!(status("content-length: 0\r\n"), Ok(BodyKind::None));
        assert_eq!(
            status("transfer-encoding: chunked\r\n"),
            Ok(BodyKind::Chunked)
        );
        assert_eq!(status(""), Ok(BodyKind::None));
        for bad in [
            "content-length: 5\r\ncontent-length: 6\r\n",
            "content-length: -1\r\n",
            "content-length: 5\r\ntransfer-encoding: chunked\r\n",
            "transfer-encoding: gzip\r\n",
            "transfer-encoding: chunked, gzip\r\n",
            "transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n",
        ] {
            assert!(status(bad).is_err(), "{bad}");
        }
    }
}
