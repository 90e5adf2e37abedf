//! One client connection's timing state, shared by the server's IO wrapper and watchdog and by
//! each request's response body (through [`InFlight`]). Its own module so that the bodies and
//! the server both depend on it rather than on each other.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Timing state of one client connection, shared by its IO wrapper, its requests and its watchdog.
pub(crate) struct ConnState {
    base: Instant,
    in_flight: AtomicUsize,
    /// Nanoseconds after `base` when the connection last became idle.
    idle_since: AtomicU64,
    /// Nanoseconds after `base` when the first byte of the next request head arrived; 0 = none yet.
    head_start: AtomicU64,
    notify: Notify,
}

impl ConnState {
    pub(crate) fn new() -> Self {
        ConnState {
            base: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            // Go applies the header timeout from accept to the first request.
            head_start: AtomicU64::new(1),
            notify: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    pub(crate) fn on_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_start.load(Ordering::Acquire) == 0
        {
            self.head_start.store(self.now(), Ordering::Release);
            self.notify.notify_one();
        }
    }

    /// Resolves when the connection has been idle or stuck in a request head for too long.
    pub(crate) async fn expired(&self, header_timeout: Duration, idle_timeout: Duration) {
        loop {
            let notified = self.notify.notified();
            if self.in_flight.load(Ordering::Acquire) > 0 {
                notified.await;
                continue;
            }
            let head = self.head_start.load(Ordering::Acquire);
            let deadline = if head != 0 {
                self.base + Duration::from_nanos(head) + header_timeout
            } else {
                self.base
                    + Duration::from_nanos(self.idle_since.load(Ordering::Acquire))
                    + idle_timeout
            };
            if Instant::now() >= deadline {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline.into()) => {}
                _ = notified => {}
            }
        }
    }
}

/// Marks a request as in flight on its connection until dropped (with the response body).
pub(crate) struct InFlight(Arc<ConnState>);

impl InFlight {
    pub(crate) fn enter(state: &Arc<ConnState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(state))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let s = &self.0;
        if s.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            s.head_start.store(0, Ordering::Release);
            s.idle_since.store(s.now(), Ordering::Release);
            s.notify.notify_one();
        }
    }
}
