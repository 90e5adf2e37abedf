//! telemetry's XML body mapping: what it keeps is written as JSON.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = telemetry::parse::xml::parse(data) else {
        return;
    };
    let mut out = Vec::new();
    parsed.value().write_json(&mut out);
    common::assert_json("xml value", &out);
    telemetry::hash::signature(parsed.value(), &mut Vec::new());
});
