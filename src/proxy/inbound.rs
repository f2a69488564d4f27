//! The inbound HBONE flow (15008): TLS (the pod's own certificate, client certificate
//! required) → HTTP/2, both within `connect_timeout` → per CONNECT stream: validate,
//! authorize, connect to the app in the pod, answer 200 only then, and copy.
//!
//! Responses as ztunnel gives them: 400 (not CONNECT, bad authority, authority not this pod),
//! 401 (denied by policy), 503 (unknown workload, proxy port, app refused).

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::runtime::net::{Listener as TcpListener, Stream as TcpStream};
use bytes::Bytes;
use h2::server::SendResponse;
use http::{Request, Response, StatusCode};

use super::{ConnMetrics, Pod, ShardCtx, StopSignal, connect_in, h2conn, log_complete};
use crate::config::flags::OrigSrc;
use crate::hbone::{self, Reject};
use crate::identity::Identity;
use crate::io;
use crate::policy::{ConnFacts, evaluate};
use crate::telemetry::metrics::{DstService, Peer, TcpLabels};

/// Accept loop of one pod's HBONE listener on this shard.
pub async fn serve(ctx: Rc<ShardCtx>, pod: Arc<Pod>, l: TcpListener, stop: Rc<StopSignal>) {
    let p = pod.clone();
    // Streams count as live connections (`handle_stream`), not the HBONE connection: an
    // idle pooled connection must not hold up a drain.
    let limit = ctx.limit.clone();
    super::accept_loop(pod, l, "HBONE", stop, limit, move |s, peer, slot| {
        crate::runtime::holding::holding(handle_conn(ctx.clone(), p.clone(), s, peer), slot)
    })
    .await
}

/// The pod's server certificate for an HBONE connection it accepted (waiting a moment for
/// late state, as ztunnel does); None (logged) when there is none.
pub async fn server_cert(
    ctx: &ShardCtx,
    pod: &Pod,
    peer: SocketAddr,
) -> Option<Arc<crate::certs::store::WorkloadCert>> {
    let Some(id) = super::wait_for(|| pod.workload(&ctx.state.load()).map(|w| w.identity())).await
    else {
        tracing::warn!(pod = %pod.uid, %peer, "HBONE connection for a pod that is not in the config: closing");
        return None;
    };
    let Some(cert) = super::wait_for(|| ctx.certs.load().get(&id).cloned()).await else {
        tracing::warn!(pod = %pod.uid, %peer, "no certificate for {id} (the CA has not issued one): closing HBONE connection");
        return None;
    };
    Some(cert)
}

/// Serves one HBONE connection: TLS, HTTP/2, then a task per CONNECT stream (on the link
/// task when `link` is configured: `inbound_link`).
pub async fn handle_conn(ctx: Rc<ShardCtx>, pod: Arc<Pod>, s: TcpStream, peer: SocketAddr) {
    if ctx.cfg.link {
        return super::inbound_link::handle_conn(ctx, pod, s, peer).await;
    }
    let _ = s.set_nodelay(true);
    let local = match s.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let Some(cert) = server_cert(&ctx, &pod, peer).await else {
        return;
    };
    // TLS and HTTP/2 within the connect timeout: a client that stalls in either is dropped.
    let (cfg, records) = (cert.server.clone(), ctx.cfg.tls_records);
    let accepted = h2conn::accept(s, cfg, records, &ctx.cfg.h2, ctx.cfg.connect_timeout).await;
    let (mut conn, peer_id) = match accepted {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(pod = %pod.uid, %peer, "{e}");
            return;
        }
    };
    let peer_id = Rc::new(peer_id);
    // Our own PINGs: a peer that stops answering is dropped (ztunnel does the same).
    let dead = Rc::new(tokio::sync::Notify::new());
    let gone = Rc::new(std::cell::Cell::new(false));
    if let Some(ping) = conn.ping_pong() {
        let (d, g) = (dead.clone(), gone.clone());
        h2conn::spawn_keepalive(
            ping,
            &ctx.cfg.h2,
            move || !g.get(),
            move || d.notify_one(),
            peer,
        );
    }
    let _gone = Defer(gone);
    let mut goaway_sent = false;
    loop {
        let next = tokio::select! {
            n = conn.accept() => n,
            _ = dead.notified() => break,
            _ = ctx.drain.wait(), if !goaway_sent => {
                // Draining: GOAWAY, so the peer opens new streams elsewhere (the new process);
                // the streams open now finish here.
                conn.graceful_shutdown();
                goaway_sent = true;
                continue;
            }
        };
        let Some(next) = next else { break };
        match next {
            Ok((req, respond)) => {
                let live = ctx.live_guard();
                let f = handle_stream(
                    ctx.clone(),
                    pod.clone(),
                    req,
                    respond,
                    peer,
                    local,
                    peer_id.clone(),
                );
                crate::runtime::engine::spawn(crate::runtime::holding::holding(f, live));
            }
            Err(e) => {
                tracing::debug!(pod = %pod.uid, %peer, "HBONE connection ended: {e}");
                break;
            }
        }
    }
}

async fn handle_stream(
    ctx: Rc<ShardCtx>,
    pod: Arc<Pod>,
    req: Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer: SocketAddr,
    local: SocketAddr,
    peer_id: Rc<Option<Identity>>,
) {
    let started = Instant::now();
    let src_id = (*peer_id).as_ref().map(|i| i.to_string());
    let hbone_addr = req.uri().authority().map(|a| a.as_str().to_string());
    let service_host = forwarded_host(&req);
    let result = admit(&ctx, &pod, &req, peer, local, &peer_id).await;
    let flags = match &result {
        Ok(_) => "-",
        Err(Reject::Unauthorized(_)) => "DENY",
        Err(_) => "CONNECT",
    };
    let metrics = ConnMetrics::open(
        &ctx,
        labels(
            &ctx,
            &pod,
            peer,
            src_id.clone(),
            true,
            flags,
            service_host.as_deref(),
        ),
    );
    let counters = metrics.counters(false);
    let (dst, dst_uid, dst_id, upstream) = match result {
        Ok(ok) => ok,
        Err(reject) => {
            metrics.failed();
            let _ = respond.send_response(status_only(reject.status()), true);
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
    let send = match respond.send_response(status_only(StatusCode::OK), false) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%peer, "HBONE client went away before 200: {e}");
            return;
        }
    };
    let facts = ConnFacts {
        src: peer,
        dst,
        src_identity: (*peer_id).clone(),
    };
    let reg = ctx.conns.register(&dst_uid, facts);
    let copy = io::copy_h2(upstream, send, req.into_body(), counters.clone());
    let err = tokio::select! {
        r = copy => r.err().map(|e| e.to_string()),
        _ = reg.kill.notified() => Some(super::relays::POLICY_CLOSED.to_string()),
    };
    drop(reg);
    log_complete(
        &ctx,
        "inbound",
        peer,
        src_id.as_deref(),
        SocketAddr::new(local.ip(), local.port()),
        Some(dst),
        Some(&dst_id),
        service_host.as_deref(),
        &counters,
        started,
        err.as_deref(),
    );
}

/// The `host=` of the `forwarded` header: the service the client dialled.
pub fn forwarded_host<B>(req: &Request<B>) -> Option<String> {
    let f = req.headers().get("forwarded")?.to_str().ok()?;
    f.split(';')
        .find_map(|p| p.trim().strip_prefix("host="))
        .map(|h| h.trim_matches('"').to_string())
}

/// Istio's labels for an inbound connection (reporter=destination).
pub fn labels(
    ctx: &ShardCtx,
    pod: &Pod,
    peer: SocketAddr,
    src_principal: Option<String>,
    mtls: bool,
    flags: &str,
    service_host: Option<&str>,
) -> TcpLabels {
    let snap = ctx.state.load();
    let dst = pod.workload(&snap);
    let src = snap.workload_by_ip(hbone::normalize(peer.ip()));
    let svc =
        service_host.and_then(|h| snap.service_by_hostname(h, dst.map(|w| w.namespace.as_str())));
    let svc_labels = svc.map(|s| DstService {
        hostname: &s.hostname,
        namespace: &s.namespace,
        name: &s.name,
    });
    TcpLabels::new(
        "destination",
        &Peer {
            workload: src.map(|w| w.as_ref()),
            principal: src_principal,
        },
        &Peer {
            workload: dst.map(|w| w.as_ref()),
            principal: dst.map(|w| w.identity().to_string()),
        },
        svc_labels.as_ref(),
        mtls,
        flags,
    )
}

/// Validates, authorizes and connects; returns (destination, workload uid, its identity, the
/// app connection).
pub async fn admit<B>(
    ctx: &ShardCtx,
    pod: &Pod,
    req: &Request<B>,
    peer: SocketAddr,
    local: SocketAddr,
    peer_id: &Option<Identity>,
) -> Result<(SocketAddr, String, String, TcpStream), Reject> {
    let authority = req.uri().authority().map(|a| a.as_str());
    let dst = hbone::parse_connect(req.method(), authority)?;
    let local_ip = hbone::normalize(local.ip());
    hbone::check_destination(dst, local_ip, &ctx.cfg.proxy_ports)?;
    let dst = SocketAddr::new(hbone::normalize(dst.ip()), dst.port());
    let snap = ctx.state.load_full();
    let w = pod
        .workload(&snap)
        .ok_or_else(|| Reject::Unavailable(format!("no workload {} in config", pod.uid)))?;
    let facts = ConnFacts {
        src: SocketAddr::new(hbone::normalize(peer.ip()), peer.port()),
        dst,
        src_identity: peer_id.clone(),
    };
    let d = evaluate(snap.policies_for(w), &facts);
    if !d.is_allow() {
        return Err(Reject::Unauthorized(format!("connection rejected: {d}")));
    }
    let (uid, id) = (w.uid.clone(), w.identity().to_string());
    drop(snap);
    let spoof = spoof_source(ctx, facts.src.ip(), dst.ip());
    let up = connect_in(
        &pod.netns,
        dst,
        ctx.cfg.mark,
        spoof,
        ctx.cfg.connect_timeout,
    )
    .await
    .map_err(Reject::Unavailable)?;
    crate::runtime::sockopt::tune_app_conn(
        &up,
        ctx.cfg.local_congestion.as_deref(),
        ctx.cfg.keepalive,
    );
    Ok((dst, uid, id, up))
}

/// The source IP to keep on the app connection, if any (never when source == destination).
pub fn spoof_source(
    ctx: &ShardCtx,
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
) -> Option<std::net::IpAddr> {
    match ctx.cfg.orig_src {
        OrigSrc::Off => None,
        _ if src == dst => None,
        OrigSrc::On | OrigSrc::Auto => Some(src),
    }
}

/// Marks a connection gone when dropped (stops its keepalive task).
struct Defer(Rc<std::cell::Cell<bool>>);

impl Drop for Defer {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

pub fn status_only(status: StatusCode) -> Response<()> {
    let mut r = Response::new(());
    *r.status_mut() = status;
    r
}
