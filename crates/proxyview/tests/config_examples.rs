//! The shipped example configs (Proxyview's own shapes and the full option set) load and validate.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use proxyview::config::{ClientConfig, RouteKind, ServerConfig};

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/proxyview")
        .join(name)
}

#[test]
fn proxyview_server_example_loads_unchanged() {
    let c = ServerConfig::load(&example("server.yaml")).unwrap();
    assert_eq!((c.internal_port, c.external_port), (8081, 8080));
    assert!(c
        .external_token
        .as_ref()
        .unwrap()
        .matches(b"xxxx-yyyy-xxxx-yyyy"));
    let allow = c.external_allow.as_ref().unwrap();
    assert!(allow.allows("173.19.8.2".parse().unwrap()));
    assert!(!allow.allows("173.19.8.3".parse().unwrap()));
    assert!(c.internal_allow.is_none());
    assert!(!c.access_log && !c.legacy_errors);
}

#[test]
fn proxyview_client_example_loads_unchanged() {
    let c = ClientConfig::load(&example("client.yaml")).unwrap();
    assert_eq!(c.client_id, "agent-1");
    assert_eq!(c.server.uri(), "ws://localhost-server:8081/connect");
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.routes[0].authority(), "localhost-sample:80");
    assert_eq!(c.routes[1].kind, RouteKind::Ip);
}

#[test]
fn full_examples_load() {
    let s = ServerConfig::load(&example("server-full.yaml")).unwrap();
    assert!(s.access_log);
    assert_eq!(s.agents.len(), 2);
    assert!(s
        .internal_allow
        .as_ref()
        .unwrap()
        .allows("fd00::5".parse().unwrap()));
    let c = ClientConfig::load(&example("client-full.yaml")).unwrap();
    assert!(c.server.tls);
    assert!(c.routes[1].preserve_host && !c.routes[0].preserve_host);
    assert_eq!(c.body_idle_timeout, std::time::Duration::from_secs(300));
}

#[test]
fn lhub_config_dir_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(example("server.yaml"), dir.path().join("application.yaml")).unwrap();
    // Only resolve_path reads the variable; an explicit path always wins.
    let explicit = proxyview::config::resolve_path(Some(&example("client.yaml"))).unwrap();
    assert!(explicit.ends_with("client.yaml"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_proxyview"))
        .args(["server", "--check"])
        .env("LHUB_CONFIG_DIR", dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn empty_whitelist_fails_at_load_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.yaml");
    std::fs::write(
        &p,
        "host: \"\"\ninternal:\n  port: 1\n  token: a\nexternal:\n  port: 2\n  token: b\n  whitelistedIps: []\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_proxyview"))
        .args(["server", "--check", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("external.whitelistedIps") && err.contains("empty list"),
        "{err}"
    );
}

#[test]
fn cluster_examples_load() {
    for i in 1..=3u16 {
        let s = ServerConfig::load(&example(&format!("cluster/node{i}.yaml"))).unwrap();
        let c = s.cluster.unwrap();
        assert_eq!(c.node_id, format!("node{i}"));
        assert_eq!(c.advertise, format!("127.0.0.1:{}", 9100 + i));
        assert_eq!(s.internal_port, 9100 + i);
        assert_eq!(c.registry, "redis://127.0.0.1:6379/0");
    }
    let a = ClientConfig::load(&example("cluster/agent.yaml")).unwrap();
    let urls: Vec<String> = a.servers.iter().map(|s| s.uri()).collect();
    assert_eq!(
        urls,
        [
            "ws://127.0.0.1:9101/connect",
            "ws://127.0.0.1:9102/connect",
            "ws://127.0.0.1:9103/connect"
        ]
    );
}
