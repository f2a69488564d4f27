//! Receiving: one multishot RECV per socket into the shard's buffer ring, limited to what is
//! left of the socket's share (the kernel ends it there; on a kernel without the limit it is
//! cancelled once the socket holds its share) and re-armed as its reader drains it; while the
//! ring is empty, a POLLIN and then (data is there) a single RECV into a private buffer, so
//! that a socket waiting for data holds no buffer; and the reads that take the received
//! bytes (copied, in place, or lent without a copy).
//!
//! Invariants:
//! - at most one receive is in flight per socket: `rx_armed` (the multishot), `rx_polling`
//!   (the POLLIN) or `rx_private` (the private buffer, owned by the slot until its
//!   completion), never two;
//! - a socket that is closing, detaching, at EOF or failed is never re-armed;
//! - every ring buffer a completion carries is either queued on its socket (`Src::Ring`)
//!   or given straight back to the ring; reading it to its end, lending it, releasing or
//!   detaching the socket gives it back.

use std::io;
use std::task::Waker;

use io_uring::{cqueue, opcode, squeue, types};

use super::bufring::{BGID, RX_SKEW};
use super::op::Op;
use super::sock::{Src, set_waker, wake};
use super::{Driver, count, stats};

/// Size of the private buffer a socket receives into while the ring is empty.
const PRIVATE_RECV: usize = 16 * 1024;
/// Private receive buffers kept for reuse per shard.
const PRIVATE_POOL: usize = 16;

/// Gives a multishot RECV a total byte limit (`sqe->optlen`, IORING_RECV_MSHOT_LIM; Linux
/// 6.18 has it, the first version that does was not checked): the kernel ends it, without
/// F_MORE, once it has received that many bytes. A pause by cancel alone comes too late:
/// one wake-up of a multishot receive takes up to 32 buffers while data is there, before
/// the shard reaps any of them, so a few bulk streams emptied a 32-buffer ring
/// (`ringmesh_uring_buffer_exhausted`).
fn with_total_limit(e: squeue::Entry, limit: u32) -> squeue::Entry {
    const _: () = assert!(std::mem::size_of::<squeue::Entry>() == 64);
    // SAFETY: `squeue::Entry` is `#[repr(C)]` over the 64-byte `io_uring_sqe`, plain data;
    // bytes 44..48 are its `optlen` (union with `file_index`), which `RecvMulti` leaves 0.
    let mut raw: [u8; 64] = unsafe { std::mem::transmute(e) };
    raw[44..48].copy_from_slice(&limit.to_ne_bytes());
    // SAFETY: the same bytes back, one field set; any value of it is a valid SQE.
    unsafe { std::mem::transmute::<[u8; 64], squeue::Entry>(raw) }
}

/// Tests: sets `addr2`, which a RECV must leave 0 (EINVAL, as an older kernel answers the
/// limit).
#[cfg(test)]
fn refused(e: squeue::Entry) -> squeue::Entry {
    // SAFETY: as in `with_total_limit`; bytes 8..16 are `addr2`.
    let mut raw: [u8; 64] = unsafe { std::mem::transmute(e) };
    raw[8..16].copy_from_slice(&1u64.to_ne_bytes());
    // SAFETY: as in `with_total_limit`.
    unsafe { std::mem::transmute::<[u8; 64], squeue::Entry>(raw) }
}

impl Driver {
    pub(super) fn arm_recv(&mut self, idx: usize) {
        let s = self.sock(idx);
        if s.rx_armed
            || s.rx_private.is_some()
            || s.rx_polling
            || s.rx_eof
            || s.rx_err.is_some()
            || s.detaching
        {
            return;
        }
        s.rx_armed = true;
        s.inflight += 1;
        let held = s.rx_bytes;
        let e = opcode::RecvMulti::new(types::Fd(s.fd), BGID)
            .build()
            .user_data(s.ud(Op::Recv));
        let e = if self.recv_limit {
            // What is left of the socket's share, and at most half of what the ring has
            // free (many sockets at once each take half of the rest, never all of it); at
            // least one buffer's worth.
            let left = self
                .rx_high()
                .saturating_sub(held)
                .min(self.bufs.free_bytes() / 2);
            let e = with_total_limit(e, left.max(self.opts.buf_size as usize) as u32);
            #[cfg(test)]
            let e = if self.refuse_limit { refused(e) } else { e };
            e
        } else {
            e
        };
        self.push(e);
    }

    /// The ring was empty: waits for data without a buffer ([`Op::RecvPoll`]). A private
    /// buffer armed at once sat on an idle socket until its next data (16 KiB each: 700
    /// bytes an idle tunnel averaged, after a burst that emptied the ring).
    fn arm_recv_poll(&mut self, idx: usize) {
        let s = self.sock(idx);
        s.rx_polling = true;
        s.inflight += 1;
        let e = opcode::PollAdd::new(types::Fd(s.fd), libc::POLLIN as u32)
            .build()
            .user_data(s.ud(Op::RecvPoll));
        self.push(e);
    }

    /// Data (or EOF, or an error) is there: received into a buffer of its own, used at once.
    /// Otherwise (cancelled, failed, or the socket is detaching) the waiter is woken: a
    /// detach waits for this poll to end, and a cancelled one ends it.
    pub(super) fn on_recv_poll(&mut self, idx: usize, res: i32) {
        let s = self.sock(idx);
        s.inflight -= 1;
        s.rx_polling = false;
        if res >= 0 && s.alive && !s.detaching && s.rx.is_empty() {
            self.arm_private_recv(idx);
            return;
        }
        if res < 0 && res != -libc::ECANCELED {
            s.rx_err = Some(-res);
        }
        wake(&mut s.rx_waker);
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
        let e = opcode::Recv::new(types::Fd(s.fd), ptr, len)
            .build()
            .user_data(s.ud(Op::RecvPrivate));
        self.push(e);
    }

    /// Bytes a socket may hold from the ring before its receive is paused.
    pub(super) fn rx_high(&self) -> usize {
        (self.opts.buf_size as usize * self.opts.buf_count as usize / 8)
            .max(self.opts.buf_size as usize)
            .min(1 << 20)
    }

    pub(super) fn on_recv(&mut self, idx: usize, res: i32, flags: u32) {
        if res > 0 {
            self.ops.recv(res as usize);
        }
        let more = cqueue::more(flags);
        let bid = cqueue::buffer_select(flags);
        let high = self.rx_high();
        let mut recycle = None;
        let mut cancel = None;
        let mut private = false;
        let mut taken = false;
        // A kernel older than the total limit refuses the SQE (it reads the field as a
        // fixed-file index): receives go on without it, on every socket of the shard.
        let refused_limit = res == -libc::EINVAL && self.recv_limit;
        if refused_limit {
            self.recv_limit = false;
            tracing::debug!(
                "io_uring: this kernel has no multishot receive limit; receives pause by cancel only"
            );
        }
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
                        cancel = Some(s.ud(Op::Recv));
                    }
                } else {
                    recycle = Some(bid);
                }
            } else if res == 0 {
                s.rx_eof = true;
            } else if res == -libc::EINVAL && refused_limit {
                // Armed again below, without the limit.
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
        if let Some(c) = cancel {
            self.cancel(c);
        }
        if private {
            self.arm_recv_poll(idx);
        }
        if refused_limit {
            self.arm_recv(idx);
        }
    }

    pub(super) fn on_private_recv(&mut self, idx: usize, res: i32) {
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
            let s = socks.get(idx);
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
            if s.rx.is_empty() && s.rx.capacity() > 0 {
                // An idle socket keeps no queue (4 chunks, about 130 bytes, each).
                s.rx = std::collections::VecDeque::new();
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

    /// Re-arms the receive once the reader has drained its queue below half the limit.
    fn rearm(&mut self, idx: usize) {
        let high = self.rx_high();
        let s = self.sock(idx);
        if !s.rx_armed && s.rx_private.is_none() && !s.rx_polling && s.rx_bytes < high / 2 {
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
        let s = socks.try_get(idx)?;
        let c = s.rx.front()?;
        let Src::Ring(bid) = c.src else { return None };
        if c.len - c.off < min {
            return None;
        }
        let (off, n) = (c.off, c.len - c.off);
        s.rx.pop_front();
        if s.rx.is_empty() {
            s.rx = std::collections::VecDeque::new();
        }
        s.rx_bytes -= n;
        let b = bufs.lend(bid, off, n);
        self.rearm(idx);
        Some(b)
    }
}
