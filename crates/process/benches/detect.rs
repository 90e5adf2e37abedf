//! Inspector-mode figures: listen()-to-detection latency at the default 100 ms poll, and the CPU cost of
//! polling a 50-process tree, against `ss -Htlnp` run at the same rate (the shell-out approach) as the peer.
//!
//! Run with `bench/process/run.sh` (or `cargo bench -p process --bench detect`). Env knobs:
//! `DETECT_RUNS` (default 30), `CPU_SECONDS` (default 10), `TREE_SIZE` (default 50).
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::ffi::{OsStr, OsString};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use process::{
    listening_ports, wait_for_listen_port, wait_tcp_ready, Child, DetectOptions, PortWatcher,
    SpawnOptions, Stdio,
};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Sleeps `argv[1]` seconds, listens on 127.0.0.1:0, then prints the wall-clock time (ns) right after listen().
const LATE_LISTENER_PY: &str = r#"
import socket, sys, time
time.sleep(float(sys.argv[1]))
s = socket.socket()
s.bind(('127.0.0.1', 0))
s.listen(16)
t = time.time_ns()
print(t, flush=True)
time.sleep(60)
"#;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128
}

fn spawn(prog: &str, args: &[&str]) -> Child {
    let opts = SpawnOptions {
        stdout: Stdio::Piped,
        ..SpawnOptions::default()
    };
    let args: Vec<OsString> = args.iter().map(OsString::from).collect();
    Child::spawn(OsStr::new(prog), &args, &opts).unwrap()
}

/// CPU time (user + system) of this process, or of its reaped children.
fn cpu_time(who: i32) -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage only writes into the struct we own; RUSAGE_SELF/CHILDREN are valid selectors.
    let ru = unsafe {
        assert_eq!(libc::getrusage(who, ru.as_mut_ptr()), 0);
        ru.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

async fn latency(runs: u64) -> (Vec<f64>, Vec<f64>) {
    let mut detect_ms = Vec::new();
    let mut connect_ms = Vec::new();
    for i in 0..runs {
        // Spread the listen() moment over the poll period so the figure is not phase-locked to the ticker.
        let delay = format!("{:.3}", 0.2 + (i as f64 * 0.0137) % 0.1);
        let mut child = spawn("python3", &["-c", LATE_LISTENER_PY, &delay]);
        let out = child.take_stdout().unwrap();
        let addr = wait_for_listen_port(&mut child, &DetectOptions::default())
            .await
            .unwrap();
        let detected = now_ns();
        wait_tcp_ready(addr, Duration::from_secs(5)).await.unwrap();
        let connected = now_ns();
        let line = BufReader::new(out)
            .lines()
            .next_line()
            .await
            .unwrap()
            .unwrap();
        let listened: i128 = line.trim().parse().unwrap();
        detect_ms.push((detected - listened) as f64 / 1e6);
        connect_ms.push((connected - listened) as f64 / 1e6);
        child.stop(Duration::from_secs(2)).await.unwrap();
    }
    detect_ms.sort_by(f64::total_cmp);
    connect_ms.sort_by(f64::total_cmp);
    (detect_ms, connect_ms)
}

/// A tree of `size` processes: one python listener (sh exec's into it) with `size - 1` sleeping children.
async fn tree(size: u64) -> Child {
    let script = format!(
        "i=0; while [ $i -lt {} ]; do sleep 120 & i=$((i+1)); done; exec python3 -c \"$LISTEN\" 0",
        size - 1
    );
    let opts = SpawnOptions {
        stdout: Stdio::Piped,
        envs: vec![(OsString::from("LISTEN"), OsString::from(LATE_LISTENER_PY))],
        ..SpawnOptions::default()
    };
    let args = [OsString::from("-c"), OsString::from(script)];
    let mut child = Child::spawn(OsStr::new("sh"), &args, &opts).unwrap();
    wait_for_listen_port(&mut child, &DetectOptions::default())
        .await
        .unwrap();
    child
}

fn count_tree(root: u32) -> usize {
    // Count the processes in root's process group (the tree above never leaves it).
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|s| {
            s.rfind(')')
                .and_then(|c| {
                    s[c + 1..]
                        .split_whitespace()
                        .nth(2)
                        .map(|g| g == root.to_string())
                })
                .unwrap_or(false)
        })
        .count()
}

/// CPU of polling `root`'s tree: with a [`PortWatcher`] (what detection uses) or a full walk every time.
async fn cpu_ours(root: u32, secs: u64, watch: bool) -> (f64, f64, usize) {
    let mut watcher = PortWatcher::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let start_cpu = cpu_time(libc::RUSAGE_SELF);
    let start = Instant::now();
    let mut polls = 0usize;
    let mut found = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        tick.tick().await;
        found = if watch {
            watcher.poll(root).unwrap().len()
        } else {
            listening_ports(root).unwrap().len()
        };
        polls += 1;
    }
    let cpu = cpu_time(libc::RUSAGE_SELF) - start_cpu;
    let wall = start.elapsed();
    let pct = cpu.as_secs_f64() / wall.as_secs_f64() * 100.0;
    let per_poll_us = cpu.as_secs_f64() * 1e6 / polls as f64;
    assert!(found >= 1, "the listener in the tree must be seen");
    (pct, per_poll_us, polls)
}

async fn cpu_ss(secs: u64) -> Option<(f64, f64)> {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let start_cpu = cpu_time(libc::RUSAGE_CHILDREN);
    let start = Instant::now();
    let mut polls = 0usize;
    while start.elapsed() < Duration::from_secs(secs) {
        tick.tick().await;
        let out = Command::new("ss").arg("-Htlnp").output().ok()?;
        if !out.status.success() {
            return None;
        }
        polls += 1;
    }
    let cpu = cpu_time(libc::RUSAGE_CHILDREN) - start_cpu;
    let pct = cpu.as_secs_f64() / start.elapsed().as_secs_f64() * 100.0;
    Some((pct, cpu.as_secs_f64() * 1e6 / polls as f64))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let runs = env_or("DETECT_RUNS", 30);
    let secs = env_or("CPU_SECONDS", 10);
    let size = env_or("TREE_SIZE", 50).max(3);
    let host_procs = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .count();

    let (detect, connect) = latency(runs).await;
    let mut tree_child = tree(size).await;
    let members = count_tree(tree_child.pid());
    let (pct, per_poll, polls) = cpu_ours(tree_child.pid(), secs, true).await;
    let (full_pct, full_per_poll, full_polls) = cpu_ours(tree_child.pid(), secs, false).await;
    let peer = cpu_ss(secs).await;
    tree_child.stop(Duration::from_secs(2)).await.unwrap();

    println!("# process crate: inspector detection ({runs} runs, {host_procs} processes on host)");
    println!();
    println!("| measurement | p50 | p95 | max | goal |");
    println!("|---|---|---|---|---|");
    println!(
        "| listen() -> detected (100 ms poll) | {:.1} ms | {:.1} ms | {:.1} ms | <= 150 ms |",
        percentile(&detect, 0.5),
        percentile(&detect, 0.95),
        detect[detect.len() - 1]
    );
    println!(
        "| listen() -> detected + first TCP connect | {:.1} ms | {:.1} ms | {:.1} ms | <= 150 ms |",
        percentile(&connect, 0.5),
        percentile(&connect, 0.95),
        connect[connect.len() - 1]
    );
    println!();
    println!("| polling a {members}-process tree every 100 ms for {secs} s | CPU of one core | CPU per poll | ratio vs peer |");
    println!("|---|---|---|---|");
    match peer {
        Some((peer_pct, peer_poll)) => {
            println!("| PortWatcher::poll, as in wait_for_listen_port ({polls} polls) | {pct:.3} % | {per_poll:.0} us | {:.3} |", pct / peer_pct);
            println!("| listening_ports, full walk every poll ({full_polls} polls) | {full_pct:.3} % | {full_per_poll:.0} us | {:.3} |", full_pct / peer_pct);
            println!("| peer: `ss -Htlnp` (fork+exec per poll) | {peer_pct:.3} % | {peer_poll:.0} us | 1.000 |");
        }
        None => {
            println!("| PortWatcher::poll, as in wait_for_listen_port ({polls} polls) | {pct:.3} % | {per_poll:.0} us | n/a |");
            println!("| listening_ports, full walk every poll ({full_polls} polls) | {full_pct:.3} % | {full_per_poll:.0} us | n/a |");
            println!("| peer: `ss` not available | - | - | - |");
        }
    }
}
