//! End-to-end: heartbeat, per-agent tokens and route reservation, trusted proxies, wss://.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::StatusCode;
use proxyview::http_util::full;

const T: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_agent_is_declared_dead_by_heartbeat_then_comes_back() {
    let hb = "  heartbeatIntervalSecs: 0.3\n  heartbeatTimeoutSecs: 0.5\n";
    let yaml = server_yaml("127.0.0.1", 0, 0, hb, "", "");
    let (server, agent, _) = setup_from(backend("b1").await, &yaml, "", &[]).await;
    // A frozen process keeps its TCP connection open: only the heartbeat can notice.
    signal(agent.pid(), "-STOP");
    let t0 = Instant::now();
    let (s, body) = get_text(server.external, "route1", "/name").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "dead peer noticed after {:?}",
        t0.elapsed()
    );
    assert_eq!(
        get_text(server.external, "route1", "/name").await.0,
        StatusCode::NOT_FOUND
    );
    signal(agent.pid(), "-CONT");
    wait_route(server.external, "route1", T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_notices_a_frozen_server_by_heartbeat_and_reconnects() {
    let hb = "  heartbeatIntervalSecs: 0.3\n  heartbeatTimeoutSecs: 0.5\n";
    let yaml = server_yaml("127.0.0.1", 0, 0, hb, "", "");
    let (server, agent, _) = setup_from(backend("b1").await, &yaml, "", &[]).await;
    // The server learns the heartbeat from the HelloAck; a frozen server never answers PINGs.
    signal(server.proc.pid(), "-STOP");
    let noticed = agent.wait_log("reconnecting", Duration::from_secs(4)).await;
    signal(server.proc.pid(), "-CONT");
    assert!(noticed, "{}", agent.stderr_text());
    wait_route(server.external, "route1", T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_section_gives_per_agent_tokens_and_reserved_routes() {
    let be = backend("b1").await;
    let top =
        "agents:\n  - clientId: \"pay\"\n    token: \"pay-secret\"\n    routes: [\"payments\"]\n";
    let server = start_server(&server_yaml("127.0.0.1", 0, 0, "", "", top)).await;
    // The shared token cannot impersonate an agent that has its own token.
    let mut fake = start_agent(&agent_yaml(
        "pay",
        server.internal,
        TOKEN_IN,
        &[("payments", be)],
        "",
    ));
    assert!(fake.wait_exit(T).is_some_and(|s| !s.success()));
    assert!(fake.stderr_text().contains("401"), "{}", fake.stderr_text());
    // Another clientId with the shared token cannot claim the reserved route.
    let intruder = start_agent(&agent_yaml(
        "intruder",
        server.internal,
        TOKEN_IN,
        &[("payments", be), ("other", be)],
        "",
    ));
    assert!(
        intruder.wait_log("reserved", T).await,
        "{}",
        intruder.stderr_text()
    );
    wait_route(server.external, "other", T).await;
    assert_eq!(
        get_text(server.external, "payments", "/name").await.0,
        StatusCode::NOT_FOUND
    );
    // The owner with its own token gets it.
    let _pay = start_agent(&agent_yaml(
        "pay",
        server.internal,
        "pay-secret",
        &[("payments", be)],
        "",
    ));
    wait_route(server.external, "payments", T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_kept_only_from_trusted_proxies() {
    let be = backend("b1").await;
    for (extra, want) in [
        ("", "127.0.0.1"),
        (
            "  trustedProxies: [\"127.0.0.0/8\"]\n",
            "6.6.6.6, 127.0.0.1",
        ),
    ] {
        let server = start_server(&server_yaml("127.0.0.1", 0, 0, "", extra, "")).await;
        let _agent = start_agent(&agent_yaml(
            "agent-1",
            server.internal,
            TOKEN_IN,
            &[("route1", be)],
            "",
        ));
        wait_route(server.external, "route1", T).await;
        let mut r = request("GET", "route1", "/headers", full(Bytes::new()));
        r.headers_mut()
            .insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        let seen: serde_json::Value =
            serde_json::from_slice(&body_bytes(send(server.external, r).await.unwrap()).await)
                .unwrap();
        assert_eq!(seen["x-forwarded-for"], want, "{extra}");
    }
}

#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_dials_wss_with_rustls() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::sync::Arc;

    let fixtures = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(fixtures.join("server.pem"))
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
    let key = PrivateKeyDer::from_pem_file(fixtures.join("server.key")).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    let be = backend("b1").await;
    let server = start_server(&server_yaml("127.0.0.1", 0, 0, "", "", "")).await;
    // A TLS terminator in front of the internal port, as a load balancer would be.
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_port = front.local_addr().unwrap().port();
    let internal = server.internal;
    tokio::spawn(async move {
        loop {
            let (tcp, _) = front.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut up = tokio::net::TcpStream::connect(internal).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                }
            });
        }
    });
    let yaml = format!(
        "clientId: \"agent-1\"\nproxyview:\n  url: \"wss://localhost:{front_port}\"\n  token: \"{TOKEN_IN}\"\n  caFile: \"{}\"\nroutes:\n  - name: \"route1\"\n    value: \"127.0.0.1\"\n    port: {}\n",
        fixtures.join("ca.pem").display(),
        be.port()
    );
    let _agent = start_agent(&yaml);
    wait_route(server.external, "route1", T).await;

    // Without the CA the certificate is refused (and retried, not fatal).
    let yaml_no_ca = format!(
        "clientId: \"agent-2\"\nproxyview:\n  url: \"wss://localhost:{front_port}\"\n  token: \"{TOKEN_IN}\"\nroutes:\n  - name: \"route2\"\n    value: \"127.0.0.1\"\n    port: {}\n",
        be.port()
    );
    let untrusting = start_agent(&yaml_no_ca);
    assert!(
        untrusting
            .wait_log("TLS handshake with localhost failed", T)
            .await,
        "{}",
        untrusting.stderr_text()
    );
}
