//! Per-socket state that the ring's completions feed (`Sock`, with its received `Chunk`s),
//! the slab of socket slots (`Socks`) with each slot's generation, and a socket's life on
//! the ring: `register` → operations → `release` (cancel, close) → freed; `detach` readies
//! one for another owner instead.
//!
//! Invariants:
//! - `Sock::inflight` counts the submitted operations that name the slot whose last
//!   completion has not been dispatched yet: a multishot counts once, until a completion
//!   without MORE; a SEND_ZC once, until its notification. Cancellations and closes name no
//!   slot and are not counted;
//! - a slot is freed only once its handle is gone (`!alive`), its fd is closed and
//!   `inflight` is 0, so every buffer an SQE points at (a private receive buffer, the send
//!   in flight, a SEND_ZC's pinned buffers, a connect address) outlives the operation;
//! - freeing a slot moves its generation on: a completion naming an older generation is
//!   stale, and the driver never hands it to the slot's next occupant (`Driver::complete`);
//! - a handle owns its slot while it lives, so the handle's calls name the slot by index
//!   alone; only completions carry (and check) a generation.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::task::Waker;

use bytes::{Bytes, BytesMut};

use super::Driver;
use super::op::{Gen, Op, SlotKey};

/// Where received bytes sit until the reader takes them.
pub(super) enum Src {
    /// A buffer of the shard's ring, by id.
    Ring(u16),
    /// A private buffer, received into while the ring was empty.
    Heap(Box<[u8]>),
}

impl Default for Src {
    fn default() -> Self {
        Src::Heap(Box::new([]))
    }
}

/// Received bytes `off..len` of `src`, not yet read.
pub(super) struct Chunk {
    pub(super) src: Src,
    pub(super) len: usize,
    pub(super) off: usize,
}

/// The state of one socket (stream or listener) that ring operations refer to.
#[derive(Default)]
pub(super) struct Sock {
    /// This slot's index and generation, as the socket's submissions name it.
    pub(super) key: SlotKey,
    pub(super) fd: RawFd,
    pub(super) alive: bool,
    pub(super) closed: bool,
    pub(super) inflight: u32,
    // receive
    pub(super) rx: VecDeque<Chunk>,
    pub(super) rx_bytes: usize,
    pub(super) rx_armed: bool,
    pub(super) rx_cancelling: bool,
    pub(super) rx_private: Option<Box<[u8]>>,
    /// A POLLIN is in flight (`Op::RecvPoll`): the ring was empty when data came.
    pub(super) rx_polling: bool,
    pub(super) rx_eof: bool,
    pub(super) rx_err: Option<i32>,
    pub(super) rx_waker: Option<Waker>,
    // send
    pub(super) tx_q: VecDeque<Bytes>,
    pub(super) tx_buf: BytesMut,
    /// The buffer of the last completed send, emptied: `tx_buf`'s next incarnation, so a
    /// streaming socket alternates between two buffers instead of allocating one per send.
    pub(super) tx_spare: BytesMut,
    pub(super) tx_queued: usize,
    pub(super) tx_cur: Option<Bytes>,
    pub(super) tx_zc_hold: VecDeque<Bytes>,
    /// Zero-copy sends that failed (they pin no buffer) whose notification is still to
    /// come: that notification frees nothing (it used to free the buffer of an earlier send
    /// the kernel was still sending from).
    pub(super) tx_zc_skip: u32,
    pub(super) tx_err: Option<i32>,
    pub(super) tx_waker: Option<Waker>,
    pub(super) shut_wanted: bool,
    pub(super) shut_res: Option<i32>,
    // connect
    pub(super) addr: Option<Box<socket2::SockAddr>>,
    pub(super) conn_res: Option<i32>,
    pub(super) conn_busy: bool,
    // accept
    pub(super) acc: VecDeque<Result<RawFd, i32>>,
    pub(super) acc_armed: bool,
    /// `stop_accept` was called: the multishot accept is not re-armed.
    pub(super) acc_stopping: bool,
    /// The multishot accept is being cancelled because `acc` is full (`ACC_MAX`).
    pub(super) acc_pausing: bool,
    /// `detach` was called: the receive is cancelled and never re-armed.
    pub(super) detaching: bool,
    /// The cancellations `detach` asked for are submitted.
    pub(super) detach_cancelled: bool,
    // readiness for a caller's own syscalls (`ready`)
    pub(super) ready_in: Ready,
    pub(super) ready_out: Ready,
}

impl Sock {
    /// The `user_data` of `op` on this socket.
    pub(super) fn ud(&self, op: Op) -> u64 {
        self.key.user_data(op)
    }

    /// Takes what `tx_buf` holds for sending; the spare (if any) becomes the new `tx_buf`.
    pub(super) fn take_tx_buf(&mut self) -> Bytes {
        let next = std::mem::take(&mut self.tx_spare);
        std::mem::replace(&mut self.tx_buf, next).freeze()
    }

    /// Keeps a fully sent buffer as the spare if nothing else holds it (a `write_bytes`
    /// caller's buffer, a zero-copy send waiting for its notification) and it is larger.
    /// A caller's buffer larger than `max` (say, a whole HTTP/2 read buffer) is freed.
    pub(super) fn keep_spare(&mut self, sent: Bytes, max: usize) {
        if let Ok(mut b) = sent.try_into_mut() {
            b.clear();
            // The sent bytes were consumed from the front: take that room back.
            let _ = b.try_reclaim(b.capacity() + 1);
            if b.capacity() > self.tx_spare.capacity() && b.capacity() <= max {
                self.tx_spare = b;
            }
        }
    }

    /// Queues `n` bytes received at `start` in `src`.
    pub(super) fn received(&mut self, src: Src, start: usize, n: usize) {
        self.rx.push_back(Chunk {
            src,
            len: start + n,
            off: start,
        });
        self.rx_bytes += n;
    }
}

/// One slot of the slab: its socket, if any, and its generation.
#[derive(Default)]
struct Slot {
    generation: Gen,
    sock: Option<Sock>,
}

/// Slots per chunk of the slab.
const CHUNK: usize = 64;

/// The shard's sockets, by slot index (what handles hold), reusing freed slots. Slots come
/// in chunks of [`CHUNK`] that never move: a `Vec` of slots grown by doubling held up to
/// twice the slots in use, ≈ 190 bytes an idle tunnel past a doubling (a slot is ≈ 370).
#[derive(Default)]
pub(super) struct Socks {
    chunks: Vec<Box<[Slot; CHUNK]>>,
    /// Slots made so far (the chunks' slots past it are unused).
    len: usize,
    free: Vec<usize>,
}

impl Socks {
    fn slot(&self, idx: usize) -> Option<&Slot> {
        (idx < self.len).then(|| &self.chunks[idx / CHUNK][idx % CHUNK])
    }

    fn slot_mut(&mut self, idx: usize) -> Option<&mut Slot> {
        (idx < self.len).then(|| &mut self.chunks[idx / CHUNK][idx % CHUNK])
    }

    /// Puts `s` in a free slot (or a new one) under the slot's current generation.
    fn insert(&mut self, mut s: Sock) -> usize {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                if self.len == self.chunks.len() * CHUNK {
                    self.chunks
                        .push(Box::new(std::array::from_fn(|_| Slot::default())));
                }
                self.len += 1;
                self.len - 1
            }
        };
        let slot = self.slot_mut(idx).expect("a slot just made or freed");
        s.key = SlotKey::new(idx, slot.generation);
        slot.sock = Some(s);
        idx
    }

    /// The socket in slot `idx`, which its handle owns (panics on a freed slot: a handle's
    /// slot is never freed under it).
    pub(super) fn get(&mut self, idx: usize) -> &mut Sock {
        self.try_get(idx)
            .expect("io_uring socket call on a freed slot")
    }

    /// The socket in slot `idx`, if the slot holds one.
    pub(super) fn try_get(&mut self, idx: usize) -> Option<&mut Sock> {
        self.slot_mut(idx)?.sock.as_mut()
    }

    /// Whether a completion naming `key` belongs to the socket that now holds its slot:
    /// false for a slot freed (and maybe reused) since the operation was submitted.
    pub(super) fn is_current(&self, key: SlotKey) -> bool {
        match self.slot(key.idx()) {
            Some(Slot {
                generation,
                sock: Some(_),
            }) => *generation == key.generation(),
            _ => false,
        }
    }

    /// Empties slot `idx` for reuse under the next generation.
    fn free(&mut self, idx: usize) {
        let slot = self.slot_mut(idx).expect("freeing a slot never made");
        slot.sock = None;
        slot.generation = slot.generation.next();
        self.free.push(idx);
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Sock> {
        let len = self.len;
        self.chunks
            .iter_mut()
            .flat_map(|c| c.iter_mut())
            .take(len)
            .filter_map(|s| s.sock.as_mut())
    }

    /// Tests: slot `idx`'s generation.
    #[cfg(test)]
    pub(super) fn generation(&self, idx: usize) -> Gen {
        self.slot(idx).expect("a slot made").generation
    }

    /// Tests: frees slot `idx` whatever is in flight and without closing its fd — the
    /// bookkeeping bug that generations guard against, so that a stale completion can be
    /// made on a real ring. Only for sockets whose operations point at no memory of the slot
    /// (a multishot receive into the ring).
    #[cfg(test)]
    pub(super) fn forget(&mut self, idx: usize) {
        self.free(idx)
    }
}

impl Driver {
    /// Takes ownership of `fd`; it is closed with an io_uring CLOSE when its handle drops.
    pub(crate) fn register(&mut self, fd: RawFd) -> usize {
        self.socks.insert(Sock {
            fd,
            alive: true,
            ..Default::default()
        })
    }

    /// The handle is gone: cancel what is in flight, drop unsent data, close the fd.
    pub(crate) fn release(&mut self, idx: usize) {
        let mut cancels = Vec::new();
        let mut closes = Vec::new();
        let mut recycled = Vec::new();
        {
            let s = self.sock(idx);
            s.alive = false;
            for c in s.rx.drain(..) {
                if let Src::Ring(bid) = c.src {
                    recycled.push(bid);
                }
            }
            s.rx_bytes = 0;
            s.tx_q.clear();
            s.tx_buf = BytesMut::new();
            s.tx_spare = BytesMut::new();
            s.tx_queued = 0;
            if s.rx_armed {
                cancels.push(s.ud(Op::Recv));
            }
            if s.rx_private.is_some() {
                cancels.push(s.ud(Op::RecvPrivate));
            }
            if s.rx_polling {
                cancels.push(s.ud(Op::RecvPoll));
            }
            if s.acc_armed {
                cancels.push(s.ud(Op::Accept));
            }
            if s.conn_busy {
                cancels.push(s.ud(Op::Connect));
            }
            if s.tx_cur.is_some() {
                cancels.push(s.ud(Op::Send));
                cancels.push(s.ud(Op::SendZc));
            }
            for a in s.acc.drain(..).flatten() {
                closes.push(a);
            }
            closes.push(s.fd);
            s.closed = true;
        }
        for bid in recycled {
            self.bufs.recycle(bid);
        }
        for c in cancels {
            self.cancel(c);
        }
        self.cancel_ready(idx);
        for fd in closes {
            self.close_fd(fd);
        }
        self.maybe_free(idx);
    }

    /// Frees the slot once its handle is gone, its fd closed and nothing is in flight.
    pub(super) fn maybe_free(&mut self, idx: usize) {
        if let Some(s) = self.socks.try_get(idx)
            && !s.alive
            && s.closed
            && s.inflight == 0
        {
            self.socks.free(idx);
        }
    }

    /// Closes the fds of sockets still open (teardown: their ops die with the ring).
    pub(crate) fn close_all(&mut self) {
        for s in self.socks.iter_mut() {
            if !s.closed {
                s.closed = true;
                // SAFETY: the slot owns this fd.
                unsafe { libc::close(s.fd) };
            }
            for a in s.acc.drain(..).flatten() {
                // SAFETY: accepted fds not yet handed out are owned by the slot.
                unsafe { libc::close(a) };
            }
        }
    }

    /// Readies the socket to move to another owner (a hitless upgrade hands it to the next
    /// process): cancels its receive and its send in flight and waits until nothing is in
    /// flight, then returns what it received that nobody has read yet and what was queued
    /// for sending and not sent (each in order: the new owner sends those bytes first). The
    /// socket stays registered; its fd may then be duplicated and passed on. None: not yet
    /// (the waker is kept). An earlier send or receive error is returned instead: such a
    /// socket cannot be continued.
    pub(crate) fn detach(
        &mut self,
        idx: usize,
        waker: &Waker,
    ) -> Option<io::Result<(Vec<u8>, Vec<u8>)>> {
        let mut cancels = Vec::new();
        let busy = {
            let s = self.sock(idx);
            s.detaching = true;
            if !s.detach_cancelled {
                s.detach_cancelled = true;
                if s.rx_armed && !s.rx_cancelling {
                    s.rx_cancelling = true;
                    cancels.push(s.ud(Op::Recv));
                }
                if s.rx_private.is_some() {
                    cancels.push(s.ud(Op::RecvPrivate));
                }
                if s.rx_polling {
                    cancels.push(s.ud(Op::RecvPoll));
                }
                // A send the peer is not taking would never complete: cancelled; what it
                // had not sent yet goes back to the queue (`on_send`).
                if s.tx_cur.is_some() {
                    cancels.push(s.ud(Op::Send));
                    cancels.push(s.ud(Op::SendZc));
                }
            }
            if let Some(e) = s.tx_err.or(s.rx_err) {
                return Some(Err(io::Error::from_raw_os_error(e)));
            }
            let busy = s.rx_armed
                || s.rx_private.is_some()
                || s.rx_polling
                || s.tx_cur.is_some()
                || s.conn_busy
                || s.ready_in.in_flight()
                || s.ready_out.in_flight();
            if busy {
                set_waker(&mut s.rx_waker, waker);
                set_waker(&mut s.tx_waker, waker);
            }
            busy
        };
        for c in cancels {
            self.cancel(c);
        }
        // Outside the once-only cancels above: a socket detached once (to splice on it) is
        // polled afterwards, and detached again when it moves.
        self.cancel_ready(idx);
        if busy {
            return None;
        }
        let mut out = Vec::new();
        let Driver { socks, bufs, .. } = self;
        let s = socks.try_get(idx)?;
        while let Some(c) = s.rx.pop_front() {
            match &c.src {
                Src::Ring(bid) => {
                    out.extend_from_slice(bufs.slice_mut(*bid, c.off, c.len - c.off));
                    bufs.recycle(*bid);
                }
                Src::Heap(b) => out.extend_from_slice(&b[c.off..c.len]),
            }
        }
        s.rx_bytes = 0;
        // Unsent, in order: the queue, then what was written into the buffer after it.
        let mut unsent = Vec::with_capacity(s.tx_queued);
        for b in s.tx_q.drain(..) {
            unsent.extend_from_slice(&b);
        }
        unsent.extend_from_slice(&s.tx_buf);
        s.tx_buf.clear();
        s.tx_queued = 0;
        Some(Ok((out, unsent)))
    }
}

/// Keeps `w` in `slot` (a clone only if the one there would wake another task).
pub(super) fn set_waker(slot: &mut Option<Waker>, w: &Waker) {
    match slot {
        Some(old) if old.will_wake(w) => {}
        _ => *slot = Some(w.clone()),
    }
}

/// Wakes the task in `slot`, if any.
pub(super) fn wake(slot: &mut Option<Waker>) {
    if let Some(w) = slot.take() {
        w.wake();
    }
}

/// One direction's readiness poll (`super::ready`, for callers that make their own
/// syscall on the socket).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Ready {
    /// None in flight, none reported.
    #[default]
    Idle,
    /// In flight.
    Armed,
    /// In flight, and a cancellation of it submitted.
    Cancelling,
    /// Completed with this result (a poll mask, or -errno), not reported yet.
    Fired(i32),
}

impl Ready {
    /// In flight (armed or being cancelled).
    pub(super) fn in_flight(self) -> bool {
        matches!(self, Ready::Armed | Ready::Cancelling)
    }
}
