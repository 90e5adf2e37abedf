//! The workspace's bad-input corpus (`crates/http1/tests/corpus`) against the real server and
//! agent: each head vector is answered as the corpus says (refused with its status and closed,
//! or forwarded and echoed by the backend with its body normalised).
#![allow(clippy::unwrap_used)]

mod common;
#[path = "../../http1/tests/corpus/mod.rs"]
mod corpus;

use std::time::Duration;

use common::*;
use corpus::Verdict;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `raw`, reads until the server closes; returns the status code and the decoded body.
async fn exchange(server: &Server, raw: &[u8]) -> (u16, String) {
    let mut tcp = TcpStream::connect(server.external).await.unwrap();
    tcp.write_all(raw).await.unwrap();
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut all))
        .await
        .expect("the server must close the connection");
    let text = String::from_utf8_lossy(&all).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (status, if chunked { dechunk(body) } else { body.into() })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size, 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_answers_every_corpus_vector_as_the_codec_decides() {
    let (server, _agent, _) = setup("", "").await;
    let fields = format!("Host: route1\r\nauth-token: {TOKEN_OUT}\r\nConnection: close\r\n");
    let expect = |v: Verdict| match v {
        Verdict::Accept(body) => (200, body.to_string()),
        Verdict::Refuse(status) => (status, String::new()),
    };
    for v in corpus::HEADS {
        let (status, body) = exchange(&server, &v.bytes(&fields)).await;
        let (want_status, want_body) = expect(v.verdict);
        assert_eq!(status, want_status, "{}", v.name);
        if want_status == 200 {
            assert_eq!(body, want_body, "{}", v.name);
        }
    }
    let (status, _) = exchange(&server, &corpus::many_fields(&fields)).await;
    assert_eq!(status, 200, "many fields");
    let (status, _) = exchange(&server, &corpus::oversized_head(&fields)).await;
    assert_eq!(status, 431, "oversized head");
    assert_eq!(
        exchange(&server, &corpus::bare_lf(&fields)).await,
        (200, String::new()),
        "bare LF"
    );
}
