//! `cwproxy --check`: the resolved configuration as a table a deployer can read, one row per
//! setting with where its value came from. A row is a plain [`Row`] so any module that owns
//! settings adds its own rows with [`Row::new`] and one `extend` in [`rows`]; the printer never
//! needs to change.

use std::fmt::Write as _;

use crate::config::{Config, Env};

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The variable (or, for a derived value, a short name).
    pub name: &'static str,
    /// The value as cwproxy will use it.
    pub value: String,
    /// `set`, `default`, or a few words on how it was derived.
    pub source: String,
}

impl Row {
    /// A row for variable `name`: its source is `set` when the variable is non-empty, else
    /// `default`.
    pub fn new(env: &dyn Env, name: &'static str, value: impl Into<String>) -> Self {
        let set = env.get(name).is_some_and(|v| !v.trim().is_empty());
        Self {
            name,
            value: value.into(),
            source: if set { "set" } else { "default" }.to_owned(),
        }
    }

    /// A row with an explicit source text.
    pub fn derived(
        name: &'static str,
        value: impl Into<String>,
        source: impl Into<String>,
    ) -> Self {
        Self {
            name,
            value: value.into(),
            source: source.into(),
        }
    }
}

/// `500-599` or `502,503-504`: consecutive codes shown as ranges.
fn code_ranges(codes: &[u16]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < codes.len() {
        let start = codes[i];
        let mut end = start;
        while i + 1 < codes.len() && codes[i + 1] == end + 1 {
            i += 1;
            end = codes[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            let _ = write!(out, "{start}");
        } else {
            let _ = write!(out, "{start}-{end}");
        }
        i += 1;
    }
    out
}

fn duration(d: std::time::Duration) -> String {
    gosyntax::format_go_duration(d)
}

/// The rows of `config`, in the README table's order.
pub fn rows(env: &dyn Env, config: &Config) -> Vec<Row> {
    let retry = &config.retry;
    let methods: Vec<&str> = retry.methods.iter().map(http::Method::as_str).collect();
    let health: Vec<String> = config.health_urls.iter().map(|u| u.url()).collect();
    let mut rows = vec![
        Row::new(env, "PROXY_PORT", config.proxy_port.to_string()),
        Row::new(
            env,
            "PROXY_HOST",
            config.proxy_host.map_or_else(
                || "(every interface, dual stack)".to_owned(),
                |ip| ip.to_string(),
            ),
        ),
        Row::new(
            env,
            "UPSTREAM_HEADER_TIMEOUT",
            duration(config.timeouts.upstream_header),
        ),
        Row::new(
            env,
            "UPSTREAM_CONNECT_TIMEOUT",
            duration(config.timeouts.upstream_connect),
        ),
        Row::new(
            env,
            "CLIENT_HEADER_TIMEOUT",
            duration(config.timeouts.client_header),
        ),
        Row::new(
            env,
            "CLIENT_IDLE_TIMEOUT",
            duration(config.timeouts.client_idle),
        ),
        Row::new(env, "APP_HOST", config.app_host.clone()),
        Row::new(env, "APP_PORT", config.app_port.to_string()),
        Row::new(env, "APP_NAME", config.app_name.clone()),
        Row::new(env, "HEALTH_URLS", health.join(",")),
        Row::new(env, "HEALTH_INTERVAL", duration(config.health_interval)),
        Row::new(env, "CAPTURE_BODY_LIMIT", config.capture_limit.to_string()),
        Row::new(env, "LOG_GROUP_NAME", config.log_group_name.clone()),
        Row::new(
            env,
            "HEALTH_LOG_GROUP_NAME",
            config.health_log_group_name.clone(),
        ),
        Row::new(
            env,
            "BACKEND_RETRY_MAX_ATTEMPTS",
            retry.max_attempts.to_string(),
        ),
        Row::new(
            env,
            "BACKEND_RETRY_INITIAL_BACKOFF",
            duration(retry.initial_backoff),
        ),
        Row::new(
            env,
            "BACKEND_RETRY_MAX_BACKOFF",
            duration(retry.max_backoff),
        ),
        Row::new(
            env,
            "BACKEND_RETRY_BACKOFF_MULTIPLIER",
            retry.multiplier.to_string(),
        ),
        Row::new(env, "BACKEND_RETRY_METHODS", methods.join(",")),
        Row::new(
            env,
            "BACKEND_RETRY_STATUS_CODES",
            code_ranges(&retry.status_codes),
        ),
        Row::new(
            env,
            "BACKEND_RETRY_ON_TRANSPORT_ERRORS",
            retry.retry_transport_errors.to_string(),
        ),
        Row::new(
            env,
            "BACKEND_RETRY_BODY_BUFFER_BYTES",
            retry.body_buffer_bytes.to_string(),
        ),
        Row::new(
            env,
            "INSPECTOR_DETECT_TIMEOUT",
            duration(config.detect_timeout),
        ),
        Row::new(env, "INSPECTOR_STOP_GRACE", duration(config.stop_grace)),
        Row::new(env, "INSPECTOR_CHILD_STDOUT", config.child_stdout.as_str()),
        Row::new(
            env,
            "METADATA_DETECT_TIMEOUT",
            duration(config.metadata_timeout),
        ),
    ];
    rows.extend(
        crate::output::describe(&config.output)
            .into_iter()
            .chain(crate::admin::describe(&config.model))
            .map(|(name, value)| Row::new(env, name, value)),
    );
    if retry.max_attempts <= 1 {
        rows.push(Row::derived(
            "retries",
            "off",
            "BACKEND_RETRY_MAX_ATTEMPTS=1",
        ));
    }
    rows
}

/// The report: a header line, then `NAME  value  (source)` aligned in columns.
pub fn render(rows: &[Row]) -> String {
    let name_width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
    let value_width = rows
        .iter()
        .map(|r| r.value.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::from("cwproxy configuration is valid; resolved settings:\n");
    for r in rows {
        let _ = writeln!(
            out,
            "  {:name_width$}  {:value_width$}  ({})",
            r.name, r.value, r.source
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_ranges_merge_runs() {
        assert_eq!(code_ranges(&(500..=599).collect::<Vec<_>>()), "500-599");
        assert_eq!(code_ranges(&[502, 503, 504, 507]), "502-504,507");
        assert_eq!(code_ranges(&[]), "");
    }
}
