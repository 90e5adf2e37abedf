//! Upstream retry policy (seed "Retry behavior", spec §12): which requests are retried, when, and how
//! long to wait between attempts. The retry loop itself lives in the handler.

use std::time::Duration;

use http::Method;
use netpolicy::Backoff;

/// Total attempts including the first (`BACKEND_RETRY_MAX_ATTEMPTS`).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 2;
/// Delay before the first retry (`BACKEND_RETRY_INITIAL_BACKOFF`).
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(50);
/// Longest delay between attempts (`BACKEND_RETRY_MAX_BACKOFF`).
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_millis(250);
/// Growth factor of the delay (`BACKEND_RETRY_BACKOFF_MULTIPLIER`).
pub const DEFAULT_BACKOFF_MULTIPLIER: f64 = 2.0;
/// Methods eligible for retry (`BACKEND_RETRY_METHODS`).
pub const DEFAULT_METHODS: &str = "GET,HEAD,OPTIONS";
/// Status codes that trigger a retry (`BACKEND_RETRY_STATUS_CODES`).
pub const DEFAULT_STATUS_CODES: &str = "500-599";
/// Request-body bytes buffered to make a request replayable (`BACKEND_RETRY_BODY_BUFFER_BYTES`).
pub const DEFAULT_BODY_BUFFER_BYTES: usize = 64 * 1024;
/// Lowest status code a retry list may name.
pub const MIN_STATUS: u16 = 100;
/// Highest status code a retry list may name.
pub const MAX_STATUS: u16 = 599;

/// When and how the proxy retries an upstream request.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Total attempts including the first; 1 disables retries.
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub initial_backoff: Duration,
    /// Cap on the delay between attempts.
    pub max_backoff: Duration,
    /// Factor applied to the delay after every retry.
    pub multiplier: f64,
    /// Methods eligible for retry (normalized: uppercase, deduplicated, sorted).
    pub methods: Vec<Method>,
    /// Upstream statuses that trigger a retry (normalized: 100–599, deduplicated, sorted).
    pub status_codes: Vec<u16>,
    /// Also retry transport errors (connect refused, reset before a response).
    pub retry_transport_errors: bool,
    /// Request-body bytes buffered for replay; bigger bodies are streamed and not retried.
    pub body_buffer_bytes: usize,
}

impl Default for RetryPolicy {
    /// The seed's defaults: 2 attempts, 50 ms doubling to 250 ms, GET/HEAD/OPTIONS, 500–599.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            multiplier: DEFAULT_BACKOFF_MULTIPLIER,
            methods: vec![Method::GET, Method::HEAD, Method::OPTIONS],
            status_codes: (500..=599).collect(),
            retry_transport_errors: false,
            body_buffer_bytes: DEFAULT_BODY_BUFFER_BYTES,
        }
        .normalized()
    }
}

/// A retry setting that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetryConfigError {
    /// An entry of a comma-separated list is empty.
    #[error("empty entry in {list:?}")]
    EmptyEntry {
        /// The whole list as given.
        list: String,
    },
    /// A status-code entry is not a number or `low-high` range of numbers.
    #[error("invalid status code {token:?} in {list:?}: expected a code like 502 or a range like 500-599")]
    StatusSyntax {
        /// The offending entry.
        token: String,
        /// The whole list as given.
        list: String,
    },
    /// A status code is outside 100–599.
    #[error("status code {token:?} in {list:?} is outside 100-599")]
    StatusRange {
        /// The offending entry.
        token: String,
        /// The whole list as given.
        list: String,
    },
    /// A range's low end is above its high end.
    #[error("status code range {token:?} in {list:?} has its low end above its high end")]
    ReversedRange {
        /// The offending entry.
        token: String,
        /// The whole list as given.
        list: String,
    },
    /// A method entry is not a valid HTTP method token.
    #[error("invalid HTTP method {token:?} in {list:?}")]
    Method {
        /// The offending entry.
        token: String,
        /// The whole list as given.
        list: String,
    },
}

/// Parses `502`, `500-599` or lists such as `500,502-504` into sorted, deduplicated codes.
pub fn parse_status_codes(list: &str) -> Result<Vec<u16>, RetryConfigError> {
    let mut codes = Vec::new();
    for raw in list.split(',') {
        let token = raw.trim();
        if token.is_empty() {
            return Err(RetryConfigError::EmptyEntry {
                list: list.to_owned(),
            });
        }
        let syntax = || RetryConfigError::StatusSyntax {
            token: token.to_owned(),
            list: list.to_owned(),
        };
        let range = || RetryConfigError::StatusRange {
            token: token.to_owned(),
            list: list.to_owned(),
        };
        let parse = |s: &str| -> Result<u16, RetryConfigError> {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(syntax());
            }
            let n: u32 = s.parse().map_err(|_| range())?;
            u16::try_from(n)
                .ok()
                .filter(|c| (MIN_STATUS..=MAX_STATUS).contains(c))
                .ok_or_else(range)
        };
        match token.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (parse(lo)?, parse(hi)?);
                if lo > hi {
                    return Err(RetryConfigError::ReversedRange {
                        token: token.to_owned(),
                        list: list.to_owned(),
                    });
                }
                codes.extend(lo..=hi);
            }
            None => codes.push(parse(token)?),
        }
    }
    codes.sort_unstable();
    codes.dedup();
    Ok(codes)
}

/// Parses `GET,HEAD,OPTIONS`: entries trimmed and uppercased, empty entries skipped, sorted and
/// deduplicated.
pub fn parse_methods(list: &str) -> Result<Vec<Method>, RetryConfigError> {
    let mut methods = Vec::new();
    for raw in list.split(',') {
        let token = raw.trim();
        if token.is_empty() {
            continue;
        }
        let method = Method::from_bytes(token.to_ascii_uppercase().as_bytes()).map_err(|_| {
            RetryConfigError::Method {
                token: token.to_owned(),
                list: list.to_owned(),
            }
        })?;
        methods.push(method);
    }
    Ok(normalize_methods(methods))
}

fn normalize_methods(methods: Vec<Method>) -> Vec<Method> {
    let mut out: Vec<Method> = methods
        .into_iter()
        .filter_map(|m| {
            let upper = m.as_str().to_ascii_uppercase();
            Method::from_bytes(upper.as_bytes()).ok()
        })
        .collect();
    out.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    out.dedup();
    out
}

impl RetryPolicy {
    /// A policy that never retries (`BACKEND_RETRY_MAX_ATTEMPTS=1`).
    pub fn disabled() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// Applies the Go normalization rules: attempts ≥ 1, max backoff ≥ initial, multiplier ≥ 1,
    /// methods uppercase/deduplicated/sorted, status codes limited to 100–599, deduplicated, sorted.
    pub fn normalized(mut self) -> Self {
        self.max_attempts = self.max_attempts.max(1);
        if self.max_backoff < self.initial_backoff {
            self.max_backoff = self.initial_backoff;
        }
        if self.multiplier.is_nan() || self.multiplier < 1.0 || !self.multiplier.is_finite() {
            self.multiplier = 1.0;
        }
        self.methods = normalize_methods(std::mem::take(&mut self.methods));
        self.status_codes
            .retain(|c| (MIN_STATUS..=MAX_STATUS).contains(c));
        self.status_codes.sort_unstable();
        self.status_codes.dedup();
        self
    }

    /// True when retries can happen at all: > 1 attempt, ≥ 1 method, and a status list or
    /// transport-error retries.
    pub fn enabled(&self) -> bool {
        self.max_attempts > 1
            && !self.methods.is_empty()
            && (!self.status_codes.is_empty() || self.retry_transport_errors)
    }

    /// Delay after attempt `attempt` (1-based): `min(initial × multiplier^(attempt−1), max)`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        Backoff::new(self.initial_backoff, self.max_backoff)
            .multiplier(self.multiplier)
            .delay(attempt.saturating_sub(1))
    }

    /// Whether requests with `method` may be retried (never `CONNECT`).
    pub fn retries_method(&self, method: &Method) -> bool {
        *method != Method::CONNECT && self.methods.iter().any(|m| m == method)
    }

    /// Whether an upstream `status` triggers a retry.
    pub fn retries_status(&self, status: u16) -> bool {
        self.status_codes.binary_search(&status).is_ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_codes_ranges_and_lists() {
        assert_eq!(parse_status_codes("502").unwrap(), vec![502]);
        assert_eq!(
            parse_status_codes("500-504").unwrap(),
            vec![500, 501, 502, 503, 504]
        );
        assert_eq!(
            parse_status_codes(" 504 , 500, 502-503,502").unwrap(),
            vec![500, 502, 503, 504]
        );
        assert_eq!(parse_status_codes("500-599").unwrap().len(), 100);
    }

    #[test]
    fn status_errors_name_the_token() {
        let e = parse_status_codes("500,5x2").unwrap_err();
        assert!(e.to_string().contains("\"5x2\""), "{e}");
        let e = parse_status_codes("500,700").unwrap_err();
        assert!(
            matches!(&e, RetryConfigError::StatusRange { token, .. } if token == "700"),
            "{e}"
        );
        let e = parse_status_codes("504-500").unwrap_err();
        assert!(matches!(&e, RetryConfigError::ReversedRange { token, .. } if token == "504-500"));
        assert!(matches!(
            parse_status_codes("500,,502"),
            Err(RetryConfigError::EmptyEntry { .. })
        ));
        assert!(matches!(
            parse_status_codes(""),
            Err(RetryConfigError::EmptyEntry { .. })
        ));
        assert!(parse_status_codes("-500").is_err());
        assert!(parse_status_codes("99999999999").is_err());
    }

    #[test]
    fn parses_methods() {
        let m = parse_methods(" get,HEAD, options ,get,").unwrap();
        assert_eq!(m, vec![Method::GET, Method::HEAD, Method::OPTIONS]);
        let e = parse_methods("GET,GE T").unwrap_err();
        assert!(e.to_string().contains("\"GE T\""), "{e}");
    }

    #[test]
    fn normalization_rules() {
        let p = RetryPolicy {
            max_attempts: 0,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(10),
            multiplier: 0.5,
            methods: vec![
                Method::from_bytes(b"post").unwrap(),
                Method::GET,
                Method::GET,
            ],
            status_codes: vec![700, 503, 99, 503, 500],
            retry_transport_errors: false,
            body_buffer_bytes: 0,
        }
        .normalized();
        assert_eq!(p.max_attempts, 1);
        assert_eq!(p.max_backoff, Duration::from_millis(100));
        assert_eq!(p.multiplier, 1.0);
        assert_eq!(p.methods, vec![Method::GET, Method::POST]);
        assert_eq!(p.status_codes, vec![500, 503]);
        assert!(!p.enabled());
    }

    #[test]
    fn enabled_rules() {
        assert!(RetryPolicy::default().enabled());
        assert!(!RetryPolicy::disabled().enabled());
        let none = RetryPolicy {
            status_codes: vec![],
            ..RetryPolicy::default()
        };
        assert!(!none.enabled());
        let transport = RetryPolicy {
            status_codes: vec![],
            retry_transport_errors: true,
            ..RetryPolicy::default()
        };
        assert!(transport.enabled());
        let no_methods = RetryPolicy {
            methods: vec![],
            ..RetryPolicy::default()
        };
        assert!(!no_methods.enabled());
    }

    #[test]
    fn backoff_grows_and_caps() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1), Duration::from_millis(50));
        assert_eq!(p.backoff(2), Duration::from_millis(100));
        assert_eq!(p.backoff(3), Duration::from_millis(200));
        assert_eq!(p.backoff(4), Duration::from_millis(250));
        assert_eq!(p.backoff(100), Duration::from_millis(250));
        let zero = RetryPolicy {
            initial_backoff: Duration::ZERO,
            ..RetryPolicy::default()
        };
        assert_eq!(zero.backoff(3), Duration::ZERO);
    }

    #[test]
    fn never_connect() {
        let p = RetryPolicy {
            methods: vec![Method::CONNECT, Method::GET],
            ..RetryPolicy::default()
        }
        .normalized();
        assert!(!p.retries_method(&Method::CONNECT));
        assert!(p.retries_method(&Method::GET));
        assert!(!p.retries_method(&Method::POST));
        assert!(p.retries_status(503));
        assert!(!p.retries_status(404));
    }
}
