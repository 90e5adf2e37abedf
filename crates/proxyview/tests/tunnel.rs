//! End-to-end: the real server and agent binaries on loopback, an in-process backend.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use http_body_util::BodyExt;
use proxyview::http_util::full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_forms_route_and_binary_round_trips() {
    let (server, _agent, _) = setup("", "").await;
    for host in ["route1", "ROUTE1", "route1:8080", "Route1.:80", "route1."] {
        let (s, body) = get_text(server.external, host, "/name").await;
        assert_eq!((s, body.as_str()), (StatusCode::OK, "b1"), "Host {host}");
    }
    let (s, _) = get_text(server.external, "route2", "/name").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Absolute-form target wins over the Host header.
    let mut tcp = TcpStream::connect(server.external).await.unwrap();
    tcp.write_all(
        format!("GET http://Route1:9/name HTTP/1.1\r\nHost: other\r\nauth-token: {TOKEN_OUT}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("b1"),
        "{out}"
    );

    // Every byte value, both ways, byte-exact.
    let data: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let r = send(
        server.external,
        request("POST", "route1", "/echo", full(data.clone())),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body_bytes(r).await.as_ref(), data.as_slice());
}

/// A HEAD answer carries the length of the body it does not have: the caller gets that length
/// and no body, and its connection stays usable for the next request. (That the agent does not
/// wait for the body either is `backend::tests::response_framing`: here the server would hide it
/// by dropping the stream once the head went out.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_request_gets_length_without_body_and_keeps_the_connection() {
    let (server, _agent, _) = setup("", "").await;
    let mut tcp = TcpStream::connect(server.external).await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    for (req, done) in [("HEAD /bytes/100", "\r\n\r\n"), ("GET /name", "\r\n\r\nb1")] {
        got.clear();
        tcp.write_all(
            format!("{req} HTTP/1.1\r\nHost: route1\r\nauth-token: {TOKEN_OUT}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        while !String::from_utf8_lossy(&got).ends_with(done) {
            let n = tokio::time::timeout(T, tcp.read(&mut chunk))
                .await
                .expect("answer within the timeout")
                .unwrap();
            assert!(n > 0, "connection closed after {req}");
            got.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&got).to_lowercase();
        assert!(text.starts_with("http/1.1 200"), "{req}: {text}");
        if req.starts_with("HEAD") {
            assert!(text.contains("content-length: 100\r\n"), "{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_checked_stripped_and_forwarded_headers_set() {
    let (server, _agent, _) = setup("", "").await;
    let mut r = request("GET", "route1", "/headers", full(Bytes::new()));
    r.headers_mut().remove("auth-token");
    let resp = send(server.external, r).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let mut r = request("GET", "route1", "/headers", full(Bytes::new()));
    r.headers_mut()
        .insert("auth-token", "wrong".parse().unwrap());
    assert_eq!(
        send(server.external, r).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    let mut r = request("GET", "route1:8080", "/headers", full(Bytes::new()));
    r.headers_mut().remove("auth-token");
    r.headers_mut().insert(
        "authorization",
        format!("Bearer {TOKEN_OUT}").parse().unwrap(),
    );
    r.headers_mut()
        .insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
    r.headers_mut()
        .insert("proxyview-route", "forged".parse().unwrap());
    let resp = send(server.external, r).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let seen: serde_json::Value = serde_json::from_slice(&body_bytes(resp).await).unwrap();
    assert!(
        seen.get("authorization").is_none() && seen.get("auth-token").is_none(),
        "{seen}"
    );
    assert!(seen.get("proxyview-route").is_none(), "{seen}");
    // The caller is not a trusted proxy: its X-Forwarded-For is replaced, not extended.
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-host"], "route1:8080");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert!(
        seen["host"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{seen}"
    );
}

/// The caller's own credentials reach the backend: with `auth-token` present, a bearer
/// `Authorization` is the backend's and passes untouched; without it a bearer is the proxy
/// token (stripped), and a wrong one is 401. `bearerToken: false` is Proxyview's rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_bearer_reaches_the_backend_when_auth_token_is_present() {
    let headers = |server: std::net::SocketAddr, auth: Option<&'static str>, bearer: &str| {
        let mut r = request("GET", "route1", "/headers", full(Bytes::new()));
        if auth.is_none() {
            r.headers_mut().remove("auth-token");
        }
        r.headers_mut()
            .insert("authorization", format!("Bearer {bearer}").parse().unwrap());
        async move {
            let resp = send(server, r).await.unwrap();
            let status = resp.status();
            let seen = if status == StatusCode::OK {
                serde_json::from_slice(&body_bytes(resp).await).unwrap()
            } else {
                serde_json::Value::Null
            };
            (status, seen)
        }
    };
    let (server, _agent, _) = setup("", "").await;
    let (status, seen) = headers(server.external, Some(TOKEN_OUT), "svc-token").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen["authorization"], "Bearer svc-token", "{seen}");
    assert!(seen.get("auth-token").is_none(), "{seen}");
    let (status, seen) = headers(server.external, None, TOKEN_OUT).await;
    assert_eq!(status, StatusCode::OK);
    assert!(seen.get("authorization").is_none(), "{seen}");
    let (status, _) = headers(server.external, None, "svc-token").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (server, _agent, _) = setup("  bearerToken: false\n", "").await;
    let (status, _) = headers(server.external, None, TOKEN_OUT).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "only auth-token counts");
    let (status, seen) = headers(server.external, Some(TOKEN_OUT), TOKEN_OUT).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        seen["authorization"],
        format!("Bearer {TOKEN_OUT}"),
        "{seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_bodies_stream_both_ways_with_flat_rss() {
    let (server, agent, _) = setup("", "").await;
    const N: u64 = 50 * 1024 * 1024;
    // Warm up so the baseline includes pools and buffers.
    let r = send(
        server.external,
        request("POST", "route1", "/count", pattern_body(1 << 20)),
    )
    .await
    .unwrap();
    assert_eq!(body_bytes(r).await, "1048576 true");
    let (s0, a0) = (server.proc.rss_kib().0, agent.rss_kib().0);

    let r = send(
        server.external,
        request("POST", "route1", "/count", pattern_body(N)),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body_bytes(r).await, format!("{N} true"));

    let r = get(server.external, "route1", &format!("/bytes/{N}"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], N.to_string().as_str());
    assert_eq!(check_pattern(r.into_body()).await, N);

    let (s1, a1) = (server.proc.rss_kib().1, agent.rss_kib().1);
    eprintln!("RSS KiB: server {s0} -> peak {s1}, agent {a0} -> peak {a1}");
    // 50 MB passed each way; buffering it would show as tens of MB of growth.
    assert!(
        s1.saturating_sub(s0) < 16 * 1024,
        "server RSS grew {s0} -> {s1} KiB"
    );
    assert!(
        a1.saturating_sub(a0) < 16 * 1024,
        "agent RSS grew {a0} -> {a1} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_over_one_agent() {
    let (server, _agent, _) = setup("", "").await;
    two_hundred_concurrent(&server).await;
}

/// The same load with server and agent on two worker threads each (the default is one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_on_multi_threaded_halves() {
    let (server, agent, _) = setup_threads(2).await;
    for p in [&server.proc, &agent] {
        let threads = std::fs::read_dir(format!("/proc/{}/task", p.pid()))
            .unwrap()
            .count();
        assert!(threads >= 3, "expected the worker threads, found {threads}");
    }
    two_hundred_concurrent(&server).await;
}

async fn two_hundred_concurrent(server: &Server) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let ext = server.external;
        tasks.push(tokio::spawn(async move {
            // Each request sleeps 300 ms at the backend: serialised they would take 60 s.
            let body = format!("req-{i}");
            let r = send(ext, request("POST", "route1", "/echo", full(body.clone())))
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(body_bytes(r).await, body);
            let (s, b) = get_text(ext, "route1", "/sleep/300").await;
            assert_eq!((s, b.as_str()), (StatusCode::OK, "slept"));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_arrive_as_they_are_sent() {
    let (server, _agent, _) = setup("", "").await;
    let r = get(server.external, "route1", "/sse").await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut body = r.into_body();
    let t0 = Instant::now();
    let mut seen = Vec::new();
    while let Some(f) = body.frame().await {
        if let Some(d) = f.unwrap().data_ref() {
            seen.push((t0.elapsed(), String::from_utf8_lossy(d).into_owned()));
        }
    }
    let all: String = seen.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(all, "data: event 0\n\ndata: event 1\n\ndata: event 2\n\n");
    // The first event must not wait for the last (800 ms later).
    assert!(
        seen[0].0 < Duration::from_millis(300),
        "first event after {:?}",
        seen[0].0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_the_backend_declines_returns_its_answer_whole() {
    // A backend that answers an upgrade request normally (no 101): its whole answer, here a
    // 1 MB body spanning many frames, must reach the caller.
    let (server, _agent, _) = setup("", "").await;
    let n = 1_000_000usize;
    let mut tcp = TcpStream::connect(server.external).await.unwrap();
    tcp.write_all(
        format!("GET /bytes/{n} HTTP/1.1\r\nHost: route1\r\nauth-token: {TOKEN_OUT}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + T;
    let body_len = |got: &[u8]| {
        got.windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| got.len() - i - 4)
    };
    while body_len(&got).is_none_or(|l| l < n) && Instant::now() < deadline {
        match tokio::time::timeout(T, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(k)) => got.extend_from_slice(&buf[..k]),
            Ok(Err(e)) => panic!("read: {e}"),
        }
    }
    let head = String::from_utf8_lossy(&got[..got.len().min(200)]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body_len(&got), Some(n), "body must arrive whole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_switching_protocols_unasked_is_a_502() {
    // A broken backend answering 101 to a plain GET on /switch (200 elsewhere, for wait_route).
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let be = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 2048];
                loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).into_owned();
                        buf.drain(..i + 4);
                        let answer: &[u8] = if head.contains("/switch") {
                            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n"
                        } else {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nb1"
                        };
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                }
            });
        }
    });
    let (server, _agent, _) = setup_for(be, "", "", "").await;
    let (s, body) = get_text(server.external, "route1", "/switch").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("switched protocols"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_tunnel() {
    let (server, _agent, _) = setup("", "").await;
    let mut ws = websocket(server.external, "route1").await;
    echo_texts(&mut ws, 20, T).await;
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 256) as u8).collect();
    ws.send(tokio_websockets::Message::binary(big.clone()))
        .await
        .unwrap();
    let back = tokio::time::timeout(T, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(Bytes::from(back.into_payload()), Bytes::from(big));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_caller_does_not_stall_a_fast_one() {
    let (server, _agent, _) = setup("", "").await;
    // The slow caller asks for 200 MB and never reads: its stream's window fills and stops.
    let mut slow = TcpStream::connect(server.external).await.unwrap();
    slow.write_all(
        format!("GET /bytes/209715200 HTTP/1.1\r\nHost: route1\r\nauth-token: {TOKEN_OUT}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    for _ in 0..5 {
        let r = get(server.external, "route1", "/bytes/10485760")
            .await
            .unwrap();
        assert_eq!(check_pattern(r.into_body()).await, 10 * 1024 * 1024);
    }
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "fast caller took {:?}",
        t0.elapsed()
    );
    let mut buf = [0u8; 16];
    slow.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf[..12], b"HTTP/1.1 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_request_gives_502_then_restart_restores_routes() {
    let be = backend("b1").await;
    let server = start_server(&server_yaml("127.0.0.1", 0, 0, "", "", "")).await;
    let yaml = agent_yaml("agent-1", server.internal, TOKEN_IN, &[("route1", be)], "");
    let mut agent = start_agent(&yaml);
    wait_route(server.external, "route1", T).await;
    let ext = server.external;
    let pending = tokio::spawn(async move { get_text(ext, "route1", "/sleep/5000").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    agent.kill();
    let (status, body) = tokio::time::timeout(Duration::from_secs(3), pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(t0.elapsed() < Duration::from_secs(2));
    // The routes of a dead agent are gone (502 only while the server is finding out).
    let end = Instant::now() + Duration::from_secs(2);
    loop {
        let (s, body) = get_text(server.external, "route1", "/name").await;
        if s == StatusCode::NOT_FOUND {
            break;
        }
        assert_eq!(s, StatusCode::BAD_GATEWAY, "{body}");
        assert!(
            Instant::now() < end,
            "routes of the dead agent still served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _agent2 = start_agent(&yaml);
    wait_route(server.external, "route1", T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_agent_reconnects_within_two_seconds() {
    let be = backend("b1").await;
    let server = start_server(&server_yaml("127.0.0.1", 0, 0, "", "", "")).await;
    let (internal, external) = (server.internal, server.external);
    let _agent = start_agent(&agent_yaml(
        "agent-1",
        internal,
        TOKEN_IN,
        &[("route1", be)],
        "",
    ));
    wait_route(external, "route1", T).await;
    drop(server);
    let server = start_server(&server_yaml(
        "127.0.0.1",
        internal.port(),
        external.port(),
        "",
        "",
        "",
    ))
    .await;
    let t0 = Instant::now();
    wait_route(server.external, "route1", Duration::from_secs(2)).await;
    eprintln!("routes back {:?} after the server restarted", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_agent_token_is_fatal_with_a_clear_message() {
    let be = backend("b1").await;
    let server = start_server(&server_yaml("127.0.0.1", 0, 0, "", "", "")).await;
    let mut agent = start_agent(&agent_yaml(
        "agent-1",
        server.internal,
        "wrong",
        &[("route1", be)],
        "",
    ));
    let status = agent
        .wait_exit(T)
        .expect("agent with a bad token must exit");
    assert!(!status.success());
    let err = agent.stderr_text();
    assert!(
        err.contains("401") && err.contains("proxyview.token"),
        "{err}"
    );
    // Raw check: no upgrade without the token, 401 before any WebSocket byte.
    let mut tcp = TcpStream::connect(server.internal).await.unwrap();
    tcp.write_all(b"GET /connect HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nauth-token: nope\r\nclient-id: a\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 12];
    tcp.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 401");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_client_id_cannot_take_a_route_until_the_owner_leaves() {
    let (b1, b2) = (backend("b1").await, backend("b2").await);
    let server = start_server(&server_yaml("127.0.0.1", 0, 0, "", "", "")).await;
    let mut a = start_agent(&agent_yaml(
        "agent-a",
        server.internal,
        TOKEN_IN,
        &[("route1", b1)],
        "",
    ));
    wait_route(server.external, "route1", T).await;
    let b = start_agent(&agent_yaml(
        "agent-b",
        server.internal,
        TOKEN_IN,
        &[("route1", b2), ("route2", b2)],
        "",
    ));
    assert!(
        b.wait_log("already served by clientId \"agent-a\"", T)
            .await,
        "{}",
        b.stderr_text()
    );
    wait_route(server.external, "route2", T).await;
    for _ in 0..10 {
        assert_eq!(get_text(server.external, "route1", "/name").await.1, "b1");
    }
    // The owner leaves: the agent refused route1 serves it within one heartbeat (15 s by
    // default; here well under a second), on the same session.
    a.kill();
    let t0 = Instant::now();
    loop {
        let (s, name) = get_text(server.external, "route1", "/name").await;
        if (s, name.as_str()) == (StatusCode::OK, "b2") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(2), "{s} {name}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        server
            .proc
            .wait_log("route handed to a waiting agent", T)
            .await,
        "{}",
        server.proc.stderr_text()
    );
    assert_eq!(
        b.stderr_text().matches("tunnel up").count(),
        1,
        "no reconnect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_client_id_shares_round_robin_and_fails_over() {
    let (b1, b2) = (backend("b1").await, backend("b2").await);
    let server = start_server(&server_yaml("127.0.0.1", 0, 0, "", "", "")).await;
    let mut a1 = start_agent(&agent_yaml(
        "agent-a",
        server.internal,
        TOKEN_IN,
        &[("route1", b1)],
        "",
    ));
    wait_route(server.external, "route1", T).await;
    let _a2 = start_agent(&agent_yaml(
        "agent-a",
        server.internal,
        TOKEN_IN,
        &[("route1", b2)],
        "",
    ));
    assert!(_a2.wait_log("tunnel up", T).await);
    // Same clientId, different backend for route1: warned in the server's and the agent's log.
    for log in [&server.proc, &_a2] {
        assert!(
            log.wait_log("serves it with a different target", T).await,
            "{}",
            log.stderr_text()
        );
    }
    assert!(!a1.stderr_text().contains("different target"));
    let mut names = Vec::new();
    for _ in 0..10 {
        names.push(get_text(server.external, "route1", "/name").await.1);
    }
    assert!(
        names.iter().any(|n| n == "b1") && names.iter().any(|n| n == "b2"),
        "{names:?}"
    );
    a1.kill();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..10 {
        let (s, n) = get_text(server.external, "route1", "/name").await;
        assert_eq!((s, n.as_str()), (StatusCode::OK, "b2"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_errors_are_502_and_504_or_legacy_404() {
    let be = backend("b1").await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let server = start_server(&server_yaml("127.0.0.1", 0, 0, "", "", "")).await;
    let agent = start_agent(&agent_yaml(
        "agent-1",
        server.internal,
        TOKEN_IN,
        &[("route1", be), ("gone", dead)],
        "responseTimeoutSecs: 0.5\n",
    ));
    wait_route(server.external, "route1", T).await;
    // Each cause once, and the agent's private backend address only in the agent's log.
    let (status, body) = get_text(server.external, "gone", "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body.matches("Connection refused").count(), 1, "{body}");
    assert!(!body.contains(&dead.port().to_string()), "{body}");
    let (status, body) = get_text(server.external, "route1", "/sleep/3000").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(!body.contains(&be.port().to_string()), "{body}");
    assert!(
        agent.wait_log(&dead.to_string(), T).await,
        "{}",
        agent.stderr_text()
    );
    // Logs that go to a file (not a terminal) carry no ANSI colour codes.
    for log in [agent.stderr_text(), server.proc.stderr_text()] {
        assert!(log.contains("INFO") && !log.contains('\x1b'), "{log:?}");
    }

    let legacy = start_server(&server_yaml(
        "127.0.0.1",
        0,
        0,
        "",
        "  legacyErrors: true\n",
        "",
    ))
    .await;
    let _agent2 = start_agent(&agent_yaml(
        "agent-1",
        legacy.internal,
        TOKEN_IN,
        &[("route1", be), ("gone", dead)],
        "",
    ));
    wait_route(legacy.external, "route1", T).await;
    for (host, token) in [
        ("gone", TOKEN_OUT),
        ("nothing", TOKEN_OUT),
        ("route1", "bad"),
    ] {
        let mut r = request("GET", host, "/", full(Bytes::new()));
        r.headers_mut().insert("auth-token", token.parse().unwrap());
        let resp = send(legacy.external, r).await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()["content-length"], "23");
        assert_eq!(resp.headers()["cache-control"], "no-cache");
        assert_eq!(body_bytes(resp).await, "Resource was not found.");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_response_timeout_is_504() {
    let (server, _agent, _) =
        setup_for(backend("b1").await, "  responseTimeoutSecs: 0.5\n", "", "").await;
    let t0 = Instant::now();
    assert_eq!(
        get_text(server.external, "route1", "/sleep/3000").await.0,
        StatusCode::GATEWAY_TIMEOUT
    );
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlist_with_cidr_and_ipv6_on_both_ports() {
    let be = backend("b1").await;
    // Dual-stack bind; only IPv6 loopback may call, only 127.0.0.0/8 may connect agents.
    let yaml = server_yaml(
        "::",
        0,
        0,
        "  whitelistedIps: [\"127.0.0.0/8\"]\n",
        "  whitelistedIps: [\"::1/128\", \"10.0.0.0/8\"]\n",
        "",
    );
    let server = start_server(&yaml).await;
    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], server.internal.port()));
    let _agent = start_agent(&agent_yaml("agent-1", v4, TOKEN_IN, &[("route1", be)], ""));
    let ext6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, server.external.port()));
    let ext4 = std::net::SocketAddr::from(([127, 0, 0, 1], server.external.port()));
    wait_route(ext6, "route1", T).await;
    let (s, body) = get_text(ext4, "route1", "/name").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    // An agent from ::1 is outside internal.whitelistedIps: 403, which the agent treats as fatal.
    let int6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, server.internal.port()));
    let mut agent6 = start_agent(&agent_yaml(
        "agent-6",
        int6,
        TOKEN_IN,
        &[("route6", be)],
        "",
    ));
    assert!(agent6.wait_exit(T).is_some_and(|s| !s.success()));
    assert!(
        agent6.stderr_text().contains("403"),
        "{}",
        agent6.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_line_names_the_route() {
    let (server, _agent, _) = setup("", "accessLog: true\n").await;
    let (s, _) = get_text(server.external, "route1", "/name?x=1").await;
    assert_eq!(s, StatusCode::OK);
    // A caller that gives up before the answer is logged as 499.
    let mut tcp = TcpStream::connect(server.external).await.unwrap();
    tcp.write_all(
        format!("GET /sleep/3000?x=2 HTTP/1.1\r\nHost: route1\r\nauth-token: {TOKEN_OUT}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(tcp);
    let end = Instant::now() + T;
    loop {
        let out = server.proc.stdout_text();
        let lines: Vec<serde_json::Value> = out
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &serde_json::Value| v["request"]["queries"]["x"] == "1")
            .collect();
        if let Some(v) = lines.first() {
            assert_eq!(v["_t"], "TRAFFIC");
            assert_eq!(v["Endpoint"], "route1");
            assert_eq!(v["client_id"], "agent-1");
            assert_eq!(v["response"]["status"], 200);
            assert_eq!(v["ResponseBodySize"], 2);
            assert_eq!(v["request"]["queries"]["x"], "1");
            let headers = v["request"]["headers"].as_object().unwrap();
            assert!(
                headers
                    .keys()
                    .all(|k| !k.eq_ignore_ascii_case("auth-token")),
                "token logged: {v}"
            );
            let aborted: Vec<serde_json::Value> = lines_all(&out)
                .into_iter()
                .filter(|v| v["request"]["queries"]["x"] == "2")
                .collect();
            if let Some(a) = aborted.first() {
                assert_eq!(a["response"]["status"], 499, "{a}");
                assert_eq!(a["Endpoint"], "route1");
                break;
            }
        }
        assert!(Instant::now() < end, "no access log lines in {out:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_flight_and_refuses_new_ones() {
    let (mut server, _agent, _) = setup("", "").await;
    let ext = server.external;
    let pending = tokio::spawn(async move { get_text(ext, "route1", "/sleep/1000").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &server.proc.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    assert!(server.proc.wait_log("draining", T).await);
    let refused_by = Instant::now() + Duration::from_secs(1);
    while TcpStream::connect(ext).await.is_ok() {
        assert!(
            Instant::now() < refused_by,
            "new connections must be refused while draining"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (s, body) = tokio::time::timeout(T, pending).await.unwrap().unwrap();
    assert_eq!((s, body.as_str()), (StatusCode::OK, "slept"));
    let status = server
        .proc
        .wait_exit(Duration::from_secs(5))
        .expect("server exits after the drain");
    assert!(status.success(), "{status:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "drain took {:?}",
        t0.elapsed()
    );
}

fn lines_all(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A backend that sends its head and part of the body and then nothing (connection open): the
/// agent gives up after `bodyIdleTimeoutSecs` and the caller's connection ends, short of the
/// promised length, instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_stalled_mid_body_ends_the_callers_connection() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let be = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = l.accept().await {
            let mut req = [0u8; 2048];
            let n = s.read(&mut req).await.unwrap_or(0);
            if String::from_utf8_lossy(&req[..n]).starts_with("GET /stall") {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
                    .await;
                held.push(s);
            } else {
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            }
        }
    });
    let (server, _agent, _) = setup_for(be, "", "", "bodyIdleTimeoutSecs: 1\n").await;

    let mut tcp = TcpStream::connect(server.external).await.unwrap();
    tcp.write_all(
        format!("GET /stall HTTP/1.1\r\nHost: route1\r\nauth-token: {TOKEN_OUT}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let t0 = Instant::now();
    let got = read_until_closed(&mut tcp, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("\r\n\r\npartial"), "{text}");
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
}

/// A caller that stops sending in the middle of its body, while the backend does not answer:
/// the agent answers 504 after its response timeout and the server then lets go of the caller
/// (its connection ends) rather than waiting for the rest of the body forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_stalled_mid_upload_gets_504_and_is_let_go() {
    let (server, _agent, _) =
        setup_for(backend("b1").await, "", "", "responseTimeoutSecs: 0.5\n").await;

    let mut tcp = TcpStream::connect(server.external).await.unwrap();
    tcp.write_all(
        format!("POST /sleep/5000 HTTP/1.1\r\nHost: route1\r\nauth-token: {TOKEN_OUT}\r\ncontent-length: 100\r\n\r\nfive!")
            .as_bytes(),
    )
    .await
    .unwrap();
    let got = read_until_closed(&mut tcp, Duration::from_secs(4)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 504"), "{text}");
}

/// Everything the server sends until it closes the connection (or resets it), each read
/// within `within`: a read that waits longer fails the test as a hang.
async fn read_until_closed(tcp: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout(within, tcp.read(&mut chunk))
            .await
            .expect("the connection must end, not hang")
        {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Colour codes only on a terminal, and never with `NO_COLOR`: an agent whose server is down
/// logs a warning at once; run under `script` (util-linux) its stderr is a pseudo-terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_colour_only_on_a_terminal_and_never_with_no_color() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.yaml");
    std::fs::write(&cfg, agent_yaml("a", dead, TOKEN_IN, &[("r", dead)], "")).unwrap();
    let run = |no_color: Option<&str>| {
        let cmd = format!(
            "timeout -s INT 1.5 {} client --config {}",
            env!("CARGO_BIN_EXE_proxyview"),
            cfg.display()
        );
        let mut c = std::process::Command::new("script");
        c.args(["-qec", &cmd, "/dev/null"]).env_remove("NO_COLOR");
        if let Some(v) = no_color {
            c.env("NO_COLOR", v);
        }
        let out = c.output().expect("script (util-linux) runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let tty = run(None);
    assert!(
        tty.contains("tunnel down") && tty.contains('\x1b'),
        "{tty:?}"
    );
    let plain = run(Some("1"));
    assert!(
        plain.contains("tunnel down") && !plain.contains('\x1b'),
        "{plain:?}"
    );
}
