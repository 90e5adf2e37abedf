//! The shared corpus (`tests/corpus`) against the codec alone: head parsing, framing rules and
//! the chunked decoder decide each vector as the binaries must.
#![allow(clippy::unwrap_used)]

mod corpus;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use corpus::Verdict;
use http1::head::{pairs, parse_request, HeadError};
use http1::{rules, BodySink, CopyError, Framing, HeadFields, Reader};

/// Collects a body.
#[derive(Default)]
struct Collect {
    data: Vec<u8>,
    ended: bool,
}

impl BodySink for Collect {
    async fn send(&mut self, data: Bytes, end: bool) -> Result<(), CopyError> {
        self.data.extend_from_slice(&data);
        self.ended |= end;
        Ok(())
    }
}

/// What a server built on the codec answers: `Accept(body)` or `Refuse(status)`; a body whose
/// framing breaks is `Err`.
async fn decide(raw: &[u8]) -> Result<Verdict, CopyError> {
    let head = parse_request(raw, usize::MAX, |r, len| {
        let f = HeadFields::read(pairs(r.headers), |_, _| {})?;
        rules::check_request_framing(&f)?;
        Ok::<_, &'static str>((f, len))
    });
    let (fields, len) = match head {
        Err(HeadError::TooManyFields) => return Ok(Verdict::Refuse(431)),
        Err(HeadError::Malformed) | Ok(Some(Err(_))) => return Ok(Verdict::Refuse(400)),
        Ok(None) => panic!("incomplete head: {:?}", String::from_utf8_lossy(raw)),
        Ok(Some(Ok(x))) => x,
    };
    let (mut rd, mut buf) = (&b""[..], BytesMut::from(&raw[len..]));
    let mut reader = Reader {
        rd: &mut rd,
        buf: &mut buf,
        idle: Duration::from_secs(1),
        tap: None,
    };
    let mut sink = Collect::default();
    let framing = match fields.length {
        _ if fields.only_chunked() => Some(Framing::Chunked),
        None | Some(0) => None,
        Some(n) => Some(Framing::Length(n)),
    };
    match framing {
        Some(Framing::Chunked) => reader.forward_chunked(&mut sink).await?,
        Some(Framing::Length(n)) => reader.forward_bytes(n, true, &mut sink).await?,
        _ => {}
    }
    // Bytes after the body would be the next request: none of the vectors has one.
    if !buf.is_empty() {
        return Err(CopyError::Broken);
    }
    let body = String::from_utf8(sink.data).unwrap();
    Ok(Verdict::Accept(Box::leak(body.into_boxed_str())))
}

const FIELDS: &str = "Host: h\r\n";

#[tokio::test]
async fn every_head_vector_is_decided_as_the_corpus_says() {
    for v in corpus::HEADS {
        let got = decide(&v.bytes(FIELDS)).await;
        assert_eq!(got, Ok(v.verdict), "{}", v.name);
    }
    assert_eq!(
        decide(&corpus::many_fields(FIELDS)).await,
        Ok(Verdict::Accept(""))
    );
    assert_eq!(
        decide(&corpus::bare_lf(FIELDS)).await,
        Ok(Verdict::Accept(""))
    );
}

#[tokio::test]
async fn every_broken_chunked_body_fails_and_is_not_delivered_whole() {
    let head = format!("POST /echo HTTP/1.1\r\n{FIELDS}Transfer-Encoding: chunked\r\n\r\n");
    let long = corpus::long_chunk_line();
    for (name, body) in corpus::BODIES
        .iter()
        .copied()
        .chain([("long chunk line", &*long)])
    {
        let got = decide(format!("{head}{body}").as_bytes()).await;
        assert_eq!(got, Err(CopyError::Broken), "{name}");
    }
}
