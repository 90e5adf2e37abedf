//! The variables that shape the log line beyond the original's format: redaction, endpoint
//! templates and their cap, decoded bodies, the line bound, binary bodies and how long a
//! blocked stdout may hold traffic back, and `LOG_COMPAT=original`, which sets them all back to the original's line at once.
//!
//! [`load`] reads them all and reports every bad one (each error names its variable), so the
//! configuration loader needs one call; [`describe`] renders the result for `--check`.

use telemetry::output::{BinaryBodies, OutputOptions};
use telemetry::redact::Redaction;
use telemetry::route::{Pattern, Templates};

use crate::config::{ConfigError, Env};

/// Smallest accepted non-zero `LOG_LINE_LIMIT`: room for the entry's fixed members and metrics.
pub const MIN_LINE_LIMIT: usize = 4096;

/// `--help` lines for these variables.
pub const HELP: &str = "\
  LOG_COMPAT (unset; original = every setting below back to the original's line, byte for byte)
  LOG_REDACT (on|off; on)  REDACT_HEADERS, REDACT_KEYS (comma lists added to the built-in ones)
  ENDPOINT_TEMPLATES (auto|off|/orders/{orderId}/items,/files/{path*}; auto)
  ENDPOINT_LIMIT (200; 0 = no cap)  LOG_DECODE_BODIES (on|off; on)
  LOG_LINE_LIMIT (262144 bytes; 0 = no bound)  LOG_BINARY_BODIES (compact|escape; compact)
  LOG_STDOUT_TIMEOUT (5s; how long traffic waits for a blocked stdout before lines are dropped,
    counted and reported; 0 = wait as long as it takes)
";

fn value(env: &dyn Env, key: &str) -> Option<String> {
    env.get(key)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn on_off(env: &dyn Env, key: &str, fallback: bool, errors: &mut Vec<ConfigError>) -> bool {
    match value(env, key).as_deref() {
        None => fallback,
        Some(v) if v.eq_ignore_ascii_case("on") => true,
        Some(v) if v.eq_ignore_ascii_case("off") => false,
        Some(v) => {
            errors.push(ConfigError(format!("{key} must be on or off, got {v:?}")));
            fallback
        }
    }
}

fn list(env: &dyn Env, key: &str, errors: &mut Vec<ConfigError>) -> Vec<String> {
    let Some(raw) = value(env, key) else {
        return Vec::new();
    };
    let items: Vec<String> = raw.split(',').map(|s| s.trim().to_owned()).collect();
    if items.iter().any(String::is_empty) {
        errors.push(ConfigError(format!(
            "{key} must be a comma-separated list of names without empty entries, got {raw:?}"
        )));
        return Vec::new();
    }
    items
}

fn size(
    env: &dyn Env,
    key: &str,
    fallback: usize,
    min_nonzero: usize,
    errors: &mut Vec<ConfigError>,
) -> usize {
    let Some(raw) = value(env, key) else {
        return fallback;
    };
    match raw.parse::<usize>() {
        Ok(0) => 0,
        Ok(n) if n >= min_nonzero => n,
        Ok(n) => {
            errors.push(ConfigError(format!(
                "{key} must be 0 or at least {min_nonzero}, got {n}"
            )));
            fallback
        }
        Err(_) => {
            errors.push(ConfigError(format!(
                "{key} must be a non-negative integer, got {raw:?}"
            )));
            fallback
        }
    }
}

/// Reads the output variables. Explicitly set variables win over `LOG_COMPAT=original`, which
/// only changes the defaults. Every invalid variable yields one error naming it.
pub fn load(env: &dyn Env) -> Result<OutputOptions, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let compat = match value(env, "LOG_COMPAT").as_deref() {
        None => false,
        Some("original") => true,
        Some(v) => {
            errors.push(ConfigError(format!(
                "LOG_COMPAT must be unset or original, got {v:?}"
            )));
            false
        }
    };
    let base = if compat {
        OutputOptions::ORIGINAL
    } else {
        OutputOptions::recommended()
    };

    let redact = on_off(env, "LOG_REDACT", base.redaction.is_some(), &mut errors);
    let headers = list(env, "REDACT_HEADERS", &mut errors);
    let keys = list(env, "REDACT_KEYS", &mut errors);
    let redaction = redact.then(|| Redaction::new(&headers, &keys));

    let templates = match value(env, "ENDPOINT_TEMPLATES") {
        None => base.templates.clone(),
        Some(v) if v.eq_ignore_ascii_case("auto") => Templates {
            auto: true,
            patterns: Vec::new(),
        },
        Some(v) if v.eq_ignore_ascii_case("off") => Templates::OFF,
        Some(v) => {
            let mut patterns = Vec::new();
            for item in v.split(',').map(str::trim) {
                match Pattern::parse(item) {
                    Ok(p) => patterns.push(p),
                    Err(e) => errors.push(ConfigError(format!("ENDPOINT_TEMPLATES: {e}"))),
                }
            }
            Templates {
                auto: true,
                patterns,
            }
        }
    };
    let endpoint_limit = size(env, "ENDPOINT_LIMIT", base.endpoint_limit, 1, &mut errors);
    let decode_bodies = on_off(env, "LOG_DECODE_BODIES", base.decode_bodies, &mut errors);
    let line_limit = size(
        env,
        "LOG_LINE_LIMIT",
        base.line_limit,
        MIN_LINE_LIMIT,
        &mut errors,
    );
    let binary_bodies = match value(env, "LOG_BINARY_BODIES").as_deref() {
        None => base.binary_bodies,
        Some(v) if v.eq_ignore_ascii_case("compact") => BinaryBodies::Compact,
        Some(v) if v.eq_ignore_ascii_case("escape") => BinaryBodies::Escape,
        Some(v) => {
            errors.push(ConfigError(format!(
                "LOG_BINARY_BODIES must be compact or escape, got {v:?}"
            )));
            base.binary_bodies
        }
    };
    let stdout_timeout = match value(env, "LOG_STDOUT_TIMEOUT") {
        None => base.stdout_timeout,
        Some(v) => match gosyntax::parse_go_duration_nonneg(&v) {
            Ok(d) if d.is_zero() => None,
            Ok(d) => Some(d),
            Err(e) => {
                errors.push(ConfigError(format!(
                    "LOG_STDOUT_TIMEOUT must be a duration such as 5s or 0, got {v:?}: {e}"
                )));
                base.stdout_timeout
            }
        },
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(OutputOptions {
        redaction,
        templates,
        endpoint_limit,
        decode_bodies,
        line_limit,
        binary_bodies,
        stdout_timeout,
    })
}

/// The resolved settings as (variable, value) pairs, for `--check`.
pub fn describe(o: &OutputOptions) -> Vec<(&'static str, String)> {
    let on = |b: bool| if b { "on" } else { "off" }.to_owned();
    let mut out = vec![(
        "LOG_COMPAT",
        if *o == OutputOptions::ORIGINAL {
            "original".to_owned()
        } else {
            "(unset)".to_owned()
        },
    )];
    match &o.redaction {
        Some(r) => {
            out.push(("LOG_REDACT", "on".to_owned()));
            out.push(("REDACT_HEADERS", r.headers().collect::<Vec<_>>().join(",")));
            out.push(("REDACT_KEYS", r.keys().collect::<Vec<_>>().join(",")));
        }
        None => out.push(("LOG_REDACT", "off".to_owned())),
    }
    let templates = if o.templates.is_off() {
        "off".to_owned()
    } else if o.templates.patterns.is_empty() {
        "auto".to_owned()
    } else {
        let p: Vec<&str> = o.templates.patterns.iter().map(Pattern::as_str).collect();
        format!("{} (then auto)", p.join(","))
    };
    out.push(("ENDPOINT_TEMPLATES", templates));
    out.push((
        "ENDPOINT_LIMIT",
        match o.endpoint_limit {
            0 => "0 (no cap)".to_owned(),
            n => n.to_string(),
        },
    ));
    out.push(("LOG_DECODE_BODIES", on(o.decode_bodies)));
    out.push((
        "LOG_LINE_LIMIT",
        match o.line_limit {
            0 => "0 (no bound)".to_owned(),
            n => n.to_string(),
        },
    ));
    out.push((
        "LOG_BINARY_BODIES",
        match o.binary_bodies {
            BinaryBodies::Compact => "compact",
            BinaryBodies::Escape => "escape",
        }
        .to_owned(),
    ));
    out.push((
        "LOG_STDOUT_TIMEOUT",
        match o.stdout_timeout {
            None => "0 (wait as long as it takes)".to_owned(),
            Some(d) => gosyntax::format_go_duration(d),
        },
    ));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use telemetry::output::{DEFAULT_ENDPOINT_LIMIT, DEFAULT_LINE_LIMIT};

    #[test]
    fn defaults_are_the_recommended_options() {
        let o = load(&[("UNRELATED", "x")]).unwrap();
        assert_eq!(o, OutputOptions::recommended());
        assert_eq!(o.endpoint_limit, DEFAULT_ENDPOINT_LIMIT);
        assert_eq!(o.line_limit, DEFAULT_LINE_LIMIT);
    }

    #[test]
    fn compat_original_sets_everything_back_and_explicit_values_win() {
        assert_eq!(
            load(&[("LOG_COMPAT", "original")]).unwrap(),
            OutputOptions::ORIGINAL
        );
        let o = load(&[("LOG_COMPAT", "original"), ("LOG_REDACT", "on")]).unwrap();
        assert!(o.redaction.is_some());
        assert!(!o.decode_bodies);
        let o = load(&[
            ("LOG_REDACT", "off"),
            ("ENDPOINT_TEMPLATES", "off"),
            ("ENDPOINT_LIMIT", "0"),
            ("LOG_DECODE_BODIES", "off"),
            ("LOG_LINE_LIMIT", "0"),
            ("LOG_BINARY_BODIES", "escape"),
            ("LOG_STDOUT_TIMEOUT", "0"),
        ])
        .unwrap();
        assert_eq!(o, OutputOptions::ORIGINAL);
        assert_eq!(describe(&o)[0].1, "original");
    }

    #[test]
    fn every_bad_variable_is_named() {
        let errors = load(&[
            ("LOG_COMPAT", "new"),
            ("LOG_REDACT", "yes"),
            ("REDACT_HEADERS", " , "),
            ("REDACT_KEYS", "pin,,otp"),
            ("ENDPOINT_TEMPLATES", "orders/{id},/a/{}"),
            ("ENDPOINT_LIMIT", "-1"),
            ("LOG_DECODE_BODIES", "1"),
            ("LOG_LINE_LIMIT", "100"),
            ("LOG_BINARY_BODIES", "base64"),
            ("LOG_STDOUT_TIMEOUT", "-1s"),
        ])
        .unwrap_err();
        let text: Vec<String> = errors.iter().map(|e| e.0.clone()).collect();
        for var in [
            "LOG_COMPAT",
            "LOG_REDACT",
            "REDACT_HEADERS",
            "REDACT_KEYS",
            "ENDPOINT_LIMIT",
            "LOG_DECODE_BODIES",
            "LOG_LINE_LIMIT",
            "LOG_BINARY_BODIES",
            "LOG_STDOUT_TIMEOUT",
        ] {
            assert_eq!(
                text.iter().filter(|t| t.starts_with(var)).count(),
                1,
                "{var} in {text:?}"
            );
        }
        assert_eq!(
            text.iter()
                .filter(|t| t.starts_with("ENDPOINT_TEMPLATES"))
                .count(),
            2
        );
    }

    #[test]
    fn patterns_and_lists_resolve() {
        let o = load(&[
            (
                "ENDPOINT_TEMPLATES",
                "/orders/{orderId}/items, /files/{path*}",
            ),
            ("REDACT_HEADERS", "X-Session"),
            ("REDACT_KEYS", "pin"),
            ("ENDPOINT_LIMIT", "5"),
            ("LOG_STDOUT_TIMEOUT", "1500ms"),
        ])
        .unwrap();
        assert_eq!(
            o.stdout_timeout,
            Some(std::time::Duration::from_millis(1500))
        );
        assert_eq!(o.templates.patterns.len(), 2);
        assert!(o.templates.auto);
        assert_eq!(o.endpoint_limit, 5);
        let r = o.redaction.as_ref().unwrap();
        assert!(r.is_sensitive_header(b"x-session"));
        assert!(r.is_sensitive_key(b"PIN"));
        let d = describe(&o);
        assert!(d
            .iter()
            .any(|(k, v)| *k == "ENDPOINT_TEMPLATES" && v.contains("/files/{path*}")));
    }
}
