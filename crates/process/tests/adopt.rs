//! `adopt_orphans`: a daemon that double-forks and calls setsid leaves the child's process group, so only
//! subreaper adoption keeps it in the tree. This makes the test process a subreaper, so it has its own binary.
#![allow(clippy::unwrap_used)]

mod common;

use std::ffi::{OsStr, OsString};
use std::time::Duration;

use common::*;
use process::{wait_for_listen_port, Child, DetectOptions, ExitStatus, SpawnOptions, Stdio};

/// Double fork + setsid (classic daemonize), then run `LISTEN_PY` on 127.0.0.1.
const DAEMON_PY: &str = r#"
import os, sys
if os.fork():
    sys.exit(0)
os.setsid()
if os.fork():
    os._exit(0)
sys.argv = ['-c', '127.0.0.1']
exec(os.environ['LISTEN_PY'])
"#;

#[tokio::test]
async fn setsid_daemon_is_adopted_detected_and_stopped() {
    let opts = SpawnOptions {
        stdout: Stdio::Piped,
        envs: vec![(OsString::from("LISTEN_PY"), OsString::from(LISTEN_PY))],
        adopt_orphans: true,
        ..SpawnOptions::default()
    };
    let args = [OsString::from("-c"), OsString::from(DAEMON_PY)];
    let mut child = Child::spawn(OsStr::new("python3"), &args, &opts).unwrap();
    let port = announced_ports(&mut child).await[0];
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .unwrap()
            .unwrap(),
        ExitStatus::Code(0),
        "the launcher exits at once"
    );

    let opts = DetectOptions {
        timeout: Duration::from_secs(10),
        ..DetectOptions::default()
    };
    let addr = wait_for_listen_port(&mut child, &opts).await.unwrap();
    assert_eq!(addr.port(), port);

    // The daemon left the child's group and was re-parented to us.
    let me = std::process::id();
    let daemon: Vec<_> = proc_table()
        .into_iter()
        .filter(|p| p.1 == me && p.0 != child.pid() && p.3 != 'Z')
        .collect();
    assert_eq!(daemon.len(), 1, "{daemon:?}");
    let (daemon_pid, _, daemon_pgid, _) = daemon[0];
    assert_ne!(daemon_pgid, child.pid());
    assert!(child.group().is_alive(), "adopted daemon counts as alive");

    child.stop(Duration::from_secs(2)).await.unwrap();
    let leftovers: Vec<_> = proc_table()
        .into_iter()
        .filter(|p| p.0 == daemon_pid || (p.1 == me && p.0 != child.pid()))
        .collect();
    assert_eq!(
        leftovers,
        vec![],
        "daemon killed and reaped (no zombie left)"
    );
}
