//! Local wall-clock timestamps in Go's `log.LstdFlags` layout (`2006/01/02 15:04:05`).

use std::time::{SystemTime, UNIX_EPOCH};

/// The current local time as `YYYY/MM/DD HH:MM:SS`.
pub(crate) fn now_local() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let t = libc::time_t::try_from(secs).unwrap_or(0);
    // SAFETY: `tm` is plain old data, fully written by `localtime_r` before it is read; both
    // pointers are valid for the duration of the call and `localtime_r` is thread-safe.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return format!("{secs}");
        }
        tm
    };
    format!(
        "{:04}/{:02}/{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn layout() {
        let s = super::now_local();
        assert_eq!(s.len(), 19, "{s}");
        assert_eq!(&s[4..5], "/");
        assert_eq!(&s[10..11], " ");
        assert_eq!(&s[13..14], ":");
    }
}
