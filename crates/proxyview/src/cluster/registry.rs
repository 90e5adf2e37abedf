//! The route registry on Redis: leases per route, claimed and renewed by one Lua script so that
//! the takeover rules hold across nodes without a check-then-set race.
//!
//! Keys (under the configured prefix `P`):
//! - `P:r:<route>`: hash, one field per node serving the route: `<expiry ms>|<clientId>`. The
//!   key's own expiry is the latest of its fields', so a route whose nodes all died vanishes.
//! - `P:routes`: set of route names (the snapshot walks it instead of `SCAN`).
//! - `P:nodes`: hash, node id → `<expiry ms>|<advertise>`.
//! - `P:rev`: counter bumped on every ownership change; a node whose last seen value differs
//!   reloads the whole table (the reconciliation that heals a lost pub/sub message).
//! - `P:changes`: pub/sub channel; the payload is the route name that changed.
//!
//! Expiry is compared with Redis's own clock (`TIME` inside the scripts), so node clocks never
//! decide who owns a route. Scripts touch keys they derive from the prefix, which standalone
//! Redis, Valkey and ElastiCache with cluster mode disabled allow (Redis Cluster does not: out
//! of scope).

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;

/// Lua: renew this node's entry and its routes; claim each route it does not hold yet when no
/// live entry of an incompatible clientId exists. Returns `{rev, lost, live nodes}` where
/// `lost` is `route, clientId` pairs refused, `live` is `node, advertise` pairs.
const SYNC: &str = r#"
local p, node, adv, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local exp = now + ttl
redis.call('HSET', p .. ':nodes', node, exp .. '|' .. adv)
local lost = {}
local i = 5
while i + 2 <= #ARGV do
  local route, client, share = ARGV[i], ARGV[i + 1], '\n' .. ARGV[i + 2] .. '\n'
  i = i + 3
  local key = p .. ':r:' .. route
  local h = redis.call('HGETALL', key)
  local mine, other, maxexp = false, nil, exp
  for j = 1, #h, 2 do
    local e, c = string.match(h[j + 1], '^(%d+)|(.*)$')
    e = tonumber(e)
    if e == nil or e <= now then
      redis.call('HDEL', key, h[j])
    elseif h[j] == node then
      mine = true
    else
      if c ~= client and not string.find(share, '\n' .. c .. '\n', 1, true) then other = c end
      if e > maxexp then maxexp = e end
    end
  end
  if mine or other == nil then
    redis.call('HSET', key, node, exp .. '|' .. client)
    redis.call('PEXPIREAT', key, maxexp)
    if not mine then
      redis.call('SADD', p .. ':routes', route)
      redis.call('INCR', p .. ':rev')
      redis.call('PUBLISH', p .. ':changes', route)
    end
  else
    table.insert(lost, route)
    table.insert(lost, other)
  end
end
local live = {}
local nodes = redis.call('HGETALL', p .. ':nodes')
for j = 1, #nodes, 2 do
  local e = tonumber(string.match(nodes[j + 1], '^(%d+)|'))
  if e == nil or e <= now then
    redis.call('HDEL', p .. ':nodes', nodes[j])
  else
    table.insert(live, nodes[j])
    table.insert(live, string.match(nodes[j + 1], '^%d+|(.*)$'))
  end
end
return {redis.call('GET', p .. ':rev') or '0', lost, live}
"#;

/// Lua: drop this node's entry of each route; an emptied route goes.
const RELEASE: &str = r#"
local p, node = ARGV[1], ARGV[2]
for i = 3, #ARGV do
  local key = p .. ':r:' .. ARGV[i]
  if redis.call('HDEL', key, node) == 1 then
    if redis.call('HLEN', key) == 0 then
      redis.call('DEL', key)
      redis.call('SREM', p .. ':routes', ARGV[i])
    end
    redis.call('INCR', p .. ':rev')
    redis.call('PUBLISH', p .. ':changes', ARGV[i])
  end
end
return 1
"#;

/// Lua: the live entries of one route (ARGV[2]) or of all (ARGV[2] empty), as flat
/// `route, node, clientId` triples, with the revision they belong to.
const READ: &str = r#"
local p = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local names
if ARGV[2] == '' then names = redis.call('SMEMBERS', p .. ':routes') else names = {ARGV[2]} end
local out = {}
for _, route in ipairs(names) do
  local h = redis.call('HGETALL', p .. ':r:' .. route)
  local any = false
  for j = 1, #h, 2 do
    local e, c = string.match(h[j + 1], '^(%d+)|(.*)$')
    if tonumber(e) ~= nil and tonumber(e) > now then
      table.insert(out, route)
      table.insert(out, h[j])
      table.insert(out, c)
      any = true
    end
  end
  if not any and ARGV[2] == '' then redis.call('SREM', p .. ':routes', route) end
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
            sync: Script::new(SYNC),
            release: Script::new(RELEASE),
            read: Script::new(READ),
        })
    }

    /// The pub/sub channel of route changes.
    pub fn channel(&self) -> String {
        format!("{}:changes", self.prefix)
    }

    /// Renews this node and `claims`, claiming those it does not hold yet.
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
        let (rev, lost, nodes): (String, Vec<String>, Vec<String>) =
            bounded(inv.invoke_async(&mut con)).await?;
        Ok(Synced {
            rev,
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
