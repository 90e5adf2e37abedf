//! An in-memory [`Dataplane`] that records every call and can be told to fail, for engine unit tests.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use super::{Dataplane, DataplaneError, Flow, Mapping};

/// Shared view of what the memory dataplane did, for assertions.
#[derive(Debug, Default)]
pub struct MemoryState {
    /// Registered groups and their mappings.
    pub groups: BTreeMap<String, Vec<Mapping>>,
    /// Groups whose DNAT is on.
    pub enabled: BTreeSet<String>,
    /// Every call in order, e.g. `enable backend`, `flush backend udp`.
    pub calls: Vec<String>,
    /// Next `set_enabled(_, true)` calls fail while > 0.
    pub fail_enable: u32,
    /// Next `set_enabled(_, false)` calls fail while > 0.
    pub fail_disable: u32,
    /// Flows `dump_flows` returns.
    pub flows: Vec<Flow>,
    /// Set by close.
    pub closed: bool,
}

/// The in-memory dataplane; clones share state.
#[derive(Clone, Debug, Default)]
pub struct MemoryDataplane {
    /// Shared state.
    pub state: Arc<Mutex<MemoryState>>,
}

impl MemoryDataplane {
    fn with<T>(&self, f: impl FnOnce(&mut MemoryState) -> T) -> T {
        let mut g = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    /// A snapshot of the call log.
    pub fn calls(&self) -> Vec<String> {
        self.with(|s| s.calls.clone())
    }

    /// True if the group's DNAT is on.
    pub fn is_enabled(&self, group: &str) -> bool {
        self.with(|s| s.enabled.contains(group))
    }

    /// Makes the next `n` enables fail.
    pub fn fail_enable(&self, n: u32) {
        self.with(|s| s.fail_enable = n);
    }

    /// Makes the next `n` disables fail.
    pub fn fail_disable(&self, n: u32) {
        self.with(|s| s.fail_disable = n);
    }
}

impl Dataplane for MemoryDataplane {
    async fn add_group(&mut self, group: &str, mappings: &[Mapping]) -> Result<(), DataplaneError> {
        self.with(|s| {
            if s.closed {
                return Err(DataplaneError::Closed);
            }
            if s.groups.contains_key(group) {
                return Err(DataplaneError::GroupExists(group.into()));
            }
            s.calls.push(format!("add {group} {}", mappings.len()));
            s.groups.insert(group.into(), mappings.to_vec());
            Ok(())
        })
    }

    async fn set_group(&mut self, group: &str, mappings: &[Mapping]) -> Result<(), DataplaneError> {
        self.with(|s| {
            if s.closed {
                return Err(DataplaneError::Closed);
            }
            if s.groups.get(group).is_some_and(|m| m == mappings) {
                return Ok(());
            }
            s.calls.push(format!("set {group} {}", mappings.len()));
            s.groups.insert(group.into(), mappings.to_vec());
            Ok(())
        })
    }

    async fn remove_group(&mut self, group: &str) -> Result<(), DataplaneError> {
        self.with(|s| {
            s.calls.push(format!("remove {group}"));
            s.groups.remove(group);
            s.enabled.remove(group);
            Ok(())
        })
    }

    async fn set_enabled(&mut self, group: &str, on: bool) -> Result<(), DataplaneError> {
        self.with(|s| {
            if s.closed {
                return Err(DataplaneError::Closed);
            }
            if !s.groups.contains_key(group) {
                return Err(DataplaneError::NoGroup(group.into()));
            }
            let verb = if on { "enable" } else { "disable" };
            let fail = if on {
                &mut s.fail_enable
            } else {
                &mut s.fail_disable
            };
            if *fail > 0 {
                *fail -= 1;
                s.calls.push(format!("{verb} {group} failed"));
                return Err(DataplaneError::Kernel(format!("injected {verb} failure")));
            }
            s.calls.push(format!("{verb} {group}"));
            if on {
                s.enabled.insert(group.into());
            } else {
                s.enabled.remove(group);
            }
            Ok(())
        })
    }

    async fn flush_flows(&mut self, group: &str, udp_only: bool) -> Result<(), DataplaneError> {
        self.with(|s| {
            s.calls.push(format!(
                "flush {group}{}",
                if udp_only { " udp" } else { "" }
            ));
            Ok(())
        })
    }

    async fn dump_flows(&mut self) -> Result<Vec<Flow>, DataplaneError> {
        self.with(|s| Ok(s.flows.clone()))
    }

    async fn close(&mut self) -> Result<(), DataplaneError> {
        self.with(|s| {
            s.calls.push("close".into());
            s.closed = true;
            s.enabled.clear();
            Ok(())
        })
    }
}
