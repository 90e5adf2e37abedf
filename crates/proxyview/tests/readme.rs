//! The README's worked example, run as written (python's http.server as the local service, curl as
//! the caller), with free ports substituted for 8080/8081/9000.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn heredoc<'a>(readme: &'a str, file: &str) -> &'a str {
    let start = readme.find(&format!("cat > {file} <<'EOF'\n")).unwrap() + file.len() + 14;
    let len = readme[start..].find("\nEOF\n").unwrap() + 1;
    &readme[start..start + len]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_worked_example() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let (internal, external, service) = (free_port(), free_port(), free_port());
    let ports = |s: &str| {
        s.replace("8081", &internal.to_string())
            .replace("8080", &external.to_string())
            .replace("9000", &service.to_string())
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hello from the service\n").unwrap();
    let _svc = Kill(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &service.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let server = start_server(&ports(heredoc(&readme, "server.yaml"))).await;
    assert_eq!(server.external.port(), external);
    let _agent = start_agent(&ports(heredoc(&readme, "agent.yaml")));

    let curls: Vec<String> = readme
        .lines()
        .filter(|l| l.starts_with("curl "))
        .map(ports)
        .collect();
    assert!(curls.len() >= 5, "{curls:?}");
    let run = |line: &str| run_in(dir.path(), line);
    let end = std::time::Instant::now() + Duration::from_secs(15);
    while !run(&curls[0]).ends_with("200") {
        assert!(
            std::time::Instant::now() < end,
            "route never came up: {}",
            run(&curls[0])
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for c in &curls[..2] {
        let out = run(c);
        assert!(
            out.contains("hello.txt") && out.ends_with("200"),
            "{c}: {out}"
        );
    }
    let out = run(&curls[2]);
    assert!(
        out.contains("no agent serves host \"nope\"") && out.ends_with("404"),
        "{out}"
    );

    // The TLS example: its openssl line, its server config (certificate paths made absolute),
    // the same agent, and its two curl lines.
    let tls_port = free_port();
    let tls_ports = |s: &str| ports(&s.replace("8443", &tls_port.to_string()));
    let openssl = readme
        .split("```sh\nopenssl ")
        .nth(1)
        .and_then(|r| r.split("\n\n").next())
        .unwrap()
        .replace("\\\n", " ");
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!("openssl {openssl}"))
        .current_dir(dir.path())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl {openssl}");
    let yaml = tls_ports(heredoc(&readme, "server-tls.yaml"))
        .replace("\"files.", &format!("\"{}/files.", dir.path().display()));
    drop(_agent);
    drop(server);
    let tls_server = start_server(&yaml).await;
    assert_eq!(tls_server.external.port(), tls_port);
    let _agent = start_agent(&ports(heredoc(&readme, "agent.yaml")));
    let https = tls_ports(&curls[3]);
    let end = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let out = run(&https);
        if out.contains("hello.txt") && out.ends_with("200") {
            break;
        }
        assert!(std::time::Instant::now() < end, "{https}: {out}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = run(&tls_ports(&curls[4]));
    assert!(out.starts_with("HTTP/1.1 308"), "{out}");
    assert!(
        out.contains(&format!("location: https://files:{tls_port}/some/path")),
        "{out}"
    );
}

/// Runs one README curl line in `dir` (its `# comment` cut off) and returns the body and the
/// status code on the last line.
fn run_in(dir: &std::path::Path, line: &str) -> String {
    let cmd =
        line.split("   #")
            .next()
            .unwrap()
            .replacen("curl ", "curl -s -w '\\n%{http_code}' ", 1);
    let out = Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .current_dir(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
