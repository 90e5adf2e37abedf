//! Several servers sharing one route registry on Redis (`cluster:` in the server config): any
//! node serves any registered host.
//!
//! - Each node records the routes of its own agents in the registry ([`registry`]), valid while
//!   its lease (one per node, renewed every heartbeat) lives; the takeover rules of the
//!   `agents:` section are applied cluster-wide by the claim script, atomically.
//! - Each node keeps the other nodes' routes in a local view, so a caller's request costs no
//!   registry round trip: pub/sub names each route that changed (re-read at once), and every
//!   heartbeat compares the registry's revision counter with the view's, reloading everything
//!   when they differ (a lost message heals within one heartbeat).
//! - A request for a route owned elsewhere goes over a peer link ([`peer`]): the tunnel's own
//!   multiplexed stream protocol, one WebSocket per pair of nodes, so streaming bodies and
//!   upgrades work exactly as they do through an agent's tunnel.
//! - With Redis unreachable a node keeps serving its own agents and its view of the others
//!   (logged once), and claims, renews and reloads everything when Redis is back.

pub mod peer;
pub mod registry;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::config::{AgentPolicy, ClusterSettings};
use crate::protocol::Rejected;
use crate::router::{Registration, Router, Session};
use crate::stats::RouteStats;
use registry::{Claim, Registry};

/// What `proxyview server --check` reports for `cluster:`: this node, the live nodes and the
/// number of registered routes, read from the registry (an error when it cannot be reached).
pub async fn check(cfg: &ClusterSettings) -> Result<String, registry::RegistryError> {
    let client = redis::Client::open(cfg.registry.as_str())?;
    let reg = Registry::new(client, &cfg.key_prefix)?;
    let (rev, entries) = reg.read(None).await?;
    let nodes = reg.nodes().await?;
    let routes: HashSet<&str> = entries.iter().map(|(r, _, _)| r.as_str()).collect();
    let mut out = format!(
        "cluster node {:?} advertise {}; registry reachable (revision {rev}, {} routes)\n",
        cfg.node_id,
        cfg.advertise,
        routes.len()
    );
    if nodes.is_empty() {
        out.push_str("no live nodes registered\n");
    }
    for (n, a) in nodes {
        let me = if n == cfg.node_id { " (this node)" } else { "" };
        out.push_str(&format!("live node {n:?} at {a}{me}\n"));
    }
    Ok(out)
}

/// A lease lives this many cluster heartbeats without renewal.
pub const LEASE_HEARTBEATS: u32 = 3;

/// A route served by other nodes, as this node's view has it.
#[derive(Debug)]
struct Remote {
    /// (node, clientId) of each live entry.
    owners: Vec<(String, String)>,
    next: AtomicUsize,
    stats: Arc<RouteStats>,
}

#[derive(Debug, Default)]
struct View {
    routes: HashMap<String, Remote>,
    rev: String,
}

/// This node's membership of the cluster.
pub struct Cluster {
    cfg: ClusterSettings,
    policies: Vec<AgentPolicy>,
    registry: Registry,
    client: redis::Client,
    view: RwLock<View>,
    links: peer::Links,
    /// Routes this node holds in the registry, with the clientId (as last synced).
    mine: Mutex<HashMap<String, String>>,
    /// Claim every local route at the next sync (the lease lapsed, or Redis failed and may
    /// have restarted empty).
    full: AtomicBool,
    /// Local routes changed: sync now rather than at the next heartbeat.
    changed: Notify,
    healthy: AtomicBool,
    last_error: Mutex<Option<String>>,
    last_sync: Mutex<Option<Instant>>,
    syncs: AtomicU64,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.cfg.node_id)
            .finish()
    }
}

/// The cluster part of the operator status.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// This node's id.
    pub node: String,
    /// Where the other nodes reach it.
    pub advertise: String,
    /// Whether the last registry call succeeded.
    pub registry_healthy: bool,
    /// The last registry error (while unhealthy).
    pub registry_error: Option<String>,
    /// Milliseconds since the last successful sync.
    pub last_sync_ms_ago: Option<u64>,
    /// Routes this node holds in the registry (covered by its lease).
    pub leases: usize,
    /// Routes served by other nodes, as this node sees them.
    pub remote_routes: usize,
    /// The other live nodes.
    pub peers: Vec<peer::PeerStatus>,
}

impl Cluster {
    /// Builds the node's cluster state (nothing is contacted yet).
    pub fn new(
        cfg: ClusterSettings,
        policies: Vec<AgentPolicy>,
    ) -> Result<Arc<Self>, registry::RegistryError> {
        let client = redis::Client::open(cfg.registry.as_str())?;
        let registry = Registry::new(client.clone(), &cfg.key_prefix)?;
        let links = peer::Links::new(cfg.clone());
        Ok(Arc::new(Self {
            cfg,
            policies,
            registry,
            client,
            view: RwLock::new(View::default()),
            links,
            mine: Mutex::new(HashMap::new()),
            full: AtomicBool::new(true),
            changed: Notify::new(),
            healthy: AtomicBool::new(true),
            last_error: Mutex::new(None),
            last_sync: Mutex::new(None),
            syncs: AtomicU64::new(0),
        }))
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.cfg.node_id
    }

    /// The shared secret peers present.
    pub fn settings(&self) -> &ClusterSettings {
        &self.cfg
    }

    fn ttl(&self) -> Duration {
        self.cfg.heartbeat * LEASE_HEARTBEATS
    }

    /// Starts the heartbeat (sync) and pub/sub tasks on the server's route table; they end when
    /// the server, its only owner, drops it.
    pub fn spawn(self: &Arc<Self>, router: Weak<Router>) {
        let c = self.clone();
        let s = router.clone();
        tokio::spawn(async move { c.heartbeat_loop(s).await });
        let c = self.clone();
        tokio::spawn(async move { c.subscribe_loop(router).await });
    }

    /// Local routes changed (a session ended): sync soon.
    pub fn changed(&self) {
        self.changed.notify_one();
    }

    /// The peer-link sessions serving `route` on other nodes, next first (round robin), and
    /// its figures; `(empty, None)` when no other node serves it.
    pub fn candidates(&self, route: &str) -> (Vec<Arc<Session>>, Option<Arc<RouteStats>>) {
        let view = self.view.read().unwrap_or_else(|p| p.into_inner());
        let Some(r) = view.routes.get(route) else {
            return (Vec::new(), None);
        };
        let n = r.owners.len();
        let start = r.next.fetch_add(1, Ordering::Relaxed);
        let out = (0..n)
            .filter_map(|i| {
                let (node, client) = &r.owners[(start + i) % n];
                self.links.session(node, client)
            })
            .collect();
        (out, Some(r.stats.clone()))
    }

    /// Other clientIds that may share `route` with `client` (both listed for it in `agents:`).
    fn share(&self, route: &str, client: &str) -> Vec<String> {
        let listed = |p: &AgentPolicy| p.routes.iter().any(|r| r == route);
        if !self
            .policies
            .iter()
            .any(|p| p.client_id == client && listed(p))
        {
            return Vec::new();
        }
        self.policies
            .iter()
            .filter(|p| p.client_id != client && listed(p))
            .map(|p| p.client_id.clone())
            .collect()
    }

    /// Claims the routes a new session was just given locally. A route another clientId holds
    /// on another node is withdrawn here and moved to the refused ones. With the registry
    /// unreachable the routes stay (served locally) and are claimed when it returns.
    pub async fn claim(&self, router: &Router, client: &str, reg: &mut Registration) {
        let claims: Vec<Claim> = reg
            .accepted
            .iter()
            .map(|r| Claim {
                route: r.clone(),
                client: client.to_string(),
                share: self.share(r, client),
            })
            .collect();
        if claims.is_empty() {
            return;
        }
        match self
            .registry
            .sync(&self.cfg.node_id, &self.cfg.advertise, self.ttl(), &claims)
            .await
        {
            Ok(s) => {
                self.registry_ok();
                if s.rejoined {
                    self.full.store(true, Ordering::Relaxed);
                    self.changed();
                }
                let mut mine = self.lock_mine();
                for c in &claims {
                    if !s.lost.iter().any(|(r, _)| *r == c.route) {
                        mine.insert(c.route.clone(), c.client.clone());
                    }
                }
                drop(mine);
                for (route, holder) in s.lost {
                    router.withdraw(&route);
                    reg.accepted.retain(|r| *r != route);
                    reg.rejected.push(Rejected {
                        reason: format!(
                            "route {route:?} is already served by clientId {holder:?} on another node of the cluster"
                        ),
                        route,
                    });
                }
            }
            Err(e) => self.registry_failed(&e.to_string()),
        }
    }

    fn lock_mine(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.mine.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn registry_ok(&self) {
        *self.last_sync.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.syncs.fetch_add(1, Ordering::Relaxed);
        if !self.healthy.swap(true, Ordering::Relaxed) {
            info!(node = %self.cfg.node_id, "cluster registry reachable again; resynchronised");
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// Logged once per outage; the node keeps serving from what it has.
    fn registry_failed(&self, e: &str) {
        self.full.store(true, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
        if self.healthy.swap(false, Ordering::Relaxed) {
            warn!(
                node = %self.cfg.node_id, error = %e,
                "cluster registry unreachable: serving own agents and cached routes until it returns"
            );
        }
    }

    /// Every heartbeat (or sooner when local routes changed): release routes no longer served
    /// here, renew and claim the others, follow the node list, reload the view when the
    /// registry's revision moved.
    async fn heartbeat_loop(self: Arc<Self>, table: Weak<Router>) {
        let mut tick = tokio::time::interval(self.cfg.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.changed.notified() => {}
            }
            let Some(router) = table.upgrade() else {
                return;
            };
            self.sync_once(&router).await;
        }
    }

    async fn sync_once(&self, router: &Router) {
        let local = router.routes();
        let names: HashSet<&str> = local.iter().map(|(r, _)| r.as_str()).collect();
        let gone: Vec<String> = self
            .lock_mine()
            .keys()
            .filter(|r| !names.contains(r.as_str()))
            .cloned()
            .collect();
        if let Err(e) = self.registry.release(&self.cfg.node_id, &gone).await {
            return self.registry_failed(&e.to_string());
        }
        {
            let mut mine = self.lock_mine();
            for r in &gone {
                mine.remove(r);
            }
        }
        // Claimed: the routes new here (or served for another clientId now); all of them after
        // a lapse or an outage. Held routes cost nothing: the node's lease covers them.
        let mut full = self.full.swap(false, Ordering::Relaxed);
        let s = loop {
            let claims: Vec<Claim> = {
                let mine = self.lock_mine();
                local
                    .iter()
                    .filter_map(|(r, clients)| {
                        let client = clients.first()?;
                        (full || mine.get(r) != Some(client)).then(|| Claim {
                            route: r.clone(),
                            client: client.clone(),
                            share: self.share(r, client),
                        })
                    })
                    .collect()
            };
            let s = match self
                .registry
                .sync(&self.cfg.node_id, &self.cfg.advertise, self.ttl(), &claims)
                .await
            {
                Ok(s) => s,
                Err(e) => return self.registry_failed(&e.to_string()),
            };
            {
                let mut mine = self.lock_mine();
                for c in claims {
                    if !s.lost.iter().any(|(r, _)| *r == c.route) {
                        mine.insert(c.route, c.client);
                    }
                }
                for (route, holder) in &s.lost {
                    mine.remove(route);
                    if router.withdraw(route) {
                        warn!(%route, %holder, "route withdrawn: the registry gives it to another clientId");
                    }
                }
            }
            if s.rejoined && !full {
                // Our lease had lapsed: the registry may have dropped every route of ours.
                full = true;
                continue;
            }
            break s;
        };
        self.registry_ok();
        self.links.follow(
            s.nodes
                .into_iter()
                .filter(|(n, _)| *n != self.cfg.node_id)
                .collect(),
        );
        let stale = self.view.read().unwrap_or_else(|p| p.into_inner()).rev != s.rev;
        if stale {
            self.reload().await;
        }
    }

    /// Replaces the view with the registry's table.
    async fn reload(&self) {
        match self.registry.read(None).await {
            Ok((rev, entries)) => {
                let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
                let mut old = std::mem::take(&mut view.routes);
                let mut fresh: HashMap<String, Vec<(String, String)>> = HashMap::new();
                for (route, node, client) in entries {
                    if node != self.cfg.node_id {
                        fresh.entry(route).or_default().push((node, client));
                    }
                }
                for (route, owners) in fresh {
                    let stats = old.remove(&route).map(|r| r.stats).unwrap_or_default();
                    view.routes.insert(
                        route,
                        Remote {
                            owners,
                            next: AtomicUsize::new(0),
                            stats,
                        },
                    );
                }
                view.rev = rev;
                debug!(routes = view.routes.len(), "cluster view reloaded");
            }
            Err(e) => self.registry_failed(&e.to_string()),
        }
    }

    /// Re-reads one route named by a change message.
    async fn refresh(&self, route: &str) {
        match self.registry.read(Some(route)).await {
            Ok((_, entries)) => {
                let owners: Vec<(String, String)> = entries
                    .into_iter()
                    .filter(|(_, n, _)| *n != self.cfg.node_id)
                    .map(|(_, n, c)| (n, c))
                    .collect();
                let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
                if owners.is_empty() {
                    view.routes.remove(route);
                } else {
                    let stats = view
                        .routes
                        .remove(route)
                        .map(|r| r.stats)
                        .unwrap_or_default();
                    view.routes.insert(
                        route.to_string(),
                        Remote {
                            owners,
                            next: AtomicUsize::new(0),
                            stats,
                        },
                    );
                }
            }
            Err(e) => self.registry_failed(&e.to_string()),
        }
    }

    /// Follows the change channel; after each (re)subscription the whole view is reloaded,
    /// since messages sent while unsubscribed are lost. A subscription silent for a heartbeat
    /// while the registry is unhealthy is dropped and made again (a connection cut without a
    /// FIN would otherwise wait forever).
    async fn subscribe_loop(self: Arc<Self>, table: Weak<Router>) {
        let channel = self.registry.channel();
        while table.strong_count() > 0 {
            let sub = async {
                let mut ps = self.client.get_async_pubsub().await?;
                ps.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(ps)
            };
            match tokio::time::timeout(registry::CALL_TIMEOUT, sub).await {
                Ok(Ok(mut ps)) => {
                    self.reload().await;
                    let mut msgs = ps.on_message();
                    loop {
                        let m = tokio::select! {
                            m = msgs.next() => m,
                            () = tokio::time::sleep(self.cfg.heartbeat) => {
                                if table.strong_count() == 0 {
                                    return;
                                }
                                if self.healthy.load(Ordering::Relaxed) {
                                    continue;
                                }
                                None
                            }
                        };
                        let Some(m) = m else { break };
                        let route = String::from_utf8_lossy(m.get_payload_bytes()).into_owned();
                        self.refresh(&route).await;
                    }
                    debug!("cluster change channel closed");
                }
                Ok(Err(e)) => self.registry_failed(&e.to_string()),
                Err(_) => self.registry_failed("subscribe timed out"),
            }
            tokio::time::sleep(self.cfg.heartbeat).await;
        }
    }

    /// The cluster part of the operator status.
    pub fn status(&self) -> ClusterStatus {
        ClusterStatus {
            node: self.cfg.node_id.clone(),
            advertise: self.cfg.advertise.clone(),
            registry_healthy: self.healthy.load(Ordering::Relaxed),
            registry_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            last_sync_ms_ago: self
                .last_sync
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)),
            leases: self.lock_mine().len(),
            remote_routes: self
                .view
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .routes
                .len(),
            peers: self.links.status(),
        }
    }
}
