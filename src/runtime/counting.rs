//! A global allocator that counts the live heap (bytes allocated and not yet freed) on top
//! of the system allocator, for tests that assert memory per connection: a test binary
//! installs it with `#[global_allocator]` and reads [`live`] before and after (counts, not
//! timings: deterministic on a noisy machine). Not used by the proxy itself.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

static LIVE: AtomicIsize = AtomicIsize::new(0);

/// The counting allocator (install it in a test binary).
pub struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter is
// updated besides.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` was allocated by `System` with `l` (through `alloc`/`realloc` here).
        unsafe { System.dealloc(p, l) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: as for `dealloc`; `n` is the caller's new size.
        unsafe { System.realloc(p, l, n) }
    }
}

/// Live heap bytes now (only meaningful where [`Counting`] is the global allocator).
pub fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}
