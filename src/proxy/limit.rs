//! The bound on connections one shard holds open from its pods' listeners
//! (`--max-connections`, split over the shards): at the bound the accept loops stop taking
//! connections — they wait in the kernel's listen queue, as when fds run out (on io_uring
//! the multishot accept goes on into the engine's accepted queue first, at most
//! `ACC_MAX` = 256 per listener, each holding an fd) — until one closes; nothing already
//! open is touched. Connections continued from a previous process count too. Pure
//! single-shard bookkeeping (no atomics: a shard is one thread).
//!
//! Owns: [`ConnLimit`] (open count, the bound, waking paused accept loops), [`Slot`] (one
//! open connection's share), the default bound from the open-files limit. Not here: the
//! accept loop (`proxy::accept_loop`), the metric's registration (`telemetry::metrics`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// One shard's bound on the connections its accept loops hold open.
#[derive(Debug)]
pub struct ConnLimit {
    open: Cell<usize>,
    max: usize,
    waiting: RefCell<Vec<Waker>>,
}

/// One accepted connection's share of the bound, given back when it drops.
#[derive(Debug)]
pub struct Slot(Rc<ConnLimit>);

impl Drop for Slot {
    fn drop(&mut self) {
        let l = &self.0;
        let was = l.open.get();
        l.open.set(was.saturating_sub(1));
        if was >= l.max {
            for w in l.waiting.borrow_mut().drain(..) {
                w.wake();
            }
        }
    }
}

impl ConnLimit {
    /// A bound of `max` open connections (at least 1).
    pub fn new(max: usize) -> Rc<ConnLimit> {
        Rc::new(ConnLimit {
            open: Cell::new(0),
            max: max.max(1),
            waiting: RefCell::new(Vec::new()),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.get()
    }

    /// The bound.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Ready once there is room for one more connection (registers `cx` until then).
    pub fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.open.get() < self.max {
            return Poll::Ready(());
        }
        let mut w = self.waiting.borrow_mut();
        if !w.iter().any(|x| x.will_wake(cx.waker())) {
            w.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Counts one more open connection (over the bound too: a connection the engine
    /// accepted before the bound was reached is served, not dropped).
    pub fn take(self: &Rc<Self>) -> Slot {
        self.open.set(self.open.get() + 1);
        Slot(self.clone())
    }
}

/// The default bound for the whole process: the open-files limit less a reserve (an eighth,
/// 64 to 4096 fds) for listeners, HBONE connections, the control plane and the engine's
/// accepted queues; at least 64. It bounds what the pods' listeners hold, not every fd: an
/// upstream socket per passthrough, 15006 or HBONE stream still comes on top, and running
/// the fds out then backs off as any failed accept does.
pub fn default_max(nofile: u64) -> usize {
    let reserve = (nofile / 8).clamp(64, 4096);
    usize::try_from(nofile.saturating_sub(reserve))
        .unwrap_or(usize::MAX)
        .max(64)
}

/// One shard's share of a process-wide bound (`total` over `shards`, rounded up).
pub fn per_shard(total: usize, shards: usize) -> usize {
    total.div_ceil(shards.max(1)).max(1)
}

#[cfg(test)]
#[path = "limit_tests.rs"]
mod tests;
