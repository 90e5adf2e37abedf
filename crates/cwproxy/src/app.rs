//! Wiring: config → telemetry pipeline → listener → proxy + health runner → shutdown, in normal
//! mode and in inspector mode (the app launched as a child, its port detected).

use std::collections::HashSet;
use std::ffi::OsString;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use httpproxy::{ProxyConfig, Upstream};
#[cfg(unix)]
use process::{
    Child, DetectError, DetectOptions, ExitStatus, ForwardEvent, SignalForwarder, SpawnOptions,
};
use telemetry::diag::Diag;
use telemetry::entry::{decode_path, Context};
use telemetry::pipeline::{stdout_writer, Emitter, Pipeline, PipelineConfig, Record};
use telemetry::Exchange;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin;
use crate::cloudwatch::{self, Activation, Activator, Kind, Sinks, Target};
#[cfg(unix)]
use crate::config::ChildStdout;
use crate::config::{self, Config, Env, NameSources, ProcessEnv};
use crate::health::HealthRunner;
use crate::metadata::{self, Detected, HostProbe, RegionSource};

/// Budget for telemetry to reach stdout and CloudWatch at exit (the Go original's sink-close
/// budget); events CloudWatch has not accepted by then are reported as not delivered.
pub const FLUSH_BUDGET: Duration = Duration::from_secs(10);

/// Extra wait beyond the detection budget before giving up on metadata for the app name.
const METADATA_GRACE: Duration = Duration::from_millis(100);

/// The stderr logger every part of cwproxy shares.
pub const DIAG: Diag = Diag::new("cwproxy");

/// A fatal error: printed as `cwproxy: <message>` and turned into an exit code.
#[derive(Debug)]
pub struct Fatal {
    /// Printed after `cwproxy: `; empty prints nothing.
    pub message: String,
    /// Process exit code.
    pub code: i32,
}

impl Fatal {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 1,
        }
    }
}

#[cfg(unix)]
fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid for writes of its whole length; gethostname NUL-terminates on success
    // (and we cap at the buffer length regardless).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

#[cfg(not(unix))]
fn hostname() -> Option<String> {
    std::env::var("COMPUTERNAME").ok().filter(|h| !h.is_empty())
}

fn load_config(detected: Option<SocketAddr>, meta: Option<&Detected>) -> Result<Config, Fatal> {
    let from_meta = meta.and_then(Detected::default_app_name);
    let names = NameSources {
        metadata: from_meta.as_deref(),
        hostname: hostname(),
    };
    // One error per line; `main` prefixes each with `cwproxy: `.
    config::load(&ProcessEnv, &names, detected).map_err(|e| Fatal::new(e.to_string()))
}

/// Runtime metadata, either known already or still being detected.
enum Metadata {
    Ready(Box<Detected>),
    Pending(JoinHandle<Detected>),
}

/// Starts metadata detection; it never holds up the listener (see [`settle`]).
fn start_metadata() -> (JoinHandle<Detected>, Duration) {
    // An invalid METADATA_DETECT_TIMEOUT fails `config::load` right after this.
    let budget = metadata::detect_budget(&ProcessEnv).unwrap_or(metadata::DETECT_BUDGET);
    let task =
        tokio::spawn(
            async move { metadata::detect(&ProcessEnv, &HostProbe::default(), budget).await },
        );
    (task, budget)
}

/// Called once the listener is bound. With `APP_NAME` set, metadata only enriches later entries
/// and nothing waits for it. With `APP_NAME` unset the name may come from metadata (EKS
/// deployment → ECS family → hostname), so we wait for detection — at most its 200 ms budget,
/// (`METADATA_DETECT_TIMEOUT`) while the kernel already queues connections — and recompute the configuration with it; the
/// name then never changes during the process lifetime.
async fn settle(
    config: Config,
    (meta, budget): (JoinHandle<Detected>, Duration),
    detected: Option<SocketAddr>,
) -> Result<(Config, Metadata), Fatal> {
    let app_name_set = ProcessEnv
        .get("APP_NAME")
        .is_some_and(|v| !v.trim().is_empty());
    if app_name_set {
        return Ok((config, Metadata::Pending(meta)));
    }
    let found = tokio::time::timeout(budget + METADATA_GRACE, meta)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let config = if found.default_app_name().is_some() {
        load_config(detected, Some(&found))?
    } else {
        config
    };
    Ok((config, Metadata::Ready(Box::new(found))))
}

/// Resolves the region and SDK configuration off the serving path and activates the sinks.
async fn start_cloudwatch(
    meta: Metadata,
    emitter: Emitter,
    mut activator: Activator,
    app_name: String,
    groups: (String, String),
) {
    let detected = match meta {
        Metadata::Ready(d) => *d,
        Metadata::Pending(task) => {
            let d = task.await.unwrap_or_default();
            if let Some(json) = d.meta.to_json() {
                // `set_aws_meta` may wait for room in the pipeline queue: not on a runtime thread.
                let _ = tokio::task::spawn_blocking(move || emitter.set_aws_meta(Some(json))).await;
            }
            d
        }
    };
    for warning in &detected.warnings {
        DIAG.log(warning);
    }
    let Some((region, source)) = metadata::resolve_region(&ProcessEnv, &detected) else {
        DIAG.log("AWS region is not configured; CloudWatch Logs and Metrics are disabled");
        return;
    };
    if source == RegionSource::Metadata {
        DIAG.log(format_args!(
            "AWS region is not configured in the environment; using {region:?} from runtime metadata"
        ));
    }
    let imds = metadata::imds_allowed(&ProcessEnv, &HostProbe::default());
    let client = match cloudwatch::load_client(&region, imds).await {
        Ok(client) => client,
        Err(e) => {
            // Left unactivated, both sinks are off; stdout is unaffected.
            DIAG.log(format_args!(
                "CloudWatch Logs disabled: {e} (events stay on stdout only)"
            ));
            return;
        }
    };
    let pid = std::process::id();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (traffic_group, health_group) = groups;
    for (kind, var, group) in [
        (Kind::Traffic, "LOG_GROUP_NAME", traffic_group),
        (Kind::Health, "HEALTH_LOG_GROUP_NAME", health_group),
    ] {
        if let Err(e) = crate::cwlogs::validate_group_name(&group) {
            // Left unactivated, the sink is off; stdout is unaffected.
            DIAG.log(format_args!(
                "failed to initialize CloudWatch {} sink: {var} {e}",
                kind.as_str()
            ));
            continue;
        }
        activator.activate(
            kind,
            Activation {
                client: client.clone(),
                target: Target {
                    group,
                    stream: crate::cwlogs::stream_name(&app_name, kind.as_str(), pid, now),
                },
            },
        );
    }
}

/// Binds `host:port` (`PROXY_HOST`), or by default `:port` on every interface, dual stack like
/// Go's `":port"`, falling back to IPv4 only.
fn bind(host: Option<std::net::IpAddr>, port: u16) -> Result<TcpListener, Fatal> {
    let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    let attempt = |addr: SocketAddr, dual: bool| -> std::io::Result<TcpListener> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        if dual {
            socket.set_only_v6(false)?;
        }
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        TcpListener::from_std(socket.into())
    };
    if let Some(ip) = host {
        let addr = SocketAddr::new(ip, port);
        return attempt(addr, false).map_err(|e| bind_error(&addr.to_string(), &e));
    }
    let any = format!(":{port}");
    match attempt(v6, true) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(bind_error(&any, &e)),
        Err(_) => attempt(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)), false)
            .map_err(|e| bind_error(&any, &e)),
    }
}

fn bind_error(addr: &str, e: &std::io::Error) -> Fatal {
    let reason = match e.kind() {
        std::io::ErrorKind::AddrInUse => "address already in use".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => e.to_string(),
    };
    Fatal::new(format!("listen tcp {addr}: bind: {reason}"))
}

/// Hands exchanges to telemetry, except those whose path is a health path (spec §3 step 7).
struct TrafficSink {
    emitter: Emitter,
    health_paths: HashSet<Vec<u8>>,
}

impl httpproxy::ExchangeSink for TrafficSink {
    fn exchange(&self, exchange: Exchange) {
        if self
            .health_paths
            .contains(decode_path(exchange.uri.path().as_bytes()).as_ref())
        {
            return;
        }
        self.emitter.emit(Record::Traffic(Box::new(exchange)));
    }
}

/// Everything that runs while serving, shared by both modes.
struct Running {
    model: Option<admin::Running>,
    pipeline: Pipeline,
    sinks: Sinks,
    cloudwatch_setup: JoinHandle<()>,
    health_stop: watch::Sender<bool>,
    health: tokio::task::JoinHandle<()>,
}

async fn serve(
    config: &Config,
    upstream: Upstream,
    listener: TcpListener,
    meta: Metadata,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(Running, Result<(), httpproxy::ServeError>), Fatal> {
    let aws_meta = match &meta {
        Metadata::Ready(d) => d.meta.to_json(),
        Metadata::Pending(_) => None,
    };
    let context = Context {
        app_name: config.app_name.clone(),
        aws_meta,
    };
    let (sinks, activator, router) = Sinks::new(DIAG);
    let upstream_target = match &upstream {
        Upstream::Addr(a) => (a.ip().to_string(), a.port()),
        Upstream::Host { host, port } => (host.clone(), *port),
    };
    let model = admin::start(&config.model, &config.app_name, upstream_target, |m| {
        DIAG.log(m)
    })
    .await
    .map_err(Fatal::new)?;
    let pipeline = Pipeline::start(
        PipelineConfig {
            output: config.output.clone(),
            observer: model
                .as_ref()
                .map(|m| m.model() as Arc<dyn telemetry::observe::Observer>),
            ..PipelineConfig::default()
        },
        context,
        stdout_writer(),
        vec![router],
        DIAG,
    )
    .map_err(|e| Fatal::new(format!("start telemetry writer: {e}")))?;
    let emitter = pipeline.emitter();
    let cloudwatch_setup = tokio::spawn(start_cloudwatch(
        meta,
        emitter.clone(),
        activator,
        config.app_name.clone(),
        (
            config.log_group_name.clone(),
            config.health_log_group_name.clone(),
        ),
    ));
    let health_paths = config
        .health_urls
        .iter()
        .map(|u| decode_path(u.path.as_bytes()).into_owned())
        .collect();
    let sink = Arc::new(TrafficSink {
        emitter: emitter.clone(),
        health_paths,
    });

    let (health_stop, health_rx) = watch::channel(false);
    let runner = HealthRunner::new(
        config.health_urls.clone(),
        config.health_interval,
        config.capture_limit,
        emitter,
        DIAG,
    );
    let health = tokio::spawn(runner.run(health_rx));

    let mut proxy = ProxyConfig::new(upstream);
    proxy.capture_limit = config.capture_limit;
    proxy.retry = config.retry.clone();
    proxy.logger = DIAG;
    proxy.response_header_timeout = config.timeouts.upstream_header;
    proxy.connect_timeout = config.timeouts.upstream_connect;
    proxy.header_read_timeout = config.timeouts.client_header;
    proxy.idle_timeout = config.timeouts.client_idle;
    let result = httpproxy::serve(listener, proxy, sink, shutdown).await;
    Ok((
        Running {
            model,
            pipeline,
            sinks,
            cloudwatch_setup,
            health_stop,
            health,
        },
        result,
    ))
}

impl Running {
    /// Stops health probes and flushes telemetry (stdout, then CloudWatch) within one budget.
    async fn finish(self) -> bool {
        let started = tokio::time::Instant::now();
        let _ = self.health_stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.health).await;
        // Sinks not activated yet by now stay off (their events are on stdout).
        self.cloudwatch_setup.abort();
        let pipeline = self.pipeline;
        let budget = FLUSH_BUDGET.saturating_sub(started.elapsed());
        let flushed = tokio::task::spawn_blocking(move || pipeline.shutdown(budget))
            .await
            .unwrap_or(false);
        let rest = FLUSH_BUDGET.saturating_sub(started.elapsed());
        let delivered = self.sinks.close(rest).await;
        if let Some(model) = self.model {
            model.stop(|m| DIAG.log(m)).await;
        }
        flushed && delivered
    }
}

/// Resolves when the process is asked to stop (SIGINT or SIGTERM; Ctrl-C where there are no Unix
/// signals), with the signal's name as Go prints it.
#[cfg(unix)]
fn shutdown_signal() -> Result<impl std::future::Future<Output = &'static str>, Fatal> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| Fatal::new(format!("install signal handler: {e}")))?;
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Fatal::new(format!("install signal handler: {e}")))?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => "interrupt",
            _ = term.recv() => "terminated",
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> Result<impl std::future::Future<Output = &'static str>, Fatal> {
    Ok(async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No console to wait on: run until the process is ended from outside.
            std::future::pending::<()>().await;
        }
        "interrupt"
    })
}

/// `cwproxy --check`: validates the configuration and prints it as cwproxy would run with it
/// (runtime metadata is detected within its usual budget, since it can name the app and the
/// region); nothing is bound, started or sent to AWS. Returns the report for stdout, or every
/// error.
pub async fn check() -> Result<String, Fatal> {
    let meta = start_metadata();
    let config = load_config(None, None)?;
    let (config, meta) = settle(config, meta, None).await?;
    let detected = match meta {
        Metadata::Ready(d) => *d,
        Metadata::Pending(task) => tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default(),
    };
    let mut rows = crate::check::rows(&ProcessEnv, &config);
    let region = match metadata::resolve_region(&ProcessEnv, &detected) {
        Some((region, source)) => (region, source.label().to_owned()),
        None => (
            "none".to_owned(),
            "CloudWatch Logs off: stdout only".to_owned(),
        ),
    };
    rows.push(crate::check::Row::derived("AWS region", region.0, region.1));
    for (var, group) in [
        ("LOG_GROUP_NAME", &config.log_group_name),
        ("HEALTH_LOG_GROUP_NAME", &config.health_log_group_name),
    ] {
        // Not fatal when running (only that sink goes off), but worth a warning here.
        if let Err(e) = crate::cwlogs::validate_group_name(group) {
            DIAG.log(format_args!(
                "warning: {var} {e}; its CloudWatch sink would be off"
            ));
        }
    }
    Ok(crate::check::render(&rows))
}

/// Normal mode: proxy to `APP_HOST:APP_PORT` until SIGINT/SIGTERM.
pub async fn run_normal() -> Result<i32, Fatal> {
    let meta = start_metadata();
    let config = load_config(None, None)?;
    let listener = bind(config.proxy_host, config.proxy_port)?;
    let (config, meta) = settle(config, meta, None).await?;
    let stop = shutdown_signal()?;
    let shutdown = async move {
        let name = stop.await;
        DIAG.log(format_args!("received signal {name}; shutting down"));
    };
    let upstream = Upstream::Host {
        host: config.app_host.clone(),
        port: config.app_port,
    };
    let (running, result) = serve(&config, upstream, listener, meta, shutdown).await?;
    let flushed = running.finish().await;
    match result {
        Err(e) => Err(Fatal::new(e.to_string())),
        Ok(()) if !flushed => Err(Fatal::new(
            "failed to flush and close sinks: context deadline exceeded",
        )),
        Ok(()) => Ok(0),
    }
}

/// Waits until `host:port` accepts a TCP connection, within `limit`. A name may resolve to several
/// addresses (`localhost`: `::1` and `127.0.0.1`) and the app may listen on only one of them, so
/// each is tried at once and the first that connects wins.
#[cfg(unix)]
async fn wait_app_ready(host: &str, port: u16, limit: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + limit;
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout_at(deadline, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(e)) => return Err(format!("resolve {host}: {e}")),
            Err(_) => return Err(format!("resolve {host}: timed out")),
        };
    let mut waits = tokio::task::JoinSet::new();
    for addr in addrs {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        waits.spawn(process::wait_tcp_ready(addr, remaining));
    }
    let mut last = format!("{host} resolved to no address");
    while let Some(done) = waits.join_next().await {
        match done {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last = e.last.to_string(),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

#[cfg(unix)]
/// Inspector mode: start `command args…`, find its port, proxy until it exits, exit with its code.
pub async fn run_inspector(command: OsString, args: Vec<OsString>) -> Result<i32, Fatal> {
    let shown = command.to_string_lossy().into_owned();
    // Validate the parts of the config that do not depend on the port before starting anything.
    let meta = start_metadata();
    let pre = load_config(None, None)?;
    let opts = SpawnOptions {
        adopt_orphans: true,
        stdout: match pre.child_stdout {
            ChildStdout::Inherit => process::Stdio::Inherit,
            ChildStdout::Stderr => process::Stdio::ParentStderr,
        },
        ..SpawnOptions::default()
    };
    let mut child = Child::spawn(&command, &args, &opts)
        .map_err(|e| Fatal::new(format!("start inspector target: {e}")))?;
    DIAG.log(format_args!(
        "inspector mode started child process {shown:?} (pid={})",
        child.pid()
    ));
    let mut forwarder = SignalForwarder::start(child.group(), pre.stop_grace)
        .map_err(|e| Fatal::new(format!("install signal handlers: {e}")))?;

    let upstream = if pre.app_port_present {
        // Serve and probe only once the app accepts connections, so a starting app is neither
        // logged as down for a whole HEALTH_INTERVAL nor answered with 502s.
        let ready = tokio::select! {
            r = wait_app_ready(&pre.app_host, pre.app_port, pre.detect_timeout) => r,
            status = child.wait_group() => {
                let status = status.map_err(|e| Fatal::new(format!("wait for inspector child {shown:?}: {e}")))?;
                let code = match status.exit_code_for_parent() {
                    0 => 1,
                    c => c,
                };
                return Err(Fatal {
                    message: format!(
                        "inspector child {shown:?} exited with {status} before {} accepted connections",
                        config::join_host_port(&pre.app_host, pre.app_port)
                    ),
                    code,
                });
            }
            sig = forwarder.stop_requested() => {
                let status = child.stop(pre.stop_grace).await.ok();
                let name = sig.map(|s| s.as_str()).unwrap_or("signal");
                DIAG.log(format_args!("received {name} before {shown:?} accepted connections"));
                return Ok(status.map_or(1, ExitStatus::exit_code_for_parent));
            }
        };
        match ready {
            Ok(()) => DIAG.log(format_args!(
                "inspector mode: {shown:?} accepts connections on {} (APP_PORT)",
                config::join_host_port(&pre.app_host, pre.app_port)
            )),
            // A slow app is not killed for it: serving starts and health lines tell the truth.
            Err(e) => DIAG.log(format_args!(
                "inspector mode: {shown:?} did not accept connections on {} within {} (INSPECTOR_DETECT_TIMEOUT): {e}; serving anyway",
                config::join_host_port(&pre.app_host, pre.app_port),
                gosyntax::format_go_duration(pre.detect_timeout)
            )),
        }
        Upstream::Host {
            host: pre.app_host.clone(),
            port: pre.app_port,
        }
    } else {
        let detect = DetectOptions {
            exclude_port: Some(pre.proxy_port),
            timeout: pre.detect_timeout,
            ..DetectOptions::default()
        };
        let detected = tokio::select! {
            r = process::wait_for_listen_port(&mut child, &detect) => r,
            sig = forwarder.stop_requested() => {
                // The signal was already forwarded; wait for the child within the grace period.
                let status = child.stop(pre.stop_grace).await.ok();
                let name = sig.map(|s| s.as_str()).unwrap_or("signal");
                DIAG.log(format_args!("received {name} before a listen port was detected for {shown:?}"));
                return Ok(status.map_or(1, ExitStatus::exit_code_for_parent));
            }
        };
        match detected {
            Ok(addr) => {
                DIAG.log(format_args!(
                    "inspector mode detected listen port {} for {shown:?}",
                    addr.port()
                ));
                Upstream::Addr(addr)
            }
            Err(DetectError::ChildExited { status, .. }) => {
                let code = match status.exit_code_for_parent() {
                    0 => 1,
                    c => c,
                };
                return Err(Fatal {
                    message: format!("inspector child {shown:?} exited with {status} before a listen port was detected"),
                    code,
                });
            }
            Err(e) => {
                DIAG.log(format_args!(
                    "stopping inspector child process {shown:?} after startup failure"
                ));
                let _ = child.stop(pre.stop_grace).await;
                let message = match e {
                    DetectError::Timeout { timeout, .. } => format!(
                        "inspector mode found no listening TCP port for {shown:?} within {} (INSPECTOR_DETECT_TIMEOUT)",
                        gosyntax::format_go_duration(timeout)
                    ),
                    other => other.to_string(),
                };
                return Err(Fatal::new(message));
            }
        }
    };
    let detected = match &upstream {
        Upstream::Addr(a) => Some(*a),
        Upstream::Host { .. } => None,
    };
    let config = match load_config(detected, None) {
        Ok(c) => c,
        Err(e) => {
            DIAG.log(format_args!(
                "stopping inspector child process {shown:?} after startup failure"
            ));
            let _ = child.stop(pre.stop_grace).await;
            return Err(e);
        }
    };
    let listener = match bind(config.proxy_host, config.proxy_port) {
        Ok(l) => l,
        Err(e) => {
            DIAG.log(format_args!(
                "stopping inspector child process {shown:?} after startup failure"
            ));
            let _ = child.stop(pre.stop_grace).await;
            return Err(e);
        }
    };

    let (config, meta) = settle(config, meta, detected).await?;

    // The server stops when the child's whole group is gone; signals only reach the child (it
    // decides when to exit), and the forwarder escalates to SIGKILL after the grace period.
    let (exited_tx, exited_rx) = tokio::sync::oneshot::channel::<std::io::Result<ExitStatus>>();
    let supervise = async move {
        let status = loop {
            tokio::select! {
                status = child.wait_group() => break status,
                event = forwarder.next_event() => match event {
                    Some(ForwardEvent::Forwarded { signal, result }) => match result {
                        Ok(()) => DIAG.log(format_args!("forwarding signal {} to inspector child", signal.as_str())),
                        Err(e) => DIAG.log(format_args!("failed to forward signal to inspector child: {e}")),
                    },
                    Some(ForwardEvent::Escalated { reason, result }) => {
                        let why = match reason {
                            process::Escalation::SecondSignal(s) => format!("second {}", s.as_str()),
                            process::Escalation::GraceElapsed => "stop grace period elapsed".to_owned(),
                        };
                        match result {
                            Ok(()) => DIAG.log(format_args!("killing inspector child process group ({why})")),
                            Err(e) => DIAG.log(format_args!("failed to kill inspector child process group: {e}")),
                        }
                    }
                    None => break child.wait_group().await,
                },
            }
        };
        let _ = exited_tx.send(status);
    };
    let supervisor = tokio::spawn(supervise);
    let slot: Arc<std::sync::Mutex<Option<std::io::Result<ExitStatus>>>> = Arc::default();
    let writer = Arc::clone(&slot);
    let shutdown = async move {
        let status = exited_rx
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("supervisor ended")));
        if let Ok(mut s) = writer.lock() {
            *s = Some(status);
        }
    };
    let (running, result) = serve(&config, upstream, listener, meta, shutdown).await?;
    if let Err(e) = &result {
        DIAG.log(format_args!("server shutdown returned error: {e}"));
    }
    if !running.finish().await {
        DIAG.log("failed to flush and close sinks: context deadline exceeded");
    }
    let _ = supervisor.await;
    let status = slot.lock().ok().and_then(|mut s| s.take());
    match status {
        Some(Ok(status)) => Ok(status.exit_code_for_parent()),
        Some(Err(e)) => Err(Fatal::new(format!(
            "wait for inspector child {shown:?}: {e}"
        ))),
        None => Err(Fatal::new(format!(
            "inspector child {shown:?}: exit status unknown"
        ))),
    }
}

/// Inspector mode launches and watches the app through Unix process groups and signals; on other
/// systems this build runs normal mode only.
#[cfg(not(unix))]
pub async fn run_inspector(command: OsString, _args: Vec<OsString>) -> Result<i32, Fatal> {
    Err(Fatal::new(format!(
        "inspector mode (starting {command:?}) needs a Unix system; start the app yourself and run cwproxy without arguments (normal mode, APP_PORT)"
    )))
}
