//! Forwarding the signals this process receives to a child's process group, with escalation to SIGKILL.

use std::io;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

use crate::child::ProcessGroup;

/// The signals a [`SignalForwarder`] relays to the child's group.
pub const FORWARDED_SIGNALS: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Events a caller can not keep up with are dropped beyond this many (forwarding itself never waits).
pub const EVENT_BUFFER: usize = 32;

/// Why the forwarder sent SIGKILL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escalation {
    /// A second SIGINT or SIGTERM arrived.
    SecondSignal(Signal),
    /// The grace period after the first SIGINT/SIGTERM ran out.
    GraceElapsed,
}

/// Something the forwarder did, for the caller to log.
#[derive(Debug)]
pub enum ForwardEvent {
    /// `signal` arrived and was relayed to the group (`result` says whether `killpg` worked).
    Forwarded {
        /// The signal received and relayed.
        signal: Signal,
        /// Outcome of delivering it.
        result: io::Result<()>,
    },
    /// SIGKILL was sent to the group.
    Escalated {
        /// What triggered it.
        reason: Escalation,
        /// Outcome of delivering it.
        result: io::Result<()>,
    },
}

/// A background task relaying SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to a process group.
///
/// The first SIGINT/SIGTERM is forwarded and marks a stop request (see [`SignalForwarder::stop_requested`]);
/// a second one, or `grace` passing after the first, sends SIGKILL to the group. Installing it replaces the
/// default disposition of those signals for the rest of the process's life (tokio never restores them).
/// Dropping it ends the task.
pub struct SignalForwarder {
    events: mpsc::Receiver<ForwardEvent>,
    stop: watch::Receiver<Option<Signal>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for SignalForwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalForwarder")
            .field("stop", &*self.stop.borrow())
            .finish()
    }
}

impl SignalForwarder {
    /// Install the handlers and start relaying to `group`. Must be called inside a tokio runtime.
    pub fn start(group: ProcessGroup, grace: Duration) -> io::Result<Self> {
        let handlers = Handlers {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
            quit: signal(SignalKind::quit())?,
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
        };
        let (event_tx, events) = mpsc::channel(EVENT_BUFFER);
        let (stop_tx, stop) = watch::channel(None);
        let task = tokio::spawn(run(handlers, group, grace, event_tx, stop_tx));
        Ok(SignalForwarder { events, stop, task })
    }

    /// The next thing the forwarder did; `None` once the task has ended.
    pub async fn next_event(&mut self) -> Option<ForwardEvent> {
        self.events.recv().await
    }

    /// Resolves with the first SIGINT/SIGTERM received (at once if one already arrived).
    /// `None` if the forwarder ended without one.
    pub async fn stop_requested(&mut self) -> Option<Signal> {
        match self.stop.wait_for(Option::is_some).await {
            Ok(sig) => *sig,
            Err(_) => None,
        }
    }

    /// The first SIGINT/SIGTERM received so far, if any.
    pub fn stop_signal(&self) -> Option<Signal> {
        *self.stop.borrow()
    }
}

impl Drop for SignalForwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Handlers {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Handlers {
    /// The next signal from any handler; `None` only if the runtime shut the streams.
    async fn recv(&mut self) -> Option<Signal> {
        tokio::select! {
            r = self.int.recv() => r.map(|_| Signal::SIGINT),
            r = self.term.recv() => r.map(|_| Signal::SIGTERM),
            r = self.hup.recv() => r.map(|_| Signal::SIGHUP),
            r = self.quit.recv() => r.map(|_| Signal::SIGQUIT),
            r = self.usr1.recv() => r.map(|_| Signal::SIGUSR1),
            r = self.usr2.recv() => r.map(|_| Signal::SIGUSR2),
        }
    }
}

async fn run(
    mut handlers: Handlers,
    group: ProcessGroup,
    grace: Duration,
    events: mpsc::Sender<ForwardEvent>,
    stop: watch::Sender<Option<Signal>>,
) {
    let mut kill_at: Option<Instant> = None;
    let mut escalated = false;
    loop {
        let grace_timer = async {
            match kill_at {
                Some(at) if !escalated => sleep_until(at).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            sig = handlers.recv() => {
                let Some(sig) = sig else { return };
                let is_stop = matches!(sig, Signal::SIGINT | Signal::SIGTERM);
                if is_stop && kill_at.is_some() && !escalated {
                    escalated = true;
                    let result = group.signal(Signal::SIGKILL);
                    let _ = events.try_send(ForwardEvent::Escalated { reason: Escalation::SecondSignal(sig), result });
                    continue;
                }
                let result = group.signal(sig);
                let _ = events.try_send(ForwardEvent::Forwarded { signal: sig, result });
                if is_stop && kill_at.is_none() {
                    kill_at = Some(Instant::now() + grace);
                    stop.send_replace(Some(sig));
                }
            }
            _ = grace_timer => {
                escalated = true;
                let result = group.signal(Signal::SIGKILL);
                let _ = events.try_send(ForwardEvent::Escalated { reason: Escalation::GraceElapsed, result });
            }
        }
    }
}

/// The text Go prints for a signal (`os.Signal.String()`), for cwproxy's compatible stderr messages such as
/// `forwarding signal interrupt to inspector child`. Falls back to the C name (`SIGPIPE`).
pub fn go_signal_name(sig: Signal) -> &'static str {
    match sig {
        Signal::SIGINT => "interrupt",
        Signal::SIGTERM => "terminated",
        Signal::SIGHUP => "hangup",
        Signal::SIGQUIT => "quit",
        Signal::SIGUSR1 => "user defined signal 1",
        Signal::SIGUSR2 => "user defined signal 2",
        Signal::SIGKILL => "killed",
        other => other.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_names_for_forwarded_signals() {
        let names: Vec<&str> = FORWARDED_SIGNALS
            .iter()
            .map(|s| go_signal_name(*s))
            .collect();
        assert_eq!(
            names,
            [
                "interrupt",
                "terminated",
                "hangup",
                "quit",
                "user defined signal 1",
                "user defined signal 2"
            ]
        );
        assert_eq!(go_signal_name(Signal::SIGPIPE), "SIGPIPE");
    }
}
