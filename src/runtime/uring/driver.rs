//! One shard's ring: building it, submitting (`push`), waiting (`turn`) and dispatching
//! each completion to the socket operation it belongs to. Lives in a thread-local; only the
//! shard's thread touches it. The rest of the driver is split by concern:
//! - `op`: the [`Op`] enum and the `user_data` encoding (op, slot index, slot generation);
//! - `bufring`: the provided buffer ring and the buffers lent out of it;
//! - `sock`: per-socket state, the slab of slots, register / release / detach;
//! - `recv`, `send`, `accept`: each kind of socket operation, submission and completion;
//! - `ready`: readiness for callers that make a syscall of their own (`splice`).
//!
//! Invariants:
//! - socket handles (`net`) hold a slot index; a slot is freed only when its handle is
//!   gone, its fd is closed and no operation that names it is still in flight, so every
//!   buffer an SQE points at outlives the operation;
//! - a completion is handed to a socket only if its generation is the slot's current one;
//!   one that is not (stale: the slot was freed, maybe reused, since) is counted
//!   (`OpStats::stale`) and reaches no socket, and what it carries that is the shard's (a
//!   ring buffer, an accepted fd) is given back; one whose op is unknown is counted
//!   (`OpStats::unknown`) and dropped the same way. Neither panics.

use std::cell::RefCell;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::{OpStats, UringOpts, count, stats};

#[path = "accept.rs"]
mod accept;
#[path = "bufring.rs"]
mod bufring;
#[path = "op.rs"]
mod op;
#[path = "ready.rs"]
mod ready;
#[path = "recv.rs"]
mod recv;
#[path = "send.rs"]
mod send;
#[path = "sock.rs"]
mod sock;

/// The accepted-connection bound, for `net`'s tests of it.
#[cfg(test)]
pub(crate) use accept::ACC_MAX;
pub(crate) use bufring::RX_SKEW;

use bufring::{BGID, BufRing};
use op::{Op, SlotKey};
use sock::{Sock, Socks};

/// Tries a full submission queue gets before the ring counts as broken (`Driver::push`):
/// the first `SUBMIT_TRIES_TIGHT` back to back, the rest 1 ms apart.
const SUBMIT_TRIES: u32 = 1100;
const SUBMIT_TRIES_TIGHT: u32 = 100;

/// A shard's ring and everything its operations point at.
pub struct Driver {
    ring: IoUring,
    bufs: BufRing,
    socks: Socks,
    /// Private receive buffers already read out, for the next private receive (at most
    /// `recv::PRIVATE_POOL`): an exhausted ring costs no allocation and zero-fill per
    /// receive.
    private_pool: Vec<Box<[u8]>>,
    opts: UringOpts,
    /// This shard's operation counters (`super::op_totals` sums them on scrape).
    ops: std::sync::Arc<OpStats>,
    efd: RawFd,
    efd_buf: Box<[u8; 8]>,
    /// Completions reaped but not dispatched yet: by `dispatch`, or by a `push` that had to
    /// free completion-queue room before the kernel took more submissions.
    cqes: Vec<(u64, i32, u32)>,
    /// Why the ring cannot take submissions any more (see `push`): the executor then ends
    /// the shard, which makes the node proxy fail readiness and exit.
    broken: Option<String>,
    /// `io_uring_enter` failures in a row over `turn`s (0 after one that worked).
    enter_failures: u32,
    /// A stale or unknown completion was logged (once per shard; the counters count all).
    fault_logged: bool,
    /// Multishot receives carry a total byte limit (`recv::with_total_limit`); cleared
    /// when the kernel refuses one (older than the limit).
    recv_limit: bool,
    /// Tests: limited receives carry a field this kernel refuses, as an older kernel
    /// refuses the limit.
    #[cfg(test)]
    pub(super) refuse_limit: bool,
}

thread_local! {
    static DRIVER: RefCell<Option<Driver>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's driver. Panics if the thread runs no uring executor: the
/// engine's socket types exist only inside one.
pub(crate) fn with<R>(f: impl FnOnce(&mut Driver) -> R) -> R {
    DRIVER.with(|d| {
        let mut d = d.borrow_mut();
        let d = d
            .as_mut()
            .expect("io_uring socket used outside a uring shard");
        f(d)
    })
}

/// Like `with`, but does nothing once the driver is gone (handles dropped at teardown).
pub(crate) fn try_with(f: impl FnOnce(&mut Driver)) {
    DRIVER.with(|d| {
        if let Ok(mut d) = d.try_borrow_mut()
            && let Some(d) = d.as_mut()
        {
            f(d)
        }
    })
}

pub(crate) fn install(d: Driver) {
    DRIVER.with(|slot| *slot.borrow_mut() = Some(d));
}

pub(crate) fn uninstall() -> Option<Driver> {
    DRIVER.with(|slot| slot.borrow_mut().take())
}

impl Drop for Driver {
    fn drop(&mut self) {
        super::retire_ops(&self.ops);
    }
}

impl Driver {
    /// Builds the ring and registers the buffer ring.
    pub fn new(opts: &UringOpts) -> io::Result<Driver> {
        let mut b = IoUring::<squeue::Entry, cqueue::Entry>::builder();
        b.setup_cqsize(opts.entries * 4);
        if let Some(idle) = opts.sqpoll_idle_ms {
            b.setup_sqpoll(idle);
        }
        match opts.taskrun {
            super::TaskRun::Default => {}
            super::TaskRun::Coop => {
                b.setup_coop_taskrun().setup_taskrun_flag();
            }
            super::TaskRun::Defer => {
                b.setup_single_issuer()
                    .setup_defer_taskrun()
                    .setup_taskrun_flag();
            }
        }
        let ring = b.build(opts.entries)?;
        let bufs = BufRing::new(opts.buf_count, opts.buf_size as usize)?;
        // SAFETY: the ring mapping and buffers live in `bufs`, dropped after `ring` (field
        // order), which unregisters the group when it closes.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufs.ring as u64,
                opts.buf_count,
                BGID,
                0,
            )?;
        }
        Ok(Driver {
            ring,
            bufs,
            socks: Socks::default(),
            private_pool: Vec::new(),
            opts: opts.clone(),
            ops: super::register_ops(),
            efd: -1,
            efd_buf: Box::new([0; 8]),
            cqes: Vec::with_capacity(256),
            broken: None,
            enter_failures: 0,
            fault_logged: false,
            recv_limit: opts.recv_limit,
            #[cfg(test)]
            refuse_limit: false,
        })
    }

    /// Queues one submission; when the queue is full, submits what is queued first. The
    /// kernel refuses submissions while completions wait to be reaped (EBUSY): they are
    /// reaped here (dispatched by the next `dispatch`) and the submission is tried again.
    /// Bounded: after `SUBMIT_TRIES` tries (the last ones 1 ms apart, about 1 s in all) the
    /// ring is marked broken and the entry dropped — a shard whose ring takes nothing is
    /// ended by its executor (a fatal, visible error), never left spinning.
    fn push(&mut self, e: squeue::Entry) {
        if self.broken.is_some() {
            return;
        }
        let mut last = None;
        for attempt in 0..SUBMIT_TRIES {
            // SAFETY: every pointer in an entry refers to memory owned by a `Sock` slot or
            // the driver, kept until the operation's last completion.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return;
            }
            if let Err(err) = self.ring.submit() {
                last = Some(err);
                let reaped: Vec<_> = self
                    .ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags()))
                    .collect();
                self.cqes.extend(reaped);
            }
            if attempt >= SUBMIT_TRIES_TIGHT {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let why = format!(
            "io_uring takes no submissions: the queue stayed full after {SUBMIT_TRIES} tries ({})",
            last.map_or_else(|| "no error reported".to_string(), |e| e.to_string())
        );
        tracing::error!("{why}: this shard stops");
        self.broken = Some(why);
    }

    /// Cancels the operation whose `user_data` is `target` (its generation included, so a
    /// cancel that reaches the kernel late never hits the slot's next occupant).
    fn cancel(&mut self, target: u64) {
        self.push(
            opcode::AsyncCancel::new(target)
                .build()
                .user_data(SlotKey::DRIVER.user_data(Op::Ignore)),
        );
    }

    /// Closes `fd` on the ring (nobody waits for the result).
    fn close_fd(&mut self, fd: RawFd) {
        self.push(
            opcode::Close::new(types::Fd(fd))
                .build()
                .user_data(SlotKey::DRIVER.user_data(Op::Ignore)),
        );
    }

    /// Why the ring takes no submissions any more, once it does not (see `push`).
    pub(crate) fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Tests: replaces the ring's fd with /dev/null under it (its mappings stay valid), so
    /// that every `io_uring_enter` fails from now on.
    #[cfg(test)]
    pub(crate) fn break_ring(&mut self) {
        use std::os::fd::AsRawFd;
        let null = std::fs::File::open("/dev/null").expect("/dev/null");
        // SAFETY: both fds are open; the ring's fd number now names /dev/null, closed by the
        // ring's drop; the mappings hold the ring's file.
        assert!(unsafe { libc::dup2(null.as_raw_fd(), self.ring.as_raw_fd()) } >= 0);
    }

    /// Arms the read of the eventfd other threads write to wake this shard.
    pub(crate) fn set_eventfd(&mut self, fd: RawFd) {
        self.efd = fd;
        self.arm_eventfd();
    }

    fn arm_eventfd(&mut self) {
        let e = opcode::Read::new(types::Fd(self.efd), self.efd_buf.as_mut_ptr(), 8)
            .build()
            .user_data(SlotKey::DRIVER.user_data(Op::EventFd));
        self.push(e);
    }

    /// Submits what is queued and, with `wait`, blocks until a completion arrives or
    /// `timeout` passes; then dispatches every completion.
    pub(crate) fn turn(&mut self, wait: bool, timeout: Option<Duration>) {
        self.bufs.recycle_later();
        // Completions a `push` reaped already wait in `cqes`: dispatch them now, do not
        // sleep for another.
        let wait = wait && self.cqes.is_empty();
        let res = if wait {
            match timeout {
                Some(t) => {
                    let ts = types::Timespec::from(t);
                    let args = types::SubmitArgs::new().timespec(&ts);
                    self.ring.submitter().submit_with_args(1, &args)
                }
                None => self.ring.submit_and_wait(1),
            }
        } else if !self.ring.submission().is_empty() || self.ring.submission().taskrun() {
            self.ring.submit()
        } else {
            Ok(0)
        };
        match res {
            Err(e)
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                // Logged once; a ring that keeps failing is broken (as in `push`), and the
                // executor then ends the shard instead of spinning on it.
                if self.enter_failures == 0 {
                    tracing::error!("io_uring_enter failed: {e}");
                }
                self.enter_failures += 1;
                // Bounded as `push` is: the first tries back to back, then 1 ms apart (a
                // failing wait returns at once), about 1 s in all.
                if self.enter_failures > SUBMIT_TRIES_TIGHT {
                    std::thread::sleep(Duration::from_millis(1));
                }
                if self.enter_failures >= SUBMIT_TRIES && self.broken.is_none() {
                    let why = format!(
                        "io_uring_enter failed {SUBMIT_TRIES} times in a row, over about 1 s (last: {e})"
                    );
                    tracing::error!("{why}: this shard stops");
                    self.broken = Some(why);
                }
            }
            _ => self.enter_failures = 0,
        }
        self.dispatch();
    }

    fn dispatch(&mut self) {
        loop {
            let mut cqes = std::mem::take(&mut self.cqes);
            cqes.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            if cqes.is_empty() {
                self.cqes = cqes;
                return;
            }
            for &(u, res, flags) in &cqes {
                self.complete(u, res, flags);
            }
            cqes.clear();
            // Completions a `push` reaped meanwhile wait in `self.cqes`: kept for the next
            // round of this loop.
            cqes.append(&mut self.cqes);
            self.cqes = cqes;
        }
    }

    fn complete(&mut self, u: u64, res: i32, flags: u32) {
        let (op, key) = match op::decode(u) {
            Ok(d) => d,
            Err(raw) => return self.on_unknown(u, raw, flags),
        };
        if !op.has_slot() {
            return self.on_own(op, res);
        }
        // The one check a socket's completion costs beyond the dispatch itself.
        if !self.socks.is_current(key) {
            return self.on_stale(op, key, res, flags);
        }
        let idx = key.idx();
        match op {
            Op::Recv => self.on_recv(idx, res, flags),
            Op::RecvPrivate => self.on_private_recv(idx, res),
            Op::RecvPoll => self.on_recv_poll(idx, res),
            Op::Send => self.on_send(idx, res, flags, false),
            Op::SendZc => self.on_send(idx, res, flags, true),
            Op::Shutdown => self.on_shutdown(idx, res),
            Op::Connect => self.on_connect(idx, res),
            Op::Accept => self.on_accept(idx, res, flags),
            Op::ReadyIn => self.on_ready(idx, res, false),
            Op::ReadyOut => self.on_ready(idx, res, true),
            // Name no slot: handled above.
            Op::EventFd | Op::EventFdPoll | Op::Ignore => {}
        }
        self.maybe_free(idx);
    }

    /// A completion of the driver's own operations (no slot).
    fn on_own(&mut self, op: Op, res: i32) {
        match op {
            Op::EventFd if self.efd >= 0 => {
                if res == -libc::EAGAIN {
                    // A kernel that honours O_NONBLOCK on io_uring reads: wait for POLLIN
                    // instead of spinning on the read.
                    let e = opcode::PollAdd::new(types::Fd(self.efd), libc::POLLIN as u32)
                        .build()
                        .user_data(SlotKey::DRIVER.user_data(Op::EventFdPoll));
                    self.push(e);
                } else {
                    self.arm_eventfd();
                }
            }
            Op::EventFdPoll if self.efd >= 0 => self.arm_eventfd(),
            _ => {}
        }
    }

    /// A completion for a slot freed since its operation was submitted (and maybe taken by
    /// another socket): a bookkeeping bug, since a slot is freed only with nothing in
    /// flight. It is counted and reaches no socket — in particular not the slot's new
    /// occupant, whose in-flight count, queues and SEND_ZC holds it leaves alone. What it
    /// carries that is the shard's is given back: a ring buffer to the ring, an accepted
    /// connection closed. What the old socket held for it (a private buffer, the bytes of a
    /// send and the buffers SEND_ZC pinned) went with that socket's state when its slot was
    /// freed; there is nothing left in the slot to release.
    fn on_stale(&mut self, op: Op, key: SlotKey, res: i32, flags: u32) {
        OpStats::bump(&self.ops.stale, 1);
        self.give_back(flags);
        if op == Op::Accept && res >= 0 {
            self.close_fd(res);
        }
        if !std::mem::replace(&mut self.fault_logged, true) {
            tracing::error!(
                "io_uring completion for a freed socket slot (op {op:?}, slot {}, generation \
                 {:?}, result {res}): dropped (ringmesh bug; counted in the shard's stale \
                 completions)",
                key.idx(),
                key.generation()
            );
        }
    }

    /// A completion whose op is none we submit: counted and dropped (its ring buffer, if
    /// any, back to the ring), never dispatched on a guess.
    fn on_unknown(&mut self, u: u64, raw: u8, flags: u32) {
        OpStats::bump(&self.ops.unknown, 1);
        self.give_back(flags);
        if !std::mem::replace(&mut self.fault_logged, true) {
            tracing::error!(
                "io_uring completion with unknown op {raw} (user_data {u:#x}): dropped \
                 (ringmesh bug; counted in the shard's unknown completions)"
            );
        }
    }

    /// Gives the ring buffer a completion carries (if any) back to the ring: the kernel took
    /// it from the shard's only buffer group for an operation nobody will read.
    fn give_back(&mut self, flags: u32) {
        if let Some(bid) = cqueue::buffer_select(flags)
            && self.bufs.owns(bid)
        {
            self.bufs.taken();
            self.bufs.recycle(bid);
        }
    }

    /// Slot `idx`'s socket, for a handle's call or a completion already checked current.
    fn sock(&mut self, idx: usize) -> &mut Sock {
        self.socks.get(idx)
    }
}

#[cfg(test)]
#[path = "driver_tests.rs"]
mod tests;
