//! Compile-time plugin registry. Each plugin is a module behind a Cargo feature (`plugin-<source>`);
//! `plugin.yaml` (embedded at build time) maps each source to the namespace its kinds use at runtime.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::config::{Config, ConfigError, Endpoint, NsRef, Protocol};
use crate::handle::{EngineHandle, ExitNotifier, TargetState, Waker};
use crate::log::Logger;

#[cfg(feature = "plugin-aws")]
pub mod aws_ec2;
#[cfg(feature = "plugin-ctl")]
pub mod ctl;
#[cfg(feature = "plugin-exec")]
pub mod exec;
#[cfg(feature = "plugin-static")]
pub mod freezer;
#[cfg(feature = "plugin-static")]
pub mod static_;

/// A boxed future, the return type of handler operations (trait objects cannot have `async fn`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A target kind's behaviour (spec §5.2): warm/drain the backend; close on shutdown.
pub trait TargetHandler: Send + Sync + 'static {
    /// Starts or prepares the backend; DNAT goes on only after this succeeds.
    fn warm(&self) -> BoxFuture<'_, Result<(), String>>;
    /// Stops the backend; DNAT is already off.
    fn drain(&self) -> BoxFuture<'_, Result<(), String>>;
    /// Releases everything at shutdown (defaults to drain).
    fn close(&self) -> BoxFuture<'_, Result<(), String>> {
        self.drain()
    }
}

/// A frontend kind's behaviour (spec §5.3): listen while started; signal warm through its [`Waker`].
pub trait FrontendHandler: Send + Sync + 'static {
    /// Starts serving (binding sockets, timers).
    fn start(&self) -> BoxFuture<'_, Result<(), String>>;
    /// Stops serving.
    fn stop(&self) -> BoxFuture<'_, Result<(), String>>;
    /// Releases everything at shutdown (defaults to stop).
    fn close(&self) -> BoxFuture<'_, Result<(), String>> {
        self.stop()
    }
}

/// What a target constructor gets.
#[derive(Clone, Debug)]
pub struct TargetCtx {
    /// Target name.
    pub name: String,
    /// Its kind (`exec:<program>` kinds read the program name from it).
    pub kind: NsRef,
    /// Its endpoints.
    pub endpoints: Vec<Endpoint>,
    /// The block of the kind's plugin under `plugins:` as read at start (empty when absent).
    pub plugin: Map<String, Value>,
    /// The daemon's logger.
    pub log: Logger,
    /// Tells the engine the backend stopped by itself.
    pub exited: ExitNotifier,
}

/// What a frontend constructor gets.
#[derive(Clone, Debug)]
pub struct FrontendCtx {
    /// Frontend name.
    pub name: String,
    /// Target name.
    pub target: String,
    /// tcp/udp.
    pub protocol: Protocol,
    /// Listen address.
    pub listen: SocketAddr,
    /// The endpoint's address (for kinds that proxy the first connection themselves).
    pub backend: SocketAddr,
    /// A dual-home frontend (`listen: "[::]:p"`, `target: [t:v4, t:v6]`): the endpoint of the other address
    /// family. Its socket then accepts both families (IPv4 clients as IPv4-mapped addresses).
    pub dual_backend: Option<SocketAddr>,
    /// The daemon's logger.
    pub log: Logger,
    /// Sends warm signals for the target.
    pub waker: Waker,
    /// The target's state, for kinds that wait until it is active.
    pub target_state: tokio::sync::watch::Receiver<TargetState>,
}

impl FrontendCtx {
    /// The endpoint for a client at `client`: the one of the client's address family.
    pub fn backend_for(&self, client: std::net::IpAddr) -> SocketAddr {
        match self.dual_backend {
            Some(other) if other.is_ipv4() == client.to_canonical().is_ipv4() => other,
            _ => self.backend,
        }
    }
}

/// Builds a target handler from its options.
pub type TargetCtor = Arc<
    dyn Fn(&TargetCtx, &Map<String, Value>) -> Result<Arc<dyn TargetHandler>, String> + Send + Sync,
>;
/// Builds a frontend handler from its options.
pub type FrontendCtor = Arc<
    dyn Fn(&FrontendCtx, &Map<String, Value>) -> Result<Arc<dyn FrontendHandler>, String>
        + Send
        + Sync,
>;

/// Something a loaded plugin must undo at shutdown (OnUnload).
pub trait Loaded: Send {
    /// Undo OnLoad: close listeners, remove files.
    fn unload(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// OnLoad: gets the plugin's config block, the engine and the logger.
pub type OnLoad = fn(&Map<String, Value>, EngineHandle, Logger) -> Result<Box<dyn Loaded>, String>;

/// A compiled-in plugin.
#[derive(Clone)]
pub struct PluginDef {
    /// The `plugin.yaml` key.
    pub source: &'static str,
    /// JSON schema (YAML text) of the plugin block; `$defs` holds `frontend.<kind>` / `target.<kind>` option schemas.
    pub schema: &'static str,
    /// Frontend kinds.
    pub frontends: Vec<(&'static str, FrontendCtor)>,
    /// Target kinds.
    pub targets: Vec<(&'static str, TargetCtor)>,
    /// Optional OnLoad.
    pub on_load: Option<OnLoad>,
}

/// A target kind registered under this name matches every `<namespace>:<name>` of its plugin's namespace
/// that no other kind claims (`exec:<program>`).
pub const ANY_KIND: &str = "*";

/// The constructor of `kind`: its exact registration, else its namespace's [`ANY_KIND`].
pub fn find_target_kind<'a>(
    kinds: &'a BTreeMap<String, (TargetCtor, usize)>,
    kind: &NsRef,
) -> Option<&'a (TargetCtor, usize)> {
    kinds
        .get(&kind.to_string())
        .or_else(|| kinds.get(&format!("{}:{ANY_KIND}", kind.namespace)))
}

/// Logs each line a child process writes to `r` as `msg` with the target and stream names, until EOF.
pub(crate) fn forward_output<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    r: R,
    log: Logger,
    target: String,
    msg: &'static str,
    stream: &'static str,
) {
    use tokio::io::AsyncBufReadExt;
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(r).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            log.info(
                msg,
                &[("target", &target), ("stream", &stream), ("line", &line)],
            );
        }
    });
}

/// Locks `m`, also after a panic elsewhere poisoned it (the data stays consistent: no code
/// panics while holding these locks mid-update).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// A Go-duration option of a kind (`what` names the kind in errors); `default` when absent or null.
pub(crate) fn duration_opt(
    o: &Map<String, Value>,
    key: &str,
    what: &str,
    default: Duration,
) -> Result<Duration, String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::String(s)) => {
            let ns =
                gosyntax::parse_go_duration(s).map_err(|e| format!("{what} option {key}: {e}"))?;
            if ns < 0 {
                return Err(format!("{what} option {key} must not be negative"));
            }
            Ok(Duration::from_nanos(ns as u64))
        }
        Some(_) => Err(format!("{what} option {key} must be a duration string")),
    }
}

/// Probe interval of the readiness wait: short, because every interval is added to a cold client's wait.
pub const READY_POLL: Duration = Duration::from_millis(10);

/// The readiness check of targets that start a backend: returns once every address accepts a TCP
/// connection, or an error after `limit`.
pub(crate) async fn endpoints_accepting(
    addrs: &[SocketAddr],
    limit: Duration,
) -> Result<(), String> {
    let probes = async {
        for addr in addrs {
            loop {
                let attempt = tokio::net::TcpStream::connect(*addr);
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), attempt).await {
                    break;
                }
                tokio::time::sleep(READY_POLL).await;
            }
        }
    };
    tokio::time::timeout(limit, probes)
        .await
        .map_err(|_| format!("not ready within {limit:?}"))
}

/// Every plugin compiled into this binary (one Cargo feature each).
#[allow(unused_mut, clippy::vec_init_then_push)]
pub fn compiled() -> Vec<PluginDef> {
    let mut v = Vec::new();
    #[cfg(feature = "plugin-ctl")]
    v.push(ctl::plugin());
    #[cfg(feature = "plugin-static")]
    v.push(static_::plugin());
    #[cfg(feature = "plugin-aws")]
    v.push(aws_ec2::plugin());
    #[cfg(feature = "plugin-exec")]
    v.push(exec::plugin());
    v
}

/// The build-time manifest.
pub const MANIFEST: &str = include_str!("../../plugin.yaml");

/// Parses `plugin.yaml` in file order: `plugins:` then `source: namespace` lines (spec §10 error texts).
pub fn parse_manifest(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut in_plugins = false;
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim_end();
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            in_plugins = line.trim() == "plugins:";
            if !in_plugins && !line.contains(':') {
                return Err("root must be a mapping".into());
            }
            continue;
        }
        if !in_plugins {
            continue;
        }
        let Some((k, v)) = line.trim().split_once(':') else {
            return Err(format!(
                "plugin source at entry {} must be a scalar",
                out.len()
            ));
        };
        let (k, v) = (k.trim().trim_matches('"'), v.trim().trim_matches('"'));
        if k.is_empty() {
            return Err("source must not be empty".into());
        }
        if v.is_empty() {
            return Err(format!(
                "plugin name for source {} must be a scalar",
                gosyntax::go_quote(k)
            ));
        }
        if out.iter().any(|(_, ns)| ns == v) {
            return Err(format!("namespace {} is used twice", gosyntax::go_quote(v)));
        }
        out.push((k.to_string(), v.to_string()));
    }
    if out.is_empty() {
        return Err("plugins mapping is empty".into());
    }
    Ok(out)
}

/// A loaded plugin with its namespace.
#[derive(Clone)]
pub struct Namespaced {
    /// Runtime namespace.
    pub namespace: String,
    /// The plugin.
    pub def: PluginDef,
}

/// Kinds by `namespace:kind`, plus the plugins in manifest order.
#[derive(Clone, Default)]
pub struct Registry {
    /// Plugins in manifest order.
    pub plugins: Vec<Namespaced>,
    /// Frontend kinds.
    pub frontends: BTreeMap<String, (FrontendCtor, usize)>,
    /// Target kinds.
    pub targets: BTreeMap<String, (TargetCtor, usize)>,
    /// Manifest sources that are not compiled in (logged at startup, like the original).
    pub missing: Vec<String>,
}

impl Registry {
    /// The registry this binary was built with.
    pub fn builtin() -> Result<Self, String> {
        Self::build(&parse_manifest(MANIFEST)?, compiled())
    }

    /// Builds from a manifest and a set of compiled plugins.
    pub fn build(manifest: &[(String, String)], defs: Vec<PluginDef>) -> Result<Self, String> {
        let mut r = Registry::default();
        for (source, ns) in manifest {
            let Some(def) = defs.iter().find(|d| d.source == source) else {
                r.missing.push(source.clone());
                continue;
            };
            let idx = r.plugins.len();
            for (kind, ctor) in &def.frontends {
                let key = format!("{ns}:{kind}");
                if r.frontends
                    .insert(key.clone(), (ctor.clone(), idx))
                    .is_some()
                {
                    return Err(format!(
                        "frontend kind {}: frontend kind already registered",
                        gosyntax::go_quote(&key)
                    ));
                }
            }
            for (kind, ctor) in &def.targets {
                let key = format!("{ns}:{kind}");
                if r.targets.insert(key.clone(), (ctor.clone(), idx)).is_some() {
                    return Err(format!(
                        "target kind {}: target kind already registered",
                        gosyntax::go_quote(&key)
                    ));
                }
            }
            r.plugins.push(Namespaced {
                namespace: ns.clone(),
                def: def.clone(),
            });
        }
        Ok(r)
    }

    /// Checks plugin blocks and kind options against the plugins' schemas, and that every kind exists.
    pub fn check_config(&self, cfg: &Config) -> Result<(), ConfigError> {
        use crate::config::{compile_schema, schema_errors};
        let mut compiled: BTreeMap<usize, Value> = BTreeMap::new();
        for (i, p) in self.plugins.iter().enumerate() {
            compiled.insert(i, crate::config::parse_yaml(p.def.schema)?);
            if let Some(block) = cfg.plugins.get(&p.namespace) {
                let v = compile_schema(p.def.schema)?;
                schema_errors(
                    &v,
                    &Value::Object(block.clone()),
                    &format!("plugins.{}", p.namespace),
                )?;
            }
        }
        let sub = |idx: usize, key: &str| -> Result<Option<jsonschema::Validator>, ConfigError> {
            let Some(def) = compiled
                .get(&idx)
                .and_then(|s| s.get("$defs"))
                .and_then(|d| d.get(key))
            else {
                return Ok(None);
            };
            jsonschema::validator_for(def)
                .map(Some)
                .map_err(|e| ConfigError(format!("plugin schema {key} does not compile: {e}")))
        };
        for (i, t) in cfg.targets.iter().enumerate() {
            let kind = t.kind.to_string();
            let Some((_, idx)) = find_target_kind(&self.targets, &t.kind) else {
                return Err(ConfigError(format!(
                    "targets[{i}].kind: target kind {} not registered",
                    gosyntax::go_quote(&kind)
                )));
            };
            let own = format!("target.{}", t.kind.name);
            let schema = match sub(*idx, &own)? {
                Some(v) => Some(v),
                None => sub(*idx, &format!("target.{ANY_KIND}"))?,
            };
            if let Some(v) = schema {
                let opts = if t.options.is_empty() {
                    Value::Null
                } else {
                    Value::Object(t.options.clone())
                };
                schema_errors(&v, &opts, &format!("targets[{i}].options"))?;
            }
        }
        for (i, f) in cfg.frontends.iter().enumerate() {
            let kind = f.kind.to_string();
            let Some((_, idx)) = self.frontends.get(&kind) else {
                return Err(ConfigError(format!(
                    "frontends[{i}].kind: frontend kind {} not registered",
                    gosyntax::go_quote(&kind)
                )));
            };
            if let Some(v) = sub(*idx, &format!("frontend.{}", f.kind.name))? {
                let opts = if f.options.is_empty() {
                    Value::Null
                } else {
                    Value::Object(f.options.clone())
                };
                schema_errors(&v, &opts, &format!("frontends[{i}].options"))?;
            }
        }
        Ok(())
    }
}

/// Loads and checks a config file fully: what both `proxygw` and `proxygwctl` do.
pub fn load_checked(path: &std::path::Path) -> Result<(Config, Registry), ConfigError> {
    let cfg = crate::config::load_file(path)?;
    let reg = Registry::builtin().map_err(ConfigError)?;
    reg.check_config(&cfg).map_err(|e| {
        ConfigError(format!(
            "load config {}: {e}",
            gosyntax::go_quote(&path.display().to_string())
        ))
    })?;
    Ok((cfg, reg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_parses_in_order_with_original_errors() {
        assert_eq!(
            parse_manifest(MANIFEST).unwrap(),
            vec![
                ("ctl".into(), "ctl".into()),
                ("static".into(), "static".into()),
                ("exec".into(), "exec".into()),
                ("aws".into(), "aws".into())
            ]
        );
        assert_eq!(
            parse_manifest("plugins:\n").unwrap_err(),
            "plugins mapping is empty"
        );
        assert_eq!(
            parse_manifest("plugins:\n  ctl:\n").unwrap_err(),
            "plugin name for source \"ctl\" must be a scalar"
        );
        assert_eq!(
            parse_manifest("plugins:\n  a: x\n  b: x\n").unwrap_err(),
            "namespace \"x\" is used twice"
        );
        let custom = parse_manifest("plugins:\n  static: s\n  github.com/x/aws: aws\n").unwrap();
        let r = Registry::build(&custom, compiled()).unwrap();
        assert!(r.targets.contains_key("s:cmd"));
        assert_eq!(r.missing, vec!["github.com/x/aws".to_string()]);
    }

    #[test]
    fn kind_options_are_schema_checked_with_paths() {
        let reg = Registry::builtin().unwrap();
        let base = include_str!("../../../../examples/proxygw/minimal.yaml");
        let cfg = crate::config::load_str(base).unwrap();
        reg.check_config(&cfg).unwrap();
        let bad = base.replace("      command: \"python3", "      commnd: \"python3");
        let e = reg
            .check_config(&crate::config::load_str(&bad).unwrap())
            .unwrap_err()
            .0;
        assert!(e.starts_with("targets[0].options: "), "{e}");
        let bad = base.replace("kind: static:always", "kind: static:sometimes");
        let e = reg
            .check_config(&crate::config::load_str(&bad).unwrap())
            .unwrap_err()
            .0;
        assert_eq!(
            e,
            "frontends[0].kind: frontend kind \"static:sometimes\" not registered"
        );
        let bad = base.replace("codec: json", "codec: xml");
        let e = reg
            .check_config(&crate::config::load_str(&bad).unwrap())
            .unwrap_err()
            .0;
        assert!(e.starts_with("plugins.ctl.codec: "), "{e}");
        let bad = base.replace(
            "    options:\n      command: \"python3 -m http.server 8080 --bind 127.0.0.1\"\n",
            "",
        );
        let e = reg
            .check_config(&crate::config::load_str(&bad).unwrap())
            .unwrap_err()
            .0;
        assert!(e.starts_with("targets[0].options: "), "{e}");
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn every_shipped_example_loads_and_checks() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/proxygw");
        let reg = Registry::builtin().unwrap();
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                let cfg =
                    crate::config::load_file(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                reg.check_config(&cfg)
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 3, "examples found: {n}");
    }
}
