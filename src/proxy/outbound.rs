//! The outbound flow (15001): a pod's captured connection → route → HBONE or passthrough.
//!
//! Routing (`route`, pure, over a snapshot): a service VIP picks an endpoint round-robin and
//! maps the port; a pod IP goes to that pod; a destination with a waypoint goes to the
//! waypoint; an HBONE (captured) destination is reached over HBONE at pod:15008; anything
//! else is plaintext passthrough to the original destination, on a relay that a rolling
//! update hands to the next process (`relays`).

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::runtime::net::{Listener as TcpListener, Stream as TcpStream};

use super::links::{TunnelMeta, unix_ms_ago};
use super::pool::PoolKey;
use super::relays;
use super::tunnel::{Holds, Retry, TunnelDone};
use super::{ConnMetrics, Pod, ShardCtx, StopSignal, connect_in, h2conn, limit, log_complete};
use crate::hbone::{self, ConnectHeaders};
use crate::identity::Identity;
use crate::io::relay;
use crate::io::{self, Counters};
use crate::runtime::sockopt;
use crate::state::{GatewayAddress, GatewayDestination, Protocol, Snapshot, Workload};
use crate::telemetry::metrics::{DstService, Peer, TcpLabels};

/// Where a connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Plain TCP to the destination, no mTLS.
    Passthrough { dst: SocketAddr },
    /// HBONE to `next_hop` (a pod's or a waypoint's 15008) asking for `authority`.
    Hbone {
        next_hop: SocketAddr,
        authority: SocketAddr,
        expected: Vec<Identity>,
        service_host: Option<String>,
    },
}

/// Why a connection could not be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("{0} is the proxy's own port: refusing a call to itself")]
    SelfCall(SocketAddr),
    #[error("service {0} has no healthy endpoints")]
    NoHealthyUpstream(String),
    #[error("service {svc} has no target port for port {port}")]
    NoTargetPort { svc: String, port: u16 },
    #[error("workload {0} has no address of the right family")]
    NoAddress(String),
    #[error("waypoint {0} cannot be resolved")]
    NoWaypoint(String),
}

/// Routes `orig` (the destination the app dialled) from workload `src`. `rr` supplies the
/// round-robin index for a service (called once, only for services).
pub fn route(
    snap: &Snapshot,
    src: &Workload,
    orig: SocketAddr,
    hbone_port: u16,
    proxy_ports: &[u16],
    rr: impl FnOnce(&str) -> usize,
) -> Result<Route, RouteError> {
    if proxy_ports.contains(&orig.port())
        && (orig.ip().is_loopback() || src.workload_ips.contains(&orig.ip()))
    {
        return Err(RouteError::SelfCall(orig));
    }
    if let Some(svc) = snap.service_by_vip(orig.ip()) {
        if let Some(wp) = &svc.waypoint {
            return waypoint(snap, wp, orig, Some(svc.hostname.clone()), rr);
        }
        let eps = snap.endpoints(svc);
        if eps.is_empty() {
            return Err(RouteError::NoHealthyUpstream(svc.key()));
        }
        let ep = &eps[rr(&svc.key()) % eps.len()];
        let port =
            svc.target_port(&ep.ports, orig.port())
                .ok_or_else(|| RouteError::NoTargetPort {
                    svc: svc.key(),
                    port: orig.port(),
                })?;
        let ip = pick_ip(&ep.workload, orig.ip())?;
        let dst = SocketAddr::new(ip, port);
        return Ok(match ep.workload.protocol {
            Protocol::HBONE => {
                let mut expected = vec![ep.workload.identity()];
                expected.extend(svc.san_identities());
                Route::Hbone {
                    next_hop: SocketAddr::new(ip, hbone_port),
                    authority: dst,
                    expected,
                    service_host: Some(svc.hostname.clone()),
                }
            }
            Protocol::TCP => Route::Passthrough { dst },
        });
    }
    if let Some(w) = snap.workload_by_ip(orig.ip()) {
        if let Some(wp) = &w.waypoint {
            let is_self = src.uid == w.uid;
            if !is_self && !is_waypoint_of(snap, src, wp) {
                return waypoint(snap, wp, orig, None, |_| 0);
            }
        }
        return Ok(match w.protocol {
            Protocol::HBONE => Route::Hbone {
                next_hop: SocketAddr::new(orig.ip(), hbone_port),
                authority: orig,
                expected: vec![w.identity()],
                service_host: None,
            },
            Protocol::TCP => Route::Passthrough { dst: orig },
        });
    }
    Ok(Route::Passthrough { dst: orig })
}

fn pick_ip(w: &Workload, like: IpAddr) -> Result<IpAddr, RouteError> {
    w.workload_ips
        .iter()
        .find(|ip| ip.is_ipv4() == like.is_ipv4())
        .or(w.workload_ips.first())
        .copied()
        .ok_or_else(|| RouteError::NoAddress(w.uid.clone()))
}

fn is_waypoint_of(snap: &Snapshot, src: &Workload, wp: &GatewayAddress) -> bool {
    match &wp.destination {
        GatewayDestination::Address(a) => src.workload_ips.contains(&a.address),
        GatewayDestination::Hostname {
            namespace,
            hostname,
        } => snap
            .service_by_key(&format!("{namespace}/{hostname}"))
            .is_some_and(|svc| {
                snap.endpoints(svc)
                    .iter()
                    .any(|e| e.workload.uid == src.uid)
            }),
    }
}

fn waypoint(
    snap: &Snapshot,
    wp: &GatewayAddress,
    orig: SocketAddr,
    service_host: Option<String>,
    rr: impl FnOnce(&str) -> usize,
) -> Result<Route, RouteError> {
    let (ip, mut expected) = match &wp.destination {
        GatewayDestination::Address(a) => {
            let w = snap
                .workload_by_ip(a.address)
                .ok_or_else(|| RouteError::NoWaypoint(a.to_string()))?;
            (a.address, vec![w.identity()])
        }
        GatewayDestination::Hostname {
            namespace,
            hostname,
        } => {
            let key = format!("{namespace}/{hostname}");
            let svc = snap
                .service_by_key(&key)
                .ok_or_else(|| RouteError::NoWaypoint(key.clone()))?;
            let eps = snap.endpoints(svc);
            if eps.is_empty() {
                return Err(RouteError::NoWaypoint(key));
            }
            let ep = &eps[rr(&key) % eps.len()];
            let mut ids = vec![ep.workload.identity()];
            ids.extend(svc.san_identities());
            (pick_ip(&ep.workload, orig.ip())?, ids)
        }
    };
    expected.dedup();
    Ok(Route::Hbone {
        next_hop: SocketAddr::new(ip, wp.hbone_mtls_port),
        authority: orig,
        expected,
        service_host,
    })
}

/// Accept loop of one pod's outbound listener on this shard.
pub async fn serve(ctx: Rc<ShardCtx>, pod: Arc<Pod>, l: TcpListener, stop: Rc<StopSignal>) {
    let p = pod.clone();
    let limit = ctx.limit.clone();
    super::accept_loop(pod, l, "outbound", stop, limit, move |s, peer, slot| {
        conn_task(&ctx, &p, s, peer, slot)
    })
    .await
}

/// The task of one captured outbound connection, counted live and within the shard's bound
/// (`slot`) while the connection lasts. It ends once an HBONE tunnel on the link task is
/// open (the link holds the tunnel's end, [`TunnelDone`]): an idle tunnel has no task.
pub fn conn_task(
    ctx: &Rc<ShardCtx>,
    pod: &Arc<Pod>,
    s: TcpStream,
    peer: SocketAddr,
    slot: limit::Slot,
) -> impl std::future::Future<Output = ()> + use<> {
    let holds = Holds {
        live: ctx.live_guard(),
        slot: Some(slot),
        share: None,
    };
    handle(ctx.clone(), pod.clone(), s, peer, holds)
}

async fn handle(ctx: Rc<ShardCtx>, pod: Arc<Pod>, s: TcpStream, peer: SocketAddr, holds: Holds) {
    let started = Instant::now();
    sockopt::tune_app_conn(&s, ctx.cfg.local_congestion.as_deref(), ctx.cfg.keepalive);
    let orig = match sockopt::original_dst(&s) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(pod = %pod.uid, "outbound: no original destination: {e}");
            return;
        }
    };
    let found = super::wait_for(|| {
        let snap = ctx.state.load_full();
        let w = pod.workload(&snap).cloned()?;
        Some((snap, w))
    })
    .await;
    let Some((snap, src)) = found else {
        let counters = Counters::default();
        let e = format!("pod {} is not in the config: refusing its traffic", pod.uid);
        log_complete(
            &ctx,
            "outbound",
            peer,
            None,
            orig,
            None,
            None,
            None,
            &counters,
            started,
            Some(&e),
        );
        return;
    };
    let r = route(
        &snap,
        &src,
        orig,
        ctx.cfg.hbone_port,
        &ctx.cfg.proxy_ports,
        |k| ctx.next_rr(k),
    );
    let (dst, hbone_addr, dst_id) = match &r {
        Ok(Route::Hbone {
            next_hop,
            authority,
            expected,
            ..
        }) => (
            *next_hop,
            Some(*authority),
            expected.first().map(|i| i.to_string()),
        ),
        Ok(Route::Passthrough { dst }) => (*dst, None, None),
        Err(_) => (orig, None, None),
    };
    let mtls = hbone_addr.is_some();
    let src_id = mtls.then(|| src.identity().to_string());
    let svc_host: Option<String>;
    let metrics = {
        let dst_w = snap.workload_by_ip(hbone_addr.unwrap_or(dst).ip());
        let svc = snap.service_by_vip(orig.ip());
        svc_host = svc.map(|s| s.hostname.clone());
        let svc_labels = svc.map(|s| DstService {
            hostname: &s.hostname,
            namespace: &s.namespace,
            name: &s.name,
        });
        let lbl = TcpLabels::new(
            "source",
            &Peer {
                workload: Some(&src),
                principal: src_id.clone(),
            },
            &Peer {
                workload: dst_w.map(|w| w.as_ref()),
                principal: dst_id.clone(),
            },
            svc_labels.as_ref(),
            mtls,
            if r.is_err() { "CONNECT" } else { "-" },
        );
        ConnMetrics::open_shared(&ctx, lbl)
    };
    drop(snap);
    let (metrics, lbl) = metrics;
    let counters = metrics.counters(true);
    // What travels with the tunnel if it is handed to the next process.
    let n = &ctx.names;
    let meta = TunnelMeta {
        direction: n.get("outbound"),
        pod: n.get(&pod.uid),
        src: peer,
        src_id: n.opt(src_id.as_deref()),
        dst,
        hbone_addr,
        dst_id: n.opt(dst_id.as_deref()),
        service: n.opt(svc_host.as_deref()),
        labels: lbl,
        started_unix_ms: unix_ms_ago(started.elapsed()),
        policy: None,
    };
    let result = match r {
        Err(e) => Err(e.to_string()),
        // Boxed: the relay's future is not part of every HBONE tunnel's task.
        Ok(Route::Passthrough { dst }) => {
            Box::pin(passthrough(&ctx, &pod, s, dst, &counters, meta)).await
        }
        Ok(Route::Hbone { expected, .. }) if ctx.cfg.link => {
            let done = TunnelDone {
                ctx: ctx.clone(),
                meta: Rc::new(meta),
                metrics,
                counters,
                before: (0, 0),
                holds,
                conn: None,
                outbound: true,
                retry: None,
            };
            let route = Retry { pod, src, expected };
            // Boxed: the dial is not part of the accept loop's task.
            Box::pin(open_link(done, s, route, 0)).await;
            return;
        }
        Ok(Route::Hbone {
            next_hop,
            authority,
            expected,
            service_host,
        }) => {
            hbone_h2(
                &ctx,
                &pod,
                &src,
                s,
                peer,
                next_hop,
                authority,
                &expected,
                service_host,
                &counters,
            )
            .await
        }
    };
    drop(holds);
    if result == Ok(true) {
        // Handed to the next process (with its HBONE connection, or as a relay): it logs
        // and counts the end.
        metrics.moved();
        return;
    }
    if result.is_err() && counters.sent.get() + counters.received.get() == 0 {
        metrics.failed();
    }
    log_complete(
        &ctx,
        "outbound",
        peer,
        src_id.as_deref(),
        dst,
        hbone_addr,
        dst_id.as_deref(),
        svc_host.as_deref(),
        &counters,
        started,
        result.err().as_deref(),
    );
}

/// Plain TCP to `dst` on a relay a hand-over can move (`relays`); Ok(true): it moved.
async fn passthrough(
    ctx: &ShardCtx,
    pod: &Pod,
    s: TcpStream,
    dst: SocketAddr,
    counters: &Rc<Counters>,
    meta: TunnelMeta,
) -> Result<bool, String> {
    let up = connect_in(&pod.netns, dst, ctx.cfg.mark, None, ctx.cfg.connect_timeout).await?;
    let meta = Rc::new(meta);
    let c = counters.clone();
    let splice = ctx.cfg.splice;
    let end = relays::carry(ctx, &meta, false, move |ctl| {
        ctl.set_splice(splice);
        relay::run(s, up, Vec::new(), c, ctl)
    })
    .await;
    relays::outcome(end)
}

/// Opens `done`'s tunnel for `app` on a pooled link to its next hop (dialing one if none has
/// room) and gives the link the tunnel's end; on failure, ends it with the error. `attempt`
/// counts tries: a pooled connection that refuses a new stream, or a stream the peer
/// refused unprocessed (a draining peer's GOAWAY, REFUSED_STREAM: [`retry`]), is tried
/// once more on another connection, as the h2 path's pool does.
async fn open_link(mut done: TunnelDone, mut app: TcpStream, route: Retry, mut attempt: u8) {
    let ctx = done.ctx.clone();
    let cfg = &ctx.cfg;
    let meta = done.meta.clone();
    let next_hop = meta.dst;
    let cert = {
        let src_id = route.src.identity();
        match super::wait_for(|| ctx.certs.load().get(&src_id).cloned()).await {
            Some(c) => c,
            None => {
                let e = format!("no certificate for {src_id} (the CA has not issued one)");
                return done.finish(Some(e));
            }
        }
    };
    let key = PoolKey {
        src: route.src.identity(),
        dst: route.expected.clone(),
        addr: next_hop,
        src_pod: route.pod.uid.clone(),
    };
    loop {
        let slot = {
            let (links, cert, pod) = (ctx.links.clone(), cert.clone(), &route.pod);
            let (expected, shard) = (&route.expected, &*ctx);
            let max = cfg.h2.client_max_streams;
            let dial = ctx
                .pool
                .link(&key, max, cfg.connect_timeout, |deadline| async move {
                    let tcp = dial_tcp(shard, pod, next_hop).await?;
                    h2conn::dial_link(
                        tcp,
                        cert.client.clone(),
                        expected,
                        &cfg.h2,
                        &deadline,
                        links,
                    )
                    .await
                });
            match dial.await {
                Ok(s) => s,
                Err(e) => return done.finish(Some(e.to_string())),
            }
        };
        let (link, _peer, share) = slot.into_parts();
        let opened = {
            let headers = ConnectHeaders {
                client: meta.src,
                service_host: meta.service.as_deref().map(str::to_string),
                baggage: hbone::baggage(&route.src),
                traceparent: hbone::traceparent(rand::random(), rand::random()),
            };
            let req = hbone::connect_request(meta.hbone_addr.unwrap_or(next_hop), &headers);
            let fields = crate::hbone::h2::request_fields(&req);
            link.open_tunnel(&fields, app, done.counters.clone(), meta.clone())
        };
        match opened {
            Ok(id) => {
                done.holds.share = Some(share);
                if attempt == 0 {
                    done.retry = Some(Box::new(route));
                }
                link.on_end(id, done.on_end());
                return;
            }
            Err((e, back)) if attempt == 0 => {
                tracing::debug!(%next_hop, "pooled HBONE connection refused a new stream ({e}): retrying");
                app = back;
                attempt += 1;
            }
            Err((e, _)) => return done.finish(Some(format!("HBONE stream to {next_hop}: {e}"))),
        }
    }
}

/// Tries `done`'s tunnel, which the peer refused unprocessed, once more (on another
/// connection: the one that refused it is going away), in a task of its own.
pub(super) fn retry(done: TunnelDone, route: Retry, app: TcpStream) {
    crate::runtime::engine::spawn(open_link(done, app, route, 1));
}

/// HBONE on the h2 crate's path (`--h2-codec h2`): boxed, so its copy loop is not part of
/// the link path's tasks.
#[allow(clippy::too_many_arguments)]
async fn hbone_h2(
    ctx: &ShardCtx,
    pod: &Pod,
    src: &Workload,
    s: TcpStream,
    peer: SocketAddr,
    next_hop: SocketAddr,
    authority: SocketAddr,
    expected: &[Identity],
    service_host: Option<String>,
    counters: &Rc<Counters>,
) -> Result<bool, String> {
    let cert = {
        let src_id = src.identity();
        super::wait_for(|| ctx.certs.load().get(&src_id).cloned())
            .await
            .ok_or_else(|| format!("no certificate for {src_id} (the CA has not issued one)"))?
    };
    let key = PoolKey {
        src: src.identity(),
        dst: expected.to_vec(),
        addr: next_hop,
        src_pod: pod.uid.clone(),
    };
    let headers = ConnectHeaders {
        client: peer,
        service_host,
        baggage: hbone::baggage(src),
        traceparent: hbone::traceparent(rand::random(), rand::random()),
    };
    let cfg = &ctx.cfg;
    let max = cfg.h2.client_max_streams;
    let req = hbone::connect_request(authority, &headers);
    Box::pin(async move {
        let stream = ctx
            .pool
            .stream(&key, max, cfg.connect_timeout, req, |deadline| async move {
                let tcp = dial_tcp(ctx, pod, next_hop).await?;
                let (h2s, records) = (&cfg.h2, cfg.tls_records);
                h2conn::dial(tcp, cert.client.clone(), expected, h2s, records, &deadline).await
            })
            .await
            .map_err(|e| e.to_string())?;
        io::copy_h2(s, stream.send, stream.recv, counters.clone())
            .await
            .map(|()| false)
            .map_err(|e| e.to_string())
    })
    .await
}

/// The TCP connect of an HBONE dial, from the pod's netns.
async fn dial_tcp(
    ctx: &ShardCtx,
    pod: &Pod,
    next_hop: SocketAddr,
) -> Result<TcpStream, h2conn::DialError> {
    let cfg = &ctx.cfg;
    connect_in(&pod.netns, next_hop, cfg.mark, None, cfg.connect_timeout)
        .await
        .map_err(|e| {
            h2conn::DialError::Connect(format!(
                "{e} (is HBONE port {} reachable?)",
                next_hop.port()
            ))
        })
}

#[cfg(test)]
mod tests;
