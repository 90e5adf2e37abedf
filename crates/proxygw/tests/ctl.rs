//! The ctl socket and `proxygwctl` end to end: a daemon in this process (memory dataplane, real ctl plugin,
//! real static kinds) and the real `proxygwctl` binary.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use proxygw::daemon::Daemon;
use proxygw::dataplane::memory::MemoryDataplane;
use proxygw::log::Logger;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

fn config(dir: &Path, codec: &str) -> String {
    format!(
        "version: v1
log:
  output: stderr
  level: INFO
plugins:
  ctl:
    socket: {sock}
    codec: {codec}
targets:
  - name: backend
    kind: static:none
    idle_timeout: 5m
    endpoints:
      - name: http
        protocol: tcp
        address: 127.0.0.1:8080
      - name: alt
        protocol: udp
        address: \"[::1]:53\"
frontends:
  - name: public-http
    kind: static:always
    protocol: tcp
    listen: 0.0.0.0:8088
    flow_timeout: 1m
    target: backend:http
",
        sock = dir.join("ctl.sock").display()
    )
}

struct Setup {
    dir: tempfile::TempDir,
    cfg_path: PathBuf,
    daemon: Option<Daemon>,
}

impl Setup {
    async fn new(codec: &str) -> Self {
        Self::edited(codec, |c| c).await
    }

    /// A daemon on [`config`] as `edit` changes it.
    async fn edited(codec: &str, edit: impl FnOnce(String) -> String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cfg_path = dir.path().join("proxygw.yaml");
        std::fs::write(&cfg_path, edit(config(dir.path(), codec))).unwrap();
        let (cfg, reg) = proxygw::plugins::load_checked(&cfg_path).unwrap();
        let daemon = Daemon::start(&cfg, &reg, MemoryDataplane::default(), Logger::discard())
            .await
            .unwrap();
        Self {
            dir,
            cfg_path,
            daemon: Some(daemon),
        }
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("ctl.sock")
    }

    /// Runs proxygwctl off the runtime thread; returns (exit code, stdout, stderr).
    async fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let mut full = vec!["--config".to_string(), self.cfg_path.display().to_string()];
        full.extend(args.iter().map(|s| s.to_string()));
        ctl_raw(full).await
    }
}

async fn ctl_raw(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_proxygwctl"))
            .args(&args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    })
    .await
    .unwrap()
}

async fn wait_state(s: &Setup, want: &str) {
    let h = s.daemon.as_ref().unwrap().handle().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let st = h.status().await.unwrap();
        if st.targets[0].state == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "target never became {want}: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_is_exactly_the_originals_shape() {
    let s = Setup::new("json").await;
    // Stop the 1 s warm ticker first so the target state is stable.
    let (code, _, err) = s.ctl(&["stop", "public-http"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = s.ctl(&["status"]).await;
    assert_eq!(code, 0, "{err}");
    let expected = "{
  \"closed\": false,
  \"targets\": [
    {
      \"name\": \"backend\",
      \"kind\": \"static:none\",
      \"state\": \"inactive\",
      \"endpoints\": [
        {
          \"name\": \"alt\",
          \"protocol\": \"udp\",
          \"address\": \"[::1]:53\"
        },
        {
          \"name\": \"http\",
          \"protocol\": \"tcp\",
          \"address\": \"127.0.0.1:8080\"
        }
      ]
    }
  ],
  \"frontends\": [
    {
      \"name\": \"public-http\",
      \"kind\": \"static:always\",
      \"state\": \"stopped\",
      \"protocol\": \"tcp\",
      \"listen\": \"0.0.0.0:8088\",
      \"target_name\": \"backend\",
      \"endpoint_name\": \"http\",
      \"proxyaddress\": \"127.0.0.1:8080\"
    }
  ]
}
";
    assert_eq!(out, expected);
    let (code, out, _) = s.ctl(&["status", "--format", "table"]).await;
    assert_eq!(code, 0);
    assert!(
        out.starts_with("TARGET   KIND         STATE     ENDPOINTS"),
        "{out}"
    );
    assert!(
        out.contains(
            "public-http  static:always  stopped  0.0.0.0:8088/tcp  backend:http  127.0.0.1:8080"
        ),
        "{out}"
    );
    s.daemon.unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_both_endpoints_of_a_dual_home_frontend() {
    let s = Setup::edited("json", |c| {
        c.replace(
            "      - name: alt\n",
            "      - name: http6\n        protocol: tcp\n        address: \"[::1]:8080\"\n      - name: alt\n",
        )
        .replace("listen: 0.0.0.0:8088", "listen: \"[::]:8088\"")
        .replace("target: backend:http\n", "target: [backend:http, backend:http6]\n")
    })
    .await;
    let (code, _, err) = s.ctl(&["stop", "public-http"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = s.ctl(&["status"]).await;
    assert_eq!(code, 0, "{err}");
    let expected = "  \"frontends\": [
    {
      \"name\": \"public-http\",
      \"kind\": \"static:always\",
      \"state\": \"stopped\",
      \"protocol\": \"tcp\",
      \"listen\": \"[::]:8088\",
      \"target_name\": \"backend\",
      \"endpoint_name\": \"http\",
      \"proxyaddress\": \"127.0.0.1:8080\",
      \"dual_endpoint_name\": \"http6\",
      \"dual_proxyaddress\": \"[::1]:8080\"
    }
  ]
}
";
    assert!(out.ends_with(expected), "{out}");
    let (code, out, _) = s.ctl(&["status", "--format", "table"]).await;
    assert_eq!(code, 0);
    assert!(
        out.ends_with(
            "public-http  static:always  stopped  [::]:8088/tcp  backend:http,backend:http6  127.0.0.1:8080,[::1]:8080\n"
        ),
        "{out}"
    );
    s.daemon.unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_drain_start_stop_work_over_both_codecs() {
    for codec in ["json", "cbor"] {
        let s = Setup::new(codec).await;
        // static:always warms the target within about a second.
        wait_state(&s, "active").await;
        assert_eq!(s.ctl(&["stop", "public-http"]).await.0, 0);
        let (code, _, err) = s.ctl(&["drain", "backend"]).await;
        assert_eq!(code, 0, "{codec}: {err}");
        wait_state(&s, "inactive").await;
        let (code, _, err) = s.ctl(&["warm", "backend"]).await;
        assert_eq!(code, 0, "{codec}: {err}");
        wait_state(&s, "active").await;
        let (code, out, _) = s.ctl(&["status"]).await;
        assert_eq!(code, 0);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["targets"][0]["state"], "active", "{codec}");
        assert_eq!(v["frontends"][0]["state"], "stopped", "{codec}");
        assert_eq!(
            v["frontends"][0]["protocol"], "tcp",
            "{codec}: CBOR 6 comes back as tcp"
        );
        assert_eq!(s.ctl(&["start", "public-http"]).await.0, 0);
        let (code, _, err) = s.ctl(&["warm", "nope"]).await;
        assert_eq!(code, 1);
        assert!(
            err.ends_with("proxygwctl: warm request: target \"nope\": target not registered\n"),
            "{err}"
        );
        s.daemon.unwrap().stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_is_0660_replaced_when_stale_and_removed_on_stop() {
    let mut s = Setup::new("json").await;
    let mode = std::fs::metadata(s.sock()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    s.daemon.take().unwrap().stop().await;
    assert!(
        !s.sock().exists(),
        "socket file must be removed on shutdown (spec §12.1)"
    );

    // A stale socket (a crashed daemon's) is replaced, not "address already in use".
    let stale = std::os::unix::net::UnixListener::bind(s.sock()).unwrap();
    drop(stale);
    assert!(s.sock().exists());
    let (cfg, reg) = proxygw::plugins::load_checked(&s.cfg_path).unwrap();
    let d = Daemon::start(&cfg, &reg, MemoryDataplane::default(), Logger::discard())
        .await
        .unwrap();
    // A second daemon on a live socket is refused.
    let e = Daemon::start(&cfg, &reg, MemoryDataplane::default(), Logger::discard())
        .await
        .err()
        .unwrap();
    assert!(e.contains("another process is listening"), "{e}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_get_an_error_response_not_a_hang() {
    let s = Setup::new("json").await;
    let conn = tokio::net::UnixStream::connect(s.sock()).await.unwrap();
    let (r, mut w) = conn.into_split();
    let mut lines = tokio::io::BufReader::new(r).lines();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .unwrap()
            .unwrap()
    };
    // Unsupported method, bad body type, null body, notification (no reply), then garbage.
    w.write_all(b"{\"id\":1,\"method\":6,\"body\":{}}\n")
        .await
        .unwrap();
    assert_eq!(
        next().await.unwrap(),
        "{\"id\":1,\"method\":1,\"body\":{\"msg\":\"unsupported method 6\"}}"
    );
    w.write_all(b"{\"id\":2,\"method\":8,\"body\":{\"name\":5}}\n")
        .await
        .unwrap();
    let l = next().await.unwrap();
    assert!(
        l.starts_with("{\"id\":2,\"method\":1,\"body\":{\"msg\":\"invalid body for method 8"),
        "{l}"
    );
    w.write_all(b"{\"id\":0,\"method\":32768,\"body\":{\"name\":\"x\"}}\n{\"id\":3,\"method\":2,\"body\":null}\n").await.unwrap();
    assert!(next()
        .await
        .unwrap()
        .starts_with("{\"id\":3,\"method\":3,\"body\":{\"closed\":false,"));
    w.write_all(b"{\"id\":4,\"method\":3,\"body\":{}}\n{\"id\":5,\"method\":2}\n")
        .await
        .unwrap();
    assert!(
        next().await.unwrap().starts_with("{\"id\":5,\"method\":3,"),
        "responses are ignored, a missing body is {{}}"
    );
    w.write_all(b"not json\n").await.unwrap();
    let l = next().await.unwrap();
    assert!(
        l.starts_with("{\"id\":0,\"method\":1,\"body\":{\"msg\":\"malformed packet"),
        "{l}"
    );
    assert_eq!(next().await, None, "the server closes after garbage");
    // The daemon still serves new connections.
    assert_eq!(s.ctl(&["status"]).await.0, 0);
    s.daemon.unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_errors_follow_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("c.yaml");
    let path = cfg_path.display().to_string();
    let base = config(dir.path(), "json");

    // Not running: dial error.
    std::fs::write(&cfg_path, &base).unwrap();
    let (code, _, err) = ctl_raw(vec!["--config".into(), path.clone(), "status".into()]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "proxygwctl: dial ctl socket \"{}\": ",
            dir.path().join("ctl.sock").display()
        )),
        "{err}"
    );
    let stamp = &err[..19];
    assert!(
        stamp.as_bytes()[4] == b'/' && stamp.as_bytes()[10] == b' ',
        "Go log prefix: {err}"
    );

    // No plugins.ctl.
    let no_ctl = base
        .replace("  ctl:\n", "  static:\n")
        .replace("    socket:", "    #socket:")
        .replace("    codec: json\n", "");
    std::fs::write(&cfg_path, no_ctl).unwrap();
    let (_, _, err) = ctl_raw(vec!["--config".into(), path.clone(), "status".into()]).await;
    assert!(
        err.ends_with(&format!(
            "proxygwctl: config \"{path}\" does not define plugins.ctl\n"
        )),
        "{err}"
    );

    // Config errors are the daemon's, wrapped like the original.
    std::fs::write(&cfg_path, base.replace("version: v1", "version: v9")).unwrap();
    let (_, _, err) = ctl_raw(vec!["--config".into(), path.clone(), "status".into()]).await;
    assert!(
        err.ends_with(&format!(
            "proxygwctl: load config \"{path}\": unsupported version \"v9\"\n"
        )),
        "{err}"
    );

    // A daemon that never answers: the client gives up (the original waited forever).
    std::fs::write(&cfg_path, &base).unwrap();
    let sock = dir.path().join("ctl.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let hold = tokio::spawn(async move {
        let (c, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(c);
    });
    let t0 = std::time::Instant::now();
    let (code, _, err) = ctl_raw(vec![
        "--config".into(),
        path.clone(),
        "--timeout".into(),
        "300ms".into(),
        "status".into(),
    ])
    .await;
    assert_eq!(code, 1);
    assert!(
        err.ends_with("proxygwctl: status request: no reply within 300ms\n"),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    hold.abort();

    // A daemon that hangs up: "ipc connection closed".
    std::fs::remove_file(&sock).unwrap();
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let close = tokio::spawn(async move {
        let (mut c, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 64];
        let _ = tokio::io::AsyncReadExt::read(&mut c, &mut buf).await;
        let _ = c.shutdown().await;
    });
    let (_, _, err) = ctl_raw(vec!["--config".into(), path.clone(), "status".into()]).await;
    assert!(
        err.ends_with("proxygwctl: status request: ipc connection closed\n"),
        "{err}"
    );
    close.abort();

    let (code, _, err) = ctl_raw(vec!["--config".into(), path, "frobnicate".into()]).await;
    assert_eq!(code, 1);
    assert!(
        err.ends_with("proxygwctl: unsupported command \"frobnicate\"\n"),
        "{err}"
    );
}

#[test]
fn daemon_reports_config_errors_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(
        &path,
        config(dir.path(), "json").replace("version: v1", "version: v2"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_proxygw"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("level=ERROR msg=\"proxygw failed\""), "{err}");
    assert!(
        err.contains(&format!(
            "load config \\\"{}\\\": unsupported version \\\"v2\\\"",
            path.display()
        )),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_proxygw"))
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = Command::new(env!("CARGO_BIN_EXE_proxygw"))
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
}
