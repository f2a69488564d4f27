//! The node proxy's HBONE connections on the link task (`io::link`), one shard's worth: the
//! registry a hand-over exports from, the bookkeeping that travels with every tunnel
//! ([`TunnelMeta`]: the access log's fields, Istio's metric labels, what policy re-checks),
//! and adopting connections exported by the process before this one — or, when the next
//! process refused one, by this one again (it then drains here).
//!
//! Owns: [`Links`] (live links and their [`LinkInfo`]), the links' PING keepalive, the
//! export of every link of a shard, and [`adopt`]. Not here: the hand-over socket
//! (`inpod::handover`), who asks whom (`app::handover`), the flows that open tunnels
//! (`outbound`, `inbound_link`).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::conns::Kill;
use super::tunnel::{Holds, TunnelDone};
use super::{ConnMetrics, Pod, ShardCtx, log_complete};
use crate::hbone::H2Settings;
use crate::identity::Identity;
use crate::io::Counters;
use crate::io::link::{self, Exported, Link, LinkState, TunnelBook, TunnelEnd};
use crate::io::tls::TlsStream;
use crate::runtime::engine::{self, Task};
use crate::telemetry::metrics::TcpLabels;

/// Which end of the HBONE connection this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkRole {
    /// We dialed it (outbound, from the pool).
    Client,
    /// A pod's 15008 accepted it (inbound).
    Server,
}

/// What a process needs to know of a link besides its state: who is at the other end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkInfo {
    pub role: LinkRole,
    /// The other end's address.
    pub peer: SocketAddr,
    /// Our end's address (server: the pod's IP and 15008).
    pub local: Option<SocketAddr>,
    /// The other end's SPIFFE identity (server: the client's, if its certificate had one).
    pub peer_identity: Option<String>,
    /// Server: the pod whose 15008 accepted the connection.
    pub pod: Option<String>,
}

impl LinkInfo {
    pub fn client(peer: SocketAddr, identity: &Identity) -> LinkInfo {
        LinkInfo {
            role: LinkRole::Client,
            peer,
            local: None,
            peer_identity: Some(identity.to_string()),
            pod: None,
        }
    }

    pub fn server(
        peer: SocketAddr,
        local: SocketAddr,
        identity: Option<&Identity>,
        pod: &str,
    ) -> LinkInfo {
        LinkInfo {
            role: LinkRole::Server,
            peer,
            local: Some(local),
            peer_identity: identity.map(|i| i.to_string()),
            pod: Some(pod.to_string()),
        }
    }
}

/// What the policy re-check needs of an inbound tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyMeta {
    pub dst_uid: Arc<str>,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub src_identity: Option<Arc<str>>,
}

/// One tunnel's bookkeeping, carried with it to the next process (JSON in the link state).
/// Its strings are the shard's shared copies ([`super::names::Names`]): every idle tunnel
/// keeps one of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelMeta {
    /// `outbound` or `inbound` (the access log's `direction`).
    pub direction: Arc<str>,
    pub pod: Arc<str>,
    pub src: SocketAddr,
    pub src_id: Option<Arc<str>>,
    pub dst: SocketAddr,
    pub hbone_addr: Option<SocketAddr>,
    pub dst_id: Option<Arc<str>>,
    pub service: Option<Arc<str>>,
    /// Shared with the metrics registry (one copy per label set): every idle tunnel keeps
    /// its bookkeeping, so it must not copy 23 strings each.
    pub labels: Arc<TcpLabels>,
    /// When the connection began (ms since the Unix epoch), for the access log's duration.
    pub started_unix_ms: u64,
    /// Inbound: what a policy change is checked against.
    pub policy: Option<PolicyMeta>,
}

impl TunnelMeta {
    /// The same bookkeeping on the shard's shared strings (one decoded from a hand-over
    /// has copies of its own).
    pub fn shared(self, names: &super::names::Names) -> TunnelMeta {
        let s = |a: Arc<str>| names.get(&a);
        let o = |a: Option<Arc<str>>| names.opt(a.as_deref());
        TunnelMeta {
            direction: s(self.direction),
            pod: s(self.pod),
            src_id: o(self.src_id),
            dst_id: o(self.dst_id),
            service: o(self.service),
            policy: self.policy.map(|p| PolicyMeta {
                dst_uid: s(p.dst_uid),
                src_identity: o(p.src_identity),
                ..p
            }),
            ..self
        }
    }

    /// Whether it is an outbound tunnel's (else inbound).
    pub fn is_outbound(&self) -> bool {
        &*self.direction == "outbound"
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The link's handle on this bookkeeping: encoded only if the tunnel is handed over.
    pub fn book(self) -> Rc<dyn TunnelBook> {
        Rc::new(self)
    }

    /// The app-side port the tunnel goes to (the CONNECT authority's).
    pub fn app_port(&self) -> u16 {
        self.hbone_addr.unwrap_or(self.dst).port()
    }
}

impl TunnelBook for TunnelMeta {
    fn encode(&self) -> Vec<u8> {
        TunnelMeta::encode(self)
    }
}

/// Milliseconds since the Unix epoch, `elapsed` ago.
pub fn unix_ms_ago(elapsed: Duration) -> u64 {
    SystemTime::now()
        .checked_sub(elapsed)
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

/// The `Instant` a connection that began at `unix_ms` began at (now, if in the future).
pub(super) fn started_at(unix_ms: u64) -> Instant {
    let began = SystemTime::UNIX_EPOCH + Duration::from_millis(unix_ms);
    let age = SystemTime::now().duration_since(began).unwrap_or_default();
    Instant::now().checked_sub(age).unwrap_or_else(Instant::now)
}

/// The error of a tunnel's end, for the access log (None: it completed).
pub fn end_error(end: &TunnelEnd) -> Option<String> {
    match end {
        TunnelEnd::Done | TunnelEnd::Moved => None,
        TunnelEnd::Unprocessed => Some("HBONE stream refused unprocessed (REFUSED_STREAM)".into()),
        TunnelEnd::Refused(status) => Some(format!("HBONE CONNECT answered {status}")),
        TunnelEnd::Reset { code, remote: true } => {
            Some(format!("HBONE stream reset by the peer ({code})"))
        }
        TunnelEnd::Reset {
            code,
            remote: false,
        } => Some(format!("HBONE stream reset ({code})")),
        TunnelEnd::App(e) => Some(format!("app socket: {e}")),
        TunnelEnd::Link(e) => Some(e.clone()),
    }
}

/// How long an export waits for streams being answered (authorized, their app connected).
const ANSWER_WAIT: Duration = Duration::from_secs(1);

/// The live links of one shard.
#[derive(Default)]
pub struct Links {
    next: Cell<u64>,
    live: RefCell<BTreeMap<u64, (Link, LinkInfo)>>,
}

impl Links {
    /// Runs `link`'s task over `tls` (and its keepalive), registered here until it ends.
    pub fn run(
        self: &Rc<Self>,
        link: Link,
        tls: TlsStream,
        info: LinkInfo,
        settings: &H2Settings,
    ) -> Task {
        let id = self.next.get();
        self.next.set(id + 1);
        self.live.borrow_mut().insert(id, (link.clone(), info));
        keepalive(link.clone(), settings.ping_interval, settings.ping_timeout);
        let me = self.clone();
        engine::spawn(async move {
            link::run(link, tls).await;
            me.live.borrow_mut().remove(&id);
        })
    }

    /// Links live now.
    pub fn len(&self) -> usize {
        self.live.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops every link and exports it (hand-over): each with its info, or why it could not
    /// be exported (its tunnels are then cut).
    pub async fn export_all(&self) -> Vec<(LinkInfo, Result<Exported, String>)> {
        let all: Vec<(Link, LinkInfo)> = self.live.borrow().values().cloned().collect();
        // No new streams from here on; those being authorized and connected get their
        // answer first (up to `ANSWER_WAIT`), so that they move too instead of being refused.
        for (l, _) in &all {
            l.pause();
        }
        let t0 = Instant::now();
        while all.iter().any(|(l, _)| l.unanswered() > 0) && t0.elapsed() < ANSWER_WAIT {
            engine::sleep(Duration::from_millis(2)).await;
        }
        let asks: Vec<_> = all.into_iter().map(|(l, i)| (l.export(), i)).collect();
        let mut out = Vec::with_capacity(asks.len());
        for (rx, info) in asks {
            let r = match rx.await {
                Ok(r) => r,
                Err(_) => Err("the link task ended before it exported".to_string()),
            };
            out.push((info, r));
        }
        out
    }
}

/// PINGs the peer every `interval`; a PING unanswered for `timeout` closes the link
/// (ztunnel drops such connections too).
fn keepalive(link: Link, interval: Duration, timeout: Duration) {
    engine::spawn(async move {
        let mut unanswered = Duration::ZERO;
        loop {
            engine::sleep(interval).await;
            if link.is_closed() {
                return;
            }
            if link.ping_in_flight() {
                unanswered = unanswered.saturating_add(interval);
                if unanswered >= timeout {
                    tracing::warn!("HBONE connection: no PING reply in {timeout:?}, dropping it");
                    link.close(format!("no PING reply in {timeout:?}"));
                    return;
                }
                continue;
            }
            unanswered = Duration::ZERO;
            link.ping();
        }
    });
}

/// Continues on this shard a link another process exported (or this one, taking back a link
/// the next process refused): `state` as [`LinkState::encode`] wrote it, `fds` its sockets
/// (TLS first, then the tunnels'). `pod` is the pod of a server link, if this process has
/// it (new streams on it are served for that pod). `fault_port`: refuse a link with a
/// tunnel to this port (fault injection for tests). Returns the number of tunnels adopted.
pub fn adopt(
    ctx: &Rc<ShardCtx>,
    info: &LinkInfo,
    pod: Option<Arc<Pod>>,
    state: &[u8],
    fds: Vec<OwnedFd>,
    fault_port: Option<u16>,
) -> Result<usize, String> {
    let state = LinkState::decode(state).map_err(|e| e.to_string())?;
    let mut metas = HashMap::with_capacity(state.tunnels.len());
    for t in &state.tunnels {
        let m: TunnelMeta = serde_json::from_slice(&t.meta)
            .map_err(|e| format!("stream {}: unreadable bookkeeping: {e}", t.id))?;
        if fault_port == Some(m.app_port()) {
            return Err(format!(
                "fault injection: refusing a connection with a tunnel to port {}",
                m.app_port()
            ));
        }
        metas.insert(t.id, m.shared(&ctx.names));
    }
    let mut metrics = HashMap::with_capacity(metas.len());
    let mut counters = HashMap::with_capacity(metas.len());
    for (id, m) in &metas {
        let cm = ConnMetrics::adopted(ctx, TcpLabels::clone(&m.labels));
        counters.insert(*id, cm.counters(m.is_outbound()));
        metrics.insert(*id, cm);
    }
    let (link, tls, tunnels) = Link::import(&state, fds, |id| {
        counters.get(&id.0).cloned().unwrap_or_default()
    })?;
    let n = tunnels.len();
    for t in tunnels {
        let (Some(meta), Some(m), Some(c)) = (
            metas.remove(&t.id.0),
            metrics.remove(&t.id.0),
            counters.get(&t.id.0).cloned(),
        ) else {
            continue;
        };
        // Live; a client-side tunnel's pod socket was accepted, so it is within the shard's
        // connection bound too.
        let slot = (info.role == LinkRole::Client).then(|| ctx.limit.take());
        adopted_tunnel(ctx, &link, t, meta, m, c, slot);
    }
    ctx.links.run(link.clone(), tls, info.clone(), &ctx.cfg.h2);
    match info.role {
        // Not pooled here: it ends once its tunnels have.
        LinkRole::Client => link.go_away(),
        LinkRole::Server => {
            let peer_id = info
                .peer_identity
                .as_deref()
                .and_then(|s| s.parse::<Identity>().ok());
            let local = info.local.unwrap_or(info.peer);
            engine::spawn(super::inbound_link::serve_streams(
                ctx.clone(),
                pod,
                link,
                info.peer,
                local,
                Rc::new(peer_id),
            ));
        }
    }
    Ok(n)
}

/// A tunnel continued from another process: counted live, its policy re-checked (inbound),
/// logged when it ends with the totals of both processes (its end is the link's to call:
/// no task waits for it).
fn adopted_tunnel(
    ctx: &Rc<ShardCtx>,
    link: &Link,
    t: link::ImportedTunnel,
    meta: TunnelMeta,
    metrics: ConnMetrics,
    counters: Rc<Counters>,
    slot: Option<super::limit::Slot>,
) {
    let meta = Rc::new(meta);
    let conn = ctx.conns.add_tunnel(&meta, Kill::Reset(link.clone(), t.id));
    let done = TunnelDone {
        ctx: ctx.clone(),
        meta,
        metrics,
        counters,
        before: (t.sent_before, t.received_before),
        holds: Holds {
            live: ctx.live_guard(),
            slot,
            share: None,
        },
        conn,
        outbound: false,
        retry: None,
    };
    link.on_end(t.id, done.on_end());
    // Checked against the policies now too (this process may know a change the previous
    // one had not seen): once its end is in place, so that a denied tunnel ends logged.
    if let Some(id) = conn {
        ctx.conns.check_now(id, &ctx.state.load_full());
    }
}

/// Logs the end of a tunnel or relay from its bookkeeping: its totals are what every process
/// before this one moved (`before`: sent, received; zero for one opened here) plus what
/// `counters` counted here.
pub(super) fn log_adopted_end(
    ctx: &ShardCtx,
    meta: &TunnelMeta,
    before: (u64, u64),
    counters: &Counters,
    err: Option<&str>,
) {
    let total = Counters::default();
    total.sent.set(before.0.saturating_add(counters.sent.get()));
    total
        .received
        .set(before.1.saturating_add(counters.received.get()));
    let direction = if meta.is_outbound() {
        "outbound"
    } else {
        "inbound"
    };
    log_complete(
        ctx,
        direction,
        meta.src,
        meta.src_id.as_deref(),
        meta.dst,
        meta.hbone_addr,
        meta.dst_id.as_deref(),
        meta.service.as_deref(),
        &total,
        started_at(meta.started_unix_ms),
        err,
    );
}

#[cfg(test)]
#[path = "links_tests.rs"]
mod tests;
