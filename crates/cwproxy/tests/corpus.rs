//! The workspace's bad-input corpus (`crates/http1/tests/corpus`) against the real `cwproxy`
//! binary: each vector is answered as the corpus says (refused with its status, closed, recorded
//! with a line, never reaching the app; or forwarded and echoed by the app with its body
//! normalised), as proxyview's server answers them.
#![allow(clippy::unwrap_used)]

#[path = "../../http1/tests/corpus/mod.rs"]
mod corpus;
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use corpus::Verdict;
use support::{Proxy, Upstream};

/// Sends `raw`, reads until the proxy closes; the status and the app's echo of the body.
fn exchange(port: u16, raw: &[u8]) -> (u16, String) {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // A refused request may be answered before all of it is sent.
    let _ = tcp.write_all(raw);
    let mut all = Vec::new();
    let _ = tcp.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let echoed = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["body"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (status, echoed)
}

#[test]
fn cwproxy_answers_every_corpus_vector_as_the_codec_decides_and_logs_each() {
    let up = Upstream::start();
    let proxy = Proxy::for_app(up.addr.port(), &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.hits.total.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let fields = "Host: app\r\nConnection: close\r\n";
    let mut answered = 0;
    let mut forwarded = 0;
    for v in corpus::HEADS {
        let hits = up.hits.total.load(Ordering::SeqCst);
        let (status, body) = exchange(proxy.port, &v.bytes(fields));
        answered += 1;
        match v.verdict {
            Verdict::Accept(want) => {
                forwarded += 1;
                assert_eq!((status, body.as_str()), (200, want), "{}", v.name);
            }
            Verdict::Refuse(want) => {
                assert_eq!(status, want, "{}", v.name);
                assert_eq!(
                    up.hits.total.load(Ordering::SeqCst),
                    hits,
                    "{} reached the app",
                    v.name
                );
            }
        }
    }
    assert_eq!(
        exchange(proxy.port, &corpus::bare_lf(fields)),
        (200, String::new()),
        "bare LF"
    );
    assert_eq!(
        exchange(proxy.port, &corpus::many_fields(fields)).0,
        200,
        "many fields"
    );
    assert_eq!(
        exchange(proxy.port, &corpus::oversized_head(fields)).0,
        431,
        "oversized head"
    );
    answered += 3;
    forwarded += 2;
    for (name, body) in corpus::BODIES {
        let raw =
            format!("POST /echo HTTP/1.1\r\n{fields}Transfer-Encoding: chunked\r\n\r\n{body}");
        let (status, echoed) = exchange(proxy.port, raw.as_bytes());
        assert_eq!(status, 400, "{name}");
        assert_ne!(echoed, "abc", "{name}: delivered whole");
        answered += 1;
    }
    let raw = format!(
        "POST /echo HTTP/1.1\r\n{fields}Transfer-Encoding: chunked\r\n\r\n{}",
        corpus::long_chunk_line()
    );
    assert_eq!(
        exchange(proxy.port, raw.as_bytes()).0,
        400,
        "long chunk line"
    );
    answered += 1;
    // Every answered request has its line (the health probe's is not traffic).
    let lines = proxy.wait_traffic(answered, Duration::from_secs(10));
    assert_eq!(lines.len(), answered, "one line per answered request");
    assert!(up.hits.total.load(Ordering::SeqCst) >= forwarded);
}
