//! The io_uring engine: a shard's own ring, a single-threaded executor that parks in
//! `io_uring_enter`, and the socket types the flows use when this engine runs.
//!
//! Written on the `io-uring` crate (0.7, maintained) rather than tokio-uring or monoio
//! (both without a release for two years, see bench/README.md): the engine needs multishot
//! accept, multishot receive into a provided buffer ring, SEND_ZC and explicit cancellation,
//! which those runtimes do not expose, and it must run tokio's `AsyncRead`/`AsyncWrite`
//! consumers (tokio-rustls, h2) unchanged.
//!
//! Every data-path socket operation of a shard is an SQE on that shard's ring:
//! - accept: one multishot ACCEPT per listener, re-armed when the kernel ends it;
//! - receive: one multishot RECV per socket into the shard's provided buffer ring (group 0);
//!   a socket holding more than its share is cancelled and re-armed when its reader catches
//!   up; when the ring is empty (`ENOBUFS`) the socket falls back to one RECV into a private
//!   buffer, so an exhausted ring slows a shard down but never stalls a connection;
//! - send: SEND (SEND_ZC above a configurable size), one in flight per socket, later writes
//!   queued behind it up to a per-socket limit; short sends are resubmitted;
//! - connect, shutdown, close and cancellation are SQEs too; timers are the timeout argument
//!   of the `io_uring_enter` the executor parks in; other threads wake a shard through an
//!   eventfd the ring reads.
//!
//! Listener and outbound sockets are still created with `socket(2)` inside the pod's netns
//! (by `inpod`), then handed to the ring.

pub mod driver;
pub mod exec;
pub mod net;
pub(crate) mod rxbuf;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

/// The engine's knobs (see tuning/README.md for the measurement behind each default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UringOpts {
    /// Submission queue entries per shard ring (the completion queue is twice that).
    pub entries: u32,
    /// Kernel submission-queue polling thread per ring, idle timeout in ms (None: off).
    pub sqpoll_idle_ms: Option<u32>,
    /// Buffers in the shard's provided buffer ring (a power of two, ≤ 32768).
    pub buf_count: u16,
    /// Size of each provided buffer in bytes.
    pub buf_size: u32,
    /// Sends of at least this many bytes use SEND_ZC (0: never).
    pub send_zc_threshold: usize,
    /// Bytes a socket may have queued for sending before writers wait.
    pub send_queue: usize,
    /// How completions are delivered to the shard thread.
    pub taskrun: TaskRun,
    /// Multishot receives carry the kernel's total byte limit (`recv::with_total_limit`).
    pub recv_limit: bool,
}

/// io_uring's completion delivery modes (`IORING_SETUP_*TASKRUN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TaskRun {
    /// The kernel interrupts the thread to post completions as they happen.
    Default,
    /// COOP_TASKRUN | TASKRUN_FLAG: no interruption; completions are posted at the next
    /// `io_uring_enter`, which the executor makes whenever the kernel flags pending work.
    #[default]
    Coop,
    /// SINGLE_ISSUER | DEFER_TASKRUN: completions are processed only inside the shard's own
    /// `io_uring_enter` calls.
    Defer,
}

impl Default for UringOpts {
    fn default() -> Self {
        UringOpts {
            entries: 1024,
            sqpoll_idle_ms: None,
            buf_count: 32,
            buf_size: 256 * 1024,
            send_zc_threshold: 0,
            send_queue: 256 * 1024,
            taskrun: TaskRun::default(),
            recv_limit: true,
        }
    }
}

impl UringOpts {
    /// Checks the knobs, with a message naming the bad one.
    pub fn validate(&self) -> Result<(), String> {
        if !self.buf_count.is_power_of_two() {
            return Err(format!(
                "uring buffer count {} is not a power of two",
                self.buf_count
            ));
        }
        if self.buf_count > 32768 {
            return Err(format!(
                "uring buffer count {} is above 32768",
                self.buf_count
            ));
        }
        if self.buf_size < 1024 {
            return Err(format!(
                "uring buffer size {} is below 1024 bytes",
                self.buf_size
            ));
        }
        if !(8..=16384).contains(&self.entries) {
            return Err(format!(
                "uring ring entries {} is outside 8..=16384 (the completion queue is 4x and \
                 the kernel allows 65536)",
                self.entries
            ));
        }
        if self.buf_size > 1 << 20 {
            return Err(format!(
                "uring buffer size {} is above 1 MiB",
                self.buf_size
            ));
        }
        Ok(())
    }
}

/// Checks that this process can run the engine: builds a ring with `opts` and registers a
/// buffer ring, then tears both down. The error is what the kernel said (ENOSYS where
/// io_uring is not built in, EPERM where seccomp or `kernel.io_uring_disabled` blocks it).
pub fn probe(opts: &UringOpts) -> io::Result<()> {
    opts.validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    driver::Driver::new(opts).map(drop)
}

/// Engine-wide counters, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct Stats {
    /// Times a multishot receive ended because the provided buffer ring was empty.
    pub buffer_exhausted: AtomicU64,
    /// Receives that went to a private buffer because the ring was empty.
    pub private_recvs: AtomicU64,
    /// SEND_ZC operations submitted.
    pub send_zc: AtomicU64,
    /// Tasks that panicked: each was dropped, its shard kept running.
    pub task_panics: AtomicU64,
}

static STATS: Stats = Stats {
    buffer_exhausted: AtomicU64::new(0),
    private_recvs: AtomicU64::new(0),
    send_zc: AtomicU64::new(0),
    task_panics: AtomicU64::new(0),
};

/// The engine's counters (all shards of the process).
pub fn stats() -> &'static Stats {
    &STATS
}

pub(crate) fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// One shard's data-path operation counters. Only its shard writes them (a plain load and
/// store, no locked instruction, its own cache line); the metrics endpoint sums all shards'.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct OpStats {
    /// Receive completions that carried data, and their bytes.
    pub recvs: AtomicU64,
    pub recv_bytes: AtomicU64,
    /// Send completions that moved data, and their bytes.
    pub sends: AtomicU64,
    pub send_bytes: AtomicU64,
    /// Completions for a socket slot freed since their operation was submitted (a
    /// generation that is not the slot's): counted and dropped, never handed to the slot's
    /// next occupant. Always 0 unless the driver's in-flight bookkeeping has a bug.
    pub stale: AtomicU64,
    /// Completions whose `user_data` names no operation the driver submits: dropped.
    pub unknown: AtomicU64,
}

impl OpStats {
    fn bump(c: &AtomicU64, n: u64) {
        c.store(c.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }

    fn recv(&self, n: usize) {
        Self::bump(&self.recvs, 1);
        Self::bump(&self.recv_bytes, n as u64);
    }

    fn send(&self, n: usize) {
        Self::bump(&self.sends, 1);
        Self::bump(&self.send_bytes, n as u64);
    }

    fn values(&self) -> [u64; 6] {
        [
            &self.recvs,
            &self.recv_bytes,
            &self.sends,
            &self.send_bytes,
            &self.stale,
            &self.unknown,
        ]
        .map(|c| c.load(Ordering::Relaxed))
    }
}

/// The live shards' counters, plus what shards that have stopped had counted.
static OPS: std::sync::Mutex<(Vec<std::sync::Arc<OpStats>>, [u64; 6])> =
    std::sync::Mutex::new((Vec::new(), [0; 6]));

/// Registers a shard's counters (at ring set-up, not on the data path).
fn register_ops() -> std::sync::Arc<OpStats> {
    let ops = std::sync::Arc::new(OpStats::default());
    OPS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .0
        .push(ops.clone());
    ops
}

/// Folds a stopping shard's counters into the retired totals.
fn retire_ops(ops: &std::sync::Arc<OpStats>) {
    let mut g = OPS.lock().unwrap_or_else(|e| e.into_inner());
    let v = ops.values();
    for (t, x) in g.1.iter_mut().zip(v) {
        *t += x;
    }
    g.0.retain(|o| !std::sync::Arc::ptr_eq(o, ops));
}

/// Receives, received bytes, sends, sent bytes over every shard of the process.
pub fn op_totals() -> [u64; 4] {
    let [recvs, recv_bytes, sends, send_bytes, ..] = all_op_totals();
    [recvs, recv_bytes, sends, send_bytes]
}

/// Stale and unknown completions (`OpStats::stale`, `OpStats::unknown`) over every shard
/// of the process: both dropped undelivered, both 0 in a driver without bugs.
pub fn fault_totals() -> [u64; 2] {
    let [.., stale, unknown] = all_op_totals();
    [stale, unknown]
}

fn all_op_totals() -> [u64; 6] {
    let g = OPS.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = g.1;
    for o in &g.0 {
        for (t, x) in t.iter_mut().zip(o.values()) {
            *t += x;
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_totals_keep_what_stopped_shards_counted() {
        let ops = register_ops();
        let before = op_totals();
        ops.recv(100);
        ops.send(7);
        let mid = op_totals();
        assert!(
            mid[0] > before[0] && mid[1] >= before[1] + 100,
            "{before:?} {mid:?}"
        );
        assert!(
            mid[2] > before[2] && mid[3] >= before[3] + 7,
            "{before:?} {mid:?}"
        );
        let faults = fault_totals();
        OpStats::bump(&ops.stale, 2);
        OpStats::bump(&ops.unknown, 1);
        let faults_mid = fault_totals();
        assert!(
            faults_mid[0] >= faults[0] + 2 && faults_mid[1] > faults[1],
            "{faults:?} {faults_mid:?}"
        );
        retire_ops(&ops);
        let after = op_totals();
        // Totals never go down (other tests' shards may add to them meanwhile).
        assert!(
            after.iter().zip(mid).all(|(a, m)| *a >= m),
            "{mid:?} {after:?}"
        );
        let faults_after = fault_totals();
        assert!(
            faults_after.iter().zip(faults_mid).all(|(a, m)| *a >= m),
            "{faults_mid:?} {faults_after:?}"
        );
    }

    #[test]
    fn bad_knobs_are_named() {
        let bad = |f: fn(&mut UringOpts), what: &str| {
            let mut o = UringOpts::default();
            f(&mut o);
            let e = o.validate().unwrap_err();
            assert!(e.contains(what), "{e}");
        };
        assert!(UringOpts::default().validate().is_ok());
        bad(|o| o.buf_count = 100, "not a power of two");
        bad(|o| o.buf_count = 0, "not a power of two");
        bad(|o| o.buf_size = 100, "below 1024");
        bad(|o| o.buf_size = 4 << 20, "above 1 MiB");
        bad(|o| o.entries = 4, "outside 8..=16384");
        bad(|o| o.entries = 1 << 20, "outside 8..=16384");
    }
}
