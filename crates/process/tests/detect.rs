//! Port discovery over real process trees: direct, wrapped, launched-and-orphaned, several ports, IPv6.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use process::{listening_ports, wait_for_listen_port, DetectError, DetectOptions, ExitStatus};

fn opts() -> DetectOptions {
    DetectOptions {
        timeout: Duration::from_secs(15),
        ..DetectOptions::default()
    }
}

fn v4(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test]
async fn child_listening_directly() {
    let mut child = spawn_piped("python3", &["-c", LISTEN_PY, "127.0.0.1"]);
    let ports = announced_ports(&mut child).await;
    let addr = wait_for_listen_port(&mut child, &opts()).await.unwrap();
    assert_eq!(addr, v4(ports[0]));
    let found = listening_ports(child.pid()).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].pid, child.pid());
    child.stop(Duration::from_secs(2)).await.unwrap();
    assert_eq!(group_gone(child.pid()).await, Vec::<u32>::new());
}

#[tokio::test]
async fn child_listening_through_sh_c() {
    // `; exit $?` keeps sh from exec'ing python, so the listener really is a grandchild.
    let mut child = spawn_piped("sh", &["-c", r#"python3 -c "$LISTEN_PY" 0.0.0.0; exit $?"#]);
    let ports = announced_ports(&mut child).await;
    let addr = wait_for_listen_port(&mut child, &opts()).await.unwrap();
    assert_eq!(addr, v4(ports[0]), "0.0.0.0 maps to 127.0.0.1");
    let found = listening_ports(child.pid()).unwrap();
    assert_eq!(found.len(), 1);
    assert_ne!(
        found[0].pid,
        child.pid(),
        "listener is the python grandchild, not sh"
    );
    assert_eq!(ppid_of(found[0].pid), Some(child.pid()));
    child.stop(Duration::from_secs(2)).await.unwrap();
    assert_eq!(group_gone(child.pid()).await, Vec::<u32>::new());
}

#[tokio::test]
async fn launcher_that_forks_and_exits() {
    // The direct child exits 0 right away; the server is re-parented away from it but stays in its group.
    let mut child = spawn_piped(
        "sh",
        &["-c", r#"python3 -c "$LISTEN_PY" 127.0.0.1 & exit 0"#],
    );
    let ports = announced_ports(&mut child).await;
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, ExitStatus::Code(0));
    let addr = wait_for_listen_port(&mut child, &opts()).await.unwrap();
    assert_eq!(addr, v4(ports[0]));
    let found = listening_ports(child.pid()).unwrap();
    assert_ne!(
        ppid_of(found[0].pid),
        Some(child.pid()),
        "server was re-parented"
    );
    child.stop(Duration::from_secs(2)).await.unwrap();
    assert_eq!(
        group_gone(child.pid()).await,
        Vec::<u32>::new(),
        "orphaned server killed by stop"
    );
}

#[tokio::test]
async fn intermediate_launcher_exits_while_child_lives() {
    // Like `npm start` -> helper that backgrounds the server and exits: the server's parent chain is broken.
    let mut child = spawn_piped(
        "sh",
        &[
            "-c",
            r#"sh -c 'python3 -c "$LISTEN_PY" 127.0.0.1 & exit 0'; sleep 30"#,
        ],
    );
    let ports = announced_ports(&mut child).await;
    let addr = wait_for_listen_port(&mut child, &opts()).await.unwrap();
    assert_eq!(addr, v4(ports[0]));
    child.stop(Duration::from_secs(2)).await.unwrap();
    assert_eq!(group_gone(child.pid()).await, Vec::<u32>::new());
}

#[tokio::test]
async fn two_ports_lowest_wins_and_exclude_port_is_honored() {
    let mut child = spawn_piped("python3", &["-c", LISTEN_PY, "127.0.0.1", "127.0.0.1"]);
    let mut ports = announced_ports(&mut child).await;
    ports.sort();
    let addr = wait_for_listen_port(&mut child, &opts()).await.unwrap();
    assert_eq!(addr, v4(ports[0]));
    let excluding = DetectOptions {
        exclude_port: Some(ports[0]),
        ..opts()
    };
    let addr = wait_for_listen_port(&mut child, &excluding).await.unwrap();
    assert_eq!(addr, v4(ports[1]));
    child.stop(Duration::from_secs(2)).await.unwrap();
}

#[tokio::test]
async fn excluded_port_alone_is_never_picked() {
    let mut child = spawn_piped("python3", &["-c", LISTEN_PY, "127.0.0.1"]);
    let ports = announced_ports(&mut child).await;
    let o = DetectOptions {
        exclude_port: Some(ports[0]),
        timeout: Duration::from_millis(400),
        ..DetectOptions::default()
    };
    let err = wait_for_listen_port(&mut child, &o).await.unwrap_err();
    assert!(matches!(err, DetectError::Timeout { .. }), "{err}");
    child.stop(Duration::from_secs(2)).await.unwrap();
}

#[tokio::test]
async fn ipv6_only_listener_gives_ipv6_address() {
    if !ipv6_loopback() {
        return;
    }
    let mut child = spawn_piped("python3", &["-c", LISTEN_PY, "::1"]);
    let ports = announced_ports(&mut child).await;
    let addr = wait_for_listen_port(&mut child, &opts()).await.unwrap();
    assert_eq!(
        addr,
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, ports[0]))
    );
    // And the address is really connectable.
    tokio::net::TcpStream::connect(addr).await.unwrap();
    child.stop(Duration::from_secs(2)).await.unwrap();
}

#[tokio::test]
async fn ipv6_wildcard_maps_to_ipv6_loopback() {
    if !ipv6_loopback() {
        return;
    }
    let mut child = spawn_piped("python3", &["-c", LISTEN_PY, "::"]);
    let ports = announced_ports(&mut child).await;
    let addr = wait_for_listen_port(&mut child, &opts()).await.unwrap();
    assert_eq!(
        addr,
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, ports[0]))
    );
    tokio::net::TcpStream::connect(addr).await.unwrap();
    let found = listening_ports(child.pid()).unwrap();
    assert!(
        found[0].addr.ip().is_unspecified() && found[0].addr.is_ipv6(),
        "{found:?}"
    );
    child.stop(Duration::from_secs(2)).await.unwrap();
}

#[tokio::test]
async fn never_listening_child_times_out_naming_command_and_timeout() {
    let mut child = spawn_piped("sleep", &["30"]);
    let o = DetectOptions {
        timeout: Duration::from_millis(300),
        ..DetectOptions::default()
    };
    let started = std::time::Instant::now();
    let err = wait_for_listen_port(&mut child, &o).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, DetectError::Timeout { .. }));
    let msg = err.to_string();
    assert!(msg.contains("\"sleep\"") && msg.contains("300ms"), "{msg}");
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    assert_eq!(
        child.try_wait().unwrap(),
        None,
        "timeout leaves the child running for the caller"
    );
    child.stop(Duration::from_secs(2)).await.unwrap();
}

#[tokio::test]
async fn child_exiting_before_listening_reports_its_status() {
    let mut child = spawn_piped("sh", &["-c", "sleep 0.2; exit 3"]);
    let err = wait_for_listen_port(&mut child, &opts()).await.unwrap_err();
    match &err {
        DetectError::ChildExited { status, .. } => assert_eq!(*status, ExitStatus::Code(3)),
        other => panic!("unexpected {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("\"sh\"") && msg.contains("exit code 3"),
        "{msg}"
    );
}

#[tokio::test]
async fn child_exiting_zero_with_nothing_left_fails() {
    let mut child = spawn_piped("true", &[]);
    let started = std::time::Instant::now();
    let err = wait_for_listen_port(&mut child, &opts()).await.unwrap_err();
    assert!(
        matches!(
            err,
            DetectError::ChildExited {
                status: ExitStatus::Code(0),
                ..
            }
        ),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn child_killed_before_listening_reports_the_signal() {
    let mut child = spawn_piped("sleep", &["30"]);
    child.signal(process::Signal::SIGKILL).unwrap();
    let err = wait_for_listen_port(&mut child, &opts()).await.unwrap_err();
    assert!(
        matches!(
            err,
            DetectError::ChildExited {
                status: ExitStatus::Signal(9),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("signal 9 (SIGKILL)"), "{err}");
}

#[tokio::test]
async fn port_watcher_sees_late_listener_and_close() {
    // Listens after 0.5 s, closes after another 0.5 s: each change of the LISTEN set triggers a walk.
    let script = "import socket,time\ntime.sleep(0.5)\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen()\nprint(s.getsockname()[1],flush=True)\ntime.sleep(0.5)\ns.close()\ntime.sleep(30)";
    let mut child = spawn_piped("python3", &["-c", script]);
    let mut watcher = process::PortWatcher::new();
    assert_eq!(watcher.poll(child.pid()).unwrap(), vec![]);
    let port = announced_ports(&mut child).await[0];
    let seen = watcher.poll(child.pid()).unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].addr, v4(port));
    assert_eq!(seen[0].pid, child.pid());
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while !watcher.poll(child.pid()).unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < until,
            "closed listener still reported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.stop(Duration::from_secs(2)).await.unwrap();
}
