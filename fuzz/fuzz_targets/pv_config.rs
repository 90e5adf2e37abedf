//! proxyview's server and agent YAML configurations and the agent's server URL: errors, never
//! panics.
#![no_main]

#[allow(dead_code, unused_imports)]
#[path = "../../crates/proxyview/src/config.rs"]
mod config;
#[allow(dead_code, unused_imports)]
#[path = "../../crates/proxyview/src/protocol.rs"]
mod protocol;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("fuzz.yaml");
    let _ = config::ServerConfig::from_yaml(path, text);
    let _ = config::ClientConfig::from_yaml(path, text);
    let _ = config::ServerUrl::parse(text);
});
