//! The uring engine's executor: runs a shard's local tasks on its one thread and parks in
//! `io_uring_enter` (never epoll), waking for completions, for the nearest timer (the
//! enter's timeout argument) or for another thread's wake (an eventfd the ring reads).
//!
//! Written by hand because no maintained executor parks on a ring we own while running
//! tokio-trait I/O (tokio's own driver is epoll; tokio-uring's is unmaintained). Tasks are
//! `!Send` futures in a slab; wakers are `Send` (tokio's channels and `Notify` may wake a
//! shard's task from the control thread): a wake on the shard's thread is a queue push, a
//! wake from elsewhere goes through a mutex-protected queue and the eventfd.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use super::UringOpts;
use super::driver::{self, Driver};

type LocalFut = Pin<Box<dyn Future<Output = ()>>>;

/// How many tasks run between two looks at the ring.
const BUDGET: usize = 64;

struct Shared {
    remote: Mutex<Vec<Arc<TaskWaker>>>,
    notified: AtomicBool,
    efd: RawFd,
}

struct TaskWaker {
    id: usize,
    generation: u64,
    queued: AtomicBool,
    shared: Arc<Shared>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        if CURRENT.with(|c| c.get()) == Arc::as_ptr(&self.shared) {
            READY.with(|r| r.borrow_mut().push_back(self.clone()));
        } else {
            self.shared
                .remote
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(self.clone());
            if !self.shared.notified.swap(true, Ordering::AcqRel) {
                let one = 1u64.to_ne_bytes();
                // SAFETY: writes 8 bytes from a live buffer to the shard's eventfd.
                unsafe { libc::write(self.shared.efd, one.as_ptr().cast(), 8) };
            }
        }
    }
}

struct Slot {
    generation: u64,
    fut: Option<LocalFut>,
    aborted: bool,
}

#[derive(Default)]
struct Exec {
    tasks: Vec<Option<Slot>>,
    free: Vec<usize>,
    generation: u64,
    timers: BTreeMap<(Instant, u64), Waker>,
    timer_seq: u64,
    shared: Option<Arc<Shared>>,
}

thread_local! {
    static EXEC: RefCell<Exec> = RefCell::new(Exec::default());
    static READY: RefCell<VecDeque<Arc<TaskWaker>>> = const { RefCell::new(VecDeque::new()) };
    static CURRENT: Cell<*const Shared> = const { Cell::new(std::ptr::null()) };
}

/// Whether this thread runs a uring executor.
pub fn active() -> bool {
    CURRENT.with(|c| !c.get().is_null())
}

/// A spawned task: abort it to drop its future.
#[derive(Debug, Clone, Copy)]
pub struct TaskHandle {
    id: usize,
    generation: u64,
}

impl TaskHandle {
    /// Drops the task's future (at once, or right after its current poll).
    pub fn abort(&self) {
        let fut = EXEC.with(|e| {
            let mut e = e.borrow_mut();
            let slot = e.tasks.get_mut(self.id)?.as_mut()?;
            if slot.generation != self.generation {
                return None;
            }
            match slot.fut.take() {
                Some(f) => {
                    e.tasks[self.id] = None;
                    e.free.push(self.id);
                    Some(f)
                }
                None => {
                    slot.aborted = true;
                    None
                }
            }
        });
        drop(fut);
    }
}

/// Spawns a local task on this thread's executor.
pub fn spawn(fut: impl Future<Output = ()> + 'static) -> TaskHandle {
    let (waker, handle) = EXEC.with(|e| {
        let mut e = e.borrow_mut();
        e.generation += 1;
        let generation = e.generation;
        let slot = Slot {
            generation,
            fut: Some(Box::pin(fut)),
            aborted: false,
        };
        let id = match e.free.pop() {
            Some(i) => {
                e.tasks[i] = Some(slot);
                i
            }
            None => {
                e.tasks.push(Some(slot));
                e.tasks.len() - 1
            }
        };
        let shared = e.shared.clone().expect("spawn outside a uring executor");
        (
            Arc::new(TaskWaker {
                id,
                generation,
                queued: AtomicBool::new(true),
                shared,
            }),
            TaskHandle { id, generation },
        )
    });
    READY.with(|r| r.borrow_mut().push_back(waker));
    handle
}

/// Runs `main` (and the tasks it spawns) on a new ring until `main` completes; the other
/// tasks are then dropped. Fails only if the ring cannot be set up.
pub fn block_on<T: 'static>(
    opts: &UringOpts,
    main: impl Future<Output = T> + 'static,
) -> io::Result<T> {
    let mut drv = Driver::new(opts)?;
    // SAFETY: plain eventfd creation; the fd is closed below.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if efd < 0 {
        return Err(io::Error::last_os_error());
    }
    drv.set_eventfd(efd);
    driver::install(drv);
    let shared = Arc::new(Shared {
        remote: Mutex::new(Vec::new()),
        notified: AtomicBool::new(false),
        efd,
    });
    CURRENT.with(|c| c.set(Arc::as_ptr(&shared)));
    EXEC.with(|e| e.borrow_mut().shared = Some(shared.clone()));
    let out: Rc<RefCell<Option<T>>> = Rc::new(RefCell::new(None));
    let o = out.clone();
    // Set when the main task is gone, finished or not: a main task that panics is dropped
    // like any task, and the loop must end then too (not serve nothing forever).
    struct Gone(Rc<std::cell::Cell<bool>>);
    impl Drop for Gone {
        fn drop(&mut self) {
            self.0.set(true);
        }
    }
    let gone = Rc::new(std::cell::Cell::new(false));
    let g = Gone(gone.clone());
    let mut failed = None;
    spawn(async move {
        let _g = g;
        let v = main.await;
        *o.borrow_mut() = Some(v);
    });
    while out.borrow().is_none() && !gone.get() {
        if shared.notified.swap(false, Ordering::AcqRel) {
            let remote =
                std::mem::take(&mut *shared.remote.lock().unwrap_or_else(|e| e.into_inner()));
            READY.with(|r| r.borrow_mut().extend(remote));
        }
        run_ready();
        if out.borrow().is_some() {
            break;
        }
        let next = fire_timers();
        let idle =
            READY.with(|r| r.borrow().is_empty()) && !shared.notified.load(Ordering::Acquire);
        let timeout = next.map(|t| t.saturating_duration_since(Instant::now()));
        let broken = driver::with(|d| {
            d.turn(idle, timeout);
            d.broken().map(str::to_string)
        });
        if let Some(why) = broken {
            // Nothing this shard does can reach the kernel any more: end it (its owner sees
            // a shard that died) rather than serve nothing.
            failed = Some(why);
            break;
        }
    }
    // Teardown: drop every task (their sockets release into the driver), then close what
    // is left and the ring.
    let tasks: Vec<_> = EXEC.with(|e| {
        let mut e = e.borrow_mut();
        e.free.clear();
        e.timers.clear();
        e.tasks.drain(..).flatten().filter_map(|s| s.fut).collect()
    });
    drop(tasks);
    READY.with(|r| r.borrow_mut().clear());
    if let Some(mut d) = driver::uninstall() {
        d.turn(false, None);
        d.close_all();
        drop(d);
    }
    CURRENT.with(|c| c.set(std::ptr::null()));
    EXEC.with(|e| e.borrow_mut().shared = None);
    // SAFETY: the eventfd made above; the ring that read it is gone.
    unsafe { libc::close(efd) };
    if let Some(why) = failed {
        return Err(io::Error::other(why));
    }
    let v = out.borrow_mut().take();
    v.ok_or_else(|| {
        io::Error::other("the executor's main task panicked (see the panic message above)")
    })
}

fn run_ready() {
    for _ in 0..BUDGET {
        let Some(w) = READY.with(|r| r.borrow_mut().pop_front()) else {
            return;
        };
        w.queued.store(false, Ordering::Release);
        let fut = EXEC.with(|e| {
            let mut e = e.borrow_mut();
            match e.tasks.get_mut(w.id) {
                Some(Some(slot)) if slot.generation == w.generation => slot.fut.take(),
                _ => None,
            }
        });
        let Some(mut fut) = fut else { continue };
        let waker = Waker::from(w.clone());
        // A panic ends that task only (its connection closes); the shard serves on.
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            fut.as_mut().poll(&mut Context::from_waker(&waker))
        }));
        let done = match polled {
            Ok(p) => p.is_ready(),
            Err(_) => {
                super::count(&super::stats().task_panics);
                tracing::error!(
                    "a task panicked and was dropped (see the panic message above); the shard keeps serving"
                );
                true
            }
        };
        let finished = EXEC.with(|e| {
            let mut e = e.borrow_mut();
            let Some(Some(slot)) = e.tasks.get_mut(w.id) else {
                return Some(fut);
            };
            if done || slot.aborted {
                e.tasks[w.id] = None;
                e.free.push(w.id);
                Some(fut)
            } else {
                slot.fut = Some(fut);
                None
            }
        });
        drop(finished);
    }
}

/// Wakes the timers that are due; returns the next deadline.
fn fire_timers() -> Option<Instant> {
    let now = Instant::now();
    let due: Vec<Waker> = EXEC.with(|e| {
        let mut e = e.borrow_mut();
        let mut due = Vec::new();
        while let Some(entry) = e.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove());
        }
        due
    });
    due.into_iter().for_each(Waker::wake);
    EXEC.with(|e| e.borrow().timers.keys().next().map(|k| k.0))
}

/// A timer on this thread's executor.
#[derive(Debug)]
pub struct Sleep {
    deadline: Instant,
    key: Option<(Instant, u64)>,
}

/// Completes after `d`.
pub fn sleep(d: Duration) -> Sleep {
    Sleep {
        deadline: crate::runtime::deadline_after(Instant::now(), d),
        key: None,
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            if let Some(k) = self.key.take() {
                EXEC.with(|e| e.borrow_mut().timers.remove(&k));
            }
            return Poll::Ready(());
        }
        let deadline = self.deadline;
        let key = self.key;
        let k = EXEC.with(|e| {
            let mut e = e.borrow_mut();
            let k = match key {
                Some(k) => k,
                None => {
                    e.timer_seq += 1;
                    (deadline, e.timer_seq)
                }
            };
            e.timers.insert(k, cx.waker().clone());
            k
        });
        self.key = Some(k);
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            let _ = EXEC.try_with(|e| {
                if let Ok(mut e) = e.try_borrow_mut() {
                    e.timers.remove(&k);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_task_is_dropped_and_the_others_run_on() {
        let before = super::super::stats().task_panics.load(Ordering::Relaxed);
        let got = block_on(&UringOpts::default(), async {
            let _bad = spawn(async {
                sleep(Duration::from_millis(5)).await;
                panic!("a connection's task fails");
            });
            sleep(Duration::from_millis(30)).await;
            let ok = Rc::new(Cell::new(false));
            let o = ok.clone();
            let _t = spawn(async move { o.set(true) });
            sleep(Duration::from_millis(5)).await;
            ok.get()
        })
        .unwrap();
        assert!(got, "a task spawned after the panic ran");
        assert!(super::super::stats().task_panics.load(Ordering::Relaxed) > before);
    }

    /// A shard whose ring stops taking submissions ends with an error naming it (its owner
    /// then sees a dead shard), instead of spinning on a ring that does nothing.
    #[test]
    fn an_executor_whose_ring_breaks_ends_with_the_reason() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = block_on(&UringOpts::default(), async {
                driver::with(|d| d.break_ring());
                loop {
                    sleep(Duration::from_millis(1)).await;
                }
            });
            let _ = tx.send(r.err().map(|e| e.to_string()));
        });
        let why = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the executor ended")
            .expect("with an error");
        assert!(why.contains("io_uring_enter failed"), "{why}");
    }

    #[test]
    fn runs_tasks_timers_and_remote_wakes() {
        let opts = UringOpts::default();
        let got = block_on(&opts, async {
            let hits = Rc::new(Cell::new(0));
            let h = hits.clone();
            let t = spawn(async move {
                sleep(Duration::from_millis(20)).await;
                h.set(h.get() + 1);
            });
            // An aborted task never runs its body.
            let h = hits.clone();
            let a = spawn(async move {
                sleep(Duration::from_millis(5)).await;
                h.set(h.get() + 100);
            });
            a.abort();
            let _ = t;
            // A wake from another thread (tokio's oneshot, sent from a std thread).
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                let _ = tx.send(7);
            });
            let v = rx.await.unwrap();
            sleep(Duration::from_millis(10)).await;
            (v, hits.get())
        })
        .unwrap();
        assert_eq!(got, (7, 1));
    }
}
