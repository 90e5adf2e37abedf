//! Go's `net/netip` text syntax for an address and port, with Go's error texts.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::go_quote;

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
}
