//! The inbound plaintext flow (15006): traffic from outside the mesh, redirected by the
//! pod's capture rules. Authorized with no identity (so a policy requiring one blocks it);
//! a denial closes the connection. An allowed one runs on a relay that a rolling update
//! hands to the next process (`relays`), re-checked there when policies change.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::runtime::net::{Listener as TcpListener, Stream as TcpStream};

use super::inbound::{labels, spoof_source};
use super::links::{PolicyMeta, TunnelMeta, unix_ms_ago};
use super::{ConnMetrics, Pod, ShardCtx, StopSignal, connect_in, log_complete, relays};
use crate::hbone;
use crate::io::relay;
use crate::policy::{ConnFacts, evaluate};
use crate::runtime::sockopt;

/// Accept loop of one pod's plaintext listener on this shard.
pub async fn serve(ctx: Rc<ShardCtx>, pod: Arc<Pod>, l: TcpListener, stop: Rc<StopSignal>) {
    let p = pod.clone();
    let limit = ctx.limit.clone();
    super::accept_loop(pod, l, "plaintext", stop, limit, move |s, peer, slot| {
        let live = (ctx.live_guard(), slot);
        let f = handle(ctx.clone(), p.clone(), s, peer);
        crate::runtime::holding::holding(f, live)
    })
    .await
}

async fn handle(ctx: Rc<ShardCtx>, pod: Arc<Pod>, s: TcpStream, peer: SocketAddr) {
    let started = Instant::now();
    // The peer is another pod, over the network: the node's congestion control stays.
    sockopt::tune_app_conn(&s, None, ctx.cfg.keepalive);
    let peer = SocketAddr::new(hbone::normalize(peer.ip()), peer.port());
    let dst = match sockopt::original_dst(&s) {
        Ok(d) => SocketAddr::new(hbone::normalize(d.ip()), d.port()),
        Err(_) => return,
    };
    let metrics_for =
        |flags: &str| ConnMetrics::open(&ctx, labels(&ctx, &pod, peer, None, false, flags, None));
    let fail = |e: String, flags: &str| {
        let m = metrics_for(flags);
        m.failed();
        let counters = m.counters(false);
        log_complete(
            &ctx,
            "inbound",
            peer,
            None,
            dst,
            None,
            None,
            None,
            &counters,
            started,
            Some(&e),
        )
    };
    if ctx.cfg.proxy_ports.contains(&dst.port()) {
        return fail(format!("{dst} is the proxy's own port: dropped"), "CONNECT");
    }
    let snap = ctx.state.load_full();
    let Some(w) = pod.workload(&snap).cloned() else {
        return fail(format!("pod {} is not in the config", pod.uid), "CONNECT");
    };
    let facts = ConnFacts {
        src: peer,
        dst,
        src_identity: None,
    };
    let d = evaluate(snap.policies_for(&w), &facts);
    drop(snap);
    if !d.is_allow() {
        return fail(format!("connection rejected: {d}"), "DENY");
    }
    let spoof = spoof_source(&ctx, peer.ip(), dst.ip());
    let up = match connect_in(
        &pod.netns,
        dst,
        ctx.cfg.mark,
        spoof,
        ctx.cfg.connect_timeout,
    )
    .await
    {
        Ok(u) => u,
        Err(e) => return fail(e, "CONNECT"),
    };
    let lbl = labels(&ctx, &pod, peer, None, false, "-", None);
    let (metrics, lbl) = ConnMetrics::open_shared(&ctx, lbl);
    let counters = metrics.counters(false);
    let dst_id = w.identity().to_string();
    // What travels with the relay if it is handed to the next process; `policy` also
    // registers it for the re-check (the facts it was authorized on).
    let n = &ctx.names;
    let meta = Rc::new(TunnelMeta {
        direction: n.get("inbound"),
        pod: n.get(&pod.uid),
        src: peer,
        src_id: None,
        dst,
        hbone_addr: None,
        dst_id: Some(n.get(&dst_id)),
        service: None,
        labels: lbl,
        started_unix_ms: unix_ms_ago(started.elapsed()),
        policy: Some(PolicyMeta {
            dst_uid: n.get(&w.uid),
            src: facts.src,
            dst: facts.dst,
            src_identity: None,
        }),
    });
    let c = counters.clone();
    let splice = ctx.cfg.splice;
    let end = relays::carry(&ctx, &meta, false, move |ctl| {
        ctl.set_splice(splice);
        relay::run(s, up, Vec::new(), c, ctl)
    })
    .await;
    let err = match relays::outcome(end) {
        // The next process logs and counts its end.
        Ok(true) => return metrics.moved(),
        Ok(false) => None,
        Err(e) => Some(e),
    };
    log_complete(
        &ctx,
        "inbound",
        peer,
        None,
        dst,
        None,
        Some(&dst_id),
        None,
        &counters,
        started,
        err.as_deref(),
    );
}
