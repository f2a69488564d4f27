//! The shard's provided buffer ring (buffer group [`BGID`]): the descriptor ring the kernel
//! picks receive buffers from, the one mapping that holds the buffers (`BufMem`), and the
//! buffers lent to the flows as `Bytes` (`Lent`).
//!
//! Invariants:
//! - a buffer is in exactly one place: in the ring (the kernel may write it), in one
//!   socket's receive queue, or lent; the kernel writes only the first, we read only the
//!   other two;
//! - `BufRing::out` counts the buffers out of the ring: `taken` when a completion carries
//!   one, `recycle` when it goes back (consumed, lent and dropped, or not wanted);
//! - a lent buffer keeps the mapping alive (`Arc<BufMem>`) even past the ring's end, and
//!   goes back into the ring only on the shard's thread: at once, or at the driver's next
//!   `turn` when the driver itself dropped it (`RECYCLE_LATER`), never into another ring.

use std::cell::RefCell;
use std::io;
use std::sync::Arc;

use io_uring::types;

use super::DRIVER;

/// Buffer group id of the shard's provided buffer ring.
pub(super) const BGID: u16 = 0;

/// Where received bytes start inside a buffer: 64 bytes past its (page-aligned) start.
/// `memcpy` of ≥ 4 KiB here is `rep movsb`, which runs at ≈ 3 GB/s instead of 45–90 GB/s
/// when the destination sits 1–15 bytes past the source modulo 4096 (4 KiB aliasing;
/// `tuning/README.md`). rustls copies each record's plaintext to 5 (or 14, after an HTTP/2
/// frame header) bytes past a page-aligned allocation, so page-aligned received data hit
/// exactly that case; 64 bytes in, the copy is ≈ 50 bytes *behind*, the fast case.
pub(crate) const RX_SKEW: usize = 64;

thread_local! {
    /// Lent buffers dropped while the driver was borrowed (by the driver itself, say a sent
    /// buffer): recycled at its next `turn`.
    static RECYCLE_LATER: RefCell<Vec<(Arc<BufMem>, u16)>> = const { RefCell::new(Vec::new()) };
}

/// The memory of the provided buffers: one anonymous mapping (pages are touched only when
/// the kernel first fills them), shared with the `Bytes` lent out of it so that it outlives
/// them even if one strays past the ring's end.
pub(super) struct BufMem {
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
    #[allow(clippy::mut_from_ref)] // exclusivity is the caller's contract, documented above
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
pub(super) struct BufRing {
    pub(super) ring: *mut types::BufRingEntry,
    ring_len: usize,
    mem: Arc<BufMem>,
    count: u16,
    size: usize,
    tail: u16,
    /// Buffers out of the ring (received and not yet consumed, or lent).
    pub(super) out: usize,
}

impl BufRing {
    pub(super) fn new(count: u16, size: usize) -> io::Result<BufRing> {
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

    /// A completion carried buffer `bid`: it is out of the ring now.
    pub(super) fn taken(&mut self) {
        self.out += 1;
    }

    /// Gives buffer `bid` back to the kernel.
    pub(super) fn recycle(&mut self, bid: u16) {
        self.push(bid);
        self.publish();
    }

    /// Whether `bid` names one of this ring's buffers (a completion we cannot trust, such
    /// as a stale one, is checked before its buffer is recycled).
    pub(super) fn owns(&self, bid: u16) -> bool {
        bid < self.count
    }

    /// Gives back, at the driver's `turn`, the lent buffers dropped while it was borrowed.
    pub(super) fn recycle_later(&mut self) {
        let later = RECYCLE_LATER.with(|r| std::mem::take(&mut *r.borrow_mut()));
        for (mem, bid) in later {
            if Arc::ptr_eq(&self.mem, &mem) {
                self.recycle(bid);
            }
        }
    }

    /// Buffer `bid`'s received bytes, writable. Only for a buffer held in a socket's receive
    /// queue (out of the ring, not lent): nothing else refers to it while `&mut self` lasts.
    pub(super) fn slice_mut(&mut self, bid: u16, off: usize, len: usize) -> &mut [u8] {
        let start = self.start(bid) + off;
        // SAFETY: received buffers sit in one socket's queue until consumed or lent, and a
        // lent buffer leaves the queue first; `&mut self` keeps this the only live slice.
        unsafe { self.mem.slice_mut(start, len) }
    }

    /// Lends `len` received bytes at `off` in buffer `bid` (which the caller has just taken
    /// off its socket's queue) as `Bytes`: back to the ring when the last clone drops.
    pub(super) fn lend(&self, bid: u16, off: usize, len: usize) -> bytes::Bytes {
        bytes::Bytes::from_owner(Lent {
            mem: self.mem.clone(),
            bid,
            start: self.start(bid) + off,
            len,
        })
    }

    /// Offset of buffer `bid`'s data in the mapping (see [`RX_SKEW`]).
    fn start(&self, bid: u16) -> usize {
        bid as usize * self.size + RX_SKEW
    }

    /// Bytes the ring's free buffers hold.
    pub(super) fn free_bytes(&self) -> usize {
        (self.count as usize).saturating_sub(self.out) * (self.size - RX_SKEW)
    }

    /// Whether lending a buffer (holding it out of the ring until the flows drop it) leaves
    /// enough for the other sockets: at most three quarters may be out.
    pub(super) fn can_lend(&self) -> bool {
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
