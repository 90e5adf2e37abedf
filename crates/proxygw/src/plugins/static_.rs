//! The `static` plugin: frontends `always`, `http`, `tcp`; targets `cmd`, `none` (spec §7.2–7.6, plus `tcp`).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::{
    duration_opt, endpoints_accepting, forward_output, lock, BoxFuture, FrontendCtx,
    FrontendHandler, PluginDef, TargetCtx, TargetHandler, READY_POLL,
};
use crate::config::Protocol;
use crate::handle::TargetState;
use crate::log::Logger;
use netpolicy::{Allowlist, IpNet};

/// The static plugin's schema (plugin block and per-kind options).
pub const SCHEMA: &str = include_str!("../../../../configs/plugins/static.schema.yaml");
/// Period of static:always warm signals.
pub const ALWAYS_PERIOD: Duration = Duration::from_secs(1);
/// How long a stopping static:http/tcp frontend lets open connections finish.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// Longest time static:http waits for a request head (the original had no timeouts).
pub const HTTP_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for static:cmd `ready_timeout`.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default for static:cmd `stop_timeout` (the original's 5 s between SIGINT and SIGKILL).
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for static:tcp `hold_timeout`.
pub const DEFAULT_HOLD_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed for static:tcp's own connection to the backend once the target is active.
pub const BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// While static:tcp splices a held connection it re-signals warm this often so the idle clock never fires under it.
pub const SPLICE_KEEPALIVE: Duration = Duration::from_secs(1);

/// The plugin definition.
pub fn plugin() -> PluginDef {
    PluginDef {
        source: "static",
        schema: SCHEMA,
        frontends: vec![
            (
                "always",
                Arc::new(|c: &FrontendCtx, o: &Map<String, Value>| always(c, o)),
            ),
            (
                "http",
                Arc::new(|c: &FrontendCtx, o: &Map<String, Value>| http(c, o)),
            ),
            (
                "tcp",
                Arc::new(|c: &FrontendCtx, o: &Map<String, Value>| tcp(c, o)),
            ),
        ],
        targets: vec![
            (
                "cmd",
                Arc::new(|c: &TargetCtx, o: &Map<String, Value>| cmd(c, o)),
            ),
            (
                "none",
                Arc::new(|_: &TargetCtx, _: &Map<String, Value>| {
                    Ok(Arc::new(NoneTarget) as Arc<dyn TargetHandler>)
                }),
            ),
        ],
        on_load: None,
    }
}

// ---------------------------------------------------------------- CIDR allow-list

/// `wake_allow`: `None` allows everyone.
fn allow_list(o: &Map<String, Value>, what: &str) -> Result<Option<Allowlist>, String> {
    match o.get("wake_allow") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::String(s) => IpNet::parse(s)
                    .map_err(|_| format!("{what} option wake_allow: invalid CIDR {s:?}")),
                _ => Err(format!(
                    "{what} option wake_allow must contain only strings"
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|nets| Some(Allowlist::new(nets))),
        Some(_) => Err(format!("{what} option wake_allow must be a list of CIDRs")),
    }
}

fn allowed(list: &Option<Allowlist>, ip: IpAddr) -> bool {
    list.as_ref().is_none_or(|l| l.allows(ip))
}

/// Listens on `addr`; an IPv6 socket serves IPv4 too only for a dual-home frontend (`dual_stack`).
fn bind_tcp(addr: SocketAddr, dual_stack: bool) -> std::io::Result<TcpListener> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // A single-family [::] must not also claim the IPv4 port: IPv4 has its own frontends.
        sock.set_only_v6(!dual_stack)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    TcpListener::from_std(sock.into())
}

/// A client address as logged and matched against `wake_allow`: IPv4 clients of a dual-stack socket arrive
/// as IPv4-mapped IPv6 addresses and are shown and checked as the IPv4 addresses they are.
fn client_addr(peer: SocketAddr) -> SocketAddr {
    SocketAddr::new(peer.ip().to_canonical(), peer.port())
}

/// Accept loop plus the connections it spawned; stop() ends accepting and gives connections [`STOP_GRACE`].
#[derive(Default)]
struct Server {
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<tokio::task::JoinSet<()>>>,
}

impl Server {
    async fn stop(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
            let _ = a.await;
        }
        let mut set = std::mem::take(&mut *lock(&self.conns));
        let _ = tokio::time::timeout(STOP_GRACE, async {
            while set.join_next().await.is_some() {}
        })
        .await;
        set.abort_all();
    }
}

// ---------------------------------------------------------------- static:always

struct Always {
    waker: crate::handle::Waker,
    task: Mutex<Option<JoinHandle<()>>>,
}

fn always(c: &FrontendCtx, _o: &Map<String, Value>) -> Result<Arc<dyn FrontendHandler>, String> {
    Ok(Arc::new(Always {
        waker: c.waker.clone(),
        task: Mutex::new(None),
    }))
}

impl FrontendHandler for Always {
    fn start(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut t = lock(&self.task);
            if t.is_none() {
                let waker = self.waker.clone();
                *t = Some(tokio::spawn(async move {
                    let mut tick = tokio::time::interval_at(
                        tokio::time::Instant::now() + ALWAYS_PERIOD,
                        ALWAYS_PERIOD,
                    );
                    loop {
                        tick.tick().await;
                        waker.wake(None);
                    }
                }));
            }
            Ok(())
        })
    }
    fn stop(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            if let Some(t) = lock(&self.task).take() {
                t.abort();
            }
            Ok(())
        })
    }
}

// ---------------------------------------------------------------- static:http

struct Http {
    listen: SocketAddr,
    dual_stack: bool,
    core: Arc<HttpCore>,
    server: tokio::sync::Mutex<Server>,
}

/// What connection tasks need from a static:http frontend.
struct HttpCore {
    name: String,
    target: String,
    content: bytes::Bytes,
    content_type: &'static str,
    endpoint: String,
    allow: Option<Allowlist>,
    waker: crate::handle::Waker,
    log: Logger,
}

/// Go 1.22 ServeMux matching for a plain path pattern: `/` matches all, `/x/` a subtree, `/x` exactly.
pub fn pattern_matches(pattern: &str, path: &str) -> bool {
    if pattern.ends_with('/') {
        path.starts_with(pattern)
    } else {
        path == pattern
    }
}

/// A small stand-in for Go's content sniffing: HTML, UTF-8 text, or bytes.
fn sniff(content: &[u8]) -> &'static str {
    let head = String::from_utf8_lossy(&content[..content.len().min(512)])
        .trim_start()
        .to_ascii_lowercase();
    const HTML: &[&str] = &[
        "<!doctype html",
        "<html",
        "<head",
        "<body",
        "<p",
        "<h1",
        "<div",
        "<title",
    ];
    if HTML.iter().any(|t| head.starts_with(t)) {
        "text/html; charset=utf-8"
    } else if std::str::from_utf8(content).is_ok() {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

fn http(c: &FrontendCtx, o: &Map<String, Value>) -> Result<Arc<dyn FrontendHandler>, String> {
    if c.protocol != Protocol::Tcp {
        return Err("static http frontend requires tcp protocol".into());
    }
    let Some(Value::String(content)) = o.get("content") else {
        return Err("static http frontend option content is required".into());
    };
    let endpoint = match o.get("endpoint") {
        Some(Value::String(e)) => e.clone(),
        _ => "/".into(),
    };
    if !endpoint.starts_with('/') {
        return Err("static http frontend option endpoint must start with /".into());
    }
    // Go's ServeMux panicked at Start on wildcard/method syntax such as "/{"; only plain paths are accepted.
    if endpoint.contains(['{', '}', ' ', '?', '#']) {
        return Err(format!(
            "static http frontend option endpoint {endpoint:?} must be a plain path (no wildcards, methods or queries)"
        ));
    }
    Ok(Arc::new(Http {
        listen: c.listen,
        dual_stack: c.dual_backend.is_some(),
        core: Arc::new(HttpCore {
            name: c.name.clone(),
            target: c.target.clone(),
            content_type: sniff(content.as_bytes()),
            content: bytes::Bytes::from(content.clone()),
            endpoint,
            allow: allow_list(o, "static http frontend")?,
            waker: c.waker.clone(),
            log: c.log.clone(),
        }),
        server: tokio::sync::Mutex::new(Server::default()),
    }))
}

impl HttpCore {
    fn respond(
        &self,
        path: &str,
        peer: SocketAddr,
    ) -> http::Response<http_body_util::Full<bytes::Bytes>> {
        use http_body_util::Full;
        if !pattern_matches(&self.endpoint, path) {
            return http::Response::builder()
                .status(404)
                .header("content-type", "text/plain; charset=utf-8")
                .header("x-content-type-options", "nosniff")
                .body(Full::new(bytes::Bytes::from_static(
                    b"404 page not found\n",
                )))
                .unwrap_or_default();
        }
        if allowed(&self.allow, peer.ip()) {
            self.log.info(
                "wake",
                &[
                    ("frontend", &self.name),
                    ("target", &self.target),
                    ("source", &peer),
                ],
            );
            self.waker.wake(Some(peer));
        } else {
            self.log.info(
                "wake refused: source not in wake_allow",
                &[
                    ("frontend", &self.name),
                    ("target", &self.target),
                    ("source", &peer),
                ],
            );
            self.waker.refused();
        }
        http::Response::builder()
            .status(200)
            .header("content-type", self.content_type)
            .body(Full::new(self.content.clone()))
            .unwrap_or_default()
    }
}

impl FrontendHandler for Http {
    fn start(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut server = self.server.lock().await;
            if server.accept.is_some() {
                return Ok(());
            }
            let listener = bind_tcp(self.listen, self.dual_stack)
                .map_err(|e| format!("listen tcp {}: {e}", self.listen))?;
            let conns = server.conns.clone();
            let core = self.core.clone();
            server.accept = Some(tokio::spawn(async move {
                loop {
                    let (stream, peer) = match listener.accept().await {
                        Ok(x) => x,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning or dying.
                            core.log.warn("accept failed", &[("err", &e)]);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let peer = client_addr(peer);
                    let core = core.clone();
                    lock(&conns).spawn(async move {
                        let svc = hyper::service::service_fn(
                            move |req: hyper::Request<hyper::body::Incoming>| {
                                let resp = core.respond(req.uri().path(), peer);
                                async move { Ok::<_, std::convert::Infallible>(resp) }
                            },
                        );
                        // One request per connection: a kept-alive socket would outlive the warm-up and
                        // then see its packets DNATed mid-stream.
                        let conn = hyper::server::conn::http1::Builder::new()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(HTTP_HEADER_TIMEOUT)
                            .keep_alive(false)
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                        let _ = tokio::time::timeout(HTTP_HEADER_TIMEOUT * 3, conn).await;
                    });
                    // Reap finished connection tasks so the set does not grow.
                    while lock(&conns).try_join_next().is_some() {}
                }
            }));
            Ok(())
        })
    }
    fn stop(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.server.lock().await.stop().await;
            Ok(())
        })
    }
}

// ---------------------------------------------------------------- static:tcp

struct Tcp {
    listen: SocketAddr,
    name: String,
    target: String,
    /// `backend` and `dual_backend` of the frontend's context: [`FrontendCtx::backend_for`] picks one.
    backends: FrontendCtx,
    allow: Option<Allowlist>,
    hold: Duration,
    waker: crate::handle::Waker,
    state: watch::Receiver<TargetState>,
    log: Logger,
    server: tokio::sync::Mutex<Server>,
}

fn tcp(c: &FrontendCtx, o: &Map<String, Value>) -> Result<Arc<dyn FrontendHandler>, String> {
    if c.protocol != Protocol::Tcp {
        return Err("static tcp frontend requires tcp protocol".into());
    }
    Ok(Arc::new(Tcp {
        listen: c.listen,
        name: c.name.clone(),
        target: c.target.clone(),
        backends: c.clone(),
        allow: allow_list(o, "static tcp frontend")?,
        hold: duration_opt(
            o,
            "hold_timeout",
            "static tcp frontend",
            DEFAULT_HOLD_TIMEOUT,
        )?,
        waker: c.waker.clone(),
        state: c.target_state.clone(),
        log: c.log.clone(),
        server: tokio::sync::Mutex::new(Server::default()),
    }))
}

/// Holds one client while the target warms, then splices it to the backend.
async fn hold_and_splice(
    mut client: TcpStream,
    peer: SocketAddr,
    backend: SocketAddr,
    hold: Duration,
    mut state: watch::Receiver<TargetState>,
    waker: crate::handle::Waker,
) -> Result<(), String> {
    let ready = tokio::time::timeout(hold, state.wait_for(|s| *s == TargetState::Active))
        .await
        .map(|r| r.map(|_| ()));
    match ready {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err("engine closed".into()),
        Err(_) => return Err(format!("target not active within {hold:?}")),
    }
    let mut upstream = tokio::time::timeout(BACKEND_CONNECT_TIMEOUT, TcpStream::connect(backend))
        .await
        .map_err(|_| format!("connect {backend}: timed out"))?
        .map_err(|e| format!("connect {backend}: {e}"))?;
    let keepalive = tokio::spawn(async move {
        let mut t = tokio::time::interval(SPLICE_KEEPALIVE);
        loop {
            t.tick().await;
            waker.wake(Some(peer));
        }
    });
    let r = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    keepalive.abort();
    r.map(|_| ()).map_err(|e| format!("splice: {e}"))
}

impl FrontendHandler for Tcp {
    fn start(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut server = self.server.lock().await;
            if server.accept.is_some() {
                return Ok(());
            }
            let listener = bind_tcp(self.listen, self.backends.dual_backend.is_some())
                .map_err(|e| format!("listen tcp {}: {e}", self.listen))?;
            let conns = server.conns.clone();
            let (name, target, backends, allow, hold, waker, state, log) = (
                self.name.clone(),
                self.target.clone(),
                self.backends.clone(),
                self.allow.clone(),
                self.hold,
                self.waker.clone(),
                self.state.clone(),
                self.log.clone(),
            );
            server.accept = Some(tokio::spawn(async move {
                loop {
                    let (stream, peer) = match listener.accept().await {
                        Ok(x) => x,
                        Err(e) => {
                            log.warn("accept failed", &[("err", &e)]);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let peer = client_addr(peer);
                    let backend = backends.backend_for(peer.ip());
                    if !allowed(&allow, peer.ip()) {
                        // Refused, not held: a port scanner must not wake the target.
                        log.info(
                            "wake refused: source not in wake_allow",
                            &[("frontend", &name), ("target", &target), ("source", &peer)],
                        );
                        waker.refused();
                        drop(stream);
                        continue;
                    }
                    log.info(
                        "wake",
                        &[("frontend", &name), ("target", &target), ("source", &peer)],
                    );
                    waker.wake(Some(peer));
                    let (state, waker, log, name) =
                        (state.clone(), waker.clone(), log.clone(), name.clone());
                    lock(&conns).spawn(async move {
                        if let Err(e) =
                            hold_and_splice(stream, peer, backend, hold, state, waker).await
                        {
                            log.warn(
                                "held connection failed",
                                &[("frontend", &name), ("source", &peer), ("err", &e)],
                            );
                        }
                    });
                    while lock(&conns).try_join_next().is_some() {}
                }
            }));
            Ok(())
        })
    }
    fn stop(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.server.lock().await.stop().await;
            Ok(())
        })
    }
}

// ---------------------------------------------------------------- static:none

struct NoneTarget;

impl TargetHandler for NoneTarget {
    fn warm(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
    fn drain(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

// ---------------------------------------------------------------- static:cmd

/// A running command: its monitor task owns the child; drain asks it to stop.
struct Running {
    pid: u32,
    /// Frozen by a drain (`idle: freeze`); the next warm thaws it.
    frozen: bool,
    /// Its cgroup when `idle: freeze` has the cgroup v2 freezer; `None`: SIGSTOP/SIGCONT to the group.
    cgroup: Option<super::freezer::Cgroup>,
    stop: Option<oneshot::Sender<oneshot::Sender<String>>>,
    exited: watch::Receiver<Option<String>>,
}

/// `static:cmd` option `idle`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Idle {
    /// A drain ends the process group.
    Stop,
    /// A drain freezes the backend: cgroup v2 freezer where available, else SIGSTOP.
    Freeze,
    /// A drain freezes the process group with SIGSTOP (and a warm resumes it with SIGCONT), always.
    FreezeSignal,
}

impl Running {
    /// Freezes or thaws the backend: its cgroup where it has one, else SIGSTOP/SIGCONT to its group.
    async fn set_frozen(&mut self, frozen: bool) -> Result<(), String> {
        match &self.cgroup {
            Some(g) => g.set_frozen(frozen).await?,
            None => {
                let sig = if frozen {
                    process::Signal::SIGSTOP
                } else {
                    process::Signal::SIGCONT
                };
                process::ProcessGroup::new(self.pid)
                    .signal(sig)
                    .map_err(|e| format!("{} process group {}: {e}", sig.as_str(), self.pid))?;
            }
        }
        self.frozen = frozen;
        Ok(())
    }

    /// How it is frozen, for the log.
    fn how(&self) -> &'static str {
        if self.cgroup.is_some() {
            "cgroup"
        } else {
            "SIGSTOP"
        }
    }
}

struct Cmd {
    target: String,
    command: String,
    tcp_endpoints: Vec<SocketAddr>,
    ready_timeout: Duration,
    stop_timeout: Duration,
    log: Logger,
    exited: crate::handle::ExitNotifier,
    running: tokio::sync::Mutex<Option<Running>>,
    /// Where the backend record goes ([`crate::instance::backends`]); `None` without an instance lock.
    run_dir: Option<std::path::PathBuf>,
    /// Set once a backend left running by a previous daemon has been looked for (and stopped).
    reclaimed: tokio::sync::OnceCell<()>,
    /// What a drain does to the backend.
    idle: Idle,
}

fn cmd(c: &TargetCtx, o: &Map<String, Value>) -> Result<Arc<dyn TargetHandler>, String> {
    let command = match o.get("command") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => return Err("static cmd target option command is required".into()),
    };
    Ok(Arc::new(Cmd {
        target: c.name.clone(),
        command,
        tcp_endpoints: c
            .endpoints
            .iter()
            .filter(|e| e.protocol == Protocol::Tcp)
            .map(|e| e.address)
            .collect(),
        ready_timeout: duration_opt(
            o,
            "ready_timeout",
            "static cmd target",
            DEFAULT_READY_TIMEOUT,
        )?,
        stop_timeout: duration_opt(o, "stop_timeout", "static cmd target", DEFAULT_STOP_TIMEOUT)?,
        log: c.log.clone(),
        exited: c.exited.clone(),
        running: tokio::sync::Mutex::new(None),
        run_dir: crate::instance::backends_dir(),
        reclaimed: tokio::sync::OnceCell::new(),
        idle: match o.get("idle") {
            None | Some(Value::Null) => Idle::Stop,
            Some(Value::String(s)) if s == "stop" => Idle::Stop,
            Some(Value::String(s)) if s == "freeze" => Idle::Freeze,
            Some(Value::String(s)) if s == "freeze-signal" => Idle::FreezeSignal,
            Some(other) => {
                return Err(format!(
                    "static cmd target option idle must be \"stop\", \"freeze\" or \"freeze-signal\", got {other}"
                ))
            }
        },
    }))
}

impl Cmd {
    fn spawn(&self) -> Result<Running, String> {
        let cgroup = match self.idle {
            Idle::Freeze => match super::freezer::Cgroup::create(&self.target) {
                Ok(g) => Some(g),
                Err(e) => {
                    self.log.info(
                        "cgroup v2 freezer unavailable; idle: freeze uses SIGSTOP",
                        &[("target", &self.target), ("reason", &e)],
                    );
                    None
                }
            },
            _ => None,
        };
        let opts = process::SpawnOptions {
            cgroup: cgroup.as_ref().map(|g| g.dir().to_path_buf()),
            stdin: process::Stdio::Null,
            stdout: process::Stdio::Piped,
            stderr: process::Stdio::Piped,
            // A daemon killed with SIGKILL takes its backend along (the rest of the group, if the command
            // forked instead of `exec`, is stopped by the next daemon through the backend record).
            parent_death_signal: Some(process::Signal::SIGKILL),
            ..Default::default()
        };
        let mut child = process::Child::spawn(
            std::ffi::OsStr::new("/bin/sh"),
            &["-c".into(), self.command.clone().into()],
            &opts,
        )
        .map_err(|e| e.to_string())?;
        let pid = child.pid();
        if let Some(dir) = &self.run_dir {
            if let Err(e) = crate::instance::backends::record(dir, &self.target, pid) {
                self.log.warn(
                    "cannot record the backend; a successor could not stop it after a crash",
                    &[("target", &self.target), ("err", &e)],
                );
            }
        }
        if let Some(o) = child.take_stdout() {
            forward_output(
                o,
                self.log.clone(),
                self.target.clone(),
                "command output",
                "stdout",
            );
        }
        if let Some(e) = child.take_stderr() {
            forward_output(
                e,
                self.log.clone(),
                self.target.clone(),
                "command output",
                "stderr",
            );
        }
        let (stop_tx, stop_rx) = oneshot::channel::<oneshot::Sender<String>>();
        let (exit_tx, exit_rx) = watch::channel(None);
        let cgroup_of_task = cgroup.clone();
        let (grace, notifier, log, target, run_dir) = (
            self.stop_timeout,
            self.exited.clone(),
            self.log.clone(),
            self.target.clone(),
            self.run_dir.clone(),
        );
        tokio::spawn(async move {
            let _forget = ForgetOnDrop(run_dir, target.clone(), pid);
            let _cgroup = RemoveOnDrop(cgroup_of_task);
            tokio::select! {
                status = child.wait() => {
                    let reason = match status {
                        Ok(s) => s.to_string(),
                        Err(e) => format!("wait: {e}"),
                    };
                    // Children the shell left in the group go with it.
                    let _ = child.stop_with(process::Signal::SIGINT, grace).await;
                    exit_tx.send_replace(Some(reason.clone()));
                    notifier.exited(format!("command exited with {reason}"));
                }
                req = stop_rx => {
                    let result = match child.stop_with(process::Signal::SIGINT, grace).await {
                        Ok(s) => s.to_string(),
                        Err(e) => { log.warn("command stop failed", &[("target", &target), ("err", &e)]); e.to_string() }
                    };
                    exit_tx.send_replace(Some(result.clone()));
                    if let Ok(reply) = req { let _ = reply.send(result); }
                }
            }
        });
        self.log.info(
            "command started",
            &[
                ("target", &self.target),
                ("pid", &pid),
                ("command", &self.command),
            ],
        );
        Ok(Running {
            pid,
            frozen: false,
            cgroup,
            stop: Some(stop_tx),
            exited: exit_rx,
        })
    }

    async fn wait_ready(&self, mut exited: watch::Receiver<Option<String>>) -> Result<(), String> {
        if self.ready_timeout.is_zero() {
            return Ok(());
        }
        tokio::select! {
            r = endpoints_accepting(&self.tcp_endpoints, self.ready_timeout) => r,
            r = exited.wait_for(|e| e.is_some()) => {
                let why = r.ok().and_then(|e| e.clone()).unwrap_or_default();
                let why: String = why;
                Err(format!("command exited before it was ready: {why}"))
            }
        }
    }

    /// Stops the backend a previous daemon left running (it died without stopping it), so the new one can
    /// bind its ports: SIGINT to its process group, `stop_timeout`, then SIGKILL.
    async fn reclaim_predecessor(&self) {
        let Some(dir) = &self.run_dir else { return };
        let Some(pid) = crate::instance::backends::left_running(dir, &self.target) else {
            return;
        };
        self.log.warn(
            "stopping a backend left running by a previous daemon",
            &[("target", &self.target), ("pid", &pid)],
        );
        let group = process::ProcessGroup::new(pid);
        let _ = group.signal(process::Signal::SIGINT);
        let deadline = tokio::time::Instant::now() + self.stop_timeout;
        while group.is_alive() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(READY_POLL).await;
        }
        if group.is_alive() {
            let _ = group.signal(process::Signal::SIGKILL);
            let limit = tokio::time::Instant::now() + Duration::from_secs(1);
            while group.is_alive() && tokio::time::Instant::now() < limit {
                tokio::time::sleep(READY_POLL).await;
            }
        }
        crate::instance::backends::forget_if(dir, &self.target, pid);
    }

    async fn stop_running(&self, guard: &mut Option<Running>) {
        let Some(mut r) = guard.take() else { return };
        if let Some(stop) = r.stop.take() {
            let (tx, rx) = oneshot::channel();
            if stop.send(tx).is_ok() {
                let _ = rx.await;
                self.log.info(
                    "command stopped",
                    &[("target", &self.target), ("pid", &r.pid)],
                );
                return;
            }
        }
        // The monitor already saw the exit; wait for it to finish cleaning the group.
        let _ = r.exited.wait_for(|e| e.is_some()).await;
    }
}

/// Deletes a backend's record when its monitor task ends (the backend has exited or been stopped).
/// Removes a backend's cgroup when its monitor task ends (empty by then, unless something escaped the
/// process group).
struct RemoveOnDrop(Option<super::freezer::Cgroup>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.remove();
        }
    }
}

struct ForgetOnDrop(Option<std::path::PathBuf>, String, u32);

impl Drop for ForgetOnDrop {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            crate::instance::backends::forget_if(dir, &self.1, self.2);
        }
    }
}

impl TargetHandler for Cmd {
    fn warm(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut guard = self.running.lock().await;
            if let Some(r) = guard.as_mut() {
                if r.exited.borrow().is_none() {
                    if !r.frozen {
                        return Ok(());
                    }
                    r.set_frozen(false).await?;
                    self.log.info(
                        "command resumed",
                        &[("target", &self.target), ("pid", &r.pid), ("how", &r.how())],
                    );
                    let exited = r.exited.clone();
                    drop(guard);
                    return self.wait_ready(exited).await;
                }
                // It died on its own: forget it and start afresh (the original said "already started").
                self.stop_running(&mut guard).await;
            }
            self.reclaimed
                .get_or_init(|| self.reclaim_predecessor())
                .await;
            let running = self.spawn()?;
            let exited = running.exited.clone();
            *guard = Some(running);
            drop(guard);
            if let Err(e) = self.wait_ready(exited).await {
                let mut guard = self.running.lock().await;
                self.stop_running(&mut guard).await;
                return Err(e);
            }
            Ok(())
        })
    }
    fn drain(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut guard = self.running.lock().await;
            if self.idle != Idle::Stop {
                if let Some(r) = guard.as_mut().filter(|r| r.exited.borrow().is_none()) {
                    r.set_frozen(true).await?;
                    self.log.info(
                        "command frozen",
                        &[("target", &self.target), ("pid", &r.pid), ("how", &r.how())],
                    );
                    return Ok(());
                }
            }
            self.stop_running(&mut guard).await;
            Ok(())
        })
    }
    fn close(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut guard = self.running.lock().await;
            if let Some(r) = guard.as_mut().filter(|r| r.frozen) {
                // A frozen process would not act on SIGINT before its grace ran out.
                if let Err(e) = r.set_frozen(false).await {
                    self.log.warn(
                        "thaw before stop failed",
                        &[("target", &self.target), ("err", &e)],
                    );
                }
            }
            self.stop_running(&mut guard).await;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_allow_parses_matches_and_names_the_bad_entry() {
        let opts = |v: Value| {
            let mut o = Map::new();
            o.insert("wake_allow".into(), v);
            o
        };
        let list = allow_list(
            &opts(serde_json::json!([
                "10.0.0.0/8",
                "fd00::/64",
                "::ffff:192.0.2.0/120"
            ])),
            "static tcp frontend",
        )
        .unwrap();
        let ok = |ip: &str| allowed(&list, ip.parse().unwrap());
        assert!(ok("10.1.2.3") && ok("::ffff:10.1.2.3") && ok("fd00::5"));
        // An IPv4-mapped network is the IPv4 network, for IPv4 and IPv4-mapped peers alike.
        assert!(ok("192.0.2.9") && ok("::ffff:192.0.2.9"));
        assert!(!ok("11.0.0.1") && !ok("::1") && !ok("fd00:0:0:1::5"));
        assert!(allowed(&None, "1.2.3.4".parse().unwrap()));
        let err = |v: Value| allow_list(&opts(v), "static tcp frontend").unwrap_err();
        assert_eq!(
            err(serde_json::json!(["10.0.0.0/33"])),
            "static tcp frontend option wake_allow: invalid CIDR \"10.0.0.0/33\""
        );
        assert_eq!(
            err(serde_json::json!(["nope"])),
            "static tcp frontend option wake_allow: invalid CIDR \"nope\""
        );
        assert_eq!(
            err(serde_json::json!([1])),
            "static tcp frontend option wake_allow must contain only strings"
        );
    }

    #[test]
    fn servemux_patterns() {
        assert!(pattern_matches("/", "/anything/at/all"));
        assert!(pattern_matches("/x", "/x"));
        assert!(!pattern_matches("/x", "/x/y"));
        assert!(pattern_matches("/x/", "/x/y"));
        assert!(!pattern_matches("/x/", "/x"));
    }
}

#[cfg(test)]
mod ctor_tests {
    use super::*;
    use crate::handle::TargetState;

    fn ctx(protocol: Protocol) -> FrontendCtx {
        let (h, _inbox) = crate::handle::channel();
        let _ = h;
        let (_tx, rx) = watch::channel(TargetState::Inactive);
        FrontendCtx {
            name: "f".into(),
            target: "t".into(),
            protocol,
            listen: "127.0.0.1:1".parse().unwrap(),
            backend: "127.0.0.1:2".parse().unwrap(),
            dual_backend: None,
            log: Logger::discard(),
            waker: crate::handle::test_waker(),
            target_state: rx,
        }
    }

    fn opts(v: serde_json::Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn static_http_constructor_errors() {
        let e = |p, o| http(&ctx(p), &opts(o)).err().unwrap();
        assert_eq!(
            e(Protocol::Udp, serde_json::json!({"content": "x"})),
            "static http frontend requires tcp protocol"
        );
        assert_eq!(
            e(Protocol::Tcp, serde_json::json!({})),
            "static http frontend option content is required"
        );
        assert_eq!(
            e(Protocol::Tcp, serde_json::json!({"content": 5})),
            "static http frontend option content is required"
        );
        assert_eq!(
            e(
                Protocol::Tcp,
                serde_json::json!({"content": "x", "endpoint": "x"})
            ),
            "static http frontend option endpoint must start with /"
        );
        // Spec §12.18: Go panicked at Start on "/{"; here it is a clear constructor error.
        assert!(e(
            Protocol::Tcp,
            serde_json::json!({"content": "x", "endpoint": "/{"})
        )
        .contains("plain path"));
        assert!(e(
            Protocol::Tcp,
            serde_json::json!({"content": "x", "wake_allow": ["10.0.0.0/99"]})
        )
        .contains("invalid CIDR"));
        assert!(http(
            &ctx(Protocol::Tcp),
            &opts(serde_json::json!({"content": "x", "endpoint": "/wake/"}))
        )
        .is_ok());
        assert_eq!(
            tcp(&ctx(Protocol::Udp), &Map::new()).err().unwrap(),
            "static tcp frontend requires tcp protocol"
        );
    }
}
