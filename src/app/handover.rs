//! The node proxy's part in a rolling update and in its own shutdown: taking over the
//! previous process's listeners pod by pod (`inpod::handover`), handing ours to the next
//! process when it asks, and the SIGTERM drain.
//!
//! On SIGTERM with a newer process beside us, every live HBONE connection on the link task
//! is handed to it whole (`hand_over_links`: sockets, TLS and HTTP/2 state, bytes in
//! flight, bookkeeping), so long-lived connections go on without a cut; one it refuses is
//! continued here and drains. Then the drain, as ztunnel's: stop accepting (listeners handed over keep their queues in the
//! new process; the others close), GOAWAY on every inbound HBONE connection so peers open
//! new streams elsewhere, readiness fails, then wait until no proxied connection or HBONE
//! stream is left or the deadline (`--drain-deadline`, from TERMINATION_GRACE_PERIOD_SECONDS
//! as ztunnel derives it) passes; what is left then is cut by the exit and counted.

use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Node;
use crate::config;
use crate::inpod::handover::{self, AdoptOutcome, HandoverEvent};
use crate::proxy::Pod;
use crate::proxy::links::{self, LinkInfo};

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
        }
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
        reply: Option<std::sync::mpsc::Sender<Result<usize, String>>>,
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

    /// SIGTERM with a newer node proxy beside us: stops every link on every shard and hands
    /// it to that process over its hand-over socket; a link it refuses is continued here
    /// again (it then drains). Returns once every link is handed over or kept.
    async fn hand_over_links(&mut self) {
        if !super::proxy_link(&self.args) {
            return;
        }
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
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut asked = 0;
        for shard in &self.shards {
            let tx = tx.clone();
            let sent = shard.send(Box::new(move |ctx| {
                let ctx = ctx.clone();
                crate::runtime::engine::spawn(async move {
                    let all = ctx.links.export_all().await;
                    let _ = tx.send(
                        all.into_iter()
                            .map(|(i, r)| {
                                (
                                    i,
                                    r.map(|e| {
                                        let n = e.state.tunnels.len();
                                        (e.state.encode(), e.fds, n)
                                    }),
                                )
                            })
                            .collect::<Vec<_>>(),
                    );
                });
            }));
            asked += usize::from(sent.is_ok());
        }
        drop(tx);
        let mut exported = Vec::new();
        while asked > 0 {
            match tokio::time::timeout(handover::TIMEOUT, rx.recv()).await {
                Ok(Some(v)) => exported.extend(v),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        "a shard did not export its HBONE connections in time: they drain"
                    );
                    break;
                }
            }
            asked -= 1;
        }
        let (mut links_sent, mut sent, mut kept, mut lost) = (0u64, 0u64, 0u64, 0u64);
        let mut usable = true;
        for (info, r) in exported {
            let (state, fds, n) = match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(peer = %info.peer, "cannot export an HBONE connection ({e}): its tunnels are cut");
                    continue;
                }
            };
            let info_json = serde_json::to_string(&info).unwrap_or_default();
            let outcome = if usable {
                client.adopt(&info_json, &state, &fds)
            } else {
                AdoptOutcome::Kept("an earlier hand-over got no answer".into())
            };
            match outcome {
                AdoptOutcome::Adopted(k) => {
                    links_sent += 1;
                    sent += k as u64;
                }
                AdoptOutcome::Kept(why) => {
                    tracing::warn!(peer = %info.peer, tunnels = n, "the next node proxy did not take an HBONE connection ({why}): it drains here");
                    kept += n as u64;
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
                        lost += n as u64;
                    }
                }
                AdoptOutcome::Unknown(why) => {
                    tracing::warn!(peer = %info.peer, tunnels = n, "no answer to a hand-over ({why}): the connection may run in the next node proxy, so it is not continued here (cut)");
                    usable = false;
                    lost += n as u64;
                }
            }
        }
        let l = &self.metrics.lifecycle;
        l.conns_sent.fetch_add(sent, Ordering::Relaxed);
        l.conns_kept.fetch_add(kept, Ordering::Relaxed);
        l.cut.fetch_add(lost, Ordering::Relaxed);
        tracing::info!(
            connections = sent,
            hbone_connections = links_sent,
            kept,
            cut = lost,
            next_pid = client.peer_pid,
            after = ?t0.elapsed(),
            "live connections handed over to the next node proxy"
        );
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
        self.hand_over_links().await;
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
