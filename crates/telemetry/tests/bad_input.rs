//! Hostile bodies: the entry is still written, is valid JSON, bounded in size, and nothing panics.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, Method, Uri};
use telemetry::entry::{self, Context};
use telemetry::{Capture, Exchange};

const LIMIT: usize = 256 * 1024;

fn exchange(content_type: &str, body: &[u8]) -> Exchange {
    let mut h = HeaderMap::new();
    h.insert(
        "content-type",
        HeaderValue::from_str(content_type).expect("ascii"),
    );
    Exchange {
        start: SystemTime::now(),
        end: SystemTime::now(),
        elapsed: Duration::from_millis(1),
        method: Method::POST,
        uri: Uri::from_static("/in"),
        tls: false,
        request_headers: h.clone(),
        request_body: Capture::from_bytes(LIMIT, body),
        status: 200,
        response_headers: h,
        response_body: Some(Capture::from_bytes(LIMIT, body)),
        local_response_bytes: 0,
        endpoint: None,
        client_id: None,
    }
}

/// Renders, checks the line is one valid JSON object (parsed on a big stack, since a legitimately
/// deep body stays deep in the output), and returns it.
fn render(content_type: &str, body: &[u8]) -> serde_json::Value {
    let ex = exchange(content_type, body);
    let mut out = Vec::new();
    entry::render_traffic(
        &Context {
            app_name: "svc".into(),
            aws_meta: None,
        },
        &ex,
        &mut out,
        &mut telemetry::hash::Scratch::new(),
    )
    .expect("renders");
    assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
    // Bounded: two bodies, each at most the capture limit, each written as body and body_raw,
    // each byte at most 6 output bytes (`\u003c`), plus a few KiB of structure.
    assert!(
        out.len() <= 4 * 6 * LIMIT + 16 * 1024,
        "line of {} bytes",
        out.len()
    );
    std::thread::Builder::new()
        .stack_size(512 << 20)
        .spawn(move || {
            let mut de = serde_json::Deserializer::from_slice(&out);
            de.disable_recursion_limit();
            let v: serde_json::Value =
                serde::Deserialize::deserialize(&mut de).expect("valid JSON");
            v
        })
        .expect("spawn")
        .join()
        .expect("parse thread")
}

#[test]
fn invalid_utf8_body() {
    let v = render("application/json", b"{\"a\":\"\xff\xfe\"}");
    assert_eq!(v["request"]["body"]["a"], "\u{fffd}\u{fffd}");
    let v = render("text/plain", b"\xff\x00abc\xc3");
    assert_eq!(v["request"]["body"], "\u{fffd}\u{0}abc\u{fffd}");
}

#[test]
fn truncated_json_is_raw_text() {
    let v = render("application/json", br#"{"a":[1,2,{"b":"#);
    assert_eq!(v["request"]["body"], r#"{"a":[1,2,{"b":"#);
}

#[test]
fn deeply_nested_json_100k_levels() {
    let deep = "[".repeat(100_000) + &"]".repeat(100_000);
    let v = render("application/json", deep.as_bytes());
    // Deeper than Go's 10 000 limit: logged as raw text, exactly as the original.
    assert!(v["request"]["body"]
        .as_str()
        .expect("raw")
        .starts_with("[[[["));
    let unterminated = "{\"a\":".repeat(50_000);
    let v = render("application/json", unterminated.as_bytes());
    assert!(v["request"]["body"].is_string());
}

#[test]
fn nesting_within_go_limit_is_parsed_and_written() {
    let depth = 9_000;
    let deep = "[".repeat(depth) + &"]".repeat(depth);
    let v = render("application/json", deep.as_bytes());
    assert!(v["request"]["body"].is_array());
    assert_eq!(v["request"]["body_hash"].as_str().map(str::len), Some(6));
}

#[test]
fn huge_numbers_kept_verbatim() {
    let big = format!("{{\"n\":{}{}}}", "9".repeat(5000), "e999999");
    let ex = exchange("application/json", big.as_bytes());
    let mut out = Vec::new();
    entry::render_traffic(
        &Context::default(),
        &ex,
        &mut out,
        &mut telemetry::hash::Scratch::new(),
    )
    .expect("renders");
    // Syntactically valid JSON (serde_json's skip path checks number syntax, not range).
    serde_json::from_slice::<serde::de::IgnoredAny>(&out).expect("valid JSON");
    let line = String::from_utf8(out).expect("utf8");
    assert!(line.contains(&format!("\"body\":{{\"n\":{}e999999}}", "9".repeat(5000))));
}

#[test]
fn xml_bomb_is_not_expanded() {
    let bomb = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;"><!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">]><lolz>&lol2;</lolz>"#;
    let v = render("application/xml", bomb.as_bytes());
    assert_eq!(v["request"]["body"], bomb);
    let external = r#"<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>"#;
    let v = render("text/xml", external.as_bytes());
    assert_eq!(v["request"]["body"], external);
}

#[test]
fn duplicate_keys_last_wins() {
    let v = render("application/json", br#"{"a":1,"a":2,"b":{"c":1,"c":[3]}}"#);
    assert_eq!(
        v["request"]["body"],
        serde_json::json!({"a":2,"b":{"c":[3]}})
    );
}

#[test]
fn oversized_body_truncated_and_marked() {
    let body = vec![b'<'; LIMIT * 2];
    let ex = exchange("application/json", &body);
    assert!(ex.request_body.truncated());
    let mut out = Vec::new();
    entry::render_traffic(
        &Context::default(),
        &ex,
        &mut out,
        &mut telemetry::hash::Scratch::new(),
    )
    .expect("renders");
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    let raw = v["request"]["body_raw"].as_str().expect("raw");
    assert!(raw.ends_with("...(truncated)"));
    assert_eq!(raw.len(), LIMIT + "...(truncated)".len());
    assert_eq!(v["RequestBodySize"], (LIMIT * 2) as u64);
}

/// The fuzz review's slow XML shapes (F4): distinct child names, many attributes, and the
/// lexical redaction scan over hostile text. Each must be linear in its input: four times the
/// input may cost about four times the time, below ten with noise (a quadratic shape costs
/// sixteen; the
/// distinct-children shape did before the fix: 104 ms for 64 KiB, 1.2 s for 256 KiB).
#[test]
fn adversarial_xml_and_redaction_inputs_are_linear() {
    use std::time::{Duration, Instant};
    use telemetry::output::OutputOptions;
    type Shape = fn(usize) -> String;
    let shapes: [(&str, &str, Shape); 4] = [
        ("distinct children", "application/xml", |n| {
            std::iter::once("<a>".to_owned())
                .chain((0..n / 8).map(|i| format!("<b{i}/>")))
                .chain(std::iter::once("</a>".to_owned()))
                .collect()
        }),
        ("distinct attributes", "application/xml", |n| {
            let attrs: Vec<String> = (0..n / 10).map(|i| format!("k{i}=\"v\"")).collect();
            format!("<a {}/>", attrs.join(" "))
        }),
        ("unclosed sensitive tags", "application/xml", |n| {
            "<token ".repeat(n / 7) + ">"
        }),
        (
            "sensitive names",
            "application/x-www-form-urlencoded",
            |n| "password=".repeat(n / 9),
        ),
    ];
    let cost = |ct: &str, body: &str| {
        let ex = exchange(ct, body.as_bytes());
        // Best of several: a run preempted on a busy machine is slower, never faster, so the
        // minimum is the cost of the work itself.
        let mut best = Duration::MAX;
        for _ in 0..7 {
            let started = Instant::now();
            let mut out = Vec::new();
            entry::render_traffic_with(
                &Context::default(),
                &OutputOptions::recommended(),
                &ex,
                &mut out,
                &mut telemetry::hash::Scratch::new(),
            )
            .expect("renders");
            best = best.min(started.elapsed());
        }
        best
    };
    for (name, ct, shape) in shapes {
        let small = cost(ct, &shape(32 << 10));
        let big = cost(ct, &shape(128 << 10));
        let ratio = big.as_secs_f64() / small.as_secs_f64().max(1e-6);
        assert!(
            ratio < 10.0,
            "{name}: 32 KiB {small:?}, 128 KiB {big:?} (x{ratio:.1}): not linear"
        );
    }
    let distinct = shapes[0].2(256 << 10);
    let parsed = telemetry::parse::xml::parse(distinct.as_bytes()).expect("parses");
    let telemetry::value::Value::Object(root) = parsed.value() else {
        panic!("object")
    };
    let telemetry::value::Value::Object(children) = &root[0].1 else {
        panic!("children")
    };
    assert_eq!(children.len(), (256 << 10) / 8);
}
