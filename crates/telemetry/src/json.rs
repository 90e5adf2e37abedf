//! A JSON writer that reproduces Go `encoding/json` output byte for byte.
//!
//! Go's encoder differs from most others in ways the cwproxy log format depends on: it escapes
//! `<`, `>`, `&` and U+2028/U+2029, writes lowercase `\u00XX` for control characters, replaces
//! every byte of invalid UTF-8 with the six characters `\ufffd` (one per byte, not one per
//! sequence), and formats floats with its own shortest-representation rules. Strings here are
//! byte slices because request paths, header values and raw bodies need not be UTF-8.

use std::fmt::Write as _;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `s` as a JSON string literal (with quotes), escaped exactly as Go's HTML-safe encoder.
pub fn write_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    write_str_body(out, s);
    out.push(b'"');
}

/// Byte classes: 0 = copy as is, 1 = ASCII that needs an escape, 2 = start of a non-ASCII sequence.
const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = if i < 0x20
            || i == b'"' as usize
            || i == b'\\' as usize
            || i == b'<' as usize
            || i == b'>' as usize
            || i == b'&' as usize
        {
            1
        } else if i >= 0x80 {
            2
        } else {
            0
        };
        i += 1;
    }
    t
};

/// Width of the valid UTF-8 sequence at the start of `s`, or 0 when Go's `utf8.DecodeRune`
/// would report an error there (it then consumes exactly one byte).
fn utf8_width(s: &[u8]) -> usize {
    let b0 = s[0];
    let cont = |i: usize, lo: u8, hi: u8| s.get(i).is_some_and(|&b| (lo..=hi).contains(&b));
    match b0 {
        0xC2..=0xDF if cont(1, 0x80, 0xBF) => 2,
        0xE0 if cont(1, 0xA0, 0xBF) && cont(2, 0x80, 0xBF) => 3,
        0xE1..=0xEC | 0xEE..=0xEF if cont(1, 0x80, 0xBF) && cont(2, 0x80, 0xBF) => 3,
        0xED if cont(1, 0x80, 0x9F) && cont(2, 0x80, 0xBF) => 3,
        0xF0 if cont(1, 0x90, 0xBF) && cont(2, 0x80, 0xBF) && cont(3, 0x80, 0xBF) => 4,
        0xF1..=0xF3 if cont(1, 0x80, 0xBF) && cont(2, 0x80, 0xBF) && cont(3, 0x80, 0xBF) => 4,
        0xF4 if cont(1, 0x80, 0x8F) && cont(2, 0x80, 0xBF) && cont(3, 0x80, 0xBF) => 4,
        _ => 0,
    }
}

/// Appends the escaped contents of a JSON string literal without the surrounding quotes.
pub fn write_str_body(out: &mut Vec<u8>, s: &[u8]) {
    let mut start = 0;
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        match CLASS[usize::from(b)] {
            0 => {
                i += 1;
                continue;
            }
            1 => {
                out.extend_from_slice(&s[start..i]);
                match b {
                    b'"' => out.extend_from_slice(b"\\\""),
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    0x08 => out.extend_from_slice(b"\\b"),
                    0x0c => out.extend_from_slice(b"\\f"),
                    _ => {
                        out.extend_from_slice(b"\\u00");
                        out.push(HEX[usize::from(b >> 4)]);
                        out.push(HEX[usize::from(b & 0xf)]);
                    }
                }
                i += 1;
                start = i;
            }
            _ => {
                let w = utf8_width(&s[i..]);
                if w == 0 {
                    // Go reports every invalid position with width 1, so each byte of a bad
                    // sequence becomes its own replacement escape.
                    out.extend_from_slice(&s[start..i]);
                    out.extend_from_slice(b"\\ufffd");
                    i += 1;
                    start = i;
                } else if w == 3
                    && b == 0xE2
                    && s[i + 1] == 0x80
                    && (s[i + 2] == 0xA8 || s[i + 2] == 0xA9)
                {
                    // U+2028 / U+2029: line terminators to JavaScript.
                    out.extend_from_slice(&s[start..i]);
                    out.extend_from_slice(if s[i + 2] == 0xA8 {
                        b"\\u2028"
                    } else {
                        b"\\u2029"
                    });
                    i += 3;
                    start = i;
                } else {
                    i += w;
                }
            }
        }
    }
    out.extend_from_slice(&s[start..]);
}

/// Appends an integer.
pub fn write_i64(out: &mut Vec<u8>, v: i64) {
    let mut buf = itoa_buf();
    out.extend_from_slice(format_i64(&mut buf, v));
}

/// Appends an unsigned integer.
pub fn write_u64(out: &mut Vec<u8>, v: u64) {
    let mut buf = itoa_buf();
    out.extend_from_slice(format_u64(&mut buf, v));
}

fn itoa_buf() -> [u8; 20] {
    [0u8; 20]
}

fn format_u64(buf: &mut [u8; 20], mut v: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

fn format_i64(buf: &mut [u8; 20], v: i64) -> &[u8] {
    if v >= 0 {
        return format_u64(buf, v as u64);
    }
    let mag = v.unsigned_abs();
    let len = format_u64(buf, mag).len();
    let start = buf.len() - len - 1;
    buf[start] = b'-';
    &buf[start..]
}

/// Appends a float formatted as Go's `json.Marshal(float64)`.
///
/// Plain decimal for 1e-6 ≤ |x| < 1e21 (and 0), exponent form otherwise with Go's exponent
/// spelling (`5e-7`, `1e+21`, `1.5e-10`). Non-finite values, which Go refuses to encode, are
/// written as `0` so a line is never lost; the metrics built here are always finite.
pub fn write_f64(out: &mut Vec<u8>, v: f64) {
    if !v.is_finite() {
        out.push(b'0');
        return;
    }
    let abs = v.abs();
    // Integral values below 2^53 print as plain integers in Go; skip the float formatter.
    if v.fract() == 0.0 && abs < 9_007_199_254_740_992.0 {
        if v == 0.0 && v.is_sign_negative() {
            out.extend_from_slice(b"-0");
        } else {
            write_i64(out, v as i64);
        }
        return;
    }
    if (1e-6..1e21).contains(&abs) {
        // Rust's Display prints the shortest round-trip digits without an exponent, like Go's 'f', -1.
        let _ = write!(Appender(out), "{v}");
        return;
    }
    // Rust's LowerExp prints shortest digits as `1.5e-10`; Go writes an explicit exponent sign
    // and at least two digits, then trims `e-0N` back to `e-N`.
    let start = out.len();
    let _ = write!(Appender(out), "{v:e}");
    if let Some(pos) = out[start..]
        .iter()
        .position(|&b| b == b'e')
        .map(|p| start + p)
    {
        if out.get(pos + 1) != Some(&b'-') {
            out.insert(pos + 1, b'+');
            if out.len() - (pos + 2) < 2 {
                out.insert(pos + 2, b'0');
            }
        }
    }
}

/// Appends a duration in milliseconds with exactly three decimals, exactly as Go formats
/// `fmt.Sprintf("%.3f", float64(d)/1e6)`.
pub fn write_duration_ms3(out: &mut Vec<u8>, d: std::time::Duration) {
    let ns = d.as_nanos();
    // Away from a tie (…500 ns) the rounding of the float value equals integer rounding: the
    // exact quotient is at least 1 ns from the boundary, far more than the float's error at
    // these magnitudes (< 1e15 ns). Ties depend on the float's binary value: format that.
    if ns % 1000 != 500 && ns < 1_000_000_000_000_000 {
        let us = (ns + 500) / 1000;
        write_u64(out, (us / 1000) as u64);
        out.push(b'.');
        let frac = us % 1000;
        out.push(b'0' + (frac / 100) as u8);
        out.push(b'0' + (frac / 10 % 10) as u8);
        out.push(b'0' + (frac % 10) as u8);
        return;
    }
    write_fixed3(out, ns as f64 / 1e6);
}

/// Appends a number with exactly three decimals, as Go's `fmt.Sprintf("%.3f")`.
pub fn write_fixed3(out: &mut Vec<u8>, v: f64) {
    let _ = write!(Appender(out), "{v:.3}");
}

/// Formats straight into the output buffer, avoiding a temporary `String`.
struct Appender<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Appender<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Appends `"key":` with the key escaped like any Go string.
pub fn write_key(out: &mut Vec<u8>, key: &[u8]) {
    write_str(out, key);
    out.push(b':');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(input: &[u8]) -> String {
        let mut out = Vec::new();
        write_str(&mut out, input);
        String::from_utf8(out).expect("writer emits UTF-8")
    }

    fn f(v: f64) -> String {
        let mut out = Vec::new();
        write_f64(&mut out, v);
        String::from_utf8(out).expect("utf8")
    }

    fn d(v: f64) -> String {
        let mut out = Vec::new();
        write_fixed3(&mut out, v);
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn html_safe_escapes() {
        assert_eq!(
            s(b"<a href=\"x\">&</a>"),
            r#""\u003ca href=\"x\"\u003e\u0026\u003c/a\u003e""#
        );
    }

    #[test]
    fn control_characters() {
        assert_eq!(s(b"\n\r\t\x08\x0c"), r#""\n\r\t\b\f""#);
        assert_eq!(s(b"\x00\x01\x1f\x7f"), "\"\\u0000\\u0001\\u001f\x7f\"");
        assert_eq!(s(b"a/b\\c"), r#""a/b\\c""#);
    }

    #[test]
    fn line_separators() {
        assert_eq!(s("x\u{2028}y\u{2029}z".as_bytes()), r#""x\u2028y\u2029z""#);
        // Other characters starting with E2 80 stay raw.
        assert_eq!(s("\u{2026}".as_bytes()), "\"\u{2026}\"");
    }

    #[test]
    fn non_ascii_raw() {
        assert_eq!(
            s("héllo 世界 \u{fffd}".as_bytes()),
            "\"héllo 世界 \u{fffd}\""
        );
    }

    #[test]
    fn invalid_utf8_one_escape_per_byte() {
        assert_eq!(s(b"a\xffb"), r#""a\ufffdb""#);
        // Truncated 3-byte sequence followed by ASCII: Go decodes width 1 at each position.
        assert_eq!(s(b"\xe2\x82A"), r#""\ufffd\ufffdA""#);
        // Encoded surrogate and overlong forms.
        assert_eq!(s(b"\xed\xa0\x80"), r#""\ufffd\ufffd\ufffd""#);
        assert_eq!(s(b"\xc0\x80"), r#""\ufffd\ufffd""#);
        // Truncated at end of input.
        assert_eq!(s(b"ok\xf0\x9f\x98"), r#""ok\ufffd\ufffd\ufffd""#);
    }

    #[test]
    fn go_float_format() {
        assert_eq!(f(1.0), "1");
        assert_eq!(f(17.0), "17");
        assert_eq!(f(2.5), "2.5");
        assert_eq!(f(3.412345), "3.412345");
        assert_eq!(f(1.207019), "1.207019");
        assert_eq!(f(0.0), "0");
        assert_eq!(f(5e-7), "5e-7");
        assert_eq!(f(1e-6), "0.000001");
        assert_eq!(f(1.5e-10), "1.5e-10");
        assert_eq!(f(1e21), "1e+21");
        assert_eq!(f(1e20), "100000000000000000000");
        assert_eq!(f(-2.5e22), "-2.5e+22");
        assert_eq!(f(123456789.0), "123456789");
        assert_eq!(f(f64::NAN), "0");
    }

    #[test]
    fn three_decimals_correctly_rounded() {
        assert_eq!(d(123.456), "123.456");
        assert_eq!(d(1.5), "1.500");
        assert_eq!(d(0.042), "0.042");
        assert_eq!(d(3.412345), "3.412");
        assert_eq!(d(1.207019), "1.207");
        // Exact binary ties round half to even, as Go's strconv does.
        assert_eq!(d(0.0625), "0.062");
        assert_eq!(d(1.0625), "1.062");
        assert_eq!(d(0.1875), "0.188");
    }

    #[test]
    fn duration_fast_path_agrees_with_float_formatting() {
        let mut ns = 0u64;
        while ns < 50_000_000_000 {
            let d = std::time::Duration::from_nanos(ns);
            let mut fast = Vec::new();
            write_duration_ms3(&mut fast, d);
            let mut slow = Vec::new();
            write_fixed3(&mut slow, ns as f64 / 1e6);
            assert_eq!(fast, slow, "{ns} ns");
            ns = ns * 3 + 7;
        }
        for ns in [
            0u64,
            499,
            500,
            501,
            1_000_500,
            1_500_000,
            3_412_345,
            123_456_000,
            999_999_999,
        ] {
            let mut fast = Vec::new();
            write_duration_ms3(&mut fast, std::time::Duration::from_nanos(ns));
            let mut slow = Vec::new();
            write_fixed3(&mut slow, ns as f64 / 1e6);
            assert_eq!(fast, slow, "{ns} ns");
        }
    }

    #[test]
    fn integers() {
        let mut out = Vec::new();
        write_i64(&mut out, -1700000000000);
        out.push(b' ');
        write_i64(&mut out, i64::MIN);
        out.push(b' ');
        write_u64(&mut out, u64::MAX);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "-1700000000000 -9223372036854775808 18446744073709551615"
        );
    }
}
