//! `exec:<program>` targets: a user-supplied program starts, stops and reports on the backend, so containers,
//! VMs or systemd units the daemon knows nothing about can be woken without rebuilding proxygw.
//!
//! Every call is one run of the program: `<dir>/<program> <method>` gets one JSON request line on stdin
//! (then EOF) and answers with one JSON line on stdout; stderr lines go to the daemon's log. A call is
//! bounded by `call_timeout`: a program that does not answer in time, answers wrongly, or exits without an
//! answer fails the call, and whatever is left in its process group is killed when the call ends (a
//! backend that must outlive the call leaves the group with `setsid`). One program run per call keeps the
//! daemon free of long-lived protocol state and lets a shell script be a complete target; the `id` and
//! `version` fields leave room for a resident mode later without breaking programs written today.
//!
//! The program is found by name in one directory (`plugins.exec.dir`), never by a path in a target's
//! options: who may edit the config still cannot make the daemon run an arbitrary file, and the names in
//! `exec:` kinds stay plain words.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use super::{
    duration_opt, endpoints_accepting, forward_output, lock, BoxFuture, PluginDef, TargetCtx,
    TargetHandler, ANY_KIND,
};
use crate::config::{Endpoint, Protocol};
use crate::log::Logger;

/// JSON schema of the plugin block and of the target options.
pub const SCHEMA: &str = include_str!("../../../../configs/plugins/exec.schema.yaml");
/// Protocol version sent in every request and required in every response.
pub const PROTOCOL_VERSION: u64 = 1;
/// How option errors name the kind.
const WHAT: &str = "exec target";
/// Where `exec:<program>` looks for `<program>` unless `plugins.exec.dir` says otherwise.
pub const DEFAULT_DIR: &str = "/etc/proxygw/exec";
/// Default bound of one call (start, stop or status).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Default readiness wait after a successful start (as `static:cmd`).
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default period of `status` calls while the target is active.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// Longest response line read; more is a protocol error, not an unbounded buffer.
pub const MAX_RESPONSE: u64 = 64 * 1024;
/// After the call's answer (or its timeout), how long the program's group gets to exit before SIGKILL.
const EXIT_GRACE: Duration = Duration::from_millis(200);

/// The plugin definition: one target kind that matches every `exec:<program>`.
pub fn plugin() -> PluginDef {
    PluginDef {
        source: "exec",
        schema: SCHEMA,
        frontends: Vec::new(),
        targets: vec![(
            ANY_KIND,
            Arc::new(|c: &TargetCtx, o: &Map<String, Value>| {
                Ok(Arc::new(Exec {
                    core: Arc::new(Core::new(c, o)?),
                    poll: Mutex::new(None),
                }) as Arc<dyn TargetHandler>)
            }),
        )],
        on_load: None,
    }
}

/// A protocol method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Start the backend (succeeds if it already runs).
    Start,
    /// Stop the backend (succeeds if it is not running).
    Stop,
    /// Report whether the backend runs.
    Status,
}

impl Method {
    /// The wire name, also the program's first argument.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Start => "start",
            Method::Stop => "stop",
            Method::Status => "status",
        }
    }
}

/// A successful answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    /// `running` of a status answer (`None` for start and stop).
    pub running: Option<bool>,
}

/// Checks a program name: a plain file name (letters, digits, `.`, `_`, `-`; not starting with `.`).
fn program_name_ok(name: &str) -> bool {
    !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Finds `<dir>/<name>` and checks that it is an executable regular file.
pub fn resolve(dir: &Path, name: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    if !program_name_ok(name) {
        return Err(format!(
            "program name {name:?} must be a plain file name (letters, digits, '.', '_', '-')"
        ));
    }
    let path = dir.join(name);
    let meta = std::fs::metadata(&path)
        .map_err(|e| format!("program {}: {e} (plugins.exec.dir)", path.display()))?;
    if !meta.is_file() {
        return Err(format!("program {}: not a regular file", path.display()));
    }
    if meta.permissions().mode() & 0o111 == 0
        || nix::unistd::access(&path, nix::unistd::AccessFlags::X_OK).is_err()
    {
        return Err(format!("program {}: not executable", path.display()));
    }
    Ok(path)
}

/// Checks one response line against the request's id; `ok: false` becomes the program's error text.
pub fn parse_response(line: &str, id: u64, method: Method) -> Result<Answer, String> {
    let line = line.trim_end_matches(['\n', '\r']);
    let v: Value = serde_json::from_str(line).map_err(|e| {
        let shown: String = line.chars().take(80).collect();
        format!("response is not JSON ({e}): {shown:?}")
    })?;
    let Value::Object(o) = v else {
        return Err("response is not a JSON object".into());
    };
    match o.get("version").and_then(Value::as_u64) {
        Some(PROTOCOL_VERSION) => {}
        Some(other) => {
            return Err(format!(
                "response version {other} not supported (want {PROTOCOL_VERSION})"
            ))
        }
        None => {
            return Err(format!(
                "response field version missing or not a number (want {PROTOCOL_VERSION})"
            ))
        }
    }
    match o.get("id").and_then(Value::as_u64) {
        Some(got) if got == id => {}
        Some(got) => return Err(format!("response id {got} does not match request id {id}")),
        None => return Err("response field id missing or not a number".into()),
    }
    match o.get("ok") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => {
            let why = o
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no error text given");
            return Err(format!("program reports failure: {why}"));
        }
        _ => return Err("response field ok missing or not a boolean".into()),
    }
    let running = match (method, o.get("running")) {
        (Method::Status, Some(Value::Bool(b))) => Some(*b),
        (Method::Status, _) => {
            return Err("status response field running missing or not a boolean".into())
        }
        _ => None,
    };
    Ok(Answer { running })
}

/// What a call needs; shared with the status poll task.
struct Core {
    target: String,
    program: PathBuf,
    endpoints: Vec<Endpoint>,
    tcp_endpoints: Vec<SocketAddr>,
    params: Map<String, Value>,
    call_timeout: Duration,
    ready_timeout: Duration,
    status_interval: Duration,
    state_dir: PathBuf,
    log: Logger,
    exited: crate::handle::ExitNotifier,
    next_id: AtomicU64,
    /// One call at a time: a status poll never overlaps a stop.
    calls: tokio::sync::Mutex<()>,
}

struct Exec {
    core: Arc<Core>,
    /// The status poll while the target is active.
    poll: Mutex<Option<JoinHandle<()>>>,
}

impl Core {
    fn new(c: &TargetCtx, o: &Map<String, Value>) -> Result<Self, String> {
        let dir = match c.plugin.get("dir") {
            None | Some(Value::Null) => PathBuf::from(DEFAULT_DIR),
            Some(Value::String(s)) => PathBuf::from(s),
            Some(_) => return Err("plugins.exec.dir must be a string".into()),
        };
        let program = resolve(&dir, &c.kind.name)?;
        let params = match o.get("params") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err("exec target option params must be a mapping".into()),
        };
        let state_dir = match crate::instance::backends_dir() {
            Some(b) => b.with_extension("exec").join(&c.name),
            None => std::env::temp_dir()
                .join(format!("proxygw-{}.exec", std::process::id()))
                .join(&c.name),
        };
        let call_timeout = duration_opt(o, "call_timeout", WHAT, DEFAULT_CALL_TIMEOUT)?;
        if call_timeout.is_zero() {
            return Err("exec target option call_timeout must be more than 0s".into());
        }
        Ok(Core {
            target: c.name.clone(),
            program,
            endpoints: c.endpoints.clone(),
            tcp_endpoints: c
                .endpoints
                .iter()
                .filter(|e| e.protocol == Protocol::Tcp)
                .map(|e| e.address)
                .collect(),
            params,
            call_timeout,
            ready_timeout: duration_opt(o, "ready_timeout", WHAT, DEFAULT_READY_TIMEOUT)?,
            status_interval: duration_opt(o, "status_interval", WHAT, DEFAULT_STATUS_INTERVAL)?,
            state_dir,
            log: c.log.clone(),
            exited: c.exited.clone(),
            next_id: AtomicU64::new(1),
            calls: tokio::sync::Mutex::new(()),
        })
    }

    fn request(&self, id: u64, method: Method) -> String {
        let endpoints: Vec<Value> = self
            .endpoints
            .iter()
            .map(|e| {
                json!({"name": e.name, "protocol": e.protocol.to_string(), "address": e.address.to_string()})
            })
            .collect();
        let req = json!({
            "version": PROTOCOL_VERSION,
            "id": id,
            "method": method.as_str(),
            "target": self.target,
            "endpoints": endpoints,
            "params": self.params,
            "state_dir": self.state_dir.display().to_string(),
        });
        format!("{req}\n")
    }

    /// The environment a call runs with: the request's scalar fields for scripts without a JSON parser.
    fn envs(&self, id: u64, method: Method) -> Vec<(OsString, OsString)> {
        let mut v: Vec<(OsString, OsString)> = vec![
            (
                "PROXYGW_EXEC_VERSION".into(),
                PROTOCOL_VERSION.to_string().into(),
            ),
            ("PROXYGW_EXEC_ID".into(), id.to_string().into()),
            ("PROXYGW_EXEC_METHOD".into(), method.as_str().into()),
            ("PROXYGW_TARGET".into(), self.target.clone().into()),
            ("PROXYGW_STATE_DIR".into(), self.state_dir.clone().into()),
        ];
        for (k, val) in &self.params {
            let text = match val {
                Value::String(s) => s.clone(),
                Value::Number(_) | Value::Bool(_) => val.to_string(),
                _ => continue,
            };
            v.push((
                format!("PROXYGW_PARAM_{}", k.to_ascii_uppercase()).into(),
                text.into(),
            ));
        }
        for e in &self.endpoints {
            v.push((
                format!(
                    "PROXYGW_ENDPOINT_{}",
                    e.name.to_ascii_uppercase().replace('-', "_")
                )
                .into(),
                e.address.to_string().into(),
            ));
        }
        v
    }

    /// One run of the program for `method`, bounded by `call_timeout`; the error names the program and method.
    async fn call(&self, method: Method) -> Result<Answer, String> {
        let _one = self.calls.lock().await;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let what = format!(
            "exec program {} {}",
            self.program.display(),
            method.as_str()
        );
        if let Err(e) = crate::instance::create_dir(&self.state_dir) {
            return Err(format!("{what}: state directory: {e}"));
        }
        let opts = process::SpawnOptions {
            stdin: process::Stdio::Piped,
            stdout: process::Stdio::Piped,
            stderr: process::Stdio::Piped,
            envs: self.envs(id, method),
            parent_death_signal: Some(process::Signal::SIGKILL),
            ..Default::default()
        };
        let mut child =
            process::Child::spawn(self.program.as_os_str(), &[method.as_str().into()], &opts)
                .map_err(|e| format!("{what}: {e}"))?;
        if let Some(e) = child.take_stderr() {
            forward_output(
                e,
                self.log.clone(),
                self.target.clone(),
                "exec output",
                "stderr",
            );
        }
        let stdin = child.take_stdin();
        let stdout = child.take_stdout();
        let request = self.request(id, method);
        let exchange = async {
            if let Some(mut w) = stdin {
                // A program that does not read its request may have exited already: its answer decides.
                let _ = w.write_all(request.as_bytes()).await;
            }
            let mut line = String::new();
            if let Some(out) = stdout {
                let mut r = tokio::io::BufReader::new(out.take(MAX_RESPONSE));
                r.read_line(&mut line)
                    .await
                    .map_err(|e| format!("read response: {e}"))?;
            }
            if line.is_empty() {
                let status = child
                    .wait()
                    .await
                    .map_or_else(|e| format!("wait: {e}"), |s| s.to_string());
                return Err(format!("exited without a response ({status})"));
            }
            if !line.ends_with('\n') && line.len() as u64 >= MAX_RESPONSE {
                return Err(format!("response longer than {MAX_RESPONSE} bytes"));
            }
            parse_response(&line, id, method)
        };
        let result = match tokio::time::timeout(self.call_timeout, exchange).await {
            Ok(r) => r.map_err(|e| format!("{what}: {e}")),
            Err(_) => Err(format!(
                "{what}: no response within call_timeout {:?}; program killed",
                self.call_timeout
            )),
        };
        // The call is over: the program exits, and nothing of its group outlives the call.
        let _ = tokio::time::timeout(EXIT_GRACE, child.wait()).await;
        if let Err(e) = child.stop_with(process::Signal::SIGKILL, EXIT_GRACE).await {
            self.log.warn(
                "exec program group not stopped",
                &[("target", &self.target), ("err", &e)],
            );
        }
        result
    }
}

impl Exec {
    fn stop_poll(&self) {
        if let Some(h) = lock(&self.poll).take() {
            h.abort();
        }
    }

    /// While active, asks the program every `status_interval` whether the backend still runs; a `false`
    /// answer is reported like a `static:cmd` exit (DNAT off, backoff, the next wake starts it again). A
    /// failing status call is logged, not acted on: one slow answer must not take a working backend down.
    fn start_poll(&self) {
        let core = self.core.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(core.status_interval).await;
                match core.call(Method::Status).await {
                    Ok(Answer {
                        running: Some(false),
                    }) => {
                        core.exited
                            .exited("exec program reports the backend is not running".into());
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => core.log.warn(
                        "exec status call failed",
                        &[("target", &core.target), ("err", &e)],
                    ),
                }
            }
        });
        if let Some(old) = lock(&self.poll).replace(task) {
            old.abort();
        }
    }
}

impl TargetHandler for Exec {
    fn warm(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.stop_poll();
            let core = &self.core;
            core.call(Method::Start).await?;
            if !core.ready_timeout.is_zero() {
                if let Err(e) = endpoints_accepting(&core.tcp_endpoints, core.ready_timeout).await {
                    // Leave nothing half started behind a failed warm.
                    if let Err(stop) = core.call(Method::Stop).await {
                        core.log.warn(
                            "exec stop after a failed readiness wait failed",
                            &[("target", &core.target), ("err", &stop)],
                        );
                    }
                    return Err(e);
                }
            }
            if !core.status_interval.is_zero() {
                self.start_poll();
            }
            Ok(())
        })
    }

    fn drain(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.stop_poll();
            self.core.call(Method::Stop).await.map(|_| ())
        })
    }
}
