//! Engine state machines against the in-memory dataplane, on tokio's paused clock.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use super::*;
use crate::dataplane::memory::MemoryDataplane;
use crate::plugins::{BoxFuture, FrontendCtx, PluginDef, Registry};

/// Scripted handler behaviour; every handler call is logged into the dataplane's call log, so one list shows
/// the order of kernel and handler steps.
#[derive(Default)]
struct Knobs {
    warm: VecDeque<Result<(), String>>,
    drain: VecDeque<Result<(), String>>,
    start: VecDeque<Result<(), String>>,
    warm_delay: Duration,
    wakers: Vec<Waker>,
    exits: Vec<ExitNotifier>,
}

struct TestTarget {
    knobs: Arc<Mutex<Knobs>>,
    dp: MemoryDataplane,
}

impl TestTarget {
    fn note(&self, s: &str) {
        self.dp.state.lock().unwrap().calls.push(s.into());
    }
}

impl TargetHandler for TestTarget {
    fn warm(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.note("handler warm");
            let delay = self.knobs.lock().unwrap().warm_delay;
            tokio::time::sleep(delay).await;
            self.knobs
                .lock()
                .unwrap()
                .warm
                .pop_front()
                .unwrap_or(Ok(()))
        })
    }
    fn drain(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.note("handler drain");
            self.knobs
                .lock()
                .unwrap()
                .drain
                .pop_front()
                .unwrap_or(Ok(()))
        })
    }
    fn close(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.note("handler close");
            Ok(())
        })
    }
}

struct TestFrontend {
    knobs: Arc<Mutex<Knobs>>,
    dp: MemoryDataplane,
}

impl FrontendHandler for TestFrontend {
    fn start(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.knobs
                .lock()
                .unwrap()
                .start
                .pop_front()
                .unwrap_or(Ok(()))
        })
    }
    fn stop(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
    fn close(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.dp
                .state
                .lock()
                .unwrap()
                .calls
                .push("frontend close".into());
            Ok(())
        })
    }
}

const CONFIG: &str = "
version: v1
log: {output: stderr}
plugins: {}
targets:
  - name: backend
    kind: test:t
    idle_timeout: 10s
    endpoints:
      - {name: http, protocol: tcp, address: 10.0.1.2:8080}
  - name: other
    kind: test:t
    idle_timeout: 1h
    endpoints:
      - {name: b, protocol: tcp, address: 10.0.1.3:80}
      - {name: a, protocol: udp, address: 10.0.1.3:53}
frontends:
  - {name: web, kind: test:f, protocol: tcp, listen: 0.0.0.0:80, flow_timeout: 1m, target: backend:http}
  - {name: dns, kind: test:f, protocol: udp, listen: 10.0.0.1:53, flow_timeout: 1m, target: other:a}
";

struct Harness {
    h: EngineHandle,
    dp: MemoryDataplane,
    knobs: Arc<Mutex<Knobs>>,
    task: tokio::task::JoinHandle<()>,
}

impl Harness {
    async fn new() -> Self {
        Self::with_dp(MemoryDataplane::default()).await
    }

    async fn with_dp(dp: MemoryDataplane) -> Self {
        let knobs: Arc<Mutex<Knobs>> = Arc::default();
        let (k1, d1, k2, d2) = (knobs.clone(), dp.clone(), knobs.clone(), dp.clone());
        let def = PluginDef {
            source: "test",
            schema: "{}",
            frontends: vec![(
                "f",
                Arc::new(move |c: &FrontendCtx, _: &Map<String, Value>| {
                    k1.lock().unwrap().wakers.push(c.waker.clone());
                    Ok(Arc::new(TestFrontend {
                        knobs: k1.clone(),
                        dp: d1.clone(),
                    }) as Arc<dyn FrontendHandler>)
                }),
            )],
            targets: vec![(
                "t",
                Arc::new(move |c: &TargetCtx, _: &Map<String, Value>| {
                    k2.lock().unwrap().exits.push(c.exited.clone());
                    Ok(Arc::new(TestTarget {
                        knobs: k2.clone(),
                        dp: d2.clone(),
                    }) as Arc<dyn TargetHandler>)
                }),
            )],
            on_load: None,
        };
        let reg = Registry::build(&[("test".into(), "test".into())], vec![def]).unwrap();
        let cfg = crate::config::load_str(CONFIG).unwrap();
        let (h, inbox) = channel();
        let engine = Engine::build(&cfg, &reg, dp.clone(), inbox, Logger::discard())
            .await
            .unwrap();
        let task = tokio::spawn(engine.run());
        let me = Self { h, dp, knobs, task };
        me.settle().await;
        me
    }

    /// Lets spawned handler tasks and the engine run to quiescence without moving the paused clock much.
    async fn settle(&self) {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        let _ = self.h.status().await;
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    async fn target(&self, name: &str) -> TargetStatus {
        self.h
            .status()
            .await
            .unwrap()
            .targets
            .into_iter()
            .find(|t| t.name == name)
            .unwrap()
    }

    async fn frontend(&self, name: &str) -> FrontendStatus {
        self.h
            .status()
            .await
            .unwrap()
            .frontends
            .into_iter()
            .find(|t| t.name == name)
            .unwrap()
    }

    fn wake(&self) {
        self.knobs.lock().unwrap().wakers[0].wake(Some("192.0.2.7:40000".parse().unwrap()));
    }

    fn calls(&self) -> Vec<String> {
        self.dp.calls()
    }

    fn clear_calls(&self) {
        self.dp.state.lock().unwrap().calls.clear();
    }

    async fn flow(&self, ev: FlowEvent) {
        assert!(self.h.flow_sink().send(ev).await);
        self.settle().await;
    }
}

fn web_flow(port: u16) -> Flow {
    Flow {
        protocol: crate::config::Protocol::Tcp,
        orig_src: format!("192.0.2.7:{port}").parse().unwrap(),
        orig_dst: "10.0.0.1:80".parse().unwrap(),
        reply_src: "10.0.1.2:8080".parse().unwrap(),
    }
}

async fn advance(d: Duration) {
    tokio::time::sleep(d).await;
}

#[tokio::test(start_paused = true)]
async fn builds_groups_and_starts_frontends() {
    let h = Harness::new().await;
    assert_eq!(
        h.calls()[..2],
        ["add backend 1".to_string(), "add other 1".to_string()]
    );
    let s = h.h.status().await.unwrap();
    assert!(!s.closed);
    assert_eq!(
        s.targets
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["backend", "other"]
    );
    assert_eq!(
        s.targets[1]
            .endpoints
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(s.targets[0].state, "inactive");
    assert_eq!(s.frontends[0].name, "dns");
    assert_eq!(s.frontends[0].proxyaddress, "10.0.1.3:53");
    assert_eq!(s.frontends[1].state, "running");
    assert_eq!(s.frontends[1].target_name, "backend");
    assert_eq!(s.frontends[1].endpoint_name, "http");
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn warm_signals_coalesce_and_dnat_goes_on_after_the_handler() {
    let h = Harness::new().await;
    h.knobs.lock().unwrap().warm_delay = Duration::from_secs(2);
    h.clear_calls();
    for _ in 0..5 {
        h.wake();
    }
    h.settle().await;
    assert_eq!(h.target("backend").await.state, "warming");
    h.wake();
    advance(Duration::from_secs(3)).await;
    h.settle().await;
    assert_eq!(h.target("backend").await.state, "active");
    assert_eq!(
        h.calls(),
        ["handler warm", "enable backend", "flush backend udp"]
    );
    assert!(h.dp.is_enabled("backend"));
    assert!(!h.dp.is_enabled("other"));
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn idle_drain_disables_dnat_before_the_handler_drains() {
    let h = Harness::new().await;
    h.wake();
    h.settle().await;
    assert_eq!(h.target("backend").await.state, "active");
    h.clear_calls();
    advance(Duration::from_secs(9)).await;
    h.settle().await;
    assert_eq!(h.target("backend").await.state, "active");
    advance(Duration::from_millis(1100)).await;
    h.settle().await;
    assert_eq!(h.target("backend").await.state, "inactive");
    assert_eq!(
        h.calls(),
        ["disable backend", "flush backend", "handler drain"]
    );
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn open_flows_keep_a_target_warm_and_idle_counts_from_the_last_close() {
    let h = Harness::new().await;
    h.wake();
    h.settle().await;
    h.flow(FlowEvent::New(web_flow(1000))).await;
    h.flow(FlowEvent::New(web_flow(1001))).await;
    advance(Duration::from_secs(60)).await;
    h.settle().await;
    assert_eq!(h.target("backend").await.state, "active");
    h.flow(FlowEvent::Destroy(web_flow(1000))).await;
    advance(Duration::from_secs(30)).await;
    h.settle().await;
    assert_eq!(
        h.target("backend").await.state,
        "active",
        "one flow is still open"
    );
    h.flow(FlowEvent::Destroy(web_flow(1001))).await;
    advance(Duration::from_secs(9)).await;
    h.settle().await;
    assert_eq!(h.target("backend").await.state, "active");
    advance(Duration::from_millis(1100)).await;
    h.settle().await;
    assert_eq!(h.target("backend").await.state, "inactive");
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn flows_of_other_nat_users_to_the_same_backend_do_not_count() {
    let h = Harness::new().await;
    h.wake();
    h.settle().await;
    let mut foreign = web_flow(1000);
    foreign.orig_dst = "172.17.0.1:9999".parse().unwrap();
    h.flow(FlowEvent::New(foreign)).await;
    advance(Duration::from_millis(10_100)).await;
    h.settle().await;
    assert_eq!(h.target("backend").await.state, "inactive");
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn warm_resets_the_idle_clock() {
    // Spec §12.3: a target warmed after a long cold period must not be drained at once.
    let h = Harness::new().await;
    advance(Duration::from_secs(3600)).await;
    h.wake();
    h.settle().await;
    advance(Duration::from_secs(1)).await;
    h.settle().await;
    assert_eq!(h.target("backend").await.state, "active");
    advance(Duration::from_secs(8)).await;
    h.wake();
    h.settle().await;
    advance(Duration::from_secs(8)).await;
    h.settle().await;
    assert_eq!(
        h.target("backend").await.state,
        "active",
        "the second wake restarted the clock"
    );
    advance(Duration::from_secs(3)).await;
    h.settle().await;
    assert_eq!(h.target("backend").await.state, "inactive");
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn enable_failure_rolls_back_instead_of_active_without_dnat() {
    let h = Harness::new().await;
    h.dp.fail_enable(1);
    h.clear_calls();
    h.wake();
    h.settle().await;
    let t = h.target("backend").await;
    assert_eq!(t.state, "inactive");
    assert_eq!(
        t.last_error,
        "failed to enable DNAT: injected enable failure"
    );
    assert_eq!(
        h.calls(),
        ["handler warm", "enable backend failed", "handler drain"]
    );
    // A failed start backs off: a wake right after is held, and honoured when the backoff ends.
    h.wake();
    h.settle().await;
    assert_eq!(h.target("backend").await.state, "inactive");
    advance(BACKOFF_BASE).await;
    h.settle().await;
    let t = h.target("backend").await;
    assert_eq!((t.state.as_str(), t.last_error.as_str()), ("active", ""));
    let w = t.wakes.unwrap();
    assert_eq!((w.started, w.failed_starts, w.deferred_backoff), (2, 1, 1));
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn disable_failure_keeps_the_backend_and_retries() {
    let h = Harness::new().await;
    h.wake();
    h.settle().await;
    h.dp.fail_disable(1);
    h.clear_calls();
    advance(Duration::from_millis(10_100)).await;
    h.settle().await;
    let t = h.target("backend").await;
    assert_eq!(t.state, "active");
    assert_eq!(
        t.last_error,
        "failed to disable DNAT: injected disable failure"
    );
    assert_eq!(
        h.calls(),
        ["disable backend failed"],
        "the handler must not drain while DNAT is on"
    );
    advance(DISABLE_RETRY + Duration::from_millis(100)).await;
    h.settle().await;
    let t = h.target("backend").await;
    assert_eq!((t.state.as_str(), t.last_error.as_str()), ("inactive", ""));
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn handler_errors_are_kept_as_last_error_and_cleared_on_the_next_attempt() {
    let h = Harness::new().await;
    h.knobs.lock().unwrap().warm.push_back(Err("boom".into()));
    h.wake();
    h.settle().await;
    let t = h.target("backend").await;
    assert_eq!(
        (t.state.as_str(), t.last_error.as_str()),
        ("inactive", "boom")
    );
    h.knobs.lock().unwrap().warm_delay = Duration::from_secs(1);
    advance(BACKOFF_BASE).await;
    h.wake();
    h.settle().await;
    let t = h.target("backend").await;
    assert_eq!((t.state.as_str(), t.last_error.as_str()), ("warming", ""));
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn drain_failure_puts_dnat_back() {
    let h = Harness::new().await;
    h.wake();
    h.settle().await;
    h.knobs.lock().unwrap().drain.push_back(Err("stuck".into()));
    assert_eq!(
        h.h.request(Request::Drain("backend".into())).await,
        Ok(Reply::Done)
    );
    h.settle().await;
    let t = h.target("backend").await;
    assert_eq!(
        (t.state.as_str(), t.last_error.as_str()),
        ("active", "stuck")
    );
    assert!(h.dp.is_enabled("backend"));
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn ctl_requests_and_their_errors() {
    let h = Harness::new().await;
    assert_eq!(
        h.h.request(Request::Warm("nope".into())).await,
        Err("target \"nope\": target not registered".into())
    );
    assert_eq!(
        h.h.request(Request::Drain("backend".into())).await,
        Ok(Reply::Done),
        "inactive: no-op"
    );
    h.knobs.lock().unwrap().warm_delay = Duration::from_secs(5);
    assert_eq!(
        h.h.request(Request::Warm("backend".into())).await,
        Ok(Reply::Done)
    );
    assert!(h
        .h
        .request(Request::Drain("backend".into()))
        .await
        .unwrap_err()
        .contains("is warming"));
    advance(Duration::from_secs(6)).await;
    h.settle().await;
    assert_eq!(h.target("backend").await.state, "active");
    assert_eq!(
        h.h.request(Request::Drain("backend".into())).await,
        Ok(Reply::Done)
    );
    h.settle().await;
    assert_eq!(h.target("backend").await.state, "inactive");
    assert_eq!(
        h.h.request(Request::Stop("web".into())).await,
        Ok(Reply::Done)
    );
    h.settle().await;
    assert_eq!(h.frontend("web").await.state, "stopped");
    assert_eq!(
        h.h.request(Request::Start("web".into())).await,
        Ok(Reply::Done)
    );
    h.settle().await;
    assert_eq!(h.frontend("web").await.state, "running");
    assert!(h
        .h
        .request(Request::Start("x".into()))
        .await
        .unwrap_err()
        .contains("frontend not registered"));
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn failed_frontend_start_can_be_retried() {
    // Spec §12.5: the original left the frontend stuck in "stopping".
    let knobs_first = MemoryDataplane::default();
    let h = Harness::with_dp(knobs_first).await;
    h.h.request(Request::Stop("web".into())).await.unwrap();
    h.settle().await;
    h.knobs
        .lock()
        .unwrap()
        .start
        .push_back(Err("address in use".into()));
    h.h.request(Request::Start("web".into())).await.unwrap();
    h.settle().await;
    let f = h.frontend("web").await;
    assert_eq!(
        (f.state.as_str(), f.last_error.as_str()),
        ("stopped", "address in use")
    );
    h.h.request(Request::Start("web".into())).await.unwrap();
    h.settle().await;
    let f = h.frontend("web").await;
    assert_eq!((f.state.as_str(), f.last_error.as_str()), ("running", ""));
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_wake_while_draining_warms_again_afterwards() {
    let h = Harness::new().await;
    h.wake();
    h.settle().await;
    h.clear_calls();
    h.h.request(Request::Drain("backend".into())).await.unwrap();
    h.wake();
    h.settle().await;
    advance(Duration::from_millis(10)).await;
    h.settle().await;
    assert_eq!(h.target("backend").await.state, "active");
    assert_eq!(
        h.calls(),
        [
            "disable backend",
            "flush backend",
            "handler drain",
            "handler warm",
            "enable backend",
            "flush backend udp"
        ]
    );
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn backend_exit_turns_dnat_off() {
    let h = Harness::new().await;
    h.wake();
    h.settle().await;
    h.knobs.lock().unwrap().exits[0].exited("exit code 3".into());
    h.settle().await;
    let t = h.target("backend").await;
    assert_eq!(t.state, "inactive");
    assert_eq!(t.last_error, "backend exited: exit code 3");
    assert!(!h.dp.is_enabled("backend"));
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn restart_rebuilds_from_live_flows() {
    let dp = MemoryDataplane::default();
    dp.state.lock().unwrap().flows = vec![web_flow(5000)];
    let h = Harness::with_dp(dp).await;
    assert_eq!(h.target("backend").await.state, "active");
    assert_eq!(h.target("other").await.state, "inactive");
    advance(Duration::from_secs(60)).await;
    h.settle().await;
    assert_eq!(
        h.target("backend").await.state,
        "active",
        "the live flow keeps it warm"
    );
    h.flow(FlowEvent::Resync(vec![])).await;
    advance(Duration::from_millis(10_100)).await;
    h.settle().await;
    assert_eq!(h.target("backend").await.state, "inactive");
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_frontends_then_targets_then_the_dataplane() {
    let h = Harness::new().await;
    h.wake();
    h.settle().await;
    h.clear_calls();
    h.h.shutdown().await;
    assert_eq!(
        h.calls(),
        [
            "frontend close",
            "frontend close",
            "disable backend",
            "flush backend",
            "handler close",
            "disable other",
            "flush other",
            "handler close",
            "close"
        ]
    );
    h.task.await.unwrap();
    assert_eq!(h.h.status().await.unwrap_err(), "closed");
    assert_eq!(
        h.h.request(Request::Warm("backend".into()))
            .await
            .unwrap_err(),
        "closed"
    );
}
