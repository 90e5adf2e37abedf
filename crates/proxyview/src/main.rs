//! `proxyview server` and `proxyview client`: the two halves of the tunnel.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use proxyview::access_log::{AccessSink, TelemetrySink};
use proxyview::config::{resolve_path, ClientConfig, ServerConfig};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "proxyview",
    version,
    about = "Reverse HTTP tunnel: agents dial out, the server routes by Host"
)]
struct Cli {
    /// Diagnostics filter (tracing syntax, e.g. `info`, `proxyview=debug`); logs go to stderr.
    #[arg(long, global = true, env = "PROXYVIEW_LOG", default_value = "info")]
    log_level: String,
    /// Worker threads (default 1). A session's traffic all goes through one task, so with one
    /// agent more threads add cross-thread wake-ups and smaller tunnel writes but no capacity;
    /// a server with many busy agents on a big host can give each core a worker (`--threads N`).
    #[arg(long, global = true, env = "PROXYVIEW_THREADS", default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (internal port for agents, external port for callers).
    Server(Common),
    /// Run an agent next to the services it exposes.
    Client(Common),
}

#[derive(clap::Args)]
struct Common {
    /// YAML config; default `$LHUB_CONFIG_DIR/application.yaml` as Proxyview did.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Validate the config and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Colour only for a person at a terminal: files, journald and `docker logs` get plain text,
    // and NO_COLOR (set and not empty, no-color.org) turns it off even there.
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log_level)
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("proxyview: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let rt = match cli.threads {
        0 => anyhow::bail!("--threads / PROXYVIEW_THREADS must be at least 1"),
        // One thread: no cross-thread wake-ups (futex, IPIs) between the tasks of a request.
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    match cli.cmd {
        Cmd::Server(c) => {
            let cfg = ServerConfig::load(&resolve_path(c.config.as_deref())?)?;
            if c.check {
                eprintln!("config ok");
                if let Some(cl) = &cfg.cluster {
                    // The node, its peers and the registry's health, as the cluster sees them.
                    let report = rt.block_on(proxyview::cluster::check(cl));
                    match report {
                        Ok(text) => eprint!("{text}"),
                        Err(e) => anyhow::bail!("cluster.registry: {e}"),
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            let (sink, pipeline) = if cfg.access_log {
                let app = std::env::var("APP_NAME").unwrap_or_else(|_| "proxyview".into());
                let (sink, pipeline) = TelemetrySink::start(&app)?;
                (Some(sink as Arc<dyn AccessSink>), Some(pipeline))
            } else {
                (None, None)
            };
            let r = rt.block_on(async move {
                let server = proxyview::server::Server::new(cfg, sink)?;
                let bound = server.start().await?;
                let redirect = bound
                    .redirect
                    .map(|a| format!(" redirect={a}"))
                    .unwrap_or_default();
                eprintln!(
                    "proxyview server listening internal={} external={}{redirect}",
                    bound.internal, bound.external
                );
                shutdown_signal().await;
                eprintln!("proxyview server draining");
                if !server.shutdown(proxyview::protocol::SHUTDOWN_GRACE).await {
                    eprintln!(
                        "proxyview server: requests still running after the grace period were cut"
                    );
                }
                Ok(ExitCode::SUCCESS)
            });
            if let Some(p) = pipeline {
                // Write what is queued, but never hang the exit on a stuck stdout.
                p.shutdown(std::time::Duration::from_secs(2));
            }
            r
        }
        Cmd::Client(c) => {
            let cfg = ClientConfig::load(&resolve_path(c.config.as_deref())?)?;
            if c.check {
                eprintln!("config ok");
                return Ok(ExitCode::SUCCESS);
            }
            rt.block_on(async move {
                // Spawned, not polled by block_on: on the multi-thread runtime the block_on
                // thread is not a worker, so every wake-up between the tunnel connection and
                // the per-stream tasks would cross threads.
                let mut agent = tokio::spawn(proxyview::agent::run(cfg));
                tokio::select! {
                    r = &mut agent => match r {
                        Ok(r) => r.map(|()| ExitCode::SUCCESS),
                        Err(e) => Err(anyhow::anyhow!("agent task failed: {e}")),
                    },
                    () = shutdown_signal() => {
                        agent.abort();
                        Ok(ExitCode::SUCCESS)
                    }
                }
            })
        }
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
