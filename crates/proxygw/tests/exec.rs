//! `exec:<program>` targets with real programs (no root needed): every way a program can break the protocol
//! fails the start with a reason and a backoff while the daemon keeps serving other targets; a program that
//! cannot run is a startup error; a `status` answer of "not running" is handled like a backend exit.

#![allow(clippy::unwrap_used)]

mod embedded;
mod procs;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use embedded::{free_port, wait_for};
use proxygw::engine::Request;

/// Writes an executable `#!/bin/sh` program into `dir`.
fn program(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn plugins(dir: &Path) -> String {
    format!("plugins:\n  exec:\n    dir: {}\n", dir.display())
}

fn target(name: &str, program: &str, options: &str) -> String {
    format!(
        "  - name: {name}
    kind: exec:{program}
    idle_timeout: 1h
    endpoints:
      - {{name: tcp, protocol: tcp, address: 127.0.0.1:{}}}
    options:
      ready_timeout: 0s
{options}
",
        free_port()
    )
}

/// The targets of the protocol-error test whose start must fail, each named after its program.
const FAILING: [&str; 6] = [
    "hangs",
    "badjson",
    "wrongid",
    "wrongversion",
    "dies",
    "refuses",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_fail_the_start_with_a_reason_and_a_backoff_while_other_targets_are_served()
{
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ok = r#"printf '{"version":1,"id":%s,"ok":true}\n' "$PROXYGW_EXEC_ID""#;
    // Hangs after recording itself and a background child of its group: both must be killed.
    program(
        d,
        "hangs",
        "sleep 60 & echo $! > \"$PROXYGW_STATE_DIR/child.pid\"\necho $$ > \"$PROXYGW_STATE_DIR/self.pid\"\nexec sleep 60",
    );
    program(d, "badjson", "echo oops-on-stderr >&2\necho 'starting...'");
    program(
        d,
        "wrongid",
        r#"printf '{"version":1,"id":999,"ok":true}\n'"#,
    );
    program(
        d,
        "wrongversion",
        r#"printf '{"version":2,"id":%s,"ok":true}\n' "$PROXYGW_EXEC_ID""#,
    );
    program(d, "dies", "kill -9 $$");
    program(
        d,
        "refuses",
        r#"printf '{"version":1,"id":%s,"ok":false,"error":"no capacity"}\n' "$PROXYGW_EXEC_ID""#,
    );
    // Answers only a request that arrived on stdin with the fields the protocol names.
    program(
        d,
        "fine",
        &format!(
            r#"read -r req
for want in '"version":1' '"id":1' '"method":"start"' '"target":"fine"' '"protocol":"tcp"' '"params":{{"size":"s"}}'; do
  case $req in *"$want"*) ;; *) echo "missing $want in $req" >&2; exit 1;; esac
done
{ok}"#
        ),
    );
    let body = format!(
        "targets:\n{}{}{}{}{}{}{}frontends: []\n",
        target("hangs", "hangs", "      call_timeout: 1s"),
        target("badjson", "badjson", ""),
        target("wrongid", "wrongid", ""),
        target("wrongversion", "wrongversion", ""),
        target("dies", "dies", ""),
        target("refuses", "refuses", ""),
        target(
            "fine",
            "fine",
            "      status_interval: 0s\n      params: {size: s}"
        ),
    );
    let (daemon, log, dp) = embedded::start(&plugins(d), &body).await;
    let h = daemon.handle().clone();
    let t0 = Instant::now();
    for t in FAILING {
        h.request(Request::Warm(t.into())).await.unwrap();
    }
    // While "hangs" holds its call open, another target warms at once.
    h.request(Request::Warm("fine".into())).await.unwrap();
    wait_for(&h, "fine", "active", Duration::from_millis(900)).await;
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    assert!(dp.is_enabled("fine"));

    let cases = [
        (
            "hangs",
            "no response within call_timeout 1s; program killed",
        ),
        ("badjson", "response is not JSON"),
        ("wrongid", "response id 999 does not match request id 1"),
        ("wrongversion", "response version 2 not supported (want 1)"),
        ("dies", "exited without a response (signal 9"),
        ("refuses", "program reports failure: no capacity"),
    ];
    for (name, why) in cases {
        let t = wait_for(&h, name, "inactive", Duration::from_secs(5)).await;
        assert!(
            t.last_error.contains(why) && t.last_error.contains(&format!("{name} start: ")),
            "{name}: {t:?}"
        );
        let w = t.wakes.unwrap();
        assert_eq!((w.started, w.failed_starts), (1, 1), "{name}: {w:?}");
        assert!(!dp.is_enabled(name));
    }
    let hung = h.status().await.unwrap();
    let hung = hung.targets.iter().find(|t| t.name == "hangs").unwrap();
    assert!(
        !hung.wakes.as_ref().unwrap().backoff.is_empty(),
        "a failed start backs off: {hung:?}"
    );
    let text = log.text();
    assert!(
        text.contains("msg=\"exec output\" target=badjson stream=stderr line=oops-on-stderr"),
        "{text}"
    );
    assert!(
        text.contains("msg=\"target start failed; backing off\" target=hangs"),
        "{text}"
    );
    // The timed-out program and what it left in its process group are gone.
    let state = std::env::temp_dir().join(format!("proxygw-{}.exec/hangs", std::process::id()));
    for f in ["self.pid", "child.pid"] {
        let pid = std::fs::read_to_string(state.join(f)).unwrap();
        assert!(
            !procs::alive(pid.trim().parse().unwrap()),
            "{f} {pid} still running"
        );
    }
    daemon.stop().await;
    let root = state.parent().unwrap();
    for t in FAILING.iter().chain(&["fine"]) {
        let _ = std::fs::remove_dir_all(root.join(t));
    }
    // The process's state root, once no other test of this process uses it.
    let _ = std::fs::remove_dir(root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_non_executable_program_is_a_startup_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("plain"), "#!/bin/sh\n").unwrap();
    for (prog, why) in [
        ("absent", "absent: No such file or directory"),
        ("plain", "plain: not executable"),
        (".hidden", "must be a plain file name"),
    ] {
        let body = format!("targets:\n{}frontends: []\n", target("app", prog, ""));
        let e = embedded::try_start(&plugins(d), &body)
            .await
            .err()
            .unwrap_or_else(|| panic!("{prog} started"));
        assert!(
            e.starts_with(&format!(
                "create target \"app\": handler for kind \"exec:{prog}\": "
            )) && e.contains(why),
            "{e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_answer_of_not_running_is_handled_like_a_backend_exit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    program(
        d,
        "vanishes",
        r#"case $1 in status) r=',"running":false';; *) r=;; esac
echo "$1" >> "$PROXYGW_STATE_DIR/calls"
printf '{"version":1,"id":%s,"ok":true%s}\n' "$PROXYGW_EXEC_ID" "$r""#,
    );
    let body = format!(
        "targets:\n{}frontends: []\n",
        target("app", "vanishes", "      status_interval: 200ms")
    );
    let (daemon, log, dp) = embedded::start(&plugins(d), &body).await;
    let h = daemon.handle().clone();
    h.request(Request::Warm("app".into())).await.unwrap();
    wait_for(&h, "app", "active", Duration::from_secs(5)).await;
    let t = wait_for(&h, "app", "inactive", Duration::from_secs(5)).await;
    assert_eq!(
        t.last_error,
        "backend exited: exec program reports the backend is not running",
        "{}",
        log.text()
    );
    assert!(!dp.is_enabled("app"));
    let state = std::env::temp_dir().join(format!("proxygw-{}.exec/app", std::process::id()));
    // The drain after the exit asks the program to stop (it may have left something behind).
    let deadline = Instant::now() + Duration::from_secs(5);
    let calls = loop {
        let c = std::fs::read_to_string(state.join("calls")).unwrap_or_default();
        if c.ends_with("stop\n") || Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(calls, "start\nstatus\nstop\n");
    daemon.stop().await;
    let _ = std::fs::remove_dir_all(&state);
    // The process's state root, once no other test of this process uses it.
    let _ = std::fs::remove_dir(state.parent().unwrap());
}
