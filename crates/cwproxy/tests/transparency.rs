//! The proxy changes nothing but the hop-by-hop and forwarding fields, answers what it refuses
//! with a line each, and its timeouts and listen address are settable: the real `cwproxy` binary
//! in front of a real upstream on loopback.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::{http, Proxy, Upstream};

fn start(up: &Upstream, extra: &[(&str, &str)]) -> Proxy {
    Proxy::for_app(up.addr.port(), extra)
}

#[test]
fn a_response_with_many_fields_passes_whole() {
    let up = Upstream::start();
    let proxy = start(&up, &[]);
    let out = http(
        proxy.port,
        "GET /many-fields HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(out.matches("set-cookie: c").count(), 150, "{out}");
    assert!(out.contains("link: </a>; rel=preload\r\n"), "{out}");
    assert!(out.ends_with("many"), "{out}");
    let line = proxy.wait_line(|v| v["_t"] == "TRAFFIC");
    assert_eq!(line["response"]["status"], 200);
}

#[test]
fn an_absolute_form_authority_replaces_host_for_the_app_and_the_log() {
    let up = Upstream::start();
    let proxy = start(&up, &[]);
    let out = http(
        proxy.port,
        "GET http://a.example/echo-host HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.ends_with("\r\n\r\na.example"),
        "the app saw another host: {out}"
    );
    let line = proxy.wait_line(|v| v["_t"] == "TRAFFIC");
    assert_eq!(line["request"]["host"], "a.example", "{line}");
    assert_eq!(line["request"]["path"], "/echo-host", "{line}");
}

/// A raw upstream on its own thread answering each request with the length of its request line
/// (the test app is hyper, whose own URI limit is 64 KiB).
fn line_length_upstream() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut buf = [0u8; 65536];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let line = got.iter().position(|&b| b == b'\r').unwrap_or(0);
                let body = line.to_string();
                let _ = s.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            });
        }
    });
    addr
}

#[test]
fn a_long_target_is_forwarded_whole_and_logged() {
    // 100 KiB of query: over hyper's 64 KiB URI limit (which answered 414), under Go's 1 MiB.
    let app = line_length_upstream();
    let proxy = Proxy::for_app(app.port(), &[]);
    let q = "v".repeat(100 * 1024);
    let request_line = format!("GET /long?k={q} HTTP/1.1");
    let out = http(
        proxy.port,
        &format!("{request_line}\r\nHost: h\r\nConnection: close\r\n\r\n"),
    );
    assert!(
        out.starts_with("HTTP/1.1 200"),
        "{}",
        &out[..200.min(out.len())]
    );
    assert!(
        out.ends_with(&format!("\r\n\r\n{}", request_line.len())),
        "{out}"
    );
    let line = proxy.wait_line(|v| v["_t"] == "TRAFFIC" && v["request"]["path"] == "/long");
    assert_eq!(line["response"]["status"], 200);
}

#[test]
fn every_request_the_proxy_refuses_gets_a_line_with_its_answer() {
    let up = Upstream::start();
    let proxy = start(&up, &[]);
    // The health runner's first probe, then nothing more from this test may reach the app.
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.hits.total.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = up.hits.total.load(Ordering::SeqCst);
    let smuggle = "POST /smuggle HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert!(http(proxy.port, smuggle).starts_with("HTTP/1.1 400 "));
    let big = format!(
        "GET /big HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
        "b".repeat(1_100_000)
    );
    assert!(http(proxy.port, &big).starts_with("HTTP/1.1 431 "));
    assert!(http(
        proxy.port,
        "GET /fold HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n  folded\r\n\r\n"
    )
    .starts_with("HTTP/1.1 400 "));
    proxy.wait_traffic(3, Duration::from_secs(10));
    let mut seen: Vec<(String, String, u64)> = proxy
        .traffic_lines()
        .iter()
        .map(|l| {
            (
                l["request"]["method"].as_str().unwrap_or("").to_owned(),
                l["request"]["path"].as_str().unwrap_or("").to_owned(),
                l["response"]["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    seen.sort();
    let want = |m: &str, p: &str, s| (m.to_owned(), p.to_owned(), s);
    assert_eq!(
        seen,
        vec![
            want("GET", "/big", 431),
            want("GET", "/fold", 400),
            want("POST", "/smuggle", 400),
        ]
    );
    assert_eq!(
        up.hits.total.load(Ordering::SeqCst),
        before,
        "the app saw a refused request"
    );
}

#[test]
fn a_slow_upload_outlasting_the_upstream_header_timeout_completes() {
    // The response-header timeout runs from the end of the request body, as Go's.
    let up = Upstream::start();
    let proxy = start(&up, &[("UPSTREAM_HEADER_TIMEOUT", "1s")]);
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    for _ in 0..6 {
        s.write_all(format!("{:x}\r\n{}\r\n", 1000, "u".repeat(1000)).as_bytes())
            .unwrap();
        std::thread::sleep(Duration::from_millis(400));
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(started.elapsed() > Duration::from_secs(2));
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("6000"), "{out}");
    assert_eq!(up.hits.uploaded.load(Ordering::SeqCst), 6000);
}

#[test]
fn proxy_host_chooses_the_listen_address() {
    let up = Upstream::start();
    let proxy = start(&up, &[("PROXY_HOST", "127.0.0.1")]);
    let port = proxy.port;
    assert!(http(
        proxy.port,
        "GET /echo-host HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )
    .starts_with("HTTP/1.1 200"));
    // IPv6 loopback is not served (with the dual-stack default it would be).
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        assert!(TcpStream::connect(("::1", port)).is_err());
    }
}
