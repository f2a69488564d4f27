//! A future that keeps a value alive until it completes: `holding(fut, guard)`.
//!
//! The obvious `async move { let _guard = guard; fut.await }` stores `fut` twice in its state
//! machine — once as the captured value and once as the awaited one (rustc does not overlap
//! an `async` block's captures with its locals) — so every such wrapper doubled the size of
//! a connection's task: the outbound task, wrapped twice (connection-limit slot, live-count
//! guard), was 21 000 bytes for a 5 300-byte connection future, on every idle tunnel. This
//! wrapper stores `fut` once: its size is `fut`'s plus `guard`'s.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

pin_project_lite::pin_project! {
    /// `fut`, with `guard` dropped when the future completes or is dropped.
    #[must_use = "futures do nothing unless polled"]
    pub struct Holding<F, G> {
        #[pin]
        fut: F,
        guard: Option<G>,
    }
}

/// Runs `fut` while holding `guard`; the guard is dropped as soon as `fut` completes (or
/// when the wrapper is dropped), as a `let _guard` in an `async` block would be.
pub fn holding<F: Future, G>(fut: F, guard: G) -> Holding<F, G> {
    Holding {
        fut,
        guard: Some(guard),
    }
}

impl<F: Future, G> Future for Holding<F, G> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = this.fut.poll(cx);
        if out.is_ready() {
            this.guard.take();
        }
        out
    }
}

#[cfg(test)]
#[path = "holding_tests.rs"]
mod tests;
