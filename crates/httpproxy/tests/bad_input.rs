//! Malformed and hostile clients: each shape is sent as raw bytes, and a recording upstream shows
//! what (if anything) got through.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn status_line(out: &[u8]) -> String {
    let s = String::from_utf8_lossy(out);
    s.lines().next().unwrap_or_default().to_owned()
}

/// Request lines the upstream received (one per request head).
fn request_lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .split("\r\n")
        .filter(|l| l.ends_with(" HTTP/1.1") && !l.contains(':'))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn oversized_headers_get_431_and_never_reach_the_upstream() {
    let (up, seen) = recording_upstream().await;
    let h = Harness::start(config(up)).await;
    let big = "a".repeat(1_100_000);
    let out = raw(
        h.addr,
        format!("GET / HTTP/1.1\r\nHost: h\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(
        status_line(&out),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    // Just under the limit is fine.
    let ok = "b".repeat(900_000);
    let out = raw(
        h.addr,
        format!("GET /ok HTTP/1.1\r\nHost: h\r\nX-Big: {ok}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(status_line(&out), "HTTP/1.1 200 OK");
    let seen = seen.lock().unwrap().concat();
    assert_eq!(request_lines(&seen), vec!["GET /ok HTTP/1.1"]);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn malformed_request_lines_get_400() {
    let (up, seen) = recording_upstream().await;
    let h = Harness::start(config(up)).await;
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/9.9\r\nHost: h\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header Name: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
    ] {
        let out = raw(h.addr, bad).await;
        let line = status_line(&out);
        assert!(
            line.starts_with("HTTP/1.1 400") || line.starts_with("HTTP/1.1 505"),
            "{bad:?} -> {line:?}"
        );
    }
    assert!(
        seen.lock().unwrap().concat().is_empty(),
        "a malformed request reached the upstream"
    );
    h.stop().await.unwrap();
}

#[tokio::test]
async fn obs_fold_is_rejected() {
    let (up, seen) = recording_upstream().await;
    let h = Harness::start(config(up)).await;
    let out = raw(
        h.addr,
        b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n  folded: 2\r\n\r\n",
    )
    .await;
    assert!(
        status_line(&out).starts_with("HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    assert!(seen.lock().unwrap().concat().is_empty());
    h.stop().await.unwrap();
}

#[tokio::test]
async fn content_length_with_transfer_encoding_cannot_smuggle() {
    // RFC 9112 §6.3 lets a server read such a request by its coding, but the next hop may not:
    // both binaries of the workspace refuse it with 400 (the shared corpus), and log the answer.
    let (up, seen) = recording_upstream().await;
    let h = Harness::start(config(up)).await;
    let out = raw(
        h.addr,
        b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert_eq!(status_line(&out), "HTTP/1.1 400 Bad Request", "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    assert!(
        seen.lock().unwrap().concat().is_empty(),
        "the upstream saw it"
    );
    let ex = h.exchanges(1).await;
    assert_eq!(ex.len(), 1);
    assert_eq!((ex[0].method.as_str(), ex[0].status), ("POST", 400));
    assert_eq!(ex[0].uri, "/a");
    h.stop().await.unwrap();
}

#[tokio::test]
async fn bare_lf_is_reframed_so_the_upstream_never_desyncs() {
    // hyper (like Go and nginx) accepts bare LF line endings in the head. The proxy re-serializes
    // every request, so the upstream only ever sees CRLF-framed heads that match what was parsed.
    let (up, seen) = recording_upstream().await;
    let h = Harness::start(config(up)).await;
    let out = raw(
        h.addr,
        b"GET /lf HTTP/1.1\nHost: h\nX-A: 1\n\nGET /second HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    let seen = seen.lock().unwrap().concat();
    assert_eq!(
        request_lines(&seen),
        vec!["GET /lf HTTP/1.1", "GET /second HTTP/1.1"]
    );
    for (i, b) in seen.iter().enumerate() {
        if *b == b'\n' {
            assert_eq!(seen[i - 1], b'\r', "bare LF reached the upstream");
        }
    }
    h.stop().await.unwrap();
}

#[tokio::test]
async fn invalid_chunk_sizes_are_rejected() {
    let (up, seen) = recording_upstream().await;
    let h = Harness::start(config(up)).await;
    // Broken from the first chunk: rejected before anything goes upstream.
    let out = raw(h.addr, b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n").await;
    assert_eq!(
        status_line(&out),
        "HTTP/1.1 400 Bad Request",
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    let out = raw(
        h.addr,
        b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(
        status_line(&out).starts_with("HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    assert!(
        seen.lock().unwrap().concat().is_empty(),
        "upstream saw a request with a bad chunk"
    );

    // Broken later in a streamed body: the upstream request is cut off, never completed.
    let mut c = TcpStream::connect(h.addr).await.unwrap();
    c.write_all(
        b"POST /late HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.write_all(b"zz\r\nmore\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, c.read_to_end(&mut rest))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = seen.lock().unwrap().concat();
    let seen_text = String::from_utf8_lossy(&seen);
    assert_eq!(
        request_lines(&seen),
        vec!["POST /late HTTP/1.1"],
        "{seen_text}"
    );
    assert!(
        !seen_text.contains("0\r\n\r\n"),
        "upstream saw a completed body: {seen_text:?}"
    );
    assert!(!seen_text.contains("more"), "{seen_text:?}");
    h.stop().await.unwrap();
}

#[tokio::test]
async fn many_header_fields_pass_and_the_byte_limit_alone_bounds_a_head() {
    // As the Go original: no field count limit below the 1 MiB head limit, either way.
    let (up, seen) = recording_upstream().await;
    let h = Harness::start(config(up)).await;
    let mut req = String::from("GET /many HTTP/1.1\r\nHost: h\r\nConnection: close\r\n");
    for i in 0..500 {
        req.push_str(&format!("X-{i}: v\r\n"));
    }
    req.push_str("\r\n");
    let out = raw(h.addr, req.as_bytes()).await;
    assert_eq!(status_line(&out), "HTTP/1.1 200 OK");
    let seen = seen.lock().unwrap().concat();
    assert_eq!(request_lines(&seen), vec!["GET /many HTTP/1.1"]);
    assert!(String::from_utf8_lossy(&seen).contains("x-499: v\r\n"));
    let ex = h.exchanges(1).await;
    assert_eq!(ex[0].request_headers.len(), 502);
    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_after_the_header_timeout() {
    let (up, seen) = recording_upstream().await;
    let h = Harness::start(config(up)).await;
    let before = rss();
    let started = Instant::now();
    const N: usize = 300;
    let mut tasks = Vec::new();
    for i in 0..N {
        // Connect one by one so the listen queue never overflows: a silent client whose handshake
        // ACK was dropped would never reach the proxy at all (kernel SYN-cookie behaviour).
        let mut c = TcpStream::connect(h.addr).await.unwrap();
        tasks.push(tokio::spawn(async move {
            if i % 3 == 0 {
                // Connects and says nothing.
            } else {
                c.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n").await.unwrap();
            }
            // Keep trickling header bytes until the proxy hangs up.
            let mut buf = [0u8; 64];
            loop {
                tokio::select! {
                    r = c.read(&mut buf) => match r {
                        Ok(0) | Err(_) => return Instant::now(),
                        Ok(_) => {}
                    },
                    _ = tokio::time::sleep(Duration::from_millis(400)) => {
                        if i % 3 != 0 && c.write_all(b"X-Slow: 1\r\n").await.is_err() {
                            return Instant::now();
                        }
                    }
                }
            }
        }));
    }
    // Meanwhile normal clients are served.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = raw(
        h.addr,
        b"GET /normal HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_line(&out), "HTTP/1.1 200 OK");
    let grown = rss().saturating_sub(before);
    eprintln!("RSS growth with {N} slowloris connections: {grown} bytes");
    let mut stuck = Vec::new();
    let mut closes = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let deadline = tokio::time::Instant::from_std(started + Duration::from_secs(12));
        match tokio::time::timeout_at(deadline, t).await {
            Ok(r) => closes.push(r.unwrap()),
            Err(_) => stuck.push(i),
        }
    }
    assert!(stuck.is_empty(), "connections never closed: {stuck:?}");
    for closed in closes {
        let after = closed.duration_since(started);
        assert!(
            after >= Duration::from_millis(4500),
            "closed too early: {after:?}"
        );
        assert!(
            after <= Duration::from_millis(7500),
            "closed too late: {after:?}"
        );
    }
    assert!(
        grown < 32 * 1024 * 1024,
        "RSS grew by {grown} bytes for {N} slowloris connections"
    );
    assert_eq!(
        request_lines(&seen.lock().unwrap().concat()),
        vec!["GET /normal HTTP/1.1"]
    );
    h.stop().await.unwrap();
}

#[tokio::test]
async fn idle_keep_alive_outlives_the_header_timeout_then_closes() {
    let (up, _) = recording_upstream().await;
    let mut cfg = config(up);
    cfg.header_read_timeout = Duration::from_secs(1);
    cfg.idle_timeout = Duration::from_secs(3);
    let h = Harness::start(cfg).await;
    let mut c = TcpStream::connect(h.addr).await.unwrap();
    let mut buf = [0u8; 1024];
    for _ in 0..2 {
        c.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        let n = tokio::time::timeout(WAIT, c.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));
        // Longer than the header timeout, shorter than the idle timeout.
        tokio::time::sleep(Duration::from_millis(1800)).await;
    }
    let idle_from = Instant::now();
    let n = tokio::time::timeout(WAIT, c.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "connection should be closed by the idle timeout");
    let waited = idle_from.elapsed() + Duration::from_millis(1800);
    assert!(
        waited >= Duration::from_millis(2800) && waited <= Duration::from_millis(4500),
        "{waited:?}"
    );
    h.stop().await.unwrap();
}
