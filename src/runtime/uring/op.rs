//! What each submission is for, written into its `user_data` and read back from its
//! completion: an [`Op`], the index of the socket slot it names and that slot's generation
//! when it was submitted.
//!
//! The 64 bits of `user_data`:
//!
//! ```text
//!  63                    32 31                 8 7        0
//! +------------------------+--------------------+----------+
//! |   slot index (32 bits) | generation (24)    | op (8)   |
//! +------------------------+--------------------+----------+
//! ```
//!
//! Invariants:
//! - no [`Op`] is 0, so a zeroed `user_data` is an unknown op, never a receive;
//! - the driver's own operations (the eventfd read and poll, cancellation and close
//!   results) carry [`SlotKey::DRIVER`] (index 0, generation 0) and are told apart by
//!   their op alone; only [`Op::has_slot`] ops name a slot;
//! - a slot's generation moves on (modulo 2^24) each time the slot is freed, so a
//!   completion that outlived its socket names a generation its slot no longer has;
//! - decoding never panics: an op value outside [`Op`] comes back as `Err(value)`.
//!
//! Encoding is a shift and an OR, decoding a mask and a range check: nothing else on the
//! data path.

/// Bits of `user_data` that hold the op.
const OP_BITS: u32 = 8;
/// Bits that hold the slot's generation.
const GEN_BITS: u32 = 24;
/// Where the slot index starts.
const IDX_SHIFT: u32 = OP_BITS + GEN_BITS;
const OP_MASK: u64 = (1 << OP_BITS) - 1;

/// The largest slot index `user_data` can name (more sockets than a process may have fds).
pub(super) const IDX_MAX: usize = u32::MAX as usize;

/// The operation a submission is (one per kind of completion the driver dispatches).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Op {
    /// Multishot receive into the shard's provided buffer ring.
    Recv = 1,
    /// One receive into the socket's private buffer (the ring was empty).
    RecvPrivate = 2,
    /// SEND from the socket's send in flight.
    Send = 3,
    /// SEND_ZC from the socket's send in flight: a result, then a notification.
    SendZc = 4,
    /// SHUTDOWN(SHUT_WR).
    Shutdown = 5,
    /// CONNECT to the address the socket holds.
    Connect = 6,
    /// Multishot accept on a listener.
    Accept = 7,
    /// The read of the shard's wake eventfd (no slot).
    EventFd = 8,
    /// A result nobody waits for: cancellations, closes, test nops (no slot).
    Ignore = 9,
    /// POLLIN on the eventfd, where the kernel will not block the read (no slot).
    EventFdPoll = 10,
    /// POLLIN on a socket that found the ring empty: it receives into a buffer of its own
    /// once data is there, so that an idle socket holds none.
    RecvPoll = 11,
    /// POLLIN a caller waits for before a syscall of its own on the socket (`ready`).
    ReadyIn = 12,
    /// POLLOUT a caller waits for before a syscall of its own on the socket (`ready`).
    ReadyOut = 13,
}

impl Op {
    /// Every op (tests walk it).
    #[cfg(test)]
    pub(super) const ALL: [Op; 13] = [
        Op::Recv,
        Op::RecvPrivate,
        Op::Send,
        Op::SendZc,
        Op::Shutdown,
        Op::Connect,
        Op::Accept,
        Op::EventFd,
        Op::Ignore,
        Op::EventFdPoll,
        Op::RecvPoll,
        Op::ReadyIn,
        Op::ReadyOut,
    ];

    fn from_raw(v: u8) -> Option<Op> {
        Some(match v {
            1 => Op::Recv,
            2 => Op::RecvPrivate,
            3 => Op::Send,
            4 => Op::SendZc,
            5 => Op::Shutdown,
            6 => Op::Connect,
            7 => Op::Accept,
            8 => Op::EventFd,
            9 => Op::Ignore,
            10 => Op::EventFdPoll,
            11 => Op::RecvPoll,
            12 => Op::ReadyIn,
            13 => Op::ReadyOut,
            _ => return None,
        })
    }

    /// Whether the op's completions belong to a socket slot (the rest are the driver's).
    pub(super) fn has_slot(self) -> bool {
        !matches!(self, Op::EventFd | Op::Ignore | Op::EventFdPoll)
    }
}

/// A slot's generation: how many times (modulo 2^24) the slot has been freed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Gen(u32);

impl Gen {
    /// The last generation before the count wraps to 0.
    pub(super) const MAX: Gen = Gen((1 << GEN_BITS) - 1);

    /// The generation after this one (wraps after [`Gen::MAX`]).
    pub(super) fn next(self) -> Gen {
        Gen(self.0.wrapping_add(1) & Self::MAX.0)
    }

    #[cfg(test)]
    pub(super) fn new(v: u32) -> Gen {
        Gen(v & Self::MAX.0)
    }
}

/// A slot as its submissions name it: index and generation, already in their `user_data`
/// bits (the op bits are 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct SlotKey(u64);

impl SlotKey {
    /// The key of the driver's own operations, which name no slot.
    pub(super) const DRIVER: SlotKey = SlotKey(0);

    /// Slot `idx` at `generation`. Panics past [`IDX_MAX`] (more slots than fds).
    pub(super) fn new(idx: usize, generation: Gen) -> SlotKey {
        assert!(idx <= IDX_MAX, "socket slot {idx} past the user_data index");
        SlotKey(((idx as u64) << IDX_SHIFT) | (u64::from(generation.0) << OP_BITS))
    }

    pub(super) fn idx(self) -> usize {
        (self.0 >> IDX_SHIFT) as usize
    }

    pub(super) fn generation(self) -> Gen {
        Gen((self.0 >> OP_BITS) as u32 & Gen::MAX.0)
    }

    /// The `user_data` of `op` on this slot.
    pub(super) fn user_data(self, op: Op) -> u64 {
        self.0 | op as u64
    }
}

/// A completion's `user_data` read back: its op and slot, or the op value that names no
/// [`Op`] (a bug of ours or a corrupted entry: the caller counts it and drops it).
pub(super) fn decode(user_data: u64) -> Result<(Op, SlotKey), u8> {
    let raw = (user_data & OP_MASK) as u8;
    match Op::from_raw(raw) {
        Some(op) => Ok((op, SlotKey(user_data & !OP_MASK))),
        None => Err(raw),
    }
}

#[cfg(test)]
#[path = "op_tests.rs"]
mod tests;
