//! `proxygw [--config PATH]`: the gateway daemon.

use std::path::PathBuf;

use anyhow::Context as _;
use proxygw::dataplane::conntrack::Subscription;
use proxygw::dataplane::monitor::Monitor;
use proxygw::dataplane::nft::{NftDataplane, DEFAULT_TABLE};
use proxygw::instance::{runtime_dir, InstanceLock};
use proxygw::log::Logger;

const USAGE: &str = "usage: proxygw [--config PATH]\n\nProxy gateway daemon.\n\nFlags:\n  --help         Show help.\n  --version      Show the version.\n  --config=/etc/proxygw.yaml  path to runtime configuration\n";

fn parse_args() -> anyhow::Result<Option<PathBuf>> {
    let mut config = PathBuf::from(proxygw::config::DEFAULT_PATH);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--help" | "-h" => return Ok(None),
            "--version" => {
                println!("proxygw {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            "--config" => {
                config = args
                    .next()
                    .context("expected argument for flag --config")?
                    .into()
            }
            s if s.starts_with("--config=") => config = s["--config=".len()..].into(),
            other => anyhow::bail!("unexpected argument {other:?}, try --help"),
        }
    }
    Ok(Some(config))
}

async fn run(config: PathBuf, startup: &Logger) -> anyhow::Result<()> {
    let (cfg, reg) = proxygw::plugins::load_checked(&config)?;
    let log = Logger::open(&cfg.log.output, cfg.log.level)
        .with_context(|| format!("open log output {:?}", cfg.log.output))?;
    let _ = startup;
    // Refuse a second daemon before anything touches the kernel: creating the dataplane replaces the table.
    let socket = match cfg.plugins.get("ctl").and_then(|c| c.get("socket")) {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(PathBuf::from(s)),
        _ => None,
    };
    let _lock = InstanceLock::acquire(&runtime_dir(), DEFAULT_TABLE, socket.as_deref())?;
    let dp = NftDataplane::new(DEFAULT_TABLE)
        .await
        .context("create dataplane")?;
    let mut sub: Option<(Subscription, Monitor)> = None;
    let mut sub_err = None;
    let path = config.clone();
    let reloader: proxygw::engine::Reloader = std::sync::Arc::new(move || {
        let (cfg, _) = proxygw::plugins::load_checked(&path).map_err(|e| e.0)?;
        Ok(cfg)
    });
    let daemon = proxygw::daemon::Daemon::start_reloadable(
        &cfg,
        &reg,
        dp,
        log.clone(),
        Some(reloader),
        |h| {
            let subs = Subscription::start(h.flow_sink(), log.clone())
                .map_err(|e| format!("subscribe to conntrack events: {e}"))
                .and_then(|s| {
                    Monitor::start(h.heal_sink(), log.clone())
                        .map(|m| (s, m))
                        .map_err(|e| format!("subscribe to nftables events: {e}"))
                });
            match subs {
                Ok(s) => sub = Some(s),
                Err(e) => sub_err = Some(e),
            }
        },
    )
    .await
    .map_err(anyhow::Error::msg)?;
    if let Some(e) = sub_err {
        daemon.stop().await;
        anyhow::bail!("{e}");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => { log.info("signal received", &[("signal", &"SIGTERM")]); break }
            _ = int.recv() => { log.info("signal received", &[("signal", &"SIGINT")]); break }
            _ = hup.recv() => {
                log.info("signal received", &[("signal", &"SIGHUP")]);
                // The engine logs the outcome; a failed reload keeps the running config.
                let _ = daemon.handle().request(proxygw::engine::Request::Reload).await;
            }
        }
    }
    let stop = daemon.stop();
    tokio::pin!(stop);
    tokio::select! {
        _ = &mut stop => {}
        _ = term.recv() => anyhow::bail!("second signal: exiting without finishing shutdown"),
        _ = int.recv() => anyhow::bail!("second signal: exiting without finishing shutdown"),
    }
    drop(sub);
    Ok(())
}

fn main() {
    let startup = Logger::stderr();
    let config = match parse_args() {
        Ok(Some(c)) => c,
        Ok(None) => {
            eprint!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("proxygw: error: {e:#}");
            std::process::exit(1);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            startup.error("start runtime", &[("err", &e)]);
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(config, &startup)) {
        startup.error("proxygw failed", &[("err", &format!("{e:#}"))]);
        std::process::exit(1);
    }
}
