//! The request handler: rewrite, (retry,) forward, stream back, report the exchange.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use telemetry::diag::Diag;
use telemetry::Capture;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::{BoxError, ProxyBody, TeeBody, UpstreamBody};
use crate::config::{ConfigError, ProxyConfig};
use crate::exchange::{Draft, ExchangeSink, Finish, SharedCapture, STATUS_CLIENT_CLOSED};
use crate::headers;
use crate::retry::RetryPolicy;

/// Body of the 502 sent when the upstream cannot be reached (Go `http.Error` adds the newline).
pub const BAD_GATEWAY_BODY: &str = "Bad Gateway\n";
/// Body of the 500 sent when the handler panics.
pub const INTERNAL_ERROR_BODY: &str = "Internal Server Error\n";
/// Body of the 400 sent for requests rejected before forwarding.
pub const BAD_REQUEST_BODY: &str = "Bad Request\n";
/// `X-Content-Type-Options`.
const X_CONTENT_TYPE_OPTIONS: header::HeaderName = header::X_CONTENT_TYPE_OPTIONS;

/// The client side of one connection, prepared once per connection.
#[derive(Debug, Clone)]
pub struct Peer {
    addr: SocketAddr,
    ip_value: HeaderValue,
}

impl Peer {
    /// The TCP peer `addr` of a client connection.
    pub fn new(addr: SocketAddr) -> Self {
        Peer {
            addr,
            ip_value: headers::peer_ip_value(addr.ip()),
        }
    }

    /// The peer address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The reverse proxy: a pooled upstream client plus everything one exchange needs.
///
/// `B` is the inbound request body; servers use hyper's `Incoming`, benchmarks an in-memory body.
pub struct Proxy<B = hyper::body::Incoming> {
    pub(crate) shared: Arc<Shared<B>>,
}

impl<B> Clone for Proxy<B> {
    fn clone(&self) -> Self {
        Proxy {
            shared: Arc::clone(&self.shared),
        }
    }
}

pub(crate) struct Shared<B> {
    client: Client<HttpConnector, UpstreamBody<B>>,
    authority: Authority,
    retry: RetryPolicy,
    sink: Arc<dyn ExchangeSink>,
    pub(crate) config: ProxyConfig,
    tunnels: TaskTracker,
    pub(crate) close_tunnels: CancellationToken,
}

/// Why the inbound body could not be read before forwarding.
enum BodyFailure {
    ClientGone,
    Malformed,
}

fn classify(e: &BoxError) -> BodyFailure {
    match e.downcast_ref::<hyper::Error>() {
        Some(h) => classify_hyper(h),
        None => BodyFailure::Malformed,
    }
}

fn classify_hyper(h: &hyper::Error) -> BodyFailure {
    if h.is_incomplete_message() || h.is_canceled() || h.is_closed() {
        return BodyFailure::ClientGone;
    }
    // A connection that ends inside a chunked body surfaces as an I/O error of the body decoder.
    let mut source = std::error::Error::source(h);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
            ) {
                return BodyFailure::ClientGone;
            }
        }
        source = err.source();
    }
    BodyFailure::Malformed
}

/// Whether a forwarding error was caused by the inbound request body (client gone or bad
/// framing mid-stream) rather than by the upstream: hyper wraps body errors as a "user" error
/// whose cause is the inbound body's own error.
fn inbound_failure(e: &(dyn std::error::Error + 'static)) -> Option<BodyFailure> {
    let mut current = Some(e);
    let mut user_body = false;
    while let Some(err) = current {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if user_body {
                return Some(classify_hyper(h));
            }
            user_body = h.is_user() && std::error::Error::source(h).is_some();
        } else if user_body {
            return Some(BodyFailure::Malformed);
        }
        current = err.source();
    }
    None
}

/// A buffered request body and its trailers, sent again on every retry.
type Replay = (Option<Bytes>, Option<HeaderMap>);

/// Result of trying to buffer a body for replay.
enum Buffered<B> {
    /// The whole body (and trailers) fit: replayable.
    Complete(Option<Bytes>, Option<HeaderMap>),
    /// Larger than the buffer: the bytes read so far go in front of the rest of the stream.
    Partial(Bytes, TeeBody<B>),
}

fn concat(first: &mut Option<Bytes>, more: &mut Option<BytesMut>, data: Bytes) {
    match (first.as_ref(), more.as_mut()) {
        (None, _) => *first = Some(data),
        (Some(f), None) => {
            let mut m = BytesMut::with_capacity(f.len() + data.len());
            m.extend_from_slice(f);
            m.extend_from_slice(&data);
            *more = Some(m);
        }
        (Some(_), Some(m)) => m.extend_from_slice(&data),
    }
}

fn joined(first: Option<Bytes>, more: Option<BytesMut>) -> Option<Bytes> {
    match more {
        Some(m) => Some(m.freeze()),
        None => first,
    }
}

/// Full error text including sources, e.g. `client error (Connect): tcp connect error: ...`.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.ends_with(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Reports an exchange with 499 if the handler future is dropped (client went away) before it
/// handed the draft on.
struct Pending<'a> {
    draft: Option<Draft>,
    sink: &'a Arc<dyn ExchangeSink>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(d) = self.draft.take() {
            self.sink
                .exchange(d.into_exchange(STATUS_CLIENT_CLOSED, HeaderMap::new(), None, 0));
        }
    }
}

impl<B> Proxy<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// Builds the proxy and its upstream connection pool. Needs no runtime until used.
    pub fn new(config: ProxyConfig, sink: Arc<dyn ExchangeSink>) -> Result<Self, ConfigError> {
        let authority = config.validate()?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_keepalive(Some(config.tcp_keepalive));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle)
            .build(connector);
        let retry = config.retry.clone().normalized();
        Ok(Proxy {
            shared: Arc::new(Shared {
                client,
                authority,
                retry,
                sink,
                config,
                tunnels: TaskTracker::new(),
                close_tunnels: CancellationToken::new(),
            }),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &ProxyConfig {
        &self.shared.config
    }

    /// Proxies one request from `peer`. Never fails: errors become 502/500/400 responses, and
    /// every exchange reaches the sink exactly once (when the response body ends or is dropped).
    pub async fn handle(&self, req: Request<B>, peer: &Peer) -> Response<ProxyBody> {
        let mut pending = Pending {
            draft: None,
            sink: &self.shared.sink,
        };
        let result = AssertUnwindSafe(self.handle_inner(req, peer, &mut pending.draft))
            .catch_unwind()
            .await;
        match result {
            Ok(resp) => resp,
            Err(payload) => {
                let msg = panic_text(payload.as_ref());
                self.shared
                    .config
                    .logger
                    .log(format_args!("reverse proxy panic recovered: {msg}"));
                self.local(
                    &mut pending.draft,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    INTERNAL_ERROR_BODY,
                    false,
                )
            }
        }
    }

    fn logger(&self) -> &Diag {
        &self.shared.config.logger
    }

    /// A locally produced plain-text response; reports the exchange now (the body is in memory).
    fn local(
        &self,
        slot: &mut Option<Draft>,
        status: StatusCode,
        text: &'static str,
        close: bool,
    ) -> Response<ProxyBody> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        if let Some(d) = slot.take() {
            let bytes = text.len() as u64;
            self.shared.sink.exchange(d.into_exchange(
                status.as_u16(),
                headers.clone(),
                None,
                bytes,
            ));
        }
        if close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let mut resp = Response::new(ProxyBody::local(Some(Bytes::from_static(text.as_bytes()))));
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        resp
    }

    fn bad_gateway(&self, slot: &mut Option<Draft>, err: &str) -> Response<ProxyBody> {
        self.logger()
            .log(format_args!("reverse proxy upstream error: {err}"));
        self.local(slot, StatusCode::BAD_GATEWAY, BAD_GATEWAY_BODY, false)
    }

    fn body_failure(&self, slot: &mut Option<Draft>, e: &BoxError) -> Response<ProxyBody> {
        self.body_failure_kind(slot, classify(e))
    }

    fn body_failure_kind(
        &self,
        slot: &mut Option<Draft>,
        failure: BodyFailure,
    ) -> Response<ProxyBody> {
        match failure {
            BodyFailure::ClientGone => {
                if let Some(d) = slot.take() {
                    self.shared.sink.exchange(d.into_exchange(
                        STATUS_CLIENT_CLOSED,
                        HeaderMap::new(),
                        None,
                        0,
                    ));
                }
                self.local(slot, StatusCode::BAD_REQUEST, BAD_REQUEST_BODY, true)
            }
            BodyFailure::Malformed => {
                self.local(slot, StatusCode::BAD_REQUEST, BAD_REQUEST_BODY, true)
            }
        }
    }

    async fn buffer(&self, mut tee: TeeBody<B>, limit: usize) -> Result<Buffered<B>, BoxError> {
        let mut first: Option<Bytes> = None;
        let mut more: Option<BytesMut> = None;
        let mut total = 0usize;
        loop {
            match tee.next_frame().await {
                None => return Ok(Buffered::Complete(joined(first, more), None)),
                Some(Err(e)) => return Err(e),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        total = total.saturating_add(data.len());
                        concat(&mut first, &mut more, data);
                        if total > limit {
                            let prefix = joined(first, more).unwrap_or_default();
                            return Ok(Buffered::Partial(prefix, tee));
                        }
                    }
                    Err(frame) => {
                        let trailers = frame.into_trailers().ok();
                        return Ok(Buffered::Complete(joined(first, more), trailers));
                    }
                },
            }
        }
    }

    async fn handle_inner(
        &self,
        mut req: Request<B>,
        peer: &Peer,
        slot: &mut Option<Draft>,
    ) -> Response<ProxyBody> {
        let s = &*self.shared;
        let start = SystemTime::now();
        let started = Instant::now();
        let upgrade = headers::upgrade_type(req.headers());
        let is_connect = req.method() == Method::CONNECT;
        let client_upgrade: Option<OnUpgrade> =
            (upgrade.is_some() || is_connect).then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let capture: Option<SharedCapture> = (!body.is_end_stream())
            .then(|| Arc::new(Mutex::new(Capture::new(s.config.capture_limit))));
        *slot = Some(Draft {
            start,
            started,
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            request_headers: parts.headers.clone(),
            request_capture: capture.clone(),
            capture_limit: s.config.capture_limit,
        });

        #[cfg(test)]
        if parts.headers.contains_key("x-test-panic") {
            panic!("test panic requested");
        }

        if let Some(up) = &upgrade {
            if !headers::is_printable(up) {
                // Go: "client tried to switch to invalid protocol".
                return self.local(slot, StatusCode::BAD_REQUEST, BAD_REQUEST_BODY, true);
            }
        }
        headers::rewrite_request(&mut parts.headers, upgrade.as_ref(), &peer.ip_value);

        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut uri_parts = http::uri::Parts::default();
        uri_parts.scheme = Some(Scheme::HTTP);
        uri_parts.authority = Some(s.authority.clone());
        uri_parts.path_and_query = Some(pq);
        let Ok(uri) = Uri::from_parts(uri_parts) else {
            return self.local(slot, StatusCode::BAD_REQUEST, BAD_REQUEST_BODY, true);
        };

        let tee = TeeBody {
            inner: body,
            capture,
        };
        let retry_eligible =
            s.retry.enabled() && upgrade.is_none() && s.retry.retries_method(&parts.method);
        let limit = s.retry.body_buffer_bytes;
        let declared_too_big = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > limit as u64);

        // (first body, replayable copy)
        let (first_body, replay): (UpstreamBody<B>, Option<Replay>) = if tee.inner.is_end_stream() {
            (UpstreamBody::Empty, retry_eligible.then_some((None, None)))
        } else if retry_eligible && limit > 0 && !declared_too_big {
            match self.buffer(tee, limit).await {
                Ok(Buffered::Complete(data, trailers)) => {
                    let body = if data.is_none() && trailers.is_none() {
                        UpstreamBody::Empty
                    } else {
                        UpstreamBody::Buffered {
                            data: data.clone(),
                            trailers: trailers.clone(),
                        }
                    };
                    (body, Some((data, trailers)))
                }
                Ok(Buffered::Partial(prefix, tee)) => (
                    UpstreamBody::Stream {
                        prefix: Some(prefix),
                        inner: tee,
                    },
                    None,
                ),
                Err(e) => return self.body_failure(slot, &e),
            }
        } else if upgrade.is_none() && !is_connect {
            // Read the first frame before the head goes upstream, so a body that is broken from
            // its first byte (bad chunk size) is rejected without the upstream seeing anything.
            let mut tee = tee;
            match tee.next_frame().await {
                None => (UpstreamBody::Empty, None),
                Some(Err(e)) => return self.body_failure(slot, &e),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => (
                        UpstreamBody::Stream {
                            prefix: Some(data),
                            inner: tee,
                        },
                        None,
                    ),
                    Err(frame) => (
                        UpstreamBody::Buffered {
                            data: None,
                            trailers: frame.into_trailers().ok(),
                        },
                        None,
                    ),
                },
            }
        } else {
            (
                UpstreamBody::Stream {
                    prefix: None,
                    inner: tee,
                },
                None,
            )
        };

        let max_attempts = if replay.is_some() {
            s.retry.max_attempts
        } else {
            1
        };
        let mut attempt = 1u32;
        let mut body = Some(first_body);
        let mut headers = Some(std::mem::take(&mut parts.headers));
        let resp = loop {
            let headers = headers.take().unwrap_or_else(|| {
                // Retries rebuild the outbound headers from the inbound copy kept for the log.
                let mut h = slot
                    .as_ref()
                    .map(|d| d.request_headers.clone())
                    .unwrap_or_default();
                headers::rewrite_request(&mut h, None, &peer.ip_value);
                h
            });
            let body = body.take().unwrap_or_else(|| match &replay {
                Some((None, None)) | None => UpstreamBody::Empty,
                Some((data, trailers)) => UpstreamBody::Buffered {
                    data: data.clone(),
                    trailers: trailers.clone(),
                },
            });
            let mut out = Request::new(body);
            *out.method_mut() = parts.method.clone();
            *out.uri_mut() = uri.clone();
            *out.version_mut() = Version::HTTP_11;
            *out.headers_mut() = headers;
            let more = attempt < max_attempts;
            match tokio::time::timeout(s.config.response_header_timeout, s.client.request(out))
                .await
            {
                Ok(Ok(resp)) => {
                    if more && s.retry.retries_status(resp.status().as_u16()) {
                        drop(resp);
                        tokio::time::sleep(s.retry.backoff(attempt)).await;
                        attempt += 1;
                        continue;
                    }
                    break resp;
                }
                Ok(Err(e)) => {
                    if let Some(failure) = inbound_failure(&e) {
                        return self.body_failure_kind(slot, failure);
                    }
                    if more && s.retry.retry_transport_errors {
                        tokio::time::sleep(s.retry.backoff(attempt)).await;
                        attempt += 1;
                        continue;
                    }
                    return self.bad_gateway(slot, &error_chain(&e));
                }
                Err(_) => return self.bad_gateway(slot, "timeout awaiting response headers"),
            }
        };
        self.respond(resp, upgrade, client_upgrade, is_connect, slot)
    }

    fn respond(
        &self,
        mut resp: Response<hyper::body::Incoming>,
        upgrade: Option<HeaderValue>,
        client_upgrade: Option<OnUpgrade>,
        is_connect: bool,
        slot: &mut Option<Draft>,
    ) -> Response<ProxyBody> {
        let status = resp.status();
        let tunnel = if status == StatusCode::SWITCHING_PROTOCOLS {
            let Some(asked) = &upgrade else {
                return self.bad_gateway(
                    slot,
                    "backend tried to switch protocol when none was requested",
                );
            };
            let offered = headers::upgrade_type(resp.headers());
            if !offered
                .as_ref()
                .is_some_and(|o| o.as_bytes().eq_ignore_ascii_case(asked.as_bytes()))
            {
                let msg = format!(
                    "backend tried to switch protocol {offered:?} when {asked:?} was requested"
                );
                return self.bad_gateway(slot, &msg);
            }
            true
        } else {
            is_connect && status.is_success()
        };
        if tunnel {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let (parts, _) = resp.into_parts();
            if let (Some(draft), Some(client_upgrade)) = (slot.take(), client_upgrade) {
                self.spawn_tunnel(
                    client_upgrade,
                    upstream_upgrade,
                    draft,
                    status.as_u16(),
                    parts.headers.clone(),
                );
            }
            return Response::from_parts(parts, ProxyBody::local(None));
        }
        headers::remove_hop_by_hop(resp.headers_mut());
        let (mut parts, body) = resp.into_parts();
        parts.version = Version::HTTP_11;
        let Some(draft) = slot.take() else {
            return Response::from_parts(parts, ProxyBody::local(None));
        };
        let finish = Finish {
            draft,
            status: status.as_u16(),
            response_headers: parts.headers.clone(),
            sink: Arc::clone(&self.shared.sink),
            logger: self.shared.config.logger.clone(),
        };
        let capture = Capture::new(self.shared.config.capture_limit);
        Response::from_parts(parts, ProxyBody::upstream(body, capture, finish))
    }

    fn spawn_tunnel(
        &self,
        client: OnUpgrade,
        upstream: OnUpgrade,
        draft: Draft,
        status: u16,
        headers: HeaderMap,
    ) {
        let sink = Arc::clone(&self.shared.sink);
        let logger = self.shared.config.logger.clone();
        let close = self.shared.close_tunnels.clone();
        let limit = self.shared.config.capture_limit;
        self.shared.tunnels.spawn(async move {
            let (client, upstream) = tokio::join!(client, upstream);
            match (client, upstream) {
                (Ok(client), Ok(upstream)) => {
                    sink.exchange(draft.into_exchange(
                        status,
                        headers,
                        Some(Capture::new(limit)),
                        0,
                    ));
                    let mut client = TokioIo::new(client);
                    let mut upstream = TokioIo::new(upstream);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                        _ = close.cancelled() => {}
                    }
                }
                (Err(_), _) => {
                    sink.exchange(draft.into_exchange(STATUS_CLIENT_CLOSED, headers, None, 0))
                }
                (Ok(_), Err(e)) => {
                    logger.log(format_args!(
                        "reverse proxy upstream error: {}",
                        error_chain(&e)
                    ));
                    sink.exchange(draft.into_exchange(502, headers, None, 0));
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::retry::RetryPolicy;
    use crate::Upstream;
    use std::sync::Mutex as StdMutex;
    use std::time::Duration;
    use telemetry::Exchange;

    /// Time a test may wait for a condition.
    const TEST_WAIT: Duration = Duration::from_secs(10);
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn ok_upstream() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut got = Vec::new();
                    loop {
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                        while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            got.drain(..end + 4);
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn panic_becomes_500_and_server_keeps_serving() {
        let up = ok_upstream().await;
        let seen: Arc<StdMutex<Vec<Exchange>>> = Arc::default();
        let logs: Arc<StdMutex<Vec<String>>> = Arc::default();
        let mut cfg = ProxyConfig::new(Upstream::Addr(up));
        cfg.retry = RetryPolicy::disabled();
        let l2 = logs.clone();
        cfg.logger = Diag::with_target(
            crate::LOG_PREFIX,
            Arc::new(move |line: &str| {
                let msg = line.split_once(": ").map_or(line, |(_, m)| m);
                l2.lock()
                    .unwrap()
                    .push(msg.trim_end_matches('\n').to_owned());
            }),
        );
        let s2 = seen.clone();
        let proxy =
            Proxy::new(cfg, Arc::new(move |e: Exchange| s2.lock().unwrap().push(e))).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            proxy
                .serve(listener, async {
                    let _ = rx.await;
                })
                .await
        });

        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(
            b"GET /boom HTTP/1.1\r\nHost: x\r\nX-Test-Panic: 1\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut out = String::new();
        tokio::time::timeout(TEST_WAIT, c.read_to_string(&mut out))
            .await
            .unwrap()
            .unwrap();
        assert!(out.starts_with("HTTP/1.1 500"), "{out}");
        assert!(out.ends_with("\r\n\r\nInternal Server Error\n"), "{out}");
        assert!(out
            .to_ascii_lowercase()
            .contains("content-type: text/plain; charset=utf-8"));

        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /fine HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tokio::time::timeout(TEST_WAIT, c.read_to_string(&mut out))
            .await
            .unwrap()
            .unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.ends_with("ok"), "{out}");

        tokio::time::sleep(Duration::from_millis(100)).await;
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].status, 500);
        assert_eq!(seen[0].uri.path(), "/boom");
        assert_eq!(
            seen[0].local_response_bytes,
            INTERNAL_ERROR_BODY.len() as u64
        );
        assert_eq!(seen[1].status, 200);
        assert!(logs
            .lock()
            .unwrap()
            .iter()
            .any(|l| l == "reverse proxy panic recovered: test panic requested"));
        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
