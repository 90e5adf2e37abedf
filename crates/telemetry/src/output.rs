//! What a rendered line contains beyond the original's fixed format: redaction, route templates
//! and their cap, decoded bodies, the line size bound, the form of binary bodies, and how long
//! a blocked stdout may hold lines back before they are dropped.
//!
//! [`OutputOptions::ORIGINAL`] reproduces the Go cwproxy's line byte for byte and is what the
//! plain `render_*` functions and a default pipeline use; a binary opts in to the rest.

use crate::redact::Redaction;
use crate::route::Templates;

/// Default most distinct `Endpoint` values per process.
pub const DEFAULT_ENDPOINT_LIMIT: usize = 200;
/// Default most bytes of one line (CloudWatch Logs' event limit, 256 KiB).
pub const DEFAULT_LINE_LIMIT: usize = 256 << 10;
/// Default longest wait for a blocked stdout before lines are dropped.
pub const DEFAULT_STDOUT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How bodies that are not text are logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryBodies {
    /// `body` is `"[binary N bytes]"` (plus the truncation marker when cut) and `body_raw` is
    /// omitted. A body is binary when it is not valid UTF-8 (an incomplete last character of a
    /// cut capture aside) or contains a NUL byte.
    Compact,
    /// The original's form: the bytes as a JSON string, each invalid byte a `\ufffd` escape,
    /// in both `body` and `body_raw`.
    Escape,
}

/// Options of the rendered line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputOptions {
    /// Redaction lists; `None` logs values as they are.
    pub redaction: Option<Redaction>,
    /// How the `Endpoint` dimension is derived from the path.
    pub templates: Templates,
    /// Most distinct `Endpoint` values (0: no cap).
    pub endpoint_limit: usize,
    /// Decode `Content-Encoding` gzip/deflate/br/zstd bodies for logging.
    pub decode_bodies: bool,
    /// Most bytes of one line, newline excluded (0: no bound).
    pub line_limit: usize,
    /// Form of binary bodies.
    pub binary_bodies: BinaryBodies,
    /// How long traffic waits for a blocked stdout before its lines are dropped (counted and
    /// reported); `None` waits as long as it takes, as the original's synchronous write did.
    pub stdout_timeout: Option<std::time::Duration>,
}

impl OutputOptions {
    /// The original's line, byte for byte.
    pub const ORIGINAL: OutputOptions = OutputOptions {
        redaction: None,
        templates: Templates::OFF,
        endpoint_limit: 0,
        decode_bodies: false,
        line_limit: 0,
        binary_bodies: BinaryBodies::Escape,
        stdout_timeout: None,
    };

    /// The production defaults: redaction with the default lists, automatic templates, a cap
    /// of [`DEFAULT_ENDPOINT_LIMIT`], decoded bodies, lines of at most [`DEFAULT_LINE_LIMIT`],
    /// compact binary bodies, and lines dropped after stdout blocks for
    /// [`DEFAULT_STDOUT_TIMEOUT`].
    pub fn recommended() -> Self {
        Self {
            redaction: Some(Redaction::new::<&str>(&[], &[])),
            templates: Templates {
                auto: true,
                patterns: Vec::new(),
            },
            endpoint_limit: DEFAULT_ENDPOINT_LIMIT,
            decode_bodies: true,
            line_limit: DEFAULT_LINE_LIMIT,
            binary_bodies: BinaryBodies::Compact,
            stdout_timeout: Some(DEFAULT_STDOUT_TIMEOUT),
        }
    }
}

impl Default for OutputOptions {
    fn default() -> Self {
        Self::ORIGINAL
    }
}

/// Whether captured bytes count as binary for [`BinaryBodies::Compact`].
pub fn is_binary(bytes: &[u8], truncated: bool) -> bool {
    if bytes.contains(&0) {
        return true;
    }
    match std::str::from_utf8(bytes) {
        Ok(_) => false,
        // `error_len() == None`: the input ends inside a character, as a cut capture may.
        Err(e) => !(truncated && e.error_len().is_none()),
    }
}
