//! proxygw's YAML configuration through everything `load_str` does (YAML, unknown keys, decode,
//! validation, JSON schema, extra checks): errors, never panics.
#![no_main]

#[allow(dead_code, unused_imports)]
#[path = "../../crates/proxygw/src/config.rs"]
mod config;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = config::load_str(text);
    }
});
