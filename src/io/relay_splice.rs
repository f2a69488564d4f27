//! The relay's directions moved with splice(2) (`runtime::splice`): socket → pipe → socket,
//! no byte through user space. What plain passthrough runs unless `--splice false`.
//!
//! Owns: the splicing pump of one direction and the relay loop around it. Everything else
//! (the control handle, the state, export, counting) is the relay's (`super`).
//!
//! Each direction gets its pipe only once its socket first has something to read, so an
//! idle relay holds no pipe (two fds, and the kernel's pipe buffers). Stopping at any await
//! is as safe as in the copying relay: a splice call that is dropped has moved nothing, and
//! what a direction holds is in explicit state — `Dir::held` (bytes carried over from the
//! engine or a previous process, written first) and the pipe, whose bytes an export reads
//! out into `held`. The pipe fills only while `held` is empty, so `held` then pipe is the
//! order the bytes came in.
//!
//! A pipe the system refuses (the fd limit) leaves that direction copying through a buffer
//! read here (non-blocking `recv`/`send`), with the same state; nothing is lost.

use std::rc::Rc;

use bytes::{Buf, Bytes};

use super::{
    After, Counters, Dir, Relay, RelayCtl, RelayEnd, after_pumps, deliver, export, or_stop,
};
use crate::io::is_benign;
use crate::runtime::net::Stream;
use crate::runtime::splice::Pipe;

/// A direction's pipe.
enum PipeSlot {
    /// Not made yet: nothing has come to read.
    None,
    Made(Pipe),
    /// The system refused one: this direction copies.
    Refused,
}

/// The relay loop on splicing pumps; ends as `super::relay_until_end` does.
pub(super) async fn relay_until_end(
    relay: Relay,
    counters: Rc<Counters>,
    ctl: RelayCtl,
) -> RelayEnd {
    let Relay {
        a,
        b,
        mut fwd,
        mut back,
        meta,
    } = relay;
    // The engine's own buffers are handed over first (uring receives ahead and queues
    // sends): per direction, what the writing socket had queued, what the relay held, then
    // what the reading socket had received ahead.
    let quiesced = match (a.quiesce().await, b.quiesce().await) {
        (Ok(qa), Ok(qb)) => (qa, qb),
        (Err(e), _) | (_, Err(e)) => {
            let e = format!("socket: {e}");
            ctl.end(&e);
            return RelayEnd::Failed(e);
        }
    };
    let ((a_ahead, a_queued), (b_ahead, b_queued)) = quiesced;
    fwd = Dir::from_state(&fwd.into_state(b_queued, a_ahead));
    back = Dir::from_state(&back.into_state(a_queued, b_ahead));
    let mut fwd_pipe = PipeSlot::None;
    let mut back_pipe = PipeSlot::None;
    loop {
        let up = pump(&a, &b, &mut fwd, &mut fwd_pipe, &ctl, 0, |n| {
            counters.add_sent(n)
        });
        let down = pump(&b, &a, &mut back, &mut back_pipe, &ctl, 1, |n| {
            counters.add_received(n)
        });
        let _ = tokio::join!(up, down);
        let to = match after_pumps(&ctl, &mut fwd, &mut back) {
            After::End(end) => return end,
            After::Again => continue,
            After::Export(to) => to,
        };
        let r = match (
            unpipe(&mut fwd, &mut fwd_pipe),
            unpipe(&mut back, &mut back_pipe),
        ) {
            (Ok(()), Ok(())) => export(a, b, fwd, back, meta).await,
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        return deliver(&ctl, to, r);
    }
}

/// Moves what the pipe holds into `held`, after what `held` has (an export).
fn unpipe(d: &mut Dir, p: &mut PipeSlot) -> Result<(), String> {
    let PipeSlot::Made(p) = p else { return Ok(()) };
    if p.is_empty() {
        return Ok(());
    }
    let piped = p
        .drain()
        .map_err(|e| format!("reading the relay's pipe: {e}"))?;
    let mut held = Vec::with_capacity(d.held.len() + piped.len());
    held.extend_from_slice(&d.held);
    held.extend_from_slice(&piped);
    d.held = Bytes::from(held);
    Ok(())
}

/// Moves one direction's bytes, `r` → `w`, until it is over or an export stops it (its
/// state is then all in `d` and `pipe`). `slot` names the direction to the control handle.
async fn pump(
    r: &Stream,
    w: &Stream,
    d: &mut Dir,
    pipe: &mut PipeSlot,
    ctl: &RelayCtl,
    slot: usize,
    count: impl Fn(u64),
) {
    while !d.shut {
        if !d.held.is_empty() {
            match or_stop(ctl, slot, w.send_now(&d.held)).await {
                None => return,
                Some(Ok(n)) => {
                    d.wrote(n, &count);
                    d.held.advance(n);
                }
                Some(Err(e)) if is_benign(&e) => d.finish(None),
                Some(Err(e)) => d.finish(Some(format!("socket: {e}"))),
            }
            continue;
        }
        if let PipeSlot::Made(p) = pipe
            && !p.is_empty()
        {
            match or_stop(ctl, slot, w.splice_out(p)).await {
                None => return,
                Some(Ok(n)) => d.wrote(n, &count),
                Some(Err(e)) if is_benign(&e) => d.finish(None),
                Some(Err(e)) => d.finish(Some(format!("socket: {e}"))),
            }
            continue;
        }
        if d.eof {
            // As the copying relay: a failed shutdown (the peer is gone) ends it too.
            if or_stop(ctl, slot, async { w.shutdown_write() })
                .await
                .is_none()
            {
                return;
            }
            d.shut = true;
            return;
        }
        if let PipeSlot::None = pipe {
            if or_stop(ctl, slot, r.readable()).await.is_none() {
                return;
            }
            *pipe = match Pipe::new() {
                Ok(p) => PipeSlot::Made(p),
                Err(e) => {
                    let (n, log) = crate::telemetry::metrics::pipe_refused();
                    if log {
                        tracing::warn!(
                            "no pipe for a relay ({e}): this direction copies ({n} so far, ringmesh_splice_pipes_refused_total; logged at most every 10 s)"
                        );
                    }
                    PipeSlot::Refused
                }
            };
        }
        let got = match pipe {
            PipeSlot::Made(p) => or_stop(ctl, slot, r.splice_in(p))
                .await
                .map(|r| r.map(|n| n == 0)),
            _ => match or_stop(ctl, slot, r.recv_now(d.size.0)).await {
                None => None,
                Some(Ok(b)) => {
                    let eof = b.is_empty();
                    d.size.adapt(b.len());
                    d.held = b;
                    Some(Ok(eof))
                }
                Some(Err(e)) => Some(Err(e)),
            },
        };
        match got {
            None => return,
            Some(Ok(eof)) => d.eof |= eof,
            Some(Err(e)) if is_benign(&e) => d.eof = true,
            Some(Err(e)) => d.finish(Some(format!("socket: {e}"))),
        }
    }
}
