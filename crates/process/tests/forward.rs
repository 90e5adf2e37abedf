//! Signal forwarding: signals sent to this test process reach the child's group; escalation to SIGKILL.
//!
//! These tests signal the test process itself, so they live in their own binary and run one at a time.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::raise;
use process::{Escalation, ExitStatus, ForwardEvent, Signal, SignalForwarder};
use tokio::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// Python that reports each forwarded signal on stdout and exits 42 on SIGTERM.
const REPORTER_PY: &str = r#"
import signal, sys, time
def report(sig, _):
    print('got', sig, flush=True)
    if sig == signal.SIGTERM:
        sys.exit(42)
for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT):
    signal.signal(s, report)
print('ready', flush=True)
while True:
    time.sleep(0.05)
"#;

const IGNORER_PY: &str = r#"
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
print('ready', flush=True)
time.sleep(60)
"#;

async fn next(fwd: &mut SignalForwarder) -> ForwardEvent {
    tokio::time::timeout(Duration::from_secs(5), fwd.next_event())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn sigterm_is_forwarded_and_child_code_wins() {
    let _g = ONE_AT_A_TIME.lock().await;
    let mut child = spawn_piped("python3", &["-c", REPORTER_PY]);
    let out = child.take_stdout().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(out));
    assert_eq!(lines.next_line().await.unwrap().unwrap(), "ready");
    let mut fwd = SignalForwarder::start(child.group(), Duration::from_secs(10)).unwrap();

    for (sig, num) in [
        (Signal::SIGHUP, 1),
        (Signal::SIGUSR1, 10),
        (Signal::SIGUSR2, 12),
        (Signal::SIGQUIT, 3),
    ] {
        raise(sig).unwrap();
        match next(&mut fwd).await {
            ForwardEvent::Forwarded { signal, result } => {
                assert_eq!(signal, sig);
                result.unwrap();
            }
            other => panic!("unexpected {other:?}"),
        }
        let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(line, Some(format!("got {num}")));
    }
    assert_eq!(fwd.stop_signal(), None, "only INT/TERM request a stop");

    raise(Signal::SIGTERM).unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), fwd.stop_requested())
            .await
            .unwrap(),
        Some(Signal::SIGTERM)
    );
    assert!(matches!(
        next(&mut fwd).await,
        ForwardEvent::Forwarded {
            signal: Signal::SIGTERM,
            ..
        }
    ));
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, ExitStatus::Code(42));
    assert_eq!(status.exit_code_for_parent(), 42);
}

#[tokio::test]
async fn second_sigint_escalates_to_sigkill() {
    let _g = ONE_AT_A_TIME.lock().await;
    let mut child = spawn_piped("python3", &["-c", IGNORER_PY]);
    assert_eq!(first_line(&mut child).await, "ready");
    let mut fwd = SignalForwarder::start(child.group(), Duration::from_secs(30)).unwrap();
    raise(Signal::SIGINT).unwrap();
    assert!(matches!(
        next(&mut fwd).await,
        ForwardEvent::Forwarded {
            signal: Signal::SIGINT,
            ..
        }
    ));
    assert_eq!(fwd.stop_requested().await, Some(Signal::SIGINT));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        child.try_wait().unwrap(),
        None,
        "child ignores the first SIGINT"
    );
    raise(Signal::SIGINT).unwrap();
    match next(&mut fwd).await {
        ForwardEvent::Escalated { reason, result } => {
            assert_eq!(reason, Escalation::SecondSignal(Signal::SIGINT));
            result.unwrap();
        }
        other => panic!("unexpected {other:?}"),
    }
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.exit_code_for_parent(), 137);
    assert_eq!(group_gone(child.pid()).await, Vec::<u32>::new());
}

#[tokio::test]
async fn grace_period_escalates_to_sigkill() {
    let _g = ONE_AT_A_TIME.lock().await;
    let mut child = spawn_piped("python3", &["-c", IGNORER_PY]);
    assert_eq!(first_line(&mut child).await, "ready");
    let grace = Duration::from_millis(400);
    let mut fwd = SignalForwarder::start(child.group(), grace).unwrap();
    let started = Instant::now();
    raise(Signal::SIGTERM).unwrap();
    assert!(matches!(
        next(&mut fwd).await,
        ForwardEvent::Forwarded {
            signal: Signal::SIGTERM,
            ..
        }
    ));
    match next(&mut fwd).await {
        ForwardEvent::Escalated { reason, .. } => assert_eq!(reason, Escalation::GraceElapsed),
        other => panic!("unexpected {other:?}"),
    }
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .unwrap()
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(status, ExitStatus::Signal(9));
    assert!(
        elapsed >= grace && elapsed < grace + Duration::from_secs(2),
        "{elapsed:?}"
    );
}
