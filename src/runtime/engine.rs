//! Which I/O engine a shard runs, and the executor services the flows use through it:
//! spawning local tasks, sleeping, timeouts. On `epoll` they are tokio's; on `uring` they
//! are the ring executor's (`uring::exec`). The engine is a per-thread fact, set when a
//! shard starts.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use super::uring;

/// The shard I/O engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// io_uring: every socket operation is an SQE on the shard's own ring.
    #[default]
    Uring,
    /// epoll, through tokio's current-thread runtime.
    Epoll,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Uring => "uring",
            Engine::Epoll => "epoll",
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The engine of the calling thread (epoll unless it runs a uring shard).
pub fn current() -> Engine {
    if uring::exec::active() {
        Engine::Uring
    } else {
        Engine::Epoll
    }
}

/// A spawned local task.
#[derive(Debug, Clone)]
pub enum Task {
    Tokio(tokio::task::AbortHandle),
    Uring(uring::exec::TaskHandle),
}

impl Task {
    /// Drops the task.
    pub fn abort(&self) {
        match self {
            Task::Tokio(h) => h.abort(),
            Task::Uring(h) => h.abort(),
        }
    }
}

/// Spawns a task on the calling shard (it must run inside a shard or a tokio `LocalSet`).
pub fn spawn(f: impl Future<Output = ()> + 'static) -> Task {
    match current() {
        Engine::Uring => Task::Uring(uring::exec::spawn(f)),
        Engine::Epoll => Task::Tokio(tokio::task::spawn_local(Guarded(Box::pin(f))).abort_handle()),
    }
}

/// A task on the epoll engine whose panic is counted (`ringmesh_task_panics_total`) and ends
/// only the task, as on the uring engine (tokio would catch it too, silently).
struct Guarded<F>(Pin<Box<F>>);

impl<F: Future<Output = ()>> Future for Guarded<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let f = &mut self.0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.as_mut().poll(cx))) {
            Ok(p) => p,
            Err(_) => {
                uring::count(&uring::stats().task_panics);
                Poll::Ready(())
            }
        }
    }
}

/// A timer of the calling shard's engine.
pub enum Sleep {
    Tokio(Pin<Box<tokio::time::Sleep>>),
    Uring(uring::exec::Sleep),
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.get_mut() {
            Sleep::Tokio(s) => s.as_mut().poll(cx),
            Sleep::Uring(s) => Pin::new(s).poll(cx),
        }
    }
}

/// Completes after `d`.
pub fn sleep(d: Duration) -> Sleep {
    match current() {
        Engine::Uring => Sleep::Uring(uring::exec::sleep(d)),
        Engine::Epoll => Sleep::Tokio(Box::pin(tokio::time::sleep(d))),
    }
}

/// The time ran out first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// Runs `f` for at most `d`.
pub async fn timeout<F: Future>(d: Duration, f: F) -> Result<F::Output, Elapsed> {
    let mut f = pin!(f);
    let mut s = pin!(sleep(d));
    poll_fn(|cx| {
        if let Poll::Ready(v) = f.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        if s.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(Elapsed));
        }
        Poll::Pending
    })
    .await
}

/// Runs `main` on a fresh executor of `engine` on this thread (tests and tools; shards use
/// `spawn_shards`).
pub fn block_on<T: 'static>(
    engine: Engine,
    opts: &uring::UringOpts,
    main: impl Future<Output = T> + 'static,
) -> std::io::Result<T> {
    match engine {
        Engine::Uring => uring::exec::block_on(opts, main),
        Engine::Epoll => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let local = tokio::task::LocalSet::new();
            Ok(local.block_on(&rt, main))
        }
    }
}
