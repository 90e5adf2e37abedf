//! A proxyview cluster on a real `redis-server` (started here on a loopback port, no
//! persistence, killed on drop) with real server and agent processes. One cluster is shared by
//! the checks of a test where they do not disturb each other.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const SECRET: &str = "cluster-secret-0123456789";
const T: Duration = Duration::from_secs(10);

/// `redis-server` on a loopback port, killed (and reaped) on drop.
struct Redis {
    port: u16,
    proc: Option<Kill>,
}

impl Redis {
    async fn start() -> Self {
        let mut r = Self {
            port: free_port(),
            proc: None,
        };
        r.restart().await;
        r
    }

    /// Starts it again on the same port (empty: no persistence).
    async fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) must be installed");
        self.proc = Some(Kill(child));
        let end = Instant::now() + T;
        while TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(Instant::now() < end, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stop(&mut self) {
        self.proc = None;
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

/// A cluster node: its config says where the others reach it, so its internal port is chosen
/// up front.
async fn node(redis: &Redis, id: &str) -> Server {
    let internal = free_port();
    let top = format!(
        "cluster:\n  registry: \"{}\"\n  advertise: \"127.0.0.1:{internal}\"\n  secret: \"{SECRET}\"\n  nodeId: \"{id}\"\n  heartbeatSecs: 0.3\n",
        redis.url()
    );
    start_server(&server_yaml("127.0.0.1", internal, 0, "", "", &top)).await
}

/// An agent of `client` serving `route` from `be`, dialling `nodes` in turn.
fn agent(client: &str, route: &str, be: SocketAddr, nodes: &[&Server]) -> Proc {
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| format!("\"{}\"", n.internal))
        .collect();
    let yaml = format!(
        "clientId: \"{client}\"\nproxyview:\n  urls: [{}]\n  token: \"{TOKEN_IN}\"\nroutes:\n  - name: \"{route}\"\n    value: \"{}\"\n    port: {}\n    type: \"ip\"\n",
        urls.join(", "),
        be.ip(),
        be.port()
    );
    start_agent(&yaml)
}

/// Waits until `host` answers `/name` with `want` on `node`; returns how long that took.
async fn wait_body(node: &Server, host: &str, want: &str, within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let last = match get(node.external, host, "/name").await {
            Ok(r) => {
                let s = r.status();
                let b = String::from_utf8_lossy(&body_bytes(r).await).into_owned();
                if s == StatusCode::OK && b == want {
                    return t0.elapsed();
                }
                format!("{s} {b}")
            }
            Err(e) => e,
        };
        assert!(
            t0.elapsed() < within,
            "{host} via {} never answered {want:?} (last: {last})",
            node.external
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn websocket_echo(node: &Server, host: &str) {
    let mut ws = websocket(node.external, host).await;
    echo_texts(&mut ws, 5, T).await;
}

/// A raw peer-link handshake with `bearer`; returns the status line.
async fn peer_handshake(node: &Server, bearer: &str) -> String {
    let mut tcp = TcpStream::connect(node.internal).await.unwrap();
    let req = format!(
        "GET /cluster/peer HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nauthorization: Bearer {bearer}\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(T, tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serve_every_host_forward_streams_and_fail_over() {
    let redis = Redis::start().await;
    let (n1, n2, n3) = tokio::join!(node(&redis, "n1"), node(&redis, "n2"), node(&redis, "n3"));
    let (ba, bb) = (backend("alpha").await, backend("beta").await);
    let _a = agent("agent-a", "alpha", ba, &[&n1]);
    let _b = agent("agent-b", "beta", bb, &[&n2, &n3]);

    // Every host from every node.
    for n in [&n1, &n2, &n3] {
        wait_body(n, "alpha", "alpha", T).await;
        wait_body(n, "beta", "beta", T).await;
    }
    let (s, body) = get_text(n3.external, "nobody", "/name").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");

    // Streaming both ways and a WebSocket, across nodes (n3 has no agent).
    let n = 8 * 1024 * 1024u64;
    let r = send(
        n3.external,
        request("POST", "alpha", "/count", pattern_body(n)),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body_bytes(r).await, format!("{n} true").as_bytes());
    let r = get(n3.external, "beta", &format!("/bytes/{n}"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(check_pattern(r.into_body()).await, n);
    websocket_echo(&n3, "alpha").await;
    websocket_echo(&n1, "beta").await;

    // A peer without the cluster secret is refused; with it, it is let in.
    assert!(peer_handshake(&n1, "wrong-secret-0123456789")
        .await
        .contains(" 401 "));
    assert!(peer_handshake(&n1, SECRET).await.contains(" 101 "));

    // The operator status shows the node, its peers and the registry's health.
    let status = {
        let r = send(
            n1.internal,
            http::Request::builder()
                .uri("/api/status")
                .header("host", "x")
                .header("authorization", format!("Bearer {TOKEN_IN}"))
                .body(proxyview::http_util::empty())
                .unwrap(),
        )
        .await
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body_bytes(r).await).unwrap();
        v["cluster"].clone()
    };
    assert_eq!(status["node"], "n1", "{status}");
    assert_eq!(status["registryHealthy"], true, "{status}");
    let peers: Vec<&str> = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["node"].as_str().unwrap())
        .collect();
    assert_eq!(peers, ["n2", "n3"], "{status}");

    // Two clientIds racing for one route on two nodes: exactly one wins, everywhere.
    let (bx, by) = (backend("x").await, backend("y").await);
    let x = agent("agent-x", "race", bx, &[&n1]);
    let y = agent("agent-y", "race", by, &[&n3]);
    let start = Instant::now();
    let winner = loop {
        if let Ok(r) = get(n2.external, "race", "/name").await {
            if r.status() == StatusCode::OK {
                break String::from_utf8_lossy(&body_bytes(r).await).into_owned();
            }
        }
        assert!(start.elapsed() < T, "race never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    for n in [&n1, &n2, &n3] {
        for _ in 0..3 {
            let (s, b) = get_text(n.external, "race", "/name").await;
            assert_eq!((s, b.as_str()), (StatusCode::OK, winner.as_str()));
        }
    }
    let loser = if winner == "x" { &y } else { &x };
    assert!(
        loser
            .wait_log("already served by clientId", Duration::from_secs(2))
            .await,
        "the loser was not told: {}",
        loser.stderr_text()
    );
    drop((x, y));

    // A node cut off (SIGSTOP) past its lease: another clientId may take its route elsewhere;
    // when the node is back it withdraws that route, so the route never has two owners, and
    // claims its other routes again.
    let (bp1, bp2) = (backend("p1").await, backend("p2").await);
    let p1 = agent("agent-p1", "part", bp1, &[&n1]);
    wait_body(&n2, "part", "p1", T).await;
    signal(n1.proc.pid(), "-STOP");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let p2 = agent("agent-p2", "part", bp2, &[&n3]);
    let p2_took = wait_body(&n2, "part", "p2", T).await;
    signal(n1.proc.pid(), "-CONT");
    assert!(
        n1.proc
            .wait_log("route withdrawn", Duration::from_secs(3))
            .await,
        "{}",
        n1.proc.stderr_text()
    );
    for n in [&n1, &n2, &n3] {
        // n1's peer links come back within a heartbeat or so (502 meanwhile, never p1).
        let t0 = Instant::now();
        loop {
            let (s, b) = get_text(n.external, "part", "/name").await;
            assert_ne!(
                b, "p1",
                "two owners: the withdrawn route still served via {}",
                n.external
            );
            if s == StatusCode::OK && b == "p2" {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(3),
                "{s} {b} via {}",
                n.external
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for _ in 0..3 {
            let (s, b) = get_text(n.external, "part", "/name").await;
            assert_eq!(
                (s, b.as_str()),
                (StatusCode::OK, "p2"),
                "via {}",
                n.external
            );
        }
        wait_body(n, "alpha", "alpha", T).await;
    }
    eprintln!("the other clientId served the route {p2_took:?} after its agent started");
    drop((p1, p2));

    // The agent of beta moves from n2 to n3: the host follows within 1 s of its registration.
    drop(_b);
    let bb2 = backend("beta-moved").await;
    let b2 = agent("agent-b", "beta", bb2, &[&n3]);
    assert!(b2.wait_log("tunnel up", T).await, "{}", b2.stderr_text());
    let followed = wait_body(&n1, "beta", "beta-moved", Duration::from_secs(1)).await;
    eprintln!("host followed the agent in {followed:?}");

    // kill -9 of the node holding alpha's agent: served again via another node within 5 s.
    drop(_a);
    let a2 = agent("agent-a", "alpha", ba, &[&n2, &n3]);
    let bs = backend("solo").await;
    let solo = agent("agent-s", "solo", bs, &[&n2]);
    wait_body(&n1, "alpha", "alpha", T).await;
    wait_body(&n1, "solo", "solo", T).await;
    let mut n2 = n2;
    let killed = Instant::now();
    n2.proc.kill();
    // A host whose only agent was on the dead node: 502 (owner gone) at once, 404 once the
    // node's lease lapsed and its routes were dropped.
    let (s, body) = get_text(n1.external, "solo", "/name").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{body}");
    wait_body(&n1, "alpha", "alpha", Duration::from_secs(5)).await;
    eprintln!(
        "served again {:?} after kill -9 of its node",
        killed.elapsed()
    );
    let t0 = Instant::now();
    while get_text(n1.external, "solo", "/name").await.0 != StatusCode::NOT_FOUND {
        assert!(t0.elapsed() < Duration::from_secs(3), "solo never dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(solo);

    // Redis stops and comes back (empty) while traffic flows: every node keeps serving its own
    // and its cached routes, then registers everything again.
    let mut redis = redis;
    redis.stop();
    for _ in 0..10 {
        for n in [&n1, &n3] {
            for (h, want) in [("alpha", "alpha"), ("beta", "beta-moved")] {
                let (s, b) = get_text(n.external, h, "/name").await;
                assert_eq!(
                    (s, b.as_str()),
                    (StatusCode::OK, want),
                    "{h} via {}",
                    n.external
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        n1.proc
            .wait_log("cluster registry unreachable", Duration::from_secs(3))
            .await
    );
    redis.restart().await;
    assert!(
        n1.proc
            .wait_log("cluster registry reachable again", Duration::from_secs(5))
            .await,
        "{}",
        n1.proc.stderr_text()
    );
    let bg = backend("gamma").await;
    let _g = agent("agent-g", "gamma", bg, &[&n1]);
    wait_body(&n3, "gamma", "gamma", Duration::from_secs(5)).await;
    wait_body(&n3, "alpha", "alpha", T).await;
    let unreachable = n1
        .proc
        .stderr_text()
        .matches("registry unreachable")
        .count();
    assert_eq!(unreachable, 1, "the outage is logged once");
    drop(a2);
    drop(b2);
}

/// The README's cluster example: the three node configs and the agent config of
/// `examples/proxyview/cluster/` as shipped, with free ports substituted for the fixed ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_cluster_example_runs_as_written() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/proxyview/cluster"
    );
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(readme.contains("examples/proxyview/cluster/node$i.yaml"));
    assert!(readme.contains("examples/proxyview/cluster/agent.yaml"));
    let redis = Redis::start().await;
    let be = backend("app").await;
    let mut map: Vec<(String, String)> = vec![
        ("127.0.0.1:6379".into(), format!("127.0.0.1:{}", redis.port)),
        ("port: 8083".into(), format!("port: {}", be.port())),
        ("caller-token-change-me".into(), TOKEN_OUT.into()),
    ];
    for i in 1..=3 {
        map.push((format!("910{i}"), free_port().to_string()));
        map.push((format!("920{i}"), free_port().to_string()));
    }
    let load = |name: &str| {
        let mut text = std::fs::read_to_string(format!("{dir}/{name}")).unwrap();
        for (from, to) in &map {
            text = text.replace(from.as_str(), to);
        }
        text
    };
    let mut nodes = Vec::new();
    for i in 1..=3 {
        nodes.push(start_server(&load(&format!("node{i}.yaml"))).await);
    }
    let _agent = start_agent(&load("agent.yaml"));
    for n in &nodes {
        wait_body(n, "app", "app", T).await;
    }
    // `--check` names this node and the live ones.
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cfg.path(), load("node1.yaml")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_proxyview"))
        .args(["server", "--check", "--config"])
        .arg(cfg.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("cluster node \"node1\""), "{text}");
    for n in ["node1", "node2", "node3"] {
        assert!(text.contains(&format!("live node \"{n}\"")), "{text}");
    }
    drop(redis);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_proxyview"))
        .args(["server", "--check", "--config"])
        .arg(cfg.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("cluster.registry"),
        "{text}"
    );
}
