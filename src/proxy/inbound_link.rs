//! The inbound HBONE flow (15008) on the link task (`io::link`, the default codec): TLS (the
//! pod's own certificate, client certificate required) within `connect_timeout`, then our
//! HTTP/2 codec (the client's preface must arrive within the same bound), then per CONNECT
//! stream: validate, authorize, connect to the app in the pod, answer 200 only then, and
//! let the link carry it. Validation, policy, labels and the responses are the h2 path's
//! (`inbound.rs`), so both codecs answer alike.
//!
//! A link here can be handed to the next process whole (`links.rs`); the streams it carries
//! keep their bookkeeping ([`TunnelMeta`]) so the next process logs, counts and re-checks
//! them as this one would have.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use super::conns::Kill;
use super::inbound::{admit, forwarded_host, labels, server_cert};
use super::links::{LinkInfo, PolicyMeta, TunnelMeta, unix_ms_ago};
use super::tunnel::{Holds, TunnelDone};
use super::{ConnMetrics, LiveGuard, Pod, ShardCtx, log_complete};
use crate::hbone::Reject;
use crate::hbone::h2::{self, Config, Conn, Role};
use crate::identity::Identity;
use crate::io::link::{Incoming, Link};
use crate::runtime::engine;
use crate::runtime::net::Stream as TcpStream;

/// Serves one HBONE connection a pod's 15008 accepted.
pub async fn handle_conn(ctx: Rc<ShardCtx>, pod: Arc<Pod>, s: TcpStream, peer: SocketAddr) {
    let t0 = Instant::now();
    let _ = s.set_nodelay(true);
    let Ok(local) = s.local_addr() else { return };
    let Some(cert) = server_cert(&ctx, &pod, peer).await else {
        return;
    };
    let bound = ctx.cfg.connect_timeout;
    let tls = match engine::timeout(bound, crate::io::tls::accept(s, cert.server.clone())).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::warn!(pod = %pod.uid, %peer, "HBONE TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::warn!(pod = %pod.uid, %peer, "HBONE TLS handshake timed out after {bound:?}: the client did not complete TLS, closing");
            return;
        }
    };
    let peer_id = crate::tls::peer_identity(tls.peer_certificates()).ok();
    let link = Link::new(Conn::new(
        Role::Server,
        Config::hbone(Role::Server, &ctx.cfg.h2),
    ));
    let info = LinkInfo::server(peer, local, peer_id.as_ref(), &pod.uid);
    ctx.links.run(link.clone(), tls, info, &ctx.cfg.h2);
    // The client's preface and SETTINGS within what is left of the bound.
    let (l, left, uid) = (
        link.clone(),
        bound.saturating_sub(t0.elapsed()),
        pod.uid.clone(),
    );
    engine::spawn(async move {
        engine::sleep(left).await;
        if !l.peer_ready() && !l.is_closed() {
            tracing::warn!(pod = %uid, %peer, "HBONE HTTP/2 handshake timed out after {bound:?}: the client completed TLS but sent no HTTP/2 preface and SETTINGS, closing");
            l.close("no HTTP/2 preface");
        }
    });
    serve_streams(ctx, Some(pod), link, peer, local, Rc::new(peer_id)).await;
}

/// Answers the streams the peer opens on `link` until it closes; on drain, GOAWAY (streams
/// open now finish here). `pod`: None for a link adopted for a pod this process does not
/// have (its new streams are refused with 503).
pub async fn serve_streams(
    ctx: Rc<ShardCtx>,
    pod: Option<Arc<Pod>>,
    link: Link,
    peer: SocketAddr,
    local: SocketAddr,
    peer_id: Rc<Option<Identity>>,
) {
    let mut goaway_sent = false;
    loop {
        let next = tokio::select! {
            n = link.accept() => n,
            _ = ctx.drain.wait(), if !goaway_sent => {
                link.go_away();
                goaway_sent = true;
                continue;
            }
        };
        let Some(inc) = next else { break };
        let Some(pod) = pod.clone() else {
            link.refuse(inc.id, 503);
            continue;
        };
        let t = stream_task(&ctx, pod, &link, inc, peer, local, &peer_id);
        engine::spawn(t);
    }
}

/// The task of one CONNECT stream, counted live while the stream lasts: it authorizes and
/// connects the app, answers, and ends, leaving the tunnel's end to the link
/// ([`TunnelDone`]): an idle tunnel has no task.
pub fn stream_task(
    ctx: &Rc<ShardCtx>,
    pod: Arc<Pod>,
    link: &Link,
    inc: Incoming,
    peer: SocketAddr,
    local: SocketAddr,
    peer_id: &Rc<Option<Identity>>,
) -> impl std::future::Future<Output = ()> + use<> {
    handle_stream(
        ctx.clone(),
        pod,
        link.clone(),
        inc,
        peer,
        local,
        peer_id.clone(),
        ctx.live_guard(),
    )
}

#[allow(clippy::too_many_arguments)]
async fn handle_stream(
    ctx: Rc<ShardCtx>,
    pod: Arc<Pod>,
    link: Link,
    inc: Incoming,
    peer: SocketAddr,
    local: SocketAddr,
    peer_id: Rc<Option<Identity>>,
    live: LiveGuard,
) {
    let started = Instant::now();
    let src_id = (*peer_id).as_ref().map(|i| i.to_string());
    // The request's fields and what is parsed from them are dropped once admitted: the
    // task keeps only what its end needs across the tunnel's life.
    let Incoming { id, headers } = inc;
    let result = match h2::to_request(&headers) {
        Ok(req) => {
            let host = forwarded_host(&req);
            let authority = req.uri().authority().map(|a| a.as_str().to_string());
            // Boxed: policy and the app's connect are not part of every tunnel's task.
            let r = Box::pin(admit(&ctx, &pod, &req, peer, local, &peer_id)).await;
            (r, host, authority)
        }
        Err(e) => (
            Err(Reject::BadRequest(format!("malformed request: {e}"))),
            None,
            None,
        ),
    };
    drop(headers);
    let (result, service_host, hbone_addr) = result;
    let flags = match &result {
        Ok(_) => "-",
        Err(Reject::Unauthorized(_)) => "DENY",
        Err(_) => "CONNECT",
    };
    let lbl = labels(
        &ctx,
        &pod,
        peer,
        src_id.clone(),
        true,
        flags,
        service_host.as_deref(),
    );
    let (metrics, lbl) = ConnMetrics::open_shared(&ctx, lbl);
    let counters = metrics.counters(false);
    let (dst, dst_uid, dst_id, upstream) = match result {
        Ok(ok) => ok,
        Err(reject) => {
            metrics.failed();
            link.refuse(id, reject.status().as_u16());
            let dst = hbone_addr
                .as_deref()
                .and_then(|a| a.parse().ok())
                .unwrap_or(local);
            log_complete(
                &ctx,
                "inbound",
                peer,
                src_id.as_deref(),
                dst,
                Some(dst),
                None,
                service_host.as_deref(),
                &counters,
                started,
                Some(&reject.to_string()),
            );
            return;
        }
    };
    let src = SocketAddr::new(crate::hbone::normalize(peer.ip()), peer.port());
    let n = &ctx.names;
    let src_name = n.opt(src_id.as_deref());
    let meta = TunnelMeta {
        direction: n.get("inbound"),
        pod: n.get(&pod.uid),
        src: peer,
        src_id: src_name.clone(),
        dst: local,
        hbone_addr: Some(dst),
        dst_id: Some(n.get(&dst_id)),
        service: n.opt(service_host.as_deref()),
        labels: lbl,
        started_unix_ms: unix_ms_ago(started.elapsed()),
        policy: Some(PolicyMeta {
            dst_uid: n.get(&dst_uid),
            src,
            dst,
            src_identity: src_name,
        }),
    };
    let meta = Rc::new(meta);
    if let Err(e) = link.answer(id, upstream, counters.clone(), meta.clone()) {
        tracing::debug!(%peer, "HBONE client went away before 200: {e}");
        return;
    }
    let conn = ctx.conns.add_tunnel(&meta, Kill::Reset(link.clone(), id));
    let done = TunnelDone {
        ctx: ctx.clone(),
        meta,
        metrics,
        counters,
        before: (0, 0),
        holds: Holds {
            live,
            slot: None,
            share: None,
        },
        conn,
        outbound: false,
        retry: None,
    };
    link.on_end(id, done.on_end());
}
