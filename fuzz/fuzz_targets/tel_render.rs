//! `render_traffic` and `render_health` on records built entirely from the input (method, URI,
//! headers, bodies and their types, capture limits, status, times, names, endpoint, aws_meta),
//! with the original's options and the production ones: every line written, whether rendering
//! succeeded or not, parses as JSON.
#![no_main]

#[path = "common.rs"]
mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use telemetry::capture::Capture;
use telemetry::entry::{render_health_with, render_traffic_with, Context};
use telemetry::hash::Scratch;
use telemetry::output::OutputOptions;
use telemetry::record::{Exchange, HealthProbe};

const TYPES: [&str; 6] = [
    "application/json",
    "application/x-www-form-urlencoded",
    "application/xml",
    "text/plain; charset=utf-8",
    "application/octet-stream",
    "application/vnd.api+json",
];

fn headers(u: &mut Unstructured<'_>) -> Result<http::HeaderMap> {
    let mut map = http::HeaderMap::new();
    for _ in 0..u.int_in_range(0..=6)? {
        let name: &[u8] = u.arbitrary()?;
        let value: &[u8] = u.arbitrary()?;
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            map.append(n, v);
        }
    }
    if u.arbitrary()? {
        let t = TYPES[u.choose_index(TYPES.len())?];
        map.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(t),
        );
    }
    Ok(map)
}

fn capture(u: &mut Unstructured<'_>) -> Result<Capture> {
    let limit = u.int_in_range(0..=4096)?;
    let bytes: &[u8] = u.arbitrary()?;
    Ok(Capture::from_bytes(limit, bytes))
}

fn time(u: &mut Unstructured<'_>) -> Result<SystemTime> {
    let ms = u.int_in_range(0..=4_102_444_800_000u64)?;
    Ok(UNIX_EPOCH + Duration::from_millis(ms))
}

fn exchange(u: &mut Unstructured<'_>) -> Result<Exchange> {
    let method: &[u8] = u.arbitrary()?;
    let method = http::Method::from_bytes(method).unwrap_or(http::Method::GET);
    let target: &[u8] = u.arbitrary()?;
    let uri = http::Uri::try_from(target).unwrap_or_else(|_| http::Uri::from_static("/"));
    let request_body = capture(u)?;
    let response_body = if u.arbitrary()? {
        Some(capture(u)?)
    } else {
        None
    };
    Ok(Exchange {
        start: time(u)?,
        end: time(u)?,
        elapsed: Duration::from_nanos(u.arbitrary()?),
        method,
        uri,
        tls: u.arbitrary()?,
        request_headers: headers(u)?,
        request_body,
        status: u.arbitrary()?,
        response_headers: headers(u)?,
        response_body,
        local_response_bytes: u.arbitrary()?,
        endpoint: u.arbitrary()?,
        client_id: u.arbitrary()?,
    })
}

fn probe(u: &mut Unstructured<'_>) -> Result<HealthProbe> {
    Ok(HealthProbe {
        url: u.arbitrary()?,
        host: u.arbitrary()?,
        port: u.arbitrary()?,
        path: u.arbitrary()?,
        raw_query: u.arbitrary()?,
        start: time(u)?,
        end: time(u)?,
        latency: Duration::from_nanos(u.arbitrary()?),
        status: u.arbitrary()?,
        headers: headers(u)?,
        body: capture(u)?,
        error: u.arbitrary()?,
    })
}

fn check_lines(what: &str, out: &[u8]) {
    for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        common::assert_json(what, line);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(app_name) = u.arbitrary::<String>() else {
        return;
    };
    // aws_meta is pre-rendered JSON from the metadata readers: an object or nothing.
    let aws_meta = match u.arbitrary::<Option<String>>() {
        Ok(Some(zone)) => {
            let mut meta = b"{\"zone\":".to_vec();
            telemetry::json::write_str(&mut meta, zone.as_bytes());
            meta.push(b'}');
            Some(meta)
        }
        _ => None,
    };
    let ctx = Context { app_name, aws_meta };
    let (Ok(ex), Ok(p)) = (exchange(&mut u), probe(&mut u)) else {
        return;
    };
    let mut scratch = Scratch::new();
    for opts in [OutputOptions::ORIGINAL, OutputOptions::recommended()] {
        let mut out = Vec::new();
        let _ = render_traffic_with(&ctx, &opts, &ex, &mut out, &mut scratch);
        check_lines("traffic line", &out);
        out.clear();
        let _ = render_health_with(&ctx, &opts, &p, &mut out, &mut scratch);
        check_lines("health line", &out);
    }
});
