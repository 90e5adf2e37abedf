//! ACME end to end against `pebble` (the Let's Encrypt test CA, Debian package, installed by
//! `scripts/test`) on loopback: `pebble-challtestsrv` answers pebble's DNS queries with
//! 127.0.0.1, pebble validates TLS-ALPN-01 on proxyview's external TLS port, and a client that
//! trusts pebble's root gets a valid certificate for the registered route, nothing for an
//! unregistered SNI name; the certificate is kept in the state directory and renewed; an
//! unreachable directory is retried with backoff.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;

const T: Duration = Duration::from_secs(30);

async fn wait_port(port: u16) {
    let end = Instant::now() + T;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < end, "port {port} never opened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// pebble (directory at `https://127.0.0.1:<port>/dir`) validating TLS-ALPN-01 on `tls_port`.
struct Pebble {
    _procs: [Kill; 2],
    dir_url: String,
    mgmt: u16,
    ca: std::path::PathBuf,
}

async fn pebble(dir: &Path, tls_port: u16) -> Pebble {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (ca, key) = (dir.join("pebble.pem"), dir.join("pebble.key"));
    std::fs::write(&ca, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let (listen, mgmt, dns, chall) = (free_port(), free_port(), free_port(), free_port());
    let cfg = dir.join("pebble.json");
    std::fs::write(
        &cfg,
        serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": ca, "privateKey": key,
            "httpPort": free_port(), "tlsPort": tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
        }})
        .to_string(),
    )
    .unwrap();
    let challtestsrv = Kill(
        Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-management", &format!("127.0.0.1:{chall}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv (Debian package pebble)"),
    );
    let pebble = Kill(
        Command::new("pebble")
            .arg("-config")
            .arg(&cfg)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble (Debian package pebble)"),
    );
    wait_port(listen).await;
    wait_port(mgmt).await;
    Pebble {
        _procs: [pebble, challtestsrv],
        dir_url: format!("https://127.0.0.1:{listen}/dir"),
        mgmt,
        ca,
    }
}

impl Pebble {
    /// The root pebble issues under (made up at its start), from its management API.
    fn root(&self) -> CertificateDer<'static> {
        let out = Command::new("curl")
            .args(["-sf", "--cacert"])
            .arg(&self.ca)
            .arg(format!("https://127.0.0.1:{}/roots/0", self.mgmt))
            .output()
            .unwrap();
        assert!(out.status.success());
        CertificateDer::from_pem_slice(&out.stdout).unwrap()
    }
}

fn acme_yaml(p: &Pebble, port: u16, state: &Path, extra: &str) -> String {
    let ext = format!(
        "  tls:\n    acme:\n      directory: \"{}\"\n      stateDir: \"{}\"\n      caFile: \"{}\"\n      checkSecs: 0.3\n{extra}",
        p.dir_url,
        state.display(),
        p.ca.display()
    );
    server_yaml("127.0.0.1", 0, port, "", &ext, "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_for_registered_routes_from_pebble_kept_and_renewed() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("acme");
    let port = free_port();
    let p = pebble(dir.path(), port).await;
    let server = start_server(&acme_yaml(&p, port, &state, "")).await;
    let be = backend("b1").await;
    let agent = start_agent(&agent_yaml(
        "agent-1",
        server.internal,
        TOKEN_IN,
        &[("app.test", be)],
        "",
    ));
    assert!(agent.wait_log("tunnel up", T).await);
    assert!(
        server.proc.wait_log("ACME certificate issued", T).await,
        "{}",
        server.proc.stderr_text()
    );
    let c = client(&[&p.root()]);
    let first = peer_cert(&dial(server.external, &c, "app.test").await.unwrap());
    assert!(state.join("app.test.pem").exists() && state.join("account.json").exists());
    // An unregistered name gets no certificate (and no order): a clean alert, at once.
    let e = dial(server.external, &c, "evil.test").await.unwrap_err();
    assert!(!e.contains("hung"), "{e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = server.proc.stderr_text();
    assert!(!log.contains("evil.test"), "{log}");
    assert_eq!(log.matches("ACME certificate issued").count(), 1, "{log}");
    drop(server);

    // Restarted with a renewal margin longer than the certificate's life: the saved one is
    // served at once, then replaced by a new one.
    let server = start_server(&acme_yaml(
        &p,
        port,
        &state,
        "      renewBeforeDays: 100000\n",
    ))
    .await;
    let again = peer_cert(&dial(server.external, &c, "app.test").await.unwrap());
    assert_eq!(
        again, first,
        "the saved certificate is served after a restart"
    );
    let agent2 = start_agent(&agent_yaml(
        "agent-1",
        server.internal,
        TOKEN_IN,
        &[("app.test", be)],
        "",
    ));
    assert!(agent2.wait_log("tunnel up", T).await);
    assert!(server.proc.wait_log("ACME certificate issued", T).await);
    let end = Instant::now() + T;
    loop {
        let now = peer_cert(&dial(server.external, &c, "app.test").await.unwrap());
        if now != first {
            break;
        }
        assert!(Instant::now() < end, "never renewed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_or_garbage_directory_is_retried_with_backoff() {
    // A directory that refuses connections, and one that answers garbage.
    let closed = free_port();
    let junk = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let junk_port = junk.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt as _;
        while let Ok((mut tcp, _)) = junk.accept().await {
            let _ = tcp.write_all(b"\x15\x03garbage, not TLS\r\n\r\n").await;
        }
    });
    for port in [closed, junk_port] {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "host: \"127.0.0.1\"\ninternal:\n  port: 0\n  token: \"{TOKEN_IN}\"\nexternal:\n  port: 0\n  tls:\n    acme:\n      directory: \"https://127.0.0.1:{port}/dir\"\n      stateDir: \"{}\"\n      hosts: [\"app.test\"]\n      checkSecs: 0.2\n",
            dir.path().display()
        );
        let server = start_server(&yaml).await;
        let end = Instant::now() + T;
        while server
            .proc
            .stderr_text()
            .matches("ACME order failed")
            .count()
            < 3
        {
            assert!(Instant::now() < end, "{}", server.proc.stderr_text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = server.proc.stderr_text();
        assert!(
            log.contains("retry_in=200ms") && log.contains("retry_in=400ms"),
            "{log}"
        );
        // Still serving: the agents' port answers.
        let r = get(server.internal, "x", "/health").await.unwrap();
        assert_eq!(r.status(), http::StatusCode::OK);
    }
}
