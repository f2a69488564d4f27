//! The node proxy's part in a rolling update and in its own shutdown: taking over the
//! previous process's listeners pod by pod (`inpod::handover`), handing ours to the next
//! process when it asks, and the SIGTERM drain.
//!
//! The drain, as ztunnel's: stop accepting (listeners handed over keep their queues in the
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
use crate::inpod::handover::{self, HandoverEvent};
use crate::proxy::Pod;

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
            let _ = shard.send(Box::new(|ctx| {
                ctx.release_all();
                ctx.drain.start();
            }));
        }
        // Our copies of listeners nobody took: closing them closes those sockets once the
        // shards let go (connections still queued there are reset, as at any exit).
        self.listener_fds.clear();
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
