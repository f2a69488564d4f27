//! Accepting and connecting: one multishot ACCEPT per listener, paused while `ACC_MAX`
//! accepted connections wait for the accept loop and stopped (without losing one) for a
//! hand-over; one CONNECT per outbound socket.
//!
//! Invariants:
//! - at most one accept is in flight per listener (`acc_armed`), and it is not re-armed
//!   once `stop_accept` was called;
//! - an accepted fd is owned by the slot until `accept`/`take_accepted` hands it out; one
//!   accepted for a socket whose handle is gone is closed at once;
//! - a connect's address is held by the slot (`addr`) until the connect's completion (the
//!   kernel is done with it then), so it outlives the operation and no longer (a socket
//!   address is 128 bytes, and every upstream connection made one).

use std::io;
use std::os::fd::RawFd;
use std::task::Waker;

use io_uring::{cqueue, opcode, types};

use super::Driver;
use super::op::Op;
use super::sock::{set_waker, wake};

/// Connections a listener holds accepted but not yet taken by its accept loop.
pub(crate) const ACC_MAX: usize = 256;

impl Driver {
    /// Starts connecting; poll with `connect_result`.
    pub(crate) fn connect(&mut self, idx: usize, addr: socket2::SockAddr) {
        let s = self.sock(idx);
        let addr = Box::new(addr);
        let (ptr, len) = (addr.as_ptr(), addr.len());
        s.addr = Some(addr);
        s.conn_busy = true;
        s.inflight += 1;
        let e = opcode::Connect::new(types::Fd(s.fd), ptr.cast(), len)
            .build()
            .user_data(s.ud(Op::Connect));
        self.push(e);
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

    pub(super) fn on_connect(&mut self, idx: usize, res: i32) {
        let s = self.sock(idx);
        s.inflight -= 1;
        s.conn_busy = false;
        s.conn_res = Some(res);
        s.addr = None;
        wake(&mut s.rx_waker);
    }

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
            let e = opcode::AcceptMulti::new(types::Fd(s.fd))
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data(s.ud(Op::Accept));
            self.push(e);
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
            let target = s.ud(Op::Accept);
            self.cancel(target);
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

    pub(super) fn on_accept(&mut self, idx: usize, res: i32, flags: u32) {
        let mut close = None;
        let mut pause = None;
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
                pause = Some(s.ud(Op::Accept));
            }
            wake(&mut s.rx_waker);
        }
        if let Some(target) = pause {
            self.cancel(target);
        }
        if let Some(fd) = close {
            self.close_fd(fd);
        }
    }
}
