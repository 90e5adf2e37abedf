//! IP networks and allowlists.
//!
//! One rule for IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`): they are IPv4. A dual-stack socket
//! reports its IPv4 peers in that form, so both a peer address and a configured network are
//! canonicalised before matching: `::ffff:10.0.0.0/104` is the network `10.0.0.0/8`, and it
//! covers the peer `10.1.2.3` whether the socket reported it as IPv4 or IPv4-mapped.

use std::net::IpAddr;

/// Why a network did not parse. The texts quote the (trimmed) input so that a caller can add
/// only the name of the field it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpNetError {
    /// The part before `/` is not an IP address.
    #[error("{input:?} is not an IP address or CIDR (e.g. 10.0.0.1, 10.0.0.0/8, ::1, fd00::/8)")]
    Address { input: String },
    /// The part after `/` is not a number from 0 to 255.
    #[error("{input:?}: prefix {prefix:?} is not a number")]
    PrefixNotANumber { input: String, prefix: String },
    /// An IPv4-mapped network with a prefix below 96 bits, which no IPv4 network can express.
    #[error("{input:?}: prefix too short for an IPv4-mapped network")]
    MappedPrefixTooShort { input: String },
    /// A prefix longer than the address (after the IPv4-mapped rule).
    #[error("{input:?}: prefix /{prefix} is longer than {max} bits")]
    PrefixTooLong { input: String, prefix: u8, max: u8 },
}

/// An IP network (`10.0.0.0/8`, `2001:db8::/32`) or a single address (a full-length prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `ip` or `ip/prefix`, ignoring white space around the whole and around either part;
    /// IPv4-mapped IPv6 addresses and networks are treated as IPv4 (module doc).
    pub fn parse(s: &str) -> Result<Self, IpNetError> {
        let s = s.trim();
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip.trim(), Some(p.trim())),
            None => (s, None),
        };
        let written: IpAddr = ip
            .parse()
            .map_err(|_| IpNetError::Address { input: s.into() })?;
        let addr = written.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => {
                let n: u8 = p.parse().map_err(|_| IpNetError::PrefixNotANumber {
                    input: s.into(),
                    prefix: p.into(),
                })?;
                let n = if written.is_ipv6() && addr.is_ipv4() {
                    n.checked_sub(96)
                        .ok_or_else(|| IpNetError::MappedPrefixTooShort { input: s.into() })?
                } else {
                    n
                };
                if n > max {
                    return Err(IpNetError::PrefixTooLong {
                        input: s.into(),
                        prefix: n,
                        max,
                    });
                }
                n
            }
        };
        Ok(Self { addr, prefix })
    }

    /// True when `ip` lies inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A list of networks; a peer is allowed when any of them contains it. Whether a missing list
/// means "everyone" or "no one" is the caller's policy, so it is not decided here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowlist(Vec<IpNet>);

impl Allowlist {
    /// The list of `nets`.
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    /// True when `ip` is inside any listed network.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }

    /// The listed networks.
    pub fn nets(&self) -> &[IpNet] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_and_hosts() {
        let n = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(n.contains(ip("10.255.0.1")));
        assert!(!n.contains(ip("11.0.0.1")));
        let n = IpNet::parse("fd00::/64").unwrap();
        assert!(n.contains(ip("fd00::1")));
        assert!(!n.contains(ip("fd00:0:0:1::1")));
        assert!(IpNet::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(IpNet::parse("::/0").unwrap().contains(ip("2001:db8::1")));
        let host = IpNet::parse("1.2.3.4").unwrap();
        assert!(host.contains(ip("1.2.3.4")) && !host.contains(ip("1.2.3.5")));
        // White space around the whole and around each part.
        assert_eq!(
            IpNet::parse(" 10.0.0.0 / 8 ").unwrap(),
            IpNet::parse("10.0.0.0/8").unwrap()
        );
    }

    #[test]
    fn ipv4_mapped_is_ipv4_on_both_sides() {
        let net = IpNet::parse("::ffff:10.0.0.0/104").unwrap();
        assert_eq!(net, IpNet::parse("10.0.0.0/8").unwrap());
        assert!(net.contains(ip("10.1.2.3")));
        assert!(net.contains(ip("::ffff:10.1.2.3")));
        assert!(!net.contains(ip("11.1.2.3")));
        let v4 = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(v4.contains(ip("::ffff:10.9.9.9")));
        assert!(IpNet::parse("::ffff:1.2.3.4")
            .unwrap()
            .contains(ip("1.2.3.4")));
    }

    #[test]
    fn error_texts_name_the_input() {
        let e = |s: &str| IpNet::parse(s).unwrap_err().to_string();
        assert_eq!(
            e("nope"),
            "\"nope\" is not an IP address or CIDR (e.g. 10.0.0.1, 10.0.0.0/8, ::1, fd00::/8)"
        );
        assert_eq!(
            e("10.0.0.0/x"),
            "\"10.0.0.0/x\": prefix \"x\" is not a number"
        );
        assert_eq!(
            e("10.0.0.0/33"),
            "\"10.0.0.0/33\": prefix /33 is longer than 32 bits"
        );
        assert_eq!(
            e("::ffff:10.0.0.0/95"),
            "\"::ffff:10.0.0.0/95\": prefix too short for an IPv4-mapped network"
        );
        assert_eq!(
            e("::ffff:10.0.0.0/129"),
            "\"::ffff:10.0.0.0/129\": prefix /33 is longer than 32 bits"
        );
    }

    #[test]
    fn allowlist_any_match() {
        let l = Allowlist::new(vec![
            IpNet::parse("10.0.0.0/8").unwrap(),
            IpNet::parse("fd00::/8").unwrap(),
        ]);
        assert!(l.allows(ip("10.0.0.1")) && l.allows(ip("fd12::1")));
        assert!(!l.allows(ip("192.168.0.1")));
        assert!(!Allowlist::new(Vec::new()).allows(ip("10.0.0.1")));
    }
}
