//! telemetry's JSON body parser: the value it keeps is written as JSON, and writing is
//! idempotent (parsing the written text and writing it again gives the same bytes).
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use telemetry::parse::json::parse_first;

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = parse_first(data) else {
        return;
    };
    let mut out = Vec::new();
    parsed.value().write_json(&mut out);
    common::assert_json("written body", &out);
    telemetry::hash::signature(parsed.value(), &mut Vec::new());
    let again = parse_first(&out).expect("written JSON parses");
    let mut out2 = Vec::new();
    again.value().write_json(&mut out2);
    assert_eq!(out, out2, "writing is not idempotent");
});
