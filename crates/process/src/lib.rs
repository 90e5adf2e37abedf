//! Child-process supervision shared by cwproxy's inspector mode and the gateway's `static:cmd` target.
//!
//! - [`Child`]: start a command (resolved via `PATH`) in its own process group, signal the whole group,
//!   wait for it, and stop it (first signal, grace, SIGKILL) without leaving orphans.
//! - [`SignalForwarder`]: relay SIGINT/SIGTERM/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2 to the child's group, escalating to
//!   SIGKILL on a second stop signal or after a grace period, and tell the caller a stop was requested.
//! - [`listening_ports`] / [`wait_for_listen_port`]: find the TCP ports the child's whole process tree listens on
//!   (Linux, via `/proc`), and choose the address to proxy to.
//! - [`wait_tcp_ready`]: readiness by TCP connect.
//!
//! Supervision needs Unix; port discovery needs Linux (other platforms get `ErrorKind::Unsupported`).
#![cfg_attr(test, allow(clippy::unwrap_used))]

#[cfg(unix)]
mod child;
#[cfg(unix)]
mod detect;
#[cfg(target_os = "linux")]
mod linux;
mod ports;
mod ready;
#[cfg(unix)]
mod signals;
#[cfg(target_os = "linux")]
mod sockdiag;

#[cfg(unix)]
pub use child::{
    Child, ExitStatus, ProcessGroup, SpawnError, SpawnOptions, Stdio, StopError,
    GROUP_WATCH_INTERVAL, KILL_WAIT,
};
#[cfg(unix)]
pub use detect::{wait_for_listen_port, DetectError, DetectOptions};
#[cfg(unix)]
pub use nix::sys::signal::Signal;
pub use ports::{
    connect_addr, listening_ports, Listener, PortWatcher, DEFAULT_DETECT_TIMEOUT,
    DEFAULT_POLL_INTERVAL, MAX_TREE_PIDS, WALK_EVERY,
};
pub use ready::{wait_tcp_ready, ReadyError};
#[cfg(unix)]
pub use signals::{Escalation, ForwardEvent, SignalForwarder, EVENT_BUFFER, FORWARDED_SIGNALS};
