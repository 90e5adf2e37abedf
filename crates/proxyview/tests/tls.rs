//! TLS on the server's ports, end to end with the real binary: SNI selection with a default,
//! ALPN, the tunnel over TLS, reload on file change and on SIGHUP with connections kept, bad
//! files at start and at reload, bad handshakes, the redirect port, and agents over the
//! internal port's TLS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(15);

/// A self-signed certificate for `names`, written as `<stem>.pem` / `<stem>.key` in `dir`.
fn cert(dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf, CertificateDer<'static>) {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names).unwrap();
    write_pair(dir, stem, &ck.cert, &ck.signing_key)
}

fn write_pair(
    dir: &Path,
    stem: &str,
    c: &rcgen::Certificate,
    k: &rcgen::KeyPair,
) -> (PathBuf, PathBuf, CertificateDer<'static>) {
    let (cp, kp) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    );
    // Written aside and renamed, as a certificate manager does: a reader never sees half a file.
    let tmp = dir.join(format!("{stem}.tmp"));
    std::fs::write(&tmp, k.serialize_pem()).unwrap();
    std::fs::rename(&tmp, &kp).unwrap();
    std::fs::write(&tmp, c.pem()).unwrap();
    std::fs::rename(&tmp, &cp).unwrap();
    (cp, kp, c.der().clone())
}

/// One keep-alive GET on an open TLS connection; returns status and body.
async fn get_on(s: &mut Tls, host: &str, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nauth-token: {TOKEN_OUT}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(T, s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(i) = text.find("\r\n\r\n") {
            let len: usize = text[..i]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("content-length");
            if buf.len() >= i + 4 + len {
                let status = text[9..12].parse().unwrap();
                return (status, text[i + 4..i + 4 + len].to_string());
            }
        }
    }
}

/// A server from `yaml` (its external port may be TLS) and an agent serving `route1` from a new
/// backend `b1`, once the agent's tunnel is up.
async fn tls_setup(yaml: &str) -> (Server, Proc) {
    let server = start_server(yaml).await;
    let be = backend("b1").await;
    let agent = start_agent(&agent_yaml(
        "agent-1",
        server.internal,
        TOKEN_IN,
        &[("route1", be)],
        "",
    ));
    assert!(
        agent.wait_log("tunnel up", T).await,
        "{}",
        agent.stderr_text()
    );
    (server, agent)
}

fn tls_yaml(certs: &[(&Path, &Path)], extra: &str) -> String {
    let mut s = String::from("  tls:\n    certificates:\n");
    for (c, k) in certs {
        s.push_str(&format!(
            "      - cert: \"{}\"\n        key: \"{}\"\n",
            c.display(),
            k.display()
        ));
    }
    s + extra
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_requests_tunnel_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (ac, ak, a) = cert(dir.path(), "a", &["a.test", "route1"]);
    let (bc, bk, b) = cert(dir.path(), "b", &["b.test", "*.wild.test"]);
    let tls = tls_yaml(&[(&ac, &ak), (&bc, &bk)], "    redirectPort: 0\n");
    let yaml = server_yaml("127.0.0.1", 0, 0, "", &tls, "");
    let (server, _agent) = tls_setup(&yaml).await;
    let ext = server.external;
    let c = client(&[&a, &b]);
    assert_eq!(peer_cert(&dial(ext, &c, "b.test").await.unwrap()), b);
    assert_eq!(peer_cert(&dial(ext, &c, "x.wild.test").await.unwrap()), b);
    assert_eq!(peer_cert(&dial(ext, &c, "A.test").await.unwrap()), a);
    // Unknown SNI: the default (first) certificate, so a checking client refuses the name
    // rather than the issuer, at once.
    let e = dial(ext, &c, "unknown.test").await.unwrap_err();
    assert!(e.contains("not valid for name"), "{e}");

    let mut s = dial(ext, &c, "route1").await.unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, body) = get_on(&mut s, "route1", "/headers").await;
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["x-forwarded-proto"], "https", "{seen}");
    assert_eq!(get_on(&mut s, "route1", "/name").await, (200, "b1".into()));

    // The plain redirect port: every request → 308 to https on the external port.
    let redirect = server
        .proc
        .stderr_text()
        .split_whitespace()
        .find_map(|w| w.strip_prefix("redirect=").map(|a| a.parse().unwrap()))
        .expect("redirect= in the listening line");
    let mut tcp: TcpStream = TcpStream::connect::<std::net::SocketAddr>(redirect)
        .await
        .unwrap();
    tcp.write_all(b"GET /a/b?c=1 HTTP/1.1\r\nHost: Route1:80\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(T, tcp.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 308"), "{out}");
    let want = format!("location: https://route1:{}/a/b?c=1\r\n", ext.port());
    assert!(out.contains(&want), "{out}");

    // Bad input: garbage, an oversized ClientHello, a silent client. Each is let go without
    // a hang, and the port keeps serving.
    let mut g = TcpStream::connect(ext).await.unwrap();
    g.write_all(b"GET / HTTP/1.1\r\nHost: route1\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), g.read_to_end(&mut sink))
        .await
        .expect("garbage is answered and closed at once");
    let mut big = TcpStream::connect(ext).await.unwrap();
    // A handshake record announcing 64 KiB (the limit is 16 KiB plus overhead).
    let mut hello = vec![0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0x00, 0xff, 0xfb];
    hello.resize(4096, 0x41);
    let _ = big.write_all(&hello).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), big.read_to_end(&mut sink))
        .await
        .expect("an oversized ClientHello is refused at once");
    assert_eq!(get_on(&mut s, "route1", "/name").await, (200, "b1".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_on_change_and_sighup_keeping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (ac, ak, a1) = cert(dir.path(), "a", &["route1"]);
    let tls = tls_yaml(&[(&ac, &ak)], "    reloadSecs: 0.2\n");
    let yaml = server_yaml("127.0.0.1", 0, 0, "", &tls, "  headerReadTimeoutSecs: 1\n");
    let (server, _agent) = tls_setup(&yaml).await;
    let ext = server.external;

    let (_, _, a2) = cert(dir.path(), "a", &["route1"]);
    let c = client(&[&a1, &a2]);
    let mut old = dial(ext, &c, "route1").await.unwrap();
    let served = peer_cert(&old);
    assert!(served == a1 || served == a2);
    let t0 = Instant::now();
    loop {
        if peer_cert(&dial(ext, &c, "route1").await.unwrap()) == a2 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "never reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.proc.wait_log("TLS certificates reloaded", T).await);
    // A connection from before the reload keeps working.
    assert_eq!(
        get_on(&mut old, "route1", "/name").await,
        (200, "b1".into())
    );

    // A broken file at reload: logged, and the current certificate stays.
    std::fs::write(&ac, "not a certificate").unwrap();
    assert!(
        server
            .proc
            .wait_log("TLS certificate reload failed", T)
            .await,
        "{}",
        server.proc.stderr_text()
    );
    assert!(server
        .proc
        .stderr_text()
        .contains(&ac.display().to_string()));
    assert_eq!(peer_cert(&dial(ext, &c, "route1").await.unwrap()), a2);

    // A half-open client (TCP, no ClientHello) is let go after headerReadTimeoutSecs.
    let mut silent = TcpStream::connect(ext).await.unwrap();
    let t0 = Instant::now();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut sink))
        .await
        .expect("a silent client is closed");
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );

    // SIGHUP reloads at once, even with a long poll interval.
    let dir2 = tempfile::tempdir().unwrap();
    let (bc, bk, b1) = cert(dir2.path(), "b", &["route1"]);
    let tls = tls_yaml(&[(&bc, &bk)], "    reloadSecs: 3600\n");
    let yaml = server_yaml("127.0.0.1", 0, 0, "", &tls, "");
    let hup = start_server(&yaml).await;
    let c = client(&[&b1]);
    assert_eq!(
        peer_cert(&dial(hup.external, &c, "route1").await.unwrap()),
        b1
    );
    let (_, _, b2) = cert(dir2.path(), "b", &["route1"]);
    let c = client(&[&b1, &b2]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        peer_cert(&dial(hup.external, &c, "route1").await.unwrap()),
        b1,
        "no poll"
    );
    let st = std::process::Command::new("kill")
        .args(["-HUP", &hup.proc.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(hup.proc.wait_log("TLS certificates reloaded", T).await);
    assert_eq!(
        peer_cert(&dial(hup.external, &c, "route1").await.unwrap()),
        b2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificate_files_at_start_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (ac, _ak, _) = cert(dir.path(), "a", &["a.test"]);
    let (_bc, bk, _) = cert(dir.path(), "b", &["b.test"]);
    let mut params = rcgen::CertificateParams::new(vec!["old.test".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let kp = rcgen::KeyPair::generate().unwrap();
    let expired = params.self_signed(&kp).unwrap();
    let (ec, ek, _) = write_pair(dir.path(), "expired", &expired, &kp);
    let missing = dir.path().join("missing.pem");
    for ((c, k), want) in [
        (
            (&ac, &bk),
            format!("key {}: the key does not belong", bk.display()),
        ),
        (
            (&ec, &ek),
            format!("cert {}: the certificate expired", ec.display()),
        ),
        (
            (&missing, &bk),
            format!("cert {}: cannot read", missing.display()),
        ),
    ] {
        let yaml = server_yaml("127.0.0.1", 0, 0, "", &tls_yaml(&[(c, k)], ""), "");
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("s.yaml");
        std::fs::write(&cfg, yaml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_proxyview"))
            .args(["server", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains("external.tls.certificates[0]."), "{err}");
        assert!(err.contains(&want), "want {want:?} in {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_dial_the_internal_port_over_tls() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let tls = format!(
        "  tls:\n    certificates:\n      - cert: \"{}\"\n        key: \"{}\"\n",
        fixtures.join("server.pem").display(),
        fixtures.join("server.key").display()
    );
    let server = start_server(&server_yaml("127.0.0.1", 0, 0, &tls, "", "")).await;
    let be = backend("b1").await;
    let yaml = format!(
        "clientId: \"agent-1\"\nproxyview:\n  url: \"wss://localhost:{}\"\n  token: \"{TOKEN_IN}\"\n  caFile: \"{}\"\nroutes:\n  - name: \"route1\"\n    value: \"127.0.0.1\"\n    port: {}\n",
        server.internal.port(),
        fixtures.join("ca.pem").display(),
        be.port()
    );
    let _agent = start_agent(&yaml);
    wait_route(server.external, "route1", T).await;
    assert_eq!(
        get_text(server.external, "route1", "/name").await,
        (StatusCode::OK, "b1".to_string())
    );
}
