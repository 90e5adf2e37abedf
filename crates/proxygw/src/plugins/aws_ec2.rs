//! The `aws` plugin: target kind `ec2` starts EC2 instances on warm and stops (or hibernates) them on
//! drain (spec §7.7), with the original's weaknesses fixed (§12 item 14): a `stopping` instance is waited
//! for and then started, warm waits until the endpoint accepts TCP, non-positive timeouts are rejected and
//! shutdown leaves instances alone unless `on_shutdown: stop`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::error::DisplayErrorContext;
use aws_sdk_ec2::types::{Instance, InstanceStateName};
use serde_json::{Map, Value};
use tokio::net::TcpStream;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::{BoxFuture, PluginDef, TargetCtx, TargetHandler};
use crate::config::{Endpoint, Protocol};
use crate::log::Logger;
use gosyntax::format_go_duration;

/// The aws plugin's schema (plugin block and `target.ec2` options).
pub const SCHEMA: &str = include_str!("../../../../configs/plugins/aws.schema.yaml");
/// Default `start_timeout` (the original's).
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(600);
/// Default `stop_timeout` (the original's).
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(600);
/// First pause between DescribeInstances polls; doubles up to [`POLL_MAX`].
pub const POLL_FIRST: Duration = Duration::from_millis(500);
/// Longest pause between polls (the original polled at this fixed period).
pub const POLL_MAX: Duration = Duration::from_secs(5);
/// Pause between TCP probes of an endpoint on a started instance.
pub const TCP_PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// Longest single TCP connect attempt (a booting host often drops SYNs rather than refusing).
pub const TCP_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

const WHAT: &str = "aws ec2 target option";

/// The plugin definition.
pub fn plugin() -> PluginDef {
    PluginDef {
        source: "aws",
        schema: SCHEMA,
        frontends: vec![],
        targets: vec![(
            "ec2",
            Arc::new(|c: &TargetCtx, o: &Map<String, Value>| {
                let opts = Ec2Options::parse(o)?;
                Ok(Arc::new(Ec2Target::new(
                    &c.name,
                    &c.endpoints,
                    c.log.clone(),
                    opts,
                    None,
                )) as Arc<dyn TargetHandler>)
            }),
        )],
        on_load: None,
    }
}

/// What closing the target (daemon shutdown) does to the instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnShutdown {
    /// Stop them, like a drain (the original's only behaviour).
    Stop,
    /// Leave them as they are (default).
    Leave,
}

/// Parsed `aws:ec2` options.
#[derive(Clone, Debug, PartialEq)]
pub struct Ec2Options {
    /// Instances started and stopped together, in config order.
    pub instance_ids: Vec<String>,
    /// Region override; `None` uses the SDK's chain.
    pub region: Option<String>,
    /// Shared-config profile override.
    pub profile: Option<String>,
    /// StopInstances with `Hibernate=true`.
    pub hibernate: bool,
    /// Bound on a whole warm.
    pub start_timeout: Duration,
    /// Bound on a whole drain.
    pub stop_timeout: Duration,
    /// What shutdown does.
    pub on_shutdown: OnShutdown,
}

impl Ec2Options {
    /// Parses target options with the original's error messages (plus the checks it lacked).
    pub fn parse(o: &Map<String, Value>) -> Result<Self, String> {
        let instance_ids = instance_ids(o)?;
        let region = string_opt(o, "region")?.filter(|s| !s.is_empty());
        let profile = string_opt(o, "profile")?.filter(|s| !s.is_empty());
        let hibernate = match o.get("hibernate") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
                "true" => true,
                "false" => false,
                _ => return Err(format!("{WHAT} hibernate must be true or false")),
            },
            Some(_) => return Err(format!("{WHAT} hibernate must be a boolean")),
        };
        let start_timeout = duration_opt(o, "start_timeout", DEFAULT_START_TIMEOUT)?;
        let stop_timeout = duration_opt(o, "stop_timeout", DEFAULT_STOP_TIMEOUT)?;
        let on_shutdown = match string_opt(o, "on_shutdown")?.as_deref() {
            None | Some("leave") => OnShutdown::Leave,
            Some("stop") => OnShutdown::Stop,
            Some(_) => return Err(format!("{WHAT} on_shutdown must be stop or leave")),
        };
        Ok(Self {
            instance_ids,
            region,
            profile,
            hibernate,
            start_timeout,
            stop_timeout,
            on_shutdown,
        })
    }
}

fn instance_ids(o: &Map<String, Value>) -> Result<Vec<String>, String> {
    if let Some(v) = o.get("instance_id") {
        let Value::String(id) = v else {
            return Err(format!("{WHAT} instance_id must be a string"));
        };
        if id.is_empty() {
            return Err(format!("{WHAT} instance_id must not be empty"));
        }
        return Ok(vec![id.clone()]);
    }
    let Some(v) = o.get("instance_ids") else {
        return Err(format!("{WHAT} instance_id or instance_ids is required"));
    };
    let Value::Array(items) = v else {
        return Err(format!("{WHAT} instance_ids must be a string array"));
    };
    let mut ids = Vec::with_capacity(items.len());
    for item in items {
        let Value::String(s) = item else {
            return Err(format!("{WHAT} instance_ids must contain only strings"));
        };
        ids.push(s.clone());
    }
    if ids.is_empty() {
        return Err(format!("{WHAT} instance_ids must not be empty"));
    }
    if ids.iter().any(String::is_empty) {
        return Err(format!("{WHAT} instance_ids must not contain empty values"));
    }
    // A repeated id would make AWS reject the whole call; keep the first.
    let mut seen = BTreeSet::new();
    ids.retain(|id| seen.insert(id.clone()));
    Ok(ids)
}

fn string_opt(o: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match o.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{WHAT} {key} must be a string")),
    }
}

/// Go's `reflect.TypeOf` name for a decoded YAML value, as the original's message printed it.
fn go_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "<nil>",
        Value::Bool(_) => "bool",
        Value::Number(_) => "float64",
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

fn duration_opt(o: &Map<String, Value>, key: &str, default: Duration) -> Result<Duration, String> {
    let Some(v) = o.get(key) else {
        return Ok(default);
    };
    let out_of_range = || format!("{WHAT} {key} is out of range");
    let nanos: i128 = match v {
        Value::String(s) => {
            i128::from(gosyntax::parse_go_duration(s).map_err(|e| format!("{WHAT} {key}: {e}"))?)
        }
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i128::from(i) * 1_000_000_000
            } else if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                let ns = f * 1e9;
                if !ns.is_finite() || ns.abs() > i64::MAX as f64 {
                    return Err(out_of_range());
                }
                ns as i128
            } else {
                return Err(out_of_range());
            }
        }
        other => {
            return Err(format!(
                "{WHAT} {key} has unsupported type {}",
                go_type_name(other)
            ))
        }
    };
    if nanos <= 0 {
        // The original accepted these and then failed every warm/drain at once.
        return Err(format!("{WHAT} {key} must be greater than zero"));
    }
    u64::try_from(nanos)
        .ok()
        .filter(|n| *n <= i64::MAX as u64)
        .map(Duration::from_nanos)
        .ok_or_else(out_of_range)
}

/// Instance ids joined for messages (`i-1, i-2`).
struct Ids<'a>(&'a [String]);

impl fmt::Display for Ids<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

/// One DescribeInstances answer for the configured ids.
#[derive(Debug, Default)]
struct Snapshot {
    states: BTreeMap<String, InstanceStateName>,
    addrs: BTreeMap<String, Vec<IpAddr>>,
}

impl Snapshot {
    fn all(&self, ids: &[String], want: &InstanceStateName) -> bool {
        ids.iter().all(|id| self.states.get(id) == Some(want))
    }

    fn with_state(&self, ids: &[String], want: &InstanceStateName) -> Vec<String> {
        ids.iter()
            .filter(|id| self.states.get(*id) == Some(want))
            .cloned()
            .collect()
    }

    fn describe(&self, ids: &[String]) -> String {
        ids.iter()
            .map(|id| {
                let s = self.states.get(id).map(|s| s.as_str()).unwrap_or("unknown");
                format!("{id} {s}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn instance_addrs(i: &Instance) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut push = |s: Option<&str>| {
        if let Some(ip) = s.and_then(|s| s.parse::<IpAddr>().ok()) {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    };
    push(i.private_ip_address());
    push(i.public_ip_address());
    push(i.ipv6_address());
    for ni in i.network_interfaces() {
        push(ni.private_ip_address());
        for p in ni.private_ip_addresses() {
            push(p.private_ip_address());
            push(p.association().and_then(|a| a.public_ip()));
        }
        for a in ni.ipv6_addresses() {
            push(a.ipv6_address());
        }
        push(ni.association().and_then(|a| a.public_ip()));
    }
    out
}

/// The `aws:ec2` target handler.
pub struct Ec2Target {
    name: String,
    opts: Ec2Options,
    endpoints: Vec<Endpoint>,
    log: Logger,
    preset: Option<aws_config::SdkConfig>,
    client: OnceCell<aws_sdk_ec2::Client>,
}

impl fmt::Debug for Ec2Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ec2Target")
            .field("name", &self.name)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// Marks an error as a deadline overrun so the caller can say what it was waiting for.
enum Step {
    Failed(String),
    Late,
}

impl From<String> for Step {
    fn from(e: String) -> Self {
        Step::Failed(e)
    }
}

async fn by<T>(deadline: Instant, fut: impl std::future::Future<Output = T>) -> Result<T, Step> {
    tokio::time::timeout_at(deadline, fut)
        .await
        .map_err(|_| Step::Late)
}

impl Ec2Target {
    /// Builds the handler. `sdk` replaces the SDK's default config chain (`region`/`profile` are then
    /// ignored); `None` loads it lazily on first use, so a bad environment shows up as a warm error.
    pub fn new(
        name: &str,
        endpoints: &[Endpoint],
        log: Logger,
        opts: Ec2Options,
        sdk: Option<aws_config::SdkConfig>,
    ) -> Self {
        Self {
            name: name.to_string(),
            opts,
            endpoints: endpoints.to_vec(),
            log,
            preset: sdk,
            client: OnceCell::new(),
        }
    }

    /// The parsed options.
    pub fn options(&self) -> &Ec2Options {
        &self.opts
    }

    async fn client(&self) -> Result<&aws_sdk_ec2::Client, String> {
        self.client
            .get_or_try_init(|| async {
                let cfg = match &self.preset {
                    Some(c) => c.clone(),
                    None => {
                        let mut l = aws_config::defaults(aws_config::BehaviorVersion::latest());
                        if let Some(r) = &self.opts.region {
                            l = l.region(aws_config::Region::new(r.clone()));
                        }
                        if let Some(p) = &self.opts.profile {
                            l = l.profile_name(p);
                        }
                        l.load().await
                    }
                };
                if cfg.region().is_none() {
                    return Err(
                        "load aws config: no region (set option region, AWS_REGION, or a profile region)"
                            .to_string(),
                    );
                }
                Ok(aws_sdk_ec2::Client::new(&cfg))
            })
            .await
    }

    fn ids(&self) -> Ids<'_> {
        Ids(&self.opts.instance_ids)
    }

    async fn snapshot(&self, c: &aws_sdk_ec2::Client) -> Result<Snapshot, String> {
        let ids = &self.opts.instance_ids;
        let out = c
            .describe_instances()
            .set_instance_ids(Some(ids.clone()))
            .send()
            .await
            .map_err(|e| {
                format!(
                    "ec2 describe instances {}: {}",
                    self.ids(),
                    DisplayErrorContext(&e)
                )
            })?;
        let mut snap = Snapshot::default();
        for r in out.reservations() {
            for i in r.instances() {
                let Some(id) = i.instance_id() else { continue };
                let state = i
                    .state()
                    .and_then(|s| s.name())
                    .cloned()
                    .unwrap_or_else(|| InstanceStateName::from(""));
                snap.states.insert(id.to_string(), state);
                snap.addrs.insert(id.to_string(), instance_addrs(i));
            }
        }
        for id in ids {
            if !snap.states.contains_key(id) {
                return Err(format!(
                    "ec2 describe instances did not return {}",
                    gosyntax::go_quote(id)
                ));
            }
        }
        for id in ids {
            if let Some(s @ (InstanceStateName::Terminated | InstanceStateName::ShuttingDown)) =
                snap.states.get(id)
            {
                return Err(format!("ec2 instance {id} is {}", s.as_str()));
            }
        }
        Ok(snap)
    }

    async fn warm_inner(&self, deadline: Instant, last: &mut Snapshot) -> Result<(), Step> {
        let c = by(deadline, self.client()).await??;
        let ids = &self.opts.instance_ids;
        let mut pause = POLL_FIRST;
        let mut announced = false;
        loop {
            *last = by(deadline, self.snapshot(c)).await??;
            if last.all(ids, &InstanceStateName::Running) {
                break;
            }
            // Stopped ones can start now; stopping ones first have to finish stopping (the original
            // called StartInstances on them and failed); pending ones are already on their way.
            let startable = last.with_state(ids, &InstanceStateName::Stopped);
            if !startable.is_empty() {
                if !announced {
                    self.log.info(
                        "starting ec2 instances",
                        &[("target", &self.name), ("instance_ids", &self.ids())],
                    );
                    announced = true;
                }
                by(
                    deadline,
                    c.start_instances()
                        .set_instance_ids(Some(startable.clone()))
                        .send(),
                )
                .await?
                .map_err(|e| {
                    format!(
                        "ec2 start instances {}: {}",
                        Ids(&startable),
                        DisplayErrorContext(&e)
                    )
                })?;
            } else {
                self.log.debug(
                    "waiting for ec2 instances",
                    &[("target", &self.name), ("states", &last.describe(ids))],
                );
            }
            by(deadline, tokio::time::sleep(pause)).await?;
            pause = (pause * 2).min(POLL_MAX);
        }
        Ok(())
    }

    /// TCP endpoints whose address belongs to one of the instances, with that instance's id.
    fn own_tcp_endpoints(&self, snap: &Snapshot) -> Vec<(Endpoint, String)> {
        let mut out = Vec::new();
        for e in &self.endpoints {
            if e.protocol != Protocol::Tcp {
                continue;
            }
            if let Some((id, _)) = snap
                .addrs
                .iter()
                .find(|(_, addrs)| addrs.contains(&e.address.ip()))
            {
                out.push((e.clone(), id.clone()));
            }
        }
        out
    }

    async fn drain_inner(&self, deadline: Instant, last: &mut Snapshot) -> Result<(), Step> {
        let c = by(deadline, self.client()).await??;
        let ids = &self.opts.instance_ids;
        let mut pause = POLL_FIRST;
        let mut asked: BTreeSet<String> = BTreeSet::new();
        loop {
            *last = by(deadline, self.snapshot(c)).await??;
            if last.all(ids, &InstanceStateName::Stopped) {
                return Ok(());
            }
            // Only running instances can be stopped; pending ones are waited for until they run.
            let stoppable: Vec<String> = last
                .with_state(ids, &InstanceStateName::Running)
                .into_iter()
                .filter(|id| !asked.contains(id))
                .collect();
            if !stoppable.is_empty() {
                self.log.info(
                    "stopping ec2 instances",
                    &[
                        ("target", &self.name),
                        ("instance_ids", &Ids(&stoppable)),
                        ("hibernate", &self.opts.hibernate),
                    ],
                );
                by(
                    deadline,
                    c.stop_instances()
                        .set_instance_ids(Some(stoppable.clone()))
                        .hibernate(self.opts.hibernate)
                        .send(),
                )
                .await?
                .map_err(|e| {
                    format!(
                        "ec2 stop instances {}: {}",
                        Ids(&stoppable),
                        DisplayErrorContext(&e)
                    )
                })?;
                asked.extend(stoppable);
            }
            by(deadline, tokio::time::sleep(pause)).await?;
            pause = (pause * 2).min(POLL_MAX);
        }
    }

    /// Starts the instances and waits until they run and their endpoints accept TCP.
    pub async fn start(&self) -> Result<(), String> {
        let ids = &self.opts.instance_ids;
        let timeout = self.opts.start_timeout;
        let deadline = Instant::now() + timeout;
        let mut last = Snapshot::default();
        let late = |last: &Snapshot| {
            format!(
                "wait for ec2 instances {} to reach running: timed out after {} (last seen: {})",
                self.ids(),
                format_go_duration(timeout),
                last.describe(ids)
            )
        };
        match self.warm_inner(deadline, &mut last).await {
            Ok(()) => {}
            Err(Step::Failed(e)) => return Err(e),
            Err(Step::Late) => return Err(late(&last)),
        }
        for (e, id) in self.own_tcp_endpoints(&last) {
            self.wait_tcp(&e, &id, deadline, timeout).await?;
        }
        self.log.info(
            "ec2 instances running",
            &[("target", &self.name), ("instance_ids", &self.ids())],
        );
        Ok(())
    }

    async fn wait_tcp(
        &self,
        e: &Endpoint,
        id: &str,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(), String> {
        loop {
            let attempt = (Instant::now() + TCP_PROBE_TIMEOUT).min(deadline);
            if let Ok(Ok(_)) = tokio::time::timeout_at(attempt, TcpStream::connect(e.address)).await
            {
                return Ok(());
            }
            if Instant::now() + TCP_PROBE_INTERVAL >= deadline {
                return Err(format!(
                    "wait for endpoint {} ({}) on ec2 instance {id} to accept TCP connections: timed out after {}",
                    e.name,
                    e.address,
                    format_go_duration(timeout)
                ));
            }
            tokio::time::sleep(TCP_PROBE_INTERVAL).await;
        }
    }

    /// Stops (or hibernates) the instances and waits until they are stopped.
    pub async fn stop(&self) -> Result<(), String> {
        let ids = &self.opts.instance_ids;
        let timeout = self.opts.stop_timeout;
        let mut last = Snapshot::default();
        match self.drain_inner(Instant::now() + timeout, &mut last).await {
            Ok(()) => {
                self.log.info(
                    "ec2 instances stopped",
                    &[("target", &self.name), ("instance_ids", &self.ids())],
                );
                Ok(())
            }
            Err(Step::Failed(e)) => Err(e),
            Err(Step::Late) => Err(format!(
                "wait for ec2 instances {} to reach stopped: timed out after {} (last seen: {})",
                self.ids(),
                format_go_duration(timeout),
                last.describe(ids)
            )),
        }
    }
}

impl TargetHandler for Ec2Target {
    fn warm(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.start())
    }

    fn drain(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.stop())
    }

    fn close(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            match self.opts.on_shutdown {
                OnShutdown::Stop => self.stop().await,
                OnShutdown::Leave => {
                    self.log.info(
                        "leaving ec2 instances as they are",
                        &[("target", &self.name), ("instance_ids", &self.ids())],
                    );
                    Ok(())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Ec2Options, String> {
        let v: Value = serde_saphyr::from_str(yaml).unwrap();
        let map = match v {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => panic!("not a map: {other}"),
        };
        Ec2Options::parse(&map)
    }

    fn err(yaml: &str) -> String {
        parse(yaml).unwrap_err()
    }

    #[test]
    fn defaults_and_precedence() {
        let o = parse("instance_id: i-1\ninstance_ids: [i-2]").unwrap();
        assert_eq!(o.instance_ids, vec!["i-1"]);
        assert_eq!(o.start_timeout, Duration::from_secs(600));
        assert_eq!(o.stop_timeout, Duration::from_secs(600));
        assert!(!o.hibernate);
        assert_eq!(o.on_shutdown, OnShutdown::Leave);
        assert_eq!(o.region, None);
        assert_eq!(o.profile, None);
        let o = parse(
            "instance_ids: [i-1, i-2, i-1]\nregion: eu-west-1\nprofile: games\nhibernate: \"TRUE\"\n\
             start_timeout: 90\nstop_timeout: 1.5\non_shutdown: stop",
        )
        .unwrap();
        assert_eq!(o.instance_ids, vec!["i-1", "i-2"]);
        assert_eq!(o.region.as_deref(), Some("eu-west-1"));
        assert_eq!(o.profile.as_deref(), Some("games"));
        assert!(o.hibernate);
        assert_eq!(o.start_timeout, Duration::from_secs(90));
        assert_eq!(o.stop_timeout, Duration::from_millis(1500));
        assert_eq!(o.on_shutdown, OnShutdown::Stop);
        let o =
            parse("instance_id: i-1\nhibernate: true\nstart_timeout: 1m30s\nregion: \"\"").unwrap();
        assert!(o.hibernate);
        assert_eq!(o.start_timeout, Duration::from_secs(90));
        assert_eq!(o.region, None);
        assert!(
            !parse("instance_id: i-1\nhibernate: False")
                .unwrap()
                .hibernate
        );
    }

    #[test]
    fn every_option_error_message() {
        let p = "aws ec2 target option";
        let cases: &[(&str, String)] = &[
            ("", format!("{p} instance_id or instance_ids is required")),
            (
                "region: x",
                format!("{p} instance_id or instance_ids is required"),
            ),
            (
                "instance_id: \"\"",
                format!("{p} instance_id must not be empty"),
            ),
            (
                "instance_id: 5",
                format!("{p} instance_id must be a string"),
            ),
            (
                "instance_id: null",
                format!("{p} instance_id must be a string"),
            ),
            (
                "instance_ids: []",
                format!("{p} instance_ids must not be empty"),
            ),
            (
                "instance_ids: [i-1, \"\"]",
                format!("{p} instance_ids must not contain empty values"),
            ),
            (
                "instance_ids: i-1",
                format!("{p} instance_ids must be a string array"),
            ),
            (
                "instance_ids: [i-1, 2]",
                format!("{p} instance_ids must contain only strings"),
            ),
            (
                "instance_id: i-1\nregion: 1",
                format!("{p} region must be a string"),
            ),
            (
                "instance_id: i-1\nprofile: [a]",
                format!("{p} profile must be a string"),
            ),
            (
                "instance_id: i-1\nhibernate: maybe",
                format!("{p} hibernate must be true or false"),
            ),
            (
                "instance_id: i-1\nhibernate: 1",
                format!("{p} hibernate must be a boolean"),
            ),
            (
                "instance_id: i-1\nstart_timeout: 10x",
                format!("{p} start_timeout: time: unknown unit \"x\" in duration \"10x\""),
            ),
            (
                "instance_id: i-1\nstop_timeout: soon",
                format!("{p} stop_timeout: time: invalid duration \"soon\""),
            ),
            (
                "instance_id: i-1\nstart_timeout: true",
                format!("{p} start_timeout has unsupported type bool"),
            ),
            (
                "instance_id: i-1\nstop_timeout: [1]",
                format!("{p} stop_timeout has unsupported type []interface {{}}"),
            ),
            (
                "instance_id: i-1\nstart_timeout: 0",
                format!("{p} start_timeout must be greater than zero"),
            ),
            (
                "instance_id: i-1\nstart_timeout: 0s",
                format!("{p} start_timeout must be greater than zero"),
            ),
            (
                "instance_id: i-1\nstop_timeout: -5m",
                format!("{p} stop_timeout must be greater than zero"),
            ),
            (
                "instance_id: i-1\nstop_timeout: -0.5",
                format!("{p} stop_timeout must be greater than zero"),
            ),
            (
                "instance_id: i-1\nstop_timeout: 1e300",
                format!("{p} stop_timeout is out of range"),
            ),
            (
                "instance_id: i-1\non_shutdown: halt",
                format!("{p} on_shutdown must be stop or leave"),
            ),
            (
                "instance_id: i-1\non_shutdown: true",
                format!("{p} on_shutdown must be a string"),
            ),
        ];
        for (yaml, want) in cases {
            assert_eq!(&err(yaml), want, "options: {yaml}");
        }
    }

    #[test]
    fn registry_exposes_aws_ec2_and_the_schema_compiles() {
        let def = plugin();
        assert_eq!(def.targets.len(), 1);
        assert_eq!(def.targets[0].0, "ec2");
        let r = super::super::Registry::build(&[("aws".into(), "aws".into())], vec![def]).unwrap();
        assert!(r.targets.contains_key("aws:ec2"));
        crate::config::compile_schema(SCHEMA).unwrap();
    }
}
