//! The gateway keeps routing whatever happens to the host: a second daemon, a firewall reload, a deleted chain.
//! Real kernel, real `proxygw`, in namespaces each test creates (root only, like `tests/kernel.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod netns;
mod procs;

use std::time::Duration;

use netns::*;
use procs::{alive, group_members};

/// One static:none target behind a wildcard v4 frontend on :8080.
fn web_config() -> String {
    format!(
        "targets:
  - name: web
    kind: static:none
    idle_timeout: 60s
    endpoints:
      - {{name: http, protocol: tcp, address: \"{BACKEND4}:8080\"}}
frontends:
  - name: web
    kind: static:http
    protocol: tcp
    listen: 0.0.0.0:8080
    flow_timeout: 30s
    target: web:http
    options:
      content: \"<html>warming up</html>\"
"
    )
}

/// The fixture most tests here start from: namespaces, the backend on `BACKEND4:8080`, and a warm gateway
/// routing `web` to it; `None` where kernel tests cannot run. Fields drop in order: the daemon before the
/// namespaces it runs in.
struct Warm {
    d: Daemon,
    e: Env,
    _b: Backend,
    t: Topo,
}

fn warm_web() -> Option<Warm> {
    if !can_run() {
        return None;
    }
    let t = Topo::new();
    let _b = Backend::start(&t.backend, &format!("{BACKEND4}:8080"));
    let e = env(&web_config());
    let d = warm_gateway(&t, &e);
    Some(Warm { d, e, _b, t })
}

/// A warm gateway: daemon started, target active, DNAT reaching the backend.
fn warm_gateway(t: &Topo, e: &Env) -> Daemon {
    let d = start_daemon(t, e);
    warm(&e.sock, "web");
    wait_state(&d, &e.sock, "web", "active", Duration::from_secs(5));
    assert!(routed(t), "not routed after warm:\n{}", d.log_text());
    d
}

/// True if a request from the client reaches the backend through DNAT.
fn routed(t: &Topo) -> bool {
    get(&t.client, &format!("{GW4}:8080"), "/")
        .map(|r| r.contains(&format!("peer={CLIENT4}:")))
        .unwrap_or(false)
}

#[test]
fn a_second_daemon_is_refused_before_touching_the_table_and_the_first_keeps_routing() {
    let Some(w) = warm_web() else { return };
    let (t, e, d) = (&w.t, &w.e, &w.d);
    let rules_before = ns_output(&t.gw, &["nft", "list", "table", "inet", "proxygw"]);

    let second_log = e.dir.path().join("second.log");
    let mut second = Daemon::start(&t.gw, &e.cfg, &second_log);
    assert_eq!(second.wait(Duration::from_secs(10)), Some(1));
    let text = second.log_text();
    let pid = d.child.id();
    // `ip netns exec` execs the daemon, so the child's pid is the daemon's.
    assert!(
        text.contains(&format!(
            "another proxygw is running in this network namespace (pid {pid}, ctl socket {}, table inet proxygw); lock ",
            e.sock.display()
        )),
        "{text}"
    );
    assert_eq!(
        ns_output(&t.gw, &["nft", "list", "table", "inet", "proxygw"]),
        rules_before
    );
    assert!(routed(t), "first daemon stopped routing:\n{}", d.log_text());
    assert_eq!(state(&e.sock, "web"), "active");
}

/// Polls until a new client connection is routed again; returns how long it took.
fn time_to_route(t: &Topo, d: &Daemon, limit: Duration) -> Duration {
    let start = std::time::Instant::now();
    while !routed(t) {
        assert!(
            start.elapsed() < limit,
            "not routed again within {limit:?}:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

#[test]
fn a_flushed_ruleset_is_healed_and_traffic_resumes_within_two_seconds() {
    let Some(w) = warm_web() else { return };
    let (t, e, d) = (&w.t, &w.e, &w.d);
    let rules_before = ns_output(&t.gw, &["nft", "list", "table", "inet", "proxygw"]);

    // What a Debian firewall reload does first.
    // (The heal can be done before a check of the empty ruleset could run; the log below proves it happened.)
    ns_output(&t.gw, &["nft", "flush", "ruleset"]);
    let took = time_to_route(t, d, Duration::from_secs(2));
    eprintln!("routed again {took:?} after nft flush ruleset");
    eventually(Duration::from_secs(2), "the heal logged", || {
        d.log_text().contains("re-applied")
    });
    assert_eq!(
        ns_output(&t.gw, &["nft", "list", "table", "inet", "proxygw"]),
        rules_before
    );
    let log = d.log_text();
    assert!(
        log.contains("msg=\"dataplane state was removed or changed outside proxygw; re-applied\" missing=\"table inet proxygw\""),
        "{log}"
    );
    assert_eq!(state(&e.sock, "web"), "active");

    // Deleting only our prerouting chain: restored, and the log names it.
    ns_output(
        &t.gw,
        &["nft", "delete", "chain", "inet", "proxygw", "prerouting"],
    );
    // The log line follows the re-applying transaction, so wait for it, not for the table.
    eventually(Duration::from_secs(2), "prerouting chain restored", || {
        d.log_text().contains("missing=\"chain prerouting {")
    });
    assert_eq!(
        ns_output(&t.gw, &["nft", "list", "table", "inet", "proxygw"]),
        rules_before
    );
    assert!(routed(t));

    // The drain still works on the healed table (a flushed table used to fail every disable).
    ns_output(&t.gw, &["nft", "flush", "ruleset"]);
    ctl(&e.sock, "drain", "web");
    assert_eq!(state(&e.sock, "web"), "inactive");
    eventually(Duration::from_secs(2), "table back after the drain", || {
        proxygw_tables(&t.gw) == 1
    });
    let page = get(&t.client, &format!("{GW4}:8080"), "/").unwrap();
    assert!(page.contains("warming up"), "{page}");
}

#[test]
fn after_kill_9_the_backend_dies_and_what_it_forked_is_stopped_by_the_next_daemon() {
    if !can_run() {
        return;
    }
    let t = Topo::new();
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), "served by the backend").unwrap();
    // No `exec`: the shell stays the group leader with python as its child, the case a parent-death signal
    // alone cannot cover.
    let e = env(&format!(
        "targets:
  - name: app
    kind: static:cmd
    idle_timeout: 60s
    endpoints:
      - {{name: http, protocol: tcp, address: \"{GW4_BACK}:8081\"}}
    options:
      command: \"python3 -m http.server 8081 --bind {GW4_BACK} --directory {}; exit 0\"
      ready_timeout: 20s
      stop_timeout: 2s
frontends:
  - name: web
    kind: static:http
    protocol: tcp
    listen: 0.0.0.0:8080
    flow_timeout: 30s
    target: app:http
    options:
      content: \"<html>warming up</html>\"
",
        www.path().display()
    ));
    let served = |t: &Topo| {
        get(&t.client, &format!("{GW4}:8080"), "/")
            .map(|r| r.contains("served by the backend"))
            .unwrap_or(false)
    };
    let mut d = start_daemon(&t, &e);
    warm(&e.sock, "app");
    wait_state(&d, &e.sock, "app", "active", Duration::from_secs(20));
    assert!(served(&t), "{}", d.log_text());
    let records = e.dir.path().join("run");
    let record = std::fs::read_dir(&records)
        .unwrap()
        .flatten()
        .find(|p| p.file_name().to_string_lossy().ends_with(".backends"))
        .map(|p| p.path().join("app"))
        .expect("backend record directory");
    let text = std::fs::read_to_string(&record).unwrap();
    let leader: u32 = text.split_whitespace().next().unwrap().parse().unwrap();
    let members = group_members(leader);
    assert!(members.len() >= 2, "shell and python: {members:?}");

    d.signal(nix::sys::signal::Signal::SIGKILL);
    assert!(d.wait(Duration::from_secs(5)).is_some());
    // The parent-death signal takes the shell at once; python, its child, is still in the group.
    eventually(
        Duration::from_secs(2),
        "the shell gone with the daemon",
        || !alive(leader),
    );
    let orphans: Vec<u32> = members.iter().copied().filter(|p| alive(*p)).collect();
    assert!(
        !orphans.is_empty(),
        "python should still run before the restart"
    );

    let d2 = start_daemon(&t, &e);
    warm(&e.sock, "app");
    wait_state(&d2, &e.sock, "app", "active", Duration::from_secs(20));
    let log = d2.log_text();
    assert!(
        log.contains(&format!(
            "msg=\"stopping a backend left running by a previous daemon\" target=app pid={leader}"
        )),
        "{log}"
    );
    for p in &orphans {
        assert!(!alive(*p), "orphan {p} still running");
    }
    assert!(served(&t), "{}", d2.log_text());
    assert!(!log.contains("address in use"), "{log}");
}

#[test]
fn a_drain_removes_time_wait_entries_of_the_mapping_too() {
    let Some(w) = warm_web() else { return };
    let (t, e, d) = (&w.t, &w.e, &w.d);
    // A finished exchange: its entry lingers in TIME_WAIT, DNATed to the backend.
    assert!(routed(t));
    let mapped = |state: &str| {
        ns_output(&t.gw, &["conntrack", "-L", "-p", "tcp"])
            .lines()
            .filter(|l| {
                l.contains(state)
                    && l.contains("dport=8080")
                    && l.contains(&format!("src={BACKEND4}"))
            })
            .count()
    };
    eventually(Duration::from_secs(2), "a TIME_WAIT entry", || {
        mapped("TIME_WAIT") > 0
    });
    ctl(&e.sock, "drain", "web");
    assert_eq!(state(&e.sock, "web"), "inactive", "{}", d.log_text());
    let left = ns_output(&t.gw, &["conntrack", "-L", "-p", "tcp"]);
    assert_eq!(mapped("TIME_WAIT"), 0, "{left}");
    assert_eq!(mapped(""), 0, "{left}");
}

/// True while `held` is open end to end: a write goes through and the peer has neither closed nor reset it.
fn still_open(held: &mut std::net::TcpStream) -> bool {
    use std::io::{Read, Write};
    if held.write_all(b"ping\n").is_err() {
        return false;
    }
    held.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 16];
    matches!(held.read(&mut b), Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
}

#[test]
fn sighup_adds_and_removes_a_frontend_while_a_flow_on_another_stays_up_and_an_invalid_reload_is_kept_out(
) {
    let Some(w) = warm_web() else { return };
    let (t, e, d) = (&w.t, &w.e, &w.d);
    let mut held = connect(&t.client, &format!("{GW4}:8080")).unwrap();
    std::io::Write::write_all(&mut held, b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    read_until(&mut held, "peer=");
    let original = std::fs::read_to_string(&e.cfg).unwrap();
    let alt = "  - name: web-alt
    kind: static:http
    protocol: tcp
    listen: 0.0.0.0:7070
    flow_timeout: 30s
    target: web:http
    options:
      content: \"<html>warming up</html>\"
";
    std::fs::write(&e.cfg, format!("{original}{alt}")).unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    // The target stays active, so the new frontend is DNATed straight away.
    eventually(Duration::from_secs(5), "the added frontend routed", || {
        get(&t.client, &format!("{GW4}:7070"), "/")
            .map(|r| r.contains(&format!("peer={CLIENT4}:")))
            .unwrap_or(false)
    });
    assert_eq!(state(&e.sock, "web"), "active");
    assert!(
        still_open(&mut held),
        "the held flow was cut:\n{}",
        d.log_text()
    );
    let log = d.log_text();
    assert!(
        log.contains("msg=\"config reloaded\" targets_added_or_changed=\"\" frontends_added_or_changed=web-alt removed=\"\""),
        "{log}"
    );

    // An invalid config is refused with the reason; the running one stays.
    std::fs::write(
        &e.cfg,
        format!("{original}{alt}").replace("idle_timeout: 60s", "idle_timeout: 5 minutes"),
    )
    .unwrap();
    let err = block_on_reload(&e.sock).unwrap_err();
    assert!(err.contains("time: unknown unit \" minutes\""), "{err}");
    assert!(d
        .log_text()
        .contains("msg=\"reload failed; the running config stays\""));
    assert!(routed(t));
    assert!(get(&t.client, &format!("{GW4}:7070"), "/")
        .unwrap()
        .contains("peer="));

    // Removing the frontend again (through proxygwctl): its port is gone, the held flow still up.
    std::fs::write(&e.cfg, &original).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_proxygwctl"))
        .args(["--config"])
        .arg(&e.cfg)
        .arg("reload")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(get(&t.client, &format!("{GW4}:7070"), "/").is_err());
    assert!(status(&e.sock)
        .unwrap()
        .frontends
        .iter()
        .all(|f| f.name != "web-alt"));
    assert!(
        still_open(&mut held),
        "the held flow was cut:\n{}",
        d.log_text()
    );
    assert!(routed(t));
}

fn block_on_reload(sock: &std::path::Path) -> Result<(), String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let mut c = proxygw::client::Client::dial(
                sock,
                proxygw::protocol::Codec::Json,
                Duration::from_secs(5),
            )
            .await?;
            c.reload().await
        })
}
