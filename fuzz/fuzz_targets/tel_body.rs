//! A captured body parsed by its content type (the first byte picks one), truncated or not, in
//! both binary-body forms: `body` and `body_raw` are JSON.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use telemetry::entry::BodyPart;
use telemetry::output::BinaryBodies;

const TYPES: [&[u8]; 7] = [
    b"application/json",
    b"application/x-www-form-urlencoded",
    b"text/xml; charset=utf-8",
    b"application/problem+json",
    b"application/soap+xml",
    b"text/plain",
    b"multipart/form-data; boundary=x",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let truncated = pick & 0x80 != 0;
    let (content_type, body): (Option<&[u8]>, &[u8]) = match usize::from(pick & 0x0f) {
        i if i < TYPES.len() => (Some(TYPES[i]), rest),
        7 => {
            // A free-form content type up to the first NUL.
            let cut = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            (Some(&rest[..cut]), rest.get(cut + 1..).unwrap_or_default())
        }
        _ => (None, rest),
    };
    for binary in [BinaryBodies::Escape, BinaryBodies::Compact] {
        let part = BodyPart::parse_as(content_type, body, truncated, true, binary);
        let mut out = Vec::new();
        part.value.value().write_json(&mut out);
        common::assert_json("body", &out);
        if let Some(raw) = &part.raw {
            let mut s = Vec::new();
            telemetry::json::write_str(&mut s, raw);
            common::assert_json("body_raw", &s);
        }
    }
});
