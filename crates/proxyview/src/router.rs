//! Route table: which live agent sessions serve which route name, and who may claim what.
//!
//! Rules (checked per route when a session registers):
//! - A route listed under some agent in the server's `agents:` section is *reserved*: only the
//!   clientIds listing it may serve it; an agent with an `agents:` entry may only serve its listed
//!   routes. One leaked token therefore exposes only its own routes.
//! - A session of the same `clientId` **and** process instance replaces the older session (a
//!   reconnect whose old socket is not yet known dead).
//! - Sessions of the same `clientId` (different instances) share a route: round-robin, with
//!   failover when one is gone.
//! - A different `clientId` claiming a route someone serves is rejected, unless both are allowed
//!   that route by the `agents:` section, in which case they share it.
//! - A session going away removes only its own entries (keyed by session id), so a late
//!   disconnect of an old session never removes a newer session's routes.
//! - A route refused because another clientId served it is remembered for the refused session:
//!   when the last session serving the route goes away, the route passes at once to the
//!   sessions of the longest-waiting clientId, without a reconnect. The agent routes by the
//!   route name of each request, so it needs no message to start serving it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;

use tokio::sync::Notify;

use crate::config::AgentPolicy;
use crate::protocol::Rejected;
use crate::stats::{LastMinute, RouteStats};

/// The tunnel session handle the server opens streams on.
pub type Sender = crate::mux::Session;

/// One live agent session as the router sees it.
#[derive(Debug)]
pub struct Session {
    /// Server-assigned id, unique for the process lifetime.
    pub id: u64,
    /// The agent's `clientId`.
    pub client_id: String,
    /// The agent process instance.
    pub instance: String,
    /// Set once the tunnel is up; sessions without it are skipped.
    pub sender: OnceLock<Sender>,
    /// Notified when the router drops this session in favour of a newer one.
    pub evicted: Notify,
    /// Route name → fingerprint of the agent's target for it (from its Hello).
    pub targets: std::collections::BTreeMap<String, String>,
    /// The agent's address as the server saw it.
    pub peer: SocketAddr,
    /// When the session was accepted.
    pub since: SystemTime,
}

#[derive(Debug, Default)]
struct Entry {
    sessions: Vec<Arc<Session>>,
    next: usize,
    stats: Arc<RouteStats>,
}

#[derive(Debug, Default)]
struct State {
    routes: HashMap<String, Entry>,
    /// Route → live sessions refused it because another clientId served it, oldest first.
    waiting: HashMap<String, Vec<Arc<Session>>>,
    /// Every registered, live session (for the operator page).
    sessions: HashMap<u64, Arc<Session>>,
}

/// A snapshot of the table for the operator page.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Live agent sessions, oldest first.
    pub agents: Vec<AgentStatus>,
    /// Served routes by name.
    pub routes: Vec<RouteStatus>,
}

/// One agent session in [`Status`].
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// Server-side session id.
    pub session: u64,
    /// The agent's `clientId`.
    pub client_id: String,
    /// The agent's address.
    pub remote_addr: String,
    /// Connected since, seconds since the Unix epoch.
    pub connected_since: u64,
    /// Routes this session serves.
    pub routes: Vec<String>,
    /// Routes it waits for (refused: another clientId serves them).
    pub waiting_for: Vec<String>,
    /// Streams open now.
    pub in_flight: usize,
    /// Tunnel bytes server → agent.
    pub bytes_to_agent: u64,
    /// Tunnel bytes agent → server.
    pub bytes_from_agent: u64,
}

/// One route in [`Status`].
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    /// Route name.
    pub route: String,
    /// clientIds of the sessions serving it (one per session).
    pub agents: Vec<String>,
    /// Requests over the last minute.
    pub last_minute: LastMinute,
}

/// Route name → sessions, plus the claim policy.
#[derive(Debug)]
pub struct Router {
    state: Mutex<State>,
    policies: Vec<AgentPolicy>,
}

/// Outcome of a registration.
#[derive(Debug, Default)]
pub struct Registration {
    /// Routes now served by the session.
    pub accepted: Vec<String>,
    /// Routes refused with reasons.
    pub rejected: Vec<Rejected>,
    /// Accepted, but worth a warning on both sides (server log and agent log).
    pub warnings: Vec<String>,
}

impl Router {
    /// An empty table enforcing `policies` (the server's `agents:` section).
    pub fn new(policies: Vec<AgentPolicy>) -> Self {
        Self {
            state: Mutex::new(State::default()),
            policies,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the table consistent (every mutation is a single
        // push/retain), so a poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `agents:` entry for a clientId, if any.
    pub fn policy(&self, client_id: &str) -> Option<&AgentPolicy> {
        self.policies.iter().find(|p| p.client_id == client_id)
    }

    /// The `agents:` entries that list `route`.
    fn reserved_by<'a>(&'a self, route: &'a str) -> impl Iterator<Item = &'a AgentPolicy> + 'a {
        self.policies
            .iter()
            .filter(move |p| p.routes.iter().any(|r| r == route))
    }

    /// Registers `session` for `routes` (already normalised), evicting an older session of the same
    /// clientId and instance.
    pub fn register(&self, session: &Arc<Session>, routes: &[String]) -> Registration {
        let mut out = Registration::default();
        let mut evicted: Vec<Arc<Session>> = Vec::new();
        let own_policy = self.policy(&session.client_id);
        let mut st = self.lock();
        let replaced = |s: &Arc<Session>| {
            s.client_id == session.client_id && s.instance == session.instance && s.id != session.id
        };
        for entry in st.routes.values_mut() {
            entry.sessions.retain(|s| {
                let same = replaced(s);
                if same && !evicted.iter().any(|e| e.id == s.id) {
                    evicted.push(s.clone());
                }
                !same
            });
        }
        for w in st.waiting.values_mut() {
            w.retain(|s| !replaced(s));
        }
        st.sessions.retain(|_, s| !replaced(s));
        st.sessions.insert(session.id, session.clone());
        for route in routes {
            let reserved: Vec<&AgentPolicy> = self.reserved_by(route).collect();
            let reject = |reason: String| Rejected {
                route: route.clone(),
                reason,
            };
            if let Some(p) = own_policy {
                if !p.routes.iter().any(|r| r == route) {
                    out.rejected.push(reject(format!(
                        "route {route:?} is not among the routes the server's agents: section allows clientId {:?}",
                        session.client_id
                    )));
                    continue;
                }
            } else if !reserved.is_empty() {
                out.rejected.push(reject(format!(
                    "route {route:?} is reserved by the server's agents: section for another clientId"
                )));
                continue;
            }
            let entry = st.routes.entry(route.clone()).or_default();
            if let Some(other) = entry
                .sessions
                .iter()
                .find(|s| s.client_id != session.client_id)
            {
                let shared = reserved.iter().any(|p| p.client_id == other.client_id)
                    && reserved.iter().any(|p| p.client_id == session.client_id);
                if !shared {
                    out.rejected.push(reject(format!(
                        "route {route:?} is already served by clientId {:?}; this agent gets it when that one leaves",
                        other.client_id
                    )));
                    st.waiting
                        .entry(route.clone())
                        .or_default()
                        .push(session.clone());
                    continue;
                }
            }
            // Another process of this clientId serving the route elsewhere: callers would
            // alternate between two backends. Shared all the same (that is the rule for one
            // clientId), but said out loud.
            let mine = session.targets.get(route);
            if let Some(other) = entry.sessions.iter().find(|s| {
                s.id != session.id
                    && s.client_id == session.client_id
                    && matches!((mine, s.targets.get(route)), (Some(a), Some(b)) if a != b)
            }) {
                out.warnings.push(format!(
                    "route {route:?}: another process of clientId {:?} (session {}) serves it with a different target; callers alternate between both backends (fingerprints {} and {})",
                    session.client_id,
                    other.id,
                    mine.map_or("", String::as_str),
                    other.targets.get(route).map_or("", String::as_str),
                ));
            }
            if !entry.sessions.iter().any(|s| s.id == session.id) {
                entry.sessions.push(session.clone());
            }
            out.accepted.push(route.clone());
        }
        st.routes.retain(|_, e| !e.sessions.is_empty());
        st.waiting.retain(|_, w| !w.is_empty());
        drop(st);
        for e in evicted {
            e.evicted.notify_one();
        }
        out
    }

    /// Drops every entry of session `id` (and only of it), then hands each route it left
    /// unserved to the sessions waiting for it. Returns the handovers as (route, clientId).
    pub fn remove_session(&self, id: u64) -> Vec<(String, String)> {
        let mut st = self.lock();
        for entry in st.routes.values_mut() {
            entry.sessions.retain(|s| s.id != id);
        }
        st.routes.retain(|_, e| !e.sessions.is_empty());
        st.sessions.remove(&id);
        for w in st.waiting.values_mut() {
            w.retain(|s| s.id != id);
        }
        st.waiting.retain(|_, w| !w.is_empty());
        let free: Vec<String> = st
            .waiting
            .keys()
            .filter(|r| !st.routes.contains_key(*r))
            .cloned()
            .collect();
        let mut handed = Vec::new();
        for route in free {
            let Some(mut waiting) = st.waiting.remove(&route) else {
                continue;
            };
            // The longest-waiting clientId takes it, with all its sessions (they share).
            let client = waiting[0].client_id.clone();
            let (takers, rest): (Vec<_>, Vec<_>) =
                waiting.drain(..).partition(|s| s.client_id == client);
            if !rest.is_empty() {
                st.waiting.insert(route.clone(), rest);
            }
            st.routes.entry(route.clone()).or_default().sessions = takers;
            handed.push((route, client));
        }
        handed
    }

    /// Stops serving `route` on this node (the cluster registry gave it to another agent).
    /// Returns whether it was served.
    pub fn withdraw(&self, route: &str) -> bool {
        self.lock().routes.remove(route).is_some()
    }

    /// The sessions serving `route`, starting with the next one in round-robin order, and the
    /// route's request figures.
    pub fn candidates(&self, route: &str) -> (Vec<Arc<Session>>, Option<Arc<RouteStats>>) {
        let mut st = self.lock();
        let Some(entry) = st.routes.get_mut(route) else {
            return (Vec::new(), None);
        };
        let n = entry.sessions.len();
        let start = entry.next % n;
        entry.next = entry.next.wrapping_add(1);
        let sessions = (0..n)
            .map(|i| entry.sessions[(start + i) % n].clone())
            .collect();
        (sessions, Some(entry.stats.clone()))
    }

    /// The table as the operator page shows it.
    pub fn status(&self) -> Status {
        let st = self.lock();
        let mut agents: Vec<AgentStatus> = st
            .sessions
            .values()
            .map(|s| {
                let sorted = |mut v: Vec<String>| {
                    v.sort();
                    v
                };
                let routes = sorted(
                    st.routes
                        .iter()
                        .filter(|(_, e)| e.sessions.iter().any(|x| x.id == s.id))
                        .map(|(r, _)| r.clone())
                        .collect(),
                );
                let waiting_for = sorted(
                    st.waiting
                        .iter()
                        .filter(|(_, w)| w.iter().any(|x| x.id == s.id))
                        .map(|(r, _)| r.clone())
                        .collect(),
                );
                let (in_flight, (bytes_to_agent, bytes_from_agent)) = s
                    .sender
                    .get()
                    .map_or((0, (0, 0)), |t| (t.open_streams(), t.bytes()));
                AgentStatus {
                    session: s.id,
                    client_id: s.client_id.clone(),
                    remote_addr: s.peer.to_string(),
                    connected_since: s
                        .since
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                    routes,
                    waiting_for,
                    in_flight,
                    bytes_to_agent,
                    bytes_from_agent,
                }
            })
            .collect();
        agents.sort_by_key(|a| a.session);
        let mut routes: Vec<RouteStatus> = st
            .routes
            .iter()
            .map(|(r, e)| RouteStatus {
                route: r.clone(),
                agents: e.sessions.iter().map(|s| s.client_id.clone()).collect(),
                last_minute: e.stats.last_minute(),
            })
            .collect();
        routes.sort_by(|a, b| a.route.cmp(&b.route));
        Status { agents, routes }
    }

    /// Route names currently served (for diagnostics and tests).
    pub fn routes(&self) -> Vec<(String, Vec<String>)> {
        let st = self.lock();
        let mut v: Vec<_> = st
            .routes
            .iter()
            .map(|(r, e)| {
                (
                    r.clone(),
                    e.sessions.iter().map(|s| s.client_id.clone()).collect(),
                )
            })
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn session(id: u64, client: &str, instance: &str) -> Arc<Session> {
        Arc::new(Session {
            id,
            client_id: client.into(),
            instance: instance.into(),
            sender: OnceLock::new(),
            evicted: Notify::new(),
            targets: Default::default(),
            peer: SocketAddr::from(([127, 0, 0, 1], 1)),
            since: SystemTime::now(),
        })
    }

    fn r(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn other_client_is_rejected_same_client_shares_and_reconnect_replaces() {
        let router = Router::new(vec![]);
        let a1 = session(1, "a", "i1");
        assert_eq!(
            router.register(&a1, &r(&["x", "y"])).accepted,
            r(&["x", "y"])
        );
        let b = session(2, "b", "j");
        let reg = router.register(&b, &r(&["x", "z"]));
        assert_eq!(reg.accepted, r(&["z"]));
        assert!(
            reg.rejected[0].reason.contains("\"a\""),
            "{:?}",
            reg.rejected
        );
        let a2 = session(3, "a", "i2");
        router.register(&a2, &r(&["x"]));
        let ids: Vec<u64> = (0..4).map(|_| router.candidates("x").0[0].id).collect();
        assert!(ids.contains(&1) && ids.contains(&3), "round robin: {ids:?}");
        // Reconnect of instance i1 replaces session 1 everywhere.
        let a1b = session(4, "a", "i1");
        router.register(&a1b, &r(&["x", "y"]));
        let mut ids: Vec<u64> = router.candidates("x").0.iter().map(|s| s.id).collect();
        ids.sort();
        assert_eq!(ids, vec![3, 4]);
        // Late disconnect of the replaced session removes nothing of the new one.
        router.remove_session(1);
        assert_eq!(router.candidates("y").0[0].id, 4);
        router.remove_session(4);
        assert!(router.candidates("y").0.is_empty());
        assert_eq!(router.candidates("x").0[0].id, 3);
    }

    #[test]
    fn a_refused_route_passes_to_the_waiting_client_when_its_owner_leaves() {
        let router = Router::new(vec![]);
        let a = session(1, "a", "i");
        router.register(&a, &r(&["x"]));
        let (b1, b2, c) = (
            session(2, "b", "i1"),
            session(3, "b", "i2"),
            session(4, "c", "i"),
        );
        for s in [&b1, &b2, &c] {
            assert_eq!(router.register(s, &r(&["x"])).accepted, r(&[]));
        }
        // Removing a waiter hands over nothing; removing the owner hands "x" to both of b's.
        router.remove_session(3);
        assert_eq!(
            router.remove_session(1),
            [("x".to_string(), "b".to_string())]
        );
        assert_eq!(router.candidates("x").0.len(), 1, "session 3 left before");
        assert_eq!(router.candidates("x").0[0].id, 2);
        // c still waits behind b.
        assert_eq!(
            router.remove_session(2),
            [("x".to_string(), "c".to_string())]
        );
        assert_eq!(router.candidates("x").0[0].id, 4);
        assert!(router.remove_session(4).is_empty());
        assert!(router.candidates("x").0.is_empty());
    }

    #[test]
    fn same_client_with_a_different_target_is_warned_but_shares() {
        let router = Router::new(vec![]);
        let with = |id, inst: &str, fp: &str| {
            let mut s = Arc::try_unwrap(session(id, "a", inst)).unwrap();
            s.targets.insert("x".into(), fp.into());
            Arc::new(s)
        };
        assert!(router
            .register(&with(1, "i1", "f1"), &r(&["x"]))
            .warnings
            .is_empty());
        assert!(router
            .register(&with(2, "i2", "f1"), &r(&["x"]))
            .warnings
            .is_empty());
        let reg = router.register(&with(3, "i3", "f2"), &r(&["x"]));
        assert_eq!(reg.accepted, r(&["x"]));
        assert_eq!(reg.warnings.len(), 1, "{:?}", reg.warnings);
        assert!(reg.warnings[0].contains("f1") && reg.warnings[0].contains("f2"));
        assert_eq!(router.candidates("x").0.len(), 3);
    }

    #[test]
    fn agents_section_reserves_and_allows_sharing() {
        let pol = |c: &str, routes: &[&str]| AgentPolicy {
            client_id: c.into(),
            token: Secret::new("t"),
            routes: r(routes),
        };
        let router = Router::new(vec![pol("a", &["pay", "shared"]), pol("b", &["shared"])]);
        let anon = session(1, "anon", "i");
        let reg = router.register(&anon, &r(&["pay", "free"]));
        assert_eq!(reg.accepted, r(&["free"]));
        let a = session(2, "a", "i");
        let reg = router.register(&a, &r(&["pay", "shared", "free", "other"]));
        assert_eq!(reg.accepted, r(&["pay", "shared"]));
        assert_eq!(reg.rejected.len(), 2);
        let b = session(3, "b", "i");
        assert_eq!(
            router.register(&b, &r(&["shared", "pay"])).accepted,
            r(&["shared"])
        );
        assert_eq!(router.candidates("shared").0.len(), 2);
    }
}
