//! Server and agent configuration: Proxyview's YAML field names verbatim, plus optional new fields
//! with defaults. Everything is validated at load so a running process never meets a bad value.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::protocol;

/// Environment variable naming the directory that holds `application.yaml` (Proxyview's only way).
pub const CONFIG_DIR_ENV: &str = "LHUB_CONFIG_DIR";
/// File name looked up inside [`CONFIG_DIR_ENV`].
pub const CONFIG_FILE_NAME: &str = "application.yaml";

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Neither `--config` nor `$LHUB_CONFIG_DIR` was given.
    #[error("no configuration: pass --config PATH or set ${CONFIG_DIR_ENV} to the directory holding {CONFIG_FILE_NAME}")]
    NoPath,
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// File that failed.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The YAML did not match the expected shape (message carries line and column).
    #[error("invalid config {path}: {message}")]
    Parse {
        /// File that failed.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
    /// A field has a value that cannot work.
    #[error("invalid config: {field}: {message}")]
    Invalid {
        /// Dotted path of the field, e.g. `external.whitelistedIps[1]`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Picks the config file: an explicit path wins, else `$LHUB_CONFIG_DIR/application.yaml`.
pub fn resolve_path(explicit: Option<&Path>) -> Result<PathBuf, ConfigError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    match std::env::var_os(CONFIG_DIR_ENV) {
        Some(dir) if !dir.is_empty() => Ok(Path::new(&dir).join(CONFIG_FILE_NAME)),
        _ => Err(ConfigError::NoPath),
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse<T: for<'de> Deserialize<'de>>(path: &Path, text: &str) -> Result<T, ConfigError> {
    serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// A secret that never shows up in `Debug` output or logs.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a token.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The raw token, for putting on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares `presented` to the secret without an early exit on the first differing byte, so
    /// response timing does not reveal how much of a guess was right.
    pub fn matches(&self, presented: &[u8]) -> bool {
        constant_time_eq(self.0.as_bytes(), presented)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

/// Equality whose running time depends only on the lengths, not on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // black_box keeps the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

pub use netpolicy::{Allowlist, IpNet};

/// Parses an allowlist field, naming the offending entry on error; an empty list is an error
/// because Proxyview silently rejected everybody on `[]`, which nobody ever meant.
pub fn parse_allowlist(field: &str, entries: &[String]) -> Result<Allowlist, ConfigError> {
    if entries.is_empty() {
        return Err(invalid(
            field,
            "empty list would reject every caller; list at least one IP/CIDR, or remove the field to allow everyone",
        ));
    }
    let mut nets = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        nets.push(IpNet::parse(e).map_err(|m| invalid(format!("{field}[{i}]"), m.to_string()))?);
    }
    Ok(Allowlist::new(nets))
}

/// Checks a peer against an optional allowlist (`None` = no restriction).
pub fn peer_allowed(list: Option<&Allowlist>, ip: IpAddr) -> bool {
    list.is_none_or(|l| l.allows(ip))
}

fn yes() -> bool {
    true
}

fn secs(field: &str, v: f64) -> Result<Duration, ConfigError> {
    if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
        return Err(invalid(
            field,
            format!("{v} is not a number of seconds in (0, 86400]"),
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Lowercases a route name and strips one trailing dot, rejecting names no Host could carry.
pub fn normalize_route_name(field: &str, name: &str) -> Result<String, ConfigError> {
    let n = name.trim().to_ascii_lowercase();
    let n = n.strip_suffix('.').unwrap_or(&n).to_string();
    if n.is_empty() {
        return Err(invalid(field, "route name is empty"));
    }
    if n.len() > protocol::MAX_ROUTE_NAME_LEN {
        return Err(invalid(
            field,
            format!(
                "route name {name:?} is longer than {} bytes",
                protocol::MAX_ROUTE_NAME_LEN
            ),
        ));
    }
    if !n
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(invalid(
            field,
            format!("route name {name:?} may only hold letters, digits, '-', '_' and '.'"),
        ));
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// Server

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawServer {
    host: String,
    internal: RawInternal,
    external: RawExternal,
    #[serde(default)]
    agents: Option<Vec<RawAgent>>,
    #[serde(default)]
    access_log: bool,
    #[serde(default)]
    admin: Option<RawAdmin>,
    #[serde(default)]
    cluster: Option<RawCluster>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCluster {
    registry: String,
    advertise: String,
    secret: Secret,
    #[serde(default)]
    node_id: Option<String>,
    #[serde(default)]
    heartbeat_secs: Option<f64>,
    #[serde(default)]
    key_prefix: Option<String>,
}

/// The server's `cluster:` section: nodes sharing one route registry on Redis.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// `redis://HOST:PORT[/DB]` or `rediss://…` (Redis ≥ 6 or Valkey).
    pub registry: String,
    /// `HOST:PORT` where the other nodes reach this node's internal port.
    pub advertise: String,
    /// Shared by every node; a peer presents it (compared in constant time).
    pub secret: Secret,
    /// This node's name in the registry (default: `advertise`).
    pub node_id: String,
    /// Lease renewal period; a lease lives three of them.
    pub heartbeat: Duration,
    /// Prefix of every registry key and channel (several clusters on one Redis).
    pub key_prefix: String,
}

fn cluster_settings(raw: Option<RawCluster>) -> Result<Option<ClusterSettings>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let registry = raw.registry.trim().to_string();
    if !(registry.starts_with("redis://") || registry.starts_with("rediss://")) {
        return Err(invalid(
            "cluster.registry",
            format!("{registry:?} is not a redis:// or rediss:// URL"),
        ));
    }
    let advertise = raw.advertise.trim().to_string();
    let auth: http::uri::Authority = advertise.parse().map_err(|_| {
        invalid(
            "cluster.advertise",
            format!("{advertise:?} is not HOST:PORT"),
        )
    })?;
    if auth.port_u16().is_none_or(|p| p == 0) || auth.host().is_empty() {
        return Err(invalid(
            "cluster.advertise",
            format!("{advertise:?} needs a host and a non-zero port"),
        ));
    }
    if raw.secret.expose().len() < 16 {
        return Err(invalid(
            "cluster.secret",
            "must be at least 16 characters (nodes authenticate each other with it)",
        ));
    }
    let node_id = match raw.node_id.map(|n| n.trim().to_string()) {
        Some(n) if n.is_empty() || n.len() > 128 || n.contains(['|', ' ']) => {
            return Err(invalid(
                "cluster.nodeId",
                format!("{n:?} must be 1-128 characters without '|' or spaces"),
            ))
        }
        Some(n) => n,
        None => advertise.clone(),
    };
    let key_prefix = raw.key_prefix.unwrap_or_else(|| "proxyview".into());
    if key_prefix.is_empty() || key_prefix.contains(char::is_whitespace) {
        return Err(invalid(
            "cluster.keyPrefix",
            format!("{key_prefix:?} must be non-empty without spaces"),
        ));
    }
    Ok(Some(ClusterSettings {
        registry,
        advertise,
        secret: raw.secret,
        node_id,
        heartbeat: raw.heartbeat_secs.map_or(Ok(Duration::from_secs(1)), |v| {
            secs("cluster.heartbeatSecs", v)
        })?,
        key_prefix,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAdmin {
    token: Secret,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawInternal {
    port: u16,
    token: Secret,
    #[serde(default)]
    whitelisted_ips: Option<Vec<String>>,
    #[serde(default)]
    heartbeat_interval_secs: Option<f64>,
    #[serde(default)]
    heartbeat_timeout_secs: Option<f64>,
    #[serde(default)]
    tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTls {
    #[serde(default)]
    certificates: Vec<RawCert>,
    #[serde(default)]
    acme: Option<RawAcme>,
    #[serde(default)]
    reload_secs: Option<f64>,
    #[serde(default)]
    redirect_port: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAcme {
    directory: String,
    state_dir: PathBuf,
    #[serde(default)]
    contact: Vec<String>,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default = "yes")]
    routes: bool,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    renew_before_days: Option<f64>,
    #[serde(default)]
    check_secs: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCert {
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    hosts: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawExternal {
    port: u16,
    #[serde(default)]
    token: Option<Secret>,
    #[serde(default)]
    whitelisted_ips: Option<Vec<String>>,
    #[serde(default)]
    trusted_proxies: Option<Vec<String>>,
    #[serde(default)]
    legacy_errors: bool,
    #[serde(default = "yes")]
    bearer_token: bool,
    #[serde(default)]
    response_timeout_secs: Option<f64>,
    #[serde(default)]
    header_read_timeout_secs: Option<f64>,
    #[serde(default)]
    send_timeout_secs: Option<f64>,
    #[serde(default)]
    tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAgent {
    client_id: String,
    token: Secret,
    routes: Vec<String>,
}

/// One agent identity allowed by the server's `agents:` section.
#[derive(Debug, Clone)]
pub struct AgentPolicy {
    /// The agent's `clientId`.
    pub client_id: String,
    /// Token only this agent may present.
    pub token: Secret,
    /// Normalised route names it may serve (and that agents without an entry may not).
    pub routes: Vec<String>,
}

/// One certificate of a TLS port: a PEM chain (leaf first) and its PEM private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// Dotted config path, for messages (`external.tls.certificates[0]`).
    pub field: String,
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// SNI names it serves (`*.example.com` allowed); `None` = the DNS names in the certificate.
    pub hosts: Option<Vec<String>>,
}

/// TLS on one port (`internal.tls` / `external.tls`).
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    /// Dotted config path of the block, for messages.
    pub field: String,
    /// Certificates; the first also answers a ClientHello whose SNI no other one serves.
    pub certificates: Vec<CertFiles>,
    /// How often the files are checked for changes (SIGHUP reloads at once).
    pub reload: Duration,
    /// Plain-HTTP port answering every request with a redirect to https (external only).
    pub redirect_port: Option<u16>,
    /// Automatic certificates (external only).
    pub acme: Option<AcmeSettings>,
}

/// `external.tls.acme`: certificates from an ACME CA by TLS-ALPN-01 on the TLS port.
#[derive(Debug, Clone, PartialEq)]
pub struct AcmeSettings {
    /// Directory URL (Let's Encrypt: `https://acme-v02.api.letsencrypt.org/directory`).
    pub directory: String,
    /// Account key and certificates are kept here.
    pub state_dir: PathBuf,
    /// Account contacts (`mailto:…`).
    pub contact: Vec<String>,
    /// Names to hold certificates for besides the registered routes.
    pub hosts: Vec<String>,
    /// Also every route name an agent registered (never an arbitrary SNI name).
    pub routes: bool,
    /// Extra root certificate for the directory's own TLS (a test CA such as pebble's).
    pub ca_file: Option<PathBuf>,
    /// Renew when a certificate has less than this left.
    pub renew_before: Duration,
    /// How often the wanted names and expiry dates are checked; the first retry delay.
    pub check: Duration,
}

fn tls_settings(field: &str, raw: Option<RawTls>) -> Result<Option<TlsSettings>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    if raw.certificates.is_empty() && raw.acme.is_none() {
        return Err(invalid(
            format!("{field}.certificates"),
            "list at least one {cert, key} (the first is the default), or configure acme",
        ));
    }
    let acme = match raw.acme {
        None => None,
        Some(a) => {
            let f = format!("{field}.acme");
            if !a.directory.starts_with("https://") {
                return Err(invalid(
                    format!("{f}.directory"),
                    format!("{:?} is not an https:// URL", a.directory),
                ));
            }
            let hosts = a
                .hosts
                .iter()
                .enumerate()
                .map(|(i, h)| normalize_route_name(&format!("{f}.hosts[{i}]"), h))
                .collect::<Result<Vec<_>, _>>()?;
            let days = a.renew_before_days.unwrap_or(30.0);
            if !(days.is_finite() && (0.0..=100_000.0).contains(&days)) {
                return Err(invalid(
                    format!("{f}.renewBeforeDays"),
                    format!("{days} is not a number of days in [0, 100000]"),
                ));
            }
            let renew_before = Duration::from_secs_f64(days * 86_400.0);
            Some(AcmeSettings {
                directory: a.directory,
                state_dir: a.state_dir,
                contact: a.contact,
                hosts,
                routes: a.routes,
                ca_file: a.ca_file,
                renew_before,
                check: a.check_secs.map_or(Ok(Duration::from_secs(60)), |v| {
                    secs(&format!("{f}.checkSecs"), v)
                })?,
            })
        }
    };
    let mut certificates = Vec::with_capacity(raw.certificates.len());
    for (i, c) in raw.certificates.into_iter().enumerate() {
        let f = format!("{field}.certificates[{i}]");
        let hosts = match c.hosts {
            None => None,
            Some(h) if h.is_empty() => {
                return Err(invalid(
                    format!("{f}.hosts"),
                    "empty list; remove it to use the certificate's own names",
                ))
            }
            Some(h) => Some(
                h.iter()
                    .map(|n| {
                        let n = n.trim().trim_end_matches('.').to_ascii_lowercase();
                        if n.is_empty() {
                            Err(invalid(format!("{f}.hosts"), "empty host name"))
                        } else {
                            Ok(n)
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        certificates.push(CertFiles {
            field: f,
            cert: c.cert,
            key: c.key,
            hosts,
        });
    }
    Ok(Some(TlsSettings {
        field: field.to_string(),
        certificates,
        reload: raw
            .reload_secs
            .map_or(Ok(protocol::TLS_RELOAD_INTERVAL), |v| {
                secs(&format!("{field}.reloadSecs"), v)
            })?,
        redirect_port: raw.redirect_port,
        acme,
    }))
}

/// Validated server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Bind address for both listeners.
    pub host: IpAddr,
    /// Agent-facing port.
    pub internal_port: u16,
    /// Shared agent token (legacy `internal.token`).
    pub internal_token: Secret,
    /// Allowlist of agent peers.
    pub internal_allow: Option<Allowlist>,
    /// Caller-facing port.
    pub external_port: u16,
    /// Caller token; `None` means callers need no token.
    pub external_token: Option<Secret>,
    /// Allowlist of caller peers.
    pub external_allow: Option<Allowlist>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Option<Allowlist>,
    /// Answer every failure with Proxyview's exact 404 page.
    pub legacy_errors: bool,
    /// A caller without `auth-token` may present the external token as `Authorization: Bearer`
    /// (`external.bearerToken`, default true); false is Proxyview's rule: only `auth-token`,
    /// and every `Authorization` reaches the backend.
    pub external_bearer: bool,
    /// How long the server waits for a response head through the tunnel (→ 504).
    pub response_timeout: Duration,
    /// How long a caller may take to send request headers.
    pub header_read_timeout: Duration,
    /// How long a caller may take no bytes of its answer before the connection is closed.
    pub send_timeout: Duration,
    /// Ping interval on each agent session.
    pub heartbeat_interval: Duration,
    /// Time without a ping answer after which an agent is declared dead.
    pub heartbeat_timeout: Duration,
    /// Per-agent tokens and route ownership.
    pub agents: Vec<AgentPolicy>,
    /// Write one JSON access-log line per proxied request.
    pub access_log: bool,
    /// TLS on the agents' port (`internal.tls`).
    pub internal_tls: Option<TlsSettings>,
    /// Token of the operator page (`admin.token`); `None` = `internal.token`.
    pub admin_token: Option<Secret>,
    /// TLS on the callers' port (`external.tls`), with its optional redirect port.
    pub external_tls: Option<TlsSettings>,
    /// `cluster:`; `None` is the single-node server.
    pub cluster: Option<ClusterSettings>,
}

impl ServerConfig {
    /// Reads and validates a server config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::from_yaml(path, &read(path)?)
    }

    /// Parses and validates server YAML (`path` is only used in messages).
    pub fn from_yaml(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: RawServer = parse(path, text)?;
        let host = parse_host(&raw.host)?;
        if raw.internal.token.expose().is_empty() {
            return Err(invalid("internal.token", "must not be empty"));
        }
        let external_token = match raw.external.token {
            Some(t) if t.expose().is_empty() => {
                return Err(invalid(
                    "external.token",
                    "must not be empty (remove the field to require no token)",
                ))
            }
            t => t,
        };
        let opt_list =
            |field: &str, l: &Option<Vec<String>>| -> Result<Option<Allowlist>, ConfigError> {
                l.as_deref().map(|l| parse_allowlist(field, l)).transpose()
            };
        let mut agents = Vec::new();
        for (i, a) in raw.agents.unwrap_or_default().into_iter().enumerate() {
            let field = format!("agents[{i}]");
            if a.client_id.trim().is_empty() {
                return Err(invalid(format!("{field}.clientId"), "must not be empty"));
            }
            if a.token.expose().is_empty() {
                return Err(invalid(format!("{field}.token"), "must not be empty"));
            }
            if agents
                .iter()
                .any(|p: &AgentPolicy| p.client_id == a.client_id)
            {
                return Err(invalid(
                    format!("{field}.clientId"),
                    format!("{:?} is listed twice", a.client_id),
                ));
            }
            let routes = a
                .routes
                .iter()
                .enumerate()
                .map(|(j, r)| normalize_route_name(&format!("{field}.routes[{j}]"), r))
                .collect::<Result<Vec<_>, _>>()?;
            agents.push(AgentPolicy {
                client_id: a.client_id,
                token: a.token,
                routes,
            });
        }
        let d = |field: &str, v: Option<f64>, default: Duration| {
            v.map_or(Ok(default), |v| secs(field, v))
        };
        let cfg = Self {
            host,
            internal_port: raw.internal.port,
            internal_token: raw.internal.token,
            internal_allow: opt_list("internal.whitelistedIps", &raw.internal.whitelisted_ips)?,
            external_port: raw.external.port,
            external_token,
            external_allow: opt_list("external.whitelistedIps", &raw.external.whitelisted_ips)?,
            trusted_proxies: opt_list("external.trustedProxies", &raw.external.trusted_proxies)?,
            legacy_errors: raw.external.legacy_errors,
            external_bearer: raw.external.bearer_token,
            response_timeout: d(
                "external.responseTimeoutSecs",
                raw.external.response_timeout_secs,
                protocol::DEFAULT_RESPONSE_TIMEOUT,
            )?,
            header_read_timeout: d(
                "external.headerReadTimeoutSecs",
                raw.external.header_read_timeout_secs,
                protocol::HEADER_READ_TIMEOUT,
            )?,
            send_timeout: d(
                "external.sendTimeoutSecs",
                raw.external.send_timeout_secs,
                protocol::SEND_TIMEOUT,
            )?,
            heartbeat_interval: d(
                "internal.heartbeatIntervalSecs",
                raw.internal.heartbeat_interval_secs,
                protocol::HEARTBEAT_INTERVAL,
            )?,
            heartbeat_timeout: d(
                "internal.heartbeatTimeoutSecs",
                raw.internal.heartbeat_timeout_secs,
                protocol::HEARTBEAT_TIMEOUT,
            )?,
            agents,
            access_log: raw.access_log,
            internal_tls: tls_settings("internal.tls", raw.internal.tls)?,
            admin_token: match raw.admin {
                Some(a) if a.token.expose().is_empty() => {
                    return Err(invalid(
                        "admin.token",
                        "must not be empty (remove admin: to use internal.token)",
                    ))
                }
                a => a.map(|a| a.token),
            },
            external_tls: tls_settings("external.tls", raw.external.tls)?,
            cluster: cluster_settings(raw.cluster)?,
        };
        if cfg
            .internal_tls
            .as_ref()
            .is_some_and(|t| t.redirect_port.is_some() || t.acme.is_some())
        {
            return Err(invalid(
                "internal.tls",
                "redirectPort and acme are for the external port only",
            ));
        }
        if cfg.cluster.is_some() && cfg.internal_tls.is_some() {
            // Peer links dial the other nodes' internal ports over plain ws:// for now.
            return Err(invalid(
                "cluster",
                "not supported together with internal.tls yet (peer links are plain ws://); terminate the agents' TLS in front of the internal port instead",
            ));
        }
        if let Some(p) = cfg.external_tls.as_ref().and_then(|t| t.redirect_port) {
            if p != 0 && (p == cfg.external_port || p == cfg.internal_port) {
                return Err(invalid(
                    "external.tls.redirectPort",
                    format!("{p} is also external.port or internal.port"),
                ));
            }
        }
        if cfg.internal_port != 0 && cfg.internal_port == cfg.external_port {
            return Err(invalid(
                "external.port",
                format!("{} is also internal.port", cfg.external_port),
            ));
        }
        Ok(cfg)
    }

    /// Socket address of the agent-facing listener.
    pub fn internal_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.internal_port)
    }

    /// Socket address of the caller-facing listener.
    pub fn external_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.external_port)
    }
}

fn parse_host(host: &str) -> Result<IpAddr, ConfigError> {
    let h = host.trim();
    if h.is_empty() {
        // The blog's example config has `host: ""`; binding everywhere is what it meant.
        return Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }
    if h.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    h.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| {
            invalid(
                "host",
                format!("{host:?} is not an IP address to bind (e.g. 0.0.0.0, 127.0.0.1, ::)"),
            )
        })
}

// ---------------------------------------------------------------------------------------------
// Agent

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawClient {
    client_id: String,
    routes: Vec<RawRoute>,
    proxyview: RawProxyview,
    #[serde(default)]
    preserve_host: bool,
    #[serde(default)]
    connect_timeout_secs: Option<f64>,
    #[serde(default)]
    response_timeout_secs: Option<f64>,
    #[serde(default)]
    body_idle_timeout_secs: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRoute {
    name: String,
    value: String,
    port: u16,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    preserve_host: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawProxyview {
    #[serde(default)]
    url: Option<String>,
    /// Cluster alternative to `url`: tried in order, the next after each failure.
    #[serde(default)]
    urls: Option<Vec<String>>,
    token: Secret,
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

/// How a route's `value` is to be read (Proxyview carried this but ignored it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// A host name resolved by the agent.
    Cname,
    /// A literal IP address.
    Ip,
}

/// One service the agent exposes.
#[derive(Debug, Clone)]
pub struct Route {
    /// Normalised alias matched against the caller's Host.
    pub name: String,
    /// Host name or IP the agent connects to.
    pub value: String,
    /// Port the agent connects to.
    pub port: u16,
    /// How `value` is interpreted.
    pub kind: RouteKind,
    /// Forward the caller's Host instead of `value:port`.
    pub preserve_host: bool,
}

impl Route {
    /// A short digest of where this route goes (`value:port`, kind, Host rule): equal for two
    /// agents that serve the route alike, different when they would send callers to different
    /// backends. A digest, so the server learns whether targets match, not what they are.
    pub fn fingerprint(&self) -> String {
        let mut sha = sha1_smol::Sha1::new();
        sha.update(self.authority().to_ascii_lowercase().as_bytes());
        sha.update(format!("|{:?}|{}", self.kind, self.preserve_host).as_bytes());
        let hex = sha.digest().to_string();
        hex[..12].to_string()
    }

    /// `value:port` as an HTTP authority (IPv6 literals bracketed).
    pub fn authority(&self) -> String {
        if self.value.contains(':') && !self.value.starts_with('[') {
            format!("[{}]:{}", self.value, self.port)
        } else {
            format!("{}:{}", self.value, self.port)
        }
    }
}

/// Where and how the agent dials the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// `wss://` when true.
    pub tls: bool,
    /// Host name or IP.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Request path of the WebSocket endpoint.
    pub path: String,
}

impl ServerUrl {
    /// Parses `host:port` (Proxyview's form, meaning `ws://host:port/connect`), `ws://…` or `wss://…`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (tls, rest) = if let Some(r) = s.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("ws://") {
            (false, r)
        } else if s.contains("://") {
            return Err(format!("{s:?}: scheme must be ws:// or wss://"));
        } else {
            (false, s)
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let path = if path.is_empty() || path == "/" {
            protocol::CONNECT_PATH.to_string()
        } else {
            path.to_string()
        };
        let auth: http::uri::Authority = authority
            .parse()
            .map_err(|_| format!("{s:?}: {authority:?} is not host:port"))?;
        let host = auth
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(format!("{s:?}: host is empty"));
        }
        let port = auth.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Self {
            tls,
            host,
            port,
            path,
        })
    }

    /// The URI used in the WebSocket handshake.
    pub fn uri(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{host}:{}{}", self.port, self.path)
    }
}

/// Validated agent configuration.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Agent identity.
    pub client_id: String,
    /// Services exposed through the tunnel.
    pub routes: Vec<Route>,
    /// The server's internal endpoint (the first of `servers`).
    pub server: ServerUrl,
    /// Every endpoint the agent may dial, in order (`proxyview.urls`, else just `url`); after
    /// a failed or ended session it moves on to the next.
    pub servers: Vec<ServerUrl>,
    /// Token presented to the server.
    pub token: Secret,
    /// Extra PEM CA bundle trusted for `wss://` (besides the webpki roots).
    pub ca_file: Option<PathBuf>,
    /// Backend connect timeout.
    pub connect_timeout: Duration,
    /// Backend response-head timeout (→ 504).
    pub response_timeout: Duration,
    /// Longest silence of a backend in the middle of a response body (the stream is reset).
    pub body_idle_timeout: Duration,
}

impl ClientConfig {
    /// Reads and validates an agent config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::from_yaml(path, &read(path)?)
    }

    /// Parses and validates agent YAML (`path` is only used in messages).
    pub fn from_yaml(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: RawClient = parse(path, text)?;
        let client_id = raw.client_id.trim().to_string();
        if client_id.is_empty() {
            return Err(invalid("clientId", "must not be empty"));
        }
        if client_id.len() > protocol::MAX_CLIENT_ID_LEN
            || client_id.chars().any(|c| c.is_control())
        {
            return Err(invalid(
                "clientId",
                format!(
                    "{client_id:?} must be printable and at most {} bytes",
                    protocol::MAX_CLIENT_ID_LEN
                ),
            ));
        }
        if raw.routes.is_empty() {
            return Err(invalid("routes", "at least one route is needed"));
        }
        if raw.routes.len() > protocol::MAX_ROUTES {
            return Err(invalid(
                "routes",
                format!("at most {} routes per agent", protocol::MAX_ROUTES),
            ));
        }
        let mut routes: Vec<Route> = Vec::with_capacity(raw.routes.len());
        for (i, r) in raw.routes.into_iter().enumerate() {
            let field = format!("routes[{i}]");
            let name = normalize_route_name(&format!("{field}.name"), &r.name)?;
            if routes.iter().any(|x| x.name == name) {
                return Err(invalid(
                    format!("{field}.name"),
                    format!("{name:?} is listed twice"),
                ));
            }
            let value = r.value.trim().to_string();
            if value.is_empty() {
                return Err(invalid(format!("{field}.value"), "must not be empty"));
            }
            if r.port == 0 {
                return Err(invalid(format!("{field}.port"), "must be 1-65535"));
            }
            let kind = match r.kind.as_deref().map(str::to_ascii_lowercase).as_deref() {
                None | Some("cname") => RouteKind::Cname,
                Some("ip") => RouteKind::Ip,
                Some(other) => {
                    return Err(invalid(
                        format!("{field}.type"),
                        format!("{other:?} is not \"cname\" or \"ip\""),
                    ))
                }
            };
            if kind == RouteKind::Ip
                && value
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .is_err()
            {
                return Err(invalid(
                    format!("{field}.value"),
                    format!("{value:?} is not an IP address but type is \"ip\""),
                ));
            }
            routes.push(Route {
                name,
                value,
                port: r.port,
                kind,
                preserve_host: r.preserve_host.unwrap_or(raw.preserve_host),
            });
        }
        // `url` (one server) or `urls` (cluster nodes, tried in turn), never both.
        let (field, list) = match (raw.proxyview.url, raw.proxyview.urls) {
            (Some(u), None) => ("proxyview.url", vec![u]),
            (None, Some(l)) if !l.is_empty() => ("proxyview.urls", l),
            (None, Some(_)) => return Err(invalid("proxyview.urls", "must not be empty")),
            (None, None) => {
                return Err(invalid("proxyview.url", "missing (or give proxyview.urls)"))
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "proxyview.urls",
                    "give either proxyview.url or proxyview.urls, not both",
                ))
            }
        };
        let mut servers = Vec::with_capacity(list.len());
        for (i, u) in list.iter().enumerate() {
            let f = if field == "proxyview.url" {
                field.to_string()
            } else {
                format!("{field}[{i}]")
            };
            let server = ServerUrl::parse(u).map_err(|m| invalid(f.clone(), m))?;
            if server.tls && !cfg!(feature = "tls") {
                return Err(invalid(
                    f,
                    "wss:// needs proxyview built with the `tls` feature",
                ));
            }
            servers.push(server);
        }
        let server = servers[0].clone();
        if raw.proxyview.token.expose().is_empty() {
            return Err(invalid("proxyview.token", "must not be empty"));
        }
        let d = |field: &str, v: Option<f64>, default: Duration| {
            v.map_or(Ok(default), |v| secs(field, v))
        };
        Ok(Self {
            client_id,
            routes,
            server,
            servers,
            token: raw.proxyview.token,
            ca_file: raw.proxyview.ca_file,
            connect_timeout: d(
                "connectTimeoutSecs",
                raw.connect_timeout_secs,
                protocol::BACKEND_CONNECT_TIMEOUT,
            )?,
            response_timeout: d(
                "responseTimeoutSecs",
                raw.response_timeout_secs,
                protocol::DEFAULT_RESPONSE_TIMEOUT,
            )?,
            body_idle_timeout: d(
                "bodyIdleTimeoutSecs",
                raw.body_idle_timeout_secs,
                protocol::DEFAULT_BODY_IDLE_TIMEOUT,
            )?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn server(yaml: &str) -> Result<ServerConfig, ConfigError> {
        ServerConfig::from_yaml(Path::new("test.yaml"), yaml)
    }

    const BASE: &str = "host: \"0.0.0.0\"\ninternal:\n  port: 8081\n  token: \"a\"\nexternal:\n  port: 8080\n  token: \"b\"\n";

    #[test]
    fn empty_allowlist_is_rejected_with_field_name() {
        let err = server(&format!("{BASE}  whitelistedIps: []\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("external.whitelistedIps"), "{err}");
        assert!(err.contains("empty list"), "{err}");
    }

    #[test]
    fn bad_allowlist_entry_names_index_and_value() {
        let err = server(&format!(
            "{BASE}  whitelistedIps: [\"10.0.0.1\", \"nope\"]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("external.whitelistedIps[1]") && err.contains("nope"),
            "{err}"
        );
        let err = server(&format!("{BASE}  whitelistedIps: [\"10.0.0.0/33\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/33"), "{err}");
    }

    #[test]
    fn cidr_v4_v6_and_mapped() {
        let l = parse_allowlist(
            "x",
            &["10.1.0.0/16".into(), "fd00::/8".into(), "192.0.2.7".into()],
        )
        .unwrap();
        assert!(l.allows("10.1.200.3".parse().unwrap()));
        assert!(!l.allows("10.2.0.1".parse().unwrap()));
        assert!(l.allows("fd12::1".parse().unwrap()));
        assert!(!l.allows("fe80::1".parse().unwrap()));
        assert!(l.allows("::ffff:10.1.2.3".parse().unwrap()));
        assert!(l.allows("192.0.2.7".parse().unwrap()));
        assert!(!l.allows("192.0.2.8".parse().unwrap()));
        let all = parse_allowlist("x", &["0.0.0.0/0".into(), "::/0".into()]).unwrap();
        assert!(all.allows("1.2.3.4".parse().unwrap()) && all.allows("::1".parse().unwrap()));
        let mapped = parse_allowlist("x", &["::ffff:10.0.0.0/104".into()]).unwrap();
        assert!(mapped.allows("10.9.9.9".parse().unwrap()));
    }

    #[test]
    fn unknown_field_is_named() {
        let err = server(&format!("{BASE}  tokn: x\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("tokn"), "{err}");
    }

    #[test]
    fn secret_debug_is_masked_and_compare_works() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "MASKED");
        assert!(s.matches(b"hunter2"));
        assert!(!s.matches(b"hunter3"));
        assert!(!s.matches(b"hunter"));
    }

    #[test]
    fn server_url_forms() {
        let u = ServerUrl::parse("localhost:8081").unwrap();
        assert_eq!(u.uri(), "ws://localhost:8081/connect");
        let u = ServerUrl::parse("wss://tunnel.example.com").unwrap();
        assert_eq!(u.uri(), "wss://tunnel.example.com:443/connect");
        let u = ServerUrl::parse("ws://[::1]:9/x").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("::1", 9, "/x"));
        assert!(ServerUrl::parse("http://a:1").is_err());
    }

    #[test]
    fn cluster_errors_name_the_field() {
        let ok = "cluster:\n  registry: \"redis://r:6379/0\"\n  advertise: \"10.0.0.5:8081\"\n  secret: \"0123456789abcdef\"\n";
        let c = server(&format!("{BASE}{ok}")).unwrap().cluster.unwrap();
        assert_eq!(c.node_id, "10.0.0.5:8081", "nodeId defaults to advertise");
        assert!(server(BASE).unwrap().cluster.is_none());
        for (bad, field) in [
            (ok.replace("redis://r", "http://r"), "cluster.registry"),
            (ok.replace("10.0.0.5:8081", "10.0.0.5"), "cluster.advertise"),
            (ok.replace("0123456789abcdef", "short"), "cluster.secret"),
            (format!("{ok}  nodeId: \"a b\"\n"), "cluster.nodeId"),
            (format!("{ok}  heartbeatSecs: 0\n"), "cluster.heartbeatSecs"),
        ] {
            let err = server(&format!("{BASE}{bad}")).unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
        let tls = BASE.replace(
            "token: \"a\"\n",
            "token: \"a\"\n  tls: {certificates: [{cert: c, key: k}]}\n",
        );
        let err = server(&format!("{tls}{ok}")).unwrap_err().to_string();
        assert!(
            err.contains("cluster") && err.contains("internal.tls"),
            "{err}"
        );
    }

    #[test]
    fn agent_urls_or_url() {
        let agent = |p: &str| {
            ClientConfig::from_yaml(
                Path::new("a.yaml"),
                &format!("clientId: a\nroutes:\n  - {{name: r, value: h, port: 80}}\nproxyview:\n  token: t\n{p}"),
            )
        };
        let c = agent("  urls: [\"a:1\", \"wss://b\"]\n").unwrap();
        assert_eq!(c.servers.len(), 2);
        assert_eq!(c.server, c.servers[0]);
        let c = agent("  url: \"a:1\"\n").unwrap();
        assert_eq!(c.servers.len(), 1);
        assert_eq!(c.servers[0], c.server);
        for (p, field) in [
            ("  urls: []\n", "proxyview.urls"),
            ("  urls: [\"a:1\", \"http://b\"]\n", "proxyview.urls[1]"),
            ("  url: \"a:1\"\n  urls: [\"b:1\"]\n", "not both"),
            ("", "proxyview.url"),
        ] {
            let err = agent(p).unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn route_names_are_normalised_and_checked() {
        assert_eq!(normalize_route_name("f", "Route1.").unwrap(), "route1");
        assert!(normalize_route_name("f", "a b").is_err());
        assert!(normalize_route_name("f", "").is_err());
    }
}
