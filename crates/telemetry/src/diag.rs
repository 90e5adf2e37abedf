//! Diagnostics on stderr in the Go `log` format the originals used:
//! `YYYY/MM/DD HH:MM:SS <prefix>: <message>` in local time, one write per line.

use std::io::Write;
use std::sync::Arc;

/// Where diagnostic lines go instead of stderr (tests capture them this way).
pub type DiagTarget = Arc<dyn Fn(&str) + Send + Sync>;

/// Writes diagnostic lines with a fixed prefix (e.g. `cwproxy`).
#[derive(Clone)]
pub struct Diag {
    prefix: &'static str,
    target: Option<DiagTarget>,
}

impl std::fmt::Debug for Diag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Diag")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Diag {
    /// A logger whose lines read `... <prefix>: message`.
    pub const fn new(prefix: &'static str) -> Self {
        Self {
            prefix,
            target: None,
        }
    }

    /// A logger that hands each formatted line to `target` instead of stderr.
    pub fn with_target(prefix: &'static str, target: DiagTarget) -> Self {
        Self {
            prefix,
            target: Some(target),
        }
    }

    /// The prefix given at construction.
    pub fn prefix(&self) -> &'static str {
        self.prefix
    }

    /// Writes one line to stderr; errors writing stderr are ignored (there is nowhere to report them).
    pub fn log(&self, message: impl std::fmt::Display) {
        let line = self.format(&message);
        match &self.target {
            Some(target) => target(&line),
            None => {
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
        }
    }

    /// The line `log` would write, with its trailing newline.
    pub fn format(&self, message: &dyn std::fmt::Display) -> String {
        format!("{} {}: {}\n", local_timestamp(), self.prefix, message)
    }
}

/// `YYYY/MM/DD HH:MM:SS` in the local time zone (UTC when it cannot be determined, and on
/// systems other than Unix).
pub fn local_timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (year, month, day, hour, minute, second) =
        local_civil(now).unwrap_or_else(|| gosyntax::utc_civil(i64::try_from(now).unwrap_or(0)));
    format!("{year:04}/{month:02}/{day:02} {hour:02}:{minute:02}:{second:02}")
}

#[cfg(unix)]
fn local_civil(now: u64) -> Option<(i64, u32, u32, u32, u32, u32)> {
    let t = libc::time_t::try_from(now).ok()?;
    // SAFETY: `tm` is plain data that localtime_r fully initialises on success; both pointers are
    // valid for the duration of the call, and localtime_r is the thread-safe variant.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return None;
        }
        tm
    };
    let u = |v: libc::c_int| u32::try_from(v).unwrap_or(0);
    Some((
        i64::from(tm.tm_year) + 1900,
        u(tm.tm_mon + 1),
        u(tm.tm_mday),
        u(tm.tm_hour),
        u(tm.tm_min),
        u(tm.tm_sec),
    ))
}

#[cfg(not(unix))]
fn local_civil(_now: u64) -> Option<(i64, u32, u32, u32, u32, u32)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_log_format() {
        let line = Diag::new("cwproxy").format(&"hello");
        let (ts, rest) = line.split_at(19);
        assert_eq!(rest, " cwproxy: hello\n");
        let b = ts.as_bytes();
        assert!(
            b.iter().enumerate().all(|(i, c)| match i {
                4 | 7 => *c == b'/',
                10 => *c == b' ',
                13 | 16 => *c == b':',
                _ => c.is_ascii_digit(),
            }),
            "{ts}"
        );
    }
}
