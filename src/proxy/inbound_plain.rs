//! The inbound plaintext flow (15006): traffic from outside the mesh, redirected by the
//! pod's capture rules. Authorized with no identity (so a policy requiring one blocks it);
//! a denial closes the connection.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::runtime::net::{Listener as TcpListener, Stream as TcpStream};

use super::inbound::{labels, spoof_source};
use super::{ConnMetrics, Pod, ShardCtx, StopSignal, connect_in, log_complete};
use crate::hbone;
use crate::io;
use crate::policy::{ConnFacts, evaluate};
use crate::runtime::sockopt;

/// Accept loop of one pod's plaintext listener on this shard.
pub async fn serve(ctx: Rc<ShardCtx>, pod: Arc<Pod>, l: TcpListener, stop: Rc<StopSignal>) {
    let p = pod.clone();
    super::accept_loop(pod, l, "plaintext", stop, move |s, peer| {
        let live = ctx.live_guard();
        let f = handle(ctx.clone(), p.clone(), s, peer);
        async move {
            let _live = live;
            f.await
        }
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
    let metrics = metrics_for("-");
    let counters = metrics.counters(false);
    let reg = ctx.conns.register(&w.uid, facts);
    let err = tokio::select! {
        r = io::copy_tcp(s, up, counters.clone()) => r.err().map(|e| e.to_string()),
        _ = reg.kill.notified() => Some("connection closed due to policy change".to_string()),
    };
    drop(reg);
    log_complete(
        &ctx,
        "inbound",
        peer,
        None,
        dst,
        None,
        Some(&w.identity().to_string()),
        None,
        &counters,
        started,
        err.as_deref(),
    );
}
