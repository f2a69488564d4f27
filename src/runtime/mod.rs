//! The platform layer: shards (one OS thread, one core, one single-threaded runtime each) and
//! the socket options of the data path. The one seam all data-path socket I/O goes through, so
//! that another I/O engine (io_uring) can replace the epoll one without touching the flows.
//!
//! Owns: shard threads, CPU pinning, the mailbox that hands work to a shard, and socket
//! options (SO_MARK, SO_ORIGINAL_DST, IP_TRANSPARENT, keepalive). Must not know about flows,
//! config or policy: a shard runs whatever commands its owner sends with its own context `C`.
//!
//! Engines: `uring` (the shard's own ring and executor, `uring`) and `epoll` (tokio's
//! current-thread runtime); `engine` is what the flows call for tasks and timers, `net` for
//! sockets, whichever engine runs.

pub mod alloc;
pub mod counting;
pub mod engine;
pub mod holding;
pub mod net;
pub mod sockopt;
pub mod splice;
pub mod uring;

pub use engine::Engine;
pub use uring::UringOpts;

use std::io;
use std::rc::Rc;
use std::thread::JoinHandle;

use tokio::sync::mpsc;

/// Work for a shard: runs on the shard's thread, inside its runtime (so it may spawn local
/// tasks), with the shard's context.
pub type Command<C> = Box<dyn FnOnce(&Rc<C>) + Send>;

/// A running shard: its mailbox and thread.
pub struct Shard<C> {
    pub id: usize,
    tx: mpsc::UnboundedSender<Command<C>>,
    join: Option<JoinHandle<()>>,
}

impl<C> Shard<C> {
    /// Sends work to the shard. Fails only if the shard has stopped.
    pub fn send(&self, cmd: Command<C>) -> Result<(), ShardGone> {
        self.tx.send(cmd).map_err(|_| ShardGone(self.id))
    }

    /// Whether the shard's thread still runs (false once it has stopped or died).
    pub fn is_alive(&self) -> bool {
        self.join.as_ref().is_some_and(|j| !j.is_finished())
    }

    /// Stops the shard (its tasks are dropped) and waits for its thread.
    pub fn stop(mut self) {
        let (tx, _) = mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("shard {0} has stopped")]
pub struct ShardGone(pub usize);

/// `now + d`, or a time too far ahead to matter (about 30 years) when that does not fit in an
/// `Instant` (a configured timeout of `u64::MAX` seconds): `Instant + Duration` panics on
/// overflow.
pub fn deadline_after(now: std::time::Instant, d: std::time::Duration) -> std::time::Instant {
    const FAR: std::time::Duration = std::time::Duration::from_secs(30 * 365 * 86_400);
    now.checked_add(d)
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|&i| set.is_set(i).unwrap_or(false))
            .collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

/// Starts `n` shards on `engine`. Each builds its context with `init(shard_id)` on its own
/// thread, then runs commands from its mailbox until stopped. With `pin`, shard i runs only
/// on the i-th allowed CPU. The caller has checked the engine can run (`uring::probe`); a
/// shard whose ring still cannot be set up logs it and stops.
pub fn spawn_shards<C: 'static>(
    n: usize,
    pin: bool,
    engine: Engine,
    opts: &UringOpts,
    init: impl Fn(usize) -> C + Send + Sync + 'static,
) -> io::Result<Vec<Shard<C>>> {
    let init = std::sync::Arc::new(init);
    let cpus = allowed_cpus();
    let mut shards = Vec::with_capacity(n);
    for id in 0..n {
        let (tx, mut rx) = mpsc::unbounded_channel::<Command<C>>();
        let init = init.clone();
        let opts = opts.clone();
        let cpu = if pin && !cpus.is_empty() {
            Some(cpus[id % cpus.len()])
        } else {
            None
        };
        let join = std::thread::Builder::new()
            .name(format!("shard-{id}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    pin_to(cpu);
                }
                let main = async move {
                    engine::spawn(alloc::tidy());
                    let ctx = Rc::new(init(id));
                    while let Some(cmd) = rx.recv().await {
                        // A command that panics (a bug) must not take the shard and every
                        // connection on it along: counted, logged, the shard serves on.
                        let r =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cmd(&ctx)));
                        if r.is_err() {
                            uring::count(&uring::stats().task_panics);
                            tracing::error!(
                                shard = id,
                                "a control command panicked on this shard; it serves on"
                            );
                        }
                    }
                };
                if let Err(e) = engine::block_on(engine, &opts, main) {
                    tracing::error!(shard = id, %engine, "shard runtime failed: {e}");
                }
            })?;
        shards.push(Shard {
            id,
            tx,
            join: Some(join),
        });
    }
    Ok(shards)
}

fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok()
        && let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
    {
        tracing::warn!(cpu, "cannot pin shard: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc as std_mpsc;

    #[test]
    fn a_deadline_past_what_an_instant_holds_is_far_ahead_not_a_panic() {
        let now = std::time::Instant::now();
        let d = std::time::Duration::from_secs(5);
        assert_eq!(deadline_after(now, d), now + d);
        let far = deadline_after(now, std::time::Duration::MAX);
        assert!(
            far > now + std::time::Duration::from_secs(86_400 * 365),
            "{far:?}"
        );
    }

    #[test]
    fn shards_run_commands_on_their_own_threads() {
        for engine in [Engine::Uring, Engine::Epoll] {
            shards_run_commands(engine);
        }
    }

    /// A command or a task that panics (a bug) is counted and leaves the shard serving, on
    /// both engines.
    #[test]
    fn a_panicking_command_or_task_leaves_the_shard_serving() {
        for engine in [Engine::Uring, Engine::Epoll] {
            let shards = spawn_shards(1, false, engine, &UringOpts::default(), |id| id).unwrap();
            let before = uring::stats()
                .task_panics
                .load(std::sync::atomic::Ordering::Relaxed);
            shards[0]
                .send(Box::new(|_: &Rc<usize>| panic!("a buggy command")))
                .unwrap();
            shards[0]
                .send(Box::new(|_: &Rc<usize>| {
                    engine::spawn(async { panic!("a buggy task") });
                }))
                .unwrap();
            let (tx, rx) = std_mpsc::channel();
            // After both panics the shard still runs commands and tasks.
            shards[0]
                .send(Box::new(move |_: &Rc<usize>| {
                    engine::spawn(async move {
                        engine::sleep(std::time::Duration::from_millis(20)).await;
                        tx.send(engine::current()).unwrap();
                    });
                }))
                .unwrap();
            assert_eq!(
                rx.recv_timeout(std::time::Duration::from_secs(10)),
                Ok(engine),
                "{engine}"
            );
            assert!(shards[0].is_alive());
            let after = uring::stats()
                .task_panics
                .load(std::sync::atomic::Ordering::Relaxed);
            assert!(after >= before + 2, "{engine}: {before} -> {after}");
            for s in shards {
                s.stop();
            }
        }
    }

    fn shards_run_commands(engine: Engine) {
        let shards = spawn_shards(2, false, engine, &UringOpts::default(), |id| id * 10).unwrap();
        let (tx, rx) = std_mpsc::channel();
        for s in &shards {
            let tx = tx.clone();
            s.send(Box::new(move |ctx: &Rc<usize>| {
                let name = std::thread::current().name().unwrap().to_string();
                assert_eq!(engine::current(), engine);
                tx.send((**ctx, name)).unwrap();
            }))
            .unwrap();
        }
        let mut got: Vec<_> = (0..2).map(|_| rx.recv().unwrap()).collect();
        got.sort();
        assert_eq!(
            got,
            vec![(0, "shard-0".to_string()), (10, "shard-1".to_string())]
        );
        for s in shards {
            s.stop();
        }
    }
}
