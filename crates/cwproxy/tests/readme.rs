//! The README's cwproxy examples run as written — the quick start in inspector mode and the
//! normal-mode example, both in front of `examples/cwproxy/demo_app.py`, curl as the client — with
//! free ports substituted, and the lines the README shows checked against the real ones.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{free_port, Proxy};

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn readme() -> String {
    std::fs::read_to_string(root().join("README.md")).unwrap()
}

/// The README text from `heading` to the next heading of the same level.
fn section<'a>(readme: &'a str, heading: &str) -> &'a str {
    let start = readme.find(&format!("\n{heading}\n")).unwrap() + 1;
    let level = heading.split(' ').next().unwrap();
    let end = readme[start + heading.len()..]
        .find(&format!("\n{level} "))
        .map_or(readme.len(), |i| start + heading.len() + i);
    &readme[start..end]
}

/// The first ```sh block of `text`, line by line.
fn sh_block(text: &str) -> Vec<&str> {
    let start = text.find("```sh\n").unwrap() + 6;
    let len = text[start..].find("```").unwrap();
    text[start..start + len].lines().collect()
}

/// Each `"_q":"app METHOD path STATUS` the README shows (the latency is left out).
fn shown_queries(text: &str) -> Vec<String> {
    text.match_indices("{\"_q\":\"")
        .map(|(i, m)| {
            let rest = &text[i + m.len()..];
            let q = &rest[..rest.find('"').unwrap()];
            q.rsplit_once(' ').unwrap().0.to_owned()
        })
        .collect()
}

/// Runs a README `curl` line through the shell, printing only the status code.
fn curl(line: &str) -> String {
    let cmd = format!("{line} -s -o /dev/null -w '%{{http_code}}'");
    let out = Command::new("sh").arg("-c").arg(&cmd).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_query(proxy: &Proxy, prefix: &str) -> serde_json::Value {
    proxy.wait_line(|v| v["_q"].as_str().is_some_and(|q| q.starts_with(prefix)))
}

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn quick_start_in_inspector_mode() {
    let readme = readme();
    let quick = section(&readme, "## Quick start");
    let line = sh_block(quick)
        .into_iter()
        .find(|l| l.starts_with("cargo run -p cwproxy -- "))
        .unwrap();
    let app_port = free_port().to_string();
    let examples = root().join("examples").display().to_string();
    let argv: Vec<String> = line["cargo run -p cwproxy -- ".len()..]
        .split_whitespace()
        .map(|a| a.replace("8000", &app_port).replace("examples", &examples))
        .collect();
    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    // PROXY_PORT (default 8081) is the free port `Proxy` picks; the README shows APP_NAME=myhost.
    let mut proxy = Proxy::start(&[("APP_NAME", "myhost")], &args);

    let health = proxy.wait_line(|_| true);
    assert_eq!(health["_t"], "HEALTH", "the first line is the probe");
    assert_eq!(health["response"]["status"], 200, "{health}");
    assert_eq!(health["HealthStatus"], 1);
    assert_eq!(
        health["Endpoint"],
        format!("http://127.0.0.1:{app_port}/health")
    );

    let comment = quick
        .lines()
        .find(|l| l.contains("from another terminal:"))
        .unwrap();
    let call = comment.split_once("terminal:").unwrap().1.trim_start();
    let call = call[..call.find(" >/dev/null").unwrap()].replace("8081", &proxy.port.to_string());
    assert_eq!(curl(&call), "200", "{call}");
    let shown = shown_queries(quick);
    assert_eq!(shown, ["myhost GET / 200"]);
    let traffic = wait_query(&proxy, &shown[0]);
    assert_eq!(traffic["2XXStatusCode"], 1);

    proxy.signal(libc::SIGTERM);
    assert_eq!(proxy.wait_exit(Duration::from_secs(15)), Some(128 + 15));
}

#[test]
fn normal_mode_example_logs_a_2xx_post_and_a_healthy_probe() {
    let readme = readme();
    let cw = section(&readme, "## cwproxy");
    let block = sh_block(cw);
    assert_eq!(block.len(), 3, "{block:?}");
    let app_port = free_port().to_string();

    // Line 1: the demo app, in the background.
    let app_line = block[0].strip_suffix(" &").unwrap();
    let app_args: Vec<String> = app_line
        .split_whitespace()
        .map(|a| a.replace("18080", &app_port))
        .collect();
    let _app = Kill(
        Command::new(&app_args[0])
            .args(&app_args[1..])
            .current_dir(root())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", app_port.parse::<u16>().unwrap())).is_err() {
        assert!(Instant::now() < deadline, "the demo app did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Line 2: cwproxy with the variables as written (PROXY_PORT becomes the free port `Proxy` picks).
    let (vars, command) = block[1].split_once(" cargo run -p cwproxy").unwrap();
    assert_eq!(command, "");
    let env: Vec<(String, String)> = vars
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_owned(), v.replace("18080", &app_port))
        })
        .filter(|(k, v)| !(k == "PROXY_PORT" && v == "18081"))
        .collect();
    assert!(
        env.iter().all(|(k, _)| k != "HEALTH_URLS"),
        "no path hidden"
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let proxy = Proxy::start(&env, &[]);

    // Line 3: the POST, answered 200 by the demo app.
    let call = block[2].replace("18081", &proxy.port.to_string());
    assert_eq!(curl(&call), "200", "{call}");

    let health = proxy.wait_line(|v| v["_t"] == "HEALTH");
    assert_eq!(health["response"]["status"], 200, "{health}");
    assert_eq!(
        health["Endpoint"],
        format!("http://127.0.0.1:{app_port}/health")
    );
    let shown = shown_queries(cw);
    assert_eq!(shown, ["demo POST /hello 200"]);
    let traffic = wait_query(&proxy, &shown[0]);
    assert_eq!(traffic["2XXStatusCode"], 1);
    assert_eq!(traffic["request"]["body"]["demo"], true);
    assert_eq!(traffic["response"]["body"]["query"]["name"], "pmh");
}
