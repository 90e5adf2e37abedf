//! Watches nftables for changes made by anyone (the NFNLGRP_NFTABLES netlink group: every committed
//! transaction, ours included) and asks the engine to compare and heal; a periodic request is the backstop
//! for lost events. The comparison itself is [`super::Dataplane::heal`], run by the engine that owns the table.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::DataplaneError;
use super::HealSink;
use crate::log::Logger;

/// NFNLGRP_NFTABLES.
const GROUP_NFTABLES: u32 = 7;
/// Events arriving closer together than this are one change (a transaction sends one message per object).
pub const SETTLE: Duration = Duration::from_millis(50);
/// How often the state is compared even without an event.
pub const BACKSTOP_PERIOD: Duration = Duration::from_secs(5);
/// Longest a stream of events may defer the comparison (someone changing nft without pause).
const MAX_SETTLE: Duration = Duration::from_millis(500);

/// The monitor thread; stopped on drop.
pub struct Monitor {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Monitor {
    /// Subscribes now (so a failure surfaces at startup) and starts forwarding heal requests into `sink`.
    pub fn start(sink: HealSink, log: Logger) -> Result<Self, DataplaneError> {
        let s = super::conntrack::open(&[GROUP_NFTABLES])?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("nft-monitor".into())
            .spawn(move || watch(s, sink, log, flag))
            .map_err(|e| DataplaneError::Kernel(format!("nft monitor thread: {e}")))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch(s: netlink_sys::Socket, sink: HealSink, log: Logger, stop: Arc<AtomicBool>) {
    // A short read timeout both settles bursts and lets the thread notice `stop`.
    if let Err(e) = nix::sys::socket::setsockopt(
        &std::os::fd::AsFd::as_fd(&s),
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(0, SETTLE.as_micros() as i64),
    ) {
        log.warn("nft monitor: set read timeout", &[("err", &e)]);
    }
    let mut next_check = Instant::now() + BACKSTOP_PERIOD;
    let mut changed = false;
    let mut since = Instant::now();
    let mut buf = vec![0u8; 64 << 10];
    while !stop.load(Ordering::SeqCst) {
        match s.recv(&mut &mut buf[..], 0) {
            Ok(_) => {
                if !changed {
                    (changed, since) = (true, Instant::now());
                }
                if since.elapsed() < MAX_SETTLE {
                    continue;
                }
            }
            // ENOBUFS: events were lost, so something changed.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => changed = true,
            Err(e) if super::read_timed_out(&e) => {}
            Err(e) => {
                log.error("nft monitor socket failed", &[("err", &e)]);
                std::thread::sleep(SETTLE);
            }
        }
        // Quiet for SETTLE: the change (if any) is complete.
        if changed || Instant::now() >= next_check {
            if !sink.blocking_send() {
                return;
            }
            changed = false;
            next_check = Instant::now() + BACKSTOP_PERIOD;
        }
    }
}
