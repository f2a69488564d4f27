//! The node proxy's part in a rolling update and in its own shutdown: taking over the
//! previous process's listeners pod by pod (`inpod::handover`), handing ours to the next
//! process when it asks, and the SIGTERM drain.
//!
//! On SIGTERM with a newer process beside us, every live HBONE connection on the link task
//! is handed to it whole (`hand_over_connections`: sockets, TLS and HTTP/2 state, bytes in
//! flight, bookkeeping), and so is every plaintext TCP relay (passthrough, 15006: both
//! sockets, the bytes in flight each way, bookkeeping), so long-lived connections go on
//! without a cut; one it refuses is continued here and drains. Relays move whichever HBONE
//! codec runs; HBONE connections only with `--hbone-codec link`.
//!
//! Then the drain, as ztunnel's: stop accepting (listeners handed over keep their queues in
//! the new process; the others close), GOAWAY on every inbound HBONE connection so peers
//! open new streams elsewhere, readiness fails, then wait until no proxied connection or
//! HBONE stream is left or the deadline (`--drain-deadline`, from
//! TERMINATION_GRACE_PERIOD_SECONDS as ztunnel derives it) passes; what is left then is cut
//! by the exit and counted.

use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Node;
use crate::config;
use crate::inpod::handover::{self, AdoptOutcome, HandoverEvent};
use crate::io::relay::RelayState;
use crate::proxy::Pod;
use crate::proxy::links::{self, LinkInfo, TunnelMeta};
use crate::proxy::relays::{self, RelayOut};

/// One shard's export on SIGTERM: its links (info; encoded state, sockets, tunnels) and its
/// relays.
type ShardExport = (
    Vec<(LinkInfo, Result<(Vec<u8>, Vec<OwnedFd>, usize), String>)>,
    Vec<(TunnelMeta, RelayOut)>,
);

/// How a shard answers whether it continues a connection.
type Reply<T> = std::sync::mpsc::Sender<Result<T, String>>;

impl Node {
    /// The hand-over socket: the flag, else beside the ZDS socket; none without ZDS.
    pub(super) fn handover_path(&self) -> Option<PathBuf> {
        if self.args.no_handover {
            return None;
        }
        self.args
            .handover_socket
            .clone()
            .or_else(|| self.zds_socket().map(|z| handover::path_for(&z)))
    }

    /// Connects to the previous process (if one listens) and starts listening for the next.
    pub(super) fn start_handover(&mut self, tx: tokio::sync::mpsc::UnboundedSender<HandoverEvent>) {
        let Some(path) = self.handover_path() else {
            return;
        };
        match handover::Client::connect(&path) {
            Ok(Some(c)) => {
                tracing::info!(
                    socket = %path.display(),
                    previous_pid = c.peer_pid,
                    "a previous node proxy is running: taking its listeners over pod by pod"
                );
                self.handover = Some(c);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("{e}: opening fresh listeners for every pod"),
        }
        if let Err(e) = handover::serve(&path, tx) {
            tracing::warn!(
                socket = %path.display(),
                "cannot listen for a later node proxy: {e}; it will open its own listeners and \
                 connections queued on ours at exit are reset"
            );
        }
    }

    /// The previous process's listeners for `pod`, checked; empty when there is none or a
    /// check fails (the pod then gets fresh listeners beside the old ones).
    pub(super) fn take_listeners(&mut self, pod: &Pod) -> Vec<(u16, TcpListener)> {
        let Some(c) = &self.handover else {
            return Vec::new();
        };
        let got = match c.take(&pod.uid) {
            Ok(Some(l)) => l,
            Ok(None) => return Vec::new(),
            Err(e) => {
                tracing::warn!(pod = %pod.uid, "hand-over: {e}; fresh listeners from now on");
                self.handover = None;
                return Vec::new();
            }
        };
        let cookie = match pod.netns.cookie() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(pod = %pod.uid, "hand-over: {e}; opening fresh listeners");
                return Vec::new();
            }
        };
        let mut out = Vec::with_capacity(got.len());
        for (port, fd) in got {
            if let Err(why) = handover::check_listener(&fd, port, cookie) {
                tracing::warn!(
                    pod = %pod.uid,
                    port,
                    "hand-over: refusing a listener from the previous node proxy: {why}; opening fresh listeners"
                );
                return Vec::new();
            }
            let l = TcpListener::from(fd);
            if let Err(e) = l.set_nonblocking(true) {
                tracing::warn!(pod = %pod.uid, "hand-over: {e}; opening fresh listeners");
                return Vec::new();
            }
            out.push((port, l));
        }
        out
    }

    /// Tells the previous process we accept for `uid` now (it stops accepting).
    pub(super) fn confirm_taken(&mut self, uid: &str) {
        let Some(c) = &self.handover else { return };
        match c.took(uid) {
            Ok(()) => {
                self.metrics
                    .lifecycle
                    .pods_received
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(pod = %uid, "listeners taken over from the previous node proxy");
            }
            Err(e) => {
                tracing::warn!(pod = %uid, "hand-over: {e}; both processes accept for this pod until the previous one exits");
                self.handover = None;
            }
        }
    }

    /// Answers the next process (we are the previous one).
    pub(super) fn handover_event(&mut self, ev: HandoverEvent) {
        match ev {
            HandoverEvent::Take { uid, reply } => {
                let r = match self.listener_fds.get(&uid) {
                    Some(v) => v
                        .iter()
                        .map(|(p, fd)| fd.try_clone().map(|f| (*p, f)))
                        .collect::<Result<Vec<(u16, OwnedFd)>, _>>()
                        .map_err(|e| format!("cannot duplicate the listeners of {uid}: {e}")),
                    None => Err(format!("no listeners for pod {uid} here")),
                };
                let _ = reply.send(r);
            }
            HandoverEvent::Took { uid, reply } => {
                self.release_pod(&uid);
                let _ = reply.send(());
            }
            HandoverEvent::Adopt {
                info,
                state,
                fds,
                reply,
            } => {
                let fault = self.args.fault_refuse_adopt;
                if let Err(e) = self.adopt_link(&info, state, fds, fault, Some(reply.clone()), true)
                {
                    let _ = reply.send(Err(e));
                }
            }
            HandoverEvent::AdoptRelay {
                info,
                state,
                fds,
                reply,
            } => {
                let fault = self.args.fault_refuse_adopt;
                let r = serde_json::from_str::<TunnelMeta>(&info)
                    .map_err(|e| {
                        format!(
                            "unreadable TCP relay bookkeeping ({e}): the previous node proxy \
                             sent what this build does not understand"
                        )
                    })
                    .and_then(|meta| {
                        self.adopt_relay(meta, state, fds, fault, Some(reply.clone()), true)
                    });
                if let Err(e) = r {
                    let _ = reply.send(Err(e));
                }
            }
        }
    }

    /// Continues a TCP relay on one of our shards: one the previous process handed over,
    /// or one of ours the next process refused (`fault`: None then). `reply` gets the
    /// outcome; Err here: it was not even sent to a shard.
    fn adopt_relay(
        &mut self,
        meta: TunnelMeta,
        state: RelayState,
        fds: Vec<OwnedFd>,
        fault: Option<u16>,
        reply: Option<Reply<()>>,
        from_previous: bool,
    ) -> Result<(), String> {
        if self.shards.is_empty() {
            return Err("no shards".into());
        }
        let k = (meta.src.port() as usize) % self.shards.len();
        let metrics = self.metrics.clone();
        self.shards[k]
            .send(Box::new(move |ctx| {
                let r = relays::adopt(ctx, &meta, &state, fds, fault);
                match &r {
                    Ok(()) if from_previous => {
                        metrics
                            .lifecycle
                            .conns_received
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::info!(shard = ctx.id, direction = %meta.direction, src = %meta.src, dst = %meta.dst, "continuing a TCP relay handed over by the previous node proxy");
                    }
                    Ok(()) => {}
                    Err(e) => tracing::warn!(shard = ctx.id, direction = %meta.direction, src = %meta.src, dst = %meta.dst, "cannot continue a handed-over TCP relay: {e}"),
                }
                if let Some(reply) = reply {
                    let _ = reply.send(r);
                }
            }))
            .map_err(|e| e.to_string())
    }

    /// Continues a link on one of our shards: one the previous process handed over, or
    /// one of ours the next process refused (`fault`: None then). `reply` gets the outcome
    /// (the tunnels adopted); Err here: it was not even sent to a shard.
    fn adopt_link(
        &mut self,
        info: &str,
        state: Vec<u8>,
        fds: Vec<OwnedFd>,
        fault: Option<u16>,
        reply: Option<Reply<usize>>,
        from_previous: bool,
    ) -> Result<(), String> {
        if !super::proxy_link(&self.args) {
            return Err("this node proxy runs HBONE on the h2 crate (--hbone-codec h2)".into());
        }
        let info: LinkInfo =
            serde_json::from_str(info).map_err(|e| format!("unreadable link info: {e}"))?;
        if self.shards.is_empty() {
            return Err("no shards".into());
        }
        let pod = info.pod.as_ref().and_then(|uid| {
            self.pods
                .get(uid)
                .map(|(p, _)| p.clone())
                .or_else(|| self.handed_pods.get(uid).cloned())
        });
        let k = (info.peer.port() as usize) % self.shards.len();
        let metrics = self.metrics.clone();
        let adopting = from_previous;
        self.shards[k]
            .send(Box::new(move |ctx| {
                let r = links::adopt(ctx, &info, pod, &state, fds, fault);
                match &r {
                    Ok(n) if adopting => {
                        metrics
                            .lifecycle
                            .conns_received
                            .fetch_add(*n as u64, Ordering::Relaxed);
                        tracing::info!(shard = ctx.id, peer = %info.peer, tunnels = n, "continuing an HBONE connection handed over by the previous node proxy");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(shard = ctx.id, peer = %info.peer, "cannot continue a handed-over HBONE connection: {e}"),
                }
                if let Some(reply) = reply {
                    let _ = reply.send(r);
                }
            }))
            .map_err(|e| e.to_string())
    }

    /// SIGTERM with a newer node proxy beside us: stops every link (with `--hbone-codec
    /// link`) and every TCP relay on every shard and hands them to that process over its
    /// hand-over socket; one it refuses is continued here again (it then drains). Returns
    /// once every one is handed over or kept.
    async fn hand_over_connections(&mut self, deadline: Duration) {
        let Some(path) = self.handover_path() else {
            return;
        };
        let client = match handover::Client::connect(&path) {
            Ok(Some(c)) if c.peer_pid != std::process::id() => c,
            Ok(_) => return, // no newer process: the socket is ours
            Err(e) => {
                tracing::warn!("{e}: live connections drain here");
                return;
            }
        };
        let t0 = Instant::now();
        let with_links = super::proxy_link(&self.args);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ShardExport>();
        let mut asked = 0;
        for shard in &self.shards {
            let tx = tx.clone();
            let metrics = self.metrics.clone();
            let sent = shard.send(Box::new(move |ctx| {
                let ctx = ctx.clone();
                crate::runtime::engine::spawn(async move {
                    let links = async {
                        if !with_links {
                            return Vec::new();
                        }
                        ctx.links.export_all().await
                    };
                    let (links, relays) = tokio::join!(links, ctx.relays.export_all());
                    let links = links
                        .into_iter()
                        .map(|(i, r)| {
                            (
                                i,
                                r.map(|e| {
                                    let n = e.state.tunnels.len();
                                    (e.state.encode(), e.fds, n)
                                }),
                            )
                        })
                        .collect();
                    if let Err(late) = tx.send((links, relays)) {
                        // Exported after the drain deadline: stopped, and nobody to continue
                        // them (their sockets close with `late`). Counted as cut.
                        let (links, relays) = late.0;
                        let n = links
                            .iter()
                            .map(|(_, r)| r.as_ref().map_or(0, |x| x.2 as u64))
                            .sum::<u64>()
                            + relays
                                .iter()
                                .filter(|(_, r)| matches!(r, RelayOut::Moved(_)))
                                .count() as u64;
                        metrics.lifecycle.cut.fetch_add(n, Ordering::Relaxed);
                        tracing::warn!(
                            shard = ctx.id,
                            cut = n,
                            "this shard exported its live connections after the drain deadline: cut"
                        );
                    }
                });
            }));
            asked += usize::from(sent.is_ok());
        }
        drop(tx);
        let (mut exported, mut exported_relays) = (Vec::new(), Vec::new());
        // A shard answers once each of its connections is stopped and exported, each step
        // bounded; one that takes longer than the drain deadline keeps what it has (its
        // connections are cut then, and counted by it).
        let until = tokio::time::Instant::now() + deadline;
        while asked > 0 {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some((l, r))) => {
                    exported.extend(l);
                    exported_relays.extend(r);
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        ?deadline,
                        "a shard did not export its live connections within the drain deadline: they are cut"
                    );
                    break;
                }
            }
            asked -= 1;
        }
        let mut n = HandedOver::default();
        for (info, r) in exported {
            self.hand_over_link(&client, &mut n, info, r);
        }
        for (meta, r) in exported_relays {
            self.hand_over_relay(&client, &mut n, meta, r);
        }
        let l = &self.metrics.lifecycle;
        l.conns_sent.fetch_add(n.sent, Ordering::Relaxed);
        l.conns_kept.fetch_add(n.kept, Ordering::Relaxed);
        l.cut.fetch_add(n.lost, Ordering::Relaxed);
        tracing::info!(
            connections = n.sent,
            hbone_connections = n.links,
            tcp_relays = n.relays,
            kept = n.kept,
            cut = n.lost,
            next_pid = client.peer_pid,
            after = ?t0.elapsed(),
            "live connections handed over to the next node proxy"
        );
    }

    /// Hands one exported link to the next process, or continues it here.
    fn hand_over_link(
        &mut self,
        client: &handover::Client,
        n: &mut HandedOver,
        info: LinkInfo,
        r: Result<(Vec<u8>, Vec<OwnedFd>, usize), String>,
    ) {
        let (state, fds, tunnels) = match r {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(peer = %info.peer, "cannot export an HBONE connection ({e}): its tunnels are cut");
                return;
            }
        };
        let info_json = serde_json::to_string(&info).unwrap_or_default();
        let outcome = if n.usable {
            client.adopt(&info_json, &state, &fds)
        } else {
            AdoptOutcome::Kept("an earlier hand-over got no answer".into())
        };
        match outcome {
            AdoptOutcome::Adopted(k) => {
                n.links += 1;
                n.sent += k as u64;
            }
            AdoptOutcome::Kept(why) => {
                tracing::warn!(peer = %info.peer, tunnels, "the next node proxy did not take an HBONE connection ({why}): it drains here");
                n.kept += tunnels as u64;
                // Continued here before the drain counts what is live.
                let (tx, rx) = std::sync::mpsc::channel();
                let r = self
                    .adopt_link(&info_json, state, fds, None, Some(tx), false)
                    .and_then(|()| {
                        rx.recv_timeout(handover::TIMEOUT)
                            .map_err(|_| "the shard did not answer".to_string())?
                    });
                if let Err(e) = r {
                    tracing::warn!(peer = %info.peer, "cannot continue it here either ({e}): cut");
                    n.lost += tunnels as u64;
                }
            }
            AdoptOutcome::Unknown(why) => {
                tracing::warn!(peer = %info.peer, tunnels, "no answer to a hand-over ({why}): the connection may run in the next node proxy, so it is not continued here (cut)");
                n.usable = false;
                n.lost += tunnels as u64;
            }
        }
    }

    /// Hands one exported TCP relay to the next process, or continues it here.
    fn hand_over_relay(
        &mut self,
        client: &handover::Client,
        n: &mut HandedOver,
        meta: TunnelMeta,
        r: RelayOut,
    ) {
        let (src, dst, direction) = (meta.src, meta.dst, meta.direction.clone());
        let x = match r {
            RelayOut::Moved(x) => x,
            RelayOut::Stays(why) => {
                tracing::warn!(%direction, %src, %dst, "cannot export a TCP relay ({why}): it drains here");
                n.kept += 1;
                return;
            }
            RelayOut::Ended(why) => {
                tracing::debug!(%direction, %src, %dst, "a TCP relay ended during the hand-over: {why}");
                return;
            }
        };
        let info = serde_json::to_string(&meta).unwrap_or_default();
        let outcome = if n.usable {
            client.adopt_relay(&info, &x.state, &x.fds)
        } else {
            AdoptOutcome::Kept("an earlier hand-over got no answer".into())
        };
        match outcome {
            AdoptOutcome::Adopted(_) => {
                n.relays += 1;
                n.sent += 1;
            }
            AdoptOutcome::Kept(why) => {
                tracing::warn!(%direction, %src, %dst, "the next node proxy did not take a TCP relay ({why}): it drains here");
                n.kept += 1;
                let (tx, rx) = std::sync::mpsc::channel();
                let r = self
                    .adopt_relay(meta, x.state, x.fds, None, Some(tx), false)
                    .and_then(|()| {
                        rx.recv_timeout(handover::TIMEOUT)
                            .map_err(|_| "the shard did not answer".to_string())?
                    });
                if let Err(e) = r {
                    tracing::warn!(%direction, %src, %dst, "cannot continue it here either ({e}): cut");
                    n.lost += 1;
                }
            }
            AdoptOutcome::Unknown(why) => {
                tracing::warn!(%direction, %src, %dst, "no answer to a hand-over ({why}): the relay may run in the next node proxy, so it is not continued here (cut)");
                n.usable = false;
                n.lost += 1;
            }
        }
    }

    /// The next process accepts for `uid` now: stop accepting (without closing the listen
    /// queues) and forget the pod; its live connections finish here.
    fn release_pod(&mut self, uid: &str) {
        if !self.forget_pod(uid, true) {
            return;
        }
        self.metrics
            .lifecycle
            .pods_sent
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(pod = %uid, "pod handed over to the next node proxy: it accepts for it now; live connections finish here");
    }

    /// The SIGTERM drain (see the module doc). Returns when nothing is left or the deadline
    /// passed; the caller then stops the shards.
    pub(super) async fn drain(&mut self) {
        let deadline = config::env::drain_deadline(self.args.drain_deadline, &config::env::vars());
        self.admin.set_pending("draining", true);
        for shard in &self.shards {
            let _ = shard.send(Box::new(|ctx| ctx.release_all()));
        }
        // Our copies of listeners nobody took: closing them closes those sockets once the
        // shards let go (connections still queued there are reset, as at any exit).
        self.listener_fds.clear();
        // Live connections move to the next process if there is one; what stays drains.
        self.hand_over_connections(deadline).await;
        for shard in &self.shards {
            let _ = shard.send(Box::new(|ctx| ctx.drain.start()));
        }
        let t0 = Instant::now();
        let at_start = self.metrics.live();
        if at_start > 0 {
            tracing::info!(
                live = at_start,
                deadline = ?deadline,
                "draining: GOAWAY sent to HBONE peers, waiting for live connections"
            );
        }
        let mut left = at_start;
        while left > 0 && t0.elapsed() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            left = self.metrics.live();
        }
        let cut = left;
        let drained = at_start.saturating_sub(cut);
        let l = &self.metrics.lifecycle;
        l.drained.fetch_add(drained, Ordering::Relaxed);
        l.cut.fetch_add(cut, Ordering::Relaxed);
        if cut > 0 {
            tracing::warn!(
                drained,
                cut,
                after = ?t0.elapsed(),
                "drain deadline passed: cutting the connections still open"
            );
        } else {
            tracing::info!(drained, after = ?t0.elapsed(), "drained: no connection left");
        }
    }
}

/// What a hand-over did, as it goes.
struct HandedOver {
    /// Connections (HBONE tunnels and TCP relays) the next process took.
    sent: u64,
    /// HBONE connections (links) it took.
    links: u64,
    /// TCP relays it took.
    relays: u64,
    /// Connections it refused, continued here.
    kept: u64,
    /// Connections neither process continues.
    lost: u64,
    /// False once a hand-over got no answer: nothing more is offered.
    usable: bool,
}

impl Default for HandedOver {
    fn default() -> Self {
        HandedOver {
            sent: 0,
            links: 0,
            relays: 0,
            kept: 0,
            lost: 0,
            usable: true,
        }
    }
}
