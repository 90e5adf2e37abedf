//! End-to-end: the real `cwproxy` binary in front of a real upstream on loopback, stdout read back.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::{cwproxy_cmd, free_port, http, Proxy, Upstream};

fn h(sig: &str) -> String {
    String::from_utf8(telemetry::hash::short_hash(sig.as_bytes()).to_vec()).unwrap()
}

fn env_for(up: &Upstream) -> Vec<(String, String)> {
    vec![
        ("APP_PORT".into(), up.addr.port().to_string()),
        ("HEALTH_URLS".into(), "/health".into()),
        ("HEALTH_INTERVAL".into(), "1h".into()),
    ]
}

fn start(up: &Upstream, extra: &[(&str, &str)]) -> Proxy {
    let base = env_for(up);
    let mut env: Vec<(&str, &str)> = base.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.extend_from_slice(extra);
    Proxy::start(&env, &[])
}

#[test]
fn seed_demo_request_produces_the_documented_line() {
    let up = Upstream::start();
    // The seed documents the original's line; the production defaults redact its cookie.
    let proxy = start(&up, &[("LOG_COMPAT", "original")]);
    let body = r#"{"demo":true}"#;
    let response = http(
        proxy.port,
        &format!(
            "POST /hello?name=pmh HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            proxy.port,
            body.len()
        ),
    );
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let line = proxy.wait_line(|v| v["_t"] == "TRAFFIC");
    let raw = proxy
        .raw_lines()
        .into_iter()
        .find(|l| l.contains("\"TRAFFIC\""))
        .unwrap();

    // Member order of the spec, with EMF after the response.
    let order = [
        "{\"_q\":\"e2e POST /hello 200 ",
        "ms\",\"_t\":\"TRAFFIC\",\"app_name\":\"e2e\",\"global_hash\":\"",
        "\",\"delay\":",
        ",\"request\":{\"time\":",
        ",\"host\":\"127.0.0.1\",\"port\":",
        ",\"path\":\"/hello\",\"method\":\"POST\",\"url\":\"127.0.0.1:",
        "/hello?name=pmh\",\"queries\":{\"name\":\"pmh\"},\"queries_hash\":\"",
        "\",\"cookies\":{},\"headers\":{\"Accept\":\"*/*\",\"Connection\":\"close\",\"Content-Length\":\"13\",\"Content-Type\":\"application/json\",\"User-Agent\":\"curl/8.5.0\"},\"body\":{\"demo\":true},\"body_raw\":\"{\\\"demo\\\":true}\",\"body_hash\":\"",
        "\"},\"response\":{\"time\":",
        ",\"status\":200,\"headers\":{",
        "},\"set_cookies\":{\"demo\":\"upstream\"},\"body\":{\"body\":\"{\\\"demo\\\":true}\",\"method\":\"POST\",\"path\":\"/hello\",\"query\":{\"name\":\"pmh\"}},\"body_raw\":",
        ",\"AppName\":\"e2e\",\"Endpoint\":\"/hello\",\"Method\":\"POST\",\"2XXStatusCode\":1,\"Latency\":",
        ",\"RequestBodySize\":13,\"RequestCount\":1,\"ResponseBodySize\":",
        ",\"_aws\":{\"Timestamp\":",
        "\"CloudWatchMetrics\":[{\"Namespace\":\"app/traffic\",\"Dimensions\":[[\"AppName\"]],",
        "{\"Namespace\":\"app/traffic\",\"Dimensions\":[[\"AppName\",\"Endpoint\",\"Method\"]],",
    ];
    let mut at = 0;
    for piece in order {
        let found = raw[at..]
            .find(piece)
            .unwrap_or_else(|| panic!("{piece} not found after {at} in {raw}"));
        at += found + piece.len();
    }
    assert!(!raw[..raw.len() - 1].contains('\n'));
    // Hashes: structure of the query and both bodies.
    assert_eq!(line["request"]["queries_hash"], h("o{name:v;}"));
    assert_eq!(line["request"]["body_hash"], h("o{demo:v;}"));
    let resp_sig = "o{body:v;method:v;path:v;query:o{name:v;};}";
    assert_eq!(line["response"]["body_hash"], h(resp_sig));
    assert_eq!(
        line["global_hash"],
        h(&format!(
            "queries:o{{name:v;}}|request_body:o{{demo:v;}}|response_body:{resp_sig}"
        ))
    );
    // Forwarding headers as the upstream saw them are not logged; the response set-cookie is.
    assert!(line["response"]["headers"].get("Set-Cookie").is_none());
    assert_eq!(line["_aws"]["Timestamp"], line["response"]["time"]);
}

#[test]
fn health_runner_probes_and_health_paths_are_not_logged() {
    let up = Upstream::start();
    let other = Upstream::start();
    let urls = format!("/health,127.0.0.1:{}/health?deep=1", other.addr.port());
    let proxy = start(&up, &[("HEALTH_URLS", &urls), ("HEALTH_INTERVAL", "1s")]);
    let first = format!("http://127.0.0.1:{}/health", up.addr.port());
    let second = format!("http://127.0.0.1:{}/health?deep=1", other.addr.port());
    let a = proxy.wait_line(|v| v["_t"] == "HEALTH" && v["request"]["url"] == first.as_str());
    let b = proxy.wait_line(|v| v["_t"] == "HEALTH" && v["request"]["url"] == second.as_str());
    for v in [&a, &b] {
        assert_eq!(v["response"]["status"], 200);
        assert_eq!(v["response"]["body"]["status"], "ok");
        assert_eq!(v["HealthStatus"], 1);
        assert_eq!(v["AppName"], "e2e");
        assert!(v.get("_q").is_none() && v.get("app_name").is_none());
        assert_eq!(v["_aws"]["CloudWatchMetrics"][0]["Namespace"], "app/health");
    }
    assert_eq!(b["request"]["queries"]["deep"], "1");
    assert_eq!(b["Endpoint"], second.as_str());
    // A request to a health path is proxied but produces no telemetry at all.
    let r = http(
        proxy.port,
        "GET /health?probe=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let r = http(
        proxy.port,
        "GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    proxy.wait_line(|v| v["_t"] == "TRAFFIC" && v["request"]["path"] == "/other");
    assert!(proxy
        .traffic_lines()
        .iter()
        .all(|v| v["request"]["path"] != "/health"));
    // The second interval probes again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy
        .raw_lines()
        .iter()
        .filter(|l| l.contains("\"HEALTH\""))
        .count()
        < 4
    {
        assert!(Instant::now() < deadline, "no second probe round");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn failing_health_endpoint_reported_once_per_state_change() {
    let up = Upstream::start();
    let dead = free_port();
    let urls = format!("127.0.0.1:{dead}/health");
    let mut proxy = start(&up, &[("HEALTH_URLS", &urls), ("HEALTH_INTERVAL", "1s")]);
    let line = proxy.wait_line(|v| v["_t"] == "HEALTH");
    assert_eq!(line["response"]["status"], 0);
    assert_eq!(line["HealthStatus"], 0);
    assert_eq!(line["global_hash"], "05a213");
    let body = line["response"]["body"].as_str().unwrap();
    assert_eq!(body, format!("Get \"http://127.0.0.1:{dead}/health\": dial tcp 127.0.0.1:{dead}: connect: connection refused"));
    std::thread::sleep(Duration::from_millis(2500));
    proxy.signal(libc::SIGTERM);
    assert_eq!(proxy.wait_exit(Duration::from_secs(15)), Some(0));
    let stderr = proxy.stderr.lock().unwrap().clone();
    assert_eq!(
        stderr.matches("health check failed for").count(),
        1,
        "{stderr}"
    );
    let probes = proxy
        .raw_lines()
        .iter()
        .filter(|l| l.contains("\"HEALTH\""))
        .count();
    assert!(probes >= 3, "{probes} probes");
}

#[test]
fn config_errors_exit_1_with_the_original_messages() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("PROXY_PORT", "70000")], "PROXY_PORT must be between 1 and 65535"),
        (&[("PROXY_PORT", "abc")], "PROXY_PORT must be a valid integer port: strconv.Atoi: parsing \"abc\": invalid syntax"),
        (&[("APP_PORT", "0")], "APP_PORT must be between 1 and 65535"),
        (&[("APP_HOST", "example.com:8080")], "APP_HOST must not include a port"),
        (&[("APP_HOST", "http://example.com")], "APP_HOST must be a bare host without scheme, path, query, or user info"),
        (&[("HEALTH_URLS", "/a,,/b")], "HEALTH_URLS contains an empty entry"),
        (&[("HEALTH_URLS", "ftp://x/y")], "unsupported scheme \"ftp\" in HEALTH_URLS"),
        (&[("HEALTH_URLS", ":99999")], "parse HEALTH_URLS entry \":99999\": invalid port \"99999\""),
        (&[("HEALTH_INTERVAL", "100ms")], "HEALTH_INTERVAL must be at least 1s"),
        (&[("CAPTURE_BODY_LIMIT", "0")], "CAPTURE_BODY_LIMIT must be at least 1"),
        (&[("BACKEND_RETRY_MAX_ATTEMPTS", "x")], "BACKEND_RETRY_MAX_ATTEMPTS must be a valid integer: strconv.Atoi: parsing \"x\": invalid syntax"),
        (&[("METADATA_DETECT_TIMEOUT", "junk")], "METADATA_DETECT_TIMEOUT must be a valid duration: time: invalid duration \"junk\""),
        (&[("METADATA_DETECT_TIMEOUT", "2m")], "METADATA_DETECT_TIMEOUT must be at most 1m, got \"2m\""),
        (&[("BACKEND_RETRY_METHODS", " , ")], "BACKEND_RETRY_METHODS lists no method in \",\": name at least one, or set BACKEND_RETRY_MAX_ATTEMPTS=1 to disable retries"),
    ];
    for (env, message) in cases {
        let out = cwproxy_cmd(env, &[]).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{env:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!("cwproxy: {message}\n"),
            "{env:?}"
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn bind_failure_exits_1() {
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = cwproxy_cmd(&[("PROXY_PORT", &port), ("HEALTH_INTERVAL", "1h")], &[])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("cwproxy: listen tcp :{port}: bind: address already in use\n")
    );
}

#[test]
fn help_and_version_are_the_only_reserved_flags() {
    let out = cwproxy_cmd(&[], &["--help"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for documented in [
        "PROXY_PORT",
        "--check",
        "INSPECTOR_CHILD_STDOUT",
        "credential_process",
    ] {
        assert!(help.contains(documented), "{documented}: {help}");
    }
    let out = cwproxy_cmd(&[], &["--version"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("cwproxy "));
}

#[test]
fn retries_are_observed_at_the_upstream_and_only_the_final_response_logged() {
    let up = Upstream::start();
    let proxy = start(&up, &[]);
    let r = http(
        proxy.port,
        "GET /flaky HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(up.hits.flaky.load(Ordering::SeqCst), 2);
    let line = proxy.wait_line(|v| v["_t"] == "TRAFFIC");
    assert_eq!(line["response"]["status"], 200);
    assert_eq!(line["2XXStatusCode"], 1);
    assert!(line.get("5XXStatusCode").is_none());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(proxy.traffic_lines().len(), 1);
}

#[test]
fn retries_disabled_with_one_attempt() {
    let up = Upstream::start();
    let proxy = start(&up, &[("BACKEND_RETRY_MAX_ATTEMPTS", "1")]);
    let r = http(
        proxy.port,
        "GET /flaky HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert_eq!(up.hits.flaky.load(Ordering::SeqCst), 1);
}

#[test]
fn upgrade_tunnel_echoes_both_ways_and_logs_once() {
    let up = Upstream::start();
    let proxy = start(&up, &[]);
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    for msg in [&b"ping"[..], b"second message"] {
        s.write_all(msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
    }
    drop(s);
    let line = proxy.wait_line(|v| v["_t"] == "TRAFFIC");
    assert_eq!(line["response"]["status"], 101);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(proxy.traffic_lines().len(), 1);
}

#[test]
fn sse_events_arrive_before_the_stream_ends() {
    let up = Upstream::start();
    let proxy = start(&up, &[]);
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let sent = Instant::now();
    s.write_all(b"GET /sse HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("data: event 0") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended before the first event");
        got.extend_from_slice(&buf[..n]);
    }
    // The upstream spaces events 400 ms apart; the first must not wait for the others.
    assert!(
        sent.elapsed() < Duration::from_millis(350),
        "first event after {:?}",
        sent.elapsed()
    );
    assert!(!String::from_utf8_lossy(&got).contains("event 2"));
    let _ = s.read_to_end(&mut got);
    assert!(String::from_utf8_lossy(&got).contains("data: event 2"));
}

fn rss_high_water_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn ten_megabytes_each_way_with_flat_memory() {
    let up = Upstream::start();
    let proxy = start(&up, &[]);
    let size = 10 * 1024 * 1024;
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let chunk = vec![b'u'; 64 * 1024];
    for _ in 0..size / chunk.len() {
        s.write_all(&chunk).unwrap();
    }
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.ends_with(&size.to_string()), "{out}");
    assert_eq!(up.hits.uploaded.load(Ordering::SeqCst), size);

    let r = http(
        proxy.port,
        "GET /download HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(r.len() > size, "{}", r.len());
    let up_line = proxy.wait_line(|v| v["request"]["path"] == "/upload");
    assert_eq!(up_line["RequestBodySize"], size as u64);
    assert!(up_line["request"]["body_raw"]
        .as_str()
        .unwrap()
        .ends_with("...(truncated)"));
    let down_line = proxy.wait_line(|v| v["request"]["path"] == "/download");
    assert_eq!(down_line["ResponseBodySize"], size as u64);
    // Bodies stream: the proxy never holds 10 MB (captures keep 64 KiB each).
    let hwm = rss_high_water_kib(proxy.child.id());
    assert!(hwm < 40 * 1024, "cwproxy peak RSS {hwm} KiB");
}

#[test]
fn upstream_down_gives_502_and_a_line() {
    let dead = free_port().to_string();
    let proxy = Proxy::start(
        &[
            ("APP_PORT", &dead),
            ("HEALTH_INTERVAL", "1h"),
            ("HEALTH_URLS", "/health"),
        ],
        &[],
    );
    let r = http(
        proxy.port,
        "GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 502"), "{r}");
    assert!(r.ends_with("Bad Gateway\n"), "{r}");
    let line = proxy.wait_line(|v| v["_t"] == "TRAFFIC");
    assert_eq!(line["response"]["status"], 502);
    assert_eq!(line["response"]["body"], serde_json::Value::Null);
    assert_eq!(line["ResponseBodySize"], 12);
    assert_eq!(line["5XXStatusCode"], 1);
    assert!(proxy
        .stderr
        .lock()
        .unwrap()
        .contains("reverse proxy upstream error"));
}

#[test]
fn sigterm_during_a_slow_request_completes_it() {
    let up = Upstream::start();
    let mut proxy = start(&up, &[]);
    let port = proxy.port;
    let client = std::thread::spawn(move || {
        http(
            port,
            "GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    });
    std::thread::sleep(Duration::from_millis(400));
    proxy.signal(libc::SIGTERM);
    let r = client.join().unwrap();
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("done"), "{r}");
    assert_eq!(proxy.wait_exit(Duration::from_secs(15)), Some(0));
    assert!(proxy
        .stderr
        .lock()
        .unwrap()
        .contains("received signal terminated; shutting down"));
    assert!(proxy
        .traffic_lines()
        .iter()
        .any(|v| v["request"]["path"] == "/slow" && v["response"]["status"] == 200));
    // New connections are refused once shutdown started.
    assert!(TcpStream::connect(("127.0.0.1", proxy.port)).is_err());
}

#[test]
fn every_config_error_is_listed_at_once_first_as_the_original() {
    let out = cwproxy_cmd(
        &[
            ("PROXY_PORT", "abc"),
            ("HEALTH_URLS", "/%x\u{3bc}"),
            ("BACKEND_RETRY_METHODS", " , "),
        ],
        &[],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert_eq!(
        lines[0],
        "cwproxy: PROXY_PORT must be a valid integer port: strconv.Atoi: parsing \"abc\": invalid syntax"
    );
    // A `%` escape cut inside a multi-byte character: an error naming the variable, no panic.
    assert_eq!(
        lines[1],
        "cwproxy: parse HEALTH_URLS entry \"/%x\u{3bc}\": parse \"/%x\u{3bc}\": invalid URL escape \"%x\\xce\""
    );
    assert!(
        lines[2].starts_with("cwproxy: BACKEND_RETRY_METHODS lists no method"),
        "{stderr}"
    );
}

#[test]
fn check_prints_the_resolved_configuration_or_every_error() {
    let out = cwproxy_cmd(
        &[
            ("APP_NAME", "orders"),
            ("HEALTH_URLS", "/healthz,https://some.alb.example.com"),
            ("BACKEND_RETRY_STATUS_CODES", "502,503-504"),
            ("INSPECTOR_CHILD_STDOUT", "stderr"),
        ],
        &["--check"],
    )
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = |name: &str| -> Vec<String> {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} row in {stdout}"));
        line.split_whitespace().skip(1).map(str::to_owned).collect()
    };
    assert_eq!(
        row("HEALTH_URLS"),
        [
            "http://127.0.0.1:8080/healthz,https://some.alb.example.com:443/healthz",
            "(set)"
        ]
    );
    assert_eq!(row("LOG_GROUP_NAME"), ["/app/log/orders", "(default)"]);
    assert_eq!(
        row("HEALTH_LOG_GROUP_NAME"),
        ["/app/log/orders/health", "(default)"]
    );
    assert_eq!(row("BACKEND_RETRY_STATUS_CODES"), ["502-504", "(set)"]);
    assert_eq!(
        row("BACKEND_RETRY_METHODS"),
        ["GET,HEAD,OPTIONS", "(default)"]
    );
    assert_eq!(row("BACKEND_RETRY_MAX_ATTEMPTS"), ["2", "(default)"]);
    assert_eq!(row("BACKEND_RETRY_INITIAL_BACKOFF"), ["50ms", "(default)"]);
    assert_eq!(row("METADATA_DETECT_TIMEOUT"), ["200ms", "(default)"]);
    assert_eq!(row("INSPECTOR_CHILD_STDOUT"), ["stderr", "(set)"]);
    assert!(
        stdout.contains("CloudWatch Logs off: stdout only"),
        "{stdout}"
    );

    let out = cwproxy_cmd(
        &[("CAPTURE_BODY_LIMIT", "0"), ("HEALTH_INTERVAL", "30")],
        &["--check"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "cwproxy: HEALTH_INTERVAL must be a valid duration: time: missing unit in duration \"30\"\n\
         cwproxy: CAPTURE_BODY_LIMIT must be at least 1\n"
    );
}
