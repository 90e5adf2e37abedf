//! End-to-end behaviour of the proxy over loopback sockets with real upstreams.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn req(method: &str, uri: &str, body: TestBody) -> Request<TestBody> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "service.internal")
        .body(body)
        .unwrap()
}

#[tokio::test]
async fn forwarding_headers_are_exact() {
    let seen: Arc<Mutex<Option<HeaderMap>>> = Arc::default();
    let s2 = seen.clone();
    let (up, _) = upstream(move |r: Request<hyper::body::Incoming>| {
        let s2 = s2.clone();
        async move {
            *s2.lock().unwrap() = Some(r.headers().clone());
            Response::builder()
                .header("connection", "x-hop")
                .header("x-hop", "1")
                .header("keep-alive", "timeout=5")
                .header("set-cookie", "a=b")
                .body(full("hi"))
                .unwrap()
        }
    })
    .await;
    let h = Harness::start(config(up)).await;
    let raw_req = b"GET /api/foo?key=value HTTP/1.1\r\nHost: service.internal\r\nX-Forwarded-For: 198.51.100.10\r\n\
X-Forwarded-Host: evil\r\nX-Forwarded-Proto: https\r\nForwarded: for=1.1.1.1\r\nConnection: keep-alive, X-Drop\r\n\
X-Drop: secret\r\nTE: trailers\r\nProxy-Authorization: x\r\nAccept: */*\r\nConnection: close\r\n\r\n";
    let out = String::from_utf8(raw(h.addr, raw_req).await).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    let lower = out.to_ascii_lowercase();
    assert!(!lower.contains("x-hop"), "{out}");
    assert!(!lower.contains("keep-alive: timeout"), "{out}");
    assert!(lower.contains("set-cookie: a=b"), "{out}");

    let got = seen.lock().unwrap().clone().unwrap();
    assert_eq!(got["host"], "service.internal");
    assert_eq!(got["x-forwarded-for"], "198.51.100.10, 127.0.0.1");
    assert_eq!(got["x-forwarded-host"], "service.internal");
    assert_eq!(got["x-forwarded-proto"], "http");
    assert_eq!(got["te"], "trailers");
    assert_eq!(got["accept"], "*/*");
    for absent in ["forwarded", "x-drop", "proxy-authorization", "user-agent"] {
        assert!(
            !got.contains_key(absent),
            "{absent} reached the upstream: {got:?}"
        );
    }
    // Hop-by-hop `connection` is hyper's own framing header to the upstream, never the client's.
    assert_ne!(
        got.get("connection").map(|v| v.as_bytes()),
        Some(&b"keep-alive, X-Drop"[..])
    );

    let ex = h.exchanges(1).await;
    assert_eq!(ex.len(), 1);
    let e = &ex[0];
    assert_eq!(e.status, 200);
    assert_eq!(e.method, "GET");
    assert_eq!(e.uri.to_string(), "/api/foo?key=value");
    // Logged request headers are the inbound ones exactly.
    assert_eq!(e.request_headers["x-forwarded-host"], "evil");
    assert_eq!(e.request_headers["x-drop"], "secret");
    assert_eq!(e.response_headers["set-cookie"], "a=b");
    assert!(!e.response_headers.contains_key("x-hop"));
    assert_eq!(e.response_body.as_ref().unwrap().bytes(), b"hi");
    h.stop().await.unwrap();
}

#[tokio::test]
async fn ipv6_upstream_and_connection_reuse() {
    let (up, conns) = upstream_on("[::1]:0", |_r| async { Response::new(full("six")) }).await;
    let h = Harness::start(config(up)).await;
    for _ in 0..3 {
        let mut c = client(h.addr).await;
        let resp = c.send_request(req("GET", "/", full(""))).await.unwrap();
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "six");
    }
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "upstream connection not reused"
    );
    h.stop().await.unwrap();
}

#[tokio::test]
async fn capture_is_bounded_but_counts_everything() {
    let (up, _) = upstream(|r: Request<hyper::body::Incoming>| async move {
        let n = r.into_body().collect().await.unwrap().to_bytes().len();
        Response::builder()
            .header("content-type", "text/plain")
            .body(full(vec![b'r'; n * 2]))
            .unwrap()
    })
    .await;
    let mut cfg = config(up);
    cfg.capture_limit = 1024;
    let h = Harness::start(cfg).await;
    let mut c = client(h.addr).await;
    let resp = c
        .send_request(req("POST", "/up", full(vec![b'q'; 100_000])))
        .await
        .unwrap();
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes().len(),
        200_000
    );
    let ex = h.exchanges(1).await;
    let e = &ex[0];
    assert_eq!(e.request_body.total(), 100_000);
    assert_eq!(e.request_body.bytes().len(), 1024);
    assert!(e.request_body.truncated());
    let rb = e.response_body.as_ref().unwrap();
    assert_eq!(rb.total(), 200_000);
    assert_eq!(rb.bytes().len(), 1024);
    assert!(rb.truncated());
    h.stop().await.unwrap();
}

#[tokio::test]
async fn websocket_upgrade_echoes_through_the_proxy() {
    // A minimal upgrade upstream: answers 101 and echoes raw bytes.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let seen_head = Arc::new(Mutex::new(String::new()));
    let sh = seen_head.clone();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        *sh.lock().unwrap() = String::from_utf8(head).unwrap();
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n").await.unwrap();
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    let h = Harness::start(config(up)).await;
    let mut c = TcpStream::connect(h.addr).await.unwrap();
    c.write_all(b"GET /ws HTTP/1.1\r\nHost: service.internal\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(WAIT, c.read_exact(&mut b))
            .await
            .unwrap()
            .unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    for msg in [&b"\x81\x05hello"[..], b"second frame", &[0u8, 1, 2, 255]] {
        c.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(WAIT, c.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }
    let up_head = seen_head.lock().unwrap().to_ascii_lowercase();
    assert!(up_head.contains("connection: upgrade\r\n"), "{up_head}");
    assert!(up_head.contains("upgrade: websocket\r\n"), "{up_head}");
    assert!(
        up_head.contains("sec-websocket-key: dghlihnhbxbszsbub25jzq==\r\n"),
        "{up_head}"
    );
    let ex = h.exchanges(1).await;
    assert_eq!(ex.len(), 1, "upgrade logged once");
    assert_eq!(ex[0].status, 101);
    drop(c);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn sse_events_arrive_one_by_one() {
    let (go_tx, go_rx) = tokio::sync::mpsc::channel::<()>(1);
    let go_rx = Arc::new(tokio::sync::Mutex::new(go_rx));
    let (up, _) = upstream(move |_r| {
        let go_rx = go_rx.clone();
        async move {
            let stream = futures_util::stream::unfold(0u32, move |i| {
                let go_rx = go_rx.clone();
                async move {
                    if i == 3 {
                        return None;
                    }
                    if i > 0 {
                        // The next event is only produced after the client saw the previous one:
                        // a proxy that buffered would deadlock here.
                        go_rx.lock().await.recv().await?;
                    }
                    let ev = Bytes::from(format!("data: event {i}\n\n"));
                    Some((Ok::<_, BoxError>(Frame::data(ev)), i + 1))
                }
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap()
        }
    })
    .await;
    let h = Harness::start(config(up)).await;
    let mut c = client(h.addr).await;
    let resp = c
        .send_request(req("GET", "/events", full("")))
        .await
        .unwrap();
    let mut body = resp.into_body();
    for i in 0..3 {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), format!("data: event {i}\n\n"));
        let _ = go_tx.send(()).await;
    }
    assert!(body.frame().await.is_none());
    assert_eq!(h.exchanges(1).await[0].status, 200);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn trailers_are_forwarded() {
    let (up, _) = upstream(|_r| async {
        let frames = vec![
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"payload"))),
            Ok(Frame::trailers({
                let mut t = HeaderMap::new();
                t.insert("x-checksum", "abc".parse().unwrap());
                t
            })),
        ];
        Response::builder()
            .header("trailer", "x-checksum")
            .body(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
                frames,
            ))))
            .unwrap()
    })
    .await;
    let h = Harness::start(config(up)).await;
    let mut c = client(h.addr).await;
    let mut r = req("GET", "/t", full(""));
    r.headers_mut().insert("te", "trailers".parse().unwrap());
    let resp = c.send_request(r).await.unwrap();
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["x-checksum"], "abc");
    assert_eq!(collected.to_bytes(), "payload");
    h.stop().await.unwrap();
}

#[tokio::test]
async fn ten_megabytes_each_way_with_flat_memory() {
    const SIZE: usize = 10 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    fn chunks() -> TestBody {
        let s = futures_util::stream::iter(
            (0..SIZE / CHUNK)
                .map(|_| Ok::<_, BoxError>(Frame::data(Bytes::from(vec![b'z'; CHUNK])))),
        );
        BodyExt::boxed(StreamBody::new(s))
    }
    let (up, _) = upstream(|r: Request<hyper::body::Incoming>| async move {
        if r.method() == "POST" {
            let mut body = r.into_body();
            let mut n = 0usize;
            while let Some(f) = body.frame().await {
                n += f.unwrap().into_data().map(|d| d.len()).unwrap_or(0);
            }
            Response::new(full(n.to_string()))
        } else {
            Response::new(chunks())
        }
    })
    .await;
    let mut cfg = config(up);
    cfg.capture_limit = 4096;
    let h = Harness::start(cfg).await;
    // Warm up allocator arenas and pools so the measured delta is the transfer itself.
    let mut c = client(h.addr).await;
    let _ = c
        .send_request(req("GET", "/warm", full("")))
        .await
        .unwrap()
        .into_body()
        .collect()
        .await;
    let before = rss();
    let resp = c
        .send_request(req("POST", "/upload", chunks()))
        .await
        .unwrap();
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        SIZE.to_string()
    );
    let resp = c
        .send_request(req("GET", "/download", full("")))
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut n = 0;
    while let Some(f) = body.frame().await {
        n += f.unwrap().into_data().map(|d| d.len()).unwrap_or(0);
    }
    assert_eq!(n, SIZE);
    let grown = rss().saturating_sub(before);
    eprintln!("RSS growth moving 2 x 10 MB: {grown} bytes");
    assert!(
        grown < 6 * 1024 * 1024,
        "RSS grew by {grown} bytes moving 2 x 10 MB"
    );
    let ex = h.exchanges(3).await;
    let up_ex = &ex[1];
    assert_eq!(up_ex.request_body.total(), SIZE as u64);
    assert!(up_ex.request_body.bytes().len() <= 4096);
    let down = ex[2].response_body.as_ref().unwrap();
    assert_eq!(down.total(), SIZE as u64);
    assert_eq!(down.bytes().len(), 4096);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn upstream_down_gives_502_and_an_exchange() {
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let h = Harness::start(config(dead)).await;
    let out = String::from_utf8(
        raw(
            h.addr,
            b"GET /fail HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        )
        .await,
    )
    .unwrap();
    assert!(out.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{out}");
    let lower = out.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: text/plain; charset=utf-8\r\n"),
        "{out}"
    );
    assert!(
        lower.contains("x-content-type-options: nosniff\r\n"),
        "{out}"
    );
    assert!(lower.contains("content-length: 12\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\nBad Gateway\n"), "{out}");
    let ex = h.exchanges(1).await;
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].status, 502);
    assert!(ex[0].response_body.is_none());
    assert_eq!(ex[0].local_response_bytes, 12);
    assert_eq!(ex[0].response_headers["x-content-type-options"], "nosniff");
    let logs = h.logs();
    assert!(
        logs.iter()
            .any(|l| l.starts_with("reverse proxy upstream error: ") && l.contains("onnect")),
        "{logs:?}"
    );
    h.stop().await.unwrap();
}

/// Upstream answering with the statuses in `script` in turn (then 200), recording request bodies.
async fn scripted(script: Vec<u16>) -> (std::net::SocketAddr, Arc<Mutex<Vec<Bytes>>>) {
    let hits: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let h2 = hits.clone();
    let script = Arc::new(script);
    let (up, _) = upstream(move |r: Request<hyper::body::Incoming>| {
        let hits = h2.clone();
        let script = script.clone();
        async move {
            let body = r.into_body().collect().await.unwrap().to_bytes();
            let n = {
                let mut g = hits.lock().unwrap();
                g.push(body);
                g.len()
            };
            let status = script.get(n - 1).copied().unwrap_or(200);
            Response::builder()
                .status(status)
                .body(full(format!("attempt {n}")))
                .unwrap()
        }
    })
    .await;
    (up, hits)
}

#[tokio::test]
async fn retry_503_then_200_hits_twice_and_logs_the_final_response() {
    let (up, hits) = scripted(vec![503]).await;
    let mut cfg = config(up);
    cfg.retry = httpproxy::RetryPolicy::default();
    let h = Harness::start(cfg).await;
    let mut c = client(h.addr).await;
    let resp = c.send_request(req("GET", "/r", full(""))).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        "attempt 2"
    );
    assert_eq!(hits.lock().unwrap().len(), 2);
    let ex = h.exchanges(1).await;
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].status, 200);
    assert_eq!(ex[0].response_body.as_ref().unwrap().bytes(), b"attempt 2");
    h.stop().await.unwrap();
}

#[tokio::test]
async fn retry_replays_a_buffered_post_body_identically() {
    let (up, hits) = scripted(vec![503, 201]).await;
    let mut cfg = config(up);
    cfg.retry = httpproxy::RetryPolicy {
        methods: httpproxy::parse_methods("POST").unwrap(),
        body_buffer_bytes: 1024,
        ..Default::default()
    };
    let h = Harness::start(cfg).await;
    let mut c = client(h.addr).await;
    let resp = c
        .send_request(req("POST", "/p", full(r#"{"demo":true}"#)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let hits = hits.lock().unwrap().clone();
    assert_eq!(hits, vec![Bytes::from_static(br#"{"demo":true}"#); 2]);
    let ex = h.exchanges(1).await;
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].status, 201);
    // The body is captured once, not once per attempt.
    assert_eq!(ex[0].request_body.total(), 13);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn retry_skipped_when_body_exceeds_the_buffer() {
    let (up, hits) = scripted(vec![503]).await;
    let mut cfg = config(up);
    cfg.retry = httpproxy::RetryPolicy {
        methods: httpproxy::parse_methods("POST").unwrap(),
        body_buffer_bytes: 4,
        ..Default::default()
    };
    let h = Harness::start(cfg).await;
    let mut c = client(h.addr).await;
    // Streamed in two chunks with no Content-Length: the buffer overflows mid-stream and the read
    // prefix is stitched back in front of the rest.
    let s = futures_util::stream::iter(vec![
        Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"abc"))),
        Ok(Frame::data(Bytes::from_static(b"defgh"))),
    ]);
    let resp = c
        .send_request(req("POST", "/p", BodyExt::boxed(StreamBody::new(s))))
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(
        hits.lock().unwrap().clone(),
        vec![Bytes::from_static(b"abcdefgh")]
    );
    // Declared too big: not even buffered.
    let resp = c
        .send_request(req("POST", "/p", full("0123456789")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(hits.lock().unwrap().len(), 2);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn transport_errors_are_retried_only_when_enabled() {
    // First connection is closed without an answer, later ones get 200.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let a2 = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let n = a2.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                if n.is_multiple_of(2) {
                    return; // drop: connection closed before a response
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    let mut cfg = config(up);
    cfg.retry = httpproxy::RetryPolicy {
        retry_transport_errors: true,
        ..Default::default()
    };
    let h = Harness::start(cfg).await;
    let out = String::from_utf8(
        raw(
            h.addr,
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        )
        .await,
    )
    .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    h.stop().await.unwrap();

    let mut cfg = config(up);
    cfg.retry = httpproxy::RetryPolicy::default();
    let h = Harness::start(cfg).await;
    let out = String::from_utf8(
        raw(
            h.addr,
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        )
        .await,
    )
    .unwrap();
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn client_disconnect_is_logged_as_499() {
    // Mid-body: upstream streams slowly, the client leaves after the first chunk.
    let (up, _) = upstream(|r: Request<hyper::body::Incoming>| async move {
        if r.uri().path() == "/slow-head" {
            tokio::time::sleep(Duration::from_secs(3)).await;
            return Response::new(full("late"));
        }
        let s = futures_util::stream::unfold(0u32, |i| async move {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (i < 50).then(|| {
                (
                    Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"tick\n"))),
                    i + 1,
                )
            })
        });
        Response::new(BodyExt::boxed(StreamBody::new(s)))
    })
    .await;
    let h = Harness::start(config(up)).await;
    let mut c = TcpStream::connect(h.addr).await.unwrap();
    c.write_all(b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(WAIT, c.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(std::str::from_utf8(&buf[..n])
        .unwrap()
        .starts_with("HTTP/1.1 200"));
    drop(c);
    let ex = h.exchanges(1).await;
    assert_eq!(ex[0].status, 499);
    assert!(ex[0].response_body.as_ref().unwrap().total() < 50 * 5);

    // Before the response head: the client gives up while the upstream is still thinking.
    let mut c = TcpStream::connect(h.addr).await.unwrap();
    c.write_all(b"GET /slow-head HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(c);
    let ex = h.exchanges(2).await;
    assert_eq!(ex[1].status, 499);
    assert!(ex[1].response_body.is_none());
    h.stop().await.unwrap();
}

#[tokio::test]
async fn mid_stream_upstream_failure_aborts_the_client_connection() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                // Reset instead of the terminating chunk (linger 0 never blocks).
                #[allow(deprecated)]
                let _ = s.set_linger(Some(Duration::ZERO));
            });
        }
    });
    let h = Harness::start(config(up)).await;
    let out = raw(h.addr, b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.contains("hello"), "{out}");
    assert!(!out.ends_with("0\r\n\r\n"), "client saw a clean end: {out}");
    assert!(!out.contains("Internal Server Error"), "{out}");
    let ex = h.exchanges(1).await;
    assert_eq!(ex[0].status, 502);
    assert_eq!(ex[0].response_body.as_ref().unwrap().bytes(), b"hello");
    h.stop().await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_completes_a_slow_request() {
    let (up, _) = upstream(|_r| async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Response::new(full("finally"))
    })
    .await;
    let mut h = Harness::start(config(up)).await;
    let addr = h.addr;
    let pending =
        tokio::spawn(async move { raw(addr, b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
    let out = String::from_utf8(pending.await.unwrap()).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.ends_with("finally"), "{out}");
    assert_eq!(h.exchanges(1).await[0].status, 200);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn drain_budget_cuts_requests_that_take_too_long() {
    let (up, _) = upstream(|_r| async {
        tokio::time::sleep(Duration::from_secs(20)).await;
        Response::new(full("never"))
    })
    .await;
    let mut cfg = config(up);
    cfg.drain_timeout = Duration::from_millis(500);
    let h = Harness::start(cfg).await;
    let addr = h.addr;
    let pending =
        tokio::spawn(async move { raw(addr, b"GET /stuck HTTP/1.1\r\nHost: h\r\n\r\n").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let err = h.stop().await.unwrap_err();
    assert!(
        matches!(err, httpproxy::ServeError::DrainTimeout { open: 1, .. }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(pending.await.unwrap().is_empty());
}

#[tokio::test]
async fn head_and_no_content_responses_complete_normally() {
    let (up, _) = upstream(|r: Request<hyper::body::Incoming>| async move {
        if r.method() == "HEAD" {
            Response::builder()
                .header("content-length", "1000")
                .body(full(""))
                .unwrap()
        } else {
            Response::builder()
                .status(StatusCode::NO_CONTENT)
                .body(full(""))
                .unwrap()
        }
    })
    .await;
    let h = Harness::start(config(up)).await;
    let mut c = client(h.addr).await;
    let resp = c.send_request(req("HEAD", "/h", full(""))).await.unwrap();
    assert_eq!(resp.headers()["content-length"], "1000");
    let resp = c.send_request(req("DELETE", "/d", full(""))).await.unwrap();
    assert_eq!(resp.status(), 204);
    let ex = h.exchanges(2).await;
    assert_eq!(
        ex.iter().map(|e| e.status).collect::<Vec<_>>(),
        vec![200, 204]
    );
    h.stop().await.unwrap();
}

#[tokio::test]
async fn client_leaving_mid_upload_is_499_not_an_upstream_error() {
    let (up, _) = upstream(|r: Request<hyper::body::Incoming>| async move {
        let _ = r.into_body().collect().await;
        Response::new(full("done"))
    })
    .await;
    let h = Harness::start(config(up)).await;
    let mut c = TcpStream::connect(h.addr).await.unwrap();
    c.write_all(
        b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.write_all(b"5\r\nworld\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(c);
    let ex = h.exchanges(1).await;
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].status, 499);
    assert_eq!(ex[0].request_body.bytes(), b"helloworld");
    assert!(
        h.logs().is_empty(),
        "client abort logged as an upstream error: {:?}",
        h.logs()
    );
    h.stop().await.unwrap();
}

#[tokio::test]
async fn slow_upstream_headers_time_out_with_502() {
    let (up, _) = upstream(|_r| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Response::new(full("late"))
    })
    .await;
    let mut cfg = config(up);
    cfg.response_header_timeout = Duration::from_millis(300);
    let h = Harness::start(cfg).await;
    let started = std::time::Instant::now();
    let out = String::from_utf8(
        raw(
            h.addr,
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        )
        .await,
    )
    .unwrap();
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(h.exchanges(1).await[0].status, 502);
    assert!(h
        .logs()
        .iter()
        .any(|l| l == "reverse proxy upstream error: timeout awaiting response headers"));
    h.stop().await.unwrap();
}

#[tokio::test]
async fn connect_answered_with_200_is_tunnelled() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        *s2.lock().unwrap() = String::from_utf8(head).unwrap();
        s.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await
            .unwrap();
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    let mut cfg = config(up);
    cfg.retry = httpproxy::RetryPolicy::default();
    let h = Harness::start(cfg).await;
    let mut c = TcpStream::connect(h.addr).await.unwrap();
    c.write_all(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(WAIT, c.read_exact(&mut b))
            .await
            .unwrap()
            .unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    c.write_all(b"tunnel bytes").await.unwrap();
    let mut back = [0u8; 12];
    tokio::time::timeout(WAIT, c.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"tunnel bytes");
    let seen = seen.lock().unwrap().clone();
    eprintln!("upstream saw: {seen:?}");
    assert!(seen.starts_with("CONNECT "), "{seen}");
    assert!(
        seen.to_ascii_lowercase()
            .contains("host: example.com:443\r\n"),
        "{seen}"
    );
    let ex = h.exchanges(1).await;
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].status, 200);
    drop(c);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn request_trailers_reach_the_upstream() {
    let seen: Arc<Mutex<Option<HeaderMap>>> = Arc::default();
    let s2 = seen.clone();
    let (up, _) = upstream(move |r: Request<hyper::body::Incoming>| {
        let s2 = s2.clone();
        async move {
            let collected = r.into_body().collect().await.unwrap();
            *s2.lock().unwrap() = collected.trailers().cloned();
            Response::new(full(collected.to_bytes()))
        }
    })
    .await;
    let h = Harness::start(config(up)).await;
    let out = raw(
        h.addr,
        b"POST /t HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\nConnection: close\r\n\r\n\
4\r\ndata\r\n0\r\nx-sum: 42\r\n\r\n",
    )
    .await;
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("data"),
        "{out}"
    );
    let trailers = seen
        .lock()
        .unwrap()
        .clone()
        .expect("upstream got no trailers");
    assert_eq!(trailers["x-sum"], "42");
    h.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_open_websocket_tunnels() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
            .await
            .unwrap();
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    let h = Harness::start(config(up)).await;
    let mut c = TcpStream::connect(h.addr).await.unwrap();
    c.write_all(
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(WAIT, c.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    let started = std::time::Instant::now();
    h.stop().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "drain waited for the tunnel"
    );
    let mut rest = Vec::new();
    // The tunnel must end (EOF or reset) instead of hanging: the timeout is the assertion.
    let _ = tokio::time::timeout(WAIT, c.read_to_end(&mut rest))
        .await
        .expect("tunnel left open after shutdown");
    assert!(
        !String::from_utf8_lossy(&rest).contains("HTTP/1.1"),
        "{rest:?}"
    );
}

/// Go's `TestReverseProxyDelayBudget`: 200 sequential GETs, every one 200, average ≤ 25 ms.
#[tokio::test]
async fn reverse_proxy_delay_budget() {
    let (up, _) = upstream(|_r| async {
        Response::builder()
            .header("content-type", "text/plain")
            .body(full("ok"))
            .unwrap()
    })
    .await;
    let h = Harness::start(config(up)).await;
    let mut c = client(h.addr).await;
    let started = std::time::Instant::now();
    for _ in 0..200 {
        let resp = c.send_request(req("GET", "/perf", full(""))).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
    }
    let average = started.elapsed() / 200;
    eprintln!("average delay through the proxy: {average:?}");
    assert!(average <= Duration::from_millis(25), "average {average:?}");
    assert_eq!(h.exchanges(200).await.len(), 200);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (up, _) = upstream(|r: Request<hyper::body::Incoming>| async move {
        let path = r.uri().path().to_owned();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        Response::new(full(format!("{path}:{}", body.len())))
    })
    .await;
    let h = Harness::start(config(up)).await;
    let out = raw(
        h.addr,
        b"GET /one HTTP/1.1\r\nHost: h\r\n\r\nPOST /two HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc\
POST /three HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n\
GET /four HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    let text = String::from_utf8(out).unwrap();
    let bodies: Vec<&str> = text
        .split("HTTP/1.1 200 OK\r\n")
        .skip(1)
        .map(|r| r.rsplit("\r\n\r\n").next().unwrap())
        .collect();
    assert_eq!(
        bodies,
        vec!["/one:0", "/two:3", "/three:2", "/four:0"],
        "{text}"
    );
    let ex = h.exchanges(4).await;
    let paths: Vec<String> = ex.iter().map(|e| e.uri.path().to_owned()).collect();
    assert_eq!(paths, vec!["/one", "/two", "/three", "/four"]);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn expect_continue_is_answered_before_the_body_is_read() {
    let (up, _) = upstream(|r: Request<hyper::body::Incoming>| async move {
        let body = r.into_body().collect().await.unwrap().to_bytes();
        Response::new(full(body))
    })
    .await;
    let h = Harness::start(config(up)).await;
    let mut c = TcpStream::connect(h.addr).await.unwrap();
    c.write_all(b"PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut interim = [0u8; 25];
    tokio::time::timeout(WAIT, c.read_exact(&mut interim))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.write_all(b"hello").await.unwrap();
    let mut rest = String::new();
    tokio::time::timeout(WAIT, c.read_to_string(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.starts_with("HTTP/1.1 200 OK\r\n"), "{rest}");
    assert!(rest.ends_with("\r\n\r\nhello"), "{rest}");
    h.stop().await.unwrap();
}
