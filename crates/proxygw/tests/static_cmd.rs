//! static:cmd with real child processes (no root needed): readiness, exit detection, process-group stop, output.

#![allow(clippy::unwrap_used)]

mod embedded;
mod procs;

use std::time::{Duration, Instant};

use embedded::{free_port, Buf};
use proxygw::daemon::Daemon;
use proxygw::dataplane::memory::MemoryDataplane;
use proxygw::engine::{EngineHandle, Request};

async fn start(options: &str, port: u16) -> (Daemon, Buf, MemoryDataplane) {
    start_with_frontends(options, port, "[]").await
}

async fn start_with_frontends(
    options: &str,
    port: u16,
    frontends: &str,
) -> (Daemon, Buf, MemoryDataplane) {
    let body = format!(
        "targets:
  - name: app
    kind: static:cmd
    idle_timeout: 1h
    endpoints:
      - {{name: tcp, protocol: tcp, address: 127.0.0.1:{port}}}
    options:
{options}
frontends: {frontends}
"
    );
    embedded::start("plugins: {}\n", &body).await
}

async fn wait_for(
    h: &EngineHandle,
    want: &str,
    limit: Duration,
) -> proxygw::protocol::TargetStatus {
    embedded::wait_for(h, "app", want, limit).await
}

/// The pid of the first `command started` line of the log (the command's process group id).
fn started_pid(log: &str) -> u32 {
    log.split("msg=\"command started\" target=app pid=")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no command started in\n{log}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_waits_for_the_endpoint_and_drain_stops_the_whole_process_group() {
    let port = free_port();
    // A background child in the same group, then a listener that comes up late.
    let cmd = format!(
        "      command: \"sleep 300 & echo started; sleep 0.4; exec python3 -c 'import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); s.bind((\\\"127.0.0.1\\\",{port})); s.listen(8); time.sleep(300)'\"\n      stop_timeout: 2s"
    );
    let (d, log, dp) = start(&cmd, port).await;
    let h = d.handle().clone();
    let t0 = Instant::now();
    h.request(Request::Warm("app".into())).await.unwrap();
    wait_for(&h, "active", Duration::from_secs(10)).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "DNAT must wait for the listener"
    );
    assert!(dp.is_enabled("app"));
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let text = log.text();
    assert!(
        text.contains("msg=\"command output\" target=app stream=stdout line=started"),
        "{text}"
    );
    let pid = started_pid(&text);
    assert!(
        procs::group_members(pid).len() >= 2,
        "sh/python and the background sleep"
    );

    h.request(Request::Drain("app".into())).await.unwrap();
    wait_for(&h, "inactive", Duration::from_secs(10)).await;
    assert!(
        procs::group_members(pid).is_empty(),
        "every process of the group is gone: {:?}",
        procs::group_members(pid)
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_exits_by_itself_is_noticed_and_can_be_warmed_again() {
    let port = free_port();
    let cmd = format!(
        "      command: \"python3 -c 'import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); s.bind((\\\"127.0.0.1\\\",{port})); s.listen(8); time.sleep(0.5)'; exit 3\""
    );
    let (d, _log, dp) = start(&cmd, port).await;
    let h = d.handle().clone();
    h.request(Request::Warm("app".into())).await.unwrap();
    wait_for(&h, "active", Duration::from_secs(10)).await;
    let t = wait_for(&h, "inactive", Duration::from_secs(10)).await;
    assert_eq!(
        t.last_error,
        "backend exited: command exited with exit code 3"
    );
    assert!(!dp.is_enabled("app"), "DNAT off once the backend is gone");
    // The original said "already started" forever; here a new warm starts a new process.
    h.request(Request::Warm("app".into())).await.unwrap();
    wait_for(&h, "active", Duration::from_secs(10)).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_never_listens_fails_warm_with_a_reason() {
    let port = free_port();
    let (d, _log, dp) = start("      command: \"exit 7\"", port).await;
    let h = d.handle().clone();
    h.request(Request::Warm("app".into())).await.unwrap();
    let t = wait_for(&h, "inactive", Duration::from_secs(10)).await;
    // Either the exit or the probe wins the race; both name the reason.
    assert!(
        t.last_error.contains("exit code 7") || t.last_error.contains("exited"),
        "{t:?}"
    );
    assert!(!dp.is_enabled("app"));

    let (d2, _log, _) = start(
        "      command: \"sleep 30\"\n      ready_timeout: 300ms",
        port,
    )
    .await;
    let h2 = d2.handle().clone();
    h2.request(Request::Warm("app".into())).await.unwrap();
    let t = wait_for(&h2, "inactive", Duration::from_secs(10)).await;
    assert!(
        t.last_error.contains("not ready") || t.last_error.contains("did not accept"),
        "{t:?}"
    );
    d.stop().await;
    d2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_a_running_command() {
    let port = free_port();
    let cmd = format!(
        "      command: \"exec python3 -c 'import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); s.bind((\\\"127.0.0.1\\\",{port})); s.listen(8); time.sleep(300)'\""
    );
    let (d, log, _) = start(&cmd, port).await;
    let h = d.handle().clone();
    h.request(Request::Warm("app".into())).await.unwrap();
    wait_for(&h, "active", Duration::from_secs(10)).await;
    let text = log.text();
    let pid = started_pid(&text);
    d.stop().await;
    assert!(procs::group_members(pid).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_exits_at_once_is_restarted_with_exponential_backoff() {
    let port = free_port();
    // static:always wakes the target every second: without backoff, one start per second.
    let frontends = format!(
        "
  - name: keep
    kind: static:always
    protocol: tcp
    listen: 127.0.0.1:{}
    flow_timeout: 30s
    target: app:tcp",
        free_port()
    );
    let (d, log, _) = start_with_frontends("      command: \"exit 1\"", port, &frontends).await;
    let h = d.handle().clone();
    let t0 = Instant::now();
    let mut saw_backoff = false;
    while t0.elapsed() < Duration::from_millis(6500) {
        let t = h.status().await.unwrap().targets.remove(0);
        saw_backoff |= t.wakes.as_ref().is_some_and(|w| !w.backoff.is_empty());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let w = h.status().await.unwrap().targets.remove(0).wakes.unwrap();
    // Starts at about 1 s (first tick), then after backoffs of 1 s and 2 s: 3 or 4 in 6.5 s, never 6.
    assert!((2..=4).contains(&w.started), "{w:?}\n{}", log.text());
    assert_eq!(w.failed_starts, w.started, "{w:?}");
    assert!(w.deferred_backoff >= 2, "{w:?}");
    assert!(saw_backoff, "status never showed a backoff: {w:?}");
    assert!(
        log.text().contains(
            "msg=\"target start failed; backing off\" target=app failures_in_row=2 backoff=2s"
        ),
        "{}",
        log.text()
    );
    // An operator's warm is not held back.
    h.request(Request::Warm("app".into())).await.unwrap();
    let w2 = h.status().await.unwrap().targets.remove(0).wakes.unwrap();
    assert_eq!(w2.started, w.started + 1, "{w2:?}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_rate_refuses_starts_beyond_the_limit_but_not_an_operators_warm() {
    let port = free_port();
    let frontends = format!(
        "
  - name: keep
    kind: static:always
    protocol: tcp
    listen: 127.0.0.1:{}
    flow_timeout: 30s
    target: app:tcp",
        free_port()
    );
    // `wake_rate` belongs to the target; the options block above it ends at the indentation change.
    let (d, log, _) = start_with_frontends(
        "      command: \"exit 1\"\n    wake_rate: 2/1h",
        port,
        &frontends,
    )
    .await;
    let h = d.handle().clone();
    // Starts at about 1 s and 2 s (after a 1 s backoff); the one due at 4 s is over the rate.
    tokio::time::sleep(Duration::from_millis(5000)).await;
    let w = h.status().await.unwrap().targets.remove(0).wakes.unwrap();
    assert_eq!(w.started, 2, "{w:?}\n{}", log.text());
    assert!(w.refused_rate >= 1, "{w:?}");
    assert!(
        log.text()
            .contains("msg=\"wake refused: wake_rate\" target=app origin="),
        "{}",
        log.text()
    );
    h.request(Request::Warm("app".into())).await.unwrap();
    let w2 = h.status().await.unwrap().targets.remove(0).wakes.unwrap();
    assert_eq!(w2.started, 3, "{w2:?}");
    d.stop().await;
}

/// Freeze/resume cycles measured in `idle_freeze_…`: resume → first byte, for the README's figures.
const RESUME_CYCLES: usize = 20;

/// One `idle:` freeze mode end to end; returns how it froze (`cgroup` or `SIGSTOP`, from the log) and the
/// resume → first byte times of [`RESUME_CYCLES`] drain/warm cycles.
async fn freeze_round_trip(idle: &str) -> (String, Vec<Duration>) {
    let port = free_port();
    // The server answers each connection with a line, so a frozen one is visible as no answer.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("srv.py");
    std::fs::write(
        &script,
        format!(
            "import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('127.0.0.1', {port}))\ns.listen(8)\nwhile True:\n    c, _ = s.accept()\n    \
             c.sendall(b'hi\\n')\n    c.close()\n"
        ),
    )
    .unwrap();
    let cmd = format!(
        "      command: \"exec python3 {}\"\n      idle: {idle}",
        script.display()
    );
    let (d, log, dp) = start(&cmd, port).await;
    let h = d.handle().clone();
    h.request(Request::Warm("app".into())).await.unwrap();
    wait_for(&h, "active", Duration::from_secs(10)).await;
    let text = log.text();
    let pid = started_pid(&text);
    let answer = |wait: Duration| {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(wait)).unwrap();
        let mut b = [0u8; 8];
        std::io::Read::read(&mut c, &mut b)
            .map(|n| n > 0)
            .unwrap_or(false)
    };
    assert!(answer(Duration::from_millis(300)));

    h.request(Request::Drain("app".into())).await.unwrap();
    wait_for(&h, "inactive", Duration::from_secs(10)).await;
    assert!(!dp.is_enabled("app"));
    let text = log.text();
    let how = text
        .split("msg=\"command frozen\" target=app pid=")
        .nth(1)
        .and_then(|r| r.split(" how=").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no frozen line:\n{text}"))
        .to_string();
    let cgroup_line = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    if how == "cgroup" {
        // Frozen by the kernel without a signal: not in the stopped state, and in its own cgroup.
        assert_ne!(procs::state(pid), Some('T'));
        let own = format!("/proxygw-{}-app\n", std::process::id());
        assert!(cgroup_line.contains(&own), "{cgroup_line}");
    } else {
        assert_eq!(how, "SIGSTOP", "{text}");
        assert_eq!(procs::state(pid), Some('T'), "frozen, not stopped:\n{text}");
    }
    assert!(
        !answer(Duration::from_millis(300)),
        "a frozen server must not answer"
    );

    let t0 = Instant::now();
    h.request(Request::Warm("app".into())).await.unwrap();
    wait_for(&h, "active", Duration::from_secs(5)).await;
    let resume = t0.elapsed();
    assert!(resume < Duration::from_millis(300), "{resume:?}");
    assert_ne!(procs::state(pid), Some('T'));
    assert!(
        answer(Duration::from_millis(300)),
        "the same process answers again"
    );

    // Resume → first byte: the warm request, then a client's connection that the thawed server answers.
    let mut times = Vec::new();
    for _ in 0..RESUME_CYCLES {
        h.request(Request::Drain("app".into())).await.unwrap();
        wait_for(&h, "inactive", Duration::from_secs(5)).await;
        let t0 = Instant::now();
        h.request(Request::Warm("app".into())).await.unwrap();
        assert!(answer(Duration::from_secs(2)), "no answer after resume");
        times.push(t0.elapsed());
        wait_for(&h, "active", Duration::from_secs(5)).await;
    }
    assert_eq!(
        log.text().matches("msg=\"command started\"").count(),
        1,
        "no cold start"
    );

    // Shutdown ends a frozen process too.
    h.request(Request::Drain("app".into())).await.unwrap();
    wait_for(&h, "inactive", Duration::from_secs(10)).await;
    d.stop().await;
    assert!(procs::group_members(pid).is_empty(), "{}", log.text());
    (how, times)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_freeze_stops_the_group_on_drain_and_a_warm_resumes_the_same_process() {
    let (how, mut times) = freeze_round_trip("freeze").await;
    let (signal, mut signal_times) = freeze_round_trip("freeze-signal").await;
    assert_eq!(signal, "SIGSTOP", "freeze-signal never uses the cgroup");
    for (name, t) in [
        (how.as_str(), &mut times),
        ("SIGSTOP (freeze-signal)", &mut signal_times),
    ] {
        t.sort();
        let (p50, p99) = (t[t.len() / 2], t[(t.len() * 99).div_ceil(100) - 1]);
        eprintln!(
            "resume → first byte, {name}: p50 {p50:?}, p99 {p99:?} ({} cycles)",
            t.len()
        );
        assert!(p99 < Duration::from_millis(300), "{name}: {t:?}");
    }
}
