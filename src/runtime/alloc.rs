//! The product allocator's housekeeping (mimalloc, the default build's global allocator).
//!
//! mimalloc gives freed memory back to the OS (purges it) only after a delay, 1 s by
//! default, and only when the thread that freed it calls into the allocator again. A shard
//! that goes quiet after a burst — thousands of tunnels opened, then nothing but PINGs —
//! never calls again, so what the burst allocated and freed (handshakes, request buffers,
//! read buffers) stayed in the process's RSS for as long as it stayed quiet. In the lab,
//! 4000 idle tunnels cost 17 000–17 100 B each (both nodes) with mimalloc as it comes,
//! against 10 157 B with the system allocator and 9 996–11 162 B with
//! `MIMALLOC_PURGE_DELAY=0` (tuning/README.md has the runs).
//!
//! Transparent huge pages make it worse: mimalloc advises its arenas for them (on a kernel
//! whose THP mode is `madvise`, only advised memory gets them), so RSS grows and shrinks in
//! 2 MiB steps — an idle node started at 28 MB instead of 18 MB.
//!
//! So: [`configure`] shortens the delay ([`PURGE_DELAY_MS`]) and turns THP off for the
//! process at start, and each shard runs [`tidy`], which calls `mi_collect(false)` every
//! [`TIDY_EVERY`]: it frees the shard's empty pages and purges what has been free for longer
//! than the delay, so a quiet shard's RSS follows what it holds within a fraction of a
//! second. A busy shard reuses what it frees well within the delay, so the bulk path keeps
//! its memory (and its page faults stay away). `MIMALLOC_PURGE_DELAY` or
//! `MIMALLOC_ALLOW_THP` set in the environment is left alone (`MIMALLOC_ALLOW_THP=1` keeps
//! huge pages). Without the `mimalloc` feature (the system allocator) both are no-ops.

use std::time::Duration;

/// What [`configure`] sets mimalloc's purge delay to, in milliseconds (mimalloc: 1000).
pub const PURGE_DELAY_MS: i64 = 100;
/// How often [`tidy`] collects on each shard.
pub const TIDY_EVERY: Duration = Duration::from_millis(100);

/// mimalloc v3's `mi_option_purge_delay` and `mi_option_allow_thp`, with their defaults
/// (options.c) and what they are set to: the `libmimalloc-sys` bindings name v2's options
/// only, so the indices are v3's `mi_option_e` (mimalloc.h), checked against the defaults
/// before use.
#[cfg(feature = "mimalloc")]
const V3_OPTIONS: [(libmimalloc_sys::mi_option_t, &str, i64, i64); 2] = [
    (15, "MIMALLOC_PURGE_DELAY", 1000, PURGE_DELAY_MS),
    (ALLOW_THP, "MIMALLOC_ALLOW_THP", 1, 0),
];
/// v3's `mi_option_allow_thp`.
#[cfg(feature = "mimalloc")]
const ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// Sets mimalloc's purge options for a long-running proxy (once, at process start). An
/// option its variable sets is left alone; one whose value is not mimalloc's default (a
/// different mimalloc underneath) is left alone too, and that is logged.
pub fn configure() {
    #[cfg(feature = "mimalloc")]
    for (opt, var, default, want) in V3_OPTIONS {
        if std::env::var_os(var).is_some() {
            continue;
        }
        // SAFETY: mi_option_get/mi_option_set take any option index; an index past the
        // enum reads and stores nothing.
        let now = unsafe { libmimalloc_sys::mi_option_get(opt) } as i64;
        if now == default {
            // SAFETY: as above.
            unsafe { libmimalloc_sys::mi_option_set(opt, want as _) };
            if opt == ALLOW_THP {
                // mimalloc reads this option at its start for the same call (and has
                // already advised its first arena for huge pages): made here instead.
                // SAFETY: PR_SET_THP_DISABLE takes plain integers and changes only this
                // process's THP flag.
                let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
                if r != 0 {
                    tracing::debug!("PR_SET_THP_DISABLE: {}", std::io::Error::last_os_error());
                }
            }
        } else {
            // Debug, not info: every command calls this, and `lab exec` passes its own
            // output on (a JSON config dump read through it must stay JSON).
            tracing::debug!(
                "mimalloc option {opt} ({var}) is {now}, not the default {default}: left as it is"
            );
        }
    }
}

/// One collection on this thread: frees its empty pages and purges expired free memory.
pub fn collect() {
    #[cfg(feature = "mimalloc")]
    // SAFETY: mi_collect has no preconditions; it works on the calling thread's heap.
    unsafe {
        libmimalloc_sys::mi_collect(false)
    };
}

/// A shard's housekeeping task: [`collect`] every [`TIDY_EVERY`], for the shard's life.
pub async fn tidy() {
    if !cfg!(feature = "mimalloc") {
        return;
    }
    loop {
        super::engine::sleep(TIDY_EVERY).await;
        collect();
    }
}

#[cfg(all(test, feature = "mimalloc"))]
mod tests {
    use super::*;

    /// `configure` sets the options by their v3 indices: reading them back gives what it
    /// set (a wrong index would read another option, or its default), and a collection
    /// runs on a thread that has allocated. Skipped per option whose variable the test's
    /// environment sets.
    #[test]
    fn configure_sets_the_purge_and_thp_options() {
        configure();
        for (opt, var, _, want) in V3_OPTIONS {
            if std::env::var_os(var).is_some() {
                continue;
            }
            // SAFETY: a known option index.
            let now = unsafe { libmimalloc_sys::mi_option_get(opt) } as i64;
            assert_eq!(now, want, "{var}");
        }
        let v: Vec<Vec<u8>> = (0..1000).map(|_| vec![1u8; 4096]).collect();
        drop(v);
        collect();
    }
}
