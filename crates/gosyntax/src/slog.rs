//! Go's `log/slog` level names.

use crate::go_quote;

/// A slog level: DEBUG=-4, INFO=0, WARN=4, ERROR=8, plus an optional signed offset.
pub fn parse_slog_level(text: &str) -> Result<i32, String> {
    let err = |m: &str| format!("slog: level string {}: {m}", go_quote(text));
    let (name, offset) = match text.find(['+', '-']) {
        Some(i) => {
            let off: i32 = text[i..].parse().map_err(|_| err("bad offset"))?;
            (&text[..i], off)
        }
        None => (text, 0),
    };
    let base: i32 = match name.to_ascii_uppercase().as_str() {
        "DEBUG" => -4,
        "INFO" => 0,
        "WARN" => 4,
        "ERROR" => 8,
        _ => return Err(err("unknown name")),
    };
    // Go's level is an `int`; here it is an `i32`, so a sum that leaves it is an error, never a wrap.
    base.checked_add(offset)
        .ok_or_else(|| err("offset out of range"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn slog_levels() {
        assert_eq!(parse_slog_level("info"), Ok(0));
        assert_eq!(parse_slog_level("WARN"), Ok(4));
        assert_eq!(parse_slog_level("ERROR+2"), Ok(10));
        assert_eq!(parse_slog_level("DEBUG-1"), Ok(-5));
        assert!(parse_slog_level("loud")
            .unwrap_err()
            .contains("unknown name"));
        assert!(parse_slog_level("ERROR+2147483647")
            .unwrap_err()
            .contains("out of range"));
        assert!(parse_slog_level("DEBUG-2147483648")
            .unwrap_err()
            .contains("out of range"));
        assert_eq!(parse_slog_level("INFO-2147483648"), Ok(i32::MIN));
    }
}
