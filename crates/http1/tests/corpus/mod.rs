//! The workspace's one corpus of bad and borderline HTTP/1.1 requests: smuggling shapes,
//! obs-fold, bare LF, invalid chunk sizes, oversized heads. `tests/bad_input.rs` runs it
//! against the codec; each binary's end-to-end tests include this file (`#[path]`) and send the
//! same bytes to the real process, so every proxy answers every vector the same way.
//!
//! Each head vector is written with `{fields}` where a binary adds what it needs to route the
//! request (`Host`, a token, `Connection: close`) right after the request line.
#![allow(dead_code)]

/// What a proxy must do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forward it; the app answers, and gets this body (the request normalised to one body).
    Accept(&'static str),
    /// Answer it with this status and close the connection; nothing reaches the app.
    Refuse(u16),
}

/// One request, raw.
#[derive(Debug, Clone, Copy)]
pub struct Vector {
    pub name: &'static str,
    /// The request with `{fields}` after the request line; targets `/echo`.
    pub raw: &'static str,
    pub verdict: Verdict,
}

impl Vector {
    /// The bytes to send, with `fields` (each line ending in CRLF) in place.
    pub fn bytes(&self, fields: &str) -> Vec<u8> {
        self.raw.replace("{fields}", fields).into_bytes()
    }
}

use Verdict::{Accept, Refuse};

/// Vectors decided by the head: every proxy answers these before anything reaches the app.
pub const HEADS: &[Vector] = &[
    Vector {
        name: "content-length and transfer-encoding (CL.TE / TE.CL)",
        raw: "POST /echo HTTP/1.1\r\n{fields}Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        verdict: Refuse(400),
    },
    Vector {
        name: "transfer-encoding with chunked not last",
        raw: "POST /echo HTTP/1.1\r\n{fields}Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        verdict: Refuse(400),
    },
    Vector {
        name: "transfer-encoding other than chunked",
        raw: "POST /echo HTTP/1.1\r\n{fields}Transfer-Encoding: gzip\r\n\r\n",
        verdict: Refuse(400),
    },
    Vector {
        name: "transfer-encoding chunked twice",
        raw: "POST /echo HTTP/1.1\r\n{fields}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        verdict: Refuse(400),
    },
    Vector {
        name: "conflicting content-lengths",
        raw: "POST /echo HTTP/1.1\r\n{fields}Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        verdict: Refuse(400),
    },
    Vector {
        name: "content-length not digits",
        raw: "POST /echo HTTP/1.1\r\n{fields}Content-Length: 1x\r\n\r\na",
        verdict: Refuse(400),
    },
    Vector {
        name: "content-length with a sign",
        raw: "POST /echo HTTP/1.1\r\n{fields}Content-Length: +3\r\n\r\nabc",
        verdict: Refuse(400),
    },
    Vector {
        name: "obs-fold (a field line continued on the next line)",
        raw: "GET /echo HTTP/1.1\r\n{fields}X-A: 1\r\n folded\r\n\r\n",
        verdict: Refuse(400),
    },
    Vector {
        name: "space before the colon",
        raw: "GET /echo HTTP/1.1\r\n{fields}X-A : 1\r\n\r\n",
        verdict: Refuse(400),
    },
    Vector {
        name: "space inside the request target",
        raw: "GET /echo x HTTP/1.1\r\n{fields}\r\n",
        verdict: Refuse(400),
    },
    Vector {
        name: "garbage request line",
        raw: "GARBAGE\r\n{fields}\r\n",
        verdict: Refuse(400),
    },
    Vector {
        name: "agreeing content-length list",
        raw: "POST /echo HTTP/1.1\r\n{fields}Content-Length: 3, 3\r\n\r\nabc",
        verdict: Refuse(400),
    },
    Vector {
        name: "content-length body",
        raw: "POST /echo HTTP/1.1\r\n{fields}Content-Length: 3\r\n\r\nabc",
        verdict: Accept("abc"),
    },
    Vector {
        name: "chunked body with an extension and a trailer",
        raw: "POST /echo HTTP/1.1\r\n{fields}Transfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n",
        verdict: Accept("abc"),
    },
];

/// Many header fields (500, 6 KiB): no proxy here limits the count below its byte limit (the Go
/// original had no count limit), so this is forwarded.
pub fn many_fields(fields: &str) -> Vec<u8> {
    let many: String = (0..500).map(|i| format!("x-{i}: 1\r\n")).collect();
    format!("GET /echo HTTP/1.1\r\n{fields}{many}\r\n").into_bytes()
}

/// A head over every proxy's byte limit (cwproxy's 1 MiB, the Go original's; proxyview's
/// 256 KiB, its tunnel protocol's): refused with 431.
pub fn oversized_head(fields: &str) -> Vec<u8> {
    let big = "b".repeat(1_100_000);
    format!("GET /echo HTTP/1.1\r\n{fields}X-Big: {big}\r\n\r\n").into_bytes()
}

/// A head with bare LF line ends: read as if they were CRLF (RFC 9112 §2.2 allows it), the
/// request is forwarded with CRLF.
pub fn bare_lf(fields: &str) -> Vec<u8> {
    format!("GET /echo HTTP/1.1\n{}\n", fields.replace("\r\n", "\n")).into_bytes()
}

/// Chunked bodies whose framing is broken after the head was accepted: the body is not
/// delivered whole, and the connection is not reused.
pub const BODIES: &[(&str, &str)] = &[
    ("chunk size not hex", "zz\r\nabc\r\n0\r\n\r\n"),
    (
        "chunk size over 64 bits",
        "1ffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
    ),
    ("chunk data longer than its size", "3\r\nabcd\r\n0\r\n\r\n"),
    ("no CRLF after the chunk data", "3\r\nabcXY0\r\n\r\n"),
];

/// A chunk-size line longer than any proxy here reads (an extension 8 KiB long).
pub fn long_chunk_line() -> String {
    format!("3;x={}\r\nabc\r\n0\r\n\r\n", "a".repeat(8192))
}
