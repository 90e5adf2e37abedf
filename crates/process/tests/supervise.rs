//! Child lifecycle with real processes: exit codes, signals to the group, stop escalation, drop, spawn errors.
#![allow(clippy::unwrap_used)]

mod common;

use std::ffi::{OsStr, OsString};
use std::time::{Duration, Instant};

use common::*;
use process::{wait_tcp_ready, Child, ExitStatus, Signal, SpawnError, SpawnOptions};

/// Python that ignores SIGTERM and SIGINT, starts a grandchild doing the same, and prints "ready".
const STUBBORN_PY: &str = r#"
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
if len(sys.argv) > 1:
    subprocess.Popen([sys.executable, '-c', 'import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])
    time.sleep(0.3)
print('ready', flush=True)
time.sleep(60)
"#;

#[tokio::test]
async fn crash_exit_code_is_propagated() {
    let mut child = spawn_piped("sh", &["-c", "exit 7"]);
    let status = child.wait().await.unwrap();
    assert_eq!(status, ExitStatus::Code(7));
    assert_eq!(status.exit_code_for_parent(), 7);
    assert!(!status.success());
    assert_eq!(child.wait().await.unwrap(), status, "wait is repeatable");
}

#[tokio::test]
async fn sigkill_maps_to_137() {
    let mut child = spawn_piped("sleep", &["30"]);
    child.signal(Signal::SIGKILL).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, ExitStatus::Signal(9));
    assert_eq!(status.exit_code_for_parent(), 137);
    assert_eq!(status.to_string(), "signal 9 (SIGKILL)");
}

#[tokio::test]
async fn signal_reaches_the_whole_group() {
    // sh traps TERM and waits; its background python reports TERM by exiting 42 and printing.
    // The trap is set before python starts, so "ready" implies both handlers are in place.
    let script = r#"trap 'wait $!; exit $?' TERM
python3 -c 'import signal,sys,time
signal.signal(signal.SIGTERM, lambda *a: (print("grandchild got TERM", flush=True), sys.exit(42)))
print("ready", flush=True)
time.sleep(30)' &
wait $!"#;
    let mut child = spawn_piped("sh", &["-c", script]);
    let out = child.take_stdout().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(out));
    assert_eq!(lines.next_line().await.unwrap().unwrap(), "ready");
    child.signal(Signal::SIGTERM).unwrap();
    let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line.as_deref(), Some("grandchild got TERM"));
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        status,
        ExitStatus::Code(42),
        "sh relays the grandchild's code"
    );
}

#[tokio::test]
async fn stop_escalates_to_sigkill_after_grace_and_leaves_no_orphans() {
    let mut child = spawn_piped("python3", &["-c", STUBBORN_PY, "with-grandchild"]);
    assert_eq!(first_line(&mut child).await, "ready");
    let members = live_group_members(child.pid());
    assert!(
        members.len() >= 2,
        "child and grandchild in the group: {members:?}"
    );
    let grace = Duration::from_millis(500);
    let started = Instant::now();
    let status = child.stop(grace).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(status, ExitStatus::Signal(9));
    assert!(
        elapsed >= grace && elapsed < grace + Duration::from_secs(2),
        "{elapsed:?}"
    );
    assert_eq!(group_gone(child.pid()).await, Vec::<u32>::new());
    let still_there: Vec<u32> = proc_table()
        .into_iter()
        .filter(|p| members.contains(&p.0) && p.3 != 'Z')
        .map(|p| p.0)
        .collect();
    assert_eq!(still_there, Vec::<u32>::new(), "grandchild did not survive");
}

#[tokio::test]
async fn stop_with_cooperative_child_is_quick() {
    let mut child = spawn_piped("sleep", &["30"]);
    let started = Instant::now();
    let status = child.stop(Duration::from_secs(10)).await.unwrap();
    assert_eq!(status, ExitStatus::Signal(15));
    assert_eq!(status.exit_code_for_parent(), 143);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn stop_with_sigint_for_static_cmd_drain() {
    let mut child = spawn_piped(
        "python3",
        &["-c", "import time\ntry:\n print('ready', flush=True)\n time.sleep(30)\nexcept KeyboardInterrupt:\n raise SystemExit(5)"],
    );
    assert_eq!(first_line(&mut child).await, "ready");
    let status = child
        .stop_with(Signal::SIGINT, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(status, ExitStatus::Code(5));
}

#[tokio::test]
async fn stop_after_exit_still_kills_leftover_group_members() {
    let mut child = spawn_piped("sh", &["-c", "sleep 30 & exit 0"]);
    assert_eq!(child.wait().await.unwrap(), ExitStatus::Code(0));
    assert!(
        !live_group_members(child.pid()).is_empty(),
        "background sleep still running"
    );
    let status = child.stop(Duration::from_secs(2)).await.unwrap();
    assert_eq!(status, ExitStatus::Code(0));
    assert_eq!(group_gone(child.pid()).await, Vec::<u32>::new());
}

#[tokio::test]
async fn dropping_the_handle_kills_the_group() {
    let child = spawn_piped("sh", &["-c", "sleep 30 & sleep 30; exit 0"]);
    let pgid = child.pid();
    let until = Instant::now() + Duration::from_secs(5);
    while live_group_members(pgid).len() < 3 {
        assert!(Instant::now() < until, "sh and both sleeps never showed up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(child);
    assert_eq!(group_gone(pgid).await, Vec::<u32>::new());
}

#[tokio::test]
async fn spawn_errors_name_the_command() {
    let err = Child::spawn(
        OsStr::new("waygate-no-such-command"),
        &[],
        &SpawnOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, SpawnError::Start { .. }));
    assert!(
        err.to_string().contains("\"waygate-no-such-command\""),
        "{err}"
    );
    let err = Child::spawn(OsStr::new("  "), &[], &SpawnOptions::default()).unwrap_err();
    assert!(matches!(err, SpawnError::EmptyCommand));
    assert_eq!(err.to_string(), "target command is required");
    // Surrounding blanks are trimmed like the original does.
    let mut child = Child::spawn(OsStr::new(" true "), &[], &SpawnOptions::default()).unwrap();
    assert_eq!(child.command(), "true");
    assert_eq!(child.wait().await.unwrap(), ExitStatus::Code(0));
}

#[tokio::test]
async fn child_gets_own_group_env_and_cwd() {
    let opts = SpawnOptions {
        stdout: process::Stdio::Piped,
        envs: vec![(OsString::from("WAYGATE_PROBE"), OsString::from("yes"))],
        current_dir: Some("/tmp".into()),
        ..SpawnOptions::default()
    };
    let args: Vec<OsString> = [
        "-c",
        r#"echo "$WAYGATE_PROBE $(pwd) $(cut -d' ' -f5 /proc/$$/stat) $PATH""#,
    ]
    .iter()
    .map(OsString::from)
    .collect();
    let mut child = Child::spawn(OsStr::new("sh"), &args, &opts).unwrap();
    let pid = child.pid();
    let line = first_line(&mut child).await;
    let path = std::env::var("PATH").unwrap();
    // The third word is the child's pgid as the kernel sees it: equal to its pid.
    assert_eq!(
        line,
        format!("yes /tmp {pid} {path}"),
        "inherited env plus additions, own group"
    );
    assert_eq!(child.wait().await.unwrap(), ExitStatus::Code(0));
}

#[tokio::test]
async fn tcp_readiness() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    wait_tcp_ready(addr, Duration::from_secs(2)).await.unwrap();
    drop(listener);
    let started = Instant::now();
    let err = wait_tcp_ready(addr, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    let msg = err.to_string();
    assert!(
        msg.contains(&addr.to_string()) && msg.contains("300ms"),
        "{msg}"
    );
}

#[tokio::test]
async fn tcp_readiness_waits_for_a_late_listener() {
    let mut child = spawn_piped("python3", &["-c", "import socket,time\ntime.sleep(0.5)\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen()\nprint(s.getsockname()[1],flush=True)\ntime.sleep(30)"]);
    // The port is only known once printed, so detect it first, then probe readiness.
    let addr = process::wait_for_listen_port(&mut child, &process::DetectOptions::default())
        .await
        .unwrap();
    wait_tcp_ready(addr, Duration::from_secs(2)).await.unwrap();
    child.stop(Duration::from_secs(2)).await.unwrap();
}

#[tokio::test]
async fn wait_group_outlasts_a_launcher_that_exits_zero() {
    let mut child = spawn_piped("sh", &["-c", "sleep 0.6 & exit 0"]);
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait_group())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, ExitStatus::Code(0));
    assert!(
        started.elapsed() >= Duration::from_millis(550),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(live_group_members(child.pid()), Vec::<u32>::new());
}
