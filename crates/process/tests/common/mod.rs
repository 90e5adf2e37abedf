//! Helpers shared by the integration tests: a python listener, reading its announced ports, /proc checks.
#![allow(dead_code, clippy::unwrap_used)]

use std::ffi::{OsStr, OsString};
use std::time::Duration;

use process::{Child, SpawnOptions, Stdio};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Python program: bind one TCP listener per argv host (port 0), print the ports, then sleep.
/// IPv6 sockets are made IPv6-only so `::1` really is the only way in.
pub const LISTEN_PY: &str = r#"
import socket, sys, time
socks = []
for host in sys.argv[1:]:
    fam = socket.AF_INET6 if ':' in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, 0))
    s.listen(16)
    socks.append(s)
print(' '.join(str(s.getsockname()[1]) for s in socks), flush=True)
time.sleep(60)
"#;

/// Spawn `prog args...` with stdout piped and `LISTEN_PY` in the environment (for `sh -c` wrappers).
pub fn spawn_piped(prog: &str, args: &[&str]) -> Child {
    let opts = SpawnOptions {
        stdout: Stdio::Piped,
        envs: vec![(OsString::from("LISTEN_PY"), OsString::from(LISTEN_PY))],
        ..SpawnOptions::default()
    };
    let args: Vec<OsString> = args.iter().map(OsString::from).collect();
    Child::spawn(OsStr::new(prog), &args, &opts).unwrap()
}

/// Read the first line the child prints (ports, or a readiness word), with a 10 s bound.
pub async fn first_line(child: &mut Child) -> String {
    let out = child.take_stdout().expect("stdout piped");
    let mut lines = BufReader::new(out).lines();
    tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("child printed nothing within 10s")
        .unwrap()
        .expect("child closed stdout")
}

/// Ports printed by `LISTEN_PY`.
pub async fn announced_ports(child: &mut Child) -> Vec<u16> {
    first_line(child)
        .await
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

/// `(pid, ppid, pgid, state)` of every process in `/proc`.
pub fn proc_table() -> Vec<(u32, u32, u32, char)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        out.push((
            pid,
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
            f[0].chars().next().unwrap(),
        ));
    }
    out
}

/// Live (non-zombie) processes in process group `pgid`.
pub fn live_group_members(pgid: u32) -> Vec<u32> {
    proc_table()
        .into_iter()
        .filter(|&(_, _, g, st)| g == pgid && st != 'Z' && st != 'X')
        .map(|(pid, ..)| pid)
        .collect()
}

/// Wait up to 3 s for group `pgid` to have no live member; returns the survivors if any.
pub async fn group_gone(pgid: u32) -> Vec<u32> {
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let left = live_group_members(pgid);
        if left.is_empty() || tokio::time::Instant::now() > until {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Parent pid of `pid`.
pub fn ppid_of(pid: u32) -> Option<u32> {
    proc_table().into_iter().find(|p| p.0 == pid).map(|p| p.1)
}

/// True if this machine has an IPv6 loopback (many CI containers run with IPv6 disabled).
pub fn ipv6_loopback() -> bool {
    let ok = std::net::TcpListener::bind("[::1]:0").is_ok();
    if !ok {
        eprintln!("skipping: no IPv6 loopback on this machine");
    }
    ok
}
