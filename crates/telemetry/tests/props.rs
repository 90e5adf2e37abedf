//! Property tests: the encoder agrees with serde_json on valid UTF-8 (modulo Go's HTML-safe
//! escapes), parsing agrees with serde_json on valid JSON, and every emitted line is JSON.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, Method, Uri};
use proptest::prelude::*;
use telemetry::entry::{self, Context};
use telemetry::parse::json::parse_first;
use telemetry::{json, Capture, Exchange};

/// serde_json's output with Go's extra escapes applied (they only ever appear raw there).
fn go_escape(serde_out: &str) -> String {
    serde_out
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        any::<String>().prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..8)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn string_encoder_matches_serde_json(s in any::<String>()) {
        let mut ours = Vec::new();
        json::write_str(&mut ours, s.as_bytes());
        let theirs = go_escape(&serde_json::to_string(&s).expect("serialize"));
        prop_assert_eq!(String::from_utf8(ours).expect("utf8"), theirs);
    }

    #[test]
    fn encoder_always_emits_valid_json_strings(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut ours = Vec::new();
        json::write_str(&mut ours, &bytes);
        let back: String = serde_json::from_slice(&ours).expect("valid JSON string");
        // Valid input round-trips exactly; each invalid byte becomes one U+FFFD, as in Go.
        prop_assert_eq!(back, per_byte_lossy(&bytes));
    }

    #[test]
    fn parser_agrees_with_serde_json(v in arb_json()) {
        let text = serde_json::to_string(&v).expect("serialize");
        let parsed = parse_first(text.as_bytes()).expect("our parser accepts serde_json output");
        let mut ours = Vec::new();
        parsed.value().write_json(&mut ours);
        // serde_json's Map is a BTreeMap (sorted keys, like Go), so the texts must be identical.
        prop_assert_eq!(String::from_utf8(ours).expect("utf8"), go_escape(&text));
    }

    #[test]
    fn every_line_is_json(
        body in prop::collection::vec(any::<u8>(), 0..512),
        ct in prop_oneof![Just("application/json"), Just("application/x-www-form-urlencoded"), Just("text/xml"), Just("text/plain"), Just("bad;;type")],
        query in "[a-z0-9=&%+;<>]{0,40}",
        header in prop::collection::vec(32u8..127, 0..40),
        limit in 1usize..600,
        status in 0u16..700,
    ) {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static(ct));
        if let Ok(v) = HeaderValue::from_bytes(&header) {
            h.insert("x-any", v);
        }
        let uri: Uri = format!("/p?{query}").parse().unwrap_or_else(|_| Uri::from_static("/p"));
        let ex = Exchange {
            start: SystemTime::now(),
            end: SystemTime::now(),
            elapsed: Duration::from_nanos(1_234_567),
            method: Method::PUT,
            uri,
            tls: false,
            request_headers: h.clone(),
            request_body: Capture::from_bytes(limit, &body),
            status,
            response_headers: h,
            response_body: Some(Capture::from_bytes(limit, &body)),
            local_response_bytes: 0,
            endpoint: None,
            client_id: None,
        };
        let mut out = Vec::new();
        entry::render_traffic(&Context { app_name: "p".into(), aws_meta: None }, &ex, &mut out, &mut telemetry::hash::Scratch::new()).expect("renders");
        for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line).expect("line is JSON");
            prop_assert_eq!(&v["_t"], "TRAFFIC");
            prop_assert_eq!(v["global_hash"].as_str().map(str::len), Some(6));
        }
    }
}

/// Go's decoding of invalid UTF-8: one U+FFFD per invalid byte.
fn per_byte_lossy(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                return out;
            }
            Err(e) => {
                let (good, after) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(good).expect("valid prefix"));
                let bad = e.error_len().unwrap_or(after.len());
                out.extend(std::iter::repeat_n('\u{fffd}', bad));
                rest = &after[bad..];
            }
        }
    }
}
