//! One shard's ring: submission, completion dispatch, the provided buffer ring, and the
//! per-socket state the completions feed. Lives in a thread-local; only the shard's thread
//! touches it. Socket handles (`net`) hold an index into `socks`; a slot is freed only when
//! its handle is gone, its fd is closed and no operation that names it is still in flight,
//! so every buffer an SQE points at outlives the operation.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::{OpStats, UringOpts, count, stats};

const K_RECV: u64 = 1;
const K_RECV1: u64 = 2;
const K_SEND: u64 = 3;
const K_SENDZC: u64 = 4;
const K_SHUT: u64 = 5;
const K_CONNECT: u64 = 6;
const K_ACCEPT: u64 = 7;
const K_EVENTFD: u64 = 8;
const K_IGNORE: u64 = 9;
const K_EVENTFD_POLL: u64 = 10;

/// Connections a listener holds accepted but not yet taken by its accept loop.
pub(crate) const ACC_MAX: usize = 256;

/// Tries a full submission queue gets before the ring counts as broken (`Driver::push`):
/// the first `SUBMIT_TRIES_TIGHT` back to back, the rest 1 ms apart.
const SUBMIT_TRIES: u32 = 1100;
const SUBMIT_TRIES_TIGHT: u32 = 100;

/// Buffer group id of the shard's provided buffer ring.
const BGID: u16 = 0;
/// Size of the private buffer a socket receives into while the ring is empty.
const PRIVATE_RECV: usize = 16 * 1024;
/// Private receive buffers kept for reuse per shard.
const PRIVATE_POOL: usize = 16;

/// Where received bytes start inside a buffer: 64 bytes past its (page-aligned) start.
/// `memcpy` of ≥ 4 KiB here is `rep movsb`, which runs at ≈ 3 GB/s instead of 45–90 GB/s
/// when the destination sits 1–15 bytes past the source modulo 4096 (4 KiB aliasing;
/// `tuning/README.md`). rustls copies each record's plaintext to 5 (or 14, after an HTTP/2
/// frame header) bytes past a page-aligned allocation, so page-aligned received data hit
/// exactly that case; 64 bytes in, the copy is ≈ 50 bytes *behind*, the fast case.
pub(crate) const RX_SKEW: usize = 64;

fn ud(idx: usize, kind: u64) -> u64 {
    ((idx as u64) << 8) | kind
}

/// Where received bytes sit until the reader takes them.
enum Src {
    Ring(u16),
    Heap(Box<[u8]>),
}

struct Chunk {
    src: Src,
    len: usize,
    off: usize,
}

/// The state of one socket (stream or listener) that ring operations refer to.
#[derive(Default)]
struct Sock {
    fd: RawFd,
    alive: bool,
    closed: bool,
    inflight: u32,
    // receive
    rx: VecDeque<Chunk>,
    rx_bytes: usize,
    rx_armed: bool,
    rx_cancelling: bool,
    rx_private: Option<Box<[u8]>>,
    rx_eof: bool,
    rx_err: Option<i32>,
    rx_waker: Option<Waker>,
    // send
    tx_q: VecDeque<Bytes>,
    tx_buf: BytesMut,
    /// The buffer of the last completed send, emptied: `tx_buf`'s next incarnation, so a
    /// streaming socket alternates between two buffers instead of allocating one per send.
    tx_spare: BytesMut,
    tx_queued: usize,
    tx_cur: Option<Bytes>,
    tx_zc_hold: VecDeque<Bytes>,
    /// Zero-copy sends that failed (they pin no buffer) whose notification is still to
    /// come: that notification frees nothing (it used to free the buffer of an earlier send
    /// the kernel was still sending from).
    tx_zc_skip: u32,
    tx_err: Option<i32>,
    tx_waker: Option<Waker>,
    shut_wanted: bool,
    shut_res: Option<i32>,
    // connect
    addr: Option<Box<socket2::SockAddr>>,
    conn_res: Option<i32>,
    conn_busy: bool,
    // accept
    acc: VecDeque<Result<RawFd, i32>>,
    acc_armed: bool,
    /// `stop_accept` was called: the multishot accept is not re-armed.
    acc_stopping: bool,
    /// The multishot accept is being cancelled because `acc` is full (`ACC_MAX`).
    acc_pausing: bool,
    /// `detach` was called: the receive is cancelled and never re-armed.
    detaching: bool,
    /// The cancellations `detach` asked for are submitted.
    detach_cancelled: bool,
}

impl Sock {
    /// Takes what `tx_buf` holds for sending; the spare (if any) becomes the new `tx_buf`.
    fn take_tx_buf(&mut self) -> Bytes {
        let next = std::mem::take(&mut self.tx_spare);
        std::mem::replace(&mut self.tx_buf, next).freeze()
    }

    /// Keeps a fully sent buffer as the spare if nothing else holds it (a `write_bytes`
    /// caller's buffer, a zero-copy send waiting for its notification) and it is larger.
    /// A caller's buffer larger than `max` (say, a whole HTTP/2 read buffer) is freed.
    fn keep_spare(&mut self, sent: Bytes, max: usize) {
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
    fn received(&mut self, src: Src, start: usize, n: usize) {
        self.rx.push_back(Chunk {
            src,
            len: start + n,
            off: start,
        });
        self.rx_bytes += n;
    }
}

impl Default for Src {
    fn default() -> Self {
        Src::Heap(Box::new([]))
    }
}

/// The memory of the provided buffers: one anonymous mapping (pages are touched only when
/// the kernel first fills them), shared with the `Bytes` lent out of it so that it outlives
/// them even if one strays past the ring's end.
struct BufMem {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: plain memory; every region is written by the kernel only while it is in the ring
// and read by us only while it is out of it (received or lent), never both.
unsafe impl Send for BufMem {}
// SAFETY: as above.
unsafe impl Sync for BufMem {}

impl BufMem {
    fn new(len: usize) -> io::Result<BufMem> {
        Ok(BufMem {
            ptr: mmap_anon(len)?,
            len,
        })
    }

    fn slice(&self, start: usize, len: usize) -> &[u8] {
        assert!(start + len <= self.len);
        // SAFETY: inside the mapping (checked); the region is out of the ring (see above).
        unsafe { std::slice::from_raw_parts(self.ptr.add(start), len) }
    }

    /// A received region, writable (TLS opens records in place).
    ///
    /// # Safety
    /// The region must be out of the ring, not lent, and referenced by nothing else for the
    /// returned slice's life: a buffer in exactly one socket's receive queue, used under the
    /// driver's `&mut`.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice_mut(&self, start: usize, len: usize) -> &mut [u8] {
        assert!(start + len <= self.len);
        // SAFETY: inside the mapping (checked); exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

impl Drop for BufMem {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn mmap_anon(len: usize) -> io::Result<*mut u8> {
    // SAFETY: anonymous private mapping, checked for failure.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p.cast())
}

/// A received buffer handed to the flows as `Bytes` without a copy; it goes back into the
/// ring when the last `Bytes` pointing at it is dropped (on the shard's thread).
struct Lent {
    mem: Arc<BufMem>,
    bid: u16,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        self.mem.slice(self.start, self.len)
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let (mem, bid) = (&self.mem, self.bid);
        DRIVER.with(|d| match d.try_borrow_mut() {
            Ok(mut d) => {
                if let Some(d) = d.as_mut()
                    && Arc::ptr_eq(&d.bufs.mem, mem)
                {
                    d.bufs.recycle(bid);
                }
            }
            // Dropped by the driver itself (a sent buffer): recycled at its next turn.
            Err(_) => RECYCLE_LATER.with(|r| r.borrow_mut().push((mem.clone(), bid))),
        });
    }
}

/// The provided buffer ring: the ring of descriptors the kernel picks from (page-aligned
/// mmap) and the buffers themselves.
struct BufRing {
    ring: *mut types::BufRingEntry,
    ring_len: usize,
    mem: Arc<BufMem>,
    count: u16,
    size: usize,
    tail: u16,
    /// Buffers out of the ring (received and not yet consumed, or lent).
    out: usize,
}

impl BufRing {
    fn new(count: u16, size: usize) -> io::Result<BufRing> {
        let ring_len = count as usize * std::mem::size_of::<types::BufRingEntry>();
        let ring = mmap_anon(ring_len)?;
        let mem = match BufMem::new(count as usize * size) {
            Ok(m) => Arc::new(m),
            Err(e) => {
                // SAFETY: the ring mapping made just above.
                unsafe { libc::munmap(ring.cast(), ring_len) };
                return Err(e);
            }
        };
        let mut b = BufRing {
            ring: ring.cast(),
            ring_len,
            mem,
            count,
            size,
            tail: 0,
            out: count as usize,
        };
        for bid in 0..count {
            b.push(bid);
        }
        b.publish();
        Ok(b)
    }

    fn push(&mut self, bid: u16) {
        let idx = (self.tail & (self.count - 1)) as usize;
        // SAFETY: idx < count, the mapping holds `count` entries; the address is inside
        // `mem`, which lives as long as the ring registration.
        unsafe {
            let e = &mut *self.ring.add(idx);
            e.set_addr(self.mem.ptr.add(self.start(bid)) as u64);
            e.set_len((self.size - RX_SKEW) as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        self.out -= 1;
    }

    fn publish(&self) {
        // SAFETY: the tail field overlays entry 0's reserved field inside the mapping; the
        // kernel reads it with acquire semantics.
        unsafe {
            let tail = types::BufRingEntry::tail(self.ring) as *const std::sync::atomic::AtomicU16;
            (*tail).store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }

    fn taken(&mut self) {
        self.out += 1;
    }

    fn recycle(&mut self, bid: u16) {
        self.push(bid);
        self.publish();
    }

    /// Buffer `bid`'s received bytes, writable. Only for a buffer held in a socket's receive
    /// queue (out of the ring, not lent): nothing else refers to it while `&mut self` lasts.
    fn slice_mut(&mut self, bid: u16, off: usize, len: usize) -> &mut [u8] {
        let start = self.start(bid) + off;
        // SAFETY: received buffers sit in one socket's queue until consumed or lent, and a
        // lent buffer leaves the queue first; `&mut self` keeps this the only live slice.
        unsafe { self.mem.slice_mut(start, len) }
    }

    /// Offset of buffer `bid`'s data in the mapping (see [`RX_SKEW`]).
    fn start(&self, bid: u16) -> usize {
        bid as usize * self.size + RX_SKEW
    }

    /// Whether lending a buffer (holding it out of the ring until the flows drop it) leaves
    /// enough for the other sockets: at most three quarters may be out.
    fn can_lend(&self) -> bool {
        self.out * 4 <= self.count as usize * 3
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the descriptor mapping made in `new`.
        unsafe {
            libc::munmap(self.ring.cast(), self.ring_len);
        }
    }
}

/// A shard's ring and everything its operations point at.
pub struct Driver {
    ring: IoUring,
    bufs: BufRing,
    socks: Vec<Option<Sock>>,
    free: Vec<usize>,
    /// Private receive buffers already read out, for the next private receive (at most
    /// `PRIVATE_POOL`): an exhausted ring costs no allocation and zero-fill per receive.
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
}

thread_local! {
    static DRIVER: RefCell<Option<Driver>> = const { RefCell::new(None) };
    static RECYCLE_LATER: RefCell<Vec<(Arc<BufMem>, u16)>> = const { RefCell::new(Vec::new()) };
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
            socks: Vec::new(),
            free: Vec::new(),
            private_pool: Vec::new(),
            opts: opts.clone(),
            ops: super::register_ops(),
            efd: -1,
            efd_buf: Box::new([0; 8]),
            cqes: Vec::with_capacity(256),
            broken: None,
            enter_failures: 0,
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
            .user_data(ud(0, K_EVENTFD));
        self.push(e);
    }

    /// Submits what is queued and, with `wait`, blocks until a completion arrives or
    /// `timeout` passes; then dispatches every completion.
    pub(crate) fn turn(&mut self, wait: bool, timeout: Option<Duration>) {
        let later = RECYCLE_LATER.with(|r| std::mem::take(&mut *r.borrow_mut()));
        for (mem, bid) in later {
            if Arc::ptr_eq(&self.bufs.mem, &mem) {
                self.bufs.recycle(bid);
            }
        }
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
        let (idx, kind) = ((u >> 8) as usize, u & 0xff);
        match kind {
            K_EVENTFD => {
                if self.efd >= 0 {
                    if res == -libc::EAGAIN {
                        // A kernel that honours O_NONBLOCK on io_uring reads: wait for
                        // POLLIN instead of spinning on the read.
                        let e = opcode::PollAdd::new(types::Fd(self.efd), libc::POLLIN as u32)
                            .build()
                            .user_data(ud(0, K_EVENTFD_POLL));
                        self.push(e);
                    } else {
                        self.arm_eventfd();
                    }
                }
                return;
            }
            K_EVENTFD_POLL => {
                if self.efd >= 0 {
                    self.arm_eventfd();
                }
                return;
            }
            K_IGNORE => return,
            _ => {}
        }
        match kind {
            K_RECV => self.on_recv(idx, res, flags),
            K_RECV1 => self.on_private_recv(idx, res),
            K_SEND | K_SENDZC => self.on_send(idx, res, flags, kind == K_SENDZC),
            K_SHUT => {
                let s = self.sock(idx);
                s.inflight -= 1;
                s.shut_res = Some(res);
                wake(&mut s.tx_waker);
            }
            K_CONNECT => {
                let s = self.sock(idx);
                s.inflight -= 1;
                s.conn_busy = false;
                s.conn_res = Some(res);
                wake(&mut s.rx_waker);
            }
            K_ACCEPT => self.on_accept(idx, res, flags),
            _ => {}
        }
        self.maybe_free(idx);
    }

    fn sock(&mut self, idx: usize) -> &mut Sock {
        self.socks[idx]
            .as_mut()
            .expect("completion for a freed socket")
    }

    // ---- registration ----

    /// Takes ownership of `fd`; it is closed with an io_uring CLOSE when its handle drops.
    pub(crate) fn register(&mut self, fd: RawFd) -> usize {
        let s = Sock {
            fd,
            alive: true,
            ..Default::default()
        };
        match self.free.pop() {
            Some(i) => {
                self.socks[i] = Some(s);
                i
            }
            None => {
                self.socks.push(Some(s));
                self.socks.len() - 1
            }
        }
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
                cancels.push(ud(idx, K_RECV));
            }
            if s.rx_private.is_some() {
                cancels.push(ud(idx, K_RECV1));
            }
            if s.acc_armed {
                cancels.push(ud(idx, K_ACCEPT));
            }
            if s.conn_busy {
                cancels.push(ud(idx, K_CONNECT));
            }
            if s.tx_cur.is_some() {
                cancels.push(ud(idx, K_SEND));
                cancels.push(ud(idx, K_SENDZC));
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
            self.push(
                opcode::AsyncCancel::new(c)
                    .build()
                    .user_data(ud(0, K_IGNORE)),
            );
        }
        for fd in closes {
            self.push(
                opcode::Close::new(types::Fd(fd))
                    .build()
                    .user_data(ud(0, K_IGNORE)),
            );
        }
        self.maybe_free(idx);
    }

    fn maybe_free(&mut self, idx: usize) {
        if let Some(s) = &self.socks[idx]
            && !s.alive
            && s.closed
            && s.inflight == 0
        {
            self.socks[idx] = None;
            self.free.push(idx);
        }
    }

    /// Closes the fds of sockets still open (teardown: their ops die with the ring).
    pub(crate) fn close_all(&mut self) {
        for s in self.socks.iter_mut().flatten() {
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

    // ---- receive ----

    fn arm_recv(&mut self, idx: usize) {
        let s = self.sock(idx);
        if s.rx_armed || s.rx_private.is_some() || s.rx_eof || s.rx_err.is_some() || s.detaching {
            return;
        }
        s.rx_armed = true;
        s.inflight += 1;
        let fd = s.fd;
        self.push(
            opcode::RecvMulti::new(types::Fd(fd), BGID)
                .build()
                .user_data(ud(idx, K_RECV)),
        );
    }

    fn arm_private_recv(&mut self, idx: usize) {
        count(&stats().private_recvs);
        let mut buf = self
            .private_pool
            .pop()
            .unwrap_or_else(|| vec![0u8; RX_SKEW + PRIVATE_RECV].into_boxed_slice());
        let s = self.sock(idx);
        let data = &mut buf[RX_SKEW..];
        let (ptr, len) = (data.as_mut_ptr(), data.len() as u32);
        s.rx_private = Some(buf);
        s.inflight += 1;
        let fd = s.fd;
        self.push(
            opcode::Recv::new(types::Fd(fd), ptr, len)
                .build()
                .user_data(ud(idx, K_RECV1)),
        );
    }

    /// Bytes a socket may hold from the ring before its receive is paused.
    fn rx_high(&self) -> usize {
        (self.opts.buf_size as usize * self.opts.buf_count as usize / 8)
            .max(self.opts.buf_size as usize)
            .min(1 << 20)
    }

    fn on_recv(&mut self, idx: usize, res: i32, flags: u32) {
        if res > 0 {
            self.ops.recv(res as usize);
        }
        let more = cqueue::more(flags);
        let bid = cqueue::buffer_select(flags);
        let high = self.rx_high();
        let mut recycle = None;
        let mut cancel = false;
        let mut private = false;
        let mut taken = false;
        {
            let s = self.sock(idx);
            if !more {
                s.rx_armed = false;
                s.rx_cancelling = false;
                s.inflight -= 1;
            }
            if res > 0 {
                let bid = bid.expect("multishot recv completion without a buffer");
                taken = true;
                if s.alive {
                    s.received(Src::Ring(bid), 0, res as usize);
                    if more && !s.rx_cancelling && s.rx_bytes >= high {
                        s.rx_cancelling = true;
                        cancel = true;
                    }
                } else {
                    recycle = Some(bid);
                }
            } else if res == 0 {
                s.rx_eof = true;
            } else if res == -libc::ENOBUFS {
                count(&stats().buffer_exhausted);
                // The ring is empty. A socket with data queued re-arms once its reader has
                // drained it; one with none would wait for others to return buffers, so it
                // receives into a buffer of its own instead.
                private = s.alive && s.rx.is_empty() && !s.detaching;
            } else if res != -libc::ECANCELED {
                s.rx_err = Some(-res);
            }
            wake(&mut s.rx_waker);
        }
        if taken {
            self.bufs.taken();
        }
        if let Some(bid) = recycle {
            self.bufs.recycle(bid);
        }
        if cancel {
            self.push(
                opcode::AsyncCancel::new(ud(idx, K_RECV))
                    .build()
                    .user_data(ud(0, K_IGNORE)),
            );
        }
        if private {
            self.arm_private_recv(idx);
        }
    }

    fn on_private_recv(&mut self, idx: usize, res: i32) {
        if res > 0 {
            self.ops.recv(res as usize);
        }
        let s = self.sock(idx);
        s.inflight -= 1;
        let buf = s.rx_private.take().unwrap_or_default();
        if res > 0 {
            if s.alive {
                s.received(Src::Heap(buf), RX_SKEW, res as usize);
            }
        } else if res == 0 {
            s.rx_eof = true;
        } else if res != -libc::ECANCELED {
            s.rx_err = Some(-res);
        }
        wake(&mut s.rx_waker);
    }

    /// Copies received bytes into `out` (up to its spare room, or `max` bytes for a fresh
    /// buffer); returns None if there is nothing yet (the waker is kept), Some(0) at EOF.
    pub(crate) fn read(
        &mut self,
        idx: usize,
        waker: &Waker,
        mut out: impl FnMut(&[u8]) -> usize,
    ) -> Option<io::Result<usize>> {
        self.read_mut(idx, waker, |d| out(d))
    }

    /// [`Driver::read`] with the received bytes writable: the reader may transform them in
    /// place (TLS opens records where they were received) before consuming them.
    pub(crate) fn read_mut(
        &mut self,
        idx: usize,
        waker: &Waker,
        mut out: impl FnMut(&mut [u8]) -> usize,
    ) -> Option<io::Result<usize>> {
        let mut total = 0;
        let result;
        {
            let Driver {
                socks,
                bufs,
                private_pool,
                ..
            } = self;
            let s = socks[idx].as_mut().expect("read on a freed socket");
            while let Some(c) = s.rx.front_mut() {
                let data = match &mut c.src {
                    Src::Ring(bid) => bufs.slice_mut(*bid, c.off, c.len - c.off),
                    Src::Heap(b) => &mut b[c.off..c.len],
                };
                let n = out(data);
                if n == 0 {
                    break;
                }
                total += n;
                c.off += n;
                s.rx_bytes -= n;
                if c.off == c.len {
                    match s.rx.pop_front().map(|c| c.src) {
                        Some(Src::Ring(bid)) => bufs.recycle(bid),
                        Some(Src::Heap(b))
                            if b.len() == RX_SKEW + PRIVATE_RECV
                                && private_pool.len() < PRIVATE_POOL =>
                        {
                            private_pool.push(b)
                        }
                        _ => {}
                    }
                } else {
                    break;
                }
            }
            result = if total > 0 {
                Some(Ok(total))
            } else if let Some(e) = s.rx_err {
                Some(Err(io::Error::from_raw_os_error(e)))
            } else if s.rx_eof {
                Some(Ok(0))
            } else {
                set_waker(&mut s.rx_waker, waker);
                None
            };
        }
        self.rearm(idx);
        result
    }

    /// Readies the socket to move to another owner (a hitless upgrade hands it to the next
    /// process): cancels its receive and its send in flight and waits until nothing is in
    /// flight, then returns what it received that nobody has read yet and what was queued
    /// for sending and not sent (each in order: the new owner sends those bytes first). The socket stays registered; its fd may then be duplicated and
    /// passed on. None: not yet (the waker is kept). An earlier send or receive error is
    /// returned instead: such a socket cannot be continued.
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
                    cancels.push(ud(idx, K_RECV));
                }
                if s.rx_private.is_some() {
                    cancels.push(ud(idx, K_RECV1));
                }
                // A send the peer is not taking would never complete: cancelled; what it
                // had not sent yet goes back to the queue (`on_send`).
                if s.tx_cur.is_some() {
                    cancels.push(ud(idx, K_SEND));
                    cancels.push(ud(idx, K_SENDZC));
                }
            }
            if let Some(e) = s.tx_err.or(s.rx_err) {
                return Some(Err(io::Error::from_raw_os_error(e)));
            }
            let busy = s.rx_armed || s.rx_private.is_some() || s.tx_cur.is_some() || s.conn_busy;
            if busy {
                set_waker(&mut s.rx_waker, waker);
                set_waker(&mut s.tx_waker, waker);
            }
            busy
        };
        for c in cancels {
            self.push(
                opcode::AsyncCancel::new(c)
                    .build()
                    .user_data(ud(0, K_IGNORE)),
            );
        }
        if busy {
            return None;
        }
        let mut out = Vec::new();
        let Driver { socks, bufs, .. } = self;
        let s = socks[idx].as_mut()?;
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

    /// Re-arms the receive once the reader has drained its queue below half the limit.
    fn rearm(&mut self, idx: usize) {
        let high = self.rx_high();
        let s = self.sock(idx);
        if !s.rx_armed && s.rx_private.is_none() && s.rx_bytes < high / 2 {
            self.arm_recv(idx);
        }
    }

    /// Hands the next received buffer over without copying when it is from the ring, at
    /// least `min` bytes, and the ring can spare it; else None (read with a copy instead).
    pub(crate) fn lend(&mut self, idx: usize, min: usize) -> Option<bytes::Bytes> {
        if !self.bufs.can_lend() {
            return None;
        }
        let Driver { socks, bufs, .. } = self;
        let s = socks[idx].as_mut()?;
        let c = s.rx.front()?;
        let Src::Ring(bid) = c.src else { return None };
        if c.len - c.off < min {
            return None;
        }
        let n = c.len - c.off;
        let start = bufs.start(bid) + c.off;
        s.rx.pop_front();
        s.rx_bytes -= n;
        let b = bytes::Bytes::from_owner(Lent {
            mem: bufs.mem.clone(),
            bid,
            start,
            len: n,
        });
        self.rearm(idx);
        Some(b)
    }

    // ---- send ----

    /// Queues `data` (copying it); returns how much was taken (0: the queue is full, the
    /// waker is kept), or the socket's send error.
    pub(crate) fn write<B: std::ops::Deref<Target = [u8]>>(
        &mut self,
        idx: usize,
        waker: &Waker,
        bufs: &[B],
    ) -> io::Result<usize> {
        let limit = self.opts.send_queue;
        let s = self.sock(idx);
        if let Some(e) = s.tx_err {
            return Err(io::Error::from_raw_os_error(e));
        }
        let room = limit.saturating_sub(s.tx_queued);
        if room == 0 {
            set_waker(&mut s.tx_waker, waker);
            return Ok(0);
        }
        let mut taken = 0;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        s.tx_buf.reserve(total.min(room));
        for b in bufs {
            let n = b.len().min(room - taken);
            s.tx_buf.extend_from_slice(&b[..n]);
            taken += n;
            if taken == room {
                break;
            }
        }
        s.tx_queued += taken;
        self.kick_send(idx);
        Ok(taken)
    }

    /// Queues `data` without copying; None if the queue is full (waker kept).
    pub(crate) fn write_bytes(
        &mut self,
        idx: usize,
        waker: &Waker,
        data: &mut Option<Bytes>,
    ) -> Option<io::Result<()>> {
        let limit = self.opts.send_queue;
        let s = self.sock(idx);
        if let Some(e) = s.tx_err {
            return Some(Err(io::Error::from_raw_os_error(e)));
        }
        if s.tx_queued >= limit {
            set_waker(&mut s.tx_waker, waker);
            return None;
        }
        let b = data.take().unwrap_or_default();
        if !s.tx_buf.is_empty() {
            let pending = s.take_tx_buf();
            s.tx_q.push_back(pending);
        }
        s.tx_queued += b.len();
        s.tx_q.push_back(b);
        self.kick_send(idx);
        Some(Ok(()))
    }

    /// Ready once everything queued has been sent (or the send failed).
    pub(crate) fn flush(&mut self, idx: usize, waker: &Waker) -> Option<io::Result<()>> {
        let s = self.sock(idx);
        if let Some(e) = s.tx_err {
            return Some(Err(io::Error::from_raw_os_error(e)));
        }
        if s.tx_queued == 0 && s.tx_cur.is_none() {
            return Some(Ok(()));
        }
        set_waker(&mut s.tx_waker, waker);
        None
    }

    /// Flushes, then shuts the write side down (FIN).
    pub(crate) fn shutdown(&mut self, idx: usize, waker: &Waker) -> Option<io::Result<()>> {
        match self.flush(idx, waker)? {
            Ok(()) => {}
            Err(e) => return Some(Err(e)),
        }
        let s = self.sock(idx);
        if let Some(r) = s.shut_res {
            return Some(if r < 0 && r != -libc::ENOTCONN {
                Err(io::Error::from_raw_os_error(-r))
            } else {
                Ok(())
            });
        }
        set_waker(&mut s.tx_waker, waker);
        if !s.shut_wanted {
            s.shut_wanted = true;
            s.inflight += 1;
            let fd = s.fd;
            self.push(
                opcode::Shutdown::new(types::Fd(fd), libc::SHUT_WR)
                    .build()
                    .user_data(ud(idx, K_SHUT)),
            );
        }
        None
    }

    fn kick_send(&mut self, idx: usize) {
        let zc = self.opts.send_zc_threshold;
        let s = self.sock(idx);
        if s.tx_cur.is_some() || s.tx_err.is_some() || s.detaching {
            return;
        }
        let next = match s.tx_q.pop_front() {
            Some(b) => b,
            None if !s.tx_buf.is_empty() => s.take_tx_buf(),
            None => return,
        };
        if next.is_empty() {
            return self.kick_send_after_empty(idx);
        }
        s.tx_queued -= next.len();
        let (ptr, len) = (next.as_ptr(), next.len().min(u32::MAX as usize) as u32);
        let fd = s.fd;
        s.tx_cur = Some(next);
        s.inflight += 1;
        let e = if zc > 0 && len as usize >= zc {
            count(&stats().send_zc);
            opcode::SendZc::new(types::Fd(fd), ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(ud(idx, K_SENDZC))
        } else {
            opcode::Send::new(types::Fd(fd), ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(ud(idx, K_SEND))
        };
        self.push(e);
    }

    fn kick_send_after_empty(&mut self, idx: usize) {
        let s = self.sock(idx);
        if !s.tx_q.is_empty() || !s.tx_buf.is_empty() {
            self.kick_send(idx);
        }
    }

    fn on_send(&mut self, idx: usize, res: i32, flags: u32, zc: bool) {
        // The queue's buffer grows to about the queue limit; twice that covers its growth.
        let spare_max = 2 * self.opts.send_queue;
        if res > 0 && !(zc && cqueue::notif(flags)) {
            self.ops.send(res as usize);
        }
        let s = self.sock(idx);
        if zc && cqueue::notif(flags) {
            if s.tx_zc_skip > 0 {
                s.tx_zc_skip -= 1;
            } else {
                s.tx_zc_hold.pop_front();
            }
            s.inflight -= 1;
            return;
        }
        let cur = s.tx_cur.take();
        if zc && cqueue::more(flags) {
            // The notification follows; the buffer stays until then (a failed send pins
            // none: its notification can come before those of earlier sends).
            if res < 0 {
                s.tx_zc_skip += 1;
            } else if let Some(c) = &cur {
                s.tx_zc_hold.push_back(c.clone());
            }
        } else {
            s.inflight -= 1;
        }
        if (res == -libc::ECANCELED || res == -libc::EINTR) && s.detaching {
            // `detach` cancelled it before anything was sent: it goes back to the queue,
            // which `detach` hands over unsent. A send the kernel had handed to an io-wq
            // worker ends EINTR when cancelled (nothing sent, as for a TCP send
            // interrupted before it copied anything), not ECANCELED.
            if let Some(c) = cur {
                s.tx_queued += c.len();
                s.tx_q.push_front(c);
            }
        } else if res < 0 {
            if res != -libc::ECANCELED || s.alive {
                s.tx_err = Some(-res);
            }
            s.tx_q.clear();
            s.tx_buf = BytesMut::new();
            s.tx_spare = BytesMut::new();
            s.tx_queued = 0;
        } else if let Some(mut c) = cur {
            let n = res as usize;
            if n < c.len() {
                c.advance(n);
                s.tx_queued += c.len();
                s.tx_q.push_front(c);
            } else {
                s.keep_spare(c, spare_max);
            }
            if s.tx_buf.is_empty() && s.tx_q.is_empty() {
                // Idle: hold one buffer, not two (memory per idle connection).
                let spare = std::mem::take(&mut s.tx_spare);
                if spare.capacity() > s.tx_buf.capacity() {
                    s.tx_buf = spare;
                }
            }
        }
        if s.alive {
            wake(&mut s.tx_waker);
            self.kick_send(idx);
        }
    }

    // ---- connect ----

    /// Starts connecting; poll with `connect_result`.
    pub(crate) fn connect(&mut self, idx: usize, addr: socket2::SockAddr) {
        let s = self.sock(idx);
        let addr = Box::new(addr);
        let (ptr, len) = (addr.as_ptr(), addr.len());
        s.addr = Some(addr);
        s.conn_busy = true;
        s.inflight += 1;
        let fd = s.fd;
        self.push(
            opcode::Connect::new(types::Fd(fd), ptr.cast(), len)
                .build()
                .user_data(ud(idx, K_CONNECT)),
        );
    }

    pub(crate) fn connect_result(&mut self, idx: usize, waker: &Waker) -> Option<io::Result<()>> {
        let s = self.sock(idx);
        match s.conn_res {
            Some(r) if r < 0 => Some(Err(io::Error::from_raw_os_error(-r))),
            Some(_) => Some(Ok(())),
            None => {
                set_waker(&mut s.rx_waker, waker);
                None
            }
        }
    }

    // ---- accept ----

    /// Connections accepted and not yet taken (tests of the bound).
    #[cfg(test)]
    pub(crate) fn accepted_queued(&mut self, idx: usize) -> usize {
        self.sock(idx).acc.len()
    }

    pub(crate) fn accept(&mut self, idx: usize, waker: &Waker) -> Option<io::Result<RawFd>> {
        let s = self.sock(idx);
        if let Some(r) = s.acc.pop_front() {
            return Some(r.map_err(io::Error::from_raw_os_error));
        }
        set_waker(&mut s.rx_waker, waker);
        if !s.acc_armed && !s.acc_stopping {
            s.acc_armed = true;
            s.inflight += 1;
            let fd = s.fd;
            self.push(
                opcode::AcceptMulti::new(types::Fd(fd))
                    .flags(libc::SOCK_CLOEXEC)
                    .build()
                    .user_data(ud(idx, K_ACCEPT)),
            );
        }
        None
    }

    /// Stops a listener's multishot accept without losing a connection: cancels it and
    /// answers true once the kernel has ended it. What it accepted until then stays queued
    /// for `take_accepted`; the listen queue itself is untouched (another process holding
    /// the same socket accepts the rest).
    pub(crate) fn stop_accept(&mut self, idx: usize, waker: &Waker) -> bool {
        let s = self.sock(idx);
        let cancel = !s.acc_stopping && s.acc_armed;
        s.acc_stopping = true;
        if !s.acc_armed {
            return true;
        }
        set_waker(&mut s.rx_waker, waker);
        if cancel {
            self.push(
                opcode::AsyncCancel::new(ud(idx, K_ACCEPT))
                    .build()
                    .user_data(ud(0, K_IGNORE)),
            );
        }
        false
    }

    /// A connection accepted before `stop_accept` finished, if any is left.
    pub(crate) fn take_accepted(&mut self, idx: usize) -> Option<io::Result<RawFd>> {
        self.sock(idx)
            .acc
            .pop_front()
            .map(|r| r.map_err(io::Error::from_raw_os_error))
    }

    fn on_accept(&mut self, idx: usize, res: i32, flags: u32) {
        let mut close = None;
        let mut pause = false;
        {
            let s = self.sock(idx);
            let more = cqueue::more(flags);
            if !more {
                s.acc_armed = false;
                s.acc_pausing = false;
                s.inflight -= 1;
            }
            if res >= 0 {
                if s.alive {
                    s.acc.push_back(Ok(res));
                } else {
                    close = Some(res);
                }
            } else if res != -libc::ECANCELED {
                s.acc.push_back(Err(-res));
            }
            // Bounded: past ACC_MAX accepted and not yet taken, the multishot accept is
            // cancelled; the rest wait in the kernel's listen queue (its backlog bounds them)
            // and `accept` re-arms once the queue here is drained.
            if more && s.acc.len() >= ACC_MAX && !s.acc_pausing && !s.acc_stopping {
                s.acc_pausing = true;
                pause = true;
            }
            wake(&mut s.rx_waker);
        }
        if pause {
            self.push(
                opcode::AsyncCancel::new(ud(idx, K_ACCEPT))
                    .build()
                    .user_data(ud(0, K_IGNORE)),
            );
        }
        if let Some(fd) = close {
            self.push(
                opcode::Close::new(types::Fd(fd))
                    .build()
                    .user_data(ud(0, K_IGNORE)),
            );
        }
    }
}

fn set_waker(slot: &mut Option<Waker>, w: &Waker) {
    match slot {
        Some(old) if old.will_wake(w) => {}
        _ => *slot = Some(w.clone()),
    }
}

fn wake(slot: &mut Option<Waker>) {
    if let Some(w) = slot.take() {
        w.wake();
    }
}

#[cfg(test)]
#[path = "driver_tests.rs"]
mod tests;
