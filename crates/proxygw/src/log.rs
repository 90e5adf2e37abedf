//! Log lines in Go slog's text format (`time=… level=INFO msg="…" key=value`), as the original wrote them.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// slog level numbers.
pub const DEBUG: i32 = -4;
/// slog INFO.
pub const INFO: i32 = 0;
/// slog WARN.
pub const WARN: i32 = 4;
/// slog ERROR.
pub const ERROR: i32 = 8;

/// A cheap-to-clone logger writing whole lines to one sink.
#[derive(Clone)]
pub struct Logger {
    sink: Arc<Mutex<Box<dyn Write + Send>>>,
    level: i32,
}

impl std::fmt::Debug for Logger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logger")
            .field("level", &self.level)
            .finish()
    }
}

impl Logger {
    /// Logs to `sink` at `level` and above.
    pub fn new(sink: Box<dyn Write + Send>, level: i32) -> Self {
        Self {
            sink: Arc::new(Mutex::new(sink)),
            level,
        }
    }

    /// Logs to stderr at INFO (the startup logger, before the config is read).
    pub fn stderr() -> Self {
        Self::new(Box::new(std::io::stderr()), INFO)
    }

    /// Discards everything (tests).
    pub fn discard() -> Self {
        Self::new(Box::new(std::io::sink()), ERROR + 100)
    }

    /// Opens the configured output: stdout, stderr, or a file (append/create, mode 0644).
    pub fn open(output: &crate::config::LogOutput, level: i32) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let sink: Box<dyn Write + Send> = match output {
            crate::config::LogOutput::Stdout => Box::new(std::io::stdout()),
            crate::config::LogOutput::Stderr => Box::new(std::io::stderr()),
            crate::config::LogOutput::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o644)
                    .open(p)?,
            ),
        };
        Ok(Self::new(sink, level))
    }

    /// True if `level` would be written.
    pub fn enabled(&self, level: i32) -> bool {
        level >= self.level
    }

    /// Writes one line.
    pub fn log(&self, level: i32, msg: &str, attrs: &[(&str, &dyn std::fmt::Display)]) {
        if !self.enabled(level) {
            return;
        }
        let mut line = format!(
            "time={} level={} msg={}",
            now_rfc3339(),
            level_name(level),
            value(msg)
        );
        for (k, v) in attrs {
            line.push(' ');
            line.push_str(k);
            line.push('=');
            line.push_str(&value(&v.to_string()));
        }
        line.push('\n');
        let mut g = match self.sink.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        // A failing log sink must not take the gateway down.
        let _ = g.write_all(line.as_bytes());
        let _ = g.flush();
    }

    /// INFO line.
    pub fn info(&self, msg: &str, attrs: &[(&str, &dyn std::fmt::Display)]) {
        self.log(INFO, msg, attrs)
    }
    /// WARN line.
    pub fn warn(&self, msg: &str, attrs: &[(&str, &dyn std::fmt::Display)]) {
        self.log(WARN, msg, attrs)
    }
    /// ERROR line.
    pub fn error(&self, msg: &str, attrs: &[(&str, &dyn std::fmt::Display)]) {
        self.log(ERROR, msg, attrs)
    }
    /// DEBUG line.
    pub fn debug(&self, msg: &str, attrs: &[(&str, &dyn std::fmt::Display)]) {
        self.log(DEBUG, msg, attrs)
    }
}

fn level_name(l: i32) -> String {
    let (name, base) = if l < INFO {
        ("DEBUG", DEBUG)
    } else if l < WARN {
        ("INFO", INFO)
    } else if l < ERROR {
        ("WARN", WARN)
    } else {
        ("ERROR", ERROR)
    };
    match l - base {
        0 => name.into(),
        d => format!("{name}{d:+}"),
    }
}

/// slog text quoting: bare unless empty or containing space, `=`, `"` or control characters.
fn value(s: &str) -> String {
    if s.is_empty()
        || s.chars()
            .any(|c| c == ' ' || c == '=' || c == '"' || c.is_control())
    {
        gosyntax::go_quote(s)
    } else {
        s.to_string()
    }
}

/// UTC time as `2006-01-02T15:04:05.000Z`.
pub fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let (year, month, day, hour, minute, second) = gosyntax::utc_civil(d.as_secs() as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{:03}Z",
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn slog_text_format() {
        let buf = Buf::default();
        let log = Logger::new(Box::new(buf.clone()), INFO);
        log.debug("hidden", &[]);
        log.info(
            "warm signal received",
            &[("target", &"backend"), ("source", &"10.0.0.2:5000")],
        );
        log.log(ERROR + 2, "x", &[("err", &"a b")]);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("time=20"), "{}", lines[0]);
        assert!(lines[0].ends_with(
            " level=INFO msg=\"warm signal received\" target=backend source=10.0.0.2:5000"
        ));
        assert!(lines[1].ends_with(" level=ERROR+2 msg=x err=\"a b\""));
    }
}

#[cfg(test)]
mod file_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn file_output_appends_with_mode_0644() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("proxygw.log");
        std::fs::write(&p, "earlier line\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let log = Logger::open(&crate::config::LogOutput::File(p.clone()), INFO).unwrap();
        log.info("hello", &[]);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.starts_with("earlier line\n") && text.contains("msg=hello"),
            "{text}"
        );
        let fresh = dir.path().join("new.log");
        Logger::open(&crate::config::LogOutput::File(fresh.clone()), INFO).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        // 0644 before the umask, like Go's os.OpenFile(…, 0644).
        assert_eq!(mode & !0o644, 0, "{mode:o}");
    }
}
