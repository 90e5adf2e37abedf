//! The gateway on the real kernel: namespaces client ⇄ gateway ⇄ backend, the real `proxygw` binary, nftables
//! DNAT and conntrack events. Root only (skipped with a message otherwise); each test builds and removes its own
//! namespaces, also on failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod netns;
mod procs;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use netns::*;

const IDLE: u64 = 3;

/// Two static:none targets (v4, v6), static:http frontends on wildcard listens.
fn web_config(extra_frontend_opts: &str) -> String {
    format!(
        "targets:
  - name: web4
    kind: static:none
    idle_timeout: {IDLE}s
    endpoints:
      - {{name: http, protocol: tcp, address: \"{BACKEND4}:8080\"}}
  - name: web6
    kind: static:none
    idle_timeout: {IDLE}s
    endpoints:
      - {{name: http, protocol: tcp, address: \"[{BACKEND6}]:8080\"}}
frontends:
  - name: web4
    kind: static:http
    protocol: tcp
    listen: 0.0.0.0:8080
    flow_timeout: 30s
    target: web4:http
    options:
      content: \"<html>warming up</html>\"
{extra_frontend_opts}
  - name: web4-alt
    kind: static:http
    protocol: tcp
    listen: 0.0.0.0:7070
    flow_timeout: 30s
    target: web4:http
    options:
      content: \"<html>warming up</html>\"
  - name: web6
    kind: static:http
    protocol: tcp
    listen: \"[::]:8080\"
    flow_timeout: 30s
    target: web6:http
    options:
      content: \"<html>warming up</html>\"
"
    )
}

fn started(t: &Topo, e: &Env) -> Daemon {
    let d = start_daemon(t, e);
    assert_eq!(state(&e.sock, "web4"), "inactive");
    d
}

/// Cold: the daemon's own page at `addr`, and a wake of `target` through `frontend` logged with the client's
/// address `source` (`10.99.1.2`, `[fd99:1::2]`); then warm: DNAT to the backend, which sees `source`.
fn cold_page_then_dnat(
    t: &Topo,
    d: &Daemon,
    e: &Env,
    addr: &str,
    frontend: &str,
    target: &str,
    source: &str,
) {
    let page = get(&t.client, addr, "/").unwrap();
    assert!(page.contains("warming up"), "{page}");
    assert!(page.contains("content-type: text/html"), "{page}");
    wait_state(d, &e.sock, target, "active", Duration::from_secs(5));
    let log = d.log_text();
    let wake = format!("msg=wake frontend={frontend} target={target} source={source}:");
    assert!(log.contains(&wake), "{wake} not in\n{log}");
    let r = get(&t.client, addr, "/").unwrap();
    assert!(r.contains(&format!("peer={source}:")), "{r}");
}

#[test]
fn cold_page_wakes_then_dnat_reaches_the_backend_with_the_client_address_v4_and_v6() {
    if !can_run() {
        return;
    }
    let t = Topo::new();
    let _b4 = Backend::start(&t.backend, &format!("{BACKEND4}:8080"));
    let _b6 = Backend::start(&t.backend, &format!("[{BACKEND6}]:8080"));
    let e = env(&web_config(""));
    let d = started(&t, &e);
    assert_eq!(proxygw_tables(&t.gw), 1);

    cold_page_then_dnat(&t, &d, &e, &format!("{GW4}:8080"), "web4", "web4", CLIENT4);
    // The second frontend of the same target is on too.
    let r = get(&t.client, &format!("{GW4}:7070"), "/").unwrap();
    assert!(r.contains(&format!("peer={CLIENT4}:")), "{r}");

    // IPv6, independently.
    assert_eq!(state(&e.sock, "web6"), "inactive");
    let source6 = format!("[{CLIENT6}]");
    cold_page_then_dnat(
        &t,
        &d,
        &e,
        &format!("[{GW6}]:8080"),
        "web6",
        "web6",
        &source6,
    );

    // Idle: drained, DNAT gone, the page is back.
    wait_state(
        &d,
        &e.sock,
        "web4",
        "inactive",
        Duration::from_secs(IDLE + 5),
    );
    let maps = ns_output(
        &t.gw,
        &["nft", "list", "map", "inet", "proxygw", "dnatWildcard4"],
    );
    assert!(!maps.contains("10.99.2.2"), "{maps}");
    let page = get(&t.client, &format!("{GW4}:8080"), "/").unwrap();
    assert!(page.contains("warming up"), "{page}");
}

#[test]
fn idle_drain_follows_the_last_flow_and_an_open_connection_keeps_the_target_warm() {
    if !can_run() {
        return;
    }
    let t = Topo::new();
    let _b4 = Backend::start(&t.backend, &format!("{BACKEND4}:8080"));
    let e = env(&web_config(""));
    let d = started(&t, &e);
    warm(&e.sock, "web4");
    wait_state(&d, &e.sock, "web4", "active", Duration::from_secs(5));

    let mut held = connect(&t.client, &format!("{GW4}:8080")).unwrap();
    held.write_all(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = read_until(&mut held, "peer=");
    assert!(r.contains(&format!("peer={CLIENT4}:")), "{r}");
    // Twice the idle timeout with an open, silent connection: still warm.
    std::thread::sleep(Duration::from_secs(2 * IDLE));
    assert_eq!(state(&e.sock, "web4"), "active", "{}", d.log_text());

    drop(held);
    let closed = Instant::now();
    let drained = wait_state(
        &d,
        &e.sock,
        "web4",
        "inactive",
        Duration::from_secs(IDLE + 5),
    );
    let took = drained - closed;
    eprintln!(
        "drain {:?} after the last flow closed (idle_timeout {IDLE}s)",
        took
    );
    assert!(
        took >= Duration::from_millis(IDLE * 1000 - 300),
        "drained too early: {took:?}"
    );
    assert!(
        took <= Duration::from_millis(IDLE * 1000 + 1000),
        "drained too late: {took:?}"
    );
}

#[test]
fn host_local_clients_are_routed_by_the_output_chain() {
    if !can_run() {
        return;
    }
    let t = Topo::new();
    let _b4 = Backend::start(&t.backend, &format!("{BACKEND4}:8080"));
    let e = env(&web_config(""));
    let d = started(&t, &e);
    warm(&e.sock, "web4");
    wait_state(&d, &e.sock, "web4", "active", Duration::from_secs(5));
    // From the gateway itself (the original had no output chain, so this got the page forever).
    let r = get(&t.gw, &format!("{GW4}:8080"), "/").unwrap();
    assert!(r.contains("peer="), "{r}");
    assert!(!r.contains("warming up"), "{r}");
}

#[test]
fn transit_traffic_is_not_captured_by_wildcard_frontends() {
    if !can_run() {
        return;
    }
    let t = Topo::new();
    let b4 = Backend::start(&t.backend, &format!("{BACKEND4}:8080"));
    let e = env(&web_config(""));
    let d = started(&t, &e);
    warm(&e.sock, "web4");
    wait_state(&d, &e.sock, "web4", "active", Duration::from_secs(5));
    let before = b4.accepted.load(std::sync::atomic::Ordering::SeqCst);
    // The client talks *through* the gateway to the backend's port 7070; a wildcard DNAT without
    // `fib daddr type local` would hijack it to :8080.
    let err = connect(&t.client, &format!("{BACKEND4}:7070")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert_eq!(
        b4.accepted.load(std::sync::atomic::Ordering::SeqCst),
        before
    );
    // While the same port addressed to the gateway is DNATed.
    let r = get(&t.client, &format!("{GW4}:7070"), "/").unwrap();
    assert!(r.contains("peer="), "{r}");
}

#[test]
fn sigkill_then_restart_replaces_the_table_and_rebuilds_state_from_conntrack() {
    if !can_run() {
        return;
    }
    let t = Topo::new();
    let _b4 = Backend::start(&t.backend, &format!("{BACKEND4}:8080"));
    let e = env(&web_config(""));
    let mut d = started(&t, &e);
    warm(&e.sock, "web4");
    wait_state(&d, &e.sock, "web4", "active", Duration::from_secs(5));
    let mut held = connect(&t.client, &format!("{GW4}:8080")).unwrap();
    held.write_all(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    read_until(&mut held, "peer=");

    d.signal(nix::sys::signal::Signal::SIGKILL);
    assert!(d.wait(Duration::from_secs(5)).is_some());
    assert_eq!(
        proxygw_tables(&t.gw),
        1,
        "the killed daemon's table is still there"
    );
    assert!(e.sock.exists(), "and its socket file");

    let d2 = Daemon::start(&t.gw, &e.cfg, &e.log);
    // Rebuilt from the live DNATed flow: warm again without any client asking.
    wait_state(&d2, &e.sock, "web4", "active", Duration::from_secs(10));
    assert_eq!(proxygw_tables(&t.gw), 1, "no duplicate table");
    assert_eq!(state(&e.sock, "web6"), "inactive");
    let r = get(&t.client, &format!("{GW4}:8080"), "/").unwrap();
    assert!(r.contains(&format!("peer={CLIENT4}:")), "{r}");
    // The held connection survived the restart and still keeps the target warm.
    std::thread::sleep(Duration::from_secs(IDLE + 1));
    assert_eq!(state(&e.sock, "web4"), "active", "{}", d2.log_text());
    drop(held);
    wait_state(
        &d2,
        &e.sock,
        "web4",
        "inactive",
        Duration::from_secs(IDLE + 5),
    );
}

#[test]
fn graceful_shutdown_removes_table_and_socket() {
    if !can_run() {
        return;
    }
    let t = Topo::new();
    let e = env(&web_config(""));
    let mut d = started(&t, &e);
    warm(&e.sock, "web4");
    wait_state(&d, &e.sock, "web4", "active", Duration::from_secs(5));
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(15)), Some(0), "{}", d.log_text());
    assert_eq!(proxygw_tables(&t.gw), 0);
    assert!(!e.sock.exists());
}

#[test]
fn wake_allow_refuses_sources_outside_the_list() {
    if !can_run() {
        return;
    }
    let t = Topo::new();
    let e = env(&web_config(
        "      wake_allow: [\"192.0.2.0/24\", \"fd00:dead::/32\"]",
    ));
    let d = started(&t, &e);
    let page = get(&t.client, &format!("{GW4}:8080"), "/").unwrap();
    assert!(page.contains("warming up"));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(state(&e.sock, "web4"), "inactive");
    let log = d.log_text();
    assert!(
        log.contains(&format!("msg=\"wake refused: source not in wake_allow\" frontend=web4 target=web4 source={CLIENT4}:")),
        "{log}"
    );
    // Counted in the status (`proxygwctl status --counters`); the default output keeps the original's shape.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_proxygwctl"))
        .arg("--config")
        .arg(&e.cfg)
        .args(["status", "--counters"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"wakes\": {\n        \"started\": 0,\n        \"failed_starts\": 0,\n        \"refused_allow\": 1,"),
        "{text}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_proxygwctl"))
        .arg("--config")
        .arg(&e.cfg)
        .arg("status")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("wakes"));
}

/// A backend command that needs `DELAY_MS` before it listens, behind a static:tcp frontend.
const DELAY_MS: u64 = 700;

/// A Python backend for the gateway namespace that listens on `GW4_BACK:port` after `DELAY_MS` and answers
/// each connection with the peer it sees.
fn backend_script(dir: &Path, port: u16) -> PathBuf {
    let script = dir.join(format!("backend{port}.py"));
    std::fs::write(
        &script,
        format!(
            "import socket, time\n\
             time.sleep({delay})\n\
             s = socket.socket()\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('{GW4_BACK}', {port}))\n\
             s.listen(64)\n\
             print('backend listening', flush=True)\n\
             while True:\n\
             \x20   c, a = s.accept()\n\
             \x20   try:\n\
             \x20       c.sendall(('peer=%s:%d\\n' % a).encode())\n\
             \x20   except OSError:\n\
             \x20       pass  # readiness probes hang up at once\n\
             \x20   c.close()\n",
            delay = DELAY_MS as f64 / 1000.0
        ),
    )
    .unwrap();
    script
}

fn cmd_config(dir: &Path) -> String {
    let script = backend_script(dir, 9000);
    format!(
        "targets:
  - name: game
    kind: static:cmd
    idle_timeout: {IDLE}s
    endpoints:
      - {{name: tcp, protocol: tcp, address: \"{GW4_BACK}:9000\"}}
    options:
      command: \"exec python3 {}\"
      ready_timeout: 10s
      stop_timeout: 2s
frontends:
  - name: game
    kind: static:tcp
    protocol: tcp
    listen: \"{GW4}:7000\"
    flow_timeout: 30s
    target: game:tcp
",
        script.display()
    )
}

#[test]
fn static_tcp_serves_the_first_client_of_a_cold_static_cmd_target_then_drains_and_stops_it() {
    if !can_run() {
        return;
    }
    let t = Topo::new();
    let dir = tempfile::tempdir().unwrap();
    let e = env(&cmd_config(dir.path()));
    let d = start_daemon(&t, &e);
    assert_eq!(state(&e.sock, "game"), "inactive");

    // Cold: the first client is held, the command starts, and the client is served once it listens.
    let syn_retrans = tcp_counter(&t.client, "TcpExt", "TCPSynRetrans");
    let retrans = tcp_counter(&t.client, "Tcp", "RetransSegs");
    let t0 = Instant::now();
    let mut first = connect(&t.client, &format!("{GW4}:7000")).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        read_until(&mut first, "peer=")
    }))
    .unwrap_or_else(|_| {
        panic!(
            "first client not served after {:?}; log:\n{}",
            t0.elapsed(),
            d.log_text()
        )
    });
    let cold = t0.elapsed();
    eprintln!("cold start: first byte after {cold:?} (backend listens after {DELAY_MS} ms)");
    if std::env::var_os("PROXYGW_TEST_SHOW_LOG").is_some() {
        eprintln!("{}", d.log_text());
    }
    assert!(r.starts_with("peer="), "{r}");
    assert!(
        cold >= Duration::from_millis(DELAY_MS),
        "served before the backend listened?"
    );
    assert!(cold < Duration::from_millis(DELAY_MS + 1500), "{cold:?}");
    // The first SYN was answered at once (the gateway holds the connection): no retransmission at all.
    assert_eq!(
        (
            tcp_counter(&t.client, "TcpExt", "TCPSynRetrans") - syn_retrans,
            tcp_counter(&t.client, "Tcp", "RetransSegs") - retrans
        ),
        (0, 0)
    );
    drop(first);
    wait_state(&d, &e.sock, "game", "active", Duration::from_secs(5));

    // Warm: later connections take the kernel DNAT path, so the backend sees the real client.
    let mut second = connect(&t.client, &format!("{GW4}:7000")).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        read_until(&mut second, "peer=")
    }))
    .unwrap_or_else(|_| panic!("second client not served; log:\n{}", d.log_text()));
    assert!(r.contains(&format!("peer={CLIENT4}:")), "{r}");
    drop(second);
    let log = d.log_text();
    assert!(
        log.contains("msg=\"command output\" target=game stream=stdout line=\"backend listening\""),
        "{log}"
    );
    let pid: i32 = log
        .lines()
        .find(|l| l.contains("msg=\"command started\""))
        .and_then(|l| l.split(" pid=").nth(1))
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .expect("pid in log");
    assert!(Path::new(&format!("/proc/{pid}")).exists());

    // Idle: drained and the command's process group is gone.
    wait_state(
        &d,
        &e.sock,
        "game",
        "inactive",
        Duration::from_secs(IDLE + 6),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "command still running after drain"
    );
}

#[test]
fn conntrack_entries_are_flushed_when_dnat_toggles() {
    // Spec §12.6: a UDP client that keeps its 5-tuple stayed host-bound after warm (and DNATed after drain)
    // until its conntrack entry timed out, which never happens while it keeps sending.
    if !can_run() {
        return;
    }
    let t = Topo::new();
    let udp = UdpBackend::start(&t.backend, &format!("{BACKEND4}:5353"));
    let e = env(&format!(
        "targets:
  - name: dns
    kind: static:none
    idle_timeout: 1h
    endpoints:
      - {{name: udp, protocol: udp, address: \"{BACKEND4}:5353\"}}
frontends:
  - name: dns
    kind: static:always
    protocol: udp
    listen: \"{GW4}:5353\"
    flow_timeout: 30s
    target: dns:udp
"
    ));
    let d = start_daemon(&t, &e);
    assert_eq!(state(&e.sock, "dns"), "inactive");
    // Stop the 1 s warm ticker so the target only warms when told to.
    ctl(&e.sock, "stop", "dns");
    let _pinger = UdpPinger::start(&t.client, &format!("{GW4}:5353"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        udp.received.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "cold: host-bound"
    );
    let ct = ns_output(&t.gw, &["conntrack", "-L", "-p", "udp"]);
    assert!(
        ct.contains("dport=5353"),
        "the host-bound entry exists: {ct}"
    );

    warm(&e.sock, "dns");
    wait_state(&d, &e.sock, "dns", "active", Duration::from_secs(5));
    eventually(
        Duration::from_secs(3),
        "the same 5-tuple to reach the backend after warm",
        || udp.received.load(std::sync::atomic::Ordering::SeqCst) > 0,
    );

    ctl(&e.sock, "drain", "dns");
    wait_state(&d, &e.sock, "dns", "inactive", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    let after = udp.received.load(std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        udp.received.load(std::sync::atomic::Ordering::SeqCst),
        after,
        "after drain the flow must no longer reach the backend"
    );
}

#[test]
fn masquerade_serves_backends_whose_return_path_bypasses_the_gateway() {
    if !can_run() {
        return;
    }
    let t = Topo::new();
    // The backend has no route back to the client network.
    let out = std::process::Command::new("ip")
        .args(["-n", &t.backend, "route", "del", "default"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let _b4 = Backend::start(&t.backend, &format!("{BACKEND4}:8080"));
    let e = env(&web_config("    masquerade: true"));
    let d = started(&t, &e);
    warm(&e.sock, "web4");
    wait_state(&d, &e.sock, "web4", "active", Duration::from_secs(5));
    let r = get(&t.client, &format!("{GW4}:8080"), "/").unwrap();
    assert!(
        r.contains(&format!("peer={GW4_BACK}:")),
        "the backend sees the gateway: {r}"
    );
    // web4-alt (same backend, no masquerade) would need the return route; with the backend-keyed masq set the
    // flow is masqueraded as well, which is what an operator of that backend needs anyway.
}

/// Kills the backend an `exec:` program started in its own session if the test ends before its stop call
/// did (the backend outlives the daemon by design, so nothing else would).
struct KillRecorded(PathBuf);

impl Drop for KillRecorded {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[test]
fn the_shipped_exec_example_wakes_a_backend_behind_dnat_and_its_stop_ends_it() {
    if !can_run() {
        return;
    }
    let t = Topo::new();
    let dir = tempfile::tempdir().unwrap();
    let script = backend_script(dir.path(), 9100);
    let programs = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/proxygw/exec");
    let e = env(&format!(
        "  exec:
    dir: {programs}
targets:
  - name: app
    kind: exec:pidfile-backend
    idle_timeout: 1h
    endpoints:
      - {{name: tcp, protocol: tcp, address: \"{GW4_BACK}:9100\"}}
    options:
      call_timeout: 10s
      ready_timeout: 10s
      params:
        command: \"exec python3 {}\"
frontends:
  - name: app
    kind: static:tcp
    protocol: tcp
    listen: \"{GW4}:7100\"
    flow_timeout: 30s
    target: app:tcp
",
        script.display()
    ));
    // The example keeps its pid file in the state directory under the daemon's runtime directory.
    let run = e.cfg.parent().unwrap().join("run");
    let d = start_daemon(&t, &e);
    let pidfile = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "lock"))
        .expect("instance lock in the runtime directory")
        .with_extension("exec")
        .join("app/backend.pid");
    let _cleanup = KillRecorded(pidfile.clone());
    assert_eq!(state(&e.sock, "app"), "inactive");

    // Cold: static:tcp holds the first client while the program's start call and readiness run.
    let mut first = connect(&t.client, &format!("{GW4}:7100")).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        read_until(&mut first, "peer=")
    }))
    .unwrap_or_else(|_| panic!("first client not served; log:\n{}", d.log_text()));
    assert!(r.starts_with("peer="), "{r}");
    drop(first);
    wait_state(&d, &e.sock, "app", "active", Duration::from_secs(5));
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(procs::alive(pid));

    // Warm: the kernel DNATs, so the backend sees the client's own address.
    let mut second = connect(&t.client, &format!("{GW4}:7100")).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        read_until(&mut second, "peer=")
    }))
    .unwrap_or_else(|_| panic!("second client not served; log:\n{}", d.log_text()));
    assert!(r.contains(&format!("peer={CLIENT4}:")), "{r}");
    drop(second);

    // Drain: the program's stop call ends the backend and removes its record, within the script's 5 s
    // grace (the backend obeys SIGTERM; a signal it ignored would only end at the SIGKILL after 5 s).
    ctl(&e.sock, "drain", "app");
    wait_state(&d, &e.sock, "app", "inactive", Duration::from_secs(4));
    eventually(Duration::from_secs(5), "backend gone", || {
        !procs::alive(pid)
    });
    assert!(!pidfile.exists());
    let log = d.log_text();
    assert!(!log.contains("level=ERROR"), "{log}");
    assert!(!log.contains("level=WARN"), "{log}");
}

#[test]
fn a_dual_home_frontend_on_wildcard_ipv6_serves_ipv4_and_ipv6_clients_each_to_its_own_family() {
    if !can_run() {
        return;
    }
    let t = Topo::new();
    let _b4 = Backend::start(&t.backend, &format!("{BACKEND4}:8080"));
    let _b6 = Backend::start(&t.backend, &format!("[{BACKEND6}]:8080"));
    let e = env(&format!(
        "targets:
  - name: web
    kind: static:none
    idle_timeout: 1h
    endpoints:
      - {{name: http4, protocol: tcp, address: \"{BACKEND4}:8080\"}}
      - {{name: http6, protocol: tcp, address: \"[{BACKEND6}]:8080\"}}
frontends:
  - name: web
    kind: static:http
    protocol: tcp
    listen: \"[::]:8080\"
    flow_timeout: 30s
    target: [web:http4, web:http6]
    options:
      content: \"<html>warming up</html>\"
      wake_allow: [\"{CLIENT4}/32\", \"{CLIENT6}/128\"]
"
    ));
    let d = start_daemon(&t, &e);

    // Cold, over IPv4: the one [::] socket answers, and the client is logged and allowed as the IPv4
    // address it is (not ::ffff:10.99.1.2). Warm: each family is DNATed to the endpoint of its own family,
    // the client address preserved.
    let (addr4, addr6, source6) = (
        format!("{GW4}:8080"),
        format!("[{GW6}]:8080"),
        format!("[{CLIENT6}]"),
    );
    cold_page_then_dnat(&t, &d, &e, &addr4, "web", "web", CLIENT4);
    let r = get(&t.client, &addr6, "/").unwrap();
    assert!(r.contains(&format!("peer=[{CLIENT6}]:")), "{r}");
    for (map, backend) in [("dnatWildcard4", BACKEND4), ("dnatWildcard6", BACKEND6)] {
        let m = ns_output(&t.gw, &["nft", "list", "map", "inet", "proxygw", map]);
        assert!(m.contains(&format!("tcp . 8080 : {backend} . 8080")), "{m}");
    }

    // Cold again, over IPv6 this time: the same frontend serves the page and wakes the target.
    ctl(&e.sock, "drain", "web");
    wait_state(&d, &e.sock, "web", "inactive", Duration::from_secs(5));
    cold_page_then_dnat(&t, &d, &e, &addr6, "web", "web", &source6);
}
