//! Tests of the driver's own bookkeeping, on a real ring: what happens when the kernel
//! takes no submissions.

use std::time::Duration;

use io_uring::opcode;

use super::*;

fn nop() -> squeue::Entry {
    opcode::Nop::new().build().user_data(ud(0, K_IGNORE))
}

/// A ring whose fd no longer is a ring (replaced by /dev/null under it: every
/// `io_uring_enter` fails): a full submission queue ends in `broken`, in bounded time, and
/// later submissions are dropped at once instead of spinning. Before the bound, `push`
/// retried forever (the test's guard below then fails).
#[test]
fn a_ring_that_takes_nothing_is_marked_broken_not_spun_on() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let opts = UringOpts {
            entries: 4,
            ..UringOpts::default()
        };
        let mut d = Driver::new(&opts).expect("io_uring");
        d.break_ring();
        assert!(d.broken().is_none());
        for _ in 0..opts.entries * 2 {
            d.push(nop());
        }
        let why = d.broken().map(str::to_string);
        // Once broken, a push returns at once.
        let t = std::time::Instant::now();
        d.push(nop());
        let again = t.elapsed();
        let _ = tx.send((why, again));
    });
    let (why, again) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("push returned (it spun on a ring that takes no submissions)");
    let why = why.expect("the ring is marked broken");
    assert!(why.contains("takes no submissions"), "{why}");
    assert!(why.contains("1100 tries"), "{why}");
    assert!(
        again < Duration::from_secs(1),
        "a push on a broken ring waited {again:?}"
    );
}

/// Far more submissions than the completion queue holds, never reaped in between (a
/// 4-entry submission queue, 16-entry completion queue, 400 nops): `push` gets each one in,
/// the ring is not marked broken, and every one of the 400 completes (counted from `cqes`
/// and the ring) with none dropped. A kernel that refuses submissions while completions
/// overflow (EBUSY) makes `push` reap them into `cqes`; Linux 6.18 keeps the overflow itself
/// and never refuses here, so on it this checks the count, not that reaping path.
#[test]
fn a_completion_queue_that_overflows_is_reaped_not_broken() {
    const N: usize = 400;
    let opts = UringOpts {
        entries: 4,
        ..UringOpts::default()
    };
    let mut d = Driver::new(&opts).expect("io_uring");
    for _ in 0..N {
        d.push(nop());
    }
    assert!(d.broken().is_none(), "{:?}", d.broken());
    let mut seen = std::mem::take(&mut d.cqes).len();
    for _ in 0..1000 {
        if seen >= N {
            break;
        }
        // Submits what is queued and flushes what the kernel kept aside (GETEVENTS).
        let ts = io_uring::types::Timespec::from(Duration::from_millis(1));
        let args = io_uring::types::SubmitArgs::new().timespec(&ts);
        let _ = d.ring.submitter().submit_with_args(1, &args);
        seen += d.ring.completion().count();
    }
    assert_eq!(
        seen, N,
        "nops completed (reaped by push, then from the ring)"
    );
    let mut cq = d.ring.completion();
    cq.sync();
    assert_eq!(cq.overflow(), 0, "completions the kernel dropped");
}
