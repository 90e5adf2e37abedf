//! Checks shared by the targets.

/// Panics unless `bytes` is one JSON value by RFC 8259's grammar (no depth limit).
///
/// The value is checked as a `RawValue`, which validates the syntax without converting numbers:
/// telemetry keeps a body's number literals as written, and RFC 8259 allows literals beyond
/// `f64` (`7E777`), which a converting parser would reject.
pub fn assert_json(what: &str, bytes: &[u8]) {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.disable_recursion_limit();
    let value = <&serde_json::value::RawValue as serde::Deserialize>::deserialize(&mut de);
    if let Err(e) = value.and_then(|_| de.end()) {
        panic!(
            "{what} is not JSON ({e}): {}",
            String::from_utf8_lossy(bytes)
        );
    }
}
