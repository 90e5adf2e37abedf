//! The daemon embedded in the test process on the in-memory dataplane (no root needed): a config body, a
//! log buffer to assert on, and polling of a target's state.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::Write;
use std::time::{Duration, Instant};

use proxygw::daemon::Daemon;
use proxygw::dataplane::memory::MemoryDataplane;
use proxygw::engine::EngineHandle;
use proxygw::log::Logger;

/// The daemon's log, shared with the test.
#[derive(Clone, Default)]
pub struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buf {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A loopback TCP port free at the time of the call.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Loads `plugins` (a `plugins:` block) and `body` (targets and frontends) with the static and exec
/// plugins compiled in (not ctl: it would need a socket), checks it and starts the daemon.
pub async fn try_start(
    plugins: &str,
    body: &str,
) -> Result<(Daemon, Buf, MemoryDataplane), String> {
    let yaml = format!("version: v1\nlog: {{output: stderr}}\n{plugins}{body}");
    let cfg = proxygw::config::load_str(&yaml).map_err(|e| e.0)?;
    let reg = proxygw::plugins::Registry::build(
        &[
            ("static".into(), "static".into()),
            ("exec".into(), "exec".into()),
        ],
        proxygw::plugins::compiled(),
    )?;
    reg.check_config(&cfg).map_err(|e| e.0)?;
    let buf = Buf::default();
    let dp = MemoryDataplane::default();
    let d = Daemon::start(
        &cfg,
        &reg,
        dp.clone(),
        Logger::new(Box::new(buf.clone()), 0),
    )
    .await?;
    Ok((d, buf, dp))
}

/// [`try_start`] that must succeed.
pub async fn start(plugins: &str, body: &str) -> (Daemon, Buf, MemoryDataplane) {
    try_start(plugins, body).await.unwrap()
}

/// Polls until `target` is in state `want`; panics after `limit` with its status.
pub async fn wait_for(
    h: &EngineHandle,
    target: &str,
    want: &str,
    limit: Duration,
) -> proxygw::protocol::TargetStatus {
    let deadline = Instant::now() + limit;
    loop {
        let t = h
            .status()
            .await
            .unwrap()
            .targets
            .into_iter()
            .find(|t| t.name == target)
            .unwrap();
        if t.state == want {
            return t;
        }
        assert!(Instant::now() < deadline, "{target} never {want}: {t:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
