//! telemetry's form/query parsers: every value they produce is written as JSON.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use telemetry::parse::{form, multimap_value};

fuzz_target!(|data: &[u8]| {
    let _ = form::query_unescape(data);
    let (pairs, _) = form::parse_query(data);
    let value = multimap_value(pairs);
    let mut out = Vec::new();
    value.write_json(&mut out);
    common::assert_json("form value", &out);
    telemetry::hash::signature(&value, &mut Vec::new());
    let map = telemetry::multimap::Multimap::from_query(data);
    out.clear();
    map.write_json(&mut out);
    common::assert_json("query multimap", &out);
});
