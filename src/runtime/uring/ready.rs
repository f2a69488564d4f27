//! Readiness for callers that make a syscall of their own on a ring socket (`splice(2)` of
//! plain passthrough, `runtime::splice`): a one-shot POLLIN or POLLOUT per direction, its
//! result kept until the caller asks again.
//!
//! Invariants:
//! - at most one poll per direction is in flight per socket (`Sock::ready_in`,
//!   `Sock::ready_out`); it counts in `inflight` until its completion;
//! - a poll that completed is reported once, then the direction is idle again: the caller's
//!   syscall (non-blocking) says whether the socket really is ready, and asks again on
//!   EAGAIN;
//! - a cancelled poll (release, detach) reports ready, not an error: its caller, if any,
//!   finds out from its syscall;
//! - a socket the ring receives on is never polled here: the caller stops the ring's use of
//!   it first (`Driver::detach`), so the two never race for the same bytes.

use std::io;
use std::task::Waker;

use io_uring::{opcode, types};

use super::Driver;
use super::op::Op;
use super::sock::{Ready, set_waker, wake};

impl Driver {
    /// Whether the socket is readable (`out` false) or writable (`out` true): Some once a
    /// poll for it completed (an error only if the poll itself failed), None while waiting
    /// (the waker is kept, a poll armed if none is in flight).
    pub(crate) fn ready(&mut self, idx: usize, waker: &Waker, out: bool) -> Option<io::Result<()>> {
        let s = self.sock(idx);
        let (st, slot) = if out {
            (&mut s.ready_out, &mut s.tx_waker)
        } else {
            (&mut s.ready_in, &mut s.rx_waker)
        };
        match *st {
            Ready::Fired(res) => {
                *st = Ready::Idle;
                if res < 0 && res != -libc::ECANCELED {
                    return Some(Err(io::Error::from_raw_os_error(-res)));
                }
                Some(Ok(()))
            }
            Ready::Armed | Ready::Cancelling => {
                set_waker(slot, waker);
                None
            }
            Ready::Idle => {
                set_waker(slot, waker);
                *st = Ready::Armed;
                s.inflight += 1;
                let (mask, op) = if out {
                    (libc::POLLOUT, Op::ReadyOut)
                } else {
                    (libc::POLLIN, Op::ReadyIn)
                };
                let e = opcode::PollAdd::new(types::Fd(s.fd), mask as u32)
                    .build()
                    .user_data(s.ud(op));
                self.push(e);
                None
            }
        }
    }

    pub(super) fn on_ready(&mut self, idx: usize, res: i32, out: bool) {
        let s = self.sock(idx);
        s.inflight -= 1;
        if out {
            s.ready_out = Ready::Fired(res);
            wake(&mut s.tx_waker);
        } else {
            s.ready_in = Ready::Fired(res);
            wake(&mut s.rx_waker);
        }
    }

    /// The cancellations of the socket's readiness polls in flight that none was asked for
    /// yet (release, detach).
    pub(super) fn cancel_ready(&mut self, idx: usize) {
        let s = self.sock(idx);
        let mut cancels = [None, None];
        if s.ready_in == Ready::Armed {
            s.ready_in = Ready::Cancelling;
            cancels[0] = Some(s.ud(Op::ReadyIn));
        }
        if s.ready_out == Ready::Armed {
            s.ready_out = Ready::Cancelling;
            cancels[1] = Some(s.ud(Op::ReadyOut));
        }
        for c in cancels.into_iter().flatten() {
            self.cancel(c);
        }
    }
}
