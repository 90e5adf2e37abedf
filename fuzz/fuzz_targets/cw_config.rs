//! cwproxy's environment configuration: `config::load` with every variable taken from the
//! input (`KEY=VALUE` lines), and `resolve_health_urls` on the raw input. Errors, never panics,
//! and an error result carries at least one message.
#![no_main]

#[allow(dead_code, unused_imports)]
#[path = "../../crates/cwproxy/src/admin.rs"]
mod admin;
#[allow(dead_code, unused_imports)]
#[path = "../../crates/cwproxy/src/config.rs"]
mod config;
/// `metadata.rs` needs the AWS SDK (its IMDS client), which this crate does not build; config.rs
/// only asks it for the detection budget, so `METADATA_DETECT_TIMEOUT` is left at its default
/// here (its value goes through `gosyntax::parse_go_duration_nonneg`, as other variables do).
mod metadata {
    pub const DETECT_BUDGET: std::time::Duration = std::time::Duration::from_millis(200);

    pub fn detect_budget(_: &dyn crate::config::Env) -> Result<std::time::Duration, String> {
        Ok(DETECT_BUDGET)
    }
}
#[allow(dead_code, unused_imports)]
#[path = "../../crates/cwproxy/src/output.rs"]
mod output;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = config::resolve_health_urls(text, "127.0.0.1", 8080);
    let env: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let names = config::NameSources {
        metadata: None,
        hostname: Some("fuzz".to_owned()),
    };
    if let Err(errors) = config::load(&env, &names, None) {
        assert!(!errors.0.is_empty(), "an error result without errors");
        for e in &errors.0 {
            assert!(!e.0.is_empty(), "an empty error message");
        }
    }
});
