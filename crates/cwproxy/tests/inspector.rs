//! Inspector mode end to end: the real binary launching real children.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use support::{cwproxy_cmd, free_port, http, Proxy, Upstream};

/// A Python child that listens on a random port of `host`, serves `answer`, and then does `then`.
fn py_server(host: &str, answer: &str, then: &str) -> Vec<String> {
    let code = format!(
        r#"
import http.server, os, signal, sys, threading, time, socket
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"{answer}"
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
class S(http.server.HTTPServer):
    address_family = socket.AF_INET6 if ":" in "{host}" else socket.AF_INET
srv = S(("{host}", 0), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
{then}
"#
    );
    vec!["python3".into(), "-c".into(), code]
}

fn start_inspector(argv: &[String], env: &[(&str, &str)]) -> Proxy {
    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut all = vec![("HEALTH_INTERVAL", "1h")];
    all.extend_from_slice(env);
    Proxy::start(&all, &args)
}

fn get(port: u16) -> String {
    http(
        port,
        "GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
}

#[test]
fn detects_the_child_port_and_proxies() {
    let started = Instant::now();
    let mut proxy = start_inspector(&py_server("127.0.0.1", "from-child", "time.sleep(60)"), &[]);
    let r = get(proxy.port);
    assert!(r.ends_with("from-child"), "{r}");
    let line = proxy.wait_line(|v| v["_t"] == "TRAFFIC");
    assert_eq!(line["response"]["body"], "from-child");
    assert!(proxy
        .stderr
        .lock()
        .unwrap()
        .contains("inspector mode detected listen port"));
    assert!(started.elapsed() < Duration::from_secs(10));
    // SIGTERM goes to the child (default disposition: it dies of it), cwproxy exits 128+15.
    proxy.signal(libc::SIGTERM);
    assert_eq!(proxy.wait_exit(Duration::from_secs(15)), Some(143));
}

#[test]
fn ipv6_only_listener_is_proxied_over_ipv6() {
    let proxy = start_inspector(&py_server("::1", "v6", "time.sleep(60)"), &[]);
    let r = get(proxy.port);
    assert!(r.ends_with("v6"), "{r}");
}

#[test]
fn listener_behind_a_shell_wrapper() {
    let inner = py_server("127.0.0.1", "wrapped", "time.sleep(60)");
    let script = format!("python3 -c '{}'", inner[2].replace('\'', "'\\''"));
    let proxy = start_inspector(&["sh".into(), "-c".into(), script], &[]);
    assert!(get(proxy.port).ends_with("wrapped"));
}

#[test]
fn child_exit_code_is_propagated() {
    let mut proxy = start_inspector(
        &py_server("127.0.0.1", "x", "time.sleep(1.0); sys.exit(7)"),
        &[],
    );
    assert_eq!(proxy.wait_exit(Duration::from_secs(20)), Some(7));
}

#[test]
fn child_killed_by_sigkill_gives_137() {
    let mut proxy = start_inspector(
        &py_server("127.0.0.1", "x", "time.sleep(1.0); os.kill(os.getpid(), 9)"),
        &[],
    );
    assert_eq!(proxy.wait_exit(Duration::from_secs(20)), Some(137));
}

#[test]
fn sigterm_reaches_the_child_and_its_code_is_ours() {
    let then = "signal.signal(signal.SIGTERM, lambda *a: os._exit(42))\ntime.sleep(60)";
    let mut proxy = start_inspector(&py_server("127.0.0.1", "x", then), &[]);
    assert!(get(proxy.port).ends_with('x'));
    proxy.signal(libc::SIGTERM);
    assert_eq!(proxy.wait_exit(Duration::from_secs(15)), Some(42));
    // The stderr reader thread may still be draining the pipe after the exit.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !proxy
        .stderr
        .lock()
        .unwrap()
        .contains("forwarding signal SIGTERM to inspector child")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "stderr: {}",
            proxy.stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn child_ignoring_sigterm_is_killed_after_the_grace_period() {
    let then = "signal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)";
    let mut proxy = start_inspector(
        &py_server("127.0.0.1", "x", then),
        &[("INSPECTOR_STOP_GRACE", "1s")],
    );
    proxy.signal(libc::SIGTERM);
    assert_eq!(proxy.wait_exit(Duration::from_secs(15)), Some(137));
    // The child cwproxy started (pid from its startup line) is gone, not orphaned.
    let stderr = proxy.stderr.lock().unwrap().clone();
    let pid: u32 = stderr
        .split("(pid=")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no child pid in {stderr}"));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "child {pid} survived cwproxy"
    );
    assert!(
        stderr.contains("killing inspector child process group (stop grace period elapsed)"),
        "{stderr}"
    );
}

#[test]
fn explicit_app_port_skips_detection() {
    let up = Upstream::start();
    let port = up.addr.port().to_string();
    // The child listens too, but APP_PORT wins without verification.
    let proxy = start_inspector(
        &py_server("127.0.0.1", "child", "time.sleep(60)"),
        &[("APP_PORT", &port), ("HEALTH_URLS", "/health")],
    );
    let r = http(
        proxy.port,
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(r.contains("\"status\":\"ok\""), "{r}");
    assert!(!proxy
        .stderr
        .lock()
        .unwrap()
        .contains("detected listen port"));
}

#[test]
fn child_that_never_listens_times_out_naming_command_and_timeout() {
    let out = cwproxy_cmd(
        &[
            ("PROXY_PORT", &free_port().to_string()),
            ("INSPECTOR_DETECT_TIMEOUT", "1s"),
            ("HEALTH_INTERVAL", "1h"),
        ],
        &["sleep", "30"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cwproxy: inspector mode found no listening TCP port for \"sleep\" within 1s (INSPECTOR_DETECT_TIMEOUT)"), "{stderr}");
    assert!(
        stderr.contains("stopping inspector child process \"sleep\""),
        "{stderr}"
    );
}

#[test]
fn child_exiting_before_listening_fails_startup_with_its_status() {
    let out = cwproxy_cmd(
        &[("PROXY_PORT", &free_port().to_string())],
        &["sh", "-c", "exit 3"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cwproxy: inspector child \"sh\" exited with exit code 3 before a listen port was detected"), "{stderr}");
}

#[test]
fn unknown_command_fails_clearly() {
    let out = cwproxy_cmd(
        &[("PROXY_PORT", &free_port().to_string())],
        &["/nonexistent/app"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .starts_with("cwproxy: start inspector target: start \"/nonexistent/app\""));
}

/// A Python child that prints `banner` on stdout, waits `delay` seconds, then serves 200 on
/// 127.0.0.1:`port` (and stays up).
fn late_server(port: u16, delay: &str, banner: &str) -> Vec<String> {
    let code = format!(
        r#"
import http.server, sys, time
print("{banner}", flush=True)
time.sleep({delay})
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"up"
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", {port}), H).serve_forever()
"#
    );
    vec!["python3".into(), "-c".into(), code]
}

#[test]
fn explicit_app_port_waits_until_the_app_listens_before_probing() {
    let app_port = free_port();
    let port_text = app_port.to_string();
    let started = Instant::now();
    let mut proxy = start_inspector(
        &late_server(app_port, "2", "starting"),
        &[
            ("APP_PORT", &port_text),
            ("HEALTH_URLS", "/health"),
            ("INSPECTOR_CHILD_STDOUT", "stderr"),
        ],
    );
    // cwproxy listens only once the app does.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let first = proxy.wait_line(|v| v["_t"] == "HEALTH");
    assert_eq!(first["response"]["status"], 200, "{first}");
    let r = get(proxy.port);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let stderr = proxy.stderr.lock().unwrap().clone();
    assert!(
        stderr.contains("accepts connections on 127.0.0.1:"),
        "{stderr}"
    );
    assert!(!stderr.contains("health check failed"), "{stderr}");
    proxy.signal(libc::SIGTERM);
    assert_eq!(proxy.wait_exit(Duration::from_secs(15)), Some(128 + 15));
}

#[test]
fn child_stdout_goes_to_stderr_on_request_and_to_stdout_by_default() {
    for (mode, on_stdout) in [("stderr", false), ("inherit", true)] {
        let app_port = free_port();
        let port_text = app_port.to_string();
        let banner = format!("plain text from the child ({mode})");
        let mut proxy = start_inspector(
            &late_server(app_port, "0", &banner),
            &[
                ("APP_PORT", &port_text),
                ("HEALTH_URLS", "/health"),
                ("INSPECTOR_CHILD_STDOUT", mode),
            ],
        );
        let r = get(proxy.port);
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while proxy
            .raw_lines()
            .iter()
            .filter(|l| l.starts_with('{'))
            .count()
            < 2
        {
            assert!(Instant::now() < deadline, "{:?}", proxy.raw_lines());
            std::thread::sleep(Duration::from_millis(20));
        }
        let lines = proxy.raw_lines();
        assert_eq!(lines.contains(&banner), on_stdout, "{mode}: {lines:?}");
        if !on_stdout {
            for l in &lines {
                assert!(serde_json::from_str::<serde_json::Value>(l).is_ok(), "{l}");
            }
            assert!(proxy.stderr.lock().unwrap().contains(&banner));
        }
        proxy.signal(libc::SIGTERM);
        assert_eq!(proxy.wait_exit(Duration::from_secs(15)), Some(128 + 15));
    }
}

#[test]
fn explicit_app_port_never_answering_is_served_anyway_after_the_timeout() {
    let app_port = free_port().to_string();
    let started = Instant::now();
    let mut proxy = start_inspector(
        &["sleep".to_owned(), "30".to_owned()],
        &[
            ("APP_PORT", &app_port),
            ("HEALTH_URLS", "/health"),
            ("INSPECTOR_DETECT_TIMEOUT", "1s"),
        ],
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    let stderr = proxy.stderr.lock().unwrap().clone();
    assert!(
        stderr.contains(&format!(
            "did not accept connections on 127.0.0.1:{app_port} within 1s (INSPECTOR_DETECT_TIMEOUT)"
        )),
        "{stderr}"
    );
    // Serving, and the probe tells the truth.
    assert!(get(proxy.port).starts_with("HTTP/1.1 502"));
    let health = proxy.wait_line(|v| v["_t"] == "HEALTH");
    assert_eq!(health["HealthStatus"], 0);
    proxy.signal(libc::SIGTERM);
    assert_eq!(proxy.wait_exit(Duration::from_secs(15)), Some(128 + 15));
}

#[test]
fn child_exiting_while_waiting_for_app_port_fails_startup_with_its_code() {
    let out = cwproxy_cmd(
        &[
            ("PROXY_PORT", &free_port().to_string()),
            ("APP_PORT", &free_port().to_string()),
        ],
        &["sh", "-c", "sleep 0.3; exit 4"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("cwproxy: inspector child \"sh\" exited with exit code 4 before 127.0.0.1:"),
        "{stderr}"
    );
}
