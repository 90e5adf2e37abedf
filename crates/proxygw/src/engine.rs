//! The engine: one task owns every target and frontend and takes all events from one channel (warm signals,
//! handler results, conntrack flow events, ctl requests, shutdown), so state changes have a total order.
//!
//! Order that keeps clients safe: warm the handler (which waits for readiness) → DNAT on; on idle: DNAT off →
//! flush the mapping's conntrack entries → drain the handler. A dataplane failure rolls the state back.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use netpolicy::Backoff;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{Config, FrontendConfig, TargetConfig};
use crate::dataplane::{Dataplane, Flow, FlowEvent, Mapping};
pub use crate::handle::{
    channel, EngineHandle, EngineInbox, ExitNotifier, FrontendState, Reloader, Reply, Request,
    TargetState, Waker, WarmOrigin, EVENT_QUEUE,
};
use crate::handle::{Event, Op};
use crate::log::Logger;
use crate::plugins::{FrontendCtx, FrontendHandler, Registry, TargetCtx, TargetHandler};
use crate::protocol::{EndpointInfo, FrontendStatus, StatusResponse, TargetStatus, WireProtocol};

/// How long shutdown waits for one handler's close before moving on.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);
/// First wait after a failed start; doubled after each further failure, up to [`BACKOFF_MAX`].
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest wait between failed starts; a target that stays active this long starts from [`BACKOFF_BASE`] again.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Retry interval after a failed DNAT disable.
pub const DISABLE_RETRY: Duration = Duration::from_secs(5);

type TargetKinds = BTreeMap<String, (crate::plugins::TargetCtor, usize)>;
type FrontendKinds = BTreeMap<String, (crate::plugins::FrontendCtor, usize)>;

struct Target {
    cfg: TargetConfig,
    kind: String,
    handler: Arc<dyn TargetHandler>,
    state: TargetState,
    state_tx: watch::Sender<TargetState>,
    last_error: String,
    epoch: u64,
    op: Option<JoinHandle<()>>,
    mappings: Vec<Mapping>,
    flows: HashSet<Flow>,
    /// Since when the target has had no flow (and no warm signal); the idle clock.
    idle_since: Instant,
    warm_pending: bool,
    /// The error to keep when a rollback drain finishes.
    rollback_error: Option<String>,
    retry_disable_at: Option<Instant>,
    counters: crate::protocol::WakeCounters,
    /// Failed starts in a row; the backoff doubles with each.
    failures_in_row: u32,
    /// No frontend wake starts the target before this (ctl `warm` does).
    backoff_until: Option<Instant>,
    /// A frontend wake arrived during the backoff: start when it ends.
    wake_after_backoff: bool,
    /// When the target last became active (a long run resets the backoff).
    active_since: Option<Instant>,
    /// Start times within the `wake_rate` window, oldest first.
    recent_starts: std::collections::VecDeque<Instant>,
}

struct Frontend {
    cfg: FrontendConfig,
    kind: String,
    handler: Arc<dyn FrontendHandler>,
    state: FrontendState,
    last_error: String,
    epoch: u64,
    op: Option<JoinHandle<()>>,
    backend: SocketAddr,
    /// A dual-home frontend's backend of the other address family.
    dual_backend: Option<SocketAddr>,
    /// Its DNAT mappings: one, or one per address family for a dual-home frontend.
    mappings: Vec<Mapping>,
}

/// The engine before it runs: targets and frontends are built (targets first), nothing started.
pub struct Engine<D: Dataplane> {
    dp: D,
    log: Logger,
    tx: mpsc::Sender<Event>,
    rx: mpsc::Receiver<Event>,
    targets: BTreeMap<String, Target>,
    frontends: BTreeMap<String, Frontend>,
    closed: bool,
    target_kinds: TargetKinds,
    frontend_kinds: FrontendKinds,
    reloader: Option<Reloader>,
    /// `plugins:` as read at start: a reload re-reads targets and frontends, not plugin settings.
    plugin_blocks: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
}

impl<D: Dataplane> Engine<D> {
    /// Builds every target, then every frontend, from the config; registers the DNAT groups. Any failure is
    /// an error naming the target or frontend (the original skipped failing frontends silently-ish).
    pub async fn build(
        cfg: &Config,
        reg: &Registry,
        mut dp: D,
        inbox: EngineInbox,
        log: Logger,
    ) -> Result<Self, String> {
        let EngineInbox { tx, rx } = inbox;
        let mut targets = BTreeMap::new();
        for t in &cfg.targets {
            targets.insert(
                t.name.clone(),
                new_target(t, &reg.targets, &cfg.plugins, &log, &tx, 0)?,
            );
        }
        let mut frontends = BTreeMap::new();
        for f in &cfg.frontends {
            let target = targets
                .get_mut(&f.target_name)
                .ok_or_else(|| format!("create frontend {:?}: target not registered", f.name))?;
            let front = new_frontend(f, target, &reg.frontends, &log, &tx)?;
            target.mappings.extend(front.mappings.iter().cloned());
            frontends.insert(f.name.clone(), front);
        }
        for (name, t) in &targets {
            dp.add_group(name, &t.mappings)
                .await
                .map_err(|e| format!("create target {name:?}: flow group: {e}"))?;
        }
        Ok(Self {
            dp,
            log,
            tx,
            rx,
            targets,
            frontends,
            closed: false,
            target_kinds: reg.targets.clone(),
            frontend_kinds: reg.frontends.clone(),
            reloader: None,
            plugin_blocks: cfg.plugins.clone(),
        })
    }

    /// Lets [`Request::Reload`] (SIGHUP, `proxygwctl reload`) read the config again.
    pub fn set_reloader(&mut self, reloader: Reloader) {
        self.reloader = Some(reloader);
    }

    /// Runs until shutdown: rebuilds state from existing flows, starts every frontend, then serves events.
    pub async fn run(mut self) {
        self.rebuild().await;
        let names: Vec<String> = self.frontends.keys().cloned().collect();
        for n in names {
            self.start_frontend(&n);
        }
        loop {
            let deadline = self.next_deadline();
            let ev = tokio::select! {
                ev = self.rx.recv() => ev,
                _ = sleep_until_opt(deadline) => { self.on_tick().await; continue; }
            };
            match ev {
                None => break,
                Some(Event::Shutdown(done)) => {
                    self.shutdown().await;
                    let _ = done.send(());
                    break;
                }
                Some(ev) => self.handle(ev).await,
            }
        }
        // Answer anything still queued so no ctl client hangs.
        self.rx.close();
        while let Some(ev) = self.rx.recv().await {
            match ev {
                Event::Ctl(Request::Status, reply) => {
                    let _ = reply.send(Ok(Reply::Status(self.status())));
                }
                Event::Ctl(_, reply) => {
                    let _ = reply.send(Err("closed".into()));
                }
                Event::Shutdown(done) => {
                    let _ = done.send(());
                }
                _ => {}
            }
        }
    }

    /// After a restart, flows DNATed by a previous run are still in conntrack: their targets are warmed again so
    /// DNAT comes back for new flows and the idle clock follows the live ones.
    async fn rebuild(&mut self) {
        let flows = match self.dp.dump_flows().await {
            Ok(f) => f,
            Err(e) => {
                self.log.warn("conntrack dump failed", &[("err", &e)]);
                return;
            }
        };
        self.apply_resync(flows);
        let live: Vec<String> = self
            .targets
            .iter()
            .filter(|(_, t)| !t.flows.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        for name in live {
            self.log.info(
                "target has live flows from a previous run; warming",
                &[("target", &name)],
            );
            self.warm(&name, WarmOrigin::Restart);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.targets
            .values()
            .filter_map(|t| match t.state {
                TargetState::Active if t.flows.is_empty() => Some(
                    t.retry_disable_at
                        .unwrap_or(t.idle_since + t.cfg.idle_timeout),
                ),
                TargetState::Inactive if t.wake_after_backoff => t.backoff_until,
                _ => None,
            })
            .min()
    }

    async fn on_tick(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .targets
            .iter()
            .filter(|(_, t)| {
                t.state == TargetState::Active
                    && t.flows.is_empty()
                    && t.retry_disable_at
                        .unwrap_or(t.idle_since + t.cfg.idle_timeout)
                        <= now
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            self.log.info("target idle; draining", &[("target", &name)]);
            let _ = self.drain(&name).await;
        }
        let backed_off: Vec<String> = self
            .targets
            .iter()
            .filter(|(_, t)| {
                t.state == TargetState::Inactive
                    && t.wake_after_backoff
                    && t.backoff_until.is_none_or(|u| u <= now)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in backed_off {
            self.warm(&name, WarmOrigin::Backoff);
        }
    }

    async fn handle(&mut self, ev: Event) {
        match ev {
            Event::Wake { target, origin } => {
                if self.targets.contains_key(&target) {
                    self.warm(&target, origin);
                }
            }
            Event::Exited { target, reason } => self.on_exited(&target, reason).await,
            Event::Refused { target } => {
                if let Some(t) = self.targets.get_mut(&target) {
                    t.counters.refused_allow += 1;
                }
            }
            Event::Done {
                name,
                epoch,
                op,
                result,
            } => match op {
                Op::Warm => self.on_warm_done(&name, epoch, result).await,
                Op::Drain => self.on_drain_done(&name, epoch, result).await,
                Op::Start | Op::Stop => self.on_frontend_done(&name, epoch, op, result),
            },
            Event::Flow(fe) => self.on_flow(fe),
            Event::Heal if !self.closed => match self.dp.heal().await {
                Ok(None) => {}
                Ok(Some(missing)) => self.log.warn(
                    "dataplane state was removed or changed outside proxygw; re-applied",
                    &[("missing", &missing)],
                ),
                Err(e) => self.log.warn("dataplane heal failed", &[("err", &e)]),
            },
            Event::Heal => {}
            Event::Ctl(req, reply) => {
                let r = self.on_ctl(req).await;
                let _ = reply.send(r);
            }
            Event::Shutdown(_) => {}
        }
    }

    async fn on_ctl(&mut self, req: Request) -> Result<Reply, String> {
        if self.closed {
            return match req {
                Request::Status => Ok(Reply::Status(self.status())),
                _ => Err("closed".into()),
            };
        }
        match req {
            Request::Status => Ok(Reply::Status(self.status())),
            Request::Reload => {
                let Some(load) = self.reloader.clone() else {
                    return Err("reload: this engine has no config file to read".into());
                };
                let result = match load() {
                    Ok(cfg) => self.reload(&cfg).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = &result {
                    self.log
                        .error("reload failed; the running config stays", &[("err", e)]);
                }
                result
            }
            Request::Warm(name) => {
                if !self.targets.contains_key(&name) {
                    return Err(format!("target {name:?}: target not registered"));
                }
                self.warm(&name, WarmOrigin::Ctl);
                Ok(Reply::Done)
            }
            Request::Drain(name) => {
                let Some(t) = self.targets.get(&name) else {
                    return Err(format!("target {name:?}: target not registered"));
                };
                match t.state {
                    TargetState::Inactive | TargetState::Draining => Ok(Reply::Done),
                    TargetState::Warming => Err(format!(
                        "target {name:?} is warming; drain it once it is active"
                    )),
                    TargetState::Closed => Err("closed".into()),
                    TargetState::Active => {
                        self.log
                            .info("drain requested", &[("target", &name), ("origin", &"ctl")]);
                        self.drain(&name).await.map(|_| Reply::Done)
                    }
                }
            }
            Request::Start(name) => {
                let Some(f) = self.frontends.get(&name) else {
                    return Err(format!("frontend {name:?}: frontend not registered"));
                };
                match f.state {
                    FrontendState::Running | FrontendState::Starting => Ok(Reply::Done),
                    FrontendState::Stopping => {
                        Err(format!("frontend {name:?} is stopping; try again"))
                    }
                    FrontendState::Closed => Err("closed".into()),
                    FrontendState::Stopped => {
                        self.start_frontend(&name);
                        Ok(Reply::Done)
                    }
                }
            }
            Request::Stop(name) => {
                let Some(f) = self.frontends.get_mut(&name) else {
                    return Err(format!("frontend {name:?}: frontend not registered"));
                };
                match f.state {
                    FrontendState::Stopped | FrontendState::Stopping => Ok(Reply::Done),
                    FrontendState::Starting => {
                        Err(format!("frontend {name:?} is starting; try again"))
                    }
                    FrontendState::Closed => Err("closed".into()),
                    FrontendState::Running => {
                        f.state = FrontendState::Stopping;
                        f.last_error.clear();
                        f.epoch += 1;
                        let (h, epoch, tx) = (f.handler.clone(), f.epoch, self.tx.clone());
                        let n = name.clone();
                        f.op = Some(tokio::spawn(async move {
                            let result = h.stop().await;
                            let _ = tx
                                .send(Event::Done {
                                    name: n,
                                    epoch,
                                    op: Op::Stop,
                                    result,
                                })
                                .await;
                        }));
                        Ok(Reply::Done)
                    }
                }
            }
        }
    }

    fn start_frontend(&mut self, name: &str) {
        let Some(f) = self.frontends.get_mut(name) else {
            return;
        };
        f.state = FrontendState::Starting;
        f.last_error.clear();
        f.epoch += 1;
        let (h, epoch, tx) = (f.handler.clone(), f.epoch, self.tx.clone());
        let n = name.to_string();
        f.op = Some(tokio::spawn(async move {
            let result = h.start().await;
            let _ = tx
                .send(Event::Done {
                    name: n,
                    epoch,
                    op: Op::Start,
                    result,
                })
                .await;
        }));
    }

    fn on_frontend_done(&mut self, name: &str, epoch: u64, op: Op, result: Result<(), String>) {
        let Some(f) = self.frontends.get_mut(name) else {
            return;
        };
        if f.epoch != epoch || f.state == FrontendState::Closed {
            return;
        }
        f.op = None;
        // A failed start goes back to stopped and a failed stop back to running, so both can be retried
        // (the original got stuck in stopping/starting).
        match (op, result) {
            (Op::Start, Ok(())) => f.state = FrontendState::Running,
            (Op::Start, Err(e)) => {
                f.state = FrontendState::Stopped;
                self.log
                    .error("frontend start failed", &[("frontend", &name), ("err", &e)]);
                f.last_error = e;
            }
            (_, Ok(())) => f.state = FrontendState::Stopped,
            (_, Err(e)) => {
                f.state = FrontendState::Running;
                self.log
                    .error("frontend stop failed", &[("frontend", &name), ("err", &e)]);
                f.last_error = e;
            }
        }
    }

    /// Counts a failed start (or an active backend that exited by itself) and backs the target off: frontend
    /// wakes start it no sooner than 1 s, 2 s, 4 s … (up to [`BACKOFF_MAX`]) after the failure.
    fn failed_start(&mut self, name: &str) {
        let Some(t) = self.targets.get_mut(name) else {
            return;
        };
        let now = Instant::now();
        if t.active_since
            .take()
            .is_some_and(|a| now - a >= BACKOFF_MAX)
        {
            t.failures_in_row = 0;
        }
        t.counters.failed_starts += 1;
        // Not jittered: one engine restarts its own targets, so there is no herd to spread, and
        // the documented schedule is exact.
        let wait = Backoff::new(BACKOFF_BASE, BACKOFF_MAX).delay(t.failures_in_row);
        t.failures_in_row = t.failures_in_row.saturating_add(1);
        t.backoff_until = Some(now + wait);
        self.log.warn(
            "target start failed; backing off",
            &[
                ("target", &name),
                ("failures_in_row", &t.failures_in_row),
                ("backoff", &gosyntax::format_go_duration(wait)),
            ],
        );
    }

    fn set_state(&mut self, name: &str, state: TargetState) {
        if let Some(t) = self.targets.get_mut(name) {
            if t.state != state {
                self.log.info(
                    "target state",
                    &[
                        ("target", &name),
                        ("from", &t.state.as_str()),
                        ("to", &state.as_str()),
                    ],
                );
            }
            t.state = state;
            t.state_tx.send_replace(state);
        }
    }

    fn warm(&mut self, name: &str, origin: WarmOrigin) {
        let Some(t) = self.targets.get_mut(name) else {
            return;
        };
        let over_rate = t.state == TargetState::Inactive && rate_exceeded(t, &origin);
        match t.state {
            TargetState::Active => {
                // A warm signal also resets the idle clock.
                t.idle_since = Instant::now();
                self.log.debug(
                    "warm signal received",
                    &[("target", &name), ("origin", &origin)],
                );
            }
            TargetState::Warming => {
                self.log.debug(
                    "warm signal received",
                    &[("target", &name), ("origin", &origin)],
                );
            }
            TargetState::Draining => {
                // The original dropped it; a client waking a draining target gets it warmed right after.
                t.warm_pending = true;
                self.log.info(
                    "warm signal received while draining; will warm after",
                    &[("target", &name), ("origin", &origin)],
                );
            }
            TargetState::Closed => {}
            TargetState::Inactive
                if !matches!(origin, WarmOrigin::Ctl)
                    && t.backoff_until.is_some_and(|u| u > Instant::now()) =>
            {
                t.counters.deferred_backoff += 1;
                if !t.wake_after_backoff {
                    t.wake_after_backoff = true;
                    self.log.info(
                        "warm signal received during backoff; will start when it ends",
                        &[("target", &name), ("origin", &origin)],
                    );
                }
            }
            TargetState::Inactive if over_rate => {
                t.counters.refused_rate += 1;
                t.wake_after_backoff = false;
                self.log.info(
                    "wake refused: wake_rate",
                    &[("target", &name), ("origin", &origin)],
                );
            }
            TargetState::Inactive => {
                self.log.info(
                    "warm signal received",
                    &[("target", &name), ("origin", &origin)],
                );
                t.counters.started += 1;
                t.recent_starts.push_back(Instant::now());
                t.wake_after_backoff = false;
                t.last_error.clear();
                t.rollback_error = None;
                t.warm_pending = false;
                t.epoch += 1;
                let (h, epoch, tx) = (t.handler.clone(), t.epoch, self.tx.clone());
                let n = name.to_string();
                t.op = Some(tokio::spawn(async move {
                    let result = h.warm().await;
                    let _ = tx
                        .send(Event::Done {
                            name: n,
                            epoch,
                            op: Op::Warm,
                            result,
                        })
                        .await;
                }));
                self.set_state(name, TargetState::Warming);
            }
        }
    }

    fn spawn_drain(&mut self, name: &str) {
        let Some(t) = self.targets.get_mut(name) else {
            return;
        };
        t.epoch += 1;
        let (h, epoch, tx) = (t.handler.clone(), t.epoch, self.tx.clone());
        let n = name.to_string();
        t.op = Some(tokio::spawn(async move {
            let result = h.drain().await;
            let _ = tx
                .send(Event::Done {
                    name: n,
                    epoch,
                    op: Op::Drain,
                    result,
                })
                .await;
        }));
        self.set_state(name, TargetState::Draining);
    }

    async fn on_warm_done(&mut self, name: &str, epoch: u64, result: Result<(), String>) {
        let Some(t) = self.targets.get_mut(name) else {
            return;
        };
        if t.epoch != epoch || t.state != TargetState::Warming {
            return;
        }
        t.op = None;
        if let Err(e) = result {
            self.log
                .error("target warm failed", &[("target", &name), ("err", &e)]);
            t.last_error = e;
            self.failed_start(name);
            self.set_state(name, TargetState::Inactive);
            return;
        }
        match self.dp.set_enabled(name, true).await {
            Ok(()) => {
                // Host-bound UDP "flows" to the listen address would keep bypassing DNAT until they time out.
                if let Err(e) = self.dp.flush_flows(name, true).await {
                    self.log
                        .warn("conntrack flush failed", &[("target", &name), ("err", &e)]);
                }
                if let Some(t) = self.targets.get_mut(name) {
                    t.idle_since = Instant::now();
                    t.retry_disable_at = None;
                    t.active_since = Some(Instant::now());
                }
                self.set_state(name, TargetState::Active);
            }
            Err(e) => {
                // Roll back: the backend is up but unreachable, so stop it again and report why.
                let msg = format!("failed to enable DNAT: {e}");
                self.log
                    .error("target warm failed", &[("target", &name), ("err", &msg)]);
                if let Some(t) = self.targets.get_mut(name) {
                    t.last_error = msg.clone();
                    t.rollback_error = Some(msg);
                }
                self.failed_start(name);
                self.spawn_drain(name);
            }
        }
    }

    /// DNAT off → flush → handler drain. On a DNAT failure the target stays active with the error (retried).
    async fn drain(&mut self, name: &str) -> Result<(), String> {
        if let Err(e) = self.dp.set_enabled(name, false).await {
            let msg = format!("failed to disable DNAT: {e}");
            self.log
                .error("target drain failed", &[("target", &name), ("err", &msg)]);
            if let Some(t) = self.targets.get_mut(name) {
                t.last_error = msg.clone();
                t.retry_disable_at = Some(Instant::now() + DISABLE_RETRY);
            }
            return Err(msg);
        }
        if let Err(e) = self.dp.flush_flows(name, false).await {
            self.log
                .warn("conntrack flush failed", &[("target", &name), ("err", &e)]);
        }
        if let Some(t) = self.targets.get_mut(name) {
            t.last_error.clear();
            t.retry_disable_at = None;
        }
        self.spawn_drain(name);
        Ok(())
    }

    async fn on_drain_done(&mut self, name: &str, epoch: u64, result: Result<(), String>) {
        let Some(t) = self.targets.get_mut(name) else {
            return;
        };
        if t.epoch != epoch || t.state != TargetState::Draining {
            return;
        }
        t.op = None;
        let rollback = t.rollback_error.take();
        match result {
            Ok(()) => {
                if let Some(e) = rollback {
                    t.last_error = e;
                }
                let pending = std::mem::take(&mut t.warm_pending);
                self.set_state(name, TargetState::Inactive);
                if pending {
                    self.warm(name, WarmOrigin::Ctl);
                }
            }
            Err(e) => {
                self.log
                    .error("target drain failed", &[("target", &name), ("err", &e)]);
                // The backend may still serve: put DNAT back so clients are not black-holed, and retry later.
                let mut msg = e;
                if let Some(r) = rollback {
                    msg = format!("{r}; drain: {msg}");
                    t.last_error = msg;
                    self.set_state(name, TargetState::Inactive);
                    return;
                }
                match self.dp.set_enabled(name, true).await {
                    Ok(()) => {
                        if let Some(t) = self.targets.get_mut(name) {
                            t.last_error = msg;
                            t.idle_since = Instant::now();
                        }
                        self.set_state(name, TargetState::Active);
                    }
                    Err(de) => {
                        if let Some(t) = self.targets.get_mut(name) {
                            t.last_error = format!("{msg}; failed to enable DNAT: {de}");
                        }
                        self.set_state(name, TargetState::Inactive);
                    }
                }
            }
        }
    }

    async fn on_exited(&mut self, name: &str, reason: String) {
        let Some(t) = self.targets.get(name) else {
            return;
        };
        self.log.warn(
            "target backend exited",
            &[("target", &name), ("reason", &reason)],
        );
        if t.state != TargetState::Active {
            return;
        }
        self.failed_start(name);
        let msg = format!("backend exited: {reason}");
        if let Err(e) = self.dp.set_enabled(name, false).await {
            if let Some(t) = self.targets.get_mut(name) {
                t.last_error = format!("{msg}; failed to disable DNAT: {e}");
                t.retry_disable_at = Some(Instant::now() + DISABLE_RETRY);
            }
            return;
        }
        let _ = self.dp.flush_flows(name, false).await;
        if let Some(t) = self.targets.get_mut(name) {
            t.last_error = msg;
        }
        // Let the handler forget the dead process so the next warm starts a fresh one.
        self.spawn_drain(name);
        if let Some(t) = self.targets.get_mut(name) {
            t.rollback_error = Some(t.last_error.clone());
        }
    }

    fn owner(&self, flow: &Flow) -> Option<String> {
        self.targets
            .iter()
            .find(|(_, t)| t.mappings.iter().any(|m| m.owns(flow)))
            .map(|(n, _)| n.clone())
    }

    fn on_flow(&mut self, ev: FlowEvent) {
        match ev {
            FlowEvent::New(f) => {
                if let Some(n) = self.owner(&f) {
                    if let Some(t) = self.targets.get_mut(&n) {
                        t.flows.insert(f);
                    }
                }
            }
            FlowEvent::Destroy(f) => {
                if let Some(n) = self.owner(&f) {
                    if let Some(t) = self.targets.get_mut(&n) {
                        if t.flows.remove(&f) && t.flows.is_empty() {
                            // The idle clock starts when the last flow ends.
                            t.idle_since = Instant::now();
                            self.log.debug("last flow ended", &[("target", &n)]);
                        }
                    }
                }
            }
            FlowEvent::Resync(flows) => self.apply_resync(flows),
        }
    }

    fn apply_resync(&mut self, flows: Vec<Flow>) {
        let mut fresh: BTreeMap<String, HashSet<Flow>> = BTreeMap::new();
        for f in flows {
            if let Some(n) = self.owner(&f) {
                fresh.entry(n).or_default().insert(f);
            }
        }
        let now = Instant::now();
        for (n, t) in self.targets.iter_mut() {
            let set = fresh.remove(n).unwrap_or_default();
            if !t.flows.is_empty() && set.is_empty() {
                t.idle_since = now;
            }
            t.flows = set;
        }
    }

    /// The status body (arrays sorted by name).
    fn status(&self) -> StatusResponse {
        StatusResponse {
            closed: self.closed,
            targets: self
                .targets
                .iter()
                .map(|(n, t)| {
                    let mut endpoints: Vec<EndpointInfo> = t
                        .cfg
                        .endpoints
                        .iter()
                        .map(|e| EndpointInfo {
                            name: e.name.clone(),
                            protocol: WireProtocol(e.protocol),
                            address: e.address.to_string(),
                        })
                        .collect();
                    endpoints.sort_by(|a, b| a.name.cmp(&b.name));
                    TargetStatus {
                        name: n.clone(),
                        kind: t.kind.clone(),
                        state: t.state.as_str().into(),
                        last_error: t.last_error.clone(),
                        endpoints,
                        wakes: Some(crate::protocol::WakeCounters {
                            backoff: t
                                .backoff_until
                                .and_then(|u| u.checked_duration_since(Instant::now()))
                                .filter(|d| !d.is_zero())
                                .map(gosyntax::format_go_duration)
                                .unwrap_or_default(),
                            ..t.counters.clone()
                        }),
                    }
                })
                .collect(),
            frontends: self
                .frontends
                .iter()
                .map(|(n, f)| FrontendStatus {
                    name: n.clone(),
                    kind: f.kind.clone(),
                    state: f.state.as_str().into(),
                    last_error: f.last_error.clone(),
                    protocol: WireProtocol(f.cfg.protocol),
                    listen: f.cfg.listen.to_string(),
                    target_name: f.cfg.target_name.clone(),
                    endpoint_name: f.cfg.endpoint_name.clone(),
                    proxyaddress: f.backend.to_string(),
                    dual_endpoint_name: f.cfg.dual_endpoint.clone().unwrap_or_default(),
                    dual_proxyaddress: f.dual_backend.map(|b| b.to_string()).unwrap_or_default(),
                })
                .collect(),
        }
    }

    /// Frontends first (no new warm signals), then targets (DNAT off, flush, close), then the dataplane.
    async fn shutdown(&mut self) {
        self.closed = true;
        let names: Vec<String> = self.frontends.keys().cloned().collect();
        for n in &names {
            self.close_frontend(n).await;
        }
        let names: Vec<String> = self.targets.keys().cloned().collect();
        for n in &names {
            self.close_target(n).await;
        }
        if let Err(e) = self.dp.close().await {
            self.log.error("dataplane close failed", &[("err", &e)]);
        }
    }

    /// Stops a frontend for good (shutdown, or removed by a reload); it stays listed as `closed`.
    async fn close_frontend(&mut self, n: &str) {
        let Some(f) = self.frontends.get_mut(n) else {
            return;
        };
        if let Some(op) = f.op.take() {
            op.abort();
        }
        f.state = FrontendState::Closed;
        let h = f.handler.clone();
        match tokio::time::timeout(CLOSE_TIMEOUT, h.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.log
                    .warn("frontend close failed", &[("frontend", &n), ("err", &e)]);
                if let Some(f) = self.frontends.get_mut(n) {
                    f.last_error = e;
                }
            }
            Err(_) => self
                .log
                .warn("frontend close timed out", &[("frontend", &n)]),
        }
    }

    /// DNAT off, flows flushed, handler closed (shutdown, or removed by a reload); it stays listed as `closed`.
    async fn close_target(&mut self, n: &str) {
        if let Err(e) = self.dp.set_enabled(n, false).await {
            self.log
                .warn("disable DNAT failed", &[("target", &n), ("err", &e)]);
        }
        let _ = self.dp.flush_flows(n, false).await;
        let Some(t) = self.targets.get_mut(n) else {
            return;
        };
        if let Some(op) = t.op.take() {
            op.abort();
        }
        let h = t.handler.clone();
        self.set_state(n, TargetState::Closed);
        match tokio::time::timeout(CLOSE_TIMEOUT, h.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.log
                    .warn("target close failed", &[("target", &n), ("err", &e)]);
                if let Some(t) = self.targets.get_mut(n) {
                    t.last_error = e;
                }
            }
            Err(_) => self.log.warn("target close timed out", &[("target", &n)]),
        }
    }

    /// Applies a new config: targets and frontends that are new or changed are built first (any failure
    /// changes nothing), then removed and changed ones are closed, and the new ones registered and started.
    /// Unchanged targets keep their state, backend and flows; their DNAT group only gains or loses the
    /// mappings of added or removed frontends.
    async fn reload(&mut self, cfg: &Config) -> Result<Reply, String> {
        let keep_target = |t: &TargetConfig| {
            self.targets
                .get(&t.name)
                .is_some_and(|old| old.cfg == *t && old.state != TargetState::Closed)
        };
        // Build everything new before touching anything.
        let mut new_targets = BTreeMap::new();
        for t in cfg.targets.iter().filter(|t| !keep_target(t)) {
            let epoch = self.targets.get(&t.name).map_or(0, |o| o.epoch + 1);
            new_targets.insert(
                t.name.clone(),
                new_target(
                    t,
                    &self.target_kinds,
                    &self.plugin_blocks,
                    &self.log,
                    &self.tx,
                    epoch,
                )?,
            );
        }
        let mut new_fronts = Vec::new();
        for f in &cfg.frontends {
            let unchanged = !new_targets.contains_key(&f.target_name)
                && self
                    .frontends
                    .get(&f.name)
                    .is_some_and(|old| old.cfg == *f && old.state != FrontendState::Closed);
            if unchanged {
                continue;
            }
            let target = new_targets
                .get(&f.target_name)
                .or_else(|| self.targets.get(&f.target_name))
                .ok_or_else(|| format!("create frontend {:?}: target not registered", f.name))?;
            new_fronts.push(new_frontend(
                f,
                target,
                &self.frontend_kinds,
                &self.log,
                &self.tx,
            )?);
        }
        // Close what goes: frontends first (removed, changed, or of a replaced target), then targets.
        let gone_fronts: Vec<String> = self
            .frontends
            .iter()
            .filter(|(n, f)| {
                new_targets.contains_key(&f.cfg.target_name)
                    || !cfg.frontends.iter().any(|c| &c.name == *n && *c == f.cfg)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for n in &gone_fronts {
            if self
                .frontends
                .get(n)
                .is_some_and(|f| f.state != FrontendState::Closed)
            {
                self.close_frontend(n).await;
            }
            self.frontends.remove(n);
        }
        let gone_targets: Vec<String> = self
            .targets
            .keys()
            .filter(|n| new_targets.contains_key(*n) || !cfg.targets.iter().any(|c| &c.name == *n))
            .cloned()
            .collect();
        for n in &gone_targets {
            if self
                .targets
                .get(n)
                .is_some_and(|t| t.state != TargetState::Closed)
            {
                self.close_target(n).await;
            }
            self.targets.remove(n);
            if let Err(e) = self.dp.remove_group(n).await {
                self.log
                    .warn("remove flow group failed", &[("target", n), ("err", &e)]);
            }
        }
        // Register the new, re-map the kept.
        let added_targets: Vec<String> = new_targets.keys().cloned().collect();
        self.targets.extend(new_targets);
        for t in self.targets.values_mut() {
            t.mappings.clear();
        }
        let added_fronts: Vec<String> = new_fronts.iter().map(|f| f.cfg.name.clone()).collect();
        for front in new_fronts {
            self.frontends.insert(front.cfg.name.clone(), front);
        }
        for f in &cfg.frontends {
            let (Some(front), Some(t)) = (
                self.frontends.get(&f.name),
                self.targets.get_mut(&f.target_name),
            ) else {
                continue;
            };
            t.mappings.extend(front.mappings.iter().cloned());
        }
        let groups: Vec<(String, Vec<Mapping>)> = self
            .targets
            .iter()
            .map(|(n, t)| (n.clone(), t.mappings.clone()))
            .collect();
        for (n, mappings) in groups {
            self.dp
                .set_group(&n, &mappings)
                .await
                .map_err(|e| format!("reload: target {n:?}: flow group: {e}"))?;
        }
        for n in &added_fronts {
            self.start_frontend(n);
        }
        let removed: Vec<&String> = gone_targets
            .iter()
            .chain(&gone_fronts)
            .filter(|n| !added_targets.contains(n) && !added_fronts.contains(n))
            .collect();
        self.log.info(
            "config reloaded",
            &[
                ("targets_added_or_changed", &added_targets.join(",")),
                ("frontends_added_or_changed", &added_fronts.join(",")),
                (
                    "removed",
                    &removed
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                ),
            ],
        );
        Ok(Reply::Done)
    }
}

/// True if a start caused by `origin` now would exceed the target's `wake_rate` (ctl and restarts are not
/// limited); forgets starts older than the window.
fn rate_exceeded(t: &mut Target, origin: &WarmOrigin) -> bool {
    let Some(rate) = t.cfg.wake_rate else {
        return false;
    };
    let now = Instant::now();
    while t
        .recent_starts
        .front()
        .is_some_and(|s| now - *s >= rate.per)
    {
        t.recent_starts.pop_front();
    }
    // Keep the queue bounded by what the rule can look at.
    while t.recent_starts.len() > rate.starts as usize {
        t.recent_starts.pop_front();
    }
    matches!(origin, WarmOrigin::Frontend { .. } | WarmOrigin::Backoff)
        && t.recent_starts.len() >= rate.starts as usize
}

/// A target from its config, handler built, nothing started; `epoch` continues a replaced target's so results
/// of the old one's operations are never taken for the new one's.
fn new_target(
    t: &TargetConfig,
    kinds: &TargetKinds,
    plugin_blocks: &BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
    log: &Logger,
    tx: &mpsc::Sender<Event>,
    epoch: u64,
) -> Result<Target, String> {
    let kind = t.kind.to_string();
    let (ctor, _) = crate::plugins::find_target_kind(kinds, &t.kind)
        .ok_or_else(|| format!("create target {:?}: target kind not registered", t.name))?;
    let ctx = TargetCtx {
        name: t.name.clone(),
        kind: t.kind.clone(),
        endpoints: t.endpoints.clone(),
        plugin: plugin_blocks
            .get(&t.kind.namespace)
            .cloned()
            .unwrap_or_default(),
        log: log.clone(),
        exited: ExitNotifier {
            tx: tx.clone(),
            target: t.name.clone(),
        },
    };
    let handler = ctor(&ctx, &t.options)
        .map_err(|e| format!("create target {:?}: handler for kind {kind:?}: {e}", t.name))?;
    let (state_tx, _) = watch::channel(TargetState::Inactive);
    Ok(Target {
        cfg: t.clone(),
        kind,
        handler,
        state: TargetState::Inactive,
        state_tx,
        last_error: String::new(),
        epoch,
        op: None,
        mappings: Vec::new(),
        flows: HashSet::new(),
        idle_since: Instant::now(),
        warm_pending: false,
        rollback_error: None,
        retry_disable_at: None,
        counters: Default::default(),
        failures_in_row: 0,
        backoff_until: None,
        wake_after_backoff: false,
        active_since: None,
        recent_starts: std::collections::VecDeque::new(),
    })
}

/// A frontend of `target` from its config, handler built, not started, with its DNAT mappings.
fn new_frontend(
    f: &FrontendConfig,
    target: &Target,
    kinds: &FrontendKinds,
    log: &Logger,
    tx: &mpsc::Sender<Event>,
) -> Result<Frontend, String> {
    let kind = f.kind.to_string();
    let endpoint = |name: &String| {
        target
            .cfg
            .endpoints
            .iter()
            .find(|e| &e.name == name)
            .map(|e| e.address)
            .ok_or_else(|| {
                format!(
                    "create frontend {:?}: endpoint {name:?} does not exist in target {:?}",
                    f.name, f.target_name
                )
            })
    };
    let backend = endpoint(&f.endpoint_name)?;
    let dual_backend = f.dual_endpoint.as_ref().map(endpoint).transpose()?;
    let (ctor, _) = kinds
        .get(&kind)
        .ok_or_else(|| format!("create frontend {:?}: frontend kind not registered", f.name))?;
    let ctx = FrontendCtx {
        name: f.name.clone(),
        target: f.target_name.clone(),
        protocol: f.protocol,
        listen: f.listen,
        backend,
        dual_backend,
        log: log.clone(),
        waker: Waker {
            tx: tx.clone(),
            target: f.target_name.clone(),
            frontend: f.name.clone(),
        },
        target_state: target.state_tx.subscribe(),
    };
    let handler = ctor(&ctx, &f.options).map_err(|e| {
        format!(
            "create frontend {:?}: handler for kind {kind:?}: {e}",
            f.name
        )
    })?;
    // A dual-home `[::]:p` frontend is one wildcard mapping per family, each to the endpoint of that family.
    let mappings = std::iter::once(backend)
        .chain(dual_backend)
        .map(|b| Mapping {
            protocol: f.protocol,
            listen: match (dual_backend.is_some(), b) {
                (true, SocketAddr::V4(_)) => SocketAddr::from(([0, 0, 0, 0], f.listen.port())),
                _ => f.listen,
            },
            backend: b,
            flow_timeout: f.flow_timeout,
            masquerade: f.masquerade,
        })
        .collect();
    Ok(Frontend {
        cfg: f.clone(),
        kind,
        handler,
        state: FrontendState::Stopped,
        last_error: String::new(),
        epoch: 0,
        op: None,
        backend,
        dual_backend,
        mappings,
    })
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
