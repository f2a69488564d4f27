//! `holding`: the wrapper adds only the guard's size (where an `async move` block doubles the
//! future), and drops the guard when the future completes or is dropped.

use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use super::holding;

async fn leaf() {
    std::future::ready(()).await
}

/// A future with about 4 KiB of state across its await.
async fn big() -> usize {
    let b = [7u8; 4096];
    leaf().await;
    std::hint::black_box(&b).len()
}

#[test]
fn the_wrapper_adds_only_the_guard() {
    let inner = std::mem::size_of_val(&big());
    let wrapped = holding(holding(big(), String::new()), Rc::new(()));
    let size = std::mem::size_of_val(&wrapped);
    assert!(
        size <= inner + 64,
        "two guards around a {inner}-byte future made it {size} bytes"
    );
}

struct Flag(Rc<Cell<bool>>);
impl Drop for Flag {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

#[test]
fn the_guard_is_dropped_at_completion_and_on_drop() {
    let mut cx = Context::from_waker(Waker::noop());
    // Completion: dropped as soon as the future is ready, before the wrapper goes.
    let dropped = Rc::new(Cell::new(false));
    let mut f = pin!(holding(big(), Flag(dropped.clone())));
    let mut out = f.as_mut().poll(&mut cx);
    while out.is_pending() {
        assert!(!dropped.get(), "the guard is held while the future runs");
        out = f.as_mut().poll(&mut cx);
    }
    assert_eq!(out, Poll::Ready(4096));
    assert!(dropped.get(), "the guard goes when the future completes");
    // Dropped unfinished: the guard goes with it.
    let dropped = Rc::new(Cell::new(false));
    let f = holding(std::future::pending::<()>(), Flag(dropped.clone()));
    assert!(!dropped.get());
    drop(f);
    assert!(dropped.get());
}
