//! Sending: writes copied into the socket's buffer or handed over as `Bytes`, queued up to
//! the socket's limit; one SEND (SEND_ZC at or above the configured size) in flight per
//! socket, resubmitted after a short send; flush and shutdown (FIN).
//!
//! Invariants:
//! - at most one send is in flight per socket (`tx_cur`), and the bytes it points at are
//!   held there until its result;
//! - a SEND_ZC that reports MORE keeps its buffer in `tx_zc_hold` until its notification
//!   (the kernel may still read it), and keeps the socket's `inflight` until then too; a
//!   failed one pins nothing and its notification frees nothing (`tx_zc_skip`);
//! - `tx_queued` is the bytes written and not yet handed to a send: `tx_q`, then `tx_buf`.

use std::io;
use std::task::Waker;

use bytes::{Buf, Bytes, BytesMut};
use io_uring::{cqueue, opcode, types};

use super::op::Op;
use super::sock::{set_waker, wake};
use super::{Driver, count, stats};

/// A send smaller than this leaves an idle socket no buffer larger than this.
const QUIET_SEND: usize = 4 * 1024;

impl Driver {
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
            let e = opcode::Shutdown::new(types::Fd(s.fd), libc::SHUT_WR)
                .build()
                .user_data(s.ud(Op::Shutdown));
            self.push(e);
        }
        None
    }

    pub(super) fn on_shutdown(&mut self, idx: usize, res: i32) {
        let s = self.sock(idx);
        s.inflight -= 1;
        s.shut_res = Some(res);
        wake(&mut s.tx_waker);
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
                .user_data(s.ud(Op::SendZc))
        } else {
            opcode::Send::new(types::Fd(fd), ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(s.ud(Op::Send))
        };
        self.push(e);
    }

    fn kick_send_after_empty(&mut self, idx: usize) {
        let s = self.sock(idx);
        if !s.tx_q.is_empty() || !s.tx_buf.is_empty() {
            self.kick_send(idx);
        }
    }

    pub(super) fn on_send(&mut self, idx: usize, res: i32, flags: u32, zc: bool) {
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
                // Idle: hold one buffer, not two (memory per idle connection), and after a
                // small send none larger than a small one (a quiet TLS connection's
                // records come in 16 KiB buffers, kept here for nothing: ≈ 170 bytes an
                // idle tunnel on each node). A streaming socket's sends are large.
                let spare = std::mem::take(&mut s.tx_spare);
                if spare.capacity() > s.tx_buf.capacity() {
                    s.tx_buf = spare;
                }
                if n < QUIET_SEND && s.tx_buf.capacity() > QUIET_SEND {
                    s.tx_buf = BytesMut::new();
                }
            }
        }
        if s.alive {
            wake(&mut s.tx_waker);
            self.kick_send(idx);
        }
    }
}
