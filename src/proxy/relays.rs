//! The node proxy's plaintext TCP relays on `io::relay` (outbound passthrough from 15001,
//! inbound plaintext on 15006), one shard's worth: the registry a hand-over exports from,
//! running a relay registered there (and, inbound, for the policy re-check), and adopting
//! relays exported by the process before this one — or, when the next process refused one,
//! by this one again (it then drains here).
//!
//! A relay's bookkeeping is a [`TunnelMeta`] without `hbone_addr`: the access log's fields,
//! Istio's metric labels, the start time and (inbound) what the policy re-check needs. It
//! travels as the hand-over's `info`; the relay's own state (`RelayState`: bytes in flight,
//! FINs, byte counts) as its state.
//!
//! Owns: [`Relays`], [`carry`] (a relay's run as every flow does it), [`adopt`]. Not here:
//! the hand-over socket (`inpod::handover`), who asks whom (`app::handover`), dialing and
//! authorizing (`outbound`, `inbound_plain`), the relay itself (`io::relay`).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::rc::Rc;

use tokio::sync::Notify;

use super::links::{TunnelMeta, log_adopted_end};
use super::{ConnMetrics, LiveGuard, ShardCtx};
use crate::io::Counters;
use crate::io::relay::{self, Imported, RelayCtl, RelayEnd, RelayExport, RelayState};
use crate::policy::ConnFacts;
use crate::runtime::engine;
use crate::telemetry::metrics::TcpLabels;

/// The access log's error for a relay closed by a policy change.
pub const POLICY_CLOSED: &str = "connection closed due to policy change";

/// The live relays of one shard.
#[derive(Default)]
pub struct Relays {
    next: Cell<u64>,
    live: RefCell<BTreeMap<u64, Entry>>,
}

struct Entry {
    ctl: RelayCtl,
    /// Shared with the flow (copied only when exported).
    meta: Rc<TunnelMeta>,
    /// Signalled when the relay's flow lets go of it (ended, moved or dropped).
    gone: Rc<Notify>,
}

/// How exporting one relay went.
#[derive(Debug)]
pub enum RelayOut {
    /// Stopped and exported: hand it over (or continue it here again).
    Moved(RelayExport),
    /// Not exported, still running here (a direction had failed): it drains here.
    Stays(String),
    /// The relay ended (by itself, or its export failed after its sockets were detached:
    /// its flow logs that as the connection's error). Nothing to hand over.
    Ended(String),
}

/// Keeps a relay registered; unregisters on drop.
pub struct Registration<'a> {
    relays: &'a Relays,
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if let Some(e) = self.relays.live.borrow_mut().remove(&self.id) {
            e.gone.notify_one();
        }
    }
}

impl Relays {
    /// Registers a relay (its control handle and bookkeeping) until the guard drops.
    pub fn register(&self, ctl: RelayCtl, meta: Rc<TunnelMeta>) -> Registration<'_> {
        let id = self.next.get();
        self.next.set(id + 1);
        let gone = Rc::new(Notify::new());
        self.live.borrow_mut().insert(id, Entry { ctl, meta, gone });
        Registration { relays: self, id }
    }

    /// Relays live now.
    pub fn len(&self) -> usize {
        self.live.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops every relay and exports it (hand-over), each with its bookkeeping.
    pub async fn export_all(&self) -> Vec<(TunnelMeta, RelayOut)> {
        let asks: Vec<_> = self
            .live
            .borrow()
            .values()
            .filter(|e| !e.ctl.is_ended())
            .map(|e| {
                (
                    e.ctl.export(),
                    e.ctl.clone(),
                    TunnelMeta::clone(&e.meta),
                    e.gone.clone(),
                )
            })
            .collect();
        let mut out = Vec::with_capacity(asks.len());
        for (rx, ctl, meta, gone) in asks {
            // The relay answers before its flow lets go of it; a flow dropped meanwhile (a
            // policy change closed it) never answers.
            let r = tokio::select! {
                biased;
                r = rx => match r {
                    Ok(Ok(x)) => RelayOut::Moved(x),
                    Ok(Err(e)) if ctl.is_ended() => RelayOut::Ended(e),
                    Ok(Err(e)) => RelayOut::Stays(e),
                    Err(_) => RelayOut::Ended("the relay's task ended before it exported".into()),
                },
                _ = gone.notified() => RelayOut::Ended("the connection closed during its export".into()),
            };
            out.push((meta, r));
        }
        out
    }
}

/// Runs one relay as every flow does: registered in the shard's [`Relays`] (a hand-over
/// stops and exports it through the handle `start` is given) and, when `meta` has what the
/// policy re-check needs, registered for it too (a policy change that denies the
/// connection closes it: `Failed` with [`POLICY_CLOSED`]). `adopted`: continued from
/// another process, so checked against the policies at once as well.
pub async fn carry<F>(
    ctx: &ShardCtx,
    meta: &Rc<TunnelMeta>,
    adopted: bool,
    start: impl FnOnce(RelayCtl) -> F,
) -> RelayEnd
where
    F: Future<Output = RelayEnd>,
{
    let ctl = RelayCtl::new();
    let _reg = ctx.relays.register(ctl.clone(), meta.clone());
    let policy = meta.policy.as_ref().map(|p| {
        let facts = ConnFacts {
            src: p.src,
            dst: p.dst,
            src_identity: p.src_identity.as_deref().and_then(|s| s.parse().ok()),
        };
        if adopted {
            ctx.conns
                .register_adopted(&p.dst_uid, facts, &ctx.state.load_full())
        } else {
            ctx.conns.register(&p.dst_uid, facts)
        }
    });
    let task = start(ctl);
    match &policy {
        Some(reg) => tokio::select! {
            end = task => end,
            _ = reg.kill.notified() => RelayEnd::Failed(POLICY_CLOSED.into()),
        },
        None => task.await,
    }
}

/// A relay's end as a flow reports it: `Ok(true)` moved to the next process (which logs
/// and counts its end), `Ok(false)` done, `Err` the access log's error.
pub fn outcome(end: RelayEnd) -> Result<bool, String> {
    match end {
        RelayEnd::Done => Ok(false),
        RelayEnd::Moved => Ok(true),
        RelayEnd::Failed(e) => Err(e),
    }
}

/// Continues on this shard a relay another process exported (or this one, taking back a
/// relay the next process refused): `meta` its bookkeeping, `state` and `fds` (socket a,
/// then b) as the export gave them. `fault_port`: refuse a relay to this destination port
/// (fault injection for tests). Err: not continued (its sockets are closed here).
pub fn adopt(
    ctx: &Rc<ShardCtx>,
    meta: &TunnelMeta,
    state: &RelayState,
    fds: Vec<OwnedFd>,
    fault_port: Option<u16>,
) -> Result<(), String> {
    if !matches!(&*meta.direction, "outbound" | "inbound") {
        return Err(format!(
            "a TCP relay of direction {:?} (outbound or inbound expected): the previous node \
             proxy sent bookkeeping this build does not understand",
            meta.direction
        ));
    }
    if fault_port == Some(meta.dst.port()) {
        return Err(format!(
            "fault injection: refusing a TCP relay to port {}",
            meta.dst.port()
        ));
    }
    let imported = relay::import(state, fds).map_err(|e| e.to_string())?;
    let metrics = ConnMetrics::adopted(ctx, TcpLabels::clone(&meta.labels));
    let counters = metrics.counters(meta.is_outbound());
    // Live, and within the shard's connection bound (the pod's socket was accepted).
    let live = (ctx.live_guard(), ctx.limit.take());
    engine::spawn(adopted_relay(
        ctx.clone(),
        imported,
        Rc::new(meta.clone().shared(&ctx.names)),
        metrics,
        counters,
        live,
    ));
    Ok(())
}

/// A relay continued from another process: counted live, registered for a hand-over and
/// (inbound) the policy re-check, logged when it ends with the totals of every process.
async fn adopted_relay(
    ctx: Rc<ShardCtx>,
    relay: Imported,
    meta: Rc<TunnelMeta>,
    metrics: ConnMetrics,
    counters: Rc<Counters>,
    _live: (LiveGuard, super::limit::Slot),
) {
    let (sent_before, received_before) = (relay.sent_before(), relay.received_before());
    let c = counters.clone();
    let splice = ctx.cfg.splice;
    let end = carry(&ctx, &meta, true, move |ctl| {
        ctl.set_splice(splice);
        relay::resume(relay, c, ctl)
    })
    .await;
    let err = match outcome(end) {
        Ok(true) => {
            metrics.moved();
            return;
        }
        Ok(false) => None,
        Err(e) => Some(e),
    };
    log_adopted_end(
        &ctx,
        &meta,
        (sent_before, received_before),
        &counters,
        err.as_deref(),
    );
}

#[cfg(test)]
#[path = "relays_tests.rs"]
mod tests;
