//! What a tunnel on the link task keeps while it lasts, and what happens at its end: the
//! access log line, Istio's metrics, its shares of the shard's bounds (the live count the
//! drain watches, the connection limit, the pooled connection's stream count) and its entry
//! in the policy re-check registry. The link holds it ([`OnEnd`]) instead of a task that
//! awaits the end: that task kept the flow's whole future for one await, ≈ 1.4 KB an idle
//! tunnel on the client's node and ≈ 1 KB on the server's, besides the end's channel.
//!
//! Owns: [`TunnelDone`], [`Holds`] and [`Retry`]. Not here: opening tunnels (`outbound`,
//! `inbound_link`, `links::adopt`).

use std::any::Any;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use super::links::{TunnelMeta, end_error, log_adopted_end};
use super::{ConnMetrics, LiveGuard, Pod, ShardCtx, limit};
use crate::identity::Identity;
use crate::io::Counters;
use crate::io::link::{OnEnd, TunnelEnd};
use crate::runtime::net::Stream;
use crate::state::Workload;

/// What a connection holds of the shard while it lasts (each given back on drop).
pub struct Holds {
    /// Counted live (`ShardMetrics::live`).
    pub live: LiveGuard,
    /// A captured pod connection's share of the shard's connection bound.
    pub slot: Option<limit::Slot>,
    /// A client tunnel's share of its pooled connection.
    pub share: Option<Box<dyn Any>>,
}

/// What an outbound retry needs that the tunnel's bookkeeping does not have.
pub struct Retry {
    pub pod: Arc<Pod>,
    pub src: Arc<Workload>,
    pub expected: Vec<Identity>,
}

/// One tunnel's end, held by its link until then.
pub struct TunnelDone {
    pub ctx: Rc<ShardCtx>,
    pub meta: Rc<TunnelMeta>,
    pub metrics: ConnMetrics,
    pub counters: Rc<Counters>,
    /// Sent and received by the processes before this one (a tunnel continued here).
    pub before: (u64, u64),
    pub holds: Holds,
    /// Its entry among the shard's live inbound connections (`conns`), removed at the end.
    pub conn: Option<u64>,
    /// An outbound tunnel opened here: the access log names the next hop (`meta.dst`), and
    /// a stream that ended without a byte counts as failed.
    pub outbound: bool,
    /// Outbound, first attempt only: what trying once more on another connection needs (a
    /// stream the peer refused unprocessed, as the h2 path's pool retries).
    pub retry: Option<Box<Retry>>,
}

// What an idle tunnel keeps here (besides its bookkeeping, shared with the link): a
// regression fails the build.
const _: () = assert!(std::mem::size_of::<TunnelDone>() <= 128);

impl TunnelDone {
    /// The link's handle on this end.
    pub fn on_end(self) -> OnEnd {
        OnEnd::new(move |end, app| self.ended(end, app))
    }

    fn ended(mut self, end: TunnelEnd, app: Option<Stream>) {
        if end == TunnelEnd::Unprocessed
            && let Some(app) = app
            && let Some(retry) = self.retry.take()
        {
            let next_hop = self.meta.dst;
            tracing::debug!(%next_hop, "HBONE stream refused unprocessed: retrying on another connection");
            // The share of the connection that refused it goes back now.
            self.holds.share = None;
            super::outbound::retry(self, *retry, app);
            return;
        }
        if end == TunnelEnd::Moved {
            // Handed to the next process with its connection: it logs and counts the end.
            if let Some(id) = self.conn {
                self.ctx.conns.remove(id);
            }
            self.metrics.moved();
            return;
        }
        let err = match self.outbound {
            true => outbound_error(self.meta.dst, &end),
            false => end_error(&end),
        };
        self.finish(err);
    }

    /// Ends the tunnel with `err` (None: it completed): the access log, the metrics.
    pub fn finish(self, err: Option<String>) {
        let c = &self.counters;
        if err.is_some() && self.outbound && c.sent.get() + c.received.get() == 0 {
            self.metrics.failed();
        }
        log_adopted_end(&self.ctx, &self.meta, self.before, c, err.as_deref());
        if let Some(id) = self.conn {
            self.ctx.conns.remove(id);
        }
    }
}

/// The access log's error for an outbound tunnel's end (None: it completed).
fn outbound_error(next_hop: SocketAddr, end: &TunnelEnd) -> Option<String> {
    match end {
        TunnelEnd::Done | TunnelEnd::Moved => None,
        TunnelEnd::Refused(status) => Some(format!(
            "HBONE CONNECT to {next_hop} answered {}",
            http::StatusCode::from_u16(*status)
                .map_or_else(|_| status.to_string(), |s| s.to_string())
        )),
        other => Some(format!(
            "HBONE stream to {next_hop}: {}",
            end_error(other).unwrap_or_default()
        )),
    }
}

#[cfg(test)]
#[path = "tunnel_tests.rs"]
mod tests;
