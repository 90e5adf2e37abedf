//! Config v1: YAML → unknown-key check → typed decode (Go text syntaxes) → the original's validation, in its
//! order and with its messages → JSON schema (`configs/proxygw.schema.yaml`) → checks the original lacked.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use gosyntax::{go_quote, AddrPort};

/// The only supported config version.
pub const VERSION_V1: &str = "v1";
/// Default config path, shared by `proxygw` and `proxygwctl`.
pub const DEFAULT_PATH: &str = "/etc/proxygw.yaml";
/// Largest accepted config file; a config is a few KiB, this only stops a wrong path from eating memory.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// The runtime JSON schema, enforced on every load.
pub const SCHEMA_YAML: &str = include_str!("../../../configs/proxygw.schema.yaml");

/// A config error; the text names the field (path) or value that is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// Transport protocol of an endpoint or frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
}

impl Protocol {
    /// Parses `tcp`/`udp` (case-insensitive), as the original's text unmarshaler does.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            _ => Err(format!("invalid Protocol {}", go_quote(text))),
        }
    }
    /// The IP protocol number (6 or 17), used in nft map keys and in CBOR status bodies.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }
    /// Lower-case name, as in config and JSON status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
    /// From an IP protocol number.
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Self::Tcp),
            17 => Some(Self::Udp),
            _ => None,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `namespace:name` reference (plugin kinds, and `target:endpoint` in frontends).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct NsRef {
    /// Left of the colon.
    pub namespace: String,
    /// Right of the colon.
    pub name: String,
}

impl NsRef {
    /// Parses `a:b`: exactly one colon, both sides non-empty; `""` is the empty (absent) reference.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Ok(Self::default());
        }
        match text.split_once(':') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains(':') => {
                Ok(Self {
                    namespace: ns.into(),
                    name: name.into(),
                })
            }
            _ => Err(format!("invalid namespace reference: {}", go_quote(text))),
        }
    }
}

impl std::fmt::Display for NsRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.namespace, self.name)
    }
}

/// Where log lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogOutput {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// A file, opened append/create, mode 0644.
    File(PathBuf),
}

/// `log:` block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// Destination.
    pub output: LogOutput,
    /// slog level number (DEBUG -4, INFO 0, WARN 4, ERROR 8).
    pub level: i32,
}

/// One endpoint of a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Unique within the target.
    pub name: String,
    /// tcp or udp.
    pub protocol: Protocol,
    /// Backend address; specified IP, non-zero port.
    pub address: SocketAddr,
}

/// One `targets[]` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetConfig {
    /// Unique name.
    pub name: String,
    /// Kind, `namespace:kind`.
    pub kind: NsRef,
    /// Drain this long after the last DNATed flow ended (whole seconds, ≥ 1 s).
    pub idle_timeout: Duration,
    /// At least one.
    pub endpoints: Vec<Endpoint>,
    /// Kind options, checked against the kind's schema.
    pub options: Map<String, Value>,
    /// Most starts frontend wakes may cause per window (`wake_rate: "5/1m"`); `None`: unlimited.
    pub wake_rate: Option<WakeRate>,
}

/// `wake_rate`: at most `starts` starts in any window of `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WakeRate {
    /// Starts allowed per window (≥ 1).
    pub starts: u32,
    /// The window (≥ 1s).
    pub per: Duration,
}

impl WakeRate {
    /// Parses `N/DURATION`, e.g. `5/1m`, `1/30s`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (n, d) = text
            .split_once('/')
            .ok_or_else(|| format!("{} is not N/DURATION (e.g. \"5/1m\")", go_quote(text)))?;
        let starts: u32 = n
            .trim()
            .parse()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| format!("{}: N must be a whole number ≥ 1", go_quote(text)))?;
        let ns = gosyntax::parse_go_duration(d.trim())?;
        if ns < 1_000_000_000 {
            return Err(format!(
                "{}: the window must be at least 1s",
                go_quote(text)
            ));
        }
        Ok(Self {
            starts,
            per: Duration::from_nanos(ns as u64),
        })
    }
}

/// One `frontends[]` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct FrontendConfig {
    /// Unique name.
    pub name: String,
    /// Kind, `namespace:kind`.
    pub kind: NsRef,
    /// tcp or udp; must equal the endpoint's protocol.
    pub protocol: Protocol,
    /// Listen address; `0.0.0.0`/`[::]` is a wildcard for the gateway's own addresses.
    pub listen: SocketAddr,
    /// ct timeout for host-bound flows to `listen` (whole seconds, ≥ 1 s).
    pub flow_timeout: Duration,
    /// Target name.
    pub target_name: String,
    /// Endpoint name within the target.
    pub endpoint_name: String,
    /// Dual-home (`target: [app:v4, app:v6]` on a `[::]:p` listen): the target's endpoint of the other
    /// address family; each client family is DNATed to the endpoint of its own family.
    pub dual_endpoint: Option<String>,
    /// Source-NAT DNATed flows (new; default false).
    pub masquerade: bool,
    /// Kind options.
    pub options: Map<String, Value>,
}

/// The whole validated config.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Always `v1`.
    pub version: String,
    /// Logging.
    pub log: LogConfig,
    /// Plugin blocks keyed by namespace (an absent/null block is an empty map).
    pub plugins: BTreeMap<String, Map<String, Value>>,
    /// Targets in config order.
    pub targets: Vec<TargetConfig>,
    /// Frontends in config order.
    pub frontends: Vec<FrontendConfig>,
}

impl Config {
    /// Finds a target by name.
    pub fn target(&self, name: &str) -> Option<&TargetConfig> {
        self.targets.iter().find(|t| t.name == name)
    }
}

/// Reads and loads a config file; errors are prefixed `load config "<path>": ` like the original.
pub fn load_file(path: &std::path::Path) -> Result<Config, ConfigError> {
    let text = read_limited(path).map_err(|e| {
        ConfigError(format!(
            "load config {}: {e}",
            go_quote(&path.display().to_string())
        ))
    })?;
    load_str(&text).map_err(|e| {
        ConfigError(format!(
            "load config {}: {e}",
            go_quote(&path.display().to_string())
        ))
    })
}

fn read_limited(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut text = String::new();
    f.take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format!("file is larger than {MAX_CONFIG_BYTES} bytes"));
    }
    Ok(text)
}

/// Parses YAML text into the generic tree every later step works on.
pub fn parse_yaml(text: &str) -> Result<Value, ConfigError> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    serde_saphyr::from_str::<Value>(text).map_err(|e| ConfigError(format!("yaml: {e}")))
}

/// Loads config text: every step of the module doc, first failure wins.
pub fn load_str(text: &str) -> Result<Config, ConfigError> {
    let doc = parse_yaml(text)?;
    check_unknown_keys(&doc)?;
    let raw = decode(&doc)?;
    validate_original(&raw)?;
    check_schema(&doc)?;
    let cfg = finish(raw)?;
    check_extra(&cfg)?;
    Ok(cfg)
}

// ---------------------------------------------------------------- unknown keys

const TOP_KEYS: &[&str] = &["version", "log", "plugins", "targets", "frontends"];
const LOG_KEYS: &[&str] = &["output", "level"];
const TARGET_KEYS: &[&str] = &[
    "name",
    "kind",
    "idle_timeout",
    "endpoints",
    "options",
    "wake_rate",
];
const ENDPOINT_KEYS: &[&str] = &["name", "protocol", "address"];
const FRONTEND_KEYS: &[&str] = &[
    "name",
    "kind",
    "protocol",
    "listen",
    "flow_timeout",
    "target",
    "masquerade",
    "options",
];

fn unknown_in(v: &Value, allowed: &[&str], path: &str) -> Result<(), ConfigError> {
    if let Value::Object(m) = v {
        if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
            let at = if path.is_empty() {
                String::new()
            } else {
                format!(" in {path}")
            };
            return err(format!(
                "unknown key {}{at} (expected one of: {})",
                go_quote(k),
                allowed.join(", ")
            ));
        }
    }
    Ok(())
}

fn check_unknown_keys(doc: &Value) -> Result<(), ConfigError> {
    unknown_in(doc, TOP_KEYS, "")?;
    if let Some(log) = doc.get("log") {
        unknown_in(log, LOG_KEYS, "log")?;
    }
    if let Some(Value::Array(ts)) = doc.get("targets") {
        for (i, t) in ts.iter().enumerate() {
            unknown_in(t, TARGET_KEYS, &format!("targets[{i}]"))?;
            if let Some(Value::Array(es)) = t.get("endpoints") {
                for (j, e) in es.iter().enumerate() {
                    unknown_in(e, ENDPOINT_KEYS, &format!("targets[{i}].endpoints[{j}]"))?;
                }
            }
        }
    }
    if let Some(Value::Array(fs)) = doc.get("frontends") {
        for (i, f) in fs.iter().enumerate() {
            unknown_in(f, FRONTEND_KEYS, &format!("frontends[{i}]"))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- decode (Go yaml.v3 + text unmarshalers)

/// Intermediate form: zero values where the key was absent, exactly what the original's Validate sees.
#[derive(Default)]
struct RawConfig {
    version: String,
    log_output: String,
    log_level: i32,
    plugins: Option<BTreeMap<String, Map<String, Value>>>,
    targets: Option<Vec<RawTarget>>,
    frontends: Option<Vec<RawFrontend>>,
}

#[derive(Default)]
struct RawTarget {
    name: String,
    kind: NsRef,
    idle_timeout_ns: i64,
    idle_timeout_text: String,
    endpoints: Vec<RawEndpoint>,
    options: Map<String, Value>,
    wake_rate: Option<WakeRate>,
}

#[derive(Default)]
struct RawEndpoint {
    name: String,
    protocol: Option<Protocol>,
    address: Option<AddrPort>,
}

#[derive(Default)]
struct RawFrontend {
    name: String,
    kind: NsRef,
    protocol: Option<Protocol>,
    listen: Option<AddrPort>,
    flow_timeout_ns: i64,
    flow_timeout_text: String,
    target: NsRef,
    /// The second reference of a dual-home `target: [a, b]`.
    target_dual: Option<NsRef>,
    masquerade: bool,
    options: Map<String, Value>,
}

/// A scalar as the text yaml.v3 hands to a string field or text unmarshaler; `None` for null/absent.
fn scalar(v: Option<&Value>, path: &str) -> Result<Option<String>, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(Value::Array(_)) => err(format!("{path}: expected a scalar, found a list")),
        Some(Value::Object(_)) => err(format!("{path}: expected a scalar, found a mapping")),
    }
}

fn text(v: Option<&Value>, path: &str) -> Result<String, ConfigError> {
    Ok(scalar(v, path)?.unwrap_or_default())
}

fn mapping(v: Option<&Value>, path: &str) -> Result<Option<Map<String, Value>>, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m.clone())),
        Some(_) => err(format!("{path}: expected a mapping")),
    }
}

fn list<'a>(v: Option<&'a Value>, path: &str) -> Result<Option<&'a Vec<Value>>, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(_) => err(format!("{path}: expected a list")),
    }
}

/// A frontend's `target`: one `target:endpoint` (the original's form) or, for a dual-home frontend, a list
/// of two endpoints of one target.
fn frontend_target(v: Option<&Value>, path: &str) -> Result<(NsRef, Option<NsRef>), ConfigError> {
    let Some(Value::Array(items)) = v else {
        return Ok((with_path(NsRef::parse(&text(v, path)?), path)?, None));
    };
    let [a, b] = items.as_slice() else {
        return err(format!(
            "{path}: a list must name two endpoints of one target, one IPv4 and one IPv6 (found {} items)",
            items.len()
        ));
    };
    let one = |v: &Value, i: usize| {
        let p = format!("{path}[{i}]");
        with_path(NsRef::parse(&text(Some(v), &p)?), &p)
    };
    let (a, b) = (one(a, 0)?, one(b, 1)?);
    if a.namespace != b.namespace {
        return err(format!(
            "{path}: both endpoints must belong to one target, found {} and {}",
            go_quote(&a.to_string()),
            go_quote(&b.to_string())
        ));
    }
    Ok((a, Some(b)))
}

fn with_path<T>(r: Result<T, String>, path: &str) -> Result<T, ConfigError> {
    r.map_err(|e| ConfigError(format!("{path}: {e}")))
}

/// Go's TTL text unmarshaler: a Go duration in [0, 2^32-1 s], else `invalid TTL %q`.
fn ttl(text: &str) -> Result<i64, String> {
    if text.is_empty() {
        return Ok(0);
    }
    let ns = gosyntax::parse_go_duration(text)?;
    if !(0..=i64::from(u32::MAX) * 1_000_000_000).contains(&ns) {
        return Err(format!("invalid TTL {}", go_quote(text)));
    }
    Ok(ns)
}

fn addr_port(text: &str) -> Result<Option<AddrPort>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    gosyntax::parse_addr_port(text).map(Some)
}

fn protocol(text: &str) -> Result<Option<Protocol>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    Protocol::parse(text).map(Some)
}

fn decode(doc: &Value) -> Result<RawConfig, ConfigError> {
    if !doc.is_object() {
        return err("yaml: the document must be a mapping");
    }
    let mut raw = RawConfig {
        version: text(doc.get("version"), "version")?,
        ..RawConfig::default()
    };
    if let Some(log) = mapping(doc.get("log"), "log")? {
        raw.log_output = text(log.get("output"), "log.output")?;
        let level = text(log.get("level"), "log.level")?;
        if !level.is_empty() {
            raw.log_level = with_path(gosyntax::parse_slog_level(&level), "log.level")?;
        }
    }
    if let Some(p) = mapping(doc.get("plugins"), "plugins")? {
        let mut plugins = BTreeMap::new();
        for (k, v) in p {
            let block = mapping(Some(&v), &format!("plugins.{k}"))?.unwrap_or_default();
            plugins.insert(k, block);
        }
        raw.plugins = Some(plugins);
    }
    if let Some(ts) = list(doc.get("targets"), "targets")? {
        let mut out = Vec::new();
        for (i, t) in ts.iter().enumerate() {
            let p = format!("targets[{i}]");
            let t = mapping(Some(t), &p)?.unwrap_or_default();
            let idle = text(t.get("idle_timeout"), &format!("{p}.idle_timeout"))?;
            let mut rt = RawTarget {
                name: text(t.get("name"), &format!("{p}.name"))?,
                kind: with_path(
                    NsRef::parse(&text(t.get("kind"), &format!("{p}.kind"))?),
                    &format!("{p}.kind"),
                )?,
                idle_timeout_ns: with_path(ttl(&idle), &format!("{p}.idle_timeout"))?,
                idle_timeout_text: idle,
                options: mapping(t.get("options"), &format!("{p}.options"))?.unwrap_or_default(),
                wake_rate: match t.get("wake_rate") {
                    None | Some(Value::Null) => None,
                    v => {
                        let rate = text(v, &format!("{p}.wake_rate"))?;
                        Some(with_path(
                            WakeRate::parse(&rate),
                            &format!("{p}.wake_rate"),
                        )?)
                    }
                },
                ..RawTarget::default()
            };
            for (j, e) in list(t.get("endpoints"), &format!("{p}.endpoints"))?
                .into_iter()
                .flatten()
                .enumerate()
            {
                let ep = format!("{p}.endpoints[{j}]");
                let e = mapping(Some(e), &ep)?.unwrap_or_default();
                rt.endpoints.push(RawEndpoint {
                    name: text(e.get("name"), &format!("{ep}.name"))?,
                    protocol: with_path(
                        protocol(&text(e.get("protocol"), &format!("{ep}.protocol"))?),
                        &format!("{ep}.protocol"),
                    )?,
                    address: with_path(
                        addr_port(&text(e.get("address"), &format!("{ep}.address"))?),
                        &format!("{ep}.address"),
                    )?,
                });
            }
            out.push(rt);
        }
        raw.targets = Some(out);
    }
    if let Some(fs) = list(doc.get("frontends"), "frontends")? {
        let mut out = Vec::new();
        for (i, f) in fs.iter().enumerate() {
            let p = format!("frontends[{i}]");
            let f = mapping(Some(f), &p)?.unwrap_or_default();
            let flow = text(f.get("flow_timeout"), &format!("{p}.flow_timeout"))?;
            let masquerade = match f.get("masquerade") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(other) => {
                    return err(format!(
                        "{p}.masquerade: expected true or false, found {other}"
                    ));
                }
            };
            let (target, target_dual) = frontend_target(f.get("target"), &format!("{p}.target"))?;
            out.push(RawFrontend {
                name: text(f.get("name"), &format!("{p}.name"))?,
                kind: with_path(
                    NsRef::parse(&text(f.get("kind"), &format!("{p}.kind"))?),
                    &format!("{p}.kind"),
                )?,
                protocol: with_path(
                    protocol(&text(f.get("protocol"), &format!("{p}.protocol"))?),
                    &format!("{p}.protocol"),
                )?,
                listen: with_path(
                    addr_port(&text(f.get("listen"), &format!("{p}.listen"))?),
                    &format!("{p}.listen"),
                )?,
                flow_timeout_ns: with_path(ttl(&flow), &format!("{p}.flow_timeout"))?,
                flow_timeout_text: flow,
                target,
                target_dual,
                masquerade,
                options: mapping(f.get("options"), &format!("{p}.options"))?.unwrap_or_default(),
            });
        }
        raw.frontends = Some(out);
    }
    Ok(raw)
}

// ---------------------------------------------------------------- the original's Validate, in its order

fn validate_original(c: &RawConfig) -> Result<(), ConfigError> {
    if c.version.is_empty() {
        return err("version is required");
    }
    if c.version != VERSION_V1 {
        return err(format!("unsupported version {}", go_quote(&c.version)));
    }
    if c.log_output.is_empty() {
        return err("log.output is required");
    }
    if c.plugins.is_none() {
        return err("plugins is required");
    }
    let Some(targets) = &c.targets else {
        return err("targets is required");
    };
    let Some(frontends) = &c.frontends else {
        return err("frontends is required");
    };
    for (i, t) in targets.iter().enumerate() {
        if t.name.is_empty() {
            return err(format!("targets[{i}].name is required"));
        }
        if targets[..i].iter().any(|o| o.name == t.name) {
            return err(format!("targets[{i}] redefines {}", go_quote(&t.name)));
        }
        let q = go_quote(&t.name);
        if t.kind.namespace.is_empty() {
            return err(format!("targets[{q}].kind.namespace is required"));
        }
        if t.kind.name.is_empty() {
            return err(format!("targets[{q}].kind.name is required"));
        }
        if t.idle_timeout_ns / 1_000_000_000 == 0 {
            if t.idle_timeout_ns > 0 {
                // The original truncates 500ms to 0 and then says "cannot be zero"; say what happened.
                return err(format!(
                    "targets[{q}].idle_timeout must be at least 1s, got {}",
                    go_quote(&t.idle_timeout_text)
                ));
            }
            return err(format!("targets[{q}].idle_timeout cannot be zero"));
        }
        if t.endpoints.is_empty() {
            return err(format!(
                "targets[{q}].endpoints must contain at least one element"
            ));
        }
        for (j, e) in t.endpoints.iter().enumerate() {
            if e.name.is_empty() {
                return err(format!("targets[{q}].endpoints[{j}].name is required"));
            }
            if t.endpoints[..j].iter().any(|o| o.name == e.name) {
                return err(format!(
                    "targets[{q}].endpoints[{j}] redefines {}",
                    go_quote(&e.name)
                ));
            }
            if e.protocol.is_none() {
                return err(format!("targets[{q}].endpoints[{j}].protocol is invalid"));
            }
            let Some(addr) = &e.address else {
                return err(format!("targets[{q}].endpoints[{j}].address is invalid"));
            };
            if !addr.zone.is_empty() {
                return err(format!(
                    "targets[{q}].endpoints[{j}].address cannot have a zone"
                ));
            }
        }
    }
    for (i, f) in frontends.iter().enumerate() {
        if f.name.is_empty() {
            return err(format!("frontends[{i}].name is required"));
        }
        if frontends[..i].iter().any(|o| o.name == f.name) {
            return err(format!("frontends[{i}] redefines {}", go_quote(&f.name)));
        }
        let q = go_quote(&f.name);
        if f.kind.namespace.is_empty() {
            return err(format!("frontends[{q}].kind.namespace is required"));
        }
        if f.kind.name.is_empty() {
            return err(format!("frontends[{q}].kind.name is required"));
        }
        if f.protocol.is_none() {
            return err(format!("frontends[{q}].protocol is invalid"));
        }
        if f.listen.is_none() {
            return err(format!("frontends[{q}].listen is invalid"));
        }
        if f.flow_timeout_ns / 1_000_000_000 == 0 {
            if f.flow_timeout_ns > 0 {
                return err(format!(
                    "frontends[{q}].flow_timeout must be at least 1s, got {}",
                    go_quote(&f.flow_timeout_text)
                ));
            }
            return err(format!("frontends[{q}].flow_timeout cannot be zero"));
        }
        if f.target.namespace.is_empty() {
            return err(format!("frontends[{q}].endpoint.target_name is required"));
        }
        if f.target.name.is_empty() {
            return err(format!("frontends[{q}].endpoint.endpoint_name is required"));
        }
        let exists = targets
            .iter()
            .find(|t| t.name == f.target.namespace)
            .is_some_and(|t| t.endpoints.iter().any(|e| e.name == f.target.name));
        if !exists {
            return err(format!(
                "frontends[{q}].target {} does not reference an existing endpoint",
                go_quote(&f.target.to_string())
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- JSON schema

/// Compiles a schema written in YAML.
pub fn compile_schema(yaml: &str) -> Result<jsonschema::Validator, ConfigError> {
    let schema = parse_yaml(yaml)?;
    jsonschema::validator_for(&schema)
        .map_err(|e| ConfigError(format!("schema does not compile: {e}")))
}

/// Turns a JSON pointer (`/targets/0/options`) into the config's own path syntax (`targets[0].options`).
pub fn pointer_to_path(prefix: &str, pointer: &str) -> String {
    let mut out = prefix.to_string();
    for seg in pointer.split('/').filter(|s| !s.is_empty()) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    if out.is_empty() {
        "(document)".into()
    } else {
        out
    }
}

/// Validates `value` (found at `prefix`) against `validator`; the first error names its field path.
pub fn schema_errors(
    validator: &jsonschema::Validator,
    value: &Value,
    prefix: &str,
) -> Result<(), ConfigError> {
    if let Some(e) = validator.iter_errors(value).next() {
        let path = pointer_to_path(prefix, &e.instance_path().to_string());
        return err(format!("{path}: {e} (schema)"));
    }
    Ok(())
}

fn check_schema(doc: &Value) -> Result<(), ConfigError> {
    let v = compile_schema(SCHEMA_YAML)?;
    schema_errors(&v, doc, "")
}

// ---------------------------------------------------------------- typed form and checks the original lacked

fn finish(raw: RawConfig) -> Result<Config, ConfigError> {
    let mut targets = Vec::new();
    for t in raw.targets.unwrap_or_default() {
        let mut endpoints = Vec::new();
        for e in t.endpoints {
            let (Some(protocol), Some(address)) = (e.protocol, e.address) else {
                return err(format!(
                    "targets[{}].endpoints: incomplete endpoint",
                    go_quote(&t.name)
                ));
            };
            endpoints.push(Endpoint {
                name: e.name,
                protocol,
                address: address.addr,
            });
        }
        targets.push(TargetConfig {
            name: t.name,
            kind: t.kind,
            idle_timeout: Duration::from_secs((t.idle_timeout_ns / 1_000_000_000) as u64),
            endpoints,
            options: t.options,
            wake_rate: t.wake_rate,
        });
    }
    let mut frontends = Vec::new();
    for f in raw.frontends.unwrap_or_default() {
        let (Some(protocol), Some(listen)) = (f.protocol, f.listen) else {
            return err(format!(
                "frontends[{}]: incomplete frontend",
                go_quote(&f.name)
            ));
        };
        if !listen.zone.is_empty() {
            return err(format!(
                "frontends[{}].listen cannot have a zone",
                go_quote(&f.name)
            ));
        }
        frontends.push(FrontendConfig {
            name: f.name,
            kind: f.kind,
            protocol,
            listen: listen.addr,
            flow_timeout: Duration::from_secs((f.flow_timeout_ns / 1_000_000_000) as u64),
            target_name: f.target.namespace,
            endpoint_name: f.target.name,
            dual_endpoint: f.target_dual.map(|t| t.name),
            masquerade: f.masquerade,
            options: f.options,
        });
    }
    let output = match raw.log_output.as_str() {
        "stdout" => LogOutput::Stdout,
        "stderr" => LogOutput::Stderr,
        p => LogOutput::File(PathBuf::from(p)),
    };
    Ok(Config {
        version: raw.version,
        log: LogConfig {
            output,
            level: raw.log_level,
        },
        plugins: raw.plugins.unwrap_or_default(),
        targets,
        frontends,
    })
}

/// Checks the original left to frontend creation (where it logged and skipped) or never made (spec §3.2, §12.10).
fn check_extra(c: &Config) -> Result<(), ConfigError> {
    for t in &c.targets {
        let q = go_quote(&t.name);
        for (j, e) in t.endpoints.iter().enumerate() {
            if e.address.port() == 0 {
                return err(format!(
                    "targets[{q}].endpoints[{j}].address {} has port 0",
                    e.address
                ));
            }
            if e.address.ip().is_unspecified() {
                return err(format!(
                    "targets[{q}].endpoints[{j}].address {} is unspecified; name the backend's IP",
                    e.address
                ));
            }
        }
    }
    for (i, f) in c.frontends.iter().enumerate() {
        let q = go_quote(&f.name);
        if f.listen.port() == 0 {
            return err(format!("frontends[{q}].listen {} has port 0", f.listen));
        }
        let endpoint = |name: &str| {
            c.target(&f.target_name)
                .and_then(|t| t.endpoints.iter().find(|e| e.name == name))
        };
        let Some(ep) = endpoint(&f.endpoint_name) else {
            return err(format!(
                "frontends[{q}].target does not reference an existing endpoint"
            ));
        };
        let dual = match &f.dual_endpoint {
            None => None,
            Some(name) => match endpoint(name) {
                Some(e) => Some((name, e)),
                None => {
                    return err(format!(
                    "frontends[{q}].target[1] {}:{name} does not reference an existing endpoint",
                    f.target_name
                ))
                }
            },
        };
        for (name, e) in std::iter::once((&f.endpoint_name, ep)).chain(dual) {
            if e.protocol != f.protocol {
                return err(format!(
                    "frontends[{q}].protocol {} does not match endpoint {}:{name} protocol {}",
                    f.protocol, f.target_name, e.protocol
                ));
            }
        }
        if let Some((name, e)) = dual {
            if !(f.listen.is_ipv6() && f.listen.ip().is_unspecified()) {
                return err(format!(
                    "frontends[{q}].listen {} must be [::]:PORT to serve IPv4 and IPv6 (target lists two endpoints)",
                    f.listen
                ));
            }
            if e.address.is_ipv4() == ep.address.is_ipv4() {
                return err(format!(
                    "frontends[{q}].target endpoints {}:{} ({}) and {}:{name} ({}) must be one IPv4 and one IPv6",
                    f.target_name, f.endpoint_name, ep.address, f.target_name, e.address
                ));
            }
        } else if ep.address.is_ipv4() != f.listen.is_ipv4() {
            let hint = if f.listen.is_ipv6() && f.listen.ip().is_unspecified() {
                " (to serve both families, list an IPv4 and an IPv6 endpoint: target: [t:v4, t:v6])"
            } else {
                ""
            };
            return err(format!(
                "frontends[{q}].listen {} and endpoint {}:{} address {} must both be IPv4 or both IPv6{hint}",
                f.listen, f.target_name, f.endpoint_name, ep.address
            ));
        }
        if ep.address == f.listen {
            return err(format!(
                "frontends[{q}].listen {} equals its endpoint address",
                f.listen
            ));
        }
        for other in &c.frontends[..i] {
            // A dual-home frontend's socket takes the port in both families.
            let families_meet = other.listen.is_ipv4() == f.listen.is_ipv4()
                || other.dual_endpoint.is_some()
                || f.dual_endpoint.is_some();
            if other.protocol == f.protocol
                && families_meet
                && other.listen.port() == f.listen.port()
                && (other.listen.ip() == f.listen.ip()
                    || other.listen.ip().is_unspecified()
                    || f.listen.ip().is_unspecified())
            {
                return err(format!(
                    "frontends[{q}].listen {} overlaps frontends[{}].listen {}",
                    f.listen,
                    go_quote(&other.name),
                    other.listen
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
