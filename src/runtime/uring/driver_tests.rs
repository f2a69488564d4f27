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
/// 4-entry submission queue, 16-entry completion queue, 400 nops): `push` gets each one in
/// (reaping what the kernel will not hold beside them), the ring is not marked broken, and
/// after a turn every completion is taken and none was dropped.
#[test]
fn a_completion_queue_that_overflows_is_reaped_not_broken() {
    let opts = UringOpts {
        entries: 4,
        ..UringOpts::default()
    };
    let mut d = Driver::new(&opts).expect("io_uring");
    for _ in 0..400 {
        d.push(nop());
    }
    assert!(d.broken().is_none(), "{:?}", d.broken());
    d.turn(false, None);
    d.turn(false, None);
    assert!(d.cqes.is_empty(), "left undispatched: {}", d.cqes.len());
    let mut cq = d.ring.completion();
    cq.sync();
    assert_eq!(cq.len(), 0, "completions left in the ring");
    assert_eq!(cq.overflow(), 0, "completions the kernel dropped");
}
