//! The workspace's HTTP/1.1 codec (`crates/http1`) as both proxies read from callers and
//! backends. The first byte picks what the rest is:
//! - a request or response head: a complete head parses to the same length from exactly its
//!   own bytes (nothing after it changes where it ends), its framing fields read without a
//!   panic, and the smuggling rules decide it;
//! - a chunked body: decoding either fails or yields at most the input's bytes, and the data
//!   re-encoded as one chunk decodes to the same data.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http1::head::{pairs, parse_request, parse_response};
use http1::{rules, BodySink, CopyError, HeadFields, Reader};
use libfuzzer_sys::fuzz_target;

/// Most fields the proxies accept in a head.
const MAX_FIELDS: usize = 128;

fn check_fields(fields: &[httparse::Header<'_>]) {
    if let Ok(f) = HeadFields::read(pairs(fields), |_, _| {}) {
        let named = f.named(pairs(fields));
        for (name, _) in pairs(fields) {
            let _ = rules::is_dropped(name, &f, &named);
        }
        // A head the rules accept has one way to find its body's end.
        if rules::check_request_framing(&f).is_ok() {
            assert!(f.lengths <= 1 && !(f.only_chunked() && f.length.is_some()));
        }
        let _ = rules::is_ambiguous(&f);
    }
}

fn heads(data: &[u8], request: bool) {
    let end = if request {
        parse_request(data, MAX_FIELDS, |r, n| {
            check_fields(r.headers);
            n
        })
    } else {
        parse_response(data, MAX_FIELDS, |r, n| {
            check_fields(r.headers);
            n
        })
    };
    if let Ok(Some(n)) = end {
        assert!(n <= data.len(), "a head ends inside the input");
        let again = if request {
            parse_request(&data[..n], MAX_FIELDS, |_, m| m)
        } else {
            parse_response(&data[..n], MAX_FIELDS, |_, m| m)
        };
        assert_eq!(again, Ok(Some(n)), "a head's own bytes parse to the same end");
    }
}

struct Collect {
    data: Vec<u8>,
    ended: bool,
}

impl BodySink for Collect {
    async fn send(&mut self, data: Bytes, end: bool) -> Result<(), CopyError> {
        assert!(!self.ended, "data after the body's end");
        self.data.extend_from_slice(&data);
        self.ended = end;
        Ok(())
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime builds")
    })
}

/// Decodes `wire` as a chunked body that has fully arrived (the socket is at EOF).
fn decode_chunked(wire: &[u8]) -> Result<Vec<u8>, CopyError> {
    runtime().block_on(async {
        let mut rd: &[u8] = &[];
        let mut buf = BytesMut::from(wire);
        let mut reader = Reader {
            rd: &mut rd,
            buf: &mut buf,
            idle: Duration::from_secs(1),
            tap: None,
        };
        let mut sink = Collect {
            data: Vec::new(),
            ended: false,
        };
        reader.forward_chunked(&mut sink).await?;
        assert!(sink.ended, "a decoded body ends");
        Ok(sink.data)
    })
}

fn chunked(data: &[u8]) {
    if let Ok(body) = decode_chunked(data) {
        assert!(body.len() <= data.len());
        let mut wire = Vec::new();
        if !body.is_empty() {
            wire.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
            wire.extend_from_slice(&body);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        let again = decode_chunked(&wire).expect("a re-encoded chunked body decodes");
        assert_eq!(again, body);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => heads(rest, true),
        1 => heads(rest, false),
        _ => chunked(rest),
    }
});
