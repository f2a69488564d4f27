//! A plaintext TCP relay between two sockets that can be stopped mid-transfer and continued
//! in another process byte-exactly (hitless upgrades), as `link` does for HBONE connections.
//!
//! Owns: the relay task ([`run`], [`resume`]): both directions copied with half-close
//! preserved (EOF on one side becomes FIN on the other), benign ends (reset, broken pipe) as
//! in `copy_h2`, the same performance properties (read buffers allocated only when data is
//! there, adaptive read size, zero-copy writes on uring: the pieces of `io` are reused); the
//! control handle ([`RelayCtl`]) that asks for an export; and the exported state
//! ([`RelayState`], versioned bytes with a decode that checks everything).
//!
//! Why it is safe to stop at any await: every byte the relay holds lives in explicit state
//! (`Dir::held`), never only in the locals of a future. Reads are cancel-safe on both engines
//! (`read_fresh` takes data out of the socket only in the poll that returns it: on uring the
//! bytes the ring received ahead stay queued in the driver until read, and `Stream::detach`
//! hands them over; on epoll the kernel keeps them). Writes go through [`write_kept`], which
//! leaves what the socket has not accepted in `held`: on epoll it advances `held` as the
//! kernel takes bytes; on uring `write_bytes` takes a buffer whole or not at all (it waits
//! only while the send queue is full), and what the ring queued but did not send comes back
//! from `detach`. On an export both sockets are detached and, per direction, the bytes the
//! writing socket had queued come first, then what the relay held, then what the reading
//! socket had received ahead: the order the far end would have seen them in.
//!
//! Not here: dialing, policy, metrics, access logs (callers'; their bookkeeping travels as
//! opaque `meta`), the hand-over socket (`app::handover`).

use std::cell::{Cell, RefCell};
use std::future::{Future, poll_fn};
use std::io;
use std::os::fd::OwnedFd;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWrite;
use tokio::sync::oneshot;

use super::{Counters, ReadSize, is_benign, read_fresh};
use crate::runtime::net::{ReadHalf, Stream, WriteHalf};

#[path = "relay_splice.rs"]
mod splice;

const MAGIC: &[u8; 4] = b"RMRL";
const VERSION: u8 = 1;
/// Bounds on what one exported direction may carry: far above what a relay holds (a read
/// buffer, the ring's read-ahead and send queue: a few MiB), far below what would hurt.
const MAX_PENDING: usize = 64 << 20;
const MAX_META: usize = 1 << 20;

/// How a relay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both directions ended (FIN each way, or the peer went away).
    Done,
    /// A socket failed (or an export failed after the sockets were detached): the
    /// connection is closed.
    Failed(String),
    /// Handed over: the export was delivered to the caller of [`RelayCtl::export`].
    Moved,
}

/// What an export gives: the state and the sockets (`a`, then `b`).
#[derive(Debug)]
pub struct RelayExport {
    pub state: RelayState,
    pub fds: Vec<OwnedFd>,
}

/// One direction of a relay in transit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirState {
    /// Bytes the writing socket had queued and not sent; already counted. Written first.
    pub unsent: Vec<u8>,
    /// Bytes read and not yet written (what the relay held, then what the reading socket had
    /// received ahead); not counted yet. Written after `unsent`.
    pub unwritten: Vec<u8>,
    /// The reading side reached EOF: the write side is shut once the bytes are written.
    pub eof: bool,
    /// The direction is over: FIN sent (or its writing peer went away). Implies `eof` and no
    /// bytes pending.
    pub shut: bool,
    /// Bytes counted so far (this process and those before).
    pub bytes: u64,
}

/// A relay in transit to the next process: both directions and the caller's bookkeeping.
/// `a_to_b` is what `run`'s first socket sends (counted as `sent`), `b_to_a` the other way.
/// The hand-over format is [`RelayState::encode`]'s; the serde derives let a caller embed
/// the state in its own records (`import` checks it either way).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayState {
    pub a_to_b: DirState,
    pub b_to_a: DirState,
    /// The caller's own bookkeeping (labels, access-log fields): opaque here.
    pub meta: Vec<u8>,
}

/// Why bytes are not a relay this build can continue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayStateError {
    #[error("not an exported TCP relay (bad magic)")]
    Magic,
    #[error("exported TCP relay has version {0}; this build reads version {VERSION}")]
    Version(u8),
    #[error("exported TCP relay is corrupt: {0}")]
    Corrupt(&'static str),
}

/// Why an exported relay cannot be continued here.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("hand-over: {0} sockets for a TCP relay (it has 2); the sender is broken")]
    Sockets(usize),
    #[error("hand-over: {0}")]
    State(#[from] RelayStateError),
    #[error("hand-over: cannot adopt a relayed socket: {0}")]
    Socket(#[from] io::Error),
}

/// The control handle of one relay (cheap to clone; everything runs on the relay's shard
/// thread). Give one to each relay.
#[derive(Clone, Default)]
pub struct RelayCtl(Rc<CtlInner>);

#[derive(Default)]
struct CtlInner {
    export_to: RefCell<Option<oneshot::Sender<Result<RelayExport, String>>>>,
    /// An export was asked for: both directions stop at their next await.
    stopping: Cell<bool>,
    ended: Cell<bool>,
    /// The two directions' tasks, woken when `stopping` is set.
    wakers: RefCell<[Option<Waker>; 2]>,
    /// Copy through buffers instead of splicing (`set_splice(false)`).
    copy: Cell<bool>,
}

impl std::fmt::Debug for RelayCtl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayCtl")
            .field("stopping", &self.0.stopping.get())
            .field("ended", &self.0.ended.get())
            .finish()
    }
}

impl RelayCtl {
    /// A relay that splices (`relay_splice`), the node proxy's default.
    pub fn new() -> RelayCtl {
        RelayCtl::default()
    }

    /// Whether the relay moves bytes with splice(2) (true) or copies them through buffers
    /// (`--splice false`); read when the relay starts or resumes.
    pub fn set_splice(&self, on: bool) {
        self.0.copy.set(!on);
    }

    /// Hand-over: asks the relay to stop at a safe point and export both sockets with every
    /// byte in flight; it then ends `Moved`. Refused (the relay goes on) while a direction
    /// has failed, or when the relay has ended or an export is already under way.
    pub fn export(&self) -> oneshot::Receiver<Result<RelayExport, String>> {
        let (tx, rx) = oneshot::channel();
        let i = &self.0;
        if i.ended.get() {
            let _ = tx.send(Err("the relay has ended".into()));
        } else if i.export_to.borrow().is_some() {
            let _ = tx.send(Err("an export of this relay is already under way".into()));
        } else {
            *i.export_to.borrow_mut() = Some(tx);
            i.stopping.set(true);
            for w in i.wakers.borrow_mut().iter_mut() {
                if let Some(w) = w.take() {
                    w.wake();
                }
            }
        }
        rx
    }

    /// Whether the relay has ended (done, failed or moved).
    pub fn is_ended(&self) -> bool {
        self.0.ended.get()
    }

    fn poll_stop(&self, slot: usize, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.stopping.get() {
            return Poll::Ready(());
        }
        let mut w = self.0.wakers.borrow_mut();
        match &mut w[slot] {
            Some(old) if old.will_wake(cx.waker()) => {}
            s => *s = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    fn end(&self, why: &str) {
        self.0.ended.set(true);
        self.0.stopping.set(false);
        if let Some(tx) = self.0.export_to.borrow_mut().take() {
            let _ = tx.send(Err(why.to_string()));
        }
    }
}

/// A relay continued from another process (see [`import`]); run it with [`resume`].
#[derive(Debug)]
pub struct Imported(Relay);

impl Imported {
    /// The bookkeeping given to [`run`] in the process before.
    pub fn meta(&self) -> &[u8] {
        &self.0.meta
    }

    /// Bytes carried `a` → `b` before (counted by the processes before this one).
    pub fn sent_before(&self) -> u64 {
        self.0.fwd.carried
    }

    /// Bytes carried `b` → `a` before.
    pub fn received_before(&self) -> u64 {
        self.0.back.carried
    }
}

/// Relays between `a` and `b` until both directions end or the relay is exported through
/// `ctl`: `a` → `b` counts as sent, `b` → `a` as received. `meta` travels with an export.
pub async fn run(
    a: Stream,
    b: Stream,
    meta: Vec<u8>,
    counters: Rc<Counters>,
    ctl: RelayCtl,
) -> RelayEnd {
    let relay = Relay {
        a,
        b,
        fwd: Dir::default(),
        back: Dir::default(),
        meta,
    };
    relay_until_end(relay, counters, ctl).await
}

/// Continues a relay another process exported: `fds` are its sockets in the order of
/// [`RelayExport::fds`]. Must run on the shard (engine) that will run the relay.
pub fn import(state: &RelayState, fds: Vec<OwnedFd>) -> Result<Imported, ImportError> {
    state.check()?;
    let [fa, fb]: [OwnedFd; 2] = fds
        .try_into()
        .map_err(|f: Vec<_>| ImportError::Sockets(f.len()))?;
    Ok(Imported(Relay {
        a: Stream::from_fd(fa)?,
        b: Stream::from_fd(fb)?,
        fwd: Dir::from_state(&state.a_to_b),
        back: Dir::from_state(&state.b_to_a),
        meta: state.meta.clone(),
    }))
}

/// Runs an imported relay: each direction first writes the bytes it carried over (those
/// the old socket had queued, then those read and not written), then relays on. Only bytes
/// moved here are added to `counters` (see [`Imported::sent_before`]).
pub async fn resume(relay: Imported, counters: Rc<Counters>, ctl: RelayCtl) -> RelayEnd {
    relay_until_end(relay.0, counters, ctl).await
}

impl RelayState {
    /// The state as bytes (for the hand-over socket).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(
            64 + self.meta.len()
                + [&self.a_to_b, &self.b_to_a]
                    .iter()
                    .map(|d| d.unsent.len() + d.unwritten.len())
                    .sum::<usize>(),
        );
        w.extend_from_slice(MAGIC);
        w.push(VERSION);
        for d in [&self.a_to_b, &self.b_to_a] {
            w.push(u8::from(d.eof) | u8::from(d.shut) << 1);
            w.extend_from_slice(&d.bytes.to_be_bytes());
            put(&mut w, &d.unsent);
            put(&mut w, &d.unwritten);
        }
        put(&mut w, &self.meta);
        w
    }

    /// Reads what [`RelayState::encode`] wrote; checks everything (the bytes come from
    /// another process, maybe another build).
    pub fn decode(b: &[u8]) -> Result<RelayState, RelayStateError> {
        let mut r = b;
        if take(&mut r, 4)? != MAGIC {
            return Err(RelayStateError::Magic);
        }
        let v = take(&mut r, 1)?[0];
        if v != VERSION {
            return Err(RelayStateError::Version(v));
        }
        let mut dirs = [DirState::default(), DirState::default()];
        for d in &mut dirs {
            let f = take(&mut r, 1)?[0];
            if f & !0b11 != 0 {
                return Err(RelayStateError::Corrupt("unknown direction flags"));
            }
            d.eof = f & 1 != 0;
            d.shut = f & 2 != 0;
            d.bytes = u64_at(&mut r)?;
            d.unsent = get(&mut r, MAX_PENDING)?.to_vec();
            d.unwritten = get(&mut r, MAX_PENDING)?.to_vec();
        }
        let meta = get(&mut r, MAX_META)?.to_vec();
        if !r.is_empty() {
            return Err(RelayStateError::Corrupt("trailing bytes"));
        }
        let [a_to_b, b_to_a] = dirs;
        let s = RelayState {
            a_to_b,
            b_to_a,
            meta,
        };
        s.check()?;
        Ok(s)
    }

    /// Whether the state is one a relay can be in (decode checks it; so does `import`, for
    /// a state that came another way, e.g. through serde).
    pub fn check(&self) -> Result<(), RelayStateError> {
        use RelayStateError::Corrupt;
        for d in [&self.a_to_b, &self.b_to_a] {
            if d.unsent.len() > MAX_PENDING || d.unwritten.len() > MAX_PENDING {
                return Err(Corrupt("more bytes in flight than a relay holds"));
            }
            if d.shut && !d.eof {
                return Err(Corrupt("a direction shut before its EOF"));
            }
            if d.shut && !(d.unsent.is_empty() && d.unwritten.is_empty()) {
                return Err(Corrupt("bytes pending on a direction already shut"));
            }
            if d.unsent.len() as u64 > d.bytes {
                return Err(Corrupt("more bytes queued than counted"));
            }
        }
        if self.meta.len() > MAX_META {
            return Err(Corrupt("bookkeeping larger than 1 MiB"));
        }
        Ok(())
    }
}

/// Everything a relay is: its sockets, both directions' state, the caller's bookkeeping.
#[derive(Debug)]
struct Relay {
    a: Stream,
    b: Stream,
    fwd: Dir,
    back: Dir,
    meta: Vec<u8>,
}

/// The relay task: both directions until both are over or an export is asked for (then
/// the sockets are detached and handed over); a refused export lets the relay go on.
async fn relay_until_end(relay: Relay, counters: Rc<Counters>, ctl: RelayCtl) -> RelayEnd {
    if !ctl.0.copy.get() {
        return splice::relay_until_end(relay, counters, ctl).await;
    }
    let Relay {
        a,
        b,
        mut fwd,
        mut back,
        meta,
    } = relay;
    let (mut ar, mut aw) = a.into_split();
    let (mut br, mut bw) = b.into_split();
    loop {
        let up = pump(&mut ar, &mut bw, &mut fwd, &ctl, 0, |n| {
            counters.add_sent(n)
        });
        let down = pump(&mut br, &mut aw, &mut back, &ctl, 1, |n| {
            counters.add_received(n)
        });
        let _ = tokio::join!(up, down);
        let to = match after_pumps(&ctl, &mut fwd, &mut back) {
            After::End(end) => return end,
            After::Again => continue,
            After::Export(to) => to,
        };
        let (Some(a), Some(b)) = (Stream::reunite(ar, aw), Stream::reunite(br, bw)) else {
            let e = "relay halves do not belong together (a bug)".to_string();
            let _ = to.send(Err(e.clone()));
            ctl.end(&e);
            return RelayEnd::Failed(e);
        };
        let r = export(a, b, fwd, back, meta).await;
        return deliver(&ctl, to, r);
    }
}

/// What a relay does once both directions' pumps have returned.
enum After {
    /// Both directions are over.
    End(RelayEnd),
    /// Pump again (an export was refused, or none was asked for).
    Again,
    /// Export to this receiver.
    Export(oneshot::Sender<Result<RelayExport, String>>),
}

fn after_pumps(ctl: &RelayCtl, fwd: &mut Dir, back: &mut Dir) -> After {
    if fwd.shut && back.shut {
        let end = match fwd.failed.take().or(back.failed.take()) {
            Some(e) => RelayEnd::Failed(e),
            None => RelayEnd::Done,
        };
        ctl.end("the relay has ended");
        return After::End(end);
    }
    // A direction stopped: an export was asked for.
    let Some(to) = ctl.0.export_to.borrow_mut().take() else {
        ctl.0.stopping.set(false);
        return After::Again;
    };
    ctl.0.stopping.set(false);
    if let Some(e) = fwd.failed.as_ref().or(back.failed.as_ref()) {
        // Cannot move (its socket failed): refused; the other direction drains here.
        let _ = to.send(Err(format!("a direction of the relay failed: {e}")));
        return After::Again;
    }
    After::Export(to)
}

/// Hands an export (or why it failed) to whoever asked for it; the relay's end.
fn deliver(
    ctl: &RelayCtl,
    to: oneshot::Sender<Result<RelayExport, String>>,
    r: Result<RelayExport, String>,
) -> RelayEnd {
    ctl.end("the relay has moved");
    match r {
        Ok(x) => match to.send(Ok(x)) {
            Ok(()) => RelayEnd::Moved,
            Err(_) => RelayEnd::Failed("the export was not taken: connection closed".into()),
        },
        Err(e) => {
            let _ = to.send(Err(e.clone()));
            RelayEnd::Failed(format!("hand-over failed: {e}"))
        }
    }
}

/// One direction of a relay: everything it holds and how far it got.
#[derive(Debug, Default)]
struct Dir {
    size: ReadSize,
    /// Read and not yet accepted by the writing socket.
    held: Bytes,
    /// Leading bytes of `held` already counted (the previous process's socket had taken
    /// them but not sent them).
    precounted: usize,
    /// The reading side reached EOF (or was reset): FIN follows `held`.
    eof: bool,
    /// Over: FIN sent, or the writing peer went away, or a socket failed (`failed`).
    shut: bool,
    /// Bytes counted, this process and those before.
    carried: u64,
    failed: Option<String>,
}

impl Dir {
    fn from_state(s: &DirState) -> Dir {
        let mut held = Vec::with_capacity(s.unsent.len() + s.unwritten.len());
        held.extend_from_slice(&s.unsent);
        held.extend_from_slice(&s.unwritten);
        Dir {
            held: Bytes::from(held),
            precounted: s.unsent.len(),
            eof: s.eof,
            shut: s.shut,
            carried: s.bytes,
            ..Dir::default()
        }
    }

    /// The direction's state, given what its writing socket had queued and not sent and
    /// what its reading socket had received ahead.
    fn into_state(self, queued: Vec<u8>, ahead: Vec<u8>) -> DirState {
        if self.shut {
            // Nothing more goes this way (a peer that went away cannot take `ahead`).
            return DirState {
                eof: true,
                shut: true,
                bytes: self.carried,
                ..DirState::default()
            };
        }
        let (pre, rest) = self.held.split_at(self.precounted.min(self.held.len()));
        let mut unsent = queued;
        unsent.extend_from_slice(pre);
        let mut unwritten = Vec::with_capacity(rest.len() + ahead.len());
        unwritten.extend_from_slice(rest);
        unwritten.extend_from_slice(&ahead);
        DirState {
            unsent,
            unwritten,
            eof: self.eof,
            shut: false,
            bytes: self.carried,
        }
    }

    /// `n` more bytes were accepted by the writing socket: counted, but for those the
    /// process before had counted already.
    fn wrote(&mut self, n: usize, count: &impl Fn(u64)) {
        let pre = n.min(self.precounted);
        self.precounted -= pre;
        if n > pre {
            count((n - pre) as u64);
            self.carried += (n - pre) as u64;
        }
    }

    fn finish(&mut self, failed: Option<String>) {
        self.held = Bytes::new();
        self.precounted = 0;
        self.eof = true;
        self.shut = true;
        self.failed = failed;
    }
}

/// Moves one direction's bytes until it is over or an export stops it (its state is then
/// all in `d`). `slot` names the direction to the control handle.
async fn pump(
    r: &mut ReadHalf,
    w: &mut WriteHalf,
    d: &mut Dir,
    ctl: &RelayCtl,
    slot: usize,
    count: impl Fn(u64),
) {
    while !d.shut {
        if !d.held.is_empty() {
            let before = d.held.len();
            let res = or_stop(ctl, slot, write_kept(w, &mut d.held)).await;
            d.wrote(before - d.held.len(), &count);
            match res {
                None => return,
                Some(Ok(())) => d.held = Bytes::new(),
                Some(Err(e)) if is_benign(&e) => d.finish(None),
                Some(Err(e)) => d.finish(Some(format!("socket: {e}"))),
            }
            continue;
        }
        if d.eof {
            // As copy_h2: a failed shutdown (the peer is gone) ends the direction too.
            if or_stop(ctl, slot, w.shutdown()).await.is_none() {
                return;
            }
            d.shut = true;
            return;
        }
        match or_stop(ctl, slot, read_fresh(r, &mut d.size)).await {
            None => return,
            Some(Ok(b)) if b.is_empty() => d.eof = true,
            Some(Ok(b)) => d.held = b,
            Some(Err(e)) if is_benign(&e) => d.eof = true,
            Some(Err(e)) => d.finish(Some(format!("socket: {e}"))),
        }
    }
}

/// Runs `f` unless an export is asked for first (None: stopped; `f` is dropped).
async fn or_stop<F: Future>(ctl: &RelayCtl, slot: usize, f: F) -> Option<F::Output> {
    let mut f = pin!(f);
    poll_fn(|cx| {
        if ctl.poll_stop(slot, cx).is_ready() {
            return Poll::Ready(None);
        }
        f.as_mut().poll(cx).map(Some)
    })
    .await
}

/// Writes `held` out, cancel-safely: whatever the socket has not accepted when the future
/// is dropped is still in `held`. On uring the buffer goes to the ring without a copy;
/// `write_bytes` takes it whole in the poll that returns Ready or not at all, so a clone is
/// handed over and `held` emptied only then.
async fn write_kept(w: &mut WriteHalf, held: &mut Bytes) -> io::Result<()> {
    if let WriteHalf::Epoll(s) = w {
        return poll_fn(|cx| {
            while !held.is_empty() {
                match Pin::new(&mut *s).poll_write(cx, held) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Ok(n)) => held.advance(n),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            Poll::Ready(Ok(()))
        })
        .await;
    }
    w.write_bytes(held.clone()).await?;
    *held = Bytes::new();
    Ok(())
}

/// Detaches both sockets of a stopped relay and collects its state.
async fn export(
    a: Stream,
    b: Stream,
    fwd: Dir,
    back: Dir,
    meta: Vec<u8>,
) -> Result<RelayExport, String> {
    let (fa, a_ahead, a_queued) = a.detach().await.map_err(|e| format!("socket a: {e}"))?;
    let (fb, b_ahead, b_queued) = b.detach().await.map_err(|e| format!("socket b: {e}"))?;
    let state = RelayState {
        a_to_b: fwd.into_state(b_queued, a_ahead),
        b_to_a: back.into_state(a_queued, b_ahead),
        meta,
    };
    Ok(RelayExport {
        state,
        fds: vec![fa, fb],
    })
}

fn put(w: &mut Vec<u8>, b: &[u8]) {
    w.extend_from_slice(&(b.len() as u32).to_be_bytes());
    w.extend_from_slice(b);
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> Result<&'a [u8], RelayStateError> {
    if r.len() < n {
        return Err(RelayStateError::Corrupt("truncated"));
    }
    let (a, b) = r.split_at(n);
    *r = b;
    Ok(a)
}

fn get<'a>(r: &mut &'a [u8], max: usize) -> Result<&'a [u8], RelayStateError> {
    let mut a = [0u8; 4];
    a.copy_from_slice(take(r, 4)?);
    let n = u32::from_be_bytes(a) as usize;
    if n > max {
        return Err(RelayStateError::Corrupt(
            "a length beyond what a relay holds",
        ));
    }
    take(r, n)
}

fn u64_at(r: &mut &[u8]) -> Result<u64, RelayStateError> {
    let mut a = [0u8; 8];
    a.copy_from_slice(take(r, 8)?);
    Ok(u64::from_be_bytes(a))
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
