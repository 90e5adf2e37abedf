//! The production line on the real binary over loopback: redaction, endpoint templates and their
//! cap, decoded bodies, bounded lines and binary bodies, each against its switch back.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{cwproxy_cmd, free_port, Proxy, Upstream};

/// A canned response: status line + headers (without Content-Length) and the body.
type Reply = (String, Vec<u8>);

/// An upstream answering every request with `reply(path)`, reading request bodies fully (by
/// Content-Length) and counting their bytes; keep-alive.
struct RawUpstream {
    port: u16,
    received: Arc<Mutex<Vec<usize>>>,
}

impl RawUpstream {
    fn start(reply: fn(&str) -> Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let rx = Arc::clone(&received);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let rx = Arc::clone(&rx);
                std::thread::spawn(move || serve(conn, reply, &rx));
            }
        });
        Self { port, received }
    }
}

fn serve(conn: TcpStream, reply: fn(&str) -> Reply, received: &Mutex<Vec<usize>>) {
    let _ = conn.set_nodelay(true);
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let Some((head, body)) = read_message(&mut r) else {
            return;
        };
        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
        let (status_and_headers, body) = if path == "/health" {
            ok_reply(&path)
        } else {
            received.lock().unwrap().push(body.len());
            reply(&path)
        };
        // One write per response: no Nagle/delayed-ACK stall between head and body.
        let mut msg = format!(
            "{status_and_headers}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        msg.extend_from_slice(&body);
        if w.write_all(&msg).is_err() {
            return;
        }
    }
}

/// Reads one HTTP/1.1 message (head, body by Content-Length).
fn read_message(r: &mut impl BufRead) -> Option<(String, Vec<u8>)> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((head, body))
}

/// A keep-alive client connection to the proxy.
struct Client {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Client {
    fn new(port: u16) -> Self {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Self {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        }
    }

    /// Sends a request with extra header lines and a body; returns (status line, body bytes).
    fn send(
        &mut self,
        method: &str,
        target: &str,
        headers: &str,
        body: &[u8],
    ) -> (String, Vec<u8>) {
        let mut msg = format!(
            "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        msg.extend_from_slice(body);
        self.w.write_all(&msg).unwrap();
        let (head, body) = read_message(&mut self.r).expect("response");
        (head.lines().next().unwrap_or("").to_owned(), body)
    }
}

fn json_reply(_: &str) -> Reply {
    (
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Auth-Token: RsTokSecret1\r\nAuthorization: Bearer RsAuthSecret2\r\nSet-Cookie: sid=RsCookieSecret3; Path=/; HttpOnly\r\nSet-Cookie: theme=dark"
            .into(),
        br#"{"ok":true,"session":{"refresh_token":"RsBodySecret4"}}"#.to_vec(),
    )
}

fn start(up_port: u16, extra: &[(&str, &str)]) -> Proxy {
    Proxy::for_app(up_port, extra)
}

/// How long a test waits for the traffic lines of its requests (bodies up to 10 MB).
const LINES_WITHIN: Duration = Duration::from_secs(20);

const REQUEST_SECRETS: &[&str] = &[
    "AuthSecret01",
    "ProxySecret02",
    "CookieSecret03",
    "ApiKeySecret04",
    "AuthTokSecret05",
    "AmzSecret06",
    "CsrfSecret07",
    "QuerySecret08",
    "JsonSecret09",
    "JsonSecret10",
    "FormSecret11",
    "XmlSecret12",
    "XmlAttrSecret13",
];

const RESPONSE_SECRETS: &[&str] = &[
    "RsTokSecret1",
    "RsAuthSecret2",
    "RsCookieSecret3",
    "RsBodySecret4",
];

/// Sends one request of each body kind carrying every request secret; returns the lines.
fn exchange_secrets(extra: &[(&str, &str)]) -> Vec<serde_json::Value> {
    let up = RawUpstream::start(json_reply);
    let proxy = start(up.port, extra);
    let mut c = Client::new(proxy.port);
    let headers = "Authorization: Bearer AuthSecret01\r\nProxy-Authorization: Basic ProxySecret02\r\nCookie: sid=CookieSecret03; theme=light\r\nX-Api-Key: ApiKeySecret04\r\nX-Auth-Token: AuthTokSecret05\r\nX-Amz-Security-Token: AmzSecret06\r\nX-CSRF-Token: CsrfSecret07\r\n";
    let bodies: [(&str, &[u8]); 3] = [
        (
            "application/json",
            br#"{"user":{"name":"ann","password":"JsonSecret09","keys":[{"api_key":"JsonSecret10"}]}}"#,
        ),
        ("application/x-www-form-urlencoded", b"user=ann&pass-word=x&Password=FormSecret11"),
        (
            "application/xml",
            br#"<login user="ann" token="XmlAttrSecret13"><password>XmlSecret12</password></login>"#,
        ),
    ];
    for (ct, body) in bodies {
        let h = format!("{headers}Content-Type: {ct}\r\n");
        let (status, _) = c.send(
            "POST",
            "/login?user=ann&access_token=QuerySecret08",
            &h,
            body,
        );
        assert!(status.contains(" 200 "), "{status}");
    }
    let raw = proxy.wait_traffic(3, LINES_WITHIN);
    raw.iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .collect()
}

fn hashes(v: &serde_json::Value) -> [String; 4] {
    [
        v["global_hash"].to_string(),
        v["request"]["queries_hash"].to_string(),
        v["request"]["body_hash"].to_string(),
        v["response"]["body_hash"].to_string(),
    ]
}

#[test]
fn secrets_are_redacted_in_every_position_by_default_and_logged_with_redact_off() {
    let on = exchange_secrets(&[]);
    let off = exchange_secrets(&[("LOG_REDACT", "off")]);
    let text_on: String = on.iter().map(|v| v.to_string()).collect();
    let text_off: String = off.iter().map(|v| v.to_string()).collect();
    for secret in REQUEST_SECRETS.iter().chain(RESPONSE_SECRETS) {
        assert!(!text_on.contains(secret), "{secret} survived redaction");
        assert!(
            text_off.contains(secret),
            "{secret} missing with LOG_REDACT=off"
        );
    }
    for (a, b) in on.iter().zip(&off) {
        assert_eq!(hashes(a), hashes(b), "hashes differ with redaction");
    }
    let json = &on[0];
    assert_eq!(json["request"]["headers"]["Authorization"], "[REDACTED]");
    assert_eq!(json["request"]["cookies"]["theme"], "[REDACTED]");
    assert_eq!(json["request"]["queries"]["user"], "ann");
    assert_eq!(json["request"]["body"]["user"]["name"], "ann");
    assert_eq!(json["request"]["body"]["user"]["password"], "[REDACTED]");
    assert_eq!(json["response"]["set_cookies"]["theme"], "[REDACTED]");
    assert!(json["request"]["url"]
        .as_str()
        .unwrap()
        .ends_with("access_token=[REDACTED]"));
    // The form's `pass-word` is the same name as `password` (dashes ignored).
    assert_eq!(on[1]["request"]["body"]["pass-word"], "[REDACTED]");
}

fn users_reply(_: &str) -> Reply {
    (
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain".into(),
        b"ok".to_vec(),
    )
}

/// Runs cwproxy with its stdout consumed line by line (nothing kept but the `Endpoint` values),
/// for floods too big to collect.
struct Flood {
    child: Child,
    port: u16,
    endpoints: Arc<Mutex<(usize, HashSet<String>)>>,
    stderr: Arc<Mutex<String>>,
}

impl Flood {
    fn start(up_port: u16, extra: &[(&str, &str)]) -> Self {
        let port = free_port();
        let (p, u) = (port.to_string(), up_port.to_string());
        let mut env = vec![
            ("PROXY_PORT", p.as_str()),
            ("APP_PORT", u.as_str()),
            ("APP_NAME", "flood"),
            ("HEALTH_URLS", "/health"),
            ("HEALTH_INTERVAL", "1h"),
        ];
        env.extend_from_slice(extra);
        let mut child = cwproxy_cmd(&env, &[]).spawn().unwrap();
        let endpoints = Arc::new(Mutex::new((0, HashSet::new())));
        let sink = Arc::clone(&endpoints);
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !line.contains("\"_t\":\"TRAFFIC\"") {
                    continue;
                }
                // The value is a template or a path of plain letters: no escapes to decode.
                let endpoint = line
                    .split_once("\"Endpoint\":\"")
                    .and_then(|(_, rest)| rest.split_once('"'))
                    .map(|(e, _)| e.to_owned())
                    .unwrap();
                let mut e = sink.lock().unwrap();
                e.0 += 1;
                e.1.insert(endpoint);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let err_sink = Arc::clone(&stderr);
        let mut err_pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                err_sink
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "cwproxy did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            port,
            endpoints,
            stderr,
        }
    }

    fn wait_lines(&self, n: usize) -> HashSet<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let e = self.endpoints.lock().unwrap();
            if e.0 >= n {
                return e.1.clone();
            }
            assert!(Instant::now() < deadline, "{} of {n} lines", e.0);
            drop(e);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `n` lines arrived or none arrived for 5 s; returns the count and the values.
    fn wait_settled(&self, n: usize) -> (usize, HashSet<String>) {
        let deadline = Instant::now() + Duration::from_secs(180);
        let (mut last, mut since) = (0, Instant::now());
        loop {
            let e = self.endpoints.lock().unwrap();
            if e.0 >= n || since.elapsed() > Duration::from_secs(5) || Instant::now() > deadline {
                return (e.0, e.1.clone());
            }
            if e.0 != last {
                (last, since) = (e.0, Instant::now());
            }
            drop(e);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The highest "total dropped: N" the pipeline reported on stderr.
    fn reported_drops(&self) -> usize {
        let stderr = self.stderr.lock().unwrap();
        stderr
            .split("total dropped: ")
            .skip(1)
            .filter_map(|rest| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            })
            .max()
            .unwrap_or(0)
    }

    fn rss_kib(&self) -> u64 {
        vm_kib(self.child.id(), "VmRSS:")
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn five_thousand_user_ids_are_one_endpoint_and_the_raw_path_is_kept() {
    let up = RawUpstream::start(users_reply);
    let flood = Flood::start(up.port, &[]);
    let mut c = Client::new(flood.port);
    for n in 0..5000 {
        c.send("GET", &format!("/users/{n}"), "", b"");
    }
    let endpoints = flood.wait_lines(5000);
    assert_eq!(endpoints, HashSet::from(["/users/{userId}".to_owned()]));
    // With templates off every id is its own value (the original's behaviour).
    let raw = Flood::start(
        up.port,
        &[("ENDPOINT_TEMPLATES", "off"), ("ENDPOINT_LIMIT", "0")],
    );
    let mut c = Client::new(raw.port);
    for n in 0..300 {
        c.send("GET", &format!("/users/{n}"), "", b"");
    }
    assert_eq!(raw.wait_lines(300).len(), 300);
}

#[test]
fn one_hundred_thousand_random_paths_stay_under_the_cap_with_flat_memory() {
    let up = RawUpstream::start(users_reply);
    let flood = Flood::start(up.port, &[]);
    // Two concurrent keep-alive clients, each with its own random words.
    let send = |count: usize| {
        std::thread::scope(|s| {
            for t in 0..2u64 {
                s.spawn(move || {
                    let mut c = Client::new(flood.port);
                    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (t << 32) ^ count as u64;
                    for _ in 0..count / 2 {
                        // Lowercase letters only: never an identifier, so each path is its own
                        // template.
                        let word: String = (0..12)
                            .map(|_| {
                                seed ^= seed << 13;
                                seed ^= seed >> 7;
                                seed ^= seed << 17;
                                char::from(b'a' + (seed % 26) as u8)
                            })
                            .collect();
                        c.send("GET", &format!("/scan/{word}"), "", b"");
                    }
                });
            }
        });
    };
    let total = 100_000;
    send(20_000);
    flood.wait_settled(20_000);
    let rss_at_20k = flood.rss_kib();
    send(total - 20_000);
    // On a loaded machine the telemetry queue may overflow: drops are allowed, but each one
    // must be counted on stderr (the pipeline reports them at most every 10 s, and at exit).
    let (lines, endpoints) = flood.wait_settled(total);
    if lines < total {
        let deadline = Instant::now() + Duration::from_secs(15);
        while lines + flood.reported_drops() < total && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            lines + flood.reported_drops(),
            total,
            "lines lost without a report"
        );
    }
    let rss_end = flood.rss_kib();
    assert!(
        endpoints.len() <= 201,
        "{} distinct values",
        endpoints.len()
    );
    assert!(endpoints.contains("OTHER"));
    // 80,000 more distinct paths after the cap was hit cost no memory per path.
    assert!(
        rss_end <= rss_at_20k + 8 * 1024,
        "RSS grew from {rss_at_20k} KiB to {rss_end} KiB"
    );
    let stderr = flood.stderr.lock().unwrap().clone();
    assert_eq!(
        stderr.matches("reached its limit of 200").count(),
        1,
        "{stderr}"
    );
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

const JSON_BODY: &[u8] = br#"{"items":[{"id":1,"name":"a"},{"id":2,"name":"b"}],"total":2}"#;

fn encoded(encoding: &str) -> Vec<u8> {
    match encoding {
        "gzip" => gzip(JSON_BODY),
        "deflate" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(JSON_BODY).unwrap();
            e.finish().unwrap()
        }
        "br" => {
            let mut out = Vec::new();
            {
                let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                w.write_all(JSON_BODY).unwrap();
            }
            out
        }
        "zstd" => ruzstd::encoding::compress_to_vec(
            JSON_BODY,
            ruzstd::encoding::CompressionLevel::Fastest,
        ),
        other => panic!("{other}"),
    }
}

fn encoded_reply(path: &str) -> Reply {
    let encoding = path.trim_start_matches('/');
    (
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: {encoding}"
        ),
        encoded(encoding),
    )
}

#[test]
fn gzip_deflate_br_and_zstd_bodies_are_parsed_and_forwarded_untouched() {
    let up = RawUpstream::start(encoded_reply);
    let proxy = start(up.port, &[]);
    let off = start(up.port, &[("LOG_DECODE_BODIES", "off")]);
    let want_hash = String::from_utf8(
        telemetry::hash::short_hash(b"o{items:a[o{id:v;name:v;},];total:v;}").to_vec(),
    )
    .unwrap();
    let encodings = ["gzip", "deflate", "br", "zstd"];
    for (i, enc) in encodings.iter().enumerate() {
        let mut c = Client::new(proxy.port);
        let (status, body) = c.send("GET", &format!("/{enc}"), "", b"");
        assert!(status.contains(" 200 "));
        assert_eq!(body, encoded(enc), "{enc}: forwarded bytes changed");
        // The request carries the same encoded body: decoded on that side too.
        let h = format!("Content-Type: application/json\r\nContent-Encoding: {enc}\r\n");
        c.send("POST", &format!("/{enc}"), &h, &encoded(enc));
        let lines = proxy.wait_traffic(2 * (i + 1), LINES_WITHIN);
        for line in &lines[2 * i..] {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["response"]["body"]["total"], 2, "{enc}: {line}");
            assert_eq!(v["response"]["body_hash"], want_hash.as_str(), "{enc}");
        }
        let v: serde_json::Value = serde_json::from_str(&lines[2 * i + 1]).unwrap();
        assert_eq!(v["request"]["body_hash"], want_hash.as_str(), "{enc}");
        assert_eq!(
            up.received.lock().unwrap().last(),
            Some(&encoded(enc).len())
        );
        Client::new(off.port).send("GET", &format!("/{enc}"), "", b"");
        let v: serde_json::Value =
            serde_json::from_str(&off.wait_traffic(i + 1, LINES_WITHIN)[i]).unwrap();
        assert_ne!(
            v["response"]["body_hash"],
            want_hash.as_str(),
            "{enc} decoded when off"
        );
    }
}

fn ok_reply(_: &str) -> Reply {
    (
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain".into(),
        b"ok".to_vec(),
    )
}

#[test]
fn gzip_bomb_and_corrupt_stream_are_logged_within_limits_and_forwarded_whole() {
    let up = RawUpstream::start(ok_reply);
    let proxy = start(up.port, &[]);
    // A multi-member gzip stream: 1,024 members of 1 MiB of zeros each, 1 GiB decoded.
    let member = gzip(&vec![0u8; 1 << 20]);
    let bomb: Vec<u8> = member
        .iter()
        .copied()
        .cycle()
        .take(member.len() * 1024)
        .collect();
    let mut c = Client::new(proxy.port);
    let h = "Content-Type: application/json\r\nContent-Encoding: gzip\r\n";
    let started = Instant::now();
    let (status, _) = c.send("POST", "/bomb", h, &bomb);
    assert!(status.contains(" 200 "), "{status}");
    let mut corrupt = gzip(br#"{"a":"some json that is long enough to be worth compressing"}"#);
    let n = corrupt.len();
    corrupt[n / 2..].iter_mut().for_each(|b| *b ^= 0x5a);
    let (status, _) = c.send("POST", "/corrupt", h, &corrupt);
    assert!(status.contains(" 200 "), "{status}");
    let lines = proxy.wait_traffic(2, LINES_WITHIN);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(
        *up.received.lock().unwrap(),
        vec![bomb.len(), corrupt.len()],
        "upstream got every byte"
    );
    for line in &lines {
        assert!(line.len() <= 256 << 10, "line of {} bytes", line.len());
    }
    let bomb_line: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    // Cut at the capture limit, well before the ratio bound: 64 KiB of NULs, binary.
    assert_eq!(
        bomb_line["request"]["body"],
        "[binary 65536 bytes]...(truncated)"
    );
    let corrupt_line: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(
        corrupt_line["request"]["body"],
        format!("[binary {} bytes]", corrupt.len()).as_str(),
        "a corrupt stream is logged as captured"
    );
}

#[test]
fn ten_megabyte_binary_upload_gives_a_bounded_line_and_escape_restores_the_original() {
    let up = Upstream::start();
    let blob: Vec<u8> = (0..10u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let run = |extra: &[(&str, &str)]| {
        let proxy = start(up.addr.port(), extra);
        let mut c = Client::new(proxy.port);
        let (status, _) = c.send(
            "POST",
            "/upload",
            "Content-Type: application/octet-stream\r\n",
            &blob,
        );
        assert!(status.contains(" 200 "), "{status}");
        proxy.wait_traffic(1, LINES_WITHIN).remove(0)
    };
    let line = run(&[]);
    assert!(line.len() <= 256 << 10, "{}", line.len());
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["request"]["body"], "[binary 65536 bytes]...(truncated)");
    assert!(v["request"].get("body_raw").is_none());
    assert!(!line.contains("\\ufffd"));

    let original = run(&[("LOG_BINARY_BODIES", "escape"), ("LOG_LINE_LIMIT", "0")]);
    assert!(original.len() > 256 << 10, "{}", original.len());
    assert!(original.contains("\\ufffd"));

    // The escaped form bounded: trimmed with the CloudWatch rule, still JSON, marker at the cut.
    let bounded = run(&[("LOG_BINARY_BODIES", "escape"), ("LOG_LINE_LIMIT", "65536")]);
    assert!(bounded.len() <= 65536, "{}", bounded.len());
    let v: serde_json::Value = serde_json::from_str(&bounded).unwrap();
    assert!(v["request"]["body_raw"]
        .as_str()
        .unwrap()
        .ends_with("...(truncated)"));
    assert_eq!(v["RequestBodySize"], 10 << 20);
}

#[test]
fn log_compat_original_gives_the_original_line() {
    let up = RawUpstream::start(json_reply);
    let compat = start(up.port, &[("LOG_COMPAT", "original")]);
    let off = start(
        up.port,
        &[
            ("LOG_REDACT", "off"),
            ("ENDPOINT_TEMPLATES", "off"),
            ("ENDPOINT_LIMIT", "0"),
            ("LOG_DECODE_BODIES", "off"),
            ("LOG_LINE_LIMIT", "0"),
            ("LOG_BINARY_BODIES", "escape"),
        ],
    );
    for p in [&compat, &off] {
        Client::new(p.port).send(
            "GET",
            "/users/7?token=QuerySecret08",
            "Cookie: a=b\r\n",
            b"",
        );
    }
    let strip = |l: &str| {
        // Times, delay and the proxy's own port differ between the two runs.
        let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
        for k in ["delay", "Latency", "_q", "_aws"] {
            v[k] = serde_json::Value::Null;
        }
        for part in ["request", "response"] {
            v[part]["time"] = serde_json::Value::Null;
        }
        v["response"]["headers"]["Date"] = serde_json::Value::Null;
        v
    };
    let a = compat.wait_traffic(1, LINES_WITHIN).remove(0);
    let b = off.wait_traffic(1, LINES_WITHIN).remove(0);
    assert_eq!(strip(&a), strip(&b));
    let v: serde_json::Value = serde_json::from_str(&a).unwrap();
    assert_eq!(v["Endpoint"], "/users/7");
    assert_eq!(v["request"]["cookies"]["a"], "b");
    assert_eq!(v["response"]["set_cookies"]["sid"], "RsCookieSecret3");
    assert!(a.contains("token=QuerySecret08"));
}

/// cwproxy whose stdout the test reads itself (or not at all), listening once this returns.
fn start_unread(up_port: u16, extra: &[(&str, &str)]) -> (Child, u16, Arc<Mutex<String>>) {
    let port = free_port();
    let (port_text, up_text) = (port.to_string(), up_port.to_string());
    let mut env = vec![
        ("PROXY_PORT", port_text.as_str()),
        ("APP_PORT", up_text.as_str()),
        ("APP_NAME", "e2e"),
        ("HEALTH_URLS", "/health"),
        ("HEALTH_INTERVAL", "1h"),
    ];
    env.extend_from_slice(extra);
    let mut child = cwproxy_cmd(&env, &[]).spawn().unwrap();
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut pipe = child.stderr.take().unwrap();
    let sink = Arc::clone(&stderr);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut buf) {
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "no listener: {}",
            stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, port, stderr)
}

/// Sends `per_client` keep-alive GETs on each of `clients` connections; returns the 200s.
fn load(port: u16, clients: usize, per_client: usize) -> usize {
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            std::thread::spawn(move || {
                let mut client = Client::new(port);
                (0..per_client)
                    .filter(|i| {
                        let (status, _) = client.send("GET", &format!("/api/{c}/{i}"), "", b"");
                        status.contains(" 200 ")
                    })
                    .count()
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}

fn vm_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap()
}

/// A stdout reader that stalls for two seconds and then drains gets every line: traffic waits
/// for stdout instead of losing lines, and the queue keeps memory bounded meanwhile.
#[test]
fn a_stalled_stdout_reader_loses_no_line_and_memory_stays_bounded() {
    let up = RawUpstream::start(ok_reply);
    let (mut child, port, stderr) = start_unread(up.port, &[]);
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.contains("\"_t\":\"TRAFFIC\""))
            .count()
    });
    let (clients, per_client) = (8, 300);
    let started = Instant::now();
    assert_eq!(load(port, clients, per_client), clients * per_client);
    // The queue (1,024 records) and the pipe filled long before 2,400 requests: traffic waited.
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    let peak = vm_kib(child.id(), "VmHWM:");
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let lines = reader.join().unwrap();
    let _ = child.wait();
    assert_eq!(
        lines,
        clients * per_client,
        "stderr: {}",
        stderr.lock().unwrap()
    );
    assert!(peak < 64 << 10, "peak RSS {peak} KiB");
    assert!(
        !stderr.lock().unwrap().contains("dropped"),
        "{}",
        stderr.lock().unwrap()
    );
}

/// A stdout nobody reads: after LOG_STDOUT_TIMEOUT lines are dropped, counted and reported,
/// and the proxy keeps serving at full speed.
#[test]
fn a_stuck_stdout_drops_lines_after_the_timeout_reports_them_and_traffic_goes_on() {
    let up = RawUpstream::start(ok_reply);
    let (mut child, port, stderr) = start_unread(up.port, &[("LOG_STDOUT_TIMEOUT", "500ms")]);
    let _unread = child.stdout.take().unwrap();
    let started = Instant::now();
    let (clients, per_client) = (4, 500);
    assert_eq!(load(port, clients, per_client), clients * per_client);
    // Waiting once per batch would take minutes; only the first wait is paid.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while !stderr.lock().unwrap().contains("LOG_STDOUT_TIMEOUT") {
        assert!(
            Instant::now() < deadline,
            "no drop report: {}",
            stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = stderr.lock().unwrap().clone();
    let dropped: usize = text
        .lines()
        .filter_map(|l| {
            l.split("cwproxy: dropped ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    assert!(dropped > 0 && dropped <= clients * per_client, "{text}");
}
