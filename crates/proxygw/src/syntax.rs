//! Go text syntaxes the original's config uses: `time.ParseDuration`, `netip.AddrPort`, slog levels, `%q`.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Quotes `s` like Go's `strconv.Quote` (`%q`), so error texts match the original byte for byte.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

const NS: u64 = 1;
const US: u64 = 1_000;
const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;

fn unit_nanos(unit: &str) -> Option<u64> {
    Some(match unit {
        "ns" => NS,
        "us" | "\u{b5}s" | "\u{3bc}s" => US,
        "ms" => MS,
        "s" => SEC,
        "m" => 60 * SEC,
        "h" => 3600 * SEC,
        _ => return None,
    })
}

/// Parses a Go duration (`1h30m`, `1.5s`, `-2m`, `300ms`) into signed nanoseconds, with Go's error texts.
pub fn parse_go_duration(text: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration {}", go_quote(text));
    let mut s = text;
    let mut neg = false;
    if let Some(c) = s.chars().next() {
        if c == '-' || c == '+' {
            neg = c == '-';
            s = &s[1..];
        }
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    const LIMIT: u64 = 1 << 63;
    while !s.is_empty() {
        let b = s.as_bytes();
        if !(b[0] == b'.' || b[0].is_ascii_digit()) {
            return Err(invalid());
        }
        // Integer part.
        let int_len = b.iter().take_while(|c| c.is_ascii_digit()).count();
        let mut v: u64 = 0;
        for &c in &b[..int_len] {
            v = v
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(c - b'0')))
                .filter(|v| *v <= LIMIT)
                .ok_or_else(invalid)?;
        }
        let pre = int_len > 0;
        s = &s[int_len..];
        // Fraction part: digits past what fits in the scale are dropped, as Go does.
        let mut frac: u64 = 0;
        let mut scale: f64 = 1.0;
        let mut post = false;
        if s.starts_with('.') {
            s = &s[1..];
            let fb = s.as_bytes();
            let frac_len = fb.iter().take_while(|c| c.is_ascii_digit()).count();
            let mut overflow = false;
            for &c in &fb[..frac_len] {
                if overflow {
                    continue;
                }
                match frac
                    .checked_mul(10)
                    .and_then(|f| f.checked_add(u64::from(c - b'0')))
                {
                    Some(f) if f <= LIMIT => {
                        frac = f;
                        scale *= 10.0;
                    }
                    _ => overflow = true,
                }
            }
            post = frac_len > 0;
            s = &s[frac_len..];
        }
        if !pre && !post {
            return Err(invalid());
        }
        let unit_len = s
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map(|(i, _)| i)
            .unwrap_or(s.len());
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration {}", go_quote(text)));
        }
        let unit_text = &s[..unit_len];
        s = &s[unit_len..];
        let unit = unit_nanos(unit_text).ok_or_else(|| {
            format!(
                "time: unknown unit {} in duration {}",
                go_quote(unit_text),
                go_quote(text)
            )
        })?;
        if v > LIMIT / unit {
            return Err(invalid());
        }
        v *= unit;
        if frac > 0 {
            v += (frac as f64 * (unit as f64 / scale)) as u64;
            if v > LIMIT {
                return Err(invalid());
            }
        }
        total = total
            .checked_add(v)
            .filter(|t| *t <= LIMIT)
            .ok_or_else(invalid)?;
    }
    if neg {
        return Ok((total as i128).wrapping_neg() as i64);
    }
    if total > LIMIT - 1 {
        return Err(invalid());
    }
    Ok(total as i64)
}

/// Formats a duration the way Go's `time.Duration.String` does for whole seconds and above (`1m0s`, `5s`).
pub fn format_go_duration(d: Duration) -> String {
    let total = d.as_secs();
    let frac = d.subsec_nanos();
    if total == 0 && frac == 0 {
        return "0s".into();
    }
    let (h, m, s) = (total / 3600, (total / 60) % 60, total % 60);
    let secs = if frac == 0 {
        format!("{s}s")
    } else {
        let f = format!("{:09}", frac);
        format!("{s}.{}s", f.trim_end_matches('0'))
    };
    if h > 0 {
        format!("{h}h{m}m{secs}")
    } else if m > 0 {
        format!("{m}m{secs}")
    } else {
        secs
    }
}

/// An IP address and port in Go's `netip.AddrPort` text form, keeping a v6 zone so it can be rejected by name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AddrPort {
    /// The address and port.
    pub addr: SocketAddr,
    /// The IPv6 zone (`%eth0`), empty if none.
    pub zone: String,
}

impl std::fmt::Display for AddrPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addr {
            SocketAddr::V4(a) => write!(f, "{a}"),
            SocketAddr::V6(a) if self.zone.is_empty() => write!(f, "[{}]:{}", a.ip(), a.port()),
            SocketAddr::V6(a) => write!(f, "[{}%{}]:{}", a.ip(), self.zone, a.port()),
        }
    }
}

fn parse_addr(ip: &str) -> Result<(IpAddr, String), String> {
    let bad = || format!("ParseAddr({}): unable to parse IP", go_quote(ip));
    if ip.is_empty() {
        return Err(format!("ParseAddr({}): unable to parse IP", go_quote(ip)));
    }
    if let Some((a, zone)) = ip.split_once('%') {
        if zone.is_empty() {
            return Err(format!(
                "ParseAddr({}): zone must be a non-empty string",
                go_quote(ip)
            ));
        }
        let v6: Ipv6Addr = a.parse().map_err(|_| bad())?;
        return Ok((IpAddr::V6(v6), zone.to_string()));
    }
    ip.parse::<IpAddr>()
        .map(|a| (a, String::new()))
        .map_err(|_| bad())
}

/// Parses `netip.ParseAddrPort` syntax with Go's error texts: `1.2.3.4:80`, `[::1]:80`, `[fe80::1%eth0]:80`.
pub fn parse_addr_port(s: &str) -> Result<AddrPort, String> {
    let i = s.rfind(':').ok_or_else(|| "not an ip:port".to_string())?;
    let (mut ip, port) = (&s[..i], &s[i + 1..]);
    if ip.is_empty() {
        return Err("no IP".into());
    }
    if port.is_empty() {
        return Err("no port".into());
    }
    let mut v6 = false;
    if ip.starts_with('[') {
        if ip.len() < 2 || !ip.ends_with(']') {
            return Err("missing ]".into());
        }
        ip = &ip[1..ip.len() - 1];
        v6 = true;
    }
    let port: u16 = if port.bytes().all(|b| b.is_ascii_digit()) {
        port.parse().ok()
    } else {
        None
    }
    .ok_or_else(|| format!("invalid port {} parsing {}", go_quote(port), go_quote(s)))?;
    let (addr, zone) = parse_addr(ip)?;
    if v6 && addr.is_ipv4() {
        return Err(format!(
            "invalid ip:port {}, square brackets can only be used with IPv6 addresses",
            go_quote(s)
        ));
    }
    if !v6 && addr.is_ipv6() {
        return Err(format!(
            "invalid ip:port {}, IPv6 addresses must be surrounded by square brackets",
            go_quote(s)
        ));
    }
    Ok(AddrPort {
        addr: SocketAddr::new(addr, port),
        zone,
    })
}

/// A slog level: DEBUG=-4, INFO=0, WARN=4, ERROR=8, plus an optional signed offset.
pub fn parse_slog_level(text: &str) -> Result<i32, String> {
    let err = |m: &str| format!("slog: level string {}: {m}", go_quote(text));
    let (name, offset) = match text.find(['+', '-']) {
        Some(i) => {
            let off: i32 = text[i..].parse().map_err(|_| err("bad offset"))?;
            (&text[..i], off)
        }
        None => (text, 0),
    };
    let base = match name.to_ascii_uppercase().as_str() {
        "DEBUG" => -4,
        "INFO" => 0,
        "WARN" => 4,
        "ERROR" => 8,
        _ => return Err(err("unknown name")),
    };
    Ok(base + offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_follow_go() {
        assert_eq!(parse_go_duration("5m"), Ok(300 * SEC as i64));
        assert_eq!(parse_go_duration("1h30m"), Ok(5400 * SEC as i64));
        assert_eq!(parse_go_duration("1.5s"), Ok(1_500_000_000));
        assert_eq!(parse_go_duration("500ms"), Ok(500_000_000));
        assert_eq!(parse_go_duration("-2s"), Ok(-2_000_000_000));
        assert_eq!(parse_go_duration("+2s"), Ok(2_000_000_000));
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert_eq!(parse_go_duration("1µs"), Ok(1000));
        assert_eq!(parse_go_duration(".5m"), Ok(30 * SEC as i64));
        assert_eq!(parse_go_duration("1.h"), Ok(3600 * SEC as i64));
        assert_eq!(
            parse_go_duration("300"),
            Err("time: missing unit in duration \"300\"".into())
        );
        assert_eq!(
            parse_go_duration("5x"),
            Err("time: unknown unit \"x\" in duration \"5x\"".into())
        );
        assert_eq!(
            parse_go_duration(""),
            Err("time: invalid duration \"\"".into())
        );
        assert_eq!(
            parse_go_duration("."),
            Err("time: invalid duration \".\"".into())
        );
        assert_eq!(
            parse_go_duration("s"),
            Err("time: invalid duration \"s\"".into())
        );
        assert_eq!(
            parse_go_duration("9999999999h"),
            Err("time: invalid duration \"9999999999h\"".into())
        );
        assert_eq!(format_go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_go_duration(Duration::from_secs(3600)), "1h0m0s");
    }

    #[test]
    fn addr_ports_follow_netip() {
        assert_eq!(
            parse_addr_port("127.0.0.1:8080").unwrap().to_string(),
            "127.0.0.1:8080"
        );
        assert_eq!(parse_addr_port("[::1]:80").unwrap().to_string(), "[::1]:80");
        assert_eq!(parse_addr_port("[fe80::1%eth0]:80").unwrap().zone, "eth0");
        assert_eq!(parse_addr_port("1.2.3.4").unwrap_err(), "not an ip:port");
        assert_eq!(parse_addr_port(":80").unwrap_err(), "no IP");
        assert_eq!(parse_addr_port("1.2.3.4:").unwrap_err(), "no port");
        assert_eq!(
            parse_addr_port("1.2.3.4:99999").unwrap_err(),
            "invalid port \"99999\" parsing \"1.2.3.4:99999\""
        );
        assert_eq!(
            parse_addr_port("::1:80").unwrap_err(),
            "invalid ip:port \"::1:80\", IPv6 addresses must be surrounded by square brackets"
        );
        assert_eq!(
            parse_addr_port("[1.2.3.4]:80").unwrap_err(),
            "invalid ip:port \"[1.2.3.4]:80\", square brackets can only be used with IPv6 addresses"
        );
        assert_eq!(
            parse_addr_port("host:80").unwrap_err(),
            "ParseAddr(\"host\"): unable to parse IP"
        );
    }

    #[test]
    fn slog_levels() {
        assert_eq!(parse_slog_level("info"), Ok(0));
        assert_eq!(parse_slog_level("WARN"), Ok(4));
        assert_eq!(parse_slog_level("ERROR+2"), Ok(10));
        assert_eq!(parse_slog_level("DEBUG-1"), Ok(-5));
        assert!(parse_slog_level("loud")
            .unwrap_err()
            .contains("unknown name"));
    }

    #[test]
    fn quote_like_go() {
        assert_eq!(go_quote("a\"b\n"), "\"a\\\"b\\n\"");
    }
}
