//! Linux: the process tree and its LISTEN sockets from `/proc`.
//!
//! One poll reads `/proc/<pid>/stat` of every process (for ppid and pgid), builds the tree from the
//! parent links plus every member of the child's process group (which catches servers whose launcher
//! forked and exited: they are re-parented to init or a subreaper but keep the process group), then
//! collects socket inodes from `/proc/<pid>/fd` and matches them against the LISTEN sockets of this
//! network namespace (sock_diag netlink; `/proc/self/net/tcp{,6}` state `0A` as the fallback).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use crate::ports::{Scope, MAX_TREE_PIDS};

/// The fields of `/proc/<pid>/stat` the tree walk needs.
#[derive(Debug, Clone, Copy)]
struct ProcStat {
    pid: u32,
    ppid: u32,
    pgid: u32,
    zombie: bool,
}

/// Read the leading fields of `/proc/<pid>/stat` into `buf` and parse them.
fn read_stat(pid: u32, buf: &mut [u8; 512]) -> Option<ProcStat> {
    let mut file = fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    // The fields we need come right after comm (at most 64 bytes), so one short read is enough.
    let n = file.read(buf).ok()?;
    parse_stat(pid, &buf[..n])
}

/// Parse `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses, so split at the last `)`.
fn parse_stat(pid: u32, line: &[u8]) -> Option<ProcStat> {
    let close = line.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(line.get(close + 1..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgid = fields.next()?.parse().ok()?;
    Some(ProcStat {
        pid,
        ppid,
        pgid,
        zombie: state == "Z" || state == "X",
    })
}

/// Every process currently visible in `/proc`.
fn all_stats() -> io::Result<Vec<ProcStat>> {
    let mut buf = [0u8; 512];
    let mut out = Vec::with_capacity(256);
    for entry in fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // A process may vanish between readdir and open; that is not an error.
        if let Some(stat) = read_stat(pid, &mut buf) {
            out.push(stat);
        }
    }
    Ok(out)
}

/// True if some non-zombie process has process-group id `pgid`.
pub(crate) fn group_has_live_member(pgid: u32) -> io::Result<bool> {
    Ok(all_stats()?.iter().any(|s| s.pgid == pgid && !s.zombie))
}

/// The pids of the tree rooted at `scope.root`, plus members of `scope.group`, plus the other children of
/// `scope.adopter`, each with their descendants.
///
/// Breadth-first, deduplicated, at most [`MAX_TREE_PIDS`]. Zombies are skipped (they hold no sockets).
pub(crate) fn tree_pids(scope: Scope) -> io::Result<Vec<u32>> {
    let stats = all_stats()?;
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for s in &stats {
        children.entry(s.ppid).or_default().push(s.pid);
    }
    let zombies: HashSet<u32> = stats.iter().filter(|s| s.zombie).map(|s| s.pid).collect();
    let mut queue: Vec<u32> = Vec::new();
    if stats.iter().any(|s| s.pid == scope.root) {
        queue.push(scope.root);
    }
    if let Some(g) = scope.group {
        queue.extend(stats.iter().filter(|s| s.pgid == g).map(|s| s.pid));
    }
    if let Some(me) = scope.adopter {
        queue.extend(
            children
                .get(&me)
                .into_iter()
                .flatten()
                .filter(|&&p| p != scope.root),
        );
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut i = 0;
    while i < queue.len() && out.len() < MAX_TREE_PIDS {
        let pid = queue[i];
        i += 1;
        if !seen.insert(pid) {
            continue;
        }
        if !zombies.contains(&pid) {
            out.push(pid);
        }
        if let Some(kids) = children.get(&pid) {
            queue.extend(kids.iter().copied());
        }
    }
    Ok(out)
}

/// Processes adopted by this (subreaper) process other than `direct`: live ones with their descendants,
/// and the adopted children that are zombies waiting to be reaped.
pub(crate) fn adopted(direct: u32) -> io::Result<(Vec<u32>, Vec<u32>)> {
    let me = std::process::id();
    let stats = all_stats()?;
    let zombies = stats
        .iter()
        .filter(|s| s.ppid == me && s.pid != direct && s.zombie)
        .map(|s| s.pid)
        .collect();
    let mut live = Vec::new();
    let mut frontier: Vec<u32> = stats
        .iter()
        .filter(|s| s.ppid == me && s.pid != direct && !s.zombie)
        .map(|s| s.pid)
        .collect();
    while let Some(pid) = frontier.pop() {
        if live.len() >= MAX_TREE_PIDS || live.contains(&pid) {
            continue;
        }
        live.push(pid);
        frontier.extend(
            stats
                .iter()
                .filter(|s| s.ppid == pid && !s.zombie)
                .map(|s| s.pid),
        );
    }
    Ok((live, zombies))
}

/// Reap adopted zombies (they are our children; nobody else will wait for them).
pub(crate) fn reap(pids: &[u32]) {
    use nix::sys::wait::{waitpid, WaitPidFlag};
    for &pid in pids {
        if let Ok(p) = i32::try_from(pid) {
            let _ = waitpid(nix::unistd::Pid::from_raw(p), Some(WaitPidFlag::WNOHANG));
        }
    }
}

/// Make this process a child subreaper: orphans among its descendants are re-parented to it instead of init.
pub(crate) fn become_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}

/// Socket inodes held open by `pid` (via `/proc/<pid>/fd/*` links of the form `socket:[N]`).
fn socket_inodes(pid: u32, into: &mut HashSet<u64>) {
    let dir = PathBuf::from(format!("/proc/{pid}/fd"));
    // Permission errors (another user's process) and races with exit are ignored: other pids may still answer.
    let Ok(entries) = fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        if let Some(inode) = parse_socket_link(target.as_os_str().as_encoded_bytes()) {
            into.insert(inode);
        }
    }
}

fn parse_socket_link(link: &[u8]) -> Option<u64> {
    let inner = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(inner).ok()?.parse().ok()
}

/// LISTEN entries (inode → bound address) from a `/proc/<pid>/net/tcp` or `tcp6` table.
fn parse_listen_table(text: &str, into: &mut HashMap<u64, SocketAddr>) {
    for line in text.lines().skip(1) {
        let mut fields = line.split_ascii_whitespace();
        let (Some(_sl), Some(local), Some(_remote), Some(state)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if state != "0A" {
            continue;
        }
        // tx_queue:rx_queue, tr:tm->when, retrnsmt, uid, timeout, then inode.
        let Some(inode) = fields.nth(5).and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        if let Some(addr) = parse_hex_addr(local) {
            into.insert(inode, addr);
        }
    }
}

/// Parse `0100007F:1F90` / 32-hex-digit IPv6 forms. The kernel prints each 32-bit word of the address in
/// host byte order, so converting each word back with `to_ne_bytes` recovers network order on any CPU.
fn parse_hex_addr(s: &str) -> Option<SocketAddr> {
    let (ip_hex, port_hex) = s.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    let ip = match ip_hex.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(ip_hex, 16).ok()?.to_ne_bytes(),
        )),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                let word = u32::from_str_radix(ip_hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Every TCP LISTEN socket of this network namespace held by the tree (see [`tree_pids`]), as
/// (bound address, owning pid), sorted and deduplicated by address.
///
/// Only the caller's network namespace is consulted: a listener in another namespace is not reachable
/// through this host's loopback anyway. The LISTEN set comes first because it is cheap; when it is empty
/// (a container before the app listens) the process tree is not walked at all.
pub(crate) fn tree_listeners(scope: Scope) -> io::Result<Vec<(SocketAddr, u32)>> {
    attribute(&listen_table()?, scope)
}

/// Every TCP LISTEN socket of this network namespace, by socket inode.
pub(crate) fn listen_table() -> io::Result<HashMap<u64, SocketAddr>> {
    match crate::sockdiag::listen_sockets() {
        Ok(t) => Ok(t),
        // sock_diag can be unavailable (module not loaded, seccomp); /proc is slower but always there.
        Err(_) => proc_listen_table(),
    }
}

/// The entries of `table` held open by a process of the tree (see [`tree_pids`]).
pub(crate) fn attribute(
    table: &HashMap<u64, SocketAddr>,
    scope: Scope,
) -> io::Result<Vec<(SocketAddr, u32)>> {
    if table.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut inodes = HashSet::new();
    for pid in tree_pids(scope)? {
        inodes.clear();
        socket_inodes(pid, &mut inodes);
        for inode in &inodes {
            if let Some(addr) = table.get(inode) {
                if addr.port() > 0 {
                    out.push((*addr, pid));
                }
            }
        }
    }
    out.sort();
    out.dedup_by_key(|(addr, _)| *addr);
    Ok(out)
}

/// LISTEN sockets of this network namespace from `/proc/self/net/tcp{,6}`.
fn proc_listen_table() -> io::Result<HashMap<u64, SocketAddr>> {
    let mut table = HashMap::new();
    for name in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        match fs::read_to_string(name) {
            Ok(text) => parse_listen_table(&text, &mut table),
            // tcp6 is absent when IPv6 is disabled.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_parens_and_spaces_in_comm() {
        let s = parse_stat(42, b"42 (a) b (c)) S 7 42 7 0 -1").unwrap();
        assert_eq!((s.ppid, s.pgid, s.zombie), (7, 42, false));
        let z = parse_stat(5, b"5 (x) Z 1 5 5").unwrap();
        assert!(z.zombie);
        assert!(parse_stat(5, b"5 (x").is_none());
    }

    #[test]
    fn hex_addresses() {
        if cfg!(target_endian = "little") {
            assert_eq!(
                parse_hex_addr("0100007F:1F90").unwrap(),
                "127.0.0.1:8080".parse().unwrap()
            );
            assert_eq!(
                parse_hex_addr("00000000000000000000000001000000:0050").unwrap(),
                "[::1]:80".parse().unwrap()
            );
            assert_eq!(
                parse_hex_addr("0000000000000000FFFF00000100007F:0050").unwrap(),
                "[::ffff:127.0.0.1]:80".parse().unwrap()
            );
        }
        assert!(parse_hex_addr("zz:1").is_none());
        assert!(parse_hex_addr("0100007F").is_none());
    }

    #[test]
    fn listen_table_keeps_only_state_0a() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F91 0100007F:D000 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0000000000000000 100 0 0 10 0\n";
        let mut t = HashMap::new();
        parse_listen_table(text, &mut t);
        assert_eq!(t.len(), 1);
        assert_eq!(t[&111].port(), 8080);
    }

    #[test]
    fn proc_fallback_table_sees_our_listeners() {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let table = proc_listen_table().unwrap();
        assert!(table.values().any(|a| *a == v4.local_addr().unwrap()));
        // Same answer as sock_diag for this socket, inode included.
        let diag = crate::sockdiag::listen_sockets().unwrap();
        let inode = |t: &HashMap<u64, SocketAddr>| {
            t.iter()
                .find(|(_, a)| **a == v4.local_addr().unwrap())
                .map(|(i, _)| *i)
        };
        assert_eq!(inode(&table), inode(&diag));
    }

    #[test]
    fn tree_of_this_process_holds_its_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let me = std::process::id();
        let found = tree_listeners(Scope {
            root: me,
            group: None,
            adopter: None,
        })
        .unwrap();
        assert!(found.contains(&(l.local_addr().unwrap(), me)), "{found:?}");
    }

    #[test]
    fn socket_links() {
        assert_eq!(parse_socket_link(b"socket:[12345]"), Some(12345));
        assert_eq!(parse_socket_link(b"pipe:[12345]"), None);
        assert_eq!(parse_socket_link(b"/dev/null"), None);
    }
}
