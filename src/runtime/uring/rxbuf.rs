//! Receive buffers allocated at the moment data arrives, laid out as the ring's provided
//! buffers are: the data starts [`RX_SKEW`](super::driver::RX_SKEW) bytes past the allocation.
//!
//! Owns: [`fresh_buf`], used by both engines' `read_fresh` (the epoll one in `runtime::net`,
//! the ring's in `uring::net`). It sits below both so that neither socket module uses the
//! other: `uring::net` must not use `runtime::net` (`tests/layering.rs`). Reads only the
//! driver's layout constant; no I/O.

use bytes::{Buf, BufMut, BytesMut};

use super::driver::RX_SKEW;

/// An empty buffer for `cap` received bytes whose data starts 64 bytes past the allocation
/// (see `uring::driver::RX_SKEW`): large allocations are page-aligned, and rustls copying
/// page-aligned plaintext to 5 bytes past its own page-aligned record buffer runs into
/// 4 KiB aliasing (`rep movsb` ≈ 15× slower, tuning/README.md).
pub(crate) fn fresh_buf(cap: usize) -> BytesMut {
    let mut b = BytesMut::with_capacity(RX_SKEW + cap);
    b.put_bytes(0, RX_SKEW);
    b.advance(RX_SKEW);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_starts_rx_skew_past_the_allocation() {
        let cap = 16 * 1024;
        let mut b = fresh_buf(cap);
        assert!(b.is_empty());
        assert!(b.capacity() >= cap, "{}", b.capacity());
        let data = b.as_ptr() as usize;
        // Reclaiming the room before the data moves the (empty) data to the allocation's
        // start: the distance moved is the skew.
        assert!(b.try_reclaim(cap + RX_SKEW));
        assert_eq!(data - b.as_ptr() as usize, RX_SKEW);
    }
}
