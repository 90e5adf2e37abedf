//! What the rest of proxygw holds of the engine: the states it reports, the control requests it
//! answers, and the handles through which plugins, ctl and the daemon reach its one event queue
//! ([`channel`]). The engine's own logic is in [`crate::engine`], which depends on this module and
//! on the plugins; this module depends on neither, so plugins can use it without a cycle.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::dataplane::{BoxFuture, FlowConsumer, FlowEvent, FlowSink, HealSink};
use crate::protocol::StatusResponse;

/// Events queued before the engine applies back-pressure to ctl and handler results.
pub const EVENT_QUEUE: usize = 4096;

/// Target lifecycle (spec §5.2); the numbers are the original's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetState {
    /// 1: cold, DNAT off.
    Inactive = 1,
    /// 2: warm, DNAT on.
    Active = 2,
    /// 3: handler warming, DNAT off.
    Warming = 3,
    /// 4: DNAT off, handler draining.
    Draining = 4,
    /// 6: shut down.
    Closed = 6,
}

impl TargetState {
    /// The status string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inactive => "inactive",
            Self::Active => "active",
            Self::Warming => "warming",
            Self::Draining => "draining",
            Self::Closed => "closed",
        }
    }
}

/// Frontend lifecycle (spec §5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontendState {
    /// 1.
    Stopped = 1,
    /// 2.
    Starting = 2,
    /// 3.
    Running = 3,
    /// 4.
    Stopping = 4,
    /// 5.
    Closed = 5,
}

impl FrontendState {
    /// The status string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stopped => "stopped",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Closed => "closed",
        }
    }
}

/// Who asked for a warm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WarmOrigin {
    /// A frontend, with the client's address when the kind knows it.
    Frontend {
        /// Frontend name.
        name: String,
        /// Client address.
        source: Option<SocketAddr>,
    },
    /// `proxygwctl warm`.
    Ctl,
    /// Rebuilt after a restart from live conntrack flows.
    Restart,
    /// A wake held back by a failed start's backoff, now due.
    Backoff,
}

impl std::fmt::Display for WarmOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Frontend {
                name,
                source: Some(s),
            } => write!(f, "frontend {name} from {s}"),
            Self::Frontend { name, source: None } => write!(f, "frontend {name}"),
            Self::Ctl => f.write_str("ctl"),
            Self::Restart => f.write_str("restart"),
            Self::Backoff => f.write_str("backoff ended"),
        }
    }
}

/// A control request (the served ctl methods).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Status snapshot.
    Status,
    /// Warm a target.
    Warm(String),
    /// Drain a target now.
    Drain(String),
    /// Start a frontend.
    Start(String),
    /// Stop a frontend.
    Stop(String),
    /// Re-read the config and apply what changed (targets and frontends; plugins and log need a restart).
    Reload,
}

/// Loads and checks the config again for [`Request::Reload`] (the daemon reads its `--config` file).
pub type Reloader = Arc<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// Reply to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Status.
    Status(StatusResponse),
    /// Accepted.
    Done,
}

pub(crate) enum Op {
    Warm,
    Drain,
    Start,
    Stop,
}

pub(crate) enum Event {
    Wake {
        target: String,
        origin: WarmOrigin,
    },
    Exited {
        target: String,
        reason: String,
    },
    /// A frontend refused a client's wake (not in `wake_allow`).
    Refused {
        target: String,
    },
    Done {
        name: String,
        epoch: u64,
        op: Op,
        result: Result<(), String>,
    },
    Flow(FlowEvent),
    /// Compare the dataplane with the kernel and re-apply what is missing.
    Heal,
    Ctl(Request, oneshot::Sender<Result<Reply, String>>),
    Shutdown(oneshot::Sender<()>),
}

/// Sends warm signals for one target; cheap to clone. A full queue drops the signal: the engine is already
/// flooded with warm signals, which coalesce anyway.
#[derive(Clone, Debug)]
pub struct Waker {
    pub(crate) tx: mpsc::Sender<Event>,
    pub(crate) target: String,
    pub(crate) frontend: String,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Event")
    }
}

impl Waker {
    /// Counts a wake the frontend refused because the client is not in its `wake_allow` (it logs the source).
    pub fn refused(&self) {
        let _ = self.tx.try_send(Event::Refused {
            target: self.target.clone(),
        });
    }

    /// Signals warm; `source` is the client address, logged with the wake.
    pub fn wake(&self, source: Option<SocketAddr>) {
        let _ = self.tx.try_send(Event::Wake {
            target: self.target.clone(),
            origin: WarmOrigin::Frontend {
                name: self.frontend.clone(),
                source,
            },
        });
    }
}

/// A waker whose engine is gone (constructor tests).
#[cfg(test)]
pub(crate) fn test_waker() -> Waker {
    let (tx, _) = mpsc::channel(1);
    Waker {
        tx,
        target: "t".into(),
        frontend: "f".into(),
    }
}

/// Tells the engine a target's backend stopped by itself (e.g. the static:cmd child exited).
#[derive(Clone, Debug)]
pub struct ExitNotifier {
    pub(crate) tx: mpsc::Sender<Event>,
    pub(crate) target: String,
}

impl ExitNotifier {
    /// Reports the exit.
    pub fn exited(&self, reason: String) {
        let tx = self.tx.clone();
        let target = self.target.clone();
        tokio::spawn(async move {
            let _ = tx.send(Event::Exited { target, reason }).await;
        });
    }
}

/// The handle ctl and the daemon use; cheap to clone.
#[derive(Clone, Debug)]
pub struct EngineHandle {
    pub(crate) tx: mpsc::Sender<Event>,
}

impl EngineHandle {
    /// Sends a request and waits for the reply; `closed` once the engine has shut down.
    pub async fn request(&self, req: Request) -> Result<Reply, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Event::Ctl(req, tx))
            .await
            .map_err(|_| "closed".to_string())?;
        rx.await.map_err(|_| "closed".to_string())?
    }

    /// Status snapshot.
    pub async fn status(&self) -> Result<StatusResponse, String> {
        match self.request(Request::Status).await? {
            Reply::Status(s) => Ok(s),
            Reply::Done => Err("unexpected reply".into()),
        }
    }

    /// A sender of conntrack events into the engine.
    pub fn flow_sink(&self) -> FlowSink {
        FlowSink::new(Arc::new(FlowEvents(self.tx.clone())))
    }

    /// A sender of heal requests (the nftables monitor).
    pub fn heal_sink(&self) -> HealSink {
        let tx = self.tx.clone();
        HealSink::new(move || tx.blocking_send(Event::Heal).is_ok())
    }

    /// Shuts the engine down (frontends, then targets, then the dataplane) and waits until it is done.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Event::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// The engine's side of a [`FlowSink`]: events join the one event queue, so flows keep their
/// order relative to everything else the engine hears.
pub(crate) struct FlowEvents(pub(crate) mpsc::Sender<Event>);

impl FlowConsumer for FlowEvents {
    fn send(&self, ev: FlowEvent) -> BoxFuture<'_, bool> {
        Box::pin(async move { self.0.send(Event::Flow(ev)).await.is_ok() })
    }

    fn blocking_send(&self, ev: FlowEvent) -> bool {
        self.0.blocking_send(Event::Flow(ev)).is_ok()
    }
}

/// Creates the event channel and the handle before the engine exists, so plugins can load first (OnLoad).
pub fn channel() -> (EngineHandle, EngineInbox) {
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    (EngineHandle { tx: tx.clone() }, EngineInbox { tx, rx })
}

/// The receiving half made by [`channel`].
pub struct EngineInbox {
    pub(crate) tx: mpsc::Sender<Event>,
    pub(crate) rx: mpsc::Receiver<Event>,
}
