//! The route registry on Redis: which node serves which route for which clientId, claimed by
//! one Lua script so that the takeover rules hold across nodes without a check-then-set race.
//!
//! A route's entry is valid while its node's lease is: each node renews one lease per
//! heartbeat (TTL three heartbeats) instead of one per route, so an idle node costs a handful
//! of commands per heartbeat whatever its number of routes. Keys (under the prefix `P`):
//! - `P:nodes`: hash, node id → `<lease expiry ms>|<advertise>`.
//! - `P:r:<route>`: hash, node id → clientId of each node serving the route.
//! - `P:n:<node>`: set of the routes a node holds (to drop them all when its lease lapses).
//! - `P:routes`: set of route names (the snapshot walks it instead of `SCAN`).
//! - `P:rev`: counter bumped on every ownership change; a node whose last seen value differs
//!   reloads the whole table (the reconciliation that heals a lost pub/sub message).
//! - `P:changes`: pub/sub channel; the payload is the route name that changed.
//!
//! Any node's heartbeat removes the entries of nodes whose lease lapsed (and announces each
//! route). A node that finds its own lease gone (it was cut off from Redis, or Redis restarted
//! empty) is told so and claims all its routes again: those another clientId took meanwhile
//! come back as lost, and the node withdraws them. Expiry is compared with Redis's own clock
//! (`TIME` inside the scripts), so node clocks never decide who owns a route. Scripts touch
//! keys they derive from the prefix, which standalone Redis, Valkey and ElastiCache with cluster
//! mode disabled allow (Redis Cluster does not: out of scope).

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;

/// Shared by the scripts: the time on Redis's clock and whether a node's lease is live.
const PRELUDE: &str = r#"
local p = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local alive = {}
local function live(n)
  if alive[n] == nil then
    local v = redis.call('HGET', p .. ':nodes', n)
    local e = nil
    if v then e = tonumber(string.match(v, '^(%d+)|')) end
    alive[n] = (e ~= nil and e > now)
  end
  return alive[n]
end
local function changed(route)
  redis.call('INCR', p .. ':rev')
  redis.call('PUBLISH', p .. ':changes', route)
end
local function drop(route, n)
  local key = p .. ':r:' .. route
  redis.call('SREM', p .. ':n:' .. n, route)
  if redis.call('HDEL', key, n) == 1 then
    if redis.call('HLEN', key) == 0 then
      redis.call('DEL', key)
      redis.call('SREM', p .. ':routes', route)
    end
    changed(route)
  end
end
"#;

/// Lua: renew this node's lease; drop the entries of lapsed nodes; claim each route given
/// (`route, clientId, share` triples) unless a live node serves it for an incompatible
/// clientId. Returns `{rev, rejoined, lost, live nodes}`: `rejoined` = 1 when this node's lease
/// had lapsed (every route must be claimed again), `lost` = `route, clientId` pairs refused,
/// `live` = `node, advertise` pairs.
const SYNC: &str = r#"
local node, adv, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4])
local rejoined = 0
if not live(node) then rejoined = 1 end
redis.call('HSET', p .. ':nodes', node, (now + ttl) .. '|' .. adv)
alive[node] = true
local live_nodes = {}
local nodes = redis.call('HGETALL', p .. ':nodes')
for j = 1, #nodes, 2 do
  local n = nodes[j]
  if live(n) then
    table.insert(live_nodes, n)
    table.insert(live_nodes, string.match(nodes[j + 1], '^%d+|(.*)$'))
  else
    for _, route in ipairs(redis.call('SMEMBERS', p .. ':n:' .. n)) do drop(route, n) end
    redis.call('DEL', p .. ':n:' .. n)
    redis.call('HDEL', p .. ':nodes', n)
  end
end
local lost = {}
local i = 5
while i + 2 <= #ARGV do
  local route, client, share = ARGV[i], ARGV[i + 1], '\n' .. ARGV[i + 2] .. '\n'
  i = i + 3
  local key = p .. ':r:' .. route
  local h = redis.call('HGETALL', key)
  local mine, other = nil, nil
  for j = 1, #h, 2 do
    local n, c = h[j], h[j + 1]
    if n == node then
      mine = c
    elseif not live(n) then
      drop(route, n)
    elseif c ~= client and not string.find(share, '\n' .. c .. '\n', 1, true) then
      other = c
    end
  end
  if mine ~= nil or other == nil then
    if mine ~= client then
      redis.call('HSET', key, node, client)
      redis.call('SADD', p .. ':n:' .. node, route)
      redis.call('SADD', p .. ':routes', route)
      changed(route)
    end
  else
    table.insert(lost, route)
    table.insert(lost, other)
  end
end
return {redis.call('GET', p .. ':rev') or '0', rejoined, lost, live_nodes}
"#;

/// Lua: drop this node's entry of each route given.
const RELEASE: &str = r#"
local node = ARGV[2]
for i = 3, #ARGV do drop(ARGV[i], node) end
return 1
"#;

/// Lua: the entries of live nodes for one route (ARGV[2]) or for all (ARGV[2] empty), as flat
/// `route, node, clientId` triples, with the revision they belong to.
const READ: &str = r#"
local names
if ARGV[2] == '' then names = redis.call('SMEMBERS', p .. ':routes') else names = {ARGV[2]} end
local out = {}
for _, route in ipairs(names) do
  local h = redis.call('HGETALL', p .. ':r:' .. route)
  for j = 1, #h, 2 do
    if live(h[j]) then
      table.insert(out, route)
      table.insert(out, h[j])
      table.insert(out, h[j + 1])
    end
  end
end
return {redis.call('GET', p .. ':rev') or '0', out}
"#;

/// Every registry call gives up after this (the node then works from its cache).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Redis answered with an error or the connection failed.
    #[error("registry: {0}")]
    Redis(#[from] redis::RedisError),
    /// No answer within [`CALL_TIMEOUT`].
    #[error("registry: no answer within {CALL_TIMEOUT:?}")]
    Timeout,
}

/// One route this node serves, as claimed.
#[derive(Debug, Clone)]
pub struct Claim {
    /// Route name.
    pub route: String,
    /// The clientId serving it here.
    pub client: String,
    /// Other clientIds allowed to share it (the `agents:` section lists the route for both).
    pub share: Vec<String>,
}

/// Result of [`Registry::sync`].
#[derive(Debug, Default)]
pub struct Synced {
    /// Revision counter after the call.
    pub rev: String,
    /// This node's lease had lapsed: every route must be claimed again.
    pub rejoined: bool,
    /// Routes refused: (route, clientId holding it elsewhere).
    pub lost: Vec<(String, String)>,
    /// Live nodes: (node id, advertise address), this one included.
    pub nodes: Vec<(String, String)>,
}

/// A live entry: (route, node, clientId).
pub type Entry = (String, String, String);

/// The scripts and the connection to the registry.
#[derive(Clone)]
pub struct Registry {
    con: ConnectionManager,
    prefix: String,
    sync: Script,
    release: Script,
    read: Script,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("prefix", &self.prefix)
            .finish()
    }
}

async fn bounded<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, RegistryError> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(RegistryError::Timeout),
    }
}

impl Registry {
    /// A registry on `client`; connects lazily (a node starts while Redis is down).
    pub fn new(client: redis::Client, prefix: &str) -> Result<Self, RegistryError> {
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        Ok(Self {
            con: ConnectionManager::new_lazy_with_config(client, cfg)?,
            prefix: prefix.to_string(),
            sync: Script::new(&format!("{PRELUDE}{SYNC}")),
            release: Script::new(&format!("{PRELUDE}{RELEASE}")),
            read: Script::new(&format!("{PRELUDE}{READ}")),
        })
    }

    /// The pub/sub channel of route changes.
    pub fn channel(&self) -> String {
        format!("{}:changes", self.prefix)
    }

    /// Renews this node's lease and claims `claims` (those it holds already cost one read).
    pub async fn sync(
        &self,
        node: &str,
        advertise: &str,
        ttl: Duration,
        claims: &[Claim],
    ) -> Result<Synced, RegistryError> {
        let mut inv = self.sync.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(node)
            .arg(advertise)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        for c in claims {
            inv.arg(&c.route).arg(&c.client).arg(c.share.join("\n"));
        }
        let mut con = self.con.clone();
        let (rev, rejoined, lost, nodes): (String, i64, Vec<String>, Vec<String>) =
            bounded(inv.invoke_async(&mut con)).await?;
        Ok(Synced {
            rev,
            rejoined: rejoined == 1,
            lost: pairs(lost),
            nodes: pairs(nodes),
        })
    }

    /// Gives up this node's entries of `routes`.
    pub async fn release(&self, node: &str, routes: &[String]) -> Result<(), RegistryError> {
        if routes.is_empty() {
            return Ok(());
        }
        let mut inv = self.release.prepare_invoke();
        inv.arg(&self.prefix).arg(node);
        for r in routes {
            inv.arg(r);
        }
        let mut con = self.con.clone();
        let _: i64 = bounded(inv.invoke_async(&mut con)).await?;
        Ok(())
    }

    /// The live entries of `route`, or of every route when `None`, and the revision.
    pub async fn read(&self, route: Option<&str>) -> Result<(String, Vec<Entry>), RegistryError> {
        let mut inv = self.read.prepare_invoke();
        inv.arg(&self.prefix).arg(route.unwrap_or(""));
        let mut con = self.con.clone();
        let (rev, flat): (String, Vec<String>) = bounded(inv.invoke_async(&mut con)).await?;
        let mut out = Vec::with_capacity(flat.len() / 3);
        let mut it = flat.into_iter();
        while let (Some(r), Some(n), Some(c)) = (it.next(), it.next(), it.next()) {
            out.push((r, n, c));
        }
        Ok((rev, out))
    }
}

impl Registry {
    /// The live nodes (id, advertise), read only.
    pub async fn nodes(&self) -> Result<Vec<(String, String)>, RegistryError> {
        let mut con = self.con.clone();
        let key = format!("{}:nodes", self.prefix);
        let time: (u64, u64) = bounded(redis::cmd("TIME").query_async(&mut con)).await?;
        let now = time.0 * 1000 + time.1 / 1000;
        let all: Vec<(String, String)> =
            bounded(redis::cmd("HGETALL").arg(&key).query_async(&mut con)).await?;
        Ok(all
            .into_iter()
            .filter_map(|(n, v)| {
                let (exp, addr) = v.split_once('|')?;
                (exp.parse::<u64>().ok()? > now).then(|| (n, addr.to_string()))
            })
            .collect())
    }
}

fn pairs(flat: Vec<String>) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(a), Some(b)) = (it.next(), it.next()) {
        out.push((a, b));
    }
    out
}
