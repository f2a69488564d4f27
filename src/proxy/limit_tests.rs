//! Tests of the connection bound's bookkeeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use super::*;

struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn at_the_bound_accepting_waits_until_a_connection_closes() {
    let l = ConnLimit::new(2);
    let woken = Arc::new(Count(AtomicUsize::new(0)));
    let waker = Waker::from(woken.clone());
    let mut cx = Context::from_waker(&waker);
    let a = l.take();
    assert_eq!(l.poll_room(&mut cx), Poll::Ready(()));
    let b = l.take();
    assert_eq!(l.poll_room(&mut cx), Poll::Pending);
    // Registered once, however often it is polled.
    assert_eq!(l.poll_room(&mut cx), Poll::Pending);
    // Over the bound: what the engine already accepted is still served (counted).
    let c = l.take();
    assert_eq!(l.open(), 3);
    drop(c);
    assert_eq!(
        woken.0.load(Ordering::Relaxed),
        1,
        "woken when a slot frees"
    );
    assert_eq!(l.poll_room(&mut cx), Poll::Pending, "still at the bound");
    drop(a);
    assert_eq!(l.poll_room(&mut cx), Poll::Ready(()));
    assert_eq!(woken.0.load(Ordering::Relaxed), 2);
    drop(b);
    assert_eq!(l.open(), 0);
}

#[test]
fn the_default_bound_follows_the_open_files_limit() {
    assert_eq!(default_max(20_000), 20_000 - 2_500);
    assert_eq!(default_max(1_048_576), 1_048_576 - 4_096);
    assert_eq!(default_max(256), 192);
    assert_eq!(default_max(0), 64);
    assert_eq!(per_shard(8_750, 2), 4_375);
    assert_eq!(per_shard(5, 2), 3);
    assert_eq!(per_shard(1, 0), 1);
    assert_eq!(ConnLimit::new(0).max(), 1);
}
