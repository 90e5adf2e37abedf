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

/// Appends the escaped contents of a JSON string literal without the surrounding quotes.
pub fn write_str_body(out: &mut Vec<u8>, s: &[u8]) {
    let mut rest = s;
    loop {
        match std::str::from_utf8(rest) {
            Ok(valid) => {
                write_valid(out, valid);
                return;
            }
            Err(err) => {
                let (valid, after) = rest.split_at(err.valid_up_to());
                // SAFETY: `valid_up_to` marks the longest prefix that is valid UTF-8.
                write_valid(out, unsafe { std::str::from_utf8_unchecked(valid) });
                // Go's utf8.DecodeRune reports every invalid position with width 1, so each byte of
                // a bad sequence becomes its own replacement escape.
                let bad = err.error_len().unwrap_or(after.len());
                for _ in 0..bad {
                    out.extend_from_slice(b"\\ufffd");
                }
                rest = &after[bad..];
            }
        }
    }
}

fn write_valid(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b < 0x80 {
            if !needs_escape(b) {
                i += 1;
                continue;
            }
            out.extend_from_slice(&bytes[start..i]);
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
            continue;
        }
        // U+2028 and U+2029 are E2 80 A8 / E2 80 A9; JavaScript treats them as line breaks.
        if b == 0xE2 && i + 2 < bytes.len() && bytes[i + 1] == 0x80 && bytes[i + 2] & 0xFE == 0xA8 {
            out.extend_from_slice(&bytes[start..i]);
            out.extend_from_slice(if bytes[i + 2] == 0xA8 {
                b"\\u2028"
            } else {
                b"\\u2029"
            });
            i += 3;
            start = i;
            continue;
        }
        i += 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

#[inline]
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\' || b == b'<' || b == b'>' || b == b'&'
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
    let mut s = String::new();
    if abs == 0.0 || (1e-6..1e21).contains(&abs) {
        // Rust's Display prints the shortest round-trip digits without an exponent, like Go's 'f', -1.
        let _ = write!(s, "{v}");
    } else {
        // Rust's LowerExp prints shortest digits as `1.5e-10`; Go writes at least two exponent
        // digits with an explicit sign, then trims `e-0N` back to `e-N`.
        let _ = write!(s, "{v:e}");
        if let Some(pos) = s.find('e') {
            let (mantissa, exp) = s.split_at(pos);
            let exp = &exp[1..];
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            let mut fixed = String::with_capacity(s.len() + 2);
            fixed.push_str(mantissa);
            fixed.push('e');
            fixed.push(sign);
            if digits.len() < 2 && sign == '+' {
                fixed.push('0');
            }
            fixed.push_str(digits);
            s = fixed;
        }
    }
    out.extend_from_slice(s.as_bytes());
}

/// Appends a millisecond duration with exactly three decimals, as Go's `fmt.Sprintf("%.3f")`.
pub fn write_fixed3(out: &mut Vec<u8>, v: f64) {
    let mut s = String::new();
    let _ = write!(s, "{v:.3}");
    out.extend_from_slice(s.as_bytes());
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
