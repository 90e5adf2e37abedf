//! Listening-port discovery over a child's process tree, and the choice of the address to proxy to.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// At most this many pids are inspected per poll (the original's bound; a runaway fork bomb stays cheap).
pub const MAX_TREE_PIDS: usize = 256;

/// Default interval between two looks at the process tree.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Default time to wait for a listening port before giving up.
pub const DEFAULT_DETECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Which processes count as one supervised tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scope {
    /// The direct child.
    pub root: u32,
    /// Its process group: members count even when re-parented away (launcher forked and exited).
    pub group: Option<u32>,
    /// This process, when it is a child subreaper adopting the tree's orphans: its other children count.
    pub adopter: Option<u32>,
}

impl Scope {
    /// The tree of `root` and, if `root` leads one, its process group.
    pub(crate) fn of(root: u32) -> Self {
        Scope {
            root,
            group: Some(root),
            adopter: None,
        }
    }
}

/// One TCP socket in LISTEN state found in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listener {
    /// The address it is bound to (`0.0.0.0`, `::`, `127.0.0.1`, `::1`, ...).
    pub addr: SocketAddr,
    /// The pid holding the socket (one of them, if several share it).
    pub pid: u32,
}

/// Every TCP LISTEN socket (IPv4 and IPv6) held by `root_pid`, its descendants, and — when `root_pid` leads
/// a process group — every member of that group and their descendants. Sorted by address, deduplicated.
///
/// Only sockets in the caller's network namespace count: others are not reachable through its loopback.
pub fn listening_ports(root_pid: u32) -> io::Result<Vec<Listener>> {
    platform::listeners(Scope::of(root_pid))
}

/// Pick the address to connect to: the lowest port other than `exclude_port`, and on that port the bound
/// address a local client can reach, preferring IPv4 (wildcards map to loopback of the same family).
pub fn connect_addr(listeners: &[Listener], exclude_port: Option<u16>) -> Option<SocketAddr> {
    let port = listeners
        .iter()
        .map(|l| l.addr.port())
        .filter(|&p| p != 0 && Some(p) != exclude_port)
        .min()?;
    listeners
        .iter()
        .filter(|l| l.addr.port() == port)
        .map(|l| reachable(l.addr))
        .min_by_key(|a| preference(*a))
}

/// Map a bound address to one a client on this host can connect to.
fn reachable(bound: SocketAddr) -> SocketAddr {
    let ip = match bound.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        // `::` accepts on ::1 whether or not it is dual-stack, so ::1 is always right.
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        other => other,
    };
    SocketAddr::new(ip, bound.port())
}

/// Lower is better: IPv4 loopback, IPv6 loopback, then specific addresses (IPv4 first).
fn preference(addr: SocketAddr) -> u8 {
    match addr.ip() {
        IpAddr::V4(v4) if v4.is_loopback() => 0,
        IpAddr::V6(v6) if v6.is_loopback() => 1,
        IpAddr::V4(_) => 2,
        IpAddr::V6(_) => 3,
    }
}

/// Polls a tree repeatedly, skipping the process walk while nothing in the namespace changed.
///
/// Socket inode numbers are not reused in practice, so if the namespace's set of LISTEN sockets is the same
/// as at the last walk, no process in the tree can have started listening since, short of receiving a
/// listening socket from outside the tree over a Unix socket. A walk every [`WALK_EVERY`] polls covers that.
#[derive(Debug, Default)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub struct PortWatcher {
    last_inodes: Option<Vec<u64>>,
    polls_since_walk: u32,
    cached: Vec<Listener>,
}

/// Polls between two unconditional walks of the process tree.
pub const WALK_EVERY: u32 = 10;

impl PortWatcher {
    /// A watcher that has not polled yet (its first poll always walks the tree).
    pub fn new() -> Self {
        PortWatcher::default()
    }

    /// Like [`listening_ports`], but answers from the last walk while the namespace's LISTEN set is unchanged.
    pub fn poll(&mut self, root_pid: u32) -> io::Result<Vec<Listener>> {
        platform::poll(self, Scope::of(root_pid))
    }

    /// Poll an explicit scope (the detection loop passes the child's adoption setting).
    #[cfg(unix)]
    pub(crate) fn poll_scope(&mut self, scope: Scope) -> io::Result<Vec<Listener>> {
        platform::poll(self, scope)
    }
}

#[cfg(target_os = "linux")]
pub(crate) mod platform {
    use super::{Listener, PortWatcher, Scope, WALK_EVERY};
    use std::io;

    /// Listeners of the tree described by `scope`.
    pub(crate) fn listeners(scope: Scope) -> io::Result<Vec<Listener>> {
        Ok(to_listeners(crate::linux::tree_listeners(scope)?))
    }

    pub(super) fn poll(w: &mut PortWatcher, scope: Scope) -> io::Result<Vec<Listener>> {
        let table = crate::linux::listen_table()?;
        let mut inodes: Vec<u64> = table.keys().copied().collect();
        inodes.sort_unstable();
        w.polls_since_walk += 1;
        if w.last_inodes.as_ref() != Some(&inodes) || w.polls_since_walk >= WALK_EVERY {
            w.cached = to_listeners(crate::linux::attribute(&table, scope)?);
            w.last_inodes = Some(inodes);
            w.polls_since_walk = 0;
        }
        Ok(w.cached.clone())
    }

    fn to_listeners(found: Vec<(std::net::SocketAddr, u32)>) -> Vec<Listener> {
        found
            .into_iter()
            .map(|(addr, pid)| Listener { addr, pid })
            .collect()
    }
}

/// macOS and Windows: the `listeners` crate (libproc on macOS, `GetExtendedTcpTable` on Windows).
/// Compiled for both in CI-less cross checks only; never run here (see README).
#[cfg(any(target_os = "macos", target_os = "windows"))]
pub(crate) mod platform {
    use super::{Listener, PortWatcher, Scope};
    use std::io;

    /// Listeners held by `scope.root` or (Unix) by a member of `scope.group`.
    pub(crate) fn listeners(scope: Scope) -> io::Result<Vec<Listener>> {
        let all = listeners::get_all().map_err(|e| io::Error::other(e.to_string()))?;
        let mut out: Vec<Listener> = all
            .into_iter()
            .filter(|l| {
                l.protocol == listeners::Protocol::TCP
                    && l.state == listeners::SocketState::Listen
                    && l.socket.port() > 0
                    && in_tree(l.process.pid, scope.root, scope.group)
            })
            .map(|l| Listener {
                addr: l.socket,
                pid: l.process.pid,
            })
            .collect();
        out.sort();
        out.dedup_by_key(|l| l.addr);
        Ok(out)
    }

    pub(super) fn poll(_w: &mut PortWatcher, scope: Scope) -> io::Result<Vec<Listener>> {
        listeners(scope)
    }

    /// The group covers `sh -c` wrappers and launchers; descendants that left the group are not seen.
    #[cfg(unix)]
    fn in_tree(pid: u32, root: u32, group: Option<u32>) -> bool {
        use nix::unistd::{getpgid, Pid};
        if pid == root {
            return true;
        }
        let (Some(g), Ok(p)) = (group, i32::try_from(pid)) else {
            return false;
        };
        matches!(getpgid(Some(Pid::from_raw(p))), Ok(pg) if i64::from(pg.as_raw()) == i64::from(g))
    }

    /// Windows has no process groups to follow: only the direct child's own sockets count.
    #[cfg(windows)]
    fn in_tree(pid: u32, root: u32, _group: Option<u32>) -> bool {
        pid == root
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "windows")))]
pub(crate) mod platform {
    use super::{Listener, PortWatcher, Scope};
    use std::io;

    /// Port discovery is not implemented on this platform; see the crate README.
    pub(crate) fn listeners(_scope: Scope) -> io::Result<Vec<Listener>> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "listening-port discovery is not implemented on this platform",
        ))
    }

    pub(super) fn poll(_w: &mut PortWatcher, scope: Scope) -> io::Result<Vec<Listener>> {
        listeners(scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(s: &str) -> Listener {
        Listener {
            addr: s.parse().unwrap(),
            pid: 1,
        }
    }

    #[test]
    fn lowest_port_wins_and_exclusion_applies() {
        let ls = [l("0.0.0.0:9000"), l("127.0.0.1:8081"), l("0.0.0.0:8500")];
        assert_eq!(
            connect_addr(&ls, None),
            Some("127.0.0.1:8081".parse().unwrap())
        );
        assert_eq!(
            connect_addr(&ls, Some(8081)),
            Some("127.0.0.1:8500".parse().unwrap())
        );
        assert_eq!(connect_addr(&[l("0.0.0.0:8081")], Some(8081)), None);
        assert_eq!(connect_addr(&[], None), None);
    }

    #[test]
    fn family_and_address_follow_the_binding() {
        assert_eq!(
            connect_addr(&[l("[::1]:7000")], None),
            Some("[::1]:7000".parse().unwrap())
        );
        assert_eq!(
            connect_addr(&[l("[::]:7000")], None),
            Some("[::1]:7000".parse().unwrap())
        );
        assert_eq!(
            connect_addr(&[l("[::]:7000"), l("0.0.0.0:7000")], None),
            Some("127.0.0.1:7000".parse().unwrap())
        );
        assert_eq!(
            connect_addr(&[l("10.1.2.3:7000")], None),
            Some("10.1.2.3:7000".parse().unwrap())
        );
        assert_eq!(
            connect_addr(&[l("[::ffff:127.0.0.1]:7000")], None),
            Some("127.0.0.1:7000".parse().unwrap())
        );
        assert_eq!(
            connect_addr(&[l("10.1.2.3:7000"), l("[::1]:7000")], None),
            Some("[::1]:7000".parse().unwrap())
        );
    }
}
