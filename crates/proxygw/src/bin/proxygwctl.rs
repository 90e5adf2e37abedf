//! `proxygwctl [--config PATH] [--timeout DURATION] COMMAND`: control client for a running proxygw.

use std::path::PathBuf;
use std::time::Duration;

use gosyntax::go_quote;
use proxygw::client::{status_table, Client};
use proxygw::protocol::{go_json, Codec, DEFAULT_CLIENT_TIMEOUT};

const USAGE: &str = "usage: proxygwctl [<flags>] <command> [<args> ...]

Proxy gateway control client

Flags:
  --help                       Show help.
  --version                    Show the version.
  --config=/etc/proxygw.yaml   path to runtime configuration
  --timeout=10s                how long to wait for the daemon (Go duration)

Commands:
  status [--format=json|table] [--counters]
                                Get proxy gateway status; --counters adds each target's
                                wake counters (`wakes`) to the JSON
  warm TARGET                   Warm a target now
  drain TARGET                  Drain a target now
  start FRONTEND                Start a stopped frontend
  stop FRONTEND                 Stop a frontend
  reload                        Re-read the daemon's config and apply it (like SIGHUP)
";

struct Args {
    config: PathBuf,
    timeout: Duration,
    table: bool,
    counters: bool,
    command: Vec<String>,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut a = Args {
        config: PathBuf::from(proxygw::config::DEFAULT_PATH),
        timeout: DEFAULT_CLIENT_TIMEOUT,
        table: false,
        counters: false,
        command: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or(format!("expected argument for flag {name}"))
        };
        match flag.as_str() {
            "--help" | "-h" | "help" if a.command.is_empty() => return Ok(None),
            "--version" if a.command.is_empty() => {
                println!("proxygwctl {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            "--config" => a.config = value("--config")?.into(),
            "--timeout" => {
                let v = value("--timeout")?;
                let ns = gosyntax::parse_go_duration(&v)?;
                if ns <= 0 {
                    return Err(format!("--timeout must be positive, got {v:?}"));
                }
                a.timeout = Duration::from_nanos(ns as u64);
            }
            "--counters" => a.counters = true,
            "--format" => match value("--format")?.as_str() {
                "json" => a.table = false,
                "table" => a.table = true,
                other => {
                    return Err(format!(
                        "enum value must be one of json,table, got '{other}'"
                    ))
                }
            },
            s if s.starts_with("--") => return Err(format!("unknown long flag '{s}'")),
            _ => a.command.push(arg),
        }
    }
    Ok(Some(a))
}

async fn dial(args: &Args) -> Result<Client, String> {
    let (cfg, _) = proxygw::plugins::load_checked(&args.config).map_err(|e| e.0)?;
    let path = go_quote(&args.config.display().to_string());
    let ctl = cfg
        .plugins
        .get("ctl")
        .ok_or_else(|| format!("config {path} does not define plugins.ctl"))?;
    let socket = match ctl.get("socket") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(format!("config {path} is missing plugins.ctl.socket")),
    };
    let name = match ctl.get("codec") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
        _ => "json".into(),
    };
    let codec = Codec::by_name(&name).ok_or_else(|| {
        format!(
            "config {path} has invalid plugins.ctl.codec {}",
            go_quote(&name)
        )
    })?;
    Client::dial(std::path::Path::new(&socket), codec, args.timeout).await
}

async fn run(args: Args) -> Result<(), String> {
    let cmd: Vec<&str> = args.command.iter().map(String::as_str).collect();
    // Check the command line before touching the socket.
    match cmd.as_slice() {
        ["status"] | ["reload"] | ["warm", _] | ["drain", _] | ["start", _] | ["stop", _] => {}
        [] => return Err("expected command but got none, try --help".into()),
        [c, ..] => return Err(format!("unsupported command {}", go_quote(c))),
    }
    let mut client = dial(&args).await?;
    match cmd.as_slice() {
        ["status"] => {
            let mut s = client
                .status()
                .await
                .map_err(|e| format!("status request: {e}"))?;
            if !args.counters {
                // The original's output, byte for byte.
                for t in &mut s.targets {
                    t.wakes = None;
                }
            }
            let text = if args.table {
                status_table(&s)
            } else {
                go_json(&s, true).map_err(|e| format!("write status output: {e}"))? + "\n"
            };
            print(&text)
        }
        ["reload"] => client
            .reload()
            .await
            .map_err(|e| format!("reload request: {e}")),
        ["warm", t] => client
            .warm(t)
            .await
            .map_err(|e| format!("warm request: {e}")),
        ["drain", t] => client
            .drain(t)
            .await
            .map_err(|e| format!("drain request: {e}")),
        ["start", f] => client
            .start(f)
            .await
            .map_err(|e| format!("start request: {e}")),
        ["stop", f] => client
            .stop(f)
            .await
            .map_err(|e| format!("stop request: {e}")),
        _ => Err("unsupported command".into()),
    }
}

fn print(text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| format!("write status output: {e}"))
}

/// Go's `log.Printf` prefix: `2006/01/02 15:04:05 `.
fn go_log(msg: &str) {
    let t = proxygw::log::now_rfc3339();
    let stamp = format!("{} {}", t[..10].replace('-', "/"), &t[11..19]);
    eprintln!("{stamp} proxygwctl: {msg}");
}

fn main() {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => {
            eprint!("{USAGE}");
            return;
        }
        Err(e) => {
            go_log(&e);
            std::process::exit(1);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            go_log(&format!("start runtime: {e}"));
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(args)) {
        go_log(&e);
        std::process::exit(1);
    }
}
