//! A queue one task reads and others fill, with the reader's waker.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use super::lock;

/// A queue one task reads and others fill, with the reader's waker: the stream inboxes here and
/// the agent's worker slots. A `std` mutex, held only to push or pop.
pub(crate) struct Mailbox<T> {
    inner: Mutex<MailboxState<T>>,
}

struct MailboxState<T> {
    queue: VecDeque<T>,
    /// Nothing more will be pushed.
    closed: bool,
    waker: Option<Waker>,
}

impl<T> Default for Mailbox<T> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(MailboxState {
                queue: VecDeque::new(),
                closed: false,
                waker: None,
            }),
        }
    }
}

impl<T> Mailbox<T> {
    /// Queues `item` and wakes the reader; dropped if the mailbox is closed.
    pub(crate) fn push(&self, item: T) {
        let waker = {
            let mut b = lock(&self.inner);
            if b.closed {
                return;
            }
            b.queue.push_back(item);
            b.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// No more items: the reader gets `None` once the queue is empty.
    pub(crate) fn close(&self) {
        let waker = {
            let mut b = lock(&self.inner);
            b.closed = true;
            b.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The next item; `None` once the mailbox is closed and empty.
    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut b = lock(&self.inner);
        if let Some(item) = b.queue.pop_front() {
            return Poll::Ready(Some(item));
        }
        if b.closed {
            return Poll::Ready(None);
        }
        match &mut b.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    pub(super) fn try_recv(&self) -> Option<T> {
        lock(&self.inner).queue.pop_front()
    }
}
