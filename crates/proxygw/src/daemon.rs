//! The daemon's wiring (spec §4): config → dataplane → plugins (OnLoad) → engine (targets, then frontends) →
//! wait for SIGINT/SIGTERM → engine shutdown → plugins unload in reverse → exit.

use crate::config::Config;
use crate::dataplane::Dataplane;
use crate::engine::{self, Engine, EngineHandle};
use crate::log::Logger;
use crate::plugins::{Loaded, Registry};

/// A running daemon: the engine task plus loaded plugins, stopped with [`Daemon::stop`].
pub struct Daemon {
    handle: EngineHandle,
    task: tokio::task::JoinHandle<()>,
    loaded: Vec<(String, Box<dyn Loaded>)>,
    log: Logger,
}

impl Daemon {
    /// Loads plugins in manifest order, then builds and starts the engine on `dp`.
    pub async fn start<D: Dataplane>(
        cfg: &Config,
        reg: &Registry,
        dp: D,
        log: Logger,
    ) -> Result<Self, String> {
        Self::start_with(cfg, reg, dp, log, |_| {}).await
    }

    /// Like [`Daemon::start`]; `before_run` gets the handle before the engine runs (to attach flow events).
    pub async fn start_with<D: Dataplane>(
        cfg: &Config,
        reg: &Registry,
        dp: D,
        log: Logger,
        before_run: impl FnOnce(&EngineHandle),
    ) -> Result<Self, String> {
        Self::start_reloadable(cfg, reg, dp, log, None, before_run).await
    }

    /// Like [`Daemon::start_with`]; `reloader` re-reads the config for SIGHUP and `proxygwctl reload`.
    pub async fn start_reloadable<D: Dataplane>(
        cfg: &Config,
        reg: &Registry,
        dp: D,
        log: Logger,
        reloader: Option<engine::Reloader>,
        before_run: impl FnOnce(&EngineHandle),
    ) -> Result<Self, String> {
        for m in &reg.missing {
            log.info("plugin not compiled in; skipped", &[("source", m)]);
        }
        let (handle, inbox) = engine::channel();
        let mut loaded: Vec<(String, Box<dyn Loaded>)> = Vec::new();
        for p in &reg.plugins {
            let Some(on_load) = p.def.on_load else {
                continue;
            };
            let empty = serde_json::Map::new();
            let block = cfg.plugins.get(&p.namespace).unwrap_or(&empty);
            match on_load(block, handle.clone(), log.clone()) {
                Ok(l) => loaded.push((p.namespace.clone(), l)),
                Err(e) => {
                    unload_all(loaded).await;
                    return Err(format!("load plugin {:?}: {e}", p.namespace));
                }
            }
        }
        let engine = match Engine::build(cfg, reg, dp, inbox, log.clone()).await {
            Ok(mut e) => {
                if let Some(r) = reloader {
                    e.set_reloader(r);
                }
                e
            }
            Err(e) => {
                unload_all(loaded).await;
                return Err(e);
            }
        };
        before_run(&handle);
        let task = tokio::spawn(engine.run());
        log.info(
            "proxygw started",
            &[
                ("targets", &cfg.targets.len()),
                ("frontends", &cfg.frontends.len()),
            ],
        );
        Ok(Self {
            handle,
            task,
            loaded,
            log,
        })
    }

    /// The engine handle.
    pub fn handle(&self) -> &EngineHandle {
        &self.handle
    }

    /// Orderly shutdown: engine (frontends, targets, dataplane), then plugins in reverse order.
    pub async fn stop(self) {
        self.handle.shutdown().await;
        let _ = self.task.await;
        unload_all(self.loaded).await;
        self.log.info("proxygw stopped", &[]);
    }
}

async fn unload_all(mut loaded: Vec<(String, Box<dyn Loaded>)>) {
    while let Some((_, l)) = loaded.pop() {
        l.unload().await;
    }
}
