//! Configuration from environment variables only, with the Go cwproxy's defaults, evaluation
//! order and error messages (spec §2, §8.1) plus the seed's newer variables.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use gosyntax::{atoi, go_quote, parse_bool, parse_float, parse_go_duration};
use httpproxy::RetryPolicy;

/// A configuration error; its text is printed as `cwproxy: <text>` and names its variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// Every configuration error of one run, in the original's evaluation order, so the first one is
/// the error the original printed (it stopped there) and a deployer fixes the rest in one go.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.0.iter().map(|e| e.0.as_str()).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// Collects errors while loading goes on with a fallback value, so one bad variable does not
/// hide the next one (values derived from a bad one are checked against its default).
#[derive(Debug, Default)]
pub struct Errors(Vec<ConfigError>);

impl Errors {
    /// The value, or `fallback` with the error kept.
    pub fn or<T>(&mut self, result: Result<T, ConfigError>, fallback: T) -> T {
        result.unwrap_or_else(|e| {
            self.0.push(e);
            fallback
        })
    }

    /// The value, or `fallback` with every error of a loader that reports several kept.
    pub fn all<T>(&mut self, result: Result<T, Vec<ConfigError>>, fallback: T) -> T {
        result.unwrap_or_else(|e| {
            self.0.extend(e);
            fallback
        })
    }

    /// `value` when nothing was collected, else every error.
    pub fn finish<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(ConfigErrors(self.0))
        }
    }
}

/// Default `PROXY_PORT`.
pub const DEFAULT_PROXY_PORT: u16 = 8081;
/// Default `APP_HOST`.
pub const DEFAULT_APP_HOST: &str = "127.0.0.1";
/// Default `APP_PORT`.
pub const DEFAULT_APP_PORT: u16 = 8080;
/// Path of the default health URL.
pub const DEFAULT_HEALTH_PATH: &str = "/health";
/// Default `HEALTH_INTERVAL`.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(30);
/// Default `CAPTURE_BODY_LIMIT`.
pub const DEFAULT_CAPTURE_LIMIT: usize = 64 << 10;
/// Default `INSPECTOR_DETECT_TIMEOUT`.
pub const DEFAULT_DETECT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `INSPECTOR_STOP_GRACE`.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// One resolved `HEALTH_URLS` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthUrl {
    /// `http` or `https`.
    pub scheme: String,
    /// Host name or IP (no brackets).
    pub host: String,
    /// Explicit port.
    pub port: u16,
    /// Path as written (default `/health`).
    pub path: String,
    /// Raw query without `?`.
    pub raw_query: String,
}

impl HealthUrl {
    /// The full URL with explicit port, e.g. `http://127.0.0.1:8080/health`.
    pub fn url(&self) -> String {
        let mut s = format!(
            "{}://{}{}",
            self.scheme,
            join_host_port(&self.host, self.port),
            self.path
        );
        if !self.raw_query.is_empty() {
            s.push('?');
            s.push_str(&self.raw_query);
        }
        s
    }
}

/// Go's `net.JoinHostPort`.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Everything cwproxy reads from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `PROXY_PORT`.
    pub proxy_port: u16,
    /// `PROXY_HOST`: the address to listen on; `None` (the default) is every interface, dual
    /// stack, as the Go original's `":port"`.
    pub proxy_host: Option<IpAddr>,
    /// `UPSTREAM_HEADER_TIMEOUT`, `UPSTREAM_CONNECT_TIMEOUT`, `CLIENT_HEADER_TIMEOUT`,
    /// `CLIENT_IDLE_TIMEOUT`.
    pub timeouts: Timeouts,
    /// `APP_HOST` (brackets stripped).
    pub app_host: String,
    /// `APP_PORT` (or the detected port in inspector mode).
    pub app_port: u16,
    /// Whether `APP_PORT` was present in the environment at all (inspector mode skips detection).
    pub app_port_present: bool,
    /// `APP_NAME` after the default chain.
    pub app_name: String,
    /// Resolved `HEALTH_URLS`.
    pub health_urls: Vec<HealthUrl>,
    /// `HEALTH_INTERVAL`.
    pub health_interval: Duration,
    /// `CAPTURE_BODY_LIMIT`.
    pub capture_limit: usize,
    /// `LOG_GROUP_NAME`.
    pub log_group_name: String,
    /// `HEALTH_LOG_GROUP_NAME`.
    pub health_log_group_name: String,
    /// `BACKEND_RETRY_*`.
    pub retry: RetryPolicy,
    /// `INSPECTOR_DETECT_TIMEOUT`.
    pub detect_timeout: Duration,
    /// `INSPECTOR_STOP_GRACE`.
    pub stop_grace: Duration,
    /// `INSPECTOR_CHILD_STDOUT`.
    pub child_stdout: ChildStdout,
    /// `METADATA_DETECT_TIMEOUT`.
    pub metadata_timeout: Duration,
    /// `LOG_COMPAT`, `LOG_REDACT`, `ENDPOINT_TEMPLATES`, … (see [`crate::output`]).
    pub output: telemetry::output::OutputOptions,
    /// `ADMIN_ADDR`, `DRIFT_LEARN`, `MODEL_MEMORY_LIMIT`, `STATE_DIR` (see [`crate::admin`]).
    pub model: crate::admin::Settings,
}

/// The proxy's timeouts, each settable by its variable; the defaults are the Go original's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `UPSTREAM_HEADER_TIMEOUT`: from the end of the request body to the response head.
    pub upstream_header: Duration,
    /// `UPSTREAM_CONNECT_TIMEOUT`.
    pub upstream_connect: Duration,
    /// `CLIENT_HEADER_TIMEOUT`: from a request head's first byte to its end.
    pub client_header: Duration,
    /// `CLIENT_IDLE_TIMEOUT`: a kept-alive client connection between requests.
    pub client_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            upstream_header: httpproxy::UPSTREAM_RESPONSE_HEADER_TIMEOUT,
            upstream_connect: httpproxy::UPSTREAM_CONNECT_TIMEOUT,
            client_header: httpproxy::HEADER_READ_TIMEOUT,
            client_idle: httpproxy::IDLE_TIMEOUT,
        }
    }
}

/// `PROXY_HOST`: an IP address (brackets optional around IPv6), or empty for every interface.
fn parse_proxy_host(env: &dyn Env) -> Result<Option<IpAddr>, ConfigError> {
    let raw = trimmed(env, "PROXY_HOST");
    if raw.is_empty() {
        return Ok(None);
    }
    let bare = raw
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(&raw);
    bare.parse::<IpAddr>().map(Some).map_err(|_| {
        err(format!(
            "PROXY_HOST must be an IP address to listen on (e.g. 127.0.0.1 or ::1), not {}",
            go_quote(&raw)
        ))
    })
}

fn parse_timeouts(env: &dyn Env, errors: &mut Errors) -> Timeouts {
    let d = Timeouts::default();
    let ms = Duration::from_millis(1);
    let mut one = |key: &str, fallback: Duration| {
        errors.or(parse_duration_var(env, key, fallback, ms), fallback)
    };
    Timeouts {
        upstream_header: one("UPSTREAM_HEADER_TIMEOUT", d.upstream_header),
        upstream_connect: one("UPSTREAM_CONNECT_TIMEOUT", d.upstream_connect),
        client_header: one("CLIENT_HEADER_TIMEOUT", d.client_header),
        client_idle: one("CLIENT_IDLE_TIMEOUT", d.client_idle),
    }
}

/// Where the inspector child's stdout goes (`INSPECTOR_CHILD_STDOUT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildStdout {
    /// `inherit` (default, the original's behaviour): the child writes to cwproxy's stdout, so
    /// its output is mixed with the JSON lines.
    Inherit,
    /// `stderr`: the child's stdout is cwproxy's stderr, so stdout holds only JSON lines.
    Stderr,
}

impl ChildStdout {
    /// The variable's value for this choice.
    pub fn as_str(self) -> &'static str {
        match self {
            ChildStdout::Inherit => "inherit",
            ChildStdout::Stderr => "stderr",
        }
    }
}

fn parse_child_stdout(env: &dyn Env) -> Result<ChildStdout, ConfigError> {
    let raw = trimmed(env, "INSPECTOR_CHILD_STDOUT");
    match raw.to_ascii_lowercase().as_str() {
        "" | "inherit" => Ok(ChildStdout::Inherit),
        "stderr" => Ok(ChildStdout::Stderr),
        _ => Err(err(format!(
            "INSPECTOR_CHILD_STDOUT must be inherit or stderr, got {}",
            go_quote(&raw)
        ))),
    }
}

/// Reads variables; tests pass a map instead of the process environment.
pub trait Env {
    /// The raw value, `None` when unset.
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var_os(key).map(|v| v.to_string_lossy().into_owned())
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn get(&self, key: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| (*v).to_owned())
    }
}

impl Env for Vec<(String, String)> {
    fn get(&self, key: &str) -> Option<String> {
        self.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }
}

/// Where the default `APP_NAME` comes from when the variable is empty.
pub struct NameSources<'a> {
    /// Name inferred from runtime metadata (EKS deployment, ECS task family), if any.
    pub metadata: Option<&'a str>,
    /// The OS hostname, if it could be read.
    pub hostname: Option<String>,
}

fn trimmed(env: &dyn Env, key: &str) -> String {
    env.get(key)
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

fn parse_port(env: &dyn Env, key: &str, fallback: u16) -> Result<u16, ConfigError> {
    let raw = trimmed(env, key);
    if raw.is_empty() {
        return Ok(fallback);
    }
    let port = atoi(&raw).map_err(|e| err(format!("{key} must be a valid integer port: {e}")))?;
    u16::try_from(port)
        .ok()
        .filter(|p| *p >= 1)
        .ok_or_else(|| err(format!("{key} must be between 1 and 65535")))
}

fn parse_host(env: &dyn Env, key: &str, fallback: &str) -> Result<String, ConfigError> {
    let mut raw = trimmed(env, key);
    if raw.is_empty() {
        raw = fallback.to_owned();
    }
    if raw.starts_with('[') && raw.ends_with(']') {
        raw = raw[1..raw.len() - 1].to_owned();
    }
    if raw.contains("://") || raw.contains(['/', '?', '#', '@']) {
        return Err(err(format!(
            "{key} must be a bare host without scheme, path, query, or user info"
        )));
    }
    if split_host_port(&raw).is_some() {
        return Err(err(format!("{key} must not include a port")));
    }
    Ok(raw)
}

/// Go's `net.SplitHostPort` success cases: `host:port`, `[v6]:port` (port may be any text).
fn split_host_port(s: &str) -> Option<(&str, &str)> {
    if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        let port = rest[end + 1..].strip_prefix(':')?;
        let host = &rest[..end];
        return (!port.contains([':', '[', ']'])).then_some((host, port));
    }
    let i = s.rfind(':')?;
    let (host, port) = (&s[..i], &s[i + 1..]);
    (!host.contains(':') && !host.contains(['[', ']']) && !port.contains(['[', ']']))
        .then_some((host, port))
}

fn parse_duration_var(
    env: &dyn Env,
    key: &str,
    fallback: Duration,
    min: Duration,
) -> Result<Duration, ConfigError> {
    let raw = trimmed(env, key);
    if raw.is_empty() {
        return Ok(fallback);
    }
    let ns =
        parse_go_duration(&raw).map_err(|e| err(format!("{key} must be a valid duration: {e}")))?;
    let d = u64::try_from(ns)
        .map(Duration::from_nanos)
        .unwrap_or(Duration::ZERO);
    if ns < 0 || d < min {
        return Err(err(format!(
            "{key} must be at least {}",
            gosyntax::format_go_duration(min)
        )));
    }
    Ok(d)
}

fn parse_int_var(env: &dyn Env, key: &str, fallback: i64, min: i64) -> Result<i64, ConfigError> {
    let raw = trimmed(env, key);
    if raw.is_empty() {
        return Ok(fallback);
    }
    let v = atoi(&raw).map_err(|e| err(format!("{key} must be a valid integer: {e}")))?;
    if v < min {
        return Err(err(format!("{key} must be at least {min}")));
    }
    Ok(v)
}

fn parse_multiplier(env: &dyn Env, fallback: f64) -> Result<f64, ConfigError> {
    let raw = trimmed(env, "BACKEND_RETRY_BACKOFF_MULTIPLIER");
    if raw.is_empty() {
        return Ok(fallback);
    }
    let m = parse_float(&raw).map_err(|e| {
        err(format!(
            "BACKEND_RETRY_BACKOFF_MULTIPLIER must be a number: {e}"
        ))
    })?;
    if m < 1.0 {
        return Err(err("BACKEND_RETRY_BACKOFF_MULTIPLIER must be at least 1"));
    }
    Ok(m)
}

fn parse_retry_methods(
    env: &dyn Env,
    fallback: &[http::Method],
) -> Result<Vec<http::Method>, ConfigError> {
    let raw = trimmed(env, "BACKEND_RETRY_METHODS");
    if raw.is_empty() {
        return Ok(fallback.to_vec());
    }
    let methods =
        httpproxy::parse_methods(&raw).map_err(|e| err(format!("BACKEND_RETRY_METHODS: {e}")))?;
    // A list of only separators would silently turn retries off; `BACKEND_RETRY_MAX_ATTEMPTS=1`
    // is the way to say that.
    if methods.is_empty() {
        return Err(err(format!(
            "BACKEND_RETRY_METHODS lists no method in {}: name at least one, or set BACKEND_RETRY_MAX_ATTEMPTS=1 to disable retries",
            go_quote(&raw)
        )));
    }
    Ok(methods)
}

fn parse_retry(env: &dyn Env, errors: &mut Errors) -> RetryPolicy {
    let defaults = RetryPolicy::default();
    let attempts = errors.or(
        parse_int_var(
            env,
            "BACKEND_RETRY_MAX_ATTEMPTS",
            i64::from(defaults.max_attempts),
            1,
        ),
        i64::from(defaults.max_attempts),
    );
    let initial = errors.or(
        parse_duration_var(
            env,
            "BACKEND_RETRY_INITIAL_BACKOFF",
            defaults.initial_backoff,
            Duration::ZERO,
        ),
        defaults.initial_backoff,
    );
    let max = errors.or(
        parse_duration_var(
            env,
            "BACKEND_RETRY_MAX_BACKOFF",
            defaults.max_backoff,
            Duration::ZERO,
        ),
        defaults.max_backoff,
    );
    let multiplier = errors.or(
        parse_multiplier(env, defaults.multiplier),
        defaults.multiplier,
    );
    let methods = errors.or(
        parse_retry_methods(env, &defaults.methods),
        defaults.methods.clone(),
    );
    let status_codes = errors.or(
        match trimmed(env, "BACKEND_RETRY_STATUS_CODES") {
            raw if raw.is_empty() => Ok(defaults.status_codes.clone()),
            raw => httpproxy::parse_status_codes(&raw)
                .map_err(|e| err(format!("BACKEND_RETRY_STATUS_CODES: {e}"))),
        },
        defaults.status_codes.clone(),
    );
    let transport = errors.or(
        match trimmed(env, "BACKEND_RETRY_ON_TRANSPORT_ERRORS") {
            raw if raw.is_empty() => Ok(defaults.retry_transport_errors),
            raw => parse_bool(&raw).map_err(|e| {
                err(format!(
                    "BACKEND_RETRY_ON_TRANSPORT_ERRORS must be a boolean: {e}"
                ))
            }),
        },
        defaults.retry_transport_errors,
    );
    let buffer = errors.or(
        parse_int_var(
            env,
            "BACKEND_RETRY_BODY_BUFFER_BYTES",
            defaults.body_buffer_bytes as i64,
            0,
        ),
        defaults.body_buffer_bytes as i64,
    );
    RetryPolicy {
        max_attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        initial_backoff: initial,
        max_backoff: max,
        multiplier,
        methods,
        status_codes,
        retry_transport_errors: transport,
        body_buffer_bytes: usize::try_from(buffer).unwrap_or(usize::MAX),
    }
    .normalized()
}

/// Loads the configuration. `detected` (inspector mode) replaces `APP_PORT`, and `APP_HOST` too
/// when that is unset, so default health URLs reach the address the child really listens on.
/// Every bad variable is reported, first in the original's evaluation order.
pub fn load(
    env: &dyn Env,
    names: &NameSources<'_>,
    detected: Option<SocketAddr>,
) -> Result<Config, ConfigErrors> {
    let mut errors = Errors::default();
    let mut app_host = errors.or(
        parse_host(env, "APP_HOST", DEFAULT_APP_HOST),
        DEFAULT_APP_HOST.to_owned(),
    );
    let app_port_present = env.get("APP_PORT").is_some();
    let mut app_port = errors.or(
        parse_port(env, "APP_PORT", DEFAULT_APP_PORT),
        DEFAULT_APP_PORT,
    );
    if let Some(addr) = detected {
        app_port = addr.port();
        if trimmed(env, "APP_HOST").is_empty() {
            app_host = addr.ip().to_string();
        }
    }
    let proxy_port = errors.or(
        parse_port(env, "PROXY_PORT", DEFAULT_PROXY_PORT),
        DEFAULT_PROXY_PORT,
    );
    let mut app_name = trimmed(env, "APP_NAME");
    if app_name.is_empty() {
        app_name = names
            .metadata
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .or_else(|| {
                names
                    .hostname
                    .as_deref()
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "cwproxy".to_owned());
    }
    let health_raw = trimmed(env, "HEALTH_URLS");
    let health_urls = errors.or(
        resolve_health_urls(&health_raw, &app_host, app_port).map_err(|e| {
            if health_raw.is_empty() {
                // The default entry is built from APP_HOST, so that is what to fix.
                err(format!(
                    "APP_HOST {} gives no valid default HEALTH_URLS: {e}",
                    go_quote(&app_host)
                ))
            } else {
                e
            }
        }),
        Vec::new(),
    );
    let mut log_group_name = trimmed(env, "LOG_GROUP_NAME");
    if log_group_name.is_empty() {
        log_group_name = format!("/app/log/{app_name}");
    }
    let mut health_log_group_name = trimmed(env, "HEALTH_LOG_GROUP_NAME");
    if health_log_group_name.is_empty() {
        health_log_group_name = format!("/app/log/{app_name}/health");
    }
    let health_interval = errors.or(
        parse_duration_var(
            env,
            "HEALTH_INTERVAL",
            DEFAULT_HEALTH_INTERVAL,
            Duration::from_secs(1),
        ),
        DEFAULT_HEALTH_INTERVAL,
    );
    let capture_limit = errors.or(
        parse_int_var(env, "CAPTURE_BODY_LIMIT", DEFAULT_CAPTURE_LIMIT as i64, 1),
        DEFAULT_CAPTURE_LIMIT as i64,
    );
    let retry = parse_retry(env, &mut errors);
    let detect_timeout = errors.or(
        parse_duration_var(
            env,
            "INSPECTOR_DETECT_TIMEOUT",
            DEFAULT_DETECT_TIMEOUT,
            Duration::from_millis(1),
        ),
        DEFAULT_DETECT_TIMEOUT,
    );
    let stop_grace = errors.or(
        parse_duration_var(
            env,
            "INSPECTOR_STOP_GRACE",
            DEFAULT_STOP_GRACE,
            Duration::ZERO,
        ),
        DEFAULT_STOP_GRACE,
    );
    let child_stdout = errors.or(parse_child_stdout(env), ChildStdout::Inherit);
    let metadata_timeout = errors.or(
        crate::metadata::detect_budget(env).map_err(err),
        crate::metadata::DETECT_BUDGET,
    );
    let output = errors.all(
        crate::output::load(env),
        telemetry::output::OutputOptions::ORIGINAL,
    );
    let model = errors.all(
        crate::admin::load(env, proxy_port),
        crate::admin::Settings::off(),
    );
    let proxy_host = errors.or(parse_proxy_host(env), None);
    let timeouts = parse_timeouts(env, &mut errors);
    errors.finish(Config {
        proxy_port,
        proxy_host,
        timeouts,
        app_host,
        app_port,
        app_port_present,
        app_name,
        health_urls,
        health_interval,
        capture_limit: usize::try_from(capture_limit).unwrap_or(usize::MAX),
        log_group_name,
        health_log_group_name,
        retry,
        detect_timeout,
        stop_grace,
        child_stdout,
        metadata_timeout,
        output,
        model,
    })
}

#[derive(Debug, Default)]
struct Partial {
    scheme: String,
    host: String,
    port: u16,
    path: String,
    raw_query: String,
}

fn parse_entry_port(raw: &str) -> Result<u16, String> {
    if raw.is_empty() {
        return Ok(0);
    }
    let port = atoi(raw).map_err(|e| format!("invalid port {}: {e}", go_quote(raw)))?;
    u16::try_from(port)
        .ok()
        .filter(|p| *p >= 1)
        .ok_or_else(|| format!("invalid port {}", go_quote(raw)))
}

/// Go's `url.Parse` for the shapes `HEALTH_URLS` entries take: `[scheme:]//authority/path?query`
/// or `/path?query`. Returns (scheme, host, port text, path, query).
fn url_parse(raw: &str) -> Result<(String, String, String, String, String), String> {
    let parse_err = |msg: String| format!("parse {}: {msg}", go_quote(raw));
    if raw.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(parse_err(
            "net/url: invalid control character in URL".into(),
        ));
    }
    let without_fragment = raw.split('#').next().unwrap_or_default();
    let (rest, query) = match without_fragment.split_once('?') {
        Some((r, q)) => (r, q.to_owned()),
        None => (without_fragment, String::new()),
    };
    let (scheme, rest) = match rest.find("://") {
        Some(i) if !rest.starts_with("//") => {
            let scheme = &rest[..i];
            let valid = scheme
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
            if !valid {
                return Err(parse_err(
                    "first path segment in URL cannot contain colon".into(),
                ));
            }
            (scheme.to_owned(), &rest[i + 1..])
        }
        _ => (String::new(), rest),
    };
    let (authority, path) = match rest.strip_prefix("//") {
        Some(r) => match r.find('/') {
            Some(i) => (&r[..i], &r[i..]),
            None => (r, ""),
        },
        None => ("", rest),
    };
    // Userinfo is dropped, as the original drops it.
    let hostport = authority.rsplit('@').next().unwrap_or_default();
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let end = v6
            .find(']')
            .ok_or_else(|| parse_err("missing ']' in host".into()))?;
        let after = &v6[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => p,
            None if after.is_empty() => "",
            None => {
                return Err(parse_err(format!(
                    "invalid port {} after host",
                    go_quote(after)
                )))
            }
        };
        (v6[..end].to_owned(), port)
    } else {
        match hostport.rfind(':') {
            Some(i) => (hostport[..i].to_owned(), &hostport[i + 1..]),
            None => (hostport.to_owned(), ""),
        }
    };
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(parse_err(format!(
            "invalid port {} after host",
            go_quote(&format!(":{port}"))
        )));
    }
    if let Some(bad) = percent_error(path) {
        return Err(parse_err(format!("invalid URL escape {bad}")));
    }
    Ok((scheme, host, port.to_owned(), path.to_owned(), query))
}

/// The first bad `%` escape, quoted like Go's `%q` of the 3 bytes it cuts (`"%x\xce"`): working on
/// bytes, since an escape may end inside a multi-byte character.
fn percent_error(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let ok = b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
            if !ok {
                return Some(quote_bytes(&b[i..(i + 3).min(b.len())]));
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    None
}

/// Go's `%q` of bytes that may not be UTF-8: invalid bytes as `\xNN`.
fn quote_bytes(bytes: &[u8]) -> String {
    let mut out = String::from("\"");
    for chunk in bytes.utf8_chunks() {
        let quoted = go_quote(chunk.valid());
        out.push_str(&quoted[1..quoted.len() - 1]);
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.push('"');
    out
}

fn parse_partial(raw: &str) -> Result<Partial, String> {
    if raw.contains("://") {
        let (scheme, host, port, path, raw_query) = url_parse(raw)?;
        return Ok(Partial {
            scheme,
            host,
            port: parse_entry_port(&port)?,
            path,
            raw_query,
        });
    }
    if raw.starts_with('/') || raw.starts_with('?') {
        let (_, _, _, path, raw_query) = url_parse(raw)?;
        return Ok(Partial {
            path,
            raw_query,
            ..Partial::default()
        });
    }
    if let Some(rest) = raw.strip_prefix(':') {
        let (port_text, suffix) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let port = parse_entry_port(port_text)?;
        if suffix.is_empty() {
            return Ok(Partial {
                port,
                ..Partial::default()
            });
        }
        let (_, _, _, path, raw_query) = url_parse(suffix)?;
        return Ok(Partial {
            port,
            path,
            raw_query,
            ..Partial::default()
        });
    }
    let (_, host, port, path, raw_query) = url_parse(&format!("//{raw}"))?;
    Ok(Partial {
        host,
        port: parse_entry_port(&port)?,
        path,
        raw_query,
        ..Partial::default()
    })
}

/// Resolves `HEALTH_URLS` exactly as the original (spec §8.1).
pub fn resolve_health_urls(
    raw: &str,
    app_host: &str,
    app_port: u16,
) -> Result<Vec<HealthUrl>, ConfigError> {
    let raw = raw.trim();
    let raw = if raw.is_empty() {
        format!(
            "{}{DEFAULT_HEALTH_PATH}",
            join_host_port(app_host, app_port)
        )
    } else {
        raw.to_owned()
    };
    let mut partials = Vec::new();
    for part in raw.split(',') {
        let entry = part.trim();
        if entry.is_empty() {
            return Err(err("HEALTH_URLS contains an empty entry"));
        }
        let partial = parse_partial(entry)
            .map_err(|e| err(format!("parse HEALTH_URLS entry {}: {e}", go_quote(entry))))?;
        partials.push(partial);
    }
    let base_path = partials
        .first()
        .map(|p| p.path.clone())
        .filter(|p| !p.is_empty());
    let base_path = base_path.unwrap_or_else(|| DEFAULT_HEALTH_PATH.to_owned());
    let mut resolved = Vec::with_capacity(partials.len());
    for (index, p) in partials.into_iter().enumerate() {
        let scheme = if p.scheme.is_empty() {
            "http".to_owned()
        } else {
            p.scheme.to_ascii_lowercase()
        };
        if scheme != "http" && scheme != "https" {
            // The original's text first; the variable named after it.
            return Err(err(format!(
                "unsupported scheme {} in HEALTH_URLS",
                go_quote(&scheme)
            )));
        }
        let host = if p.host.is_empty() {
            app_host.to_owned()
        } else {
            p.host
        };
        let port = match p.port {
            0 if scheme == "https" => 443,
            0 if index == 0 => app_port,
            0 => 80,
            port => port,
        };
        let path = if p.path.is_empty() {
            base_path.clone()
        } else {
            p.path
        };
        resolved.push(HealthUrl {
            scheme,
            host,
            port,
            path,
            raw_query: p.raw_query,
        });
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(raw: &str, host: &str) -> Vec<String> {
        resolve_health_urls(raw, host, 8080)
            .expect("resolves")
            .iter()
            .map(HealthUrl::url)
            .collect()
    }

    #[test]
    fn seed_and_spec_examples() {
        assert_eq!(
            urls("/health", "127.0.0.1"),
            ["http://127.0.0.1:8080/health"]
        );
        assert_eq!(
            urls(":8081/health", "127.0.0.1"),
            ["http://127.0.0.1:8081/health"]
        );
        assert_eq!(
            urls("/health,some.alb.example.com/healthz", "127.0.0.1"),
            [
                "http://127.0.0.1:8080/health",
                "http://some.alb.example.com:80/healthz"
            ]
        );
        assert_eq!(
            urls("/healthz,some.alb.example.com", "127.0.0.1"),
            [
                "http://127.0.0.1:8080/healthz",
                "http://some.alb.example.com:80/healthz"
            ]
        );
        assert_eq!(
            urls("/healthz,https://some.alb.example.com", "127.0.0.1"),
            [
                "http://127.0.0.1:8080/healthz",
                "https://some.alb.example.com:443/healthz"
            ]
        );
        assert_eq!(
            urls("/health,:8081/ready", "app.internal"),
            [
                "http://app.internal:8080/health",
                "http://app.internal:8081/ready"
            ]
        );
        assert_eq!(urls("", "::1"), ["http://[::1]:8080/health"]);
        assert_eq!(urls(":8081", "127.0.0.1"), ["http://127.0.0.1:8081/health"]);
        assert_eq!(urls("https://x/h?a=1", "h"), ["https://x:443/h?a=1"]);
        assert_eq!(urls("HTTP://[::1]:9/p", "h"), ["http://[::1]:9/p"]);
        assert_eq!(urls("?ready=1", "h"), ["http://h:8080/health?ready=1"]);
    }

    #[test]
    fn health_url_errors() {
        let e = |raw: &str| {
            resolve_health_urls(raw, "127.0.0.1", 8080)
                .expect_err("rejected")
                .0
        };
        assert_eq!(e("/a,,/b"), "HEALTH_URLS contains an empty entry");
        assert_eq!(e("ftp://x/y"), "unsupported scheme \"ftp\" in HEALTH_URLS");
        assert_eq!(
            e(":99999/x"),
            "parse HEALTH_URLS entry \":99999/x\": invalid port \"99999\""
        );
        assert_eq!(
            e(":abc"),
            "parse HEALTH_URLS entry \":abc\": invalid port \"abc\": strconv.Atoi: parsing \"abc\": invalid syntax"
        );
        assert_eq!(
            e("host:abc/x"),
            "parse HEALTH_URLS entry \"host:abc/x\": parse \"//host:abc/x\": invalid port \":abc\" after host"
        );
        assert_eq!(
            e("/a%zz"),
            "parse HEALTH_URLS entry \"/a%zz\": parse \"/a%zz\": invalid URL escape \"%zz\""
        );
    }

    fn names() -> NameSources<'static> {
        NameSources {
            metadata: None,
            hostname: Some("proxy-host".into()),
        }
    }

    #[test]
    fn defaults() {
        let c = load(&[("X", "")], &names(), None).expect("loads");
        assert_eq!(
            (c.proxy_port, c.app_port, c.app_host.as_str()),
            (8081, 8080, "127.0.0.1")
        );
        assert_eq!(c.app_name, "proxy-host");
        assert_eq!(c.log_group_name, "/app/log/proxy-host");
        assert_eq!(c.health_log_group_name, "/app/log/proxy-host/health");
        assert_eq!(c.health_urls[0].url(), "http://127.0.0.1:8080/health");
        assert_eq!(c.health_interval, Duration::from_secs(30));
        assert_eq!(c.capture_limit, 65536);
        assert_eq!(c.retry.max_attempts, 2);
        assert!(!c.app_port_present);
    }

    #[test]
    fn app_name_chain() {
        let meta = NameSources {
            metadata: Some("orders-api"),
            hostname: Some("h".into()),
        };
        assert_eq!(
            load(&[("APP_NAME", " ")], &meta, None)
                .expect("ok")
                .app_name,
            "orders-api"
        );
        let none = NameSources {
            metadata: None,
            hostname: None,
        };
        assert_eq!(
            load(&[("APP_NAME", "")], &none, None).expect("ok").app_name,
            "cwproxy"
        );
        let blank = NameSources {
            metadata: None,
            hostname: Some("  ".into()),
        };
        assert_eq!(
            load(&[("APP_NAME", "")], &blank, None)
                .expect("ok")
                .app_name,
            "cwproxy"
        );
        assert_eq!(
            load(&[("APP_NAME", " svc ")], &none, None)
                .expect("ok")
                .app_name,
            "svc"
        );
    }

    #[test]
    fn hosts_and_ports() {
        let c = load(&[("APP_HOST", "[::1]")], &names(), None).expect("ok");
        assert_eq!(c.app_host, "::1");
        assert_eq!(c.health_urls[0].url(), "http://[::1]:8080/health");
        let c = load(&[("APP_HOST", "app.internal")], &names(), None).expect("ok");
        assert_eq!(c.health_urls[0].url(), "http://app.internal:8080/health");
        let c = load(&[("APP_PORT", "")], &names(), None).expect("ok");
        assert!(c.app_port_present);
        assert_eq!(c.app_port, 8080);
        let detected: SocketAddr = "[::1]:9000".parse().expect("addr");
        let c = load(&[("X", "")], &names(), Some(detected)).expect("ok");
        assert_eq!(c.health_urls[0].url(), "http://[::1]:9000/health");
        let c = load(&[("APP_HOST", "localhost")], &names(), Some(detected)).expect("ok");
        assert_eq!(c.health_urls[0].url(), "http://localhost:9000/health");
    }

    #[test]
    fn listen_address_and_timeouts_are_settable_and_checked() {
        let c = load(&[], &names(), None).expect("ok");
        assert_eq!((c.proxy_host, c.timeouts), (None, Timeouts::default()));
        assert_eq!(c.timeouts.upstream_header, Duration::from_secs(30));
        let c = load(
            &[
                ("PROXY_HOST", "[::1]"),
                ("UPSTREAM_HEADER_TIMEOUT", "2m"),
                ("UPSTREAM_CONNECT_TIMEOUT", "750ms"),
                ("CLIENT_HEADER_TIMEOUT", "10s"),
                ("CLIENT_IDLE_TIMEOUT", "5m"),
            ],
            &names(),
            None,
        )
        .expect("ok");
        assert_eq!(c.proxy_host, Some("::1".parse().expect("literal")));
        assert_eq!(
            c.timeouts,
            Timeouts {
                upstream_header: Duration::from_secs(120),
                upstream_connect: Duration::from_millis(750),
                client_header: Duration::from_secs(10),
                client_idle: Duration::from_secs(300),
            }
        );
        let e = |k: &str, v: &str| {
            load(&[(k, v)], &names(), None).expect_err("rejected").0[0]
                .0
                .clone()
        };
        assert_eq!(
            e("PROXY_HOST", "localhost"),
            "PROXY_HOST must be an IP address to listen on (e.g. 127.0.0.1 or ::1), not \"localhost\""
        );
        for key in [
            "UPSTREAM_HEADER_TIMEOUT",
            "UPSTREAM_CONNECT_TIMEOUT",
            "CLIENT_HEADER_TIMEOUT",
            "CLIENT_IDLE_TIMEOUT",
        ] {
            assert_eq!(
                e(key, "soon"),
                format!("{key} must be a valid duration: time: invalid duration \"soon\"")
            );
            assert_eq!(e(key, "0s"), format!("{key} must be at least 1ms"));
        }
    }

    #[test]
    fn config_errors_in_order() {
        let e = |env: &[(&str, &str); 2]| {
            load(env, &names(), None).expect_err("rejected").0[0]
                .0
                .clone()
        };
        assert_eq!(
            e(&[("PROXY_PORT", "70000"), ("X", "")]),
            "PROXY_PORT must be between 1 and 65535"
        );
        assert_eq!(
            e(&[("PROXY_PORT", "abc"), ("X", "")]),
            "PROXY_PORT must be a valid integer port: strconv.Atoi: parsing \"abc\": invalid syntax"
        );
        assert_eq!(
            e(&[("APP_PORT", "0"), ("X", "")]),
            "APP_PORT must be between 1 and 65535"
        );
        assert_eq!(
            e(&[("APP_HOST", "example.com:8080"), ("X", "")]),
            "APP_HOST must not include a port"
        );
        assert_eq!(
            e(&[("APP_HOST", "http://x"), ("X", "")]),
            "APP_HOST must be a bare host without scheme, path, query, or user info"
        );
        // APP_HOST is evaluated first, then APP_PORT, then PROXY_PORT.
        assert_eq!(
            e(&[("APP_PORT", "x"), ("APP_HOST", "a/b")]),
            "APP_HOST must be a bare host without scheme, path, query, or user info"
        );
        assert_eq!(
            e(&[("PROXY_PORT", "x"), ("APP_PORT", "0")]),
            "APP_PORT must be between 1 and 65535"
        );
        assert_eq!(
            e(&[("HEALTH_INTERVAL", "500ms"), ("X", "")]),
            "HEALTH_INTERVAL must be at least 1s"
        );
        assert_eq!(
            e(&[("HEALTH_INTERVAL", "soon"), ("X", "")]),
            "HEALTH_INTERVAL must be a valid duration: time: invalid duration \"soon\""
        );
        assert_eq!(
            e(&[("CAPTURE_BODY_LIMIT", "0"), ("X", "")]),
            "CAPTURE_BODY_LIMIT must be at least 1"
        );
        assert_eq!(
            e(&[("BACKEND_RETRY_MAX_ATTEMPTS", "0"), ("X", "")]),
            "BACKEND_RETRY_MAX_ATTEMPTS must be at least 1"
        );
        assert_eq!(
            e(&[("BACKEND_RETRY_ON_TRANSPORT_ERRORS", "maybe"), ("X", "")]),
            "BACKEND_RETRY_ON_TRANSPORT_ERRORS must be a boolean: strconv.ParseBool: parsing \"maybe\": invalid syntax"
        );
        assert!(e(&[("BACKEND_RETRY_STATUS_CODES", "500-9999"), ("X", "")])
            .starts_with("BACKEND_RETRY_STATUS_CODES: "));
        assert_eq!(
            e(&[("BACKEND_RETRY_BACKOFF_MULTIPLIER", "0.5"), ("X", "")]),
            "BACKEND_RETRY_BACKOFF_MULTIPLIER must be at least 1"
        );
    }

    #[test]
    fn retry_overrides() {
        let c = load(
            &[
                ("BACKEND_RETRY_MAX_ATTEMPTS", "3"),
                ("BACKEND_RETRY_INITIAL_BACKOFF", "10ms"),
                ("BACKEND_RETRY_MAX_BACKOFF", "1s"),
                ("BACKEND_RETRY_BACKOFF_MULTIPLIER", "1.5"),
                ("BACKEND_RETRY_METHODS", "get, post"),
                ("BACKEND_RETRY_STATUS_CODES", "502,503-504"),
                ("BACKEND_RETRY_ON_TRANSPORT_ERRORS", "true"),
                ("BACKEND_RETRY_BODY_BUFFER_BYTES", "1024"),
            ],
            &names(),
            None,
        )
        .expect("ok");
        assert_eq!(c.retry.max_attempts, 3);
        assert_eq!(c.retry.initial_backoff, Duration::from_millis(10));
        assert_eq!(c.retry.status_codes, vec![502, 503, 504]);
        assert_eq!(
            c.retry
                .methods
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>(),
            ["GET", "POST"]
        );
        assert!(c.retry.retry_transport_errors);
        assert_eq!(c.retry.body_buffer_bytes, 1024);
    }

    #[test]
    fn every_error_is_reported_at_once_in_evaluation_order() {
        let errors = load(
            &[
                ("APP_PORT", "x"),
                ("PROXY_PORT", "0"),
                ("HEALTH_URLS", "ftp://h/x"),
                ("HEALTH_INTERVAL", "1ms"),
                ("BACKEND_RETRY_METHODS", " , "),
                ("INSPECTOR_CHILD_STDOUT", "file"),
            ],
            &names(),
            None,
        )
        .expect_err("rejected");
        let texts: Vec<&str> = errors.0.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            texts,
            [
                "APP_PORT must be a valid integer port: strconv.Atoi: parsing \"x\": invalid syntax",
                "PROXY_PORT must be between 1 and 65535",
                "unsupported scheme \"ftp\" in HEALTH_URLS",
                "HEALTH_INTERVAL must be at least 1s",
                "BACKEND_RETRY_METHODS lists no method in \",\": name at least one, or set BACKEND_RETRY_MAX_ATTEMPTS=1 to disable retries",
                "INSPECTOR_CHILD_STDOUT must be inherit or stderr, got \"file\"",
            ]
        );
        assert_eq!(errors.to_string().lines().count(), 6);
    }

    #[test]
    fn lists_of_only_separators_are_errors() {
        let first = |k: &'static str, v: &'static str| {
            load(&[(k, v)], &names(), None).expect_err(k).0[0].0.clone()
        };
        assert!(first("BACKEND_RETRY_METHODS", " , ")
            .starts_with("BACKEND_RETRY_METHODS lists no method"));
        assert!(
            first("BACKEND_RETRY_STATUS_CODES", " , ").starts_with("BACKEND_RETRY_STATUS_CODES: ")
        );
        assert_eq!(
            first("HEALTH_URLS", " , "),
            "HEALTH_URLS contains an empty entry"
        );
        let c = load(&[("INSPECTOR_CHILD_STDOUT", " Stderr ")], &names(), None).expect("ok");
        assert_eq!(c.child_stdout, ChildStdout::Stderr);
    }

    #[test]
    fn percent_escape_cut_inside_a_character_is_an_error_not_a_panic() {
        let e = |raw: &str| {
            resolve_health_urls(raw, "127.0.0.1", 8080)
                .expect_err("rejected")
                .0
        };
        // Go cuts the escape as 3 bytes and quotes the broken one as `\xce`.
        assert_eq!(
            e("/%x\u{3bc}"),
            "parse HEALTH_URLS entry \"/%x\u{3bc}\": parse \"/%x\u{3bc}\": invalid URL escape \"%x\\xce\""
        );
        for raw in [
            ":8081/%a\u{e9}",
            "host/%\u{e9}",
            "http://h/%1\u{e9}",
            "/%",
            "/%\u{1f600}",
        ] {
            assert!(e(raw).contains("invalid URL escape"), "{raw}: {}", e(raw));
        }
    }

    /// Every variable `load` reads.
    const VARIABLES: &[&str] = &[
        "PROXY_PORT",
        "APP_HOST",
        "APP_PORT",
        "APP_NAME",
        "HEALTH_URLS",
        "HEALTH_INTERVAL",
        "CAPTURE_BODY_LIMIT",
        "LOG_GROUP_NAME",
        "HEALTH_LOG_GROUP_NAME",
        "BACKEND_RETRY_MAX_ATTEMPTS",
        "BACKEND_RETRY_INITIAL_BACKOFF",
        "BACKEND_RETRY_MAX_BACKOFF",
        "BACKEND_RETRY_BACKOFF_MULTIPLIER",
        "BACKEND_RETRY_METHODS",
        "BACKEND_RETRY_STATUS_CODES",
        "BACKEND_RETRY_ON_TRANSPORT_ERRORS",
        "BACKEND_RETRY_BODY_BUFFER_BYTES",
        "INSPECTOR_DETECT_TIMEOUT",
        "INSPECTOR_STOP_GRACE",
        "INSPECTOR_CHILD_STDOUT",
        "METADATA_DETECT_TIMEOUT",
    ];

    fn value() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            // Anything at all, multi-byte characters included.
            "\\PC{0,24}",
            // The characters the parsers split on, with digits, units and multi-byte letters.
            "[%:/\\[\\]?#@,.+ a-zA-Z0-9\u{3bc}\u{e9}\u{1f600}-]{0,24}",
            // Shapes close to valid values.
            "(https?://)?[a-z\\[\\]:0-9]{0,8}(:[0-9]{0,6})?(/[%a-z0-9\u{3bc}]{0,6}){0,3}",
            "-?[0-9]{0,22}(\\.[0-9]{0,3})?(ns|us|\u{b5}s|ms|s|m|h)?",
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        /// No configuration input panics, and every error names a variable that was set.
        #[test]
        fn any_config_input_gives_a_config_or_named_errors(
            pairs in proptest::collection::vec(
                (proptest::sample::select(VARIABLES), value()),
                0..6,
            )
        ) {
            let env: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect();
            if let Err(errors) = load(&env, &names(), None) {
                proptest::prop_assert!(!errors.0.is_empty());
                for e in &errors.0 {
                    proptest::prop_assert!(
                        pairs.iter().any(|(k, _)| e.0.contains(k)),
                        "{} names no variable of {:?}", e.0, pairs
                    );
                }
            }
        }
    }
}
