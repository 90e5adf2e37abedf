//! Child-process supervision shared by cwproxy's inspector mode and the gateway's `static:cmd` target.
//!
//! - [`Child`]: start a command (resolved via `PATH`) in its own process group, signal the whole group,
//!   wait for it, and stop it (first signal, grace, SIGKILL) without leaving orphans.
//! - [`SignalForwarder`]: relay SIGINT/SIGTERM/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2 to the child's group, escalating to
//!   SIGKILL on a second stop signal or after a grace period, and tell the caller a stop was requested.
//! - [`listening_ports`] / [`wait_for_listen_port`]: find the TCP ports the child's whole process tree listens on
//!   (Linux: `/proc` plus sock_diag netlink), and choose the address to proxy to.
//! - [`wait_tcp_ready`]: readiness by TCP connect.
//!
//! Supervision needs Unix. Port discovery is implemented and tested on Linux (`/proc` + sock_diag); macOS and
//! Windows go through the `listeners` crate and are compile-checked only; see README.md.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::ffi::{OsStr, OsString};
//! use std::time::Duration;
//! use process::{wait_for_listen_port, wait_tcp_ready, Child, DetectOptions, SignalForwarder, SpawnOptions, Stdio};
//!
//! // `cwproxy python3 -m http.server 0`: start the app, forward our signals to it, find its port.
//! let args: Vec<OsString> = ["-m", "http.server", "0", "--bind", "127.0.0.1"].map(OsString::from).to_vec();
//! let opts = SpawnOptions { stdout: Stdio::Null, stderr: Stdio::Null, ..SpawnOptions::default() };
//! let mut child = Child::spawn(OsStr::new("python3"), &args, &opts)?;
//! let _signals = SignalForwarder::start(child.group(), Duration::from_secs(10))?;
//! let detect = DetectOptions { exclude_port: Some(8081), ..DetectOptions::default() };
//! let upstream = wait_for_listen_port(&mut child, &detect).await?;
//! wait_tcp_ready(upstream, Duration::from_secs(5)).await?;
//! assert!(upstream.ip().is_loopback());
//! // ... proxy to `upstream` until `child.wait()` (or `wait_group()` for a launcher) returns, then exit
//! // with `status.exit_code_for_parent()`. Here we stop it ourselves:
//! let status = child.stop(Duration::from_secs(10)).await?;
//! assert_eq!(status.exit_code_for_parent(), 143); // http.server dies of SIGTERM: 128 + 15
//! # Ok(())
//! # }
//! ```
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
pub use signals::{
    go_signal_name, Escalation, ForwardEvent, SignalForwarder, EVENT_BUFFER, FORWARDED_SIGNALS,
};
